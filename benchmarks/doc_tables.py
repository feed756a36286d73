"""Rewrite a section of a page between marker comments (the scripts that measure the docs).

A page holds ``<!-- NAME: start -->`` and ``<!-- NAME: end -->`` around what a script
measured; :func:`rewrite` replaces what lies between them, so a table in the docs is always
the whole output of one run of the script that names it. doc_examples.py writes its own
sections with :func:`rewrite`; the scripts that print a table are run through this module:

    python benchmarks/doc_tables.py flow-evaluations    # run the script, rewrite its section
    python benchmarks/doc_tables.py --list              # every section, page and command
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# section: (page, command run from the root whose standard output is the section)
PRINTED = {
    "performance-table": ("docs/performance.md", "python benchmarks/performance_table.py"),
    "checkpoint-cost": ("docs/performance.md",
                        "python benchmarks/checkpoint_cost.py --rounds 2 --rule-steps 100"),
    "fused-loop": ("docs/performance.md", "python benchmarks/fused_loop.py"),
    "numba-loop": ("docs/performance.md", "python benchmarks/numba_loop.py"),
    "quadrature-auto": ("docs/performance.md", "python benchmarks/quadrature_auto.py"),
    "many-groups": ("docs/performance.md", "python benchmarks/many_groups.py --repeats 1"),
    "tiled-clusters": ("docs/performance.md", "python benchmarks/tiled_clusters.py"),
    "flow-evaluations": ("docs/performance.md", "python benchmarks/flow_evaluations.py"),
    "dispatch": ("docs/performance.md",
                 "python benchmarks/dispatch_table.py --rounds 3 --exps 6,9 --seconds 1"),
    "phase-one": ("docs/theorem.md", "python benchmarks/phase_one.py"),
    "preset-eta": ("docs/theorem.md", "python benchmarks/preset_eta.py"),
    "full-trajectory": ("docs/theorem.md", "python benchmarks/full_trajectory.py --P 1e8,1e9"),
    # needs the sweep `mimfast sweep --preset paper-clusters-overlap --out runs/clusters-overlap`
    "clusters-overlap": ("docs/theorem.md",
                         "python benchmarks/clusters_overlap.py runs/clusters-overlap"),
}


def markers(name):
    """The start and end comments of section ``name``."""
    return f"<!-- {name}: start -->", f"<!-- {name}: end -->"


def section(text, name):
    """What lies between the markers of ``name`` in ``text`` (ValueError when absent)."""
    start, end = markers(name)
    found = re.search(re.escape(start) + "\n(.*?)\n?" + re.escape(end), text, flags=re.DOTALL)
    if found is None:
        raise ValueError(f"no {start} ... {end} section")
    return found.group(1)


def rewrite(doc, name, body):
    """Replace section ``name`` of the page ``doc`` (a path relative to the root) by ``body``.

    The page is written atomically; exits with a message when the section is missing.
    """
    path = ROOT / doc
    text = path.read_text()
    start, end = markers(name)
    try:
        section(text, name)
    except ValueError as e:
        sys.exit(f"{path}: {e}")
    text = re.sub(re.escape(start) + ".*?" + re.escape(end),
                  lambda _: f"{start}\n{body.rstrip()}\n{end}", text, flags=re.DOTALL)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"rewrote {name} in {doc}", file=sys.stderr)


def machine():
    """Date, machine, CPU, cores and load average, for the line above a measured table."""
    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((f" ({line.split(':', 1)[1].strip()})" for line in f
                        if line.startswith("model name")), "")
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    return (f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}{cpu}, "
            f"{os.cpu_count()} cores{load}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="sections to measure and rewrite")
    ap.add_argument("--list", action="store_true", help="list the sections and their commands")
    args = ap.parse_args()
    if args.list or not args.names:
        for name, (page, command) in PRINTED.items():
            print(f"{name:18} {page:22} {command}")
        return
    unknown = [n for n in args.names if n not in PRINTED]
    if unknown:
        ap.error(f"unknown section {', '.join(unknown)}; known: {', '.join(PRINTED)}")
    for name in args.names:
        page, command = PRINTED[name]
        header = f"{machine()}; command: `{command}`"
        argv = shlex.split(command)
        out = subprocess.run([sys.executable, *argv[1:]], cwd=ROOT, check=True,
                             stdout=subprocess.PIPE, text=True).stdout
        if out.lstrip().startswith("date:"):  # the script names the date and machine itself
            header = f"command: `{command}`, {machine().split(', ')[-1]}"
        rewrite(page, name, f"{header}\n\n{out.strip()}")


if __name__ == "__main__":
    main()

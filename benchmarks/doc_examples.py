"""Run the `mimfast run` examples printed in README.md and docs/theorem.md, and rewrite them.

    python benchmarks/doc_examples.py            # run every example, rewrite its block
    python benchmarks/doc_examples.py --check    # compare only; exit 1 when a block differs

Each printed example sits between ``<!-- example NAME: start -->`` and ``<!-- example NAME:
end -->`` in its page and is the standard output of the command shown beside it, run here
with ``--no-plots --no-progress`` into a temporary folder: the report, without the closing
line that lists the files written. ``tests/test_docs.py`` runs the same commands and compares
with the pages, ignoring lines that report timings. Every example takes a few seconds.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

# name: (page, the command as the page shows it)
EXAMPLES = {
    "main-job": ("README.md", "mimfast run --preset paper-positive --out runs/positive"),
    "paper-positive": ("docs/theorem.md",
                       "mimfast run --preset paper-positive --out runs/paper-positive"),
    "paper-negative": ("docs/theorem.md",
                       "mimfast run --preset paper-negative --out runs/paper-negative"),
    "paper-positive-1e15": ("docs/theorem.md", ("mimfast run --preset paper-positive --P 1e15 "
                                                "--out runs/paper-positive-1e15")),
    "paper-negative-1e15": ("docs/theorem.md", ("mimfast run --preset paper-negative --P 1e15 "
                                                "--out runs/paper-negative-1e15")),
    "flow-1e15": ("docs/theorem.md",
                  "mimfast run --preset paper-positive --P 1e15 --flow --out runs/flow-1e15"),
}

# lines that report how long something took: they differ between runs and are not compared
TIMING = re.compile(r"\b(wall|elapsed|took|steps/s|it/s)\b|\d\s*(s|ms|µs) of CPU", re.IGNORECASE)


def printed(name):
    """The block of example ``name`` as its page should show it, from a fresh run."""
    argv = shlex.split(EXAMPLES[name][1])[1:]
    out = argv.index("--out")
    with tempfile.TemporaryDirectory() as tmp:
        argv[out + 1] = str(Path(tmp) / "run")
        proc = subprocess.run([sys.executable, "-m", "mimfast", *argv, "--no-plots",
                               "--no-progress"], capture_output=True, text=True, timeout=600,
                              check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{EXAMPLES[name][1]} exited with {proc.returncode}:\n{proc.stderr}")
    lines = proc.stdout.rstrip("\n").splitlines()
    if lines and lines[-1].startswith("wrote "):
        lines.pop()
    return "```text\n" + "\n".join(lines).rstrip() + "\n```"


# an error estimate at the level of rounding: its digits depend on the kernel's instruction
# set and order of operations, so only "below 1e-12" is compared
ESTIMATE = re.compile(r"(relative error over the recorded steps: )(\d\.\de[+-]\d+)")


def _estimate(match):
    return match.group(1) + ("<1e-12" if float(match.group(2)) < 1e-12 else match.group(2))


def comparable(block):
    """``block`` without its timing lines and trailing blanks, and with rounding-level error
    estimates as ``<1e-12``, for comparison."""
    return [ESTIMATE.sub(_estimate, line.rstrip()) for line in block.splitlines()
            if not TIMING.search(line)]


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare only, rewrite nothing")
    ap.add_argument("names", nargs="*", help=f"default: all of {', '.join(EXAMPLES)}")
    args = ap.parse_args()
    unknown = set(args.names) - set(EXAMPLES)
    if unknown:
        ap.error(f"unknown example {', '.join(sorted(unknown))}; known: {', '.join(EXAMPLES)}")
    from doc_tables import ROOT, rewrite, section

    differ = []
    for name in args.names or EXAMPLES:
        page = EXAMPLES[name][0]
        block = printed(name)
        if args.check:
            if comparable(block) != comparable(section((ROOT / page).read_text(),
                                                       f"example {name}")):
                differ.append(name)
        else:
            rewrite(page, f"example {name}", block)
    if differ:
        sys.exit(f"printed examples that differ from a fresh run: {', '.join(differ)}")


if __name__ == "__main__":
    main()

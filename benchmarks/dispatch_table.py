"""Portable build with runtime dispatch against a -march=native build (docs/performance.md).

    python benchmarks/dispatch_table.py      # builds both variants, ~3 minutes on 2 cores

Builds this source tree twice into a temporary folder (the default portable build, whose hot
loop is dispatched per x86-64 ISA level at load time, and one with
``MIMFAST_MARCH_NATIVE=ON``),
then times one exact gradient per P with each, alternating the variants round by round so
that both see the same machine state, and reports ns per grid point (CPU time with one
thread, so that other processes on a shared machine do not inflate it; wall time with more),
their ratio, and the largest relative difference between the two variants' gradients.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {"portable": "OFF", "native": "ON"}


def build(tmp, name, native):
    """Build and unpack one variant of the package into ``tmp/name``; return that folder."""
    wheels = tmp / f"wheel-{name}"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            f"-Cbuild-dir={tmp / f'build-{name}'}",
            f"-Ccmake.define.MIMFAST_MARCH_NATIVE={native}",
            "-w",
            str(wheels),
            str(ROOT),
        ],
        check=True,
    )
    target = tmp / name
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(next(wheels.glob("*.whl"))),
        ],
        check=True,
    )
    return target


def measure(exps, threads, seconds):
    """Child: best per-step time of the cpp kernel at each P, and the gradient's arrays."""
    import numpy as np

    import mimfast as mf
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids
    from mimfast.model import State, evaluate

    kernel = get_kernel("cpp")
    out = {}
    for e in exps:
        s = mf.Setting.paper(10**e, 0.9, 0.3)
        grids = build_grids(s)
        state = State.zeros(s)
        state.fp[0][:] = [[2.0, 0.0, -0.3], [3.0, -2.5, 0.2]]
        points = sum(grids[c].points for c in s.classes())
        g = evaluate(s, grids, state, kernel, threads)
        # one thread: CPU time, which a busy machine does not inflate; more: wall time
        clock = time.process_time if threads == 1 else time.perf_counter
        best, t_end = float("inf"), time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            t0 = clock()
            for _ in range(5):
                evaluate(s, grids, state, kernel, threads)
            best = min(best, (clock() - t0) / 5)
        values = np.concatenate([np.ravel(x) for x in (*g.fp, g.pp, [g.loss])])
        out[e] = {"points": points, "s": best, "values": values.tolist()}
    print(json.dumps(out))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--exps", default="6,7,8", help="exponents e of P = 10^e")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=2.0, help="timing per P, variant and round")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    exps = [int(e) for e in args.exps.split(",")]
    if args.child:
        measure(exps, args.threads, args.seconds)
        return
    import numpy as np

    tmp = Path(tempfile.mkdtemp(prefix="mimfast-dispatch-"))
    dirs = {name: build(tmp, name, flag) for name, flag in VARIANTS.items()}
    best = {name: {} for name in VARIANTS}
    values = {}
    for r in range(args.rounds):
        for name in VARIANTS if r % 2 == 0 else reversed(list(VARIANTS)):
            env = {**os.environ, "PYTHONPATH": str(dirs[name])}
            res = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--exps",
                    args.exps,
                    "--threads",
                    str(args.threads),
                    "--seconds",
                    str(args.seconds),
                ],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            for e, row in json.loads(res.stdout.splitlines()[-1]).items():
                prev = best[name].get(e)
                if prev is None or row["s"] < prev["s"]:
                    best[name][e] = row
                values[name, e] = np.array(row["values"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    print(
        f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, threads={args.threads}; best of {args.rounds} rounds"
    )
    print()
    print(
        "| P | grid points | native ns/point | portable + dispatch ns/point | "
        "portable/native | max relative difference |"
    )
    print("|---|---|---|---|---|---|")
    for e in map(str, exps):
        n, p = best["native"][e], best["portable"][e]
        a, b = values["native", e], values["portable", e]
        diff = np.max(np.abs(a - b) / np.maximum(np.abs(a), 1e-300))
        print(
            f"| 10^{e} | {n['points']:,} | {n['s'] / n['points'] * 1e9:.3f} | "
            f"{p['s'] / p['points'] * 1e9:.3f} | {p['s'] / n['s']:.3f} | {diff:.1e} |"
        )


if __name__ == "__main__":
    main()

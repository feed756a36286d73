"""Measure the fused-loop table of docs/performance.md (run from the repository root).

    python benchmarks/fused_loop.py             # P = 10^4, 10^6, 10^9; about a minute
    python benchmarks/fused_loop.py --quick     # P up to 10^6

For each P, the time of a GD step of backend "cpp" three ways, in one process and one machine
state: the whole loop in C++ (``simulate``, the default), the Python loop with the same kernel
(``simulate`` with the fused loop switched off: what every step cost before it), and one
gradient alone (``mimfast.model.evaluate``: the kernel plus the Python that builds its
inputs and assembles its sums). ``simulate`` runs on grids built beforehand, so a step time is
a whole call over its steps (record every 10), best of several rounds.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mimfast as mf
from benchmarks import common
from mimfast.backends import get_kernel
from mimfast.grid import build_grids
from mimfast.model import State, evaluate

ETA = 200.0
simulate_module = sys.modules["mimfast.simulate"]  # its FUSED picks the loop
driver_module = sys.modules["mimfast.driver"]  # its build_grids builds a run's grids


def per_step(setting, grids, steps, threads, repeats):
    """Seconds per GD step of ``simulate`` (record every 10) with the Python loop and with the
    fused loop, grids built beforehand: best of ``repeats`` rounds, the loops interleaved."""
    times = [float("inf")] * 2
    build, compiled = driver_module.build_grids, simulate_module.FUSED
    driver_module.build_grids = lambda *args: grids
    try:
        for _ in range(repeats):
            for fused in (False, True):
                simulate_module.FUSED = {"cpp"} if fused else set()
                t0 = time.perf_counter()
                mf.simulate(setting, ETA, steps, record_every=10, threads=threads,
                            method="exact")
                times[fused] = min(times[fused], (time.perf_counter() - t0) / steps)
    finally:
        simulate_module.FUSED = compiled
        driver_module.build_grids = build
    return times


def main(argv=None):
    args = common.script_args(__doc__, argv)
    sizes = [(10**4, 500, 15), (10**6, 50, 15)] + ([] if args.quick else [(10**9, 5, 10)])
    print("| P | steps timed | Python loop s/step | fused loop s/step | Python / fused "
          "| one gradient (evaluate) s | fused / evaluate |")
    print("|---|---|---|---|---|---|---|")
    for P, steps, repeats in sizes:
        s = mf.Setting.paper(P, 0.9, 0.3)
        grids = build_grids(s)
        state = State.zeros(s)
        kernel = get_kernel("cpp")
        one = float("inf")
        for _ in range(50):
            t0 = time.perf_counter()
            evaluate(s, grids, state, kernel, args.threads)
            one = min(one, time.perf_counter() - t0)
        python, fused = per_step(s, grids, steps, args.threads, repeats)
        print(f"| 10^{len(str(P)) - 1} | {steps} | {python:.3g} | {fused:.3g} | "
              f"{python / fused:.2f}x | {one:.3g} | {fused / one:.2f} |", flush=True)


if __name__ == "__main__":
    main()

"""Measure the numba-loop table of docs/performance.md (run from the repository root).

    python benchmarks/doc_tables.py numba-loop    # runs this script, rewrites its section
    python benchmarks/numba_loop.py --quick        # P up to 10^6

A whole ``simulate`` call (grids or quadrature rules built inside it, as a user's run does) of
the paper-positive setting (``Setting.paper(P, 0.9, 0.3)``, the presets' learning rate) with
backend "cpp" (the C++ loop) and backend "numba" (the numba loop), for both methods, in one
process and one machine state: best of several rounds with the two backends interleaved, and
their ratio. numba compiles (or loads its cache) before the timing. Under the table (not
with ``--quick``): the first runs in a fresh process with an empty numba cache, which
compile the loop, and with the cache filled.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mimfast as mf
from benchmarks import common
from mimfast.cli import preset_eta

# P, method, steps, rounds
CASES = [
    (10**4, "exact", 1000, 7),
    (10**4, "quadrature", 1000, 7),
    (10**6, "exact", 100, 5),
    (10**6, "quadrature", 1000, 7),
    (10**9, "exact", 5, 2),
    (10**9, "quadrature", 1000, 7),
]


def best_of(setting, eta, method, steps, threads, rounds):
    """Seconds of a whole ``simulate`` call per backend (best of ``rounds``, interleaved)."""
    best = {"cpp": float("inf"), "numba": float("inf")}
    for backend in best:  # compile or load the numba loop, and warm both
        mf.simulate(setting, eta, 2, backend=backend, method=method, threads=threads)
    for _ in range(rounds):
        for backend, seconds in best.items():
            t0 = time.perf_counter()
            mf.simulate(setting, eta, steps, backend=backend, method=method, threads=threads)
            best[backend] = min(seconds, time.perf_counter() - t0)
    return best


# a fresh process's first runs of the numba loop, quadrature then exact (P = 10^4, 2 steps)
FIRST_RUNS = ("import time, mimfast as mf\n"
              "s = mf.Setting.paper(10**4, 0.9, 0.3)\n"
              "for method in ('quadrature', 'exact'):\n"
              "    t = time.perf_counter()\n"
              "    mf.simulate(s, 1.0, 2, backend='numba', method=method, threads=1)\n"
              "    print(time.perf_counter() - t)\n")


def first_runs():
    """Seconds of the first quadrature and exact runs in a fresh process, with an empty numba
    cache and with the cache filled."""
    with tempfile.TemporaryDirectory() as cache:
        return common.fresh_process(FIRST_RUNS, cache), common.fresh_process(FIRST_RUNS, cache)


def main(argv=None):
    args = common.script_args(__doc__, argv)
    print("| P | method | steps | cpp (s) | numba (s) | numba / cpp |")
    print("|---|---|---|---|---|---|")
    for P, method, steps, rounds in CASES:
        if args.quick and P > 10**6:
            continue
        setting = mf.Setting.paper(P, 0.9, 0.3)
        best = best_of(setting, preset_eta(P, 0.3), method, steps, args.threads, rounds)
        print(f"| 10^{len(str(P)) - 1} | {method} | {steps} | {best['cpp']:.3g} | "
              f"{best['numba']:.3g} | {best['numba'] / best['cpp']:.2f} |", flush=True)
    if not args.quick:
        (q, e), (q_warm, e_warm) = first_runs()
        print(f"\nfirst numba runs in a fresh process (P = 10^4, 2 steps, quadrature then exact): "
              f"{q:.0f} s and {e:.0f} s with an empty cache (compilation), {q_warm:.2f} s and "
              f"{e_warm:.2f} s with the cache filled")


if __name__ == "__main__":
    main()

"""Measure the main table of docs/performance.md and print it.

    python benchmarks/doc_tables.py performance-table    # runs this script, rewrites its section
    python benchmarks/performance_table.py --quick       # P up to 10^6, printed only

Every number in one run of this script comes from the same machine state, so ratios between
backends (and with the minimal loop of benchmarks/roofline.cpp) are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def best_time(fn, seconds=1.0, repeats=5):
    """Smallest mean time of ``fn`` over ``repeats`` rounds of about ``seconds / repeats``."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt > seconds / repeats:
                break
        best = min(best, dt / n)
    return best


def measure_one(P, backends, threads):
    """Per-step time of each backend at P, in this process (run as a child for its peak RSS)."""
    import mimfast as mf
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids
    from mimfast.model import State, evaluate

    s = mf.Setting.paper(P, 0.9, 0.3)
    t0 = time.perf_counter()
    grids = build_grids(s)
    t_grid = time.perf_counter() - t0
    state = State.zeros(s)
    state.fp[0][:] = [[2.0, 0.0, -0.3], [3.0, -2.5, 0.2]]
    points = sum(grids[c].points for c in s.classes())
    row = {"P": P, "points": points, "grid_s": t_grid}
    for b in backends:
        kernel = get_kernel(b)
        row[b] = best_time(lambda k=kernel: evaluate(s, grids, state, k, threads))
    if P >= 10**8 and threads > 1:
        kernel = get_kernel("cpp")
        row["cpp_1"] = best_time(lambda: evaluate(s, grids, state, kernel, 1))
    return row


def measure_rss(P, threads):
    """Peak RSS (MiB) of a process that runs 3 GD steps at P with the cpp backend only."""
    import mimfast as mf

    mf.simulate(mf.Setting.paper(P, 0.9, 0.3), eta=1e3, steps=3, threads=threads, method="exact")
    return {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def numba_compile(cache_dir):
    """Seconds of the first numba gradient in a fresh process, and of a warm one."""
    code = ("import time, mimfast as mf\n"
            "s = mf.Setting.paper(10**4, 0.9, 0.3)\n"
            "t = time.perf_counter(); mf.gradient(s, backend='numba'); a = time.perf_counter() - t\n"
            "t = time.perf_counter(); mf.gradient(s, backend='numba'); b = time.perf_counter() - t\n"
            "print(a, b)")
    import common  # beside this script

    return tuple(common.fresh_process(code, cache_dir))


def roofline(threads):
    """ns per point of the minimal loops in roofline.cpp (None without a C++ compiler)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        return None
    exe = Path(tempfile.mkdtemp()) / "roofline"
    subprocess.run([cxx, "-O3", "-march=native", "-fopenmp", "-fno-math-errno", str(HERE / "roofline.cpp"),
                    "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                         capture_output=True, text=True, check=True).stdout
    return {line.split()[0]: float(line.split("ns/point=")[1].split()[0])
            for line in out.splitlines()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="P up to 10^6 only")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rss", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--backends", default="cpp,numba,numpy", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(measure_one(args.child, args.backends.split(","), args.threads)))
        return
    if args.rss:
        print(json.dumps(measure_rss(args.rss, args.threads)))
        return
    import mimfast as mf

    exps = range(4, 7) if args.quick else range(4, 10)
    rows = []
    for e in exps:
        backends = "cpp,numba,numpy" if e <= 6 else "cpp,numba"
        out = subprocess.run([sys.executable, __file__, "--child", str(10**e), "--backends",
                              backends, "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.splitlines()[-1]))
        out = subprocess.run([sys.executable, __file__, "--rss", str(10**e), "--threads",
                              str(args.threads)], capture_output=True, text=True,
                             check=True).stdout
        rows[-1].update(json.loads(out.splitlines()[-1]))
        print(f"measured P = 10^{e}", file=sys.stderr, flush=True)
    # 1,000 GD steps at the largest P, wall clock
    P_big = 10 ** exps[-1]
    t0 = time.perf_counter()
    mf.simulate(mf.Setting.paper(P_big, 0.9, 0.3), eta=1e3, steps=1000, record_every=100,
                threads=args.threads, method="exact")
    t_1000 = time.perf_counter() - t0
    roof = roofline(args.threads)
    cache = Path(tempfile.mkdtemp())
    cold, warm = numba_compile(cache)
    cached, _ = numba_compile(cache)

    out = [f"threads={args.threads}; mimfast {mf.__version__}",
           "",
           ("| P | grid points per step | grid build (s) | cpp s/step | cpp ns/point | "
            "numba s/step | numba/cpp | numpy s/step | numpy/cpp | peak RSS, cpp run (MiB) |"),
           "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        npy = f"{r['numpy']:.3g} | {r['numpy'] / r['cpp']:.0f}x" if "numpy" in r else "– | –"
        out.append(f"| 10^{len(str(r['P'])) - 1} | {r['points']:,} | {r['grid_s']:.3f} | "
                   f"{r['cpp']:.3g} | {r['cpp'] / r['points'] * 1e9:.2f} | {r['numba']:.3g} | "
                   f"{r['numba'] / r['cpp']:.2f} | {npy} | {r['rss_mib']:.0f} |")
    points = ", ".join(f"{r['points']:,} at 10^{len(str(r['P'])) - 1}" for r in rows)
    out += ["",
            f"grid points per step (the setting's, not the machine's): {points}",
            "",
            f"1,000 GD steps at P = 10^{exps[-1]} (simulate, cpp): {t_1000:.1f} s",
            "",
            (f"numba: first gradient in a fresh process {cold:.2f} s with an empty cache "
             f"(compilation), {cached:.2f} s with the cache filled; the same call once compiled "
             f"{warm * 1e3:.2f} ms (grid construction included)")]
    if roof:
        big = rows[-1]
        out += ["",
                (f"minimal loops of benchmarks/roofline.cpp (paper grid of ~1.5e7 points): "
                 f"direct model formulas {roof['direct']:.2f} ns/point, bare moment sums "
                 f"{roof['moments']:.2f} ns/point; mimfast cpp at P = 10^{exps[-1]}: "
                 f"{big['cpp'] / big['points'] * 1e9:.2f} ns/point")]
    scaling = [r for r in rows if "cpp_1" in r]
    if scaling:
        out += ["",
                (f"Thread scaling of one cpp gradient (the same timing, 1 and {args.threads} "
                 f"threads):"),
                "",
                f"| P | 1 thread | {args.threads} threads | speed-up |",
                "|---|---|---|---|"]
        out += [f"| 10^{len(str(r['P'])) - 1} | {r['cpp_1'] * 1e3:.2f} ms "
                f"({r['cpp_1'] / r['points'] * 1e9:.2f} ns/point) | {r['cpp'] * 1e3:.2f} ms "
                f"({r['cpp'] / r['points'] * 1e9:.2f} ns/point) | {r['cpp_1'] / r['cpp']:.2f}x |"
                for r in scaling]
    print("\n".join(out))


if __name__ == "__main__":
    main()

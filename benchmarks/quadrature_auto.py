"""Where ``method="auto"`` switches: exact against quadrature on the paper-positive trajectory.

    python benchmarks/quadrature_auto.py            # P = 10^5 ... 10^8, about 15 s on 2 cores
    python benchmarks/doc_tables.py quadrature-auto # the same, rewriting docs/performance.md

Each row runs 200 GD steps of ``Setting.paper(P, 0.9, 0.3)`` at the presets' learning rate,
on one thread, with each method; a time per step includes building the grid or the rules
(and growing them). ``AUTO_GRID_POINTS`` is the size above which ``auto`` takes the
quadrature.
"""

from __future__ import annotations

import argparse
import time

import mimfast as mf
from mimfast import quadrature
from mimfast.cli import preset_eta
from mimfast.grid import build_grids


def per_step(s, eta, steps, method):
    t0 = time.perf_counter()
    mf.simulate(s, eta=eta, steps=steps, record_every=steps, threads=1, method=method)
    return (time.perf_counter() - t0) / steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--exponents", type=int, nargs="+", default=[5, 6, 7, 8])
    args = ap.parse_args()
    print(f"auto takes the quadrature above {quadrature.AUTO_GRID_POINTS:,} estimated grid "
          f"points per step; {args.steps} steps, one thread, time per step")
    print()
    print("| P | grid points | estimate | auto picks | exact | quadrature |")
    print("|---|---|---|---|---|---|")
    for e in args.exponents:
        s = mf.Setting.paper(10**e, 0.9, 0.3)
        eta = preset_eta(10**e, 0.3)
        points = sum(g.points for g in build_grids(s).values())
        estimate = quadrature.grid_points_estimate(s)
        auto = "quadrature" if estimate > quadrature.AUTO_GRID_POINTS else "exact"
        exact = per_step(s, eta, args.steps, "exact")
        quad = per_step(s, eta, args.steps, "quadrature")
        print(f"| 10^{e} | {points:,} | {estimate:,.0f} | {auto} | {exact * 1e3:.2f} ms | "
              f"{quad * 1e3:.2f} ms |", flush=True)


if __name__ == "__main__":
    main()

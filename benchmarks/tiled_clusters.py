"""Measure the tile-group table of docs/performance.md: several clusters with learned PP.

    python benchmarks/tiled_clusters.py          # about 40 s on 2 cores

At P = 10^12, backend cpp, one thread, quadrature: one gradient through Python of the K = 2
tiled setting over one of the K = 1 paper setting (``TiledStep.track_ratio`` of
bench_quadrature.py), and whole runs in the C++ loop at the presets' learning rate, less a run
of 0 steps (rules built and one evaluation): K = 1 paper, K = 2 tiled, K = 3 tiled with
disjoint global areas (four tile groups) and with pairwise overlaps (seven tile groups, 200
steps: its time per step times 1000 is what 1000 steps take).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mimfast as mf
from benchmarks import bench_quadrature, common
from mimfast.quadrature import build_quadratures

P = 10**12


def per_step(s, steps):
    """Seconds per step of a C++ loop run of ``steps``, less a run of 0 steps (best of 3
    each); and the run."""

    def run(n):
        return mf.simulate(s, common.preset_eta(P), n, record_every=100, method="quadrature",
                           threads=1)

    whole = common.best_time(lambda: run(steps), 3)
    return (whole - common.best_time(lambda: run(0), 3)) / steps, run(steps)


def main():
    step = bench_quadrature.TiledStep()
    step.setup(P)
    print(f"one gradient, K = 2 tiled / K = 1 paper (best of 20): {step.track_ratio(P):.2f}")
    print("| setting | classes | points per step | steps | per step (C++ loop) | largest estimate |")
    print("|---|---|---|---|---|---|")
    for name, s, steps in (
            ("K = 1 paper", common.setting(P), 1000),
            ("K = 2 tiled, overlap 0.5", common.tiled_setting(P, 2), 1000),
            ("K = 3 tiled, overlap 0", common.tiled_setting(P, 3, overlap=0.0), 1000),
            ("K = 3 tiled, overlap 0.5", common.tiled_setting(P, 3), 200)):
        t, r = per_step(s, steps)
        quads = build_quadratures(s, r.levels)
        points = sum(q.base().points + q.rich().points for q in quads.values())
        print(f"| {name} | {len(quads)} | {points:,} | {steps} | {t * 1e3:.3f} ms | "
              f"{max(r.error):.1e} |")


if __name__ == "__main__":
    main()

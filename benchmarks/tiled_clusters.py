"""Measure the tile-group table of docs/performance.md: several clusters with learned PP.

    python benchmarks/tiled_clusters.py          # about 40 s on 2 cores
    python benchmarks/doc_tables.py tiled-clusters   # and rewrite its section of the docs

At P = 10^12, backend cpp, one thread, quadrature: one gradient through Python of the K = 2
tiled setting over one of the K = 1 paper setting (``TiledStep.track_ratio`` of
bench_quadrature.py), and whole runs in the C++ loop at the presets' learning rate, less a run
of 0 steps (rules built and one evaluation): K = 1 paper, K = 2 tiled, K = 3 tiled with
disjoint global areas (four tile groups) and with pairwise overlaps (seven tile groups, 200
steps: its time per step times 1000 is what 1000 steps take); and the K = 2 step over the
K = 1 step in the C++ loop, from the same run.
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
    """Seconds per step of a C++ loop run of ``steps`` (:func:`common.loop_step`, best of 3);
    and the run."""
    eta = common.preset_eta(P)
    run = mf.simulate(s, eta, steps, record_every=100, method="quadrature", threads=1)
    return common.loop_step(s, eta, steps, 3), run


def main():
    step = bench_quadrature.TiledStep()
    step.setup(P)
    print(f"one gradient through Python, K = 2 tiled / K = 1 paper (best of 20): "
          f"{step.track_ratio(P):.1f}")
    rows, steps_of = [], {}
    for name, s, steps in (
            ("K = 1 paper", common.setting(P), 1000),
            ("K = 2 tiled, overlap 0.5", common.tiled_setting(P, 2), 1000),
            ("K = 3 tiled, overlap 0", common.tiled_setting(P, 3, overlap=0.0), 1000),
            ("K = 3 tiled, overlap 0.5", common.tiled_setting(P, 3), 200)):
        t, r = per_step(s, steps)
        quads = build_quadratures(s, r.levels)
        points = sum(q.base().points + q.rich().points for q in quads.values())
        steps_of[name] = t
        rows.append(f"| {name} | {len(quads)} | {points:,} | {steps} | {t * 1e3:.3f} ms | "
                    f"{max(r.error):.1e} |")
    ratio = steps_of["K = 2 tiled, overlap 0.5"] / steps_of["K = 1 paper"]
    print(f"one step in the C++ loop, K = 2 tiled / K = 1 paper: {ratio:.1f}")
    print()
    print("| setting | classes | points per step | steps | per step (C++ loop) | largest estimate |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

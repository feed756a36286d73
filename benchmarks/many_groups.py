"""Measure the many-group table of docs/performance.md: quadrature runs of 6-group clusters.

    python benchmarks/many_groups.py             # a few minutes on 2 cores
    python benchmarks/many_groups.py --quick     # without the run that starts at 6 nodes

Each row is a whole ``simulate(..., method="quadrature", threads=1)`` (backend cpp), rules built
and grown inside, best of ``--repeats``; the points are those of the rules the run ends with
(base + richer, all classes), and the step in the C++ loop is timed with them (400 more steps
resumed from the run, less 200 more). ``start 6`` repeats the test setting's run with every
dimension starting at 6 nodes, as the quadrature did before classes with many dimensions
started coarser (docs/model.md §8); at the larger P those rules have 6^6 + 9^6 points per class
and more, too many for a run of minutes.
"""

from __future__ import annotations

import argparse
import platform
import time
from contextlib import contextmanager

import mimfast as mf
from mimfast import quadrature

G, C = mf.Group, mf.Cluster
Z = (1.0, 1.3, 0.8, 1.2, 0.7, 1.1)


def six_groups(sizes):
    """One cluster of six groups ``(areas, size)`` with the latents Z."""
    return mf.Setting([C([G(n, c, z) for (n, c), z in zip(sizes, Z)])])


# name: (setting, eta, steps); the first is the setting of tests/test_quadrature.py
SETTINGS = {
    "test setting": (six_groups([(1, 2000), (1, 2), (2, 2), (1, 7), (3, 3), (2, 7)]), 100.0, 60),
    "P ~ 10^6": (six_groups([(1, 400_000), (100, 1000), (50, 2000), (200, 300), (1000, 150),
                             (500, 260)]), 3000.0, 200),
    "P ~ 10^9": (six_groups([(1, 400_000_000), (100, 10**6), (50, 2 * 10**6), (200, 300_000),
                             (1000, 150_000), (500, 260_000)]), 3000.0, 200),
}


@contextmanager
def start_at_six():
    """Every dimension starts at 6 nodes (the levels before the coarse ones were added)."""
    levels = quadrature.LEVELS
    quadrature.LEVELS = levels[levels.index(6):]
    try:
        yield
    finally:
        quadrature.LEVELS = levels


def best(fn, repeats):
    """Smallest wall time of ``fn()`` over ``repeats`` calls, and its last value."""
    out = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        value = fn()
        out = min(out, time.perf_counter() - t0)
    return out, value


def measure(setting, eta, steps, method, repeats):
    """Seconds per step of whole runs (rules built and grown inside) and the result."""
    run = lambda: mf.simulate(setting, eta, steps, record_every=steps, method=method, threads=1)
    seconds, r = best(run, repeats)
    return seconds / steps, r


def steady(setting, eta, r, extra, repeats):
    """Seconds per step of the C++ loop with the rules the run ended with: ``2 extra`` steps
    resumed from ``r`` less ``extra`` steps (both build the rules)."""
    run = lambda n: mf.simulate(setting, eta, r.last_step + n, record_every=r.record_every,
                                method="quadrature", threads=1, resume=r)
    t_more, _ = best(lambda: run(2 * extra), repeats)
    t_less, _ = best(lambda: run(extra), repeats)
    return (t_more - t_less) / extra


def row(name, setting, eta, steps, repeats):
    """A table row, and the C++ loop's step time with the end rules."""
    per_step, r = measure(setting, eta, steps, "quadrature", repeats)
    loop = steady(setting, eta, r, 200, repeats)
    quads = quadrature.build_quadratures(setting, r.levels)
    points = sum(q.base().points + q.rich().points for q in quads.values())
    nodes = max(max(quadrature.LEVELS[i] for i in q.levels) for q in quads.values())
    least = min(min(quadrature.LEVELS[i] for i in q.levels) for q in quads.values())
    att = max(r.attention(k, h, "own")[-1] for k, h in setting.classes())
    return (f"| {name} | {setting.P:,} | {steps} | {att:.4f} | {least}–{nodes} | {points:,} | "
            f"{loop * 1e3:.3f} ms | {per_step * 1e3:.1f} ms | {per_step / loop:.1f} | "
            f"{float(r.error.max()):.1e} |"), loop


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, threads=1; "
          f"best of {args.repeats}; mimfast {mf.__version__}\n")
    print("| setting | P | steps | own attention | nodes per dimension | points per step "
          "(end) | step in the C++ loop (end rules) | whole run per step | whole run / loop "
          "step | largest estimate |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    loops = {}
    for name, (s, eta, steps) in SETTINGS.items():
        text, loops[name] = row(name, s, eta, steps, args.repeats)
        print(text, flush=True)
        if not args.quick and name == "test setting":
            with start_at_six():
                print(row(name + ", start 6", s, eta, steps, 1)[0], flush=True)
    s, eta, steps = SETTINGS["test setting"]
    per_step, _ = measure(s, eta, steps, "exact", args.repeats)
    print(f"\nexact engine, test setting: {quadrature.grid_points_estimate(s):,} grid points "
          f"(estimate), {per_step * 1e3:.2f} ms per step: "
          f"{per_step / loops['test setting']:.1f} times the quadrature's step in the C++ loop "
          "(end rules)\n")
    kernel_rows(*SETTINGS["P ~ 10^6"][:1], args.repeats)


def kernel_rows(setting, repeats):
    """One kernel call (backend cpp, one thread) on single rules of one class, at Q = 0."""
    from mimfast.backends import cpp_backend
    from mimfast.grid import class_categories
    from mimfast.model import State, class_inputs

    sizes, areas = class_categories(setting, 0, 1)
    print("| rule of class (0, 1), P ~ 10^6 | points | rows | one kernel call | per point |")
    print("|---|---|---|---|---|")
    for nodes in ([3] * 6, [13] + [3] * 5, [19] + [4] * 5):
        p = quadrature.build_points(sizes, areas, setting.unmasked, nodes)
        inputs = class_inputs(setting, State.zeros(setting), 0, 1, p)
        seconds, _ = best(lambda p=p, i=inputs: [cpp_backend.kernel(p, i, 1) for _ in range(20)],
                          repeats)
        print(f"| {nodes} | {p.points:,} | {len(p.rest):,} | {seconds / 20 * 1e3:.3f} ms | "
              f"{seconds / 20 / p.points * 1e9:.0f} ns |")


if __name__ == "__main__":
    main()

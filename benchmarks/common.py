"""Seeded inputs shared by the benchmarks: settings, count grids, states, kernels.

Every benchmark uses the paper's setting (docs/model.md §4) with kappa_c = 0.9, kappa_s = 0.3,
gamma = 0.5, K = 1 and exact PP, at a fixed non-zero state drawn from a seeded generator,
so that runs on different commits time the same work.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

import mimfast as mf
from mimfast.backends import get_kernel
from mimfast.grid import build_grids
from mimfast.model import State, evaluate

__all__ = [
    "KAPPA_C",
    "KAPPA_S",
    "SEED",
    "best_time",
    "fresh_process",
    "gradient",
    "grids",
    "kernel",
    "points",
    "preset_eta",
    "script_args",
    "setting",
    "state",
    "tiled_setting",
    "warm",
]

KAPPA_C = 0.9
KAPPA_S = 0.3
SEED = 20250101


def setting(P):
    """The paper's setting ``Setting.paper(P, 0.9, 0.3)`` (gamma = 0.5, K = 1, exact PP)."""
    return mf.Setting.paper(P, KAPPA_C, KAPPA_S)


def tiled_setting(P, K=2, overlap=0.5):
    """K clusters of the paper's shape over shared tile groups (docs/model.md §3): local tiles of
    ``c = round(P**0.3)`` positions, and per cluster a global area of about ``P**0.9``
    positions made of whole tiles. K = 2: tile groups in neither global area, in cluster 0's
    only, in cluster 1's only and in both (``overlap`` of each global area); K = 3: in none, in
    one only (three groups) and in two (three groups, ``overlap / 2`` of each global area per
    pair). P is the tiles' total, within c of the argument."""
    from mimfast.setting import Cluster, Group

    c = max(2, round(P**KAPPA_S))
    tiles, area = P // c, max(1, round(P**KAPPA_C / c))
    if K == 2:
        both = round(overlap * area)
        counts = [tiles - 2 * area + both, area - both, area - both, both]
        roles = [(None, "G0", None, "G0"), (None, None, "G1", "G1")]
    elif K == 3:
        pair = round(overlap * area / 2)
        one = area - 2 * pair
        counts = [tiles - 3 * one - 3 * pair] + [one] * 3 + [pair] * 3
        roles = [(None, "A", None, None, "A", "A", None), (None, None, "B", None, "B", None, "B"),
                 (None, None, None, "C", None, "C", "C")]
    else:
        raise ValueError("K must be 2 or 3")
    keep = [j for j, n in enumerate(counts) if n > 0]  # (overlap 0: no shared tiles)
    groups = [Group(counts[j], c) for j in keep]
    return mf.Setting([Cluster(groups, roles=[r[j] for j in keep]) for r in roles])


def preset_eta(P):
    """The learning rate of the CLI presets at P (:func:`mimfast.cli.preset_eta`)."""
    from mimfast.cli import preset_eta

    return preset_eta(P, KAPPA_S)


def grids(s):
    """Count grids of every query class of setting ``s`` (default tail tolerance)."""
    return build_grids(s)


def state(s, seed=SEED):
    """A fixed non-zero state of setting ``s``.

    FP correlations ~ N(0, 0.5^2) with the own-area entry shifted by +1 (the direction
    training goes), PP correlations ~ N(0, 0.1^2); the same numbers for the same shapes. The
    columns of an area spanning several key categories take its first one's value.
    """
    rng = np.random.default_rng(seed)
    st = State.zeros(s)
    for a in st.fp:
        a[...] = rng.normal(0.0, 0.5, a.shape)
        a[:, 0] += 1.0
    if st.pp is not None:
        st.pp[...] = rng.normal(0.0, 0.1, st.pp.shape)
    for k, h in s.classes():  # the columns of a named area are one correlation
        named = s.class_named(k, h)
        if named is not None:
            st.fp[k][h] = [st.fp[k][h][a] if a >= 0 else v for a, v in zip(named, st.fp[k][h])]
    st.check(s)
    return st


def kernel(backend):
    """The kernel of ``backend``; NotImplementedError (asv: skipped) when it is unavailable."""
    try:
        return get_kernel(backend)
    except ImportError as exc:
        raise NotImplementedError(str(exc)) from None


def gradient(s, g, st, k, threads=None):
    """One exact gradient, as timed by the benchmarks."""
    return evaluate(s, g, st, k, threads)


def warm(s, g, st, k, threads=None):
    """Evaluate once so that numba compiles (or loads its cache) outside the timing."""
    gradient(s, g, st, k, threads)


def points(g):
    """Grid points summed over the query classes of a grid dict."""
    return sum(cg.points for cg in g.values())


def best_time(func, repeat=5, clock=time.perf_counter):
    """Smallest time of ``repeat`` calls of ``func()`` on ``clock`` (wall time by default), in
    seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = clock()
        func()
        best = min(best, clock() - t0)
    return best


def script_args(doc, argv=None):
    """The options ``--quick`` (P up to 10^6) and ``--threads`` of a table script whose
    docstring is ``doc``; prints the table's header line (date, machine, threads, version)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="P up to 10^6")
    parser.add_argument("--threads", type=int, default=1,
                        help="kernel threads (default 1: steadier on a shared machine)")
    args = parser.parse_args(argv)
    print(f"date: {time.strftime('%Y-%m-%d')}; machine: {platform.machine()}, "
          f"threads={args.threads}; mimfast {mf.__version__}\n")
    return args


def fresh_process(code, cache_dir):
    """The numbers that the Python ``code`` prints, run in a fresh process with numba's cache
    in ``cache_dir`` (empty: numba compiles everything the code calls)."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    return [float(v) for v in out.split()]


def cpu_time(func, repeat=5):
    """Smallest CPU time of this process over ``repeat`` calls of ``func()``, in seconds: for
    work on one thread, what a shared machine's other jobs do not inflate (the time a process
    waits for a core is not counted)."""
    return best_time(func, repeat, time.process_time)


def loop_step(s, eta, steps, repeat=5):
    """Seconds per GD step of ``simulate``'s C++ loop (quadrature, one thread, learning rate
    ``eta``): a run of ``steps`` less one of 0 steps (rules built and one evaluation), best of
    ``repeat`` each, in CPU time (:func:`cpu_time`)."""
    run = lambda n: mf.simulate(s, eta, n, record_every=100, method="quadrature", threads=1)
    return (cpu_time(lambda: run(steps), repeat) - cpu_time(lambda: run(0), repeat)) / steps

"""Seeded inputs shared by the benchmarks: settings, count grids, states, kernels.

Every benchmark uses the paper's setting (docs/model.md §4) with kappa_c = 0.9, kappa_s = 0.3,
gamma = 0.5, K = 1 and exact PP, at a fixed non-zero state drawn from a seeded generator,
so that runs on different commits time the same work.
"""

from __future__ import annotations

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
    "gradient",
    "grids",
    "kernel",
    "points",
    "preset_eta",
    "setting",
    "state",
    "warm",
]

KAPPA_C = 0.9
KAPPA_S = 0.3
SEED = 20250101


def setting(P):
    """The paper's setting ``Setting.paper(P, 0.9, 0.3)`` (gamma = 0.5, K = 1, exact PP)."""
    return mf.Setting.paper(P, KAPPA_C, KAPPA_S)


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
    training goes), PP correlations ~ N(0, 0.1^2); the same numbers for the same shapes.
    """
    rng = np.random.default_rng(seed)
    st = State.zeros(s)
    for a in st.fp:
        a[...] = rng.normal(0.0, 0.5, a.shape)
        a[:, 0] += 1.0
    if st.pp is not None:
        st.pp[...] = rng.normal(0.0, 0.1, st.pp.shape)
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


def best_time(func, repeat=5):
    """Smallest wall time of ``repeat`` calls of ``func()``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - t0)
    return best

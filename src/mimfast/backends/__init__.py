"""Kernel backends behind one registry.

Each backend module has ``NAME``, ``available() -> (bool, detail)`` and
``kernel(grid, inputs, threads) -> sums`` (the contract is written out in
:mod:`mimfast.backends.numpy_backend`). Everything else is shared.
"""

from __future__ import annotations

import importlib
import os
from numbers import Integral

__all__ = ["DEFAULT", "backend_module", "backends", "check_threads", "get_kernel"]

_MODULES = {
    "cpp": "mimfast.backends.cpp_backend",
    "numba": "mimfast.backends.numba_backend",
    "numpy": "mimfast.backends.numpy_backend",
}
DEFAULT = "cpp"


def _module(name):
    return importlib.import_module(_MODULES[name])


def backends():
    """The backends that can run here, with what each reports about itself.

    Returns
    -------
    dict
        ``{name: info}`` for every available backend, e.g.
        ``{"cpp": {"openmp": True, "max_threads": 2}, "numpy": {}}``. A backend whose
        dependency is missing (numba not installed, extension not built) is left out.
    """
    out = {}
    for name in _MODULES:
        ok, info = _module(name).available()
        if ok:
            out[name] = info
    return out


def backend_module(name):
    """The module of backend ``name`` (its kernel, and for "cpp" and "numba" its compiled
    loop); ValueError if unknown, ImportError if unavailable."""
    get_kernel(name)
    return _module(name)


def get_kernel(name):
    """The kernel of backend ``name``; ValueError if unknown, ImportError if unavailable."""
    if not isinstance(name, str):
        raise TypeError(f"backend must be a string, got {type(name).__name__}")
    if name not in _MODULES:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(_MODULES)}")
    module = _module(name)
    ok, why = module.available()
    if not ok:
        raise ImportError(f"backend {name!r} is not available: {why}")
    return module.kernel


MAX_THREADS = 2**16


def check_threads(threads):
    """Threads for a compiled kernel: ``threads`` (an int in [1, 65536]), or all cores when
    None."""
    if threads is None:
        try:
            return len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - not on Linux
            return os.cpu_count() or 1
    if isinstance(threads, bool) or not isinstance(threads, Integral):
        raise TypeError(f"threads must be a positive integer or None, got {type(threads).__name__}")
    if not 1 <= threads <= MAX_THREADS:
        raise ValueError(f"threads must lie in [1, {MAX_THREADS}], got {threads}")
    return int(threads)

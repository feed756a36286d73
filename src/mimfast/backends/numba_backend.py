"""The numba backend: the C++ kernel's moment method (``cpp/kernel.cpp``) compiled by numba.

It walks the same fixed blocks as the C++ kernel (``prange`` over blocks, per-block partial
sums added in block order), so its result does not depend on the number of threads.
Install with ``pip install mimfast[numba]``.

numba is imported only when this backend is first used (:func:`available` only looks for
it), so nothing about numba can affect the other backends. The compiled code is cached on
disk when numba finds a writable cache location; when it finds none (an unwritable
``HOME`` and package folder, say) the backend warns once and compiles without a cache.

Threads: numba's ``omp`` and ``tbb`` threading layers are safe to call from several Python
threads at once; its ``workqueue`` layer (the fallback when neither OpenMP nor TBB is
available) is not, and aborts the process when two threads enter it together. Calls are
therefore serialised by a lock whenever the layer is ``workqueue`` or not yet known.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
import warnings

import numpy as np

from .._extras import require
from ..model import rounding_parts
from . import _numba_cache, check_threads

NAME = "numba"
_LOCK = threading.Lock()
_compiled = None


def _installed():
    try:
        return importlib.util.find_spec("numba") is not None
    except (ImportError, ValueError):
        return False


def available():
    """Whether numba is installed (without importing it), its version and thread count."""
    if not _installed():
        return False, (
            "numba is not installed; install it with `pip install mimfast[numba]` "
            "(or `pip install numba`)"
        )
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("numba")
    except PackageNotFoundError:  # pragma: no cover - importable but without metadata
        ver = "unknown"
    threads = os.environ.get("NUMBA_NUM_THREADS", "")
    return True, {"version": ver,
                  "max_threads": int(threads) if threads.isdigit() else check_threads(None)}


def _all_sums():
    """The compiled entry point, importing numba and the kernels on first use."""
    global _compiled
    if _compiled is None:
        with _LOCK:
            if _compiled is None:
                try:
                    from . import _numba_kernels as kernels
                except RuntimeError as exc:
                    if "cache" not in str(exc):
                        raise
                    sys.modules.pop(f"{__package__}._numba_kernels", None)
                    warnings.warn(f"numba cannot cache compiled code here ({exc}); compiling "
                                  "without a cache (set NUMBA_CACHE_DIR to a writable folder "
                                  "to keep it between runs)", RuntimeWarning, stacklevel=4)
                    _numba_cache.CACHE = False
                    from . import _numba_kernels as kernels
                _compiled = kernels.all_sums
    return _compiled


def _serialised():
    """Whether calls must hold the lock: the workqueue layer, or a layer not yet chosen."""
    numba = require("numba", "the numba backend")

    try:
        return numba.threading_layer() == "workqueue"
    except ValueError:  # no parallel region has run yet
        return True


_NONE = np.zeros(0)
_ONE = np.zeros(1)
_NO_NAMES = np.zeros(0, dtype=np.int64)


def kernel(grid, inputs, threads=None):
    """docs/model.md §3 sums over one class grid, compiled by numba (first call compiles or loads cache).

    The same moment method as the C++ kernel (see ``cpp/kernel.cpp``): per block, the ten
    moments sum w x^a i^b, turned into the sums of docs/model.md §3 with the row's polynomial coefficients.
    """
    all_sums = _all_sums()
    numba = require("numba", "the numba backend")

    threads = min(check_threads(threads), numba.config.NUMBA_NUM_THREADS)
    alt = inputs.wu0 is not None
    weights = (inputs.wu, inputs.wm, inputs.wself, inputs.wu0 if alt else inputs.wu,
               inputs.wm0 if alt else inputs.wm, inputs.wself0, alt)
    if hasattr(grid, "node_x"):  # a quadrature point set: no probability tables
        args = (grid.counts, grid.rest, _NONE, _NONE, 0, _NONE, 0, grid.inner, grid.last,
                grid.blocks, grid.fsizes, inputs.z, grid.s_a, grid.s_b, grid.inv_areas,
                grid.inv_sizes, *weights, grid.centre, grid.node_x, grid.node_w)
    else:
        args = (grid.counts, grid.rest, grid.row_weight, grid.t_inner, grid.off_inner,
                grid.t_last, grid.off_last, grid.inner, grid.last, grid.blocks, grid.fsizes,
                inputs.z, grid.s_a, grid.s_b, grid.inv_areas, grid.inv_sizes, *weights, _ONE,
                _NONE, _NONE)
    args += (_NO_NAMES if inputs.named is None else inputs.named,)
    if _serialised():
        with _LOCK:
            sums, mag = _call(numba, all_sums, args, threads)
    else:
        sums, mag = _call(numba, all_sums, args, threads)
    return np.concatenate([sums, rounding_parts(sums, mag, len(grid.fsizes))])


def _call(numba, all_sums, args, threads):
    previous = numba.get_num_threads()  # per Python thread
    numba.set_num_threads(threads)
    try:
        return all_sums(*args)
    finally:
        numba.set_num_threads(previous)

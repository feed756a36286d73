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
import time
import warnings

import numpy as np

from .._extras import require
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


def _kernels():
    """The compiled functions, importing numba and the kernels on first use."""
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
                _compiled = kernels
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


def _fields(grid):
    """The arrays of ``grid`` (a count grid or a point set) in the order of
    ``_numba_kernels.FIELDS``, and its scalars (off_inner, off_last, inner, last, points,
    n_cat); cached on the grid."""
    got = getattr(grid, "_numba", None)
    if got is None:
        points = hasattr(grid, "node_x")
        if points:
            tables = (_NONE, _NONE, _NONE, grid.centre, grid.node_x, grid.node_w)
            offsets = (0, 0)
        else:
            tables = (grid.row_weight, grid.t_inner, grid.t_last, _ONE, _NONE, _NONE)
            offsets = (int(grid.off_inner), int(grid.off_last))
        rw, t_in, t_last, centre, node_x, node_w = tables
        arrays = (grid.counts.ravel(), grid.rest, rw, t_in, t_last, grid.blocks.ravel(),
                  grid.fsizes, grid.s_a, grid.s_b, grid.inv_areas, grid.inv_sizes, centre,
                  node_x, node_w)
        size = int((grid.blocks[:, 2] - grid.blocks[:, 1]).sum())
        got = grid._numba = (arrays, (*offsets, int(grid.inner), int(grid.last), size,
                                      int(grid.n_cat)))
    return got


def pack(grids):
    """The arrays of several evaluators, each field concatenated, with the offsets of each
    evaluator's part (rows: evaluators and one past the last) and their scalars."""
    fields = [_fields(g) for g in grids]
    columns = list(zip(*(arrays for arrays, _ in fields)))
    flat = tuple(np.ascontiguousarray(np.concatenate(col)) for col in columns)
    off = np.zeros((len(grids) + 1, len(columns)), dtype=np.int64)
    off[1:] = np.cumsum([[len(a) for a in arrays] for arrays, _ in fields], axis=0)
    return flat, off, np.array([s for _, s in fields], dtype=np.int64).reshape(len(grids), 6)


def _threads(threads):
    numba = require("numba", "the numba backend")
    return min(check_threads(threads), numba.config.NUMBA_NUM_THREADS)


def _call(func, threads, *args):
    """``func(*args)`` on ``threads`` numba threads, holding the lock where the threading
    layer needs it."""
    numba = require("numba", "the numba backend")
    if _serialised():
        with _LOCK:
            return _on_threads(numba, threads, func, args)
    return _on_threads(numba, threads, func, args)


def _on_threads(numba, threads, func, args):
    previous = numba.get_num_threads()  # per Python thread
    numba.set_num_threads(threads)
    try:
        return func(*args)
    finally:
        numba.set_num_threads(previous)


def kernel(grid, inputs, threads=None):
    """docs/model.md §3 sums over one class grid or point set, compiled by numba (the first
    call compiles or loads the cache).

    The same moment method as the C++ kernel (see ``cpp/kernel.cpp``): per block, the ten
    moments sum w x^a i^b, turned into the sums of docs/model.md §3 with the row's polynomial
    coefficients.
    """
    kernels = _kernels()
    (counts, rest, rw, t_in, t_last, blocks, *consts, centre, node_x, node_w), scal = \
        _fields(grid)
    threads = kernels.threads_for(np.array([scal]), _threads(threads))
    alt = inputs.wu0 is not None
    # z copied: a read-only array is another type to numba, whose functions would be compiled
    # again for it (those of the loop take z writable)
    args = (counts.reshape(-1, grid.n_cat), rest, rw, t_in, scal[0], t_last, scal[1], scal[2],
            scal[3], blocks.reshape(-1, 3), consts[0], np.array(inputs.z, dtype=np.float64),
            *consts[1:], inputs.wu,
            inputs.wm, inputs.wself, inputs.wu0 if alt else inputs.wu,
            inputs.wm0 if alt else inputs.wm, inputs.wself0, alt, centre, node_x, node_w,
            _NO_NAMES if inputs.named is None else np.asarray(inputs.named, dtype=np.int64))
    func = kernels.all_sums if kernels.threaded(scal[4], threads) else kernels.all_sums_serial
    fb, ib = kernels.scratch(len(blocks) // 3, grid.n_cat)
    out = np.empty(3 * grid.n_cat + 6)
    _call(func, threads, *args, np.empty(fb), np.zeros(ib, dtype=np.int64), out)
    return out


def evaluators(grid):
    """The evaluators of one class, ``(eval, check)``: a count grid and no check, or an
    adaptive quadrature's richer and base point sets (as ``cpp_backend.evaluators``)."""
    if hasattr(grid, "rich"):
        return grid.rich(), grid.base()
    return grid, None


def fused_loop(setting, grids, layout, tol=0.0):
    """The numba GD loop (:class:`FusedLoop`) over the class grids or quadratures of a run,
    state laid out by ``layout``; it stops before a step whose estimate of a class exceeds
    ``tol`` (0: never)."""
    from ..model import loop_classes

    classes = setting.classes()
    pairs = [evaluators(grids[c]) for c in classes]
    loop = FusedLoop([e for e, _ in pairs], [c for _, c in pairs],
                     **loop_classes(setting, grids, layout), n_state=layout.size)
    for i, (k, h) in enumerate(classes):
        named = setting.class_named(k, h)
        if named is not None:  # per class, like z: the point sets stay shared
            loop.set_named(i, named)
    if tol:
        for i, (e, c) in enumerate(pairs):
            loop.set_evaluators(i, e, c, tol)
    return loop


class FusedLoop:
    """The GD loop of a whole run compiled by numba, with the interface of the C++ loop
    (``mimfast._core.FusedLoop``, ``cpp/fused.hpp``) and its arithmetic, step for step.

    numba code cannot look for signals, so :meth:`run` steps in compiled calls of about
    ``poll_seconds`` each; Ctrl-C between two calls finds every completed step in place. What
    a call changes (state, step, records) lives in arrays it writes, and the Python side
    replaces its references in one assignment, so an interrupt leaves them whole.
    """

    def __init__(self, evals, checks, z, live, a_off, p_off, coef, coef_loss, n_state):
        nc = len(evals)
        if not all(len(v) == nc for v in (checks, z, live, a_off, p_off, coef, coef_loss)):
            raise ValueError("fused loop: one entry per class in every list")
        self.n_cat = np.array([len(v) for v in z], dtype=np.int64)
        self.c_off = np.concatenate([[0], np.cumsum(self.n_cat)]).astype(np.int64)
        self.z = np.concatenate(z).astype(np.float64)
        self.live = np.concatenate(live).astype(np.bool_)
        self.named = np.zeros(len(self.z), dtype=np.int64)  # per category, where has_named
        self.has_named = np.zeros(nc, dtype=np.bool_)
        self.a_off, self.p_off = (np.array(v, dtype=np.int64) for v in (a_off, p_off))
        self.coef, self.coef_loss = (np.array(v, dtype=np.float64) for v in (coef, coef_loss))
        self.tol = np.zeros(nc)
        self.accept = np.full(nc, -1, dtype=np.int64)
        self.n_state = int(n_state)
        self.width = 1 + 2 * self.n_state + int(self.n_cat.sum()) + 2 * nc
        self._evals, self._checks = list(evals), list(checks)
        self._pack()
        self._state = np.zeros(self.n_state)
        self._next = np.zeros(self.n_state)
        self._grad = np.zeros(self.n_state)
        self._att = np.zeros(int(self.n_cat.sum()))
        self._ploss, self._err, self._max_err = np.zeros(nc), np.zeros(nc), np.zeros(nc)
        self._last = np.zeros(1)
        self._work = np.zeros((5, int(self.n_cat.max())))
        # the step, the last recorded step, the records held, the records forgotten; the
        # records (steps, rows): replaced together
        self._held = (np.array([0, -1, 0, 0], dtype=np.int64), np.zeros(0, dtype=np.int64),
                      np.zeros((0, self.width)))
        self._budget = 1

    def _pack(self):
        """Pack the evaluators (after a change) and point each class at its own."""
        grids = self._evals + [c for c in self._checks if c is not None]
        ev = np.arange(len(self._evals), dtype=np.int64)
        chk, j = np.full(len(self._checks), -1, dtype=np.int64), len(self._evals)
        for i, c in enumerate(self._checks):
            if c is not None:
                chk[i], j = j, j + 1
        self._packed = (*pack(grids), ev, chk)
        # the kernel's scratch, for the largest evaluator, and rows for a class's sums and its
        # check's: a step allocates nothing
        kernels = _kernels()
        fb, ib = np.max([kernels.scratch(len(g.blocks), g.n_cat) for g in grids], axis=0)
        self._scratch = (np.empty(fb), np.zeros(ib, dtype=np.int64),
                         np.zeros((2, 3 * int(self.n_cat.max()) + 6)))

    def set_state(self, t, state, last_recorded):
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.n_state,):
            raise ValueError(f"fused loop: state must be a 1-D array of length {self.n_state}")
        if t < 0:
            raise ValueError("fused loop: negative step")
        ctr, steps, rows = self._held
        self._state[:] = state
        self._held = (np.array([t, last_recorded, ctr[2], ctr[3]], dtype=np.int64), steps, rows)

    def set_named(self, i, named):
        """Class i's named areas (:attr:`mimfast.model.ClassInputs.named`)."""
        if not 0 <= i < len(self._evals):
            raise ValueError("fused loop: no such class")
        named = np.asarray(named, dtype=np.int64)
        if named.shape != (self.n_cat[i],):
            raise ValueError("fused loop: named must have one entry per category")
        self.named[self.c_off[i]:self.c_off[i + 1]] = named
        self.has_named[i] = True

    def set_evaluators(self, i, eval, check=None, tol=0.0, accept=-1):
        if not 0 <= i < len(self._evals):
            raise ValueError("fused loop: no such class")
        if eval.n_cat != self.n_cat[i] or (check is not None and check.n_cat != self.n_cat[i]):
            raise ValueError(f"fused loop: the new evaluators must have {self.n_cat[i]} "
                             "categories")
        if not tol >= 0:
            raise ValueError("fused loop: tol must be >= 0")
        self._evals[i], self._checks[i] = eval, check
        self._pack()
        self.tol[i], self.accept[i] = tol, accept

    @property
    def t(self):
        return int(self._held[0][0])

    @property
    def recorded(self):
        ctr = self._held[0]
        return int(ctr[3] + ctr[2])

    def state(self):
        return self._state.copy()

    def last(self):
        return (self._grad.copy(), float(self._last[0]), self._att.copy(), self._ploss.copy(),
                self._err.copy())

    def max_error(self):
        return self._max_err.copy()

    def records(self, start):
        """Records start .. recorded: steps, loss, state, grad, attention, patch loss, error."""
        ctr, steps, rows = self._held
        if not ctr[3] <= start <= ctr[3] + ctr[2]:
            raise ValueError(f"fused loop: records from {start} are not held")
        a, b = start - ctr[3], ctr[2]
        rows = rows[a:b]
        cuts = np.cumsum([1, self.n_state, self.n_state, len(self._att), len(self._ploss)])
        loss, state, grad, att, ploss, err = np.split(rows, cuts, axis=1)
        return (steps[a:b].copy(), loss[:, 0].copy(), state.copy(), grad.copy(), att.copy(),
                ploss.copy(), err.copy())

    def forget(self, upto):
        ctr, steps, rows = self._held
        drop = min(upto, ctr[3] + ctr[2]) - ctr[3]
        if drop > 0:
            held = np.array([ctr[0], ctr[1], ctr[2] - drop, ctr[3] + drop], dtype=np.int64)
            self._held = (held, steps[drop:].copy(), rows[drop:].copy())

    def _room(self, more):
        """Room in the record arrays for ``more`` records."""
        ctr, steps, rows = self._held
        if ctr[2] + more > len(steps):
            size = max(2 * len(steps), ctr[2] + more)
            new_steps = np.zeros(size, dtype=np.int64)
            new_rows = np.zeros((size, self.width))
            new_steps[:ctr[2]] = steps[:ctr[2]]
            new_rows[:ctr[2]] = rows[:ctr[2]]
            self._held = (ctr, new_steps, new_rows)

    def run(self, steps, record_every, eta, threads, stop_every=0, seconds=0.0,
            poll_seconds=0.05):
        """Step until the run ends or a limit hands control back (``cpp/fused.hpp``, run)."""
        if record_every < 1:
            raise ValueError("fused loop: record_every < 1")
        if self.t > steps:
            raise ValueError("fused loop: already past the last step")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"fused loop: threads must be at least 1, got {threads}")
        kernels = _kernels()
        threads = kernels.threads_for(self._packed[2], _threads(threads))
        start = time.monotonic()
        while True:
            budget = self._budget
            self._room(budget)
            ctr, rec_steps, rows = self._held
            t0, before = time.monotonic(), int(ctr[0])
            status = _call(kernels.run_steps, threads, *self._packed, self.n_cat, self.c_off,
                           self.z, self.live, self.named, self.has_named, self.a_off, self.p_off,
                           self.coef, self.coef_loss, self.tol, self.accept, self._state,
                           self._next, self._grad, self._att, self._ploss, self._err,
                           self._max_err, self._last, self._work, *self._scratch, ctr, rows,
                           rec_steps, steps, record_every, float(eta), threads, stop_every,
                           budget)
            now = time.monotonic()
            done = int(ctr[0]) - before
            # steps per call: about poll_seconds each, growing at most fourfold at a time
            per = (now - t0) / max(done, 1)
            self._budget = max(1, min(4 * budget, int(poll_seconds / per) if per > 0 else
                                      4 * budget, 1 << 20))
            if status != kernels.BUDGET:
                return status
            if seconds > 0 and now - start >= seconds:
                return kernels.CHUNK

"""Population gradient descent of the reduced model and its recorded trajectory."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

from .backends import DEFAULT, check_threads, get_kernel
from .grid import DEFAULT_MAX_BYTES, build_grids, check_tail_tol
from .model import State, evaluate
from .setting import Setting

__all__ = ["simulate", "gradient", "Result", "Interrupted"]


class Interrupted(KeyboardInterrupt):
    """Raised when a :func:`simulate` run is interrupted (Ctrl-C).

    Attributes
    ----------
    result : Result
        Everything recorded before the interruption, ending with the last completed step.
    """

    def __init__(self, result):
        super().__init__(f"simulation interrupted after step {result.last_step} "
                         f"(last recorded step {int(result.steps[-1])})")
        self.result = result


def _fp_column(G, key):
    if key == "own":
        return 0
    if isinstance(key, Integral) and not isinstance(key, bool):
        if 0 <= key < G:
            return 1 + int(key)
        raise ValueError(f"group key {key} out of range: this cluster has groups 0..{G - 1}")
    raise ValueError(f"unknown key {key!r}: use 'own' or a group index 0..{G - 1}")


class Result:
    """Trajectory of a :func:`simulate` run.

    Step t is the state after t GD updates (t = 0 is Q = 0); recorded steps are 0, every
    ``record_every``, and the last.

    Attributes
    ----------
    setting : Setting
    backend : str
    eta : float
    steps : numpy.ndarray of int
        Recorded steps.
    loss : numpy.ndarray
        Population loss L at each recorded step.
    state : State
        State after ``last_step`` GD updates.
    last_step : int
        Last completed step (beyond the last recorded one only in an interrupted run).
    record_every : int
    dropped : float
        Largest probability mass a class grid left out.
    tail_tol : float or None
        Tail tolerance of the count grids (None: not known, e.g. an old results file).
    """

    def __init__(self, setting, backend, eta, steps, loss, fp, fp_grad, attention, patch_loss,
                 pp, state, dropped, last_step=None, record_every=1, tail_tol=None):
        self.setting = setting
        self.backend = backend
        self.eta = eta
        self.steps = np.asarray(steps, dtype=np.int64)
        self.loss = np.asarray(loss, dtype=np.float64)
        self._fp = fp
        self._fp_grad = fp_grad
        self._attention = attention
        self._patch_loss = patch_loss
        self._pp = pp
        self.state = state
        self.dropped = dropped
        self.last_step = int(self.steps[-1]) if last_step is None else int(last_step)
        self.record_every = int(record_every)
        self.tail_tol = None if tail_tol is None else float(tail_tol)

    def _class(self, k, h):
        K = self.setting.K
        for name, v in (("cluster index k", k), ("group index h", h)):
            if isinstance(v, bool) or not isinstance(v, Integral):
                raise TypeError(f"{name} must be an integer, got {type(v).__name__}")
        if not 0 <= k < K:
            raise ValueError(f"cluster index k={k!r} out of range 0..{K - 1}")
        G = len(self.setting.clusters[k].groups)
        if not 0 <= h < G:
            raise ValueError(f"group index h={h!r} out of range 0..{G - 1} for cluster {k}")
        return G

    def check(self):
        """Raise ValueError unless the record is whole: every trajectory has one entry per
        recorded step, the steps increase, and the state fits the setting."""
        s, n = self.setting, len(self.steps)
        problems = []
        if n == 0:
            problems.append("no recorded step")
        if len(self.loss) != n:
            problems.append(f"{len(self.loss)} losses for {n} recorded steps")
        for name in ("_fp", "_fp_grad", "_attention", "_patch_loss"):
            arrays = getattr(self, name)
            if len(arrays) != s.K or any(len(a) != n for a in arrays):
                problems.append(f"{name[1:]} does not have one entry per recorded step")
        if (self._pp is None) != (s.pp != "exact") or (self._pp is not None
                                                         and len(self._pp) != n):
            problems.append("pp does not have one entry per recorded step")
        if n and (np.any(np.diff(self.steps) <= 0) or self.steps[0] != 0
                  or self.last_step < self.steps[-1]):
            problems.append(f"recorded steps {self.steps[:3].tolist()}... (last completed "
                            f"{self.last_step}) are not 0 < ... <= last step")
        if problems:
            raise ValueError("the result is incomplete or inconsistent: " + "; ".join(problems))
        self.state.check(s)

    def fp(self, k, h, key):
        """FP correlation of a query of group h (cluster k) with a feature of category ``key``.

        Parameters
        ----------
        k, h : int
            Cluster and group of the query.
        key : "own" or int
            Its own area, or group g (for g = h: the group's other areas).

        Returns
        -------
        numpy.ndarray
            Value at each recorded step (per area of the category).
        """
        G = self._class(k, h)
        return self._fp[k][:, h, _fp_column(G, key)].copy()

    def fp_grad(self, k, h, key):
        """dL/dA for the same entries as :meth:`fp` (per area), at each recorded step."""
        G = self._class(k, h)
        return self._fp_grad[k][:, h, _fp_column(G, key)].copy()

    def attention(self, k, h, key):
        """Expected attention of a masked query of group h on the unmasked keys of ``key``.

        ``key="own"`` is the theorem's attention on the query's own area; a group index g is
        the total attention on the unmasked keys of group g's other areas.
        """
        G = self._class(k, h)
        return self._attention[k][:, h, _fp_column(G, key)].copy()

    def patch_loss(self, k, h):
        """E[l | k, h]: expected loss of a masked query of group h in cluster k."""
        self._class(k, h)
        return self._patch_loss[k][:, h].copy()

    def pp(self, h, key):
        """PP correlation of a query of group h with one key position of ``key``.

        ``key`` is ``"self"``, ``"own"`` (another position of its area) or a group index g.
        Only for settings with ``pp="exact"``.
        """
        if self._pp is None:
            raise ValueError("this run has frozen PP correlations (pp='frozen'): they are 0")
        G = self._class(0, h)
        col = 0 if key == "self" else 1 + _fp_column(G, key)
        return self._pp[:, h, col].copy()

    def __len__(self):
        return len(self.steps)

    def __repr__(self):
        return (f"Result(steps={int(self.steps[-1])}, recorded={len(self.steps)}, "
                f"backend={self.backend!r}, loss={self.loss[-1]:.6g})")


def _check_run(setting, eta, steps, record_every, threads):
    """Validated ``(eta, steps, record_every, threads)`` as plain Python numbers."""
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a mimfast.Setting, got {type(setting).__name__}")
    if isinstance(eta, bool) or not isinstance(eta, Real):
        raise TypeError(f"eta must be a real number, got {type(eta).__name__}")
    try:
        eta = float(eta)
    except OverflowError:
        raise ValueError(f"eta must be finite, got {eta!r} (too large for a float)") from None
    if not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be finite and non-negative, got {eta}")
    for name, value, least in (("steps", steps, 0), ("record_every", record_every, 1)):
        if isinstance(value, bool) or not isinstance(value, Integral):
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
        if value < least:
            raise ValueError(f"{name} must be at least {least}, got {value}")
    threads = None if threads is None else check_threads(threads)
    return eta, int(steps), int(record_every), threads


def simulate(setting, eta, steps, record_every=1, backend=DEFAULT, threads=None,
             tail_tol=1e-15, max_grid_bytes=DEFAULT_MAX_BYTES, resume=None, callback=None):
    """Run exact population GD from Q = 0 and record the trajectory.

    Parameters
    ----------
    setting : Setting
    eta : float
        Learning rate (finite, >= 0).
    steps : int
        Number of GD updates (>= 0).
    record_every : int, default 1
        Record steps 0, record_every, 2 record_every, ... and the last.
    backend : {"cpp", "numba", "numpy"}
        Kernel backend; see :func:`mimfast.backends`.
    threads : int, optional
        Threads of a compiled kernel (default: all cores).
    tail_tol : float, default 1e-15
        Probability mass each class's count grid may leave out.
    max_grid_bytes : int
        Memory limit of one class grid.
    resume : Result, optional
        An unfinished run of the same setting, eta and record_every (for example
        ``Interrupted.result`` or a loaded checkpoint): continue from its ``state`` at its
        ``last_step``. The result equals that of an uninterrupted run.
    callback : callable, optional
        ``callback(t, grad, partial)`` after every completed GD step t: ``grad`` is the
        :class:`~mimfast.Gradient` evaluated at step t - 1 (its observables), and ``partial()``
        builds the :class:`Result` so far, state at step t included (for progress displays
        and checkpoints; it copies the record, so call it only when needed).

    Returns
    -------
    Result

    Raises
    ------
    Interrupted
        On Ctrl-C; its ``result`` holds every step recorded so far and the state after the
        last completed step, ready for ``resume``.
    """
    eta, steps, record_every, threads = _check_run(setting, eta, steps, record_every, threads)
    tail_tol = check_tail_tol(tail_tol)
    kernel = get_kernel(backend)
    if resume is not None:
        _resume_point(resume, setting, eta, record_every, steps, backend, tail_tol)
    grids = build_grids(setting, tail_tol, max_grid_bytes)
    dropped = max(g.dropped for g in grids.values())
    keys = ("steps", "loss", "fp", "fp_grad", "attention", "patch_loss", "pp")
    rec = {key: [] for key in keys}
    t, state = 0, State.zeros(setting)
    if resume is not None:
        t, state, n = _resume_point(resume, setting, eta, record_every, steps, backend, tail_tol)
        rec["steps"] = list(resume.steps[:n])
        rec["loss"] = list(resume.loss[:n])
        for key in ("fp", "fp_grad", "attention"):
            rec[key] = [[a[i] for a in getattr(resume, "_" + key)] for i in range(n)]
        rec["patch_loss"] = [[a[i] for a in resume._patch_loss] for i in range(n)]
        rec["pp"] = [] if resume._pp is None else list(resume._pp[:n])
    current = [t, state]

    def partial():
        stack = lambda key: [np.array([x[k] for x in rec[key]]) for k in range(setting.K)]  # noqa: E731
        pp = np.array(rec["pp"]) if setting.pp == "exact" else None
        return Result(setting, backend, float(eta), rec["steps"], rec["loss"], stack("fp"),
                      stack("fp_grad"), stack("attention"), stack("patch_loss"), pp,
                      current[1], dropped, last_step=current[0], record_every=record_every,
                      tail_tol=tail_tol)

    try:
        while True:
            grad = evaluate(setting, grids, state, kernel, threads)
            if (t % record_every == 0 or t == steps) and (not rec["steps"] or rec["steps"][-1] < t):
                rec["steps"].append(t)
                rec["loss"].append(grad.loss)
                rec["fp"].append([a.copy() for a in state.fp])
                rec["fp_grad"].append(grad.fp)
                rec["attention"].append(grad.attention)
                rec["patch_loss"].append(grad.patch_loss)
                if state.pp is not None:
                    rec["pp"].append(state.pp.copy())
            if t == steps:
                break
            new = state.updated(grad, eta)
            if not all(np.all(np.isfinite(a)) for a in new.fp):
                raise FloatingPointError(
                    f"the state became non-finite at step {t + 1}: eta={eta} is too large"
                )
            state = new
            t += 1
            current[:] = [t, state]
            if callback is not None:
                callback(t, grad, partial)
    except KeyboardInterrupt:
        if rec["steps"]:
            raise Interrupted(partial()) from None
        raise
    return partial()


def _resume_point(resume, setting, eta, record_every, steps, backend, tail_tol):
    """Where a resumed run starts: ``(step, state, records kept)``, after checking that the
    saved run is whole and was made with the same parameters (a run continued with other
    ones would not equal an uninterrupted run, and its result could not say so)."""
    if not isinstance(resume, Result):
        raise TypeError(f"resume must be a mimfast.Result, got {type(resume).__name__}")
    try:
        resume.check()
    except ValueError as exc:
        raise ValueError(f"resume: {exc}") from None
    if resume.setting != setting:
        raise ValueError("resume: the saved run has a different setting")
    if resume.eta != float(eta) or resume.record_every != record_every:
        raise ValueError(
            f"resume: the saved run used eta={resume.eta}, record_every={resume.record_every}; "
            f"got eta={eta}, record_every={record_every}"
        )
    if resume.backend != backend:
        raise ValueError(f"resume: the saved run used backend {resume.backend!r}, got "
                         f"{backend!r}; continue it with backend={resume.backend!r} (backends "
                         "agree to about 1e-14, not bit for bit)")
    if resume.tail_tol is not None and resume.tail_tol != tail_tol:
        raise ValueError(f"resume: the saved run used tail_tol={resume.tail_tol:g}, got "
                         f"tail_tol={tail_tol:g}; the count grids would differ")
    if resume.last_step > steps:
        raise ValueError(f"resume: the saved run is already at step {resume.last_step} > {steps}")
    n = len(resume)
    # the final step of a shorter run is recorded off the record_every grid; extending the run
    # drops it, as an uninterrupted longer run would not have recorded it
    last = int(resume.steps[-1])
    if last == resume.last_step and last % record_every and steps > last:
        n -= 1
    return resume.last_step, resume.state.copy(), n


def gradient(setting, state=None, backend=DEFAULT, threads=None, tail_tol=1e-15):
    """One exact expected gradient of the population loss (docs/model.md §2–3).

    Parameters
    ----------
    setting : Setting
    state : State, optional
        Reduced state (default Q = 0).
    backend : str
    threads : int, optional
    tail_tol : float

    Returns
    -------
    Gradient
        dL/dA and dL/dB shaped like the state, with the loss and observables.
    """
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a mimfast.Setting, got {type(setting).__name__}")
    state = State.zeros(setting) if state is None else state
    if not isinstance(state, State):
        raise TypeError(f"state must be a mimfast.State, got {type(state).__name__}")
    state.check(setting)
    threads = None if threads is None else check_threads(threads)
    kernel = get_kernel(backend)
    return evaluate(setting, build_grids(setting, check_tail_tol(tail_tol)), state, kernel,
                    threads)

"""Population gradient descent of the reduced model and its recorded trajectory."""

from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np

from .backends import DEFAULT, backend_module, check_threads, get_kernel
from .grid import DEFAULT_MAX_BYTES, build_grids, check_tail_tol
from .model import Gradient, State, StateLayout, class_inputs, evaluate, own_lead
from .quadrature import build_quadratures, choose_method
from .result import Result, _empty
from .setting import Setting

__all__ = ["simulate", "gradient", "Result", "Interrupted", "ToleranceError", "ToleranceWarning"]


class ToleranceError(ArithmeticError):
    """The quadrature could not meet its error tolerance (raised with ``strict=True``)."""


class ToleranceWarning(UserWarning):
    """The quadrature could not meet its error tolerance at some step."""


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
    steps, record_every = _count("steps", steps, 0), _count("record_every", record_every, 1)
    threads = None if threads is None else check_threads(threads)
    return eta, steps, record_every, threads


def _count(name, value, least):
    """``value`` as an int, checked to be an integer >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < least:
        raise ValueError(f"{name} must be at least {least}, got {value}")
    if value > 2**53:  # step counts stay exact in doubles and far from int64 overflow
        raise ValueError(f"{name} must be at most 2^53 = {2**53}, got {value}")
    return int(value)


def simulate(setting, eta, steps, record_every=1, backend=DEFAULT, threads=None,
             tail_tol=1e-15, max_grid_bytes=DEFAULT_MAX_BYTES, resume=None, callback=None,
             callback_every=None, method="auto", rtol=1e-13, strict=False):
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
        Kernel backend; see :func:`mimfast.backends`. With "cpp" the whole loop runs in C++,
        with "numba" compiled by numba (state, update and record included), and gives the
        same bytes as the Python loop with the same kernel.
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
        ``callback(t, grad, partial)`` after some completed GD steps t: after every step from a
        multiple of ``callback_every`` (t - 1 = j callback_every), after the last step, and
        otherwise about every :data:`CALLBACK_SECONDS` seconds. ``grad`` is the
        :class:`~mimfast.Gradient` evaluated at step t - 1 (its observables; those of a
        recorded step when callback_every = record_every), and ``partial()`` builds the
        :class:`Result` so far, state at step t included (for progress displays and
        checkpoints; it copies the record, so call it only when needed).
    method : {"auto", "exact", "quadrature"}, default "auto"
        ``exact`` sums the count grid (docs/model.md §3); ``quadrature`` uses Gauss–Hahn rules
        whose cost does not grow with P (docs/model.md §8); ``auto`` picks exact when its grid
        is small (:func:`mimfast.quadrature.choose_method`). ``Result.method`` records it.
        With backends "cpp" and "numba" both methods run in the compiled loop; a quadrature
        whose error estimate misses ``rtol`` hands back to Python, which grows its rules and
        continues.
    rtol : float, default 1e-13
        Quadrature: each step's estimated error of every class (relative to the norms of its
        gradient, attention and loss) must stay below this; node counts grow until it does.
    strict : bool, default False
        Quadrature: raise :class:`ToleranceError` when the tolerance cannot be met (otherwise
        the run goes on, warns with :class:`ToleranceWarning` and sets
        ``Result.tolerance_met = False``).
    callback_every : int, optional
        Steps whose gradient must reach the callback (e.g. checkpoints, or stopping on a
        recorded observable); default: only the timed calls.

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
    if callback_every is not None:
        callback_every = _count("callback_every", callback_every, 1)
    tail_tol = check_tail_tol(tail_tol)
    kernel = get_kernel(backend)
    if resume is not None:
        _resume_point(resume, setting, eta, record_every, steps, backend, tail_tol)
    _check_tolerance(rtol, strict)
    method = choose_method(setting, method)
    if resume is not None and resume.method != method:
        raise ValueError(f"resume: the saved run used method={resume.method!r}, got {method!r}")
    grids = evaluators(setting, method, tail_tol, max_grid_bytes,
                       None if resume is None else resume.levels)
    dropped = max(g.dropped for g in grids.values())
    # quadrature: whether rtol was always met (error estimates are recorded with the steps)
    quad = {"met": True, "rtol": rtol, "strict": strict}
    blocks = []  # whole records, in blocks; a block is appended in one step or not at all
    t, state = 0, State.zeros(setting)
    if resume is not None:
        t, state, n = _resume_point(resume, setting, eta, record_every, steps, backend, tail_tol)
        blocks.append((None, resume.block(n)))
        quad["met"] = resume.tolerance_met
    at = [t, state]  # the last completed step and its state, replaced in one step
    loop = None
    if backend in FUSED:
        loop = Fused(backend, setting, grids, blocks, t, state,
                     quad if method == "quadrature" else None)

    def partial():
        if loop is not None:
            loop.drain()
            at[:] = [loop.t, loop.state()]
        quadrature = method == "quadrature"
        *record, error = _stack(setting, [b for _, b in blocks])
        return Result(setting, backend, eta, *record, at[1], dropped, last_step=at[0],
                      record_every=record_every, tail_tol=tail_tol, method=method,
                      error=error, tolerance_met=quad["met"],
                      levels={key: g.levels for key, g in grids.items()} if quadrature else None)

    clock = _Clock(callback, callback_every, steps, partial)
    try:
        if loop is not None:
            loop.run(steps, record_every, eta, threads, clock, quad)
        else:
            _python_loop(setting, grids, kernel, threads, eta, steps, record_every, blocks, at,
                         clock, quad)
    except KeyboardInterrupt:
        result = partial()
        if len(result.steps):
            raise Interrupted(result) from None
        raise
    return partial()


CALLBACK_SECONDS = 0.25
FUSED = {"cpp", "numba"}  # backends whose whole loop runs compiled (numpy steps in Python)


class _Clock:
    """When :func:`simulate` calls its callback (see there)."""

    def __init__(self, callback, every, steps, partial):
        self.callback, self.every, self.steps, self.partial = callback, every, steps, partial
        self.last = time.monotonic()

    def due(self, t):
        return self.callback is not None and (
            t == self.steps or (self.every is not None and (t - 1) % self.every == 0)
            or time.monotonic() - self.last >= CALLBACK_SECONDS)

    def __call__(self, t, grad):
        self.callback(t, grad, self.partial)
        self.last = time.monotonic()


def _one_record(t, grad, state):
    """A block of one record (see :func:`_stack`)."""
    one = lambda arrays: [a[None] for a in arrays]
    return (np.array([t]), np.array([grad.loss]), one(state.fp), one(grad.fp),
            one(grad.attention), one(grad.patch_loss),
            None if state.pp is None else state.pp[None], np.array([grad.error]))


def _stack(setting, blocks):
    """steps, loss, fp, fp_grad, attention, patch_loss, pp and error of :class:`Result`
    from blocks."""
    if not blocks:
        blocks = [_empty(setting)]
    cat = lambda i: np.concatenate([b[i] for b in blocks])
    per_k = lambda i: [np.concatenate([b[i][k] for b in blocks])
                       for k in range(setting.K)]
    pp = cat(6) if setting.pp == "exact" else None
    return cat(0), cat(1), per_k(2), per_k(3), per_k(4), per_k(5), pp, cat(7)


def evaluators(setting, method, tail_tol, max_grid_bytes=DEFAULT_MAX_BYTES, levels=None):
    """The class evaluators of a run, built once: count grids (``method="exact"``,
    docs/model.md §3) or Gauss–Hahn quadratures starting at ``levels`` (§8)."""
    if method == "exact":
        return build_grids(setting, tail_tol, max_grid_bytes)
    return build_quadratures(setting, levels)


def _check_tolerance(rtol, strict):
    if isinstance(rtol, bool) or not isinstance(rtol, Real) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {type(strict).__name__}")


def _tolerance(met, error, rtol, strict, where, first=True):
    """Raise (strict) or warn (once) when the quadrature missed rtol (``met`` False), with
    estimate ``error``."""
    if met:
        return
    msg = (f"{where}the error estimate {error:.3g} stays above rtol={rtol:g} (with the most "
           "quadrature nodes allowed, or from the kernel's rounding)")
    if strict:
        raise ToleranceError(msg)
    if first:
        warnings.warn(msg, ToleranceWarning, stacklevel=3)


def _python_loop(setting, grids, kernel, threads, eta, steps, record_every, blocks, at, clock,
                 quad):
    """GD steps from ``at`` to ``steps`` with a backend's kernel, one Python step at a time."""
    t, state = at
    last = int(blocks[-1][1][0][-1]) if blocks and len(blocks[-1][1][0]) else -1
    while True:
        grad = evaluate(setting, grids, state, kernel, threads, quad["rtol"])
        _tolerance(grad.met, grad.error, quad["rtol"], quad["strict"], f"step {t}: ",
                   quad["met"])
        quad["met"] = quad["met"] and grad.met
        if (t % record_every == 0 or t == steps) and last < t:
            blocks.append((None, _one_record(t, grad, state)))
            last = t
        if t == steps:
            return
        new = state.updated(grad, eta)
        if not new.finite():
            raise _nonfinite(setting, state, State(grad.fp, grad.pp).finite(), t, eta)
        at[:] = [t + 1, new]
        t, state = at
        if clock.due(t):
            clock(t, grad)


class Fused:
    """The compiled loop of a backend, its records handed over as blocks: the C++ loop of
    "cpp" (``cpp/fused.hpp``) or the numba loop of "numba"
    (:class:`mimfast.backends.numba_backend.FusedLoop`), which share an interface.

    With quadratures (``quad`` given: rtol, strict) the loop steps with each class's richer
    rule and stops before a step whose estimate misses rtol; :meth:`refine` then does what the
    Python loop does at that step (:meth:`ClassQuadrature.evaluate`) and the loop goes on.
    """

    DONE, CHUNK, NONFINITE, TOLERANCE = 0, 1, 2, 3

    def __init__(self, backend, setting, grids, blocks, t, state, quad=None):
        self.backend = backend_module(backend)
        self.setting, self.grids, self.blocks = setting, grids, blocks
        self.method = "exact" if quad is None else "quadrature"
        self.unmet = set()  # steps whose estimate missed rtol with the rules at their limit
        self.dropped = max(g.dropped for g in grids.values())
        self.layout = StateLayout(setting)
        self.loop = self.backend.fused_loop(setting, grids, self.layout,
                                            tol=0.0 if quad is None else quad["rtol"])
        last = int(blocks[-1][1][0][-1]) if blocks and len(blocks[-1][1][0]) else -1
        self.loop.set_state(t, self.layout.flat(state), last)

    @property
    def t(self):
        return self.loop.t

    def state(self):
        return self.layout.state(self.loop.state())

    def drain(self):
        """Move the loop's new records into ``blocks`` (as one block; safe to repeat)."""
        # blocks of this loop are tagged (self, loop records up to here): what was handed over
        # is read from the list itself, which an interrupt leaves with or without the new block
        taken = next((src[1] for src, _ in reversed(self.blocks)
                      if src is not None and src[0] is self), 0)
        self.loop.forget(taken)
        end = self.loop.recorded
        if end > taken:
            steps, loss, state, grad, att, ploss, error = self.loop.records(taken)
            fp, pp = self.layout.split(state)
            fp_grad, _ = self.layout.split(grad)
            attention, _ = self.layout.split(att)
            self.blocks.append(((self, end), (steps, loss, fp, fp_grad, attention,
                                              self.layout.per_class(ploss), pp,
                                              error.max(axis=1, initial=0.0))))

    def gradient(self):
        """The :class:`Gradient` of the loop's last evaluation."""
        grad, loss, att, ploss, error = self.loop.last()
        g = self.layout.state(grad)
        attention, _ = self.layout.split(att[None])
        return Gradient(g.fp, g.pp, loss, [a[0] for a in attention],
                        [a[0] for a in self.layout.per_class(ploss[None])], self.dropped,
                        float(error.max(initial=0.0)), self.t - 1 not in self.unmet,
                        self.method)

    def refine(self, threads, rtol):
        """Grow the rules of the classes whose estimate missed ``rtol`` at the loop's step and
        hand the new rules to the loop. Returns the largest estimate and whether rtol could
        be met; a class that cannot meet it steps once with the estimate it has."""
        kernel = self.backend.kernel
        t, state = self.t, self.state()
        errors = self.loop.last()[-1]
        worst, met = 0.0, True
        for i, (k, h) in enumerate(self.setting.classes()):
            err = float(errors[i])
            if err > rtol:
                q = self.grids[k, h]
                inputs = class_inputs(self.setting, state, k, h, q)
                _, err, ok = q.evaluate(
                    lambda pts, inputs=inputs: np.asarray(kernel(pts, inputs, threads)),
                    rtol)
                self.loop.set_evaluators(i, *self.backend.evaluators(q), rtol,
                                         -1 if err <= rtol else t)
                met = met and ok
            worst = max(worst, err)
        if not met:
            self.unmet.add(t)
        return worst, met

    def run(self, steps, record_every, eta, threads, clock, quad):
        threads = check_threads(threads)
        timed = clock.callback is not None
        every = clock.every if timed and clock.every is not None else 0
        while True:
            status = self.loop.run(steps, record_every, eta, threads, stop_every=every,
                                   seconds=CALLBACK_SECONDS if timed else 0.0)
            self.drain()
            if status == self.DONE:
                return
            if status == self.NONFINITE:
                raise _nonfinite(self.setting, self.state(),
                                 bool(np.isfinite(self.loop.last()[0]).all()), self.t, eta)
            if status == self.TOLERANCE:
                error, met = self.refine(threads, quad["rtol"])
                _tolerance(met, error, quad["rtol"], quad["strict"], f"step {self.t}: ",
                           quad["met"])
                quad["met"] = quad["met"] and met
                continue
            if status != self.CHUNK:  # pragma: no cover - no other status is returned
                raise RuntimeError(f"the fused loop stopped with status {status}")
            if timed:
                clock(self.t, self.gradient())


# an own-area logit this far above every other one leaves the softmax denominator of the count
# points without an unmasked own-area key at e^-gap of the others: a non-finite gradient there
# is that point's powers of 1 / D out of double precision's range
SATURATION_GAP = 50.0


def own_logit_gap(setting, state):
    """The largest amount by which a class's own-area unmasked logit z A_own + B_own exceeds
    every other logit of its class (:func:`mimfast.model.own_lead`), and the class.

    Key weights are taken relative to the largest logit (:func:`mimfast.model.class_inputs`),
    so at a count point where no own-area key is unmasked the softmax denominator is about
    e^-gap: far beyond :data:`SATURATION_GAP` its powers leave double precision's range.
    """
    from .grid import class_categories

    worst, where = -math.inf, None
    for k, h in setting.classes():
        gap = own_lead(setting, state, k, h, (class_categories(setting, k, h)[0] > 0).tolist())
        if gap > worst:
            worst, where = gap, (k, h)
    return worst, where


def _nonfinite(setting, state, grad_finite, t, eta):
    """The error for a step from the finite ``state`` at step t that left it non-finite."""
    gap, where = own_logit_gap(setting, state)
    if grad_finite or gap <= SATURATION_GAP:
        return FloatingPointError(f"the state became non-finite at step {t + 1}: eta={eta} is "
                                  "too large")
    return FloatingPointError(
        f"the state became non-finite at step {t + 1}: the gradient at step {t} is not finite. "
        f"In query class {where} the own-area logit exceeds every other logit by {gap:.4g}, so "
        "where no own-area key is unmasked the softmax denominator is about "
        f"e^-{gap:.4g} and its powers leave double precision's range. The run has saturated "
        f"(own-area attention 1 to double precision: stop it before step {t}), or eta={eta} is "
        "too large.")


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


def gradient(setting, state=None, backend=DEFAULT, threads=None, tail_tol=1e-15,
             method="auto", rtol=1e-13, strict=False):
    """One exact expected gradient of the population loss (docs/model.md §2–3).

    Parameters
    ----------
    setting : Setting
    state : State, optional
        Reduced state (default Q = 0).
    backend : str
    threads : int, optional
    tail_tol : float
    method : {"auto", "exact", "quadrature"}
        As in :func:`simulate`; ``Gradient.method`` records the one used.
    rtol : float
        Quadrature tolerance, as in :func:`simulate`.
    strict : bool
        Raise :class:`ToleranceError` when the quadrature misses ``rtol`` (otherwise warn).

    Returns
    -------
    Gradient
        dL/dA and dL/dB shaped like the state, with the loss and observables (``error`` and
        ``met`` report the quadrature's estimate).
    """
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a mimfast.Setting, got {type(setting).__name__}")
    state = State.zeros(setting) if state is None else state
    if not isinstance(state, State):
        raise TypeError(f"state must be a mimfast.State, got {type(state).__name__}")
    state.check(setting)
    threads = None if threads is None else check_threads(threads)
    kernel = get_kernel(backend)
    _check_tolerance(rtol, strict)
    grids = evaluators(setting, choose_method(setting, method), check_tail_tol(tail_tol))
    grad = evaluate(setting, grids, state, kernel, threads, rtol)
    if not State(grad.fp, grad.pp).finite():
        gap, where = own_logit_gap(setting, state)
        raise FloatingPointError(f"the gradient is not finite: in query class {where} the "
                                 f"own-area logit exceeds every other logit by {gap:.4g} "
                                 "(see mimfast.simulate.own_logit_gap)")
    _tolerance(grad.met, grad.error, rtol, strict, "")
    return grad

"""Population gradient descent of the reduced model: its stepping rule over the shared driver
(:mod:`mimfast.driver`), and single gradients."""

from __future__ import annotations

import math
from numbers import Integral

import numpy as np

from .backends import DEFAULT, check_threads, get_kernel
from .driver import (
    SATURATION_GAP,
    Clock,
    Fused,
    Interrupted,
    Run,
    ToleranceError,
    ToleranceWarning,
    _tolerance,
    check_inputs,
    check_tolerance,
    evaluators,
    one_record,
    own_logit_gap,
    saved_run,
)
from .grid import DEFAULT_MAX_BYTES, check_tail_tol
from .model import State, evaluate
from .quadrature import choose_method
from .result import Result

__all__ = ["Interrupted", "Result", "ToleranceError", "ToleranceWarning", "gradient", "simulate"]

FUSED = {"cpp", "numba"}  # backends whose whole GD loop runs compiled (numpy steps in Python)


def _check_run(setting, eta, steps, record_every, threads):
    """Validated ``(eta, steps, record_every, threads)`` as plain Python numbers."""
    (eta,) = check_inputs(setting, eta=eta)
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
        otherwise about every :data:`~mimfast.driver.CALLBACK_SECONDS` seconds. ``grad`` is the
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
    check_tolerance(rtol, strict)
    method = choose_method(setting, method)
    if resume is not None and resume.method != method:
        raise ValueError(f"resume: the saved run used method={resume.method!r}, got {method!r}")
    grids = evaluators(setting, method, tail_tol, max_grid_bytes,
                       None if resume is None else resume.levels)
    run = Run(setting, backend, method, grids, tail_tol, rtol, strict)
    t, state = 0, State.zeros(setting)
    if resume is not None:
        t, state, n = _resume_point(resume, setting, eta, record_every, steps, backend, tail_tol)
        run.add(resume.block(n))
        run.met = resume.tolerance_met
    at = [t, state]  # the last completed step and its state, replaced in one step
    loop = None
    if backend in FUSED:
        last = int(run.blocks[-1][1][0][-1]) if run.blocks and len(run.blocks[-1][1][0]) else -1
        loop = run.compiled = Fused(setting, grids, t, state, last,
                                    {"rtol": rtol} if method == "quadrature" else None, backend)

    def partial():
        if loop is not None:
            run.drain()
            at[:] = [loop.t, loop.state()]
        return run.result(eta, at[1], last_step=at[0], record_every=record_every)

    clock = Clock(callback, callback_every, steps, partial)
    if loop is not None:
        return run.drive(lambda: _fused_loop(run, loop, steps, record_every, eta, threads, clock),
                         partial)
    return run.drive(lambda: _python_loop(run, kernel, threads, eta, steps, record_every, at,
                                          clock), partial)


def _python_loop(run, kernel, threads, eta, steps, record_every, at, clock):
    """GD steps from ``at`` to ``steps`` with a backend's kernel, one Python step at a time."""
    setting, t, state = run.setting, *at
    last = int(run.blocks[-1][1][0][-1]) if run.blocks and len(run.blocks[-1][1][0]) else -1
    while True:
        grad = evaluate(setting, run.grids, state, kernel, threads, run.rtol)
        run.tolerance(grad.met, grad.error, f"step {t}: ")
        if (t % record_every == 0 or t == steps) and last < t:
            run.add(one_record(t, grad, state))
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


def _fused_loop(run, loop, steps, record_every, eta, threads, clock):
    """GD steps in the compiled loop (a :class:`~mimfast.driver.Fused`) until ``steps``, handing
    back for callbacks and to grow quadrature rules."""
    threads = check_threads(threads)
    timed = clock.callback is not None
    every = clock.every if timed and clock.every is not None else 0
    checked = len(run.blocks)
    while True:
        status = loop.loop.run(steps, record_every, eta, threads, stop_every=every,
                               seconds=clock.seconds())
        run.drain()
        checked = _exact_rounding(run, checked)
        if status == loop.DONE:
            return
        if status == loop.NONFINITE:
            raise _nonfinite(run.setting, loop.state(),
                             bool(np.isfinite(loop.loop.last()[0]).all()), loop.t, eta)
        if status == loop.TOLERANCE:
            error, met = loop.refine(threads, run.rtol)
            run.tolerance(met, error, f"step {loop.t}: ")
            continue
        if status != loop.CHUNK:  # pragma: no cover - no other status is returned
            raise RuntimeError(f"the fused loop stopped with status {status}")
        if timed:
            clock(loop.t, loop.gradient())


def _exact_rounding(run, start):
    """Report, as the Python loop does, a recorded rounding estimate of an exact grid above
    rtol in the blocks from ``start`` (the compiled loops stop only for a quadrature's
    estimate, which can grow its rules; an exact grid's is recorded with each record).
    Returns the number of blocks read."""
    if run.method == "exact" and run.met:
        for block in run.blocks[start:]:
            steps, error = block[1][0], block[1][7]
            over = np.nonzero(error > run.rtol)[0]
            if len(over):
                run.tolerance(False, float(error[over[0]]), f"step {int(steps[over[0]])}: ")
                break
    return len(run.blocks)


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
    saved_run(resume, tail_tol)
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
    check_inputs(setting)
    state = State.zeros(setting) if state is None else state
    if not isinstance(state, State):
        raise TypeError(f"state must be a mimfast.State, got {type(state).__name__}")
    state.check(setting)
    threads = None if threads is None else check_threads(threads)
    kernel = get_kernel(backend)
    check_tolerance(rtol, strict)
    grids = evaluators(setting, choose_method(setting, method), check_tail_tol(tail_tol))
    grad = evaluate(setting, grids, state, kernel, threads, rtol)
    if not State(grad.fp, grad.pp).finite():
        gap, where = own_logit_gap(setting, state)
        raise FloatingPointError(f"the gradient is not finite: in query class {where} the "
                                 f"own-area logit exceeds every other logit by {gap:.4g} "
                                 "(see mimfast.simulate.own_logit_gap)")
    _tolerance(grad.met, grad.error, rtol, strict, "")
    return grad

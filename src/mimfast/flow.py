"""Gradient flow dQ/dτ = -∇L(Q) from Q = 0, integrated with error control (docs/model.md §9).

The stepping rule is the Dormand–Prince 5(4) pair with its fourth-order continuous extension
(the coefficients of ``scipy.integrate.RK45``); the driver records every accepted step and
locates the events of :data:`EVENTS` by root finding on the continuous extension.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from .analysis import global_key, rival_keys
from .backends import DEFAULT, check_threads, get_kernel
from .grid import DEFAULT_MAX_BYTES, check_tail_tol
from .model import State, StateLayout, evaluate, own_area
from .quadrature import choose_method
from .result import Result
from .setting import Setting
from .simulate import (Interrupted, _check_tolerance, _one_record, _stack, _tolerance,
                       evaluators, own_logit_gap)

__all__ = ["flow", "EVENTS", "DP54"]

#: Events the driver locates per query class (docs/model.md §9): the own FP gradient reaches
#: every other one (``switch``), own-area attention reaches 1 - eps (``T_eps``), the global
#: FP correlation stops falling (``global_min``).
EVENTS = ("switch", "T_eps", "global_min")
STOP_AT = ("switch", "T_eps")
#: A flow time no run reaches: ``flow(setting, UNTIL_EVENT, stop_at=...)`` ends at the event
#: (``mimfast run --flow`` without TAU, a sweep's flow task without ``tau``).
UNTIL_EVENT = 1e300


class DP54:
    """Dormand–Prince 5(4): nodes ``C``, stages ``A``, fifth-order weights ``B``, error
    weights ``E`` (fifth minus fourth order, over the seven stages, the last one FSAL) and
    the continuous extension ``P`` (y(t + θh) = y + h Kᵀ P [θ, θ², θ³, θ⁴])."""

    order = 5  # of the solution; the error estimate is of the embedded 4th order
    C = np.array([0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1])
    A = np.array([
        [0, 0, 0, 0, 0],
        [1 / 5, 0, 0, 0, 0],
        [3 / 40, 9 / 40, 0, 0, 0],
        [44 / 45, -56 / 15, 32 / 9, 0, 0],
        [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729, 0],
        [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
    ])
    B = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84])
    E = np.array([-71 / 57600, 0, 71 / 16695, -71 / 1920, 17253 / 339200, -22 / 525, 1 / 40])
    P = np.array([
        [1, -8048581381 / 2820520608, 8663915743 / 2820520608, -12715105075 / 11282082432],
        [0, 0, 0, 0],
        [0, 131558114200 / 32700410799, -68118460800 / 10900136933,
         87487479700 / 32700410799],
        [0, -1754552775 / 470086768, 14199869525 / 1410260304, -10690763975 / 1880347072],
        [0, 127303824393 / 49829197408, -318862633887 / 49829197408,
         701980252875 / 199316789632],
        [0, -282668133 / 205662961, 2019193451 / 616988883, -1453857185 / 822651844],
        [0, 40617522 / 29380423, -110615467 / 29380423, 69997945 / 29380423],
    ])


SAFETY, MIN_FACTOR, MAX_FACTOR = 0.9, 0.2, 10.0
MIN_STEP = 1e-13  # relative to the flow time: below it a step cannot be told from none


def _not_finite(setting, y, field, t):
    """The error for a flow whose gradient stops being finite near flow time t."""
    gap, where = own_logit_gap(setting, field.layout.state(y))
    return FloatingPointError(
        f"flow: the gradient is not finite near tau = {t:.6g}: in query class {where} the "
        f"own-area logit exceeds every other logit by {gap:.4g}, beyond double precision "
        "(see mimfast.simulate.own_logit_gap); stop the flow earlier (stop_at='T_eps')")


class _Step:
    """One accepted step from ``t`` to ``t + h``: its stages and continuous extension."""

    def __init__(self, t, h, y, K):
        self.t, self.h, self.y, self.Q = t, h, y, K.T @ DP54.P

    def __call__(self, tau):
        """The state vector at flow time ``tau`` (within the step)."""
        x = (tau - self.t) / self.h
        return self.y + self.h * (self.Q @ (x ** np.arange(1, 5)))


class _Field:
    """The vector field -∇L as flat vectors, with each evaluation's :class:`Gradient`."""

    def __init__(self, setting, grids, kernel, threads, quad):
        self.setting, self.grids, self.kernel, self.threads = setting, grids, kernel, threads
        self.quad, self.layout, self.count = quad, StateLayout(setting), 0

    def __call__(self, y):
        """``(-∇L, state, Gradient)`` at the flat state ``y``; -∇L is all nan where the
        state or its gradient is not finite (a trial stage far off: the step is rejected)."""
        if not np.all(np.isfinite(y)):
            return np.full(y.size, np.nan), None, None
        state = self.layout.state(y)
        grad = evaluate(self.setting, self.grids, state, self.kernel, self.threads,
                        self.quad["rtol"])
        self.count += 1
        _tolerance(grad.met, grad.error, self.quad["rtol"], self.quad["strict"], "flow: ",
                   self.quad["met"])
        self.quad["met"] = self.quad["met"] and grad.met
        return -self.layout.flat(State(grad.fp, grad.pp)), state, grad


def _event_functions(setting, epsilon):
    """``[(name, k, h, g)]``: g(grad, state) rises through 0 at the event (docs/model.md §9)."""
    out = []
    for k, h in setting.classes():
        others = [1 + g for g in rival_keys(setting, k, h)]
        own = own_area(setting, k, h)

        def switch(grad, state, k=k, h=h, others=others):
            row = np.abs(grad.fp[k][h])
            return row[0] - (max(row[c] for c in others) if others else 0.0)

        def t_eps(grad, state, k=k, h=h, own=own):
            return float(np.sum(grad.attention[k][h][own])) - (1 - epsilon)

        out += [("switch", k, h, switch), ("T_eps", k, h, t_eps)]
        glob = global_key(setting, k, h)
        if glob is not None:  # the class's global FP correlation
            out.append(("global_min", k, h,
                        lambda grad, state, k=k, h=h, c=1 + glob: -grad.fp[k][h][c]))
    return out


def _locate(g, lo, hi, glo, ghi, xtol):
    """Root of g(τ) in (lo, hi] with g(lo) = glo < 0 <= ghi = g(hi), by the Illinois
    variant of regula falsi (bracketing, superlinear)."""
    side = 0
    while hi - lo > xtol:
        t = hi - ghi * (hi - lo) / (ghi - glo)
        if not lo < t < hi:
            t = 0.5 * (lo + hi)
        gt = g(t)
        if gt >= 0:
            hi, ghi = t, gt
            if side == 1:
                glo *= 0.5
            side = 1
        else:
            lo, glo = t, gt
            if side == -1:
                ghi *= 0.5
            side = -1
    return hi


def _check_flow(setting, tau, rtol, stop_at, epsilon, max_steps):
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a mimfast.Setting, got {type(setting).__name__}")
    for name, v in (("tau", tau), ("rtol", rtol), ("epsilon", epsilon)):
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and positive, got {tau}")
    if not 1e-14 <= rtol < 1:
        raise ValueError(f"rtol must lie in [1e-14, 1), got {rtol}")
    if not 0 < epsilon < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {epsilon}")
    if stop_at is not None and stop_at not in STOP_AT:
        raise ValueError(f"stop_at must be None or one of {list(STOP_AT)}, got {stop_at!r}")
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
        raise ValueError(f"max_steps must be a positive integer, got {max_steps!r}")


def flow(setting, tau, rtol=1e-10, stop_at=None, backend=DEFAULT, threads=None,
         tail_tol=1e-15, max_grid_bytes=DEFAULT_MAX_BYTES, method="auto", quad_rtol=1e-13,
         strict=False, epsilon=0.05, max_steps=100_000, resume=None):
    """Integrate the gradient flow dQ/dτ = -∇L(Q) from Q = 0 up to flow time ``tau``.

    GD with learning rate η is this flow's explicit Euler rule: its step t lies at τ = η t.
    The integrator is Dormand–Prince 5(4) with error control (docs/model.md §9).

    Parameters
    ----------
    setting : Setting
    tau : float
        Flow time to reach (> 0).
    rtol : float, default 1e-10
        Each accepted step's estimated local error, in the norm
        ``rms(err / (rtol (1 + max(|y|, |y_new|))))``, is at most 1.
    stop_at : {None, "switch", "T_eps"}
        Stop once this event is located for every query class (before ``tau``).
    backend, threads, tail_tol, max_grid_bytes, method, strict :
        As in :func:`mimfast.simulate`.
    quad_rtol : float, default 1e-13
        Tolerance of each quadrature evaluation (``rtol`` of :func:`mimfast.simulate`).
    epsilon : float, default 0.05
        T_eps is the time the own-area attention reaches 1 - epsilon.
    max_steps : int
        Refuse to take more accepted steps than this (RuntimeError).
    resume : Result, optional
        An interrupted or shorter flow run of the same setting, rtol, epsilon, backend and
        method (``Interrupted.result`` or a loaded results file): continue from its last
        accepted step with its next step size. Continuing an interrupted run to the same
        ``tau`` gives the result of an uninterrupted run, bit for bit.

    Returns
    -------
    Result
        One record per accepted step (``steps`` counts them, ``tau`` is their flow time,
        ``eta`` is nan); ``events`` maps ``(name, k, h)`` to the located flow time of each
        event of :data:`EVENTS` that happened; ``evaluations`` counts gradient evaluations
        (of this call); ``next_step``, ``rtol`` and ``epsilon`` are what ``resume`` needs.

    Raises
    ------
    Interrupted
        On Ctrl-C, with every accepted step so far, ready for ``resume``.
    """
    _check_flow(setting, tau, rtol, stop_at, epsilon, max_steps)
    tau, rtol, epsilon = float(tau), float(rtol), float(epsilon)
    threads = None if threads is None else check_threads(threads)
    tail_tol = check_tail_tol(tail_tol)
    kernel = get_kernel(backend, setting)
    _check_tolerance(quad_rtol, strict)
    method = choose_method(setting, method)
    if resume is not None:
        _check_resume(resume, setting, tau, rtol, epsilon, backend, method, tail_tol)
    grids = evaluators(setting, method, tail_tol, max_grid_bytes,
                       None if resume is None else resume.levels)
    quad = {"met": True if resume is None else resume.tolerance_met, "rtol": quad_rtol,
            "strict": strict}
    field = _Field(setting, grids, kernel, threads, quad)
    events = _event_functions(setting, epsilon)
    # the run so far, one entry per accepted step, each appended whole: (tau, record block,
    # next step size, events found); an interrupt leaves the list with or without a step
    done = []
    taus0 = [] if resume is None else list(resume.tau)
    wanted = {(n, k, hh) for n, k, hh, _ in events if n == stop_at}

    def partial():
        blocks = [b for _, b, _, _ in done]
        *rec, error = _stack(setting, blocks)
        taus = taus0 + [x for x, _, _, _ in done if x is not None]
        last = done[-1]
        levels = ({key: q.levels for key, q in grids.items()} if method == "quadrature"
                  else None)
        r = Result(setting, backend, math.nan, *rec, None, max(q.dropped for q in grids.values()),
                   tail_tol=tail_tol, method=method, error=error, tolerance_met=quad["met"],
                   levels=levels, tau=np.array(taus))
        r.state = r.recorded_state(-1)
        r.events, r.next_step, r.rtol, r.epsilon = dict(last[3]), last[2], rtol, epsilon
        r.evaluations = field.count
        return r

    try:
        if resume is None:
            y = np.zeros(field.layout.size)
            f, state, grad = field(y)
            t, values = 0.0, [g(grad, state) for _, _, _, g in events]
            found = {(name, k, h): 0.0 for (name, k, h, _), v in zip(events, values)
                     if v >= 0 and name != "global_min"}
            done.append((t, _one_record(0, grad, state), _initial_step(field, y, f, rtol, tau),
                         found))
        else:
            done.append((None, resume.block(), resume.next_step, dict(resume.events)))
            t, y = float(resume.tau[-1]), field.layout.flat(resume.state)
            f, state, grad = field(y)
            values = [g(grad, state) for _, _, _, g in events]
            found = dict(resume.events)
        h = done[-1][2]
        K = np.empty((7, y.size))
        steps = 0
        while t < tau and not (wanted and wanted <= set(found)):
            if steps >= max_steps:
                raise RuntimeError(f"flow: more than max_steps={max_steps} steps before "
                                   f"tau={tau:g} (at tau={t:.6g})")
            h = min(h, tau - t)
            K[0] = f
            for i in range(1, 6):
                K[i] = field(y + h * (DP54.A[i, :i] @ K[:i]))[0]
            y_new = y + h * (DP54.B @ K[:6])
            f_new, s_new, g_new = field(y_new)
            K[6] = f_new
            scale = rtol * (1.0 + np.maximum(np.abs(y), np.abs(y_new)))
            err = math.sqrt(np.mean((h * (DP54.E @ K) / scale) ** 2))
            if not math.isfinite(err):  # a stage left the finite states: a much smaller step
                if h <= MIN_STEP * max(t, tau * 1e-300):
                    raise _not_finite(setting, y, field, t)
                h *= MIN_FACTOR
                continue
            if err > 1.0:
                h *= max(MIN_FACTOR, SAFETY * err ** -0.2)
                continue
            step = _Step(t, h, y, K.copy())
            t_new = tau if h == tau - t else t + h
            new_values = [g(g_new, s_new) for _, _, _, g in events]
            found = dict(found)
            for (name, k, hh, g), v0, v1 in zip(events, values, new_values):
                if (name, k, hh) in found or not (v0 < 0 <= v1):
                    continue

                def at(x, g=g):
                    _, s, gr = field(step(x))
                    return g(gr, s)

                found[name, k, hh] = _locate(at, t, t_new, v0, v1, 1e-12 * t_new)
            h_next = h * (min(MAX_FACTOR, SAFETY * err ** -0.2) if err > 0 else MAX_FACTOR)
            index = len(taus0) + len(done) - (resume is not None)
            done.append((t_new, _one_record(index, g_new, s_new), h_next, found))
            t, y, f, values, h = t_new, y_new, f_new, new_values, h_next
            steps += 1
    except KeyboardInterrupt:
        if not done:  # interrupted at Q = 0: nothing to hand back
            raise
        raise Interrupted(partial()) from None
    return partial()


def _check_resume(resume, setting, tau, rtol, epsilon, backend, method, tail_tol):
    """Refuse to continue ``resume`` unless it is a whole gradient-flow run of the same
    setting and integration (then the continued run equals an uninterrupted one)."""
    if not isinstance(resume, Result):
        raise TypeError(f"resume must be a mimfast.Result, got {type(resume).__name__}")
    if not resume.is_flow or getattr(resume, "next_step", None) is None:
        raise ValueError("resume: the saved run is not a resumable gradient-flow run")
    try:
        resume.check()
    except ValueError as exc:
        raise ValueError(f"resume: {exc}") from None
    saved = {"setting": resume.setting, "rtol": resume.rtol, "epsilon": resume.epsilon,
             "backend": resume.backend, "method": resume.method}
    given = {"setting": setting, "rtol": rtol, "epsilon": epsilon, "backend": backend,
             "method": method}
    differ = [k for k in saved if saved[k] != given[k]]
    if differ:
        raise ValueError("resume: the saved run used another " + ", ".join(differ) + " ("
                         + ", ".join(f"{k}={saved[k]!r}" for k in differ if k != "setting")
                         + ")")
    if resume.tail_tol is not None and resume.tail_tol != tail_tol:
        raise ValueError(f"resume: the saved run used tail_tol={resume.tail_tol:g}")
    if resume.tau[-1] > tau:
        raise ValueError(f"resume: the saved run is already at tau={resume.tau[-1]:g} > {tau:g}")


def _initial_step(field, y, f, rtol, tau):
    """A first step size from the field at Q = 0 and one Euler probe (Hairer, Nørsett and
    Wanner, Solving ODEs I, §II.4)."""
    scale = rtol * (1.0 + np.abs(y))
    d0, d1 = (math.sqrt(np.mean((v / scale) ** 2)) for v in (y, f))
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, tau)
    f1 = field(y + h0 * f)[0]
    d2 = math.sqrt(np.mean(((f1 - f) / scale) ** 2)) / h0
    h1 = (max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15
          else (0.01 / max(d1, d2)) ** (1 / DP54.order))
    return min(100 * h0, h1, tau)

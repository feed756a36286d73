"""Gradient flow dQ/dτ = -∇L(Q) from Q = 0, integrated with error control (docs/model.md §9).

The stepping rule is the Dormand–Prince 5(4) pair with its fourth-order continuous extension
(the coefficients of ``scipy.integrate.RK45``); the driver records every accepted step and
locates the events of :data:`EVENTS` by root finding on the continuous extension.
"""

from __future__ import annotations

import math

import numpy as np

from .analysis import global_key, rival_keys
from .backends import DEFAULT, check_threads, get_kernel
from .driver import (
    Clock,
    Fused,
    Run,
    check_inputs,
    check_tolerance,
    evaluators,
    one_record,
    own_logit_gap,
    saved_run,
)
from .grid import DEFAULT_MAX_BYTES, check_tail_tol
from .model import State, StateLayout, evaluate, own_area
from .quadrature import choose_method

__all__ = ["DP54", "EVENTS", "flow"]

# backends whose flow steps run compiled (cpp/flow.hpp); the others, numba's included, step in
# Python
FUSED = {"cpp"}
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
EXPONENT = -1 / DP54.order  # of the error norm in the step-size factor


def _combine(w, K, m):
    """``w[0] K[0] + ... + w[m-1] K[m-1]``, summed in that order (as cpp/flow.cpp does)."""
    acc = w[0] * K[0]
    for j in range(1, m):
        acc = acc + w[j] * K[j]
    return acc


def _error_norm(h, K, y, y_new, rtol):
    """The step's error estimate in the norm ``rms(err / (rtol (1 + max(|y|, |y_new|))))``,
    its squares summed in order (as cpp/flow.cpp does)."""
    scale = rtol * (1.0 + np.maximum(np.abs(y), np.abs(y_new)))
    total = 0.0
    for v in (h * _combine(DP54.E, K, 7) / scale).tolist():
        total += v * v
    return math.sqrt(total / y.size)


def _factor(err):
    """The step-size factor after an accepted step of error norm ``err`` (<= 1)."""
    return min(MAX_FACTOR, SAFETY * err ** EXPONENT) if err > 0 else MAX_FACTOR


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
    """The vector field -∇L of a :class:`~mimfast.driver.Run` as flat vectors, with each
    evaluation's :class:`Gradient`."""

    def __init__(self, run, kernel, threads):
        self.run, self.setting, self.kernel, self.threads = run, run.setting, kernel, threads
        self.layout, self.count = StateLayout(run.setting), 0

    def __call__(self, y):
        """``(-∇L, state, Gradient)`` at the flat state ``y``; -∇L is all nan where the
        state or its gradient is not finite (a trial stage far off: the step is rejected)."""
        if not np.all(np.isfinite(y)):
            return np.full(y.size, np.nan), None, None
        state = self.layout.state(y)
        grad = evaluate(self.setting, self.run.grids, state, self.kernel, self.threads,
                        self.run.rtol)
        self.count += 1
        self.run.tolerance(grad.met, grad.error, "flow: ")
        return -self.layout.flat(State(grad.fp, grad.pp)), state, grad


def _events(setting, epsilon):
    """``[(name, k, h, cols, level)]``, the events of every class in the order of
    ``setting.classes()``; :func:`_event_value` gives each one's function, which rises through
    0 at the event (docs/model.md §9). ``cols`` are key categories: for the switch those
    outside the own area, for T_eps those of the own area, for global_min the global area's."""
    out = []
    for k, h in setting.classes():
        others = [1 + g for g in rival_keys(setting, k, h)]
        out += [("switch", k, h, others, 0.0),
                ("T_eps", k, h, own_area(setting, k, h), 1 - epsilon)]
        glob = global_key(setting, k, h)
        if glob is not None:  # the class's global FP correlation
            out.append(("global_min", k, h, [1 + glob], 0.0))
    return out


#: The event kinds as numbered for the compiled loop (cpp/flow.hpp, FlowEvent).
_KINDS = {"switch": 0, "T_eps": 1, "global_min": 2}


def _event_value(event, grad):
    """An event's function at a :class:`Gradient` (as cpp/flow.cpp, event_values): the own FP
    gradient less the largest other one (switch), the own attention less 1 - epsilon (T_eps),
    minus the global FP gradient (global_min)."""
    name, k, h, cols, level = event
    if name == "switch":
        row = np.abs(grad.fp[k][h])
        return row[0] - (max(row[c] for c in cols) if cols else 0.0)
    if name == "T_eps":
        return sum(float(grad.attention[k][h][c]) for c in cols) - level  # as cpp/flow.cpp
    return -grad.fp[k][h][cols[0]]


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
    """Validated ``(tau, rtol, epsilon)`` as floats."""
    tau, rtol, epsilon = check_inputs(setting, tau=tau, rtol=rtol, epsilon=epsilon)
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
    return tau, rtol, epsilon


def flow(setting, tau, rtol=1e-10, stop_at=None, backend=DEFAULT, threads=None,
         tail_tol=1e-15, max_grid_bytes=DEFAULT_MAX_BYTES, method="auto", quad_rtol=1e-13,
         strict=False, epsilon=0.05, max_steps=100_000, resume=None, callback=None):
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
    callback : callable, optional
        ``callback(step, grad, partial)`` after an accepted step about every
        :data:`~mimfast.driver.CALLBACK_SECONDS` seconds, as :func:`mimfast.simulate` calls
        it: ``step`` counts the accepted steps (the record's index), ``grad`` is the
        :class:`~mimfast.Gradient` there, and ``partial()`` builds the :class:`Result` so
        far, ready for ``resume`` (for progress displays and checkpoints).

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
    tau, rtol, epsilon = _check_flow(setting, tau, rtol, stop_at, epsilon, max_steps)
    threads = None if threads is None else check_threads(threads)
    tail_tol = check_tail_tol(tail_tol)
    kernel = get_kernel(backend)
    check_tolerance(quad_rtol, strict)
    method = choose_method(setting, method)
    if resume is not None:
        _check_resume(resume, setting, tau, rtol, epsilon, backend, method, tail_tol)
    grids = evaluators(setting, method, tail_tol, max_grid_bytes,
                       None if resume is None else resume.levels)
    run = Run(setting, backend, method, grids, tail_tol, quad_rtol, strict,
              True if resume is None else resume.tolerance_met)
    field = _Field(run, kernel, threads)
    events = _events(setting, epsilon)
    wanted = {(n, k, hh) for n, k, hh, _, _ in events if n == stop_at}
    # the records carry their flow times and next step sizes (the blocks' extra); ``found``
    # maps each located event to its flow time, and only those at or before the last record
    # belong to the run (an interrupt may land between the two)
    found = {}
    goal = {"stop": lambda: bool(wanted) and wanted <= set(found), "max_steps": max_steps,
            "tau": tau, "rtol": rtol}

    def partial():
        extras = run.extras()
        r = run.result(math.nan, None, tau=np.concatenate([taus for taus, _ in extras]))
        r.state = r.recorded_state(-1)
        r.events = {key: v for key, v in found.items() if v <= r.tau[-1]}
        r.next_step, r.rtol, r.epsilon = float(extras[-1][1][-1]), rtol, epsilon
        r.evaluations = field.count + (0 if run.compiled is None else run.compiled.evaluations)
        return r

    clock = Clock(callback, None, None, partial)

    def steps():
        if resume is None:
            y = np.zeros(field.layout.size)
            f, state, grad = field(y)
            t, values = 0.0, [_event_value(e, grad) for e in events]
            found.update({e[:3]: 0.0 for e, v in zip(events, values)
                          if v >= 0 and e[0] != "global_min"})
            h = _initial_step(field, y, f, rtol, tau)
            run.add(one_record(0, grad, state), (np.array([t]), np.array([h])))
        else:
            found.update(resume.events)
            run.add(resume.block(), (np.array(resume.tau), np.array([resume.next_step])))
            t, y = float(resume.tau[-1]), field.layout.flat(resume.state)
            f, state, grad = field(y)
            values = [_event_value(e, grad) for e in events]
            h = resume.next_step
        index = len(run.blocks[0][1][0])
        if backend in FUSED:
            loop = run.compiled = _CompiledFlow(run, events)
            loop.start(t, y, f, h, index, values, found)
            loop.steps(goal, field, found, threads, clock)
        else:
            _steps(goal, field, events, found, run, t, y, f, h, index, values, clock)

    return run.drive(steps, partial)


def _steps(goal, field, events, found, run, t, y, f, h, index, values, clock):
    """Accepted steps from flow time t, state y (field f), step size h, one Python stage at a
    time; each accepted step adds its record to ``run`` and its events to ``found``."""
    tau, rtol = goal["tau"], goal["rtol"]
    K = np.empty((7, y.size))
    steps = 0
    while t < tau and not goal["stop"]():
        if steps >= goal["max_steps"]:
            raise _too_many(goal, t)
        h = min(h, tau - t)
        K[0] = f
        for i in range(1, 6):
            K[i] = field(y + h * _combine(DP54.A[i], K, i))[0]
        y_new = y + h * _combine(DP54.B, K, 6)
        f_new, s_new, g_new = field(y_new)
        K[6] = f_new
        err = _error_norm(h, K, y, y_new, rtol)
        if not math.isfinite(err):  # a stage left the finite states: a much smaller step
            if h <= MIN_STEP * max(t, tau * 1e-300):
                raise _not_finite(field.setting, y, field, t)
            h *= MIN_FACTOR
            continue
        if err > 1.0:
            h *= max(MIN_FACTOR, SAFETY * err ** EXPONENT)
            continue
        t_new = tau if h == tau - t else t + h
        new_values = [_event_value(e, g_new) for e in events]
        crossed = [j for j, (v0, v1) in enumerate(zip(values, new_values))
                   if events[j][:3] not in found and v0 < 0 <= v1]
        _locate_events(field, events, found, crossed, _Step(t, h, y, K.copy()), t_new, values,
                       new_values)
        h_next = h * _factor(err)
        run.add(one_record(index, g_new, s_new), (np.array([t_new]), np.array([h_next])))
        if clock.due(index):
            clock(index, g_new)
        t, y, f, values, h, index = t_new, y_new, f_new, new_values, h_next, index + 1
        steps += 1


def _too_many(goal, t):
    return RuntimeError(f"flow: more than max_steps={goal['max_steps']} steps before "
                        f"tau={goal['tau']:g} (at tau={t:.6g})")


def _locate_events(field, events, found, crossed, step, t_new, values, new_values):
    """Locate events ``crossed`` (their function rises through 0 in the accepted ``step``) on
    its continuous extension, into ``found``."""
    for j in crossed:
        def at(x, e=events[j]):
            return _event_value(e, field(step(x))[2])

        found[events[j][:3]] = _locate(at, step.t, t_new, values[j], new_values[j],
                                       1e-12 * t_new)


class _CompiledFlow:
    """The step loop of backend "cpp" (``cpp/flow.hpp``) over a :class:`~mimfast.driver.Fused`
    evaluator: the same steps as :func:`_steps`, bit for bit, the stages in C++. It hands
    back to grow quadrature rules (as the fused GD loop does) and to locate events (here, on
    the held step's continuous extension, with the Python field)."""

    DONE, CHUNK, NONFINITE, TOLERANCE, EVENT, STEPS = 0, 1, 2, 3, 5, 6

    def __init__(self, run, events):
        from . import _core

        self.run, self.events = run, events
        self.fused = Fused(run.setting, run.grids, 0, State.zeros(run.setting),
                           quad={"rtol": run.rtol} if run.method == "quadrature" else None)
        classes = {c: i for i, c in enumerate(run.setting.classes())}
        self.loop = _core.FlowLoop(
            self.fused.loop, [DP54.A[i, :i].tolist() for i in range(6)], DP54.B.tolist(),
            DP54.E.tolist(), EXPONENT, SAFETY, MIN_FACTOR, MAX_FACTOR, MIN_STEP,
            [_KINDS[e[0]] for e in events], [classes[e[1], e[2]] for e in events],
            [e[3] for e in events], [e[4] for e in events])

    @property
    def evaluations(self):
        return self.loop.evaluations

    def block(self, records):
        return self.fused.block(records)

    def start(self, t, y, f, h, index, values, found):
        self.loop.set_state(t, y, f, h, index, np.array(values, dtype=float),
                            np.array([e[:3] in found for e in self.events]))

    def steps(self, goal, field, found, threads, clock):
        threads = check_threads(threads)
        run = self.run
        self.fused.sync(run.rtol)  # quadrature rules the Python field has grown
        while not goal["stop"]():
            status = self.loop.run(goal["tau"], goal["rtol"], goal["max_steps"], threads,
                                   seconds=clock.seconds())
            run.drain()
            if status == self.DONE:
                return
            if status == self.CHUNK:  # right after a step: the last evaluation is its own
                clock(int(run.blocks[-1][1][0][-1]), self.fused.gradient())
                continue
            if status == self.STEPS:
                raise _too_many(goal, self.loop.t)
            if status == self.NONFINITE:
                raise _not_finite(field.setting, self.loop.y(), field, self.loop.t)
            if status == self.TOLERANCE:
                error, met = self.fused.refine(threads, run.rtol, mark=self.loop.evaluations)
                run.tolerance(met, error, "flow: ")
                continue
            if status != self.EVENT:  # pragma: no cover - no other status is returned
                raise RuntimeError(f"the flow loop stopped with status {status}")
            t, h, t_new, y, K, crossed, values, new_values = self.loop.held()
            _locate_events(field, self.events, found, crossed.tolist(), _Step(t, h, y, K),
                           t_new, values, new_values)
            self.fused.sync(run.rtol)
            self.loop.commit()
            run.drain()


def _check_resume(resume, setting, tau, rtol, epsilon, backend, method, tail_tol):
    """Refuse to continue ``resume`` unless it is a whole gradient-flow run of the same
    setting and integration (then the continued run equals an uninterrupted one)."""
    saved_run(resume, tail_tol)
    if not resume.is_flow or getattr(resume, "next_step", None) is None:
        raise ValueError("resume: the saved run is not a resumable gradient-flow run")
    saved = {"setting": resume.setting, "rtol": resume.rtol, "epsilon": resume.epsilon,
             "backend": resume.backend, "method": resume.method}
    given = {"setting": setting, "rtol": rtol, "epsilon": epsilon, "backend": backend,
             "method": method}
    differ = [k for k in saved if saved[k] != given[k]]
    if differ:
        raise ValueError("resume: the saved run used another " + ", ".join(differ) + " ("
                         + ", ".join(f"{k}={saved[k]!r}" for k in differ if k != "setting")
                         + ")")
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

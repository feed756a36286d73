"""The driver every run shares: GD (:func:`mimfast.simulate`) and the gradient flow
(:func:`mimfast.flow`) differ only in their stepping rule.

A :class:`Run` owns what a run keeps and hands back: its class evaluators and the quadrature's
tolerance, its records (blocks appended whole, so an interrupt leaves the list with or without
a block), the compiled loop of backend "cpp" or "numba" whose records it takes over
(:class:`Fused`),
and, on Ctrl-C, the :class:`Interrupted` that hands back the records so far, ready for
``resume``. A stepping rule appends records and reports its tolerances through it; a
:class:`Clock` says when to call the caller back.
"""

from __future__ import annotations

import math
import time
import warnings
from numbers import Real

import numpy as np

from .backends import backend_module
from .grid import DEFAULT_MAX_BYTES, build_grids
from .model import Gradient, StateLayout, class_inputs, own_lead
from .quadrature import build_quadratures
from .result import Result, _empty
from .setting import Setting

CALLBACK_SECONDS = 0.25


class ToleranceError(ArithmeticError):
    """The quadrature could not meet its error tolerance (raised with ``strict=True``)."""


class ToleranceWarning(UserWarning):
    """The quadrature could not meet its error tolerance at some step."""


class Interrupted(KeyboardInterrupt):
    """Raised when a :func:`~mimfast.simulate` or :func:`~mimfast.flow` run is interrupted
    (Ctrl-C).

    Attributes
    ----------
    result : Result
        Everything recorded before the interruption, ending with the last completed step.
    """

    def __init__(self, result):
        super().__init__(f"simulation interrupted after step {result.last_step} "
                         f"(last recorded step {int(result.steps[-1])})")
        self.result = result


class Run:
    """The shared part of one run (see the module's docstring).

    ``blocks`` holds ``(source, records, extra)``: ``records`` as :func:`stack` takes them,
    ``extra`` what the stepping rule keeps beside them (None for GD; the flow times and next
    step sizes for the flow), ``source`` None or ``(compiled loop, its records up to here)``.
    """

    def __init__(self, setting, backend, method, grids, tail_tol, rtol, strict, met=True):
        self.setting, self.backend, self.method, self.grids = setting, backend, method, grids
        self.tail_tol, self.rtol, self.strict = tail_tol, rtol, strict
        self.met = met  # whether every estimate met rtol (they are recorded with the steps)
        self.blocks = []
        self.compiled = None  # a loop with ``loop`` (records, forget) and ``block(records)``

    def add(self, records, extra=None):
        """Append one block of records, whole."""
        self.blocks.append((None, records, extra))

    def drain(self):
        """Move the compiled loop's new records into ``blocks`` (as one block; safe to repeat)."""
        compiled = self.compiled
        if compiled is None:
            return
        # blocks of the loop are tagged (loop, its records up to here): what was handed over
        # is read from the list itself, which an interrupt leaves with or without the new block
        taken = next((src[1] for src, _, _ in reversed(self.blocks)
                      if src is not None and src[0] is compiled), 0)
        compiled.loop.forget(taken)
        end = compiled.loop.recorded
        if end > taken:
            rec = compiled.loop.records(taken)
            self.blocks.append(((compiled, end), compiled.block(rec[:7]), tuple(rec[7:]) or None))

    def extras(self):
        """The ``extra`` of every block, the compiled loop's drained first."""
        self.drain()
        return [extra for _, _, extra in self.blocks]

    def tolerance(self, met, error, where):
        """Raise (strict) or warn (the first time) when an estimate missed rtol."""
        _tolerance(met, error, self.rtol, self.strict, where, self.met)
        self.met = self.met and met

    def result(self, eta, state, **kwargs):
        """The :class:`Result` of the records so far (the compiled loop's drained first)."""
        self.drain()
        *records, error = stack(self.setting, [b for _, b, _ in self.blocks])
        levels = ({key: g.levels for key, g in self.grids.items()}
                  if self.method == "quadrature" else None)
        return Result(self.setting, self.backend, eta, *records, state,
                      max(g.dropped for g in self.grids.values()), tail_tol=self.tail_tol,
                      method=self.method, error=error, tolerance_met=self.met, levels=levels,
                      **kwargs)

    def drive(self, steps, partial):
        """``steps()``, then ``partial()``, the run's :class:`Result`. On Ctrl-C, raise
        :class:`Interrupted` with ``partial()`` when anything was recorded (else re-raise)."""
        try:
            steps()
        except KeyboardInterrupt:
            self.drain()
            if not any(len(records[0]) for _, records, _ in self.blocks):
                raise
            raise Interrupted(partial()) from None
        return partial()


class Clock:
    """When a run calls its callback (see :func:`mimfast.simulate`)."""

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

    def seconds(self):
        """How long a compiled loop may run before handing back for the callback (0: no
        callback, never)."""
        return 0.0 if self.callback is None else CALLBACK_SECONDS


def one_record(t, grad, state):
    """A block of one record (see :func:`stack`)."""
    one = lambda arrays: [a[None] for a in arrays]
    return (np.array([t]), np.array([grad.loss]), one(state.fp), one(grad.fp),
            one(grad.attention), one(grad.patch_loss),
            None if state.pp is None else state.pp[None], np.array([grad.error]))


def stack(setting, blocks):
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


def check_inputs(setting, **reals):
    """The real-valued arguments ``reals`` of a run as floats, in the order given; TypeError
    unless ``setting`` is a :class:`~mimfast.Setting` and each value a real number, ValueError
    for one too large for a float. Their ranges are the caller's to check."""
    if not isinstance(setting, Setting):
        raise TypeError(f"setting must be a mimfast.Setting, got {type(setting).__name__}")
    values = []
    for name, v in reals.items():
        if isinstance(v, bool) or not isinstance(v, Real):
            raise TypeError(f"{name} must be a real number, got {type(v).__name__}")
        try:
            values.append(float(v))
        except OverflowError:
            shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:36] + " ..."
            raise ValueError(f"{name} must be finite, got {shown} (too large for a float)"
                             ) from None
    return values


def check_tolerance(rtol, strict):
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
           "quadrature nodes allowed, or from the kernel's rounding, which dominates once a "
           "class's loss or gradient falls near or below 2.2e-308, the least normal double, "
           "as after saturation at large P: docs/model.md §3, Underflow)")
    if strict:
        raise ToleranceError(msg)
    if first:
        warnings.warn(msg, ToleranceWarning, stacklevel=3)


class Fused:
    """The compiled loop of a backend: the C++ loop of "cpp" (``cpp/fused.hpp``) or the numba
    loop of "numba" (:class:`mimfast.backends.numba_backend.FusedLoop`), which share an
    interface. It holds the class evaluators, the state and the records of GD's compiled
    steps, and (C++ only) is the evaluator of the flow's compiled steps; a :class:`Run` takes
    its records over (:meth:`Run.drain`, :meth:`block`).

    With quadratures (``quad`` given: rtol, strict) the loop evaluates each class's richer
    rule and stops before a step whose estimate misses rtol; :meth:`refine` then does what the
    Python loop does at that step (:meth:`ClassQuadrature.evaluate`) and the loop goes on.
    """

    DONE, CHUNK, NONFINITE, TOLERANCE = 0, 1, 2, 3

    def __init__(self, setting, grids, t, state, last_recorded=-1, quad=None, backend="cpp"):
        self.backend = backend_module(backend)
        self.setting, self.grids = setting, grids
        self.method = "exact" if quad is None else "quadrature"
        self.unmet = set()  # steps whose estimate missed rtol with the rules at their limit
        self.dropped = max(g.dropped for g in grids.values())
        self.layout = StateLayout(setting)
        self.loop = self.backend.fused_loop(setting, grids, self.layout,
                                            tol=0.0 if quad is None else quad["rtol"])
        self.loop.set_state(t, self.layout.flat(state), last_recorded)

    @property
    def t(self):
        return self.loop.t

    def state(self):
        return self.layout.state(self.loop.state())

    def block(self, records):
        """A block of records (see :func:`stack`) from the loop's arrays: steps, loss, state,
        gradient, attention, patch loss and error estimate per class."""
        steps, loss, state, grad, att, ploss, error = records
        fp, pp = self.layout.split(state)
        fp_grad, _ = self.layout.split(grad)
        attention, _ = self.layout.split(att)
        return (steps, loss, fp, fp_grad, attention, self.layout.per_class(ploss), pp,
                error.max(axis=1, initial=0.0))

    def sync(self, rtol):
        """Hand the loop each quadrature's current rules (grown outside it), tolerance
        ``rtol``; nothing for exact grids."""
        if self.method == "quadrature":
            for i, c in enumerate(self.setting.classes()):
                self.loop.set_evaluators(i, *self.backend.evaluators(self.grids[c]), rtol)

    def gradient(self):
        """The :class:`Gradient` of the loop's last evaluation."""
        grad, loss, att, ploss, error = self.loop.last()
        g = self.layout.state(grad)
        attention, _ = self.layout.split(att[None])
        return Gradient(g.fp, g.pp, loss, [a[0] for a in attention],
                        [a[0] for a in self.layout.per_class(ploss[None])], self.dropped,
                        float(error.max(initial=0.0)), self.t - 1 not in self.unmet,
                        self.method)

    def refine(self, threads, rtol, mark=None):
        """Grow the rules of the classes whose estimate missed ``rtol`` at the loop's state and
        hand the new rules to the loop. Returns the largest estimate and whether rtol could
        be met; a class that cannot meet it is accepted once (at step ``mark``, default the
        loop's step) with the estimate it has."""
        kernel = self.backend.kernel
        t, state = self.t if mark is None else mark, self.state()
        errors = self.loop.last()[-1]
        worst, met = 0.0, True
        for i, (k, h) in enumerate(self.setting.classes()):
            err = float(errors[i])
            if err > rtol:
                q = self.grids[k, h]
                inputs = class_inputs(self.setting, state, k, h, q)
                _, err, ok = q.evaluate(
                    lambda pts, inputs=inputs: np.asarray(kernel(pts, inputs, threads)), rtol)
                self.loop.set_evaluators(i, *self.backend.evaluators(q), rtol,
                                         -1 if err <= rtol else t)
                met = met and ok
            worst = max(worst, err)
        if not met:
            self.unmet.add(t)
        return worst, met


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


def saved_run(resume, tail_tol):
    """Check that ``resume`` is a whole :class:`Result` made with ``tail_tol`` (the rest is
    the stepping rule's to check: a run continued with other parameters would not equal an
    uninterrupted run, and its result could not say so)."""
    if not isinstance(resume, Result):
        raise TypeError(f"resume must be a mimfast.Result, got {type(resume).__name__}")
    try:
        resume.check()
    except ValueError as exc:
        raise ValueError(f"resume: {exc}") from None
    if resume.tail_tol is not None and resume.tail_tol != tail_tol:
        raise ValueError(f"resume: the saved run used tail_tol={resume.tail_tol:g}, got "
                         f"tail_tol={tail_tol:g}; the count grids would differ")

"""The recorded trajectory of a run: :class:`Result` and its accessors."""

from __future__ import annotations

from numbers import Integral

import numpy as np

from .model import State, own_area

__all__ = ["Result"]


def _fp_column(G, key):
    if key == "own":
        return 0
    if isinstance(key, Integral) and not isinstance(key, bool):
        if 0 <= key < G:
            return 1 + int(key)
        raise ValueError(f"group key {key} out of range: this cluster has groups 0..{G - 1}")
    raise ValueError(f"unknown key {key!r}: use 'own' or a group index 0..{G - 1}")


class Result:
    """Trajectory of a :func:`~mimfast.simulate` or :func:`~mimfast.flow` run.

    GD: step t is the state after t GD updates (t = 0 is Q = 0); recorded steps are 0, every
    ``record_every``, and the last. Gradient flow: step t is the t-th accepted step of the
    integrator, at flow time ``tau[t]``.

    Attributes
    ----------
    setting : Setting
    backend : str
    eta : float
        Learning rate (nan for a gradient-flow run).
    steps : numpy.ndarray of int
        Recorded steps.
    tau : numpy.ndarray
        Flow time of each recorded step: ``eta * steps`` for GD.
    is_flow : bool
        Whether the run integrated the gradient flow (:func:`mimfast.flow`).
    events : dict
        Gradient flow: ``(name, k, h)`` -> flow time of each event located on the integrator's
        continuous extension (:data:`mimfast.flow.EVENTS`); empty for GD. A loaded run has
        the events saved with it.
    evaluations : int or None
        Gradient flow: gradient evaluations of the call that produced the result (a resumed
        run counts its own only); saved and loaded with the run. None for GD and for a
        results file written before it was saved.
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
    method : {"exact", "quadrature"}
        How the expectations were computed (docs/model.md §3 grid or §8 quadrature).
    error : numpy.ndarray
        Estimated relative error of the gradient and observables at each recorded step (the
        largest over classes of :func:`mimfast.quadrature.sums_error`); 0 for ``exact``.
    tolerance_met : bool
        False when the quadrature missed its tolerance at some step (a
        :class:`ToleranceWarning` was issued).
    levels : dict
        Quadrature node levels per class ``(k, h)`` after the last step (for an identical
        resume); empty for ``exact``.
    """

    def __init__(self, setting, backend, eta, steps, loss, fp, fp_grad, attention, patch_loss,
                 pp, state, dropped, last_step=None, record_every=1, tail_tol=None,
                 method="exact", error=None, tolerance_met=True, levels=None, tau=None):
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
        self.method = str(method)
        self.error = (np.zeros(len(self.steps)) if error is None
                      else np.asarray(error, dtype=np.float64))
        self.tolerance_met = bool(tolerance_met)
        self.levels = {} if levels is None else {key: list(v) for key, v in levels.items()}
        self.is_flow = tau is not None
        if tau is None:  # GD: flow time eta * step (inf where that overflows)
            with np.errstate(over="ignore"):
                self.tau = self.eta * self.steps
        else:
            self.tau = np.asarray(tau, dtype=np.float64)
        self.events = {}
        self.evaluations = None

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
        recorded step, the steps increase from 0 with no record missing before the last
        completed step, and the state fits the setting (and its record at that step)."""
        s, n = self.setting, len(self.steps)
        problems = []
        if n == 0:
            problems.append("no recorded step")
        if np.shape(self.loss) != (n,):
            problems.append(f"{len(self.loss)} losses for {n} recorded steps")
        empty = _empty(s)
        for i, name in enumerate(("_fp", "_fp_grad", "_attention", "_patch_loss"), start=2):
            arrays = getattr(self, name)
            if len(arrays) != s.K or any(np.shape(a) != (n,) + e.shape[1:]
                                         for a, e in zip(arrays, empty[i])):
                problems.append(f"{name[1:]} does not have one entry per recorded step")
        if (self._pp is None) != (s.pp != "exact") or (
                self._pp is not None and np.shape(self._pp) != (n,) + empty[6].shape[1:]):
            problems.append("pp does not have one entry per recorded step")
        if np.shape(self.tau) != (n,) or (n and np.any(np.diff(self.tau) <= 0)
                                           and self.is_flow):
            problems.append("tau does not increase with one entry per recorded step")
        if np.shape(self.error) != (n,):
            problems.append(f"{np.size(self.error)} error estimates for {n} recorded steps")
        if n and (np.any(np.diff(self.steps) <= 0) or self.steps[0] != 0
                  or not self.steps[-1] <= self.last_step <= self.steps[-1] + self.record_every):
            problems.append(f"recorded steps {self.steps[:3].tolist()}...{self.steps[-1]} (last "
                            f"completed {self.last_step}, record_every {self.record_every}) are "
                            "not 0 < ... <= last step with none missing")
        if problems:
            raise ValueError("the result is incomplete or inconsistent: " + "; ".join(problems))
        self.state.check(s)
        if self.last_step == self.steps[-1] and not (
                all(np.array_equal(a[-1], b) for a, b in zip(self._fp, self.state.fp))
                and (self._pp is None or np.array_equal(self._pp[-1], self.state.pp))):
            raise ValueError(f"the result is inconsistent: its state differs from its record "
                             f"at step {self.last_step}")

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

        ``key="own"`` is the theorem's attention on the query's own area (for a query in a
        named area of a tiled setting, the sum over the area's key categories:
        :func:`~mimfast.model.own_area`); a group index g is the total attention on the
        unmasked keys of group g's other areas (tiles).
        """
        G = self._class(k, h)
        if key == "own":
            return self._attention[k][:, h, own_area(self.setting, k, h)].sum(axis=1)
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

    def block(self, n=None):
        """The first ``n`` records (default all) as one record block: steps, loss, fp, fp_grad,
        attention, patch_loss, pp and error, as a run's driver stacks them."""
        n = len(self.steps) if n is None else n
        return (self.steps[:n], self.loss[:n],
                *([a[:n] for a in arrays] for arrays in
                  (self._fp, self._fp_grad, self._attention, self._patch_loss)),
                None if self._pp is None else self._pp[:n], self.error[:n])

    def expanded(self, i):
        """The full matrices (A, B) of the state recorded at index ``i``, position by position
        (:meth:`State.expanded`)."""
        return self.recorded_state(i).expanded(self.setting)

    def recorded_state(self, i):
        """The :class:`State` recorded at index ``i`` (step ``steps[i]``), a copy."""
        if isinstance(i, bool) or not isinstance(i, Integral):
            raise TypeError(f"record index must be an integer, got {type(i).__name__}")
        if not -len(self.steps) <= i < len(self.steps):
            raise IndexError(f"record index {i} out of range for {len(self.steps)} records")
        return State([a[i].copy() for a in self._fp],
                     None if self._pp is None else self._pp[i].copy())

    def __len__(self):
        return len(self.steps)

    def __repr__(self):
        return (f"Result(steps={int(self.steps[-1])}, recorded={len(self.steps)}, "
                f"backend={self.backend!r}, loss={self.loss[-1]:.6g})")


def _empty(setting):
    zero = State.zeros(setting)
    none = lambda arrays: [np.zeros((0,) + a.shape) for a in arrays]
    G = [len(c.groups) for c in setting.clusters]
    pp = None if zero.pp is None else np.zeros((0,) + zero.pp.shape)
    return (np.zeros(0, np.int64), np.zeros(0), none(zero.fp), none(zero.fp), none(zero.fp),
            [np.zeros((0, g)) for g in G], pp, np.zeros(0))

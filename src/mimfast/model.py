"""Reduced coordinates (docs/model.md §2–3): the state, the kernel inputs, and one exact gradient.

Everything here is shared by all backends; a backend only supplies the kernel that turns a
class grid and its inputs into the sums laid out by :func:`sum_layout`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np

__all__ = ["ClassInputs", "Gradient", "State", "StateLayout", "evaluate", "key_weights",
           "loop_classes", "own_area", "own_attention", "rounding", "sum_layout", "units"]


@dataclass(frozen=True)
class _Layout:
    n: int

    mass = 0
    loss = 1
    dB_self = 2

    @property
    def alpha(self):
        return slice(3, 3 + self.n)

    @property
    def dA(self):
        return slice(3 + self.n, 3 + 2 * self.n)

    @property
    def dB(self):
        return slice(3 + 2 * self.n, 3 + 3 * self.n)

    @property
    def bound(self):
        return slice(3 + 3 * self.n, 6 + 3 * self.n)

    @property
    def size(self):
        return 6 + 3 * self.n


@cache
def sum_layout(n_cat):
    """Positions of the kernel's sums for ``n_cat`` key categories.

    ``[mass, loss, dB_self, alpha[0..n), dA[0..n), dB[0..n), bound[0..3)]``: total
    probability, E[l], E[dl/dB_self], E[alpha_c], E[dl/dA_c] (per area), E[dl/dB_c] (per
    position), and the kernel's estimate of its own rounding in the loss, the attention vector
    and the gradient (dB_self, dA, dB), each relative to that part's norm (docs/model.md §3,
    conditioning).
    """
    return _Layout(n_cat)


# A product below the least normal double (2^-1022) is rounded to a multiple of 2^-1074: an
# absolute error that a kernel counts as this magnitude (times 2^-53, docs/model.md §3).
TINY_MAG = 2.0**-1021


def underflow_gain(z):
    """The largest factor by which a line of docs/model.md §3 multiplies a product formed
    before it: 2 z_own (dA_own = 2 z alpha loss) or z_c (dA_c), at least 1 (cpp/kernel.cpp)."""
    return 2.0 * max(1.0, float(np.max(np.abs(z))))


def rounding_parts(sums, mag, n_cat):
    """Rounding estimates of the loss, the attention and the gradient of ``sums``, each
    relative to its norm, from ``mag``: per sum a magnitude whose multiple by 2^-53 estimates
    its rounding, underflow included (the C++ kernel computes the same, cpp/kernel.cpp). A part
    whose norm is 0 while its magnitude is not gets an infinite estimate."""
    lay = sum_layout(n_cat)
    idx = np.arange(3 + 3 * n_cat)
    out = []
    for part in ([lay.loss], idx[lay.alpha], np.r_[lay.dB_self, idx[lay.dA], idx[lay.dB]]):
        m = float(np.sum(mag[part]))
        top = float(np.max(np.abs(sums[part])))  # scaled: no squares underflow
        norm = top * float(np.linalg.norm(sums[part] / top)) if top > 0 else 0.0
        out.append(rounding_estimate(m, norm))
    return out


def rounding_estimate(m, norm):
    """The rounding estimate of a part of a class's sums with magnitude ``m`` and norm
    ``norm`` (:func:`rounding_parts`; the numba kernels compile this function)."""
    return 0.0 if m == 0 else 2.0**-53 * (m / norm) if norm > 0 else math.inf


def rounding(sums, n_cat):
    """The kernel's rounding estimate of ``sums``: the largest of its three parts'
    (:func:`sum_layout`), relative to their norms."""
    return float(max(np.asarray(sums)[sum_layout(n_cat).bound]))


def units(n_cat, named):
    """The areas of a class as *units* of its key categories: ``(members, kind)`` with kind
    ``"own"`` (the query's own area, unit 0), ``"named"`` (another area spanning its members)
    or ``"tiles"`` (one category of one-tile areas); ``named`` as :attr:`ClassInputs.named`."""
    if named is None:
        return [([0], "own")] + [([c], "tiles") for c in range(1, n_cat)]
    out, first = [], {}
    for c, a in enumerate(named):
        if a < 0:
            out.append(([c], "tiles"))
        elif a in first:
            out[first[a]][0].append(c)
        else:
            first[a] = len(out)
            out.append(([c], "own" if a == 0 else "named"))
    return out


def own_area(setting, k, h):
    """The key categories that hold the own area of query class (k, h): ``[0]``, and for a
    query in a named area the other categories of that area (unit 0 of :func:`units`)."""
    return units(1 + len(setting.clusters[k].groups), setting.class_named(k, h))[0][0]


def own_attention(setting, attention):
    """Own-area attention of every class: per cluster k, ``attention[k][..., h, :]`` (per
    key category, as :attr:`Gradient.attention`) summed over :func:`own_area` ``(k, h)``,
    shape ``attention[k].shape[:-1]``."""
    out = []
    for k, a in enumerate(attention):
        a = np.asarray(a)
        out.append(np.stack([a[..., h, own_area(setting, k, h)].sum(axis=-1)
                             for h in range(a.shape[-2])], axis=-1))
    return out


@dataclass
class State:
    """Reduced state of Q (docs/model.md §3).

    Attributes
    ----------
    fp : list of numpy.ndarray
        Per cluster k, shape (G_k, 1 + G_k): ``fp[k][h, 0]`` is the FP correlation of a query of
        group h with its own area's feature, ``fp[k][h, 1 + g]`` with each other area of group g.
    pp : numpy.ndarray or None
        Shape (G, 2 + G) for exact PP: column 0 the query's self correlation, column 1 its own
        area's other positions, column 2 + g the positions of group g's other areas. ``None``
        when PP is frozen at zero.
    """

    fp: list
    pp: np.ndarray | None = None

    @classmethod
    def zeros(cls, setting):
        """Q = 0 for ``setting``."""
        fp = [np.zeros((len(c.groups), 1 + len(c.groups))) for c in setting.clusters]
        pp = None
        if setting.pp == "exact":
            G = len(setting.clusters[0].groups)
            pp = np.zeros((G, 2 + G))
        return cls(fp, pp)

    def copy(self):
        """A deep copy."""
        return State([a.copy() for a in self.fp], None if self.pp is None else self.pp.copy())

    def check(self, setting):
        """Raise ValueError unless the shapes fit ``setting`` and every value is finite
        (TypeError for arrays that are not real numbers)."""
        want = State.zeros(setting)
        if not isinstance(self.fp, (list, tuple)):
            raise TypeError(f"state fp must be a list of arrays, got {type(self.fp).__name__}")
        for name, a in [(f"fp[{k}]", a) for k, a in enumerate(self.fp)] + [("pp", self.pp)]:
            if a is None and name == "pp":
                continue
            if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
                kind = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
                raise TypeError(f"state {name} must be a numpy array of real numbers, got {kind}")
        if len(self.fp) != len(want.fp) or any(
            np.shape(a) != b.shape for a, b in zip(self.fp, want.fp)
        ):
            raise ValueError(
                f"state fp shapes {[np.shape(a) for a in self.fp]} do not fit the setting "
                f"{[b.shape for b in want.fp]}"
            )
        if (self.pp is None) != (want.pp is None) or (
            self.pp is not None and np.shape(self.pp) != want.pp.shape
        ):
            raise ValueError(
                f"state pp shape {None if self.pp is None else np.shape(self.pp)} does not fit "
                f"the setting's pp={setting.pp!r} ({None if want.pp is None else want.pp.shape})"
            )
        if not self.finite():
            raise ValueError("state has non-finite values")

    def expanded(self, setting):
        """The full matrices of this state, position by position (docs/model.md §2).

        Positions and areas are numbered as in :meth:`Setting.explicit` (P at most
        :data:`~mimfast.setting.MAX_EXPLICIT_P`). An area spanning several key categories
        of a query (a named area other than its own) takes the value of its first category's
        column (the columns of one area are equal along a run).

        Returns
        -------
        A : numpy.ndarray
            Shape (P, K, n), n the most areas of a cluster: ``A[p, k, a] = e_p^T Q v_{k,a}``,
            0 beyond cluster k's areas.
        B : numpy.ndarray
            Shape (P, P): ``B[p, q] = e_p^T Q e_q`` (0 with frozen PP).
        """
        self.check(setting)
        layout = setting._layout()
        P = setting.P
        A = np.zeros((P, setting.K, max(len(z) for *_, z in layout)))
        for k, (group, _, labels, z) in enumerate(layout):
            n = len(z)
            first = np.unique(labels, return_index=True)[1]  # first position of each area
            cols = np.where(labels[:, None] == np.arange(n), 0, 1 + group[first][None, :])
            A[:, k, :n] = np.asarray(self.fp[k], dtype=np.float64)[group[:, None], cols]
        B = np.zeros((P, P))
        if self.pp is not None:
            group, tile = layout[0][:2]
            same = (group[:, None] == group) & (tile[:, None] == tile)
            cols = np.where(same, 1, 2 + group[None, :])
            np.fill_diagonal(cols, 0)
            B = np.asarray(self.pp, dtype=np.float64)[group[:, None], cols]
        return A, B

    def finite(self):
        """Whether every value is finite."""
        values = list(self.fp) + ([] if self.pp is None else [self.pp])
        return all(np.all(np.isfinite(a)) for a in values)

    def updated(self, grad, eta):
        """The state after one GD step ``state - eta * grad``."""
        fp = [a - eta * g for a, g in zip(self.fp, grad.fp)]
        pp = None if self.pp is None else self.pp - eta * grad.pp
        return State(fp, pp)


class StateLayout:
    """A :class:`State` of ``setting`` as one flat vector: ``fp[0], fp[1], ..., pp``, row-major.

    Per-class vectors of length n_cat (attention, dA) use the fp part of the same layout.
    """

    def __init__(self, setting):
        zero = State.zeros(setting)
        self.fp_shapes = [a.shape for a in zero.fp]
        self.fp_offsets = np.cumsum([0] + [a.size for a in zero.fp]).tolist()
        self.pp_shape = None if zero.pp is None else zero.pp.shape
        self.size = self.fp_offsets[-1] + (0 if zero.pp is None else zero.pp.size)
        self.groups = np.cumsum([0] + [s[0] for s in self.fp_shapes]).tolist()

    def fp_row(self, k, h):
        """Offset of ``fp[k][h]`` (also of class (k, h)'s per-category values)."""
        return self.fp_offsets[k] + h * self.fp_shapes[k][1]

    def pp_row(self, h):
        """Offset of ``pp[h]``, or -1 when PP is frozen."""
        return -1 if self.pp_shape is None else self.fp_offsets[-1] + h * self.pp_shape[1]

    def flat(self, state):
        """The state as one vector."""
        parts = [a.ravel() for a in state.fp] + ([] if state.pp is None else [state.pp.ravel()])
        return np.concatenate(parts)

    def split(self, rows):
        """Rows of flat vectors (n, size) as (fp per cluster (n, G, 1 + G), pp (n, G, 2 + G)).

        Rows with only the fp part (per-class vectors) give pp ``None``.
        """
        n = rows.shape[0]
        fp = [rows[:, a:b].reshape((n,) + shape) for a, b, shape in
              zip(self.fp_offsets, self.fp_offsets[1:], self.fp_shapes)]
        pp = None
        if rows.shape[1] > self.fp_offsets[-1]:
            pp = rows[:, self.fp_offsets[-1]:].reshape((n,) + self.pp_shape)
        return fp, pp

    def per_class(self, rows):
        """Rows (n, classes) of one value per class as per-cluster arrays (n, G)."""
        return [rows[:, a:b] for a, b in zip(self.groups, self.groups[1:])]

    def state(self, vector):
        """The :class:`State` of a flat vector (copied)."""
        fp, pp = self.split(np.array(vector, dtype=np.float64)[None])
        return State([a[0] for a in fp], None if pp is None else pp[0])


@dataclass
class Gradient:
    """One exact expected gradient and the observables at the same state.

    Attributes
    ----------
    fp, pp :
        dL/dA and dL/dB, shaped like :class:`State` (per area and per key position).
    loss : float
        Population loss L.
    attention : list of numpy.ndarray
        Per cluster, (G_k, 1 + G_k): expected attention of a masked query of group h on the
        unmasked keys of each category (column 0 its own area).
    patch_loss : list of numpy.ndarray
        Per cluster, (G_k,): E[l | k, h] for a masked query of group h.
    dropped : float
        Largest probability mass left out of a class grid.
    error : float
        The largest estimated relative error of a class: the kernel's rounding estimate
        (:func:`rounding`), and for the quadrature its rule's error estimate too
        (docs/model.md §8).
    met : bool
        Whether every class's estimate met the tolerance.
    method : {"exact", "quadrature"}
        How the expectations were computed.
    """

    fp: list
    pp: np.ndarray | None
    loss: float
    attention: list
    patch_loss: list
    dropped: float
    error: float = 0.0
    met: bool = True
    method: str = "exact"


@dataclass
class ClassInputs:
    """Key weights of a query class at the current state, with its latents.

    ``wu[c]`` and ``wm[c]`` weigh one unmasked and one masked key of category c, ``wself``
    the query itself (exp of the logits of docs/model.md §2 less their largest value; 0 for an empty
    category); ``z[c]`` is the latent of category c (category 0: the query's own area).
    ``wu0``, ``wm0`` and ``wself0``, when set, replace them at the count points without an
    unmasked own-area key: the same logits less the largest logit there (see
    :data:`OWN_LEAD`). ``named`` (:meth:`Setting.class_named`) maps each category to the first
    category of the named area it lies in (0: the query's own area), -1 for categories of
    one-tile areas; ``None`` when only the own area is named (docs/model.md §3, tile groups).
    """

    z: np.ndarray
    wu: np.ndarray
    wm: np.ndarray
    wself: float
    wu0: np.ndarray | None = None
    wm0: np.ndarray | None = None
    wself0: float = 0.0
    named: np.ndarray | None = None


# How far the own area's unmasked logit must lead every other logit of a class before the count
# points without an unmasked own-area key get weights of their own (``ClassInputs.wu0`` ...):
# there the softmax denominator is about e^-lead in the first weights, and its powers leave
# double precision's range a few hundred beyond. (The same constant is in cpp/fused.hpp.)
OWN_LEAD = 100.0


def key_weights(z, A, B, b_self, live, wu, wm, wu0, wm0):
    """Key weights of one query class from its logits (docs/model.md §2), written once for
    every loop: :func:`class_inputs` calls it on lists, the numba loop compiles it
    (``backends/_numba_kernels.py``) and ``cpp/fused.cpp`` performs the same operations.

    The logits are ``z A + B`` for unmasked keys, ``B`` for masked keys and ``b_self`` for the
    query itself (keys of categories with ``live`` false have none). Fills ``wu`` and ``wm``
    with exp of the logits less their largest value and, when the own area's unmasked logit
    leads every other one by more than :data:`OWN_LEAD`, ``wu0`` and ``wm0`` with exp of the
    logits less the largest logit but that one (``wu0[0]`` = 0).

    Returns
    -------
    wself : float
    lead : float
        By how much the own area's unmasked logit leads every other logit (-inf without own-area
        keys).
    wself0 : float
        The query's weight relative to the second top (0 unless ``lead`` > :data:`OWN_LEAD`).
    """
    n = len(z)
    # the largest logit but the own area's unmasked one: self, unmasked keys, masked keys
    top0 = b_self
    for c in range(1, n):
        if live[c] and z[c] * A[c] + B[c] > top0:
            top0 = z[c] * A[c] + B[c]
    for c in range(n):
        if live[c] and B[c] > top0:
            top0 = B[c]
    own = z[0] * A[0] + B[0]
    top = max(top0, own) if live[0] else top0
    for c in range(n):
        wu[c] = math.exp(z[c] * A[c] + B[c] - top) if live[c] else 0.0
        wm[c] = math.exp(B[c] - top) if live[c] else 0.0
    lead = own - top0 if live[0] else -math.inf
    wself0 = 0.0
    if lead > OWN_LEAD:  # where no own-area key is unmasked: relative to the largest logit there
        for c in range(n):
            wu0[c] = math.exp(z[c] * A[c] + B[c] - top0) if live[c] and c > 0 else 0.0
            wm0[c] = math.exp(B[c] - top0) if live[c] else 0.0
        wself0 = math.exp(b_self - top0)
    return math.exp(b_self - top), lead, wself0


def _class_logits(setting, state, k, h):
    """Latents and the state's A, B (lists) and B_self of query class (k, h)."""
    z = setting.class_z(k, h)
    A = state.fp[k][h].tolist()
    if state.pp is None:
        return z, A, [0.0] * len(A), 0.0
    b_self, *B = state.pp[h].tolist()
    return z, A, B, b_self


def own_lead(setting, state, k, h, live):
    """By how much the own area's unmasked logit ``z A_own + B_own`` of query class (k, h)
    leads every other logit of the class's key categories ``live`` (and the query's own);
    -inf when the own area has no other positions. Beyond :data:`OWN_LEAD` the count points
    without an unmasked own-area key take weights of their own (:func:`class_inputs`)."""
    z, A, B, b_self = _class_logits(setting, state, k, h)
    n = len(A)
    return key_weights(z.tolist(), A, B, b_self, live, [0.0] * n, [0.0] * n, [0.0] * n,
                       [0.0] * n)[1]


def class_inputs(setting, state, k, h, grid):
    """Kernel inputs of query class (k, h) at ``state`` (:func:`key_weights`)."""
    z, A, B, b_self = _class_logits(setting, state, k, h)
    n = len(A)
    wu, wm, wu0, wm0 = [0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n
    wself, lead, wself0 = key_weights(z.tolist(), A, B, b_self, grid.live_list, wu, wm, wu0,
                                      wm0)
    inputs = ClassInputs(z, np.array(wu), np.array(wm), wself,
                         named=setting.class_named(k, h))
    if lead > OWN_LEAD:
        inputs.wu0, inputs.wm0, inputs.wself0 = np.array(wu0), np.array(wm0), wself0
    return inputs


def loop_classes(setting, grids, layout):
    """What a compiled GD loop needs of each query class (in ``setting.classes()`` order),
    as keyword lists: latents ``z``, ``live`` categories, the offsets ``a_off`` of its fp row
    and ``p_off`` of its pp row in the flat state (``layout``, -1 when PP is frozen), and the
    factors of its gradient (``coef`` = pi_k m / P) and of its loss (``coef_loss``, times the
    group's patches), computed as :func:`evaluate` computes them."""
    scale = setting.masked / setting.P
    out = {"z": [], "live": [], "a_off": [], "p_off": [], "coef": [], "coef_loss": []}
    for k, h in setting.classes():
        pi = setting.weights[k]
        out["z"].append(setting.class_z(k, h))
        out["live"].append(np.array(grids[k, h].live_list, dtype=bool))
        out["a_off"].append(layout.fp_row(k, h))
        out["p_off"].append(layout.pp_row(h))
        out["coef"].append(float(pi * scale))
        out["coef_loss"].append(float(pi * scale * setting.clusters[k].groups[h].patches))
    return out


def evaluate(setting, grids, state, kernel, threads=None, rtol=1e-13):
    """Exact expected gradient and observables at ``state`` (docs/model.md §2–3).

    Parameters
    ----------
    setting : Setting
    grids : dict
        Class grids from :func:`mimfast.grid.build_grids`, or adaptive quadratures from
        :func:`mimfast.quadrature.build_quadratures` (docs/model.md §8).
    state : State
    kernel : callable
        ``kernel(grid, inputs, threads) -> sums`` of a backend.
    threads : int, optional
        Threads for compiled kernels.
    rtol : float
        Target of each class's error estimate.

    Returns
    -------
    Gradient
    """
    scale = setting.masked / setting.P
    G_pp = None if state.pp is None else np.zeros_like(state.pp)
    fp, attention, patch_loss = [], [], []
    loss, dropped, error, met, method = 0.0, 0.0, 0.0, True, "exact"
    for k, cluster in enumerate(setting.clusters):
        pi = setting.weights[k]
        G = len(cluster.groups)
        fp.append(np.zeros((G, 1 + G)))
        attention.append(np.zeros((G, 1 + G)))
        patch_loss.append(np.zeros(G))
        for h, group in enumerate(cluster.groups):
            grid = grids[k, h]
            inputs = class_inputs(setting, state, k, h, grid)
            if hasattr(grid, "evaluate"):  # adaptive quadrature: richer rule and its error
                sums, err, ok = grid.evaluate(
                    lambda pts, inputs=inputs: np.asarray(kernel(pts, inputs, threads)), rtol)
                error, met, method = max(error, err), met and ok, "quadrature"
            else:
                sums = np.asarray(kernel(grid, inputs, threads))
                err = rounding(sums, grid.n_cat)
                error, met = max(error, err), met and err <= rtol
            lay = sum_layout(grid.n_cat)
            fp[k][h] = pi * scale * sums[lay.dA]
            attention[k][h] = sums[lay.alpha]
            patch_loss[k][h] = sums[lay.loss]
            loss += pi * scale * group.patches * sums[lay.loss]
            dropped = max(dropped, grid.dropped)
            if G_pp is not None:
                G_pp[h, 0] += pi * scale * sums[lay.dB_self]
                G_pp[h, 1:] += pi * scale * sums[lay.dB]
    return Gradient(fp, G_pp, loss, attention, patch_loss, dropped, error, met, method)

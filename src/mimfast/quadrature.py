"""Gauss–Hahn point sets of docs/model.md §8: the count expectation of a class at any P.

The unmasked counts of a query class are multivariate hypergeometric (docs/model.md §3). Written
as a chain of univariate conditionals, smallest category first and the largest taking the rest,

    U_a ~ HG(M, K_a, N),  U_b | U_a ~ HG(M - K_a, K_b, N - U_a),  ...

each conditional is integrated by a Gauss rule of its own law: the Hahn polynomials are the
orthogonal polynomials of HG(M, K, N) and their three-term recurrence is closed-form, so an
n-node rule (exact for polynomials of degree 2n - 1) costs O(n^2) whatever P is. A conditional
whose support has at most n points (all counts before it integers) is enumerated instead, with
the saddle-point pmf of :func:`mimfast.grid.log_binom_pmf`.

A :class:`ClassPoints` has the interface of :class:`mimfast.grid.ClassGrid` that kernels use
(``rows()``, ``blocks``, per-category constants), with float counts: within a row the outer
categories are fixed at nodes of their rules, the innermost rule's nodes run over the "inner"
category and the "last" category takes the rest, so a compiled kernel sums a row exactly as it
sums a grid row (counts affine in the node offset).

Error control lives in :class:`ClassQuadrature` and :func:`sums_error`: every evaluation also
evaluates a richer rule (the next node count in every Gauss dimension), returns the richer
sums, and reports their difference as the error estimate; node counts grow until the estimate
is below ``rtol``, only in the dimensions whose enrichment moves the sums. Classes with many key
categories (many area groups) start at 2-4 nodes per dimension (:func:`start_levels`), so that
neither rule costs 6^d or 9^d points before a dimension has shown that it needs them.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from functools import cache

import numpy as np

from .grid import BLOCK, LD, KeyCategories, category_constants, hg_pmf, log_binom_pmf
from .model import own_area, rounding, sum_layout

__all__ = [
    "AUTO_GRID_POINTS",
    "LEVELS",
    "MAX_POINTS",
    "METHODS",
    "START_NODES",
    "START_POINTS",
    "ClassPoints",
    "ClassQuadrature",
    "build_quadratures",
    "choose_method",
    "grid_points_estimate",
    "hahn_rule",
    "hg_rule",
    "jacobi_rules",
    "level_of",
    "start_levels",
    "sums_error",
]

# node counts of a Gauss dimension, coarse to rich (a richer rule is the next entry). Results
# files store node counts, not indices (see :func:`level_of`), so entries may be added.
LEVELS = (2, 3, 4, 6, 9, 13, 19, 28, 42, 63, 94, 141, 211, 316)
# a class starts every dimension at the richest level of at most START_NODES nodes whose richer
# rule has at most START_POINTS points: 6 nodes up to four free dimensions, 2-4 beyond
START_NODES = 6
START_POINTS = 10_000
# largest number of points of one rule set of a class; growth beyond it is refused
MAX_POINTS = 2_000_000
# method="auto" runs the exact grid up to this many points per step (all classes), quadrature
# beyond: a quadrature step became cheaper between 4e4 and 2e5 grid points (docs/performance.md)
AUTO_GRID_POINTS = 100_000
METHODS = ("exact", "quadrature", "auto")


def hahn_rule(K, Kc, N, Nc, n):
    """Gauss rule of HG(M, K, N) (N draws from M = K + Kc, K successes), centred on its mean.

    Parameters
    ----------
    K, Kc : int or float
        Successes and failures in the population.
    N, Nc : numpy.ndarray
        Draws and non-draws (M - N) of each instance; floats are allowed (a conditional at an
        earlier category's Gauss node).
    n : int
        Nodes, at most ``floor(min(K, Kc, N, Nc)) + 1`` (the recurrence stays positive).

    Returns
    -------
    mean : numpy.ndarray, shape (m,)
        N K / M.
    offsets, weights : numpy.ndarray, shape (m, n)
        Nodes minus the mean, and weights (summing to 1).

    Notes
    -----
    The Hahn recurrence (alpha = -K-1, beta = -(M-K)-1) gives the monic Jacobi matrix with
    A_j = (M+1-j)(K-j)(N-j) / ((M+1-2j)(M-2j)), C_j = j(M-N+1-j)(M-K+1-j) / ((M+2-2j)(M+1-2j)),
    diagonal A_j + C_j and off-diagonal sqrt(A_{j-1} C_j). Both A_j and the mean are of size P
    while the nodes spread over ~sqrt(P), so the matrix is formed centred on the mean and
    scaled by the standard deviation s: A_j - mean = mean expm1(sum of log1p of small ratios),
    which keeps the nodes' offsets accurate to ~1e-16 s at any P.
    """
    N = np.asarray(N, dtype=np.float64)
    Nc = np.asarray(Nc, dtype=np.float64)
    K, Kc = float(K), float(Kc)
    M = K + Kc
    mean = N * K / M
    m = len(N)
    if n == 1:
        return mean, np.zeros((m, 1)), np.ones((m, 1))
    j = np.arange(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (np.log1p((1 - j) / M) + np.log1p(-j / K) + np.log1p(-j / N[:, None])
             - np.log1p((1 - 2 * j) / M) - np.log1p(-2 * j / M))
    t[:, 0] = 0.0
    a_dev = mean[:, None] * np.expm1(t)
    A = mean[:, None] + a_dev
    C = j * (Nc[:, None] + 1 - j) * ((Kc + 1 - j) / ((M + 2 - 2 * j) * (M + 1 - 2 * j)))
    s = np.sqrt(A[:, 0] * C[:, 1])
    xi, w = jacobi_rules((a_dev + C) / s[:, None], np.sqrt(A[:, :-1] * C[:, 1:]) / s[:, None])
    return mean, xi * s[:, None], w


def jacobi_rules(diag, off, dense=False):
    """Golub–Welsch: the Gauss rules of Jacobi matrices (rows of ``diag`` and ``off``).

    Returns nodes (ascending) and weights (summing to 1), each of the shape of ``diag``: the
    eigenvalues and squared first eigenvector components. The compiled tridiagonal QL solver
    (O(n^2) per rule) is used when the extension is built; ``dense=True``, or a missing
    extension, uses numpy's dense ``eigh`` (O(n^3), and slow under a threaded BLAS).
    """
    diag = np.ascontiguousarray(diag, dtype=np.float64)
    off = np.ascontiguousarray(off, dtype=np.float64)
    if not dense:
        try:
            from . import _core
        except ImportError:  # pragma: no cover - exercised only on a broken install
            pass
        else:
            return _core.gauss_rules(diag, off)
    m, n = diag.shape
    J = np.zeros((m, n, n))
    idx = np.arange(n)
    J[:, idx, idx] = diag
    J[:, idx[1:], idx[:-1]] = off
    J[:, idx[:-1], idx[1:]] = off
    xi, vec = np.linalg.eigh(J)
    w = vec[:, 0, :] ** 2
    return xi, w / w.sum(axis=1, keepdims=True)


def hg_rule(K, Kc, N, Nc, n):
    """Rule of one conditional HG(K + Kc, K, N): enumerated support or Gauss–Hahn nodes.

    ``N`` and ``Nc`` are Python ints (exact) or floats. The support is enumerated when the
    counts are integers and it has at most ``n`` points (probabilities from
    :func:`mimfast.grid.log_binom_pmf`, normalised over the whole support). Otherwise an
    ``n``-node Gauss rule (fewer where the population is too small for ``n``).

    Returns
    -------
    x : list
        Node values (ints when enumerated, floats otherwise).
    mean : float or int
        The centre the offsets refer to.
    offsets, weights : numpy.ndarray
        ``x - mean`` and the weights.
    exact : bool
        Whether the support was enumerated.
    """
    integral = isinstance(N, int) and isinstance(Nc, int)
    if integral:
        lo, hi = max(0, N - Kc), min(K, N)
        if hi - lo + 1 <= n:
            x = np.arange(lo, hi + 1, dtype=np.int64)
            M = K + Kc
            logp = log_binom_pmf(x, K, (N, M)) + log_binom_pmf(N - x, Kc, (N, M))
            w = np.exp(logp - logp.max())
            w = (w / w.sum()).astype(np.float64)
            xs = [int(v) for v in x]
            return xs, lo, np.array([float(v - lo) for v in xs]), w, True
    cap = math.floor(min(K, Kc, N, Nc)) + 1
    mean, off, w = hahn_rule(K, Kc, np.array([float(N)]), np.array([float(Nc)]), min(n, cap))
    mean = float(mean[0])
    return [mean + o for o in off[0]], mean, off[0], w[0], False


@dataclass
class ClassPoints(KeyCategories):
    """A weighted point set of one query class with the kernel interface of ``ClassGrid``.

    Attributes
    ----------
    sizes, areas : numpy.ndarray of int64
        Key positions and areas per category (see :class:`mimfast.grid.ClassGrid`).
    inner, last : int
        The category of the innermost rule's nodes, and the category that takes the rest.
    counts : numpy.ndarray of float64, shape (n_rows, n_cat)
        Counts of the outer categories in each row (inner and last columns 0).
    rest : numpy.ndarray of float64, shape (n_rows,)
        Unmasked keys left for inner + last in each row.
    centre : numpy.ndarray of float64, shape (n_rows,)
        Inner count the row's node offsets refer to.
    node_x, node_w : numpy.ndarray of float64
        Offsets of the inner count from ``centre`` and full weights of every point, row by row.
    blocks : numpy.ndarray of int64, shape (n_blocks, 3)
        ``(row, first, stop)`` slices of the node arrays (at most :data:`mimfast.grid.BLOCK`).
    nodes : tuple of int
        Node count of each dimension of the chain.
    """

    inner: int
    last: int
    counts: np.ndarray
    rest: np.ndarray
    centre: np.ndarray
    node_x: np.ndarray
    node_w: np.ndarray
    blocks: np.ndarray
    nodes: tuple = ()
    mass: float = 1.0

    @property
    def points(self) -> int:
        """Number of points."""
        return len(self.node_x)

    @property
    def dropped(self) -> float:
        """Probability mass left out: none (the rules integrate the whole law)."""
        return 0.0

    def rows(self):
        """Yield ``(counts, probabilities)`` row by row; counts are floats (Gauss nodes)."""
        starts = np.searchsorted(self.blocks[:, 0], np.arange(len(self.rest) + 1))
        bounds = np.append(self.blocks[:, 1], len(self.node_x))[starts]
        for r in range(len(self.rest)):
            x = self.node_x[bounds[r]:bounds[r + 1]]
            c = np.repeat(self.counts[r][None, :], len(x), axis=0)
            c[:, self.inner] = self.centre[r] + x
            c[:, self.last] = (self.rest[r] - self.centre[r]) - x
            yield c, self.node_w[bounds[r]:bounds[r + 1]]



def chain_order(sizes, unmasked=None, own=(0,)):
    """Live categories in chain order, smallest first (the last one takes the rest), but with
    the own area's categories ``own`` first (category 0 first of them) when its ``unmasked``
    keys can all be masked.

    The own area then comes first so that its count is drawn from the class's exact law, where
    the point U_own = 0 is enumerated or counted apart with its exact probability
    (:func:`own_atom`, docs/model.md §8); below a Gauss node of another category it could not
    be. An own area of several categories (a named area, docs/model.md §3) has that point where
    each of them is 0, reached category by category. Without ``unmasked``, smallest first.
    """
    live = [i for i in range(len(sizes)) if sizes[i] > 0]
    own_size = sum(int(sizes[i]) for i in own)
    own_first = (unmasked is not None and sizes[0] > 0
                 and int(unmasked) <= sum(int(v) for v in sizes) - own_size)
    return sorted(live, key=lambda i: (not (own_first and i in own),
                                      own_first and i != 0, int(sizes[i]), i))


# U_own = 0 becomes a point of its own when its probability is at most this (docs/model.md §8)
ATOM = 2.0**-56


def own_atom(p0):
    """The weight of the point U_own = 0 counted apart: its probability ``p0`` (from
    :func:`own_zero`) when that is at most :data:`ATOM`; otherwise 0.

    As attention saturates, the loss and gradient of a class come from the count points without
    an unmasked own-area key, where attention cannot go to the own area: a Gauss rule, a
    polynomial fit around the mean, cannot see that one point. Counting it apart while the rule
    also integrates it changes the result by P(U_own = 0) relative, below rounding.
    """
    return p0 if p0 <= ATOM else 0.0


def own_zero(K, Kc, N):
    """P(U_own = 0) under HG(K + Kc, K, N) (integer counts)."""
    if N > Kc:  # every draw cannot avoid the own area
        return 0.0
    return float(hg_pmf([0], K, K + Kc, N)[0])


def continued_pmf(K, N, Nc):
    """Probabilities of x = 0..K under HG(N + Nc, K, N) for draws N that need not be integers
    (N, Nc >= K): C(K, x) (N)_x (Nc)_(K-x) / (N + Nc)_K, polynomials in N that continue the
    law with all its moments. From the ratios of neighbours; rows sum to 1.

    Parameters
    ----------
    K : int
    N, Nc : numpy.ndarray
        Draws and non-draws of each instance.

    Returns
    -------
    numpy.ndarray, shape (len(N), K + 1)
    """
    x = np.arange(K, dtype=LD)  # long double, as the grid's log-probabilities (grid.LD)
    N, Nc = (np.asarray(v, dtype=LD)[:, None] for v in (N, Nc))
    ratio = (K - x) * (N - x) / ((x + 1) * (Nc - K + x + 1))
    logw = np.concatenate([np.zeros((len(N), 1), dtype=LD), np.cumsum(np.log(ratio), axis=1)],
                          axis=1)
    w = np.exp(logw - logw.max(axis=1, keepdims=True))
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float64)


def _gauss_children(K, Kc, w, counts, N, Nc, n):
    """Gauss nodes of HG(K + Kc, K, N) for a batch of float instances, batched by node count.

    Where ``n`` nodes cover all K + 1 values the category can take (K <= N, Nc, Kc), they are
    enumerated instead, with :func:`continued_pmf`: the same rule (an (K + 1)-node Gauss rule
    sits on the support), without an eigensolver's rounding in its small weights.

    Returns, per instance, ``(parent index, mean, offsets, weights)`` as flat arrays over all
    children together with each instance's slice.
    """
    cap = np.floor(np.minimum(np.minimum(N, Nc), min(K, Kc))).astype(np.int64) + 1
    n_eff = np.minimum(cap, n)
    parent, mean, off, wt = [], [], [], []
    for m in np.unique(n_eff):
        sel = np.nonzero(n_eff == m)[0]
        if m == K + 1 and K <= Kc:
            mu = N[sel] * K / (K + Kc)
            o = np.arange(K + 1.0)[None, :] - mu[:, None]
            ww = continued_pmf(K, N[sel], Nc[sel])
        else:
            mu, o, ww = hahn_rule(K, Kc, N[sel], Nc[sel], int(m))
        parent.append(np.repeat(sel, m))
        mean.append(np.repeat(mu, m))
        off.append(o.ravel())
        wt.append(ww.ravel())
    order = np.argsort(np.concatenate(parent), kind="stable")
    return (np.concatenate(parent)[order], np.concatenate(mean)[order],
            np.concatenate(off)[order], np.concatenate(wt)[order])


def build_points(sizes, areas, unmasked, nodes, own=(0,)):
    """The point set of one class with ``nodes[d]`` nodes in chain dimension d.

    Parameters
    ----------
    sizes, areas : sequence of int
    unmasked : int
        Unmasked keys u drawn from ``sum(sizes)`` positions.
    nodes : sequence of int
        Node counts of the free dimensions of :func:`chain_order` (all but the last).
    own : tuple of int
        The categories of the query's own area (more than category 0 for a named area).

    Returns
    -------
    ClassPoints
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.int64)
    size_int = [int(v) for v in sizes]
    own = tuple(own)
    order = chain_order(size_int, unmasked, own)
    n_cat = len(size_int)
    N_all = sum(size_int)
    u = int(unmasked)
    last = order[-1]
    dims = order[:-1]
    if len(nodes) != len(dims):
        raise ValueError(f"need {len(dims)} node counts, got {len(nodes)}")
    # instances of the chain so far: exact ones (integer counts, Python ints: their
    # conditionals may be enumerated) and float ones (after a Gauss node), kept as arrays
    exact = [(1.0, [0] * n_cat, u, N_all - u)]
    fw, fc = np.zeros(0), np.zeros((0, n_cat))
    fN, fNc = np.zeros(0), np.zeros(0)
    pool = N_all
    rows = []  # (weight, counts, rest, centre, offsets, weights) per row
    for i, (d, n) in enumerate(zip(dims, nodes)):
        K = size_int[d]
        Kc = pool - K
        inner = i == len(dims) - 1
        nxt = []
        gw, gc, gN, gNc = [], [], [], []
        if len(fw):  # instances already at Gauss nodes: batched
            parent, mean, off, wt = _gauss_children(K, Kc, fw, fc, fN, fNc, n)
            if inner:
                bounds = np.searchsorted(parent, np.arange(len(fw) + 1))
                for r in range(len(fw)):
                    a, b = bounds[r], bounds[r + 1]
                    rows.append((fw[r], fc[r], fN[r], mean[a], off[a:b], wt[a:b]))
            else:
                x = mean + off
                c = fc[parent].copy()
                c[:, d] = x
                # draws and non-draws left: N - x and Nc - (K - x), with K - x = K Nc/M - off
                kc_left = K * fNc[parent] / (K + Kc) - off
                gw.append(fw[parent] * wt)
                gc.append(c)
                gN.append(fN[parent] - x)
                gNc.append(fNc[parent] - kc_left)
        for w, cnt, N, Nc in exact:
            # the own area with P(U_own = 0) above ATOM is enumerated: no Gauss rule sees that
            # point, which carries the loss once attention saturates (docs/model.md §8)
            # (P(U_own = 0) formed once: it is the set-up's costliest scalar); an own area of
            # several categories: each of them while the ones before are 0
            p_zero = (own_zero(K, Kc, N) if d in own and all(cnt[c] == 0 for c in own)
                      else 0.0)
            m = n if p_zero <= ATOM else min(K, N) + 1
            xs, mean, off, ws, enum = hg_rule(K, Kc, N, Nc, max(n, m))
            p0 = own_atom(p_zero) if not enum else 0.0
            if p0:  # U_own = 0 as a point of its own; the Gauss rule takes the rest
                ws = ws * (1.0 - p0)
                if inner:
                    off, ws = np.r_[-float(mean), off], np.r_[p0, ws]
                else:
                    c = list(cnt)
                    c[d] = 0
                    nxt.append((w * p0, c, N, Nc - K))
            if inner:
                rows.append((w, [float(v) for v in cnt], float(N), float(mean), off, ws))
            elif enum:
                for x, wx in zip(xs, ws):
                    c = list(cnt)
                    c[d] = x
                    nxt.append((w * wx, c, N - x, Nc - (K - x)))
            else:
                c = np.repeat(np.array([cnt], dtype=np.float64), len(xs), axis=0)
                c[:, d] = xs
                gw.append(w * ws)
                gc.append(c)
                gN.append(float(N) - np.asarray(xs))
                gNc.append(float(Nc) - (K * float(Nc) / (K + Kc) - off))
        if gw:
            fw, fc, fN, fNc = (np.concatenate(gw), np.concatenate(gc), np.concatenate(gN),
                               np.concatenate(gNc))
        else:
            fw, fc, fN, fNc = np.zeros(0), np.zeros((0, n_cat)), np.zeros(0), np.zeros(0)
        exact, pool = nxt, Kc
    if not dims:  # a single live category takes every unmasked key: one point
        inner = last
        last = next(i for i in range(n_cat) if size_int[i] == 0)
        rows = [(1.0, [0.0] * n_cat, float(u), float(u), np.zeros(1), np.ones(1))]
    else:
        inner = dims[-1]
    counts = np.array([np.asarray(r[1], dtype=np.float64) for r in rows]).reshape(-1, n_cat)
    rest = np.array([float(r[2]) for r in rows])
    centre = np.array([float(r[3]) for r in rows])
    node_x = np.concatenate([r[4] for r in rows])
    node_w = np.concatenate([r[0] * r[5] for r in rows])
    blocks = []
    first = 0
    for i, r in enumerate(rows):
        n = len(r[4])
        for a in range(0, n, BLOCK):
            blocks.append((i, first + a, first + min(n, a + BLOCK)))
        first += n
    return ClassPoints(sizes=sizes, areas=areas, inner=inner, last=last, counts=counts,
                       rest=rest, centre=centre, node_x=node_x, node_w=node_w,
                       blocks=np.array(blocks, dtype=np.int64).reshape(-1, 3),
                       nodes=tuple(nodes), mass=math.fsum(node_w))


def start_levels(d):
    """Start :data:`LEVELS` index of each of the ``d`` free dimensions of a class's chain.

    The richest level of at most :data:`START_NODES` nodes whose richer rule (the next level in
    every dimension) has at most :data:`START_POINTS` points: classes with many key categories
    (many area groups) start coarse and grow only the dimensions that need it.
    """
    top = max(i for i, n in enumerate(LEVELS[:-1]) if n <= START_NODES)
    start = next((i for i in range(top, 0, -1) if LEVELS[i + 1] ** d <= START_POINTS), 0)
    return [start] * d


def level_of(nodes):
    """The :data:`LEVELS` index of a node count (how results files give levels back)."""
    if nodes not in LEVELS:
        raise ValueError(f"{nodes} nodes is not a quadrature level of this mimfast "
                         f"(levels: {list(LEVELS)})")
    return LEVELS.index(nodes)


@cache
def _error_parts(n_cat):
    lay = sum_layout(n_cat)
    idx = np.arange(lay.size)
    return (np.r_[lay.dB_self, idx[lay.dA], idx[lay.dB]], idx[lay.alpha], np.array([lay.loss]))


def sums_error(a, b, n_cat):
    """Normwise relative difference of two sum vectors (layout :func:`mimfast.model.sum_layout`).

    The largest of: the gradient (dB_self, dA, dB together), the attention vector and the
    loss, each relative to its norm in ``b``. This is the error estimate of a class. The
    squares are summed one by one in layout order, as the C++ loop (``cpp/fused.cpp``) does,
    so both loops give the same bytes.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    out = 0.0
    for part in _error_parts(n_cat):
        d = r = 0.0
        top = max(abs(y) for y in b[part].tolist()) or 1.0  # no squares underflow
        for x, y in zip(a[part].tolist(), b[part].tolist()):
            e, f = (y - x) / top, y / top
            d += e * e
            r += f * f
        if d > 0:
            out = max(out, math.sqrt(d) / math.sqrt(r) if r > 0 else math.inf)
    return out


class ClassQuadrature:
    """Adaptive quadrature of one query class: a base and a richer rule, grown on demand.

    Parameters
    ----------
    sizes, areas : sequence of int
    unmasked : int
    levels : sequence of int, optional
        Start index into :data:`LEVELS` of each free dimension (default
        :func:`start_levels`).
    shared : mapping, optional
        Point sets already built for classes with the same categories (read only, so classes
        share them; :func:`build_quadratures` passes one per setting).
    own : tuple of int, optional
        The categories of the query's own area (:func:`build_points`).
    coarse : bool, optional
        Start every dimension at the coarsest level instead of :func:`start_levels` (the
        classes of settings over tile groups, see :func:`build_quadratures`).
    """

    def __init__(self, sizes, areas, unmasked, levels=None, shared=None, own=(0,),
                 coarse=False):
        self._shared = {} if shared is None else shared
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.areas = np.asarray(areas, dtype=np.int64)
        self.unmasked = int(unmasked)
        self.own = tuple(own)
        self.dims = chain_order([int(v) for v in self.sizes], self.unmasked, self.own)[:-1]
        if levels is None:
            levels = [0] * len(self.dims) if coarse else start_levels(len(self.dims))
        self.levels = list(levels)
        if len(self.levels) != len(self.dims):
            raise ValueError(f"need {len(self.dims)} start levels, got {len(self.levels)}")
        self._cache = {}
        consts = category_constants(self.sizes, self.areas)
        self.live_list = consts["live_list"]
        self.n_cat = len(self.sizes)
        self.dropped = 0.0

    def points(self, levels):
        """The (cached) point set with :data:`LEVELS` index ``levels[d]`` per dimension."""
        key = tuple(levels)
        if key not in self._cache:
            # point sets are read only: classes with the same categories share them
            common = (self.sizes.tobytes(), self.areas.tobytes(), self.unmasked, self.own, key)
            points = self._shared.get(common)
            if points is None:
                points = build_points(self.sizes, self.areas, self.unmasked,
                                      [LEVELS[i] for i in key], self.own)
                self._shared[common] = points
            self._cache[key] = points
        return self._cache[key]

    def base(self):
        """The current base point set."""
        return self.points(self.levels)

    def rich(self):
        """The current richer point set (one level more in every dimension)."""
        return self.points([i + 1 for i in self.levels])

    def _drop_unused(self):
        keep = {tuple(self.levels), tuple(i + 1 for i in self.levels)}
        self._cache = {k: v for k, v in self._cache.items() if k in keep}

    def evaluate(self, sums, rtol):
        """Sums of the richer rule and their error estimate, growing node counts as needed.

        Parameters
        ----------
        sums : callable
            ``sums(points) -> numpy.ndarray``: the kernel at the current state.
        rtol : float
            Target of :func:`sums_error` between the base and the richer rule.

        Returns
        -------
        sums : numpy.ndarray
            The richer rule's sums.
        error : float
            Their estimated error: the base-to-rich difference, or the kernel's rounding
            estimate of the richer rule's sums when larger.
        ok : bool
            False when the tolerance could not be met (node counts at their limit, or the
            kernel's rounding above it).
        """
        n = len(self.sizes)
        while True:
            rich = sums(self.rich())
            diff = sums_error(sums(self.base()), rich, n)
            rnd = rounding(rich, n)  # the kernel's rounding, which more nodes cannot remove
            err = max(diff, rnd)
            if diff <= rtol:
                return rich, err, rnd <= rtol
            grown = self._grow(sums, rich, rtol)
            if grown is None:  # no dimension moves the sums by rtol: the rest is rounding
                return rich, err, rnd <= rtol
            if not grown:
                return rich, err, False

    def _grow(self, sums, rich, rtol):
        """Raise the levels of the dimensions whose enrichment moves the sums most.

        Returns True when grown, False at the limits, and None when enriching any single
        dimension alone changes the sums by less than ``rtol`` / 4: the base-to-rich
        difference is then the rounding of the sums, which more nodes cannot remove.
        """
        if len(self.levels) == 0 or max(self.levels) + 2 >= len(LEVELS):
            return False
        base = sums(self.base())
        effect = []
        for d in range(len(self.levels)):
            lv = list(self.levels)
            lv[d] += 1
            effect.append(sums_error(base, sums(self.points(lv)), len(self.sizes)))
        top = max(effect)
        if top < rtol / 4:
            return None
        new = [lv + 1 if e >= min(top, rtol) * 0.1 else lv
               for lv, e in zip(self.levels, effect)]
        if new == self.levels:
            new[int(np.argmax(effect))] += 1
        if max(new) + 1 >= len(LEVELS) or self.points([i + 1 for i in new]).points > MAX_POINTS:
            return False
        self.levels = new
        self._drop_unused()
        return True


def build_quadratures(setting, levels=None):
    """Adaptive quadratures of every query class, keyed by ``(k, h)``.

    Every class has its own :class:`ClassQuadrature` (classes with the same categories start
    alike, but each grows its rules only for its own error): what one class needs never
    changes another's sums, whichever loop runs them. ``levels`` maps a class to its start
    levels (from an earlier run, for an identical resume).

    The classes of a setting over tile groups (a cluster with roles, docs/model.md §3) start
    every dimension at the coarsest level: their categories are whole tile groups, mostly far
    larger than their spread, where two nodes already integrate to rounding; the error
    control grows the dimensions that need more (the own tile's, typically) as for any class.
    Started at :func:`start_levels`, a class of four tile groups would evaluate 6^4 + 9^4
    points per step.
    """
    from .grid import class_categories

    out, shared = {}, weakref.WeakValueDictionary()
    classes = setting.classes()
    coarse = any(c.roles is not None for c in setting.clusters)
    report = _SetupProgress(len(classes))
    for i, (k, h) in enumerate(classes):
        sizes, areas = class_categories(setting, k, h)
        start = None if levels is None else levels.get((k, h))
        q = out[k, h] = ClassQuadrature(sizes, areas, setting.unmasked, start, shared,
                                        tuple(own_area(setting, k, h)),
                                        coarse=coarse)
        q.base(), q.rich()  # built now, where a long set-up can show its progress
        report(i + 1)
    return out


class _SetupProgress:
    """Says on stderr how far a set-up has come once it has taken
    :data:`SETUP_PROGRESS_SECONDS`, and then at most once every that many seconds."""

    def __init__(self, total):
        import time

        self.clock, self.total, self.said = time.monotonic, total, False
        self.next = self.clock() + SETUP_PROGRESS_SECONDS

    def __call__(self, done):
        if self.clock() >= self.next or (self.said and done == self.total):
            import sys

            print(f"mimfast: quadrature set up for {done:,} of {self.total:,} query classes",
                  file=sys.stderr, flush=True)
            self.said = True
            self.next = self.clock() + SETUP_PROGRESS_SECONDS


def grid_points_estimate(setting):
    """About how many count-grid points an exact step visits (all distinct classes).

    Every live category but the widest spans about 16 standard deviations of its count (the
    window of a 1e-15 tail), or its whole support when that is smaller; nothing is built, so
    this is cheap at any P.
    """
    from .grid import class_categories

    total, seen = 0, set()
    u = setting.unmasked
    for k, h in setting.classes():
        sizes, areas = class_categories(setting, k, h)
        key = (sizes.tobytes(), areas.tobytes())
        if key in seen:
            continue
        seen.add(key)
        N = int(sizes.sum())
        widths = []
        for C in (int(v) for v in sizes if v > 0):
            f = u / N
            sd = math.sqrt(max(C * f * (1 - f) * (N - C) / max(N - 1, 1), 0.0))
            widths.append(min(min(C, u) - max(0, u - (N - C)) + 1, 16 * sd + 1))
        total += math.prod(sorted(widths)[:-1]) if len(widths) > 1 else 1
    return total


def choose_method(setting, method):
    """The method a run uses: ``method`` itself, or for ``"auto"`` exact when the grid has at
    most :data:`AUTO_GRID_POINTS` points and quadrature otherwise."""
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
    if method == "auto":
        method = "exact" if grid_points_estimate(setting) <= AUTO_GRID_POINTS else "quadrature"
    if method == "quadrature":
        check_quadrature(setting)
    return method


# Smallest rtol: the error estimate is a relative difference of sums of doubles, which rounding
# alone puts near 2^-52; a smaller tolerance could never be met, only chased by node growth.
MIN_RTOL = 2.0**-52
# start-up cost of one distinct class's rule sets (measured 3 to 14 ms on one core; classes
# with the same categories share them) and of each further class (its evaluator, ~0.4 ms)
SETUP_SECONDS_PER_RULES = 0.01
SETUP_SECONDS_PER_CLASS = 5e-4
# set-ups that take longer than this report their progress on stderr, this often
SETUP_PROGRESS_SECONDS = 10.0
# set-ups estimated longer than this are announced (a warning with the estimate)
SETUP_WARN_SECONDS = 60.0


def quadrature_estimate(setting):
    """Points, bytes and seconds of the start rule sets of every class, before anything is built.

    Each distinct class (its categories' sizes and areas) holds a base and a richer rule set
    (:func:`start_levels`), which classes with the same categories share; a point takes at
    most ``n_cat + 4`` doubles while its set is built and kept (its row's counts, pool and
    weight, its node offset and weight), an upper bound: small categories enumerated exactly
    have fewer points.

    Returns
    -------
    points : int
    nbytes : int
    seconds : float
    """
    from .grid import class_categories

    points = nbytes = classes = 0
    seen = set()
    for k, h in setting.classes():
        sizes, areas = class_categories(setting, k, h)
        classes += 1
        key = (sizes.tobytes(), areas.tobytes())
        if key not in seen:
            seen.add(key)
            lv = start_levels(max(len(chain_order([int(v) for v in sizes])) - 1, 0))
            n = math.prod(LEVELS[i] for i in lv) + math.prod(LEVELS[i + 1] for i in lv)
            points, nbytes = points + n, nbytes + n * 8 * (len(sizes) + 4)
    return (points, nbytes,
            len(seen) * SETUP_SECONDS_PER_RULES + classes * SETUP_SECONDS_PER_CLASS)


def check_quadrature(setting):
    """Refuse (ValueError) a quadrature whose start rule sets would need more memory than the
    exact method may use (:data:`mimfast.grid.DEFAULT_MAX_BYTES`), and warn when setting them
    up would take over a minute; both with the estimate of :func:`quadrature_estimate`."""
    import warnings

    from .grid import DEFAULT_MAX_BYTES, _size

    points, nbytes, seconds = quadrature_estimate(setting)
    n = sum(1 for _ in setting.classes())
    if nbytes > DEFAULT_MAX_BYTES:
        raise ValueError(
            f"the quadrature rules of the {n:,} query classes would need about {_size(nbytes)} "
            f"({points:.3g} points), more than the memory limit of {_size(DEFAULT_MAX_BYTES)}; "
            "use fewer area groups per cluster (each adds a dimension to the rules)")
    if seconds > SETUP_WARN_SECONDS:
        warnings.warn(f"setting up the quadrature of {n:,} query classes takes about "
                      f"{seconds / 60:.0f} min before the first step", UserWarning, stacklevel=3)

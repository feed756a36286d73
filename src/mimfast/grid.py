"""The count grid of docs/model.md §3: where the unmasked keys of a masked query can fall.

Given a masked query of group h, the other P - 1 positions split into key categories
(category 0 is the query's own area, category 1 + g the other areas of group g). The numbers
of unmasked keys per category are multivariate hypergeometric: u = P - m draws from P - 1.

Probabilities use Loader's saddle-point binomial density (the algorithm of R's ``dbinom``),
which has no cancellation at any size: for any p in (0, 1) and counts summing to u,

    Pr(U) = prod_i Binom(U_i; N_i, p) / Binom(u; N, p),

so the joint law factorises into one 1-D table per category. The grid keeps these tables over
a window of each category's count and enumerates points as rows: the counts of the "outer"
categories are fixed in a row, the "inner" category runs over a contiguous range, and the
"last" category takes the rest. Memory is O(window) for up to three non-empty categories.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

from .model import own_area

__all__ = [
    "BLOCK",
    "MAX_TAIL_TOL",
    "MIN_TAIL_TOL",
    "ClassGrid",
    "build_grid",
    "build_grids",
    "check_tail_tol",
    "hg_pmf",
    "log_binom_pmf",
    "log_hg_pmf",
]

DEFAULT_MAX_BYTES = 2 * 2**30
#: Smallest tail tolerance: 2^-52, the spacing of doubles just below 1. A smaller left-out
#: mass cannot be told apart from the rounding of the probabilities.
MIN_TAIL_TOL = 2.0**-52
MAX_TAIL_TOL = 1e-3
#: Grid points per step above which building a grid warns that a step will take seconds.
WARN_POINTS = 10**9
_QUADRATURE = 'method="quadrature" (its cost does not grow with P)'
BLOCK = 2048
_LOG_TINY = math.log(2.0**-1022)  # smallest normal double
_WINDOW_BYTES = 160  # peak bytes per count of a 1-D window while it is computed (measured)


#: Log-probabilities are formed in the platform's long double (64-bit significand on x86-64):
#: a log-probability near ln p carries an absolute rounding of about |ln p| times the unit
#: roundoff of its arithmetic, which becomes the relative error of p. In doubles that reaches
#: 1e-14 at p ~ 1e-28 and 1e-13 near the least normal double; in long double it stays below
#: the one rounding of p to a double. Where long double is the double (MSVC, Apple arm64),
#: the double bound holds (docs/model.md §3, "Probabilities").
LD = np.longdouble
_LD_EPS = np.finfo(LD).eps
_LN_2PI_LD = LD("1.83787706640934548356065947281")
#: log(n!) - log(sqrt(2 pi n) (n/e)^n) for n = 0..40 (0 for n = 0), to 25 digits.
_STIRLERR_SMALL = np.array([LD(v) for v in (
    "0.0", "0.08106146679532725821967026", "0.04134069595540929409382208",
    "0.02767792568499833914878929", "0.02079067210376509311152277",
    "0.01664469118982119216319487", "0.01387612882307074799874573",
    "0.01189670994589177009505572", "0.01041126526197209649747857",
    "0.009255462182712732917728637", "0.008330563433362871256469319",
    "0.007573675487951840794972024", "0.006942840107209529865664153",
    "0.006408994188004207068439631", "0.005951370112758847735624416",
    "0.00555473355196280137103869", "0.005207655919609640440717997",
    "0.004901395948434737860716818", "0.004629153749334028592427213",
    "0.004385560249232324268287736", "0.004166319691996922457462923",
    "0.003967954218640859617287637", "0.003787618068444434577866677",
    "0.003622960224683094707381198", "0.003472021382978766962945115",
    "0.003333155636728092875807019", "0.003204970228055038011184157",
    "0.003086278682608777063256241", "0.002976063983550408826021163",
    "0.002873449362352466387552351", "0.002777674929752693603594904",
    "0.002688078828531142867802099", "0.002604081919251656422419193",
    "0.002525175249756784364002446", "0.002450909735438118343141977",
    "0.002380887608234111985727839", "0.002314755290514683866814115",
    "0.002252197424337523742169285", "0.002192931843287834061023698",
    "0.00213670531775250019580838", "0.002083289938302421748749125")])
#: Magnitudes of the Stirling series' terms, 1/12 n - 1/360 n^3 + 1/1260 n^5 - ...
_STIRLING = tuple(LD(a) / LD(b) for a, b in ((1, 12), (1, 360), (1, 1260), (1, 1680),
                                             (1, 1188), (691, 360360)))


def _stirlerr(n):
    """log(n!) - log(sqrt(2 pi n) (n/e)^n), elementwise for integer n >= 0, in long double:
    the table up to 40, then the Stirling series to 6 terms (3 above 500), whose next term is
    below 1e-20 (the long double's rounding of a log-probability near 1)."""
    n = np.asarray(n, dtype=LD)
    out = np.empty_like(n)
    small = n <= 40
    out[small] = _STIRLERR_SMALL[n[small].astype(np.int64)]
    for at, terms in ((n > 500, 3), ((n > 40) & (n <= 500), 6)):
        nl = n[at]
        nn = nl * nl
        series = _STIRLING[terms - 1]
        for c in _STIRLING[terms - 2::-1]:  # Horner in 1/n^2, alternating signs
            series = c - series / nn
        out[at] = series / nl
    return out


def _bd0(x, np_, diff):
    """Deviance term x log(x / np) + np - x without cancellation (Loader 2000), in long double.

    ``diff`` is x - np, computed by the caller as exactly as it can: near the mean the result
    depends on it to first order, so it must not carry the rounding of np.
    """
    x = np.asarray(x, dtype=LD)
    np_ = np.broadcast_to(np.asarray(np_, dtype=LD), x.shape)
    diff = np.broadcast_to(np.asarray(diff, dtype=LD), x.shape)
    out = np.empty_like(x)
    near = np.abs(diff) < 0.1 * (x + np_)
    xn, mn, dn = x[near], np_[near], diff[near]
    v = dn / (xn + mn)
    s = dn * v
    ej = 2 * xn * v
    v2 = v * v
    small = _LD_EPS * np.abs(s)
    for j in range(1, 40):  # the terms fall by v^2 < 0.01 each: stop once below rounding
        ej = ej * v2
        s = s + ej / (2 * j + 1)
        if np.all(np.abs(ej) <= small):
            break
    out[near] = s
    xf, mf = x[~near], np_[~near]
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.where(xf > 0, xf * np.log(xf / mf) + mf - xf, mf)
    out[~near] = far
    return out


def log_binom_pmf(x, n, p):
    """log Binom(x; n, p) for integer arrays x and integer n, accurate at any n.

    Parameters
    ----------
    x : array_like of int
        Counts, 0 <= x <= n (others give -inf).
    n : int
        Number of trials (may be 0).
    p : float or (int, int)
        Success probability in (0, 1), or the exact fraction ``a / b`` as a pair of integers
        (then x - n p and 1 - p are formed from integers, within a unit of the long double's
        last place, which keeps the result accurate at any n up to 2^62 and any p).

    Returns
    -------
    numpy.ndarray of numpy.longdouble
        The log-probabilities, in long double (see :data:`LD`): take ``exp`` before rounding
        to double, so that p keeps its relative accuracy far in the tails.
    """
    x = np.atleast_1d(np.asarray(x, dtype=np.int64))
    if isinstance(p, tuple):
        a, b = (int(v) for v in p)
        exact = "int64" if max(n * a, int(x.max(initial=0)) * b, n * b) < 2**62 else "int"
        p, q = LD(a) / LD(b), LD(b - a) / LD(b)  # q from integers: tiny when few are masked
        certain = 0 if a == 0 else n if a == b else None
    else:
        exact = False
        certain = 0 if p == 0 else n if p == 1 else None
        p = LD(p)
        q = 1 - p
    nL = LD(n)
    xf = x.astype(LD)
    out = np.full(x.shape, -np.inf, dtype=LD)
    if n == 0 or certain is not None:  # a certain outcome (p = 0 or 1, or no trials)
        out[x == (certain or 0)] = 0
        return out
    lo, hi = x == 0, x == n
    nf = np.array([nL])
    out[lo] = -_bd0(nf, nL * q, nL * p)[0] - nL * p if p < 0.1 else nL * np.log(q)
    out[hi] = -_bd0(nf, nL * p, nL * q)[0] - nL * q if q < 0.1 else nL * np.log(p)
    mid = (x > 0) & (x < n)
    xm = xf[mid]
    if exact:  # x b - n a in integers, then whole and fractional part in long double
        if exact == "int64":
            whole, part = np.divmod(x[mid] * b - n * a, b)
        else:  # products beyond int64: Python integers
            qr = [divmod(int(v) * b - n * a, b) for v in x[mid]]
            whole = np.array([w for w, _ in qr], dtype=np.int64)
            part = np.array([r for _, r in qr], dtype=np.int64)
        diff = whole.astype(LD) + part.astype(LD) / LD(b)
    else:
        diff = xm - nL * p
    lc = (
        _stirlerr(n)
        - _stirlerr(xm)
        - _stirlerr(n - xm)
        - _bd0(xm, nL * p, diff)
        - _bd0(n - xm, nL * q, -diff)
    )
    lf = _LN_2PI_LD + np.log(xm) + np.log((nL - xm) / nL)  # n - x exact: x may be near n
    out[mid] = lc - 0.5 * lf
    return out


def log_hg_pmf(x, K, N, u):
    """log Pr(X = x) for X the marked positions among u drawn from N, K of them marked
    (hypergeometric), from three binomial densities of :func:`log_binom_pmf` at p = u / N,
    whose p^x q^(n-x) factors cancel: accurate at any N up to 2^62. In long double."""
    x = np.asarray(x, dtype=np.int64)
    p = (u, N)
    return log_binom_pmf(x, K, p) + log_binom_pmf(u - x, N - K, p) - log_binom_pmf([u], N, p)[0]


def hg_pmf(x, K, N, u):
    """Pr(X = x) of :func:`log_hg_pmf`, as doubles."""
    return np.exp(log_hg_pmf(x, K, N, u)).astype(np.float64)


def category_constants(sizes, areas):
    """Per-category constants of docs/model.md §3 that every kernel reads from a point set.

    Returns a dict: ``fsizes`` (sizes as floats), ``inv_sizes`` and ``inv_areas`` (1 / C and
    1 / n', 0 when empty), ``s_a`` and ``s_b`` (E[S2 | r] = s_a r (C - r) + s_b r^2), ``live``
    (categories with key positions) and ``live_list``.
    """
    C = np.asarray(sizes).astype(np.float64)
    n = np.asarray(areas).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_areas = np.where(n > 0, 1.0 / n, 0.0)
        inv_sizes = np.where(C > 0, 1.0 / C, 0.0)
        # E[S2 | r] = s_a r (C - r) + s_b r^2 = r (1 - 1/n') (C - r) / (C - 1) + r^2 / n'
        s_a = np.where(n > 1, (1.0 - inv_areas) / (C - 1.0), 0.0)
    live = C > 0
    return {"fsizes": C, "inv_sizes": inv_sizes, "inv_areas": inv_areas, "s_a": s_a,
            "s_b": inv_areas, "live": live, "live_list": live.tolist()}


@dataclass
class KeyCategories:
    """What every class point set (exact grid or quadrature rule) shares: its key categories
    with their per-category constants (:func:`category_constants`, set as attributes), and
    its points through ``rows()``, which each kind defines."""

    sizes: np.ndarray
    areas: np.ndarray

    def __post_init__(self):
        for key, value in category_constants(self.sizes, self.areas).items():
            setattr(self, key, value)

    @property
    def n_cat(self) -> int:
        """Number of key categories (1 + number of groups)."""
        return len(self.sizes)

    def probabilities(self):
        """All points at once: ``(counts, probabilities)`` (memory O(points); for tests)."""
        parts = list(self.rows())
        return np.concatenate([c for c, _ in parts]), np.concatenate([w for _, w in parts])


@dataclass
class ClassGrid(KeyCategories):
    """The count grid of one query class (k, h), shared by every backend.

    Attributes
    ----------
    sizes : numpy.ndarray of int64, shape (n_cat,)
        Key positions per category: own area (c_h - 1), then every group's other areas.
    areas : numpy.ndarray of int64, shape (n_cat,)
        Areas per category (1 for the own area, n'_g for group g).
    inner, last : int
        Category run over a contiguous range in each row, and the category that takes the rest.
    counts : numpy.ndarray of int64, shape (n_rows, n_cat)
        Fixed counts of the outer categories in each row (inner and last columns are 0).
    rest : numpy.ndarray of int64, shape (n_rows,)
        Unmasked keys left for inner + last in each row.
    lo, hi : numpy.ndarray of int64, shape (n_rows,)
        Inclusive range of the inner count in each row.
    row_weight : numpy.ndarray of float64, shape (n_rows,)
        Probability factor of the row's outer counts, times the global normaliser.
    t_inner, t_last : numpy.ndarray of float64
        Scaled probability tables of the inner and last counts, index ``count - offset``.
    off_inner, off_last : int
    blocks : numpy.ndarray of int64, shape (n_blocks, 3)
        ``(row, first, stop)`` slices of at most :data:`BLOCK` inner values. Compiled kernels sum
        each block on its own and add the block sums in this order, so their result does not
        depend on the number of threads.
    mass : float
        Total probability of the grid points.
    cut : float
        Bound on the probability the windows leave out: the sum of the marginal tails cut
        (about the tail tolerance at most).
    fsizes, inv_sizes, inv_areas, s_a, s_b : numpy.ndarray
        Per-category constants of docs/model.md §3: sizes as floats, 1 / C and 1 / n' (0 when empty),
        and the coefficients of E[S2 | r] = s_a r (C - r) + s_b r^2.
    live : numpy.ndarray of bool
        Which categories have key positions.
    """

    inner: int
    last: int
    counts: np.ndarray
    rest: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    row_weight: np.ndarray
    t_inner: np.ndarray
    t_last: np.ndarray
    off_inner: int
    off_last: int
    blocks: np.ndarray
    mass: float = 1.0
    cut: float = 0.0

    @property
    def points(self) -> int:
        """Number of grid points."""
        return int(np.sum(self.hi - self.lo + 1))

    @property
    def dropped(self) -> float:
        """Probability mass left out of the grid, about the tail tolerance at most.

        Below 1e-12, :attr:`cut` (the union bound of the marginal tails cut: at least the mass
        left out and at most the number of key categories times it), since ``1 - mass`` there
        is lost in the ~1e-15 relative rounding of the probabilities; above, ``1 - mass``.
        """
        return self.cut if self.cut < 1e-12 else max(0.0, 1.0 - self.mass)

    def rows(self):
        """Yield ``(counts, inner_values, probabilities)`` row by row.

        ``counts`` is an int64 array (n_points, n_cat) of the full count vectors of the row's
        points; ``probabilities`` their probabilities. Memory O(row length).
        """
        for r in range(len(self.rest)):
            j = np.arange(self.lo[r], self.hi[r] + 1, dtype=np.int64)
            c = np.repeat(self.counts[r][None, :], len(j), axis=0)
            c[:, self.inner] = j
            c[:, self.last] = self.rest[r] - j
            w = (
                self.row_weight[r]
                * self.t_inner[j - self.off_inner]
                * self.t_last[self.rest[r] - j - self.off_last]
            )
            yield c, w


def _marginal_sd(N, Ni, u):
    """Standard deviation of the hypergeometric count of a category of Ni among N, u drawn."""
    f = u / N
    return math.sqrt(max(Ni * f * (1 - f) * (N - Ni) / max(N - 1, 1), 0.0))


def _first_width(sd):
    """Half-width of the first window :func:`_window` tries (used by the memory estimate)."""
    return 12.0 * sd + 30


def window_counts(sizes, unmasked):
    """Counts of the first 1-D windows of a class's count grid (each ``_WINDOW_BYTES`` while
    computed): the memory :func:`build_grid` knows before it allocates anything."""
    N, u = int(sum(int(v) for v in sizes)), int(unmasked)
    return sum(min(2 * _first_width(_marginal_sd(N, int(v), u)) + 1, int(v) + 1)
               for v in sizes if v > 0)


def check_grid_memory(setting, max_bytes=DEFAULT_MAX_BYTES):
    """Refuse (ValueError) a setting whose count grids :func:`build_grids` would refuse at its
    first memory check, without building anything."""
    seen = set()
    for k, h in setting.classes():
        sizes, _ = class_categories(setting, k, h)
        key = sizes.tobytes()
        if key in seen:
            continue
        seen.add(key)
        need = window_counts(sizes, setting.unmasked) * _WINDOW_BYTES
        if need > max_bytes:
            raise ValueError(f"the count grid of query class (k={k}, h={h}) would need more "
                             f"than {_size(need)}, over max_grid_bytes = {_size(max_bytes)}; "
                             f"use {_QUADRATURE}, fewer area groups or a smaller P")


def _window(N, Ni, u, tol):
    """Inclusive window [a, b] of the marginal count of a category of Ni among N, u drawn,
    leaving at most tol/2 of probability on each side, and a bound on the mass it leaves out.
    """
    lo_sup, hi_sup = max(0, u - (N - Ni)), min(Ni, u)
    mean = Ni * (u / N)
    width = _first_width(_marginal_sd(N, Ni, u))
    while True:
        a = max(lo_sup, math.floor(mean - width))
        b = min(hi_sup, math.ceil(mean + width))
        x = np.arange(a, b + 1, dtype=np.int64)
        pmf = hg_pmf(x, Ni, N, u)
        # log-concave: the tail beyond an edge is at most pmf(edge) * r / (1 - r)
        ok, beyond = True, 0.0
        if a > lo_sup:
            r = pmf[0] / pmf[1] if len(pmf) > 1 else 1.0
            ok &= r < 1 and pmf[0] * r / (1 - r) < tol * 1e-3
            beyond += pmf[0] * r / (1 - r) if r < 1 else 1.0
        if b < hi_sup:
            r = pmf[-1] / pmf[-2] if len(pmf) > 1 else 1.0
            ok &= r < 1 and pmf[-1] * r / (1 - r) < tol * 1e-3
            beyond += pmf[-1] * r / (1 - r) if r < 1 else 1.0
        if ok:
            break
        width *= 2
    left = np.cumsum(pmf)
    right = np.cumsum(pmf[::-1])[::-1]
    i0 = int(np.searchsorted(left, tol / 2, side="right"))
    i1 = len(pmf) - 1 - int(np.searchsorted(right[::-1], tol / 2, side="right"))
    i0, i1 = min(i0, len(pmf) - 1), max(i1, 0)
    if i0 > i1:
        i0 = i1 = int(np.argmax(pmf))
    cut = (left[i0 - 1] if i0 > 0 else 0.0) + (right[i1 + 1] if i1 + 1 < len(pmf) else 0.0)
    return a + i0, a + i1, float(cut + beyond)


def _outside(N, Ni, u, a, b, floor=None):
    """Probability that the marginal count of a category of Ni among N, u drawn, lies outside
    [a, b] (and at or above ``floor`` when given): the tails summed near the window, plus the
    log-concave bound on what lies further out (an upper bound, tight to ~1e-3 relative)."""
    lo_sup, hi_sup = max(0, u - (N - Ni)), min(Ni, u)
    if floor is not None:
        lo_sup = max(lo_sup, floor)
    reach = int(_first_width(_marginal_sd(N, Ni, u))) + 64
    total = 0.0
    for first, stop, edge in ((max(lo_sup, a - reach), a, 0), (b + 1, min(hi_sup, b + reach) + 1, -1)):
        if first >= stop:
            continue
        pmf = hg_pmf(np.arange(first, stop, dtype=np.int64), Ni, N, u)
        total += math.fsum(pmf)
        if (first > lo_sup) if edge == 0 else (stop - 1 < hi_sup):
            r = pmf[edge] / pmf[edge + 1 if edge == 0 else -2] if len(pmf) > 1 else 1.0
            total += pmf[edge] * r / (1 - r) if r < 1 else 1.0
    return total


def _size(n_bytes):
    """A byte count for a message: MiB, GiB or TiB, and no absurd numbers."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:.1f} {unit}" if n_bytes < 2**50 else "more than 1024 TiB"
    return f"{n_bytes / 2**20:.2f} MiB"


def check_tail_tol(tail_tol):
    """``tail_tol`` as a float in [MIN_TAIL_TOL, MAX_TAIL_TOL]; TypeError or ValueError."""
    if isinstance(tail_tol, bool) or not isinstance(tail_tol, Real):
        raise TypeError(f"tail_tol must be a real number, got {type(tail_tol).__name__}")
    try:
        value = float(tail_tol)
    except OverflowError:
        value = math.inf
    if not MIN_TAIL_TOL <= value <= MAX_TAIL_TOL:
        raise ValueError(
            f"tail_tol must lie in [2^-52, 1e-3] = [{MIN_TAIL_TOL:.3g}, {MAX_TAIL_TOL:g}], got "
            f"{tail_tol!r} (below 2^-52 a left-out mass is lost in the rounding of the "
            "probabilities)")
    return value


def check_max_bytes(max_bytes):
    """``max_bytes`` as a positive int; TypeError or ValueError."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, Integral):
        raise TypeError(f"max_grid_bytes must be an integer, got {type(max_bytes).__name__}")
    if max_bytes < 1:
        raise ValueError(f"max_grid_bytes must be positive, got {max_bytes}")
    return int(max_bytes)


def build_grid(sizes, areas, unmasked, tail_tol=1e-15, max_bytes=DEFAULT_MAX_BYTES, name="",
               own=(0,)):
    """Count grid of one query class.

    Parameters
    ----------
    sizes, areas : sequence of int
        Key positions and areas per category (see :class:`ClassGrid`).
    unmasked : int
        Unmasked keys u = P - m, drawn from ``sum(sizes) = P - 1`` positions.
    tail_tol : float
        Probability mass the grid may leave out.
    max_bytes : int
        Refuse (ValueError) a grid whose tables (the 1-D probability tables and the row
        tables, estimated before anything is allocated) would need more memory.
    name : str
        Query class, for error messages.
    own : tuple of int
        The categories of the query's own area (more than category 0 for a named area,
        docs/model.md §3).

    Returns
    -------
    ClassGrid

    Notes
    -----
    The points U_own = 0 (every other position of the query's own area masked) are kept
    whenever their probability is a normal double, even if they lie in the left-out tail, and
    the other categories' windows cover their law given U_own = 0 too: they carry the
    irreducible loss of docs/model.md §5, and at saturated attention (every other point has
    α_own within e^-lead of 1) they can carry most of the gradient. An own area of several
    categories has U_own = 0 where each of them is 0: their windows then reach down to 0.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    areas = np.asarray(areas, dtype=np.int64)
    N, u = int(sizes.sum()), int(unmasked)
    n_cat = len(sizes)
    live = [i for i in range(n_cat) if sizes[i] > 0]
    p = (u, N)
    share = tail_tol / max(len(live), 1)

    def refuse(need, what):
        raise ValueError(
            f"the count grid of query class {name} would need about {_size(need)} ({what}), "
            f"more than max_grid_bytes = {_size(max_bytes)}; use {_QUADRATURE}, fewer area "
            "groups or a smaller P")

    # the 1-D windows first: their memory is known before anything is allocated
    first = window_counts(sizes, u)
    if first * _WINDOW_BYTES > max_bytes:
        refuse(first * _WINDOW_BYTES, f"1-D probability tables of {int(first):,} counts")
    windows = {}
    for i in live:
        windows[i] = _window(N, int(sizes[i]), u, share)[:2]
    order = sorted(live, key=lambda i: windows[i][1] - windows[i][0])
    if len(order) >= 2:
        last, inner, outer = order[-1], order[-2], order[:-2]
    else:
        inner = order[0]
        last = next(i for i in range(n_cat) if sizes[i] == 0)
        outer = []
        windows[last] = (0, 0)
    own_size = sum(int(sizes[i]) for i in own)
    own_zero = 0 in live and log_hg_pmf([0], own_size, N, u)[0] > _LOG_TINY
    if own_zero:  # the slice U_own = 0 whole (see Notes): the others' windows given U_own = 0
        for i in live:
            if i not in own:
                a, b, _ = _window(N - own_size, int(sizes[i]), u, share)
                windows[i] = (min(a, windows[i][0]), max(b, windows[i][1]))
            elif i != 0:
                windows[i] = (0, windows[i][1])
    values = {i: np.arange(windows[i][0], windows[i][1] + 1, dtype=np.int64) for i in outer}
    kept_zero = own_zero and windows[0][0] > 0
    if kept_zero:
        if 0 in outer:
            values[0] = np.concatenate([[0], values[0]])
        else:  # U_own = 0 has a normal probability only when the window starts near 0
            windows[0] = (0, windows[0][1])
            kept_zero = False
    # the marginal mass outside the final windows: a union bound on the mass left out
    cut = math.fsum(_outside(N, int(sizes[i]), u, *windows[i], floor=1 if i == 0 and kept_zero
                             else None) for i in live)
    n_rows = math.prod(len(values[i]) for i in outer)
    widths = [windows[i][1] - windows[i][0] + 1 for i in (inner, last)]
    need = n_rows * (n_cat + 4) * 8 + (sum(widths) + sum(len(v) for v in values.values())) * 24
    if need > max_bytes:
        refuse(need, f"{n_rows:,} rows over {len(live)} key categories")
    points = n_rows * min(widths)
    if points > WARN_POINTS:
        warnings.warn(
            f"the count grid of query class {name} has up to {points:.3g} points: every GD step "
            f"evaluates them all (about a second per 10^9 points); {_QUADRATURE} is much faster",
            UserWarning, stacklevel=3)

    def table(i):
        x = values[i] if i in values else np.arange(windows[i][0], windows[i][1] + 1,
                                                    dtype=np.int64)
        return x, log_binom_pmf(x, int(sizes[i]), p)

    x_in, l_in = table(inner)
    x_last, l_last = table(last)
    ref_in, ref_last = l_in.max(), l_last.max()
    log_norm = log_binom_pmf([u], N, p)[0]
    outer_tabs = [table(i) for i in outer]

    counts = np.zeros((n_rows, n_cat), dtype=np.int64)
    logw = np.full(n_rows, ref_in + ref_last - log_norm)
    if outer:
        mesh = np.meshgrid(*[x for x, _ in outer_tabs], indexing="ij")
        lmesh = np.meshgrid(*[lg for _, lg in outer_tabs], indexing="ij")
        for i, xs, ls in zip(outer, mesh, lmesh):
            counts[:, i] = xs.ravel()
            logw = logw + ls.ravel()
    rest = u - counts.sum(axis=1)
    lo = np.maximum(x_in[0], rest - x_last[-1])
    hi = np.minimum(x_in[-1], rest - x_last[0])
    keep = lo <= hi
    t_in = np.exp(l_in - ref_in).astype(np.float64)
    t_last = np.exp(l_last - ref_last).astype(np.float64)
    lo, hi = lo[keep], hi[keep]
    starts = [np.arange(a, b + 1, BLOCK, dtype=np.int64) for a, b in zip(lo, hi)]
    blocks = np.zeros((sum(len(s) for s in starts), 3), dtype=np.int64)
    if len(blocks):
        blocks[:, 0] = np.repeat(np.arange(len(lo)), [len(s) for s in starts])
        blocks[:, 1] = np.concatenate(starts)
        blocks[:, 2] = np.minimum(blocks[:, 1] + BLOCK, hi[blocks[:, 0]] + 1)
    grid = ClassGrid(
        sizes=sizes,
        areas=areas,
        inner=inner,
        last=last,
        counts=counts[keep],
        rest=rest[keep],
        lo=lo,
        hi=hi,
        row_weight=np.exp(logw[keep]).astype(np.float64),
        t_inner=t_in,
        t_last=t_last,
        off_inner=int(x_in[0]),
        off_last=int(x_last[0]),
        blocks=blocks,
    )
    grid.cut = cut
    grid.mass = math.fsum(
        grid.row_weight[r]
        * float(
            np.dot(
                t_in[grid.lo[r] - x_in[0] : grid.hi[r] - x_in[0] + 1],
                t_last[grid.rest[r] - grid.hi[r] - x_last[0] : grid.rest[r] - grid.lo[r] - x_last[0] + 1][::-1],
            )
        )
        for r in range(len(grid.rest))
    )
    return grid


def class_categories(setting, k, h):
    """Key categories of a masked query of group h in cluster k: (sizes, areas).

    Category 0 is the query's own area (its own tile when the cluster names areas), 1 + g the
    other areas (tiles) of group g; their latents are :meth:`Setting.class_z`. A category
    inside a named area (:meth:`Setting.class_named`) counts as part of one area.
    """
    groups = setting.clusters[k].groups
    named = setting.clusters[k].named(h)
    sizes = [groups[h].size - 1]
    areas = [1]
    for g, grp in enumerate(groups):
        n_other = grp.areas - (1 if g == h else 0)
        sizes.append(n_other * grp.size)
        # a category inside a named area is part of one area, not n_other of their own
        areas.append(min(n_other, 1) if named is not None and named[1 + g] >= 0 else n_other)
    return np.array(sizes, dtype=np.int64), np.array(areas, dtype=np.int64)


def build_grids(setting, tail_tol=1e-15, max_bytes=DEFAULT_MAX_BYTES):
    """Count grids of every query class of a setting, keyed by ``(k, h)``.

    Parameters
    ----------
    setting : Setting
    tail_tol : float, default 1e-15
        Probability mass each class grid may leave out, in [2^-52, 1e-3].
    max_bytes : int
        Memory limit of one class grid's row tables.

    Returns
    -------
    dict
        ``{(k, h): ClassGrid}``.
    """
    tail_tol = check_tail_tol(tail_tol)
    max_bytes = check_max_bytes(max_bytes)
    grids, built = {}, {}
    for k, h in setting.classes():
        sizes, areas = class_categories(setting, k, h)
        own = tuple(own_area(setting, k, h))
        key = (sizes.tobytes(), areas.tobytes(), own)
        if key not in built:
            built[key] = build_grid(sizes, areas, setting.unmasked, tail_tol, max_bytes,
                                    name=f"(k={k}, h={h})", own=own)
        grids[k, h] = built[key]
    return grids


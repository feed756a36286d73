"""The count grid (docs/model.md §3): accurate probabilities at any P, bounded dropped mass, small memory."""

import itertools
import math
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from scipy.stats import multivariate_hypergeom

import mimfast as mf
from mimfast.grid import build_grid, build_grids, hg_pmf, log_binom_pmf, log_hg_pmf


def mp_log_binom(x, n, p):
    p = mpmath.mpf(p)
    return (mpmath.loggamma(n + 1) - mpmath.loggamma(x + 1) - mpmath.loggamma(n - x + 1)
            + x * mpmath.log(p) + (n - x) * mpmath.log(1 - p))


@pytest.mark.parametrize("n, p", [(7, 0.3125), (60, 0.5), (10**5, 0.375), (10**9, 0.5), (10**9, 0.25)])
def test_log_binom_pmf_matches_mpmath(n, p):
    mpmath.mp.dps = 40
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    xs = sorted({0, n, *[int(min(n, max(0, round(mean + t * sd)))) for t in (-8, -3, -1, 0, 2, 7)]})
    got = log_binom_pmf(xs, n, p)
    want = np.array([float(mp_log_binom(x, n, p)) for x in xs])
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


CASES = [
    ([15, 3984, 6000], [1, 1, 375], 5000),
    ([3, 400, 600, 996], [1, 2, 3, 4], 1000),
    ([0, 1200, 799], [1, 1, 17], 700),
    ([9, 0, 990], [1, 0, 90], 300),
]


@pytest.mark.parametrize("sizes, areas, u", CASES)
def test_grid_probabilities_match_scipy(sizes, areas, u):
    grid = build_grid(sizes, areas, u, tail_tol=1e-15)
    counts, prob = grid.probabilities()
    assert np.all(counts.sum(axis=1) == u)
    assert len(np.unique(counts, axis=0)) == len(counts)
    live = [i for i, s in enumerate(sizes) if s > 0]
    want = multivariate_hypergeom.pmf(counts[:, live], [sizes[i] for i in live], u)
    np.testing.assert_allclose(prob, want, rtol=1e-9)
    assert math.fsum(prob) == pytest.approx(grid.mass, abs=1e-15)
    # dropped = 1 - mass also carries the ~1e-15 relative rounding of the probabilities
    assert grid.dropped <= 1e-15 + 1e-14


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_dropped_mass_is_what_the_grid_leaves_out(tol):
    sizes, areas, u = [40, 6000, 3959], [1, 1, 99], 5000
    grid = build_grid(sizes, areas, u, tail_tol=tol)
    counts, _ = grid.probabilities()
    inside = math.fsum(multivariate_hypergeom.pmf(counts, sizes, u))
    assert 0 < grid.dropped <= tol
    # scipy's own pmf is good to ~1e-11 here
    assert grid.dropped == pytest.approx(1 - inside, rel=1e-4)


def test_exact_points_against_mpmath():
    mpmath.mp.dps = 40
    sizes, areas, u = [31, 31616, 68352], [1, 1, 2136], 50000
    grid = build_grid(sizes, areas, u)
    counts, prob = grid.probabilities()
    rng = np.random.default_rng(1)
    for i in rng.choice(len(prob), 8, replace=False):
        exact = mpmath.fprod(mpmath.binomial(s, int(c)) for s, c in zip(sizes, counts[i]))
        exact /= mpmath.binomial(sum(sizes), u)
        assert float(prob[i] / exact - 1) == pytest.approx(0, abs=1e-13)


def test_memory_grows_with_windows_not_p():
    s = mf.Setting.paper(10**9, 0.9, 0.3)
    grids = build_grids(s)
    for grid in grids.values():
        nbytes = sum(a.nbytes for a in (grid.counts, grid.rest, grid.lo, grid.hi,
                                        grid.row_weight, grid.t_inner, grid.t_last, grid.blocks))
        assert nbytes < 4 * 2**20
        assert grid.dropped <= 1e-15 + 1e-14
    local = grids[0, 1]
    assert local.points > 10**7  # the sum itself runs over ~1.5e7 points


def test_paper_sizes():
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    (glob, loc) = s.clusters[0].groups
    c_l = round(10 ** (6 * 0.3))
    n_l = round((10**6 - 10 ** (6 * 0.9)) / c_l)
    assert (loc.size, loc.areas) == (c_l, n_l) == (63, 11886)
    assert (glob.areas, glob.size) == (1, 10**6 - n_l * c_l)
    assert s.P == 10**6 and s.masked == 500000 and s.pp == "exact" and s.K == 1
    assert s.delta == pytest.approx(0.5)
    assert s.delta_actual == pytest.approx(
        (1 - math.log(63, 10**6)) - 2 * (1 - math.log(glob.size, 10**6)))
    s3 = mf.Setting.paper(10**4, 0.6, 0.3, gamma=0.25, K=3, z=(2.0, 0.5))
    assert s3.K == 3 and s3.pp == "frozen" and s3.masked == 2500
    assert s3.delta == pytest.approx(-0.1)
    assert [g.z for g in s3.clusters[2].groups] == [2.0, 0.5]
    assert mf.Setting.paper(100, 0.9, 0.1).clusters[0].groups[1].size == 2


def exact_law(sizes, u):
    """Every count vector of the live categories with its exact probability (fractions)."""
    live = [i for i, s in enumerate(sizes) if s > 0]
    total = math.comb(sum(sizes), u)
    law = {}
    for head in itertools.product(*[range(sizes[i] + 1) for i in live[:-1]]):
        rest = u - sum(head)
        if 0 <= rest <= sizes[live[-1]]:
            c = [0] * len(sizes)
            for i, x in zip(live, (*head, rest)):
                c[i] = x
            law[tuple(c)] = Fraction(math.prod(math.comb(s, x) for s, x in zip(sizes, c)), total)
    return law


# small P where windows cut something, the case of a saturated local query whose grid once
# left out U = (0, 0, 69), and a four-category class with the own area outer
ENUMERATED = [
    ([11, 8, 72], [1, 1, 12], 69, 1e-15),
    ([5, 60, 200], [1, 1, 40], 130, 1e-15),
    ([5, 60, 200], [1, 1, 40], 130, 1e-9),
    ([3, 40, 60, 30], [1, 2, 3, 5], 70, 1e-12),
    ([20, 7, 150], [1, 1, 30], 90, 1e-15),
]


@pytest.mark.parametrize("sizes, areas, u, tol", ENUMERATED)
def test_dropped_against_enumeration(sizes, areas, u, tol):
    """`dropped` is at least the mass left out and at most the number of categories times it,
    against exact hypergeometric probabilities; no point U_own = 0 is left out beyond the tail
    tolerance relative to Pr(U_own = 0)."""
    grid = build_grid(sizes, areas, u, tail_tol=tol)
    law = exact_law(sizes, u)
    counts, _ = grid.probabilities()
    got = {tuple(c) for c in counts.tolist()}
    assert got <= set(law)
    left = sum((p for c, p in law.items() if c not in got), Fraction(0))
    live = sum(1 for s in sizes if s > 0)
    # above 1e-12 it is 1 - mass, which carries the ~1e-15 rounding of the probabilities
    slack = 1e-14 if grid.dropped >= 1e-12 else 0.0
    assert float(left) * (1 - 1e-9) - slack <= grid.dropped
    assert grid.dropped <= live * float(left) * (1 + 1e-9) + slack
    assert grid.dropped <= 1.01 * tol
    zero = sum((p for c, p in law.items() if c[0] == 0), Fraction(0))
    zero_left = sum((p for c, p in law.items() if c[0] == 0 and c not in got), Fraction(0))
    assert zero_left <= Fraction(tol) * zero


# Long double with more precision than a double (x86-64, aarch64 Linux): probabilities are
# then within a few units of the last place; elsewhere the double bound |ln p| * eps holds.
EXTENDED = np.finfo(np.longdouble).nmant > np.finfo(np.float64).nmant


def mp_hg(x, K, N, u):
    return mpmath.binomial(K, x) * mpmath.binomial(N - K, u - x) / mpmath.binomial(N, u)


def tail_points(K, N, u, depths=(5, 40, 120, 300, 500, 650, 700)):
    """Counts x on each side of the mode where ln Pr(X = x) is nearest each of -depths."""
    lo, hi = max(0, u - (N - K)), min(K, u)
    mode = int(np.argmax(log_hg_pmf(np.arange(lo, hi + 1), K, N, u))) + lo if hi - lo < 10**6 \
        else round(K * u / N)
    xs = {lo, hi, mode}
    for a, b in ((lo, mode), (mode, hi)):
        for d in depths:  # the log-pmf is monotone on each side of the mode: bisect
            left, right = a, b
            while right - left > 1:
                mid = (left + right) // 2
                inside = log_hg_pmf([mid], K, N, u)[0] > -d
                if (b == mode) == bool(inside):
                    right = mid
                else:
                    left = mid
            xs |= {left, right}
    return sorted(xs)


@pytest.mark.parametrize("K, N, u", [
    (60, 10**6, 5 * 10**5), (3981, 10**12, 5 * 10**11), (10**6, 10**9, 5 * 10**8),
    (2**40, 2**62, 2**61 + 12345), (7, 30, 11), (10**9 + 7, 10**18, 10**17 + 3),
    (32, 64, 32), (60, 10**6, 10**6 - 10), (500, 10**9 + 7, 10**9 - 23),
    (30, 3 * 10**17 + 1, 3 * 10**17 - 40)])
def test_probabilities_keep_their_relative_accuracy_far_in_the_tails(K, N, u):
    """Each table entry is within 2.5e-16 relative of its exact value (50 digits) at points
    chosen down to ln p = -700, near the least normal double (a saturated class's loss sits on
    points of probability 1e-300), at even and at tiny shares of masked patches."""
    mpmath.mp.dps = 50
    xs = tail_points(K, N, u)
    got = hg_pmf(xs, K, N, u)
    deepest = 0.0
    for x, p in zip(xs, got):
        want = mp_hg(x, K, N, u)
        if want < mpmath.mpf(2) ** -1022:
            continue
        deepest = min(deepest, float(mpmath.log(want)))
        err = float(abs(mpmath.mpf(float(p)) / want - 1))
        bound = 2.5e-16 if EXTENDED else 4e-16 * (1 + abs(float(mpmath.log(want))))
        assert err <= bound, (x, float(want), err)
    edge = min(float(mpmath.log(mp_hg(x, K, N, u))) for x in (xs[0], xs[-1]))
    assert deepest <= max(edge, -708.0, -600.0)  # reached the deepest normal points there are


def test_grid_points_far_in_the_tails_keep_their_relative_accuracy():
    """A grid keeps U_own = 0 while its probability is a normal double: every point of a
    saturated local class's grid, products of three table entries, within 1e-15 of exact."""
    mpmath.mp.dps = 50
    sizes, areas, u = [39, 2000, 97961], [1, 49, 1], 50000
    grid = build_grid(sizes, areas, u, tail_tol=1e-15)
    counts, prob = grid.probabilities()
    assert counts[:, 0].min() == 0 and prob.min() < 1e-25
    N = sum(sizes)
    pick = np.argsort(prob)[:: max(1, len(prob) // 200)]
    for i in pick:
        c = counts[i]
        want = (mpmath.binomial(sizes[0], c[0]) * mpmath.binomial(sizes[1], c[1])
                * mpmath.binomial(sizes[2], c[2]) / mpmath.binomial(N, u))
        err = float(abs(mpmath.mpf(float(prob[i])) / want - 1))
        bound = 1e-15 if EXTENDED else 4e-16 * (4 + abs(float(mpmath.log(want))))
        assert err <= bound, (c, float(want), err)

"""One exact gradient at P = 10^5 against a 30-digit mpmath evaluation of docs/model.md §3."""

import functools

import mpmath
import numpy as np
import pytest
from extended import mp_point

import mimfast as mf

DPS = 30


def mp_expectations(sizes, areas, z, A, B, b_self, u, half_width=9.0, with_zero=False):
    """E over the unmasked counts of (l, alpha_c, dA_c, dB_self, dB_c), in mpmath.

    Written from docs/model.md §3 as stated there (own area and groups handled separately), with the
    hypergeometric probabilities built by exact ratio recurrences over +-half_width sd.
    Category 0 is the own area; categories 1.. the groups; the last category takes the rest.
    """
    mp = mpmath.mpf
    n = len(sizes)
    N = sum(sizes)
    wu = [mpmath.exp(mp(z[c]) * mp(A[c]) + mp(B[c])) for c in range(n)]
    wm = [mpmath.exp(mp(B[c])) for c in range(n)]
    ws = mpmath.exp(mp(b_self))
    free = [c for c in range(n - 1) if sizes[c] > 0]
    assert len(free) <= 2 and sizes[n - 1] > 0

    def ranges(c, left, pool):
        mean = mp(sizes[c]) * left / pool
        sd = mpmath.sqrt(mean * (1 - mp(sizes[c]) / pool) * (pool - left) / pool)
        lo = max(0, int(mean - half_width * sd) - 2, left - (pool - sizes[c]))
        hi = min(sizes[c], left, int(mean + half_width * sd) + 2)
        return lo, hi

    def pmf(c, x, left, pool):
        return (mpmath.binomial(sizes[c], x) * mpmath.binomial(pool - sizes[c], left - x)
                / mpmath.binomial(pool, left))

    sums = {"loss": mp(0), "bself": mp(0), "mass": mp(0)}
    for key in ("alpha", "dA", "dB"):
        sums[key] = [mp(0)] * n

    def point(U, w):
        loss, bself, *rest = mp_point(U, sizes, areas, z, wu, wm, ws)
        alpha, dA, dB = rest[:n], rest[n:2 * n], rest[2 * n:]
        sums["mass"] += w
        sums["loss"] += w * loss
        sums["bself"] += w * bself
        for c in range(n):
            sums["alpha"][c] += w * alpha[c]
            sums["dA"][c] += w * dA[c]
            sums["dB"][c] += w * dB[c]

    c0 = free[0]
    lo0, hi0 = ranges(c0, u, N)
    # with_zero: also the point without unmasked keys of the first category, far in its tail
    for x0 in ([0] if with_zero and lo0 > 0 else []) + list(range(lo0, hi0 + 1)):
        w0 = pmf(c0, x0, u, N)
        if len(free) == 1:
            U = [0] * n
            U[c0], U[n - 1] = x0, u - x0
            point(U, w0)
            continue
        c1 = free[1]
        left, pool = u - x0, N - sizes[c0]
        lo1, hi1 = ranges(c1, left, pool)
        w = w0 * pmf(c1, lo1, left, pool)
        for x1 in range(lo1, hi1 + 1):
            U = [0] * n
            U[c0], U[c1], U[n - 1] = x0, x1, left - x1
            point(U, w)
            # ratio recurrence to the next x1
            rest = left - x1
            w = w * mp(sizes[c1] - x1) / (x1 + 1) * rest / (sizes[n - 1] - rest + 1)
    return sums


SETTING = mf.Setting.paper(10**5, 0.9, 0.3)


def nonzero_state():
    state = mf.State.zeros(SETTING)
    state.fp[0][:] = [[1.3, 0.0, -0.4], [2.1, -1.2, 0.3]]
    state.pp[:] = [[0.02, -1e-3, 0.0, 4e-4], [0.05, 0.01, -2e-3, 1e-3]]
    return state


def saturated_state():
    """Attention on the own area within ~1e-20 of 1: alpha_own - 1 and dB_own are differences
    of nearly equal numbers unless formed from positive terms (docs/model.md §3)."""
    state = mf.State.zeros(SATURATED)
    state.fp[0][:] = [[38.0, 0.0, -3.0], [52.0, -9.0, 0.2]]
    state.pp[:] = [[0.02, 1e-3, 0.0, 4e-4], [0.05, 0.03, -2e-3, 1e-3]]
    return state


SATURATED = mf.Setting.paper(10**4, 0.9, 0.6)  # own areas of 250: U_own = 0 has mass 1e-75
def deep_state():
    """The local query's own-area logit 800 above every other one: at the count points without
    an unmasked own-area key every other weight is e^-800 of the own area's (below the
    smallest double), and those points carry almost all of its loss and gradient."""
    state = saturated_state()
    state.fp[0][1, 0] = 800.0
    return state


CASES = {"moderate": (SETTING, nonzero_state, DPS), "saturated": (SATURATED, saturated_state, 80),
         "deep": (SATURATED, deep_state, 80)}


@functools.cache
def reference(h, case="moderate"):
    s, make_state, dps = CASES[case]
    mpmath.mp.dps = dps
    state = make_state()
    groups = s.clusters[0].groups
    sizes = [groups[h].size - 1] + [(grp.areas - (g_ == h)) * grp.size
                                    for g_, grp in enumerate(groups)]
    areas = [1] + [grp.areas - (g_ == h) for g_, grp in enumerate(groups)]
    z = [groups[h].z] + [grp.z for grp in groups]
    ref = mp_expectations(sizes, areas, z, state.fp[0][h], state.pp[h, 1:], state.pp[h, 0],
                          s.unmasked, with_zero=case == "deep")
    return sizes, ref


# the local class's saturated states need the longest 50-digit sums: run by -m slow
@pytest.mark.parametrize("h, case", [(0, "moderate"), (1, "moderate"), (0, "saturated"),
                                     pytest.param(1, "saturated", marks=pytest.mark.slow),
                                     pytest.param(1, "deep", marks=pytest.mark.slow)])
def test_gradient_matches_mpmath(backend, h, case):
    s, make_state, _ = CASES[case]
    g = mf.gradient(s, make_state(), backend=backend, method="exact")
    sizes, ref = reference(h, case)
    if case != "moderate":  # the regime the test is for
        assert 0 < float(1 - ref["alpha"][0]) < 1e-15
    assert abs(float(ref["mass"]) - 1) < 1e-14
    scale = s.masked / s.P
    want_fp = [float(scale * v) for v in ref["dA"]]
    want_pp = [float(scale * ref["bself"])] + [float(scale * v) for v in ref["dB"]]
    live = [c for c in range(len(sizes)) if sizes[c] > 0]
    # deep: the gradient (~1e-81) comes from the count row U_own = 0 (mass 1e-76), whose far
    # tail the grid trims within its absolute tail tolerance; relative to that row: ~1e-7
    rtol = 1e-6 if case == "deep" else 1e-10
    np.testing.assert_allclose(g.fp[0][h, live], np.array(want_fp)[live], rtol=rtol)
    np.testing.assert_allclose(g.pp[h, [0] + [1 + c for c in live]],
                               np.array(want_pp)[[0] + [1 + c for c in live]], rtol=rtol)
    np.testing.assert_allclose(g.attention[0][h, live],
                               [float(ref["alpha"][c]) for c in live], rtol=rtol)
    np.testing.assert_allclose(g.patch_loss[0][h], float(ref["loss"]), rtol=rtol)


@pytest.mark.parametrize("case", ["saturated", "deep"])
def test_quadrature_matches_mpmath_when_saturated(case):
    """The quadrature counts U_own = 0 as a point of its own (docs/model.md §8): at saturated
    attention, where that point carries the loss and the gradient, it matches the 80-digit sum
    (whose U_own = 0 row is whole; the exact grid trims that row's far tail)."""
    s, make_state, _ = CASES[case]
    g = mf.gradient(s, make_state(), method="quadrature")
    sizes, ref = reference(1, case)
    scale = s.masked / s.P
    live = [c for c in range(len(sizes)) if sizes[c] > 0]
    np.testing.assert_allclose(g.fp[0][1, live], [float(scale * ref["dA"][c]) for c in live],
                               rtol=1e-10)
    want_pp = [float(scale * ref["bself"])] + [float(scale * ref["dB"][c]) for c in live]
    np.testing.assert_allclose(g.pp[1, [0] + [1 + c for c in live]], want_pp, rtol=1e-10)
    np.testing.assert_allclose(g.patch_loss[0][1], float(ref["loss"]), rtol=1e-10)
    assert g.error <= 1e-13

"""The Gauss–Hahn quadrature engine (docs/model.md §8) against exact moments and the exact grid."""

import math
import sys
import warnings
from fractions import Fraction
from functools import cache

import mpmath
import numpy as np
import pytest
from helpers import relative_difference as _rel
from helpers import true_error

import mimfast as mf
from mimfast.grid import class_categories
from mimfast.model import State, evaluate
from mimfast.quadrature import (
    build_points,
    choose_method,
    continued_pmf,
    hahn_rule,
    hg_rule,
    jacobi_rules,
)

G, C = mf.Group, mf.Cluster


@cache
def _stirling2(n, k):
    if n == k:
        return 1
    if k == 0 or k > n:
        return 0
    return k * _stirling2(n - 1, k) + _stirling2(n - 1, k - 1)


def hg_central_moments(K, Kc, N, kmax):
    """Exact central moments of HG(K + Kc, K, N) from its factorial moments (Fractions)."""
    M = K + Kc
    fm = [Fraction(1)]
    for r in range(1, kmax + 1):
        fm.append(fm[-1] * Fraction((K - r + 1) * (N - r + 1), M - r + 1))
    raw = [sum(_stirling2(k, r) * fm[r] for r in range(k + 1)) for k in range(kmax + 1)]
    mu = raw[1]
    return mu, [sum(math.comb(k, i) * raw[i] * (-mu) ** (k - i) for i in range(k + 1))
                for k in range(kmax + 1)]


@pytest.mark.parametrize("K,Kc,N", [
    (30, 10**5, 5 * 10**4),
    (10**3, 10**6 - 10**3, 3 * 10**5),
    (10**17, 9 * 10**17, 5 * 10**17),
    (3 * 10**14, 7 * 10**17, 10**17),
    (31622, 10**15 - 31623, 10**15 // 2),
    (2**61, 2**62 - 2**61 - 1, 2**60 + 12345),
])
def test_rule_reproduces_exact_moments_at_any_size(K, Kc, N):
    """An n-node rule integrates x^k, k <= 2n - 1, exactly: its standardised central moments
    equal the exact ones to ~1e-13 relative (to the normal moment of the same order), so the
    nodes keep full relative accuracy around the mean even at P ~ 2^62."""
    n = 8
    mean, off, w = hahn_rule(K, Kc, np.array([float(N)]), np.array([float(K + Kc - N)]), n)
    mu, cen = hg_central_moments(K, Kc, N, 2 * n - 1)
    assert abs(mean[0] - float(mu)) <= 1e-15 * float(mu)
    s = math.sqrt(cen[2])
    for k in range(1, 2 * n):
        got = float(np.sum(w[0] * (off[0] / s) ** k))
        want = float(cen[k] / Fraction(s) ** k)
        scale = math.prod(range(k - 1, 0, -2)) if k % 2 == 0 else math.prod(range(k, 0, -2))
        assert abs(got - want) <= 1e-13 * scale, (k, got, want)


@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("n", [1, 2, 7, 64, 316])
def test_jacobi_rules_give_the_chebyshev_rule(n, dense):
    """Both eigensolvers (the compiled tridiagonal QL and numpy's dense eigh) on the Jacobi
    matrix of the Chebyshev weight: nodes cos((2k - 1) pi / 2n), all weights 1 / n."""
    off = np.full((2, n - 1), 0.5)
    off[:, :1] = math.sqrt(0.5)
    nodes, weights = jacobi_rules(np.zeros((2, n)), off, dense=dense)
    want = np.cos((2 * np.arange(n, 0, -1) - 1) * math.pi / (2 * n))
    np.testing.assert_allclose(nodes, np.broadcast_to(want, (2, n)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(weights, 1.0 / n, rtol=1e-11)  # eigenvectors: ~n eps


@pytest.mark.parametrize("K", [1, 6, 40])
def test_continued_pmf_is_the_law_and_keeps_its_moments_at_float_draws(K):
    """At integer draws the continued pmf is the hypergeometric pmf (exact fractions); at the
    non-integer draws of a Gauss node its factorial moments are (K)_r (N)_r / (M)_r, r <= K."""
    M = 2000 + K
    for N in (K, 1000, M - K):
        got = continued_pmf(K, np.array([float(N)]), np.array([float(M - N)]))[0]
        want = [Fraction(math.comb(N, x) * math.comb(M - N, K - x), math.comb(M, K))
                for x in range(K + 1)]
        np.testing.assert_allclose(got, [float(v) for v in want], rtol=1e-13, atol=0)
    mpmath.mp.dps = 30
    for N in (K + 0.25, 517.3, M - K - 0.5):
        w = continued_pmf(K, np.array([N]), np.array([M - N]))[0]
        for r in range(K + 1):
            want = mpmath.ff(K, r) * mpmath.ff(N, r) / mpmath.ff(M, r)
            got = mpmath.fsum(mpmath.mpf(float(wx)) * mpmath.ff(x, r) for x, wx in enumerate(w))
            assert abs(got / want - 1) < 1e-13 * (r + 1), (N, r)


@pytest.mark.parametrize("n", [9, 141, 316])
def test_hahn_rules_agree_between_eigensolvers(n, monkeypatch):
    """The compiled solver that builds every rule agrees with dense eigh on Hahn matrices."""
    import functools
    import sys

    N = np.array([5e8, 1e8 / 3, 1234.5])
    args = (1e8, 9e8, N, 1e9 - N, n)
    mean, off, w = hahn_rule(*args)
    quad = sys.modules["mimfast.quadrature"]
    monkeypatch.setattr(quad, "jacobi_rules", functools.partial(quad.jacobi_rules, dense=True))
    mean_d, off_d, w_d = hahn_rule(*args)
    np.testing.assert_array_equal(mean, mean_d)
    sd = np.sqrt(N * 0.1 * 0.9 * (1e9 - N) / 1e9)[:, None]
    np.testing.assert_allclose(off / sd, off_d / sd, rtol=0, atol=1e-12)
    np.testing.assert_allclose(w, w_d, rtol=0, atol=1e-13)


@pytest.mark.parametrize("K,Kc,N", [(5, 20, 11), (31, 10**5 - 32, 5 * 10**4),
                                    (40, 10**15 - 41, 10**15 // 2 - 7)])
def test_enumerated_support_has_the_exact_pmf(K, Kc, N):
    xs, _, _, w, enumerated = hg_rule(K, Kc, N, K + Kc - N, n=K + 1)
    assert enumerated and xs == list(range(max(0, N - Kc), min(K, N) + 1))
    mpmath.mp.dps = 40
    want = [mpmath.binomial(K, x) * mpmath.binomial(Kc, N - x) / mpmath.binomial(K + Kc, N)
            for x in xs]
    np.testing.assert_allclose(w, [float(v) for v in want], rtol=1e-13, atol=1e-300)


def q0_closed_form(setting, k, h):
    """Attention and patch loss of class (k, h) at Q = 0, from hypergeometric moments.

    At Q = 0 every key weighs 1, so D = P at every point and alpha_c = U_c / P; the loss is
    quadratic in the counts."""
    sizes, areas = class_categories(setting, k, h)
    z = setting.class_z(k, h)
    N, u, P = int(sizes.sum()), setting.unmasked, setting.P
    att, loss = [], Fraction(0)
    for c, (Cc, n) in enumerate(zip(sizes.tolist(), areas.tolist())):
        mean = Fraction(u * Cc, N)
        var = Fraction(u * Cc * (N - Cc) * (N - u), N * N * (N - 1)) if N > 1 else Fraction(0)
        sq = var + mean * mean
        att.append(mean / P)
        if c == 0:
            loss += Fraction(z[0] ** 2) * (P * P - 2 * P * mean + sq) / (2 * P * P)
        elif n > 0:
            f = Fraction(1, n)
            s2 = n * ((1 - f) * f * (Cc * mean - sq) / (Cc - 1) if n > 1 else 0) + f * sq
            loss += Fraction(z[c] ** 2) * s2 / (2 * P * P)
    return np.array([float(a) for a in att]), float(loss)


@pytest.mark.parametrize("P", [10**4, 10**9, 10**15, 10**18])
def test_q0_matches_the_closed_form(P):
    s = mf.Setting.paper(P, 0.9, 0.3)
    g = mf.gradient(s, method="quadrature")
    for k, h in s.classes():
        att, loss = q0_closed_form(s, k, h)
        np.testing.assert_allclose(g.attention[k][h], att, rtol=1e-14)
        assert g.patch_loss[k][h] == pytest.approx(loss, rel=1e-14)


def state_at(r, i):
    """The state recorded at index i of a result, checked against the per-key accessors."""
    st = r.recorded_state(i)
    s = r.setting
    for k, c in enumerate(s.clusters):
        for h in range(len(c.groups)):
            keys = ["own"] + list(range(len(c.groups)))
            assert list(st.fp[k][h]) == [r.fp(k, h, key)[i] for key in keys]
            if s.pp == "exact":
                assert list(st.pp[h]) == [r.pp(h, key)[i] for key in ["self", "own"] + keys[1:]]
    return st


def three_groups(z=(1.0, 1.5, 0.7), gamma=0.5):
    return mf.Setting([C([G(1, 900, z[0]), G(40, 30, z[1]), G(200, 12, z[2])])], gamma=gamma)


CASES = {
    # name: (setting, eta, steps); every run reaches own-area attention >= 0.99
    "positive-1e4-k0.3": (lambda: mf.Setting.paper(10**4, 0.9, 0.3), 30.0, 400),
    "positive-1e5-k0.3": (lambda: mf.Setting.paper(10**5, 0.9, 0.3), 30.0, 400),
    "negative-1e6-k0.5": (lambda: mf.Setting.paper(10**6, 0.6, 0.5), 300.0, 300),
    "gamma0.1-1e5": (lambda: mf.Setting.paper(10**5, 0.9, 0.3, gamma=0.1), 300.0, 300),
    "gamma0.9-1e5": (lambda: mf.Setting.paper(10**5, 0.9, 0.3, gamma=0.9), 60.0, 300),
    "three-groups": (three_groups, 30.0, 300),
    "positive-1e7-k0.3": (lambda: mf.Setting.paper(10**7, 0.9, 0.3), 2000.0, 300),
    "two-clusters-frozen": (lambda: mf.Setting(
        [C([G(1, 400), G(30, 20, 1.5)]), C([G(10, 100)], weight=2.0)], masked=500), 30.0, 400),
}


def assert_same_trajectory(q, e, gradient=True):
    """A quadrature run q met its tolerance, reached own-area attention >= 0.99 and agrees with
    the exact run e normwise per class and recorded step: FP correlations and attention to
    1e-12; the patch loss, the loss and, with ``gradient``, the FP gradient to 5e-12, which
    the trajectory's conditioning at a switch needs (the per-state checks hold 1e-12)."""
    s = q.setting
    assert q.method == "quadrature" and e.method == "exact" and q.tolerance_met
    assert np.array_equal(q.steps, e.steps)
    assert max(q.attention(k, h, "own")[-1] for k, h in s.classes()) >= 0.99
    for k, h in s.classes():
        keys = ["own"] + list(range(len(s.clusters[k].groups)))
        for name_ in ("fp", "fp_grad", "attention") if gradient else ("fp", "attention"):
            a = np.stack([getattr(q, name_)(k, h, key) for key in keys], axis=1)
            b = np.stack([getattr(e, name_)(k, h, key) for key in keys], axis=1)
            # (the gradient at 5e-12: near the switch of a local class at 10^7 it magnifies the
            # runs' 5e-14 state difference to 2e-12, while at the same state the two engines
            # agree to 1e-15, which the per-state checks of the callers hold to 1e-12)
            tol = 5e-12 if name_ == "fp_grad" else 1e-12
            assert max(_rel(x, y) for x, y in zip(a, b)) <= tol, (name_, k, h)
        # (the patch loss at 5e-12: at the attention switch of a 6-group class the two runs'
        # ~1e-14 state differences reach 1.3e-12 in it, after a local class's switch at 10^7
        # 2e-12 in it and in the loss)
        assert max(_rel(x, y) for x, y in zip(q.patch_loss(k, h), e.patch_loss(k, h))) <= 5e-12
    assert max(_rel(x, y) for x, y in zip(q.loss, e.loss)) <= 5e-12


# whole runs of the exact grid at its largest here: run by `python -m pytest -m slow`
SLOW_CASES = {"positive-1e7-k0.3", "three-groups"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES
                                  else n for n in CASES])
def test_trajectory_equals_exact(name):
    """Whole runs to own-area attention >= 0.99 agree with the exact grid (to 1e-12 in the
    state: assert_same_trajectory), and at every recorded state the error estimate is not
    below the true error (up to rounding: the exact engine's cpp-to-numpy difference, and
    1e-14)."""
    make, eta, steps = CASES[name]
    s = make()
    q = mf.simulate(s, eta, steps, record_every=steps // 5, method="quadrature")
    e = mf.simulate(s, eta, steps, record_every=steps // 5, method="exact")
    assert_same_trajectory(q, e)
    for i in range(len(q.steps)):
        st = state_at(q, i)
        gq = mf.gradient(s, st, method="quadrature")
        ge = mf.gradient(s, st, method="exact")
        noise = true_error(mf.gradient(s, st, method="exact", backend="numpy"), ge, s)
        # below ~1e-14 both engines are at their rounding level
        assert true_error(gq, ge, s) <= max(gq.error, 2 * noise, 1e-14), i


def six_groups(gamma=0.5):
    """Six area groups with unequal z: one large area and five groups of small areas. The
    exact grid stays small (every key category but the largest has at most 14 positions), while
    the quadrature starts at 3-4 nodes per chain dimension, so most of its dimensions are
    Gauss rules on supports of 5-15 points rather than enumerations."""
    z = (1.0, 1.3, 0.8, 1.2, 0.7, 1.1)
    sizes = [(1, 2000), (1, 2), (2, 2), (1, 7), (3, 3), (2, 7)]
    return mf.Setting([C([G(n, c, zg) for (n, c), zg in zip(sizes, z)])], gamma=gamma)


def exact_rounding(setting, grids=None):
    """The exact engine's rounding level: its largest relative difference from the closed form
    at Q = 0 (attention and patch loss, class by class); ``grids`` if already built."""
    from mimfast.backends import get_kernel

    g = (mf.gradient(setting, method="exact") if grids is None
         else evaluate(setting, grids, State.zeros(setting), get_kernel("cpp")))
    out = 0.0
    for k, h in setting.classes():
        att, loss = q0_closed_form(setting, k, h)
        out = max(out, _rel(g.attention[k][h], att), abs(g.patch_loss[k][h] / loss - 1))
    return out


def gauss_dimensions(setting, levels):
    """Per class, how many chain dimensions of the rule at ``levels`` have fewer nodes than
    their support has points (Gauss nodes, not an enumeration)."""
    from mimfast.quadrature import LEVELS, chain_order

    out = {}
    for k, h in setting.classes():
        sizes, _ = class_categories(setting, k, h)
        dims = chain_order(sizes.tolist(), setting.unmasked)[:-1]
        support = [min(int(sizes[d]), setting.unmasked) + 1 for d in dims]
        out[k, h] = sum(LEVELS[i] < n for i, n in zip(levels[k, h], support))
    return out


def test_six_groups_equal_exact_step_by_step(monkeypatch):
    """A 6-group cluster (7 key categories: 5-6 free chain dimensions per class) along a whole
    run to own-area attention >= 0.99: the quadrature run equals the exact run to 1e-12, and at
    every step the run's reported error estimate is not below the true error at the same state
    (up to the exact engine's rounding, measured against the closed form at Q = 0); so are the
    estimates of runs at rtol 1e-4 and 1e-8, whose coarse rules (from 3-4 nodes per dimension)
    are tested where their estimates are far above rounding.

    The gradients are compared at the same state, step by step, not between the two runs: while
    a class's attention switches, its gradient turns the runs' ~3e-14 state differences (the
    exact engine's rounding) into ~1e-12 (measured: the exact gradient itself at the two runs'
    states at step 15 differs by 7.6e-13)."""
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids
    from mimfast.model import evaluate
    from mimfast.quadrature import build_quadratures, grid_points_estimate

    s = six_groups()
    assert len(s.clusters[0].groups) == 6 and grid_points_estimate(s) <= 200_000
    floor = 2 * exact_rounding(s)
    assert floor <= 1e-13
    eta, steps = 100.0, 60
    q = mf.simulate(s, eta, steps, method="quadrature")
    e = mf.simulate(s, eta, steps, method="exact")
    assert_same_trajectory(q, e, gradient=False)
    # every step's whole gradient (PP included), from the Python loop, which makes q's bytes
    grads = {}
    monkeypatch.setattr(sys.modules["mimfast.simulate"], "FUSED", set())
    stepped = mf.simulate(s, eta, steps, method="quadrature", callback_every=1,
                          callback=lambda t, g, partial: grads.setdefault(t - 1, g))
    monkeypatch.undo()
    assert mf.io.equal(stepped, q) and sorted(grads) == list(range(steps))
    assert min(gauss_dimensions(s, q.levels).values()) >= 2, q.levels  # after any growth
    kernel, grids = get_kernel("cpp"), build_grids(s)
    coarse = {rtol: build_quadratures(s) for rtol in (1e-4, 1e-8)}
    start = gauss_dimensions(s, {key: c.levels for key, c in coarse[1e-4].items()})
    assert min(start.values()) >= 3, start
    worst = dict.fromkeys(coarse, 0.0)
    for t, g in grads.items():
        assert g.error == q.error[t] and g.error <= 1e-13
        st = state_at(q, t)
        ge = evaluate(s, grids, st, kernel)
        assert true_error(g, ge, s) <= max(g.error, floor), t
        for rtol, quads in coarse.items():
            gc = evaluate(s, quads, st, kernel, rtol=rtol)
            assert gc.met and true_error(gc, ge, s) <= max(gc.error, floor), (rtol, t)
            worst[rtol] = max(worst[rtol], gc.error)
    # estimates above rounding (the small own areas are enumerated: docs/model.md §8)
    assert worst[1e-4] > 1e-12 and worst[1e-8] > 1e-12


def preset_eta(P, kappa_s):
    """The presets' learning rate (mimfast run): 100 (P / 10^6)^(1 - kappa_s) above 10^6, so
    the phases happen at comparable steps at every P."""
    from mimfast.cli import PRESET_ETA, PRESET_P

    return PRESET_ETA * max(1.0, P / PRESET_P) ** (1 - kappa_s)


def two_shapes(P):
    """K = 2, PP frozen: a positive-gap cluster (kappa_c 0.9, kappa_s 0.3) beside a
    negative-gap one (kappa_c 0.6, kappa_s 0.5) of twice its weight."""
    a, b = mf.Setting.paper(P, 0.9, 0.3), mf.Setting.paper(P, 0.6, 0.5)
    return mf.Setting([a.clusters[0], C(b.clusters[0].groups, weight=2.0)], masked=a.masked)


def paper(P, kappa_c, kappa_s, gamma=0.5):
    return lambda: mf.Setting.paper(P, kappa_c, kappa_s, gamma=gamma)


LARGE = {
    # name: (setting, kappa_s of the preset eta, steps); every class reaches own-area
    # attention >= 0.99, and the presets' eta throws A_own far past saturation after it
    "positive-1e8-k0.3": (paper(10**8, 0.9, 0.3), 0.3, 700),
    "negative-1e8-k0.3": (paper(10**8, 0.6, 0.3), 0.3, 700),
    "positive-1e8-k0.5": (paper(10**8, 0.9, 0.5), 0.5, 100),
    "negative-1e8-k0.5": (paper(10**8, 0.6, 0.5), 0.5, 100),
    "positive-1e9-k0.3": (paper(10**9, 0.9, 0.3), 0.3, 700),
    "negative-1e9-k0.3": (paper(10**9, 0.6, 0.3), 0.3, 700),
    "positive-1e9-k0.5": (paper(10**9, 0.9, 0.5), 0.5, 100),
    "negative-1e9-k0.5": (paper(10**9, 0.6, 0.5), 0.5, 100),
    "gamma0.1-1e9-k0.3": (paper(10**9, 0.9, 0.3, gamma=0.1), 0.3, 1700),
    "gamma0.9-1e9-k0.3": (paper(10**9, 0.9, 0.3, gamma=0.9), 0.3, 1900),
    "gamma0.1-negative-1e9-k0.5": (paper(10**9, 0.6, 0.5, gamma=0.1), 0.5, 200),
    "gamma0.9-negative-1e9-k0.5": (paper(10**9, 0.6, 0.5, gamma=0.9), 0.5, 200),
    "two-shapes-frozen-1e9": (lambda: two_shapes(10**9), 0.3, 1900),
    "positive-1e10-k0.3": (paper(10**10, 0.9, 0.3), 0.3, 700),
    "negative-1e10-k0.3": (paper(10**10, 0.6, 0.3), 0.3, 700),
    "negative-1e10-k0.5": (paper(10**10, 0.6, 0.5), 0.5, 100),
    "positive-1e10-k0.5": (paper(10**10, 0.9, 0.5), 0.5, 100),
}
# the heaviest case: 6e8 grid points per exact gradient, ~40 s in all on two cores
SLOW = {"positive-1e10-k0.5"}


def along(r):
    """Recorded indices to check, and the first index of the last class's phase change (first
    own-area attention >= 0.99): Q = 0, the slow phase, the steps around each class's phase
    change and the last step."""
    firsts = []
    for k, h in r.setting.classes():
        reached = np.nonzero(r.attention(k, h, "own") >= 0.99)[0]
        assert len(reached), f"class {(k, h)} never reaches own-area attention 0.99"
        firsts.append(int(reached[0]))
    J = max(firsts)
    out = {0, J // 4, J // 2, 3 * J // 4, len(r.steps) - 1}
    for j in firsts:
        out |= {max(j - d, 0) for d in (0, 1, 2)}
    return sorted(out), J


def check_along(name):
    """Run case ``name`` with the quadrature and compare with the exact grid at the states of
    :func:`along`."""
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids

    make, kappa_s, steps = LARGE[name]
    s = make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mf.ToleranceWarning)
        q = mf.simulate(s, preset_eta(s.P, kappa_s), steps, method="quadrature")
    assert q.method == "quadrature"
    # rtol is met at every step but where a class's gradient has fallen below the least normal
    # double, known only to 2^-1074 absolute (docs/model.md §3): deep in saturation at P = 10^10
    for i in np.nonzero(q.error > 1e-13)[0]:
        assert min(max(abs(q.fp_grad(k, h, key)[i])
                       for key in ["own"] + list(range(len(s.clusters[k].groups))))
                   for k, h in s.classes()) < np.finfo(float).tiny, (int(q.steps[i]), q.error[i])
    assert min(q.attention(k, h, "own")[-1] for k, h in s.classes()) >= 0.99
    idx, _ = along(q)
    kernel = get_kernel("cpp")
    grids = build_grids(s)
    floor = max(4 * exact_rounding(s, grids), 1e-14)
    for i in idx:
        st = state_at(q, i)
        ge = evaluate(s, grids, st, kernel)
        with warnings.catch_warnings():  # met False where a class's gradient is subnormal
            warnings.simplefilter("ignore", mf.ToleranceWarning)
            gq = mf.gradient(s, st, method="quadrature")
        err = true_error(gq, ge, s)
        rec = _rel(q.loss[i], ge.loss)
        for k, h in s.classes():
            keys = ["own"] + list(range(len(s.clusters[k].groups)))
            rec = max(rec, _rel([q.fp_grad(k, h, key)[i] for key in keys], ge.fp[k][h]),
                      _rel([q.attention(k, h, key)[i] for key in keys], ge.attention[k][h]),
                      _rel(q.patch_loss(k, h)[i], ge.patch_loss[k][h]))
        step = int(q.steps[i])
        assert err <= 1e-12 and rec <= 1e-12, (step, err, rec)
        assert err <= max(gq.error, floor), (step, err, gq.error, floor)
        assert rec <= max(q.error[i], floor), (step, rec, q.error[i], floor)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in LARGE])
def test_large_p_trajectory_equals_exact_along_the_way(name):
    """P = 10^8 to 10^10 with the presets' eta: the quadrature run's record (gradient,
    attention, patch loss of every class, and loss) and a quadrature gradient with PP equal
    the exact grid at states along the run to 1e-12, the phase change and the saturated end
    included (own-area logits up to ~1300 above the others, where the point U_own = 0 carries
    the loss); the error estimate is never below the true error, up to the exact grid's own
    rounding (measured at Q = 0 against the closed form) and 1e-14."""
    check_along(name)


@pytest.mark.parametrize("backend", ["cpp", "numba", "numpy"])
def test_every_backend_runs_the_quadrature(backend):
    s = mf.Setting.paper(10**7, 0.9, 0.5)
    st = State.zeros(s)
    st.fp[0][:] = [[4.0, 0.0, -1.0], [9.0, -2.0, 0.3]]
    st.pp[:] = [[0.02, -1e-3, 0.0, 4e-4], [0.03, 0.01, -1e-3, 2e-4]]
    want = mf.gradient(s, st, method="exact", backend="cpp")
    got = mf.gradient(s, st, method="quadrature", backend=backend)
    assert got.method == "quadrature"
    assert true_error(got, want, s) <= max(got.error, 1e-13)
    assert got.error <= 1e-13


def test_points_keep_the_kernel_interface():
    s = mf.Setting.paper(10**5, 0.9, 0.3)
    sizes, areas = class_categories(s, 0, 1)
    p = build_points(sizes, areas, s.unmasked, [9, 6])
    counts, w = p.probabilities()
    assert counts.dtype == np.float64 and counts.shape == (p.points, 3)
    assert math.fsum(w) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(counts.sum(axis=1), s.unmasked, rtol=1e-15)
    np.testing.assert_allclose(w @ counts, s.unmasked * sizes / sizes.sum(), rtol=1e-14)


def test_auto_picks_exact_for_small_grids_and_quadrature_beyond():
    assert choose_method(mf.Setting.paper(10**3, 0.9, 0.3), "auto") == "exact"
    assert choose_method(mf.Setting.paper(10**9, 0.9, 0.3), "auto") == "quadrature"
    r = mf.simulate(mf.Setting.paper(10**12, 0.9, 0.3), 1.0, 2)
    assert r.method == "quadrature" and r.error.shape == r.steps.shape
    assert mf.gradient(mf.Setting.paper(10**3, 0.9, 0.3)).method == "exact"
    with pytest.raises(ValueError, match="unknown method"):
        mf.simulate(mf.Setting.paper(10**3, 0.9, 0.3), 1.0, 1, method="gauss")
    with pytest.raises(ValueError, match="rtol"):
        mf.gradient(mf.Setting.paper(10**3, 0.9, 0.3), rtol=0.0)


def test_unmet_tolerance_warns_or_raises(monkeypatch):
    s = mf.Setting.paper(10**5, 0.9, 0.3)
    monkeypatch.setattr(mf.quadrature, "LEVELS", (2, 3, 4))  # no room to grow
    with pytest.warns(mf.ToleranceWarning, match="rtol"):
        r = mf.simulate(s, 30.0, 3, method="quadrature", rtol=1e-300)
    assert not r.tolerance_met
    with pytest.raises(mf.ToleranceError, match="rtol"):
        mf.simulate(s, 30.0, 3, method="quadrature", rtol=1e-300, strict=True)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mf.simulate(s, 30.0, 3, method="quadrature").tolerance_met


def test_resume_is_identical_after_node_growth():
    from mimfast.quadrature import build_quadratures

    s = mf.Setting.paper(10**5, 0.9, 0.5)  # own areas of 316: a Gauss rule that grows
    full = mf.simulate(s, 100.0, 200, record_every=7, method="quadrature")

    def stop(t, grad, partial):
        if t == 150:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.simulate(s, 100.0, 200, record_every=7, method="quadrature", callback=stop,
                    callback_every=1)
    part = info.value.result
    start = {key: q.levels for key, q in build_quadratures(s).items()}
    assert part.levels == full.levels != start  # the own area grew before step 150
    done = mf.simulate(s, 100.0, 200, record_every=7, method="quadrature", resume=part)
    assert mf.io.equal(done, full)
    np.testing.assert_array_equal(done.error, full.error)


def interrupted(setting, eta, steps, record_every, at):
    """The result of a quadrature run interrupted after step ``at``."""
    def stop(t, grad, partial):
        if t == at:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.simulate(setting, eta, steps, record_every=record_every, method="quadrature",
                    callback=stop, callback_every=1)
    return info.value.result


def test_coarse_levels_resume_identically_through_files(tmp_path):
    """A 6-group run (levels under 6 nodes, grown per dimension) saved mid-run and resumed from
    its file ends with the same bytes as an uninterrupted run."""
    from mimfast.quadrature import LEVELS

    s = six_groups()
    full = mf.simulate(s, 100.0, 24, record_every=5, method="quadrature")
    part = interrupted(s, 100.0, 24, 5, at=17)
    assert min(LEVELS[i] for v in part.levels.values() for i in v) < 6
    assert part.levels != {key: q.levels for key, q in
                           mf.quadrature.build_quadratures(s).items()}  # some grew
    mf.io.save(part, tmp_path / "part.nc")
    back = mf.io.load(tmp_path / "part.nc")
    assert back.levels == part.levels
    done = mf.simulate(s, 100.0, 24, record_every=5, method="quadrature", resume=back)
    assert mf.io.equal(done, full)


def test_files_store_node_counts_and_older_files_resume_identically(tmp_path):
    """Results files store each dimension's node count. Files written before the levels under 6
    nodes stored indices into the table that began at 6 nodes: they load to the same node
    counts and resume to the same bytes; an index or node count that is no level is refused."""
    import json

    from mimfast.io import DIGEST, ENGINE, LEVELS_BEFORE_NODES, digest
    from mimfast.quadrature import LEVELS

    s = mf.Setting.paper(10**5, 0.9, 0.5)  # own areas of 316: a Gauss rule that grows
    full = mf.simulate(s, 30.0, 400, record_every=7, method="quadrature")
    part = interrupted(s, 30.0, 400, 7, at=390)
    nodes = {f"{k},{h}": [LEVELS[i] for i in v] for (k, h), v in part.levels.items()}
    assert max(max(v) for v in nodes.values()) > 6  # grown before the interruption
    ds = mf.io.to_dataset(part)
    assert json.loads(ds.attrs["quadrature_nodes"]) == nodes
    del ds.attrs["quadrature_nodes"]

    def write(levels):
        ds.attrs["quadrature_levels"] = json.dumps(levels)
        ds.attrs[DIGEST] = digest(ds)
        ds.to_netcdf(tmp_path / "old.nc", engine=ENGINE)
        return tmp_path / "old.nc"

    old = mf.io.load(write({key: [LEVELS_BEFORE_NODES.index(n) for n in v]
                            for key, v in nodes.items()}))
    assert old.levels == part.levels
    done = mf.simulate(s, 30.0, 400, record_every=7, method="quadrature", resume=old)
    assert mf.io.equal(done, full)
    with pytest.raises(mf.io.ResultFileError, match="quadrature levels"):
        mf.io.load(write({"0,0": [len(LEVELS_BEFORE_NODES)], "0,1": [0, 0]}))
    ds.attrs["quadrature_nodes"] = json.dumps({"0,0": [5], "0,1": [6, 6]})
    with pytest.raises(mf.io.ResultFileError, match="5 nodes is not a quadrature level"):
        mf.io.load(write({}))


def test_quadrature_results_round_trip_through_files(tmp_path):
    s = mf.Setting.paper(10**5, 0.9, 0.3)
    r = mf.simulate(s, 30.0, 200, record_every=50, method="quadrature")
    mf.io.save(r, tmp_path / "r.nc")
    back = mf.io.load(tmp_path / "r.nc")
    assert back.method == "quadrature" and back.levels == r.levels
    np.testing.assert_array_equal(back.error, r.error)
    assert mf.io.equal(back, r)


def test_cli_runs_the_quadrature_and_resumes_it(tmp_path, capsys):
    from mimfast.cli import main

    out = tmp_path / "run"
    argv = ["run", "--P", "1e12", "--method", "quadrature", "--eta", "1e5", "--steps", "30",
            "--no-plots", "--threads", "1", "--out", str(out)]
    assert main(argv) == 0
    r = mf.io.load(out / "result.nc")
    assert r.method == "quadrature" and r.setting.P == 10**12 and r.tolerance_met
    assert main(["run", "--resume", str(out), "--steps", "45", "--threads", "1"]) == 0
    longer = mf.io.load(out / "result.nc")
    full = mf.simulate(r.setting, 1e5, 45, method="quadrature", threads=1)
    np.testing.assert_array_equal(longer.loss, full.loss)
    np.testing.assert_array_equal(longer.state.fp[0], full.state.fp[0])
    capsys.readouterr()


def mp_hahn_rule(K, Kc, N, n):
    """An n-node Gauss rule of HG(K + Kc, K, N) in mpmath (N an mpf), from the same recurrence
    evaluated directly at the working precision, eigenvectors by mpmath.eigsy."""
    mp = mpmath.mpf
    M = mp(K) + Kc
    Nc = M - N
    A = [(M + 1 - j) * (K - j) * (N - j) / ((M + 1 - 2 * j) * (M - 2 * j)) for j in range(n)]
    Cc = [j * (Nc + 1 - j) * (Kc + 1 - j) / ((M + 2 - 2 * j) * (M + 1 - 2 * j))
          for j in range(n)]
    mean = N * K / M
    s = mpmath.sqrt(A[0] * Cc[1])
    J = mpmath.zeros(n, n)
    for j in range(n):
        J[j, j] = (A[j] + Cc[j] - mean) / s
        if j:
            J[j, j - 1] = J[j - 1, j] = mpmath.sqrt(A[j - 1] * Cc[j]) / s
    E, Q = mpmath.eigsy(J)
    return [mean + s * E[i] for i in range(n)], [Q[0, i] ** 2 for i in range(n)]


def mp_class_expectation(sizes, areas, z, wu, wm, wself, u, n_outer, n_inner):
    """E[loss], E[alpha_c], E[dA_c] of docs/model.md §3 in mpmath for a class with three live
    categories (own, global, other locals): a Gauss–Hahn chain in the other order than the
    engine's (global area first, then the own area), with many more nodes."""
    mp = mpmath.mpf
    own, glob, rest_c = 0, 1, 2
    Cs = [mp(int(c)) for c in sizes]
    N_all = sum(int(c) for c in sizes)
    loss, alpha, dA = mp(0), [mp(0)] * 3, [mp(0)] * 3
    xg, wg = mp_hahn_rule(int(sizes[glob]), N_all - int(sizes[glob]), mp(u), n_outer)
    for x1, w1 in zip(xg, wg):
        pool = N_all - int(sizes[glob])
        xo, wo = mp_hahn_rule(int(sizes[own]), pool - int(sizes[own]), u - x1, n_inner)
        for x0, w0 in zip(xo, wo):
            U = [x0, x1, u - x1 - x0]
            w = w1 * w0
            D = wself + sum(U[c] * wu[c] + (Cs[c] - U[c]) * wm[c] for c in range(3))
            a = [U[c] * wu[c] / D for c in range(3)]
            sig = [mp(0)] * 3
            for c in (glob, rest_c):
                k = int(areas[c])
                if k == 1:
                    s2 = U[c] ** 2
                else:
                    f = mp(1) / k
                    s2 = k * (U[c] * f * (1 - f) * (Cs[c] - U[c]) / (Cs[c] - 1) + (U[c] * f) ** 2)
                sig[c] = s2 * (wu[c] / D) ** 2
            z2 = [mp(v) ** 2 for v in z]
            lo = (z2[0] * (a[0] - 1) ** 2 + z2[1] * sig[1] + z2[2] * sig[2]) / 2
            gbar = z2[0] * a[0] * (a[0] - 1) + z2[1] * sig[1] + z2[2] * sig[2]
            d = [z[0] * a[0] * (z2[0] * (a[0] - 1) - gbar)]
            d += [z[c] * (z2[c] * sig[c] - gbar * a[c]) / int(areas[c]) for c in (1, 2)]
            loss += w * lo
            alpha = [alpha[c] + w * a[c] for c in range(3)]
            dA = [dA[c] + w * d[c] for c in range(3)]
    return loss, alpha, dA


@pytest.mark.slow
def test_p_1e15_agrees_with_a_50_digit_evaluation():
    """At P = 10^15 and own-area attention ~0.99, the local class's gradient, attention and
    loss agree to 1e-12 with a 50-digit Gauss–Hahn evaluation in the other chain order."""
    from mimfast.model import class_inputs

    s = mf.Setting.paper(10**15, 0.9, 0.3)
    st = State.zeros(s)
    st.fp[0][:] = [[3.0, 0.0, -1.0], [29.6, -2.0, 0.3]]
    g = mf.gradient(s, st, method="quadrature", strict=True)
    k, h = 0, 1
    assert g.attention[k][h][0] > 0.98
    sizes, areas = class_categories(s, k, h)
    inp = class_inputs(s, st, k, h, mf.quadrature.ClassQuadrature(sizes, areas, s.unmasked))
    mpmath.mp.dps = 50
    f = lambda v: [mpmath.mpf(float(x)) for x in v]
    loss, alpha, dA = mp_class_expectation(sizes, areas, f(inp.z), f(inp.wu), f(inp.wm),
                                           mpmath.mpf(inp.wself), s.unmasked, 14, 28)
    scale = s.masked / s.P  # the engine's dA carries pi_k m / P
    want_dA = np.array([float(scale * v) for v in dA])
    assert _rel(g.fp[k][h], want_dA) <= 1e-12
    assert _rel(g.attention[k][h], np.array([float(v) for v in alpha])) <= 1e-12
    assert g.patch_loss[k][h] == pytest.approx(float(loss), rel=1e-12)

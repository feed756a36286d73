"""Numerical edges and input checks of the public API (settings, grids, runs, resume)."""

import math
import pickle
import re
from decimal import Decimal, localcontext
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import hypergeom

import mimfast as mf
from mimfast import analysis
from mimfast.grid import MIN_TAIL_TOL, build_grid, build_grids, class_categories, log_binom_pmf

G, C = mf.Group, mf.Cluster


def small(**kw):
    return mf.Setting([C([G(1, 4), G(3, 2)])], **kw)


# --- Setting -------------------------------------------------------------------------------


def test_setting_is_frozen_and_hashable():
    s = mf.Setting.paper(10**4, 0.9, 0.3)
    for name, value in (("P", 5), ("masked", 3), ("pp", "frozen"), ("kappa", None)):
        with pytest.raises(AttributeError, match="immutable"):
            setattr(s, name, value)
    with pytest.raises(AttributeError, match="immutable"):
        del s.clusters
    same = mf.Setting.paper(10**4, 0.9, 0.3)
    assert s == same and hash(s) == hash(same) and len({s, same}) == 1
    back = pickle.loads(pickle.dumps(s))
    assert back == s and back.kappa == s.kappa == (0.9, 0.3)


def exact_round(x):
    """round-half-even of a Decimal, independent of the code under test."""
    n = int(x)  # floor for positive x
    frac = x - n
    return n + 1 if frac > Decimal("0.5") or (frac == Decimal("0.5") and n % 2) else n


@pytest.mark.parametrize("P", [10**4, 10**9 + 7, 10**12, 10**15, 2**53 + 1, 10**18, 2**62])
@pytest.mark.parametrize("kappa_c, kappa_s", [(0.9, 0.3), (0.6, 0.5)])
def test_paper_sizes_are_exact_at_any_P(P, kappa_c, kappa_s):
    with localcontext() as ctx:
        ctx.prec = 80
        cs = Decimal(P) ** Decimal(kappa_s)
        cg = Decimal(P) ** Decimal(kappa_c)
        c_l = max(2, exact_round(cs))
        n_l = exact_round((Decimal(P) - cg) / c_l)
    s = mf.Setting.paper(P, kappa_c, kappa_s, gamma=0.3)
    glob, loc = s.clusters[0].groups
    assert (loc.size, loc.areas) == (c_l, n_l)
    assert glob.size + loc.areas * loc.size == P == s.P
    # floor(gamma P + 1/2) with gamma the float 0.3, exactly
    assert s.masked == math.floor(Fraction(0.3) * P + Fraction(1, 2))


def test_absurd_P_is_refused_fast():
    with pytest.raises(ValueError, match="2\\^62"):
        mf.Setting.paper(2**62 + 1, 0.9, 0.3)
    with pytest.raises(ValueError, match="bit number is more than 2\\^62"):
        mf.Setting.paper(10**100000, 0.9, 0.3)
    with pytest.raises(ValueError, match="2\\^62"):
        mf.Setting([C([G(1, 2**61), G(1, 2**61 + 1)])])


def test_weights_normalise_at_the_largest_doubles():
    s = mf.Setting([C([G(1, 4)], weight=1e308), C([G(2, 2)], weight=1e308)], pp="frozen")
    assert s.weights == (0.5, 0.5)
    r = mf.simulate(s, eta=1.0, steps=2, backend="numpy")
    assert np.all(r.loss > 0)


def test_overflowing_z_is_refused_by_name():
    with pytest.raises(ValueError, match="Group z = 1e\\+200 is too large"):
        G(1, 2, z=1e200)
    with pytest.raises(ValueError, match="Group z = 1e\\+149 is too large for P"):
        mf.Setting.paper(10**6, 0.9, 0.3, z=1e149)
    with pytest.raises(ValueError, match="Group z"):
        G(1, 2, z=10**400)


@pytest.mark.parametrize("z, exc, words", [((1, 2, 3), ValueError, "pair"),
                                            ((), ValueError, "pair"),
                                            ("ab", TypeError, "z must be a real"),
                                            (None, TypeError, "pair")])
def test_paper_z_shapes(z, exc, words):
    with pytest.raises(exc, match=words):
        mf.Setting.paper(10**4, 0.9, 0.3, z=z)


# --- certain draws: masked = 1, P = 2, tiny gamma ----------------------------------------


def test_log_binom_pmf_with_certain_outcome():
    np.testing.assert_array_equal(log_binom_pmf([0, 3, 5], 5, (7, 7)), [-np.inf, -np.inf, 0.0])
    np.testing.assert_array_equal(log_binom_pmf([0, 3], 5, (0, 7)), [0.0, -np.inf])
    np.testing.assert_array_equal(log_binom_pmf([0, 1], 1, 1.0), [-np.inf, 0.0])


def test_masked_one_at_large_P_is_the_closed_form(backend):
    # gamma = 1e-6 masks one patch of 10^6: every other position is unmasked; at Q = 0 the
    # attention is uniform over the P positions, so own-area attention is (c - 1) / P
    s = mf.Setting.paper(10**6, 0.9, 0.3, gamma=1e-6)
    assert s.masked == 1
    g = mf.gradient(s, backend=backend)
    for h, group in enumerate(s.clusters[0].groups):
        assert g.attention[0][h][0] == pytest.approx((group.size - 1) / s.P, rel=1e-14)
    grids = build_grids(s)
    assert all(grid.points == 1 and grid.dropped == 0 for grid in grids.values())


def test_tiny_gamma_grid_matches_scipy():
    # 10 of 10^7 masked: p = (P - 10) / (P - 1), very close to 1
    s = mf.Setting([C([G(1, 40), G(10**5 - 1, 100), G(1, 60)])], gamma=1e-6)
    assert s.masked == 10
    sizes, areas = class_categories(s, 0, 0)
    grid = build_grid(sizes, areas, s.unmasked)
    counts, prob = grid.probabilities()
    # own area (39 positions): U_own ~ hypergeometric(P - 1, 39, u)
    for value in np.unique(counts[:, 0]):
        want = hypergeom.pmf(value, s.P - 1, 39, s.unmasked)
        assert prob[counts[:, 0] == value].sum() == pytest.approx(want, rel=1e-9)


# --- tail tolerance, dropped mass, memory ---------------------------------------------------


@pytest.mark.parametrize("tol", [1e-300, 1e-17, 0.0, -1.0, 0.5, math.nan])
def test_tail_tol_out_of_range(tol):
    with pytest.raises(ValueError, match="tail_tol"):
        mf.simulate(small(), eta=1.0, steps=1, tail_tol=tol)


def test_numpy_scalars_are_accepted():
    r = mf.simulate(small(), eta=np.float32(1.0), steps=np.int64(2), record_every=np.int32(1),
                    threads=np.int64(2), tail_tol=np.float32(1e-10))
    assert r.last_step == 2 and r.tail_tol == float(np.float32(1e-10))
    assert mf.simulate(small(), eta=Fraction(1, 2), steps=1).eta == 0.5
    assert MIN_TAIL_TOL == 2.0**-52


@pytest.mark.parametrize("kw, exc, words", [
    ({"threads": 2**31}, ValueError, "threads must lie in"),
    ({"threads": 0, "backend": "numpy"}, ValueError, "threads"),
    ({"threads": 1.0}, TypeError, "threads"),
    ({"eta": 10**400}, ValueError, "eta must be finite"),
    ({"eta": Fraction(-1, 2)}, ValueError, "eta"),
    ({"max_grid_bytes": 0}, ValueError, "max_grid_bytes"),
    ({"max_grid_bytes": 1.5e9}, TypeError, "max_grid_bytes"),
    ({"tail_tol": "1e-15"}, TypeError, "tail_tol"),
])
def test_run_arguments_refused_clearly(kw, exc, words):
    args = {"eta": 1.0, "steps": 1, **kw}
    with pytest.raises(exc, match=words):
        mf.simulate(small(), **args)


def test_dropped_never_exceeds_tail_tol():
    for tol in (MIN_TAIL_TOL, 1e-15, 1e-12, 1e-6):
        s = mf.Setting.paper(10**7, 0.9, 0.5)
        for grid in build_grids(s, tol).values():
            assert 0 <= grid.dropped <= grid.cut <= tol
    # at P = 10^9 the rounding of the probabilities alone makes 1 - mass about 1.7e-15: below
    # 1e-12 the dropped mass is the tails actually cut, which stay within the bound
    local = build_grids(mf.Setting.paper(10**9, 0.9, 0.3))[0, 1]
    assert 1e-15 >= local.cut >= local.dropped > 0
    assert local.dropped == local.cut


def test_own_empty_point_is_kept_and_the_loss_gap_is_not_negative():
    # local areas of 63 patches: Pr(U_own = 0) = 2^-62 ~ 2e-19, far inside the dropped tail
    s = mf.Setting.paper(10**5, 0.9, 0.5)
    c = s.clusters[0].groups[1].size
    grid = build_grids(s)[0, 1]
    counts, prob = grid.probabilities()
    want = analysis.irreducible_loss(s, 0, 1) * 2
    assert 0 < want < 1e-15
    assert prob[counts[:, 0] == 0].sum() == pytest.approx(want, rel=1e-12)
    assert c - 1 > 0 and (counts[:, 0] == 1).sum() == 0  # a lone point, not the whole tail
    r = mf.simulate(s, eta=3e3, steps=60, record_every=10, method="exact")
    assert r.attention(0, 1, "own")[-1] > 1 - 1e-9
    assert np.all(analysis.loss_gap(r, 0, 1) >= 0)


# --- results, states and resume --------------------------------------------------------------


def test_result_indices_refuse_bools():
    r = mf.simulate(small(), eta=1.0, steps=1, backend="numpy")
    with pytest.raises(TypeError, match="group index"):
        r.fp(0, True, "own")
    with pytest.raises(TypeError, match="cluster index"):
        r.attention(False, 0, "own")


@pytest.mark.parametrize("make, exc, words", [
    (lambda s: mf.State([np.zeros((2, 3), dtype=complex)], np.zeros((2, 4))), TypeError, "real"),
    (lambda s: mf.State([np.zeros((2, 3)).astype(object)], np.zeros((2, 4))), TypeError, "real"),
    (lambda s: mf.State([[[0.0] * 3] * 2], np.zeros((2, 4))), TypeError, "numpy array"),
    (lambda s: mf.State(np.zeros((1, 2, 3)), np.zeros((2, 4))), TypeError, "list"),
    (lambda s: mf.State([np.zeros((2, 3))], np.zeros((2, 5))), ValueError, "pp shape"),
    (lambda s: mf.State([np.zeros((3, 3))], np.zeros((2, 4))), ValueError, "fp shapes"),
    (lambda s: mf.State([np.zeros((2, 3))], None), ValueError, "pp"),
])
def test_bad_states_are_refused_by_gradient_and_resume(make, exc, words):
    s = small()
    state = make(s)
    with pytest.raises(exc, match=words):
        mf.gradient(s, state)
    r = mf.simulate(s, eta=1.0, steps=2, backend="numpy")
    r.state = state
    with pytest.raises(exc, match=words):
        mf.simulate(s, eta=1.0, steps=3, backend="numpy", resume=r)


def test_resume_refuses_torn_records():
    s = small()
    r = mf.simulate(s, eta=1.0, steps=4, backend="numpy")
    r.loss = r.loss[:-1]
    with pytest.raises(ValueError, match="resume: the result is incomplete.*losses"):
        mf.simulate(s, eta=1.0, steps=6, backend="numpy", resume=r)
    r = mf.simulate(s, eta=1.0, steps=4, backend="numpy")
    r._fp[0] = r._fp[0][:-1]
    with pytest.raises(ValueError, match="fp does not have one entry"):
        mf.simulate(s, eta=1.0, steps=6, backend="numpy", resume=r)
    r = mf.simulate(s, eta=1.0, steps=4, backend="numpy")
    r.last_step = 2
    with pytest.raises(ValueError, match="last completed"):
        mf.simulate(s, eta=1.0, steps=6, backend="numpy", resume=r)


def test_resume_refuses_other_backend_and_tail_tol():
    s = small()
    r = mf.simulate(s, eta=1.0, steps=3, backend="numpy", tail_tol=1e-12)
    with pytest.raises(ValueError, match="backend 'numpy'"):
        mf.simulate(s, eta=1.0, steps=5, backend="cpp", tail_tol=1e-12, resume=r)
    with pytest.raises(ValueError, match="tail_tol=1e-12"):
        mf.simulate(s, eta=1.0, steps=5, backend="numpy", resume=r)
    more = mf.simulate(s, eta=1.0, steps=5, backend="numpy", tail_tol=1e-12, resume=r)
    assert more.last_step == 5


def test_extending_with_record_every_gives_the_fresh_step_list():
    s = small()
    short = mf.simulate(s, eta=1.0, steps=7, record_every=3, backend="numpy")
    assert short.steps.tolist() == [0, 3, 6, 7]
    longer = mf.simulate(s, eta=1.0, steps=13, record_every=3, backend="numpy", resume=short)
    fresh = mf.simulate(s, eta=1.0, steps=13, record_every=3, backend="numpy")
    assert longer.steps.tolist() == fresh.steps.tolist() == [0, 3, 6, 9, 12, 13]
    assert mf.io.equal(longer, fresh)


def test_interrupted_names_the_last_completed_step():
    s = small()
    calls = []

    def stop(t, grad, partial):
        calls.append(t)
        if t == 5:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted, match="after step 5 \\(last recorded step 4\\)") as info:
        mf.simulate(s, eta=1.0, steps=9, record_every=2, backend="numpy", callback=stop,
                    callback_every=1)
    assert info.value.result.last_step == 5


# --- analysis --------------------------------------------------------------------------------


def test_analysis_is_linear_in_the_number_of_classes(monkeypatch):
    calls = []
    real = analysis.paper_shaped
    monkeypatch.setattr(analysis, "paper_shaped", lambda s: calls.append(1) or real(s))
    for K in (10, 40):
        calls.clear()
        s = mf.Setting([C([G(1, 4), G(2, 3)])] * K, pp="frozen")
        r = mf.simulate(s, eta=1.0, steps=1, backend="numpy")
        analysis.analyze(r)
        analysis.evolution(r)
        mf.io.table(r)
        assert len(calls) <= 4  # once per call, not once per class


def test_analysis_of_a_run_without_steps():
    s = mf.Setting.paper(1000, 0.9, 0.3)
    r = mf.simulate(s, eta=1.0, steps=0)
    a = analysis.analyze(r)
    pp = next(c for c in a.claims if c.name == "pp_small")
    assert pp.holds is None and "nothing learned" in pp.detail
    assert not re.search(r"\binf\b", a.table())

"""Bad input raises ValueError or TypeError whose message names the problem."""

import math
import sys

import numpy as np
import pytest

import mimfast as mf

G, C = mf.Group, mf.Cluster


def small():
    return mf.Setting([C([G(1, 4), G(3, 2)])])


@pytest.mark.parametrize(
    "make, exc, words",
    [
        (lambda: G(0, 2), ValueError, "areas"),
        (lambda: G(2, 0), ValueError, "size"),
        (lambda: G(-1, 2), ValueError, "areas"),
        (lambda: G(1.5, 2), TypeError, "areas"),
        (lambda: G(1, 2, z=0.0), ValueError, "z"),
        (lambda: G(1, 2, z=-1.0), ValueError, "z"),
        (lambda: G(1, 2, z=math.nan), ValueError, "z"),
        (lambda: G(1, 2, z=math.inf), ValueError, "z"),
        (lambda: C([]), ValueError, "Group"),
        (lambda: C([G(1, 2)], weight=0), ValueError, "weight"),
        (lambda: mf.Setting([]), ValueError, "Cluster"),
        (lambda: mf.Setting([C([G(1, 4)]), C([G(1, 5)])], pp="frozen"), ValueError, "disagree on"),
        (lambda: mf.Setting([C([G(1, 4)])], gamma=0.0), ValueError, "gamma"),
        (lambda: mf.Setting([C([G(1, 4)])], gamma=1.0), ValueError, "gamma"),
        (lambda: mf.Setting([C([G(1, 4)])], gamma=1.5), ValueError, "gamma"),
        (lambda: mf.Setting([C([G(1, 4)])], gamma=0.05), ValueError, "masked"),
        (lambda: mf.Setting([C([G(1, 4)])], masked=0), ValueError, "masked"),
        (lambda: mf.Setting([C([G(1, 4)])], masked=4), ValueError, "masked"),
        (lambda: mf.Setting([C([G(1, 4)])], masked=2.0), TypeError, "masked"),
        (lambda: mf.Setting([C([G(1, 4)]), C([G(2, 2)])], pp="exact"), ValueError, "K = 1"),
        (lambda: mf.Setting([C([G(1, 4)])], pp="learned"), ValueError, "pp"),
        (lambda: mf.Setting.paper(10, 0.95, 0.9), ValueError, "no local area"),
        (lambda: mf.Setting.paper(10**4, 0.3, 0.5), ValueError, "smaller than a local"),
        (lambda: mf.Setting.paper(10**4, 1.2, 0.3), ValueError, "kappa_c"),
        (lambda: mf.Setting.paper(10**4, 0.9, 0.0), ValueError, "kappa_s"),
        (lambda: mf.simulate(small(), eta=math.nan, steps=1), ValueError, "eta"),
        (lambda: mf.simulate(small(), eta=math.inf, steps=1), ValueError, "eta"),
        (lambda: mf.simulate(small(), eta=-1.0, steps=1), ValueError, "eta"),
        (lambda: mf.simulate(small(), eta="1", steps=1), TypeError, "eta"),
        (lambda: mf.simulate(small(), eta=1.0, steps=-1), ValueError, "steps"),
        (lambda: mf.simulate(small(), eta=1.0, steps=2.0), TypeError, "steps"),
        (lambda: mf.simulate(small(), eta=1.0, steps=2, record_every=0), ValueError, "record_every"),
        (lambda: mf.simulate(small(), eta=1.0, steps=2, backend="fortran"), ValueError, "backend"),
        (lambda: mf.simulate(small(), eta=1.0, steps=2, threads=0), ValueError, "threads"),
        (lambda: mf.simulate(small(), eta=1.0, steps=2, tail_tol=0.5), ValueError, "tail_tol"),
        (lambda: mf.simulate("setting", eta=1.0, steps=2), TypeError, "Setting"),
        (lambda: mf.gradient(small(), mf.State.zeros(mf.Setting([C([G(1, 2)] * 3)]))),
         ValueError, "do not fit"),
    ],
)
def test_bad_input(make, exc, words):
    with pytest.raises(exc, match=words):
        make()


@pytest.fixture(scope="module")
def run():
    return mf.simulate(small(), eta=1.0, steps=2, backend="numpy")


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda r: r.fp(0, 0, "global"), "unknown key"),
        (lambda r: r.fp(0, 0, 2), "out of range"),
        (lambda r: r.fp(1, 0, "own"), "cluster index"),
        (lambda r: r.fp(0, 5, "own"), "group index"),
        (lambda r: r.attention(0, 1, "self"), "unknown key"),
        (lambda r: r.pp(0, "other"), "unknown key"),
        (lambda r: r.patch_loss(0, 2), "group index"),
    ],
)
def test_bad_accessor_key(run, call, words):
    with pytest.raises(ValueError, match=words):
        call(run)


def test_pp_of_frozen_run_is_refused():
    s = mf.Setting([C([G(1, 4), G(3, 2)])], pp="frozen")
    r = mf.simulate(s, eta=1.0, steps=1, backend="numpy")
    with pytest.raises(ValueError, match="frozen"):
        r.pp(0, "self")


def test_grid_too_large_says_how_large():
    big = 10**9 // 5
    s = mf.Setting([C([G(1, big), G(1, big), G(1, big), G(1, big), G(1, big)])])
    with pytest.raises(ValueError, match=r"would need about more than 1024 TiB .*quadrature"):
        mf.simulate(s, eta=1.0, steps=1, method="exact")
    s = mf.Setting([C([G(1, 10**6)] * 4)])
    with pytest.raises(ValueError, match=r"would need about [0-9.]+ GiB \(.*rows.*quadrature"):
        mf.simulate(s, eta=1.0, steps=1, method="exact")


def test_window_tables_are_inside_the_memory_limit():
    # P = 2^62: the 1-D tables alone would need far more than the limit; refused before any
    # of them is allocated, naming the quadrature method
    s = mf.Setting.paper(2**62, 0.9, 0.3)
    with pytest.raises(ValueError, match=r"1-D probability tables.*method=\"quadrature\""):
        mf.simulate(s, eta=1.0, steps=1, method="exact")
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    with pytest.raises(ValueError, match=r"1-D probability tables"):
        mf.grid.build_grids(s, max_bytes=10**5)


def test_diverging_run_is_reported():
    s = mf.Setting.paper(1000, 0.9, 0.3, z=30.0)  # gradient ~ 2e3 at Q = 0: the step overflows
    with pytest.raises(FloatingPointError, match="eta"):
        mf.simulate(s, eta=1e308, steps=3)


@pytest.mark.parametrize("loop", ["fused", "python"])
def test_saturated_logits_stay_finite_or_are_named(loop, monkeypatch):
    """Own-area logits far above every other one: the count points without an unmasked
    own-area key take weights of their own (docs/model.md §3), so a run thrown deep into
    saturation stays finite, in both loops alike. Where a kernel cannot separate those points
    (a two-category class whose own-area count runs inside a grid row) the error names the
    class and the lead instead of only blaming eta."""
    s = mf.Setting.paper(10**4, 0.9, 0.6)  # own areas of 250 positions: U_own = 0 is kept
    with monkeypatch.context() as m:
        if loop == "python":
            m.setattr(sys.modules["mimfast.simulate"], "FUSED", set())
        r = mf.simulate(s, 1e5, 10, method="exact")
    assert r.fp(0, 1, "own")[-1] > 600 and np.isfinite(r.loss).all()  # lead ~ 600
    assert np.isfinite(r.fp_grad(0, 1, "own")).all() and r.patch_loss(0, 1)[-1] > 0

    two = mf.Setting([mf.Cluster([mf.Group(40, 25)])], masked=500)
    with pytest.raises(FloatingPointError, match=r"gradient at step 1 is not finite\. In query "
                       r"class \(0, 0\) the own-area logit exceeds every other logit by [\d.e+]+"
                       r".*stop it before step 1\), or eta=1000000.0 is too large"), \
            monkeypatch.context() as m:
        if loop == "python":
            m.setattr(sys.modules["mimfast.simulate"], "FUSED", set())
        mf.simulate(two, 1e6, 5, method="exact")
    state = mf.State.zeros(two)
    state.fp[0][0, 0] = 800.0
    with pytest.raises(FloatingPointError, match=r"class \(0, 0\) the own-area logit exceeds "
                       r"every other logit by 800"):
        mf.gradient(two, state, backend={"fused": "cpp", "python": "numba"}[loop],
                    method="exact")


def test_recorded_state_index_is_checked():
    r = mf.simulate(mf.Setting.paper(1000, 0.9, 0.3), eta=5.0, steps=3)
    np.testing.assert_array_equal(r.recorded_state(-1).pp, r.state.pp)
    with pytest.raises(IndexError, match="record index 4 out of range for 4 records"):
        r.recorded_state(4)
    with pytest.raises(TypeError, match="record index must be an integer"):
        r.recorded_state(1.0)


def test_quadrature_memory_is_estimated_and_refused_at_once():
    # 20 area groups: 20 dimensions of Gauss rules, 3^20 points at the coarsest richer rule
    import time

    s = mf.Setting([C([G(1, 50 + i) for i in range(20)])])
    t = time.monotonic()
    with pytest.raises(ValueError, match=r"would need about .* TiB .* more than the memory "
                                         r"limit of 2\.0 GiB; use fewer area groups"):
        mf.simulate(s, 1.0, 3, method="auto")
    assert time.monotonic() - t < 2
    points, nbytes, _ = mf.quadrature.quadrature_estimate(s)
    assert points > 3**20 and nbytes > 2 * 2**30


def test_long_quadrature_setup_is_announced():
    s = mf.Setting.paper(10**9, 0.9, 0.3, K=10**5)
    with pytest.warns(UserWarning, match="quadrature of 200,000 query classes takes about"):
        mf.quadrature.check_quadrature(s)


def test_classes_alike_share_their_rules_and_a_long_setup_shows_progress(monkeypatch, capsys):
    from mimfast import quadrature

    s = mf.Setting.paper(10**6, 0.9, 0.3, K=5)
    monkeypatch.setattr(quadrature, "SETUP_PROGRESS_SECONDS", 0.0)  # every class reports
    quads = quadrature.build_quadratures(s)
    err = capsys.readouterr().err
    assert "quadrature set up for 10 of 10 query classes" in err
    local = [quads[k, 1] for k in range(5)]
    assert all(q.rich() is local[0].rich() and q.base() is local[0].base() for q in local)
    assert quads[0, 0].rich() is not local[0].rich()
    # a class that grows its rules gets its own richer sets; the others keep theirs
    before = local[1].rich()
    local[0].levels = [i + 1 for i in local[0].levels]
    assert local[0].base() is before and local[1].rich() is before
    monkeypatch.setattr(quadrature, "SETUP_PROGRESS_SECONDS", 1e9)
    quadrature.build_quadratures(s)
    assert capsys.readouterr().err == ""

"""Invariants of the exact dynamics and the paper's two regimes (docs/model.md §3–5)."""

import numpy as np
import pytest
from helpers import pp_row_sums

import mimfast as mf

G, C = mf.Group, mf.Cluster


@pytest.mark.parametrize(
    "setting",
    [mf.Setting.paper(2000, 0.9, 0.3), mf.Setting([C([G(2, 50, z=1.3), G(30, 10), G(1, 1)])])],
)
def test_pp_rows_sum_to_zero(setting, backend):
    r = mf.simulate(setting, eta=30.0, steps=60, record_every=5, backend=backend)
    sums = pp_row_sums(r)
    scale = max(np.max(np.abs(r.pp(h, "self"))) for h in range(len(setting.clusters[0].groups)))
    assert scale > 1e-6
    assert np.max(np.abs(sums)) < 1e-12 * max(scale, 1.0) * setting.P


@pytest.mark.parametrize("setting", [mf.Setting.paper(3000, 0.9, 0.3),
                                     mf.Setting.paper(3000, 0.6, 0.3, K=2, z=(1.0, 1.5))])
def test_loss_never_increases_for_small_eta(setting, backend):
    r = mf.simulate(setting, eta=5.0, steps=200, record_every=1, backend=backend)
    assert r.loss[-1] < 0.5 * r.loss[0]
    assert np.all(np.diff(r.loss) <= 1e-12 * r.loss[0])


def test_gradient_matches_the_first_step_and_is_exact_at_a_state(backend):
    s = mf.Setting.paper(5000, 0.9, 0.3)
    r = mf.simulate(s, eta=10.0, steps=3, backend=backend)
    g = mf.gradient(s, r.state, backend=backend)
    g0 = mf.gradient(s, backend=backend)
    np.testing.assert_allclose(r.fp_grad(0, 1, "own")[0], g0.fp[0][1, 0], rtol=1e-14)
    np.testing.assert_allclose(r.state.fp[0] - 10.0 * g.fp[0],
                               mf.simulate(s, eta=10.0, steps=4, backend=backend).state.fp[0],
                               rtol=1e-13)
    # a finite difference of the loss along the FP own coordinate of the local class
    eps = 1e-5
    plus, minus = r.state.copy(), r.state.copy()
    plus.fp[0][1, 0] += eps
    minus.fp[0][1, 0] -= eps
    fd = (mf.gradient(s, plus, backend=backend).loss
          - mf.gradient(s, minus, backend=backend).loss) / (2 * eps)
    loc = s.clusters[0].groups[1]
    # dL/dA_own per position, summed over the local positions that share the value
    assert fd == pytest.approx(g.fp[0][1, 0] * loc.patches, rel=1e-6)


@pytest.fixture(scope="module")
def positive():
    return mf.simulate(mf.Setting.paper(10**4, 0.9, 0.3), eta=20.0, steps=500)


@pytest.fixture(scope="module")
def negative():
    return mf.simulate(mf.Setting.paper(10**4, 0.6, 0.3), eta=20.0, steps=500)


def test_positive_gap_decouples_global_feature_first(positive):
    r = positive
    own, glob = r.fp(0, 1, "own"), r.fp(0, 1, 0)
    gap = np.abs(r.fp_grad(0, 1, "own")) >= np.abs(r.fp_grad(0, 1, 0))
    switch = int(np.argmax(gap))
    assert switch > 10
    # phase I: the global FP correlation falls while the own one has barely started
    assert glob[switch] < -1.0 and own[switch] < 0.5
    assert np.argmax(glob < -1.0) < np.argmax(own > 1.0)
    # phase II: the own FP correlation grows and the local query attends to its own area
    assert own[-1] > 5.0
    assert r.attention(0, 1, "own")[-1] >= 0.95
    assert np.argmax(r.attention(0, 1, "own") >= 0.95) <= 500
    # the global query learns in one phase
    assert abs(r.fp_grad(0, 0, "own")[0]) > abs(r.fp_grad(0, 0, 1)[0])
    assert r.attention(0, 0, "own")[-1] >= 0.95


def test_negative_gap_learns_in_one_phase(negative):
    r = negative
    own, glob = r.fp(0, 1, "own"), r.fp(0, 1, 0)
    assert abs(r.fp_grad(0, 1, "own")[0]) >= abs(r.fp_grad(0, 1, 0)[0])
    assert own[-1] > 5.0
    assert np.max(np.abs(glob)) < 0.05 * own[-1]
    assert r.attention(0, 1, "own")[-1] >= 0.95


def test_pp_stays_an_order_of_magnitude_below_fp(positive):
    r = positive
    for h in range(2):
        fp_scale = np.max(np.abs(r.fp(0, h, "own")))
        for key in ("self", "own", 0, 1):
            assert np.max(np.abs(r.pp(h, key))) < 0.1 * fp_scale

"""Every backend and both methods against an extended-precision reference (tests/extended.py)
at states off the paper's trajectories: mixed signs, wide logit spreads, saturation. A result
is within 1e-12 normwise of the reference, or says that it is not (met=False or a warning)."""

import warnings

import numpy as np
import pytest
import torch
from extended import gradient_error, ld_sums, mp_sums, reference_gradient
from helpers import explicit_layout

import mimfast as mf
from mimfast.grid import class_categories
from mimfast.reference import ExplicitModel

G, C = mf.Group, mf.Cluster
TOL = 1e-12

# docs/model.md §3 pitfalls: a tiny class whose logits of mixed sign spread widely (the moment
# method's conditioning, and dA_g when one single-area category takes nearly all attention)
TINY = mf.Setting([C([G(1, 3, z=5), G(2, 2, z=0.05), G(1, 1, z=1.3)])], masked=7, pp="exact")
# the own area second in the quadrature's chain (a 30-patch area is smaller), saturated
SECOND = mf.Setting([C([G(1, 30), G(1, 20000), G(400, 200)])], gamma=0.8, pp="exact")


def random_state(setting, seed, a=10.6, b=10.6):
    rng = np.random.default_rng(seed)
    state = mf.State.zeros(setting)
    for fp in state.fp:
        fp[:] = rng.uniform(-a, a, fp.shape)
    if state.pp is not None:
        state.pp[:] = rng.uniform(-b, b, state.pp.shape)
    return state


def as_gradient(ref):
    return type("Ref", (), {"fp": ref["fp"], "pp": ref["pp"], "loss": ref["loss"]})


def check(g, ref, what=""):
    """Within TOL of the reference, or the result says it may not be."""
    err = gradient_error(g, ref)
    assert err <= TOL or not g.met, f"{what}: error {err:.3g}, estimate {g.error:.3g}, met"
    return err


@pytest.mark.parametrize("seed", [0, 5])
def test_reference_matches_explicit_model(seed):
    """The reference against every mask enumerated by the explicit torch model at P = 8."""
    s = mf.Setting([C([G(1, 3, z=1.4), G(2, 2, z=0.6), G(1, 1, z=1.1)])], masked=5, pp="exact")
    state = random_state(s, seed, a=3.0, b=2.0)
    labels, area_group, z = explicit_layout(s)
    model = ExplicitModel(labels, z, s.masked, learn_pp=True)
    P, lab, grp = s.P, labels[0], area_group[0]
    Q = np.zeros((model.d, model.d))
    for p in range(P):
        h = grp[lab[p]]
        for n in range(model.n_areas[0]):
            Q[p, P + n] = state.fp[0][h, 0 if lab[p] == n else 1 + grp[n]]
        for q in range(P):
            key = 0 if q == p else 1 if lab[q] == lab[p] else 2 + grp[lab[q]]
            Q[p, q] = state.pp[h, key]
    model.Q = torch.from_numpy(Q)
    grad = model.gradient().numpy()
    ref = reference_gradient(s, state)
    assert abs(model.loss() - ref["loss"]) <= 1e-12 * model.loss()
    for p in range(P):
        h = grp[lab[p]]
        for n in range(model.n_areas[0]):
            cat = 0 if lab[p] == n else 1 + grp[n]
            assert grad[p, P + n] == pytest.approx(ref["fp"][0][h, cat], rel=1e-10, abs=1e-15)
        for q in range(P):
            key = 0 if q == p else 1 if lab[q] == lab[p] else 2 + grp[lab[q]]
            assert grad[p, q] == pytest.approx(ref["pp"][h, key], rel=1e-10, abs=1e-15)


MODERATE = mf.Setting([C([G(1, 12, z=0.7), G(3, 6, z=2.0)])], gamma=0.4, pp="exact")


@pytest.mark.parametrize("setting, seed, h, fp_own", [
    (TINY, 70, 0, None), (TINY, 199, 1, None), (MODERATE, 1, 0, 150.0), (MODERATE, 2, 1, 40.0)])
def test_reference_matches_mpmath(setting, seed, h, fp_own):
    """The longdouble reference against the §3 lines exactly as written, in 100-digit mpmath
    (at mixed-sign states, and with the own-area logit 80 to 100 ahead of the others)."""
    state = random_state(setting, seed, b=3.0)
    if fp_own is not None:
        state.fp[0][h, 0] = fp_own
    sizes, areas = class_categories(setting, 0, h)
    args = (sizes, areas, setting.class_z(0, h), state.fp[0][h], state.pp[h, 1:],
            state.pp[h, 0], setting.unmasked)
    want = np.array([float(v) for v in mp_sums(*args, dps=100)])
    got = ld_sums(*args).astype(np.float64)
    n = len(sizes)
    for part in (slice(2, 3 + 3 * n), slice(1, 2)):
        assert np.linalg.norm(got[part] - want[part]) <= 1e-15 * np.linalg.norm(want[part])


@pytest.mark.parametrize("method", ["exact", "quadrature"])
def test_dA_of_a_category_taking_nearly_all_attention(method):
    """docs/model.md §3: with one unmasked key, a single-area category can take nearly all
    attention; dA_g = z_g (e_g - gbar alpha_g) / n'_g is then formed from e_g (1 - alpha_g)
    and gbar - e_g summed without e_g (written as above it was off by 1e-6 normwise here)."""
    state = random_state(TINY, 199)
    ref = reference_gradient(TINY, state)
    g = mf.gradient(TINY, state, backend="numpy", method=method)
    assert gradient_error(g, ref) <= TOL


@pytest.mark.parametrize("method", ["exact", "quadrature"])
@pytest.mark.parametrize("seed", [70, 297, 0])
def test_wide_mixed_sign_logits(backend, method, seed):
    """docs/model.md §3, conditioning: logits of mixed sign up to +-10.6 at P = 8 (the moment
    method was off by a relative 10^7 here, or not finite, with the estimate 0)."""
    state = random_state(TINY, seed)
    ref = reference_gradient(TINY, state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = mf.gradient(TINY, state, backend=backend, method=method)
    assert gradient_error(g, ref) <= TOL


@pytest.mark.parametrize("seed, z", [(4, (0.37, 4.44, 3.12)), (16, (0.05, 3.68, 0.07))])
def test_wide_mixed_sign_logits_at_P_300(backend, seed, z):
    """The default engine on a 3-group setting at P = 300 with unequal z, |A| <= 8, |B| <= 3
    (the moment method lost 1e-10 relative here, with no warning)."""
    s = mf.Setting([C([G(1, 60, z=z[0]), G(4, 30, z=z[1]), G(30, 4, z=z[2])])], gamma=0.6,
                   pp="exact")
    state = random_state(s, seed, a=8.0, b=3.0)
    ref = reference_gradient(s, state, k_sd=8.0)
    assert gradient_error(mf.gradient(s, state, backend=backend, method="exact"), ref) <= TOL


def test_own_area_not_smallest_still_counts_U_own_zero():
    """docs/model.md §8: class (0, 2) has a smaller category (30 patches) than its own area
    (199 other positions); its quadrature chain still starts with the own area, so U_own = 0,
    which carries the loss at saturation (½ Pr(U_own = 0) = 2.47e-20; the rule alone gave
    2.6e-46 with met=True), is counted apart. The exact engine is the reference here."""
    state = mf.State.zeros(SECOND)
    state.fp[0][2, 0] = 60.0
    want = mf.gradient(SECOND, state, method="exact")
    g = mf.gradient(SECOND, state, method="quadrature", strict=True)
    assert g.patch_loss[0][2] == pytest.approx(want.patch_loss[0][2], rel=1e-12)
    assert want.patch_loss[0][2] == pytest.approx(2.4715562700600e-20, rel=1e-12)
    err = np.linalg.norm(g.fp[0][2] - want.fp[0][2]) / np.linalg.norm(want.fp[0][2])
    assert err <= TOL
    assert np.linalg.norm(g.pp[2] - want.pp[2]) <= TOL * np.linalg.norm(want.pp[2])


def test_exact_grid_keeps_the_slice_U_own_zero_at_saturation(backend):
    """docs/model.md §3, tail tolerance: at saturated attention every point with an unmasked
    own-area key has α_own within e^-lead of 1, so the points U_own = 0 carry the gradient.
    The grid of class (0, 1) once left out U = (0, 0, 69) (probability 8.5e-17, in the last
    category's cut tail): the gradient was 8e-11 off normwise with met=True and dropped 0."""
    s = mf.Setting([C([G(8, 1), G(7, 12)])], masked=23, pp="exact")
    state = mf.State.zeros(s)
    state.fp[0][:] = [[18.47227827, 4.92887826, 14.09723851], [50.40683091, -3.07775473, 13.74542577]]
    state.pp[:] = [[-0.7811803, -6.77870468, -6.30237199, 10.39910909],
                   [6.0084418, -8.02016734, 12.44813311, -2.27664396]]
    ref = reference_gradient(s, state)  # every count point, exact probabilities
    g = mf.gradient(s, state, backend=backend, method="exact")
    assert g.met and gradient_error(g, ref) <= TOL


@pytest.mark.parametrize("method", ["exact", "quadrature"])
def test_subnormal_gradient_is_right_or_says_so(backend, method):
    """docs/model.md §3, rounding estimate: a saturated 2-patch class whose loss and gradient
    are about 1e-311, below the least normal double, where a double keeps only an absolute
    precision of 2^-1074 (numpy was 3e-12 off here with met True)."""
    s = mf.Setting([C([G(1, 2, z=4.922)])], masked=1, pp="exact")
    state = mf.State([np.array([[73.02044618, -0.46042657]])],
                     np.array([[-0.91805295, -0.96694473, 0.62654048]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mf.ToleranceWarning)
        g = mf.gradient(s, state, backend=backend, method=method)
    assert 0 < abs(g.fp[0][0, 0]) < 1e-300  # the gradient is subnormal
    assert gradient_error(g, reference_gradient(s, state, k_sd=9.0)) <= TOL or not g.met
    assert not g.met and g.error > 1e-13  # 2^-1074 is 5e-13 of 1e-311: rtol cannot be met


# One class, (0, 0), of two 100-patch groups, its own-area FP A_own around 90: its loss, its
# gradient and its attention off its own area fall from about 1e-305 into the subnormal range,
# on 46-point blocks (the compiled kernels' moments, numpy's points) or quadrature nodes.
SUBNORMAL = mf.Setting([C([G(1, 100, z=4.0), G(1, 100, z=1.0)])], masked=50, pp="exact")


@pytest.mark.parametrize("method", ["exact", "quadrature"])
@pytest.mark.parametrize("own, met", [(88.0, True), (90.0, False), (92.0, False), (95.0, True)])
def test_class_sums_near_and_below_the_least_normal_double(backend, method, own, met):
    """docs/model.md §3, rounding estimate: the class's sums, part by part, are within 1e-12
    of the reference (longdouble, whose range holds them), or the estimate says they may not
    be and covers their error. Normal sums (A_own = 88: the loss 3.6e-305) keep met True;
    subnormal ones (about 1e-312 and 1e-319) say so; sums that underflow entirely (A_own =
    95: the loss 1e-326, which the reference too rounds to 0) are 0 with met True."""
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids
    from mimfast.model import class_inputs, rounding
    from mimfast.quadrature import build_quadratures, sums_error

    state = mf.State.zeros(SUBNORMAL)
    state.fp[0][:] = [[own, -0.3, 0.5], [0.2, 1.0, -0.4]]
    state.pp[:] = [[-0.5, 0.3, 0.1, -0.2], [0.1, -0.3, 0.2, 0.4]]
    kernel = get_kernel(backend)
    if method == "exact":
        grids = build_grids(SUBNORMAL)
        ref = reference_gradient(SUBNORMAL, state, grids=grids)["classes"][0, 0]
        sums = np.asarray(kernel(grids[0, 0], class_inputs(SUBNORMAL, state, 0, 0, grids[0, 0]), 1))
        n = grids[0, 0].n_cat
        est = rounding(sums, n)
    else:
        quad = build_quadratures(SUBNORMAL)[0, 0]
        ref = reference_gradient(SUBNORMAL, state, k_sd=9.0)["classes"][0, 0]
        inputs = class_inputs(SUBNORMAL, state, 0, 0, quad)
        sums, est, _ = quad.evaluate(lambda pts: np.asarray(kernel(pts, inputs, 1)), 1e-13)
        n = len(quad.sizes)
    assert (ref[1] < np.finfo(float).tiny) == (own >= 90)  # the loss below the normal range
    err = sums_error(sums[:3 + 3 * n], ref, n)
    assert err <= (TOL if met else est)
    assert (est <= 1e-13) == met

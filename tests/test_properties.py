"""Property-based tests (hypothesis) over random valid settings and states.

For each example: every backend gives the same gradient, attention over all keys sums to 1
(checked point by point on the count grid, independently of the kernels), the PP gradient's
row sums vanish (so PP row sums stay 0), and the gradient equals a finite difference of the
loss in every reduced coordinate.
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mimfast as mf
from mimfast.backends import get_kernel
from mimfast.grid import build_grids
from mimfast.model import evaluate

BACKENDS = ["cpp", "numba", "numpy"]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])

z_values = st.floats(0.3, 2.0)
groups = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 4), z_values), min_size=1,
                  max_size=3)


@st.composite
def valid_settings(draw):
    g = [mf.Group(a, c, z) for a, c, z in draw(groups)]
    P = sum(x.patches for x in g)
    if P < 2:
        g.append(mf.Group(1, 1, draw(z_values)))
        P += 1
    clusters = [mf.Cluster(g, weight=draw(st.floats(0.1, 3.0)))]
    if draw(st.booleans()):  # a second cluster: another partition of the same P
        a = draw(st.integers(1, P - 1))
        clusters.append(mf.Cluster([mf.Group(1, a, draw(z_values)),
                                    mf.Group(P - a, 1, draw(z_values))],
                                   weight=draw(st.floats(0.1, 3.0))))
    masked = draw(st.integers(1, P - 1))
    return mf.Setting(clusters, masked=masked)


@st.composite
def setting_and_state(draw):
    s = draw(valid_settings())
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([0.0, 0.3, 1.0]))
    rng = np.random.default_rng(seed)
    state = mf.State.zeros(s)
    for a in state.fp:
        a[:] = scale * rng.standard_normal(a.shape)
    if state.pp is not None:
        state.pp[:] = scale * rng.standard_normal(state.pp.shape)
    return s, state


def entries(setting, k, h):
    """Number of Q entries sharing each FP coordinate of class (k, h) (own, then groups)."""
    groups = setting.clusters[k].groups
    return groups[h].patches * np.array([1] + [g.areas - (i == h) for i, g in enumerate(groups)])


def pp_entries(setting, h):
    """Number of Q entries sharing each PP coordinate of a query of group h: its positions
    times the key positions of self, own area, groups."""
    groups = setting.clusters[0].groups
    return groups[h].patches * np.array(
        [1, groups[h].size - 1] + [(g.areas - (i == h)) * g.size for i, g in enumerate(groups)])


@SETTINGS
@given(setting_and_state())
def test_backends_agree(case):
    s, state = case
    grads = [mf.gradient(s, state, backend=b, threads=2) for b in BACKENDS]
    ref = grads[-1]
    for g in grads[:-1]:
        assert g.loss == pytest.approx(ref.loss, rel=1e-12, abs=1e-300)
        for a, b in zip(g.fp + g.attention + g.patch_loss, ref.fp + ref.attention
                        + ref.patch_loss):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-14)
        if s.pp == "exact":
            np.testing.assert_allclose(g.pp, ref.pp, rtol=1e-11, atol=1e-14)


@SETTINGS
@given(setting_and_state())
def test_attention_sums_to_one(case):
    s, state = case
    grad = mf.gradient(s, state, backend="cpp", threads=1)
    grids = build_grids(s)
    for k, cluster in enumerate(s.clusters):
        for h in range(len(cluster.groups)):
            grid = grids[k, h]
            counts, prob = grid.probabilities()
            z = s.class_z(k, h)
            A = state.fp[k][h]
            B = np.zeros(1 + len(A)) if state.pp is None else state.pp[h]
            live = grid.sizes > 0
            # logits of docs/model.md §2: unmasked z A + B, masked B, the query itself B_self
            top = max(B[0], *(z * A + B[1:])[live], *B[1:][live])
            wu = np.where(live, np.exp(z * A + B[1:] - top), 0.0)
            wm = np.where(live, np.exp(B[1:] - top), 0.0)
            ws = np.exp(B[0] - top)
            U = counts.astype(float)
            D = ws + U @ wu + (grid.sizes - U) @ wm
            unmasked, masked = U * wu / D[:, None], (grid.sizes - U) * wm / D[:, None]
            total = unmasked.sum(axis=1) + masked.sum(axis=1) + ws / D
            np.testing.assert_allclose(total, 1.0, rtol=1e-14)
            expected = prob @ unmasked
            np.testing.assert_allclose(grad.attention[k][h], expected, rtol=1e-12, atol=1e-15)
            assert grad.attention[k][h].sum() <= 1 + 1e-14


@SETTINGS
@given(setting_and_state())
def test_pp_gradient_rows_sum_to_zero(case):
    s, state = case
    if s.pp != "exact":
        return
    g = mf.gradient(s, state, backend="cpp", threads=1)
    for h in range(len(s.clusters[0].groups)):
        terms = pp_entries(s, h) * g.pp[h]
        assert abs(terms.sum()) <= 1e-12 * max(np.abs(terms).max(), 1e-300)


@SETTINGS
@given(setting_and_state())
def test_gradient_is_the_derivative_of_the_loss(case):
    s, state = case
    g = mf.gradient(s, state, backend="numpy")
    eps = 1e-5
    grids, kernel = build_grids(s), get_kernel("numpy")

    def loss(change):
        other = state.copy()
        change(other)
        return evaluate(s, grids, other, kernel).loss

    scale = max(max(np.abs(a).max() for a in g.fp), 1e-12)
    for k, cluster in enumerate(s.clusters):
        for h in range(len(cluster.groups)):
            n = entries(s, k, h)
            for c in range(len(n)):
                def plus(x, d=eps, k=k, h=h, c=c):
                    x.fp[k][h, c] += d
                fd = (loss(plus) - loss(lambda x: plus(x, -eps))) / (2 * eps)
                assert fd == pytest.approx(n[c] * g.fp[k][h, c], abs=1e-6 * scale * n.max())
    if s.pp == "exact":
        for h in range(len(s.clusters[0].groups)):
            n = pp_entries(s, h)
            for c in range(len(n)):
                def bump(x, d=eps, h=h, c=c):
                    x.pp[h, c] += d
                fd = (loss(bump) - loss(lambda x: bump(x, -eps))) / (2 * eps)
                assert fd == pytest.approx(n[c] * g.pp[h, c],
                                           abs=1e-6 * max(np.abs(g.pp).max(), 1e-12) * n.max())

"""Named areas over tile groups (docs/model.md §3) in the compiled kernels and the fused loop:
equal to the numpy kernel at any state, to the explicit torch model with learned PP, and the
quadrature to the exact grid along whole runs."""

import functools
import sys

import numpy as np
import pytest
from test_quadrature import _rel, state_at, true_error

import mimfast as mf
from mimfast import io
from mimfast.backends import cpp_backend, get_kernel, numba_backend, numpy_backend
from mimfast.grid import build_grids
from mimfast.model import State, class_inputs, evaluate, own_area, sum_layout
from mimfast.quadrature import build_quadratures
from mimfast.reference import ExplicitModel

G, C = mf.Group, mf.Cluster
COMPILED = {"cpp": cpp_backend, "numba": numba_backend}
simulate_module = sys.modules["mimfast.simulate"]


def tiled(tiles, roles, z, weights, masked=None, gamma=None):
    """A setting over the tile groups ``tiles`` [(n_tiles, size)]: per cluster its roles and
    the latent of each tile group (groups sharing a role share it)."""
    return mf.Setting([C([G(n, s, zz) for (n, s), zz in zip(tiles, zk)], weight=w, roles=r)
                       for r, zk, w in zip(roles, z, weights)], masked=masked, gamma=gamma)


def paper_like(P, c=4, n=(2, 2, 1), gamma=0.1):
    """K = 2 in the paper's shape at any P: local tiles of c positions, in neither global
    area, in cluster 0's only, in cluster 1's only and in both (n tiles each); the last
    category of every class is the large one, so the exact grid stays small at any P."""
    n0 = (P - c * sum(n)) // c
    tiles = [(n0, c)] + [(k, c) for k in n]
    return tiled(tiles, [(None, "G0", None, "G0"), (None, None, "G1", "G1")],
                 [(1.0, 1.3, 1.0, 1.3), (0.8, 0.8, 0.7, 0.7)], (1.0, 2.0), gamma=gamma)


SMALL = {
    # name: (setting, eta); P = 7 or 8, every mask enumerated by the explicit model
    "K2-spanning": (tiled([(2, 2), (1, 2), (2, 1)], [("G", None, "G"), (None, "H", "H")],
                          [(1.3, 0.7, 1.3), (1.1, 0.6, 0.6)], (1.0, 2.0), masked=3), 0.7),
    "K2-overlap": (tiled([(2, 1), (1, 2), (1, 2), (1, 2)],
                         [(None, "G0", None, "G0"), (None, None, "G1", "G1")],
                         [(1.0, 1.4, 1.0, 1.4), (0.8, 0.8, 0.6, 0.6)], (1.0, 3.0), masked=3), 2.0),
    "K2-disjoint": (tiled([(2, 1), (2, 2), (1, 2)], [(None, "G0", None), (None, None, "G1")],
                          [(1.0, 1.5, 1.0), (1.2, 1.2, 0.7)], (2.0, 1.0), masked=4), 2.0),
    "K3": (tiled([(1, 2), (1, 2), (1, 2), (2, 1)],
                 [(None, "A", None, "A"), (None, None, "B", "B"), ("C", None, "C", None)],
                 [(1.0, 1.2, 1.0, 1.2), (0.9, 0.9, 1.4, 1.4), (0.6, 1.1, 0.6, 1.1)],
                 (1.0, 0.5, 1.5), masked=3), 2.0),
    "K3-all-named": (tiled([(1, 2), (1, 2), (2, 1)],
                           [("A", "A", "B"), ("C", "D", "D"), ("E", "F", "E")],
                           [(1.0, 1.0, 0.7), (1.3, 0.8, 0.8), (0.9, 1.2, 0.9)],
                           (1.0, 1.0, 2.0), masked=3), 2.0),
}
MODERATE = {
    # Gauss rules on several chain dimensions, every category but the largest small
    "K2-1e5": paper_like(10**5),
    "K3-1e3": tiled([(300, 3), (2, 2), (2, 2), (1, 2)],
                    [(None, "A", None, "A"), (None, None, "B", "B"), ("C", None, "C", None)],
                    [(1.0, 1.2, 1.0, 1.2), (0.9, 0.9, 1.4, 1.4), (0.6, 1.1, 0.6, 1.1)],
                    (1.0, 0.5, 1.5), gamma=0.3),
}


def test_settings_have_areas_spanning_categories():
    for s in [s for s, _ in SMALL.values()] + list(MODERATE.values()):
        assert any(s.class_named(k, h) is not None for k, h in s.classes())
        assert s.pp == "exact"


def random_state(setting, rng, scale, lead=0.0):
    """FP and PP uniform in [-scale, scale] (mixed sign), the columns of each named area tied
    (as gradient descent keeps them), and the own area's FP raised by ``lead``."""
    st = State.zeros(setting)
    for k, cluster in enumerate(setting.clusters):
        for h in range(len(cluster.groups)):
            row = rng.uniform(-scale, scale, 1 + len(cluster.groups))
            named = cluster.named(h)
            if named is not None:
                row = np.array([row[a] if a >= 0 else v for a, v in zip(named, row)])
            row[[c for c, a in enumerate(named or [0]) if a == 0]] += lead
            st.fp[k][h] = row
    st.pp[:] = rng.uniform(-scale, scale, st.pp.shape)
    return st


def states(setting, seed):
    """Random, mixed-sign and saturated states (own area far ahead: its U_own = 0 points take
    their own weights)."""
    rng = np.random.default_rng(seed)
    out = [random_state(setting, rng, s) for s in (1.0, 5.0, 15.0, 15.0)]
    out += [random_state(setting, rng, 15.0, lead) for lead in (60.0, 150.0, 400.0)]
    return out


def point_sets(setting, method):
    if method == "exact":
        return build_grids(setting)
    quads = build_quadratures(setting)
    out = {}
    for key, q in quads.items():
        out[key + ("rich",)] = q.rich()
        out[key + ("base",)] = q.base()
    return out


def parts(sums, n):
    """The parts an error estimate reads: gradient, attention, loss (and the mass)."""
    lay = sum_layout(n)
    return (np.concatenate([[sums[lay.dB_self]], sums[lay.dA], sums[lay.dB]]),
            sums[lay.alpha], sums[lay.loss], sums[lay.mass])


@pytest.mark.parametrize("method", ["exact", "quadrature"])
@pytest.mark.parametrize("name", sorted(SMALL) + sorted(MODERATE))
def test_compiled_kernels_equal_numpy_at_any_state(name, method):
    """cpp and numba against the numpy kernel class by class, per part to 1e-12, at random,
    mixed-sign and saturated states; their rounding estimates bound the difference and stay
    within a small factor of numpy's."""
    s = SMALL[name][0] if name in SMALL else MODERATE[name]
    sets = point_sets(s, method)
    alt = 0
    for i, st in enumerate(states(s, seed=len(name))):
        for key, pts in sets.items():
            inputs = class_inputs(s, st, key[0], key[1], pts)
            alt += inputs.wu0 is not None
            want = numpy_backend.kernel(pts, inputs)
            n = pts.n_cat
            for backend, module in COMPILED.items():
                got = np.asarray(module.kernel(pts, inputs, threads=1))
                est, ref = got[-3:], want[-3:]  # loss, attention, gradient
                for j, (a, b) in enumerate(zip(parts(got, n), parts(want, n))):
                    assert _rel(a, b) <= 1e-12, (backend, i, key, a, b)
                    if j < 3:  # the two engines' estimates bound their difference
                        assert _rel(a, b) <= est[2 - j] + ref[2 - j], (backend, i, key, j)
                # (numpy takes |rest| where the compiled kernels take the sum of |e| of its terms)
                assert np.all(est >= ref / 2) and np.all(est <= 4 * ref), (est, ref)
                assert np.all(est <= 1e-12), (backend, i, key, est)
    assert alt > 0, "no state reached the U_own = 0 weights"


def run_records(r, setting):
    """A run's recorded loss, and per class its FP, FP gradient, attention and patch loss,
    and the PP (with its keys)."""
    out = [r.loss]
    for k, h in setting.classes():
        keys = ["own"] + list(range(len(setting.clusters[k].groups)))
        for get in (r.fp, r.fp_grad, r.attention):
            out.append(np.stack([get(k, h, key) for key in keys], axis=1))
        out.append(r.patch_loss(k, h))
    G_ = len(setting.clusters[0].groups)
    for h in range(G_):
        out.append(np.stack([r.pp(h, key) for key in ["self", "own"] + list(range(G_))], axis=1))
    return out


def assert_tied(r, setting):
    """The FP columns of every area spanning several categories stay equal, bit for bit,
    along the run."""
    for k, cluster in enumerate(setting.clusters):
        for h in range(len(cluster.groups)):
            named = setting.class_named(k, h)
            if named is None:
                continue
            keys = ["own"] + list(range(len(cluster.groups)))
            for c, a in enumerate(named):
                if a >= 0:
                    assert np.array_equal(r.fp(k, h, keys[c]), r.fp(k, h, keys[a]))
                    assert np.array_equal(r.fp_grad(k, h, keys[c]), r.fp_grad(k, h, keys[a]))


def run_case(name, method):
    s, eta = SMALL[name] if name in SMALL else (MODERATE[name], MODERATE[name].P / 10)
    return s, {"eta": eta, "steps": 20, "record_every": 4, "method": method}


@functools.cache
def numpy_run(name, method):
    s, kw = run_case(name, method)
    return mf.simulate(s, backend="numpy", **kw)


@pytest.mark.parametrize("method", ["exact", "quadrature"])
@pytest.mark.parametrize("backend", sorted(COMPILED))
@pytest.mark.parametrize("name", sorted(SMALL) + sorted(MODERATE))
def test_runs_equal_numpy(name, backend, method, monkeypatch):
    """20 GD steps (the compiled loop of cpp and numba) equal the numpy kernel's run to 1e-12
    per record; the compiled loop gives the Python loop's bytes, and named areas stay tied."""
    s, kw = run_case(name, method)
    got = mf.simulate(s, backend=backend, threads=1, **kw)
    want = numpy_run(name, method)
    for a, b in zip(run_records(got, s), run_records(want, s)):
        assert max(_rel(x, y) for x, y in zip(a, b)) <= 1e-12
    assert_tied(got, s)
    assert max(got.error) <= 1e-12
    monkeypatch.setattr(simulate_module, "FUSED", set())
    assert io.equal(mf.simulate(s, backend=backend, threads=1, **kw), got)


def explicit_tiled(setting):
    """Labels and latents of an explicit partition of a tiled setting (tile groups laid out in
    order, tiles contiguous), and the tile group and tile of each position."""
    tiles = [(g.areas, g.size) for g in setting.clusters[0].groups]
    group = np.repeat(np.arange(len(tiles)), [n * c for n, c in tiles])
    tile = np.concatenate([np.repeat(np.arange(n), c) for n, c in tiles])
    labels, z = [], []
    for cluster in setting.clusters:
        area, lab, zk = {}, [], []
        for g, t in zip(group, tile):
            key = cluster.roles[g] if cluster.roles[g] is not None else (g, t)
            if key not in area:
                area[key] = len(zk)
                zk.append(cluster.groups[g].z)
            lab.append(area[key])
        labels.append(np.array(lab))
        z.append(np.array(zk))
    return labels, z, group, tile


def unit(named, c):
    """The area of category c (:meth:`Cluster.named`): its named area's first category, or c."""
    return c if named is None or named[c] < 0 else int(named[c])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_equals_explicit_model(name, backend):
    """20 GD steps with learned PP equal the explicit torch model (every mask enumerated) to
    1e-10 in the loss, A, B, the attention of every area and the patch loss."""
    s, eta = SMALL[name]
    steps = 20
    labels, z, group, tile = explicit_tiled(s)
    ref = ExplicitModel(labels, z, s.masked, weights=[c.weight for c in s.clusters]).run(
        eta, steps)
    r = mf.simulate(s, eta, steps, backend=backend)
    close = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(r.loss, ref["loss"], **close)
    assert np.ptp(ref["loss"]) > 1e-3 and np.abs(ref["pp"]).max() > 1e-3
    P = len(group)
    for p in range(P):
        h = group[p]
        for q in range(P):
            key = ("self" if q == p else "own" if (group[q], tile[q]) == (h, tile[p])
                   else int(group[q]))
            np.testing.assert_allclose(r.pp(h, key), ref["pp"][:, p, q], **close)
        for k, cluster in enumerate(s.clusters):
            np.testing.assert_allclose(r.patch_loss(k, h), ref["patch_loss"][:, k, p], **close)
            named = cluster.named(h)
            att = {}
            for n in range(len(z[k])):
                q = np.nonzero(labels[k] == n)[0][0]
                cat = 0 if labels[k][p] == n else 1 + int(group[q])
                key = "own" if cat == 0 else cat - 1
                np.testing.assert_allclose(r.fp(k, h, key), ref["fp"][k][:, p, n], **close)
                u = unit(named, cat)
                att[u] = att.get(u, 0.0) + ref["attention"][k][:, p, n]
            mine = {}
            for c in range(1 + len(cluster.groups)):
                key = "own" if c == 0 else c - 1
                u = unit(named, c)
                if c > 0 and u == unit(named, 0):
                    continue  # r.attention(k, h, "own") is the whole own area's
                mine[u] = mine.get(u, 0.0) + r.attention(k, h, key)
            for u, v in att.items():
                np.testing.assert_allclose(mine[u], v, **close)


def assert_equals_exact_at_every_state(r, s):
    """At every recorded state of the quadrature run ``r``: a quadrature gradient (rtol 1e-13)
    and the run's own record (FP gradient, attention, patch loss, loss) equal the exact grid's
    to 1e-12, and their error estimates are not below that difference less the exact grid's
    own rounding estimate, nor below 1e-14. This relies on the grid's probabilities being
    within a few roundings of exact (test_grid.py), also on the rare points U_own = 0 that
    carry a saturated class's patch loss."""
    grids, quads = build_grids(s), build_quadratures(s)
    kernel = get_kernel("cpp")
    for i in range(len(r.steps)):
        st = state_at(r, i)
        gq = evaluate(s, quads, st, kernel, rtol=1e-13)
        ge = evaluate(s, grids, st, kernel)
        err = true_error(gq, ge, s)
        rec = _rel(r.loss[i], ge.loss)
        for k, h in s.classes():
            keys = ["own"] + list(range(len(s.clusters[k].groups)))
            att = ge.attention[k][h]
            rec = max(rec, _rel([r.fp_grad(k, h, key)[i] for key in keys], ge.fp[k][h]),
                      _rel([r.attention(k, h, key)[i] for key in keys[1:]], att[1:]),
                      _rel(r.attention(k, h, "own")[i], att[own_area(s, k, h)].sum()),
                      _rel(r.patch_loss(k, h)[i], ge.patch_loss[k][h]))
        exact_err = ge.error
        assert err <= 1e-12 and err <= max(gq.error + exact_err, 1e-14), (i, err, gq.error)
        assert rec <= 1e-12 and rec <= max(r.error[i] + exact_err, 1e-14), (i, rec, r.error[i])


@pytest.mark.parametrize("P", [10**5, 10**6, 10**7])
def test_quadrature_equals_exact_along_the_run(P):
    """K = 2 with learned PP, every class to own-area attention >= 0.99: at every step of the
    quadrature run its gradient, attention and patch loss equal the exact grid's at the same
    state to 1e-12, and its error estimate is not below that true error (up to the exact
    grid's own rounding estimate). The exact run reaches the same states to 1e-10: the attention switch
    amplifies the runs' ~1e-15 rounding differences (measured: 3e-12 in the state and 1e-10 in
    the gradient at P = 10^5), as it would any perturbation. Beyond P = 10^7 eta = P/10 ends
    non-finite: test_quadrature_equals_exact_along_the_flow says why and covers 10^8 and 10^9,
    as does test_quadrature_equals_exact_along_a_saturating_run."""
    s = paper_like(P)
    eta, steps = P / 10, 120
    q = mf.simulate(s, eta, steps, method="quadrature")
    e = mf.simulate(s, eta, steps, method="exact")
    assert q.tolerance_met and min(q.attention(k, h, "own")[-1] for k, h in s.classes()) >= 0.99
    assert any(max(lv) > 0 for lv in q.levels.values())  # the error control grew some rules
    assert_tied(q, s)
    assert_equals_exact_at_every_state(q, s)
    for i in range(len(q.steps)):
        for k, h in s.classes():
            assert _rel(q.attention(k, h, "own")[i], e.attention(k, h, "own")[i]) <= 1e-10
            assert _rel(q.recorded_state(i).fp[k][h], e.recorded_state(i).fp[k][h]) <= 1e-10


@pytest.mark.parametrize("P", [10**8, 10**9])
def test_quadrature_equals_exact_along_the_flow(P):
    """K = 2 with learned PP at P = 10^8 and 10^9, from Q = 0 until every class's own-area
    attention reaches 0.99 (flow time ~6.5 P): the quadrature gradient and the run's
    record equal the exact grid's at every accepted state of the gradient flow (~10^3 states:
    the slow phase, each class's switch, and the saturation of the classes that switched
    first), and the error estimates are not below the true error.

    The gradient flow, not GD with one eta, because the step must vary: a class's own FP
    gradient is 0.09/P ... 0.7/P at Q = 0 but 3e-3 ... 1e-2 at its switch, at every P. The
    eta that brings the last class to its switch in ~100 steps (P/10) can thus move a logit
    by up to ~10^-3 P in the one step that lands near a switch: at P >= 10^8, GD with
    eta = P/5, P/10, P/20, P/50, P/100 or P/500 ends non-finite (own logits ~4000 above the
    rest), and an eta that bounds every such step below the ~700 where e^-lead underflows
    (eta <= 6e4) needs ~10^4 steps at P = 10^8 and ~10^5 at 10^9. The flow's error control
    takes long steps in the slow phase and short ones through each switch."""
    s = paper_like(P)
    r = mf.flow(s, 100.0 * P, method="quadrature", stop_at="T_eps", epsilon=0.01)
    assert r.method == "quadrature" and r.tolerance_met
    assert min(r.attention(k, h, "own")[-1] for k, h in s.classes()) >= 0.99
    assert_tied(r, s)
    assert_equals_exact_at_every_state(r, s)


@pytest.mark.slow
@pytest.mark.parametrize("P", [10**8, 10**9])
def test_quadrature_equals_exact_along_a_saturating_run(P):
    """GD at P = 10^8 and 10^9 with eta = P/200 for 2000 steps: the quadrature equals the
    exact grid at every step, as in test_quadrature_equals_exact_along_the_run, up to states
    past the flow's: the classes that switch first overshoot to own logits ~600 (10^8) and
    ~1200 (10^9) above the rest, where e^-lead is ~1e-273 and below the least double. This eta
    is one whose steps land clear of the switches (test_quadrature_equals_exact_along_the_flow
    says why one eta rarely does: at these P, P/100 and P/500 end non-finite); the run asserts
    that it still reaches attention 0.99 in every class with finite states."""
    s = paper_like(P)
    q = mf.simulate(s, P / 200, 2000, method="quadrature")
    assert q.tolerance_met and min(q.attention(k, h, "own")[-1] for k, h in s.classes()) >= 0.99
    assert max(q.fp(k, h, "own")[-1] for k, h in s.classes()) > 500
    assert_tied(q, s)
    assert_equals_exact_at_every_state(q, s)


def test_bad_named_areas_are_refused():
    s = SMALL["K2-spanning"][0]
    grid = build_grids(s)[0, 0]
    inputs = class_inputs(s, State.zeros(s), 0, 0, grid)
    handle = cpp_backend.prepared(grid)
    args = (inputs.z, inputs.wu, inputs.wm, inputs.wself, 1)
    for bad in ([1, -1, -1, -1], [0, 2, -1, -1], [0, -1, 3, 2], [0, -2, -1, -1], [0, -1]):
        with pytest.raises(ValueError, match="named"):
            handle.sums(*args, named=np.array(bad, dtype=np.int64))

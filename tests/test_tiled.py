"""Clusters over one tiling with learned PP (docs/model.md §3, tile groups): the reduced
engine against the explicit torch model built from ``Setting.explicit()``, the invariants of
the dynamics, the constructors' checks, and the quadrature against the exact grid."""

import numpy as np
import pytest
from helpers import pp_row_sums, relative_difference, true_error

import mimfast as mf
from mimfast.reference import ExplicitModel
from mimfast.setting import MAX_EXPLICIT_P

T = mf.Setting.tiled

# (setting, eta): K = 2 and 3, P <= 10 (every mask enumerated)
SETTINGS = {
    # a named area over tile groups of tiles of size 2 and 1, unequal z and weights
    "K2-spanning": (T([(2, 2), (1, 2), (2, 1)], [["G", "tiles", "G"], ["tiles", "H", "H"]],
                      z=[{"G": 1.3, "tiles": 0.7}, {"tiles": 1.1, "H": 0.6}], weights=[1, 2],
                      masked=3), 0.7),
    # disjoint global areas of one tile each
    "K2-disjoint": (T([(1, 2), (1, 2), (2, 2)], [["G", "tiles", "tiles"],
                                                 ["tiles", "G", "tiles"]],
                      z=[{"G": 1.2, "tiles": 0.8}, {"G": 0.9, "tiles": 1.4}], masked=4), 1.5),
    # the paper's construction: global areas of two tiles sharing one
    "K2-paper-overlap": (mf.Setting.paper_clusters(10, 0.6, 0.3, K=2, overlap=0.5), 2.0),
    # two named areas per cluster, global areas of one-position tiles
    "K2-two-names": (T([(2, 1), (1, 2), (1, 2), (2, 2)],
                       [["A", "A", "B", "tiles"], ["tiles", "C", "D", "D"]],
                       z=[{"A": 1.5, "B": 0.7, "tiles": 1.0}, {"C": 1.2, "D": 0.8, "tiles": 1.1}],
                       weights=[3, 1], gamma=0.5), 1.0),
    # K = 3: a common core in every global area, each cluster with tiles of its own
    "K3-overlap": (T([(1, 1), (1, 2), (1, 1), (1, 2), (2, 1)],
                     [["G", "G", "tiles", "tiles", "tiles"], ["G", "tiles", "G", "tiles", "tiles"],
                      ["G", "tiles", "tiles", "G", "tiles"]],
                     z=[{"G": 1.3, "tiles": 0.9}, {"G": 0.8, "tiles": 1.2},
                        {"G": 1.0, "tiles": 1.0}], weights=[1, 2, 3], masked=3), 1.0),
    # K = 3, disjoint global areas of two one-position tiles
    "K3-disjoint-size1": (T([(2, 1), (2, 1), (2, 1), (3, 1)],
                            [["G", "tiles", "tiles", "tiles"], ["tiles", "G", "tiles", "tiles"],
                             ["tiles", "tiles", "G", "tiles"]],
                            z=[{"G": 1.4, "tiles": 0.8}, {"G": 1.0, "tiles": 1.0},
                               {"G": 0.7, "tiles": 1.3}], weights=[2, 1, 1], masked=4), 1.0),
    # K = 3 from paper_clusters, disjoint
    "K3-paper-disjoint": (mf.Setting.paper_clusters(10, 0.4, 0.3, K=3, overlap=0.0), 2.0),
}
STEPS = 20


def explicit_model(setting, **kw):
    labels, z, weights = zip(*setting.explicit())
    return ExplicitModel(labels, z, setting.masked, weights=weights,
                         learn_pp=setting.pp == "exact", **kw)


def area_attention(setting, result, k, p):
    """Reduced expected attention of a masked query at position p (cluster k) on every area
    of cluster k, at every recorded step, from the per-category attention: a named area
    sums its categories, a category of one-tile areas is shared equally by its tiles."""
    group, tile, labels, _ = setting._layout()[k]
    h = int(group[p])
    groups = setting.clusters[k].groups
    out = []
    for a in range(labels.max() + 1):
        if a == labels[p]:
            out.append(result.attention(k, h, "own"))
            continue
        members = sorted(set(group[labels == a].tolist()))
        if len(set(tile[labels == a].tolist())) == 1 and len(members) == 1 \
                and setting.clusters[k].roles[members[0]] is None:
            g = members[0]
            out.append(result.attention(k, h, g) / (groups[g].areas - (g == h)))
        else:
            out.append(sum(result.attention(k, h, g) for g in members))
    return np.array(out).T


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def case(request):
    setting, eta = SETTINGS[request.param]
    return setting, eta, explicit_model(setting).run(eta, STEPS, record_every=1)


def test_tiled_run_matches_explicit_model(case, backend):
    setting, eta, ref = case
    assert setting.P <= 10 and setting.K in (2, 3) and setting.pp == "exact"
    r = mf.simulate(setting, eta=eta, steps=STEPS, backend=backend, method="exact")
    np.testing.assert_array_equal(r.steps, ref["steps"])
    tol = 1e-10
    assert np.max(np.abs(r.loss - ref["loss"])) <= tol
    assert np.ptp(ref["loss"]) > 1e-2, "the run must move for the comparison to mean something"
    for i in range(len(r.steps)):
        A, B = r.expanded(i)
        for k in range(setting.K):
            n = ref["fp"][k].shape[2]
            assert np.max(np.abs(A[:, k, :n] - ref["fp"][k][i])) <= tol
            assert not np.any(A[:, k, n:])
        assert np.max(np.abs(B - ref["pp"][i])) <= tol
    assert np.max(np.abs(ref["pp"])) > 1e-3, "PP must move for the comparison to mean something"
    for k in range(setting.K):
        for p in range(setting.P):
            att = area_attention(setting, r, k, p)
            assert np.max(np.abs(att - ref["attention"][k][:, p])) <= tol
            h = int(setting._layout()[k][0][p])
            assert np.max(np.abs(r.patch_loss(k, h) - ref["patch_loss"][:, k, p])) <= tol


@pytest.mark.parametrize("setting", [
    mf.Setting([mf.Cluster([mf.Group(1, 4, 1.2), mf.Group(2, 2, 0.8)])], masked=3),
    mf.Setting.paper(9, 0.6, 0.3, K=2),
])
def test_explicit_and_expanded_for_classic_settings(setting):
    """explicit() and expanded() of settings without roles: K = 1 with learned PP, K = 2
    frozen (the same partition in both clusters)."""
    eta, steps = 2.0, 5
    ref = explicit_model(setting).run(eta, steps, record_every=1)
    r = mf.simulate(setting, eta=eta, steps=steps, backend="numpy")
    assert np.max(np.abs(r.loss - ref["loss"])) <= 1e-12
    A, B = r.expanded(-1)
    for k in range(setting.K):
        assert np.max(np.abs(A[:, k, :ref["fp"][k].shape[2]] - ref["fp"][k][-1])) <= 1e-12
    assert np.max(np.abs(B - ref["pp"][-1])) <= 1e-12
    assert setting.pp == "exact" or not np.any(B)


def test_explicit_layout():
    s = SETTINGS["K2-spanning"][0]
    (l0, z0, w0), (l1, z1, w1) = s.explicit()
    np.testing.assert_array_equal(l0, [0, 0, 0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(l1, [0, 0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(z0, [1.3, 0.7])
    np.testing.assert_array_equal(z1, [1.1, 1.1, 0.6])
    assert (w0, w1) == pytest.approx((1 / 3, 2 / 3))
    l0[:] = 7  # a copy: the setting is unchanged
    assert s.explicit()[0][0][0] == 0
    big = mf.Setting.paper(MAX_EXPLICIT_P, 0.9, 0.3)
    assert big.explicit()[0][0].shape == (MAX_EXPLICIT_P,)
    A, B = mf.State.zeros(big).expanded(big)
    assert A.shape == (MAX_EXPLICIT_P, 1, 1 + big.clusters[0].groups[1].areas)
    assert B.shape == (MAX_EXPLICIT_P, MAX_EXPLICIT_P)
    huge = mf.Setting.paper(MAX_EXPLICIT_P + 1, 0.9, 0.3)
    with pytest.raises(ValueError, match=f"P = {MAX_EXPLICIT_P + 1} is more than"):
        huge.explicit()
    with pytest.raises(ValueError, match="more than"):
        mf.State.zeros(huge).expanded(huge)


@pytest.mark.parametrize("name", ["K2-spanning", "K2-paper-overlap", "K3-overlap"])
def test_pp_rows_sum_to_zero_and_loss_falls(name, backend):
    setting = SETTINGS[name][0]
    r = mf.simulate(setting, eta=0.3, steps=40, backend=backend, method="exact")
    sums = pp_row_sums(r)
    scale = max(np.max(np.abs(r.pp(h, "self"))) for h in range(len(sums)))
    assert scale > 1e-6
    assert np.max(np.abs(sums)) < 1e-12 * max(scale, 1.0) * setting.P
    assert r.loss[-1] < r.loss[0]
    assert np.all(np.diff(r.loss) <= 1e-12 * r.loss[0])


def test_paper_clusters_sizes():
    s = mf.Setting.paper_clusters(10**6, 0.9, 0.3, K=2, overlap=0.5)
    c_l = round(10**1.8)  # 63
    g = round(10**5.4 / c_l)
    o = round(0.5 * g)
    groups = s.clusters[0].groups
    assert [(grp.areas, grp.size) for grp in groups] == [
        (o, c_l), (g - o, c_l), (g - o, c_l),
        (10**6 // c_l - 1 - (2 * g - o), c_l), (1, c_l + 10**6 % c_l)]
    assert s.clusters[0].roles == ("global", "global", None, None, None)
    assert s.clusters[1].roles == ("global", None, "global", None, None)
    assert s.pp == "exact" and s.kappa == (0.9, 0.3)
    assert s.delta == pytest.approx(0.5) and s.delta_actual == pytest.approx(0.5, abs=1e-3)
    # K = 3: every pair shares the core; overlap 0 and 1 drop the empty groups
    s3 = mf.Setting.paper_clusters(10**12, 0.9, 0.3, K=3, overlap=0.25)
    shared = [sum(grp.patches for grp, a, b in zip(s3.clusters[0].groups, s3.clusters[i].roles,
                                                   s3.clusters[j].roles) if a and b)
              for i, j in [(0, 1), (0, 2), (1, 2)]]
    size = sum(grp.patches for grp, role in zip(s3.clusters[0].groups, s3.clusters[0].roles)
               if role)
    assert len(set(shared)) == 1 and shared[0] / size == pytest.approx(0.25, abs=1e-6)
    assert size == pytest.approx(10**10.8, rel=1e-3)
    disjoint = mf.Setting.paper_clusters(10**4, 0.8, 0.3, K=2, overlap=0)  # 625 tiles of 16
    assert [c.roles for c in disjoint.clusters] == [("global", None, None),
                                                     (None, "global", None)]
    same = mf.Setting.paper_clusters(10**4, 0.8, 0.3, K=2, overlap=1)
    assert [c.roles for c in same.clusters] == [("global", None)] * 2
    # the largest P: sizes exact in integer arithmetic
    top = mf.Setting.paper_clusters(2**62, 0.9, 0.3)
    assert top.P == 2**62


BAD = [
    ({"tile_groups": [], "roles": [[]]}, "at least one tile group"),
    ({"tile_groups": [(2, 2, 1)], "roles": [["tiles"]]}, r"tile_groups\[0\] must be a pair"),
    ({"tile_groups": [(0, 2)], "roles": [["tiles"]]}, "n_tiles must be at least 1"),
    ({"tile_groups": [(2, 0)], "roles": [["tiles"]]}, "tile_size must be at least 1"),
    ({"tile_groups": [(2**31, 2**31), (2**31, 2**31)], "roles": [["tiles", "tiles"]]},
     "more than 2"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": []}, "one role list per cluster"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G"]]}, r"roles\[0\] has 1 entries for 2"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"], ["G", "tiles", "G"]]},
     r"roles\[1\] has 3 entries"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", ""]]}, r"roles\[0\]\[1\] must be"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", None]]}, r"roles\[0\]\[1\] must be"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]], "z": [{"G": 1.0}]},
     r"z\[0\] has no latent for 'tiles'"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]],
          "z": [{"G": 1.0, "tiles": 1.0, "H": 2.0}]}, r"z\[0\] names 'H', which no tile group"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "G"]], "z": [{"G": 1.0, "tiles": 1.0}]},
     r"z\[0\] names 'tiles'"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]] * 2, "z": [{"G": 1, "tiles": 1}]},
     "z has 1 dicts for K = 2"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]], "z": [{"G": -1.0, "tiles": 1}]},
     "positive"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]] * 2, "weights": [1]},
     "weights has 1 entries for K = 2"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]] * 2, "weights": [1, 0]},
     "weight must be positive"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]], "masked": 6},
     r"masked must lie in \[1, P - 1\] = \[1, 5\], got 6"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]], "masked": 0}, "masked must lie"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]], "gamma": 1.5}, "gamma must lie"),
    ({"tile_groups": [(2, 2), (1, 2)], "roles": [["G", "tiles"]], "pp": "learned"}, "pp must be"),
]


@pytest.mark.parametrize("kwargs, message", BAD)
def test_tiled_refuses_bad_structures(kwargs, message):
    with pytest.raises(ValueError, match=message):
        T(**kwargs)


def test_tiled_refuses_bad_types():
    with pytest.raises(TypeError, match="roles must be a sequence"):
        T([(2, 2)], "tiles")
    with pytest.raises(TypeError, match=r"roles\[0\] must be a sequence"):
        T([(2, 2)], ["tiles"])
    with pytest.raises(TypeError, match=r"z\[0\] must be a dict"):
        T([(2, 2)], [["tiles"]], z=[1.0])
    with pytest.raises(TypeError, match="must be an integer"):
        T([(2.5, 2)], [["tiles"]])


@pytest.mark.parametrize("kwargs, message", [
    ({"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3, "overlap": 1.5}, r"overlap must lie in \[0, 1\]"),
    ({"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3, "overlap": -0.1}, "overlap must lie"),
    ({"P": 10**4, "kappa_c": 1.0, "kappa_s": 0.3}, r"kappa_c must lie in \(0, 1\)"),
    ({"P": 10**4, "kappa_c": 0.95, "kappa_s": 0.3, "overlap": 0.0}, "leave no local area"),
    ({"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3, "K": 17}, "more than 16"),
    ({"P": 2**62 + 1, "kappa_c": 0.9, "kappa_s": 0.3}, "more than 2"),
    ({"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3, "z": (1, 2, 3)}, "pair"),
])
def test_paper_clusters_refuses_bad_input(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mf.Setting.paper_clusters(**kwargs)


def test_tiled_setting_equality_and_pickle():
    import pickle

    a, b = SETTINGS["K2-spanning"][0], SETTINGS["K2-disjoint"][0]
    assert a != b and hash(a) != hash(b)
    p = SETTINGS["K2-paper-overlap"][0]
    again = pickle.loads(pickle.dumps(p))
    assert again == p and again.kappa == p.kappa
    assert [c.roles for c in again.clusters] == [c.roles for c in p.clusters]
    assert "global" in repr(p)


def test_paper_with_several_clusters_says_pp_was_not_tested():
    s = mf.Setting.paper(2000, 0.9, 0.3, K=2)
    assert s.pp == "frozen"
    claim = {c.name: c for c in mf.analysis.analyze(
        mf.simulate(s, eta=20.0, steps=5, backend="numpy")).claims}["pp_small"]
    assert claim.holds is None and claim.mark == "n/a"
    assert claim.detail == "PP frozen: the PP claim was not tested"


def test_quadrature_matches_exact_at_a_mixed_sign_state():
    """One gradient of a K = 2 paper_clusters setting at a random mixed-sign state (learned
    PP): the quadrature against the exact grid, its error estimate not below the true
    error."""
    s = mf.Setting.paper_clusters(60, 0.8, 0.3, K=2, overlap=0.5)
    rng = np.random.default_rng(16)
    st = mf.State.zeros(s)
    st = mf.State([rng.normal(0, 0.5, a.shape) for a in st.fp], rng.normal(0, 0.5, st.pp.shape))
    gq = mf.gradient(s, st, backend="numpy", method="quadrature")
    ge = mf.gradient(s, st, backend="numpy", method="exact")
    assert gq.met and true_error(gq, ge, s) <= max(gq.error, 1e-14)
    assert abs(gq.loss - ge.loss) <= 1e-12 * ge.loss


@pytest.mark.slow
def test_quadrature_matches_exact_on_paper_clusters():
    """A K = 2 paper_clusters run with learned PP: the quadrature against the exact grid to
    1e-12 along the run, and at every recorded state the error estimate is not below the
    true error (up to 1e-14, both engines' rounding level)."""
    s = mf.Setting.paper_clusters(60, 0.8, 0.3, K=2, overlap=0.5)  # 20 tiles of 3
    kw = {"eta": 20.0, "steps": 4, "record_every": 2, "backend": "numpy"}
    ex = mf.simulate(s, method="exact", **kw)
    qu = mf.simulate(s, method="quadrature", **kw)
    assert qu.tolerance_met and ex.loss[-1] < 0.9 * ex.loss[0]
    assert max(relative_difference(x, y) for x, y in zip(qu.loss, ex.loss)) <= 1e-12
    for k, h in s.classes():
        assert relative_difference(qu.attention(k, h, "own"), ex.attention(k, h, "own")) <= 1e-12
    for i in range(len(ex.steps)):
        st = ex.recorded_state(i)
        gq = mf.gradient(s, st, backend="numpy", method="quadrature")
        ge = mf.gradient(s, st, backend="numpy", method="exact")
        assert true_error(gq, ge, s) <= max(gq.error, 1e-14), i


def test_analysis_reads_tiled_classes():
    """The analysis of a tiled run: own-area attention and the irreducible loss over the
    whole named own area, the global FP column of each cluster's own global area (with
    disjoint global areas group 0 is another cluster's), and the PP measurements."""
    from mimfast import analysis as an

    s = SETTINGS["K3-paper-disjoint"][0]  # groups: own global of k0, k1, k2, rest
    assert [c.roles for c in s.clusters][1] == (None, "global", None, None)
    r = mf.simulate(s, eta=2.0, steps=15, backend="numpy")
    assert an.global_key(s, 1, 0) == 1 and an.global_key(s, 1, 3) == 1
    assert an.global_key(s, 1, 1) is None and an.rival_keys(s, 1, 1) == [0, 2, 3]
    assert an.class_kind(s, 1, 0) == "local" and an.class_kind(s, 1, 1) == "global"
    g = s.clusters[1].groups[1]
    assert an.own_keys(s, 1, 1) == g.patches - 1 and an.own_keys(s, 1, 0) == 1
    # own-area attention: the per-area attention of the explicit model
    ref = explicit_model(s).run(2.0, 15, record_every=1)
    labels = s.explicit()[1][0]
    p = int(np.flatnonzero(s._layout()[1][0] == 1)[0])  # a position of cluster 1's global area
    np.testing.assert_allclose(r.attention(1, 1, "own"), ref["attention"][1][:, p, labels[p]],
                               atol=1e-12)
    a = an.analyze(r)
    row = {(c.k, c.h): c for c in a.classes}[1, 0]
    assert row.name == "k1 local g0" and row.fp_global == r.fp(1, 0, 1)[-1]
    assert a.delta == s.delta and "PP learned and shared by the 3 clusters" in str(a)
    assert {c.name: c for c in a.claims}["pp_small"].holds is not None


@pytest.mark.parametrize("name", ["K2-spanning", "K3-overlap"])
def test_logit_gap_parts_against_the_full_matrices(name):
    """FP part + PP part of a class's logit gap (own area vs the rest) equals the gap formed
    from the expanded A and B position by position."""
    from mimfast.analysis import logit_gap_parts

    s, eta = SETTINGS[name]
    r = mf.simulate(s, eta=eta, steps=6, backend="numpy")
    for k in range(s.K):
        group, _, labels, z = s._layout()[k]
        for h in range(len(s.clusters[k].groups)):
            parts = logit_gap_parts(r, k, h)
            p = int(np.flatnonzero(group == h)[0])
            own = (labels == labels[p]) & (np.arange(s.P) != p)
            rest = labels != labels[p]
            if not own.any() or not rest.any():
                assert parts is None
                continue
            for i in range(len(r.steps)):
                A, B = r.expanded(i)
                logit = z[labels] * A[p, k, labels] + B[p]
                gap = logit[own].min() - logit[rest].max()
                assert parts[0][i] + parts[1][i] == pytest.approx(gap, abs=1e-12)


def test_flow_events_read_the_own_area():
    """The gradient flow's T_eps event of a class in a named area watches its whole own
    area's attention (not its own tile's)."""
    s = SETTINGS["K2-spanning"][0]
    eps = 0.7
    r = mf.flow(s, 20.0, backend="numpy", epsilon=eps)
    for k, h in s.classes():
        att = r.attention(k, h, "own")
        tau = r.events.get(("T_eps", k, h))
        if att[-1] < 1 - eps:
            assert tau is None
            continue
        i = int(np.argmax(att >= 1 - eps))
        assert tau is not None and r.tau[max(i - 1, 0)] <= tau <= r.tau[i]
    assert any(r.events.get(("T_eps", k, h), 0) > 0 for k, h in s.classes())


def test_results_file_round_trips_roles(tmp_path):
    from mimfast import io

    s = SETTINGS["K3-paper-disjoint"][0]
    r = mf.simulate(s, eta=2.0, steps=7, record_every=3, backend="numpy")
    path = io.save(r, tmp_path / "r.nc", mf.analysis.analyze(r))
    back = io.load(path)
    assert io.equal(r, back) and back.setting == s and back.setting.kappa == s.kappa
    assert [c.roles for c in back.setting.clusters] == [c.roles for c in s.clusters]
    # per category as recorded, also where the own area spans two categories
    two = mf.simulate(SETTINGS["K2-paper-overlap"][0], eta=2.0, steps=4, backend="numpy")
    for run in (r, two):
        again = io.load(io.save(run, tmp_path / "two.nc"))
        assert io.equal(run, again)
        for a, b in zip(run.block()[2:6], again.block()[2:6]):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    # resumes to the same run as one piece
    more = mf.simulate(s, eta=2.0, steps=10, record_every=3, backend="numpy", resume=back)
    assert io.equal(more, mf.simulate(s, eta=2.0, steps=10, record_every=3, backend="numpy"))
    ds = io.to_dataset(r)
    for bad, why in [("[[\"global\", null]]", "one role list"), ("{}", "one role list"),
                     ("[\"global\", null, null]", "not a list"),
                     ("[[1, null, null, null], null, null]", "must be an area name"),
                     ("[[null, null], null, null]", "entries for 4 groups"), ("[", "")]:
        ds.attrs["roles"] = bad
        ds.attrs[io.DIGEST] = io.digest(ds)
        ds.to_netcdf(tmp_path / "bad.nc", engine=io.ENGINE)
        with pytest.raises(io.ResultFileError, match=f"incomplete or inconsistent.*{why}"):
            io.load(tmp_path / "bad.nc")
    with pytest.raises(ValueError, match="roles"):
        io.save(r, tmp_path / "x.nc", attrs={"roles": "[]"})


def test_cli_preset_resume_and_toml(tmp_path, capsys):
    """`mimfast run --preset paper-clusters-*` (at a small P), its resume, a tiled TOML
    setting, and bad ones exiting 2 with the problem named."""
    from mimfast import io
    from mimfast.cli import main

    out = tmp_path / "a"
    args = ["run", "--preset", "paper-clusters-negative", "--P", "10", "--backend", "numpy",
            "--steps", "6", "--eta", "2", "--no-plots", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "PP learned and shared by the 2 clusters" in text and "k1 local g1" in text
    r = io.load(out / "result.nc")
    assert r.setting == mf.Setting.paper_clusters(10, 0.6, 0.3, K=2, overlap=0.5)
    assert main(["run", "--resume", str(out), "--steps", "9"]) == 0
    assert io.equal(io.load(out / "result.nc"),
                    mf.simulate(r.setting, eta=2.0, steps=9, backend="numpy"))
    config = tmp_path / "t.toml"
    config.write_text('masked = 4\neta = 1.0\nsteps = 3\nbackend = "numpy"\nplots = false\n'
                      'tile_groups = [[1, 2], [1, 2], [2, 2]]\n'
                      '[[clusters]]\nroles = ["G", "tiles", "tiles"]\nz = {G = 1.2, tiles = 0.8}\n'
                      '[[clusters]]\nroles = ["tiles", "G", "tiles"]\nweight = 2.0\n')
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "b")]) == 0
    want = T([(1, 2), (1, 2), (2, 2)], [["G", "tiles", "tiles"], ["tiles", "G", "tiles"]],
             z=[{"G": 1.2, "tiles": 0.8}, {"G": 1.0, "tiles": 1.0}], weights=[1, 2], masked=4)
    assert io.load(tmp_path / "b" / "result.nc").setting == want
    capsys.readouterr()
    config.write_text(config.read_text().replace('"G", "tiles"]\nweight', '"G"]\nweight'))
    assert main(["run", "--config", str(config), "--out", str(tmp_path / "c")]) == 2
    assert "roles[1] has 2 entries for 3 tile groups" in capsys.readouterr().err
    assert main(args[:-1] + [str(tmp_path / "d"), "--pp", "frozen"]) == 2
    assert "learn PP" in capsys.readouterr().err
    assert main(args[:-1] + [str(tmp_path / "e"), "--overlap", "2"]) == 2
    assert "overlap must lie in [0, 1]" in capsys.readouterr().err

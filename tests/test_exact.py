"""Every backend against the explicit torch model (docs/model.md §7), whole trajectories to 1e-10."""

import numpy as np
import pytest
from helpers import explicit_layout

import mimfast as mf
from mimfast.reference import ExplicitModel

G = mf.Group
C = mf.Cluster

SETTINGS = {
    "K1-exact-pp": (mf.Setting([C([G(1, 4), G(3, 2)])], gamma=0.5), 3.0, None),
    "three-groups-z": (
        mf.Setting([C([G(1, 3, z=1.0), G(2, 2, z=0.6), G(1, 2, z=1.7)])], gamma=0.5),
        2.0,
        None,
    ),
    "K2-frozen": (
        mf.Setting([C([G(1, 4), G(3, 2)], weight=1.0), C([G(2, 3, z=0.8), G(2, 2)], weight=2.0)],
                   gamma=0.5),
        4.0,
        7,
    ),
    "K3-frozen": (
        mf.Setting([C([G(1, 4), G(2, 2)], weight=1.0), C([G(2, 4, z=1.3)], weight=0.5),
                    C([G(1, 2), G(3, 2, z=0.7)], weight=1.5)], masked=3),
        4.0,
        11,
    ),
    "one-patch-areas": (mf.Setting([C([G(1, 3), G(4, 1)])], gamma=0.5), 3.0, None),
    "gamma-0.3": (mf.Setting([C([G(1, 5), G(2, 2, z=1.2)])], gamma=0.3), 3.0, None),
    # edges where the unmasked draw is certain (u = P - 1 keys from P - 1 positions: p = 1)
    "masked-1": (mf.Setting([C([G(1, 3), G(2, 2, z=1.3)])], masked=1), 3.0, None),
    "tiny-gamma": (mf.Setting([C([G(1, 4), G(3, 2)])], gamma=0.05), 3.0, None),
    "P-2-one-area": (mf.Setting([C([G(1, 2, z=1.5)])]), 3.0, None),
    "P-2-two-areas": (mf.Setting([C([G(2, 1)])]), 3.0, None),
    "P-2-K2": (mf.Setting([C([G(1, 2)]), C([G(2, 1, z=0.7)], weight=3.0)]), 3.0, 1),
}
STEPS = 6


@pytest.fixture(scope="module", params=sorted(SETTINGS))
def case(request):
    setting, eta, seed = SETTINGS[request.param]
    labels, area_group, z = explicit_layout(setting, seed)
    model = ExplicitModel(labels, z, setting.masked, weights=[c.weight for c in setting.clusters],
                          learn_pp=setting.pp == "exact")
    ref = model.run(eta, STEPS, record_every=1)
    return setting, eta, labels, area_group, ref


def category(k, p, n, labels, area_group):
    """Category index (0 own, 1 + g) of area n seen from position p in cluster k."""
    return 0 if labels[k][p] == n else 1 + area_group[k][n]


def test_trajectory_matches_explicit_model(case, backend):
    setting, eta, labels, area_group, ref = case
    r = mf.simulate(setting, eta=eta, steps=STEPS, record_every=1, backend=backend)
    np.testing.assert_array_equal(r.steps, ref["steps"])
    close = {"rtol": 1e-10, "atol": 1e-12}
    np.testing.assert_allclose(r.loss, ref["loss"], **close)
    assert np.ptp(ref["loss"]) > 1e-3, "the run must move for the comparison to mean something"
    for k in range(setting.K):
        P, n_areas = ref["fp"][k].shape[1:]
        for p in range(P):
            h = area_group[k][labels[k][p]]
            np.testing.assert_allclose(r.patch_loss(k, h), ref["patch_loss"][:, k, p], **close)
            att = {}
            for n in range(n_areas):
                cat = category(k, p, n, labels, area_group)
                key = "own" if cat == 0 else cat - 1
                np.testing.assert_allclose(r.fp(k, h, key), ref["fp"][k][:, p, n], **close)
                att[key] = att.get(key, 0.0) + ref["attention"][k][:, p, n]
            for key, value in att.items():
                np.testing.assert_allclose(r.attention(k, h, key), value, **close)
    if setting.pp == "exact":
        P = ref["pp"].shape[1]
        for p in range(P):
            h = area_group[0][labels[0][p]]
            for q in range(P):
                if q == p:
                    key = "self"
                elif labels[0][q] == labels[0][p]:
                    key = "own"
                else:
                    key = int(area_group[0][labels[0][q]])
                np.testing.assert_allclose(r.pp(h, key), ref["pp"][:, p, q], **close)
        assert np.max(np.abs(ref["pp"])) > 1e-4, "PP must move for the comparison to mean something"

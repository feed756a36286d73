"""Tests of the explicit PyTorch reference (docs/model.md §7)."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mimfast.reference import ExplicitModel


def two_cluster_model(**kw):
    labels = [[0, 0, 1], [0, 1, 2]]
    z = [[1.0, 2.0], [1.0, 1.0, 1.0]]
    return ExplicitModel(labels, z, masked=1, weights=[1.0, 3.0], **kw)


def random_q(model, scale=0.7, seed=1):
    rng = np.random.default_rng(seed)
    return torch.from_numpy(scale * rng.standard_normal((model.d, model.d)))


def brute_force(labels, z, masked, weights, Q):
    """Loss, patch loss and area attention by plain loops over clusters, masks and positions."""
    labels = [np.asarray(lab) for lab in labels]
    P, K = labels[0].size, len(labels)
    n_areas = [lab.max() + 1 for lab in labels]
    d = P + sum(n_areas)
    offsets = P + np.cumsum([0] + n_areas[:-1])
    pi = np.asarray(weights, dtype=float) / np.sum(weights)
    masks = list(itertools.combinations(range(P), masked))
    loss = 0.0
    patch = np.zeros((K, P))
    attention = [np.zeros((P, n)) for n in n_areas]
    for k in range(K):
        x = np.zeros((P, d))
        for p in range(P):
            x[p, offsets[k] + labels[k][p]] = z[k][labels[k][p]]
        for mask in masks:
            x_tilde = x.copy()
            x_tilde[list(mask)] = 0.0
            h = x_tilde + np.eye(P, d)
            for p in mask:
                logits = np.array([h[p] @ Q @ h[q] for q in range(P)])
                a = np.exp(logits - logits.max())
                a /= a.sum()
                F = sum(a[q] * x_tilde[q] for q in range(P))
                ell = 0.5 * np.sum((F - x[p]) ** 2)
                loss += pi[k] * ell / len(masks)
                patch[k, p] += ell
                for q in range(P):
                    if q not in mask:
                        attention[k][p, labels[k][q]] += a[q]
    per_position = len(masks) * masked / P
    return loss, patch / per_position, [att / per_position for att in attention]


def test_loss_at_zero_by_hand():
    # Q = 0: every query attends 1/3 to each of the 3 keys; m = 1.
    # Cluster 0 (x = v0, v0, 2 v1): masking p = 0 or 1 gives 1/2 |(v0 + 2 v1)/3 - v0|^2 = 4/9,
    #   masking p = 2 gives 1/2 |2 v0/3 - 2 v1|^2 = 20/9; mean 28/27.
    # Cluster 1 (three unit features): 1/2 (1 + 2/9) = 11/18 for every p.
    # Weights 1:3 give L = 28/27 / 4 + 3 * 11/18 / 4 = 155/216.
    model = two_cluster_model()
    assert model.loss() == pytest.approx(155 / 216, rel=1e-14)
    np.testing.assert_allclose(
        model.patch_loss(), [[4 / 9, 4 / 9, 20 / 9], [11 / 18] * 3], rtol=1e-14
    )
    attention = model.attention()
    np.testing.assert_allclose(
        attention[0], [[1 / 3, 1 / 3], [1 / 3, 1 / 3], [2 / 3, 0.0]], rtol=1e-14
    )
    np.testing.assert_allclose(
        attention[1],
        [[0, 1 / 3, 1 / 3], [1 / 3, 0, 1 / 3], [1 / 3, 1 / 3, 0]],
        atol=1e-15,
    )


def test_matches_loop_brute_force_at_random_q():
    labels = [[0, 0, 1, 1, 2], [1, 0, 0, 2, 0]]
    z = [[1.0, 0.5, 2.0], [1.5, 0.7, 1.1]]
    model = ExplicitModel(labels, z, masked=2, weights=[0.3, 0.7])
    model.Q = random_q(model)
    loss, patch, attention = brute_force(labels, z, 2, [0.3, 0.7], model.Q.numpy())
    assert model.loss() == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(model.patch_loss(), patch, rtol=1e-13)
    for mine, theirs in zip(model.attention(), attention):
        np.testing.assert_allclose(mine, theirs, rtol=1e-12, atol=1e-15)


def test_loss_is_weighted_sum_of_patch_losses():
    model = ExplicitModel.from_sizes(
        [(1.0, [(1, 2, 1.0), (2, 2, 0.5)]), (2.0, [(3, 2, 1.3)])],
        masked=3,
        shuffle=True,
    )
    model.Q = random_q(model, seed=4)
    expected = np.sum(
        model.weights[:, None] * model.masked / model.P * model.patch_loss()
    )
    assert model.loss() == pytest.approx(expected, rel=1e-13)


def test_gradient_matches_finite_difference():
    model = ExplicitModel(
        [[0, 0, 1, 2], [0, 1, 1, 0]],
        [[1.0, 1.5, 0.8], [1.2, 0.6]],
        masked=2,
        weights=[2.0, 1.0],
    )
    Q0 = random_q(model, seed=2)
    model.Q = Q0
    grad = model.gradient().numpy()
    h = 1e-5
    numeric = np.zeros_like(grad)
    for i in range(model.d):
        for j in range(model.d):
            shift = torch.zeros_like(Q0)
            shift[i, j] = h
            model.Q = Q0 + shift
            up = model.loss()
            model.Q = Q0 - shift
            numeric[i, j] = (up - model.loss()) / (2 * h)
    assert np.abs(grad).max() > 1e-2
    np.testing.assert_allclose(grad, numeric, atol=1e-9)


def test_gradient_structure():
    model = two_cluster_model()
    model.Q = random_q(model, seed=3)
    grad = model.gradient().numpy()
    np.testing.assert_array_equal(grad[model.P :], 0.0)
    np.testing.assert_allclose(grad[:, : model.P].sum(axis=1), 0.0, atol=1e-14)


def test_loss_decreases_and_attention_concentrates():
    model = ExplicitModel.from_sizes([(1.0, [(1, 4, 1.0), (3, 2, 1.0)])], masked=5)
    losses = [model.loss()]
    for _ in range(10):
        model.step(5.0)
        losses.append(model.loss())
    assert np.all(np.diff(losses) < 0)
    own = np.array(
        [att[p, n] for att in model.attention() for p, n in enumerate(model._labels[0])]
    )
    assert own.min() > 4 / 10


def test_frozen_pp_stays_zero():
    model = ExplicitModel.from_sizes(
        [(1.0, [(1, 3, 1.0), (2, 2, 1.0)]), (1.0, [(7, 1, 1.0)])],
        masked=3,
        shuffle=True,
        learn_pp=False,
    )
    for _ in range(5):
        model.step(2.0)
    assert np.all(model.pp() == 0.0)
    assert np.abs(model.fp()[0]).max() > 1e-3
    assert torch.all(model.gradient()[: model.P, : model.P] == 0.0)

    learned = ExplicitModel.from_sizes([(1.0, [(1, 3, 1.0), (2, 2, 1.0)])], masked=3)
    learned.step(2.0)
    assert np.abs(learned.pp()).max() > 0


def test_monte_carlo_approaches_exact():
    labels = [[0, 0, 1, 1, 2, 2], [0, 1, 2, 0, 1, 2]]
    z = [[1.0, 1.0, 2.0], [1.0, 0.5, 1.0]]
    exact = ExplicitModel(labels, z, masked=3)
    sampled = ExplicitModel(labels, z, masked=3, masks=20_000, seed=5)
    Q = random_q(exact, seed=6)
    exact.Q = Q
    sampled.Q = Q
    assert sampled.n_masks == 20_000
    assert sampled.loss() == pytest.approx(exact.loss(), rel=0.02)
    np.testing.assert_allclose(sampled.patch_loss(), exact.patch_loss(), rtol=0.05)
    again = ExplicitModel(labels, z, masked=3, masks=20_000, seed=5)
    again.Q = Q
    assert again.loss() == sampled.loss()


def test_monte_carlo_masks_are_valid_and_fixed():
    model = ExplicitModel([[0, 0, 1, 1, 1]], [[1.0, 1.0]], masked=2, masks=50, seed=1)
    masks = model._masks
    assert masks.shape == (50, 5)
    assert torch.all(masks.sum(dim=1) == 2)
    before = model.loss()
    model.step(1.0)
    model.reset()
    assert torch.equal(model._masks, masks)
    assert model.loss() == before


def test_attention_is_a_sub_probability():
    model = ExplicitModel.from_sizes(
        [(1.0, [(1, 3, 1.0), (2, 2, 1.5)]), (1.0, [(7, 1, 1.0)])],
        masked=4,
        shuffle=True,
    )
    model.Q = random_q(model, scale=2.0, seed=7)
    for att in model.attention():
        assert np.all(att >= 0)
        assert np.all(att.sum(axis=1) <= 1 + 1e-14)


def test_run_records():
    model = ExplicitModel.from_sizes([(1.0, [(1, 2, 1.0), (2, 2, 1.0)])], masked=3)
    result = model.run(eta=3.0, steps=7, record_every=3)
    np.testing.assert_array_equal(result["steps"], [0, 3, 6, 7])
    T, P, n = 4, model.P, model.n_areas[0]
    assert result["loss"].shape == (T,)
    assert result["fp"][0].shape == (T, P, n)
    assert result["pp"].shape == (T, P, P)
    assert result["attention"][0].shape == (T, P, n)
    assert result["patch_loss"].shape == (T, 1, P)

    manual = ExplicitModel.from_sizes([(1.0, [(1, 2, 1.0), (2, 2, 1.0)])], masked=3)
    for t in range(7):
        if t in (0, 3, 6):
            i = [0, 3, 6].index(t)
            assert result["loss"][i] == pytest.approx(manual.loss(), rel=1e-14)
            np.testing.assert_allclose(
                result["attention"][0][i], manual.attention()[0], rtol=1e-13
            )
            np.testing.assert_allclose(
                result["patch_loss"][i], manual.patch_loss(), rtol=1e-13
            )
        manual.step(3.0)
    np.testing.assert_allclose(
        result["fp"][0][-1], manual.fp()[0], rtol=1e-13, atol=1e-16
    )
    np.testing.assert_allclose(result["pp"][-1], manual.pp(), rtol=1e-13, atol=1e-16)
    np.testing.assert_array_equal(result["fp"][0][0], 0.0)

    fresh = ExplicitModel.from_sizes([(1.0, [(2, 2, 1.0)])], masked=2)
    np.testing.assert_array_equal(fresh.run(1.0, 6, record_every=3)["steps"], [0, 3, 6])
    np.testing.assert_array_equal(fresh.run(1.0, 0)["steps"], [0])


def test_from_sizes_layout():
    model = ExplicitModel.from_sizes([(1.0, [(1, 3, 2.0), (2, 2)])], masked=2)
    np.testing.assert_array_equal(model._labels[0], [0, 0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(model._z[0], [2.0, 1.0, 1.0])
    assert (model.P, model.K, model.d) == (7, 1, 10)

    groups = [(1, 3, 1.0), (2, 2, 1.0)]
    shuffled = ExplicitModel.from_sizes(
        [(1.0, groups)] * 3, masked=2, shuffle=True, seed=3
    )
    assert len({tuple(lab) for lab in shuffled._labels}) == 3
    same = ExplicitModel.from_sizes([(1.0, groups)] * 3, masked=2, shuffle=True, seed=3)
    for a, b in zip(shuffled._labels, same._labels):
        np.testing.assert_array_equal(a, b)

    cluster = SimpleNamespace(
        weight=2.0,
        groups=[
            SimpleNamespace(areas=1, size=3, z=1.0),
            SimpleNamespace(areas=2, size=2, z=1.0),
        ],
    )
    ducked = ExplicitModel.from_sizes([cluster], masked=2)
    np.testing.assert_array_equal(ducked._labels[0], model._labels[0])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"labels": [[0, 0, 1], [0, 1]]}, ValueError, "different lengths"),
        ({"labels": [[0, 2, 2], [0, 1, 2]]}, ValueError, "every area used"),
        ({"labels": [[0.0, 0.0, 1.0], [0, 1, 2]]}, TypeError, "integers"),
        ({"z": [[1.0, -1.0], [1.0, 1.0, 1.0]]}, ValueError, "positive"),
        ({"z": [[1.0, 0.0], [1.0, 1.0, 1.0]]}, ValueError, "positive"),
        ({"z": [[1.0, np.inf], [1.0, 1.0, 1.0]]}, ValueError, "finite"),
        ({"z": [[1.0, np.nan], [1.0, 1.0, 1.0]]}, ValueError, "finite"),
        ({"z": [[1.0], [1.0, 1.0, 1.0]]}, ValueError, "one entry per area"),
        ({"masked": 0}, ValueError, "masked"),
        ({"masked": 3}, ValueError, "masked"),
        ({"masked": 1.0}, TypeError, "masked"),
        ({"weights": [1.0, 0.0]}, ValueError, "weights"),
        ({"weights": [1.0, -2.0]}, ValueError, "weights"),
        ({"weights": [1.0]}, ValueError, "weights"),
        ({"masks": "some"}, ValueError, "masks"),
        ({"masks": 0}, ValueError, "masks"),
        ({"masks": 1.5}, TypeError, "masks"),
    ],
)
def test_bad_inputs(kwargs, error, message):
    args = {
        "labels": [[0, 0, 1], [0, 1, 2]],
        "z": [[1.0, 2.0], [1.0, 1.0, 1.0]],
        "masked": 1,
    }
    args.update(kwargs)
    with pytest.raises(error, match=message):
        ExplicitModel(**args)


def test_too_many_masks_asks_for_monte_carlo():
    labels = [np.arange(22) % 4]
    with pytest.raises(ValueError, match="int"):
        ExplicitModel(labels, [[1.0] * 4], masked=11)
    model = ExplicitModel(labels, [[1.0] * 4], masked=11, masks=100)
    assert model.n_masks == 100


def test_from_sizes_rejects_mismatched_clusters():
    with pytest.raises(ValueError, match="different numbers of positions"):
        ExplicitModel.from_sizes([(1.0, [(2, 2, 1.0)]), (1.0, [(5, 1, 1.0)])], masked=2)


def test_chunking_does_not_change_results(monkeypatch):
    from mimfast.reference import explicit

    model = ExplicitModel.from_sizes(
        [(1.0, [(1, 2, 1.0), (2, 2, 0.8)]), (1.0, [(6, 1, 1.2)])],
        masked=3,
        shuffle=True,
    )
    model.Q = random_q(model, seed=8)
    whole = (model.loss(), model.gradient(), model.patch_loss(), model.attention())
    monkeypatch.setattr(explicit, "_CHUNK_ELEMENTS", 1)
    chunked = (model.loss(), model.gradient(), model.patch_loss(), model.attention())
    assert chunked[0] == pytest.approx(whole[0], rel=1e-14)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-13, atol=1e-16)
    np.testing.assert_allclose(chunked[2], whole[2], rtol=1e-13)
    for a, b in zip(chunked[3], whole[3]):
        np.testing.assert_allclose(a, b, rtol=1e-13)

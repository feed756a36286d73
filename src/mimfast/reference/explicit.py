"""Explicit brute-force reference of the masked-image-modeling model (docs/model.md §1, §7).

The transformer is built literally: one-hot embeddings, a dense ``d x d`` float64
matrix ``Q``, an explicit partition of the positions for every cluster, every mask
enumerated (or a fixed Monte Carlo sample of masks), the loss evaluated from its
definition and the gradient obtained by autograd. Nothing here uses the reduced
coordinates or the hypergeometric sums of the fast backends, so it can serve as
their ground truth.
"""

from __future__ import annotations

import itertools
import math
import numbers

import numpy as np

from .._extras import require

torch = require("torch", "the explicit reference model (mimfast.reference)")

__all__ = ["MAX_ENUMERATED_MASKS", "ExplicitModel"]

MAX_ENUMERATED_MASKS = 200_000
"""Largest number of masks ``C(P, m)`` that ``masks="all"`` will enumerate."""

_CHUNK_ELEMENTS = 1 << 18
_DTYPE = torch.float64


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _positive_finite(values, name):
    arr = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {values!r}")
    if not np.all(arr > 0):
        raise ValueError(f"{name} must be positive, got {values!r}")
    return arr


class ExplicitModel:
    """Explicit transformer of docs/model.md §1 with a dense float64 ``Q`` trained by GD.

    The embedding space has dimension ``d = P + sum_k n_k``: position ``p`` is the
    unit vector ``p`` and the feature of area ``n`` of cluster ``k`` is the unit
    vector ``P + offset_k + n``. A sample draws cluster ``k`` with probability
    ``pi_k``; every position ``p`` in area ``n`` gets content ``z[k][n] v_{k,n}``.
    A mask ``M`` is a uniformly random set of exactly ``masked`` positions whose
    content is zeroed. Tokens are ``h_p = x~_p + e_p``, logits ``h_p^T Q h_q``
    (over all keys ``q``, ``p`` itself and masked keys included), attention is the
    softmax over ``q`` and the output ``F_p = sum_q a_pq x~_q``. The loss is
    ``L(Q) = E_{k,M}[sum_{p in M} 1/2 ||F_p - x_p||^2]``.

    Parameters
    ----------
    labels : sequence of array_like of int
        ``K`` integer arrays of common length ``P``; ``labels[k][p]`` is the area
        of position ``p`` in cluster ``k``. The areas of cluster ``k`` must be
        numbered ``0 .. n_k - 1`` and every number must be used.
    z : sequence of array_like of float
        ``K`` arrays; ``z[k][n]`` is the (positive, finite) latent of area ``n``
        of cluster ``k``, so ``len(z[k]) == n_k``.
    masked : int
        Number ``m`` of masked positions, ``1 <= m <= P - 1``.
    weights : array_like of float, optional
        ``K`` positive prior weights of the clusters, normalised to sum to one.
        Uniform by default.
    learn_pp : bool, optional
        If False the position-position block (rows ``e_p``, columns ``e_q``) of
        the gradient is zeroed, so that block of ``Q`` stays at its initial zero
        ("frozen PP"). Default True.
    masks : {"all"} or int, optional
        ``"all"`` (default) enumerates every mask of size ``m``; this raises
        ValueError when ``C(P, m)`` exceeds ``MAX_ENUMERATED_MASKS``. A positive
        int ``S`` draws ``S`` uniformly random masks once (Monte Carlo); they
        stay fixed for the lifetime of the model.
    seed : int, optional
        Seed of the ``torch.Generator`` that draws Monte Carlo masks. Default 0.

    Attributes
    ----------
    P : int
        Number of positions (patches).
    K : int
        Number of clusters.
    d : int
        Embedding dimension ``P + sum_k n_k``.
    masked : int
        Number of masked positions ``m``.
    n_areas : list of int
        Number of areas ``n_k`` of each cluster.
    weights : numpy.ndarray
        Normalised cluster weights ``pi``, shape ``(K,)``.
    learn_pp : bool
        Whether the position-position block is trained.
    n_masks : int
        Number of masks averaged over (``C(P, m)`` when enumerating).
    Q : torch.Tensor
        Current ``(d, d)`` float64 attention matrix; zero at construction.
    """

    def __init__(
        self, labels, z, masked, weights=None, learn_pp=True, masks="all", seed=0
    ):
        if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__"):
            raise TypeError("labels must be a sequence of K integer arrays")
        if len(labels) == 0:
            raise ValueError("labels must contain at least one cluster")
        label_arrays = []
        for k, lab in enumerate(labels):
            arr = np.asarray(lab)
            if arr.ndim != 1:
                raise ValueError(
                    f"labels[{k}] must be one-dimensional, got shape {arr.shape}"
                )
            if arr.size and arr.dtype.kind not in "iu":
                raise TypeError(
                    f"labels[{k}] must hold integers, got dtype {arr.dtype}"
                )
            label_arrays.append(arr.astype(np.int64))
        lengths = {arr.size for arr in label_arrays}
        if len(lengths) != 1:
            raise ValueError(
                f"labels have different lengths {sorted(lengths)}; all clusters need the same P"
            )
        P = lengths.pop()
        if P < 2:
            raise ValueError(f"labels must cover at least 2 positions, got P = {P}")

        n_areas = []
        for k, arr in enumerate(label_arrays):
            used = np.unique(arr)
            if used[0] != 0 or used[-1] != used.size - 1:
                raise ValueError(
                    f"labels[{k}] must number its areas 0..n-1 with every area used, got areas {used.tolist()}"
                )
            n_areas.append(int(used.size))
        K = len(label_arrays)

        if isinstance(z, (str, bytes)) or not hasattr(z, "__len__") or len(z) != K:
            raise ValueError(f"z must be a sequence of K = {K} arrays, one per cluster")
        z_arrays = []
        for k in range(K):
            zk = np.atleast_1d(np.asarray(z[k], dtype=np.float64))
            if zk.shape != (n_areas[k],):
                raise ValueError(
                    f"z[{k}] must have one entry per area ({n_areas[k]}), got shape {zk.shape}"
                )
            z_arrays.append(_positive_finite(zk, f"z[{k}]"))

        if not _is_int(masked):
            raise TypeError(f"masked must be an int, got {masked!r}")
        if not 1 <= masked <= P - 1:
            raise ValueError(
                f"masked must satisfy 1 <= masked <= P - 1 = {P - 1}, got {masked}"
            )

        if weights is None:
            pi = np.full(K, 1.0 / K)
        else:
            w = np.atleast_1d(np.asarray(weights, dtype=np.float64))
            if w.shape != (K,):
                raise ValueError(
                    f"weights must have K = {K} entries, got shape {w.shape}"
                )
            w = _positive_finite(w, "weights")
            pi = w / w.sum()

        if not isinstance(learn_pp, (bool, np.bool_)):
            raise TypeError(f"learn_pp must be a bool, got {learn_pp!r}")
        if not _is_int(seed):
            raise TypeError(f"seed must be an int, got {seed!r}")

        self.P = int(P)
        self.K = K
        self.n_areas = n_areas
        self.d = self.P + sum(n_areas)
        self.masked = int(masked)
        self.weights = pi
        self.learn_pp = bool(learn_pp)
        self._labels = label_arrays
        self._z = z_arrays
        self._offsets = [self.P + int(o) for o in np.cumsum([0] + n_areas[:-1])]
        self._masks = self._build_masks(masks, int(seed))
        self.n_masks = self._masks.shape[0]
        self._contents = [self._content(k) for k in range(K)]
        self._area_onehots = [
            torch.nn.functional.one_hot(torch.from_numpy(lab), n).to(_DTYPE)
            for lab, n in zip(label_arrays, n_areas)
        ]
        self.Q = torch.zeros(self.d, self.d, dtype=_DTYPE)

    @classmethod
    def from_sizes(cls, clusters, masked, shuffle=False, seed=0, **kw):
        """Build a model from area groups as in docs/model.md §3.

        Parameters
        ----------
        clusters : sequence
            One entry per cluster, either ``(weight, groups)`` with ``groups`` a
            sequence of ``(areas, size, z)`` (or ``(areas, size)``, ``z = 1``)
            tuples, or an object with ``.weight`` and ``.groups`` whose groups
            have ``.areas``, ``.size`` and ``.z``. Group ``g`` contributes
            ``areas`` areas of ``size`` positions each, all with latent ``z``.
            Every cluster must cover the same number of positions ``P``.
        masked : int
            Number of masked positions ``m``.
        shuffle : bool, optional
            If False (default) the areas are laid out contiguously in group order,
            identically for every cluster. If True each cluster's positions are
            relabelled by its own random permutation (NumPy generator seeded by
            ``seed``), giving ``K`` different partitions.
        seed : int, optional
            Seed of the permutations; also passed to the constructor as the seed
            of Monte Carlo masks.
        **kw
            Further keyword arguments of the constructor (``learn_pp``, ``masks``).

        Returns
        -------
        ExplicitModel
            The model with the described partitions, latents and weights.
        """
        for key in ("labels", "z", "weights"):
            if key in kw:
                raise TypeError(
                    f"from_sizes derives {key!r} from clusters; do not pass it"
                )
        if len(clusters) == 0:
            raise ValueError("clusters must contain at least one cluster")
        rng = np.random.default_rng(seed)
        labels, zs, weights = [], [], []
        for k, cluster in enumerate(clusters):
            if hasattr(cluster, "groups"):
                weight, groups = cluster.weight, cluster.groups
                groups = [(g.areas, g.size, g.z) for g in groups]
            else:
                weight, groups = cluster
            lab, zk = [], []
            for group in groups:
                group = tuple(group)
                if len(group) not in (2, 3):
                    raise ValueError(
                        f"cluster {k}: a group must be (areas, size) or (areas, size, z), got {group!r}"
                    )
                areas, size, zg = group if len(group) == 3 else group + (1.0,)
                if not (_is_int(areas) and _is_int(size)) or areas < 1 or size < 1:
                    raise ValueError(
                        f"cluster {k}: group areas and size must be positive ints, got {group!r}"
                    )
                for _ in range(areas):
                    lab.extend([len(zk)] * size)
                    zk.append(zg)
            lab = np.asarray(lab, dtype=np.int64)
            if shuffle:
                lab = lab[rng.permutation(lab.size)]
            labels.append(lab)
            zs.append(np.asarray(zk, dtype=np.float64))
            weights.append(weight)
        sizes = {lab.size for lab in labels}
        if len(sizes) != 1:
            raise ValueError(
                f"clusters cover different numbers of positions {sorted(sizes)}"
            )
        return cls(labels, zs, masked, weights=weights, seed=seed, **kw)

    @property
    def Q(self):
        """torch.Tensor: the current ``(d, d)`` float64 attention matrix."""
        return self._Q

    @Q.setter
    def Q(self, value):
        value = torch.as_tensor(value, dtype=_DTYPE).detach().clone()
        if value.shape != (self.d, self.d):
            raise ValueError(
                f"Q must have shape ({self.d}, {self.d}), got {tuple(value.shape)}"
            )
        self._Q = value

    def reset(self):
        """Set ``Q`` back to zero (the initialisation)."""
        self.Q = torch.zeros(self.d, self.d, dtype=_DTYPE)

    def loss(self):
        """Population loss at the current ``Q``.

        Returns
        -------
        float
            ``L(Q) = E_{k,M}[sum_{p in M} 1/2 ||F_p - x_p||^2]``, averaged over the
            enumerated (or sampled) masks.
        """
        return self._evaluate(gradient=False, observables=False)["loss"]

    def gradient(self):
        """Gradient of the loss at the current ``Q``.

        Returns
        -------
        torch.Tensor
            ``(d, d)`` float64 tensor ``dL/dQ`` computed by autograd; its
            position-position block is zero when ``learn_pp`` is False.
        """
        return self._evaluate(gradient=True, observables=False)["gradient"]

    def step(self, eta):
        """Take one gradient-descent step ``Q <- Q - eta * gradient()``.

        Parameters
        ----------
        eta : float
            Learning rate.
        """
        self.Q = self.Q - float(eta) * self.gradient()

    def fp(self):
        """Feature-position correlations.

        Returns
        -------
        list of numpy.ndarray
            Per cluster ``k`` a ``(P, n_k)`` array with entry ``[p, n] = e_p^T Q v_{k,n}``.
        """
        return [
            self.Q[: self.P, off : off + n].numpy().copy()
            for off, n in zip(self._offsets, self.n_areas)
        ]

    def pp(self):
        """Position-position correlations.

        Returns
        -------
        numpy.ndarray
            ``(P, P)`` array with entry ``[p, q] = e_p^T Q e_q``.
        """
        return self.Q[: self.P, : self.P].numpy().copy()

    def attention(self):
        """Expected area attention of a masked query.

        Returns
        -------
        list of numpy.ndarray
            Per cluster ``k`` a ``(P, n_k)`` array with entry
            ``[p, n] = E[sum_{q in area n of cluster k, q not in M} a_pq | k, p in M]``.
            Entries of positions that no sampled mask contains are NaN.
        """
        return self._evaluate(gradient=False, observables=True)["attention"]

    def patch_loss(self):
        """Expected loss of each masked query.

        Returns
        -------
        numpy.ndarray
            ``(K, P)`` array with entry ``[k, p] = E[1/2 ||F_p - x_p||^2 | k, p in M]``.
            Entries of positions that no sampled mask contains are NaN.
        """
        return self._evaluate(gradient=False, observables=True)["patch_loss"]

    def run(self, eta, steps, record_every=1):
        """Run gradient descent and record the trajectory.

        Training continues from the current ``Q`` (zero for a fresh model).
        Recorded step ``t`` is the state after ``t`` updates made by this call:
        step 0, every multiple of ``record_every`` and the last step ``steps``.

        Parameters
        ----------
        eta : float
            Learning rate.
        steps : int
            Number of GD updates, ``>= 0``.
        record_every : int, optional
            Recording interval, ``>= 1``. Default 1.

        Returns
        -------
        dict
            ``"steps"`` ``(T,)`` int array; ``"loss"`` ``(T,)``; ``"fp"`` list per
            cluster of ``(T, P, n_k)``; ``"pp"`` ``(T, P, P)``; ``"attention"``
            list per cluster of ``(T, P, n_k)``; ``"patch_loss"`` ``(T, K, P)``.
        """
        if not _is_int(steps) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if not _is_int(record_every) or record_every < 1:
            raise ValueError(
                f"record_every must be a positive int, got {record_every!r}"
            )
        eta = float(eta)
        records = {
            "steps": [],
            "loss": [],
            "fp": [],
            "pp": [],
            "attention": [],
            "patch_loss": [],
        }
        for t in range(steps + 1):
            record = t % record_every == 0 or t == steps
            result = self._evaluate(gradient=t < steps, observables=record)
            if record:
                records["steps"].append(t)
                records["loss"].append(result["loss"])
                records["fp"].append(self.fp())
                records["pp"].append(self.pp())
                records["attention"].append(result["attention"])
                records["patch_loss"].append(result["patch_loss"])
            if t < steps:
                self.Q = self.Q - eta * result["gradient"]
        return {
            "steps": np.asarray(records["steps"], dtype=np.int64),
            "loss": np.asarray(records["loss"]),
            "fp": [np.stack([r[k] for r in records["fp"]]) for k in range(self.K)],
            "pp": np.stack(records["pp"]),
            "attention": [
                np.stack([r[k] for r in records["attention"]]) for k in range(self.K)
            ],
            "patch_loss": np.stack(records["patch_loss"]),
        }

    def _build_masks(self, masks, seed):
        P, m = self.P, self.masked
        if isinstance(masks, str):
            if masks != "all":
                raise ValueError(
                    f"masks must be 'all' or a positive int, got {masks!r}"
                )
            count = math.comb(P, m)
            if count > MAX_ENUMERATED_MASKS:
                raise ValueError(
                    f"masks='all' would enumerate C({P}, {m}) = {count} masks "
                    f"(limit {MAX_ENUMERATED_MASKS}); pass an int number of Monte Carlo masks instead"
                )
            chosen = torch.tensor(
                list(itertools.combinations(range(P), m)), dtype=torch.int64
            )
        elif _is_int(masks):
            if masks < 1:
                raise ValueError(
                    f"masks must be 'all' or a positive int, got {masks!r}"
                )
            generator = torch.Generator().manual_seed(seed)
            keys = torch.rand(int(masks), P, generator=generator, dtype=_DTYPE)
            chosen = keys.argsort(dim=1)[:, :m]
        else:
            raise TypeError(f"masks must be 'all' or a positive int, got {masks!r}")
        indicator = torch.zeros(chosen.shape[0], P, dtype=_DTYPE)
        indicator.scatter_(1, chosen, 1.0)
        return indicator

    def _content(self, k):
        x = torch.zeros(self.P, self.d, dtype=_DTYPE)
        columns = torch.from_numpy(self._offsets[k] + self._labels[k])
        values = torch.from_numpy(self._z[k][self._labels[k]])
        x[torch.arange(self.P), columns] = values
        return x

    def _evaluate(self, gradient, observables):
        P, S = self.P, self.n_masks
        Q = self.Q.clone().requires_grad_(gradient)
        positions = torch.eye(P, self.d, dtype=_DTYPE)
        chunk = max(1, _CHUNK_ELEMENTS // (P * max(P, self.d)))
        total_loss = 0.0
        total_grad = torch.zeros_like(self.Q)
        mask_counts = self._masks.sum(dim=0)
        patch_sums = torch.zeros(self.K, P, dtype=_DTYPE)
        attention_sums = [torch.zeros(P, n, dtype=_DTYPE) for n in self.n_areas]
        for k in range(self.K):
            x = self._contents[k]
            for start in range(0, S, chunk):
                mask = self._masks[start : start + chunk]
                visible = 1.0 - mask
                x_tilde = x * visible[:, :, None]
                h = x_tilde + positions
                with torch.set_grad_enabled(gradient):
                    logits = h @ Q @ h.transpose(1, 2)
                    attn = torch.softmax(logits, dim=-1)
                    out = attn @ x_tilde
                    patch = 0.5 * ((out - x) ** 2).sum(dim=-1)
                    chunk_loss = (mask * patch).sum() * (float(self.weights[k]) / S)
                if gradient:
                    total_grad += torch.autograd.grad(chunk_loss, Q)[0]
                total_loss += chunk_loss.item()
                if observables:
                    attn = attn.detach()
                    patch = patch.detach()
                    area_attention = (attn * visible[:, None, :]) @ self._area_onehots[
                        k
                    ]
                    attention_sums[k] += (mask[:, :, None] * area_attention).sum(dim=0)
                    patch_sums[k] += (mask * patch).sum(dim=0)
        result = {"loss": total_loss}
        if gradient:
            if not self.learn_pp:
                total_grad[:P, :P] = 0.0
            result["gradient"] = total_grad
        if observables:
            with np.errstate(invalid="ignore", divide="ignore"):
                counts = mask_counts.numpy()
                result["patch_loss"] = patch_sums.numpy() / counts[None, :]
                result["attention"] = [
                    a.numpy() / counts[:, None] for a in attention_sums
                ]
        return result

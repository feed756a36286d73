"""What the paper's data looks like: patches, clusters, area groups, masking (docs/model.md §1, §3, §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np

__all__ = ["Group", "Cluster", "Setting"]


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def _positive_finite(value, name):
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


@dataclass(frozen=True)
class Group:
    """A group of equal areas inside one cluster.

    Parameters
    ----------
    areas : int
        Number of areas in the group (at least 1).
    size : int
        Patches per area (at least 1).
    z : float, default 1.0
        Latent scale of the group's features: every patch of an area carries ``z`` times the
        area's feature vector.
    """

    areas: int
    size: int
    z: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "areas", _positive_int(self.areas, "Group areas"))
        object.__setattr__(self, "size", _positive_int(self.size, "Group size"))
        object.__setattr__(self, "z", _positive_finite(self.z, "Group z"))

    @property
    def patches(self) -> int:
        """Number of patches covered by the group, ``areas * size``."""
        return self.areas * self.size


@dataclass(frozen=True)
class Cluster:
    """One cluster: a partition of the P positions into area groups, with a prior weight.

    Parameters
    ----------
    groups : sequence of Group
        The cluster's area groups. Their patches add up to P.
    weight : float, default 1.0
        Unnormalised prior weight of the cluster; the weights of a setting are normalised
        to the probabilities pi_k.
    """

    groups: tuple
    weight: float = 1.0

    def __post_init__(self):
        groups = tuple(self.groups)
        if not groups:
            raise ValueError("a Cluster needs at least one Group")
        for g in groups:
            if not isinstance(g, Group):
                raise TypeError(f"Cluster groups must be Group objects, got {type(g).__name__}")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "weight", _positive_finite(self.weight, "Cluster weight"))

    @property
    def P(self) -> int:
        """Number of patches the cluster partitions."""
        return sum(g.patches for g in self.groups)


class Setting:
    """The data model of docs/model.md §1: P patches, K clusters of area groups, masking ratio.

    Parameters
    ----------
    clusters : sequence of Cluster
        The K clusters. All must cover the same number of patches P.
    gamma : float, default 0.5
        Masking ratio in (0, 1); the number of masked patches is ``floor(gamma * P + 1/2)``.
        Ignored when ``masked`` is given.
    masked : int, optional
        Number of masked patches m, 1 <= m <= P - 1.
    pp : {None, "exact", "frozen"}
        Position-position correlations: ``"exact"`` learns them (K = 1 only), ``"frozen"``
        keeps them at zero. ``None`` picks exact for K = 1 and frozen otherwise.

    Attributes
    ----------
    clusters : tuple of Cluster
    P : int
    masked : int
    gamma : float
        ``masked / P``.
    pp : str
    weights : tuple of float
        Normalised cluster probabilities pi_k.
    """

    def __init__(self, clusters, gamma=None, masked=None, pp=None):
        if isinstance(clusters, Cluster):
            clusters = [clusters]
        clusters = tuple(clusters)
        if not clusters:
            raise ValueError("a Setting needs at least one Cluster")
        for c in clusters:
            if not isinstance(c, Cluster):
                raise TypeError(f"Setting clusters must be Cluster objects, got {type(c).__name__}")
        sizes = {c.P for c in clusters}
        if len(sizes) > 1:
            raise ValueError(f"clusters disagree on the number of patches P: {sorted(sizes)}")
        P = sizes.pop()
        if P < 2:
            raise ValueError(f"P must be at least 2 (one masked and one unmasked patch), got {P}")
        if masked is None:
            gamma = 0.5 if gamma is None else gamma
            if isinstance(gamma, bool) or not isinstance(gamma, Real):
                raise TypeError(f"gamma must be a real number, got {type(gamma).__name__}")
            if not 0.0 < gamma < 1.0:
                raise ValueError(f"gamma must lie in (0, 1), got {gamma}")
            masked = math.floor(gamma * P + 0.5)
            if not 1 <= masked <= P - 1:
                raise ValueError(
                    f"gamma = {gamma} masks {masked} of P = {P} patches; "
                    "masked must lie in [1, P - 1]"
                )
        else:
            if gamma is not None:
                raise ValueError("give either gamma or masked, not both")
            if isinstance(masked, bool) or not isinstance(masked, Integral):
                raise TypeError(f"masked must be an integer, got {type(masked).__name__}")
            if not 1 <= masked <= P - 1:
                raise ValueError(f"masked must lie in [1, P - 1] = [1, {P - 1}], got {masked}")
        if pp is None:
            pp = "exact" if len(clusters) == 1 else "frozen"
        if pp not in ("exact", "frozen"):
            raise ValueError(f"pp must be None, 'exact' or 'frozen', got {pp!r}")
        if pp == "exact" and len(clusters) > 1:
            raise ValueError(
                "pp='exact' needs K = 1: with several partitions the PP correlations are not "
                "reducible by symmetry (use pp='frozen', or mimfast.reference for explicit PP)"
            )
        self.clusters = clusters
        self.P = P
        self.masked = int(masked)
        self.pp = pp
        total = sum(c.weight for c in clusters)
        self.weights = tuple(c.weight / total for c in clusters)
        self.kappa = None
        self._z = {}

    @property
    def K(self) -> int:
        """Number of clusters."""
        return len(self.clusters)

    @property
    def gamma(self) -> float:
        """Fraction of masked patches, ``masked / P``."""
        return self.masked / self.P

    @property
    def unmasked(self) -> int:
        """Number of unmasked patches, ``P - masked``."""
        return self.P - self.masked

    def classes(self):
        """The query classes ``(k, h)``: cluster k and group h of that cluster."""
        return [(k, h) for k, c in enumerate(self.clusters) for h in range(len(c.groups))]

    def class_z(self, k, h):
        """Latents of the key categories of query class (k, h): its own area, then each group."""
        key = (k, h)
        if key not in self._z:
            groups = self.clusters[k].groups
            z = np.array([groups[h].z] + [g.z for g in groups])
            z.flags.writeable = False
            self._z[key] = z
        return self._z[key]

    @classmethod
    def paper(cls, P, kappa_c, kappa_s, gamma=0.5, K=1, z=1.0, pp=None):
        """The setting of the paper's Assumption 2.2 (docs/model.md §4).

        One global area and ``n_l`` local areas of ``c_l = max(2, round(P**kappa_s))``
        patches, ``n_l = round((P - P**kappa_c) / c_l)``; the global area takes the rest,
        ``c_g = P - n_l * c_l``. With K > 1 every cluster has these sizes over a different
        partition (which the reduced dynamics do not need to know).

        Parameters
        ----------
        P : int
            Number of patches.
        kappa_c, kappa_s : float
            Exponents of the global and local area sizes, in (0, 1).
        gamma : float, default 0.5
            Masking ratio.
        K : int, default 1
            Number of clusters (equal weights).
        z : float or (float, float), default 1.0
            Latent of the global and local features (one number for both).
        pp : {None, "exact", "frozen"}
            As in :class:`Setting`.

        Returns
        -------
        Setting
            Group 0 is the global area, group 1 the local areas.
        """
        P = _positive_int(P, "P")
        K = _positive_int(K, "K")
        for name, kappa in (("kappa_c", kappa_c), ("kappa_s", kappa_s)):
            if isinstance(kappa, bool) or not isinstance(kappa, Real):
                raise TypeError(f"{name} must be a real number, got {type(kappa).__name__}")
            if not 0.0 < kappa < 1.0:
                raise ValueError(f"{name} must lie in (0, 1), got {kappa}")
        z_global, z_local = (z, z) if isinstance(z, Real) else tuple(z)
        c_l = max(2, round(P**kappa_s))
        n_l = round((P - P**kappa_c) / c_l)
        if n_l < 1:
            raise ValueError(
                f"paper(P={P}, kappa_c={kappa_c}, kappa_s={kappa_s}) leaves no local area "
                f"(local size {c_l}, global size about {P**kappa_c:.0f})"
            )
        c_g = P - n_l * c_l
        if c_g < c_l:
            raise ValueError(
                f"paper(P={P}, kappa_c={kappa_c}, kappa_s={kappa_s}) gives a global area of "
                f"{c_g} patches, smaller than a local area of {c_l}"
            )
        groups = (Group(1, c_g, z_global), Group(n_l, c_l, z_local))
        setting = cls([Cluster(groups) for _ in range(K)], gamma=gamma, pp=pp)
        setting.kappa = (float(kappa_c), float(kappa_s))
        return setting

    def _paper_sizes(self):
        groups = self.clusters[0].groups
        if len(groups) != 2 or groups[0].areas != 1:
            raise ValueError(
                "the information gap needs the paper's shape: group 0 one global area, "
                "group 1 the local areas"
            )
        return groups[0].size, groups[1].size

    @property
    def delta(self) -> float:
        """Information gap Δ = (1 - κ_s) - 2(1 - κ_c) (docs/model.md §4).

        Nominal exponents for a setting made by :meth:`paper`, otherwise the exponents of the
        actual sizes (see :attr:`delta_actual`).
        """
        if self.kappa is None:
            return self.delta_actual
        kappa_c, kappa_s = self.kappa
        return (1 - kappa_s) - 2 * (1 - kappa_c)

    @property
    def delta_actual(self) -> float:
        """Information gap from the actual sizes, with κ = log_P(size)."""
        c_g, c_l = self._paper_sizes()
        kappa_c, kappa_s = math.log(c_g, self.P), math.log(c_l, self.P)
        return (1 - kappa_s) - 2 * (1 - kappa_c)

    def __eq__(self, other):
        if not isinstance(other, Setting):
            return NotImplemented
        return (self.clusters, self.masked, self.pp) == (other.clusters, other.masked, other.pp)

    def __repr__(self):
        clusters = ", ".join(
            "[" + ", ".join(f"{g.areas}x{g.size} z={g.z:g}" for g in c.groups) + f"] w={c.weight:g}"
            for c in self.clusters
        )
        return f"Setting(P={self.P}, masked={self.masked}, pp={self.pp!r}, clusters={clusters})"

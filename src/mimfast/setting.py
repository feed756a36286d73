"""What the paper's data looks like: patches, clusters, area groups, masking (docs/model.md §1, §3, §4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from numbers import Integral, Real

import numpy as np

__all__ = ["MAX_EXPLICIT_P", "MAX_K", "MAX_P", "MAX_TILED_K", "MAX_Z", "TILES", "Cluster", "Group",
           "Setting"]

#: Largest number of patches: counts and sizes stay exact in int64 arithmetic.
MAX_P = 2**62
#: Largest latent: z^2 and the loss (about z^2 / 2 per patch) stay finite in float64.
MAX_Z = 1e150
#: Most clusters :meth:`Setting.paper` makes.
MAX_K = 10**6
#: Most clusters :meth:`Setting.paper_clusters` makes.
MAX_TILED_K = 16
#: Largest P whose positions :meth:`Setting.explicit` and :meth:`State.expanded` lay out.
MAX_EXPLICIT_P = 4096
#: The role of a tile group each of whose tiles is an area of its own (:meth:`Setting.tiled`).
TILES = "tiles"


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def _real(value, name):
    """``value`` as a float; TypeError for non-reals, ValueError for what float cannot hold."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise ValueError(f"{name} = {value!r} is too large for a float") from None


def _positive_finite(value, name):
    value = _real(value, name)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive and finite, got {value}")
    return value


def _check_P(P):
    """``P`` unless it is more than :data:`MAX_P` (ValueError)."""
    if P > MAX_P:
        shown = P if P < 2**100 else f"a {P.bit_length()}-bit number"
        raise ValueError(f"P = {shown} is more than 2^62 = {MAX_P}, the largest P mimfast "
                         "handles")
    return P


def _round_half_even(x):
    """``round(x)`` of a Decimal, ties to even (as Python's ``round``), exactly."""
    return int(x.to_integral_value(rounding=ROUND_HALF_EVEN))


def _power(P, kappa):
    """P**kappa as a Decimal with 60 significant digits (enough to round it exactly)."""
    with localcontext() as ctx:
        ctx.prec = 60
        return Decimal(P) ** Decimal(kappa)


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
        z = _positive_finite(self.z, "Group z")
        if z > MAX_Z:
            raise ValueError(f"Group z = {z:g} is too large: the loss grows like z^2, which "
                             f"overflows double precision (z must be at most {MAX_Z:g})")
        object.__setattr__(self, "z", z)

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
    roles : sequence of (str or None), optional
        Per group, the name of the area that all the group's areas (tiles) belong to (groups
        with the same name form one area and share its latent), or None (each area of the
        group is an area of its own). A setting with roles is tiled: every cluster has the
        same groups' (areas, size), and PP is learned across clusters
        (:meth:`Setting.tiled` builds them).
    """

    groups: tuple
    weight: float = 1.0
    roles: tuple | None = None

    def __post_init__(self):
        groups = tuple(self.groups)
        if not groups:
            raise ValueError("a Cluster needs at least one Group")
        for g in groups:
            if not isinstance(g, Group):
                raise TypeError(f"Cluster groups must be Group objects, got {type(g).__name__}")
        object.__setattr__(self, "groups", groups)
        object.__setattr__(self, "weight", _positive_finite(self.weight, "Cluster weight"))
        if self.roles is not None:
            object.__setattr__(self, "roles", _check_roles(self.roles, groups))

    def named(self, h):
        """Named areas seen from a query of group h (docs/model.md §3, tile groups): per key
        category (0 the query's own tile, 1 + g group g), the first category of the named
        area it lies in (0 for the query's own area), or -1 for a category whose every area
        is one of its group's own (tiles). ``None`` when the cluster names no area."""
        if self.roles is None:
            return None
        roles = self.roles
        first = {}
        for g, role in enumerate(roles):
            if role is not None:
                first.setdefault(role, 1 + g)
        named = [0]
        for g, role in enumerate(roles):
            named.append(-1 if role is None else 0 if role == roles[h] else first[role])
        return named

    @property
    def P(self) -> int:
        """Number of patches the cluster partitions."""
        return sum(g.patches for g in self.groups)


def _check_roles(roles, groups):
    """Roles of a cluster's groups: per group an area name (a non-empty string: every area of
    the group belongs to that one area) or None (each area of the group is an area of its
    own); groups sharing a name share one latent."""
    if isinstance(roles, str):
        raise TypeError("Cluster roles must be a sequence with one entry per group, got a string")
    roles = tuple(roles)
    if len(roles) != len(groups):
        raise ValueError(f"Cluster roles has {len(roles)} entries for {len(groups)} groups")
    latent = {}
    for g, role in enumerate(roles):
        if role is None:
            continue
        if not isinstance(role, str) or not role:
            raise ValueError(f"Cluster roles[{g}] must be an area name (a non-empty string) or "
                             f"None, got {role!r}")
        if latent.setdefault(role, groups[g].z) != groups[g].z:
            raise ValueError(f"area {role!r} has two latents: {latent[role]:g} and "
                             f"{groups[g].z:g} (groups sharing an area share its latent)")
    return roles


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
    kappa : (float, float) or None
        ``(kappa_c, kappa_s)`` of a setting made by :meth:`paper`.

    A Setting is immutable and hashable; two settings are equal when their clusters, masked
    count and PP mode are.
    """

    __slots__ = ("P", "_z", "clusters", "kappa", "masked", "pp", "weights")

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
        _check_P(P)
        if masked is None:
            gamma = 0.5 if gamma is None else gamma
            if isinstance(gamma, bool) or not isinstance(gamma, Real):
                raise TypeError(f"gamma must be a real number, got {type(gamma).__name__}")
            if not 0 < gamma < 1:
                raise ValueError(f"gamma must lie in (0, 1), got {gamma}")
            # floor(gamma P + 1/2) in exact rational arithmetic: right for any P up to 2^62
            masked = math.floor(Fraction(gamma) * P + Fraction(1, 2))
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
        tiled = any(c.roles is not None for c in clusters)
        if tiled:
            tilings = {tuple((g.areas, g.size) for g in c.groups) for c in clusters}
            if len(tilings) > 1:
                raise ValueError(
                    "clusters with named areas (roles) must share one tiling: the same groups' "
                    f"(areas, size) in every cluster, got {sorted(tilings)}")
        if pp is None:
            pp = "exact" if len(clusters) == 1 or tiled else "frozen"
        if pp not in ("exact", "frozen"):
            raise ValueError(f"pp must be None, 'exact' or 'frozen', got {pp!r}")
        if pp == "exact" and len(clusters) > 1 and not tiled:
            raise ValueError(
                "pp='exact' needs K = 1: with several partitions the PP correlations are not "
                "reducible by symmetry (use pp='frozen', or mimfast.reference for explicit PP)"
            )
        zmax = max(g.z for c in clusters for g in c.groups)
        if zmax * zmax * P > 1e300:
            raise ValueError(
                f"Group z = {zmax:g} is too large for P = {P}: the loss, about P z^2 / 2, "
                f"overflows double precision (z must be at most {math.sqrt(1e300 / P):.3g})")
        # weights up to the largest double: scale by the largest before summing
        top = max(c.weight for c in clusters)
        scaled = [c.weight / top for c in clusters]
        total = math.fsum(scaled)
        init = object.__setattr__
        init(self, "clusters", clusters)
        init(self, "P", P)
        init(self, "masked", int(masked))
        init(self, "pp", pp)
        init(self, "weights", tuple(w / total for w in scaled))
        init(self, "kappa", None)
        init(self, "_z", {})

    def __setattr__(self, name, value):
        raise AttributeError(f"Setting is immutable: cannot set {name!r}")

    def __delattr__(self, name):
        raise AttributeError(f"Setting is immutable: cannot delete {name!r}")

    def __hash__(self):
        return hash((self.clusters, self.masked, self.pp))

    def __reduce__(self):
        return (_rebuild, (self.clusters, self.masked, self.pp, self.kappa))

    def _with_kappa(self, kappa):
        """This setting, marked as made by :meth:`paper` with ``kappa = (kappa_c, kappa_s)``."""
        object.__setattr__(self, "kappa", None if kappa is None else tuple(map(float, kappa)))
        return self

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
        if key not in self._z:  # a cache, not state: the setting stays immutable
            groups = self.clusters[k].groups
            z = np.array([groups[h].z] + [g.z for g in groups])
            z.flags.writeable = False
            self._z[key] = z
        return self._z[key]

    def class_named(self, k, h):
        """Named areas of query class (k, h) per key category (:meth:`Cluster.named`), as a
        read-only int64 array, or None when every area of the class has its keys in one
        category and the own area's in category 0 (then the classic formulas apply: a query
        in a named group of one-position tiles has its own area's keys in its group's
        category, so it is not classic)."""
        key = ("named", k, h)
        if key not in self._z:
            named = self.clusters[k].named(h)
            if named is not None:
                groups = self.clusters[k].groups
                sizes = [groups[h].size - 1] + [(g.areas - (i == h)) * g.size
                                                for i, g in enumerate(groups)]
                firsts = [a for a, size in zip(named, sizes) if a >= 0 and size > 0]
                own = [c for c, (a, size) in enumerate(zip(named, sizes)) if a == 0 and size]
                # classic: every area within one category, the own area's within category 0
                if len(firsts) == len(set(firsts)) and own in ([], [0]):
                    named = None
                else:
                    named = np.array(named, dtype=np.int64)
                    named.flags.writeable = False
            self._z[key] = named
        return self._z[key]

    @classmethod
    def tiled(cls, tile_groups, roles, z=1.0, weights=None, gamma=0.5, masked=None, pp="exact"):
        """Clusters over one tiling of the positions (docs/model.md §3, tile groups).

        Tile group j has ``n_j`` tiles of ``s_j`` positions. Every cluster gives every tile
        group a role: all its tiles belong to one named area of the cluster (an area may span
        several tile groups), or each of its tiles is an area of its own. Positions within a
        tile, and tiles within a tile group, are exchangeable in every cluster, so the state
        reduces exactly with learned PP shared by all clusters.

        Parameters
        ----------
        tile_groups : sequence of (int, int)
            ``(n_tiles, tile_size)`` of each tile group, both at least 1.
        roles : sequence of sequences of str
            ``roles[k][j]``: the name of the area of cluster k that tile group j belongs to,
            or ``"tiles"`` (each tile of group j is an area of its own in cluster k). One
            role list per cluster, one entry per tile group.
        z : float or sequence of dict, default 1.0
            The latent of every area, or one dict per cluster mapping each of its area names,
            and ``"tiles"`` when it has one-tile areas, to a latent.
        weights : sequence of float, optional
            Prior weights of the clusters (normalised); uniform when None.
        gamma : float, default 0.5
            Masking ratio, as in :class:`Setting`; ignored when ``masked`` is given.
        masked : int, optional
            Number of masked positions, 1 <= masked <= P - 1.
        pp : {"exact", "frozen"}, default "exact"
            Learned (shared by all clusters) or frozen PP correlations.

        Returns
        -------
        Setting
            Cluster k has one :class:`Group` per tile group (its tiles as areas, with the
            latent of the tile group's area in cluster k) and roles ``roles[k]`` (``None``
            for ``"tiles"``).

        Examples
        --------
        Two clusters whose global areas (two tiles each) share one tile:

        >>> s = Setting.tiled([(1, 2), (1, 2), (1, 2), (3, 2)],
        ...                   [["G", "G", "tiles", "tiles"], ["G", "tiles", "G", "tiles"]])
        >>> s.P, s.K, s.pp
        (12, 2, 'exact')
        """
        tiles = _tile_groups(tile_groups)
        roles = _tile_roles(roles, len(tiles))
        K = len(roles)
        latents = _tile_latents(z, roles)
        if weights is None:
            weights = [1.0] * K
        elif isinstance(weights, (str, bytes)) or not hasattr(weights, "__len__"):
            raise TypeError(f"weights must be a sequence of K = {K} numbers or None, got "
                            f"{type(weights).__name__}")
        if len(weights) != K:
            raise ValueError(f"weights has {len(weights)} entries for K = {K} clusters")
        clusters = [
            Cluster([Group(n, size, zk[role]) for (n, size), role in zip(tiles, rk)], w,
                    tuple(None if role == TILES else role for role in rk))
            for rk, zk, w in zip(roles, latents, weights)]
        return cls(clusters, gamma=None if masked is not None else gamma, masked=masked, pp=pp)

    @classmethod
    def paper_clusters(cls, P, kappa_c, kappa_s, K=2, overlap=0.5, gamma=0.5, z=1.0):
        """The paper's setting with K clusters that share the local tiling and differ in their
        global areas (Definition 2.1, Assumption 2.2; docs/model.md §4), with learned PP.

        Sizes, in exact integer arithmetic (as :meth:`paper`, 60-digit powers, rounding half
        to even): tiles of ``c_l = max(2, round(P**kappa_s))`` positions, ``n = P // c_l`` of
        them; when ``r = P - n c_l > 0`` the last tile takes the rest (``c_l + r`` positions)
        and is a local area in every cluster. A global area is ``g = max(1, round(P**kappa_c
        / c_l))`` whole tiles. The K global areas share a common core of
        ``o = round(overlap * g)`` tiles and each has ``g - o`` tiles of its own, so every
        pair of clusters shares exactly o tiles (overlap 0: disjoint global areas, 1:
        identical ones); with K = 1, ``o = g``. Every other tile is a local area.

        Tile groups, in this order and only when not empty: the core (o tiles, in every
        global area), cluster k's own global tiles (g - o tiles) for k = 0..K-1, the
        remaining regular tiles, the last tile when it is larger. Cluster k names the core
        and its own global tiles ``"global"``; every other tile is an area of its own.

        Parameters
        ----------
        P : int
            Number of patches.
        kappa_c, kappa_s : float
            Exponents of the global and local area sizes, in (0, 1).
        K : int, default 2
            Number of clusters (equal weights), at most :data:`MAX_TILED_K`.
        overlap : float, default 0.5
            Fraction of a global area shared with each other cluster's, in [0, 1].
        gamma : float, default 0.5
            Masking ratio.
        z : float or (float, float), default 1.0
            Latent of the global and local features (one number for both).

        Returns
        -------
        Setting
            A tiled setting (:meth:`tiled`) with pp="exact", marked with ``kappa`` (so
            :attr:`delta` is the paper's Δ).
        """
        P = _check_P(_positive_int(P, "P"))
        K = _positive_int(K, "K")
        if K > MAX_TILED_K:
            raise ValueError(f"K = {K} clusters is more than {MAX_TILED_K}, the most "
                             "paper_clusters makes (each cluster adds a tile group, so a key "
                             "category to every query class)")
        kappa_c, kappa_s = _kappas(kappa_c, kappa_s)
        overlap = _real(overlap, "overlap")
        if not 0.0 <= overlap <= 1.0:
            raise ValueError(f"overlap must lie in [0, 1], got {overlap}")
        z_global, z_local = _paper_z(z)
        c_l = max(2, _round_half_even(_power(P, kappa_s)))
        n, r = divmod(P, c_l)
        regular = n - (r > 0)
        with localcontext() as ctx:
            ctx.prec = 60
            g = max(1, _round_half_even(_power(P, kappa_c) / c_l))
            o = g if K == 1 else _round_half_even(Decimal(overlap) * g)
        union = o + K * (g - o)
        if union > regular or g >= n:
            raise ValueError(
                f"paper_clusters(P={P}, kappa_c={kappa_c}, kappa_s={kappa_s}, K={K}, "
                f"overlap={overlap}): {K} global areas of {g} tiles (sharing {o}) need {union} "
                f"of the {regular} tiles of {c_l} positions and leave no local area")
        groups = [(o, c_l, ["global"] * K)]
        groups += [(g - o, c_l, ["global" if j == k else TILES for j in range(K)])
                   for k in range(K)]
        groups += [(regular - union, c_l, [TILES] * K)]
        if r:
            groups.append((1, c_l + r, [TILES] * K))
        groups = [grp for grp in groups if grp[0] > 0]
        roles = [[grp[2][k] for grp in groups] for k in range(K)]
        return cls.tiled([grp[:2] for grp in groups], roles,
                         [{"global": z_global, TILES: z_local}] * K,
                         gamma=gamma)._with_kappa((kappa_c, kappa_s))

    def explicit(self):
        """The setting's partitions position by position, for models outside mimfast.

        Every cluster lays its groups out one after the other in group order, each group
        area (tile) by area, so a tiled setting's positions go tile group by tile group,
        tile by tile, the same in every cluster. (A setting without roles, whose clusters
        all have the same partition here, has frozen PP for K > 1: then the dynamics do not
        depend on how the clusters' partitions lie relative to each other.) Areas are
        numbered in the order of their first position: a tile of a group with role None is
        an area of its own, a named area is one area over all its tile groups.

        Returns
        -------
        list of (numpy.ndarray, numpy.ndarray, float)
            Per cluster: the area of every position (int64, length P, areas 0..n-1), the
            latent of every area (length n) and the cluster's prior weight (normalised).
            :meth:`mimfast.reference.ExplicitModel` takes them as ``labels``, ``z`` and
            ``weights``.

        Raises
        ------
        ValueError
            When P is more than :data:`MAX_EXPLICIT_P`.
        """
        return [(labels.copy(), z.copy(), w)
                for (_, _, labels, z), w in zip(self._layout(), self.weights)]

    def _layout(self):
        """Per cluster: the group, the tile (area within its group) and the area of every
        position, and the latent of every area, as :meth:`explicit` lays them out."""
        if self.P > MAX_EXPLICIT_P:
            raise ValueError(f"P = {self.P} is more than {MAX_EXPLICIT_P}, the largest P whose "
                             "positions mimfast lays out one by one (explicit, expanded)")
        if "layout" not in self._z:  # a cache, not state
            out = []
            for c in self.clusters:
                group = np.repeat(np.arange(len(c.groups)), [g.patches for g in c.groups])
                tile = np.concatenate([np.repeat(np.arange(g.areas), g.size) for g in c.groups])
                roles = c.roles or (None,) * len(c.groups)
                area, z = {}, []
                for j, (g, role) in enumerate(zip(c.groups, roles)):
                    for t in range(g.areas):
                        if area.setdefault((j, t) if role is None else role, len(z)) == len(z):
                            z.append(g.z)
                labels = np.array([area[(j, t) if roles[j] is None else roles[j]]
                                   for j, t in zip(group.tolist(), tile.tolist())],
                                  dtype=np.int64)
                out.append((group, tile, labels, np.array(z)))
            self._z["layout"] = out
        return self._z["layout"]

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
        P = _check_P(_positive_int(P, "P"))
        K = _positive_int(K, "K")
        if K > MAX_K:
            raise ValueError(f"K = {K} clusters is more than {MAX_K}, the most Setting.paper "
                             "makes (each cluster is a query class to evaluate at every step)")
        kappa_c, kappa_s = _kappas(kappa_c, kappa_s)
        z_global, z_local = _paper_z(z)
        # sizes in exact arithmetic (60-digit powers, exact rounding), right up to P = 2^62
        global_size = _power(P, kappa_c)
        c_l = max(2, _round_half_even(_power(P, kappa_s)))
        with localcontext() as ctx:
            ctx.prec = 60
            n_l = _round_half_even((Decimal(P) - global_size) / c_l)
        if n_l < 1:
            raise ValueError(
                f"paper(P={P}, kappa_c={kappa_c}, kappa_s={kappa_s}) leaves no local area "
                f"(local size {c_l}, global size about {float(global_size):.0f})"
            )
        c_g = P - n_l * c_l
        if c_g < c_l:
            raise ValueError(
                f"paper(P={P}, kappa_c={kappa_c}, kappa_s={kappa_s}) gives a global area of "
                f"{c_g} patches, smaller than a local area of {c_l}"
            )
        groups = (Group(1, c_g, z_global), Group(n_l, c_l, z_local))
        clusters = [Cluster(groups)] * K
        return cls(clusters, gamma=gamma, pp=pp)._with_kappa((kappa_c, kappa_s))

    def _paper_sizes(self):
        c = self.clusters[0]
        names = {role for role in c.roles or () if role is not None}
        if len(names) == 1 and None in c.roles:  # paper_clusters: one global area, tiles
            return (sum(g.patches for g, role in zip(c.groups, c.roles) if role is not None),
                    min(g.size for g, role in zip(c.groups, c.roles) if role is None))
        groups = c.groups
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
            "[" + ", ".join(f"{g.areas}x{g.size} z={g.z:g}" + (f" {role}" if role else "")
                            for g, role in zip(c.groups, c.roles or [None] * len(c.groups)))
            + f"] w={c.weight:g}" for c in self.clusters
        )
        return f"Setting(P={self.P}, masked={self.masked}, pp={self.pp!r}, clusters={clusters})"


def _kappas(kappa_c, kappa_s):
    """The paper's exponents as floats, each in (0, 1)."""
    kappas = []
    for name, kappa in (("kappa_c", kappa_c), ("kappa_s", kappa_s)):
        kappa = _real(kappa, name)
        if not 0.0 < kappa < 1.0:
            raise ValueError(f"{name} must lie in (0, 1), got {kappa}")
        kappas.append(kappa)
    return kappas


def _paper_z(z):
    """(global, local) latents from one number or a pair."""
    if isinstance(z, Real):
        return z, z
    try:
        zs = tuple(z)
    except TypeError:
        raise TypeError("z must be a real number or a pair (global, local), got "
                        f"{type(z).__name__}") from None
    if len(zs) != 2:
        raise ValueError(f"z takes one number or a pair (global, local), got {len(zs)} values")
    return zs


def _sequence(value, name):
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a sequence, got {type(value).__name__}")
    return list(value)


def _tile_groups(tile_groups):
    """``[(n_tiles, tile_size), ...]`` of :meth:`Setting.tiled`, checked."""
    tiles = _sequence(tile_groups, "tile_groups")
    if not tiles:
        raise ValueError("tile_groups needs at least one tile group")
    out = []
    for j, pair in enumerate(tiles):
        if isinstance(pair, (str, bytes)) or not hasattr(pair, "__len__") or len(pair) != 2:
            raise ValueError(f"tile_groups[{j}] must be a pair (n_tiles, tile_size), got "
                             f"{pair!r}")
        out.append((_positive_int(pair[0], f"tile_groups[{j}] n_tiles"),
                    _positive_int(pair[1], f"tile_groups[{j}] tile_size")))
    _check_P(sum(n * size for n, size in out))
    return out


def _tile_roles(roles, J):
    """Per cluster a tuple of J roles (area names or :data:`TILES`), checked."""
    roles = [_sequence(rk, f"roles[{k}]") for k, rk in enumerate(_sequence(roles, "roles"))]
    if not roles:
        raise ValueError("roles needs one role list per cluster, got none")
    for k, rk in enumerate(roles):
        if len(rk) != J:
            raise ValueError(f"roles[{k}] has {len(rk)} entries for {J} tile groups")
        for j, role in enumerate(rk):
            if not isinstance(role, str) or not role:
                raise ValueError(f"roles[{k}][{j}] must be an area name (a non-empty string) "
                                 f"or {TILES!r}, got {role!r}")
    return [tuple(rk) for rk in roles]


def _tile_latents(z, roles):
    """Per cluster a dict from each area name (and :data:`TILES`) to its latent, checked."""
    if isinstance(z, Real) and not isinstance(z, bool):
        return [dict.fromkeys(rk, z) for rk in roles]
    zs = _sequence(z, "z (a number or one dict per cluster)")
    if len(zs) != len(roles):
        raise ValueError(f"z has {len(zs)} dicts for K = {len(roles)} clusters")
    out = []
    for k, (zk, rk) in enumerate(zip(zs, roles)):
        if not isinstance(zk, dict):
            raise TypeError(f"z[{k}] must be a dict from area names to latents, got "
                            f"{type(zk).__name__}")
        want = set(rk)
        missing = [name for name in rk if name not in zk]
        if missing:
            raise ValueError(f"z[{k}] has no latent for {missing[0]!r} (cluster {k} has the "
                             f"areas {sorted(want)})")
        unknown = sorted(map(repr, set(zk) - want))
        if unknown:
            raise ValueError(f"z[{k}] names {', '.join(unknown)}, which no tile group of "
                             f"cluster {k} has (its areas: {sorted(want)})")
        out.append(zk)
    return out


def _rebuild(clusters, masked, pp, kappa):
    return Setting(clusters, masked=masked, pp=pp)._with_kappa(kappa)

"""Shared test helpers."""

import math

import numpy as np

# The first lines of a Python child that a test interrupts: SIGINT raises KeyboardInterrupt
# there whatever disposition the child inherited (a background job, `cmd &` in a script or
# `nohup`, starts with SIGINT ignored, and so do its children).
CHILD_SIGINT = "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"


def explicit_layout(setting, shuffle_seed=None):
    """Labels of an explicit partition for each cluster, and the group of each area.

    Areas are laid out contiguously in group order; with ``shuffle_seed`` every cluster but
    the first gets its own random permutation of positions (different partitions).
    """
    rng = np.random.default_rng(shuffle_seed)
    labels, area_group, z = [], [], []
    for k, cluster in enumerate(setting.clusters):
        lab, grp, zk = [], [], []
        for g, group in enumerate(cluster.groups):
            for _ in range(group.areas):
                lab.extend([len(grp)] * group.size)
                grp.append(g)
                zk.append(group.z)
        lab = np.array(lab)
        if shuffle_seed is not None and k > 0:
            lab = lab[rng.permutation(len(lab))]
        labels.append(lab)
        area_group.append(np.array(grp))
        z.append(np.array(zk))
    return labels, area_group, z


def relative_difference(a, b):
    """Normwise relative difference; inf when either side is not finite (so that a NaN can
    never pass a bound, nor vanish in a max)."""
    a, b = np.ravel(a), np.ravel(b)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return math.inf
    d = np.linalg.norm(a - b)
    return 0.0 if d == 0 else d / np.linalg.norm(b)


def true_error(a, b, setting):
    """Largest normwise relative difference of two gradients, class by class, in the sense of
    :func:`mimfast.quadrature.sums_error` (gradient, attention, patch loss)."""
    out = 0.0
    rel = relative_difference
    for k, h in setting.classes():
        ga, gb = [a.fp[k][h]], [b.fp[k][h]]
        if a.pp is not None:
            ga.append(a.pp[h])
            gb.append(b.pp[h])
        out = max(out, rel(np.concatenate(ga), np.concatenate(gb)),
                  rel(a.attention[k][h], b.attention[k][h]),
                  rel(a.patch_loss[k][h], b.patch_loss[k][h]))
    return out


def pp_row_sums(result):
    """sum_q B_{p,q} for a query of each group h at every recorded step (docs/model.md §3):
    B_self + (s_h - 1) B_own + sum_g C'_g B_g, with C'_g the positions of group g outside the
    query's own area (its own tile, in a tiled setting); 0 along exact runs."""
    groups = result.setting.clusters[0].groups
    out = []
    for h, own in enumerate(groups):
        total = result.pp(h, "self") + (own.size - 1) * result.pp(h, "own")
        for g, grp in enumerate(groups):
            total = total + (grp.areas - (g == h)) * grp.size * result.pp(h, g)
        out.append(total)
    return np.array(out)

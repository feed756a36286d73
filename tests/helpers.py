"""Shared test helpers."""

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

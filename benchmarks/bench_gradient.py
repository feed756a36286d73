"""One exact expected gradient (docs/model.md §3): per backend, per thread count, per grid point."""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

from . import common


class Gradient:
    """Time of one exact gradient, ``model.evaluate``, on prebuilt grids at a non-zero state."""

    params = [["cpp", "numba", "numpy"], [10**4, 10**6, 10**8]]
    param_names = ["backend", "P"]
    timeout = 180

    def setup(self, backend, P):
        self.kernel = common.kernel(backend)
        self.setting = common.setting(P)
        self.grids = common.grids(self.setting)
        self.state = common.state(self.setting)
        common.warm(self.setting, self.grids, self.state, self.kernel)

    def time_gradient(self, backend, P):
        common.gradient(self.setting, self.grids, self.state, self.kernel)


class GradientThreads:
    """Thread scaling of the C++ kernel: one gradient at P = 10^8."""

    params = [1, 2]
    param_names = ["threads"]
    P = 10**8

    def setup(self, threads):
        self.kernel = common.kernel("cpp")
        self.setting = common.setting(self.P)
        self.grids = common.grids(self.setting)
        self.state = common.state(self.setting)
        common.warm(self.setting, self.grids, self.state, self.kernel, threads)

    def time_gradient(self, threads):
        common.gradient(self.setting, self.grids, self.state, self.kernel, threads)


class PointCost:
    """Cost of the C++ kernel per grid point (all threads), best of a few gradients."""

    params = [10**6, 10**8]
    param_names = ["P"]
    unit = "ns/point"

    def setup(self, P):
        self.kernel = common.kernel("cpp")
        self.setting = common.setting(P)
        self.grids = common.grids(self.setting)
        self.state = common.state(self.setting)
        self.points = common.points(self.grids)
        common.warm(self.setting, self.grids, self.state, self.kernel)

    def track_ns_per_point(self, P):
        seconds = common.best_time(
            lambda: common.gradient(self.setting, self.grids, self.state, self.kernel)
        )
        return 1e9 * seconds / self.points


class IllConditioned:
    """One gradient at a state whose wide mixed-sign logits make many moment blocks
    ill-conditioned (docs/model.md §3, conditioning): the cost of the point-by-point fallback,
    against the same setting at a mild state."""

    params = [["cpp", "numba"], ["mild", "wide"]]
    param_names = ["backend", "state"]

    def setup(self, backend, state):
        import numpy as np

        import mimfast as mf

        self.kernel = common.kernel(backend)
        G, C = mf.Group, mf.Cluster
        self.setting = mf.Setting([C([G(1, 600, z=0.37), G(4, 300, z=4.44), G(30, 40, z=3.12)])],
                                  gamma=0.6, pp="exact")
        self.grids = common.grids(self.setting)
        rng = np.random.default_rng(common.SEED)
        a, b = (8.0, 3.0) if state == "wide" else (0.5, 0.1)
        self.state = mf.State.zeros(self.setting)
        self.state.fp[0][:] = rng.uniform(-a, a, self.state.fp[0].shape)
        self.state.pp[:] = rng.uniform(-b, b, self.state.pp.shape)
        common.warm(self.setting, self.grids, self.state, self.kernel)

    def time_gradient(self, backend, state):
        common.gradient(self.setting, self.grids, self.state, self.kernel)

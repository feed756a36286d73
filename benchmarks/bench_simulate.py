"""Whole runs of :func:`mimfast.simulate`: time at P = 10^6, peak memory at P = 10^8, 10^9,
and the fused C++ loop against the Python loop."""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

import sys

import mimfast as mf

from . import common

ETA = 200.0


class Simulate:
    """Time of 100 GD steps with the C++ backend (grid construction included)."""

    params = [10**6]
    param_names = ["P"]
    steps = 100
    timeout = 300

    def setup(self, P):
        self.setting = common.setting(P)

    def time_simulate(self, P):
        mf.simulate(self.setting, eta=ETA, steps=self.steps, record_every=10, backend="cpp",
                    method="exact")


class SimulateMemory:
    """Peak resident memory of a short run with the C++ backend (grids included)."""

    params = [10**8, 10**9]
    param_names = ["P"]
    steps = 3
    timeout = 300

    def setup(self, P):
        self.setting = common.setting(P)

    def peakmem_simulate(self, P):
        mf.simulate(self.setting, eta=ETA, steps=self.steps, backend="cpp", method="exact")


class SimulateLoop:
    """Time of 100 GD steps with the C++ backend, grids built beforehand: the whole loop in
    C++ ("fused", the default) against the Python loop with the same kernel ("python")."""

    params = ([10**4, 10**6], ["fused", "python"])
    param_names = ["P", "loop"]
    steps = 100
    timeout = 300

    def setup(self, P, loop):
        self.module = sys.modules["mimfast.simulate"]
        if not hasattr(self.module, "FUSED"):
            raise NotImplementedError("this mimfast has no fused loop")
        self.setting = common.setting(P)
        grids = common.grids(self.setting)
        # the module whose build_grids builds a run's grids (simulate's, before the driver)
        self.builds = sys.modules.get("mimfast.driver", self.module)
        self.saved = self.builds.build_grids, self.module.FUSED
        self.builds.build_grids = lambda *args: grids
        self.module.FUSED = {"cpp"} if loop == "fused" else set()

    def teardown(self, P, loop):
        self.builds.build_grids, self.module.FUSED = self.saved

    def time_steps(self, P, loop):
        mf.simulate(self.setting, eta=ETA, steps=self.steps, record_every=10, backend="cpp",
                    threads=1, method="exact")

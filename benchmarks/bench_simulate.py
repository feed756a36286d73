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


class SimulateBackends:
    """A whole paper-positive run (``Setting.paper(P, 0.9, 0.3)``, the presets' learning rate,
    rules or grids built inside the call) with the C++ loop ("cpp") and the numba loop
    ("numba"), both methods, one thread. Target: numba within 1.5x of cpp."""

    params = ([10**4, 10**6, 10**9], ["exact", "quadrature"], ["cpp", "numba"])
    param_names = ["P", "method", "backend"]
    timeout = 300
    STEPS = {"exact": {10**4: 1000, 10**6: 100, 10**9: 5}, "quadrature": 1000}

    def setup(self, P, method, backend):
        common.kernel(backend)  # skipped where the backend is unavailable
        self.setting = common.setting(P)
        self.eta = common.preset_eta(P)
        self.steps = self.STEPS[method][P] if method == "exact" else self.STEPS[method]
        # numba compiles (or loads its cache) outside the timing
        mf.simulate(self.setting, self.eta, 2, backend=backend, method=method, threads=1)

    def time_simulate(self, P, method, backend):
        mf.simulate(self.setting, self.eta, self.steps, backend=backend, method=method,
                    threads=1)

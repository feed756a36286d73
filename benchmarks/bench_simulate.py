"""Whole runs of :func:`mimfast.simulate`: time at P = 10^6, peak memory at P = 10^8, 10^9."""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

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
        mf.simulate(self.setting, eta=ETA, steps=self.steps, record_every=10, backend="cpp")


class SimulateMemory:
    """Peak resident memory of a short run with the C++ backend (grids included)."""

    params = [10**8, 10**9]
    param_names = ["P"]
    steps = 3
    timeout = 300

    def setup(self, P):
        self.setting = common.setting(P)

    def peakmem_simulate(self, P):
        mf.simulate(self.setting, eta=ETA, steps=self.steps, backend="cpp")

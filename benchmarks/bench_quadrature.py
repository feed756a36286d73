"""The Gauss–Hahn quadrature (docs/model.md §8): one step's expectation at P up to 10^18, and a
whole run of 1000 steps at P = 10^18."""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

import mimfast as mf
from mimfast.quadrature import build_quadratures

from . import common


class QuadratureStep:
    """A quadrature GD step on prebuilt rules (base and richer rule of every class, their
    error estimate), cpp kernel, one thread, at the benchmarks' fixed state:
    ``time_gradient`` is one gradient through Python (:func:`mimfast.model.evaluate`), and
    ``track_step`` a step of ``simulate``'s C++ loop."""

    params = [10**9, 10**12, 10**15, 10**18]
    param_names = ["P"]
    timeout = 120

    def setup(self, P):
        self.kernel = common.kernel("cpp")
        self.setting = common.setting(P)
        self.quads = build_quadratures(self.setting)
        self.state = common.state(self.setting)
        common.warm(self.setting, self.quads, self.state, self.kernel, 1)

    def time_gradient(self, P):
        common.gradient(self.setting, self.quads, self.state, self.kernel, 1)

    def track_step(self, P):
        """Microseconds per step of the C++ loop: a paper-positive run of 2000 steps less one
        of 0 steps (rules built and one evaluation), best of 5 each, one thread."""
        s, eta = self.setting, common.preset_eta(P)
        run = lambda n: mf.simulate(s, eta, n, record_every=100, method="quadrature",
                                    threads=1)
        steps = 2000
        return 1e6 * (common.best_time(lambda: run(steps)) - common.best_time(lambda: run(0))) \
            / steps

    track_step.unit = "µs"


class QuadratureRun:
    """1000 GD steps at P = 10^18 with the quadrature (rules built inside), one thread."""

    params = [10**18]
    param_names = ["P"]
    timeout = 300

    def setup(self, P):
        self.setting = common.setting(P)

    def time_run(self, P):
        mf.simulate(self.setting, eta=1.0, steps=1000, record_every=100, method="quadrature",
                    threads=1)

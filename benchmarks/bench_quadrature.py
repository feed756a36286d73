"""The Gauss–Hahn quadrature (docs/model.md §8): one step's expectation at P up to 10^18, a
whole run of 1000 steps at P = 10^18, and settings of several clusters over tile groups."""

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
        of 0 steps (rules built and one evaluation), best of 5 each in CPU time, one thread."""
        return 1e6 * common.loop_step(self.setting, common.preset_eta(P), 2000)

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


class TiledStep:
    """Several clusters with learned PP over tile groups (:func:`common.tiled_setting`) at
    P = 10^12, cpp kernel, one thread, rules prebuilt: ``track_ratio`` is one quadrature
    gradient of the K = 2 setting over one of the K = 1 paper setting (CPU time, best of 20
    each, in the same process), ``track_loop_ratio`` the same over a step of the C++ loop,
    ``time_gradient`` the K = 2 gradient itself."""

    params = [10**12]
    param_names = ["P"]
    timeout = 120

    def setup(self, P):
        self.kernel = common.kernel("cpp")
        self.cases = []
        for s in (common.tiled_setting(P, K=2), common.setting(P)):
            case = (s, build_quadratures(s), common.state(s), self.kernel, 1)
            common.warm(*case)
            self.cases.append(case)

    def time_gradient(self, P):
        common.gradient(*self.cases[0])

    def track_ratio(self, P):
        tiled, paper = (common.cpu_time(lambda c=c: common.gradient(*c), 20)
                        for c in self.cases)
        return tiled / paper

    track_ratio.unit = "K = 2 step / K = 1 step"

    def track_loop_ratio(self, P):
        """A step of ``simulate``'s C++ loop of the K = 2 setting over one of the K = 1 paper
        setting (:func:`common.loop_step`, 1000 steps each, best of 3), in the same process:
        the target of issue 16 is at most 10."""
        tiled, paper = (common.loop_step(c[0], common.preset_eta(P), 1000, 3) for c in self.cases)
        return tiled / paper

    track_loop_ratio.unit = "K = 2 step / K = 1 step"


class TiledRun:
    """1000 GD steps of the K = 3 tiled setting at P = 10^12 (rules built inside), C++ loop,
    one thread, at the presets' learning rate."""

    params = [10**12]
    param_names = ["P"]
    timeout = 300

    def setup(self, P):
        self.setting = common.tiled_setting(P, K=3)

    def time_run(self, P):
        mf.simulate(self.setting, eta=common.preset_eta(P), steps=1000, record_every=100,
                    method="quadrature", threads=1)

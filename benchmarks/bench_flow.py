"""Whole gradient-flow runs (:func:`mimfast.flow`) from Q = 0 to T_eps, on one thread.

The target (docs/performance.md, "Gradient flow"): a run of paper-positive to T_eps at
P = 10^18 in under a second on one thread, with gradient evaluations growing like log P.
"""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

import sys

import mimfast as mf

from . import common


class FlowToTEps:
    """Time of a flow run to T_eps (rtol 1e-10, backend cpp, one thread; rules or grids
    built inside) and its gradient evaluations, with the compiled step loop (cpp/flow.hpp)
    and with the Python one of the other backends (the same steps)."""

    params = [[10**4, 10**9, 10**18], ["compiled", "python"]]
    param_names = ["P", "loop"]
    timeout = 300

    def setup(self, P, loop):
        self.setting = common.setting(P)
        self.module = sys.modules["mimfast.flow"]
        if not hasattr(self.module, "FUSED"):
            raise NotImplementedError("this version has no compiled flow loop")
        self.saved = self.module.FUSED
        self.module.FUSED = {"cpp"} if loop == "compiled" else set()

    def teardown(self, P, loop):
        self.module.FUSED = self.saved

    def _run(self):
        return mf.flow(self.setting, 1e300, stop_at="T_eps", threads=1)

    def time_flow(self, P, loop):
        self._run()

    def track_evaluations(self, P, loop):
        return self._run().evaluations

    track_evaluations.unit = "gradient evaluations"

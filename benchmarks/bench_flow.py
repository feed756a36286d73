"""Whole gradient-flow runs (:func:`mimfast.flow`) from Q = 0 to T_eps, on one thread.

The target (docs/performance.md, "Gradient flow"): a run of paper-positive to T_eps at
P = 10^18 in under a second on one thread, with gradient evaluations growing like log P.
"""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

import mimfast as mf

from . import common


class FlowToTEps:
    """Time of a flow run to T_eps (rtol 1e-10, backend cpp, one thread; rules or grids
    built inside) and its gradient evaluations."""

    params = [10**4, 10**9, 10**18]
    param_names = ["P"]
    timeout = 300

    def setup(self, P):
        self.setting = common.setting(P)

    def _run(self):
        return mf.flow(self.setting, 1e300, stop_at="T_eps", threads=1)

    def time_flow(self, P):
        self._run()

    def track_evaluations(self, P):
        return self._run().evaluations

    track_evaluations.unit = "gradient evaluations"

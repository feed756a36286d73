"""Construction of the count grids alone (:func:`mimfast.grid.build_grids`)."""

# asv reads params/param_names as plain class-level lists.
# ruff: noqa: RUF012

from __future__ import annotations

from . import common


class BuildGrids:
    """Time to build the grids of every query class of the paper setting."""

    params = [10**6, 10**9]
    param_names = ["P"]
    timeout = 120

    def setup(self, P):
        self.setting = common.setting(P)

    def time_build_grids(self, P):
        common.grids(self.setting)

"""The default backend: the C++/OpenMP kernel in ``mimfast._core`` (``cpp/kernel.cpp``)."""

from __future__ import annotations

from . import check_threads

NAME = "cpp"

try:
    from .. import _core
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    _core = None
    _WHY = (
        f"the compiled extension mimfast._core is not built ({exc}); install mimfast with "
        "`pip install .` (or `pip install -e .`) from the source tree so that CMake builds it"
    )


def available():
    """Whether the extension is importable, and whether it runs with OpenMP."""
    if _core is None:
        return False, _WHY
    return True, {"openmp": bool(_core.openmp_enabled()), "max_threads": int(_core.max_threads())}


def prepared(grid):
    """The grid (or point set) copied and validated for the kernel, once (cached on it).

    The handle owns copies of the arrays, so later changes to ``grid`` cannot reach it.
    """
    handle = getattr(grid, "_cpp", None)
    if handle is None and hasattr(grid, "node_x"):  # a quadrature point set
        handle = _core.ClassPoints(
            grid.counts, grid.rest, grid.centre, grid.node_x, grid.node_w, grid.inner,
            grid.last, grid.blocks, grid.fsizes, grid.s_a, grid.s_b, grid.inv_areas,
            grid.inv_sizes,
        )
        grid._cpp = handle
    if handle is None:
        handle = _core.ClassGrid(
            grid.counts, grid.rest, grid.lo, grid.hi, grid.row_weight, grid.t_inner,
            grid.off_inner, grid.t_last, grid.off_last, grid.inner, grid.last, grid.blocks,
            grid.fsizes, grid.s_a, grid.s_b, grid.inv_areas, grid.inv_sizes,
        )
        grid._cpp = handle
    return handle


def kernel(grid, inputs, threads=None):
    """docs/model.md §3 sums over one class grid, computed by the C++ kernel (GIL released)."""
    return prepared(grid).sums(inputs.z, inputs.wu, inputs.wm, inputs.wself,
                               check_threads(threads), inputs.wu0, inputs.wm0, inputs.wself0,
                               inputs.named)


def evaluators(grid):
    """The C++ evaluators of one class: ``(eval, check)``.

    An exact grid is its own evaluator, without a check. An adaptive quadrature
    (:class:`mimfast.quadrature.ClassQuadrature`) steps with its richer rule and checks it
    against its base rule, as :meth:`~mimfast.quadrature.ClassQuadrature.evaluate` does.
    """
    if hasattr(grid, "rich"):
        return prepared(grid.rich()), prepared(grid.base())
    return prepared(grid), None


def fused_loop(setting, grids, layout, checks=None, tol=0.0):
    """The C++ GD loop (``cpp/fused.hpp``) over the class grids or quadratures, state laid out
    by ``layout`` (a :class:`~mimfast.model.StateLayout`).

    Its class inputs and accumulation are those of :func:`mimfast.model.evaluate`, with the
    same per-class factors (:func:`mimfast.model.loop_classes`). ``checks`` optionally gives per class
    (in ``setting.classes()`` order) a second evaluator (any ``_core.ClassEval``) whose
    difference from the first is recorded as the class's error estimate (a quadrature brings
    its own, see :func:`evaluators`); the loop stops before a step whose estimate of a class
    exceeds ``tol`` (0: never).
    """
    from ..model import loop_classes

    pairs = [evaluators(grids[c]) for c in setting.classes()]
    evals = [e for e, _ in pairs]
    if checks is None:
        checks = [c for _, c in pairs]
    per_class = loop_classes(setting, grids, layout)
    loop = _core.FusedLoop(evals=evals, checks=list(checks), **per_class, n_state=layout.size)
    for i, (k, h) in enumerate(setting.classes()):
        named = setting.class_named(k, h)
        if named is not None:  # per class, like z: the point sets stay shared
            loop.set_named(i, named)
    if tol:
        for i in range(len(evals)):
            loop.set_evaluators(i, evals[i], checks[i], tol)
    return loop

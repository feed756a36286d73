"""Type stub of mimfast's compiled kernel (cpp/bindings.cpp). Private: use mimfast.simulate."""

import numpy as np
import numpy.typing as npt

class ClassEval:
    """Evaluator of one query class (base of ClassGrid and point sets)."""

    @property
    def n_cat(self) -> int: ...
    def sums(
        self,
        z: npt.NDArray[np.float64],
        wu: npt.NDArray[np.float64],
        wm: npt.NDArray[np.float64],
        wself: float,
        threads: int,
    ) -> npt.NDArray[np.float64]: ...

class ClassGrid(ClassEval):
    """A class count grid, copied and validated for the kernel."""

    def __init__(
        self,
        counts: npt.NDArray[np.int64],
        rest: npt.NDArray[np.int64],
        lo: npt.NDArray[np.int64],
        hi: npt.NDArray[np.int64],
        row_weight: npt.NDArray[np.float64],
        t_inner: npt.NDArray[np.float64],
        off_inner: int,
        t_last: npt.NDArray[np.float64],
        off_last: int,
        inner: int,
        last: int,
        blocks: npt.NDArray[np.int64],
        sizes: npt.NDArray[np.float64],
        s_a: npt.NDArray[np.float64],
        s_b: npt.NDArray[np.float64],
        inv_areas: npt.NDArray[np.float64],
        inv_sizes: npt.NDArray[np.float64],
    ) -> None: ...

class ClassPoints(ClassEval):
    """A class's Gauss–Hahn point set, copied and validated for the kernel."""

    def __init__(
        self,
        counts: npt.NDArray[np.float64],
        rest: npt.NDArray[np.float64],
        centre: npt.NDArray[np.float64],
        node_x: npt.NDArray[np.float64],
        node_w: npt.NDArray[np.float64],
        inner: int,
        last: int,
        blocks: npt.NDArray[np.int64],
        sizes: npt.NDArray[np.float64],
        s_a: npt.NDArray[np.float64],
        s_b: npt.NDArray[np.float64],
        inv_areas: npt.NDArray[np.float64],
        inv_sizes: npt.NDArray[np.float64],
    ) -> None: ...

def openmp_enabled() -> bool: ...
def max_threads() -> int: ...

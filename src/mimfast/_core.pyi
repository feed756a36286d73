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
        wu0: npt.NDArray[np.float64] | None = None,
        wm0: npt.NDArray[np.float64] | None = None,
        wself0: float = 0.0,
        named: npt.NDArray[np.int64] | None = None,
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

class FusedLoop:
    """The GD loop of a whole run in C++ (cpp/fused.hpp)."""

    def __init__(
        self,
        evals: list[ClassEval],
        checks: list[ClassEval | None],
        z: list[npt.NDArray[np.float64]],
        live: list[npt.NDArray[np.bool_]],
        a_off: list[int],
        p_off: list[int],
        coef: list[float],
        coef_loss: list[float],
        n_state: int,
    ) -> None: ...
    def set_state(self, t: int, state: npt.NDArray[np.float64], last_recorded: int) -> None: ...
    def set_named(self, i: int, named: npt.NDArray[np.int64]) -> None: ...
    def set_evaluators(
        self,
        i: int,
        eval: ClassEval,
        check: ClassEval | None = None,
        tol: float = 0.0,
        accept: int = -1,
    ) -> None: ...
    def run(
        self,
        steps: int,
        record_every: int,
        eta: float,
        threads: int,
        stop_every: int = 0,
        seconds: float = 0.0,
        poll_seconds: float = 0.05,
    ) -> int: ...
    @property
    def t(self) -> int: ...
    @property
    def recorded(self) -> int: ...
    def state(self) -> npt.NDArray[np.float64]: ...
    def last(self) -> tuple: ...
    def max_error(self) -> npt.NDArray[np.float64]: ...
    def records(self, start: int) -> tuple: ...
    def forget(self, upto: int) -> None: ...

class FlowLoop:
    """The gradient flow's step loop in C++ (cpp/flow.hpp), over a FusedLoop."""

    def __init__(
        self,
        fused: FusedLoop,
        a: list[list[float]],
        b: list[float],
        e: list[float],
        exponent: float,
        safety: float,
        min_factor: float,
        max_factor: float,
        min_step: float,
        kind: list[int],
        cls: list[int],
        others: list[list[int]],
        level: list[float],
    ) -> None: ...
    def set_state(
        self,
        t: float,
        y: npt.NDArray[np.float64],
        f: npt.NDArray[np.float64],
        h: float,
        index: int,
        values: npt.NDArray[np.float64],
        found: npt.NDArray[np.bool_],
    ) -> None: ...
    def run(
        self,
        tau: float,
        rtol: float,
        max_steps: int,
        threads: int,
        seconds: float = 0.0,
        poll_seconds: float = 0.05,
    ) -> int: ...
    def commit(self) -> None: ...
    @property
    def t(self) -> float: ...
    @property
    def h(self) -> float: ...
    @property
    def evaluations(self) -> int: ...
    @property
    def recorded(self) -> int: ...
    def y(self) -> npt.NDArray[np.float64]: ...
    def held(self) -> tuple: ...
    def records(self, start: int) -> tuple: ...
    def forget(self, upto: int) -> None: ...

def gauss_rules(
    diag: npt.NDArray[np.float64], off: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
def openmp_enabled() -> bool: ...
def max_threads() -> int: ...

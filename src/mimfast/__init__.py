"""mimfast: exact population dynamics of masked image modeling in a one-layer transformer.

The public API (docs/model.md §6): :class:`Setting` with its :class:`Cluster` and :class:`Group`,
:func:`simulate` (gradient descent) and :func:`flow` (gradient flow) returning a
:class:`Result`, :func:`gradient` for one exact expected gradient
at a :class:`State`, and :func:`backends`. :mod:`mimfast.analysis` measures a run in the terms
of Theorem 4.1, :mod:`mimfast.io` saves and loads runs, :mod:`mimfast.plots` draws them,
:func:`sweep` (:mod:`mimfast.sweeps`) runs scaling studies that :mod:`mimfast.scaling` fits, and
:mod:`mimfast.cli` is the ``mimfast`` command.
"""

from . import analysis, io, scaling, sweeps
from .backends import backends
from .flow import flow
from .model import Gradient, State
from .result import Result
from .setting import Cluster, Group, Setting
from .simulate import Interrupted, ToleranceError, ToleranceWarning, gradient, simulate
from .sweeps import sweep

try:
    from importlib.metadata import version as _version

    __version__ = _version("mimfast")
except Exception:  # pragma: no cover - running from a source tree without metadata
    __version__ = "0+unknown"

__all__ = [
    "Cluster",
    "Gradient",
    "Group",
    "Interrupted",
    "Result",
    "Setting",
    "State",
    "ToleranceError",
    "ToleranceWarning",
    "__version__",
    "analysis",
    "backends",
    "flow",
    "gradient",
    "io",
    "scaling",
    "simulate",
    "sweep",
    "sweeps",
]

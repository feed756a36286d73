"""Optional dependencies: import one, or say which extra of mimfast installs it.

The core (settings, :func:`mimfast.simulate`, the cpp and numpy backends) needs numpy only.
Results files need the ``io`` extra, figures the ``plot`` extra, the ``mimfast`` command the
``cli`` extra (both, and tqdm), sweeps and their fits the ``sweep`` extra (``cli``, dask and
scipy), the numba backend the ``numba`` extra, the explicit reference the ``torch`` extra.
Every import of an optional dependency goes through :func:`require`.
"""

from __future__ import annotations

import importlib

# module -> the extra that installs it
EXTRA = {
    "xarray": "io",
    "netCDF4": "io",
    "pandas": "io",
    "matplotlib": "plot",
    "tqdm": "cli",
    "tomli": "cli",
    "numba": "numba",
    "torch": "torch",
    "scipy": "sweep",
    "distributed": "sweep",
    "dask": "sweep",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def require(module, purpose, extra=None):
    """Import ``module``, or raise :class:`MissingExtra` naming the extra that installs it.

    Parameters
    ----------
    module : str
        Module to import (e.g. ``"xarray"``).
    purpose : str
        What needs it, for the message (e.g. ``"saving results"``).
    extra : str, optional
        The mimfast extra to name (default: the one that installs ``module``).

    Returns
    -------
    module
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        extra = extra or EXTRA[module.split(".")[0]]
        raise MissingExtra(
            f"{purpose} needs {module.split('.')[0]}, which is not installed; install it with "
            f"`pip install mimfast[{extra}]`") from exc


def require_all(modules, purpose, extra):
    """:func:`require` each of ``modules``, naming one ``extra`` for all of them."""
    for module in modules:
        require(module, purpose, extra)

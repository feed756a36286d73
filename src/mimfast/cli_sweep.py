"""``mimfast sweep``: run a scaling study (:func:`mimfast.sweeps.sweep`) and fit it.

Kept apart from :mod:`mimfast.cli`, which only registers the subcommand.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """\
P values: numbers (1e6, 10**6) or a decade range LO:HI[:STEP] of exponents, e.g. 3:7:0.5 for
10^3, 10^3.5, ..., 10^7. Every combination of the listed values is a task.

The output folder gets results.csv (one row per task, rewritten atomically as tasks finish),
runs/<task>.nc (each run, with its analysis), fits.csv (power-law fits against P with 95%
intervals) and the figures scaling.png and, for a kappa grid, phases.png. Running the same
command again skips finished tasks and retries failed ones.

exit codes: 0 every task done; 1 some task failed (see the error column); 2 bad command line,
a task that would be refused (every task is checked before any runs) or OUT in use by another
sweep; 130 interrupted (finished tasks are kept; run the command again to continue).

examples:
  mimfast sweep --preset paper-scaling-flow --out runs/scaling
  mimfast sweep --P 4:18:2 --kappa-c 0.9 0.6 --kappa-s 0.3 --flow --out s0
  mimfast sweep --P 3:6:0.5 --kappa-c 0.9 0.6 --kappa-s 0.3 --until --steps 4000 --out s1
  mimfast sweep --preset paper-phases --executor dask --workers 2 --out runs/phases
  mimfast sweep --preset paper-phases --scheduler tcp://10.0.0.5:8786 --out /shared/phases
"""

_PARAMS = ("P", "kappa_c", "kappa_s", "gamma", "K", "z", "overlap", "pp", "flow_rtol", "eta", "eta_rule",
           "steps", "until", "record_every", "method", "rtol", "backend", "epsilon",
           "tail_tol")


# a decade range gives at most this many P values
MAX_DECADE_VALUES = 1000


def _p_values(text):
    import math

    from ._cli_values import count
    from .setting import MAX_P

    if ":" not in text:
        return [count(text)]
    from .sweeps import _decades

    try:
        parts = [float(x) for x in text.split(":")]
        if (len(parts) not in (2, 3) or not all(map(math.isfinite, parts))
                or parts[0] > parts[1] or (len(parts) == 3 and parts[2] <= 0)):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a decade range LO:HI[:STEP]: {text!r}") from None
    top = math.log10(MAX_P)
    if parts[0] < 0 or parts[1] > top:
        raise argparse.ArgumentTypeError(f"decade range {text!r}: exponents must lie in "
                                         f"[0, {top:.2f}] (P at most 2^62)")
    step = parts[2] if len(parts) == 3 else 0.5
    if (parts[1] - parts[0]) / step >= MAX_DECADE_VALUES:
        raise argparse.ArgumentTypeError(f"decade range {text!r} gives more than "
                                         f"{MAX_DECADE_VALUES} values of P; take a larger step")
    return _decades(*parts)


def add_parser(sub, number, count):
    """Register ``mimfast sweep`` on the subparsers ``sub`` of the ``mimfast`` command."""
    from .sweeps import PRESETS

    S = argparse.SUPPRESS
    p = sub.add_parser(
        "sweep", help="run many settings (a grid over P, kappa_c, kappa_s, ...) into one "
                      "results table, and fit how the theorem's time scales grow with P",
        description="Run a sweep of Setting.paper tasks on local processes or Dask, then fit "
                    "power laws against P and draw the phase diagram.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, argument_default=S)
    p.add_argument("--preset", choices=sorted(PRESETS),
                   help="; ".join(f"{k}: {v['help']}" for k, v in PRESETS.items()))
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default mimfast-sweep)")
    g = p.add_argument_group("tasks (each option takes one value or several)")
    g.add_argument("--P", type=_p_values, nargs="+", help="patches: 1e6 or LO:HI[:STEP] decades")
    floats = {"kappa-c": "global area ~ P^kappa_c", "kappa-s": "local areas ~ P^kappa_s",
              "gamma": "masking ratio (default 0.5)", "z": "latent (default 1)",
              "overlap": "K >= 2 clusters over one tiling with learned PP "
                         "(Setting.paper_clusters) whose global areas share this fraction, "
                         "in [0, 1] (default: Setting.paper)",
              "eta": "learning rate (default 100)", "epsilon": "tolerance of T_eps (default 0.05)",
              "tail-tol": "count-grid tail (default 1e-15)",
              "rtol": "error tolerance of the quadrature (default: the engine's; the "
                      "gradient flow's is --flow-rtol, in mimfast run too)"}
    for name, text in floats.items():
        g.add_argument("--" + name, type=number, nargs="+", dest=name.replace("-", "_"),
                       help=text)
    counts = {"K": "clusters (default 1)",
              "steps": "GD steps, or the cap with --until (default 2000)",
              "record-every": "record every N steps (default 1)"}
    for name, text in counts.items():
        g.add_argument("--" + name, type=count, nargs="+", dest=name.replace("-", "_"), help=text)
    g.add_argument("--eta-rule", choices=["fixed", "scaled"], nargs="+", dest="eta_rule",
                   help="scaled (default): eta * (P/10^6)^(1 - kappa_s); fixed: eta")
    g.add_argument("--until", action=argparse.BooleanOptionalAction,
                   help="stop each run at T_eps of every class (--steps is the cap)")
    g.add_argument("--flow", type=number, nargs="*", metavar="TAU",
                   help="integrate the gradient flow instead of GD: to T_eps of every class, "
                        "or to each flow time TAU given (GD options then do not apply)")
    g.add_argument("--flow-rtol", type=number, nargs="+", dest="flow_rtol",
                   help="with --flow: local error tolerance of each step (default 1e-10)")
    g.add_argument("--pp", choices=["auto", "exact", "frozen"], nargs="+")
    g.add_argument("--method", nargs="+", choices=["exact", "quadrature", "auto"],
                   help="simulation method (default: the engine's default)")
    g.add_argument("--backend", nargs="+", help="kernel backend (default cpp)")
    g = p.add_argument_group("execution")
    g.add_argument("--executor", choices=["local", "dask"],
                   help="local worker processes (default) or a Dask LocalCluster")
    g.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on the Dask cluster of this scheduler (OUT must be shared)")
    g.add_argument("--workers", type=count, help="worker processes (default: cores / threads)")
    g.add_argument("--threads", type=count,
                   help="kernel threads per task (default: cores / workers)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="progress bar over tasks (default: only on a terminal)")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction,
                   help="write scaling.png and phases.png (default: yes)")
    return p


def run(args, usage_error):
    """Run the ``mimfast sweep`` command; returns the exit code."""
    from . import io, scaling
    from .sweeps import FLOW_ONLY, GD_ONLY, preset, sweep

    given = vars(args)
    grid = preset(given["preset"]) if "preset" in given else {}
    if "flow" in given:  # a GD preset's step options give way to the flow
        clash = [k for k in GD_ONLY if k in given]
        if clash:
            raise usage_error("--flow integrates the gradient flow; drop the GD options "
                              + ", ".join("--" + k.replace("_", "-") for k in clash))
        grid = {k: v for k, v in grid.items() if k not in GD_ONLY}
        grid["flow"] = True
        if given["flow"]:
            grid["tau"] = given["flow"]
    elif grid.get("flow"):  # a flow preset: GD options do not apply
        clash = [k for k in GD_ONLY if k in given]
        if clash:
            raise usage_error(f"preset {given['preset']} integrates the gradient flow; drop "
                              "the GD options " + ", ".join("--" + k.replace("_", "-")
                                                            for k in clash))
    elif any(k in given for k in FLOW_ONLY):
        raise usage_error("--flow-rtol applies to a gradient-flow sweep: add --flow")
    for key in _PARAMS:
        if key in given:
            value = given[key]
            if key == "P":
                value = [x for part in value for x in part]
            grid[key] = value
    missing = [k for k in ("P", "kappa_c", "kappa_s") if k not in grid]
    if missing:
        raise usage_error("give --preset or the task values " + ", ".join(
            "--" + k.replace("_", "-") for k in missing))
    out = given.get("out", Path("mimfast-sweep"))
    try:
        table = sweep(out, grid, executor=given.get("executor", "local"),
                      scheduler=given.get("scheduler"), workers=given.get("workers"),
                      threads=given.get("threads"), progress=given.get("progress"))
    except (ValueError, TypeError, io.FolderLockedError) as exc:
        raise usage_error(str(exc)) from None
    except KeyboardInterrupt:
        print(f"mimfast sweep: interrupted; finished tasks are in {out}; run the same command "
              "again to continue", file=sys.stderr)
        return 130
    fits = scaling.fits(table)
    with io.atomic_output(out / "fits.csv") as tmp:
        fits.to_csv(tmp, index=False)
    print(scaling.report(table, fits))
    if given.get("plots", True):
        paths = scaling.save_figures(table, out, fits)
        print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    failed = int((table["status"] == "failed").sum())
    if failed:
        print(f"mimfast sweep: {failed} of {len(table)} tasks failed (see the error column of "
              f"{out / 'results.csv'}); run the command again to retry them", file=sys.stderr)
        return 1
    return 0

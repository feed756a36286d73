"""The ``mimfast`` command: run the paper's setting, save, plot and summarise (its claims).

``mimfast run`` builds a setting from a preset, a TOML config file and command-line options
(later ones win), runs exact population GD with a progress bar and periodic checkpoints, and
writes to its output folder:

- ``result.nc``: the results file (:mod:`mimfast.io`), analysis included;
- ``trajectories.csv``: the trajectories as a flat table;
- ``fp.png``, ``attention.png``, ``pp.png``: the figures (:mod:`mimfast.plots`);
- ``summary.txt``: the summary table, also printed on standard output;
- ``checkpoint.nc`` while the run is unfinished (removed when it completes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from ._cli_values import count as _count
from ._cli_values import number as _number
from .model import own_attention

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# largest step count, record interval and checkpoint interval (as mimfast.simulate takes them)
MAX_COUNT = 2**53

PRESETS = {
    "paper-positive": {"P": 10**6, "kappa_c": 0.9, "kappa_s": 0.3},
    "paper-negative": {"P": 10**6, "kappa_c": 0.6, "kappa_s": 0.3},
    # K = 2 clusters over one tiling with learned PP (Setting.paper_clusters)
    "paper-clusters-positive": {"P": 10**6, "kappa_c": 0.9, "kappa_s": 0.3, "K": 2,
                                "overlap": 0.5},
    "paper-clusters-negative": {"P": 10**6, "kappa_c": 0.6, "kappa_s": 0.3, "K": 2,
                                "overlap": 0.5},
}
# Preset learning rate at P <= 10^6; above, the own-feature gradient shrinks like P^-(1-kappa_s)
# and eta grows with it, so the phases happen at the same steps for every P.
PRESET_ETA, PRESET_P = 100.0, 10**6
DEFAULTS = {"preset": "paper-positive", "gamma": 0.5, "K": 1, "z": 1.0, "pp": "auto",
            "steps": 1000, "record_every": 1, "backend": "cpp", "method": "auto", "threads": None,
            "tail_tol": 1e-15, "epsilon": 0.05, "checkpoint_every": 0, "checkpoint_seconds": 30.0,
            "out": "mimfast-run",
            "plots": True, "step_axis": "linear"}
# may change when a saved run is resumed; everything else is the saved run's
RESUME_KEYS = {"resume", "steps", "threads", "checkpoint_every", "checkpoint_seconds", "progress",
               "plots", "epsilon",
               "step_axis"}
RESULT, CHECKPOINT = "result.nc", "checkpoint.nc"
PAPER_KEYS = ("P", "kappa_c", "kappa_s", "K", "z", "overlap")
# what each config key must hold
_INT, _NUM, _STR, _BOOL = (int,), (int, float), (str,), (bool,)
CONFIG_TYPES = {
    "P": _INT, "K": _INT, "steps": _INT, "record_every": _INT, "threads": _INT,
    "checkpoint_every": _INT, "checkpoint_seconds": _NUM, "masked": _INT, "kappa_c": _NUM, "kappa_s": _NUM, "gamma": _NUM,
    "eta": _NUM, "tail_tol": _NUM, "epsilon": _NUM, "z": _NUM + (list,), "preset": _STR,
    "pp": _STR, "backend": _STR, "method": _STR, "out": _STR, "plots": _BOOL, "progress": _BOOL,
    "step_axis": _STR, "flow": _NUM, "stop_at": _STR, "flow_rtol": _NUM, "rtol": _NUM,
    "clusters": (list,), "overlap": _NUM, "tile_groups": (list,),
}

EPILOG = """\
exit codes:
  0    success
  1    the run failed (e.g. eta so large that the state diverges) or another error
  2    bad command line: unknown option, or an option value mimfast refuses
       (also when the value comes from a config file)
  3    an input file is missing, unreadable or malformed: the config file, a results file,
       or the folder given to --resume
  130  interrupted (Ctrl-C or SIGTERM); `mimfast run` saves a checkpoint first, and
       `mimfast run --resume DIR` continues it

examples:
  mimfast run --preset paper-positive --out runs/positive
  mimfast run --preset paper-negative --P 1e5 --steps 2000 --out runs/negative
  mimfast run --config my.toml
  mimfast run --resume runs/positive
  mimfast summary runs/positive/result.nc
  mimfast plot runs/positive/result.nc --out figures/
"""

CONFIG_HELP = """\
config file (TOML): the keys are the option names with underscores, e.g.

  preset = "paper-negative"
  P = 100000
  kappa_c = 0.6          # kappa_s, gamma, K, z (one number or [global, local]), pp
  eta = 20.0             # steps, record_every, backend, threads, tail_tol
  epsilon = 0.05         # checkpoint_seconds, checkpoint_every, plots, step_axis,
                         # out (relative to the file's folder)

or, instead of the paper's setting, any setting (then eta is required):

  masked = 5             # or gamma
  eta = 3.0
  [[clusters]]
  weight = 1.0
  groups = [{areas = 1, size = 4}, {areas = 3, size = 2, z = 1.0}]

or clusters over one tiling (Setting.tiled; roles: an area name or "tiles"):

  masked = 4
  eta = 1.0
  tile_groups = [[1, 2], [1, 2], [2, 2]]     # [n_tiles, tile_size]
  [[clusters]]
  roles = ["G", "tiles", "tiles"]
  z = {G = 1.2, tiles = 0.8}                 # or one number (default 1)
  [[clusters]]
  roles = ["tiles", "G", "tiles"]
  weight = 2.0

options on the command line override the file; the file overrides the preset.
"""


class UsageError(Exception):
    """A bad option or option value (exit code 2)."""


class InputError(Exception):
    """A missing or malformed input file (exit code 3)."""


def _parser():
    p = argparse.ArgumentParser(
        prog="mimfast", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Exact population dynamics of masked image modeling in a one-layer "
                    "transformer: watch the paper's theorem and phases happen.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    S = argparse.SUPPRESS

    run = sub.add_parser(
        "run", help="run a preset or configured setting, save results, figures and summary",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=CONFIG_HELP + "\n" + EPILOG,
        description="Run exact population GD (or, with --flow, the gradient flow) and check "
                    "the paper's claims, each with its source: Theorem 4.1 (loss, attention), "
                    "§5 / Lemma 5.3 / App. F (phases, PP). Unset options come from --config, "
                    "then from the preset.", argument_default=S)
    run.add_argument("--preset", choices=sorted(PRESETS),
                     help="the paper's regime: positive (kappa_c 0.9, Delta = 0.5) or negative "
                          "(kappa_c 0.6, Delta = -0.1) information gap, P = 10^6, kappa_s 0.3 "
                          "(default: paper-positive); paper-clusters-*: the same with K = 2 "
                          "clusters whose global areas share half their tiles, PP learned")
    run.add_argument("--config", type=Path, metavar="FILE", help="TOML file of options")
    g = run.add_argument_group("setting (Setting.paper)")
    g.add_argument("--P", type=_count, help="number of patches (accepts 1e6, 10**6)")
    g.add_argument("--kappa-c", type=_number, dest="kappa_c", help="global area ~ P^kappa_c")
    g.add_argument("--kappa-s", type=_number, dest="kappa_s", help="local areas ~ P^kappa_s")
    g.add_argument("--gamma", type=_number, help="masking ratio (default 0.5)")
    g.add_argument("--K", type=_count, help="number of clusters (default 1)")
    g.add_argument("--z", type=_number, nargs="+", metavar="Z",
                   help="latent of the features: one value, or global and local (default 1)")
    g.add_argument("--overlap", type=_number,
                   help="K clusters over one tiling (Setting.paper_clusters, PP learned): the "
                        "fraction of a global area every other cluster's shares, in [0, 1]")
    g.add_argument("--pp", choices=["auto", "exact", "frozen"],
                   help="PP correlations: learned exactly (K = 1) or frozen at 0 (default auto)")
    g = run.add_argument_group("gradient descent")
    g.add_argument("--eta", type=_number, help="learning rate (preset: 100 up to P = 10^6, "
                                               "times (P/10^6)^(1 - kappa_s) above, times K "
                                               "with --overlap)")
    g.add_argument("--steps", type=_count, help="GD steps (default 1000)")
    g.add_argument("--record-every", type=_count, dest="record_every",
                   help="record every N steps (default 1; phase switch and T_eps are "
                        "known to this granularity)")
    g.add_argument("--backend", help="kernel backend: cpp, numba or numpy (default cpp)")
    g.add_argument("--method", choices=["auto", "exact", "quadrature"],
                   help="expectation by the exact count grid or by Gauss-Hahn quadrature, whose "
                        "cost does not grow with P (default auto: exact for small grids)")
    g.add_argument("--threads", type=_count, help="threads of a compiled kernel (default all)")
    g.add_argument("--tail-tol", type=_number, dest="tail_tol",
                   help="probability mass a count grid may leave out (default 1e-15)")
    g = run.add_argument_group("gradient flow (instead of GD)")
    g.add_argument("--flow", type=_number, metavar="TAU", nargs="?", const=math.inf,
                   help="integrate the gradient flow dQ/dtau = -grad L up to flow time TAU "
                        "(Dormand-Prince 5(4) with error control; tau = eta * step of GD); "
                        "without TAU: until every class reaches T_eps")
    g.add_argument("--stop-at", dest="stop_at", choices=["switch", "T_eps"],
                   help="with --flow: stop once every class has reached this event")
    g.add_argument("--flow-rtol", type=_number, dest="flow_rtol",
                   help="with --flow: local error tolerance of each step (default 1e-10), as "
                        "in mimfast sweep (whose --rtol is the quadrature's; mimfast run has "
                        "no --rtol)")
    g.add_argument("--rtol", type=_number, help=argparse.SUPPRESS)  # refused by _options
    g = run.add_argument_group("analysis and output")
    g.add_argument("--epsilon", type=_number, help="tolerance of Theorem 4.1 (default 0.05)")
    g.add_argument("--out", type=Path, metavar="DIR", help="output folder (default mimfast-run)")
    g.add_argument("--plots", action=argparse.BooleanOptionalAction,
                   help="write the figures (default: yes)")
    g.add_argument("--force", action="store_true",
                   help="write into a non-empty --out folder, replacing its files (an "
                        "unfinished run there is discarded)")
    g.add_argument("--step-axis", dest="step_axis", choices=["linear", "symlog"],
                   help="step axis of the figures; symlog shows the first steps (default linear)")
    g = run.add_argument_group("long runs")
    g.add_argument("--checkpoint-seconds", type=_number, dest="checkpoint_seconds",
                   metavar="T", help="save DIR/checkpoint.nc at most every T seconds of wall "
                                     "time (default 30; 0: not by time)")
    g.add_argument("--checkpoint-every", type=_count, dest="checkpoint_every", metavar="N",
                   help="also save it after every N steps (default 0: not by steps)")
    g.add_argument("--resume", type=Path, metavar="DIR",
                   help="continue the unfinished run saved in DIR (with its own settings; "
                        "--steps may extend it)")
    g.add_argument("--progress", action=argparse.BooleanOptionalAction,
                   help="progress bar on standard error (default: only on a terminal)")

    for name, text in (("summary", "print the summary table of a saved run"),
                       ("plot", "write the figures of a saved run")):
        q = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                           epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        q.add_argument("file", type=Path, metavar="FILE",
                       help="results file (result.nc), or the folder of a run")
        q.add_argument("--epsilon", type=_number,
                       help="tolerance of Theorem 4.1 (default: the one saved with the run)")
        if name == "plot":
            q.add_argument("--step-axis", dest="step_axis", choices=["linear", "symlog"],
                           default="linear", help="step axis of the figures; symlog shows the "
                                                  "first steps (default linear)")
            q.add_argument("--out", type=Path, metavar="DIR",
                           help="folder of the figures (default: the folder of FILE)")
    from .cli_sweep import add_parser

    add_parser(sub, _number, _count)
    return p


def _version():
    from . import __version__

    return __version__


def _read_config(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        from ._extras import require

        tomllib = require("tomli", "config files", "cli")

    try:
        with open(path, "rb") as f:
            config = tomllib.load(f)
    except FileNotFoundError:
        raise InputError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"cannot read config file {path}: {exc}") from None
    unknown = sorted(set(config) - set(CONFIG_TYPES))
    if unknown:
        raise InputError(f"config file {path}: unknown key(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(CONFIG_TYPES))}")
    for key, value in config.items():
        types = CONFIG_TYPES[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InputError(f"config file {path}: {key} = {value!r} should be "
                             + " or ".join(t.__name__ for t in types))
    if "out" in config:
        config["out"] = Path(path).parent / config["out"]
    return config


def _options(args):
    """Effective options of a fresh run: defaults < preset < config file < command line."""
    given = {k: v for k, v in vars(args).items() if k not in ("command", "config")}
    config = _read_config(args.config) if "config" in vars(args) else {}
    preset = given.get("preset", config.get("preset", DEFAULTS["preset"]))
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = {} if "clusters" in config else PRESETS[preset]
    if "rtol" in given or "rtol" in config:
        raise UsageError(RTOL_REFUSED)
    opts = {**DEFAULTS, **base, **config, **given, "preset": preset}
    if "masked" in opts and ("gamma" in given or "gamma" in config):
        raise UsageError("give either masked or gamma, not both")
    if "clusters" in opts:
        opts.pop("preset")
        clash = [k for k in PAPER_KEYS if k in given or k in config]
        if clash:
            raise UsageError(f"the config file gives clusters; drop {', '.join(clash)}")
        if "eta" not in opts:
            raise UsageError("a setting given by clusters needs eta (--eta or eta = ...)")
    elif "masked" in opts:
        raise UsageError("masked applies to a setting given by clusters; the paper's setting "
                         "takes gamma")
    elif "tile_groups" in opts:
        raise UsageError("tile_groups needs [[clusters]] tables with the roles of each cluster")
    elif "eta" not in opts:
        # each of K clusters carries 1/K of the gradient: K times the step keeps the phases'
        # steps those of one cluster
        opts["eta"] = preset_eta(opts["P"], opts["kappa_s"]) * (
            opts["K"] if "overlap" in opts else 1)
    return opts


# The flow's tolerance was once --rtol here while mimfast sweep's --rtol is the quadrature's:
# refused by name rather than given a new meaning silently.
RTOL_REFUSED = ("--rtol (rtol in a config file) is not an option of mimfast run: the gradient "
                "flow's step tolerance is --flow-rtol (flow_rtol), as in mimfast sweep, whose "
                "--rtol is the quadrature's error tolerance")


def preset_eta(P, kappa_s):
    """The presets' learning rate at P: 100, times (P / 10^6)^(1 - kappa_s) above 10^6."""
    return PRESET_ETA * max(1.0, P / PRESET_P) ** (1 - kappa_s)


CLUSTER_KEYS = {"groups": True, "weight": False}  # key: required
TILED_CLUSTER_KEYS = {"roles": True, "z": False, "weight": False}  # with tile_groups
GROUP_KEYS = {"areas": True, "size": True, "z": False}


def _keys(table, allowed, what):
    """``table`` (a TOML table) when its keys are allowed and the required ones present."""
    if not isinstance(table, dict):
        raise TypeError(f"{what} must be a table, got {table!r}")
    names = ", ".join(k + ("" if need else " (optional)") for k, need in allowed.items())
    unknown = sorted(set(table) - set(allowed))
    missing = [k for k, need in allowed.items() if need and k not in table]
    if unknown or missing:
        problem = (f"unknown key(s) {', '.join(unknown)}" if unknown
                   else f"missing key(s) {', '.join(missing)}")
        raise ValueError(f"{what}: {problem}; its keys are {names}")
    return table


def _setting(opts):
    import mimfast as mf

    pp = None if opts.get("pp", "auto") == "auto" else opts["pp"]
    try:
        if "tile_groups" in opts:
            tables = [_keys(c, TILED_CLUSTER_KEYS, "a [[clusters]] entry")
                      for c in opts["clusters"]]
            roles = [c["roles"] for c in tables]
            z = [c.get("z", 1.0) for c in tables]
            z = [zk if isinstance(zk, dict) else dict.fromkeys(rk, zk)
                 for zk, rk in zip(z, roles)]
            kw = ({"masked": opts["masked"]} if "masked" in opts else {"gamma": opts["gamma"]})
            return mf.Setting.tiled(opts["tile_groups"], roles, z,
                                    [c.get("weight", 1.0) for c in tables],
                                    pp=pp or "exact", **kw)
        if "clusters" in opts:
            clusters = [mf.Cluster([mf.Group(**_keys(g, GROUP_KEYS, "a group")) for g in
                                    _keys(c, CLUSTER_KEYS, "a [[clusters]] entry")["groups"]],
                                   c.get("weight", 1.0))
                        for c in opts["clusters"]]
            if "masked" in opts:
                return mf.Setting(clusters, masked=opts["masked"], pp=pp)
            return mf.Setting(clusters, gamma=opts["gamma"], pp=pp)
        z = opts["z"]
        if isinstance(z, (list, tuple)):
            if not 1 <= len(z) <= 2:
                raise ValueError(f"z takes one value or two (global, local), got {len(z)}")
            z = z[0] if len(z) == 1 else tuple(z)
        if "overlap" in opts:
            if pp == "frozen":
                raise ValueError("the clusters over one tiling (overlap) learn PP; drop "
                                 "pp = frozen")
            return mf.Setting.paper_clusters(opts["P"], opts["kappa_c"], opts["kappa_s"],
                                             K=opts["K"], overlap=opts["overlap"],
                                             gamma=opts["gamma"], z=z)
        return mf.Setting.paper(opts["P"], opts["kappa_c"], opts["kappa_s"],
                                gamma=opts["gamma"], K=opts["K"], z=z, pp=pp)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise UsageError(f"bad setting: {exc}") from None


def _saved_options(out):
    """Options and result of the run saved in folder ``out`` (checkpoint first)."""
    from . import io

    if not out.is_dir():
        raise InputError(f"--resume: no such folder: {out}")
    for name in (CHECKPOINT, RESULT):
        if (out / name).is_file():
            path = out / name
            break
    else:
        raise InputError(f"--resume: {out} holds no {CHECKPOINT} or {RESULT} to continue")
    try:
        ds = io.open_dataset(path)
        opts = json.loads(ds.attrs["run_options"])
        if "rtol" in opts:  # saved when --rtol was the flow's tolerance
            opts["flow_rtol"] = opts.pop("rtol")
        return opts, io.from_dataset(ds)
    except (io.ResultFileError, KeyError, ValueError) as exc:
        raise InputError(f"--resume: {path} is not a resumable mimfast run ({exc})") from None


class _Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM as KeyboardInterrupt, held back while :meth:`hold` is active.

    Only the first signal interrupts: once it has arrived the run is stopping and saving what
    it has, and further signals (a second Ctrl-C, or ``timeout`` signalling both the process
    and its group) are noted and otherwise ignored, so they cannot disturb that save.

    An interrupt that lands inside a NetCDF write (under xarray's locks) or inside the progress
    bar could leave a lock taken; there it is only noted, and raised when the held section
    ends. Held sections are short: analysis and the other outputs are interruptible.
    """

    def __init__(self):
        self.holding = self.pending = self.stopping = False
        self.previous = {}

    def _handler(self, signum, frame):
        if self.stopping:
            os.write(2, b"mimfast: already stopping; saving what was computed\n")
            return
        self.stopping = True
        if self.holding:
            self.pending = True
        else:
            raise KeyboardInterrupt

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handler)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    @contextmanager
    def hold(self):
        """Run the block without interruption; raise a noted interrupt at its end."""
        self.holding, outer = True, self.holding
        try:
            yield
        finally:
            self.holding = outer
            if self.pending and not outer:
                self.pending = False
                raise KeyboardInterrupt


class _Progress:
    """Run callback: progress bar (tqdm) and checkpoints by wall time and by steps.

    ``simulate`` and ``flow`` call it a few times a second, and ``simulate`` after every step
    from a multiple of N (``callback_every``) when N is given. A checkpoint is saved at the first call at least
    ``seconds`` after the last one (or the start), and at the first call after each multiple
    of N (so none right after step 1); 0 turns either rule off. Saving a checkpoint rewrites
    the whole record so far, so a rule by time keeps its share of a long run small.
    """

    def __init__(self, show, start, total, checkpoint, every, interrupts, seconds=0,
                 clock=time.monotonic, setting=None):
        from ._extras import require

        self.bar = require("tqdm", "the progress bar", "cli").tqdm(total=total, initial=start, unit="step", disable=not show,
                        file=sys.stderr, dynamic_ncols=True, mininterval=0.25)
        self.checkpoint, self.every, self.interrupts = checkpoint, every, interrupts
        self.seconds, self.clock = seconds, clock
        self.setting = setting  # own-area attention per class; None: category 0's
        self.t, self.saved_at = start, clock()

    def __call__(self, t, grad, partial):
        with self.interrupts.hold():
            self.bar.update(t - self.t)
            last, self.t = self.t, t
            if not self.bar.disable:
                att = grad.attention if self.setting is None else own_attention(
                    self.setting, grad.attention)
                own = min(float(a.min() if self.setting else a[:, 0].min()) for a in att)
                self.bar.set_postfix_str(f"own-area attention (min) {own:.4f}", refresh=False)
        if ((self.every and t // self.every > last // self.every)
                or (self.seconds and self.clock() - self.saved_at >= self.seconds)):
            self.checkpoint(partial())
            self.saved_at = self.clock()

    def close(self, step=None):
        """Close the bar, first moved on to ``step`` (the run's last step) when given: the
        callbacks between checkpoints are timed, so the bar may lag the run by a few steps."""
        with self.interrupts.hold():
            if step is not None and step > self.t:
                self.bar.update(step - self.t)
                self.t = step
            self.bar.close()


@contextmanager
def _prepare_out(out, resume, force):
    """Create and lock the output folder for the run, remove what killed runs left, and
    refuse to overwrite a finished or unfinished run unless asked to.

    The lock file goes when the run ends, and so does a folder that this run created and left
    empty (a run refused or failed before writing anything)."""
    from . import io

    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = io.lock_folder(out)
    except io.FolderLockedError as exc:
        raise UsageError(f"{exc}; wait for it to finish or choose another --out") from None
    try:
        io.clean_temporaries(out)
        if resume is None:
            present = sorted(p.name for p in out.iterdir() if p.name != io.LOCK_NAME)
            if CHECKPOINT in present and not force:
                raise UsageError(f"{out} holds an unfinished run ({CHECKPOINT}): continue it "
                                 f"with `mimfast run --resume {out}`, or add --force to discard "
                                 "it, or choose another --out")
            if present and not force:
                shown = ", ".join(present[:5]) + (", ..." if len(present) > 5 else "")
                raise UsageError(f"{out} is not empty ({shown}); add --force to replace its "
                                 "files, or choose another --out")
            if force:
                (out / CHECKPOINT).unlink(missing_ok=True)
        yield lock
    finally:
        io.unlock_folder(lock)
        if created:
            try:
                out.rmdir()  # only when empty
            except OSError:
                pass


def _check_values(setting, opts):
    """The run's numbers as :func:`mimfast.simulate` checks them, refused as usage errors
    (exit 2) before anything is written."""
    from .grid import check_grid_memory, check_tail_tol
    from .quadrature import METHODS, choose_method
    from .simulate import _check_run

    for key, least in (("steps", 0), ("record_every", 1), ("checkpoint_every", 0)):
        if not least <= opts[key] <= MAX_COUNT:
            raise UsageError(f"{key.replace('_', '-')} must lie in [{least}, 2^53], "
                             f"got {opts[key]}")
    if not 0 <= opts.get("checkpoint_seconds", 0) < math.inf:  # NaN too
        raise UsageError(f"checkpoint-seconds must be finite and at least 0, "
                         f"got {opts['checkpoint_seconds']}")
    method = opts.get("method", "auto")
    if method not in METHODS:
        raise UsageError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    try:
        _check_run(setting, opts["eta"], opts["steps"], opts["record_every"],
                   opts.get("threads"))
        check_tail_tol(opts["tail_tol"])
        # memory of the method, refused with its estimate before anything is built
        if choose_method(setting, method) == "exact":
            check_grid_memory(setting)
    except (TypeError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if opts.get("step_axis", "linear") not in ("linear", "symlog"):
        raise UsageError(f"step_axis must be linear or symlog, got {opts['step_axis']!r}")


def _run(args):
    import mimfast as mf

    from . import io

    given = {k: v for k, v in vars(args).items() if k != "command"}
    resume = None
    if "resume" in given:
        extra = sorted(set(given) - RESUME_KEYS)
        if extra:
            raise UsageError("--resume continues the saved run with its own settings; drop "
                             + ", ".join("--" + k.replace("_", "-") for k in extra))
        opts, resume = _saved_options(args.resume)
        opts.update({k: v for k, v in given.items() if k in RESUME_KEYS}, out=str(args.resume))
        opts.pop("resume")
    else:
        opts = _options(args)
    force = bool(opts.pop("force", False))
    out = Path(opts["out"])
    setting = _setting(opts)
    if not 0 < opts["epsilon"] < 1:
        raise UsageError(f"epsilon must lie in (0, 1), got {opts['epsilon']}")
    _check_values(setting, opts)
    _check_flow(opts, given, resume)
    from .backends import get_kernel

    if opts["backend"] not in mf.backends():
        why = ""
        try:
            get_kernel(opts["backend"])
        except ImportError as exc:  # a known backend without its dependency: say which extra
            why = ": " + str(exc).split(": ", 1)[-1]
        except (TypeError, ValueError):
            pass
        raise UsageError(f"backend {opts['backend']!r} is not available here{why}; "
                         f"available: {', '.join(mf.backends())}")
    if resume is not None and "flow" not in opts and opts["steps"] < resume.last_step:
        raise UsageError(f"--steps {opts['steps']}: the saved run is already at step "
                         f"{resume.last_step}")
    if (resume is not None and "flow" not in opts and opts["steps"] == resume.last_step
            and not (out / CHECKPOINT).exists()):
        print(f"mimfast run: the run in {out} is finished ({resume.last_step} steps); "
              f"nothing to do. Extend it with `mimfast run --resume {out} --steps N`, "
              f"N > {resume.last_step}", file=sys.stderr)
        return EXIT_OK
    saved = {k: (str(v) if isinstance(v, Path) else v) for k, v in opts.items()
             if k not in ("progress", "threads")}
    attrs = {"run_options": json.dumps(saved, sort_keys=True)}
    show = opts.get("progress")
    show = sys.stderr.isatty() if show is None else show
    start = 0 if resume is None else resume.last_step
    with _Interrupts() as interrupts, _prepare_out(out, resume, force):

        def checkpoint(partial):
            with interrupts.hold():
                io.save(partial, out / CHECKPOINT, attrs=attrs)

        def save_and_stop(result, when):
            checkpoint(result)
            print(f"mimfast: interrupted {when}; checkpoint saved to {out / CHECKPOINT}; "
                  f"continue with `mimfast run --resume {out}`", file=sys.stderr)
            return EXIT_INTERRUPTED

        try:
            if "flow" in opts:  # progress in accepted steps, checkpoints by time
                progress = _Progress(show, 0 if resume is None else len(resume) - 1, None,
                                     checkpoint, 0, interrupts,
                                     opts.get("checkpoint_seconds", 0))
                try:
                    tau, stop_at = _flow_end(opts)
                    result = mf.flow(setting, tau, rtol=opts.get("flow_rtol", 1e-10),
                                     stop_at=stop_at, backend=opts["backend"],
                                     method=opts["method"], threads=opts.get("threads"),
                                     tail_tol=opts["tail_tol"], epsilon=opts["epsilon"],
                                     resume=resume, callback=progress)
                except mf.Interrupted as exc:
                    progress.close(len(exc.result) - 1)
                    return save_and_stop(exc.result, f"at tau {exc.result.tau[-1]:.6g}")
                except KeyboardInterrupt:
                    progress.close()
                    if resume is not None:
                        return save_and_stop(resume, f"at tau {resume.tau[-1]:.6g}")
                    print("mimfast: interrupted before the first step; nothing saved",
                          file=sys.stderr)
                    return EXIT_INTERRUPTED
                progress.close(len(result) - 1)
                return _finish(result, opts, out, attrs, save_and_stop, interrupts,
                               f"tau {result.tau[-1]:.6g}")
            progress = _Progress(show, start, opts["steps"], checkpoint, opts["checkpoint_every"],
                                 interrupts, opts.get("checkpoint_seconds", 0),
                                 setting=setting)
            try:
                result = mf.simulate(setting, float(opts["eta"]), opts["steps"],
                                     opts["record_every"], backend=opts["backend"],
                                     method=opts["method"],
                                     threads=opts.get("threads"), tail_tol=opts["tail_tol"],
                                     resume=resume, callback=progress,
                                     callback_every=opts["checkpoint_every"] or None)
            except mf.Interrupted as exc:
                progress.close(exc.result.last_step)
                return save_and_stop(exc.result, f"after step {exc.result.last_step}")
            except KeyboardInterrupt:
                progress.close()
                if resume is not None:
                    return save_and_stop(resume, f"before step {resume.last_step + 1}")
                print("mimfast: interrupted before the first step; nothing saved", file=sys.stderr)
                return EXIT_INTERRUPTED
            progress.close(result.last_step)
            return _finish(result, opts, out, attrs, save_and_stop, interrupts,
                           f"step {result.last_step}")
        finally:  # what an interrupt cut short (it may land in a cleanup too)
            io.clean_temporaries(out)


FLOW_KEYS = {"flow", "stop_at", "flow_rtol"}
GD_ONLY = {"eta", "steps", "record_every", "checkpoint_every"}


def _check_flow(opts, given, resume):
    """Refuse (exit 2) a gradient-flow run given GD's own options, or flow options without
    --flow, before anything is written."""
    if "flow" not in opts:
        extra = sorted(FLOW_KEYS & set(opts))
        if extra:
            raise UsageError(", ".join("--" + k.replace("_", "-") for k in extra)
                             + " apply to a gradient-flow run: add --flow TAU")
        return
    clash = sorted(GD_ONLY & set(given))
    if clash:
        raise UsageError("--flow integrates the gradient flow; drop the GD options "
                         + ", ".join("--" + k.replace("_", "-") for k in clash))
    from .flow import _check_flow as check

    try:
        tau, stop_at = _flow_end(opts)
        check(_setting(opts), tau, opts.get("flow_rtol", 1e-10), stop_at, opts["epsilon"], 1)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--flow: {exc}") from None


def _flow_end(opts):
    """``(tau, stop_at)`` of a flow run: ``--flow`` without TAU runs until T_eps."""
    if opts["flow"] == math.inf:
        from .flow import UNTIL_EVENT

        return UNTIL_EVENT, opts.get("stop_at") or "T_eps"
    return opts["flow"], opts.get("stop_at")



def _finish(result, opts, out, attrs, save_and_stop, interrupts, where):
    """Analyse a finished run and write its outputs (an interrupt while writing them saves the
    run as the checkpoint); ``where`` names the run's end (its last step or flow time)."""
    from .analysis import analyze

    try:
        _write_outputs(result, analyze(result, opts["epsilon"]), out, attrs, opts["plots"],
                       interrupts, opts.get("step_axis", "linear"))
    except KeyboardInterrupt:
        return save_and_stop(result, f"while writing the outputs (the run is complete at "
                                     f"{where})")
    (out / CHECKPOINT).unlink(missing_ok=True)
    return EXIT_OK


def _write_outputs(result, analysis, out, attrs, plots, interrupts, step_axis="linear"):
    """Write the results file, the table and the summary with interrupts held (an interrupt
    inside a NetCDF write could leave xarray's lock taken, and the checkpoint that follows
    would wait on it forever), then the figures, interruptibly."""
    from . import io

    text = _report(result, analysis)
    with interrupts.hold():
        files = [io.save(result, out / RESULT, analysis, attrs),
                 io.export(result, out / "trajectories.csv"),
                 io.write_text(out / "summary.txt", text + "\n")]
    if plots:
        from .plots import save_figures

        files += save_figures(result, out, analysis, step_axis)
    print(text)
    print("wrote " + ", ".join(str(f) for f in files), file=sys.stderr)


def _load(path):
    from . import io

    if Path(path).is_dir():  # a run's output folder
        path = Path(path) / RESULT

    try:
        ds = io.open_dataset(path)
        return io.from_dataset(ds), ds.attrs
    except (FileNotFoundError, io.ResultFileError) as exc:
        raise InputError(str(exc)) from None


def _saved_analysis(args):
    from .analysis import EPSILON, analyze

    result, attrs = _load(args.file)
    eps = getattr(args, "epsilon", None)
    eps = float(attrs.get("analysis_epsilon", EPSILON)) if eps is None else eps
    if not 0 < eps < 1:
        raise UsageError(f"epsilon must lie in (0, 1), got {eps}")
    return result, analyze(result, eps)


def _report(result, analysis):
    """What a run prints: how the correlations evolve, then the summary table and claims,
    then which engine computed the expectations."""
    from .analysis import evolution

    return (evolution(result, epsilon=analysis.epsilon) + "\n\n" + analysis.table() + "\n\n"
            + _engine(result))


def _engine(result):
    """Which engine computed the run's expectations, and how exact they are."""
    from .analysis import class_name, paper_shaped
    from .quadrature import AUTO_GRID_POINTS, LEVELS, grid_points_estimate

    s = result.setting
    points = grid_points_estimate(s)
    if result.method == "quadrature":
        paper = paper_shaped(s)
        nodes = ", ".join(f"{class_name(s, k, h, paper)} {'x'.join(str(LEVELS[i]) for i in v)}"
                          for (k, h), v in sorted(result.levels.items()))
        worst = max((float(e) for e in result.error), default=0.0)
        met = ("tolerance met" if result.tolerance_met
               else "tolerance MISSED at some step: rerun with --method exact")
        return _wrap(f"Engine: Gauss-Hahn quadrature (docs/model.md §8), {result.backend} backend; "
                f"nodes per dimension at the last step: {nodes or 'not recorded'}.\n"
                f"Largest estimated relative error over the recorded steps: {worst:.1e} "
                f"({met}). The exact count grid would visit about {points:,.0f} points per "
                f"step (method auto takes it up to {AUTO_GRID_POINTS:,}).")
    tail = "" if result.tail_tol is None else f" (tail_tol {result.tail_tol:g})"
    return _wrap(f"Engine: exact count grid (docs/model.md §3), {result.backend} backend; about "
                 f"{points:,.0f} points per step.\nProbability mass left out of a class's grid: "
                 f"at most {result.dropped:.1e}{tail}; otherwise exact up to floating-point "
                 "rounding.")


def _wrap(text, width=96):
    import textwrap

    return "\n".join(textwrap.fill(line, width) for line in text.splitlines())


def _summary(args):
    print(_report(*_saved_analysis(args)))
    return EXIT_OK


def _plot(args):
    from .plots import save_figures

    result, analysis = _saved_analysis(args)
    out = args.out if args.out is not None else (
        args.file if args.file.is_dir() else args.file.parent)
    paths = save_figures(result, out, analysis, args.step_axis)
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return EXIT_OK


def _sweep(args):
    from .cli_sweep import run

    return run(args, UsageError)


# what each command needs beyond numpy, and the extra of mimfast that installs it
COMMAND_EXTRAS = {
    "run": (("xarray", "netCDF4", "pandas", "tqdm", "matplotlib"), "cli"),
    "summary": (("xarray", "netCDF4"), "io"),
    "plot": (("xarray", "netCDF4", "matplotlib"), "cli"),
    "sweep": (("xarray", "netCDF4", "pandas", "tqdm", "matplotlib", "scipy"), "sweep"),
}


def _require_extras(command):
    """Fail before any work when an optional dependency of ``command`` is missing."""
    from ._extras import require_all

    modules, extra = COMMAND_EXTRAS[command]
    if command == "run" and sys.version_info < (3, 11):
        modules += ("tomli",)  # config files
    require_all(modules, f"`mimfast {command}`", extra)


def _unknown_options(parser, command, unknown):
    """Exit 2 with the subcommand's usage, naming the closest option of each unknown one."""
    import difflib

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub = sub.choices[command]
    known = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    hints = []  # after the words, not between an option and its value
    for word in unknown:
        option = word.split("=")[0]
        close = option.startswith("-") and difflib.get_close_matches(option, known, n=1,
                                                                      cutoff=0.6)
        if close:
            hints.append((option, close[0]))
    text = "unrecognized arguments: " + " ".join(unknown)
    if len(hints) == 1:
        text += f" (did you mean {hints[0][1]}?)"
    elif hints:
        text += " (did you mean " + ", ".join(f"{c} for {o}" for o, c in hints) + "?)"
    sub.error(text)


def main(argv=None):
    """Entry point of the ``mimfast`` command; returns the exit code.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        0 success, 1 run failed, 2 bad usage, 3 bad input file, 130 interrupted.
    """
    parser = _parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            _unknown_options(parser, args.command, unknown)
    except SystemExit as exc:  # --help, --version (0) and usage errors (2)
        return int(exc.code or 0)
    command = {"run": _run, "summary": _summary, "plot": _plot, "sweep": _sweep}[args.command]
    try:
        _require_extras(args.command)
        return command(args)
    except UsageError as exc:
        print(f"mimfast {args.command}: error: {_in_options(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except InputError as exc:
        print(f"mimfast {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("mimfast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (FloatingPointError, ValueError, ImportError, OSError) as exc:
        print(f"mimfast {args.command}: error: {_in_options(exc)}", file=sys.stderr)
        return EXIT_ERROR
    finally:
        if argv is None and hasattr(signal, "SIGINT"):
            # the command line's outcome is decided: a Ctrl-C arriving now (`timeout`
            # signals the process and then its group) must not turn it into death by SIGINT
            # as the interpreter exits; called from Python, the caller's handler stays
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
            except ValueError:  # not the main thread
                pass


def _in_options(exc):
    """An error's text with the engine's advice in the command's words."""
    return str(exc).replace('method="quadrature"', "--method quadrature")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

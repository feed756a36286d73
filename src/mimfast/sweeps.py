"""Scaling studies: many runs of the paper's setting, one results table (docs/scaling.md).

A *sweep* is a list of tasks; each task is one :func:`mimfast.simulate` (GD) or, with
``flow = True``, one :func:`mimfast.flow` (the gradient flow) of
``Setting.paper(P, kappa_c, kappa_s, gamma, K, z)`` plus its analysis (docs/model.md §4–5,
§9); a task with ``overlap`` (a number in [0, 1], with K >= 2) runs
``Setting.paper_clusters(P, kappa_c, kappa_s, K, overlap, gamma, z)`` instead: K clusters
over one tiling, with learned PP, whose rows also measure what PP does across them
(``{global,local}_pp_share_max``, ``{global,local}_pp_share_final``).
:func:`sweep` runs the tasks that are not finished yet on an executor and writes, in the
output folder:

- ``results.csv``: one row per task (:data:`COLUMNS`, then a checksum of the row),
  rewritten whole and atomically each time a task finishes, so a row is there completely or
  not at all;
- ``runs/<task>.nc``: each finished run's results file (:func:`mimfast.io.save`, analysis
  included), written and verified by its checksum before its row says ``done``.

Re-running a sweep on the same folder skips the tasks whose row says ``done`` and whose
results file still passes its checksum, and runs the others again, failed ones included: a
killed sweep loses nothing that finished. A row that fails its own checksum is reported and
its task run again (a damaged row of no task of the sweep is dropped with a message). A task
that raises is recorded with ``status = "failed"`` and its error, and does not stop the
others; neither does a local worker process that dies (its task alone fails, and a new pool
runs the rest).

Every task is checked before any runs (setting, numbers, backend, threads, method and its
memory): a sweep with a task that would be refused is refused whole, naming the tasks.

The time unit across P
----------------------
The table gives every time in flow time τ (columns ``*_tau``): the located event time of a
gradient-flow task, η · step for GD. A gradient-flow task runs to ``tau``, or with ``tau``
None (the default) until T_eps of every class, with local error tolerance ``flow_rtol``; the
GD options (:data:`GD_ONLY`) do not apply to it and are empty in its row, as the flow's
(:data:`FLOW_ONLY`) are in a GD task's, so GD and flow tasks never share an id.

With ``eta_rule = "scaled"`` (the default) a task runs at η = eta · (P / 10^6)^(1 − κ_s):
the own-feature gradient of a local query shrinks like c_l / P = P^−(1−κ_s) (docs/model.md
§4), so this rule keeps the pace of own-feature learning, per step, the same at every P and
makes step counts comparable across P. At large P, though, such a step moves an FP
correlation by more than 1 before the switch (from P = 10^7 for κ_c = 0.9, κ_s = 0.3; from
10^8 one step crosses the whole first phase), and the analysis marks the run's phase verdict
untrusted (column ``trusted``). ``eta_rule = "fixed"`` runs at η = eta.

The step budget is ``steps`` GD updates, or with ``until = True`` the run stops at the first
recorded step where every class has own-area attention at least 1 − ε (T_ε), with ``steps``
as the cap. A run that ends before T_ε of every class is marked ``converged = False``.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io as _text
import itertools
import json
import math
import os
import signal
import sys
import time
from contextlib import closing
from numbers import Integral, Real
from pathlib import Path

from ._extras import require, require_all

__all__ = ["COLUMNS", "PRESETS", "TABLE", "check_task", "check_tasks", "dask_key", "expand",
           "preset", "read_table", "run_task", "sweep", "task_id"]

TABLE, RUNS, LOCK = "results.csv", "runs", ".sweep.lock"
# last column of the table file: a checksum of the row's other fields (not in the DataFrame)
ROW_SUM = "row_sha256"
ETA_P0 = 10**6

# A task's parameters and their defaults: the paper's setting, then the run options.
# ``flow``: integrate the gradient flow (:func:`mimfast.flow`) to ``tau``, or with ``tau`` None
# to T_eps of every class, at the integrator's tolerance ``flow_rtol``; else GD.
DEFAULTS = {
    "P": None, "kappa_c": None, "kappa_s": None, "gamma": 0.5, "K": 1, "z": 1.0,
    "overlap": None, "pp": "auto", "flow": False, "tau": None, "flow_rtol": 1e-10, "eta": 100.0,
    "eta_rule": "scaled", "steps": 2000, "until": False, "record_every": 1, "method": None,
    "rtol": None, "backend": "cpp", "epsilon": 0.05, "tail_tol": 1e-15,
}
#: The options of one stepping rule only: a task of the other rule has them empty (None),
#: so they neither enter its identity nor its row.
GD_ONLY = ("eta", "eta_rule", "steps", "until", "record_every")
FLOW_ONLY = ("tau", "flow_rtol")
_TYPES = {
    "P": Integral, "K": Integral, "steps": Integral, "record_every": Integral,
    "kappa_c": Real, "kappa_s": Real, "gamma": Real, "z": Real, "eta": Real, "epsilon": Real,
    "tail_tol": Real, "until": bool, "flow": bool, "pp": str, "eta_rule": str, "backend": str,
    "method": (str, type(None)), "rtol": (Real, type(None)), "tau": (Real, type(None)),
    "flow_rtol": Real, "overlap": (Real, type(None)),
}
_CHOICES = {"pp": ("auto", "exact", "frozen"), "eta_rule": ("fixed", "scaled"),
            "method": (None, "exact", "quadrature", "auto")}


def _dtype(types):
    """The table column type of a parameter of type(s) ``types``."""
    first = types[0] if isinstance(types, tuple) else types
    return {Integral: "Int64", bool: "boolean", Real: "float64"}.get(first, "string")


# The results table: column -> dtype (pandas nullable types, so a missing value stays empty
# and a table reads back equal to the one written). Times are given twice: in recorded steps
# (``switch``, ``T_eps``; for a flow run the index of an accepted step) and in flow time τ
# (``*_tau``: η · step for GD, the located event time for the flow).
_PER_CLASS = {"switch": "Int64", "switch_tau": "float64", "phases": "Int64", "T_eps": "Int64",
              "T_eps_tau": "float64", "attention": "float64", "loss_gap": "float64",
              "irreducible": "float64", "pp_share_max": "float64", "pp_share_final": "float64"}
COLUMNS = {
    "task": "string", "status": "string",
    **{k: _dtype(_TYPES[k]) for k in DEFAULTS},
    "delta": "float64", "delta_actual": "float64", "eta_used": "float64",
    "method_used": "string", "last_step": "Int64", "last_tau": "float64",
    "evaluations": "Int64", "converged": "boolean", "trusted": "boolean",
    **{f"{c}_{q}": t for c in ("global", "local") for q, t in _PER_CLASS.items()},
    "local_fp_global_min": "float64", "local_fp_global_min_step": "Int64",
    "local_fp_global_min_tau": "float64", "local_fp_global_falling": "boolean",
    "local_fp_global_at_switch": "float64", "local_fp_own_at_switch": "float64",
    "local_grad_ratio0": "float64",
    "pp_fp_ratio": "float64", "dropped": "float64", "error_estimate": "float64",
    "wall_s": "float64", "file": "string", "error": "string",
}


#: Columns added to the table since its first layout: a table written without them still
#: reads (they are empty there), and the next write of its sweep adds them.
ADDED = ("overlap", "global_pp_share_max", "global_pp_share_final", "local_pp_share_max",
         "local_pp_share_final")


def task_id(task):
    """Stable id of a task: a hash of its parameters (defaults filled in; an ``overlap`` of
    None is left out, so the tasks of ``Setting.paper`` keep the ids they had before the
    parameter existed)."""
    task = _complete(task)
    if task["overlap"] is None:
        del task["overlap"]
    text = json.dumps(task, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _complete(task):
    """The task with defaults filled in and every parameter checked (ValueError/TypeError);
    the options of the other stepping rule (:data:`GD_ONLY`, :data:`FLOW_ONLY`) are None."""
    if not isinstance(task, dict):
        raise TypeError(f"a task is a dict of parameters, got {type(task).__name__}")
    unknown = sorted(set(task) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown task parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(DEFAULTS)}")
    flow = task.get("flow", DEFAULTS["flow"])
    other = FLOW_ONLY if flow is False else GD_ONLY
    clash = [k for k in other if task.get(k) is not None]
    if flow is True and clash:
        raise ValueError(f"a gradient-flow task (flow=True) takes no GD option: drop "
                         f"{', '.join(clash)}")
    if flow is False and clash:
        raise ValueError(f"{', '.join(clash)} apply to a gradient-flow task: add flow=True")
    out = {**DEFAULTS, **task}
    for key, value in out.items():
        if key in other:
            out[key] = None
            continue
        if value is None and key in ("P", "kappa_c", "kappa_s"):
            raise ValueError(f"a task needs {key}")
        types = _TYPES[key]
        if isinstance(value, bool) and types is not bool or not isinstance(value, types):
            raise TypeError(f"task parameter {key} = {value!r} has the wrong type")
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ValueError(f"task parameter {key} = {value!r}; choose one of "
                             + ", ".join(map(repr, _CHOICES[key])))
        if types is Integral:
            out[key] = int(value)
        elif types is Real or (value is not None and key in ("rtol", "tau", "overlap")):
            out[key] = float(value)
            if not math.isfinite(out[key]):
                raise ValueError(f"task parameter {key} = {value!r} is not finite")
    if out["overlap"] is not None:
        if not 0 <= out["overlap"] <= 1:
            raise ValueError(f"task parameter overlap = {out['overlap']!r} must lie in [0, 1]")
        if out["K"] < 2:
            raise ValueError(f"task parameter overlap = {out['overlap']!r} needs K >= 2 "
                             f"clusters, got K = {out['K']}")
        if out["pp"] == "frozen":
            raise ValueError("a task with overlap learns PP (Setting.paper_clusters): pp "
                             "must be 'auto' or 'exact', not 'frozen'")
    return out


def expand(grid=None, tasks=None):
    """The task list of a sweep: the cartesian product of ``grid``, then ``tasks``.

    Parameters
    ----------
    grid : dict, optional
        Parameter name -> one value or a list of values; every combination is a task (the
        last parameter varies fastest).
    tasks : list of dict, optional
        Further tasks, each a dict of parameters.

    Returns
    -------
    list of dict
        Complete tasks (defaults filled in), duplicates dropped, in order.
    """
    out = []
    if grid:
        if not isinstance(grid, dict):
            raise TypeError(f"grid must be a dict of parameter values, got {type(grid).__name__}")
        keys = list(grid)
        values = [v if isinstance(v, (list, tuple)) else [v] for v in grid.values()]
        out += [dict(zip(keys, combo)) for combo in itertools.product(*values)]
    out += list(tasks or [])
    complete, seen = [], set()
    for task in out:
        task = _complete(task)
        key = task_id(task)
        if key not in seen:
            seen.add(key)
            complete.append(task)
    return complete


def effective_eta(task):
    """The learning rate of a task: eta, times (P / 10^6)^(1 - kappa_s) for the scaled rule
    (None for a gradient-flow task)."""
    if task["flow"]:
        return None
    if task["eta_rule"] == "fixed":
        return task["eta"]
    return task["eta"] * (task["P"] / ETA_P0) ** (1 - task["kappa_s"])


class _Converged(Exception):
    """Raised by the step callback of an ``until`` run once T_eps is reached."""

    def __init__(self, result):
        super().__init__("converged")
        self.result = result


def _flow_end(task):
    """``(tau, stop_at)`` of a gradient-flow task: to ``tau``, or with ``tau`` None to T_eps of
    every class (as ``mimfast run --flow`` without TAU)."""
    from .flow import UNTIL_EVENT

    return (UNTIL_EVENT, "T_eps") if task["tau"] is None else (task["tau"], None)


def _flow(setting, task, threads):
    import mimfast as mf

    tau, stop_at = _flow_end(task)
    kwargs = {} if task["rtol"] is None else {"quad_rtol": task["rtol"]}
    return mf.flow(setting, tau, rtol=task["flow_rtol"], stop_at=stop_at,
                   backend=task["backend"], threads=threads, tail_tol=task["tail_tol"],
                   method=task["method"] or "auto", epsilon=task["epsilon"], **kwargs)


def _simulate(setting, task, threads):
    import mimfast as mf

    from .model import own_attention

    if task["flow"]:
        return _flow(setting, task, threads)
    kwargs = {"backend": task["backend"], "threads": threads, "tail_tol": task["tail_tol"]}
    if task["method"] not in (None, "exact") or "method" in _simulate_parameters():
        if "method" not in _simulate_parameters():
            raise ValueError(f"method={task['method']!r}: this mimfast has only the exact "
                             "engine (method 'exact')")
        if task["method"] is not None:
            kwargs["method"] = task["method"]
    if task["rtol"] is not None:  # the quadrature's error tolerance (docs/model.md §8)
        kwargs["rtol"] = task["rtol"]
    every, target = task["record_every"], 1 - task["epsilon"]

    def stop(t, grad, partial):
        # grad holds the observables at step t - 1
        if (t - 1) % every == 0 and min(float(a.min()) for a in
                                         own_attention(setting, grad.attention)) >= target:
            raise _Converged(partial())

    callback = stop if task["until"] else None
    try:
        return mf.simulate(setting, effective_eta(task), task["steps"], every,
                           callback=callback, callback_every=every, **kwargs)
    except _Converged as exc:
        return exc.result


def _simulate_parameters():
    import mimfast as mf

    return inspect.signature(mf.simulate).parameters


def _worst(values, pick=max):
    """``pick`` of the clusters' values, None when some cluster has none."""
    return None if None in values else pick(values)


def _measure(result, analysis):
    """The table columns measured on a finished run, from its analysis (per class: the worst
    over the clusters). The number of phases is the analysis' verdict
    (:attr:`mimfast.analysis.ClassSummary.phases`: a switch after Q = 0 counts as a second
    phase only after the global FP correlation decoupled), so the table and the report of a
    run always agree."""
    from .analysis import pp_fp_sizes

    row = {}
    for name in ("global", "local"):
        rows = [c for c in analysis.classes if c.kind == name]
        row[f"{name}_switch"] = _worst([c.phase_switch for c in rows])
        row[f"{name}_switch_tau"] = _worst([c.switch_tau for c in rows])
        row[f"{name}_phases"] = _worst([c.phases for c in rows])
        row[f"{name}_T_eps"] = _worst([c.convergence_time for c in rows])
        row[f"{name}_T_eps_tau"] = _worst([c.convergence_tau for c in rows])
        row[f"{name}_attention"] = min(c.attention for c in rows)
        row[f"{name}_loss_gap"] = max(c.loss_gap for c in rows)
        # the scale below which a quadrature run's loss gap is not resolved (scaling.fits)
        row[f"{name}_irreducible"] = max(c.irreducible for c in rows)
        row[f"{name}_pp_share_max"], row[f"{name}_pp_share_final"] = _pp_shares(result, rows)
    local = [c for c in analysis.classes if c.kind == "local"]
    # R(0) of docs/model.md §4: |dL/dA_global| / |dL/dA_own| of a local query at Q = 0
    row["local_grad_ratio0"] = _worst([c.grad_ratio0 for c in local])
    low = min(local, key=lambda c: c.global_fp_min)
    row["local_fp_global_min"] = low.global_fp_min
    row["local_fp_global_min_step"] = low.global_fp_min_step
    row["local_fp_global_min_tau"] = low.global_fp_min_tau
    # no minimum yet: the correlation still falls at the end of the run
    row["local_fp_global_falling"] = bool(low.global_fp_min_step == analysis.last_step > 0)
    late = max(local, key=lambda c: -1 if c.switch_tau is None else c.switch_tau)
    row["local_fp_global_at_switch"] = late.fp_global_at_switch
    row["local_fp_own_at_switch"] = late.fp_own_at_switch
    row["trusted"] = analysis.trusted  # GD steps before the switch small enough for the flow
    pp, fp = pp_fp_sizes(result)
    row["pp_fp_ratio"] = pp / fp if fp else math.nan
    row["converged"] = row["global_T_eps"] is not None and row["local_T_eps"] is not None
    row["last_step"] = result.last_step
    row["last_tau"] = (float(result.tau[-1]) if result.is_flow
                       else result.eta * result.last_step)
    row["evaluations"] = getattr(result, "evaluations", None)
    row["method_used"] = getattr(result, "method", "exact")
    row["dropped"] = result.dropped
    error = getattr(result, "error", None)
    row["error_estimate"] = math.nan if error is None else float(max(error, default=math.nan))
    return row


def _pp_shares(result, classes):
    """The largest share of a class's own-area logit gap that comes from PP
    (:func:`mimfast.analysis.pp_share`), over ``classes``
    (:class:`~mimfast.analysis.ClassSummary`) and the recorded steps, and over them at the
    last step; NaN with frozen PP or no class whose gap has a part."""
    import numpy as np

    from .analysis import logit_gap_parts, pp_share

    best, final = math.nan, math.nan
    for c in classes:
        parts = logit_gap_parts(result, c.k, c.h)
        if parts is None:
            continue
        share = pp_share(parts)
        if np.all(np.isnan(share)):
            continue
        best = float(np.fmax(best, np.nanmax(share)))
        final = float(np.fmax(final, share[-1]))
    return best, final


def _setting(task):
    import mimfast as mf

    if task["overlap"] is not None:
        return mf.Setting.paper_clusters(task["P"], task["kappa_c"], task["kappa_s"],
                                         K=task["K"], overlap=task["overlap"],
                                         gamma=task["gamma"], z=task["z"])
    pp = None if task["pp"] == "auto" else task["pp"]
    return mf.Setting.paper(task["P"], task["kappa_c"], task["kappa_s"], gamma=task["gamma"],
                            K=task["K"], z=task["z"], pp=pp)


def check_task(task, threads=None):
    """Refuse a task, before anything runs, that its run would refuse.

    Checks the setting, the learning rate, ``steps`` and ``record_every`` (at most 2^53),
    ``tail_tol``, ``epsilon``, the backend, ``threads``, ``rtol`` (down to what double
    precision can reach, :data:`mimfast.quadrature.MIN_RTOL`) and the memory of the method
    the run would use (:func:`mimfast.grid.check_grid_memory`,
    :func:`mimfast.quadrature.check_quadrature`).

    Raises
    ------
    ValueError, TypeError
    """
    import mimfast as mf

    from .grid import check_grid_memory, check_tail_tol
    from .simulate import _check_run

    task = _complete(task)
    setting = _setting(task)
    if task["flow"]:
        from .backends import check_threads
        from .flow import _check_flow

        _check_flow(setting, _flow_end(task)[0], task["flow_rtol"], _flow_end(task)[1],
                    task["epsilon"], 1)
        if threads is not None:
            check_threads(threads)
    else:
        _check_run(setting, effective_eta(task), task["steps"], task["record_every"], threads)
    check_tail_tol(task["tail_tol"])
    if not 0 < task["epsilon"] < 1:
        raise ValueError(f"epsilon must lie in (0, 1), got {task['epsilon']}")
    if task["backend"] not in mf.backends():
        raise ValueError(f"backend {task['backend']!r} is not available here; available: "
                         f"{', '.join(mf.backends())}")
    method = task["method"] or "auto"
    if "method" in _simulate_parameters():
        from .quadrature import MIN_RTOL, choose_method

        rtol = task["rtol"]
        if rtol is not None and not MIN_RTOL <= rtol < 1:
            raise ValueError(f"rtol must lie in [2^-52, 1), got {rtol!r}: below 2^-52 double "
                             "precision cannot meet it")
        method = choose_method(setting, method)
    if method == "exact":
        check_grid_memory(setting)


def check_tasks(tasks, threads=None):
    """Refuse (ValueError) a list of tasks if :func:`check_task` refuses any, naming them all
    (grouped by the reason)."""
    refused = {}
    for task in tasks:
        try:
            check_task(task, threads)
        except (ValueError, TypeError, OverflowError) as exc:
            refused.setdefault(f"{type(exc).__name__}: {exc}" if not isinstance(exc, ValueError)
                               else str(exc), []).append(task)
    if not refused:
        return
    n = sum(len(v) for v in refused.values())
    parts = []
    for reason, bad in refused.items():
        named = "; ".join(_name(t) for t in bad[:3]) + ("; ..." if len(bad) > 3 else "")
        parts.append(f"{len(bad)} task(s) ({named}): {reason}")
    raise ValueError(f"{n} of {len(tasks)} tasks would be refused, so none is run:\n  "
                     + "\n  ".join(parts))


def _name(task):
    """A task for a message: its id and the parameters that differ from the defaults."""
    given = ", ".join(f"{k}={v}" for k, v in task.items()
                      if v != DEFAULTS[k] and (v is not None or k not in GD_ONLY + FLOW_ONLY))
    return f"task {task_id(task)} ({given})"


def run_task(task, out, threads=None):
    """Run one task: simulate, analyse, save ``out/runs/<task>.nc``; return its table row.

    Any exception of the run is caught and recorded (``status = "failed"``, ``error``);
    interrupts are not.

    Parameters
    ----------
    task : dict
        Task parameters (see :func:`expand`).
    out : str or Path
        Output folder of the sweep.
    threads : int, optional
        Threads of the compiled kernel for this task.

    Returns
    -------
    dict
        The row, keyed by :data:`COLUMNS`.
    """
    from . import io
    from .analysis import analyze

    start = time.perf_counter()
    task = _complete(task)
    key = task_id(task)
    row = {**task, "task": key, "status": "failed"}
    try:
        setting = _setting(task)
        row.update(delta=setting.delta, delta_actual=setting.delta_actual,
                   eta_used=effective_eta(task))
        result = _simulate(setting, task, threads)
        analysis = analyze(result, task["epsilon"])
        row.update(_measure(result, analysis))
        rel = f"{RUNS}/{key}.nc"
        (Path(out) / RUNS).mkdir(parents=True, exist_ok=True)
        io.save(result, Path(out) / rel, analysis, attrs={"sweep_task": json.dumps(task)})
        io.check_file(Path(out) / rel)  # done only once the file on disk verifies
        row.update(status="done", file=rel)
    except Exception as exc:  # noqa: BLE001 - recorded in the table; the sweep goes on
        row["error"] = f"{type(exc).__name__}: {exc}"
    row["wall_s"] = time.perf_counter() - start
    return row


def _frame(rows):
    pd = require("pandas", "the sweep results table", "sweep")

    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS))
    for col, dtype in COLUMNS.items():
        df[col] = df[col].astype("object").where(df[col].notna(), None).astype(dtype)
    return df


def _row_sum(fields):
    """Checksum of a table row: SHA-256 of its fields as written (16 hex digits)."""
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()[:16]


def _read_rows(path):
    """The table at ``path`` and its damaged rows: ``(DataFrame, [(line, task), ...])``.

    A damaged row (wrong checksum, or cut short) is left out of the frame; ``task`` is what
    its first field holds, which may be cut too.
    """
    pd = require("pandas", "the sweep results table", "sweep")

    # floats must read back bit for bit: the default parser of pandas 3 does, older ones not
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    if not path.is_file():
        raise FileNotFoundError(f"no sweep results table: {path}")
    try:
        with open(path, newline="", encoding="utf-8") as f:
            records = list(csv.reader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path} is not a readable sweep results table ({exc})") from None
    header = records[0] if records else []
    if not _known_layout(header):
        raise ValueError(f"{path} is not a sweep results table of this mimfast version "
                         f"(columns differ)")
    good, damaged = [], []
    for line, record in enumerate(records[1:], start=2):
        if not record:
            continue
        if len(record) == len(header) and record[-1] == _row_sum(record[:-1]):
            good.append(record[:-1])
        else:
            damaged.append((line, record[0]))
    text = _text.StringIO()
    csv.writer(text, lineterminator="\n").writerows([header[:-1]] + good)
    text.seek(0)
    try:
        df = pd.read_csv(text, dtype={c: ("object" if t == "boolean" else t)
                                      for c, t in COLUMNS.items()}, keep_default_na=False,
                         na_values=[""], **exact)
    except (ValueError, TypeError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path} is not a readable sweep results table ({exc})") from None
    for col, dtype in COLUMNS.items():
        if col not in df:  # a column added since the table was written (ADDED): empty
            df[col] = pd.Series([None] * len(df), dtype="object").astype(dtype)
        elif dtype == "boolean":
            df[col] = df[col].map({"True": True, "False": False, None: None}).astype(dtype)
    return df[list(COLUMNS)], damaged


def _known_layout(header):
    """Whether ``header`` is the table's header: :data:`COLUMNS` (some of the :data:`ADDED`
    ones may be missing, in a table written before they were) and the checksum column."""
    present = set(header[:-1])
    return (bool(header) and header[-1] == ROW_SUM
            and header[:-1] == [c for c in COLUMNS if c in present or c not in ADDED])


def read_table(out):
    """The results table of the sweep in folder ``out`` (:class:`pandas.DataFrame`).

    Every row is checked against its checksum.

    Raises
    ------
    FileNotFoundError
        When the folder holds no results table.
    ValueError
        When the file is not a sweep results table, or a row fails its checksum (running the
        sweep again redoes such rows).
    """
    path = Path(out) / TABLE if Path(out).is_dir() else Path(out)
    df, damaged = _read_rows(path)
    if damaged:
        raise ValueError(f"{path}: line(s) {', '.join(str(n) for n, _ in damaged)} fail their "
                         "checksum (changed or cut short); run the sweep again to redo them")
    return df


def _write_table(out, df):
    """Write the table atomically (:func:`mimfast.io.atomic_output`), each row followed by its
    checksum."""
    from .io import atomic_output

    records = list(csv.reader(_text.StringIO(df.to_csv(index=False), newline="")))
    with atomic_output(Path(out) / TABLE) as tmp, open(tmp, "w", newline="",
                                                       encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(records[0] + [ROW_SUM])
        w.writerows(r + [_row_sum(r)] for r in records[1:])


def _lock(out):
    """Hold an exclusive lock on the sweep folder (one sweep writes a table at a time).

    Raises :class:`mimfast.io.FolderLockedError` (a RuntimeError) when another sweep holds it.
    """
    from .io import FolderLockedError, lock_folder

    try:
        return lock_folder(out, LOCK)
    except FolderLockedError:
        raise FolderLockedError(f"another sweep is running in {out}; wait for it to finish "
                                "or choose another output folder") from None


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _plan(executor, workers, threads, pending, scheduler):
    """Worker processes and kernel threads per task, so that tasks never oversubscribe."""
    from .backends import check_threads

    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if threads is not None:
        check_threads(threads)
    if workers is not None and workers > MAX_WORKERS:
        raise ValueError(f"workers must be at most {MAX_WORKERS}, got {workers}")
    if scheduler is not None:  # a remote cluster: its workers' cores are its own business
        return None, threads or 1
    cores = _cores()
    if workers is None:
        workers = max(1, cores // (threads or 1))
    workers = max(1, min(workers, pending))
    return workers, threads or max(1, cores // workers)


MAX_WORKERS = 4096


def _worker(conn, out, threads):
    """A local worker process: run the tasks the sweep sends until it sends None.

    Ctrl-C is left to the sweep, which stops its workers itself; the worker exits once the
    sweep ``parent`` is gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch_parent()
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        conn.send(run_task(task, out, threads))


def _local_rows(pending, out, workers, threads):
    """Rows as tasks finish on local worker processes (in this process for one worker).

    Each worker runs one task at a time. A worker process that dies (killed, or crashed)
    fails the task it was running, and only that one: a new worker takes its place for the
    tasks still to run, and the other workers go on.
    """
    if workers == 1:
        for task in pending:
            yield run_task(task, out, threads)
        return
    from multiprocessing.connection import wait

    ctx = _context()
    todo = list(reversed(pending))  # popped from the end: task order
    busy, started = {}, []  # busy: connection -> (process, task)

    def start():
        conn, child = ctx.Pipe()
        with _no_sigint():  # the child starts with Ctrl-C blocked
            process = ctx.Process(target=_worker, args=(child, str(out), threads),
                                  name="mimfast-sweep-worker", daemon=True)
            process.start()
        child.close()
        started.append(process)
        give(conn, process)

    def give(conn, process):
        task = todo.pop() if todo else None
        try:
            conn.send(task)
        except OSError:  # the worker died between two tasks: a new one takes this task
            conn.close()
            if task is not None:
                todo.append(task)
                start()
            return
        if task is None:
            conn.close()
        else:
            busy[conn] = (process, task)

    finished = False
    try:
        for _ in range(min(workers, len(todo))):
            start()
        while busy:
            for conn in wait(list(busy)):
                process, task = busy.pop(conn)
                try:
                    row = conn.recv()
                except (EOFError, OSError):  # the worker died: its task alone fails
                    conn.close()
                    process.join()
                    yield _lost(task, f"its worker process ended with exit code "
                                      f"{process.exitcode}; the other tasks went on")
                    if todo:
                        start()
                    continue
                yield row
                give(conn, process)
        finished = True
    finally:
        for process in started:
            if not finished and process.is_alive():  # interrupted: stop the running tasks now
                process.terminate()
            process.join()


class _no_sigint:
    """Hold SIGINT back while worker processes start: they inherit the blocked signal (so a
    Ctrl-C to the process group cannot print their start-up tracebacks), and a Ctrl-C that
    came meanwhile reaches this process when the block ends."""

    def __enter__(self):
        self.mask = None
        if hasattr(signal, "pthread_sigmask"):
            self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})

    def __exit__(self, *exc):
        if self.mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self.mask)


# what a worker needs, imported once by the fork server rather than by every worker (xarray
# imports dask and distributed, when present, as it writes a file)
_PRELOAD = ["mimfast.sweeps", "mimfast.io", "mimfast.analysis", "xarray", "netCDF4", "pandas",
            "dask.array", "distributed"]


def _context():
    """Start method of local workers: a fork server that has imported what a task needs (a
    worker starts in milliseconds), or spawn where there is none. Never a plain fork: forking
    a process whose OpenMP runtime has started threads can hang the child."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():  # pragma: no cover
        return multiprocessing.get_context("spawn")
    import threading
    from multiprocessing import forkserver

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    if threading.current_thread() is threading.main_thread():
        # the server starts with Ctrl-C ignored (a process group's Ctrl-C would otherwise
        # interrupt its imports), and so do the workers it forks; starting it takes
        # milliseconds, so no Ctrl-C of the sweep is lost in practice
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
    return ctx


def _watch_parent(every=0.5):
    """Exit this worker once the sweep that started it is gone.

    A sweep killed with SIGKILL cannot stop its workers, and a worker otherwise waits for
    work (or finishes its task) for nothing; its unfinished task is simply run again by the
    next sweep.
    """
    import multiprocessing
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - not started by multiprocessing
        return

    def watch():
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, name="mimfast-sweep-parent", daemon=True).start()


def dask_key(task, out):
    """The Dask key of a task: its id and the resolved output folder, so that sweeps into
    different folders on one scheduler never share a task's result."""
    where = str(Path(out).resolve())
    return "mimfast-task-" + hashlib.sha256(f"{where}\0{task_id(task)}".encode()).hexdigest()[:32]


def _dask_rows(pending, out, workers, threads, scheduler):
    """Rows as tasks finish on a Dask cluster: ``scheduler`` or a new LocalCluster."""
    distributed = require("distributed", "the dask executor of a sweep", "sweep")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    as_completed = distributed.as_completed
    import logging

    cluster = client = setting = None
    if scheduler is None and _context().get_start_method() == "forkserver":
        # the cluster's worker processes come from the sweep's fork server, which ignores
        # Ctrl-C: a Ctrl-C to the process group reaches only the sweep, which closes them
        import dask

        setting = dask.config.set({"distributed.worker.multiprocessing-method": "forkserver"})
    try:
        if scheduler is None:
            with _no_sigint():
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1,
                                       processes=True, host="127.0.0.1",
                                       dashboard_address=None, silence_logs=logging.CRITICAL)
        # not the default client: dask's settings of this process stay as they were
        client = Client(scheduler if cluster is None else cluster, set_as_default=False)
        where = str(Path(out).resolve())
        futures = {client.submit(run_task, task, where, threads, key=dask_key(task, out),
                                 pure=False): task for task in pending}
        for future in as_completed(list(futures), loop=client.loop):
            task = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # noqa: BLE001 - a lost worker fails its task only
                what = ("the Dask scheduler was lost" if client.status != "running"
                        else "its Dask worker was lost")
                yield _lost(task, f"{what} ({type(exc).__name__}: {exc})")
    finally:
        _quiet_close(client, cluster)
        if setting is not None:
            setting.__exit__(None, None, None)


def _quiet_close(client, cluster):
    """Close a Dask client and cluster without the logs distributed writes on the way down."""
    import logging

    logger = logging.getLogger("distributed")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        for part in (client, cluster):
            if part is not None:
                try:
                    part.close()
                except Exception:  # noqa: BLE001, S110 - going down anyway
                    pass
    finally:
        logger.setLevel(level)


def _lost(task, why):
    return {**task, "task": task_id(task), "status": "failed", "error": f"worker lost: {why}"}


def sweep(out, grid=None, tasks=None, *, executor="local", scheduler=None, workers=None,
          threads=None, progress=None, callback=None):
    """Run a sweep, or finish one: every task not yet done in ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder: ``results.csv`` and ``runs/`` (see the module documentation).
    grid, tasks
        The tasks (see :func:`expand`); a task is ``Setting.paper`` parameters (``P``,
        ``kappa_c``, ``kappa_s``, ``gamma``, ``K``, ``z``, ``pp``), or with ``overlap`` (in
        [0, 1], K >= 2) ``Setting.paper_clusters`` ones, and run options: ``flow``
        (the gradient flow instead of GD) with ``tau`` and ``flow_rtol``, or GD's ``eta``,
        ``eta_rule``, ``steps``, ``until``, ``record_every``; then ``method``, ``rtol``,
        ``backend``, ``epsilon``, ``tail_tol``. Every task is checked first
        (:func:`check_tasks`).
    executor : {"local", "dask"}
        ``"local"``: worker processes on this machine (one worker: this process).
        ``"dask"``: a Dask ``LocalCluster`` of worker processes, or the cluster at
        ``scheduler``.
    scheduler : str, optional
        Address of a running Dask scheduler (implies ``executor="dask"``); ``out`` must then
        be a folder every worker can write.
    workers : int, optional
        Worker processes (default: the cores divided by ``threads``).
    threads : int, optional
        Kernel threads per task (default: the cores divided by the workers, at least 1), so
        workers × threads never exceeds the cores. With ``scheduler``: default 1.
    progress : bool, optional
        Progress bar over tasks on standard error (default: only on a terminal).
    callback : callable, optional
        ``callback(row)`` after each finished task's row is in the table.

    Returns
    -------
    pandas.DataFrame
        The results table, one row per task in task order (rows of earlier tasks of the
        folder that are not in this sweep follow).

    Raises
    ------
    ValueError
        Bad options, or a task that would be refused (before anything runs).
    mimfast.io.FolderLockedError
        When another sweep is running in ``out``.
    """
    if scheduler is not None:
        executor = "dask"
    if executor not in ("local", "dask"):
        raise ValueError(f"executor must be 'local' or 'dask', got {executor!r}")
    # what a sweep needs beyond numpy, named before any work
    require_all(("pandas", "xarray", "netCDF4") + (("distributed",) if executor == "dask"
                                                   else ()), "a sweep", "sweep")
    tqdm = require("tqdm", "a sweep", "sweep").tqdm
    todo = expand(grid, tasks)
    if not todo:
        raise ValueError("a sweep needs at least one task (grid or tasks)")
    _plan(executor, workers, threads, len(todo), scheduler)  # the options, before the tasks
    check_tasks(todo, threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        _clean(out)
        rows = {}
        order = [task_id(t) for t in todo]
        if (out / TABLE).is_file():
            df, damaged = _read_rows(out / TABLE)
            for r in df.to_dict("records"):
                rows[r["task"]] = {k: (None if _missing(v) else v) for k, v in r.items()}
            for line, key in damaged:
                what = ("its task is run again" if key in set(order)
                        else "it belongs to no task of this sweep and is dropped")
                _say(f"line {line} of {out / TABLE} fails its checksum (task {key!r}); {what}")
        pending = [t for t, key in zip(todo, order) if not _finished(rows.get(key), out)]
        order += [key for key in rows if key not in set(order)]

        def write():
            _write_table(out, _frame([rows[key] for key in order if key in rows]))

        workers, threads = _plan(executor, workers, threads, len(pending), scheduler)
        show = sys.stderr.isatty() if progress is None else progress
        bar = tqdm(total=len(todo), initial=len(todo) - len(pending), unit="task",
                   disable=not show, file=sys.stderr, dynamic_ncols=True)
        try:
            if pending:
                finished = (_local_rows(pending, out, workers, threads) if executor == "local"
                            else _dask_rows(pending, out, workers, threads, scheduler))
                with closing(finished):
                    for row in finished:
                        rows[row["task"]] = row
                        write()
                        bar.update(1)
                        if callback is not None:
                            callback(row)
            else:
                write()
        finally:
            bar.close()
            _clean(out)
        return read_table(out)
    finally:
        from .io import unlock_folder

        unlock_folder(lock)  # the lock file goes with the lock


def _say(message):
    print(f"mimfast sweep: {message}", file=sys.stderr)


def _clean(out):
    """Remove the temporary files killed writers left in the sweep's folders."""
    from .io import clean_temporaries

    for folder in (out, out / RUNS):
        if folder.is_dir():
            clean_temporaries(folder)


def _missing(value):
    try:
        return bool(require("pandas", "the sweep results table", "sweep").isna(value))
    except (TypeError, ValueError):
        return False


def _finished(row, out):
    """Whether a row is done and its results file still passes its checksum (else it says
    why the task runs again)."""
    from .io import ResultFileError, check_file

    if row is None or row["status"] != "done" or row.get("file") is None:
        return False
    try:
        check_file(Path(out) / row["file"])
    except FileNotFoundError:
        _say(f"{row['file']} of task {row['task']} is missing; the task is run again")
        return False
    except ResultFileError as exc:
        _say(f"{exc}; task {row['task']} is run again")
        return False
    return True


def _decades(lo, hi, step=0.5):
    """P from 10^lo to 10^hi in steps of ``step`` decades, rounded to integers."""
    n = round((hi - lo) / step)
    return [round(10 ** (lo + i * step)) for i in range(n + 1)]


# Presets (docs/scaling.md): both regimes of the paper across P, and the phase diagram.
# The "-flow" presets integrate the gradient flow to T_eps of every class: every time is a
# located flow time and every phase verdict rests on steps that follow the flow, at any P.
# The GD presets take a fixed step budget at the scaled learning rate, so that final values
# are taken at one time: T_eps of a local query is about 600 steps at every P for
# kappa_s = 0.3 (2000 steps), and about 2500 for kappa_s = 0.2 (4000 steps in the phase
# grid); from P = 1e7 (kappa_c = 0.9) a step moves a correlation by more than 1 before the
# switch, and the analysis marks their phase claims untrusted (column ``trusted``). rtol 1e-13, the quadrature's own default: it is met at every
# step of every task, for the CPU time of 1e-10 within this machine's noise (docs/scaling.md).
_RUN = {"eta": 100.0, "eta_rule": "scaled", "until": False, "method": "auto", "rtol": 1e-13}
_FLOW = {"flow": True, "method": "auto", "rtol": 1e-13}
_KAPPA = {"kappa_s": [0.2, 0.3, 0.4, 0.5],
          "kappa_c": [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]}
PRESETS = {
    "paper-scaling": {
        "grid": {"kappa_c": [0.9, 0.6], "kappa_s": 0.3, "P": _decades(3, 18), "steps": 2000,
                 **_RUN},
        "help": "GD, P = 10^3 ... 10^18 in half-decades, kappa_s = 0.3, kappa_c = 0.9 "
                "(Delta = +0.5) and 0.6 (Delta = -0.1), 2000 steps",
    },
    "paper-scaling-flow": {
        "grid": {"kappa_c": [0.9, 0.6], "kappa_s": 0.3, "P": _decades(3, 18, 1), **_FLOW},
        "help": "gradient flow to T_eps, P = 10^3 ... 10^18 in decades, kappa_s = 0.3, "
                "kappa_c = 0.9 (Delta = +0.5) and 0.6 (Delta = -0.1)",
    },
    "paper-phases": {
        "grid": {"P": [10**6, 10**12], **_KAPPA, "steps": 4000, **_RUN},
        "help": "GD, kappa_c x kappa_s grid at P = 10^6 and 10^12, 4000 steps",
    },
    "paper-phases-flow": {
        "grid": {"P": [10**6, 10**12], **_KAPPA, **_FLOW},
        "help": "gradient flow to T_eps, kappa_c x kappa_s grid at P = 10^6 and 10^12",
    },
    # several clusters with learned PP (docs/theorem.md): how much PP serves them as their
    # global areas overlap more, in both regimes
    "paper-clusters-overlap": {
        "grid": {"kappa_c": [0.9, 0.6], "kappa_s": 0.3, "K": 2,
                 "overlap": [0.0, 0.25, 0.5, 0.75, 1.0], "P": _decades(4, 15, 1), **_FLOW},
        "help": "gradient flow to T_eps of Setting.paper_clusters, K = 2, global-area overlap "
                "0, 0.25, 0.5, 0.75, 1, P = 10^4 ... 10^15 in decades, kappa_s = 0.3, "
                "kappa_c = 0.9 (Delta = +0.5) and 0.6 (Delta = -0.1)",
    },
}


def preset(name, **overrides):
    """The grid of a preset, with parameters overridden (e.g. ``P=[...]``, ``method=...``).

    The presets ask for ``method="auto"`` (the quadrature engine at large P,
    docs/model.md §8); where this mimfast has only the exact engine they leave the method
    to it.

    Returns
    -------
    dict
        A grid for :func:`sweep`.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown sweep preset {name!r}; choose one of {', '.join(PRESETS)}")
    grid = dict(PRESETS[name]["grid"])
    if "method" not in _simulate_parameters():
        grid["method"] = grid["rtol"] = None
    return {**grid, **overrides}

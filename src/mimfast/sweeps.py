"""Scaling studies: many runs of the paper's setting, one results table (docs/scaling.md).

A *sweep* is a list of tasks; each task is one :func:`mimfast.simulate` of
``Setting.paper(P, kappa_c, kappa_s, gamma, K, z)`` plus its analysis (docs/model.md §4–5).
:func:`sweep` runs the tasks that are not finished yet on an executor and writes, in the
output folder:

- ``results.csv``: one row per task (:data:`COLUMNS`), rewritten whole and atomically each
  time a task finishes, so a row is there completely or not at all;
- ``runs/<task>.nc``: each finished run's results file (:func:`mimfast.io.save`, analysis
  included), written before its row.

Re-running a sweep on the same folder skips the tasks whose row says ``done`` (and whose
results file is there) and runs the others again, failed ones included: a killed sweep loses
nothing that finished. A task that raises is recorded with ``status = "failed"`` and its
error, and does not stop the others.

The time unit across P
----------------------
With ``eta_rule = "scaled"`` (the default) a task runs at η = eta · (P / 10^6)^(1 − κ_s):
the own-feature gradient of a local query shrinks like c_l / P = P^−(1−κ_s) (docs/model.md
§4), so this rule keeps the pace of own-feature learning, per step, the same at every P and
makes step counts comparable across P. ``eta_rule = "fixed"`` runs at η = eta. The tables give
times in steps and η; gradient-flow time is η · steps.

The step budget is ``steps`` GD updates, or with ``until = True`` the run stops at the first
recorded step where every class has own-area attention at least 1 − ε (T_ε), with ``steps``
as the cap. A run that ends before T_ε of every class is marked ``converged = False``.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import os
import sys
import time
from numbers import Integral, Real
from pathlib import Path

from ._extras import require, require_all

__all__ = ["COLUMNS", "PRESETS", "TABLE", "expand", "preset", "read_table", "run_task",
           "sweep", "task_id"]

TABLE, RUNS, LOCK = "results.csv", "runs", ".sweep.lock"
ETA_P0 = 10**6

# A task's parameters and their defaults: the paper's setting, then the run options.
DEFAULTS = {
    "P": None, "kappa_c": None, "kappa_s": None, "gamma": 0.5, "K": 1, "z": 1.0,
    "pp": "auto", "eta": 100.0, "eta_rule": "scaled", "steps": 2000, "until": False,
    "record_every": 1, "method": None, "rtol": None, "backend": "cpp", "epsilon": 0.05,
    "tail_tol": 1e-15,
}
_TYPES = {
    "P": Integral, "K": Integral, "steps": Integral, "record_every": Integral,
    "kappa_c": Real, "kappa_s": Real, "gamma": Real, "z": Real, "eta": Real, "epsilon": Real,
    "tail_tol": Real, "until": bool, "pp": str, "eta_rule": str, "backend": str,
    "method": (str, type(None)), "rtol": (Real, type(None)),
}
_CHOICES = {"pp": ("auto", "exact", "frozen"), "eta_rule": ("fixed", "scaled"),
            "method": (None, "exact", "quadrature", "auto")}

# The results table: column -> dtype (pandas nullable types, so a missing value stays empty
# and a table reads back equal to the one written).
_PER_CLASS = {"switch": "Int64", "phases": "Int64", "T_eps": "Int64", "attention": "float64",
              "loss_gap": "float64", "irreducible": "float64"}
COLUMNS = {
    "task": "string", "status": "string",
    **{k: ("Int64" if _TYPES[k] is Integral else "boolean" if _TYPES[k] is bool
           else "float64" if Real in (_TYPES[k] if isinstance(_TYPES[k], tuple) else
                                      (_TYPES[k],)) else "string") for k in DEFAULTS},
    "delta": "float64", "delta_actual": "float64", "eta_used": "float64",
    "method_used": "string", "last_step": "Int64", "converged": "boolean",
    **{f"{c}_{q}": t for c in ("global", "local") for q, t in _PER_CLASS.items()},
    "local_fp_global_min": "float64", "local_fp_global_min_step": "Int64",
    "local_grad_ratio0": "float64",
    "pp_fp_ratio": "float64", "dropped": "float64", "error_estimate": "float64",
    "wall_s": "float64", "file": "string", "error": "string",
}


def task_id(task):
    """Stable id of a task: a hash of its parameters (defaults filled in)."""
    text = json.dumps(_complete(task), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _complete(task):
    """The task with defaults filled in and every parameter checked (ValueError/TypeError)."""
    if not isinstance(task, dict):
        raise TypeError(f"a task is a dict of parameters, got {type(task).__name__}")
    unknown = sorted(set(task) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown task parameter(s) {', '.join(unknown)}; "
                         f"known: {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **task}
    for key, value in out.items():
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
        elif types is Real or (value is not None and key == "rtol"):
            out[key] = float(value)
            if not math.isfinite(out[key]):
                raise ValueError(f"task parameter {key} = {value!r} is not finite")
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
    """The learning rate of a task: eta, times (P / 10^6)^(1 - kappa_s) for the scaled rule."""
    if task["eta_rule"] == "fixed":
        return task["eta"]
    return task["eta"] * (task["P"] / ETA_P0) ** (1 - task["kappa_s"])


class _Converged(Exception):
    """Raised by the step callback of an ``until`` run once T_eps is reached."""

    def __init__(self, result):
        super().__init__("converged")
        self.result = result


def _simulate(setting, task, threads):
    import mimfast as mf

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
        if (t - 1) % every == 0 and min(float(a[:, 0].min()) for a in grad.attention) >= target:
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


def _measure(result, analysis):
    """The table columns measured on a finished run (per class: worst over the clusters)."""
    from .analysis import pp_fp_sizes

    row = {}
    for h, name in enumerate(("global", "local")):
        rows = [c for c in analysis.classes if c.h == h]
        switch = [c.phase_switch for c in rows]
        t_eps = [c.convergence_time for c in rows]
        row[f"{name}_switch"] = None if None in switch else max(switch)
        row[f"{name}_phases"] = (None if row[f"{name}_switch"] is None
                                 else 1 + (row[f"{name}_switch"] > 0))
        row[f"{name}_T_eps"] = None if None in t_eps else max(t_eps)
        row[f"{name}_attention"] = min(c.attention for c in rows)
        row[f"{name}_loss_gap"] = max(c.loss_gap for c in rows)
        # the scale below which a quadrature run's loss gap is not resolved (scaling.fits)
        row[f"{name}_irreducible"] = max(c.irreducible for c in rows)
    # the information gap at work (docs/model.md §4): |dL/dA_global| / |dL/dA_own| of a local
    # query at Q = 0, which the analysis puts at P^Delta
    row["local_grad_ratio0"] = max(
        abs(result.fp_grad(k, 1, 0)[0]) / abs(result.fp_grad(k, 1, "own")[0])
        for k in range(result.setting.K))
    low = min((c for c in analysis.classes if c.h == 1), key=lambda c: c.global_fp_min)
    row["local_fp_global_min"] = low.global_fp_min
    row["local_fp_global_min_step"] = low.global_fp_min_step
    pp, fp = pp_fp_sizes(result)
    row["pp_fp_ratio"] = pp / fp if fp else math.nan
    row["converged"] = row["global_T_eps"] is not None and row["local_T_eps"] is not None
    row["last_step"] = result.last_step
    row["method_used"] = getattr(result, "method", "exact")
    row["dropped"] = result.dropped
    error = getattr(result, "error", None)
    row["error_estimate"] = math.nan if error is None else float(max(error, default=math.nan))
    return row


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
    import mimfast as mf

    from . import io
    from .analysis import analyze

    start = time.perf_counter()
    task = _complete(task)
    key = task_id(task)
    row = {**task, "task": key, "status": "failed"}
    try:
        pp = None if task["pp"] == "auto" else task["pp"]
        setting = mf.Setting.paper(task["P"], task["kappa_c"], task["kappa_s"],
                                   gamma=task["gamma"], K=task["K"], z=task["z"], pp=pp)
        row.update(delta=setting.delta, delta_actual=setting.delta_actual,
                   eta_used=effective_eta(task))
        result = _simulate(setting, task, threads)
        analysis = analyze(result, task["epsilon"])
        row.update(_measure(result, analysis))
        rel = f"{RUNS}/{key}.nc"
        (Path(out) / RUNS).mkdir(parents=True, exist_ok=True)
        io.save(result, Path(out) / rel, analysis, attrs={"sweep_task": json.dumps(task)})
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


def read_table(out):
    """The results table of the sweep in folder ``out`` (:class:`pandas.DataFrame`).

    Raises
    ------
    FileNotFoundError
        When the folder holds no results table.
    ValueError
        When the file is not a sweep results table.
    """
    pd = require("pandas", "the sweep results table", "sweep")

    path = Path(out) / TABLE if Path(out).is_dir() else Path(out)
    # floats must read back bit for bit: the default parser of pandas 3 does, older ones not
    exact = {} if int(pd.__version__.split(".")[0]) >= 3 else {"float_precision": "round_trip"}
    if not path.is_file():
        raise FileNotFoundError(f"no sweep results table: {path}")
    try:
        df = pd.read_csv(path, dtype={c: ("object" if t == "boolean" else t)
                                      for c, t in COLUMNS.items()}, keep_default_na=False,
                         na_values=[""], **exact)
    except (ValueError, TypeError, pd.errors.ParserError) as exc:
        raise ValueError(f"{path} is not a readable sweep results table ({exc})") from None
    if list(df.columns) != list(COLUMNS):
        raise ValueError(f"{path} is not a sweep results table of this mimfast version "
                         f"(columns differ)")
    for col, dtype in COLUMNS.items():
        if dtype == "boolean":
            df[col] = df[col].map({"True": True, "False": False, None: None}).astype(dtype)
    return df


def _write_table(out, df):
    """Write the table atomically (:func:`mimfast.io.atomic_output`)."""
    from .io import atomic_output

    with atomic_output(Path(out) / TABLE) as tmp, open(tmp, "w", newline="") as f:
        df.to_csv(f, index=False)


def _lock(out):
    """Hold an exclusive lock on the sweep folder (one sweep writes a table at a time)."""
    from .io import FolderLockedError, lock_folder

    try:
        return lock_folder(out, LOCK)
    except FolderLockedError:
        raise RuntimeError(f"another sweep is running in {out}") from None


def _cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _plan(executor, workers, threads, pending, scheduler):
    """Worker processes and kernel threads per task, so that tasks never oversubscribe."""
    for name, value in (("workers", workers), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, Integral)
                                  or value < 1):
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if scheduler is not None:  # a remote cluster: its workers' cores are its own business
        return None, threads or 1
    cores = _cores()
    if workers is None:
        workers = max(1, cores // (threads or 1))
    workers = max(1, min(workers, pending))
    return workers, threads or max(1, cores // workers)


def _local_rows(pending, out, workers, threads):
    """Rows as tasks finish on local worker processes (in this process for one worker)."""
    if workers == 1:
        for task in pending:
            yield run_task(task, out, threads)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn: forking a process whose OpenMP runtime has started threads can hang the child
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_watch_parent, initargs=(os.getpid(),))
    finished = False
    try:
        futures = {pool.submit(run_task, task, str(out), threads): task for task in pending}
        for future in as_completed(futures):
            yield _row_of(future, futures[future])
        finished = True
    finally:
        if not finished:  # interrupted: stop the running tasks now, not when they end
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _watch_parent(pid, every=0.5):
    """Worker initializer: exit once the sweep's process ``pid`` is gone.

    A sweep killed with SIGKILL cannot stop its workers, and a worker of a process pool
    otherwise waits for work forever; its unfinished task is simply run again by the next
    sweep. (Where a dead parent's children are not re-parented, e.g. on Windows, this does
    nothing.)
    """
    import threading

    def watch():
        while os.getppid() == pid:
            time.sleep(every)
        os._exit(1)

    threading.Thread(target=watch, name="mimfast-sweep-parent", daemon=True).start()


def _dask_rows(pending, out, workers, threads, scheduler):
    """Rows as tasks finish on a Dask cluster: ``scheduler`` or a new LocalCluster."""
    distributed = require("distributed", "the dask executor of a sweep", "sweep")
    Client, LocalCluster = distributed.Client, distributed.LocalCluster
    as_completed = distributed.as_completed
    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
    client = Client(scheduler if cluster is None else cluster)
    try:
        futures = {client.submit(run_task, task, str(Path(out).resolve()), threads,
                                 key=f"mimfast-task-{task_id(task)}", pure=False): task
                   for task in pending}
        for future in as_completed(list(futures)):
            yield _row_of(future, futures[future])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _row_of(future, task):
    """The row a finished future returned, or a failed row when its worker died."""
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - a lost worker fails its task only
        return {**task, "task": task_id(task), "status": "failed",
                "error": f"worker lost: {type(exc).__name__}: {exc}"}


def sweep(out, grid=None, tasks=None, *, executor="local", scheduler=None, workers=None,
          threads=None, progress=None, callback=None):
    """Run a sweep, or finish one: every task not yet done in ``out``.

    Parameters
    ----------
    out : str or Path
        Output folder: ``results.csv`` and ``runs/`` (see the module documentation).
    grid, tasks
        The tasks (see :func:`expand`); a task is ``Setting.paper`` parameters (``P``,
        ``kappa_c``, ``kappa_s``, ``gamma``, ``K``, ``z``, ``pp``) and run options (``eta``,
        ``eta_rule``, ``steps``, ``until``, ``record_every``, ``method``, ``backend``,
        ``epsilon``, ``tail_tol``).
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
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock(out)
    try:
        rows = {}
        if (out / TABLE).is_file():
            for r in read_table(out).to_dict("records"):
                rows[r["task"]] = {k: (None if _missing(v) else v) for k, v in r.items()}
        order = [task_id(t) for t in todo]
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
        return read_table(out)
    finally:
        from .io import unlock_folder

        unlock_folder(lock)  # the lock file goes with the lock


def _missing(value):
    try:
        return bool(require("pandas", "the sweep results table", "sweep").isna(value))
    except (TypeError, ValueError):
        return False


def _finished(row, out):
    return (row is not None and row["status"] == "done" and row.get("file") is not None
            and (Path(out) / row["file"]).is_file())


def _decades(lo, hi, step=0.5):
    """P from 10^lo to 10^hi in steps of ``step`` decades, rounded to integers."""
    n = round((hi - lo) / step)
    return [round(10 ** (lo + i * step)) for i in range(n + 1)]


# Presets (docs/scaling.md): both regimes of the paper across P, and the phase diagram.
# A fixed step budget at the scaled learning rate, so that final values are taken at one time:
# T_eps of a local query is about 600 steps at every P for kappa_s = 0.3 (2000 steps), and
# about 2500 for kappa_s = 0.2 (4000 steps in the phase grid). rtol 1e-13, the quadrature's
# own default: it is met at every step of every task, for the CPU time of 1e-10 within this
# machine's noise (docs/scaling.md).
_RUN = {"eta": 100.0, "eta_rule": "scaled", "until": False, "method": "auto", "rtol": 1e-13}
PRESETS = {
    "paper-scaling": {
        "grid": {"kappa_c": [0.9, 0.6], "kappa_s": 0.3, "P": _decades(3, 18), "steps": 2000,
                 **_RUN},
        "help": "P = 10^3 ... 10^18 in half-decades, kappa_s = 0.3, kappa_c = 0.9 "
                "(Delta = +0.5) and 0.6 (Delta = -0.1), 2000 steps",
    },
    "paper-phases": {
        "grid": {"P": [10**6, 10**12], "kappa_s": [0.2, 0.3, 0.4, 0.5],
                 "kappa_c": [0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95], "steps": 4000,
                 **_RUN},
        "help": "kappa_c x kappa_s grid at P = 10^6 and 10^12, 4000 steps",
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

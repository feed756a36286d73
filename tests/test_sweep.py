"""Sweeps: executors give the same table, nothing finished is lost, failures are recorded,
and the measured phases follow the sign of the information gap."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import mimfast as mf
from mimfast import io, scaling
from mimfast.cli import main
from mimfast.sweeps import COLUMNS, dask_key, expand, read_table, run_task, sweep, task_id

# two regimes, three P, and one task whose run diverges (it passes every check up front but
# fails as it runs): it must fail without stopping the others
GRID = {"P": [1000, 3000, 10000], "kappa_c": [0.9, 0.6], "kappa_s": 0.3, "steps": 250,
        "record_every": 5}
FAIL = [{"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3, "z": 30.0, "eta": 1e308,
         "eta_rule": "fixed", "steps": 250, "record_every": 5}]


def none(value):
    return None if pd.isna(value) else value


def interrupt(row):
    raise KeyboardInterrupt


def same_table(a, b):
    """Tables equal in every column but the wall time."""
    pd.testing.assert_frame_equal(a.drop(columns="wall_s"), b.drop(columns="wall_s"))


@pytest.fixture(scope="module")
def local_table(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    return out, sweep(out, GRID, FAIL, workers=2, progress=False)


def test_table_rows_and_failure(local_table):
    out, table = local_table
    assert list(table.columns) == list(COLUMNS)
    assert list(table["task"]) == [task_id(t) for t in expand(GRID, FAIL)]
    failed = table[table["z"] == 30]
    assert len(failed) == 1 and (failed["status"] == "failed").all()
    assert failed["error"].str.startswith("FloatingPointError").all()
    done = table[table["z"] != 30]
    assert (done["status"] == "done").all() and done["error"].isna().all()
    # each row agrees with its own saved run and with a direct simulate of the same task
    for row in done.itertuples():
        ds = io.open_dataset(out / row.file)
        result = io.from_dataset(ds)
        s = mf.Setting.paper(int(row.P), row.kappa_c, row.kappa_s)
        eta = 100.0 * (row.P / 1e6) ** (1 - row.kappa_s)
        direct = mf.simulate(s, eta, 250, record_every=5)
        assert io.equal(result, direct)
        local = mf.analysis.analyze(direct).classes[1]
        assert row.local_switch == local.phase_switch
        assert row.local_phases == local.phases  # the analysis' verdict, one rule
        assert row.local_switch_tau == pytest.approx(eta * local.phase_switch, rel=1e-15)
        assert none(row.local_T_eps) == mf.analysis.convergence_time(direct, 0, 1)
        assert none(row.global_T_eps) == mf.analysis.convergence_time(direct, 0, 0)
        assert row.last_step == 250 and row.eta_used == eta
        assert row.local_loss_gap == mf.analysis.loss_gap(direct, 0, 1)[-1]
        assert row.local_irreducible == mf.analysis.irreducible_loss(s, 0, 1)
        assert row.global_irreducible == mf.analysis.irreducible_loss(s, 0, 0)
        assert row.local_fp_global_min == direct.fp(0, 1, 0).min()


def test_dask_local_cluster_gives_the_same_table(local_table, tmp_path):
    _, expected = local_table
    table = sweep(tmp_path, GRID, FAIL, executor="dask", workers=2, progress=False)
    same_table(table, expected)


def test_local_one_worker_gives_the_same_table(local_table, tmp_path):
    _, expected = local_table
    same_table(sweep(tmp_path, GRID, FAIL, workers=1, progress=False), expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "runs"]  # no lock


KILLER = """
import os, signal, sys
from mimfast.sweeps import sweep
rows = []
def kill(row):
    rows.append(row)
    if len(rows) == 2:
        os.kill(os.getpid(), signal.SIGKILL)
sweep(sys.argv[1], {grid!r}, {fail!r}, workers=1, progress=False, callback=kill)
"""


def test_killed_sweep_resumes_to_the_same_table(local_table, tmp_path):
    _, expected = local_table
    script = tmp_path / "killer.py"
    script.write_text(KILLER.format(grid=GRID, fail=FAIL))
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(out)], capture_output=True,
                          check=False)
    assert proc.returncode == -9, proc.stderr.decode()
    partial = read_table(out)
    assert len(partial) == 2 and (partial["status"] == "done").all()
    assert sorted(os.listdir(out / "runs")) == sorted(f.split("/")[1] for f in partial["file"])
    seen = []
    table = sweep(out, GRID, FAIL, workers=1, progress=False, callback=seen.append)
    assert len(seen) == len(expected) - 2  # the two finished tasks were not run again
    same_table(table, expected)


KILL_POOL = """
import json, multiprocessing, os, signal, sys
from mimfast.sweeps import sweep
def kill(row):
    pids = [p.pid for p in multiprocessing.active_children()]
    with open(sys.argv[2], "w") as f:
        json.dump(pids, f)
    os.kill(os.getpid(), signal.SIGKILL)
if __name__ == "__main__":  # the spawned workers import this file too
    sweep(sys.argv[1], {grid!r}, {fail!r}, workers=2, threads=1, progress=False, callback=kill)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone too (the test's process is not its parent; init reaps it)
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="re-parenting as on Linux")
def test_killed_sweep_leaves_no_worker_processes(local_table, tmp_path):
    # SIGKILL cannot be handled by the sweep: its worker processes must notice and exit
    # rather than wait for work forever, and a re-run still ends with the whole table
    _, expected = local_table
    script = tmp_path / "killer.py"
    script.write_text(KILL_POOL.format(grid=GRID, fail=FAIL))
    out, pids, log = tmp_path / "out", tmp_path / "pids.json", tmp_path / "log"
    with open(log, "wb") as f:  # not pipes: orphaned workers would hold them open
        proc = subprocess.run([sys.executable, str(script), str(out), str(pids)], stdout=f,
                              stderr=subprocess.STDOUT, check=False)
    assert proc.returncode == -9, log.read_text()
    workers = json.loads(pids.read_text())
    assert workers
    try:
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in workers)
    finally:
        for pid in workers:
            if _alive(pid):
                os.kill(pid, 9)
    same_table(sweep(out, GRID, FAIL, workers=2, progress=False), expected)


def test_interrupted_sweep_keeps_rows_and_retries_failed(local_table, tmp_path):
    _, expected = local_table

    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, GRID, FAIL, workers=1, progress=False, callback=interrupt)
    assert len(read_table(tmp_path)) == 1
    first = sweep(tmp_path, GRID, FAIL, workers=1, progress=False)
    same_table(first, expected)
    # a re-run runs the failed tasks again and nothing else
    seen = []
    again = sweep(tmp_path, GRID, FAIL, workers=1, progress=False, callback=seen.append)
    assert sorted(r["task"] for r in seen) == sorted(expected.loc[expected["status"] == "failed",
                                                                  "task"])
    same_table(again, expected)
    ok = expected["status"] == "done"
    assert (again.loc[ok, "wall_s"] == first.loc[ok, "wall_s"]).all()  # rows kept as they were
    # a done row whose results file is gone is run again
    (tmp_path / first.loc[0, "file"]).unlink()
    seen.clear()
    same_table(sweep(tmp_path, GRID, FAIL, workers=1, progress=False, callback=seen.append),
               expected)
    assert first.loc[0, "task"] in [r["task"] for r in seen]


def test_until_stops_at_t_eps_and_marks_unconverged(tmp_path):
    base = {"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3, "until": True}
    row = run_task({**base, "steps": 3000}, tmp_path)
    assert row["status"] == "done" and row["converged"]
    full = mf.simulate(mf.Setting.paper(10**4, 0.9, 0.3), row["eta_used"], 3000)
    t_eps = [mf.analysis.convergence_time(full, 0, h) for h in (0, 1)]
    assert row["global_T_eps"] == t_eps[0] and row["local_T_eps"] == t_eps[1]
    assert row["last_step"] == max(t_eps) + 1  # stopped right after the last T_eps
    short = run_task({**base, "steps": 300}, tmp_path)
    assert short["status"] == "done" and short["converged"] is False
    assert short["local_T_eps"] is None and short["last_step"] == 300


def test_phase_boundary_follows_the_sign_of_delta(tmp_path):
    grid = {"P": 10**4, "kappa_s": [0.3, 0.4], "kappa_c": [0.55, 0.6, 0.75, 0.8, 0.9],
            "steps": 500, "record_every": 2}
    table = sweep(tmp_path, grid, progress=False)
    assert (table["status"] == "done").all()
    assert scaling.boundary_agreement(table, margin=0.05) == {10**4: (10, 10, 0)}
    ph = scaling.phases(table)
    assert set(ph.loc[ph["delta"] > 0, "phases"]) == {2}
    assert set(ph.loc[ph["delta"] < 0, "phases"]) == {1}
    # two phases exactly when the global-decoupling gradient leads at Q = 0
    assert ((table["local_phases"] == 2) == (table["local_grad_ratio0"] > 1)).all()
    b = scaling.boundary(table, 10**4)
    assert (b["one_phase_max"] < b["theory"]).all() and (b["theory"] < b["two_phase_min"]).all()
    crit = scaling.critical_gap(table).iloc[0]
    assert crit["ordered"] and crit["one_phase_max"] < 0 < crit["two_phase_min"]
    assert crit["one_phase_max"] < crit["delta_c"] < crit["two_phase_min"]
    # kappa_s = 0.3, kappa_c = 0.6 and kappa_s = 0.4, kappa_c = 0.75 (actual sizes)
    assert crit["one_phase_max"] == mf.Setting.paper(10**4, 0.6, 0.3).delta_actual
    assert crit["two_phase_min"] == mf.Setting.paper(10**4, 0.75, 0.4).delta_actual
    paths = scaling.save_figures(table, tmp_path)
    assert [p.name for p in paths] == ["phases.png"]  # one P: nothing to fit


def test_critical_gap_interpolates_where_the_gradient_ratio_crosses_one(tmp_path):
    # a fine line in Delta at P = 10^4: the interpolated crossing lies in the measured bracket
    # and matches a bisection on kappa_c of the initial gradient ratio itself
    grid = {"P": 10**4, "kappa_s": 0.3, "kappa_c": [0.66, 0.67, 0.68, 0.69, 0.7], "steps": 0}
    rows = [run_task(t, tmp_path) for t in expand(grid)]
    rows = [{**r, "local_phases": 1 + (r["local_grad_ratio0"] > 1)} for r in rows]
    table = pd.DataFrame(rows)
    crit = scaling.critical_gap(table).iloc[0]
    assert crit["ordered"] and crit["one_phase_max"] < crit["delta_c"] < crit["two_phase_min"]
    ratio = {r["delta_actual"]: r["local_grad_ratio0"] for r in rows}
    lo, hi = crit["one_phase_max"], crit["two_phase_min"]
    assert ratio[lo] <= 1 < ratio[hi]
    slope = (np.log(ratio[hi]) - np.log(ratio[lo])) / (hi - lo)
    assert crit["delta_c"] == pytest.approx(lo - np.log(ratio[lo]) / slope, rel=1e-12)


def test_initial_gradient_ratio_tends_to_one_minus_gamma_times_p_to_delta():
    # measured law behind the finite-P phase boundary (docs/scaling.md): at large P a local
    # query's initial |dL/dA_global| / |dL/dA_own| is (1 - gamma) P^Delta, for any kappa_s
    P = 10**14
    for kappa_s, gamma in ((0.3, 0.3), (0.5, 0.7)):
        s = mf.Setting.paper(P, (1 + kappa_s) / 2, kappa_s, gamma=gamma)
        r = mf.simulate(s, 1.0, 0, method="quadrature")
        ratio = abs(r.fp_grad(0, 1, 0)[0]) / abs(r.fp_grad(0, 1, "own")[0])
        assert ratio / P**s.delta_actual == pytest.approx(1 - gamma, rel=2e-4)


def test_quadrature_tasks_give_the_exact_table_and_meet_the_tolerance(tmp_path):
    # the presets' method: at P = 10^6 a sweep row from the quadrature equals the exact
    # engine's row, every step within rtol 1e-13, through saturation of the attention
    task = {"P": 10**6, "kappa_c": 0.9, "kappa_s": 0.3, "steps": 800, "rtol": 1e-13}
    exact = run_task({**task, "method": "exact"}, tmp_path)
    quad = run_task({**task, "method": "quadrature"}, tmp_path)
    assert exact["status"] == quad["status"] == "done"
    assert quad["method_used"] == "quadrature" and exact["method_used"] == "exact"
    assert 0 < quad["error_estimate"] < 1e-13
    for key in ("global_switch", "local_switch", "global_T_eps", "local_T_eps",
                "local_fp_global_min_step", "converged", "last_step"):
        assert quad[key] == exact[key], key
    for key in ("local_fp_global_min", "local_grad_ratio0", "local_attention",
                "global_attention", "pp_fp_ratio"):
        assert quad[key] == pytest.approx(exact[key], rel=1e-10), key
    # the loss gap of the quadrature lacks up to the irreducible loss (docs/scaling.md)
    for cls in ("global", "local"):
        assert abs(quad[f"{cls}_loss_gap"] - exact[f"{cls}_loss_gap"]) <= (
            1e-10 * exact[f"{cls}_loss_gap"] + 1.01 * exact[f"{cls}_irreducible"])
    # at 10^12 the quadrature meets the same tolerance through the whole run
    big = run_task({**task, "P": 10**12, "steps": 2000, "method": "auto"}, tmp_path)
    assert big["method_used"] == "quadrature" and 0 < big["error_estimate"] < 1e-13
    assert big["converged"] and big["local_phases"] == 2


def test_fit_power_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    P = np.logspace(3, 12, 19)
    y = 3.0 * P**0.7 * np.exp(rng.normal(0, 0.05, P.size))
    fit = scaling.fit_power(P, y)
    ref = stats.linregress(np.log10(P), np.log10(y))
    half = stats.t.ppf(0.975, P.size - 2) * ref.stderr
    assert fit["exponent"] == pytest.approx(ref.slope, rel=1e-12)
    assert fit["low"] == pytest.approx(ref.slope - half, rel=1e-12)
    assert fit["high"] == pytest.approx(ref.slope + half, rel=1e-12)
    assert fit["prefactor"] == pytest.approx(10**ref.intercept, rel=1e-12)
    assert fit["low"] < 0.7 < fit["high"]
    exact = scaling.fit_power(P, 2 * P**-0.25)
    assert exact["exponent"] == pytest.approx(-0.25, abs=1e-12)
    assert exact["high"] - exact["low"] < 1e-9
    with pytest.raises(ValueError, match="positive"):
        scaling.fit_power(P, -y)
    with pytest.raises(ValueError, match="two distinct"):
        scaling.fit_power([10, 10], [1, 2])


def test_fits_per_regime(local_table):
    _, table = local_table
    f = scaling.fits(table)
    assert set(f["regime"]) == {"kappa_c=0.9 kappa_s=0.3 (Delta=+0.50), GD",
                                "kappa_c=0.6 kappa_s=0.3 (Delta=-0.10), GD"}
    neg = f[(f["kappa_c"] == 0.6) & (f["quantity"] == "local_switch")].iloc[0]
    assert neg["n"] == 0 and neg["note"] == "left out of 3: 3 zero or not reached"  # one phase
    pos = table[(table["kappa_c"] == 0.9) & (table["status"] == "done")]
    gap = f[(f["kappa_c"] == 0.9) & (f["quantity"] == "global_loss_gap")].iloc[0]
    ref = np.polyfit(np.log10(pos["P"].to_numpy(float)),
                     np.log10(pos["global_loss_gap"].to_numpy(float)), 1)[0]
    assert gap["exponent"] == pytest.approx(ref, rel=1e-12)
    assert "fits, power law y = c * P^b" in scaling.report(table, f)
    # a time of a few steps is not resolved by the steps: it stays out of the fit
    short = table.copy()
    short.loc[(short["kappa_c"] == 0.9) & (short["P"] == 10000), "local_switch"] = 3
    f = scaling.fits(short, quantities=["local_switch"])
    pos = f[f["kappa_c"] == 0.9].iloc[0]
    assert pos["n"] == 2 and pos["note"] == "left out of 3: 1 under 10 steps"
    assert scaling.fits(short, quantities=["local_switch"], min_steps=1).iloc[0]["n"] == 3


def test_cli_sweep(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["sweep", "--P", "3:4:0.5", "--kappa-c", "0.9", "--kappa-s", "0.3", "--steps", "100",
            "--out", str(out), "--no-progress", "--workers", "1"]
    assert main(argv) == 0
    table = read_table(out)
    assert list(table["P"]) == [1000, 3162, 10000] and (table["status"] == "done").all()
    assert (out / "fits.csv").is_file() and (out / "scaling.png").is_file()
    assert "fits, power law y = c * P^b" in capsys.readouterr().out
    assert main(argv + ["--z", "1", "30", "--eta", "1e308", "--eta-rule", "fixed",
                        "--no-plots"]) == 1
    assert "3 of 9 tasks failed" in capsys.readouterr().err  # the 3 rows before are kept
    assert main(["sweep", "--P", "1e3", "--out", str(out)]) == 2
    assert "--kappa-c, --kappa-s" in capsys.readouterr().err
    assert main(["sweep", "--P", "4:3", "--kappa-c", "0.9", "--kappa-s", "0.3"]) == 2


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match="unknown task parameter"):
        sweep(tmp_path, {"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3, "kapa": 1})
    with pytest.raises(ValueError, match="needs kappa_s"):
        expand({"P": 1000, "kappa_c": 0.9})
    with pytest.raises(TypeError, match="steps"):
        expand({"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3, "steps": 1.5})
    with pytest.raises(ValueError, match="eta_rule"):
        expand({"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3, "eta_rule": "linear"})
    with pytest.raises(ValueError, match="executor"):
        sweep(tmp_path, {"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3}, executor="slurm")
    with pytest.raises(ValueError, match="workers"):
        sweep(tmp_path, {"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3}, workers=0)
    with pytest.raises(ValueError, match="at least one task"):
        sweep(tmp_path, {})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a sweep results table"):
        sweep(tmp_path / "bad", {"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3})


def test_one_sweep_per_folder(tmp_path):
    from mimfast.sweeps import _lock

    held = _lock(tmp_path)
    try:
        with pytest.raises(RuntimeError, match="another sweep"):
            sweep(tmp_path, {"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3})
    finally:
        held.close()


def test_initial_gradient_ratio_grows_like_p_to_the_information_gap(tmp_path):
    # the paper's mechanism (docs/model.md §4): at Q = 0 a local query's global-decoupling
    # gradient over its own-feature gradient scales like (c_g/P)^2 / (c_l/P) = P^Delta
    grid = {"P": [10**4, 10**5, 10**6, 10**7], "kappa_s": [0.3, 0.4], "kappa_c": [0.6, 0.9],
            "steps": 0}
    f = scaling.fits(sweep(tmp_path, grid, workers=1, progress=False),
                     quantities=["local_grad_ratio0"])
    assert len(f) == 4 and (f["n"] == 4).all()
    assert np.all(np.abs(f["exponent"] - f["delta"]) < 0.03), f[["delta", "exponent"]]
    assert np.all(np.sign(f["low"]) == np.sign(f["delta"]))
    assert np.all(np.sign(f["high"]) == np.sign(f["delta"]))


def test_interrupt_stops_local_workers(local_table, tmp_path):
    _, expected = local_table

    with pytest.raises(KeyboardInterrupt):
        sweep(tmp_path, GRID, FAIL, workers=2, progress=False, callback=interrupt)
    assert len(read_table(tmp_path)) == 1
    same_table(sweep(tmp_path, GRID, FAIL, workers=2, progress=False), expected)


# --- sweeps that never lie (each test below failed before its fix) ---------------------------

TINY = {"P": [300, 400, 500, 600], "kappa_c": 0.9, "kappa_s": 0.3, "steps": 20}


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory):
    return sweep(tmp_path_factory.mktemp("tiny"), TINY, workers=1, progress=False)


def kill_a_worker(rng, killed):
    """A sweep callback that SIGKILLs one random local worker process, once."""
    import multiprocessing
    import signal

    def kill(row):
        children = multiprocessing.active_children()
        if not killed and children:
            victim = children[rng.integers(len(children))]
            killed.append(victim.pid)
            os.kill(victim.pid, signal.SIGKILL)

    return kill


def test_killed_local_workers_fail_only_their_task(tiny_table, tmp_path):
    # fault injection: in each of 20 sweeps one random worker is killed after the first row;
    # the pool is rebuilt, at most the killed worker's task fails, and one re-run gives the
    # uninterrupted table
    rng, lost = np.random.default_rng(18), 0
    for i in range(20):
        out, killed = tmp_path / str(i), []
        table = sweep(out, TINY, workers=2, threads=1, progress=False,
                      callback=kill_a_worker(rng, killed))
        assert killed and len(table) == len(tiny_table)
        failed = table[table["status"] == "failed"]
        assert len(failed) <= 1, failed["error"].tolist()
        assert failed["error"].str.startswith("worker lost: its worker process ended").all()
        lost += len(failed)
        same_table(sweep(out, TINY, workers=2, progress=False), tiny_table)
    assert lost  # some kills hit a running task


def test_two_sweeps_on_one_scheduler_keep_their_own_files(tiny_table, tmp_path):
    # the same tasks into two folders at once on one Dask scheduler: a task's key names its
    # folder, so neither sweep is handed the other's results
    import threading

    distributed = pytest.importorskip("distributed")
    outs, tables, errors = [tmp_path / "a", tmp_path / "b"], {}, []
    start = threading.Barrier(2)

    def run(out, address):
        try:
            start.wait()
            tables[out] = sweep(out, TINY, scheduler=address, progress=False)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        threads = [threading.Thread(target=run, args=(out, cluster.scheduler_address))
                   for out in outs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
    assert not errors
    for out in outs:
        same_table(tables[out], tiny_table)
        for rel in tables[out]["file"]:
            io.check_file(out / rel)
    assert dask_key(expand(TINY)[0], outs[0]) != dask_key(expand(TINY)[0], outs[1])


def test_corrupt_or_empty_run_files_are_not_done(tiny_table, tmp_path, capsys):
    sweep(tmp_path, TINY, workers=1, progress=False)
    files = [tmp_path / rel for rel in tiny_table["file"]]
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 0x10  # one bit
    files[0].write_bytes(bytes(data))
    files[1].write_bytes(b"")
    capsys.readouterr()
    seen = []
    table = sweep(tmp_path, TINY, workers=1, progress=False, callback=seen.append)
    assert [r["task"] for r in seen] == list(tiny_table["task"][:2])
    err = capsys.readouterr().err
    assert "fails its checksum" in err and "no checksum trailer" in err and "run again" in err
    same_table(table, tiny_table)
    for f in files:
        io.check_file(f)


def _edit_field(record, column, edit):
    header = [*COLUMNS, "row_sha256"]
    i = header.index(column)
    record[i] = edit(record[i])
    return record


def test_damaged_table_rows_are_redone_and_orphans_dropped(tiny_table, tmp_path, capsys):
    import csv

    sweep(tmp_path, TINY, workers=1, progress=False)
    path = tmp_path / "results.csv"
    with open(path, newline="") as f:
        records = list(csv.reader(f))
    # a changed digit in the first task's row, and the last row cut inside its task id
    _edit_field(records[1], "eta_used", lambda v: v[:-1] + ("1" if v[-1] != "1" else "2"))
    with open(path, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(records[:-1])
        f.write(records[-1][0][:7])
    with pytest.raises(ValueError, match="line.* 2, 5 fail their checksum"):
        read_table(tmp_path)
    capsys.readouterr()
    seen = []
    table = sweep(tmp_path, TINY, workers=1, progress=False, callback=seen.append)
    err = capsys.readouterr().err
    assert "line 2 of" in err and "its task is run again" in err
    assert "line 5 of" in err and "dropped" in err
    assert [r["task"] for r in seen] == [tiny_table["task"].iloc[0], tiny_table["task"].iloc[-1]]
    same_table(table, tiny_table)
    assert len(path.read_text().splitlines()) == 1 + len(tiny_table)


def test_full_disk_names_the_sweep_file_and_keeps_the_old_one(tmp_path, monkeypatch, capsys):
    import errno

    out = tmp_path / "s"
    argv = ["sweep", "--P", "300", "400", "--kappa-c", "0.9", "--kappa-s", "0.3", "--steps",
            "20", "--out", str(out), "--no-progress", "--workers", "1"]
    assert main(argv) == 0
    before = (out / "fits.csv").read_bytes()
    real, calls = io.os.fsync, []

    def full(fd):  # the table and its folder are flushed; fits.csv does not fit
        calls.append(fd)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", full)
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "disk full" in err and "fits.csv" in err and "Traceback" not in err
    assert (out / "fits.csv").read_bytes() == before
    assert list(out.rglob(".mimfast-*.tmp")) == []


def test_sweeps_clean_temporaries_of_killed_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / "runs").mkdir()
    left = [tmp_path / f".mimfast-{dead}-0123456789ab.tmp",
            tmp_path / "runs" / f".mimfast-{dead}-ba9876543210.tmp"]
    for p in left:
        p.write_bytes(b"cut short")
    sweep(tmp_path, {**TINY, "P": 300}, workers=1, progress=False)
    assert not any(p.exists() for p in left)


K = ["--kappa-c", "0.9", "--kappa-s", "0.3"]


@pytest.mark.parametrize("argv, words", [
    (["sweep", "--P", "3:400", *K], "exponents must lie in [0, 18.66]"),
    (["sweep", "--P", "3:10:0.000001", *K], "more than 1000 values of P"),
    (["sweep", "--P", "1e3", *K, "--rtol", "0"], "rtol must lie in [2^-52, 1)"),
    (["sweep", "--P", "1e3", *K, "--rtol", "1e-17", "5e-324"], "2 of 2 tasks would be refused"),
    (["sweep", "--P", "1e3", *K, "--backend", "nope"], "backend 'nope' is not available"),
    (["sweep", "--P", "1e3", *K, "--threads", "100000"], "threads must lie in [1, 65536]"),
    (["sweep", "--P", "1e3", *K, "--workers", "10**6"], "workers must be at most"),
    (["sweep", "--P", "1e3", *K, "--steps", "10**30"], "steps must be at most 2^53"),
    (["sweep", "--P", "1e3", "1e18", *K, "--method", "exact"], "1 of 2 tasks would be refused"),
    (["sweep", "--P", "1e3", "--kappa-c", "0.9", "0.2", "--kappa-s", "0.3"], "global area"),
])
def test_bad_sweep_values_exit_2_before_any_task(argv, words, tmp_path, capsys):
    out = tmp_path / "out"
    t = time.monotonic()
    assert main([*argv, "--out", str(out), "--no-progress"]) == 2
    assert time.monotonic() - t < 10
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not out.exists()


def test_refused_tasks_are_named(tmp_path):
    tasks = [{"P": 1000, "kappa_c": c, "kappa_s": 0.3} for c in (0.9, 0.2, 0.1)]
    with pytest.raises(ValueError, match="2 of 3 tasks would be refused") as info:
        sweep(tmp_path, tasks=tasks)
    for task in tasks[1:]:
        assert task_id(task) in str(info.value)
    assert task_id(tasks[0]) not in str(info.value) and list(tmp_path.iterdir()) == []


def test_locked_sweep_folder_exits_2(tmp_path, capsys):
    from mimfast.sweeps import _lock

    held = _lock(tmp_path)
    try:
        assert main(["sweep", "--P", "300", *K, "--out", str(tmp_path)]) == 2
    finally:
        held.close()
    err = capsys.readouterr().err
    assert "another sweep is running" in err and "Traceback" not in err


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups as on Linux")
@pytest.mark.parametrize("executor", ["local", "dask"])
def test_group_ctrl_c_as_workers_start_prints_no_traceback(executor, tmp_path):
    # Ctrl-C at a terminal signals the whole process group: the workers starting up must not
    # print tracebacks, and the sweep ends with exit 130 (or 0 if it was done)
    import signal

    for i, delay in enumerate((0.0, 0.2, 0.6, 1.2)):  # after the sweep has locked its folder
        out = tmp_path / str(i)
        proc = subprocess.Popen(
            [sys.executable, "-m", "mimfast", "sweep", "--P", "300", "400", "500", *K,
             "--steps", "20", "--workers", "2", "--executor", executor, "--out", str(out),
             "--no-progress", "--no-plots"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        while not (out / ".sweep.lock").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        err = err.decode()
        assert proc.returncode in (0, 130, -signal.SIGINT), err
        assert "Traceback" not in err, err
        if (out / "results.csv").exists():  # the finished rows are kept, whole
            assert set(read_table(out)["status"]) <= {"done"}

"""Sweeps of the gradient flow: rows that agree with mf.flow and its analysis, task identity
that keeps GD and flow apart, fits in flow time, and one rule for the number of phases."""

import numpy as np
import pandas as pd
import pytest
from test_analysis import TWO_PHASES, known_result, paper

import mimfast as mf
from mimfast import io, scaling
from mimfast.analysis import analyze
from mimfast.cli import main
from mimfast.sweeps import (
    PRESETS,
    _measure,
    check_tasks,
    expand,
    preset,
    read_table,
    sweep,
    task_id,
)

GRID = {"P": [10**4, 10**7, 10**12], "kappa_c": [0.9, 0.6], "kappa_s": 0.3, "flow": True}


@pytest.fixture(scope="module")
def flow_table(swept):
    return swept("flow", GRID)


def test_flow_rows_agree_with_mf_flow(flow_table):
    out, table = flow_table
    assert (table["status"] == "done").all() and table["flow"].all()
    assert table[["eta", "eta_used"]].isna().all().all()
    assert table[["steps", "until", "record_every", "eta_rule"]].isna().all().all()
    for row in table.itertuples():
        s = mf.Setting.paper(int(row.P), row.kappa_c, row.kappa_s)
        direct = mf.flow(s, 1e300, stop_at="T_eps", threads=1, method="auto")
        assert io.equal(io.load(out / row.file), direct)
        glob, local = analyze(direct).classes
        assert row.local_switch_tau == direct.events["switch", 0, 1] == local.switch_tau
        assert row.local_T_eps_tau == direct.events["T_eps", 0, 1]
        assert row.global_T_eps_tau == direct.events["T_eps", 0, 0]
        assert row.local_phases == local.phases and row.global_phases == glob.phases == 1
        assert row.local_grad_ratio0 == local.grad_ratio0
        assert row.last_tau == direct.tau[-1] and row.last_step == direct.last_step
        assert row.evaluations == direct.evaluations and row.trusted
        assert row.converged and row.local_fp_global_falling  # still falling at T_eps
        if row.kappa_c == 0.9:  # two phases, with the global FP decoupled at the switch
            assert row.local_phases == 2 and row.local_switch_tau > 0
            assert row.local_fp_global_at_switch == local.fp_global_at_switch < -1
            assert 0.3 < row.local_fp_own_at_switch < 0.5
        else:
            assert row.local_phases == 1 and row.local_switch_tau == 0
            assert np.isnan(row.local_fp_global_at_switch)


def test_gd_and_flow_tasks_never_share_an_id_or_a_regime(flow_table, tmp_path):
    gd = {"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3}
    flow = {**gd, "flow": True}
    assert task_id(gd) != task_id(flow)
    # a rule's options that do not apply are empty, so they leave the identity alone
    assert expand(tasks=[flow])[0]["eta"] is None and expand(tasks=[gd])[0]["tau"] is None
    assert task_id(flow) == task_id({**flow, "flow_rtol": 1e-10})
    assert task_id(flow) != task_id({**flow, "tau": 100.0})
    _, table = flow_table
    mixed = sweep(tmp_path, {"P": [10**4, 10**5, 10**6], "kappa_c": 0.9, "kappa_s": 0.3,
                             "steps": 20}, workers=1, progress=False)
    both = pd.concat([mixed, table], ignore_index=True)
    f = scaling.fits(both)
    regimes = set(f["regime"])
    assert "kappa_c=0.9 kappa_s=0.3 (Delta=+0.50), GD" in regimes
    assert "kappa_c=0.9 kappa_s=0.3 (Delta=+0.50), flow" in regimes
    # the accepted steps of a flow run are not a time: no fit in steps for a flow regime
    flow_fits = f[f["regime"].str.endswith("flow")]
    assert not set(flow_fits["quantity"]) & {"local_switch", "local_T_eps", "global_T_eps"}


def test_flow_fits_give_the_laws_in_flow_time(flow_table):
    _, table = flow_table
    f = scaling.fits(table).set_index(["kappa_c", "quantity"])
    switch = f.loc[(0.9, "local_switch_tau")]
    assert switch["law"] == "power" and switch["low"] < 0.7031 < switch["high"]
    depth = f.loc[(0.9, "local_fp_global_at_switch")]  # -(Delta/2) ln P: a log law
    assert depth["law"] == "log" and depth["n"] == 3
    assert depth["exponent"] == pytest.approx(-0.247, abs=0.003)
    assert f.loc[(0.6, "local_fp_global_at_switch")]["n"] == 0  # one phase: no phase I
    assert "still falling" in f.loc[(0.9, "local_fp_global_min")]["note"]
    assert "per ln P" in scaling.report(table)


def test_fit_log_is_least_squares_on_ln_p():
    P = np.array([1e4, 1e8, 1e12, 1e16])
    y = 0.3 - 0.25 * np.log(P)
    fit = scaling.fit_log(P, y)
    assert fit["exponent"] == pytest.approx(-0.25, abs=1e-12)
    assert fit["prefactor"] == pytest.approx(0.3, abs=1e-9)
    assert fit["high"] - fit["low"] < 1e-9
    noisy = scaling.fit_log(P, y + [0.01, -0.02, 0.02, -0.01])
    assert noisy["low"] < noisy["exponent"] < noisy["high"]
    with pytest.raises(ValueError, match="finite"):
        scaling.fit_log(P, [1, 2, np.nan, 3])


def test_flow_task_options_are_checked_up_front():
    base = {"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3}
    with pytest.raises(ValueError, match="takes no GD option: drop eta, steps"):
        expand(tasks=[{**base, "flow": True, "eta": 1.0, "steps": 5}])
    with pytest.raises(ValueError, match="tau apply to a gradient-flow task"):
        expand(tasks=[{**base, "tau": 5.0}])
    with pytest.raises(TypeError, match="flow"):
        expand(tasks=[{**base, "flow": 1}])
    for bad, match in (({"tau": -1.0}, "tau must be finite and positive"),
                       ({"flow_rtol": 2.0}, r"rtol must lie in \[1e-14, 1\)")):
        with pytest.raises(ValueError, match=match):
            check_tasks(expand(tasks=[{**base, "flow": True, **bad}]))


def test_flow_to_a_given_tau(tmp_path):
    table = sweep(tmp_path, {"P": 10**6, "kappa_c": 0.9, "kappa_s": 0.3, "flow": True,
                             "tau": 1000.0}, workers=1, progress=False)
    row = table.iloc[0]
    assert row["last_tau"] == 1000.0 and not row["converged"]
    assert row["local_phases"] is pd.NA and np.isnan(row["local_switch_tau"])  # not yet


def test_phases_in_the_table_are_the_analysis_verdict():
    # a switch after Q = 0 without decoupling is one phase, in the table as in the report
    r = known_result(paper(), **{**TWO_PHASES, "fp_global": [0.0, -0.1, -0.2, -0.3]})
    a = analyze(r)
    row = _measure(r, a)
    assert row["local_switch"] == 20 and row["local_phases"] == a.classes[1].phases == 1
    two = known_result(paper(), **TWO_PHASES)
    assert _measure(two, analyze(two))["local_phases"] == 2


def test_gd_steps_that_cross_phase_one_are_untrusted_in_the_table(tmp_path):
    # the P = 10^15 GD preset's first step crosses phase I; the flow shows the two phases
    tasks = [{"P": 10**15, "kappa_c": 0.9, "kappa_s": 0.3, "steps": 3, "method": "auto"},
             {"P": 10**15, "kappa_c": 0.9, "kappa_s": 0.3, "flow": True, "method": "auto"}]
    table = sweep(tmp_path, tasks=tasks, workers=1, progress=False)
    gd, flow = table.iloc[0], table.iloc[1]
    assert not gd["trusted"] and flow["trusted"] and flow["local_phases"] == 2
    assert len(scaling.phases(table)) == 1  # the untrusted verdict is left out
    assert "phase verdicts untrusted" in scaling.report(table)


def test_flow_presets():
    for name in ("paper-scaling-flow", "paper-phases-flow"):
        tasks = expand(preset(name))
        assert all(t["flow"] and t["eta"] is None and t["tau"] is None for t in tasks)
        gd = expand(preset(name.removesuffix("-flow")))
        assert {(t["P"], t["kappa_c"], t["kappa_s"]) for t in tasks} <= \
            {(t["P"], t["kappa_c"], t["kappa_s"]) for t in gd}
    assert len(expand(preset("paper-scaling-flow"))) == 32
    assert "gradient flow" in PRESETS["paper-phases-flow"]["help"]


def test_cli_sweep_flow(tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["sweep", "--preset", "paper-scaling-flow", "--P", "1e4", "1e6", "1e8",
            "--kappa-c", "0.9", "--out", str(out), "--no-progress", "--workers", "1",
            "--no-plots"]
    assert main(argv) == 0
    table = read_table(out)
    assert table["flow"].all() and (table["local_phases"] == 2).all()
    assert "phase switch of a local query (flow time)" in capsys.readouterr().out
    # --flow turns a GD preset into the flow; each TAU is a task
    out2 = tmp_path / "tau"
    assert main(["sweep", "--preset", "paper-scaling", "--P", "1e4", "--kappa-c", "0.9",
                 "--flow", "100", "1000", "--out", str(out2), "--no-progress", "--workers",
                 "1", "--no-plots"]) == 0
    assert list(read_table(out2)["last_tau"]) == [100.0, 1000.0]
    for bad, message in ((["--flow", "--eta", "1"], "drop the GD options --eta"),
                         (["--flow-rtol", "1e-8"], "add --flow"),
                         (["--preset", "paper-scaling-flow", "--steps", "5"],
                          "drop the GD options --steps")):
        argv = ["sweep", "--P", "1e4", "--kappa-c", "0.9", "--kappa-s", "0.3",
                "--out", str(tmp_path / "bad"), *bad]
        assert main(argv) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_saved_analysis_keeps_each_claims_source_and_trust(tmp_path):
    r = mf.flow(mf.Setting.paper(10**4, 0.9, 0.3), 1e300, stop_at="T_eps", threads=1)
    a = analyze(r)
    io.save(r, tmp_path / "r.nc", a)
    ds = io.open_dataset(tmp_path / "r.nc")
    assert list(ds["claim_source"].values) == [c.source for c in a.claims]
    assert list(ds["claim_trusted"].values) == [1] * len(a.claims)


@pytest.mark.parametrize(("name", "phases"), [("paper-positive", 2), ("paper-negative", 1)])
def test_run_preset_flow_at_a_quadrillion_patches(tmp_path, capsys, name, phases):
    # the presets' own learning rate would make these runs untrusted; the flow is not
    assert main(["run", "--preset", name, "--P", "1e15", "--flow", "--no-plots", "--threads",
                 "1", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "untrusted" not in text and "FAILS" not in text
    assert "[holds] §5 / Lemma 5.3 / App. F: local areas learn in two phases iff Delta > 0" \
        in text
    summary = analyze(io.load(tmp_path / "result.nc"))
    local = summary.classes[1]
    assert local.phases == phases and local.convergence_tau is not None
    if phases == 2:  # decoupled at the switch, the own FP still O(1)
        assert local.fp_global_at_switch < -7 and 0 < local.fp_own_at_switch < 0.5

"""The mimfast command: options, config file, bad input, exit codes, figures, kill and resume."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mimfast as mf
from mimfast import io
from mimfast.cli import main

# one thread: the machine running the tests may be busy, and OpenMP spin-waits then
SMALL = ["--P", "1e3", "--eta", "5", "--steps", "40", "--no-plots", "--threads", "1"]


def run_ok(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    return out, err


def test_run_writes_results_figures_and_summary(tmp_path, capsys):
    out, _ = run_ok(["run", "--preset", "paper-negative", "--P", "10**3", "--eta", "5",
                     "--steps", "60", "--record-every", "3", "--threads", "1",
                     "--out", str(tmp_path)], capsys)
    assert "Theorem 4.1" in out and "local" in out and "Delta = -0.1000" in out
    assert (tmp_path / "summary.txt").read_text().strip() == out.strip()
    for name in ("fp.png", "attention.png", "pp.png"):
        data = (tmp_path / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000, name
    r = io.load(tmp_path / "result.nc")
    assert r.setting == mf.Setting.paper(1000, 0.6, 0.3) and r.setting.kappa == (0.6, 0.3)
    assert (r.eta, r.last_step, r.record_every) == (5.0, 60, 3)
    assert io.equal(r, mf.simulate(r.setting, 5.0, 60, record_every=3, threads=1))
    assert (tmp_path / "trajectories.csv").stat().st_size > 0
    assert not (tmp_path / "checkpoint.nc").exists()

    out, _ = run_ok(["summary", str(tmp_path / "result.nc")], capsys)
    assert out.strip() == (tmp_path / "summary.txt").read_text().strip()
    figures = tmp_path / "figures"
    run_ok(["plot", str(tmp_path / "result.nc"), "--out", str(figures), "--epsilon", "0.1"],
           capsys)
    assert sorted(p.name for p in figures.iterdir()) == ["attention.png", "fp.png", "pp.png"]
    assert all(p.stat().st_size > 20_000 for p in figures.iterdir())


def test_options_override_config_which_overrides_preset(tmp_path, capsys):
    config = tmp_path / "run.toml"
    config.write_text('preset = "paper-negative"\nP = 2000\nkappa_s = 0.4\neta = 2.5\n'
                      'steps = 30\nz = [1.0, 0.8]\nout = "result-folder"\nplots = false\n'
                      'threads = 1\n')
    run_ok(["run", "--config", str(config), "--steps", "12", "--gamma", "0.25"], capsys)
    r = io.load(tmp_path / "result-folder" / "result.nc")
    assert r.setting == mf.Setting.paper(2000, 0.6, 0.4, gamma=0.25, z=(1.0, 0.8))
    assert (r.eta, r.last_step) == (2.5, 12)


def test_config_with_any_setting(tmp_path, capsys):
    config = tmp_path / "any.toml"
    config.write_text("masked = 4\neta = 3.0\nsteps = 10\nplots = false\nthreads = 1\n"
                      "[[clusters]]\ngroups = [{areas = 1, size = 4}, {areas = 3, size = 2}]\n"
                      "[[clusters]]\nweight = 2.0\n"
                      "groups = [{areas = 2, size = 3, z = 1.5}, {areas = 2, size = 2}]\n")
    out, _ = run_ok(["run", "--config", str(config), "--out", str(tmp_path / "o")], capsys)
    r = io.load(tmp_path / "o" / "result.nc")
    assert r.setting.K == 2 and r.setting.masked == 4 and r.setting.pp == "frozen"
    assert r.setting.clusters[1].groups[0].z == 1.5 and "n/a" in out


def test_help_and_version(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "exit codes" in text and "130" in text
    assert main(["run", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--resume" in text and "--checkpoint-every" in text and "TOML" in text
    assert main(["--version"]) == 0
    assert mf.__version__ in capsys.readouterr().out


@pytest.mark.parametrize("argv, code, message", [
    ([], 2, "required"),
    (["run", "--bogus"], 2, "unrecognized"),
    (["run", "--P", "abc"], 2, "not a whole number"),
    (["run", "--preset", "nope"], 2, "invalid choice"),
    (["run", "--kappa-c", "1.5"] + SMALL, 2, "kappa_c must lie in (0, 1)"),
    (["run", "--backend", "fortran"] + SMALL, 2, "backend 'fortran' is not available"),
    (["run", "--steps", "-1", "--P", "1e3"], 2, "steps must lie in [0, 2^53], got -1"),
    (["run", "--checkpoint-seconds", "nan", "--P", "1e3"], 2,
     "checkpoint-seconds must be finite and at least 0, got nan"),
    (["run", "--etaa", "5"], 2, "--etaa 5 (did you mean --eta?)"),
    (["run", "--kappa_c", "0.9"], 2, "arguments: --kappa_c 0.9 (did you mean --kappa-c?)"),
    (["run", "--kappa_c", "0.9", "--stepz", "3"], 2,
     "--kappa_c 0.9 --stepz 3 (did you mean --kappa-c for --kappa_c, --steps for --stepz?)"),
    (["summary", "x.nc", "--epsilom", "0.1"], 2, "did you mean --epsilon?"),
    (["run", "--z", "1", "2", "3"] + SMALL, 2, "z takes one value or two"),
    (["run", "--eta", "1e308", "--z", "30", "--P", "1e3", "--steps", "5", "--no-plots",
      "--threads", "1"], 1, "too large"),
    (["run", "--config", "missing.toml"], 3, "config file not found"),
    (["summary", "missing.nc"], 3, "no such results file"),
    (["plot", "missing.nc"], 3, "no such results file"),
    (["run", "--resume", "no-such-folder"], 3, "no such folder"),
])
def test_bad_input_exit_codes(argv, code, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("text, message", [
    ("P = [1, 2", "cannot read config file"),
    ("steps = 10\ncolour = 3\n", "unknown key(s) colour"),
    ('steps = "ten"\n', "steps = 'ten' should be int"),
])
def test_bad_config_file(text, message, tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    assert main(["run", "--config", str(config)]) == 3
    assert message in capsys.readouterr().err


def test_bad_config_values_and_clusters(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("gamma = 2.0\n")
    assert main(["run", "--config", str(config)] + SMALL) == 2
    assert "gamma must lie in (0, 1)" in capsys.readouterr().err
    config.write_text("steps = 5\n[[clusters]]\ngroups = [{areas = 1, size = 4}]\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "needs eta" in capsys.readouterr().err
    assert main(["run", "--config", str(config), "--eta", "1", "--P", "10"]) == 2
    assert "drop P" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--eta", "-5"], "eta must be finite and non-negative, got -5.0"),
    (["--eta", "nan"], "eta must be finite"),
    (["--threads", "0"], "threads must lie in"),
    (["--tail-tol", "0.5"], "tail_tol must lie in"),
    (["--step-axis", "log"], "invalid choice"),
])
def test_refused_values_exit_2_and_write_nothing(argv, message, tmp_path, capsys):
    out = tmp_path / "never-made"
    assert main(["run", "--P", "1e3", "--steps", "5", "--out", str(out)] + argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_bad_keys_inside_a_config_group_name_the_allowed_ones(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text("eta = 1.0\nsteps = 2\n[[clusters]]\n"
                      "groups = [{areas = 1, size = 4, colour = 2}, {areas = 3, size = 2}]\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "a group: unknown key(s) colour; its keys are areas, size, z (optional)" in err
    assert "__init__" not in err
    config.write_text("eta = 1.0\n[[clusters]]\nweight = 1.0\nareas = 2\n")
    assert main(["run", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "a [[clusters]] entry: unknown key(s) areas; its keys are groups, weight" in err
    assert not (tmp_path / "mimfast-run").exists()


def test_summary_and_plot_of_a_run_folder_and_a_finished_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out)] + SMALL) == 0
    printed = capsys.readouterr().out
    assert main(["summary", str(out)]) == 0
    assert capsys.readouterr().out.strip() == printed.strip()
    assert main(["plot", str(out), "--step-axis", "symlog"]) == 0
    capsys.readouterr()
    assert all((out / f"{name}.png").stat().st_size > 20_000 for name in ("fp", "pp"))
    before = (out / "result.nc").stat().st_mtime_ns
    assert main(["run", "--resume", str(out)]) == 0
    err = capsys.readouterr().err
    assert "is finished (40 steps)" in err and "--steps N" in err
    assert (out / "result.nc").stat().st_mtime_ns == before  # nothing rewritten


def test_bad_results_file(tmp_path, capsys):
    junk = tmp_path / "junk.nc"
    junk.write_text("hello")
    assert main(["summary", str(junk)]) == 3
    assert "not a readable NetCDF" in capsys.readouterr().err
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "checkpoint.nc").write_text("hello")
    assert main(["run", "--resume", str(folder)]) == 3
    assert main(["run", "--out", str(folder)] + SMALL) == 2  # would overwrite an unfinished run
    assert "--resume" in capsys.readouterr().err


def cli(*args):
    return [sys.executable, "-m", "mimfast", *args]


def test_module_entry_point_runs():
    done = subprocess.run(cli("--version"), check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and mf.__version__ in done.stdout


# A run slow enough to kill: a checkpoint after every step.
KILLED = ["--P", "1e4", "--eta", "4", "--steps", "1500", "--record-every", "25", "--no-plots",
          "--threads", "1"]


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 130),
                                       (signal.SIGKILL, -9)])
def test_resume_after_kill_equals_uninterrupted_run(sig, code, tmp_path, capsys, spawn):
    out = tmp_path / "run"
    proc = spawn(cli("run", *KILLED, "--checkpoint-every", "1", "--out", str(out)),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    checkpoint = out / "checkpoint.nc"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    if code == 130:
        assert "--resume" in err
    saved = io.load(checkpoint)
    assert 0 < saved.last_step < 1500
    assert not (out / "result.nc").exists()

    assert main(["run", "--resume", str(out), "--checkpoint-every", "0", "--threads", "1"]) == 0
    capsys.readouterr()
    assert not checkpoint.exists()
    resumed = io.load(out / "result.nc")
    full = mf.simulate(mf.Setting.paper(10**4, 0.9, 0.3), 4.0, 1500, record_every=25,
                       threads=1)
    assert io.equal(resumed, full)
    np.testing.assert_array_equal(resumed.fp(0, 1, "own"), full.fp(0, 1, "own"))


def test_resume_rules(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--out", str(out)] + SMALL) == 0
    capsys.readouterr()
    assert main(["run", "--resume", str(out), "--eta", "3"]) == 2
    assert "drop --eta" in capsys.readouterr().err
    assert main(["run", "--resume", str(out), "--steps", "10"]) == 2
    # a finished run can be extended; the result equals a longer run
    assert main(["run", "--resume", str(out), "--steps", "55", "--threads", "1"]) == 0
    capsys.readouterr()
    longer = mf.simulate(mf.Setting.paper(1000, 0.9, 0.3), 5.0, 55, threads=1)
    assert io.equal(io.load(out / "result.nc"), longer)


def test_progress_bar_only_when_asked(tmp_path):
    done = subprocess.run(cli("run", *SMALL, "--progress", "--out", str(tmp_path)),
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "step/s" in done.stderr and "own-area attention" in done.stderr
    assert "Theorem 4.1" in done.stdout and "step/s" not in done.stdout
    done = subprocess.run(cli("run", *SMALL, "--out", str(tmp_path), "--force"),  # no terminal
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "step/s" not in done.stderr


def test_checkpoint_once_per_multiple_crossed():
    """The run callback comes after steps from multiples of N and at timed moments between;
    a checkpoint is written once per multiple of N crossed, not at step 1."""
    from mimfast.cli import _Interrupts, _Progress

    saved = []
    with _Interrupts() as interrupts:
        progress = _Progress(False, 0, 1000, saved.append, 100, interrupts)
        for t in (1, 57, 101, 150, 199, 201, 230, 420):
            progress(t, None, lambda t=t: t)
        progress.close()
    assert saved == [101, 201, 420]


def test_report_and_summary_name_the_engine(tmp_path, capsys):
    quad, exact = tmp_path / "quad", tmp_path / "exact"
    common = ["--P", "1e4", "--steps", "3", "--no-plots", "--threads", "1"]
    assert main(["run", *common, "--method", "quadrature", "--out", str(quad)]) == 0
    printed = capsys.readouterr().out
    r = io.load(quad / "result.nc")
    worst = f"{r.error.max():.1e}"
    for text in (printed, (quad / "summary.txt").read_text()):
        text = " ".join(text.split())
        assert "Engine: Gauss-Hahn quadrature" in text and "tolerance met" in text
        assert "nodes per dimension at the last step: global 6, local 6x6" in text
        assert f"Largest estimated relative error over the recorded steps: {worst}" in text
    assert main(["run", *common, "--out", str(exact)]) == 0
    capsys.readouterr()
    assert main(["summary", str(exact)]) == 0
    text = " ".join(capsys.readouterr().out.split())
    dropped = f"{io.load(exact / 'result.nc').dropped:.1e}"
    assert "Engine: exact count grid" in text
    assert f"left out of a class's grid: at most {dropped} (tail_tol 1e-15)" in text
    # no lock file stays in a finished run's folder
    assert sorted(p.name for p in exact.iterdir()) == ["result.nc", "summary.txt",
                                                        "trajectories.csv"]


def test_a_refused_run_leaves_no_folder_and_speaks_of_options(tmp_path, capsys):
    out = tmp_path / "big"
    assert main(["run", "--P", "1e15", "--method", "exact", "--steps", "2", "--no-plots",
                 "--out", str(out)]) == 2  # refused before anything starts
    err = capsys.readouterr().err
    assert "use --method quadrature" in err and 'method="quadrature"' not in err
    assert not out.exists()  # not even the lock file


def test_backend_without_its_dependency_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "numba", None)  # as if numba were not installed
    out = tmp_path / "run"
    assert main(["run", "--P", "1e3", "--steps", "2", "--backend", "numba", "--out",
                 str(out)]) == 2
    err = capsys.readouterr().err
    assert "backend 'numba' is not available here" in err
    assert "pip install mimfast[numba]" in err and "available: cpp, numpy" in err
    assert not out.exists()


def test_progress_bar_ends_at_the_step_the_run_reached(capsys):
    """Callbacks between checkpoints are timed: when the run stops (interrupted or done) the
    bar moves on to its last step, the one the interrupt message names."""
    from types import SimpleNamespace

    from mimfast.cli import _Interrupts, _Progress

    grad = SimpleNamespace(attention=[np.full((1, 2), 0.5)])
    with _Interrupts() as interrupts:
        progress = _Progress(True, 0, 1000, None, 0, interrupts)
        progress(207, grad, None)
        progress.close(209)
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert "209/1000" in bar, bar


def test_checkpoint_at_most_once_per_interval_of_wall_time():
    """By default checkpoints come by wall time: at the first call at least T seconds after
    the last checkpoint (or the start); a rule by steps may be added."""
    from mimfast.cli import _Interrupts, _Progress

    now = [0.0]
    saved = []
    with _Interrupts() as interrupts:
        progress = _Progress(False, 0, 10**6, saved.append, 0, interrupts, seconds=30,
                             clock=lambda: now[0])
        for t, at in ((5, 0.3), (900, 29.9), (1000, 30.0), (1100, 31), (1900, 59.9),
                      (2000, 60.1), (2100, 200)):
            now[0] = at
            progress(t, None, lambda t=t: t)
        progress.close()
    assert saved == [1000, 2000, 2100]
    saved.clear()
    with _Interrupts() as interrupts:  # both rules
        progress = _Progress(False, 0, 10**6, saved.append, 100, interrupts, seconds=30,
                             clock=lambda: now[0])
        for t, at in ((50, 1), (101, 2), (150, 40), (170, 41), (201, 42)):
            now[0] = at
            progress(t, None, lambda t=t: t)
    assert saved == [101, 150, 201]


def test_figures_step_axis_and_pp_legends():
    from mimfast.plots import attention_figure, fp_figure, pp_figure

    r = mf.simulate(mf.Setting.paper(1000, 0.9, 0.3), 5.0, 30, threads=1)
    for make in (fp_figure, attention_figure, pp_figure):
        assert all(ax.get_xscale() == "linear" for ax in make(r).axes)
        assert all(ax.get_xscale() == "symlog" and ax.get_xlim()[0] == 0
                   for ax in make(r, step_axis="symlog").axes)
    with pytest.raises(ValueError, match="step_axis must be one of linear, symlog"):
        fp_figure(r, step_axis="log")
    left, right = pp_figure(r).axes
    # colour = key (own, local, global, itself), line style = class: one entry each, not one
    # per curve; small PP curves apart on a symlog scale of their own
    from matplotlib.legend import Legend

    def labels(ax):
        legends = [a for a in ax.get_children() if isinstance(a, Legend)]
        return sorted(t.get_text() for legend in legends for t in legend.texts)

    # each panel lists the keys it draws: "itself" only beside the PP curves
    assert labels(left) == sorted(["key: own area", "key: local areas", "key: global area",
                                   "global query", "local query"])
    assert labels(right) == sorted(["key: itself", "key: own area", "key: local areas",
                                    "key: global area"])
    assert right.get_yscale() == "symlog"

"""Gradient flow (mimfast.flow): the integrator against GD at small eta and against an
independent tight-tolerance integration, its events against GD runs, and its input checks."""

import numpy as np
import pytest

import mimfast as mf
from mimfast.backends import get_kernel
from mimfast.flow import DP54, flow
from mimfast.grid import build_grids
from mimfast.model import State, StateLayout, evaluate
from mimfast.quadrature import build_quadratures

SMALL = mf.Setting.paper(10**4, 0.9, 0.3)  # exact grid; local switch at tau ~ 770


def flat(setting, state):
    return StateLayout(setting).flat(state)


def test_coefficients_are_dormand_prince():
    rk = pytest.importorskip("scipy.integrate._ivp.rk")
    for name in "CABEP":
        want = getattr(rk.RK45, name)
        np.testing.assert_allclose(getattr(DP54, name), want[: len(getattr(DP54, name))],
                                   rtol=1e-15, atol=0)


def test_result_shape_and_tau():
    r = flow(SMALL, 300.0)
    r.check()
    assert r.is_flow and np.isnan(r.eta)
    assert r.tau[0] == 0 and r.tau[-1] == 300.0 and np.all(np.diff(r.tau) > 0)
    assert np.array_equal(r.steps, np.arange(len(r.tau)))
    assert r.evaluations >= 6 * (len(r.steps) - 1)
    np.testing.assert_array_equal(r.fp(0, 1, "own")[-1], r.state.fp[0][1, 0])
    assert r.attention(0, 0, "own").shape == r.loss.shape == r.tau.shape


def test_gd_converges_to_flow_at_first_order():
    """GD is the flow's Euler rule: its error at fixed tau halves with eta."""
    tau = 400.0
    want = flat(SMALL, flow(SMALL, tau, rtol=1e-12).state)
    errors = []
    for n in (100, 200, 400):
        gd = mf.simulate(SMALL, tau / n, n, record_every=n)
        errors.append(np.max(np.abs(flat(SMALL, gd.state) - want)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    np.testing.assert_allclose(ratios, 2.0, rtol=0.05)


def _reference(setting, tau):
    """The flow at tau by scipy's DOP853 at rtol 1e-13, on the same gradient."""
    integrate = pytest.importorskip("scipy.integrate")
    method = mf.quadrature.choose_method(setting, "auto")
    grids = build_grids(setting, 1e-15) if method == "exact" else build_quadratures(setting)
    layout, kernel = StateLayout(setting), get_kernel("cpp")

    def f(_, y):
        g = evaluate(setting, grids, layout.state(y), kernel)
        return -layout.flat(State(g.fp, g.pp))

    sol = integrate.solve_ivp(f, (0, tau), np.zeros(layout.size), method="DOP853",
                              rtol=1e-13, atol=1e-13)
    assert sol.success
    return sol.y[:, -1]


@pytest.mark.parametrize("P, tau", [(10**4, 1500.0), (10**9, 4e6)])
def test_flow_meets_rtol_against_a_reference(P, tau):
    """tau past the local switch: every correlation has moved by O(1)."""
    s = mf.Setting.paper(P, 0.9, 0.3)
    ref = _reference(s, tau)
    for rtol in (1e-6, 1e-9):
        y = flat(s, flow(s, tau, rtol=rtol).state)
        assert np.max(np.abs(y - ref) / (1 + np.abs(ref))) < 10 * rtol


def test_backends_agree(backend):
    s = mf.Setting.paper(400, 0.9, 0.3)
    r = flow(s, 200.0, backend=backend)
    c = flow(s, 200.0, backend="cpp")
    # the kernels agree to ~1e-14; the step sizes they choose to ~1e-8, well inside rtol
    assert r.tau[-1] == c.tau[-1] == 200.0
    np.testing.assert_allclose(flat(s, r.state), flat(s, c.state), rtol=1e-9, atol=1e-10)


def test_quadrature_matches_exact():
    s = mf.Setting.paper(10**4, 0.9, 0.3)
    e, q = (flow(s, 1000.0, method=m, rtol=1e-9) for m in ("exact", "quadrature"))
    assert (e.method, q.method) == ("exact", "quadrature")
    np.testing.assert_allclose(flat(s, q.state), flat(s, e.state), rtol=1e-7, atol=1e-9)


def _first_step(gd, holds):
    """The first step at which ``holds`` (monotone along the run), by bisection."""
    lo, hi = 0, len(gd.steps) - 1
    assert not holds(lo) and holds(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return int(gd.steps[hi])


def test_events_agree_with_gd_at_small_eta():
    r = flow(SMALL, 3000.0, stop_at="T_eps")
    eta = 2.0
    gd = mf.simulate(SMALL, eta, int(3000 / eta))
    own = lambda i: abs(gd.fp_grad(0, 1, "own")[i]) >= abs(gd.fp_grad(0, 1, 0)[i])
    att = lambda i: gd.attention(0, 1, "own")[i] >= 0.95
    for name, holds in (("switch", own), ("T_eps", att)):
        t = r.events[name, 0, 1]
        assert abs(eta * _first_step(gd, holds) - t) < 2 * eta + 1e-3 * t
    assert r.events["switch", 0, 0] == 0.0  # the global query: one phase
    # the event is on the dense output between two records, where its function changes sign
    i = np.searchsorted(r.tau, r.events["switch", 0, 1])
    assert r.tau[i - 1] < r.events["switch", 0, 1] <= r.tau[i]


def test_stop_at_switch_stops_after_it():
    r = flow(SMALL, 1e6, stop_at="switch")
    assert r.tau[-1] < 1e6 and r.tau[-2] < r.events["switch", 0, 1] <= r.tau[-1]


def test_global_minimum_only_where_it_turns():
    """In the paper's settings the local query's global FP correlation keeps falling (ever
    more slowly): no minimum is reported, and the lowest value is the last one."""
    r = flow(SMALL, 1e5)
    assert ("global_min", 0, 1) not in r.events
    assert np.all(np.diff(r.fp(0, 1, 0)) < 0)


def _started_at(setting, local_fp, rtol):
    """A flow result to resume from whose state gives the local class (0, 1) the FP row
    ``local_fp`` (own, global, other local areas): a short run with its state and last record
    set (resume continues from any consistent state; the events are recomputed there)."""
    r = flow(setting, 1e-3, rtol=rtol)
    fp = [a.copy() for a in r.state.fp]
    fp[0][1] = local_fp
    r.state = State(fp, r.state.pp.copy())
    r._fp[0][-1] = fp[0]
    return r


def test_global_minimum_event_where_it_turns():
    """From Q = 0 the paper's local query's global FP correlation never turns (above). From a
    state where the query attends the other local areas (their correlation +4) and the global
    one is at -2, A_global first creeps up, then falls while the own correlation grows, and
    turns up again near tau 4000 (a local minimum, before T_eps), which the event locates."""
    s = mf.Setting.paper(400, 0.9, 0.3)
    start = _started_at(s, [0.0, -2.0, 4.0], 1e-11)
    r = flow(s, 1e4, resume=start, rtol=1e-11)
    t_min = r.events["global_min", 0, 1]
    assert start.tau[-1] < t_min < r.tau[-1]
    a = r.fp(0, 1, 0)
    j = int(np.searchsorted(r.tau, t_min))  # records j - 1 < t_min <= j: a local minimum
    assert a[j - 2] > min(a[j - 1], a[j]) < a[j + 1]
    # dense evaluation: the flow to t_min and to 1 % either side of it
    at = {d: flow(s, t_min * (1 + d), resume=start, rtol=1e-11) for d in (-0.01, 0.0, 0.01)}
    lowest = at[0.0].fp(0, 1, 0)[-1]
    assert at[-0.01].fp(0, 1, 0)[-1] > lowest < at[0.01].fp(0, 1, 0)[-1]
    # there the gradient on A_global vanishes, against its size 1 % away
    g = {d: abs(at[d].fp_grad(0, 1, 0)[-1]) for d in at}
    assert g[0.0] < 1e-6 * min(g[-0.01], g[0.01])
    # and a tighter integration puts it at the same time
    tight = flow(s, 1e4, resume=_started_at(s, [0.0, -2.0, 4.0], 1e-13),
                 rtol=1e-13).events["global_min", 0, 1]
    assert abs(tight - t_min) < 1e-6 * t_min


def test_locate_brackets_the_root():
    from mimfast.flow import _locate

    for root in (0.1, 0.5, 0.999):
        g = lambda t, root=root: np.tanh(20 * (t - root))
        t = _locate(g, 0.0, 1.0, g(0.0), g(1.0), 1e-12)
        assert g(t) >= 0 and abs(t - root) < 1e-11


@pytest.mark.parametrize("kwargs, error", [
    ({"tau": 0.0}, ValueError), ({"tau": float("inf")}, ValueError), ({"tau": "1"}, TypeError),
    ({"tau": 1.0, "rtol": 0.0}, ValueError), ({"tau": 1.0, "stop_at": "end"}, ValueError),
    ({"tau": 1.0, "epsilon": 1.0}, ValueError), ({"tau": 1.0, "max_steps": 0}, ValueError),
    ({"tau": 1.0, "backend": "nope"}, ValueError), ({"tau": 1.0, "method": "nope"}, ValueError),
])
def test_bad_input(kwargs, error):
    with pytest.raises(error):
        flow(SMALL, **kwargs)


def test_bad_input_is_named():
    with pytest.raises(TypeError, match="setting must be a mimfast.Setting, got str"):
        flow("setting", 1.0)
    with pytest.raises(TypeError, match="epsilon must be a real number, got bool"):
        flow(SMALL, 1.0, epsilon=True)
    with pytest.raises(ValueError, match=r"tau must be finite, got 1000.* \(too large for a"):
        flow(SMALL, 10**400)


def test_max_steps():
    with pytest.raises(RuntimeError, match="max_steps"):
        flow(SMALL, 1e4, max_steps=3)


def test_saved_and_loaded(tmp_path):
    pytest.importorskip("xarray")
    r = flow(mf.Setting.paper(400, 0.9, 0.3), 50.0)
    back = mf.io.load(mf.io.save(r, tmp_path / "r.nc"))
    assert back.is_flow and np.array_equal(back.tau, r.tau)
    np.testing.assert_array_equal(back.fp(0, 1, "own"), r.fp(0, 1, "own"))
    assert back.events == r.events and back.events  # the switch of the global class, at 0
    assert back.evaluations == r.evaluations > 0
    # verified like every other field: a changed count fails the checksum
    ds = mf.io.to_dataset(r)
    d0 = mf.io.digest(ds)
    ds.attrs["flow_evaluations"] += 1
    assert mf.io.digest(ds) != d0
    # a file written before the count was saved loads with None; GD runs have none
    r.evaluations = None
    assert mf.io.load(mf.io.save(r, tmp_path / "old.nc")).evaluations is None
    gd = mf.simulate(mf.Setting.paper(400, 0.9, 0.3), 1.0, 2)
    assert gd.evaluations is None
    assert mf.io.load(mf.io.save(gd, tmp_path / "gd.nc")).evaluations is None
    # a count that is not one is refused on load
    ds = mf.io.to_dataset(flow(mf.Setting.paper(400, 0.9, 0.3), 5.0))
    ds.attrs["flow_evaluations"] = -3
    ds.attrs[mf.io.DIGEST] = mf.io.digest(ds)
    ds.to_netcdf(tmp_path / "bad.nc", engine=mf.io.ENGINE)
    with pytest.raises(mf.io.ResultFileError, match="flow_evaluations = -3 is not a count"):
        mf.io.load(tmp_path / "bad.nc")


def test_cli_runs_the_flow(tmp_path, capsys):
    pytest.importorskip("xarray")
    from mimfast.cli import main

    code = main(["run", "--P", "1e4", "--flow", "--no-plots", "--threads", "1",
                 "--out", str(tmp_path)])  # without TAU: until T_eps
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "gradient flow to tau = " in out and "tau 766.3" in out
    r = mf.io.load(tmp_path / "result.nc")
    assert r.is_flow and r.tau[-1] > 2500
    assert "tau" in (tmp_path / "trajectories.csv").read_text().splitlines()[0].split(",")


@pytest.mark.parametrize("argv, words", [
    (["--flow", "100", "--steps", "3"], "drop the GD options --steps"),
    (["--flow", "100", "--eta", "3"], "drop the GD options --eta"),
    (["--stop-at", "T_eps"], "add --flow TAU"),
    (["--flow-rtol", "1e-8"], "add --flow TAU"),
    (["--flow", "1", "--rtol", "1e-8"], "the gradient flow's step tolerance is --flow-rtol"),
    (["--rtol", "1e-8"], "--rtol is the quadrature's error tolerance"),
    (["--flow", "-1"], "tau must be finite and positive"),
    (["--flow", "1", "--flow-rtol", "2"], "rtol must lie in"),
    (["--flow", "--stop-at", "later"], "invalid choice"),
])
def test_cli_refuses_bad_flow_options(tmp_path, capsys, argv, words):
    from mimfast.cli import main

    assert main(["run", "--P", "1e3", "--out", str(tmp_path / "o"), *argv]) == 2
    assert words in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_figures_of_a_flow_run_use_flow_time(tmp_path):
    pytest.importorskip("matplotlib")
    from mimfast.plots import fp_figure, save_figures

    r = flow(mf.Setting.paper(400, 0.9, 0.3), 500.0)
    fig = fp_figure(r)
    assert fig.axes[0].get_xlabel().startswith("flow time tau")
    assert "gradient flow" in fig._suptitle.get_text()
    assert all(p.stat().st_size > 10_000 for p in save_figures(r, tmp_path))


def test_a_nonfinite_stage_is_rejected_then_reported(monkeypatch):
    """A gradient that stops being finite past a state (injected): the steps that reach it
    are rejected, smaller ones taken, and the flow stops with a clear error there."""
    import sys

    flow_module = sys.modules["mimfast.flow"]  # (mf.flow is the function)
    real = flow_module.evaluate
    monkeypatch.setattr(flow_module, "FUSED", set())  # the Python loop, whose field is patched

    def evaluate(setting, grids, state, *args):
        grad = real(setting, grids, state, *args)
        if state.fp[0][1, 0] > 0.3:  # the local query's own FP correlation
            grad.fp[0][:] = np.nan
        return grad

    monkeypatch.setattr(flow_module, "evaluate", evaluate)
    with pytest.raises(FloatingPointError, match="not finite near tau"):
        flow(SMALL, 3000.0)


def _interrupt_after(monkeypatch, calls):
    """Raise KeyboardInterrupt at the ``calls``-th gradient evaluation of mimfast.flow (in its
    Python loop, whose evaluations can be counted; the compiled loop steps the same)."""
    import sys

    module = sys.modules["mimfast.flow"]
    real, count = module.evaluate, [0]
    monkeypatch.setattr(module, "FUSED", set())

    def evaluate(*args):
        count[0] += 1
        if count[0] == calls:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, "evaluate", evaluate)

    def restore():  # the rest of the test steps compiled again: it continues the same run
        monkeypatch.setattr(module, "evaluate", real)
        monkeypatch.setattr(module, "FUSED", {"cpp"})

    return restore


def test_interrupted_before_the_first_step_hands_back_nothing(monkeypatch):
    restore = _interrupt_after(monkeypatch, 2)  # in the choice of the first step size
    with pytest.raises(KeyboardInterrupt) as info:
        flow(SMALL, 100.0)
    restore()
    assert type(info.value) is KeyboardInterrupt


@pytest.mark.parametrize("calls", [3, 100, 333, 500])
def test_interrupted_flow_resumes_bit_for_bit(monkeypatch, calls):
    s = mf.Setting.paper(10**6, 0.9, 0.3)  # quadrature: its rules are resumed too
    whole = flow(s, 4e4)
    restore = _interrupt_after(monkeypatch, calls)
    with pytest.raises(mf.Interrupted) as info:
        flow(s, 4e4)
    restore()
    part = info.value.result
    part.check()
    assert len(part) < len(whole)
    done = flow(s, 4e4, resume=part)
    np.testing.assert_array_equal(done.tau, whole.tau)
    for key in ("own", 0):
        np.testing.assert_array_equal(done.fp(0, 1, key), whole.fp(0, 1, key))
    np.testing.assert_array_equal(done.loss, whole.loss)
    assert done.events == whole.events and done.next_step == whole.next_step


def test_resume_from_a_file_and_refusals(tmp_path):
    pytest.importorskip("xarray")
    whole = flow(SMALL, 3000.0)
    short = mf.io.load(mf.io.save(flow(SMALL, 1000.0), tmp_path / "short.nc"))
    assert short.events and short.next_step > 0 and short.rtol == 1e-10
    longer = flow(SMALL, 3000.0, resume=short)
    np.testing.assert_allclose(longer.state.fp[0], whole.state.fp[0], rtol=1e-8)
    assert longer.events["switch", 0, 1] == short.events["switch", 0, 1]
    with pytest.raises(ValueError, match="another rtol"):
        flow(SMALL, 3000.0, rtol=1e-8, resume=short)
    with pytest.raises(ValueError, match="already at tau"):
        flow(SMALL, 500.0, resume=short)
    with pytest.raises(ValueError, match="not a resumable gradient-flow run"):
        flow(SMALL, 3000.0, resume=mf.simulate(SMALL, 1.0, 3))


def test_cli_flow_interrupted_and_resumed(tmp_path, monkeypatch, capsys):
    pytest.importorskip("xarray")
    from mimfast.cli import main

    argv = ["run", "--P", "1e4", "--flow", "3000", "--no-plots", "--threads", "1"]
    assert main(argv + ["--out", str(tmp_path / "whole")]) == 0
    restore = _interrupt_after(monkeypatch, 400)
    assert main(argv + ["--out", str(tmp_path / "cut")]) == 130
    restore()
    assert "checkpoint saved" in capsys.readouterr().err
    assert (tmp_path / "cut" / "checkpoint.nc").exists()
    assert main(["run", "--resume", str(tmp_path / "cut")]) == 0
    assert not (tmp_path / "cut" / "checkpoint.nc").exists()
    whole, cut = (mf.io.load(tmp_path / d / "result.nc") for d in ("whole", "cut"))
    assert cut.is_flow and mf.io.equal(cut, whole)
    np.testing.assert_array_equal(cut.tau, whole.tau)
    assert cut.events == whole.events


def test_backends_agree_with_the_quadrature(backend):
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    r = flow(s, 100.0, backend=backend, method="quadrature", threads=1)
    c = flow(s, 100.0, backend="cpp", method="quadrature", threads=1)
    assert r.method == "quadrature" and r.tau[-1] == 100.0
    np.testing.assert_allclose(flat(s, r.state), flat(s, c.state), rtol=1e-9, atol=1e-10)

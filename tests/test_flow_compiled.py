"""The compiled step loop of the gradient flow (backend "cpp", cpp/flow.hpp) against the Python
loop with the same kernel: the same accepted steps, records, events and evaluations, bit for
bit, through quadrature growth, events, stops, resumes and interrupts."""

import os
import signal
import sys
import threading
import warnings

import numpy as np
import pytest

import mimfast as mf
from mimfast import _core, io
from mimfast.flow import DP54

flow_module = sys.modules["mimfast.flow"]

SETTINGS = {
    "exact-T_eps": (mf.Setting.paper(10**4, 0.9, 0.3), 1e300, "T_eps"),
    "quadrature": (mf.Setting.paper(10**6, 0.9, 0.3), 1e300, "T_eps"),
    "quadrature-switch": (mf.Setting.paper(10**12, 0.9, 0.3), 1e300, "switch"),
    "one-phase": (mf.Setting.paper(10**12, 0.6, 0.3), 1e300, "switch"),  # stops at Q = 0
    "frozen-pp-K2": (mf.Setting.paper(10**4, 0.9, 0.5, K=2, pp="frozen", gamma=0.3), 300.0,
                     None),
    "K2-uneven": (mf.Setting([mf.Cluster([mf.Group(1, 4), mf.Group(3, 2, z=0.7)]),
                              mf.Cluster([mf.Group(2, 3, z=1.3), mf.Group(1, 2), mf.Group(1, 2)],
                                         weight=2.0)], masked=4), 50.0, None),
}


@pytest.fixture
def python_loop(monkeypatch):
    """Run backend "cpp" through the Python loop (its kernel, one Python stage at a time)."""
    def run(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(flow_module, "FUSED", set())
            return mf.flow(*args, **kwargs)
    return run


def same(a, b):
    assert io.equal(a, b)
    np.testing.assert_array_equal(a.tau, b.tau)
    assert a.events == b.events and a.next_step == b.next_step
    assert a.evaluations == b.evaluations and a.tolerance_met == b.tolerance_met
    assert a.levels == b.levels


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_compiled_flow_equals_python_loop_bit_for_bit(name, python_loop, monkeypatch):
    setting, tau, stop_at = SETTINGS[name]
    refined = []
    real = flow_module.Fused.refine
    monkeypatch.setattr(flow_module.Fused, "refine",
                        lambda self, *a, **k: refined.append(1) or real(self, *a, **k))
    compiled = mf.flow(setting, tau, stop_at=stop_at, threads=1)
    same(compiled, python_loop(setting, tau, stop_at=stop_at, threads=1))
    assert len(compiled) > 20 and compiled.events or name == "one-phase"
    if name == "quadrature":  # rules grown inside the compiled loop
        assert refined and compiled.method == "quadrature"


def test_threads_give_identical_bytes():
    setting = mf.Setting.paper(10**6, 0.9, 0.3)
    one = mf.flow(setting, 1e300, stop_at="switch", threads=1)
    same(mf.flow(setting, 1e300, stop_at="switch", threads=2), one)


def test_quadrature_at_its_limits_warns_or_raises_like_python(python_loop, monkeypatch):
    monkeypatch.setattr(sys.modules["mimfast.quadrature"], "MAX_POINTS", 100)
    setting = mf.Setting.paper(10**6, 0.9, 0.3)
    results = []
    for run in (mf.flow, python_loop):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results.append(run(setting, 1e300, stop_at="T_eps", threads=1))
        assert len([w for w in caught if issubclass(w.category, mf.ToleranceWarning)]) == 1
        with pytest.raises(mf.ToleranceError, match="flow: the error estimate"):
            run(setting, 1e300, stop_at="T_eps", threads=1, strict=True)
    assert not results[0].tolerance_met
    same(*results)


def test_max_steps_and_nonfinite_stages_stop_the_compiled_loop(monkeypatch):
    s = SETTINGS["exact-T_eps"][0]
    with pytest.raises(RuntimeError, match="max_steps=5 steps before tau=1000"):
        mf.flow(s, 1e3, max_steps=5)
    # a field that is not finite from the start (injected): every step is rejected, ever
    # smaller, then the flow stops with the Python loop's error
    start = flow_module._CompiledFlow.start
    monkeypatch.setattr(flow_module._CompiledFlow, "start",
                        lambda self, t, y, f, *a: start(self, t, y, f * np.nan, *a))
    with pytest.raises(FloatingPointError, match="not finite near tau"):
        mf.flow(s, 1e3)


def test_signal_inside_the_compiled_loop_keeps_every_step(sigint_raises):
    """SIGINT while the C++ loop runs: it checks signals itself and hands back every step."""
    setting = SETTINGS["exact-T_eps"][0]
    whole = mf.flow(setting, 1e300, threads=1)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(mf.Interrupted) as info:
            mf.flow(setting, 1e300, threads=1)
    finally:
        timer.cancel()
    part = info.value.result
    part.check()
    assert 10 < len(part) < len(whole)
    assert all(t <= part.tau[-1] for t in part.events.values())
    same_steps = mf.flow(setting, 1e300, threads=1, resume=part)
    assert io.equal(same_steps, whole) and same_steps.events == whole.events


def test_flow_loop_rejects_bad_inputs():
    s = SETTINGS["exact-T_eps"][0]
    from mimfast.driver import Fused
    from mimfast.grid import build_grids
    from mimfast.model import StateLayout

    fused = Fused(s, build_grids(s, 1e-15), 0, mf.State.zeros(s))
    a = [DP54.A[i, :i].tolist() for i in range(6)]
    args = (DP54.B.tolist(), DP54.E.tolist(), -0.2, 0.9, 0.2, 10.0, 1e-13)
    with pytest.raises(ValueError, match="row i of a"):
        _core.FlowLoop(fused.loop, a[:5] + [[1.0]], *args, [], [], [], [])
    with pytest.raises(ValueError, match="an event of no kind or class"):
        _core.FlowLoop(fused.loop, a, *args, [0], [7], [[]], [0.0])
    with pytest.raises(ValueError, match="category is not its class's"):
        _core.FlowLoop(fused.loop, a, *args, [0], [0], [[9]], [0.0])
    loop = _core.FlowLoop(fused.loop, a, *args, [], [], [], [])
    n = StateLayout(s).size
    with pytest.raises(ValueError, match="step size must be positive"):
        loop.set_state(0.0, np.zeros(n), np.zeros(n), 0.0, 1, np.zeros(0), np.zeros(0, bool))
    with pytest.raises(ValueError, match="y must be a 1-D array"):
        loop.set_state(0.0, np.zeros(n + 1), np.zeros(n), 1.0, 1, np.zeros(0), np.zeros(0, bool))
    loop.set_state(1.0, np.zeros(n), np.full(n, np.nan), 1.0, 1, np.zeros(0), np.zeros(0, bool))
    assert loop.run(10.0, 1e-10, 100, 1) == 2 and loop.evaluations == 0  # non-finite
    with pytest.raises(ValueError, match="records from 5"):
        loop.records(5)


@pytest.mark.parametrize("compiled", [True, False])
def test_callback_sees_accepted_steps_and_hands_out_resumable_runs(compiled, monkeypatch):
    monkeypatch.setattr(sys.modules["mimfast.driver"], "CALLBACK_SECONDS", 1e-9)  # every step
    if not compiled:
        monkeypatch.setattr(flow_module, "FUSED", set())
    setting = SETTINGS["exact-T_eps"][0]
    whole = mf.flow(setting, 3000.0, threads=1)
    seen = []

    def callback(step, grad, partial):
        seen.append((step, grad.attention[0][1, 0]))
        if len(seen) == 40:
            assert len(partial()) == step + 1
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.flow(setting, 3000.0, threads=1, callback=callback)
    part = info.value.result
    steps = [step for step, _ in seen]
    assert steps == list(range(1, 41)) and len(part) == 41
    # the gradient handed out is the accepted step's own
    np.testing.assert_array_equal([a for _, a in seen], whole.attention(0, 1, "own")[1:41])
    done = mf.flow(setting, 3000.0, threads=1, resume=part)
    assert io.equal(done, whole) and done.events == whole.events


def test_cli_flow_saves_checkpoints_by_time(tmp_path, monkeypatch):
    pytest.importorskip("xarray")
    from mimfast.cli import main

    monkeypatch.setattr(sys.modules["mimfast.driver"], "CALLBACK_SECONDS", 0.01)
    saved, real = [], io.save

    def save(result, path, *args, **kwargs):
        if path.name == "checkpoint.nc":
            saved.append(len(result))
        return real(result, path, *args, **kwargs)

    monkeypatch.setattr(io, "save", save)
    argv = ["run", "--P", "1e4", "--flow", "3000", "--no-plots", "--threads", "1",
            "--checkpoint-seconds", "1e-9", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert saved and saved == sorted(saved) and not (tmp_path / "checkpoint.nc").exists()
    assert mf.io.load(tmp_path / "result.nc").is_flow


@pytest.mark.parametrize("name", ["K2-uneven", "exact-T_eps"])
def test_compiled_event_functions_are_the_python_ones(name):
    """At random mixed-sign states, every event function the C++ loop computes (global_min
    too, which the paper's runs never reach) equals flow._event_value, bit for bit."""
    from mimfast.backends import get_kernel
    from mimfast.grid import build_grids
    from mimfast.model import StateLayout, evaluate

    setting = SETTINGS[name][0]
    grids = build_grids(setting, 1e-15)
    run = flow_module.Run(setting, "cpp", "exact", grids, 1e-15, 1e-13, False)
    events = flow_module._events(setting, 0.05)
    assert {e[0] for e in events} == {"switch", "T_eps", "global_min"}
    layout, kernel = StateLayout(setting), get_kernel("cpp")
    rng = np.random.default_rng(7)
    for _ in range(5):
        y = rng.normal(scale=3.0, size=layout.size)
        grad = evaluate(setting, grids, layout.state(y), kernel, 1)
        f = -layout.flat(mf.State(grad.fp, grad.pp))
        loop = flow_module._CompiledFlow(run, events)
        loop.start(0.0, y, f, 1e-3, 1, np.ones(len(events)), {})  # no crossing: one step
        assert loop.loop.run(1.0, 1e-6, 1, 1) == loop.STEPS
        state = loop.loop.records(0)[2][0]
        at = evaluate(setting, grids, layout.state(state), kernel, 1)
        want = [flow_module._event_value(e, at) for e in events]
        np.testing.assert_array_equal(loop.loop.held()[6], want)

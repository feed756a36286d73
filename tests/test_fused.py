"""The fused GD loops of backends "cpp" (C++) and "numba" against the Python loop with the same
kernel, and a record that an interrupt anywhere leaves whole."""

import copy
import functools
import os
import signal
import sys
import threading
import warnings

import numpy as np
import pytest

import mimfast as mf
from mimfast import _core, io
from mimfast.backends.cpp_backend import prepared
from mimfast.grid import build_grids
from mimfast.model import StateLayout, rounding
from mimfast.quadrature import build_quadratures

simulate_module = sys.modules["mimfast.simulate"]

SETTINGS = {
    "paper-exact-pp": (mf.Setting.paper(10**3, 0.9, 0.3), 5.0),
    "paper-frozen-pp-K2": (mf.Setting.paper(10**4, 0.9, 0.5, K=2, pp="frozen", gamma=0.3), 30.0),
    "K2-uneven": (
        mf.Setting([mf.Cluster([mf.Group(1, 4), mf.Group(3, 2, z=0.7)]),
                    mf.Cluster([mf.Group(2, 3, z=1.3), mf.Group(1, 2), mf.Group(1, 2)],
                               weight=2.0)], masked=4),
        3.0,
    ),
}


COMPILED = ["cpp", "numba"]  # the backends with a compiled loop


@pytest.fixture
def python_loop(monkeypatch):
    """Run a backend through the Python loop (its kernel, one Python step at a time)."""
    def run(*args, **kwargs):
        with monkeypatch.context() as m:
            m.setattr(simulate_module, "FUSED", set())
            return mf.simulate(*args, **kwargs)
    return run


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("record_every", [1, 4])
@pytest.mark.parametrize("compiled", COMPILED)
def test_fused_loop_equals_python_loop_bit_for_bit(name, record_every, compiled, python_loop):
    setting, eta = SETTINGS[name]
    kw = {"record_every": record_every, "threads": 1, "backend": compiled}
    fused = mf.simulate(setting, eta, 37, **kw)
    stepped = python_loop(setting, eta, 37, **kw)
    assert io.equal(fused, stepped)
    # and both agree with the numpy kernel, an independent implementation of docs/model.md §3
    plain = mf.simulate(setting, eta, 37, record_every=record_every, backend="numpy")
    np.testing.assert_allclose(fused.loss, plain.loss, rtol=1e-12)
    for k, h in setting.classes():
        np.testing.assert_allclose(fused.fp(k, h, "own"), plain.fp(k, h, "own"), rtol=1e-11,
                                   atol=1e-15)
        np.testing.assert_allclose(fused.attention(k, h, "own"), plain.attention(k, h, "own"),
                                   rtol=1e-12)


@pytest.mark.parametrize("compiled", COMPILED)
def test_threads_give_identical_bytes(compiled):
    # enough grid points that the kernel really runs 2 and 3 threads
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    runs = [mf.simulate(s, 1e3, 4, threads=n, backend=compiled) for n in (1, 2, 3)]
    assert io.equal(runs[0], runs[1]) and io.equal(runs[0], runs[2])


def test_callback_every_and_its_gradient(python_loop):
    setting, eta = SETTINGS["paper-exact-pp"]
    full = mf.simulate(setting, eta, 40, threads=1)
    for run in (mf.simulate, python_loop):
        seen = []

        def callback(t, grad, partial, seen=seen):
            seen.append(t)
            r = partial()
            assert r.last_step == t and list(r.steps) == list(range(t))
            np.testing.assert_array_equal(r.state.fp[0], full._fp[0][t])
            np.testing.assert_array_equal(grad.fp[0], full._fp_grad[0][t - 1])
            np.testing.assert_array_equal(grad.attention[0], full._attention[0][t - 1])
            assert grad.loss == full.loss[t - 1]

        done = run(setting, eta, 40, threads=1, callback=callback, callback_every=7)
        assert io.equal(done, full)
        # after every step from a multiple of 7 and the last step, maybe timed calls between
        assert {1, 8, 15, 22, 29, 36, 40} <= set(seen) and seen == sorted(set(seen))


@pytest.mark.parametrize("stop", [1, 5, 12, 19, 20, 36])
@pytest.mark.parametrize("compiled", COMPILED)
def test_interrupted_fused_run_resumes_bit_identical(stop, compiled, python_loop):
    setting, eta = SETTINGS["paper-exact-pp"]
    kw = {"record_every": 4, "backend": compiled}
    full = mf.simulate(setting, eta, 37, threads=1, **kw)

    def interrupt(t, grad, partial):
        if t == stop:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.simulate(setting, eta, 37, threads=1, callback=interrupt, callback_every=1, **kw)
    part = info.value.result
    assert part.last_step == stop and list(part.steps) == list(range(0, stop, 4))
    assert io.equal(mf.simulate(setting, eta, 37, threads=2, resume=part, **kw), full)
    # the two loops continue each other's runs
    assert io.equal(python_loop(setting, eta, 37, threads=1, resume=part, **kw), full)


@pytest.mark.parametrize("compiled", COMPILED)
def test_signal_inside_the_fused_loop_keeps_every_step(compiled, sigint_raises):
    """SIGINT while the compiled loop runs: the C++ loop checks signals itself, the numba loop
    between its compiled calls; either hands back every completed step."""
    setting = mf.Setting.paper(10**4, 0.9, 0.3)
    kw = {"record_every": 1000, "threads": 1, "backend": compiled}
    mf.simulate(setting, 4.0, 2, **kw)  # compiled (or loaded) before the timer starts
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(mf.Interrupted) as info:
            mf.simulate(setting, 4.0, 10**7, **kw)
    finally:
        timer.cancel()
    part = info.value.result
    assert part.last_step > 1000 and part.steps[-1] == 1000 * ((part.last_step - 1) // 1000)
    steps = part.last_step + 3
    assert io.equal(mf.simulate(setting, 4.0, steps, resume=part, **kw),
                    mf.simulate(setting, 4.0, steps, **kw))


def test_non_finite_state_is_refused_by_both_loops(python_loop):
    setting = mf.Setting.paper(10**3, 0.9, 0.3, z=30.0)  # gradient ~ 2e3: eta 1e308 overflows
    said = []
    for run in (mf.simulate, python_loop):
        with pytest.raises(FloatingPointError,
                           match=r"non-finite at step 1: eta=1e\+308 is too large") as e:
            run(setting, 1e308, 5, threads=1)
        said.append(str(e.value))
    assert said[0] == said[1]


def test_fused_loop_rejects_bad_inputs():
    s = mf.Setting.paper(10**3, 0.9, 0.3)
    grid = build_grids(s)[0, 0]
    layout = StateLayout(s)
    ok = {"evals": [prepared(grid)], "checks": [None], "z": [s.class_z(0, 0)],
          "live": [grid.live], "a_off": [0], "p_off": [layout.pp_row(0)], "coef": [1.0],
          "coef_loss": [1.0], "n_state": layout.size}
    _core.FusedLoop(**ok)
    for key, value, words in [("a_off", [layout.size - 1], "fp row leaves the state"),
                              ("p_off", [layout.size - 2], "pp row leaves the state"),
                              ("z", [np.ones(2)], "z must be a 1-D array of length 3"),
                              ("coef", [], "one entry per class"),
                              ("evals", [None], "evaluator missing")]:
        with pytest.raises(ValueError, match=words):
            _core.FusedLoop(**{**ok, key: value})
    loop = _core.FusedLoop(**ok)
    with pytest.raises(ValueError, match="state must be a 1-D array"):
        loop.set_state(0, np.zeros(3), -1)
    with pytest.raises(ValueError, match="threads"):
        loop.run(3, 1, 1.0, 0)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        loop.set_evaluators(0, prepared(grid), None, -1.0)
    with pytest.raises(ValueError, match="not held"):
        loop.records(5)


# --- a record is appended whole or not at all (interrupts injected deterministically) ---

driver_module = sys.modules["mimfast.driver"]
RECORD_PATH = {"simulate", "_python_loop", "_fused_loop", "one_record", "add", "drain", "stack",
               "_empty", "drive", "result", "tolerance", "__call__", "due"}


class InterruptAt:
    """A tracer that raises KeyboardInterrupt at the n-th bytecode executed in the functions
    of the record path (simulate.py and the driver), before the exception handler of the driver
    is entered."""

    def __init__(self, n):
        self.n, self.count, self.fired = n, 0, False

    def __call__(self, frame, event, arg):
        code = frame.f_code
        if (code.co_filename not in (simulate_module.__file__, driver_module.__file__)
                or code.co_name not in RECORD_PATH):
            return None
        frame.f_trace_opcodes = True
        return self.local

    def local(self, frame, event, arg):
        if event == "opcode" and not self.fired:
            self.count += 1
            if self.count == self.n:
                self.fired = True
                raise KeyboardInterrupt
        return self.local


@pytest.mark.parametrize("loop", ["fused", "python", "quadrature"])
def test_interrupt_at_every_bytecode_of_the_record_path(loop, python_loop, monkeypatch):
    setting, eta = SETTINGS["K2-uneven"]
    steps, every = 5, 2  # records at 0, 2, 4 and the last step 5
    grids = build_grids(setting)
    monkeypatch.setattr(driver_module, "build_grids", lambda *args: grids)  # build once
    run = {"fused": mf.simulate, "python": python_loop,
           "quadrature": functools.partial(mf.simulate, method="quadrature")}[loop]
    if loop == "quadrature":  # point sets built once, each run gets its own copy
        quads = build_quadratures(setting)
        for q in quads.values():
            q.base(), q.rich()
        start = {key: list(q.levels) for key, q in quads.items()}
        monkeypatch.setattr(driver_module, "build_quadratures", lambda s, levels=None: (
            copy.deepcopy(quads) if levels in (None, start) else build_quadratures(s, levels)))
    full = run(setting, eta, steps, record_every=every, threads=1)
    n, outcomes = 0, set()
    while True:
        n += 1
        tracer = InterruptAt(n)
        sys.settrace(tracer)
        try:
            done = run(setting, eta, steps, record_every=every, threads=1,
                       callback=lambda t, g, p: None, callback_every=1)
        except mf.Interrupted as exc:
            sys.settrace(None)
            part = exc.result
            outcomes.add("interrupted")
            # whole: every length fits, and resuming ends where a plain run does
            assert len(part.error) == len(part.steps), n
            done = run(setting, eta, steps, record_every=every, threads=1, resume=part)
            assert io.equal(done, full), n
            np.testing.assert_array_equal(done.error, full.error)
        except KeyboardInterrupt:
            sys.settrace(None)
            outcomes.add("before the first record")
        else:
            sys.settrace(None)
            assert not tracer.fired and io.equal(done, full)
            break
        finally:
            sys.settrace(None)
    assert n > 300 and outcomes == {"interrupted", "before the first record"}


def test_resume_refuses_a_broken_record():
    setting, eta = SETTINGS["paper-exact-pp"]

    def stop(t, grad, partial):
        if t == 9:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.simulate(setting, eta, 20, record_every=2, callback=stop, callback_every=1)
    good = info.value.result

    def broken(**change):
        fields = {"steps": good.steps, "loss": good.loss, "fp": good._fp,
                  "fp_grad": good._fp_grad, "attention": good._attention,
                  "patch_loss": good._patch_loss, "pp": good._pp, "state": good.state,
                  "last_step": good.last_step}
        fields.update(change)
        return mf.Result(setting, "cpp", eta, fields["steps"], fields["loss"], fields["fp"],
                         fields["fp_grad"], fields["attention"], fields["patch_loss"],
                         fields["pp"], fields["state"], good.dropped,
                         last_step=fields["last_step"], record_every=2)

    shorter_state = mf.State([a[:1] for a in good.state.fp], good.state.pp)
    moved = good.state.copy()
    moved.pp[0, 0] += 1e-9
    for bad, words in [
        (broken(loss=good.loss[:-1]), "losses for 5 recorded steps"),
        (broken(pp=good._pp[1:]), "pp does not have one entry"),
        (broken(fp=[good._fp[0][:-1]]), "fp does not have one entry"),
        (broken(fp_grad=[good._fp_grad[0][:, :1]]), "fp_grad does not have one entry"),
        (broken(patch_loss=[]), "patch_loss does not have one entry"),
        (broken(steps=good.steps[::-1]), "none missing"),
        (broken(last_step=13), "none missing"),
        (broken(last_step=7), "none missing"),
        (broken(state=shorter_state), "state fp shapes"),
        (broken(last_step=8, state=moved), "differs from its record at step 8"),
    ]:
        with pytest.raises(ValueError, match=words):
            mf.simulate(setting, eta, 20, record_every=2, resume=bad)
    mf.simulate(setting, eta, 20, record_every=2, resume=good)


def relative_difference(a, b, n):
    """The loop's error estimate, written out: the largest normwise relative difference of the
    gradient sums (dB_self, dA, dB), the attention and the loss, relative to ``a``."""
    parts = (np.r_[2, 3 + n: 3 + 3 * n], np.r_[3: 3 + n], np.r_[1])
    return max(np.linalg.norm(a[i] - b[i]) / np.linalg.norm(a[i]) for i in parts)


def finish(loop, steps, eta, **limits):
    """Run the loop until it ends or stops for a reason other than reaching the last step."""
    while (status := loop.run(steps, 1, eta, 1, **limits)) == 1:
        pass
    return status


def test_check_evaluators_give_the_error_estimate_and_stop_the_loop():
    """The hooks quadrature uses: a second evaluator per class, its difference recorded as the
    error estimate, a tolerance that stops the loop before the step, and new evaluators."""
    from mimfast.backends import cpp_backend
    from mimfast.model import class_inputs

    s, eta, steps = mf.Setting.paper(10**4, 0.9, 0.3), 20.0, 12
    fine, coarse = build_grids(s), build_grids(s, 1e-4)  # coarse: a larger tail left out
    classes = s.classes()
    layout = StateLayout(s)
    plain = mf.simulate(s, eta, steps, threads=1)

    loop = cpp_backend.fused_loop(s, fine, layout, [prepared(coarse[c]) for c in classes])
    loop.set_state(0, np.zeros(layout.size), -1)
    assert finish(loop, steps, eta) == 0  # done
    rec_steps, loss, states, _, _, _, error = loop.records(0)
    np.testing.assert_array_equal(loss, plain.loss)  # the check does not change the steps
    assert error.shape == (steps + 1, len(classes)) and np.all(error > 0)
    for i, t in enumerate(rec_steps):
        state = layout.state(states[i])
        for j, (k, h) in enumerate(classes):
            inp = class_inputs(s, state, k, h, fine[k, h])
            a, b = (prepared(g[k, h]).sums(inp.z, inp.wu, inp.wm, inp.wself, 1)
                    for g in (fine, coarse))
            want = max(relative_difference(a, b, len(inp.z)), rounding(a, len(inp.z)))
            assert error[i, j] == pytest.approx(want, rel=1e-9)
    np.testing.assert_array_equal(loop.max_error(), error.max(axis=0))

    # a tolerance below a class's estimate stops the loop before that step is used or recorded
    loop = cpp_backend.fused_loop(s, fine, layout, [prepared(coarse[c]) for c in classes])
    loop.set_state(0, np.zeros(layout.size), -1)
    worst = int(np.argmax(error[5]))
    tol = 0.5 * error[5, worst]
    assert finish(loop, 5, eta) == 0
    loop.set_evaluators(worst, prepared(fine[classes[worst]]), prepared(coarse[classes[worst]]),
                        tol)
    assert finish(loop, steps, eta) == 3  # tolerance
    assert loop.t == 5 and loop.recorded == 6
    for i, c in enumerate(classes):  # "refine": checks that agree with the evaluators
        loop.set_evaluators(i, prepared(fine[c]), prepared(fine[c]), tol)
    assert finish(loop, steps, eta) == 0
    rec_steps, loss, *_, error = loop.records(0)
    np.testing.assert_array_equal(loss, plain.loss)
    # the difference is 0: the estimate is the kernel's rounding alone
    assert np.all(error[6:] < 1e-14) and np.all(error[:6] > 1e-14)
    with pytest.raises(ValueError, match="must have 3 categories"):
        loop.set_evaluators(0, prepared(build_grids(mf.Setting([mf.Cluster([mf.Group(1, 4)])],
                                                            masked=2))[0, 0]))


QUAD_CASES = {
    # rules grown on the way (paper-1e5-grows), and not grown
    "paper-1e5": (mf.Setting.paper(10**5, 0.9, 0.3), 100.0, 1e-13),
    "paper-1e5-grows": (mf.Setting.paper(10**5, 0.9, 0.5), 100.0, 1e-15),
    "K2-frozen": (mf.Setting.paper(10**6, 0.9, 0.5, K=2, pp="frozen", gamma=0.3), 200.0, 1e-14),
}


@pytest.mark.parametrize("name", sorted(QUAD_CASES))
@pytest.mark.parametrize("compiled", COMPILED)
def test_fused_quadrature_equals_python_loop_bit_for_bit(name, compiled, python_loop):
    setting, eta, rtol = QUAD_CASES[name]
    kw = {"method": "quadrature", "rtol": rtol, "threads": 1, "record_every": 3,
          "backend": compiled}
    with warnings.catch_warnings(record=True) as fused_warned:
        warnings.simplefilter("always")
        fused = mf.simulate(setting, eta, 400, **kw)
    with warnings.catch_warnings(record=True) as python_warned:
        warnings.simplefilter("always")
        stepped = python_loop(setting, eta, 400, **kw)
    assert io.equal(fused, stepped)
    np.testing.assert_array_equal(fused.error, stepped.error)
    assert fused.levels == stepped.levels and fused.tolerance_met == stepped.tolerance_met
    assert [str(w.message) for w in fused_warned] == [str(w.message) for w in python_warned]
    start = build_quadratures(setting)
    grew = any(fused.levels[c] != start[c].levels for c in setting.classes())
    # refinements inside the C++ run, or none (paper-1e5's own areas of 32 are enumerated:
    # P(U_own = 0) is above quadrature.ATOM)
    assert grew == (name == "paper-1e5-grows")
    assert fused.attention(0, 1, "own")[-1] > 0.99  # through the jump to saturation


@pytest.mark.parametrize("compiled", COMPILED)
def test_fused_quadrature_at_its_limits_warns_or_raises_like_python(compiled, python_loop,
                                                                     monkeypatch):
    """Rules that may not grow: the loop steps with the estimate it has, warns once and
    reports tolerance_met False, or raises ToleranceError at the same step (strict)."""
    monkeypatch.setattr(sys.modules["mimfast.quadrature"], "MAX_POINTS", 100)
    setting, eta, _ = QUAD_CASES["paper-1e5-grows"]
    kw = {"method": "quadrature", "rtol": 1e-14, "threads": 1, "backend": compiled}
    runs, seen = [], []
    for run in (mf.simulate, python_loop):
        got = []  # what callbacks see: the estimate, whether it met rtol, the method
        with pytest.warns(mf.ToleranceWarning) as warned:
            runs.append(run(setting, eta, 60, callback_every=1, **kw,
                            callback=lambda t, g, p, got=got: got.append(
                                (t, g.error, g.met, g.method))))
        seen.append(got)
        assert len(warned) == 1
        with pytest.raises(mf.ToleranceError, match=str(warned[0].message).split(":")[0]):
            run(setting, eta, 60, strict=True, **kw)
    assert io.equal(*runs) and not runs[0].tolerance_met
    np.testing.assert_array_equal(runs[0].error, runs[1].error)
    assert seen[0] == seen[1] and {m for *_, m in seen[0]} == {"quadrature"}
    assert {met for _, _, met, _ in seen[0]} == {True, False}
    assert runs[0].error.max() > 1e-14


@pytest.mark.parametrize("compiled", COMPILED)
def test_fused_quadrature_resumes_bit_for_bit(compiled):
    setting, eta, rtol = QUAD_CASES["paper-1e5-grows"]
    kw = {"method": "quadrature", "rtol": rtol, "threads": 1, "backend": compiled}
    full = mf.simulate(setting, eta, 300, **kw)
    for stop_at in (7, 150, 299):
        def stop(t, grad, partial, stop_at=stop_at):
            if t == stop_at:
                raise KeyboardInterrupt

        with pytest.raises(mf.Interrupted) as info:
            mf.simulate(setting, eta, 300, callback=stop, callback_every=1, **kw)
        part = info.value.result
        assert part.last_step == stop_at
        done = mf.simulate(setting, eta, 300, resume=part, **kw)
        assert io.equal(done, full) and done.levels == full.levels
        np.testing.assert_array_equal(done.error, full.error)


@pytest.mark.parametrize("method", ["exact", "quadrature"])
@pytest.mark.parametrize("name", ["paper-exact-pp", "paper-frozen-pp-K2"])
def test_numba_loop_agrees_with_the_cpp_loop_and_numpy_along_runs(method, name):
    """The numba loop against the other backends, step by step (the backends agree to about
    1e-14, not bit for bit), with exact PP and frozen, on both methods."""
    setting, eta = SETTINGS[name]
    kw = {"method": method, "threads": 1, "record_every": 5}
    runs = {b: mf.simulate(setting, eta, 60, backend=b, **kw) for b in ("numba", "cpp", "numpy")}
    got = runs["numba"]
    assert got.method == method
    for other in ("cpp", "numpy"):
        want = runs[other]
        np.testing.assert_allclose(got.loss, want.loss, rtol=1e-12)
        for k in range(len(setting.clusters)):
            np.testing.assert_allclose(got._fp[k], want._fp[k], rtol=1e-12, atol=1e-15)
            np.testing.assert_allclose(got._attention[k], want._attention[k], rtol=1e-12,
                                       atol=1e-15)
        if setting.pp == "exact":
            np.testing.assert_allclose(got._pp, want._pp, rtol=1e-12, atol=1e-15)


def test_numba_loop_error_estimate_is_the_quadrature_s():
    """The numba loop's error estimate of a class (compiled) equals
    :func:`mimfast.quadrature.sums_error` and the kernel's rounding, as the Python loop takes
    them."""
    from mimfast.backends import numba_backend
    from mimfast.model import class_inputs
    from mimfast.quadrature import sums_error

    kernels = numba_backend._kernels()
    s = mf.Setting.paper(10**5, 0.9, 0.5)
    quads = build_quadratures(s)
    rng = np.random.default_rng(3)
    for _ in range(5):
        state = mf.State([a + rng.normal(0, 2, a.shape) for a in mf.State.zeros(s).fp],
                         rng.normal(0, 1, mf.State.zeros(s).pp.shape))
        for (k, h), q in quads.items():
            inp = class_inputs(s, state, k, h, q)
            rich, base = (np.asarray(numba_backend.kernel(p, inp, 1)) for p in (q.rich(), q.base()))
            n = q.n_cat
            want = max(sums_error(base, rich, n), rounding(rich, n))
            assert kernels.error_estimate(n, rich, base, True) == want
            assert kernels.error_estimate(n, rich, base, False) == rounding(rich, n)


@pytest.mark.parametrize("backend", ["cpp", "numpy"])
def test_exact_rounding_above_rtol_is_reported_by_every_loop(backend):
    # the compiled loop does not stop for an exact grid's rounding estimate, but it records
    # it: a run whose estimate exceeds rtol must say so as the Python loop does
    s = mf.Setting.paper(200, 0.9, 0.5)
    with pytest.warns(mf.ToleranceWarning, match="step 0"):
        r = mf.simulate(s, 1.0, 3, method="exact", backend=backend, rtol=1e-17)
    assert r.error.max() > 1e-17 and not r.tolerance_met
    with pytest.raises(mf.ToleranceError):
        mf.simulate(s, 1.0, 3, method="exact", backend=backend, rtol=1e-17, strict=True)
    quiet = mf.simulate(s, 1.0, 3, method="exact", backend=backend)
    assert quiet.tolerance_met

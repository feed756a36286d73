"""The compiled backends: equal to numpy at large P, identical for any thread count,
errors as ValueError, Ctrl-C keeps what was computed."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import CHILD_SIGINT

import mimfast as mf
from mimfast import _core
from mimfast.grid import build_grids
from mimfast.model import class_inputs, sum_layout

COMPILED = ["cpp", "numba"]


def test_backends_report_themselves():
    info = mf.backends()
    assert set(info) == {"cpp", "numba", "numpy"}
    assert info["cpp"]["openmp"] is True
    assert info["cpp"]["max_threads"] >= 1


def state_at(setting):
    state = mf.State.zeros(setting)
    state.fp[0][:] = [[2.0, 0.0, -0.3], [3.0, -2.5, 0.2]]
    state.pp[:] = [[0.03, -2e-3, 0.0, 5e-4], [0.04, 0.02, -1e-3, 2e-4]]
    return state


@pytest.mark.parametrize("P", [10**5, 10**6, 10**7])
@pytest.mark.parametrize("backend", COMPILED)
def test_equal_to_numpy_at_large_p(backend, P):
    s = mf.Setting.paper(P, 0.9, 0.3)
    state = state_at(s)
    want = mf.gradient(s, state, backend="numpy", method="exact")
    got = mf.gradient(s, state, backend=backend, method="exact")
    np.testing.assert_allclose(got.fp[0], want.fp[0], rtol=1e-10, atol=0)
    np.testing.assert_allclose(got.pp, want.pp, rtol=1e-10, atol=1e-300)
    np.testing.assert_allclose(got.attention[0], want.attention[0], rtol=1e-10)
    np.testing.assert_allclose(got.patch_loss[0], want.patch_loss[0], rtol=1e-10)
    assert got.loss == pytest.approx(want.loss, rel=1e-10)


@pytest.mark.parametrize("backend", COMPILED)
def test_same_bytes_for_any_thread_count(backend):
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    runs = [mf.simulate(s, eta=2000.0, steps=5, backend=backend, threads=t, method="exact")
            for t in (1, 2, 3)]
    for r in runs[1:]:
        assert r.loss.tobytes() == runs[0].loss.tobytes()
        assert r.state.fp[0].tobytes() == runs[0].state.fp[0].tobytes()
        assert r.state.pp.tobytes() == runs[0].state.pp.tobytes()
        for k in ("own", 0, 1):
            assert r.attention(0, 1, k).tobytes() == runs[0].attention(0, 1, k).tobytes()


def test_cpp_and_numba_agree_to_1e12():
    s = mf.Setting.paper(10**6, 0.9, 0.3)
    state = state_at(s)
    a = mf.gradient(s, state, backend="cpp", method="exact")
    b = mf.gradient(s, state, backend="numba", method="exact")
    np.testing.assert_allclose(a.fp[0], b.fp[0], rtol=1e-12)
    np.testing.assert_allclose(a.pp, b.pp, rtol=1e-12)


def test_kernel_errors_cross_as_value_error():
    s = mf.Setting.paper(10**4, 0.9, 0.3)
    grid = build_grids(s)[0, 1]
    inp = class_inputs(s, mf.State.zeros(s), 0, 1, grid)
    args = [grid.counts, grid.rest, grid.lo, grid.hi, grid.row_weight, grid.t_inner,
            grid.off_inner, grid.t_last, grid.off_last, grid.inner, grid.last, grid.blocks,
            grid.fsizes, grid.s_a, grid.s_b, grid.inv_areas, grid.inv_sizes]
    handle = _core.ClassGrid(*args)
    assert np.all(np.isfinite(handle.sums(inp.z, inp.wu, inp.wm, inp.wself, 1)))
    for index, value, words in [
        (5, grid.t_inner[:3], "leaves the inner table"),
        (7, grid.t_last[:3], "leaves the last table"),
        (1, grid.rest[:-1], "rest must be a 1-D array"),
        (11, grid.blocks + np.array([0, 0, 10**6]), "block 0 is not inside its row"),
        (9, grid.last, "two different categories"),
        (12, grid.fsizes[:2], "sizes must be a 1-D array"),
    ]:
        bad = list(args)
        bad[index] = value
        with pytest.raises(ValueError, match=words):
            _core.ClassGrid(*bad)
    with pytest.raises(ValueError, match="threads"):
        handle.sums(inp.z, inp.wu, inp.wm, inp.wself, 0)
    with pytest.raises(ValueError, match="wu must be a 1-D array"):
        handle.sums(inp.z, inp.wu[:2], inp.wm, inp.wself, 1)


def test_grid_handle_owns_its_arrays():
    """Changing or dropping a grid's arrays after its kernel handle was made cannot reach it."""
    from mimfast.backends import get_kernel
    from mimfast.backends.cpp_backend import prepared

    s = mf.Setting.paper(10**4, 0.9, 0.3)
    grid = build_grids(s)[0, 1]
    inp = class_inputs(s, mf.State.zeros(s), 0, 1, grid)
    handle = prepared(grid)
    assert isinstance(handle, _core.ClassEval) and handle.n_cat == grid.n_cat
    before = handle.sums(inp.z, inp.wu, inp.wm, inp.wself, 1)
    sums = sum_layout(grid.n_cat).bound.start  # the sums, without the rounding estimates
    np.testing.assert_allclose(before[:sums], get_kernel("numpy")(grid, inp)[:sums], rtol=1e-12,
                               atol=1e-300)
    # out-of-range indices and freed tables: read through a borrowed pointer these crash
    grid.blocks[:, 2] = 10**12
    grid.lo[:] = -(10**12)
    grid.t_inner[:] = np.nan
    grid.t_inner = grid.t_inner[:1]
    grid.t_last = None
    grid.counts = None
    import gc

    gc.collect()
    after = handle.sums(inp.z, inp.wu, inp.wm, inp.wself, 1)
    np.testing.assert_array_equal(after, before)
    assert prepared(grid) is handle


def test_interrupt_keeps_recorded_steps_and_resumes_exactly():
    s = mf.Setting.paper(10**4, 0.9, 0.3)
    full = mf.simulate(s, eta=20.0, steps=40, record_every=3)

    def stop_at_17(t, grad, partial):
        if t == 17:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.simulate(s, eta=20.0, steps=40, record_every=3, callback=stop_at_17,
                    callback_every=1)
    part = info.value.result
    assert isinstance(info.value, KeyboardInterrupt)
    assert list(part.steps) == [0, 3, 6, 9, 12, 15] and part.last_step == 17
    np.testing.assert_array_equal(part.loss, full.loss[:6])
    done = mf.simulate(s, eta=20.0, steps=40, record_every=3, resume=part)
    np.testing.assert_array_equal(done.steps, full.steps)
    for a, b in [(done.loss, full.loss), (done.fp(0, 1, 0), full.fp(0, 1, 0)),
                 (done.pp(1, "own"), full.pp(1, "own")), (done.state.fp[0], full.state.fp[0])]:
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_stops_a_long_run_within_a_second(spawn):
    script = CHILD_SIGINT + textwrap.dedent("""
        import sys, time
        import mimfast as mf
        s = mf.Setting.paper(10**8, 0.9, 0.3)

        def ready(t, grad, partial, said=[]):  # GD steps are running (grids built)
            if not said:
                said.append(t)
                print("ready", flush=True)

        try:
            mf.simulate(s, eta=1e5, steps=10**6, record_every=10, method="exact",
                        callback=ready)
        except mf.Interrupted as e:
            print("stopped", time.monotonic(), len(e.result.steps), e.result.last_step, flush=True)
    """)
    proc = spawn([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    sent = time.monotonic()
    os.kill(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    word, when, recorded, last = out.split()
    assert word == "stopped"
    assert float(when) - sent < 1.0
    assert int(recorded) >= 1 and int(last) >= 0


def test_without_numba_the_backend_is_omitted_and_explained():
    script = textwrap.dedent("""
        import sys
        sys.modules["numba"] = None  # makes `import numba` fail
        import mimfast as mf
        assert "numba" not in mf.backends(), mf.backends()
        assert {"cpp", "numpy"} <= set(mf.backends())
        s = mf.Setting.paper(1000, 0.9, 0.3)
        try:
            mf.simulate(s, eta=1.0, steps=1, backend="numba")
        except ImportError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert "numba is not installed" in out and "pip install mimfast[numba]" in out

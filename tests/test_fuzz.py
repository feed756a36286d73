"""Fuzzing the public API and the command line with hostile values (hypothesis).

The API may only raise a clear ValueError or TypeError; the command may only return its
documented exit codes, with a message and no traceback.
"""

import math
import os
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mimfast as mf
from mimfast.cli import main

FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

hostile = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 6), st.sampled_from([0, -1, 2**31, 2**63, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([1e-300, 1e300, -0.0, 5e-324, math.nan, math.inf]),
    st.sampled_from([np.int64(2), np.float32(0.5), np.float64(1e-10), Fraction(1, 3),
                     np.array(1.0), np.array([1, 2])]),
    st.text(max_size=5), st.lists(st.integers(0, 3), max_size=3), st.just(object()),
)
ALLOWED = (ValueError, TypeError)


def call(f, *args, **kw):
    try:
        return f(*args, **kw)
    except ALLOWED as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return None


SMALL = mf.Setting([mf.Cluster([mf.Group(1, 4), mf.Group(3, 2)])])


@FUZZ
@given(areas=hostile, size=hostile, z=hostile, weight=hostile, gamma=hostile, masked=hostile,
       pp=st.one_of(hostile, st.sampled_from(["exact", "frozen"])))
def test_setting_constructors(areas, size, z, weight, gamma, masked, pp):
    g = call(mf.Group, areas, size, z)
    c = call(mf.Cluster, [g if g is not None else mf.Group(1, 3)], weight)
    if c is not None:
        call(mf.Setting, [c], gamma=gamma)
        call(mf.Setting, [c], masked=masked, pp=pp)
    call(mf.Setting, areas)


@FUZZ
@given(P=hostile, kc=hostile, ks=hostile, gamma=hostile, K=hostile, z=hostile)
def test_setting_paper(P, kc, ks, gamma, K, z):
    call(mf.Setting.paper, P, kc, ks, gamma=gamma, K=K, z=z)
    call(mf.Setting.paper, 1000, 0.9, 0.3, gamma=gamma, K=K, z=z)
    call(mf.Setting.paper, P, 0.9, 0.3)


@FUZZ
@given(eta=hostile, steps=hostile, record_every=hostile, backend=st.one_of(
       hostile, st.sampled_from(["cpp", "numba", "numpy"])), threads=hostile, tail_tol=hostile,
       max_bytes=hostile)
def test_simulate_and_gradient(eta, steps, record_every, backend, threads, tail_tol, max_bytes):
    if isinstance(steps, int) and not isinstance(steps, bool) and steps > 5:
        steps = 5  # a valid huge step count is a long run, not a bad input
    call(mf.simulate, SMALL, eta, steps, record_every, backend=backend, threads=threads)
    call(mf.simulate, SMALL, 1.0, 2, tail_tol=tail_tol, max_grid_bytes=max_bytes)
    call(mf.gradient, SMALL, backend=backend, threads=threads, tail_tol=tail_tol)


@FUZZ
@given(fp=hostile, pp=hostile, k=hostile, h=hostile, key=hostile)
def test_states_and_result_access(fp, pp, k, h, key):
    call(mf.gradient, SMALL, call(mf.State, [fp] if fp is not None else [], pp))
    call(mf.gradient, SMALL, mf.State([np.zeros((2, 3))], pp))
    r = mf.simulate(SMALL, 1.0, 1, backend="numpy")
    for name in ("fp", "fp_grad", "attention"):
        call(getattr(r, name), k, h, key)
    call(r.patch_loss, k, h)
    call(r.pp, h, key)
    call(mf.simulate, SMALL, 1.0, 2, backend="numpy", resume=fp)


OPTION_VALUES = {
    "--P": ["200", "1e300", "10**100000000", "-5", "0", "2", "abc", "2**63", "1.5", "300"],
    "--kappa-c": ["0.9", "0", "1", "-0.1", "nan", "inf", "1e-300"],
    "--kappa-s": ["0.5", "0", "1", "nan", "0.99"],
    "--gamma": ["0.5", "1e-6", "0", "1", "nan", "0.999999"],
    "--K": ["1", "2", "0", "-1", "10**9", "1e7"],
    "--z": ["1", "1e200", "0", "-1", "nan", "1 2", "1 2 3"],
    "--eta": ["5", "0", "-1", "nan", "inf", "1e308", "10**400"],
    "--steps": ["3", "0", "-1", "1e400", "x"],
    "--record-every": ["1", "0", "-3", "2"],
    "--threads": ["1", "0", "2**31", "-1"],
    "--tail-tol": ["1e-15", "0", "1e-300", "0.5", "nan", "-1"],
    "--epsilon": ["0.05", "0", "1", "nan"],
    "--backend": ["cpp", "numpy", "fortran", ""],
    "--pp": ["auto", "exact", "frozen", "x"],
    "--checkpoint-every": ["0", "1", "-1"],
    "--checkpoint-seconds": ["30", "0", "0.01", "-1", "nan"],
    "--preset": ["paper-positive", "paper-negative", "paper"],
}


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.data(), max_size=6))
def test_command_line(tmp_path_factory, capsys, options):
    argv = ["run", "--no-plots", "--out", str(tmp_path_factory.mktemp("fuzz"))]
    if "--P" not in options:
        argv += ["--P", "200"]
    if "--steps" not in options:
        argv += ["--steps", "2"]
    for option, data in options.items():
        value = data.draw(st.sampled_from(OPTION_VALUES[option]))
        argv += [option, *value.split()]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 1, 2, 3), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code:
        assert "error" in err, (argv, err)
    if code == 1:  # a run that failed: divergence, or a grid over the memory limit
        assert "non-finite" in err or "quadrature" in err, (argv, err)


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x89HDF\r\n\x1a\n" + bytes(300),
                                     os.urandom(2000)])
def test_command_on_bad_files(tmp_path, capsys, content):
    path = tmp_path / "result.nc"
    path.write_bytes(content)
    for command in (["summary", str(path)], ["plot", str(path), "--out", str(tmp_path)],
                    ["run", "--resume", str(tmp_path)]):
        if command[0] == "run":
            (tmp_path / "checkpoint.nc").write_bytes(content)
        assert main(command) == 3, command
        assert "Traceback" not in capsys.readouterr().err

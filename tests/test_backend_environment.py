"""Backends in hostile environments: numba imported only when asked for, an unwritable numba
cache, and numba's workqueue threading layer under several Python threads."""

import os
import shutil
import subprocess
import sys
import textwrap
from contextlib import contextmanager
from pathlib import Path

import pytest

import mimfast


def python(code, env=None, cwd=None):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})}, cwd=cwd,
                          check=False)


def test_numba_is_not_imported_unless_asked_for():
    done = python("""
        import sys
        import mimfast as mf
        info = mf.backends()
        s = mf.Setting.paper(1000, 0.9, 0.3)
        mf.simulate(s, 1.0, 2)
        mf.simulate(s, 1.0, 2, backend="numpy")
        print("numba" in info, "numba" in sys.modules)
        mf.simulate(s, 1.0, 2, backend="numba")
        print("numba" in sys.modules)
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False", "True"]


@contextmanager
def read_only_copy(tmp_path):
    """A copy of the installed package in a folder nothing can write to: a read-only bind
    mount as root (root ignores permissions), permissions otherwise."""
    src = tmp_path / "src"
    shutil.copytree(Path(mimfast.__file__).parent, src / "mimfast",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (src / "home").mkdir()
    if os.geteuid() == 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        steps = [["mount", "--bind", str(src), str(ro)],
                 ["mount", "-o", "remount,bind,ro", str(ro)]]
        for step in steps:
            if subprocess.run(step, capture_output=True, check=False).returncode:
                subprocess.run(["umount", str(ro)], capture_output=True, check=False)
                pytest.skip("cannot make a read-only bind mount here")
        try:
            yield ro
        finally:
            subprocess.run(["umount", "-l", str(ro)], check=True)
    else:
        for folder, _, _ in os.walk(src):
            os.chmod(folder, 0o555)
        try:
            yield src
        finally:
            for folder, _, _ in os.walk(src):
                os.chmod(folder, 0o755)


def test_unwritable_numba_cache_degrades_to_no_caching(tmp_path):
    with read_only_copy(tmp_path) as ro:
        env = {"PYTHONPATH": str(ro), "HOME": str(ro / "home"), "XDG_CACHE_HOME": str(ro / "home"),
               "NUMBA_CACHE_DIR": str(ro / "home" / "numba")}
        done = python("""
            import warnings
            import numpy as np
            import mimfast as mf
            assert mf.__file__.startswith(%r), mf.__file__
            print(sorted(mf.backends()))
            s = mf.Setting.paper(1000, 0.9, 0.3)
            a = mf.simulate(s, 1.0, 3)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                b = mf.simulate(s, 1.0, 3, backend="numba")
            print([str(w.message)[:40] for w in caught])
            print(np.allclose(a.loss, b.loss, rtol=1e-12))
        """ % str(ro), env=env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0] == "['cpp', 'numba', 'numpy']"
        assert "numba cannot cache compiled code here" in lines[1]
        assert lines[2] == "True"
        # the command with the default backend works there too
        done = subprocess.run([sys.executable, "-m", "mimfast", "run", "--P", "300", "--eta",
                               "2", "--steps", "3", "--no-plots", "--out", str(tmp_path / "o")],
                              capture_output=True, text=True, timeout=300, check=False,
                              env={**os.environ, **env}, cwd=tmp_path)
        assert done.returncode == 0, done.stderr


def test_workqueue_layer_with_several_python_threads():
    done = python("""
        import threading
        import numpy as np
        import numba
        import mimfast as mf
        s = mf.Setting.paper(10**5, 0.9, 0.3)
        out, errors = [None] * 4, []
        def work(i):
            try:
                out[i] = mf.simulate(s, 20.0, 20, backend="numba", threads=2)
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(numba.threading_layer(), errors)
        print(all(np.array_equal(r.loss, out[0].loss) for r in out))
    """, env={"NUMBA_THREADING_LAYER": "workqueue"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["workqueue", "[]", "True"]

"""The core needs numpy only: with every optional dependency hidden, mimfast imports and
simulates, and whatever needs an extra says which one to install."""

import json
import subprocess
import sys
import textwrap

import pytest

OPTIONAL = ["xarray", "netCDF4", "pandas", "matplotlib", "tqdm", "tomli", "numba", "torch",
            "scipy", "mpmath"]

# a subprocess in which importing any optional dependency fails as if it were not installed
HIDE = textwrap.dedent(f"""
    import importlib.abc, sys
    HIDDEN = {OPTIONAL!r}
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in HIDDEN:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
    sys.meta_path.insert(0, Hide())
""")


def run_hidden(code):
    out = subprocess.run([sys.executable, "-c", HIDE + textwrap.dedent(code)],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_core_imports_and_simulates_with_numpy_only():
    res = run_hidden("""
        import json, sys
        import mimfast as mf
        s = mf.Setting.paper(1000, 0.9, 0.3)
        r = mf.simulate(s, eta=5.0, steps=3, threads=1)
        g = mf.gradient(s, backend="numpy")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HIDDEN)
        print(json.dumps({"loss": list(r.loss), "backends": sorted(mf.backends()),
                          "loaded": loaded, "g": float(g.loss)}))
    """)
    assert res["loaded"] == []
    assert res["backends"] == ["cpp", "numpy"]
    assert len(res["loss"]) == 4 and res["loss"][-1] < res["loss"][0]
    assert res["g"] == pytest.approx(res["loss"][0], rel=1e-12)


def test_what_needs_an_extra_names_it(tmp_path):
    res = run_hidden(f"""
        import json, contextlib, io as sio
        import mimfast as mf
        from mimfast import io, plots
        from mimfast.cli import main
        r = mf.simulate(mf.Setting.paper(1000, 0.9, 0.3), eta=5.0, steps=2, threads=1)
        msgs = {{}}
        for name, call in [("save", lambda: io.save(r, {str(tmp_path / 'r.nc')!r})),
                           ("load", lambda: io.load({str(tmp_path / 'r.nc')!r})),
                           ("table", lambda: io.table(r)),
                           ("figure", lambda: plots.fp_figure(r)),
                           ("reference", lambda: __import__("mimfast.reference")),
                           ("numba", lambda: mf.gradient(r.setting, backend="numba"))]:
            try:
                call()
                msgs[name] = None
            except ImportError as exc:
                msgs[name] = str(exc)
            except ValueError as exc:
                msgs[name] = "ValueError: " + str(exc)
        for cmd in (["run", "--P", "1e3", "--steps", "2", "--out", {str(tmp_path / 'out')!r}],
                    ["summary", {str(tmp_path / 'r.nc')!r}]):
            err = sio.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(cmd)
            msgs[cmd[0]] = [code, err.getvalue()]
        print(json.dumps(msgs))
    """)
    for name in ("save", "load", "table"):
        assert "pip install mimfast[io]" in res[name], res[name]
    assert "pip install mimfast[plot]" in res["figure"]
    assert "pip install mimfast[torch]" in res["reference"]
    assert "pip install mimfast[numba]" in res["numba"]
    code, err = res["run"]
    assert code == 1 and "`mimfast run` needs" in err and "pip install mimfast[cli]" in err
    code, err = res["summary"]
    assert code == 1 and "pip install mimfast[io]" in err
    assert not (tmp_path / "out").exists()  # refused before any work

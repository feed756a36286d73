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

    def attempt(call):  # None when call() works, else what it raised
        try:
            call()
        except ImportError as exc:
            return str(exc)
        except Exception as exc:
            return f"not ImportError: {{type(exc).__name__}}: {{exc}}"
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
            msgs[name] = attempt(call)
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


# Every public entry point, called in a child process where one optional module is hidden:
# each call either works or raises an ImportError that names the extra to install.
ENTRY_POINTS = """
    import contextlib, io as sio, json, pathlib, sys
    import mimfast as mf
    from mimfast import analysis, io, plots, scaling, sweeps
    from mimfast.cli import main

    tmp, saved, swept = (pathlib.Path(a) for a in sys.argv[1:4])
    s = mf.Setting.paper(1000, 0.9, 0.3)
    r = mf.simulate(s, eta=5.0, steps=2, threads=1)
    grid = {"P": [1000], "kappa_c": [0.9], "kappa_s": [0.3], "steps": [2]}
    table = []

    def read_table():
        table.append(sweeps.read_table(swept))

    def cli(*argv):
        err = sio.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(sio.StringIO()):
            code = main([str(a) for a in argv])
        if code:
            raise ImportError(f"exit {code}: {err.getvalue()}")

    def task():
        row = sweeps.run_task({"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3, "steps": 2},
                              tmp / "task")
        if row["status"] != "done":
            raise ImportError(row["error"])

    calls = {
        "Setting": lambda: mf.Setting.paper(10**6, 0.6, 0.3),
        "backends": mf.backends,
        "simulate": lambda: mf.simulate(s, eta=5.0, steps=2, threads=1),
        "simulate quadrature": lambda: mf.simulate(s, 5.0, 2, method="quadrature", threads=1),
        "simulate numpy": lambda: mf.simulate(s, 5.0, 2, backend="numpy"),
        "gradient": lambda: mf.gradient(s),
        "gradient numba": lambda: mf.gradient(s, backend="numba"),
        "analyze": lambda: analysis.analyze(r).table(),
        "evolution": lambda: analysis.evolution(r),
        "io.save": lambda: io.save(r, tmp / "r.nc"),
        "io.load": lambda: io.load(saved),
        "io.export": lambda: io.export(r, tmp / "t.csv"),
        "io.table": lambda: io.table(r),
        "plots": lambda: [f(r) for f in (plots.fp_figure, plots.attention_figure,
                                         plots.pp_figure)],
        "plots.save_figures": lambda: plots.save_figures(r, tmp / "fig"),
        "reference": lambda: __import__("mimfast.reference").reference.ExplicitModel,
        "sweep": lambda: mf.sweep(tmp / "sweep", grid, workers=1, progress=False),
        "run_task": task,
        "read_table": read_table,
        "cli run": lambda: cli("run", "--P", "1e3", "--steps", "2", "--no-plots", "--out",
                               tmp / "run"),
        "cli summary": lambda: cli("summary", saved),
        "cli plot": lambda: cli("plot", saved, "--out", tmp / "plot"),
        "cli sweep": lambda: cli("sweep", "--P", "1e3", "--kappa-c", "0.9", "--kappa-s", "0.3",
                                 "--steps", "2", "--workers", "1", "--no-plots", "--out",
                                 tmp / "csweep"),
    }
    if HIDDEN[0] in ("distributed", "dask"):  # a Dask cluster is slow to start: only here
        calls["sweep dask"] = lambda: mf.sweep(tmp / "dask", grid, executor="dask",
                                               progress=False)
    outcome = {name: attempt(call) for name, call in calls.items()}
    if table:  # the fits take the table a sweep wrote
        for name, call in {"fits": lambda: scaling.fits(table[0]),
                           "report": lambda: scaling.report(table[0]),
                           "scaling figures": lambda: scaling.save_figures(table[0],
                                                                           tmp)}.items():
            outcome[name] = attempt(call)
    print(json.dumps(outcome))
"""
EACH = ["xarray", "netCDF4", "pandas", "matplotlib", "tqdm", "tomli", "scipy", "distributed",
        "dask", "numba", "torch"]


@pytest.fixture(scope="module")
def saved_run_and_sweep(tmp_path_factory):
    import mimfast as mf
    from mimfast import io

    tmp = tmp_path_factory.mktemp("extras")
    r = mf.simulate(mf.Setting.paper(1000, 0.9, 0.3), eta=5.0, steps=2, threads=1)
    io.save(r, tmp / "r.nc")
    mf.sweep(tmp / "sweep", {"P": [1000, 3000, 10000], "kappa_c": [0.9], "kappa_s": [0.3],
                             "steps": [2]}, workers=1, progress=False)
    return tmp / "r.nc", tmp / "sweep"


@pytest.mark.slow  # a fresh process per module, each running every entry point
@pytest.mark.parametrize("hidden", [None] + EACH)
def test_every_entry_point_works_or_names_the_extra(hidden, saved_run_and_sweep, tmp_path):
    code = HIDE.replace(f"HIDDEN = {OPTIONAL!r}", f"HIDDEN = {[hidden or '-']!r}")
    out = subprocess.run([sys.executable, "-c", code + textwrap.dedent(ENTRY_POINTS),
                          str(tmp_path), *map(str, saved_run_and_sweep)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr
    outcome = json.loads(out.stdout.splitlines()[-1])
    failed = {name: msg for name, msg in outcome.items() if msg is not None}
    if hidden is None:
        assert failed == {} and "fits" in outcome
        return
    for name, msg in failed.items():
        assert "pip install mimfast[" in msg and "not ImportError" not in msg, (name, msg)
    needs = {"xarray": "io.save", "netCDF4": "io.load", "pandas": "io.table",
             "matplotlib": "plots", "tqdm": "sweep", "scipy": "cli sweep",
             "distributed": "sweep dask", "numba": "gradient numba", "torch": "reference"}
    if hidden in needs:
        assert needs[hidden] in failed, outcome

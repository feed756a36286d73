"""Saved results: exact round trip through NetCDF, self-description, export, bad files."""

import numpy as np
import pandas as pd
import pytest

import mimfast as mf
from mimfast import io
from mimfast.analysis import analyze

SETTINGS = {
    "paper-exact-pp": (mf.Setting.paper(10**3, 0.9, 0.3), 5.0),
    "K2-frozen-uneven": (
        mf.Setting([mf.Cluster([mf.Group(1, 4), mf.Group(3, 2, z=0.7)]),
                    mf.Cluster([mf.Group(2, 3, z=1.3), mf.Group(1, 2), mf.Group(1, 2)],
                               weight=2.0)], masked=4),
        3.0,
    ),
}


@pytest.fixture(params=sorted(SETTINGS))
def run(request):
    setting, eta = SETTINGS[request.param]
    return mf.simulate(setting, eta, 23, record_every=5, threads=1)


def test_round_trip_is_exact(run, tmp_path):
    path = io.save(run, tmp_path / "r.nc", analyze(run), attrs={"note": "test"})
    back = io.load(path)
    assert io.equal(run, back)
    assert back.setting == run.setting and back.setting.kappa == run.setting.kappa
    np.testing.assert_array_equal(back.steps, [0, 5, 10, 15, 20, 23])
    assert (back.eta, back.backend, back.record_every, back.last_step) == (run.eta, "cpp", 5, 23)
    assert not list(tmp_path.glob(".*tmp")), "the temporary file is renamed away"


def test_file_is_self_describing(tmp_path):
    setting, eta = SETTINGS["paper-exact-pp"]
    r = mf.simulate(setting, eta, 10, threads=1)
    ds = io.open_dataset(io.save(r, tmp_path / "r.nc", analyze(r)))
    assert ds.attrs["mimfast_version"] == mf.__version__ and ds.attrs["backend"] == "cpp"
    assert (ds.attrs["P"], ds.attrs["kappa_c"], ds.attrs["kappa_s"]) == (1000, 0.9, 0.3)
    assert ds["fp"].dims == ("step", "cluster", "query_group", "key")
    assert list(ds["key"].values) == ["own", "group0", "group1"]
    assert list(ds["pp_key"].values) == ["self", "own", "group0", "group1"]
    local_own = ds["fp"].sel(cluster=0, query_group=1, key="own").values
    np.testing.assert_array_equal(local_own, r.fp(0, 1, "own"))
    assert "long_name" in ds["attention"].attrs
    # the analysis travels with the run
    assert ds.attrs["information_gap"] == setting.delta
    assert set(ds["claim"].values) >= {"loss_gap", "attention", "local_phases"}
    assert int(ds["phase_switch"].sel(cluster=0, query_group=0)) == 0
    assert "Theorem 4.1" in ds.attrs["analysis_summary"]


def test_interrupted_run_round_trips_and_resumes_exactly(tmp_path):
    setting, eta = SETTINGS["paper-exact-pp"]
    full = mf.simulate(setting, eta, 30, record_every=4, threads=1)

    def stop(t, grad, partial):
        if t == 17:
            raise KeyboardInterrupt

    with pytest.raises(mf.Interrupted) as info:
        mf.simulate(setting, eta, 30, record_every=4, callback=stop, threads=1,
                    callback_every=1)
    part = info.value.result
    assert part.last_step == 17 and part.steps[-1] == 16
    back = io.load(io.save(part, tmp_path / "checkpoint.nc"))
    assert io.equal(part, back)
    resumed = mf.simulate(setting, eta, 30, record_every=4, resume=back, threads=1)
    assert io.equal(resumed, full)


def test_equal_sees_one_bit(run):
    other = mf.Result(run.setting, run.backend, run.eta, run.steps, run.loss.copy(),
                      run._fp, run._fp_grad, run._attention, run._patch_loss, run._pp,
                      run.state, run.dropped, run.last_step, run.record_every, run.tail_tol,
                      run.method, run.error, run.tolerance_met, run.levels)
    assert io.equal(run, other)
    other.loss[-1] = np.nextafter(other.loss[-1], np.inf)
    assert not io.equal(run, other)


def test_export_flat_table(run, tmp_path):
    path = io.export(run, tmp_path / "t.csv")
    df = pd.read_csv(path)
    s = run.setting
    assert len(df) == len(run.steps) * len(s.classes())
    for k, h in s.classes():
        rows = df[(df.cluster == k) & (df.group == h)]
        np.testing.assert_array_equal(rows.step, run.steps)
        np.testing.assert_array_equal(rows.fp_own, run.fp(k, h, "own"))  # full precision
        np.testing.assert_array_equal(rows.attention_group0, run.attention(k, h, 0))
        np.testing.assert_array_equal(rows.patch_loss, run.patch_loss(k, h))
    assert ("pp_self" in df) == (s.pp == "exact")


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such results file"):
        io.load(tmp_path / "missing.nc")
    junk = tmp_path / "junk.nc"
    junk.write_text("not a netcdf file")
    with pytest.raises(io.ResultFileError, match="not a readable NetCDF"):
        io.load(junk)
    other = tmp_path / "other.nc"
    import xarray as xr

    xr.Dataset({"x": ("t", np.arange(3.0))}).to_netcdf(other, engine=io.ENGINE)
    with pytest.raises(io.ResultFileError, match="not a mimfast results file"):
        io.load(other)
    broken = tmp_path / "broken.nc"
    setting, eta = SETTINGS["paper-exact-pp"]
    ds = io.to_dataset(mf.simulate(setting, eta, 2, threads=1)).drop_vars("fp")
    ds.to_netcdf(broken, engine=io.ENGINE)
    with pytest.raises(io.ResultFileError, match="fails its checksum"):
        io.load(broken)
    ds.attrs[io.DIGEST] = io.digest(ds)  # a consistent digest over an incomplete file
    ds.to_netcdf(broken, engine=io.ENGINE)
    with pytest.raises(io.ResultFileError, match="incomplete"):
        io.load(broken)

"""Sweeps over the overlap of K >= 2 clusters with learned PP (Setting.paper_clusters): the
table measures what PP does across the clusters, resumes, reads tables written before these
columns existed, and refuses a bad overlap before any work."""

import csv

import numpy as np
import pytest

import mimfast as mf
from mimfast import io
from mimfast.analysis import class_kind, logit_gap_parts, pp_fp_sizes
from mimfast.cli import main
from mimfast.sweeps import (
    ADDED,
    COLUMNS,
    PRESETS,
    ROW_SUM,
    TABLE,
    _row_sum,
    expand,
    preset,
    read_table,
    sweep,
    task_id,
)

GRID = {"P": [10**4, 10**5], "kappa_c": 0.9, "kappa_s": 0.3, "K": 2, "overlap": [0.0, 1.0],
        "flow": True}


@pytest.fixture(scope="module")
def overlap_table(swept):
    return swept("overlap", GRID)


def test_overlap_rows_measure_pp_across_clusters(overlap_table):
    out, table = overlap_table
    assert list(table.columns) == list(COLUMNS)
    assert set(ADDED) <= set(COLUMNS)
    assert (table["status"] == "done").all()
    assert list(table["overlap"]) == [0.0, 1.0, 0.0, 1.0]
    for row in table.itertuples():
        result = io.from_dataset(io.open_dataset(out / row.file))
        s = result.setting
        assert s == mf.Setting.paper_clusters(int(row.P), 0.9, 0.3, K=2, overlap=row.overlap)
        assert s.pp == "exact" and s.K == 2
        pp, fp = pp_fp_sizes(result)
        assert pp > 0 and row.pp_fp_ratio == pp / fp
        # the shares, recomputed from the logit gap parts of every class of each kind
        for kind in ("global", "local"):
            shares, final = [], []
            for k, h in s.classes():
                parts = logit_gap_parts(result, k, h)
                if class_kind(s, k, h) != kind or parts is None:
                    continue
                a, b = np.abs(parts[0]), np.abs(parts[1])
                ok = a + b > 0
                shares += list(b[ok] / (a + b)[ok])
                final.append(b[-1] / (a[-1] + b[-1]))
            assert getattr(row, f"{kind}_pp_share_max") == max(shares)
            assert getattr(row, f"{kind}_pp_share_final") == max(final)
        # PP serves a local tile in both clusters: its share is about 2 / c_l (docs/theorem.md)
        c_l = s.clusters[0].groups[0].size  # every regular tile
        assert row.local_pp_share_final == pytest.approx(2 / c_l, rel=0.1)
        assert row.global_pp_share_max < 0.01 * row.local_pp_share_max
        assert row.local_phases == 2 and row.global_phases == 1  # Delta = +0.5
        assert row.converged


def test_overlap_sweep_resumes_and_reads_older_tables(overlap_table, tmp_path, capsys):
    out, table = overlap_table
    # resume: every row is done, so nothing runs again (the callback never fires)
    ran = []
    again = sweep(out, GRID, workers=1, progress=False, callback=ran.append)
    assert ran == []
    assert again.drop(columns="wall_s").equals(table.drop(columns="wall_s"))
    # a table of the layout before ADDED (Setting.paper tasks only) still reads, its task ids
    # are the ones they were (a hash computed by the earlier layout's code), and a sweep on it
    # skips its done rows and writes the new layout
    paper = {"P": 1000, "kappa_c": 0.9, "kappa_s": 0.3, "steps": 250}
    assert task_id(paper) == "242ae87a7e213da8"
    assert task_id({"P": 10**6, "kappa_c": 0.6, "kappa_s": 0.3, "flow": True}) == \
        "67146b80835259f7"
    new = sweep(tmp_path, tasks=[paper], workers=1, progress=False)
    with open(tmp_path / TABLE, newline="") as f:
        records = list(csv.reader(f))
    keep = [i for i, c in enumerate(records[0][:-1]) if c not in ADDED]
    old = [[r[i] for i in keep] for r in records]
    old = [old[0] + [ROW_SUM]] + [r + [_row_sum(r)] for r in old[1:]]
    with open(tmp_path / TABLE, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(old)
    read = read_table(tmp_path)
    assert list(read.columns) == list(COLUMNS)
    assert read[list(ADDED)].isna().all().all()
    assert read.drop(columns=list(ADDED)).equals(new.drop(columns=list(ADDED)))
    ran = []
    sweep(tmp_path, tasks=[paper], workers=1, progress=False, callback=ran.append)
    assert ran == []
    with open(tmp_path / TABLE, newline="") as f:
        assert next(csv.reader(f)) == list(COLUMNS) + [ROW_SUM]
    # a header of neither layout is refused
    old[0] = old[0][:3] + old[0][4:]
    with open(tmp_path / TABLE, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows(old)
    with pytest.raises(ValueError, match="columns differ"):
        read_table(tmp_path)


@pytest.mark.parametrize("task, words", [
    ({"overlap": 1.5}, "must lie in \\[0, 1\\]"),
    ({"overlap": -0.25}, "must lie in \\[0, 1\\]"),
    ({"overlap": 0.5, "K": 1}, "needs K >= 2"),
    ({"overlap": 0.5}, "needs K >= 2"),  # K defaults to 1
    ({"overlap": 0.5, "K": 2, "pp": "frozen"}, "learns PP"),
    ({"overlap": float("nan"), "K": 2}, "not finite"),
])
def test_bad_overlap_is_refused_before_any_work(task, words, tmp_path):
    task = {"P": 10**4, "kappa_c": 0.9, "kappa_s": 0.3, "flow": True, **task}
    with pytest.raises(ValueError, match=words):
        sweep(tmp_path / "out", tasks=[task], workers=1, progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_overlap_sweep_and_bad_overlap(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["sweep", "--P", "1e4", "--kappa-c", "0.6", "--kappa-s", "0.3", "--K", "2",
                 "--overlap", "0.5", "--flow", "--out", str(out), "--workers", "1",
                 "--no-plots"]) == 0
    table = read_table(out)
    assert list(table["overlap"]) == [0.5] and (table["status"] == "done").all()
    assert table["local_phases"].tolist() == [1]  # Delta = -0.1
    capsys.readouterr()
    assert main(["sweep", "--P", "1e4", "--kappa-c", "0.9", "--kappa-s", "0.3", "--overlap",
                 "0.5", "--flow", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert "needs K >= 2" in err and "Traceback" not in err
    assert not (tmp_path / "bad").exists()


def test_overlap_preset_is_checked_whole():
    grid = preset("paper-clusters-overlap")
    tasks = expand(grid)
    assert len(tasks) == 2 * 5 * 12 and {t["overlap"] for t in tasks} == {0, .25, .5, .75, 1}
    assert all(t["flow"] and t["K"] == 2 for t in tasks)
    assert min(t["P"] for t in tasks) == 10**4 and max(t["P"] for t in tasks) == 10**15
    assert "paper-clusters-overlap" in PRESETS
    mf.sweeps.check_tasks(tasks)

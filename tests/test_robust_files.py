"""Files that never lie: atomic outputs, checksums, locks, full disks and interrupts injected
at every line of the save path."""

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import mimfast as mf
from mimfast import cli, io
from mimfast.analysis import analyze
from mimfast.cli import main

TINY = ["--P", "200", "--kappa-c", "0.9", "--kappa-s", "0.5", "--eta", "5", "--steps", "6",
        "--record-every", "2", "--threads", "1", "--no-plots"]


def tiny_result(steps=6):
    return mf.simulate(mf.Setting.paper(200, 0.9, 0.5), 5.0, steps, record_every=2, threads=1)


def temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def cli_command(*args):
    return [sys.executable, "-m", "mimfast", *args]


# --- checksums -------------------------------------------------------------------------------


def test_bit_flips_never_load_as_different_data(tmp_path):
    r = tiny_result()
    path = io.save(r, tmp_path / "result.nc", analyze(r), attrs={"run_options": "{}"})
    data = path.read_bytes()
    bad = tmp_path / "flipped.nc"
    trailer = 8 * (len(data) - 81)
    # 1000 offsets spread over the whole file (HDF5 superblock, metadata, chunks, attributes,
    # padding), each refused by the checksum trailer; one bit of every trailer byte, where a
    # broken trailer leaves the intact data to the digest attribute
    offsets = sorted({(i * 7919) % trailer for i in range(1000)}
                     | {trailer + 8 * j + j % 8 for j in range(81)})
    for bit in offsets:
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        bad.write_bytes(flipped)
        try:
            loaded = io.load(bad)
        except io.ResultFileError:
            continue
        assert bit >= trailer, f"bit {bit} of the data was not refused"
        assert io.equal(loaded, r), f"bit {bit} loaded as different data"


def test_corrupt_file_exits_3(tmp_path, capsys):
    r = tiny_result()
    path = io.save(r, tmp_path / "result.nc")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(data)
    assert main(["summary", str(path)]) == 3
    assert "fails its checksum" in capsys.readouterr().err


def test_digest_covers_values_and_attributes():
    r = tiny_result()
    ds = io.to_dataset(r)
    d0 = io.digest(ds)
    ds.attrs["eta"] = 5.000000000000001
    assert io.digest(ds) != d0
    ds = io.to_dataset(r)
    ds["loss"].values[1] = np.nextafter(ds["loss"].values[1], 1)
    assert io.digest(ds) != d0


# --- atomic writes ---------------------------------------------------------------------------


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    r = tiny_result()
    csv = io.export(r, tmp_path / "t.csv")
    before = csv.read_bytes()
    import pandas as pd

    def broken(self, path, **kw):
        with open(path, "w") as f:
            f.write("step,cluster,gr")  # cut mid-line, as on a full disk
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(pd.DataFrame, "to_csv", broken)
    with pytest.raises(OSError, match="I/O error"):
        io.export(r, csv)
    assert csv.read_bytes() == before and temporaries(tmp_path) == []


def test_enospc_is_reported_as_a_full_disk(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(io.DiskFullError, match="disk full"):
        io.save(tiny_result(), tmp_path / "result.nc")
    assert list(tmp_path.iterdir()) == []


def test_full_disk_in_the_command(tmp_path, monkeypatch, capsys):
    real = io.os.fsync
    calls = []

    def full_after_first(fd):  # the checkpoint fits, the outputs do not
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(io.os, "fsync", full_after_first)
    out = tmp_path / "run"
    code = main(["run", *TINY, "--checkpoint-every", "6", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and "disk full" in err and "Permission" not in err
    assert temporaries(out) == [] and not (out / "trajectories.csv").exists()
    monkeypatch.setattr(io.os, "fsync", real)
    assert main(["run", "--resume", str(out)]) == 0  # the checkpoint is intact
    assert io.equal(io.load(out / "result.nc"), tiny_result())


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux",
                    reason="mounting a tiny tmpfs needs root on Linux")
def test_real_full_disk(tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)],
                      check=False, capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code = main(["run", *TINY, "--out", str(mnt / "run")])
        err = capsys.readouterr().err
        assert code == 1 and "disk full" in err, err
        # a folder the run created and left empty is removed
        left = sorted(p.name for p in (mnt / "run").iterdir()) if (mnt / "run").exists() else []
        assert not any(name.endswith(".tmp") for name in left)
        for name in left:  # whatever is there is complete
            if name.endswith(".nc"):
                io.load(mnt / "run" / name)
        # the space of the failed file is freed although HDF5 may keep it open
        assert shutil.disk_usage(mnt).used < 40_000
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_symlink_long_name_and_missing_folder(tmp_path):
    r = tiny_result()
    target = tmp_path / "real.nc"
    io.save(r, target)
    link = tmp_path / "link.nc"
    link.symlink_to(target)
    io.save(r, link)
    assert link.is_symlink() and io.equal(io.load(target), r)
    long = tmp_path / ("r" * 250 + ".nc")
    io.save(r, long)
    assert io.equal(io.load(long), r)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        io.save(r, tmp_path / "missing" / "r.nc")


def test_reserved_attributes_cannot_be_overridden(tmp_path):
    r = tiny_result()
    for key in ("eta", "mimfast_format", "backend", io.DIGEST, "dropped"):
        with pytest.raises(ValueError, match="may not override"):
            io.save(r, tmp_path / "r.nc", attrs={key: 1})
    with pytest.raises(TypeError, match="attrs"):
        io.save(r, tmp_path / "r.nc", attrs={"note": [1, 2]})


# --- the output folder -----------------------------------------------------------------------


def test_non_empty_folder_needs_force(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out)]) == 0
    first = (out / "result.nc").read_bytes()
    assert main(["run", *TINY, "--eta", "4", "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert (out / "result.nc").read_bytes() == first
    assert main(["run", *TINY, "--eta", "4", "--out", str(out), "--force"]) == 0
    assert io.load(out / "result.nc").eta == 4.0
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["run", *TINY, "--out", str(tmp_path / "other")]) == 2


def test_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    lock = io.lock_folder(out)
    try:  # a second process: flock locks belong to open files, so this is a real conflict
        done = subprocess.run(cli_command("run", *TINY, "--out", str(out)), check=False,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "in use by another mimfast process" in done.stderr
        assert f"pid {os.getpid()}" in done.stderr
    finally:
        lock.close()
    assert main(["run", *TINY, "--out", str(out)]) == 0


def test_concurrent_runs_on_one_folder(tmp_path, spawn):
    out = tmp_path / "run"
    slow = ["--P", "1e4", "--eta", "4", "--steps", "100000", "--no-plots", "--threads", "1",
            "--checkpoint-every", "50"]
    first = spawn(cli_command("run", *slow, "--out", str(out)),
                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "checkpoint.nc").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        done = subprocess.run(cli_command("run", *TINY, "--out", str(out), "--force"),
                              check=False, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "in use" in done.stderr
        done = subprocess.run(cli_command("run", "--resume", str(out)), check=False,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "in use" in done.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=60)
    assert first.returncode == 130
    assert io.load(out / "checkpoint.nc").last_step > 0


def test_temporaries_of_killed_runs_are_cleaned(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = out / f".mimfast-{int(dead.stdout)}-0123456789ab.tmp"
    stale.write_bytes(b"half a file")
    assert main(["run", *TINY, "--out", str(out)]) == 0  # only a stale temporary: empty
    assert not stale.exists()
    mine = out / f".mimfast-{os.getpid()}-0123456789ab.tmp"
    assert io.clean_temporaries(out) == []
    mine.write_bytes(b"x")
    assert io.clean_temporaries(out) == [mine]


# --- interrupts ------------------------------------------------------------------------------

_SAVE_PATH = {id(f.__code__) for f in (io.save, io.export, io.write_text, io._sha256,
                                       io.atomic_output.__wrapped__, io._fsync_dir)}
_SAVE_PATH |= {id(c) for c in cli._run.__code__.co_consts
               if getattr(c, "co_name", None) in ("checkpoint", "save_and_stop")}
_SAVE_PATH |= {id(cli._write_outputs.__code__)}


def _run_with_signals(argv, at):
    """``main(argv)``, sending SIGINT to this process at the line events numbered ``at`` of
    the save path. Returns (exit code, number of line events seen)."""
    seen = [0]

    def tracer(frame, event, arg):
        if id(frame.f_code) not in _SAVE_PATH:
            return None

        def local(frame, event, arg):
            if event == "line":
                if seen[0] in at:
                    os.kill(os.getpid(), signal.SIGINT)
                seen[0] += 1
            return local

        return local(frame, event, arg)

    sys.settrace(tracer)
    try:
        code = main(argv)
    finally:
        sys.settrace(None)
    return code, seen[0]


def test_sigint_at_every_line_of_the_save_path(tmp_path, capsys, monkeypatch, sigint_raises):
    monkeypatch.setattr(io.os, "fsync", lambda fd: None)  # speed: what it does is not tested here
    # one periodic checkpoint (after step 1), then the outputs: every line of both
    argv = ["run", *TINY, "--checkpoint-every", "6"]
    reference, states = tiny_result(), {}
    code, total = _run_with_signals([*argv, "--out", str(tmp_path / "clean")], set())
    assert code == 0 and total > 50
    for i in range(total):
        # one signal; and at every fourth line a second one soon after
        for at in ({i}, {i, i + 2}) if i % 4 == 0 else ({i},):
            out = tmp_path / f"at{i}-{len(at)}"
            code, _ = _run_with_signals([*argv, "--out", str(out)], at)
            err = capsys.readouterr().err
            assert code in (0, 130), (i, err)
            if not out.exists():
                assert code == 130 and "before the first step" in err
                continue
            assert temporaries(out) == [], i
            assert "nothing saved" not in err or not (out / "checkpoint.nc").exists()
            if code == 130 and (out / "checkpoint.nc").exists():
                # the checkpoint holds the state at its last step and a prefix of the record;
                # resuming it writes the outputs
                saved = io.load(out / "checkpoint.nc")
                assert f"step {saved.last_step}" in err, err
                n = len(saved.steps)
                np.testing.assert_array_equal(saved.steps, reference.steps[:n])
                np.testing.assert_array_equal(saved.loss, reference.loss[:n])
                np.testing.assert_array_equal(saved.fp(0, 1, "own"), reference.fp(0, 1, "own")[:n])
                if saved.last_step not in states:
                    states[saved.last_step] = tiny_result(saved.last_step).state
                np.testing.assert_array_equal(saved.state.fp[0], states[saved.last_step].fp[0])
                np.testing.assert_array_equal(saved.state.pp, states[saved.last_step].pp)
                if i % 10:
                    continue
                assert main(["run", "--resume", str(out)]) == 0, capsys.readouterr().err
                capsys.readouterr()
            elif code == 130:
                assert "before the first step" in err
                continue
            assert not (out / "checkpoint.nc").exists()
            assert io.equal(io.load(out / "result.nc"), reference), i


def test_two_signals_to_a_running_command(tmp_path, spawn):
    out = tmp_path / "run"
    proc = spawn(cli_command("run", "--P", "1e4", "--eta", "4", "--steps", "100000",
                             "--no-plots", "--threads", "1", "--checkpoint-every", "20",
                             "--out", str(out)),
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                 start_new_session=True)
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.nc").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what `timeout` does: the process and its group
    time.sleep(0.02)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "nothing saved" not in err and "checkpoint saved" in err
    saved = io.load(out / "checkpoint.nc")
    assert f"after step {saved.last_step};" in err and saved.last_step >= 20


# SIGINT right after xarray takes its process-wide HDF5 lock in the close of the results
# file's write: in the middle of CombinedLock.acquire, where an interrupt leaves that lock
# taken, and any later NetCDF write (the checkpoint) would wait for it forever.
_SIGINT_IN_XARRAY_LOCK = """
import os, signal, sys
from xarray.backends import locks
from mimfast.cli import main

plain, sent = locks.acquire, []

def acquire(lock, blocking=True):
    got = plain(lock, blocking)
    names, f = set(), sys._getframe(1)
    while f is not None:
        names.add(f.f_code.co_name)
        f = f.f_back
    if (not sent and lock in (locks.HDF5_LOCK, locks.NETCDFC_LOCK)
            and {"_write_outputs", "save", "close"} <= names):
        sent.append(1)
        print("sigint inside the lock", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGINT)
    return got

locks.acquire = acquire
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("run", [TINY, ["--P", "200", "--kappa-c", "0.9", "--kappa-s", "0.5",
                                        "--flow", "3", "--threads", "1", "--no-plots"]],
                         ids=["gd", "flow"])
def test_sigint_inside_xarray_lock_of_the_results_write(run, tmp_path, spawn):
    out = tmp_path / "run"
    proc = spawn([sys.executable, "-c", _SIGINT_IN_XARRAY_LOCK, "run", *run, "--out", str(out)],
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=60)  # not held: waits forever on the lock taken
    assert "sigint inside the lock" in err
    assert proc.returncode == 130, err
    assert "while writing the outputs" in err and temporaries(out) == []
    # the results file was written whole under the hold; the run is also the checkpoint
    saved = io.load(out / "result.nc")
    assert io.equal(io.load(out / "checkpoint.nc"), saved)
    if "--flow" not in run:
        assert io.equal(saved, tiny_result())


def test_interrupt_during_analysis_keeps_the_complete_run(tmp_path, capsys, monkeypatch):
    import mimfast.analysis

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mimfast.analysis, "analyze", interrupted)
    out = tmp_path / "run"
    assert main(["run", *TINY, "--out", str(out)]) == 130
    assert "while writing the outputs" in capsys.readouterr().err
    assert io.load(out / "checkpoint.nc").last_step == 6
    monkeypatch.undo()
    assert main(["run", "--resume", str(out)]) == 0
    assert io.equal(io.load(out / "result.nc"), tiny_result())


# --- options ---------------------------------------------------------------------------------


def test_steps_zero_runs_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY[:-1], "--steps", "0", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not re.search(r"\binf\b", text) and (out / "pp.png").exists()


@pytest.mark.parametrize("config, words", [
    ('P = 1000\nmasked = 3\n', "paper's setting takes gamma"),
    ('masked = 3\ngamma = 0.5\neta = 1.0\n[[clusters]]\ngroups = [{areas = 1, size = 4}]\n',
     "either masked or gamma"),
])
def test_config_conflicts_are_refused(config, words, tmp_path, capsys):
    path = tmp_path / "c.toml"
    path.write_text(config)
    assert main(["run", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    assert words in capsys.readouterr().err


def test_absurd_P_is_refused_at_once(capsys):
    t = time.monotonic()
    assert main(["run", "--P", "10**100000000"]) == 2
    assert main(["run", "--P", "1e300", "--out", "never"]) == 2
    assert time.monotonic() - t < 5
    assert "2^62" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["--steps", "10**30"], "steps must lie in [0, 2^53]"),
    (["--record-every", "10**30"], "record-every must lie in [1, 2^53]"),
    (["--checkpoint-every", "10**30"], "checkpoint-every must lie in [0, 2^53]"),
    (["--threads", "100000"], "threads must lie in [1, 65536]"),
    (["--backend", "nope"], "backend 'nope' is not available"),
])
def test_out_of_range_run_options_exit_2(argv, words, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["run", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and not out.exists()


def test_huge_steps_are_refused_by_simulate():
    with pytest.raises(ValueError, match=r"steps must be at most 2\^53"):
        mf.simulate(mf.Setting.paper(200, 0.9, 0.5), 1.0, 2**63)


def test_binary_or_mistyped_config_files(tmp_path, capsys):
    binary = tmp_path / "b.toml"
    binary.write_bytes(bytes(range(256)))
    assert main(["run", "--config", str(binary), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert str(binary) in err and "Traceback" not in err
    fast = tmp_path / "f.toml"
    fast.write_text('method = "fast"\n')
    assert main(["run", "--config", str(fast), "--out", str(tmp_path / "o")]) == 2
    assert "method must be one of exact, quadrature, auto, got 'fast'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()

"""Saved results: one self-describing NetCDF file per run, and a flat table export.

A results file (NetCDF-4, written through xarray with the netCDF4 engine) holds the setting,
every recorded trajectory on named dimensions, the state after the last completed step, the
analysis of Theorem 4.1, the mimfast version and the backend. Floats are stored as float64,
so :func:`load` gives back a :class:`~mimfast.Result` equal bit for bit to the saved one
(:func:`equal`); a saved unfinished run can therefore be resumed exactly.

Layout (dimension names)::

    step          recorded steps (coordinate)
    cluster       k
    query_group   h, the group of the query (padded to the largest cluster with NaN)
    key           "own", "group0", "group1", ...: the key categories of a query
    pp_key        "self", "own", "group0", ...: the PP key categories (exact PP only)
    claim         the claims of the paper checked by the analysis (with source, trusted)

Checksums, so that a corrupted file is refused, never read as a different result:

- the file ends with a trailer line ``mimfast-sha256:<hex>``, the SHA-256 of every byte before
  it. :func:`open_dataset` checks it before the NetCDF library parses anything (a corrupt
  HDF5 structure can crash that library, not only make it fail);
- a SHA-256 digest of all variables (names, dimensions, types, values) and attributes, in the
  global attribute ``mimfast_sha256``, checked after reading;
- HDF5 Fletcher-32 checksums on the numeric variables.

Every file mimfast writes goes through :func:`atomic_output`: written to a temporary file
beside its path, flushed to disk, then renamed over the path, so a reader sees the old file
or the complete new one, never a part.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ._extras import require
from .model import State
from .quadrature import LEVELS, level_of
from .result import Result
from .setting import Cluster, Group, Setting

__all__ = ["FORMAT", "DiskFullError", "FolderLockedError", "ResultFileError", "atomic_output",
           "check_file", "clean_temporaries", "digest", "equal", "export", "from_dataset", "load",
           "lock_folder", "open_dataset", "save", "table", "to_dataset", "unlock_folder",
           "write_text"]

FORMAT = 2  # 2: SHA-256 digest and Fletcher-32 checksums (format 1 files are read unchecked)
ENGINE = "netcdf4"
DIGEST = "mimfast_sha256"
_TRAILER = re.compile(rb"\nmimfast-sha256:([0-9a-f]{64})\n\Z")
_TRAILER_LEN = 81
LOCK_NAME = ".mimfast.lock"
_TEMP = re.compile(r"^\.mimfast-(\d+)-[0-9a-f]+\.tmp$")
# free space below which a failed write is reported as a full disk
_LOW_SPACE = 1 << 20


class ResultFileError(ValueError):
    """A file that is not a readable mimfast results file."""


def _xarray():
    """xarray, with the netCDF4 engine present (the ``io`` extra)."""
    require("netCDF4", "reading and writing results files")
    return require("xarray", "reading and writing results files")


class DiskFullError(OSError):
    """A write failed because the file system is full (errno ENOSPC)."""


class FolderLockedError(RuntimeError):
    """Another mimfast process holds the folder's lock."""


def _disk_full(folder, target, exc):
    """A :class:`DiskFullError` if ``exc`` came from a full disk (by errno, or because the
    file system of ``folder`` has next to no space left: HDF5 reports ENOSPC as its own
    error), else None."""
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT)
    if not full:
        try:
            st = os.statvfs(folder)
            full = st.f_bavail * st.f_frsize < _LOW_SPACE
        except OSError:
            full = False
    if full:
        return DiskFullError(errno.ENOSPC, f"disk full: no space left on the device while "
                                           f"writing {target} ({exc})")
    return None


def _fsync_dir(folder):
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - a platform without directory file descriptors
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_output(path):
    """Write a file atomically: yields a temporary path beside ``path``; when the block ends
    normally the file is flushed to disk (fsync) and renamed over ``path``.

    If the block or the flush fails (or is interrupted) the temporary file is removed and
    ``path`` is left as it was. A symbolic link at ``path`` is kept: its target is replaced.
    The temporary name is short (``.mimfast-<pid>-<random>.tmp``), so any valid ``path``
    works; :func:`clean_temporaries` removes those left by a killed process.

    Raises
    ------
    FileNotFoundError
        When the folder of ``path`` does not exist.
    DiskFullError
        When the file system is full.
    """
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    folder = target.parent
    if not folder.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"no such folder: {folder} (to write "
                                              f"{target.name})")
    tmp = folder / f".mimfast-{os.getpid()}-{secrets.token_hex(6)}.tmp"
    try:
        try:
            yield tmp
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except (OSError, RuntimeError) as exc:
            full = _disk_full(folder, target, exc)
            if full is not None:
                raise full from exc
            raise
        os.replace(tmp, target)
        _fsync_dir(folder)
    finally:
        try:
            # a writer that failed may keep the file open (HDF5 cannot close a file it cannot
            # flush): empty it first, so its space is freed even then
            os.truncate(tmp, 0)
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_text(path, text):
    """Write ``text`` to ``path`` atomically (see :func:`atomic_output`)."""
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def clean_temporaries(folder):
    """Remove the temporary files that killed mimfast processes left in ``folder``.

    Only names of :func:`atomic_output` whose process is no longer running are removed.

    Returns
    -------
    list of pathlib.Path
        The removed files.
    """
    removed = []
    for entry in Path(folder).iterdir():
        m = _TEMP.match(entry.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
            continue
        try:
            entry.unlink()
            removed.append(entry)
        except FileNotFoundError:
            pass
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_folder(folder, name=LOCK_NAME):
    """Take the folder's exclusive lock (the file ``name``, fcntl) for this process.

    Returns
    -------
    file
        Keep it open while working in the folder; closing it (or the process ending, however
        it ends) releases the lock.

    Raises
    ------
    FolderLockedError
        When another process holds it.
    """
    import fcntl

    path = Path(folder) / name
    while True:
        f = open(path, "a+")  # noqa: SIM115 - held by the caller
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise FolderLockedError(
                f"{folder} is in use by another mimfast process (pid {holder})") from None
        try:  # the holder may have removed the file as it released it: lock the new one
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f


def unlock_folder(lock):
    """Release a lock of :func:`lock_folder` and remove its file (the folder keeps only the
    work). Removing before releasing is safe: :func:`lock_folder` re-checks the path."""
    try:
        os.unlink(lock.name)
    except FileNotFoundError:
        pass
    lock.close()


def _pad(arrays, shape):
    out = np.full((len(arrays),) + shape, np.nan)
    for i, a in enumerate(arrays):
        out[(i,) + tuple(slice(0, n) for n in np.shape(a))] = a
    return out


def _keys(G, pp=False):
    return (["self"] if pp else []) + ["own"] + [f"group{g}" for g in range(G)]


def to_dataset(result, analysis=None, attrs=None):
    """The :class:`xarray.Dataset` that :func:`save` writes.

    Parameters
    ----------
    result : Result
    analysis : Analysis, optional
        Stored as per-class variables and the ``claim`` dimension.
    attrs : dict, optional
        Extra global attributes (str, int or float values).

    Returns
    -------
    xarray.Dataset
    """
    xr = _xarray()

    from . import __version__

    s = result.setting
    K, G = s.K, max(len(c.groups) for c in s.clusters)
    per_class = ("step", "cluster", "query_group", "key")
    n = len(result.steps)

    def by_class(get, with_key=True):
        shape = (n, K, G, 1 + G) if with_key else (n, K, G)
        out = np.full(shape, np.nan)
        for k, h in s.classes():
            if with_key:
                for j, key in enumerate(["own"] + list(range(len(s.clusters[k].groups)))):
                    out[:, k, h, j] = get(k, h, key)
            else:
                out[:, k, h] = get(k, h)
        return out

    groups = [c.groups for c in s.clusters]
    data = {
        "loss": (("step",), result.loss, {"long_name": "population loss L"}),
        "fp": (per_class, by_class(result.fp),
               {"long_name": "FP correlation A[k][h][key], per area"}),
        "fp_grad": (per_class, by_class(result.fp_grad),
                    {"long_name": "dL/dA[k][h][key], per area"}),
        # per category as recorded (Result.attention's "own" sums a named own area's)
        "attention": (per_class, by_class(lambda k, h, key: result.block()[4][k][
            :, h, 0 if key == "own" else 1 + key]),
                      {"long_name": "expected attention of a masked query on the unmasked keys "
                                    "of the category"}),
        "patch_loss": (per_class[:3], by_class(result.patch_loss, False),
                       {"long_name": "E[l | k, h], expected loss of a masked query"}),
        "state_fp": (("cluster", "query_group", "key"),
                     _pad(result.state.fp, (G, 1 + G)),
                     {"long_name": "FP correlations after the last completed step"}),
        "areas": (("cluster", "query_group"), _pad_int([[g.areas for g in gs] for gs in groups], G),
                  {"long_name": "areas of the group (0: no such group)"}),
        "size": (("cluster", "query_group"), _pad_int([[g.size for g in gs] for gs in groups], G),
                 {"long_name": "patches per area"}),
        "z": (("cluster", "query_group"), _pad([[g.z for g in gs] for gs in groups], (G,)),
              {"long_name": "latent of the group's features"}),
        "weight": (("cluster",), np.array([c.weight for c in s.clusters]),
                   {"long_name": "unnormalised prior weight of the cluster"}),
    }
    data["error"] = (("step",), result.error,
                     {"long_name": "estimated relative error of the step's gradient and "
                                   "observables (quadrature; 0 for the exact grid)"})
    if result.is_flow:
        data["tau"] = (("step",), result.tau, {"long_name": "flow time of the recorded step "
                                                            "(gradient flow)"})
    coords = {"step": result.steps, "cluster": np.arange(K), "query_group": np.arange(G),
              "key": _keys(G)}
    if s.pp == "exact":
        pp = np.stack([np.stack([result.pp(h, key) for key in ["self", "own"] + list(range(G))],
                                axis=-1) for h in range(G)], axis=1)
        data["pp"] = (("step", "query_group", "pp_key"), pp,
                      {"long_name": "PP correlation B[h][key], per key position"})
        data["state_pp"] = (("query_group", "pp_key"), result.state.pp,
                            {"long_name": "PP correlations after the last completed step"})
        coords["pp_key"] = _keys(G, pp=True)
    info = {
        "title": "mimfast run: exact population GD of masked image modeling",
        "mimfast_format": FORMAT,
        "mimfast_version": __version__,
        "backend": result.backend,
        "eta": float(result.eta),
        "record_every": int(result.record_every),
        "last_step": int(result.last_step),
        "dropped": float(result.dropped),
        "tail_tol": -1.0 if result.tail_tol is None else float(result.tail_tol),
        "method": result.method,
        "tolerance_met": int(result.tolerance_met),
        "quadrature_nodes": json.dumps({f"{k},{h}": [LEVELS[i] for i in v]
                                        for (k, h), v in result.levels.items()}),
        "P": int(s.P),
        "masked": int(s.masked),
        "pp": s.pp,
    }
    if s.kappa is not None:
        info["kappa_c"], info["kappa_s"] = map(float, s.kappa)
    if any(c.roles is not None for c in s.clusters):  # tiled: per cluster the groups' roles
        info["roles"] = json.dumps([None if c.roles is None else list(c.roles)
                                    for c in s.clusters])
    if result.is_flow:  # what mimfast.flow needs to resume (and the events it located)
        info.update(flow_rtol=float(result.rtol), flow_epsilon=float(result.epsilon),
                    flow_next_step=float(result.next_step),
                    flow_events=json.dumps([[*key, float(v)]
                                            for key, v in sorted(result.events.items())]))
        if result.evaluations is not None:
            info["flow_evaluations"] = int(result.evaluations)
    ds = xr.Dataset({k: xr.Variable(d, v, a) for k, (d, v, a) in data.items()}, coords=coords,
                    attrs=info)
    if analysis is not None:
        extra = _analysis_dataset(analysis, K, G)
        ds = ds.merge(extra)
        ds.attrs = {**info, **extra.attrs}
    extra = dict(attrs or {})
    clash = sorted(set(extra) & (set(ds.attrs) | {DIGEST, "information_gap",
                                                   "information_gap_actual", "analysis_epsilon",
                                                   "analysis_summary", "kappa_c", "kappa_s",
                                                   "roles"}))
    if clash:
        raise ValueError(f"attrs may not override the attributes mimfast writes: {clash}")
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, np.number)) \
                or isinstance(value, bool):
            raise TypeError(f"attrs must map names to str, int or float; got {key!r}: "
                            f"{type(value).__name__}")
    ds.attrs.update(extra)
    return ds


def _canonical(value):
    """Bytes of an attribute value that survive a NetCDF round trip unchanged."""
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, (bytes, np.bytes_)):
        return b"b" + bytes(value)
    arr = np.asarray(value)
    if arr.ndim:
        return b"a" + b"|".join(_canonical(v) for v in arr.tolist())
    if arr.dtype.kind in "iub":
        return b"i" + str(int(arr)).encode()
    if arr.dtype.kind == "f":
        return b"f" + float(arr).hex().encode()
    return b"r" + repr(value).encode()


def digest(ds):
    """SHA-256 over every variable (name, dimensions, dtype, values) and every attribute of a
    results dataset, except the stored digest itself (hex string)."""
    h = hashlib.sha256()
    attrs = {k: v for k, v in ds.attrs.items() if k != DIGEST}
    for name in sorted(attrs):
        h.update(b"\0A" + name.encode() + b"=" + _canonical(attrs[name]))
    for name in sorted(map(str, ds.variables)):
        var = ds.variables[name]
        h.update(b"\0V" + name.encode() + b"(" + ",".join(map(str, var.dims)).encode() + b")")
        for key in sorted(var.attrs):
            h.update(b"\0a" + str(key).encode() + b"=" + _canonical(var.attrs[key]))
        values = np.asarray(var.values)
        if values.dtype.kind in "OUS":
            h.update(b"T" + "\0".join(map(str, values.ravel().tolist())).encode("utf-8",
                                                                               "surrogatepass"))
        else:
            h.update(values.dtype.str.encode() + str(values.shape).encode())
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


def _pad_int(rows, G):
    out = np.zeros((len(rows), G), dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


def _analysis_dataset(analysis, K, G):
    xr = _xarray()

    def field(name, missing=-1, dtype=np.int64):
        out = np.full((K, G), missing, dtype=dtype)
        for c in analysis.classes:
            v = getattr(c, name)
            out[c.k, c.h] = missing if v is None else v
        return ("cluster", "query_group"), out

    dims_int = {"phase_switch": "first recorded step where the own feature has the largest FP "
                                "gradient (-1: never)",
                "convergence_time": "T_eps, first recorded step with own-area attention >= "
                                    "1 - eps (-1: never)",
                "global_fp_min_step": "recorded step of the global FP minimum (-1: none)"}
    variables = {name: xr.Variable(*field(name), {"long_name": text})
                 for name, text in dims_int.items()}
    variables["irreducible_loss"] = xr.Variable(
        *field("irreducible", np.nan, np.float64),
        {"long_name": "irreducible part of E[l | k, h]: z_h^2 Pr(U_own = 0) / 2"})
    variables["global_fp_min"] = xr.Variable(
        *field("global_fp_min", np.nan, np.float64),
        {"long_name": "minimum over the run of the global FP correlation"})
    holds = [-1 if c.holds is None else int(c.holds) for c in analysis.claims]
    variables["claim_holds"] = xr.Variable(
        ("claim",), np.array(holds, dtype=np.int8),
        {"long_name": "claim of the paper holds (1), fails (0), not applicable (-1)"})
    variables["claim_detail"] = xr.Variable(("claim",), [c.detail for c in analysis.claims])
    variables["claim_statement"] = xr.Variable(("claim",), [c.statement for c in analysis.claims])
    variables["claim_source"] = xr.Variable(
        ("claim",), [c.source for c in analysis.claims],
        {"long_name": "where the paper makes the claim"})
    variables["claim_trusted"] = xr.Variable(
        ("claim",), np.array([c.trusted for c in analysis.claims], dtype=np.int8),
        {"long_name": "1, or 0 when the run's GD steps were too large to follow the gradient "
                      "flow (the claim is untrusted)"})
    attrs = {"analysis_epsilon": analysis.epsilon, "analysis_summary": analysis.table()}
    if analysis.delta is not None:
        attrs["information_gap"] = analysis.delta
        attrs["information_gap_actual"] = analysis.delta_actual
    return xr.Dataset(variables, coords={"claim": [c.name for c in analysis.claims]},
                      attrs=attrs)


def save(result, path, analysis=None, attrs=None):
    """Write ``result`` (and its analysis) to a NetCDF results file, atomically.

    The file is written next to ``path`` and renamed over it, so an interrupted save never
    leaves a truncated file behind.

    Parameters
    ----------
    result : Result
    path : str or Path
    analysis : Analysis, optional
    attrs : dict, optional
        Extra global attributes.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    ds = to_dataset(result, analysis, attrs)
    ds.attrs[DIGEST] = digest(ds)
    encoding = {name: {"fletcher32": True, "chunksizes": var.shape}
                for name, var in ds.variables.items()
                if var.dtype.kind in "iuf" and var.ndim and 0 not in var.shape}
    with atomic_output(path) as tmp:
        ds.to_netcdf(tmp, engine=ENGINE, encoding=encoding)
        with open(tmp, "rb") as f:
            sha = _sha256(f, os.path.getsize(tmp))
        with open(tmp, "ab") as f:  # NetCDF readers ignore bytes after the HDF5 end of file
            f.write(b"\nmimfast-sha256:" + sha.encode() + b"\n")
    return path


def _sha256(f, n):
    """SHA-256 (hex) of the first ``n`` bytes of the open binary file ``f``."""
    h = hashlib.sha256()
    while n > 0:
        chunk = f.read(min(n, 1 << 20))
        if not chunk:
            break
        h.update(chunk)
        n -= len(chunk)
    return h.hexdigest()


def _check_trailer(path, required=False):
    """Refuse a file whose checksum trailer does not match its bytes (see the module notes).

    A file without a trailer (format 1, or a foreign file) is left to the NetCDF reader,
    unless ``required``."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        m = None
        if size >= _TRAILER_LEN:
            f.seek(size - _TRAILER_LEN)
            m = _TRAILER.search(f.read())
        if m is None:
            if required:
                raise ResultFileError(f"{path} has no checksum trailer: it is empty, cut "
                                      "short or not written by this mimfast")
            return
        f.seek(0)
        sha = _sha256(f, size - _TRAILER_LEN)
    if sha != m.group(1).decode():
        raise ResultFileError(f"{path} fails its checksum: the file is corrupt (changed after "
                              "mimfast wrote it)")


def check_file(path):
    """Check a results file's checksum trailer without parsing the file.

    Cheap next to :func:`load` (one pass of SHA-256 over the bytes); it finds any changed,
    cut or missing byte of a file :func:`save` wrote.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ResultFileError
        When the file has no trailer (empty, cut short, or foreign) or fails its checksum.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such results file: {path}")
    try:
        _check_trailer(path, required=True)
    except OSError as exc:
        raise ResultFileError(f"cannot read {path} ({exc})") from None


def open_dataset(path):
    """Read a results file into memory as an :class:`xarray.Dataset`.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ResultFileError
        When it is not a readable mimfast results file.
    """
    xr = _xarray()

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such results file: {path}")
    try:
        _check_trailer(path)
    except OSError as exc:
        raise ResultFileError(f"cannot read {path} ({exc})") from None
    try:
        with xr.open_dataset(path, engine=ENGINE) as ds:
            ds = ds.load()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt file can fail anywhere in the readers
        raise ResultFileError(f"{path} is not a readable NetCDF file "
                              f"({type(exc).__name__}: {exc})") from None
    version = ds.attrs.get("mimfast_format")
    if version is None:
        raise ResultFileError(f"{path} is a NetCDF file but not a mimfast results file")
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ResultFileError(f"{path} has an unreadable results format {version!r}") from None
    if version > FORMAT or version < 1:
        raise ResultFileError(f"{path} has results format {version}; this mimfast reads 1 to "
                              f"{FORMAT} (a newer mimfast, or a corrupt file)")
    if version >= 2:
        stored = ds.attrs.get(DIGEST)
        try:
            ok = isinstance(stored, str) and digest(ds) == stored
        except Exception:  # noqa: BLE001 - values a corrupt file made unreadable
            ok = False
        if not ok:
            raise ResultFileError(f"{path} fails its checksum: the file is corrupt (changed "
                                  "after mimfast wrote it)")
    return ds


def from_dataset(ds):
    """Rebuild the :class:`Result` stored in a results dataset (see :func:`to_dataset`)."""
    try:
        result = _from_dataset(ds)
        result.check()
        return result
    except (KeyError, ValueError, TypeError, IndexError, AttributeError, OverflowError) as exc:
        raise ResultFileError(f"incomplete or inconsistent mimfast results file ({exc})") from None


def _from_dataset(ds):
    result = _result_from_dataset(ds)
    a = ds.attrs
    if result.is_flow and "flow_rtol" in a:
        result.rtol, result.epsilon = float(a["flow_rtol"]), float(a["flow_epsilon"])
        result.next_step = float(a["flow_next_step"])
        result.events = {(str(n), int(k), int(h)): float(v)
                         for n, k, h, v in json.loads(str(a["flow_events"]))}
        if "flow_evaluations" in a:  # absent from files written before it was saved
            result.evaluations = _count(a["flow_evaluations"], "flow_evaluations")
    return result


def _count(value, name):
    """A saved count: a non-negative integer (ValueError otherwise)."""
    if isinstance(value, (bool, np.bool_)) or int(value) != value or value < 0:
        raise ValueError(f"{name} = {value} is not a count")
    return int(value)


def _result_from_dataset(ds):
    a = ds.attrs
    areas, size, z = ds["areas"].values, ds["size"].values, ds["z"].values
    weights = ds["weight"].values
    roles = json.loads(str(a["roles"])) if "roles" in a else [None] * len(weights)
    if not isinstance(roles, list) or len(roles) != len(weights):
        raise ValueError(f"roles {a['roles']!r} is not one role list (or null) per cluster")
    clusters, sizes = [], []
    for k, w in enumerate(weights):
        G = int(np.count_nonzero(areas[k]))
        if roles[k] is not None and not isinstance(roles[k], list):
            raise ValueError(f"roles of cluster {k} is {roles[k]!r}, not a list")
        clusters.append(Cluster([Group(int(areas[k, h]), int(size[k, h]), float(z[k, h]))
                                 for h in range(G)], weight=float(w),
                                roles=None if roles[k] is None else tuple(roles[k])))
        sizes.append(G)
    setting = Setting(clusters, masked=int(a["masked"]), pp=str(a["pp"]))
    if "kappa_c" in a:
        setting._with_kappa((float(a["kappa_c"]), float(a["kappa_s"])))

    def per(name):
        return [ds[name].values[:, k, :G, : 1 + G] for k, G in enumerate(sizes)]

    pp = ds["pp"].values if "pp" in ds else None
    state = State([ds["state_fp"].values[k, :G, : 1 + G].copy() for k, G in enumerate(sizes)],
                  ds["state_pp"].values.copy() if "state_pp" in ds else None)
    state.check(setting)
    return Result(
        setting, str(a["backend"]), float(a["eta"]), ds["step"].values, ds["loss"].values,
        per("fp"), per("fp_grad"), per("attention"),
        [ds["patch_loss"].values[:, k, :G] for k, G in enumerate(sizes)], pp, state,
        float(a["dropped"]), last_step=int(a["last_step"]), record_every=int(a["record_every"]),
        tail_tol=float(a["tail_tol"]) if float(a.get("tail_tol", -1)) > 0 else None,
        method=str(a.get("method", "exact")),
        error=ds["error"].values if "error" in ds else None,
        tolerance_met=bool(int(a.get("tolerance_met", 1))),
        levels=_levels(a), tau=ds["tau"].values if "tau" in ds else None)


# files written before the quadrature had levels under 6 nodes store LEVELS indices into this
LEVELS_BEFORE_NODES = (6, 9, 13, 19, 28, 42, 63, 94, 141, 211, 316)


def _levels(attrs):
    """Quadrature levels per class from a file's node counts (or an older file's indices)."""
    if "quadrature_nodes" in attrs:
        nodes = json.loads(str(attrs["quadrature_nodes"]))
    else:
        nodes = json.loads(str(attrs.get("quadrature_levels", "{}")))
        old = range(len(LEVELS_BEFORE_NODES))
        if any(int(i) not in old for v in nodes.values() for i in v):
            raise ValueError(f"quadrature levels {nodes} out of range")
        nodes = {key: [LEVELS_BEFORE_NODES[int(i)] for i in v] for key, v in nodes.items()}
    return {tuple(int(i) for i in key.split(",")): [level_of(int(n)) for n in v]
            for key, v in nodes.items()}


def load(path):
    """Load the :class:`Result` saved in a results file.

    Raises
    ------
    FileNotFoundError, ResultFileError
    """
    return from_dataset(open_dataset(path))


def equal(a, b):
    """Whether two results are equal bit for bit: setting, run parameters, every recorded
    trajectory and the state after the last completed step."""
    s = a.setting
    if (s != b.setting or s.kappa != b.setting.kappa or a.backend != b.backend
            or not np.array_equal(a.eta, b.eta, equal_nan=True)  # nan: gradient flow
            or not np.array_equal(a.tau, b.tau)
            or a.record_every != b.record_every or a.last_step != b.last_step
            or a.tail_tol != b.tail_tol or a.method != b.method
            or not np.array_equal(a.error, b.error) or a.levels != b.levels
            or a.dropped != b.dropped or not np.array_equal(a.steps, b.steps)
            or not np.array_equal(a.loss, b.loss)):
        return False
    for k, h in s.classes():
        for key in ["own"] + list(range(len(s.clusters[k].groups))):
            for name in ("fp", "fp_grad", "attention"):
                if not np.array_equal(getattr(a, name)(k, h, key), getattr(b, name)(k, h, key)):
                    return False
        if not np.array_equal(a.patch_loss(k, h), b.patch_loss(k, h)):
            return False
    states = [(a.state.fp, b.state.fp)]
    if s.pp == "exact":
        G = len(s.clusters[0].groups)
        for h in range(G):
            for key in ["self", "own"] + list(range(G)):
                if not np.array_equal(a.pp(h, key), b.pp(h, key)):
                    return False
        states.append(([a.state.pp], [b.state.pp]))
    return all(len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))
               for x, y in states)


def table(result):
    """The trajectories as a flat :class:`pandas.DataFrame`, one row per (step, k, h).

    Columns: ``step``, ``cluster``, ``group``, ``class``, ``loss`` (population), ``patch_loss``,
    ``loss_gap``, then ``attention_<key>``, ``fp_<key>``, ``fp_grad_<key>`` and (exact PP)
    ``pp_<key>`` for the keys ``own``, ``group0``, ... (and ``self`` for PP).
    """
    pd = require("pandas", "the trajectory table")

    from .analysis import class_name, loss_gap, paper_shaped

    s = result.setting
    paper = paper_shaped(s)
    n = len(result.steps)
    parts = []
    for k, h in s.classes():
        G = len(s.clusters[k].groups)
        cols = {"step": result.steps, **({"tau": result.tau} if result.is_flow else {}),
                "cluster": np.full(n, k), "group": np.full(n, h),
                "class": np.full(n, class_name(s, k, h, paper), dtype=object),
                "loss": result.loss, "patch_loss": result.patch_loss(k, h),
                "loss_gap": loss_gap(result, k, h)}
        for name in ("attention", "fp", "fp_grad"):
            for key, label in zip(["own"] + list(range(G)), _keys(G)):
                cols[f"{name}_{label}"] = getattr(result, name)(k, h, key)
        if s.pp == "exact":
            for key, label in zip(["self", "own"] + list(range(G)), _keys(G, pp=True)):
                cols[f"pp_{label}"] = result.pp(h, key)
        parts.append(cols)
    # one concatenation per column (O(classes)); a column a class lacks is NaN there
    names = list(dict.fromkeys(name for cols in parts for name in cols))
    missing = np.full(n, np.nan)
    data = {name: np.concatenate([cols.get(name, missing) for cols in parts]) for name in names}
    return pd.DataFrame(data).sort_values(["step", "cluster", "group"], kind="stable",
                                          ignore_index=True)


def export(result, path):
    """Write :func:`table` to ``path``: Parquet for a ``.parquet`` suffix, else CSV.

    CSV floats are written with full precision (they read back to the same float64).

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    df = table(result)
    with atomic_output(path) as tmp:
        if path.suffix == ".parquet":
            try:
                df.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise ImportError(f"Parquet export needs pyarrow or fastparquet ({exc}); "
                                  "use a .csv path instead") from None
        else:
            df.to_csv(tmp, index=False)
    return path

"""The run-file reader: :class:`RunReader`, and :class:`Journal` for random access to recorded chip calls.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

A reader opens a run file while it is written (SWMR) or after its writer was killed, refuses
files that are not hil run files or of a newer layout, and turns HDF5's errors on damaged files
into :class:`hil.errors.RunFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hil.errors import LayoutVersionError, RunFileError
from hil.ops import OP_NAMES, OPS
from hil.runs.layout import CALL_DTYPE, JOURNAL_OPS, LAYOUT_NAME, LAYOUT_VERSION
from hil.runs.liveness import pid_alive
from hil.runs.metadata import RunStart, RunStop, decode_attr

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What h5py raises on a damaged file, depending on where the damage is.
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


#: Largest read of one dataset (bytes); a run file's datasets are read whole only below it.
MAX_READ_BYTES = 2 * 2**30
#: Most logical bytes per stored byte a dataset may claim: deflate's limit is about 1032.
MAX_EXPANSION = 1100
#: How long to look again at a file that fails to open while its writer is alive (s).
BUSY_RETRY_S = 1.0


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum of HDF5 metadata (superblock v2/3)."""
    m = 0xFFFFFFFF
    n, i = len(data), 0
    a = b = c = (0xDEADBEEF + n + initval) & m
    while n > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & m
        a = ((a - c) & m) ^ _rot(c, 4)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 6)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 8)
        b = (b + a) & m
        a = ((a - c) & m) ^ _rot(c, 16)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 19)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 4)
        b = (b + a) & m
        n, i = n - 12, i + 12
    if n == 0:
        return c
    tail = data[i:] + b"\0" * (12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c = ((c ^ b) - _rot(b, 14)) & m
    a = ((a ^ c) - _rot(c, 11)) & m
    b = ((b ^ a) - _rot(a, 25)) & m
    c = ((c ^ b) - _rot(b, 16)) & m
    a = ((a ^ c) - _rot(c, 4)) & m
    b = ((b ^ a) - _rot(a, 14)) & m
    c = ((c ^ b) - _rot(b, 24)) & m
    return c


#: File-locking settings tried in turn for a read-only open. HDF5 refuses to open a file twice in
#: one process with different locking settings ("file locking flag values don't match"), and the
#: first handle may be anyone's: plain h5py and xarray use HDF5's default (``None``), hil's writer
#: ``False``. The default comes first so that a later plain ``h5py.File(path)`` in this process
#: also works while a RunReader holds the file; ``False`` last also reads a file whose lock is
#: taken by another process's writer or that sits on a file system without locks.
LOCKING_MODES: tuple[bool | str | None, ...] = (None, False, True, "best-effort")


def open_matching_lock(path: Path, **kwargs: Any) -> h5py.File:
    """``h5py.File(path, "r")`` with the first locking setting HDF5 accepts (see :data:`LOCKING_MODES`)."""
    first: BaseException | None = None
    for mode in LOCKING_MODES:
        try:
            return h5py.File(path, "r", locking=mode, **kwargs)
        except OSError as exc:
            text = str(exc).lower()
            if "lock" not in text:  # not a locking problem: damaged, missing, busy
                raise
            first = first or exc
    assert first is not None
    raise first


def _open_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise RunFileError(f"{path}: no such file. Give the path of a .h5 run file (see `hil ls`).")
    if path.is_dir():
        raise RunFileError(f"{path} is a folder, not a run file. Give the path of a .h5 run file (see `hil ls {path}`).")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            signed = head == _HDF5_SIGNATURE or any(
                fh.seek(off) == off and fh.read(8) == _HDF5_SIGNATURE for off in (512, 1024, 2048)
            )
    except OSError as exc:
        raise RunFileError(f"cannot read {path}: {exc}") from exc
    if not signed:
        raise RunFileError(f"{path} is not an HDF5 file (no HDF5 signature), so it is not a hil run file.")
    # A file marked open for writing ("status flags" in its superblock) is being written, or its
    # writer died inside a write. HDF5 opens such a file only in SWMR mode, whose reader retries
    # checksum failures for minutes, so a damaged one would hang it. Instead it is read through a
    # view whose superblock has the flags cleared (what `h5clear -s` does, without changing the
    # file), in plain mode, which fails fast; a live writer's file is then reopened in SWMR mode
    # (RunReader does that). While a writer is inside one of its short writes a plain open may
    # see metadata in flux: look again for up to BUSY_RETRY_S before calling the file damaged.
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        eof, flags, valid = _superblock(path)
        size = path.stat().st_size
        if eof is not None and not valid:
            raise RunFileError(f"{path} is damaged (corrupted): its superblock checksum is wrong.")
        if eof is not None and size < eof and not flags:
            raise RunFileError(f"{path} is damaged (truncated or corrupted): {size} bytes on disk, its superblock says {eof}.")
        try:
            if flags:
                return h5py.File(FlagsClearedView(path), "r", locking=False)
            return open_matching_lock(path)
        except _H5_ERRORS as exc:
            error = str(exc)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RunFileError(f"{path} is damaged (truncated or corrupted): HDF5 says {error}")


class FlagsClearedView(io.RawIOBase):
    """A read-only view of an HDF5 file whose v2/3 superblock has its status flags cleared.

    Serves the file's bytes, except bytes 11 (flags) and 44-47 (superblock checksum, recomputed),
    so HDF5 opens a file left marked "open for writing" by a killed writer in plain read mode.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        head = bytearray(self._fh.read(48))
        head[11] = 0
        head[44:48] = lookup3(bytes(head[:44])).to_bytes(4, "little")
        self._head = bytes(head)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self._fh.seek(self._pos)
        n = self._fh.readinto(view)
        if n and self._pos < len(self._head):
            k = min(n, len(self._head) - self._pos)
            view[:k] = self._head[self._pos : self._pos + k]
        self._pos += n or 0
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def read_dataset(ds: Any, path: Path, where: str, stop: int | None = None) -> np.ndarray:
    """``ds[:stop]`` after checking it is a dataset and that the read is bounded by what the file holds.

    A crafted file can declare a shape of 10**9 rows with no data behind it (HDF5 then returns fill
    values), so a read must not cost more than the bytes actually stored allow.
    """
    if not isinstance(ds, h5py.Dataset):
        raise RunFileError(f"{path}: {where} is a {type(ds).__name__}, not a dataset (damaged or crafted file).")
    rows = ds.shape[0] if ds.ndim else 1
    n = rows if stop is None else max(0, min(rows, stop))
    per_row = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64)) if ds.ndim else ds.dtype.itemsize
    want = n * per_row
    stored = ds.id.get_storage_size()
    if want > MAX_READ_BYTES or want > MAX_EXPANSION * stored + (1 << 20):
        raise RunFileError(
            f"{path}: {where} declares {want} bytes but the file stores {stored} for it; the file is damaged or crafted."
        )
    try:
        return ds[:n] if ds.ndim else np.asarray(ds[()])
    except _H5_ERRORS as exc:
        raise RunFileError(f"{path}: {where} cannot be read (corrupted?): {exc}") from exc


def typed(ds: Any, dtype: np.dtype, path: Path, where: str, stop: int | None = None) -> np.ndarray:
    """:func:`read_dataset` of a 1-D dataset that must hold ``dtype`` (same field names and kinds)."""
    if isinstance(ds, h5py.Dataset) and (ds.ndim != 1 or not _same_layout(ds.dtype, dtype)):
        raise RunFileError(
            f"{path}: {where} has dtype {ds.dtype} and shape {ds.shape}; expected 1-D {dtype} (damaged or crafted)."
        )
    return read_dataset(ds, path, where, stop)


def _same_layout(have: np.dtype, want: np.dtype) -> bool:
    if want.names is None:
        return have.names is None and have.kind == want.kind and have.itemsize == want.itemsize
    if have.names != want.names:
        return False
    return all(_same_layout(have.fields[n][0], want.fields[n][0]) for n in want.names)


#: Most links a run file may hold (a run has a few hundred; the bound keeps a crafted file's walk short).
MAX_LINKS = 100_000


def check_structure(f: h5py.File, path: Path) -> None:
    """Refuse anything that would make a reader look outside the file: external links, soft links,
    external storage and virtual datasets (hil writes none of them), and more links than a run holds."""
    problems: list[str] = []
    count = 0

    def visit(name: str, link: Any) -> Any:
        nonlocal count
        count += 1
        if count > MAX_LINKS:
            problems.append(f"more than {MAX_LINKS} objects")
            return True
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"an external link /{name} -> {link.filename}:{link.path}")
        elif isinstance(link, h5py.SoftLink):
            problems.append(f"a soft link /{name} -> {link.path}")
        else:
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    problems.append(f"a virtual dataset /{name}")
                elif obj.external:
                    problems.append(f"a dataset /{name} stored in external file(s) {[e[0] for e in obj.external][:3]}")
        return True if problems else None

    f.visititems_links(visit)
    if problems:
        raise RunFileError(
            f"{path} holds {problems[0]} that points outside the file; hil reads nothing outside a run file "
            "(it was crafted, or written by another tool)."
        )


def _superblock(path: Path) -> tuple[int | None, int, bool]:
    """(end-of-file address, status flags, checksum valid) of a v2/3 superblock at offset 0.

    (None, 0, True) for other superblocks (hil writes version 3).
    """
    with open(path, "rb") as fh:
        sb = fh.read(48)
    if len(sb) < 48 or sb[:8] != _HDF5_SIGNATURE or sb[8] not in (2, 3) or sb[9] != 8:
        return None, 0, True
    base = int.from_bytes(sb[12:20], "little")
    valid = lookup3(sb[:44]) == int.from_bytes(sb[44:48], "little")
    return base + int.from_bytes(sb[28:36], "little"), sb[11] & 0x05, valid  # bit 0: write, bit 2: SWMR write


def _text_attr(attrs: Any, key: str) -> str:
    value = decode_attr(attrs.get(key, ""))
    return value if isinstance(value, str) else ""


@dataclass(frozen=True)
class StreamInfo:
    """A stream's declaration as a reader sees it (see :meth:`RunReader.stream_info`)."""

    units: dict[str, str]
    long_names: dict[str, str]
    dims: dict[str, tuple[str, ...]]
    row_dim: str = "row"
    x: str | None = None

    def label(self, column: str) -> str:
        """An axis label: the long name (or the column name) and the units in brackets."""
        text = self.long_names.get(column, column)
        return f"{text} [{self.units[column]}]" if column in self.units else text


@dataclass(frozen=True)
class JournalCall:
    """One recorded chip call: its fields are the validated arguments and the result."""

    index: int
    op: str
    fields: dict[str, Any]
    t_chip: float
    t_wall: float
    dt_wall: float
    error: tuple[str, str] | None = None


class Journal:
    """Random access to the recorded chip calls of a run file (only calls whose data is complete)."""

    #: Element tables up to this size are read into memory at once; larger ones by slices.
    CACHE_BYTES = 64 * 2**20

    def __init__(self, f: h5py.File, path: Path) -> None:
        self._path = path
        g = f.get("journal")
        if g is not None and not isinstance(g, h5py.Group):
            raise RunFileError(f"{path}: /journal is not a group (damaged or crafted file).")
        calls = np.zeros(0, CALL_DTYPE)
        if g is not None and "calls" in g:
            calls = typed(g["calls"], CALL_DTYPE, path, "/journal/calls")
        known = np.isin(calls["op"], list(OP_NAMES))
        limit = int(np.argmin(known)) if not known.all() else calls.shape[0]  # an unknown op code ends the journal
        self._ops: dict[str, tuple[np.ndarray, dict[str, tuple[np.ndarray, Any]]]] = {}
        for op_name, spec in OPS.items():
            schema = spec.encoding
            if g is None or op_name not in g:
                continue
            og = g[op_name]
            if not isinstance(og, h5py.Group):
                raise RunFileError(f"{path}: /journal/{op_name} is not a group (damaged or crafted file).")
            call = np.zeros(0, schema.call)
            if "call" in og:
                call = typed(og["call"], schema.call, path, f"/journal/{op_name}/call")
            n_rows = call.shape[0]
            tables: dict[str, tuple[np.ndarray, Any]] = {}
            table_dtypes = dict(schema.tables)
            for name, length in schema.lengths(call).items():
                ds = og.get(name)
                want = table_dtypes[name]
                if ds is not None and not (isinstance(ds, h5py.Dataset) and ds.ndim == 1 and _same_layout(ds.dtype, want)):
                    raise RunFileError(f"{path}: /journal/{op_name}/{name} is not a 1-D {want} table (damaged or crafted).")
                size = 0 if ds is None else ds.shape[0]
                # Element counts in float: a crafted call row can make their sum overflow int64.
                ends = np.cumsum(np.asarray(length, dtype=np.float64))
                complete = int(np.searchsorted(ends, size, side="right"))  # calls whose elements are all there
                n_rows = min(n_rows, complete)
                offsets = np.concatenate([[0], ends[:n_rows]]).astype(np.int64)
                cached = ds is not None and ds.size * ds.dtype.itemsize <= self.CACHE_BYTES
                data = read_dataset(ds, path, f"/journal/{op_name}/{name}") if cached else ds
                tables[name] = (offsets, data)
            self._ops[op_name] = (call, tables)
            # Keep only calls whose op row is complete in every table of that op.
            bad = np.flatnonzero((calls["op"] == JOURNAL_OPS[op_name]) & (calls["row"] >= n_rows))
            if bad.size:
                limit = min(limit, int(bad[0]))
        missing = np.setdiff1d(np.unique(calls["op"][:limit]), [JOURNAL_OPS[o] for o in self._ops])
        if missing.size:  # calls of an op whose group never reached the file
            limit = int(np.flatnonzero(np.isin(calls["op"], missing))[0])
        self.calls = calls[:limit]
        self.errors: dict[int, tuple[str, str]] = {}
        if g is not None and "errors" in g:
            from hil.runs.layout import ERROR_DTYPE

            for row in typed(g["errors"], ERROR_DTYPE, path, "/journal/errors"):
                text = row["message"].decode("utf-8", "replace")
                self.errors[int(row["call"])] = (row["type"].decode("utf-8", "replace"), text)

    def __len__(self) -> int:
        return int(self.calls.shape[0])

    def op(self, i: int) -> str:
        return OP_NAMES[int(self.calls["op"][i])]

    def counts(self) -> dict[str, int]:
        """Number of calls per operation."""
        ops, n = np.unique(self.calls["op"], return_counts=True)
        return {OP_NAMES[int(o)]: int(c) for o, c in zip(ops, n, strict=True)}

    def call(self, i: int) -> JournalCall:
        """The i-th recorded call (fields as numpy arrays and Python scalars)."""
        if not 0 <= i < len(self):
            raise IndexError(f"call {i} is outside the journal's {len(self)} calls")
        rec = self.calls[i]
        op = OP_NAMES[int(rec["op"])]
        row = int(rec["row"])
        try:
            call, tables = self._ops[op]
            parts = {}
            for name, (offsets, data) in tables.items():
                parts[name] = data[int(offsets[row]) : int(offsets[row + 1])]
            fields = OPS[op].encoding.decode(call[row], parts)
        except _H5_ERRORS as exc:
            raise RunFileError(f"{self._path}: journal call {i} ({op}) cannot be read (corrupted?): {exc}") from exc
        return JournalCall(
            index=i,
            op=op,
            fields=fields,
            t_chip=float(rec["t_chip"]),
            t_wall=float(rec["t_wall"]),
            dt_wall=float(rec["dt_wall"]),
            error=self.errors.get(i) if rec["error"] else None,
        )

    def __iter__(self) -> Iterator[JournalCall]:
        for i in range(len(self)):
            yield self.call(i)


def _guarded(method: Any) -> Any:
    """Turn h5py's errors on a damaged file into :class:`RunFileError` naming the file."""

    @functools.wraps(method)
    def wrapper(self: RunReader, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except RunFileError:
            raise
        except _H5_ERRORS as exc:
            raise RunFileError(
                f"{self.path} is damaged (truncated or corrupted): {method.__name__} failed ({type(exc).__name__}: {exc})."
            ) from exc

    return wrapper


class RunReader:
    """Reads a run file (also while it is written, or after its writer was killed).

    Raises :class:`RunFileError` for a file that is not HDF5, not a hil run file, or damaged, and
    :class:`LayoutVersionError` for a newer layout. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f = _open_h5(self.path)
        try:
            self.attrs: dict[str, Any] = {k: decode_attr(v) for k, v in self._f.attrs.items()}
        except _H5_ERRORS as exc:
            self._f.close()
            raise RunFileError(
                f"{self.path} is damaged (truncated or corrupted): its attributes cannot be read ({exc})."
            ) from exc
        arrays = [k for k, v in self.attrs.items() if isinstance(v, np.ndarray)]
        if arrays:
            self._f.close()
            raise RunFileError(f"{self.path}: attribute {arrays[0]!r} is an array; run metadata are scalars (damaged, crafted).")
        if self.attrs.get("hil_layout") != LAYOUT_NAME:
            self._f.close()
            raise RunFileError(
                f"{self.path} is an HDF5 file but not a hil run file (no hil_layout='{LAYOUT_NAME}' attribute)."
            )
        version = self.attrs.get("hil_layout_version")
        if not isinstance(version, int) or version < 1:
            self._f.close()
            raise RunFileError(f"{self.path} has an invalid layout version {version!r}; the file is damaged.")
        if version > LAYOUT_VERSION:
            self._f.close()
            raise LayoutVersionError(
                f"{self.path} uses run-file layout version {version}; this hil reads versions up to "
                f"{LAYOUT_VERSION}. Upgrade hil to read it."
            )
        try:
            check_structure(self._f, self.path)
        except RunFileError:
            self._f.close()
            raise
        except _H5_ERRORS as exc:
            self._f.close()
            raise RunFileError(f"{self.path} is damaged (truncated or corrupted): its structure cannot be read ({exc}).") from exc
        self._journal: Journal | None = None
        self._start: RunStart | None = None
        self._reopen_swmr_if_written()

    def _reopen_swmr_if_written(self) -> None:
        """A file marked open for writing whose writer is alive: read it as a SWMR reader (safe
        against the writer's appends) instead of through the flags-cleared view."""
        if _superblock(self.path)[1] and self.effective_status == "running":
            try:
                f = open_matching_lock(self.path, swmr=True)
            except _H5_ERRORS:
                return  # the view opened; keep it
            self._f.close()
            self._f = f

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    # ------------------------------------------------------------------ metadata
    @property
    def start(self) -> RunStart:
        """The run's start document (identity, protocol, config, seed, chip, provenance)."""
        if self._start is None:
            self._start = RunStart.from_attrs(self.attrs, where=str(self.path))
        return self._start

    @property
    def stop(self) -> RunStop | None:
        """The run's stop document, or None while the file says ``status=running``."""
        if self.attrs.get("status", "running") == "running":
            return None
        return RunStop.from_attrs(self.attrs, where=str(self.path))

    def _json_attr(self, key: str, default: Any) -> Any:
        raw = self.attrs.get(key)
        if raw in (None, ""):
            return default
        try:
            return json.loads(raw)
        except (TypeError, ValueError) as exc:
            raise RunFileError(f"{self.path}: attribute {key} is not valid JSON (damaged file?): {exc}") from exc

    @property
    def run_id(self) -> str:
        return self.start.run_id or self.path.stem

    @property
    def protocol(self) -> str:
        return self.start.protocol

    @property
    def config(self) -> dict[str, Any]:
        return self.start.config

    @property
    def seed(self) -> int:
        return self.start.seed

    @property
    def chip_spec(self) -> str:
        return self.start.chip_spec

    @property
    def chip_info(self) -> dict[str, Any]:
        return self.start.chip_info

    @property
    def geometry(self) -> dict[str, Any]:
        return self.start.geometry

    @property
    def summary(self) -> dict[str, Any]:
        return self._json_attr("summary_json", {})

    @property
    def status(self) -> str:
        """Status as written: running, success, abort or fail."""
        return str(self.attrs.get("status", "running"))

    @property
    def effective_status(self) -> str:
        """Like :attr:`status`, but a run whose writer process is gone is ``incomplete``."""
        status = self.status
        if status != "running":
            return status
        if self.attrs.get("host") == socket.gethostname() and not pid_alive(
            int(self.attrs.get("pid", 0)), float(self.attrs.get("started_unix", 0.0))
        ):
            return "incomplete"
        return "running"

    def metadata(self) -> dict[str, Any]:
        """All metadata, JSON attributes decoded, plus ``effective_status``."""
        out: dict[str, Any] = {}
        for key, value in self.attrs.items():
            if key.endswith("_json"):
                out[key[:-5]] = self._json_attr(key, None)
            else:
                out[key] = value
        out["effective_status"] = self.effective_status
        out["path"] = str(self.path)
        return out

    # ------------------------------------------------------------------ streams
    def _group(self, name: str) -> h5py.Group | None:
        g = self._f.get(name)
        if g is not None and not isinstance(g, h5py.Group):
            raise RunFileError(f"{self.path}: /{name} is a {type(g).__name__}, not a group (damaged or crafted file).")
        return g

    @_guarded
    def streams(self) -> list[str]:
        g = self._group("streams")
        return sorted(g.keys()) if g is not None else []

    @_guarded
    def columns(self, stream: str) -> list[str]:
        """The user columns of ``stream`` in the order they were first logged."""
        g = self._stream_group(stream)
        if "columns" in g.attrs:
            raw = decode_attr(g.attrs["columns"])
            try:
                cols = json.loads(raw) if isinstance(raw, str) and len(raw) <= 65536 else None
            except ValueError:
                cols = None
            if not (isinstance(cols, list) and all(isinstance(c, str) for c in cols)):
                raise RunFileError(f"{self.path}: stream {stream!r} has a malformed 'columns' attribute (damaged, crafted).")
            return cols
        return sorted(k for k in g if not k.startswith("_"))

    def _stream_group(self, stream: str) -> h5py.Group:
        g = self._group("streams")
        if g is None or stream not in g:
            raise RunFileError(f"{self.path} has no stream {stream!r}; streams: {', '.join(self.streams()) or '(none)'}")
        sg = g[stream]
        if not isinstance(sg, h5py.Group):
            raise RunFileError(f"{self.path}: stream {stream!r} is not a group (damaged or crafted file).")
        for name, ds in sg.items():
            if not isinstance(ds, h5py.Dataset) or ds.ndim == 0:
                raise RunFileError(f"{self.path}: stream {stream!r} column {name!r} is not an array (damaged or crafted).")
        return sg

    @_guarded
    def n_rows(self, stream: str) -> int:
        """Complete rows of ``stream`` (a killed writer may leave one column a batch longer)."""
        g = self._stream_group(stream)
        return min((g[k].shape[0] for k in g), default=0)

    @_guarded
    def column_info(self, stream: str) -> dict[str, tuple[str, tuple[int, ...]]]:
        """Column name -> (dtype, per-row shape)."""
        g = self._stream_group(stream)
        return {k: (str(g[k].dtype), tuple(g[k].shape[1:])) for k in self.columns(stream) if k in g}

    @_guarded
    def stream(self, stream: str, *, meta: bool = False) -> dict[str, np.ndarray]:
        """All complete rows of a stream: column -> array (strings decoded); ``meta`` adds _t_wall, _call."""
        g = self._stream_group(stream)
        n = self.n_rows(stream)
        names = [*self.columns(stream), *(["_t_wall", "_call"] if meta else [])]
        out: dict[str, np.ndarray] = {}
        for name in names:
            if name not in g:
                continue
            data = read_dataset(g[name], self.path, f"stream {stream!r} column {name!r}", n)
            if data.dtype.kind == "S":
                data = np.char.decode(data, "utf-8", "replace")
            out[name] = data
        return out

    def column(self, stream: str, name: str) -> np.ndarray:
        return self.stream(stream, meta=name.startswith("_"))[name]

    @_guarded
    def stream_info(self, stream: str) -> StreamInfo:
        """What ``run.declare`` said about ``stream``: units, long names, dimension names, x column.

        Files without declarations (older ones, undeclared streams) get the defaults: no units, row
        dimension ``row``, per-row axes ``<column>_dim<k>``.
        """
        g = self._stream_group(stream)
        cols = self.columns(stream)
        row_dim = _text_attr(g.attrs, "row_dim") or ("_row" if "row" in cols else "row")
        x = _text_attr(g.attrs, "x")
        units: dict[str, str] = {}
        long_names: dict[str, str] = {}
        dims: dict[str, tuple[str, ...]] = {}
        for name in [*cols, "_t_wall", "_call"]:
            if name not in g:
                continue
            ds = g[name]
            if u := _text_attr(ds.attrs, "units"):
                units[name] = u
            if ln := _text_attr(ds.attrs, "long_name"):
                long_names[name] = ln
            declared: Any = None
            raw = _text_attr(ds.attrs, "dims")
            if raw and len(raw) <= 65536:
                with contextlib.suppress(ValueError):
                    declared = json.loads(raw)
            ndim = ds.ndim - 1
            if (isinstance(declared, list) and len(declared) == ndim + 1 and all(isinstance(d, str) for d in declared)
                    and len(set(declared)) == len(declared)):
                dims[name] = tuple(declared[1:])
            else:
                dims[name] = tuple(f"{name}_dim{k + 1}" for k in range(ndim))
        return StreamInfo(units=units, long_names=long_names, dims=dims, row_dim=row_dim,
                          x=x if x in cols else None)

    def to_xarray(self, stream: str) -> Any:
        """``stream`` as an ``xarray.Dataset``: one variable per column (values as :meth:`stream`
        returns them) on the row dimension and the declared per-row dimensions, with ``units`` and
        ``long_name`` attributes; ``_t_wall``, ``_call`` and the declared x column are coordinates."""
        from hil.runs.export import stream_to_xarray

        return stream_to_xarray(self, stream)

    def to_dataframe(self, stream: str) -> Any:
        """``stream`` as a ``pandas.DataFrame``, one row per logged row: scalar columns as they are,
        per-row arrays spread over columns ``name[i]`` / ``name[i,j]`` (C order), then ``_t_wall`` and
        ``_call``. Units are in ``df.attrs["units"]``."""
        from hil.runs.export import stream_to_dataframe

        return stream_to_dataframe(self, stream)

    # ------------------------------------------------------------------ inputs
    @_guarded
    def input_info(self) -> dict[str, dict[str, Any]]:
        """Input name -> {dtype, shape, sha256, source} of the arrays stored under ``/inputs``."""
        g = self._group("inputs")
        if g is None:
            return {}
        return {
            name: {"dtype": str(ds.dtype), "shape": list(ds.shape), "sha256": str(decode_attr(ds.attrs.get("sha256", ""))),
                   "source": str(decode_attr(ds.attrs.get("source", "")))}
            for name, ds in g.items() if isinstance(ds, h5py.Dataset)
        }

    def inputs(self) -> dict[str, np.ndarray]:
        """The run's input arrays, each checked against its recorded sha256 (:class:`RunFileError` if not)."""
        from hil.runs.writer import array_sha256

        out: dict[str, np.ndarray] = {}
        for name, info in self.input_info().items():
            ds = self._f["inputs"][name]
            arr = read_dataset(ds, self.path, f"input {name!r}") if ds.ndim else np.asarray(ds[()])
            if array_sha256(arr) != info["sha256"]:
                raise RunFileError(
                    f"{self.path}: input {name!r} does not match its recorded sha256 {info['sha256'][:12]}...; "
                    "the file was altered or damaged."
                )
            out[name] = arr
        return out

    # ------------------------------------------------------------------ journal and notes
    @property
    def journal(self) -> Journal:
        if self._journal is None:
            try:
                self._journal = Journal(self._f, self.path)
            except _H5_ERRORS as exc:
                raise RunFileError(f"{self.path}: the journal cannot be read (corrupted?): {exc}") from exc
        return self._journal

    @_guarded
    def notes(self) -> list[tuple[float, str]]:
        if "notes" not in self._f:
            return []
        from hil.runs.layout import NOTE_DTYPE

        rows = typed(self._f["notes"], NOTE_DTYPE, self.path, "/notes")
        return [(float(r["t_wall"]), r["text"].decode("utf-8", "replace")) for r in rows]

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def verify(self) -> dict[str, int]:
        """Read every dataset through its checksums; raises :class:`RunFileError` naming a damaged one."""
        counts = {"datasets": 0, "bytes": 0}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                if obj.ndim:
                    read_dataset(obj, self.path, f"dataset /{name}", 0)  # refuses shapes the file cannot hold
                    want = obj.dtype.itemsize * int(np.prod(obj.shape, dtype=np.float64))
                    if want > MAX_EXPANSION * obj.id.get_storage_size() + (1 << 20):
                        raise RunFileError(f"{self.path}: dataset /{name} declares {want:.0f} bytes the file does not hold.")
                try:
                    step = max(1, (16 << 20) // max(1, obj.dtype.itemsize * int(np.prod(obj.shape[1:], dtype=np.int64))))
                    for lo in range(0, obj.shape[0] if obj.ndim else 1, step):
                        block = obj[lo : lo + step] if obj.ndim else obj[()]
                        counts["bytes"] += int(np.asarray(block).nbytes)
                except _H5_ERRORS as exc:
                    raise RunFileError(f"{self.path} is damaged (corrupted): dataset /{name} cannot be read ({exc}).") from exc
                counts["datasets"] += 1

        try:
            self._f.visititems(visit)
        except RunFileError:
            raise
        except _H5_ERRORS as exc:
            raise RunFileError(f"{self.path} is damaged (corrupted): {exc}") from exc
        return counts


def repair(path: str | os.PathLike[str]) -> bool:
    """Clear the "open for writing" flags a killed writer left (what ``h5clear -s`` does); True if cleared.

    Only for a run whose writer is gone (refused while it is alive on this host): afterwards
    h5ls, h5dump and plain h5py open the file too. The file must open through hil first.
    """
    p = Path(path)
    with RunReader(p) as r:
        if r.effective_status == "running":
            raise RunFileError(f"{p} is being written by pid {r.start.pid}; repair it after that process has stopped.")
    _eof, flags, valid = _superblock(p)
    if not flags:
        return False
    if not valid:
        raise RunFileError(f"{p} is damaged (corrupted): its superblock checksum is wrong; it cannot be repaired.")
    with open(p, "r+b") as fh:
        head = bytearray(fh.read(48))
        head[11] = 0
        head[44:48] = lookup3(bytes(head[:44])).to_bytes(4, "little")
        fh.seek(0)
        fh.write(head)
        fh.flush()
        os.fsync(fh.fileno())
    return True


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Just the metadata of a run file (validated like :class:`RunReader`), for indexing."""
    with RunReader(path) as reader:
        meta = dict(reader.attrs)
        meta["effective_status"] = reader.effective_status
        return meta

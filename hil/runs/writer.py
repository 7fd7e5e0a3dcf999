"""The run-file writer: :class:`RunWriter` and its flush thread.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Crash safety: the writer buffers rows in memory and a background thread writes them at least every
``flush_interval_s`` (0.25 s). Each write opens the file, creates any new datasets, switches to SWMR
mode (so HDF5 orders its metadata writes and a kill leaves a consistent file), appends and closes
again. Between writes the file is closed and clean: a process killed with SIGKILL leaves a file that
opens in any HDF5 tool, holds everything up to the last write, and still says ``status=running``; the
reader reports such a run as ``incomplete`` once its writer process is gone. A reader may open the
file while it is written (SWMR read).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hil.errors import RunFileError
from hil.ops import OPS
from hil.runs.columns import StreamSpec, declare_stream, prepare_rows
from hil.runs.layout import (
    CALL_DTYPE,
    ERROR_DTYPE,
    LAYOUT_NAME,
    LAYOUT_VERSION,
    LIBVER,
    NETCDF_GROUP,
    NOT_A_VARIABLE,
    NOTE_BYTES,
    NOTE_DTYPE,
)
from hil.runs.metadata import RunStart, RunStop, now_iso

#: Background flush interval (s): rows logged reach the file within about twice this.
FLUSH_INTERVAL_S = 0.25
#: Space set aside beside a run file while it is written (bytes), freed to write the final status
#: cleanly when the disk fills up.
RESERVE_BYTES = 256 << 10
#: Free space a flush keeps beyond its own estimate (bytes): HDF5 metadata, the index, other writers.
FREE_MARGIN_BYTES = 256 << 10


class DiskFullError(RunFileError):
    """The disk has no room for the next write; nothing of it was written, the file stays consistent."""


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on the file system of ``folder``."""
    st = os.statvfs(folder)
    return int(st.f_bavail) * int(st.f_frsize)
_LARGE_BLOCK = 1 << 20  # blocks of at least this many bytes are written without joining them first
#: A write of at least this many bytes (a journal of large MVMs: tens of MB a second) is synced and
#: its pages dropped from the page cache at once: the file's pages are then reused instead of the
#: page cache growing by every byte written, whose fresh pages cost the kernel more CPU than the
#: copy itself (0.9-2.1 ms of kernel CPU per MB on the test VM, 3 GB in 3 MB writes, against 0.26 ms/MB
#: synced and dropped every 120 MB); it also puts the data on disk within a flush interval.
SYNC_DROP_BYTES = 8 << 20
MAX_PENDING_BYTES = 256 * 2**20
#: How long a flush keeps retrying to open a busy file (HDF5 refuses to open for writing a file that
#: this same process has open read-only, e.g. a RunReader left open during the run).
OPEN_RETRY_S = 30.0


def _clip_text(text: str, n: int = NOTE_BYTES) -> bytes:
    raw = text.encode("utf-8", "replace")
    return raw if len(raw) <= n else raw[: n - 3] + b"..."


def _shuffled(arr: np.ndarray) -> bytes:
    """Bytes of ``arr`` reordered like HDF5's shuffle filter (byte planes), for a compression trial."""
    flat = np.ascontiguousarray(arr).reshape(-1)
    if flat.dtype.itemsize == 1 or flat.dtype.kind in "SV":
        return flat.tobytes()
    return flat.view(np.uint8).reshape(-1, flat.dtype.itemsize).T.tobytes()


def _compression_pays(sample: np.ndarray) -> bool:
    """Deflate only data it shrinks by a quarter or more (a trial on up to 64 kB of the first rows)."""
    flat = sample.reshape(-1)
    raw = _shuffled(flat[: max(1, (64 * 1024) // max(1, flat.dtype.itemsize))])
    if len(raw) < 4096:
        return True  # tiny data: compressed chunks also avoid allocating whole empty chunks
    return len(zlib.compress(raw, 1)) < 0.75 * len(raw)


#: Journal tables of MVM inputs and results: with ``compression="auto"`` they are not deflated once
#: one call moves at least this many bytes (MVM-heavy runs: deflate at level 1 costs about three times
#: the emulator's own time per call on 2 cores, python -m tests.benchmarks.bench_runs --inference).
THROUGHPUT_FIRST_BYTES = 256 * 1024
_THROUGHPUT_TABLES = ("journal/mvm/x", "journal/mvm/y")


def _throughput_first(series: Any) -> bool:
    return series.path in _THROUGHPUT_TABLES and series.first_block >= THROUGHPUT_FIRST_BYTES


def _chunks(trailing: tuple[int, ...], itemsize: int, first_rows: int) -> tuple[int, ...]:
    """Chunk shape for a dataset growing along axis 0: 16 kB-1 MB (the first rows' size), at most 4 MB."""
    row_bytes = max(1, int(np.prod(trailing, dtype=np.int64)) * itemsize)
    # About one flush's worth of rows: later flushes then mostly fill new chunks instead of
    # re-reading and re-compressing a partly filled one.
    target = min(1 << 20, max(16 << 10, first_rows * row_bytes))
    rows = int(min(1 << 16, max(1, target // row_bytes)))
    chunk = [rows, *trailing]
    while np.prod(chunk, dtype=np.int64) * itemsize > 4 << 20:
        axis = int(np.argmax(chunk[1:])) + 1
        chunk[axis] = max(1, chunk[axis] // 2)
    return tuple(int(c) for c in chunk)





def write_netcdf_view(f: h5py.File, stream: str, spec: StreamSpec, names: list[str]) -> None:
    """``/netcdf/<stream>``: hard links to the stream's datasets plus HDF5 dimension scales, so
    netCDF-4 readers (``xarray.open_dataset(path, group="netcdf/<stream>", engine="h5netcdf")``) see
    named dimensions. The scales hold no data ("a netCDF dimension but not a netCDF variable"); the
    row dimension is unlimited, so its length is that of the datasets. Nothing under ``/streams``
    changes, so readers of layout 1 read the file as before.
    """
    src = f[f"streams/{stream}"]
    g = f.require_group(NETCDF_GROUP).create_group(stream)
    g.attrs["stream"] = stream
    g.attrs["run_id"] = str(f.attrs.get("run_id", ""))
    scales: dict[str, h5py.Dataset] = {}

    def scale(name: str, size: int | None) -> h5py.Dataset:
        if name not in scales:
            if size is None:
                ds = g.create_dataset(name, shape=(0,), maxshape=(None,), dtype="<f4", chunks=(1,))
            else:
                ds = g.create_dataset(name, shape=(size,), dtype="<f4")
            ds.make_scale(NOT_A_VARIABLE.decode() + f"{0 if size is None else size:10d}")
            scales[name] = ds
        return scales[name]

    row = scale(spec.row_dim, None)
    coords = " ".join(c for c in (spec.declared.x, "_t_wall", "_call") if c)
    for name in names:
        ds = src[name]
        g[name] = ds
        ds.dims[0].attach_scale(row)
        for axis, (dim, size) in enumerate(zip(spec.dims.get(name, ()), ds.shape[1:], strict=True), start=1):
            ds.dims[axis].attach_scale(scale(dim, int(size)))
        if name in spec.columns and name != spec.declared.x:
            ds.attrs["coordinates"] = coords


def array_sha256(arr: np.ndarray) -> str:
    """sha256 (hex) of an array's values: its C-order bytes in little-endian byte order."""
    a = np.ascontiguousarray(arr)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return hashlib.sha256(a.tobytes()).hexdigest()


def write_inputs(f: h5py.File, inputs: Mapping[str, Any]) -> None:
    """``/inputs/<name>``: each input array with attributes ``sha256`` and ``source`` (provenance)."""
    g = f.create_group("inputs")
    for name, value in inputs.items():
        arr, source = value if isinstance(value, tuple) else (value, "")
        arr = np.asarray(arr)
        if arr.dtype.kind not in "biuf":
            raise RunFileError(f"input {name!r} has dtype {arr.dtype}; inputs are arrays of numbers or booleans.")
        kwargs: dict[str, Any] = {}
        if arr.ndim and arr.size:  # checksummed chunks (HDF5 picks their shape); deflate where it pays
            kwargs = {"fletcher32": True, "chunks": True}
            if arr.nbytes > 4096 and _compression_pays(arr):
                kwargs.update(compression="gzip", compression_opts=1, shuffle=arr.dtype.itemsize > 1)
        ds = g.create_dataset(name, data=arr, **kwargs)
        ds.attrs["sha256"] = array_sha256(arr)
        ds.attrs["source"] = str(source)


def _prefix(batch: list[tuple[Any, list[np.ndarray]]], frac: float) -> list[tuple[Any, list[np.ndarray]]]:
    """The first ``frac`` of the rows of every series of a write batch (series with none left out)."""
    out = []
    for series, segments in batch:
        keep = int(sum(seg.shape[0] for seg in segments) * frac)
        taken: list[np.ndarray] = []
        for seg in segments:
            if keep <= 0:
                break
            taken.append(seg[:keep])
            keep -= taken[-1].shape[0]
        if taken:
            out.append((series, taken))
    return out


def _narrowed(arr: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``arr`` cast to the integer ``dtype``, refusing values it cannot hold."""
    if arr.size:
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise RunFileError(f"{where}: value {lo if lo < info.min else hi} does not fit {dtype} "
                               f"[{info.min}, {info.max}], the range the chip declared for its results.")
    return arr.astype(dtype)


class _Series:
    """One appendable dataset (rows of a fixed dtype and trailing shape) and its unwritten rows."""

    __slots__ = ("attrs", "blocks", "created", "dtype", "first_block", "n_pending", "n_written", "path", "row_mode",
                 "rows", "shape")

    def __init__(self, path: str, dtype: Any, shape: tuple[int, ...] = (), *, row_mode: bool, attrs: dict | None = None):
        self.path = path
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.row_mode = row_mode  # rows arrive one by one (scalars/tuples) instead of as arrays
        self.attrs = attrs or {}
        self.blocks: list[np.ndarray] = []
        self.rows: list[Any] = []
        self.n_pending = 0
        self.n_written = 0
        self.created = False
        self.first_block = 0  # bytes of the first block pushed (one call's elements, for journal tables)

    def take(self) -> list[np.ndarray] | None:
        """The pending rows as a list of arrays (small blocks joined, large ones as they are)."""
        if not self.n_pending:
            return None
        if self.row_mode:
            segments = [np.asarray(self.rows, dtype=self.dtype).reshape(-1, *self.shape)]
            self.rows = []
        else:
            segments, small = [], []
            for block in self.blocks:
                if block.nbytes >= _LARGE_BLOCK:
                    if small:
                        segments.append(self._join(small))
                        small = []
                    segments.append(block)  # written as it is: no extra copy of large arrays
                else:
                    small.append(block)
            if small:
                segments.append(self._join(small))
            self.blocks = []
        self.n_pending = 0
        return segments

    def _join(self, blocks: list[np.ndarray]) -> np.ndarray:
        if len(blocks) == 1:
            return blocks[0]
        if self.dtype.names:
            # Structured rows: join the bytes (numpy's concatenate re-checks the fields of every block).
            data = np.concatenate([np.ascontiguousarray(b).view(np.uint8).reshape(-1) for b in blocks])
            return data.view(self.dtype).reshape(-1, *self.shape)
        return np.concatenate(blocks)


class RunWriter:
    """Writes one run file: metadata attributes, data streams, the chip-call journal and notes.

    ``start`` is the run's :class:`RunStart` document (or its attributes), written at creation,
    with ``inputs`` (name -> array or (array, source)) under ``/inputs``. Rows are
    buffered and written by a background thread at least every ``flush_interval_s`` seconds;
    :meth:`flush` writes synchronously and :meth:`close` writes the final status. The writer is a
    critical sink: if a write fails, the next :meth:`log` or :meth:`journal` raises
    :class:`RunFileError` so the run stops cleanly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        start: RunStart | Mapping[str, Any],
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        compression: str = "auto",
        max_pending_bytes: int = MAX_PENDING_BYTES,
        fsync: bool = False,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        if compression not in ("auto", "gzip", "none"):
            raise RunFileError(f"compression={compression!r}; use 'auto', 'gzip' or 'none'.")
        if not 0.01 <= flush_interval_s <= 1.0:
            raise RunFileError(f"flush_interval_s={flush_interval_s}; allowed [0.01, 1.0] s (data must reach disk every second).")
        self.path = Path(path)
        self._compression = compression
        self._flush_interval = flush_interval_s
        self._max_pending = max_pending_bytes
        self._fsync = fsync
        if not isinstance(start, RunStart):
            start = RunStart.from_attrs(dict(start), where=f"RunWriter({self.path.name})", strict=True)
        t0 = time.time()
        update: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
        if not start.started_unix:
            update["started_unix"] = t0
        if not start.started_at:
            update["started_at"] = now_iso(update.get("started_unix", start.started_unix))
        self.start = start.model_copy(update=update)
        base = {"hil_layout": LAYOUT_NAME, "hil_layout_version": LAYOUT_VERSION, "status": "running", **self.start.to_attrs()}
        try:
            with h5py.File(self.path, "w-", libver=LIBVER, locking=False) as f:
                for key, value in base.items():
                    f.attrs[key] = value
                f.create_group("streams")
                f.create_group("journal")
                if inputs:
                    write_inputs(f, inputs)
        except FileExistsError as exc:
            raise RunFileError(f"{self.path} already exists; refusing to overwrite a run file.") from exc
        except (OSError, TypeError, ValueError) as exc:
            raise RunFileError(f"cannot create run file {self.path}: {exc}") from exc
        self._reserve = self.path.with_name(f".{self.path.name}.reserve")
        try:
            with open(self._reserve, "wb") as fh:
                fh.write(b"\0" * RESERVE_BYTES)
        except OSError as exc:
            self._reserve.unlink(missing_ok=True)
            self.path.unlink(missing_ok=True)
            raise DiskFullError(
                f"not enough free space beside {self.path} to start a run ({free_bytes(self.path.parent)} bytes free; "
                f"a run keeps {RESERVE_BYTES} in reserve): {exc.strerror or exc}. Free some space or use another --out."
            ) from exc
        self._hdf5_failed = False
        #: Every root attribute written so far (layout, start document, then the stop document).
        self.attrs = base
        self.stop: RunStop | None = None
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._io_lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._group_attrs: dict[str, dict[str, Any]] = {}
        self._streams: dict[str, StreamSpec] = {}
        self._views_pending: list[str] = []  # streams whose netCDF view is written with their datasets
        self._op_rows = dict.fromkeys(OPS, 0)
        self._op_series: dict[str, tuple[_Series, dict[str, _Series]]] = {}
        self._narrow: dict[tuple[str, str], np.dtype] = {}  # journal tables stored in a smaller int type
        self._n_calls = 0
        self._pending_bytes = 0
        self._flush_requested = 0
        self._flushed = 0
        self._closing = False
        self._closed = False
        self._error: BaseException | None = None
        self.n_flushes = 0
        #: CPU seconds the writer thread used (set when it stops).
        self.cpu_s = 0.0
        self._calls = self._new_series("journal/calls", CALL_DTYPE, row_mode=True)
        self._thread = threading.Thread(target=self._flush_loop, name=f"hil-runwriter-{self.path.name}", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ public API
    @property
    def n_calls(self) -> int:
        """Chip calls journaled so far."""
        return self._n_calls

    def stream_rows(self, stream: str) -> int:
        """Rows logged so far to ``stream`` (0 if it was never logged)."""
        spec = self._streams.get(stream)
        return spec.n_rows if spec else 0

    def declare(self, stream: str, **declaration: Any) -> None:
        """Units, long names, per-row dimension names and the x column of a stream, before its first
        rows (see :meth:`hil.RunLog.declare`)."""
        self._raise_if_failed()
        with self._cond:
            self._streams[stream] = declare_stream(stream, self._streams.get(stream), **declaration)

    def log(self, stream: str, **columns: Any) -> None:
        """Append rows to ``stream`` (see :meth:`hil.RunLog.log` for the rules)."""
        self._raise_if_failed()
        with self._cond:
            known = self._streams.get(stream)
            spec, converted, n_rows = prepare_rows(stream, columns, known)
            if known is None or not known.columns:
                decl = spec.declared
                for name, (dtype, shape) in spec.columns.items():
                    # `_Encoding`: how netCDF readers (xarray) know these bytes are UTF-8 text.
                    attrs: dict[str, Any] = {"encoding": "utf-8", "_Encoding": "utf-8"} if dtype.kind == "S" else {}
                    if name in decl.units:
                        attrs["units"] = decl.units[name]
                    if name in decl.long_names:
                        attrs["long_name"] = decl.long_names[name]
                    attrs["dims"] = json.dumps([spec.row_dim, *spec.dims[name]])
                    self._new_series(f"streams/{stream}/{name}", dtype, shape, row_mode=False, attrs=attrs)
                self._new_series(f"streams/{stream}/_t_wall", "<f8", row_mode=False, attrs={"units": "s (unix time)"})
                self._new_series(
                    f"streams/{stream}/_call", "<u8", row_mode=False, attrs={"meaning": "journal calls before the row"}
                )
                group = {"columns": json.dumps(list(spec.columns)), "row_dim": spec.row_dim}
                if decl.x is not None:
                    group["x"] = decl.x
                self._group_attrs[f"streams/{stream}"] = group
                self._streams[stream] = spec
                self._views_pending.append(stream)
            for name, arr in converted.items():
                # Copy: the protocol may change its array after logging it.
                self._push_block(f"streams/{stream}/{name}", np.array(arr, copy=True))
            self._push_block(f"streams/{stream}/_t_wall", np.full(n_rows, time.time()))
            self._push_block(f"streams/{stream}/_call", np.full(n_rows, self._n_calls, dtype=np.uint64))
            spec.n_rows += n_rows
        self._backpressure()

    def journal(
        self,
        op: str,
        fields: dict[str, Any],
        *,
        t_chip: float,
        t_wall: float,
        dt_wall: float,
        error: BaseException | tuple[str, str] | None = None,
    ) -> int:
        """Record one chip call; returns its index. Missing result fields (a call that raised) are stored as 0."""
        self._raise_if_failed()
        series = self._op_series.get(op)
        if series is None:
            spec = OPS.get(op)
            if spec is None:
                raise RunFileError(f"unknown journal op {op!r}; known: {', '.join(OPS)}")
            enc = spec.encoding
            series = (
                self._new_series(f"journal/{op}/call", enc.call, row_mode=True),
                {name: self._new_series(f"journal/{op}/{name}", self._narrow.get((op, name), dt), row_mode=False)
                 for name, dt in enc.tables},
            )
            self._op_series[op] = series
        row, tables = OPS[op].encoding.encode(fields)
        for name in tables:
            if (op, name) in self._narrow:  # checked before anything is queued: a refusal leaves no half call
                tables[name] = _narrowed(tables[name], self._narrow[(op, name)], f"journal/{op}/{name}")
        with self._cond:
            call_series, table_series = series
            call_series.rows.append(row)
            call_series.n_pending += 1
            for name, arr in tables.items():
                # Copy: the caller may reuse its arrays after the call.
                self._push_block_series(table_series[name], arr if arr.base is None and arr.flags.owndata else arr.copy())
            index = self._n_calls
            self._calls.rows.append((OPS[op].code, self._op_rows[op], t_chip, t_wall, dt_wall, error is not None))
            self._calls.n_pending += 1
            self._pending_bytes += CALL_DTYPE.itemsize + call_series.dtype.itemsize
            self._op_rows[op] += 1
            self._n_calls += 1
            if error is not None:
                etype, emsg = (
                    (f"{type(error).__module__}.{type(error).__qualname__}", str(error))
                    if isinstance(error, BaseException)
                    else error
                )
                key = "journal/errors"
                errors = self._series.get(key) or self._new_series(key, ERROR_DTYPE, row_mode=True)
                errors.rows.append((index, _clip_text(etype, 128), _clip_text(emsg)))
                errors.n_pending += 1
        self._backpressure()
        return index

    def note(self, text: str) -> None:
        """Append a human-readable note (at most 1024 UTF-8 bytes are kept)."""
        self._raise_if_failed()
        with self._cond:
            series = self._series.get("notes") or self._new_series("notes", NOTE_DTYPE, row_mode=True)
            series.rows.append((time.time(), _clip_text(str(text))))
            series.n_pending += 1
            self._pending_bytes += NOTE_DTYPE.itemsize

    def flush(self, timeout_s: float = 600.0) -> None:
        """Write everything logged so far to the file now (returns when it is on disk)."""
        with self._cond:
            if self._closed:
                return
            self._flush_requested += 1
            target = self._flush_requested
            self._cond.notify_all()
            deadline = time.monotonic() + timeout_s
            while self._flushed < target and self._error is None and self._thread.is_alive():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunFileError(f"flushing {self.path} took longer than {timeout_s} s.")
                self._cond.wait(left)
        self._raise_if_failed()

    def move_to(self, path: str | os.PathLike[str]) -> None:
        """Atomically rename the run file to ``path`` (replacing a file there) and keep writing it there."""
        with self._io_lock:
            os.replace(self.path, path)
            self.path = Path(path)
            reserve = self.path.with_name(f".{self.path.name}.reserve")
            with contextlib.suppress(OSError):
                os.replace(self._reserve, reserve)
                self._reserve = reserve

    def set_attrs(self, **attrs: Any) -> None:
        """Write (new or changed) metadata attributes now."""
        self.flush()
        with self._io_lock, h5py.File(self.path, "r+", libver=LIBVER, locking=False) as f:
            for key, value in attrs.items():
                f.attrs[key] = value
        self.attrs.update(attrs)

    def close(self, stop: RunStop | None = None, **final_attrs: Any) -> None:
        """Write the remaining rows and the stop document (status, reason, summary, ...), stop the thread.

        ``stop``: the run's :class:`RunStop`; or its fields as attributes (``status="success"``,
        ``summary_json=...``); nothing: the file keeps ``status=running`` (an incomplete run).
        """
        if stop is not None:
            final_attrs = {**stop.to_attrs(), **final_attrs}
        unknown = sorted(set(final_attrs) - set(RunStop.attr_names()))
        if unknown:
            raise RunFileError(f"close() got unknown run metadata {unknown}; valid: {', '.join(RunStop.attr_names())}.")
        if self._closed:
            return
        error: BaseException | None = None
        try:
            self.flush()
        except RunFileError as exc:
            error = exc
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        self._closed = True
        self._reserve.unlink(missing_ok=True)  # room for the final status, on a full disk too
        if self._hdf5_failed:
            # HDF5 failed inside a write: the library's state for this file is not to be trusted
            # (reopening it can crash the process), so the file keeps status=running (incomplete).
            raise error or RunFileError(f"writing {self.path} failed inside HDF5")
        if final_attrs and error is not None:
            final_attrs = {
                **final_attrs, "status": "fail", "exit_reason": "run_file",
                "exception_type": f"{type(error).__module__}.{type(error).__qualname__}",
                "exception_message": str(error)[:4000],
            }
        if final_attrs:
            try:
                with self._io_lock, h5py.File(self.path, "r+", libver=LIBVER, locking=False) as f:
                    for key, value in final_attrs.items():
                        f.attrs[key] = value
                self.attrs.update(final_attrs)
                self.stop = RunStop.from_attrs(final_attrs, where=self.path.name)
            except (OSError, TypeError, ValueError) as exc:
                error = error or RunFileError(f"writing the final status to {self.path} failed: {exc}")
        if error is not None:
            raise error

    # ------------------------------------------------------------------ internals
    def narrow_table(self, op: str, table: str, dtype: Any) -> None:
        """Store journal table ``/journal/<op>/<table>`` in the smaller integer ``dtype`` (one of the
        op's ``Encoding.narrow`` forms, e.g. mvm ``y`` as int16). Call before the op's first call; a
        later value outside ``dtype`` raises :class:`RunFileError` (the chip broke its declared range)."""
        dt = np.dtype(dtype)
        spec = OPS.get(op)
        if spec is None or dt not in dict(spec.encoding.narrow).get(table, ()):
            allowed = [str(d) for d in dict(spec.encoding.narrow).get(table, ())] if spec is not None else []
            raise RunFileError(f"journal table {op}/{table} cannot be stored as {dt}; allowed: {allowed or 'none'}.")
        if op in self._op_series:
            raise RunFileError(f"journal table {op}/{table}: narrow it before the first {op} call.")
        self._narrow[(op, table)] = dt

    def _new_series(
        self, path: str, dtype: Any, shape: tuple[int, ...] = (), *, row_mode: bool, attrs: dict | None = None
    ) -> _Series:
        series = _Series(path, dtype, shape, row_mode=row_mode, attrs=attrs)
        self._series[path] = series
        return series

    def _push_block(self, key: str, arr: np.ndarray) -> None:
        self._push_block_series(self._series[key], arr)

    def _push_block_series(self, series: _Series, arr: np.ndarray) -> None:
        if not series.first_block:
            series.first_block = arr.nbytes
        series.blocks.append(arr)
        series.n_pending += arr.shape[0]
        self._pending_bytes += arr.nbytes

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RunFileError(f"writing run file {self.path} failed: {self._error}") from self._error
        if self._closed:
            raise RunFileError(f"run file {self.path} is closed; nothing more can be logged.")

    def _backpressure(self) -> None:
        if self._pending_bytes <= self._max_pending:
            return
        with self._cond:
            self._flush_requested += 1
            target = self._flush_requested
            self._cond.notify_all()
            while self._flushed < target and self._error is None and self._thread.is_alive():
                self._cond.wait(1.0)
        self._raise_if_failed()

    def _flush_loop(self) -> None:
        t_cpu = time.thread_time()
        try:
            self._flush_loop_body()
        finally:
            self.cpu_s = time.thread_time() - t_cpu

    def _flush_loop_body(self) -> None:
        last = time.monotonic()
        while True:
            with self._cond:
                while True:
                    due = last + self._flush_interval - time.monotonic()
                    if self._closing or self._flush_requested > self._flushed:
                        break
                    if due <= 0 and self._pending_bytes > 0:
                        break
                    self._cond.wait(max(due, 0.005) if due > 0 else self._flush_interval)
                if self._closing and self._flush_requested <= self._flushed:
                    return
                target = self._flush_requested
                batch = [(s, data) for s in list(self._series.values()) if (data := s.take()) is not None]
                self._pending_bytes = 0
            try:
                if batch:
                    self._write(batch)
            except BaseException as exc:  # a critical sink: remember, wake everyone, stop writing
                with self._cond:
                    self._error = exc
                    self._cond.notify_all()
                return
            last = time.monotonic()
            with self._cond:
                self._flushed = max(self._flushed, target)
                self.n_flushes += 1
                self._cond.notify_all()

    def _open_for_append(self) -> h5py.File:
        """Open the file for writing; retry for a while if it is busy (e.g. open read-only in this process)."""
        deadline = time.monotonic() + OPEN_RETRY_S
        while True:
            try:
                return h5py.File(self.path, "r+", libver=LIBVER, locking=False)
            except OSError:
                if time.monotonic() > deadline or self._closing:
                    raise
                time.sleep(0.05)

    def _space_needed(self, batch: list[tuple[_Series, list[np.ndarray]]]) -> int:
        """Bytes a write of ``batch`` may take: its data, plus one chunk per dataset (a partly filled
        last chunk is rewritten, a new dataset allocates its first), plus a margin."""
        need = FREE_MARGIN_BYTES
        for series, segments in batch:
            data = sum(seg.nbytes for seg in segments)
            row = series.dtype.itemsize * int(np.prod(series.shape, dtype=np.int64))
            rows = segments[0].shape[0] if segments else 1
            chunk = int(np.prod(_chunks(series.shape, series.dtype.itemsize, rows), dtype=np.int64)) * series.dtype.itemsize
            need += data + max(chunk, row) + 4096
        return need

    def _write(self, batch: list[tuple[_Series, list[np.ndarray]]]) -> None:
        need, free = self._space_needed(batch), free_bytes(self.path.parent)
        full = need > free
        if full:
            # Write the same leading fraction of every dataset that fits: the layout reads a journal
            # or a stream only as far as all of its datasets reach, so a prefix is a consistent file.
            batch = _prefix(batch, max(0.0, (free - 2 * FREE_MARGIN_BYTES) / need))
        try:
            if batch:
                self._write_hdf5(batch)
        except BaseException:
            self._hdf5_failed = True
            raise
        if full:
            raise DiskFullError(
                f"the disk holding {self.path} is full: the next write needed about {need} bytes, {free} were free. "
                "What fitted is in the file (the journal up to a complete call); free some space and `hil resume` the run."
            )

    def _write_hdf5(self, batch: list[tuple[_Series, list[np.ndarray]]]) -> None:
        with self._io_lock, self._open_for_append() as f:
            # New datasets only outside SWMR mode; then SWMR orders the appends so a kill leaves a
            # consistent file.
            for series, segments in batch:
                if not series.created:
                    self._create(f, series, segments[0])
            self._write_views(f)
            f.swmr_mode = True
            for series, segments in batch:
                ds = f[series.path]
                n = ds.shape[0]
                ds.resize(n + sum(seg.shape[0] for seg in segments), axis=0)
                for seg in segments:
                    ds[n : n + seg.shape[0]] = seg
                    n += seg.shape[0]
                    series.n_written += seg.shape[0]
        large = sum(seg.nbytes for _, segments in batch for seg in segments) >= SYNC_DROP_BYTES
        if self._fsync or large:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if self._fsync:
                    os.fsync(fd)
                else:
                    os.fdatasync(fd)  # dirty pages cannot be dropped
                if large and hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def _write_views(self, f: h5py.File) -> None:
        """The netCDF-4 view of streams whose datasets exist now (before SWMR mode: it adds objects)."""
        for stream in list(self._views_pending):
            names = [*self._streams[stream].columns, "_t_wall", "_call"]
            if all(self._series[f"streams/{stream}/{n}"].created for n in names):
                write_netcdf_view(f, stream, self._streams[stream], names)
                self._views_pending.remove(stream)

    def _create(self, f: h5py.File, series: _Series, data: np.ndarray) -> None:
        itemsize = series.dtype.itemsize
        chunks = _chunks(series.shape, itemsize, data.shape[0])
        compress = self._compression == "gzip" or (
            self._compression == "auto" and not _throughput_first(series) and _compression_pays(data)
        )
        kwargs: dict[str, Any] = {"compression": "gzip", "compression_opts": 1} if compress else {}
        if compress and itemsize > 1 and series.dtype.kind not in "SV":
            kwargs["shuffle"] = True
        ds = f.create_dataset(
            series.path,
            shape=(0, *series.shape),
            maxshape=(None, *series.shape),
            dtype=series.dtype,
            chunks=chunks,
            fletcher32=True,  # a checksum per chunk: damaged data fails to read instead of reading wrong
            **kwargs,
        )
        for key, value in series.attrs.items():
            ds.attrs[key] = value
        for key, value in self._group_attrs.get(series.path.rsplit("/", 1)[0], {}).items():
            ds.parent.attrs[key] = value
        series.created = True

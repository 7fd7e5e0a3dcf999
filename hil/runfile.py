"""HDF5 run files: one file per run, written crash-safely by :class:`RunWriter`, read by :class:`RunReader`.

Layout version 1 (the full description is ``docs/run-file.md``)::

    /                         attrs: hil_layout="hil-run", hil_layout_version=1, run_id, protocol,
                              config_json, seed, chip_spec, chip_backend, chip_info_json,
                              geometry_json, versions_json, host, pid, started_at, started_unix,
                              status (running|success|abort|fail), stopped_at, exit_reason,
                              exception_type, exception_message, summary_json, ...
    /streams/<stream>/<col>   (rows, *shape) chunked, resizable; plus _t_wall (s, unix) and _call
                              (journal calls made before the row was logged)
    /journal/calls            one row per chip call: op (enum), row (index in the op's group),
                              t_chip (s, chip clock after the call), t_wall (s, unix, call start),
                              dt_wall (s), error (0/1)
    /journal/<op>/call        per-call scalars of that operation (compound)
    /journal/<op>/<table>     the elements of every call of that operation, back to back
                              (e.g. apply_pulses/pulses: core, row, col, device, kind,
                              amplitude_ua, width_ns; mvm/x, mvm/y: flat int8 / int32 arrays)
    /journal/errors           call, type, message of calls that raised
    /notes                    t_wall, text

Crash safety: the writer buffers rows in memory and a background thread writes them at least every
``flush_interval_s`` (0.5 s). Each write opens the file, creates any new datasets, switches to SWMR
mode (so HDF5 orders its metadata writes and a kill leaves a consistent file), appends and closes
again. Between writes the file is closed and clean: a process killed with SIGKILL leaves a file that
opens in any HDF5 tool, holds everything up to the last write, and still says ``status=running``; the
reader reports such a run as ``incomplete`` once its writer process is gone. A reader may open the
file while it is written (SWMR read).
"""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hil.errors import HilError

LAYOUT_NAME = "hil-run"
#: Bump on any incompatible change of the layout; readers refuse files of a newer version.
LAYOUT_VERSION = 1
#: HDF5 1.10 file format: the oldest that supports SWMR, and what Debian's hdf5-tools (1.10.8) read.
LIBVER = ("v110", "v110")
FLUSH_INTERVAL_S = 0.5
_LARGE_BLOCK = 1 << 20  # blocks of at least this many bytes are written without joining them first
MAX_PENDING_BYTES = 256 * 2**20
#: How long a flush keeps retrying to open a busy file (HDF5 refuses to open for writing a file that
#: this same process has open read-only, e.g. a RunReader left open during the run).
OPEN_RETRY_S = 30.0
NOTE_BYTES = 1024
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What h5py raises on a damaged file, depending on where the damage is.
_H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")

#: Chip operations the journal records, with their enum code (fixed by layout version 1).
JOURNAL_OPS: dict[str, int] = {
    "now": 0,
    "sleep": 1,
    "apply_pulses": 2,
    "read_devices": 3,
    "read_cells": 4,
    "mvm": 5,
    "set_ldpu": 6,
    "get_ldpu": 7,
}
OP_NAMES: dict[int, str] = {v: k for k, v in JOURNAL_OPS.items()}
OP_DTYPE = h5py.enum_dtype(JOURNAL_OPS, basetype="u1")
CALL_DTYPE = np.dtype(
    [("op", OP_DTYPE), ("row", "<u8"), ("t_chip", "<f8"), ("t_wall", "<f8"), ("dt_wall", "<f4"), ("error", "u1")]
)
ERROR_DTYPE = np.dtype([("call", "<u8"), ("type", "S128"), ("message", f"S{NOTE_BYTES}")])
NOTE_DTYPE = np.dtype([("t_wall", "<f8"), ("text", f"S{NOTE_BYTES}")])

def _table(**fields: str) -> np.dtype:
    return np.dtype(list(fields.items()))


_PULSES = _table(core="<i4", row="<i4", col="<i4", device="u1", kind="u1", amplitude_ua="<f8", width_ns="<f8")
_DEVICE_READS = _table(core="<i4", row="<i4", col="<i4", device="u1", counts="<i4")
_CELL_READS = _table(core="<i4", row="<i4", col="<i4", counts="<i4")
_LDPU_CORES = _table(core="<i4", relu="u1")
_LDPU_REGS = _table(scale="<f2", offset="<f2")


def _records(dtype: np.dtype, fields: dict[str, Any], n: int) -> np.ndarray:
    """One structured row per addressed element; a missing result field (a call that raised) is 0."""
    out = np.zeros(n, dtype=dtype)
    for name in dtype.names or ():
        value = fields.get(name)
        if value is not None:
            out[name] = np.asarray(value).reshape(-1)
    return out


@dataclass(frozen=True)
class OpSchema:
    """How one chip operation is journaled.

    ``call``: per-call scalars (one row of ``/journal/<op>/call`` per call); ``tables``: element
    tables ``/journal/<op>/<name>`` holding every call's elements back to back; ``lengths`` gives
    each call's element count per table from its call row; ``encode``/``decode`` convert between
    the fields a :class:`hil.Chip` backend method sees and this layout.
    """

    call: np.dtype
    tables: tuple[tuple[str, np.dtype], ...]
    encode: Callable[[dict[str, Any]], tuple[tuple[Any, ...], dict[str, np.ndarray]]]
    lengths: Callable[[np.ndarray], dict[str, np.ndarray]]
    decode: Callable[[np.void, dict[str, np.ndarray]], dict[str, Any]]


def _elements_schema(table: str, dtype: np.dtype) -> OpSchema:
    def encode(f: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
        n = int(np.size(f["core"]))
        return (n,), {table: _records(dtype, f, n)}

    return OpSchema(
        call=_table(n="<u4"),
        tables=((table, dtype),),
        encode=encode,
        lengths=lambda calls: {table: calls["n"].astype(np.int64)},
        decode=lambda row, t: {name: np.ascontiguousarray(t[table][name]) for name in dtype.names or ()},
    )


def _mvm_encode(f: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    x, cores = np.asarray(f["x"]), np.asarray(f["cores"]).reshape(-1)
    y = f.get("y")
    y = np.zeros((cores.size, x.shape[1], 0), dtype=np.int32) if y is None else np.asarray(y)
    row = (cores.size, x.shape[1], x.shape[2], y.shape[2], f["x_shared"], f["output"], f["mode"])
    return row, {
        "cores": cores.astype("<i4"),
        "x": x.astype("i1", copy=False).reshape(-1),
        "y": y.astype("<i4", copy=False).reshape(-1),
    }


def _mvm_lengths(calls: np.ndarray) -> dict[str, np.ndarray]:
    n, b = calls["n_cores"].astype(np.int64), calls["batch"].astype(np.int64)
    n_x = np.where(calls["x_shared"] > 0, 1, n)
    return {"cores": n, "x": n_x * b * calls["rows"], "y": n * b * calls["cols"]}


def _mvm_decode(row: np.void, t: dict[str, np.ndarray]) -> dict[str, Any]:
    n, b = int(row["n_cores"]), int(row["batch"])
    n_x = 1 if row["x_shared"] else n
    return {
        "x": t["x"].reshape(n_x, b, int(row["rows"])),
        "x_shared": int(row["x_shared"]),
        "cores": t["cores"],
        "output": int(row["output"]),
        "mode": int(row["mode"]),
        "y": t["y"].reshape(n, b, int(row["cols"])),
    }


def _ldpu_encode(f: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    cores = np.asarray(f["cores"]).reshape(-1)
    scale = f.get("scale")
    cols = 0 if scale is None else int(np.shape(scale)[-1])
    return (cores.size, cols), {
        "cores": _records(_LDPU_CORES, {"core": cores, "relu": f.get("relu")}, cores.size),
        "registers": _records(_LDPU_REGS, f, cores.size * cols),
    }


def _ldpu_decode(row: np.void, t: dict[str, np.ndarray]) -> dict[str, Any]:
    shape = (int(row["n_cores"]), int(row["cols"]))
    return {
        "cores": np.ascontiguousarray(t["cores"]["core"]),
        "scale": np.ascontiguousarray(t["registers"]["scale"]).reshape(shape),
        "offset": np.ascontiguousarray(t["registers"]["offset"]).reshape(shape),
        "relu": np.ascontiguousarray(t["cores"]["relu"]),
    }


def _scalar_schema(name: str) -> OpSchema:
    return OpSchema(
        call=_table(**{name: "<f8"}),
        tables=(),
        encode=lambda f: ((float(f[name]),), {}),
        lengths=lambda calls: {},
        decode=lambda row, t: {name: float(row[name])},
    )


_LDPU = OpSchema(
    call=_table(n_cores="<u4", cols="<u4"),
    tables=(("cores", _LDPU_CORES), ("registers", _LDPU_REGS)),
    encode=_ldpu_encode,
    lengths=lambda calls: {
        "cores": calls["n_cores"].astype(np.int64),
        "registers": calls["n_cores"].astype(np.int64) * calls["cols"],
    },
    decode=_ldpu_decode,
)

#: The journal layout of every operation (fixed by layout version 1). The fields are exactly the
#: validated arguments that :class:`hil.Chip` hands to a backend's ``_`` method, and its result.
OP_SCHEMAS: dict[str, OpSchema] = {
    "now": _scalar_schema("t"),
    "sleep": _scalar_schema("seconds"),
    "apply_pulses": _elements_schema("pulses", _PULSES),
    "read_devices": _elements_schema("reads", _DEVICE_READS),
    "read_cells": _elements_schema("reads", _CELL_READS),
    "mvm": OpSchema(
        call=_table(n_cores="<u4", batch="<u4", rows="<u4", cols="<u4", x_shared="u1", output="u1", mode="u1"),
        tables=(("cores", np.dtype("<i4")), ("x", np.dtype("i1")), ("y", np.dtype("<i4"))),
        encode=_mvm_encode,
        lengths=_mvm_lengths,
        decode=_mvm_decode,
    ),
    "set_ldpu": _LDPU,
    "get_ldpu": _LDPU,
}

MVM_OUTPUT_CODES = {"adc": 0, "ldpu": 1}
MVM_MODE_CODES = {"4phase": 0, "1phase": 1}

STATUSES = ("running", "success", "abort", "fail")


class RunFileError(HilError):
    """A file is not a readable run file (not HDF5, not ours, truncated, corrupted) or cannot be written."""


class LayoutVersionError(RunFileError):
    """The run file was written with a newer layout than this version of hil reads."""


class RunLogError(HilError, ValueError):
    """A protocol logged data that does not fit its stream (names, columns, dtypes, shapes)."""


# ---------------------------------------------------------------------------------------------- helpers
def now_iso(t: float | None = None) -> str:
    """UTC ISO-8601 timestamp with milliseconds."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


def _clip_text(text: str, n: int = NOTE_BYTES) -> bytes:
    raw = text.encode("utf-8", "replace")
    return raw if len(raw) <= n else raw[: n - 3] + b"..."


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return repr(obj)


def to_json(obj: Any) -> str:
    """JSON text of ``obj``; numpy values become plain numbers and lists, anything else its repr."""
    return json.dumps(obj, default=_json_default, allow_nan=True)


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RunLogError(
            f"{kind} name {name!r} is not allowed; use 1-100 letters, digits, '_', '.', '-' "
            "(not starting with '_', which is reserved)."
        )


def _pid_alive(pid: int, started_unix: float) -> bool:
    """Whether process ``pid`` on this host still runs and started before ``started_unix``."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A reused pid belongs to a process that started after the run did.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie no longer writes
            return False
        ticks = os.sysconf("SC_CLK_TCK")
        with open("/proc/stat") as fh:
            btime = next(int(line.split()[1]) for line in fh if line.startswith("btime"))
        return btime + int(fields[19]) / ticks <= started_unix + 2.0
    except (OSError, StopIteration, IndexError, ValueError):
        return True


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


# ---------------------------------------------------------------------------------------------- writer
class _Series:
    """One appendable dataset (rows of a fixed dtype and trailing shape) and its unwritten rows."""

    __slots__ = ("attrs", "blocks", "created", "dtype", "n_pending", "n_written", "path", "row_mode", "rows", "shape")

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


@dataclass
class _StreamSpec:
    name: str
    columns: dict[str, tuple[np.dtype, tuple[int, ...]]]
    n_rows: int = 0


def _as_array(stream: str, name: str, value: Any) -> np.ndarray:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    if arr.dtype.kind not in "biufcS":
        raise RunLogError(
            f"stream {stream!r} column {name!r}: values of type {type(value).__name__} (dtype {arr.dtype}) "
            "cannot be stored; log numbers, booleans, strings or numpy arrays of them."
        )
    return arr


def _declare_dtype(arr: np.ndarray) -> np.dtype:
    if arr.dtype.kind == "S":
        width = max(32, 2 * int(arr.dtype.itemsize))
        return np.dtype(f"S{min(4096, -(-width // 16) * 16)}")
    return arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype


def _cast(stream: str, name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast later rows to the column's declared dtype, refusing lossy kinds and out-of-range values."""
    kind, want = arr.dtype.kind, dtype.kind
    where = f"stream {stream!r} column {name!r}"
    if want == "S":
        if kind != "S":
            raise RunLogError(f"{where} holds strings; got dtype {arr.dtype}. Log strings in this column.")
        if arr.dtype.itemsize > dtype.itemsize and arr.size and int(np.char.str_len(arr).max()) > dtype.itemsize:
            raise RunLogError(
                f"{where} holds strings of at most {dtype.itemsize} bytes (fixed by its first rows); "
                f"got one of {int(np.char.str_len(arr).max())} bytes. Shorten it or log it in a new stream."
            )
        return arr.astype(dtype)
    allowed = {"b": "b", "i": "biu", "u": "bu" if kind == "u" else "biu", "f": "biuf", "c": "biufc"}[want]
    if kind not in allowed:
        raise RunLogError(
            f"{where} is {dtype} (fixed by its first rows); got values of dtype {arr.dtype}. "
            "Log the same kind of value each time (cast explicitly if you mean it)."
        )
    if want in "iu" and arr.size and not np.can_cast(arr.dtype, dtype, "safe"):
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise RunLogError(f"{where} is {dtype}: {bad} is out of its range [{info.min}, {info.max}].")
    return arr.astype(dtype, copy=False)


class RunWriter:
    """Writes one run file: metadata attributes, data streams, the chip-call journal and notes.

    ``attrs`` are the run's metadata (written at creation; see the module docstring). Rows are
    buffered and written by a background thread at least every ``flush_interval_s`` seconds;
    :meth:`flush` writes synchronously and :meth:`close` writes the final status. The writer is a
    critical sink: if a write fails, the next :meth:`log` or :meth:`journal` raises
    :class:`RunFileError` so the run stops cleanly.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        attrs: dict[str, Any],
        *,
        flush_interval_s: float = FLUSH_INTERVAL_S,
        compression: str = "auto",
        max_pending_bytes: int = MAX_PENDING_BYTES,
        fsync: bool = False,
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
        base = {
            "hil_layout": LAYOUT_NAME,
            "hil_layout_version": LAYOUT_VERSION,
            "status": "running",
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_unix": time.time(),
        }
        base.setdefault("started_at", now_iso(base["started_unix"]))
        base.update(attrs)
        try:
            with h5py.File(self.path, "w-", libver=LIBVER, locking=False) as f:
                for key, value in base.items():
                    f.attrs[key] = value
                f.create_group("streams")
                f.create_group("journal")
        except FileExistsError as exc:
            raise RunFileError(f"{self.path} already exists; refusing to overwrite a run file.") from exc
        except (OSError, TypeError, ValueError) as exc:
            raise RunFileError(f"cannot create run file {self.path}: {exc}") from exc
        self.attrs = base
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._io_lock = threading.Lock()
        self._series: dict[str, _Series] = {}
        self._group_attrs: dict[str, dict[str, Any]] = {}
        self._streams: dict[str, _StreamSpec] = {}
        self._op_rows = dict.fromkeys(JOURNAL_OPS, 0)
        self._op_series: dict[str, tuple[_Series, dict[str, _Series]]] = {}
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

    def log(self, stream: str, **columns: Any) -> None:
        """Append rows to ``stream`` (see :meth:`hil.RunLog.log` for the rules)."""
        self._raise_if_failed()
        if not columns:
            raise RunLogError(f"run.log({stream!r}) got no columns; pass at least one keyword, e.g. value=1.0.")
        arrays: dict[str, np.ndarray] = {}
        n_rows = None
        for name, value in columns.items():
            arr = _as_array(stream, name, value)
            if arr.ndim == 0:
                arr = arr.reshape(1)
            if n_rows is None:
                n_rows = arr.shape[0]
            elif arr.shape[0] != n_rows:
                sizes = {k: (1 if np.ndim(v) == 0 else len(v)) for k, v in columns.items()}
                raise RunLogError(
                    f"stream {stream!r}: columns have different row counts {sizes}; every column of one "
                    "log call needs the same number of rows (first axis)."
                )
            arrays[name] = arr
        assert n_rows is not None
        with self._cond:
            spec = self._streams.get(stream)
            if spec is None:
                _check_name("stream", stream)
                for name in arrays:
                    _check_name("column", name)
                cols = {name: (_declare_dtype(a), tuple(a.shape[1:])) for name, a in arrays.items()}
                spec = _StreamSpec(stream, cols)
                order = json.dumps(list(cols))
                for name, (dtype, shape) in cols.items():
                    attrs = {"encoding": "utf-8"} if dtype.kind == "S" else {}
                    self._new_series(f"streams/{stream}/{name}", dtype, shape, row_mode=False, attrs=attrs)
                self._new_series(f"streams/{stream}/_t_wall", "<f8", row_mode=False, attrs={"units": "s (unix time)"})
                self._new_series(
                    f"streams/{stream}/_call", "<u8", row_mode=False, attrs={"meaning": "journal calls before the row"}
                )
                self._group_attrs[f"streams/{stream}"] = {"columns": order}
                self._streams[stream] = spec
            elif set(arrays) != set(spec.columns):
                missing = sorted(set(spec.columns) - set(arrays))
                extra = sorted(set(arrays) - set(spec.columns))
                raise RunLogError(
                    f"stream {stream!r} has columns {list(spec.columns)} (fixed by its first rows); "
                    f"missing {missing}, unexpected {extra}. Log every column each time, or use a new stream."
                )
            converted = {}
            for name, (dtype, shape) in spec.columns.items():
                arr = arrays[name]
                if tuple(arr.shape[1:]) != shape:
                    raise RunLogError(
                        f"stream {stream!r} column {name!r} has rows of shape {shape} (fixed by its first rows); "
                        f"got rows of shape {tuple(arr.shape[1:])}."
                    )
                converted[name] = _cast(stream, name, arr, dtype)
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
            schema = OP_SCHEMAS.get(op)
            if schema is None:
                raise RunFileError(f"unknown journal op {op!r}; known: {', '.join(JOURNAL_OPS)}")
            series = (
                self._new_series(f"journal/{op}/call", schema.call, row_mode=True),
                {name: self._new_series(f"journal/{op}/{name}", dt, row_mode=False) for name, dt in schema.tables},
            )
            self._op_series[op] = series
        row, tables = OP_SCHEMAS[op].encode(fields)
        with self._cond:
            call_series, table_series = series
            call_series.rows.append(row)
            call_series.n_pending += 1
            for name, arr in tables.items():
                # Copy: the caller may reuse its arrays after the call.
                self._push_block_series(table_series[name], arr if arr.base is None and arr.flags.owndata else arr.copy())
            index = self._n_calls
            self._calls.rows.append((JOURNAL_OPS[op], self._op_rows[op], t_chip, t_wall, dt_wall, error is not None))
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

    def set_attrs(self, **attrs: Any) -> None:
        """Write (new or changed) metadata attributes now."""
        self.flush()
        with self._io_lock, h5py.File(self.path, "r+", libver=LIBVER, locking=False) as f:
            for key, value in attrs.items():
                f.attrs[key] = value
        self.attrs.update(attrs)

    def close(self, **final_attrs: Any) -> None:
        """Write the remaining rows and the final attributes (status, stop time, ...), stop the thread."""
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
        if final_attrs:
            try:
                with self._io_lock, h5py.File(self.path, "r+", libver=LIBVER, locking=False) as f:
                    for key, value in final_attrs.items():
                        f.attrs[key] = value
                self.attrs.update(final_attrs)
            except (OSError, TypeError, ValueError) as exc:
                error = error or RunFileError(f"writing the final status to {self.path} failed: {exc}")
        if error is not None:
            raise error

    # ------------------------------------------------------------------ internals
    def _new_series(
        self, path: str, dtype: Any, shape: tuple[int, ...] = (), *, row_mode: bool, attrs: dict | None = None
    ) -> _Series:
        series = _Series(path, dtype, shape, row_mode=row_mode, attrs=attrs)
        self._series[path] = series
        return series

    def _push_block(self, key: str, arr: np.ndarray) -> None:
        self._push_block_series(self._series[key], arr)

    def _push_block_series(self, series: _Series, arr: np.ndarray) -> None:
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

    def _write(self, batch: list[tuple[_Series, list[np.ndarray]]]) -> None:
        with self._io_lock, self._open_for_append() as f:
            # New datasets only outside SWMR mode; then SWMR orders the appends so a kill leaves a
            # consistent file.
            for series, segments in batch:
                if not series.created:
                    self._create(f, series, segments[0])
            f.swmr_mode = True
            for series, segments in batch:
                ds = f[series.path]
                n = ds.shape[0]
                ds.resize(n + sum(seg.shape[0] for seg in segments), axis=0)
                for seg in segments:
                    ds[n : n + seg.shape[0]] = seg
                    n += seg.shape[0]
                    series.n_written += seg.shape[0]
        if self._fsync:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _create(self, f: h5py.File, series: _Series, data: np.ndarray) -> None:
        itemsize = series.dtype.itemsize
        chunks = _chunks(series.shape, itemsize, data.shape[0])
        compress = self._compression == "gzip" or (self._compression == "auto" and _compression_pays(data))
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


# ---------------------------------------------------------------------------------------------- reader
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
    eof, flags = _superblock(path)
    size = path.stat().st_size
    if eof is not None and size < eof and not flags:
        raise RunFileError(f"{path} is damaged (truncated or corrupted): {size} bytes on disk, its superblock says {eof}.")
    # A file marked open for (SWMR) writing is being written, or its writer died inside a write:
    # read it in SWMR mode. Any other file in plain mode, which fails fast on a damaged checksum
    # (SWMR readers retry checksum failures with backoff, as a concurrent write may cause them).
    errors = []
    for kwargs in ({"swmr": True}, {}) if flags else ({}, {"swmr": True}):
        try:
            return h5py.File(path, "r", locking=False, **kwargs)
        except _H5_ERRORS as exc:
            errors.append(str(exc))
    raise RunFileError(f"{path} is damaged (truncated or corrupted): HDF5 says {errors[0]}")


def _superblock(path: Path) -> tuple[int | None, int]:
    """(end-of-file address, status flags) of a version 2/3 superblock at offset 0; (None, 0) otherwise."""
    with open(path, "rb") as fh:
        sb = fh.read(48)
    if len(sb) < 48 or sb[:8] != _HDF5_SIGNATURE or sb[8] not in (2, 3) or sb[9] != 8:
        return None, 0
    base = int.from_bytes(sb[12:20], "little")
    return base + int.from_bytes(sb[28:36], "little"), sb[11] & 0x05  # bit 0: write, bit 2: SWMR write


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
        calls = g["calls"][:] if g is not None and "calls" in g else np.zeros(0, dtype=CALL_DTYPE)
        self._ops: dict[str, tuple[np.ndarray, dict[str, tuple[np.ndarray, Any]]]] = {}
        limit = calls.shape[0]
        for op_name, schema in OP_SCHEMAS.items():
            if g is None or op_name not in g:
                continue
            og = g[op_name]
            call = og["call"][:] if "call" in og else np.zeros(0, dtype=schema.call)
            n_rows = call.shape[0]
            tables: dict[str, tuple[np.ndarray, Any]] = {}
            for name, length in schema.lengths(call).items():
                offsets = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
                ds = og.get(name)
                size = 0 if ds is None else ds.shape[0]
                # Calls whose elements did not reach the file before a kill are cut off.
                n_rows = min(n_rows, int(np.searchsorted(offsets, size, side="right")) - 1)
                data = ds[:] if ds is not None and ds.size * ds.dtype.itemsize <= self.CACHE_BYTES else ds
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
            for row in g["errors"][:]:
                self.errors[int(row["call"])] = (row["type"].decode(), row["message"].decode("utf-8", "replace"))

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
            fields = OP_SCHEMAS[op].decode(call[row], parts)
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


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


class RunReader:
    """Reads a run file (also while it is written, or after its writer was killed).

    Raises :class:`RunFileError` for a file that is not HDF5, not a hil run file, or damaged, and
    :class:`LayoutVersionError` for a newer layout. Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._f = _open_h5(self.path)
        try:
            self.attrs: dict[str, Any] = {k: _decode_attr(v) for k, v in self._f.attrs.items()}
        except _H5_ERRORS as exc:
            self._f.close()
            raise RunFileError(
                f"{self.path} is damaged (truncated or corrupted): its attributes cannot be read ({exc})."
            ) from exc
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
        self._journal: Journal | None = None

    def __enter__(self) -> RunReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._f.close()

    # ------------------------------------------------------------------ metadata
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
        return str(self.attrs.get("run_id", self.path.stem))

    @property
    def protocol(self) -> str:
        return str(self.attrs.get("protocol", ""))

    @property
    def config(self) -> dict[str, Any]:
        return self._json_attr("config_json", {})

    @property
    def seed(self) -> int:
        return int(self.attrs.get("seed", 0))

    @property
    def chip_spec(self) -> str:
        return str(self.attrs.get("chip_spec", ""))

    @property
    def chip_info(self) -> dict[str, Any]:
        return self._json_attr("chip_info_json", {})

    @property
    def geometry(self) -> dict[str, Any]:
        return self._json_attr("geometry_json", {})

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
        if self.attrs.get("host") == socket.gethostname() and not _pid_alive(
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
    @_guarded
    def streams(self) -> list[str]:
        g = self._f.get("streams")
        return sorted(g.keys()) if g is not None else []

    @_guarded
    def columns(self, stream: str) -> list[str]:
        """The user columns of ``stream`` in the order they were first logged."""
        g = self._stream_group(stream)
        if "columns" in g.attrs:
            return list(json.loads(_decode_attr(g.attrs["columns"])))
        return sorted(k for k in g if not k.startswith("_"))

    def _stream_group(self, stream: str) -> h5py.Group:
        g = self._f.get("streams")
        if g is None or stream not in g:
            raise RunFileError(f"{self.path} has no stream {stream!r}; streams: {', '.join(self.streams()) or '(none)'}")
        return g[stream]

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

    def stream(self, stream: str, *, meta: bool = False) -> dict[str, np.ndarray]:
        """All complete rows of a stream: column -> array (strings decoded); ``meta`` adds _t_wall, _call."""
        g = self._stream_group(stream)
        n = self.n_rows(stream)
        names = [*self.columns(stream), *(["_t_wall", "_call"] if meta else [])]
        out: dict[str, np.ndarray] = {}
        try:
            for name in names:
                if name not in g:
                    continue
                data = g[name][:n]
                if data.dtype.kind == "S":
                    data = np.char.decode(data, "utf-8")
                out[name] = data
        except _H5_ERRORS as exc:
            raise RunFileError(f"{self.path}: stream {stream!r} cannot be read (corrupted?): {exc}") from exc
        return out

    def column(self, stream: str, name: str) -> np.ndarray:
        return self.stream(stream, meta=name.startswith("_"))[name]

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
        return [(float(r["t_wall"]), r["text"].decode("utf-8", "replace")) for r in self._f["notes"][:]]

    def size_bytes(self) -> int:
        return self.path.stat().st_size

    def verify(self) -> dict[str, int]:
        """Read every dataset through its checksums; raises :class:`RunFileError` naming a damaged one."""
        counts = {"datasets": 0, "bytes": 0}

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
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


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Just the metadata of a run file (validated like :class:`RunReader`), for indexing."""
    with RunReader(path) as reader:
        meta = dict(reader.attrs)
        meta["effective_status"] = reader.effective_status
        return meta


"""The run-file reader: :class:`RunReader`, and :class:`Journal` for random access to recorded chip calls.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

A reader opens a run file while it is written (SWMR) or after its writer was killed, refuses
files that are not hil run files or of a newer layout, and turns HDF5's errors on damaged files
into :class:`hil.errors.RunFileError` naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hil.errors import LayoutVersionError, RunFileError
from hil.ops import OP_NAMES, OPS
from hil.runs.hdf5 import H5_ERRORS as _H5_ERRORS
from hil.runs.hdf5 import (  # noqa: F401 - LOCKING_MODES and lookup3 are also reached through this module
    LOCKING_MODES,
    MAX_EXPANSION,
    check_structure,
    lookup3,
    open_matching_lock,
    read_dataset,
    read_rows,
    same_layout,
    superblock,
    typed,
)
from hil.runs.hdf5 import open_run_h5 as _open_h5
from hil.runs.layout import CALL_DTYPE, JOURNAL_OPS, LAYOUT_NAME, LAYOUT_VERSION
from hil.runs.liveness import pid_alive
from hil.runs.metadata import RunStart, RunStop, decode_attr


def _text_attr(attrs: Any, key: str) -> str:
    value = decode_attr(attrs.get(key, ""))
    return value if isinstance(value, str) else ""


def _row_range(start: Any, stop: Any) -> tuple[int, int | None]:
    """``(start, stop)`` of a row slice as ints, checked: whole numbers, 0 <= start <= stop."""

    def whole(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise TypeError(f"{name}={value!r} must be a whole number (an int), e.g. {name}=0.")
        return int(value)

    lo = whole("start", start)
    hi = None if stop is None else whole("stop", stop)
    if lo < 0:
        raise ValueError(f"start={lo} is negative; rows are counted from 0 (use start=0 for the first row).")
    if hi is not None and hi < lo:
        raise ValueError(f"stop={hi} is below start={lo}; give 0 <= start <= stop (stop=None: to the last row).")
    return lo, hi


def _column_names(columns: Any) -> list[str] | None:
    """``columns`` as a list of distinct names (None: all), checked."""
    if columns is None:
        return None
    if isinstance(columns, str | bytes):
        raise TypeError(f"columns={columns!r} must be a list of column names, e.g. columns=[{columns!r}].")
    names = list(columns)
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise TypeError(f"columns holds {bad[0]!r}; column names are strings.")
    if len(set(names)) != len(names):
        raise ValueError(f"columns={names} names a column twice; list each once.")
    return names


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


#: Most bytes one recorded call may read from one journal table: the int32 results of an MVM of
#: 2**30 values (what the emulator allows per call on a GPU) are 4 GiB; chunk rounding adds a little.
MAX_CALL_TABLE_BYTES = 4 * 2**30 + 64 * 2**20


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
                # a narrowed table (e.g. mvm/y as int16, docs/run-file.md) reads like the declared one
                if ds is not None and not (isinstance(ds, h5py.Dataset) and ds.ndim == 1
                                           and any(same_layout(ds.dtype, ok) for ok in schema.readable(name))):
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

    def largest_mvm_values(self) -> int:
        """Most values (cores x batch x max(rows, cols), as :func:`hil.arguments.mvm` counts them) one
        recorded MVM call moves; 0 without MVMs. Only calls whose data the file holds are counted."""
        rows = self.calls["row"][self.calls["op"] == JOURNAL_OPS["mvm"]]
        if not rows.size or "mvm" not in self._ops:
            return 0
        call = self._ops["mvm"][0][rows.astype(np.int64)]
        values = call["n_cores"].astype(np.float64) * call["batch"] * np.maximum(call["rows"], call["cols"])
        return int(values.max())

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
                lo, hi = int(offsets[row]), int(offsets[row + 1])
                if isinstance(data, np.ndarray):
                    parts[name] = data[lo:hi]
                else:  # a large table, read by slices, each bounded by what the file stores
                    parts[name] = read_rows(data, self._path, f"/journal/{op}/{name} of call {i}", lo, hi,
                                            max_bytes=MAX_CALL_TABLE_BYTES)
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
        if superblock(self.path)[1] and self.effective_status == "running":
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

    def stream(self, stream: str, *, meta: bool = False, start: int = 0, stop: int | None = None,
               columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Complete rows ``[start, stop)`` of a stream: column -> array (strings decoded).

        ``start``/``stop``: whole numbers, 0 <= start <= stop; ``stop`` defaults to the complete row
        count and both are clipped to it (rows still being written are not there yet), so a poller
        asks for ``start=rows_it_has`` and gets the new rows only. ``columns``: the columns to read
        (user columns and ``_t_wall``/``_call``), in that order; default every user column, plus
        ``_t_wall`` and ``_call`` with ``meta``. Only the rows and columns asked for are read, each
        read bounded by what the file stores (:func:`hil.runs.hdf5.read_rows`). Bad arguments raise
        ``TypeError``/``ValueError`` before anything is read.
        """
        lo, hi = _row_range(start, stop)
        wanted = _column_names(columns)
        if wanted is None:
            names = [*self.columns(stream), *(["_t_wall", "_call"] if meta else [])]
        else:
            known = [*self.columns(stream), "_t_wall", "_call"]
            missing = [c for c in wanted if c not in known]
            if missing:
                raise ValueError(f"{self.path}: stream {stream!r} has no column {missing[0]!r}; "
                                 f"columns: {', '.join(known)}.")
            names = wanted
        return self._stream_rows(stream, names, lo, hi)

    @_guarded
    def _stream_rows(self, stream: str, names: list[str], start: int, stop: int | None) -> dict[str, np.ndarray]:
        """Rows ``[start, stop)`` (clipped to the complete rows) of the columns ``names`` that exist."""
        g = self._stream_group(stream)
        n = self.n_rows(stream)
        hi = n if stop is None else min(stop, n)
        lo = min(start, hi)
        out: dict[str, np.ndarray] = {}
        for name in names:
            if name not in g:
                continue
            data = read_rows(g[name], self.path, f"stream {stream!r} column {name!r}", lo, hi)
            if data.dtype.kind == "S":
                data = np.char.decode(data, "utf-8", "replace")
            out[name] = data
        return out

    def column(self, stream: str, name: str, *, start: int = 0, stop: int | None = None) -> np.ndarray:
        """One column of ``stream`` (rows ``[start, stop)`` as :meth:`stream`; only that column is read)."""
        return self.stream(stream, start=start, stop=stop, columns=[name])[name]

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

    def document(self) -> dict[str, Any]:
        """The run as one JSON-ready mapping (what ``hil show --json`` prints and ``hil serve``'s API
        returns): :meth:`metadata` plus each stream's rows and columns, the journal's call counts,
        the notes and the file size."""
        meta = self.metadata()
        journal = self.journal
        meta["streams"] = {
            name: {
                "rows": self.n_rows(name),
                "columns": {c: {"dtype": d, "shape": list(s)} for c, (d, s) in self.column_info(name).items()},
            }
            for name in self.streams()
        }
        meta["journal"] = {"calls": len(journal), "by_op": journal.counts(), "errors": len(journal.errors)}
        meta["notes"] = [text for _, text in self.notes()]
        meta["size_bytes"] = self.size_bytes()
        return meta

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
    _eof, flags, valid = superblock(p)
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

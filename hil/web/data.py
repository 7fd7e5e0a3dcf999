"""What the web view reads from a runs folder: the run list, one run's document, stream data, live state.

Internal module (its layout may change): ``hil serve`` (:mod:`hil.web.app`) is the public face.

Everything here only reads. The folder's index is read as it is (``RunIndex.entries(sync=False)``);
run files the index does not know yet are read for their metadata in memory and listed, never
added to the index. Run files are opened through :class:`hil.runs.RunReader` only (the untrusted
HDF5 layer), and a run id from a URL must name a file directly inside the folder.
"""

from __future__ import annotations

import os
import re
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hil.errors import HilError, RunFileError

#: A run id as it may appear in a URL: a file name stem, no path separators, no leading dot.
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
#: Longest text value (a string column's cell) sent to a browser.
MAX_TEXT = 200
#: Rows of a stream sent at once when none is asked for (more are thinned evenly).
MAX_POINTS = 4000


class NotFoundError(HilError):
    """A run, stream or figure that is not there (HTTP 404)."""


class BadRequestError(HilError):
    """A malformed request: a run id that is not one, a bad filter (HTTP 400)."""


@dataclass
class _Cached:
    key: tuple[int, int]
    entry: dict[str, Any] | None
    error: str = ""


@dataclass
class RunsFolder:
    """A folder of runs, read-only."""

    folder: Path
    _unindexed: dict[str, _Cached] = field(default_factory=dict)
    _failed: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder).resolve()

    # ------------------------------------------------------------------ the list
    def entries(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """(index entries of every run file present, oldest first, each with ``effective_status``;
        file name -> error for ``.h5`` files that are not readable runs)."""
        from hil.runs.index import RunIndex, effective_status
        from hil.runs.metadata import IndexEntry

        index = RunIndex(self.folder)
        entries = index.entries(sync=False)
        known = {e.get("file") for e in entries}
        unreadable: dict[str, str] = {}
        names = sorted(e.name for e in os.scandir(self.folder) if e.name.endswith(".h5") and e.is_file())
        for name in names:
            if name in known:
                continue
            path = self.folder / name
            try:
                st = path.stat()
            except OSError:
                continue
            key = (st.st_size, st.st_mtime_ns)
            with self._lock:
                cached = self._unindexed.get(name)
            if cached is None or cached.key != key:
                try:
                    with self.open(path) as reader:
                        attrs = dict(reader.attrs)
                    entry = IndexEntry.from_attrs(attrs, name).model_dump()
                    cached = _Cached(key, entry)
                except (RunFileError, NotFoundError, ValueError, TypeError) as exc:
                    cached = _Cached(key, None, str(exc))
                with self._lock:
                    self._unindexed[name] = cached
            if cached.entry is None:
                unreadable[name] = cached.error
                continue
            entry = dict(cached.entry)
            entry["effective_status"] = effective_status(entry)
            entries.append(entry)
        entries.sort(key=lambda e: (float(e.get("started_unix") or 0.0), str(e.get("run_id"))))
        return entries, unreadable

    def select(self, *, protocol: str | None = None, status: str | None = None, tags: list[str] | None = None,
               where: list[str] | None = None, since: str | None = None, limit: int | None = None,
               newest_first: bool = True, entries: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """The filtered run list (the filters of ``hil ls``), newest first unless asked otherwise
        (of ``entries``, default :meth:`entries`)."""
        from hil.runs.catalog import select

        if entries is None:
            entries, _ = self.entries()
        try:
            chosen = select(entries, where=where or [], tags=tags or [], since=since or None,
                            protocol=protocol or None, status=status or None)
        except HilError as exc:
            raise BadRequestError(str(exc)) from exc
        if newest_first:
            chosen.reverse()
        return chosen[:limit] if limit else chosen

    # ------------------------------------------------------------------ one run
    def open(self, path: Path) -> Any:
        """A :class:`hil.runs.RunReader` of ``path``; a file that failed to open before, unchanged
        since (same size and modification time), fails again at once with the same message."""
        from hil.runs import RunReader

        try:
            st = path.stat()
        except OSError as exc:
            raise NotFoundError(f"{path.name}: {exc.strerror or exc}") from exc
        key = (st.st_size, st.st_mtime_ns)
        with self._lock:
            failed = self._failed.get(path.name)
        if failed is not None and failed[0] == key:
            raise RunFileError(failed[1])
        try:
            return RunReader(path)
        except RunFileError as exc:
            with self._lock:
                if len(self._failed) > 10_000:
                    self._failed.clear()
                self._failed[path.name] = (key, str(exc))
            raise

    def resolve(self, run_id: str) -> Path:
        """The run file of ``run_id``: ``<folder>/<run_id>.h5``, or the indexed file of that exact id.

        Refuses ids that are not plain names and any file that resolves outside the folder (a
        symbolic link pointing out of it included).
        """
        if not isinstance(run_id, str) or not RUN_ID.match(run_id):
            raise BadRequestError(f"{run_id!r} is not a run id (letters, digits and . _ + - only, no path).")
        candidates = [f"{run_id}.h5"]
        if run_id.endswith(".h5"):
            candidates.insert(0, run_id)
        for name in candidates:
            path = self._inside(name)
            if path is not None:
                return path
        entries, _ = self.entries()
        for e in entries:
            if e.get("run_id") == run_id and isinstance(e.get("file"), str):
                path = self._inside(e["file"])
                if path is not None:
                    return path
        raise NotFoundError(f"no run {run_id!r} in this folder.")

    def _inside(self, name: str) -> Path | None:
        if "/" in name or "\\" in name or name.startswith(".") or "\x00" in name:
            return None
        path = self.folder / name
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            return None
        if real.parent != self.folder or not real.is_file():
            return None
        return path


def _finite_list(a: np.ndarray) -> list[Any]:
    """A float array as a JSON-able list: NaN and infinities become None."""
    a = np.asarray(a, dtype=np.float64)
    out = a.astype(object)
    out[~np.isfinite(a)] = None
    return out.tolist()


def _reduce(data: np.ndarray) -> dict[str, Any]:
    """One column of rows as the browser plots it: values, or per-row mean, min and max of an array column."""
    if data.dtype.kind in "SUO":
        return {"kind": "text", "values": [str(v)[:MAX_TEXT] for v in data.tolist()]}
    if data.dtype.kind == "c":
        data = np.real(data)
    if data.dtype.kind not in "biuf":
        return {"kind": "other", "values": []}
    kind = "f" if data.dtype.kind == "f" else "i"
    values = data.astype(np.float64)
    if values.ndim == 1:
        return {"kind": "scalar", "dtype": kind, "values": _finite_list(values)}
    flat = values.reshape(values.shape[0], int(np.prod(values.shape[1:], dtype=np.int64)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows
        mean = np.nanmean(flat, axis=1) if flat.shape[1] else np.full(flat.shape[0], np.nan)
        lo = np.nanmin(flat, axis=1) if flat.shape[1] else mean
        hi = np.nanmax(flat, axis=1) if flat.shape[1] else mean
    return {"kind": "array", "dtype": kind, "shape": list(values.shape[1:]), "values": _finite_list(mean),
            "min": _finite_list(lo), "max": _finite_list(hi)}


def stream_payload(reader: Any, stream: str, *, start: int = 0, max_points: int = MAX_POINTS) -> dict[str, Any]:
    """Rows ``start:`` of ``stream`` for plotting (thinned evenly to ``max_points`` rows).

    Only rows ``[start, rows)`` are read from the file (:meth:`hil.runs.RunReader.stream` slices), so
    a live poll that asks for the rows after those it has costs the new rows, not the whole stream.
    Columns: ``{kind: scalar|array|text, values, [min, max, shape]}``; array columns are reduced to
    their per-row mean, min and max. ``rows`` is the stream's complete row count, ``row`` the row
    numbers sent.
    """
    if stream not in reader.streams():
        have = ", ".join(reader.streams()) or "(none)"
        raise NotFoundError(f"run {reader.run_id!r} has no stream {stream!r}; streams: {have}.")
    info = reader.stream_info(stream)
    n = reader.n_rows(stream)
    start = max(0, min(int(start), n))
    data = reader.stream(stream, meta=True, start=start, stop=n)  # the rows counted above, even while written
    idx = np.arange(start, n)
    max_points = max(2, int(max_points))
    if idx.size > max_points:
        idx = np.unique(np.linspace(start, n - 1, max_points).round().astype(np.int64))
    columns = {}
    for name, values in data.items():
        whole = values.shape[0] >= n - start
        columns[name] = _reduce(values[idx - start]) if whole else {"kind": "other", "values": []}
    labels = {name: info.label(name) for name in data}
    return {
        "run_id": reader.run_id, "stream": stream, "rows": n, "start": start, "row": idx.tolist(),
        "x": info.x, "row_dim": info.row_dim, "units": info.units, "labels": labels,
        "order": [c for c in data if not c.startswith("_")] + [c for c in data if c.startswith("_")],
        "columns": columns,
    }


def run_document(reader: Any, file_name: str) -> dict[str, Any]:
    """What ``hil show --json`` prints for a run (:meth:`hil.runs.RunReader.document`), with ``path``
    the file's name in the folder rather than the server's absolute path."""
    meta = reader.document()
    meta["path"] = file_name
    return meta


def live_state(reader: Any) -> dict[str, Any]:
    """The cheap state of a run for the live page: status, rows per stream, the last note."""
    notes = reader.notes()
    return {
        "run_id": reader.run_id,
        "status": reader.status,
        "effective_status": reader.effective_status,
        "streams": {s: reader.n_rows(s) for s in reader.streams()},
        "started_unix": float(reader.attrs.get("started_unix") or 0.0),
        "stopped_unix": float(reader.attrs.get("stopped_unix") or 0.0),
        "exit_reason": str(reader.attrs.get("exit_reason") or ""),
        "exception": (f"{reader.attrs.get('exception_type')}: {reader.attrs.get('exception_message')}"
                      if reader.attrs.get("exception_type") else ""),
        "last_note": (notes[-1][1].splitlines() or [""])[-1][:500] if notes else "",
    }

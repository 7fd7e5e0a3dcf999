"""A run index per output folder, so ``hil ls`` is instant with thousands of runs.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

``<folder>/hil-index.jsonl`` is append-only JSON lines, one per event of a run (started, finished);
the last line of a run id wins. Listing reads this one small file and the folder's file names; it
never opens run files, except ones that are not indexed yet (copied in, or written by an older hil),
which it indexes on the way. A run whose writer process is gone while its entry still says
``running`` is listed as ``incomplete``. ``rebuild()`` rewrites the index from the run files.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hil.errors import HilError, RunFileError
from hil.runs.liveness import pid_alive
from hil.runs.metadata import IndexEntry
from hil.runs.reader import read_attrs

INDEX_NAME = "hil-index.jsonl"
LOCK_NAME = ".hil-index.lock"
#: Where runs go and are looked up when no folder is given (and $HIL_RUNS is not set).
DEFAULT_OUT = "hil-runs"
#: Environment variable naming the runs folder of ``hil`` commands.
RUNS_ENV = "HIL_RUNS"


def default_runs_folder() -> Path:
    """The runs folder when none is given: ``$HIL_RUNS``, else the current folder if it holds an
    index (you are in a runs folder), else ``hil-runs``."""
    env = os.environ.get(RUNS_ENV, "").strip()
    if env:
        return Path(env)
    if Path(INDEX_NAME).is_file():
        return Path(".")
    return Path(DEFAULT_OUT)
#: Keys an index entry may carry (all optional except run_id and file): the fields of IndexEntry.
ENTRY_KEYS: tuple[str, ...] = tuple(IndexEntry.model_fields)


def entry_from_attrs(attrs: dict[str, Any], file_name: str) -> dict[str, Any]:
    """An index entry (a JSON-able dict) from a run file's root attributes."""
    return IndexEntry.from_attrs(attrs, file_name).model_dump()


def effective_status(entry: dict[str, Any]) -> str:
    """``incomplete`` for a run still marked running whose writer process on this host is gone."""
    status = entry.get("status", "running")
    pid, started = int(entry.get("pid") or 0), float(entry.get("started_unix") or 0.0)
    if status == "running" and entry.get("host") == socket.gethostname() and not pid_alive(pid, started):
        return "incomplete"
    return status


class RunIndex:
    """The index of the run files in one folder."""

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self.path = self.folder / INDEX_NAME

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / LOCK_NAME, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def record(self, entry: dict[str, Any]) -> None:
        """Append one entry (needs ``run_id`` and ``file``)."""
        if "run_id" not in entry or "file" not in entry:
            raise HilError(f"index entries need run_id and file, got keys {sorted(entry)}")
        line = json.dumps({k: v for k, v in entry.items() if k in ENTRY_KEYS}, default=str) + "\n"
        with self._locked(), open(self.path, "a+b") as fh:
            end = fh.seek(0, os.SEEK_END)
            if end:
                fh.seek(end - 1)
                if fh.read(1) != b"\n":  # a line torn by a crash: do not glue this entry onto it
                    line = "\n" + line
            fh.write(line.encode("utf-8"))

    def _read(self) -> dict[str, dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        try:
            with open(self.path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue  # a line cut short by a crash
                    if isinstance(entry, dict) and "run_id" in entry:
                        merged.setdefault(entry["run_id"], {}).update(entry)
        except FileNotFoundError:
            pass
        return merged

    def entries(self, *, sync: bool = True) -> list[dict[str, Any]]:
        """All indexed runs whose file is present, oldest first, each with ``effective_status``.

        ``sync`` first indexes ``*.h5`` files of the folder that the index does not know.
        """
        if not self.folder.is_dir():
            raise HilError(
                f"{self.folder} is not a folder of runs (no such folder); name the folder the runs were written to "
                f"(`hil run --out DIR`), e.g. `hil ls DIR` or `hil show RUN --runs DIR`, or set ${RUNS_ENV}."
            )
        merged = self._read()
        names = {e.name for e in os.scandir(self.folder) if e.name.endswith(".h5") and e.is_file()}
        if sync:
            known = {e.get("file") for e in merged.values()}
            for name in sorted(names - known):
                try:
                    entry = entry_from_attrs(read_attrs(self.folder / name), name)
                except RunFileError:
                    continue  # not a run file (or damaged): hil show names the problem
                self.record(entry)
                merged.setdefault(entry["run_id"], {}).update(entry)
        out = []
        for entry in merged.values():
            if entry.get("file") in names:
                entry = dict(entry)
                entry["effective_status"] = effective_status(entry)
                out.append(entry)
        out.sort(key=lambda e: (float(e.get("started_unix") or 0.0), e["run_id"]))
        return out

    def rebuild(self) -> int:
        """Rewrite the index from the run files in the folder; returns the number indexed."""
        lines = []
        for name in sorted(e.name for e in os.scandir(self.folder) if e.name.endswith(".h5") and e.is_file()):
            try:
                lines.append(json.dumps(entry_from_attrs(read_attrs(self.folder / name), name), default=str))
            except RunFileError:
                continue
        tmp = self.folder / f".{INDEX_NAME}.tmp"
        with self._locked():
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
            os.replace(tmp, self.path)
        return len(lines)

    def find(self, ref: str) -> Path:
        """The run file for a run id, a unique run-id prefix, or a file name in this folder."""
        direct = self.folder / ref
        if direct.is_file():
            return direct
        if (self.folder / f"{ref}.h5").is_file():
            return self.folder / f"{ref}.h5"
        matches = [e for e in self.entries() if e["run_id"].startswith(ref)]
        if len(matches) == 1:
            return self.folder / matches[0]["file"]
        if not matches:
            raise HilError(f"no run {ref!r} in {self.folder}; `hil ls {self.folder}` lists the runs there.")
        raise HilError(
            f"{ref!r} matches {len(matches)} runs in {self.folder} ({', '.join(m['run_id'] for m in matches[:5])}...); "
            "give more of the run id."
        )

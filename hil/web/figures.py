"""The report figures of a run (``hil report``'s PNGs), rendered into a cache folder the server owns.

Internal module (its layout may change).

:func:`hil.report.make_report` writes into any folder it is given, so the server renders into a
private temporary folder (never the runs folder) keyed by the run file's name, size and
modification time: a finished run is rendered once, a file that changes is rendered again. The
cache is removed when the server stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from hil.errors import HilError


@dataclass(frozen=True)
class Figures:
    """A run's rendered figures: PNG paths (in order) and what went wrong on the way."""

    paths: tuple[Path, ...]
    problems: tuple[str, ...]


class FigureCache:
    """Renders and keeps report figures outside the runs folder."""

    def __init__(self, runs_folder: Path, root: Path | None = None) -> None:
        self.runs_folder = Path(runs_folder).resolve()
        self._root = Path(root).resolve() if root is not None else None
        self._own_root = root is None
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @property
    def root(self) -> Path:
        with self._lock:
            if self._root is None:
                self._root = Path(tempfile.mkdtemp(prefix="hil-serve-figures-")).resolve()
            root = self._root
        if root == self.runs_folder or self.runs_folder in root.parents:
            raise HilError(f"the figure cache {root} lies inside the runs folder {self.runs_folder}; "
                           "hil serve never writes there (set TMPDIR elsewhere).")
        root.mkdir(parents=True, exist_ok=True)
        return root

    def close(self) -> None:
        """Remove the cache folder if this cache made it (a folder given to it stays)."""
        if not self._own_root:
            return
        with self._lock:
            root, self._root = self._root, None
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)

    def figures(self, run_file: Path) -> Figures:
        """The figures of ``run_file`` (rendered now if the file changed since the last time)."""
        st = run_file.stat()
        # One folder per server: the file's name, size and modification time tell its versions apart.
        key = hashlib.sha256(f"{run_file.name}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            folder = self.root / key
            manifest = folder / "figures.json"
            if manifest.is_file():
                with contextlib.suppress(ValueError, OSError, KeyError, TypeError):
                    doc = json.loads(manifest.read_text(encoding="utf-8"))
                    return Figures(tuple(folder / n for n in doc["files"]), tuple(doc["problems"]))
            shutil.rmtree(folder, ignore_errors=True)
            work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=self.root))
            from hil.report import make_report

            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    paths, problems = make_report(run_file, work)
            except Exception as exc:  # a damaged file, or data matplotlib cannot draw: a message, not a crash
                paths, problems = [], [f"the figures could not be made: {type(exc).__name__}: {exc}"]
            files = [p.name for p in paths if p.suffix.lower() == ".png" and p.is_file() and p.parent == work]
            (work / "figures.json").write_text(json.dumps({"files": files, "problems": list(problems)}), encoding="utf-8")
            try:
                work.rename(folder)
            except OSError:  # keep the figures where they were made
                folder = work
            return Figures(tuple(folder / n for n in files), tuple(problems))

"""What a protocol is, what it may call on its run, and the protocol registry.

A protocol is plain Python ``fn(chip, config, run) -> dict`` with a pydantic config model
(``extra="forbid"``). It talks to the chip only through :class:`hil.Chip`, so it runs unchanged on
the emulator, the lab chip and a replay. It reports data with ``run.log(stream, **columns)`` and
progress with ``run.progress(done, total)``; its return value (JSON-able dict) is the run's summary.

Protocols register themselves with :func:`register_protocol`; the ``hil.protocols`` entry-point
group names the modules to import so that ``hil`` never imports ``protocols`` at module level.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from pydantic import BaseModel

from hil.errors import HilError, did_you_mean
from hil.runs.columns import StreamSpec, declare_stream, prepare_rows

ProtocolFn = Callable[..., dict[str, Any]]
#: ``plots(run_file_path, out_dir) -> list[Path]``: a protocol's own figures for ``hil report``.
PlotFn = Callable[..., list[Any]]
#: ``check(config, geometry[, inputs]) -> None``: a protocol's input check (``inputs``: the run's
#: input arrays); raises ``ConfigError``, ``ChipInputError`` or ``ValueError`` naming the bad value
#: (no chip calls, no side effects).
CheckFn = Callable[..., None]
#: ``inputs(config) -> {name: array or (array, source)}``: the data a run consumes (weight matrices,
#: sample inputs), loaded before the run starts and stored in its run file.
InputsFn = Callable[..., dict[str, Any]]


class RunLog(ABC):
    """The side of a run that a protocol sees."""

    @abstractmethod
    def log(self, stream: str, **columns: Any) -> None:
        """Append rows to ``stream``.

        Each keyword is a column: a scalar (one row) or an array whose first axis is the rows (all
        columns the same row count). A column's dtype and trailing shape are fixed by its first
        rows. Large arrays (conductance maps, MVM batches) are stored as arrays.
        """

    def declare(  # noqa: B027 - optional for run logs that keep no metadata
        self,
        stream: str,
        *,
        units: dict[str, str] | None = None,
        long_names: dict[str, str] | None = None,
        dims: dict[str, tuple[str, ...]] | None = None,
        x: str | None = None,
    ) -> None:
        """Describe ``stream``'s columns before its first ``log``: ``units`` and ``long_names``
        (column -> text, e.g. ``{"amplitude_ua": "uA"}``), ``dims`` (column -> names of its per-row
        axes, e.g. ``{"counts": ("core", "col")}``; columns sharing a name share the axis) and ``x``
        (the scalar column the rows are plotted against). Stored as attributes and HDF5 dimension
        scales in the run file; ``RunReader.to_xarray``, ``hil export`` and ``hil report`` use them.
        """

    def progress(self, done: int, total: int | None = None, desc: str = "") -> None:  # noqa: B027
        """Report progress (drives progress bars and telemetry; never stops the run)."""

    def note(self, message: str) -> None:  # noqa: B027
        """Record a human-readable note in the run."""

    @property
    def seed(self) -> int:
        """The run's seed; protocols derive their random generators from it."""
        return 0

    def rng(self, name: str = "") -> np.random.Generator:
        """A numpy generator seeded from the run's seed and ``name`` (stable across replays)."""
        return np.random.default_rng([self.seed, *name.encode()])

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        """The run's input arrays (name -> read-only array) from the protocol's ``inputs`` hook.

        In a run they were loaded before the start and are stored in the run file; in a replay or
        resume they come from the recorded file (checked against their sha256), wherever it lies.
        """
        return MappingProxyType({})


#: Largest total size of a run's input arrays (bytes).
MAX_INPUT_BYTES = 2 * 2**30


def freeze_inputs(inputs: Mapping[str, Any]) -> Mapping[str, np.ndarray]:
    """Input arrays as read-only numpy arrays (``(array, source)`` pairs keep the array)."""
    out: dict[str, np.ndarray] = {}
    for name, value in inputs.items():
        arr = np.array(value[0] if isinstance(value, tuple) else value, copy=True)
        arr.setflags(write=False)
        out[name] = arr
    return MappingProxyType(out)


class MemoryRunLog(RunLog):
    """A run log that keeps streams in memory (for scripts and tests that need no file).

    It applies the same column rules as a run file (:func:`hil.runs.columns.prepare_rows`), so a
    ``run.log`` call that a real run would refuse fails here too.
    """

    def __init__(self, seed: int = 0, inputs: Mapping[str, Any] | None = None) -> None:
        self._seed = seed
        self._inputs = freeze_inputs(inputs or {})
        self.streams: dict[str, dict[str, list[np.ndarray]]] = {}
        self._specs: dict[str, StreamSpec] = {}
        self.notes: list[str] = []
        self.last_progress: tuple[int, int | None, str] | None = None

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        return self._inputs

    @property
    def seed(self) -> int:
        return self._seed

    def declare(self, stream: str, **declaration: Any) -> None:  # type: ignore[override]
        self._specs[stream] = declare_stream(stream, self._specs.get(stream), **declaration)

    def spec(self, stream: str) -> StreamSpec:
        """The stream's columns, declaration and dimension names (as a run file would store them)."""
        return self._specs[stream]

    def log(self, stream: str, **columns: Any) -> None:
        spec, arrays, n_rows = prepare_rows(stream, columns, self._specs.get(stream))
        self._specs[stream] = spec
        cols = self.streams.setdefault(stream, {})
        for key, arr in arrays.items():
            value = np.array(arr, copy=True)
            if value.dtype.kind == "S":
                value = np.char.decode(value, "utf-8")
            # A scalar logged as one row is kept as the scalar (what the caller passed).
            cols.setdefault(key, []).append(value[0] if np.ndim(columns[key]) == 0 else value)
        spec.n_rows += n_rows

    def progress(self, done: int, total: int | None = None, desc: str = "") -> None:
        self.last_progress = (done, total, desc)

    def note(self, message: str) -> None:
        self.notes.append(message)

    def column(self, stream: str, key: str) -> np.ndarray:
        """All rows logged so far for one column, concatenated along the first axis."""
        parts = [np.atleast_1d(p) if p.ndim == 0 else p for p in self.streams[stream][key]]
        return np.concatenate(parts) if parts[0].ndim else np.asarray(parts)


@dataclass(frozen=True)
class ProtocolSpec:
    """A registered protocol."""

    name: str
    fn: ProtocolFn
    config_model: type[BaseModel]
    description: str = ""
    plots: PlotFn | None = None
    deterministic: bool = True
    tags: tuple[str, ...] = field(default_factory=tuple)
    #: Where the protocol's code came from: ``module:NAME`` or ``file:/ABS/PATH.py``.
    source: str = ""
    #: ``check(config, geometry)``: raises on bad config or input data before the run file exists.
    check: CheckFn | None = None
    #: ``inputs(config)``: the run's input arrays, stored in the run file (see :attr:`RunLog.inputs`).
    inputs: InputsFn | None = None


_REGISTRY: dict[str, ProtocolSpec] = {}


class UnknownProtocolError(HilError, KeyError):
    """No protocol of that name is registered."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown protocol"


def register_protocol(
    name: str,
    config_model: type[BaseModel],
    *,
    description: str = "",
    plots: PlotFn | None = None,
    deterministic: bool = True,
    check: CheckFn | None = None,
    inputs: InputsFn | None = None,
) -> Callable[[ProtocolFn], ProtocolFn]:
    """Decorator: register ``fn(chip, config, run)`` under ``name``.

    ``plots``: the protocol's own figures for ``hil report``; ``deterministic``: False for a
    protocol whose chip calls do not follow from config, seed and chip answers (it cannot be
    replayed or resumed); ``check(config, geometry)``: validates config and input data before the
    run file is created, so bad input exits 2 and leaves no file; ``inputs(config)``: loads the
    arrays the run consumes (e.g. a weight file) before the run starts, so a missing or bad file
    is also bad input; they are stored in the run file with their sha256 and source, and
    ``run.inputs`` serves them (replays and resumes use the stored copy).
    """

    def deco(fn: ProtocolFn) -> ProtocolFn:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0] if (description or fn.__doc__) else ""
        _REGISTRY[name] = ProtocolSpec(
            name, fn, config_model, doc, plots, deterministic, source=_source_of(fn), check=check, inputs=inputs
        )
        return fn

    return deco


_BROKEN: dict[str, str] = {}
#: Entry-point value -> the protocols its module registered when it was first loaded.
_FROM_MODULE: dict[str, dict[str, ProtocolSpec]] = {}


def load_entry_point_protocols() -> None:
    """Import every module named in the ``hil.protocols`` entry-point group (they self-register).

    A module that fails to import is skipped with a warning, so one broken protocol does not stop
    every command; asking for it by name then raises with the import error. The protocols a module
    registered are remembered, so they come back if the registry was replaced after the module was
    imported (a module registers only on its first import).
    """
    for ep in entry_points(group="hil.protocols"):
        if ep.value in _FROM_MODULE:
            for name, spec in _FROM_MODULE[ep.value].items():
                _REGISTRY.setdefault(name, spec)
            continue
        before = dict(_REGISTRY)
        try:
            ep.load()
        except Exception as exc:  # any import-time failure of a third-party module
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"protocol module {ep.value!r} ({ep.name}) failed to import: {exc}", stacklevel=2)
            continue
        _FROM_MODULE[ep.value] = {n: sp for n, sp in _REGISTRY.items() if before.get(n) is not sp}
        if not _FROM_MODULE[ep.value]:  # imported before (e.g. by a test): its specs are those of its module
            module = ep.value.partition(":")[0]
            _FROM_MODULE[ep.value] = {n: sp for n, sp in _REGISTRY.items() if getattr(sp.fn, "__module__", "") == module}


def protocols() -> dict[str, ProtocolSpec]:
    """All registered protocols, loading entry points first."""
    load_entry_point_protocols()
    return dict(sorted(_REGISTRY.items()))


def get_protocol(name: str) -> ProtocolSpec:
    """The protocol called ``name``; the error lists the valid names."""
    known = protocols()
    if name not in known and name in _BROKEN:
        raise UnknownProtocolError(f"protocol {name!r} is installed but failed to import: {_BROKEN[name]}")
    if name not in known:
        raise UnknownProtocolError(
            f"unknown protocol {name!r}{did_you_mean(name, known)}; valid protocols: {', '.join(known) or '(none)'}"
        )
    return known[name]


# ---------------------------------------------------------------------------------------------- custom protocols
#: Module-name prefix of protocol files loaded with :func:`load_protocol_module`.
_FILE_MODULE_PREFIX = "hil_protocol_file_"
_FILES: dict[str, Path] = {}


def _source_of(fn: ProtocolFn) -> str:
    module = getattr(fn, "__module__", "") or ""
    if module in _FILES:
        return f"file:{_FILES[module]}"
    return f"module:{module}" if module else ""


def load_protocol_module(ref: str | os.PathLike[str]) -> list[str]:
    """Import a module or a ``.py`` file that registers protocols; returns the names it registered.

    ``ref``: a dotted module name (``mylab.protocols``, importable from ``sys.path``) or the path of
    a Python file (anything ending in ``.py`` or containing a path separator). The protocols record
    this as their source (``module:NAME`` or ``file:/ABS/PATH.py``) in every run file, so ``hil
    replay`` and ``hil resume`` can say what to load. Loading runs the module's code: only load
    what you trust (hil never imports code that a run file names by itself).
    """
    text = os.fspath(ref)
    before = dict(_REGISTRY)
    if text.endswith(".py") or os.sep in text or "/" in text:
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise UnknownProtocolError(
                f"protocol file {path} does not exist; give the path of a .py file that registers protocols."
            )
        name = _FILE_MODULE_PREFIX + hashlib.sha256(str(path).encode()).hexdigest()[:12]
        if name not in sys.modules:
            spec = importlib.util.spec_from_file_location(name, path)
            if spec is None or spec.loader is None:
                raise UnknownProtocolError(f"cannot import protocol file {path} (not a Python source file?).")
            module = importlib.util.module_from_spec(spec)
            _FILES[name] = path
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name, None)
                _FILES.pop(name, None)
                raise
    else:
        try:
            importlib.import_module(text)
        except ModuleNotFoundError as exc:
            raise UnknownProtocolError(
                f"protocol module {text!r} cannot be imported ({exc}); give an importable module name "
                "or the path of a .py file."
            ) from exc
    return sorted(n for n, s in _REGISTRY.items() if before.get(n) is not s)


def source_hint(name: str, source: str) -> str:
    """What to pass to load protocol ``name`` recorded as coming from ``source`` (for error messages)."""
    kind, _, where = source.partition(":")
    if kind in ("module", "file") and where and not where.startswith(_FILE_MODULE_PREFIX):
        return (
            f" The run file says protocol {name!r} came from {source}; pass --protocol-module {where} "
            "to load it (hil does not import code a run file names by itself)."
        )
    return ""

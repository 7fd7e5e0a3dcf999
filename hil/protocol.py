"""What a protocol is, what it may call on its run, and the protocol registry.

A protocol is plain Python ``fn(chip, config, run) -> dict`` with a pydantic config model
(``extra="forbid"``). It talks to the chip only through :class:`hil.Chip`, so it runs unchanged on
the emulator, the lab chip and a replay. It reports data with ``run.log(stream, **columns)`` and
progress with ``run.progress(done, total)``; its return value (JSON-able dict) is the run's summary.

Protocols register themselves with :func:`register_protocol`; the ``hil.protocols`` entry-point
group names the modules to import so that ``hil`` never imports ``protocols`` at module level.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

import numpy as np
from pydantic import BaseModel

from hil.errors import HilError

ProtocolFn = Callable[..., dict[str, Any]]
#: ``plots(run_file_path, out_dir) -> list[Path]``: a protocol's own figures for ``hil report``.
PlotFn = Callable[..., list[Any]]


class RunLog(ABC):
    """The side of a run that a protocol sees."""

    @abstractmethod
    def log(self, stream: str, **columns: Any) -> None:
        """Append rows to ``stream``.

        Each keyword is a column: a scalar (one row) or an array whose first axis is the rows (all
        columns the same row count). A column's dtype and trailing shape are fixed by its first
        rows. Large arrays (conductance maps, MVM batches) are stored as arrays.
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


class MemoryRunLog(RunLog):
    """A run log that keeps streams in memory (for scripts and tests that need no file)."""

    def __init__(self, seed: int = 0) -> None:
        self._seed = seed
        self.streams: dict[str, dict[str, list[np.ndarray]]] = {}
        self.notes: list[str] = []
        self.last_progress: tuple[int, int | None, str] | None = None

    @property
    def seed(self) -> int:
        return self._seed

    def log(self, stream: str, **columns: Any) -> None:
        cols = self.streams.setdefault(stream, {})
        for key, value in columns.items():
            cols.setdefault(key, []).append(np.asarray(value))

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
) -> Callable[[ProtocolFn], ProtocolFn]:
    """Decorator: register ``fn(chip, config, run)`` under ``name``."""

    def deco(fn: ProtocolFn) -> ProtocolFn:
        doc = description or (fn.__doc__ or "").strip().splitlines()[0] if (description or fn.__doc__) else ""
        _REGISTRY[name] = ProtocolSpec(name, fn, config_model, doc, plots, deterministic)
        return fn

    return deco


_BROKEN: dict[str, str] = {}


def load_entry_point_protocols() -> None:
    """Import every module named in the ``hil.protocols`` entry-point group (they self-register).

    A module that fails to import is skipped with a warning, so one broken protocol does not stop
    every command; asking for it by name then raises with the import error.
    """
    for ep in entry_points(group="hil.protocols"):
        try:
            ep.load()
        except Exception as exc:  # any import-time failure of a third-party module
            _BROKEN[ep.name] = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"protocol module {ep.value!r} ({ep.name}) failed to import: {exc}", stacklevel=2)


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
        raise UnknownProtocolError(f"unknown protocol {name!r}; valid protocols: {', '.join(known) or '(none)'}")
    return known[name]

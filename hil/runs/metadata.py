"""Typed run metadata: what a run file says about its run, defined once.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

In the spirit of bluesky's event-model (a start document when a run opens, a stop document when
it closes), a run file's root attributes are two documents:

* :class:`RunStart`, written when the run file is created: identity, protocol and resolved config,
  seed, chip, versions, provenance (resume and replay);
* :class:`RunStop`, written when the run ends: status, machine-readable reason, exception, summary.

The writer, the reader, the runner, ``hil resume``, the run index and ``docs/run-file.md`` all use
these models (a test checks the docs name every field). In the file, dict and list fields are
JSON text in an attribute named ``<field>_json``; every other field is a plain HDF5 attribute of
its own name. Reading is lenient (files come from elsewhere and from older versions: unknown
attributes are kept aside, missing ones take defaults); writing is strict (``extra="forbid"``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hil.errors import RunFileError

#: Status written in a run file: ``running`` until the run ends.
Status = Literal["running", "success", "abort", "fail"]
#: Status as a reader sees it: a ``running`` run whose writer process is gone is ``incomplete``.
EffectiveStatus = Literal["running", "incomplete", "success", "abort", "fail"]
STATUSES: tuple[str, ...] = get_args(Status)
EFFECTIVE_STATUSES: tuple[str, ...] = get_args(EffectiveStatus)
#: Why a run ended (``RunStop.exit_reason``).
Reason = Literal[
    "completed",  # the protocol returned
    "keyboard_interrupt",  # Ctrl-C (status abort)
    "terminated",  # SIGTERM (status abort)
    "replay_mismatch",  # a replayed or resumed call differed from the recording
    "chip_communication",  # the chip or its board could not be reached
    "safety_limit",  # a request would have exceeded a hardware limit
    "chip_input",  # the protocol sent the chip a malformed request
    "run_file",  # the run file could not be written
    "hil_error",  # another error raised on purpose by hil
    "exception",  # any other exception of the protocol
]
REASONS: tuple[str, ...] = get_args(Reason)


def now_iso(t: float | None = None) -> str:
    """UTC ISO-8601 timestamp with milliseconds."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


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


def decode_attr(value: Any) -> Any:
    """An HDF5 attribute value as a plain Python value (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Document(BaseModel):
    """A metadata document stored as root attributes (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def json_fields(cls) -> tuple[str, ...]:
        """Fields stored as JSON text in ``<field>_json`` attributes."""
        return tuple(
            name for name, info in cls.model_fields.items()
            if getattr(info.annotation, "__origin__", info.annotation) in (dict, list)
        )

    @classmethod
    def attr_names(cls) -> tuple[str, ...]:
        """The attribute names this document occupies in a run file."""
        js = cls.json_fields()
        return tuple(f"{name}_json" if name in js else name for name in cls.model_fields)

    def to_attrs(self) -> dict[str, Any]:
        """HDF5 attributes of this document."""
        js = self.json_fields()
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in js:
                out[f"{name}_json"] = to_json(value)
            elif value is not None:
                out[name] = value
        return out

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], *, where: str = "run file", strict: bool = False) -> Any:
        """The document in ``attrs`` (decoded HDF5 attributes).

        Lenient by default: attributes of other documents or unknown ones are ignored, missing ones
        take defaults. ``strict``: unknown attributes are an error (for attributes a caller writes).
        Malformed JSON or values raise :class:`RunFileError` naming ``where``.
        """
        js = cls.json_fields()
        data: dict[str, Any] = {}
        names = set(cls.attr_names())
        if strict:
            unknown = sorted(k for k in attrs if k not in names)
            if unknown:
                raise RunFileError(
                    f"{where}: unknown run metadata {unknown}; valid keys: {', '.join(cls.attr_names())}."
                )
        for name in cls.model_fields:
            key = f"{name}_json" if name in js else name
            if key not in attrs:
                continue
            value = decode_attr(attrs[key])
            if name in js and isinstance(value, str):
                if value == "":
                    continue
                try:
                    value = json.loads(value)
                except ValueError as exc:
                    raise RunFileError(f"{where}: attribute {key} is not valid JSON (damaged file?): {exc}") from exc
            data[name] = value
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
            raise RunFileError(f"{where}: run metadata is malformed ({problems}).") from exc


class RunStart(_Document):
    """What is known when a run starts (root attributes written when the run file is created)."""

    run_id: str = Field("", description="YYYYMMDD-HHMMSS-<protocol>-<6 hex>; also the file name")
    protocol: str = Field("", description="registered protocol name")
    protocol_description: str = Field("", description="first line of the protocol's docstring")
    protocol_source: str = Field(
        "", description="where the protocol came from when it is not installed: 'module:NAME' or 'file:/ABS/PATH.py'"
    )
    config: dict[str, Any] = Field(default_factory=dict, description="the resolved protocol config")
    seed: int = Field(0, description="the run's seed (protocols derive their generators from it)")
    chip_spec: str = Field("", description="chip spec the run used (empty: a chip object without one)")
    chip_seed: int = Field(0, description="seed the chip was built with; resume rebuilds the chip with it")
    chip_backend: str = Field("", description="ChipInfo.backend: emulator, lab, replay, fake, ...")
    chip_name: str = Field("", description="ChipInfo.name")
    chip_serial: str = Field("", description="ChipInfo.serial")
    chip_info: dict[str, Any] = Field(default_factory=dict, description="the whole ChipInfo")
    geometry: dict[str, Any] = Field(default_factory=dict, description="hil.Geometry of the chip")
    versions: dict[str, Any] = Field(default_factory=dict, description="python, hil, numpy, h5py, hdf5, torch, ...")
    command: str = Field("", description="the command line that started the run")
    resume_count: int = Field(0, description="how often the run was resumed")
    resumed_at: list[str] = Field(default_factory=list, description="UTC times of each resume")
    preceded_by: list[str] = Field(
        default_factory=list, description="earlier run files (names in the same folder) that used the same chip object"
    )
    replay_of: str = Field("", description="run id this run replays (empty: not a replay)")
    host: str = Field("", description="host name of the writing process")
    pid: int = Field(0, description="process id of the writer")
    started_at: str = Field("", description="UTC ISO-8601 start time")
    started_unix: float = Field(0.0, description="start time [s, unix]")
    tags: list[str] = Field(default_factory=list, description="labels for finding the run (hil run --tag)")
    sample: str = Field("", description="the sample or chip under test, as the user names it (hil run --sample)")
    comment: str = Field("", description="free text about the run (hil run --comment)")
    git_revision: str = Field("", description="commit of hil's source tree when it is a git checkout (-dirty: changed)")
    station: dict[str, Any] = Field(
        default_factory=dict, description="lab runs: the station's snapshot at start (each instrument's identity and settings)"
    )
    station_file: str = Field("", description="lab runs: the station file's path")
    station_yaml: str = Field("", description="lab runs: the station file's text")
    sweep: str = Field("", description="id of the sweep the run is a point of (hil sweep; empty: none)")
    sweep_point: int | None = Field(None, description="the run's point number in its sweep")
    sweep_params: dict[str, Any] = Field(
        default_factory=dict, description="the sweep's grid values at this point (dotted config keys, and chip)"
    )


class RunStop(_Document):
    """How a run ended (root attributes written when the run file is closed)."""

    status: Status = Field("running", description="running until the run ends; then success, abort or fail")
    exit_reason: str = Field("", description="machine-readable reason, one of hil.runs.REASONS")
    exception_type: str = Field("", description="module.QualifiedName of the exception that ended the run")
    exception_message: str = Field("", description="its message (first 4000 characters)")
    summary: dict[str, Any] = Field(default_factory=dict, description="the protocol's returned summary")
    stopped_at: str = Field("", description="UTC ISO-8601 stop time")
    stopped_unix: float = Field(0.0, description="stop time [s, unix]")
    n_calls: int = Field(0, description="chip calls journaled")
    wall_s: float = Field(0.0, description="wall time of the protocol [s]")


#: Attributes the writer owns (not part of either document).
LAYOUT_ATTRS: tuple[str, ...] = ("hil_layout", "hil_layout_version")


class IndexEntry(BaseModel):
    """One run in a folder's index (``hil-index.jsonl``), derived from its two documents."""

    model_config = ConfigDict(extra="ignore")

    run_id: str
    file: str
    protocol: str = ""
    status: str = "running"
    started_at: str = ""
    started_unix: float = 0.0
    stopped_at: str = ""
    seed: int = 0
    chip: str = ""
    reason: str = ""
    host: str = ""
    pid: int = 0
    n_calls: int | None = None
    wall_s: float | None = None
    replay_of: str = ""
    tags: list[str] = Field(default_factory=list)
    sample: str = ""
    comment: str = ""
    #: The sweep the run is a point of (``hil sweep``; empty: none) and its point number there.
    sweep: str = ""
    sweep_point: int | None = None
    #: The config's scalar values (nested keys joined with "."), for ``hil ls --where``.
    config: dict[str, Any] = Field(default_factory=dict)
    #: The summary's scalar values (nested keys joined with "."), once the run has stopped.
    summary: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any], file_name: str) -> IndexEntry:
        """The entry of a run from its root attributes (a stopped run also carries its stop document)."""
        start = RunStart.from_attrs(attrs, where=file_name)
        stopped = "status" in attrs and decode_attr(attrs["status"]) != "running"
        stop = RunStop.from_attrs(attrs, where=file_name)
        return cls(
            run_id=start.run_id or Path(file_name).stem,
            file=file_name,
            protocol=start.protocol,
            status=stop.status,
            started_at=start.started_at,
            started_unix=start.started_unix,
            stopped_at=stop.stopped_at,
            seed=start.seed,
            chip=start.chip_spec or start.chip_backend,
            reason=stop.exit_reason,
            host=start.host,
            pid=start.pid,
            n_calls=stop.n_calls if stopped else None,
            wall_s=stop.wall_s if stopped else None,
            replay_of=start.replay_of,
            tags=start.tags,
            sample=start.sample,
            comment=start.comment[:500],
            sweep=start.sweep,
            sweep_point=start.sweep_point,
            config=scalars(start.config),
            summary=scalars(stop.summary) if stopped else {},
        )


#: Most scalar entries ``scalars`` keeps (an index line stays small).
MAX_SCALARS = 200


def scalars(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The scalar values of a nested dict (numbers, booleans, short strings), nested keys joined with "."."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(scalars(value, f"{name}."))
        elif isinstance(value, bool | int | float) or value is None or (isinstance(value, str) and len(value) <= 200):
            out[name] = value
        if len(out) >= MAX_SCALARS:
            break
    return dict(list(out.items())[:MAX_SCALARS])

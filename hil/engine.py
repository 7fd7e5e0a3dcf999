"""The run engine: run a registered protocol on a chip into a run file; resume and replay runs.

``run_protocol`` resolves the protocol's pydantic config (model defaults, then a YAML file, then
``--set key=value`` items), opens the chip from a spec (or takes a chip object), creates the run
file, wraps the chip in a :class:`hil.journal.RecordingChip`, calls ``fn(chip, config, run)`` and
records the outcome: ``success``, ``abort`` (Ctrl-C, SIGTERM) or ``fail``, each with a
machine-readable reason and the exception type. ``resume_run`` continues an incomplete run by
replaying its journal (re-executing it on an in-process chip like the emulator) and then going
live; ``replay_run`` re-runs a recorded run against its own journal.
"""

from __future__ import annotations

import contextlib
import os
import platform
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

import hil
from hil.chip import Chip
from hil.errors import ChipCommunicationError, ChipInputError, HilError, ReplayMismatchError, SafetyLimitError
from hil.index import RunIndex, entry_from_attrs
from hil.journal import InterruptGuard, RecordingChip
from hil.protocol import ProtocolSpec, RunLog, UnknownProtocolError, get_protocol
from hil.replay import ReplayChip, reexecute_journal
from hil.runfile import RunFileError, RunReader, RunWriter, now_iso, to_json

#: Exit codes of ``hil`` commands (scripts may rely on them).
EXIT_OK = 0
EXIT_FAILED = 1  #: the run failed (the protocol or the chip raised)
EXIT_USAGE = 2  #: bad input: unknown protocol or key, bad value, not a run file, newer layout, ...
EXIT_ABORTED = 3  #: the run was aborted (Ctrl-C, SIGTERM); it can be resumed
EXIT_MISMATCH = 4  #: a replay or resume met a call that differs from the recording
EXIT_CHIP = 5  #: the chip could not be opened or reached
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "run failed",
    EXIT_USAGE: "bad input or usage",
    EXIT_ABORTED: "run aborted (resumable)",
    EXIT_MISMATCH: "replay differs from the recording",
    EXIT_CHIP: "chip could not be opened or reached",
}
DEFAULT_OUT = "hil-runs"


class ConfigError(HilError, ValueError):
    """A protocol configuration (YAML file or --set item) is invalid."""


class RunTerminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM during a run."""


# ---------------------------------------------------------------------------------------------- config
def _model_fields_at(model: type[BaseModel], path: Sequence[Any]) -> type[BaseModel] | None:
    for part in path:
        info = model.model_fields.get(str(part))
        ann = getattr(info, "annotation", None) if info else None
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            return None
    return model


def format_validation_error(name: str, model: type[BaseModel], exc: ValidationError) -> str:
    """One line per problem: unknown keys list the valid ones, bad values name value and rule."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        if err["type"] == "extra_forbidden":
            parent = _model_fields_at(model, err["loc"][:-1])
            valid = ", ".join(parent.model_fields) if parent else "(see hil protocols)"
            lines.append(f"unknown config key {loc!r}; valid keys: {valid}")
        else:
            value = err.get("input")
            shown = repr(value) if not isinstance(value, dict) else "{...}"
            lines.append(f"{loc}={shown}: {err['msg']}")
    return (
        f"invalid config for protocol {name!r}:\n  " + "\n  ".join(lines)
        + f"\nFix the YAML file or --set item (`hil protocols {name}` lists keys, defaults and limits)."
    )


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_set(item: str) -> dict[str, Any]:
    """``a.b=VALUE`` -> ``{"a": {"b": value}}``; VALUE is read as YAML (numbers, lists, true/false)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. --set batch=64), got {item!r}.")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    out: dict[str, Any] = {}
    node = out
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return out


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping of config keys (an empty file is an empty mapping)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {p}: {exc.strerror or exc}.") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values, got a {type(data).__name__}.")
    return data


def resolve_config(
    spec: ProtocolSpec,
    *,
    base: dict[str, Any] | BaseModel | None = None,
    config_file: str | os.PathLike[str] | None = None,
    sets: Iterable[str] = (),
) -> BaseModel:
    """Model defaults, then ``base``, then the YAML file, then ``--set`` items; validated."""
    data: dict[str, Any] = {}
    if isinstance(base, BaseModel):
        data = base.model_dump(mode="json")
    elif base:
        data = dict(base)
    if config_file is not None:
        data = _deep_merge(data, load_config_file(config_file))
    for item in sets:
        data = _deep_merge(data, parse_set(item))
    model = spec.config_model
    unknown = [k for k in data if k not in model.model_fields]
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r} for protocol {spec.name!r}; valid keys: {', '.join(model.model_fields)}"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(spec.name, model, exc)) from exc


_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def _type_name(annotation: Any) -> str:
    name = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    return name or str(annotation).replace("typing.", "")


def describe_config(model: type[BaseModel]) -> list[dict[str, Any]]:
    """Keys of a config model with type, default, limits and description (for ``hil protocols``)."""
    schema = model.model_json_schema()
    props = schema.get("properties", {})
    out = []
    for name, info in model.model_fields.items():
        prop = props.get(name, {})
        limits = {k: prop[k] for k in (*_BOUNDS, "enum", "minItems", "maxItems", "pattern") if k in prop}
        items = prop.get("items") or next((a.get("items") for a in prop.get("anyOf", []) if "items" in a), None) or {}
        limits.update({f"items.{k}": v for k, v in items.items() if k in _BOUNDS})
        for alt in prop.get("anyOf", []):
            limits.update({k: alt[k] for k in (*_BOUNDS, "minItems", "maxItems") if k in alt})
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump(mode="json")
        out.append({
            "key": name,
            "type": _type_name(info.annotation),
            "default": default,
            "required": info.is_required(),
            "limits": limits,
            "description": info.description or "",
        })
    return out


# ---------------------------------------------------------------------------------------------- chips
def open_chip(spec: str, *, seed: int = 0) -> Chip:
    """Chip from a spec: ``emulator[:PRESET,cores=N,...]``, ``lab:HOST:PORT``, ``replay:FILE``."""
    from hil.backends import backend_class

    name, _, rest = spec.partition(":")
    if name == "replay":
        if not rest:
            raise ChipInputError("chip spec 'replay:' needs a run file: --chip replay:PATH/TO/RUN.h5")
        return ReplayChip(Path(rest))
    try:
        cls = backend_class(name)
    except HilError as exc:
        raise ChipInputError(
            f"unknown chip {spec!r}: {exc}. Use emulator[:PRESET], lab:HOST:PORT or replay:FILE."
        ) from exc
    return cls.from_spec(rest, seed=seed)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "hil": hil.__version__, "platform": platform.platform()}
    for pkg in ("numpy", "h5py", "pydantic", "torch", "pyvisa", "aiomqtt"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    try:
        import h5py

        out["hdf5"] = h5py.version.hdf5_version
    except ImportError:  # pragma: no cover - h5py is a dependency
        pass
    return out


def new_run_id(protocol: str) -> str:
    """``YYYYMMDD-HHMMSS-<protocol>-<6 hex>``: sortable by start time and unique."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{protocol}-{secrets.token_hex(3)}"


# ---------------------------------------------------------------------------------------------- results
@dataclass
class RunResult:
    """Outcome of a run (also what ``hil run --json`` prints)."""

    path: Path
    run_id: str
    protocol: str
    status: str  #: success | abort | fail
    reason: str  #: completed | keyboard_interrupt | terminated | replay_mismatch | chip_communication | ...
    exception_type: str = ""
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    n_calls: int = 0
    wall_s: float = 0.0
    error: BaseException | None = field(default=None, repr=False)

    @property
    def exit_code(self) -> int:
        if self.status == "success":
            return EXIT_OK
        if self.status == "abort":
            return EXIT_ABORTED
        if self.reason == "replay_mismatch":
            return EXIT_MISMATCH
        return EXIT_FAILED

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "run_id": self.run_id, "protocol": self.protocol, "status": self.status,
            "reason": self.reason, "exception_type": self.exception_type, "message": self.message,
            "summary": self.summary, "n_calls": self.n_calls, "wall_s": round(self.wall_s, 3),
            "exit_code": self.exit_code,
        }

    def raise_for_status(self) -> RunResult:
        """Re-raise the run's exception if it did not succeed; returns self otherwise."""
        if self.error is not None:
            raise self.error
        if self.status != "success":
            raise HilError(f"run {self.run_id} ended with status {self.status} ({self.reason})")
        return self


def failure_reason(exc: BaseException) -> str:
    """Machine-readable reason for an exception that ended a run."""
    if isinstance(exc, KeyboardInterrupt):
        return "keyboard_interrupt"
    if isinstance(exc, RunTerminated):
        return "terminated"
    for cls, reason in (
        (ReplayMismatchError, "replay_mismatch"),
        (ChipCommunicationError, "chip_communication"),
        (SafetyLimitError, "safety_limit"),
        (ChipInputError, "chip_input"),
        (RunFileError, "run_file"),
        (HilError, "hil_error"),
    ):
        if isinstance(exc, cls):
            return reason
    return "exception"


# ---------------------------------------------------------------------------------------------- run log
class _ProgressBar:
    """tqdm bars on stderr: on when ``enabled`` is True, off when False, only on a terminal when None."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.key: tuple[Any, ...] = ()

    def update(self, done: int, total: int | None, desc: str) -> None:
        if self.enabled is False:
            return
        if self.bar is None or self.key != (total, desc):
            from tqdm import tqdm

            self.close()
            self.bar = tqdm(total=total, desc=desc or None, disable=None if self.enabled is None else False,
                            file=sys.stderr, leave=False, dynamic_ncols=True)
            self.key = (total, desc)
        step = int(done) - self.bar.n
        if step:
            self.bar.update(step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EngineRunLog(RunLog):
    """The run log protocols get from the engine: a run file, progress bars and telemetry."""

    def __init__(self, writer: RunWriter, seed: int, *, progress: bool | None = None, telemetry: Any = None) -> None:
        self.writer = writer
        self._seed = seed
        self._bar = _ProgressBar(progress)
        self._telemetry = telemetry
        self.last_progress: tuple[int, int | None, str] | None = None

    @property
    def seed(self) -> int:
        return self._seed

    def log(self, stream: str, **columns: Any) -> None:
        self.writer.log(stream, **columns)

    def progress(self, done: int, total: int | None = None, desc: str = "") -> None:
        self.last_progress = (done, total, desc)
        self._bar.update(done, total, desc)
        if self._telemetry is not None:
            self._telemetry.progress(done, total, desc)

    def note(self, message: str) -> None:
        self.writer.note(message)

    def close(self) -> None:
        self._bar.close()


# ---------------------------------------------------------------------------------------------- running
@dataclass
class _Plan:
    """Everything a run needs once config and chip are resolved."""

    spec: ProtocolSpec
    config: BaseModel
    chip: Chip
    seed: int
    writer: RunWriter
    final_path: Path
    progress: bool | None
    telemetry: Any
    index: RunIndex


class _Signals:
    """Route SIGINT through the interrupt guard and SIGTERM to :class:`RunTerminated` (main thread only)."""

    def __init__(self, guard: InterruptGuard) -> None:
        self.guard = guard
        self.saved: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self.saved[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.guard.interrupt())
            self.saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._term)
        return self

    @staticmethod
    def _term(*_: Any) -> None:
        raise RunTerminated("SIGTERM")

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _telemetry_sink(telemetry: Any, run_id: str) -> Any:
    if telemetry is None or telemetry is False:
        url = os.environ.get("HIL_MQTT", "") if telemetry is None else ""
        if not url:
            return None
        telemetry = url
    if isinstance(telemetry, str):
        from hil.telemetry import MqttTelemetry

        return MqttTelemetry.from_url(telemetry, run_id=run_id)
    return telemetry


def _execute(plan: _Plan) -> RunResult:
    """Run the protocol of ``plan``; record the outcome in the run file and the index."""
    writer = plan.writer
    attrs = writer.attrs
    run_id = str(attrs["run_id"])
    guard = InterruptGuard()
    chip = RecordingChip(plan.chip, writer, guard=guard)
    runlog = EngineRunLog(writer, plan.seed, progress=plan.progress, telemetry=plan.telemetry)
    plan.index.record(entry_from_attrs(attrs, plan.final_path.name))
    if plan.telemetry is not None:
        plan.telemetry.started({k: attrs[k] for k in ("run_id", "protocol", "seed", "chip_spec", "started_at") if k in attrs})
    status, reason, error = "success", "completed", None
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        with _Signals(guard):
            result = plan.spec.fn(chip, plan.config, runlog)
            base = plan.chip
            if isinstance(base, ReplayChip) and not base.went_live and base.remaining:
                raise ReplayMismatchError(
                    f"the protocol finished after {base.position} calls but the recording of "
                    f"{base.reader.path.name} holds {len(base.journal)}; the replay differs from the recording."
                )
        summary = result if isinstance(result, dict) else ({} if result is None else {"result": result})
    except (KeyboardInterrupt, RunTerminated) as exc:
        status, reason, error = "abort", failure_reason(exc), exc
    except Exception as exc:
        status, reason, error = "fail", failure_reason(exc), exc
    finally:
        runlog.close()
    wall = time.perf_counter() - t0
    exc_type = f"{type(error).__module__}.{type(error).__qualname__}" if error is not None else ""
    message = str(error) if error is not None else ""
    if error is not None and status == "fail":
        with contextlib.suppress(RunFileError):
            writer.note("".join(traceback.format_exception(error))[-1000:])
    final = {
        "status": status,
        "exit_reason": reason,
        "exception_type": exc_type,
        "exception_message": message[:4000],
        "summary_json": to_json(summary),
        "stopped_at": now_iso(),
        "stopped_unix": time.time(),
        "n_calls": writer.n_calls,
        "wall_s": wall,
    }
    try:
        writer.close(**final)
    except RunFileError as exc:
        status, reason, error = "fail", "run_file", exc
        exc_type, message = f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)
    res = RunResult(
        path=plan.final_path if writer.path == plan.final_path else writer.path,
        run_id=run_id,
        protocol=plan.spec.name,
        status=status,
        reason=reason,
        exception_type=exc_type,
        message=message,
        summary=summary,
        n_calls=writer.n_calls,
        wall_s=wall,
        error=error,
    )
    if writer.path == plan.final_path:
        plan.index.record(entry_from_attrs({**attrs, **final, "status": status, "exit_reason": reason}, plan.final_path.name))
    if plan.telemetry is not None:
        plan.telemetry.finished(res.to_dict())
        plan.telemetry.close()
    return res


def _base_attrs(
    run_id: str, spec: ProtocolSpec, config: BaseModel, seed: int, chip: Chip, chip_spec: str, **extra: Any
) -> dict[str, Any]:
    info = chip.info
    attrs = {
        "run_id": run_id,
        "protocol": spec.name,
        "protocol_description": spec.description,
        "config_json": config.model_dump_json(),
        "seed": int(seed),
        "chip_spec": chip_spec,
        "chip_backend": info.backend,
        "chip_name": info.name,
        "chip_serial": info.serial,
        "chip_info_json": info.model_dump_json(),
        "geometry_json": chip.geometry.model_dump_json(),
        "versions_json": to_json(_versions()),
        "command": " ".join(sys.argv),
        "resume_count": 0,
        "resumed_at_json": "[]",
        "preceded_by_json": "[]",
        "replay_of": "",
    }
    attrs.update(extra)
    return attrs


def run_protocol(
    protocol: str,
    *,
    chip: Chip | str = "emulator",
    chip_spec: str | None = None,
    config: dict[str, Any] | BaseModel | None = None,
    config_file: str | os.PathLike[str] | None = None,
    sets: Iterable[str] = (),
    seed: int | None = None,
    out: str | os.PathLike[str] = DEFAULT_OUT,
    progress: bool | None = None,
    telemetry: Any = None,
    run_id: str | None = None,
    preceded_by: Sequence[str | os.PathLike[str]] = (),
    flush_interval_s: float | None = None,
    compression: str = "auto",
    chip_seed: int | None = None,
) -> RunResult:
    """Run ``protocol`` and write its run file into ``out``; returns a :class:`RunResult`.

    ``chip``: a spec (``emulator``, ``emulator:PRESET``, ``lab:HOST:PORT``, ``replay:FILE``) or a
    chip object (then ``chip_spec`` says how to rebuild it for ``hil resume``; ``preceded_by`` lists
    earlier run files that used the same chip object, re-executed first on resume). A replay chip
    defaults ``seed`` and ``config`` to the recorded ones. ``chip_seed``: the seed the chip was built
    with (default: the chip object's ``seed`` attribute, or ``seed`` for a spec); resume rebuilds the
    chip with it. Ctrl-C is recorded as ``abort`` and then
    re-raised; failures are returned (``result.raise_for_status()`` re-raises them). ``compression``:
    ``auto`` (deflate where a trial on the first rows saves a quarter or more), ``gzip`` or ``none``.
    """
    spec = get_protocol(protocol)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**63).")
    owns_chip = isinstance(chip, str)
    chip_obj: Chip
    if isinstance(chip, str):
        chip_spec = chip
        replay_base = None
        if chip.startswith("replay:"):
            with RunReader(chip.partition(":")[2]) as rec:
                replay_base = (rec.seed, rec.config if rec.protocol == spec.name else None, rec.run_id)
        if seed is None and replay_base is not None:
            seed = replay_base[0]
        if config is None and replay_base is not None and replay_base[1] is not None:
            config = replay_base[1]
        cfg = resolve_config(spec, base=config, config_file=config_file, sets=sets)
        chip_obj = open_chip(chip, seed=seed or 0)
    else:
        chip_obj = chip
        if isinstance(chip, ReplayChip):
            chip_spec = chip_spec or f"replay:{chip.reader.path}"
            if seed is None:
                seed = chip.reader.seed
            if config is None and chip.reader.protocol == spec.name:
                config = chip.reader.config
        cfg = resolve_config(spec, base=config, config_file=config_file, sets=sets)
    seed = 0 if seed is None else seed
    try:
        out_dir = Path(out)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id = run_id or new_run_id(spec.name)
        path = out_dir / f"{run_id}.h5"
        replay_of = chip_obj.reader.run_id if isinstance(chip_obj, ReplayChip) else ""
        own_seed = getattr(chip_obj, "seed", None)
        if chip_seed is None:
            chip_seed = seed if owns_chip or not isinstance(own_seed, int) else own_seed
        attrs = _base_attrs(
            run_id, spec, cfg, seed, chip_obj, chip_spec or "",
            chip_seed=int(chip_seed),
            preceded_by_json=to_json([str(Path(p).name) for p in preceded_by]),
            replay_of=replay_of,
        )
        extra: dict[str, Any] = {"flush_interval_s": flush_interval_s} if flush_interval_s else {}
        writer = RunWriter(path, attrs, compression=compression, **extra)
        plan = _Plan(spec, cfg, chip_obj, seed, writer, path, progress, _telemetry_sink(telemetry, run_id), RunIndex(out_dir))
        result = _execute(plan)
    finally:
        if owns_chip:
            chip_obj.close()
    if result.status == "abort" and result.reason == "keyboard_interrupt":
        raise KeyboardInterrupt
    return result


def resume_run(
    path: str | os.PathLike[str],
    *,
    chip: Chip | str | None = None,
    progress: bool | None = None,
    telemetry: Any = None,
) -> RunResult:
    """Continue an incomplete (or aborted) run in place; returns its final :class:`RunResult`.

    The protocol is re-run with the recorded config and seed against a replay of the journal. For a
    chip whose state lives in this process (``resume_by_reexecution``, the emulator) the journaled
    calls are re-executed on a fresh chip built from the recorded spec and checked against the
    journal; for others (the lab board) they are answered from the journal. After the last recorded
    call the run goes on live. The new file is written beside the old one and replaces it only once
    the journal has been replayed, so a resume that fails early leaves the run as it was.
    """
    path = Path(path)
    reader = RunReader(path)
    try:
        status = reader.effective_status
        if status == "running":
            raise HilError(
                f"{path} is still being written (pid {reader.attrs.get('pid')} on {reader.attrs.get('host')}); "
                "stop that process first, or wait for it."
            )
        if status not in ("incomplete", "abort"):
            raise HilError(f"{path} finished with status {status!r}; only incomplete or aborted runs can be resumed.")
        spec = get_protocol(reader.protocol)
        if not spec.deterministic:
            raise HilError(f"protocol {spec.name!r} is registered as non-deterministic; its runs cannot be resumed by replay.")
        cfg = resolve_config(spec, base=reader.config)
        seed = reader.seed
        chip_spec = chip if isinstance(chip, str) else reader.chip_spec
        if isinstance(chip, Chip):
            live = chip
        else:
            if not chip_spec:
                raise HilError(
                    f"{path} was started with a chip object, not a chip spec; pass the chip to resume on "
                    "(--chip emulator:... or lab:HOST:PORT)."
                )
            if chip_spec.startswith("replay:"):
                raise HilError(f"{path} is a replay of {chip_spec[7:]}; run `hil replay` on that file again instead.")
            live = open_chip(chip_spec, seed=int(reader.attrs.get("chip_seed", seed)))
        reexecute = bool(getattr(live, "resume_by_reexecution", False))
        preceded = reader._json_attr("preceded_by_json", [])
        if reexecute:
            for name in preceded:
                reexecute_journal(live, path.parent / name)
        attrs = {k: v for k, v in reader.attrs.items() if k not in (
            "status", "stopped_at", "stopped_unix", "exit_reason", "exception_type", "exception_message",
            "summary_json", "n_calls", "wall_s", "host", "pid", "hil_layout", "hil_layout_version",
        )}
        attrs["chip_spec"] = chip_spec
        attrs["resume_count"] = int(attrs.get("resume_count", 0)) + 1
        attrs["resumed_at_json"] = to_json([*reader._json_attr("resumed_at_json", []), now_iso()])
        tmp = path.with_name(f".{path.name}.resuming")
        tmp.unlink(missing_ok=True)
        writer = RunWriter(tmp, attrs)
        n_recorded = len(reader.journal)

        def go_live() -> None:
            writer.note(f"resume: the {n_recorded} recorded calls matched; continuing live")
            writer.flush()
            writer.move_to(path)

        replay = ReplayChip(reader, live=live, reexecute=reexecute, on_live=go_live)
        sink = _telemetry_sink(telemetry, str(attrs["run_id"]))
        plan = _Plan(spec, cfg, replay, seed, writer, path, progress, sink, RunIndex(path.parent))
        result = _execute(plan)
        if writer.path != path:
            if result.status == "success" and replay.remaining == 0:
                os.replace(writer.path, path)
                result.path = path
                plan.index.record(entry_from_attrs(read_final(path), path.name))
            else:
                # Failed or interrupted before the journal was replayed: keep the run as it was.
                writer.path.unlink(missing_ok=True)
                result.path = path
                plan.index.record(entry_from_attrs(dict(reader.attrs), path.name))
        replay.close()
    finally:
        reader.close()
    if result.status == "abort" and result.reason == "keyboard_interrupt":
        raise KeyboardInterrupt
    return result


def read_final(path: Path) -> dict[str, Any]:
    with RunReader(path) as r:
        return dict(r.attrs)


def replay_run(
    path: str | os.PathLike[str], *, out: str | os.PathLike[str] | None = None, progress: bool | None = None
) -> RunResult:
    """Re-run a recorded run's protocol (recorded config and seed) against its journal, into a new run file."""
    path = Path(path)
    with RunReader(path) as rec:
        protocol = rec.protocol
        if not protocol:
            raise HilError(f"{path} names no protocol; it cannot be replayed.")
    return run_protocol(protocol, chip=f"replay:{path}", out=out or path.parent, progress=progress)


__all__ = [
    "DEFAULT_OUT",
    "EXIT_ABORTED",
    "EXIT_CHIP",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_MISMATCH",
    "EXIT_OK",
    "EXIT_USAGE",
    "ConfigError",
    "EngineRunLog",
    "RunResult",
    "RunTerminated",
    "UnknownProtocolError",
    "describe_config",
    "open_chip",
    "replay_run",
    "resolve_config",
    "resume_run",
    "run_protocol",
]

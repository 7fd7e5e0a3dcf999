"""The runner: run a protocol on a chip into a run file; resume and replay runs.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

:func:`run_protocol` resolves the protocol's config (:mod:`hil.config`), opens the chip from a
spec (:mod:`hil.chips`) or takes a chip object, runs the protocol's input check, creates the run
file (:class:`hil.runs.RunWriter` with a :class:`hil.runs.RunStart` document), wraps the chip in a
:class:`hil.journal.RecordingChip`, calls ``fn(chip, config, run)`` and writes the
:class:`hil.runs.RunStop` document: ``success``, ``abort`` (Ctrl-C, SIGTERM) or ``fail``, each with
a machine-readable reason and the exception type. :func:`resume_run` continues an incomplete run
by replaying its journal (re-executing it on an in-process chip like the emulator) and then going
live; :func:`replay_run` re-runs a recorded run against its own journal. How a run is written
(folder, progress, telemetry, flushing) is a :class:`RunOptions`.
"""

from __future__ import annotations

import contextlib
import fcntl
import inspect
import os
import platform
import re
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import hil
from hil.chip import Chip
from hil.chips import open_chip, resume_spec
from hil.config import resolve_config
from hil.errors import (
    ChipCommunicationError,
    ChipInputError,
    ConfigError,
    HilError,
    ReplayMismatchError,
    RunFileError,
    SafetyLimitError,
)
from hil.journal import InterruptGuard, RecordingChip
from hil.protocol import (
    MAX_INPUT_BYTES,
    ProtocolSpec,
    RunLog,
    UnknownProtocolError,
    freeze_inputs,
    get_protocol,
    load_protocol_module,
    source_hint,
)
from hil.replay import ReplayChip, reexecute_journal
from hil.runs.index import DEFAULT_OUT, RunIndex, entry_from_attrs
from hil.runs.metadata import RunStart, RunStop, now_iso
from hil.runs.reader import RunReader
from hil.runs.writer import RunWriter
from hil.version import git_revision


class RunTerminated(BaseException):
    """Raised in the main thread when the process gets SIGTERM during a run."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C ended a run: it is recorded as ``abort`` and can be resumed; ``result`` says where."""

    def __init__(self, result: RunResult) -> None:
        super().__init__(f"run {result.run_id} interrupted; resume it with `hil resume {result.path}`")
        self.result = result


class RunOptions(BaseModel):
    """How a run is written and watched (not what it does: that is the protocol's config)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    out: Path = Field(Path(DEFAULT_OUT), description="folder the run file (and the folder's index) goes to")
    progress: bool | None = Field(None, description="progress bars on stderr: True always, False never, None on a terminal")
    telemetry: Any = Field(
        None, description="MQTT telemetry: a URL mqtt://HOST:PORT/PREFIX, a sink object, False (off) or None ($HIL_MQTT)"
    )
    run_id: str | None = Field(None, description="run id (default: YYYYMMDD-HHMMSS-<protocol>-<6 hex>)")
    chip_spec: str | None = Field(None, description="for a chip object: the spec that rebuilds it for `hil resume`")
    chip_seed: int | None = Field(None, description="seed the chip was built with (default: the chip's own seed)")
    preceded_by: Sequence[str | os.PathLike[str]] = Field(
        (), description="earlier run files that used the same chip object (re-executed first on resume)"
    )
    flush_interval_s: float | None = Field(None, ge=0.01, le=1.0, description="writer flush interval [s] (default 0.25)")
    compression: Literal["auto", "gzip", "none"] = Field(
        "auto", description="deflate datasets: auto (where a trial saves a quarter), gzip (always), none"
    )
    tags: Sequence[str] = Field((), description="labels for finding the run later (hil ls --tag, hil.catalog)")
    sample: str = Field("", max_length=200, description="the sample or chip under test, as you name it")
    comment: str = Field("", max_length=4000, description="free text about the run")
    station: Any = Field(
        None, description="the lab station (drivers.station.Station) whose snapshot the run records; "
        "default: the chip's own station (a chip from Station.chip() knows it)"
    )
    sweep: str = Field("", max_length=100, description="id of the sweep this run is a point of (hil sweep; empty: none)")
    sweep_point: int | None = Field(None, ge=0, description="the run's point number in its sweep")
    sweep_params: dict[str, Any] = Field(
        default_factory=dict, description="the sweep's grid values at this point (dotted config keys, and chip)"
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: Sequence[str]) -> Sequence[str]:
        for tag in value:
            if not isinstance(tag, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/+\-]{0,63}", tag):
                raise ValueError(f"tag {tag!r}: use 1-64 letters, digits and _ . : / + - (no spaces), starting alphanumeric")
        return list(dict.fromkeys(value))


def _options(options: RunOptions | None, kwargs: dict[str, Any]) -> RunOptions:
    unknown = sorted(set(kwargs) - set(RunOptions.model_fields))
    if unknown:
        raise TypeError(f"unknown run option(s) {unknown}; valid: {', '.join(RunOptions.model_fields)}")
    try:
        base = options.model_dump() if options is not None else {}
        return RunOptions.model_validate({**base, **kwargs})
    except ValidationError as exc:
        raise ConfigError(f"invalid run options: {exc}") from exc


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
    reason: str  #: one of hil.runs.REASONS
    exception_type: str = ""
    message: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    n_calls: int = 0
    wall_s: float = 0.0
    error: BaseException | None = field(default=None, repr=False)
    #: Best-effort telemetry of the run: messages published, dropped, errors and the last error (None: no telemetry).
    telemetry: dict[str, Any] | None = None

    @property
    def exit_code(self) -> int:
        """The ``hil`` exit code for this outcome (see :mod:`hil.cli`)."""
        from hil.cli import exit_code_for

        return exit_code_for(self.status, self.reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "run_id": self.run_id, "protocol": self.protocol, "status": self.status,
            "reason": self.reason, "exception_type": self.exception_type, "message": self.message,
            "summary": self.summary, "n_calls": self.n_calls, "wall_s": round(self.wall_s, 3),
            "exit_code": self.exit_code, **({"telemetry": self.telemetry} if self.telemetry is not None else {}),
        }

    def raise_for_status(self) -> RunResult:
        """Re-raise the run's exception if it did not succeed; returns self otherwise."""
        if self.error is not None:
            raise self.error
        if self.status != "success":
            raise HilError(f"run {self.run_id} ended with status {self.status} ({self.reason})")
        return self


def failure_reason(exc: BaseException) -> str:
    """Machine-readable reason (one of :data:`hil.runs.REASONS`) for an exception that ended a run."""
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
def interactive_output() -> bool:
    """Whether progress is worth showing: stderr is a terminal, or this runs in a Jupyter kernel."""
    if "ipykernel" in sys.modules:
        with contextlib.suppress(Exception):
            from IPython import get_ipython

            shell = get_ipython()
            if shell is not None and getattr(shell, "kernel", None) is not None:
                return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _ProgressBar:
    """tqdm.auto bars (widgets in a notebook, text on stderr elsewhere): on when ``enabled`` is
    True, off when False; when None, on a terminal or in a Jupyter kernel."""

    def __init__(self, enabled: bool | None) -> None:
        self.enabled = enabled
        self.bar: Any = None
        self.key: tuple[Any, ...] = ()

    def update(self, done: int, total: int | None, desc: str) -> None:
        if self.enabled is False:
            return
        if self.enabled is None:
            self.enabled = interactive_output()
            if not self.enabled:
                return
        if self.bar is None or self.key != (total, desc):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tqdm.auto's "IProgress not found" without ipywidgets
                from tqdm.auto import tqdm

            self.close()
            self.bar = tqdm(total=total, desc=desc or None, disable=False, file=sys.stderr, leave=False, dynamic_ncols=True)
            self.key = (total, desc)
        step = int(done) - self.bar.n
        if step:
            self.bar.update(step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class EngineRunLog(RunLog):
    """The run log protocols get from the runner: a run file, progress bars and telemetry."""

    def __init__(
        self, writer: RunWriter, seed: int, *, progress: bool | None = None, telemetry: Any = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> None:
        self.writer = writer
        self._seed = seed
        self._inputs = freeze_inputs(inputs or {})
        self._bar = _ProgressBar(progress)
        self._telemetry = telemetry
        self.last_progress: tuple[int, int | None, str] | None = None

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        return self._inputs

    def log(self, stream: str, **columns: Any) -> None:
        self.writer.log(stream, **columns)

    def declare(self, stream: str, **declaration: Any) -> None:  # type: ignore[override]
        self.writer.declare(stream, **declaration)

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
    inputs: Mapping[str, Any] = field(default_factory=dict)


class _Signals:
    """Route SIGINT through the interrupt guard and SIGTERM to :class:`RunTerminated` (main thread only).

    Once the protocol has ended, :meth:`defer` makes both signals wait: the final flush and the stop
    document are written first, then :meth:`redeliver` (after the handlers are restored) sends the
    process a SIGTERM that arrived, so a Ctrl-C or SIGTERM then never leaves ``status=running``.
    """

    def __init__(self, guard: InterruptGuard) -> None:
        self.guard = guard
        self.saved: dict[int, Any] = {}
        self.deferred: list[int] = []

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            self.saved[signal.SIGINT] = signal.signal(signal.SIGINT, lambda *_: self.guard.interrupt())
            self.saved[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._term)
        return self

    @staticmethod
    def _term(*_: Any) -> None:
        raise RunTerminated("SIGTERM")

    def defer(self) -> None:
        """From now on, remember SIGINT and SIGTERM instead of acting on them."""
        for sig in self.saved:
            signal.signal(sig, lambda signum, _frame: self.deferred.append(signum))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)

    def redeliver(self) -> None:
        """Send the process a SIGTERM that arrived while deferred (a Ctrl-C after the protocol ended
        only waited: the run is complete, so it needs no abort)."""
        if signal.SIGTERM in self.deferred:
            os.kill(os.getpid(), signal.SIGTERM)


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


#: Runs executing in this process (any thread): run id -> (sweep id, its interrupt guard).
_ACTIVE: dict[str, tuple[str, InterruptGuard]] = {}
_ACTIVE_LOCK = threading.Lock()


def active_runs() -> dict[str, str]:
    """The runs executing in this process now (in any thread): run id -> sweep id (empty: none)."""
    with _ACTIVE_LOCK:
        return {run_id: sweep for run_id, (sweep, _) in _ACTIVE.items()}


def interrupt_runs(*, sweep: str | None = None, run_id: str | None = None) -> list[str]:
    """Stop runs executing in this process (in any thread) as Ctrl-C would: each ends after its
    current chip call is journaled, with status ``abort`` (resumable). ``sweep`` / ``run_id``: only
    that sweep's runs / that run (default: all). Returns the run ids asked to stop."""
    with _ACTIVE_LOCK:
        hit = [(rid, guard) for rid, (sw, guard) in _ACTIVE.items()
               if (sweep is None or sw == sweep) and (run_id is None or rid == run_id)]
    for _, guard in hit:
        guard.pending = True  # raised in the run's own thread once its current (or next) chip call is journaled
    return [rid for rid, _ in hit]


def _execute(plan: _Plan) -> RunResult:
    """Run the protocol of ``plan``; record the outcome in the run file and the index."""
    with _ACTIVE_LOCK:
        guard = InterruptGuard()
        _ACTIVE[plan.writer.start.run_id] = (plan.writer.start.sweep, guard)
    try:
        return _execute_guarded(plan, guard)
    finally:
        with _ACTIVE_LOCK:
            _ACTIVE.pop(plan.writer.start.run_id, None)


def _execute_guarded(plan: _Plan, guard: InterruptGuard) -> RunResult:
    writer = plan.writer
    start = writer.start
    chip = RecordingChip(plan.chip, writer, guard=guard, run_key=start.run_id)
    runlog = EngineRunLog(writer, plan.seed, progress=plan.progress, telemetry=plan.telemetry, inputs=plan.inputs)
    plan.index.record(entry_from_attrs(writer.attrs, plan.final_path.name))
    if plan.telemetry is not None:
        plan.telemetry.started(start.model_dump(include={"run_id", "protocol", "seed", "chip_spec", "started_at"}))
    status, reason, error = "success", "completed", None
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    signals = _Signals(guard)
    with signals:
        try:
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
            signals.defer()
            runlog.close()
        wall = time.perf_counter() - t0
        exc_type = f"{type(error).__module__}.{type(error).__qualname__}" if error is not None else ""
        message = str(error) if error is not None else ""
        if error is not None and status == "fail":
            with contextlib.suppress(RunFileError):
                writer.note("".join(traceback.format_exception(error))[-1000:])
        stop = RunStop(
            status=status,  # type: ignore[arg-type]
            exit_reason=reason,
            exception_type=exc_type,
            exception_message=message[:4000],
            summary=summary,
            stopped_at=now_iso(),
            stopped_unix=time.time(),
            n_calls=writer.n_calls,
            wall_s=wall,
        )
        try:
            writer.close(stop)
        except RunFileError as exc:
            status, reason, error = "fail", "run_file", exc
            exc_type, message = f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)
    res = RunResult(
        path=plan.final_path if writer.path == plan.final_path else writer.path,
        run_id=start.run_id,
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
        final = {**writer.attrs, **stop.to_attrs(), "status": status, "exit_reason": reason}
        plan.index.record(entry_from_attrs(final, plan.final_path.name))
    if plan.telemetry is not None:
        plan.telemetry.finished(res.to_dict())
        plan.telemetry.close()
        stats = getattr(plan.telemetry, "stats", None)
        res.telemetry = stats() if callable(stats) else None
    signals.redeliver()
    return res


_SECRET_URL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^/\s@]+)@")
_SECRET_OPTION = re.compile(r"(?i)^(--?[a-z0-9-]*(?:token|password|secret|key)[a-z0-9-]*=)(.+)$")


def redact_command(argv: Sequence[str]) -> str:
    """The command line with credentials removed: ``user:pass@`` in URLs, values of ``--*token*``,
    ``--*password*``, ``--*secret*`` and ``--*key*`` options (run files are shared; secrets are not)."""
    out, hide_next = [], False
    for arg in argv:
        if hide_next:
            out.append("***")
            hide_next = False
            continue
        arg = _SECRET_URL.sub(r"\1***@", arg)
        arg = _SECRET_OPTION.sub(r"\1***", arg)
        if re.fullmatch(r"(?i)--?[a-z0-9-]*(token|password|secret|key)[a-z0-9-]*", arg):
            hide_next = True
        out.append(arg)
    return " ".join(out)


def _start_document(
    run_id: str, spec: ProtocolSpec, config: BaseModel, seed: int, chip: Chip, chip_spec: str, **extra: Any
) -> RunStart:
    info = chip.info
    return RunStart(
        run_id=run_id,
        protocol=spec.name,
        protocol_description=spec.description,
        protocol_source=spec.source,
        config=config.model_dump(mode="json"),
        seed=int(seed),
        chip_spec=chip_spec,
        chip_backend=info.backend,
        chip_name=info.name,
        chip_serial=info.serial,
        chip_info=info.model_dump(mode="json"),
        geometry=chip.geometry.model_dump(),
        versions=_versions(),
        command=redact_command(sys.argv),
        git_revision=git_revision(),
        **extra,
    )


def station_fields(station: Any, chip: Chip) -> dict[str, Any]:
    """``station``, ``station_file`` and ``station_yaml`` of a run's start document: the snapshot
    of ``station`` (or of the chip's own ``station``), the station file's path and text."""
    station = station if station is not None else getattr(chip, "station", None)
    if station is None:
        return {}
    if isinstance(station, dict):
        return {"station": station}
    snapshot = getattr(station, "snapshot", None)
    if not callable(snapshot):
        raise ConfigError(f"station={station!r} has no snapshot(); pass a drivers.station.Station or a dict.")
    out: dict[str, Any] = {"station": snapshot()}
    path = getattr(station, "path", None)
    if path:
        out["station_file"] = str(path)
        with contextlib.suppress(OSError, UnicodeDecodeError):
            out["station_yaml"] = Path(path).read_text(encoding="utf-8")[:1_000_000]
    return out


def _check_inputs(spec: ProtocolSpec, config: BaseModel, chip: Chip, inputs: Mapping[str, Any]) -> None:
    """The protocol's own check of its config and data against the chip, before any file or pulse."""
    if spec.check is None:
        return
    takes_inputs = len(inspect.signature(spec.check).parameters) >= 3
    try:
        if takes_inputs:
            spec.check(config, chip.geometry, freeze_inputs(inputs))
        else:
            spec.check(config, chip.geometry)
    except (ConfigError, ChipInputError):
        raise
    except (ValueError, OSError) as exc:
        raise ConfigError(f"protocol {spec.name!r}: {exc}") from exc


def load_inputs(spec: ProtocolSpec, config: BaseModel, recorded: RunReader | None = None) -> dict[str, Any]:
    """The run's input arrays: from the recorded run file when there is one that holds them (replay,
    resume), else from the protocol's ``inputs`` hook; a failing hook is bad input (ConfigError)."""
    if recorded is not None and recorded.input_info():
        return dict(recorded.inputs())
    if spec.inputs is None:
        return {}
    try:
        loaded = dict(spec.inputs(config))
    except (ConfigError, ChipInputError):
        raise
    except (ValueError, OSError) as exc:
        raise ConfigError(f"protocol {spec.name!r}: {exc}") from exc
    total = sum(np.asarray(v[0] if isinstance(v, tuple) else v).nbytes for v in loaded.values())
    if total > MAX_INPUT_BYTES:
        raise ConfigError(
            f"protocol {spec.name!r}: inputs of {total / 2**30:.1f} GiB; allowed up to {MAX_INPUT_BYTES / 2**30:.0f} GiB."
        )
    return loaded


def get_protocol_for_run(name: str, source: str = "", protocol_module: str | os.PathLike[str] | None = None) -> ProtocolSpec:
    """The protocol a run file names; ``protocol_module`` is loaded first (``--protocol-module``)."""
    if protocol_module is not None:
        load_protocol_module(protocol_module)
    try:
        return get_protocol(name)
    except UnknownProtocolError as exc:
        raise UnknownProtocolError(str(exc) + source_hint(name, source)) from None


def run_protocol(
    protocol: str,
    *,
    chip: Chip | str = "emulator",
    config: dict[str, Any] | BaseModel | None = None,
    config_file: str | os.PathLike[str] | None = None,
    sets: Iterable[str] = (),
    seed: int | None = None,
    options: RunOptions | None = None,
    **option_kwargs: Any,
) -> RunResult:
    """Run ``protocol`` and write its run file; returns a :class:`RunResult`.

    ``chip``: a spec (``emulator``, ``emulator:PRESET``, ``lab:HOST:PORT``, ``replay:FILE``,
    ``fake``) or a chip object. ``config``: base values, then ``config_file`` (YAML), then
    ``sets`` (``key=value``) on top of the model defaults. ``seed``: the run's seed (default 0; a
    replay defaults to the recorded one, and to the recorded config). ``options`` (or the same
    fields as keywords, e.g. ``out=``, ``progress=``): a :class:`RunOptions`. Bad config or input
    data raises :class:`hil.errors.ConfigError` before the run file exists. Ctrl-C is recorded as
    ``abort`` and then re-raised; failures are returned (``result.raise_for_status()`` re-raises).
    """
    opts = _options(options, option_kwargs)
    spec = get_protocol(protocol)
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**63).")
    owns_chip = isinstance(chip, str)
    chip_spec = opts.chip_spec
    chip_obj: Chip
    if isinstance(chip, str):
        chip_spec = chip
        if chip.startswith("replay:"):
            with RunReader(chip.partition(":")[2]) as rec:
                if seed is None:
                    seed = rec.seed
                if config is None and rec.protocol == spec.name:
                    config = rec.config
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
        inputs = load_inputs(spec, cfg, chip_obj.reader if isinstance(chip_obj, ReplayChip) else None)
        _check_inputs(spec, cfg, chip_obj, inputs)
        out_dir = Path(opts.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        run_id = opts.run_id or new_run_id(spec.name)
        path = out_dir / f"{run_id}.h5"
        chip_seed = opts.chip_seed
        if chip_seed is None:
            own_seed = chip_obj.seed
            chip_seed = seed if owns_chip or not isinstance(own_seed, int) else own_seed
        start = _start_document(
            run_id, spec, cfg, seed, chip_obj, chip_spec or "",
            chip_seed=int(chip_seed),
            preceded_by=[str(Path(p).name) for p in opts.preceded_by],
            replay_of=chip_obj.reader.run_id if isinstance(chip_obj, ReplayChip) else "",
            tags=list(opts.tags), sample=opts.sample, comment=opts.comment,
            sweep=opts.sweep, sweep_point=opts.sweep_point, sweep_params=dict(opts.sweep_params),
            **station_fields(opts.station, chip_obj),
        )
        extra: dict[str, Any] = {"flush_interval_s": opts.flush_interval_s} if opts.flush_interval_s else {}
        writer = RunWriter(path, start, compression=opts.compression, inputs=inputs, **extra)
        sink = _telemetry_sink(opts.telemetry, run_id)
        plan = _Plan(spec, cfg, chip_obj, seed, writer, path, opts.progress, sink, RunIndex(out_dir), inputs)
        result = _execute(plan)
    finally:
        if owns_chip:
            chip_obj.close()
    if result.status == "abort" and result.reason == "keyboard_interrupt":
        raise RunInterrupted(result)
    return result


def resume_run(
    path: str | os.PathLike[str],
    *,
    chip: Chip | str | None = None,
    progress: bool | None = None,
    telemetry: Any = None,
    protocol_module: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Continue an incomplete (or aborted) run in place; returns its final :class:`RunResult`.

    The protocol is re-run with the recorded config and seed against a replay of the journal. For a
    chip whose state lives in this process (:attr:`hil.Chip.resume_by_reexecution`, the emulator)
    the journaled calls are re-executed on a fresh chip built from the recorded spec and checked
    against the journal; for others (the lab board) they are answered from the journal. After the
    last recorded call the run goes on live. The new file is written beside the old one and
    replaces it only once the journal has been replayed, so a resume that fails early leaves the
    run as it was. ``protocol_module``: a module or ``.py`` file to load the protocol from.
    """
    path = Path(path)
    if not path.is_file():
        RunReader(path)  # raises the reader's clear error for a missing path or a folder
    lock = _resume_lock(path)
    try:
        return _resume(path, chip=chip, progress=progress, telemetry=telemetry, protocol_module=protocol_module)
    finally:
        lock.close()


def _resume_lock(path: Path) -> Any:
    """An exclusive lock on resuming ``path`` (a second `hil resume` of the same run is refused)."""
    lock_path = path.with_name(f".{path.name}.resume.lock")
    fh = open(lock_path, "a+")  # noqa: SIM115 - returned to the caller, closed there
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise HilError(f"{path} is being resumed by another process; wait for it to finish.") from None
    return fh


def _resume(
    path: Path,
    *,
    chip: Chip | str | None,
    progress: bool | None,
    telemetry: Any,
    protocol_module: str | os.PathLike[str] | None,
) -> RunResult:
    reader = RunReader(path)
    try:
        status = reader.effective_status
        recorded = reader.start
        if status == "running":
            raise HilError(
                f"{path} is still being written (pid {recorded.pid} on {recorded.host}); "
                "stop that process first, or wait for it."
            )
        stopped_by_writer = status == "fail" and reader.attrs.get("exit_reason") == "run_file"
        if status not in ("incomplete", "abort") and not stopped_by_writer:
            raise HilError(
                f"{path} finished with status {status!r}; only incomplete or aborted runs can be resumed "
                "(and runs their run file stopped, as a full disk does)."
            )
        spec = get_protocol_for_run(recorded.protocol, recorded.protocol_source, protocol_module)
        if not spec.deterministic:
            raise HilError(f"protocol {spec.name!r} is registered as non-deterministic; its runs cannot be resumed by replay.")
        cfg = resolve_config(spec, base=recorded.config)
        seed = recorded.seed
        chip_spec = chip if isinstance(chip, str) else recorded.chip_spec
        if chip_spec and not isinstance(chip, Chip):
            chip_spec = resume_spec(chip_spec, recorded.chip_info)  # the run's machine-dependent choices
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
            live = open_chip(chip_spec, seed=recorded.chip_seed if "chip_seed" in reader.attrs else seed)
        reexecute = live.resume_by_reexecution
        for name in recorded.preceded_by:
            if Path(name).name != name or name in ("", ".", ".."):
                raise HilError(
                    f"{path} names a preceding run {name!r} outside its folder; preceding runs must be files beside it "
                    "(the file is crafted or damaged)."
                )
        if reexecute:
            for name in recorded.preceded_by:
                reexecute_journal(live, path.parent / name)
        start = recorded.model_copy(
            update={
                "chip_spec": chip_spec,
                "resume_count": recorded.resume_count + 1,
                "resumed_at": [*recorded.resumed_at, now_iso()],
                "host": "",
                "pid": 0,
            }
        )
        inputs = load_inputs(spec, cfg, reader)
        tmp = path.with_name(f".{path.name}.resuming")
        tmp.unlink(missing_ok=True)
        writer = RunWriter(tmp, start, inputs=inputs)
        n_recorded = len(reader.journal)

        def go_live() -> None:
            writer.note(f"resume: the {n_recorded} recorded calls matched; continuing live")
            writer.flush()
            writer.move_to(path)

        replay = ReplayChip(reader, live=live, reexecute=reexecute, on_live=go_live)
        sink = _telemetry_sink(telemetry, start.run_id)
        plan = _Plan(spec, cfg, replay, seed, writer, path, progress, sink, RunIndex(path.parent), inputs)
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
        raise RunInterrupted(result)
    return result


def read_final(path: Path) -> dict[str, Any]:
    """The root attributes of a closed run file."""
    with RunReader(path) as r:
        return dict(r.attrs)


def replay_run(
    path: str | os.PathLike[str],
    *,
    out: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    protocol_module: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Re-run a recorded run's protocol (recorded config and seed) against its journal, into a new run file.

    ``protocol_module``: a module or ``.py`` file that registers the protocol, for protocols that
    are not installed (the run file records where the protocol came from).
    """
    path = Path(path)
    with RunReader(path) as rec:
        protocol, source = rec.protocol, rec.start.protocol_source
        if not protocol:
            raise HilError(f"{path} names no protocol; it cannot be replayed.")
    get_protocol_for_run(protocol, source, protocol_module)
    return run_protocol(protocol, chip=f"replay:{path}", out=out or path.parent, progress=progress)


__all__ = [
    "DEFAULT_OUT",
    "EngineRunLog",
    "RunInterrupted",
    "RunOptions",
    "RunResult",
    "RunTerminated",
    "active_runs",
    "failure_reason",
    "interrupt_runs",
    "new_run_id",
    "replay_run",
    "resume_run",
    "run_protocol",
]

"""Sweeps: one protocol over a grid of config values, seeds and chips; each point an ordinary run.

``hil sweep PROTOCOL --grid KEY=V1,V2 ... --seeds 0-9 [--workers N | --scheduler tcp://HOST:PORT]``
(docs/sweeps.md). Every point of the grid (chips x grid values x seeds, seeds innermost) is a run
of its own with its own run file in the runs folder, made by :func:`hil.run_protocol` on a Dask
distributed worker: a local cluster of ``--workers`` processes on 127.0.0.1 by default, an existing
scheduler when ``--scheduler`` names one (a SLURM cluster through dask-jobqueue, say), or this
process, one run after another, with ``--workers 0``.

Before any run starts every point's config is validated against the protocol's config model
(and, unless ``--no-check``, the protocol's own check against each chip), so a bad grid exits 2 and
writes nothing. The sweep record, ``<runs>/sweeps/<sweep id>.json`` (:class:`SweepRecord`, written
atomically before the first run), lists the points and their run ids; each run's start document
and index entry carry ``sweep`` and ``sweep_point`` (``hil ls --where sweep=ID``) and the point's
grid values (``sweep_params``; the config keys are in the index's ``config`` too). What is done is
read from the runs folder's index, so :func:`resume_sweep` (``hil sweep --resume ID``) runs the
points that never started, resumes the incomplete and aborted ones (:func:`hil.resume_run`) and
leaves everything else alone. :func:`results` (``hil sweep --results ID``) is the sweep as a
pandas DataFrame: one row per point, its parameters, status and summary scalars.

Public API: :func:`plan_sweep`, :func:`run_sweep`, :func:`resume_sweep`, :func:`results`,
:func:`load_sweep`, :func:`list_sweeps`, :class:`SweepRecord`, :class:`SweepResult`, and
:func:`main` (``hil sweep``). Dask is imported only when a sweep runs on it.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import logging
import os
import re
import secrets
import socket
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hil.errors import ChipCommunicationError, ConfigError, HilError, did_you_mean

#: Folder (inside the runs folder) that holds the sweep records.
SWEEPS_DIR = "sweeps"
#: The most points one sweep may have.
MAX_POINTS = 10_000
#: How long a Ctrl-C waits for the interrupted runs to record ``abort`` before workers are stopped [s].
INTERRUPT_GRACE_S = 60.0
#: Default wait for an existing scheduler to answer [s].
SCHEDULER_TIMEOUT_S = 10.0
_SEEDS_MAX = 2**63
_SWEEP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


class SweepError(HilError):
    """A sweep could not be planned, found or run (bad input: exit code 2)."""


class SchedulerUnreachableError(ChipCommunicationError):
    """The Dask scheduler could not be reached, or was lost during the sweep (exit code 5)."""


# ---------------------------------------------------------------------------------------------- the record
class SweepPoint(BaseModel):
    """One point of a sweep: its run id, seed, chip and grid values."""

    model_config = ConfigDict(extra="forbid")

    point: int = Field(ge=0, description="the point's number (0, 1, ...; seeds vary fastest)")
    run_id: str = Field(description="the run id (and file name) of the point's run")
    seed: int = Field(ge=0, lt=_SEEDS_MAX, description="the run's seed (also the chip's)")
    chip: str = Field(description="the chip spec the run uses")
    params: dict[str, Any] = Field(default_factory=dict, description="grid values: dotted config key -> value (and chip)")


class SweepRecord(BaseModel):
    """A sweep as planned: what every point runs. Saved as ``<runs>/sweeps/<sweep_id>.json``.

    The record says what each point *is*; what is *done* comes from the run files (the runs
    folder's index), so a killed sweep's record is never out of date.
    """

    model_config = ConfigDict(extra="forbid")

    format: Literal["hil-sweep"] = "hil-sweep"
    version: Literal[1] = 1
    sweep_id: str = Field(description="sweep-YYYYMMDD-HHMMSS-<6 hex>")
    protocol: str
    protocol_source: str = Field("", description="where the protocol came from when it is not installed (module:/file:)")
    protocol_modules: list[str] = Field(default_factory=list, description="--protocol-module items the workers load first")
    base_config: dict[str, Any] = Field(default_factory=dict, description="config from --config and --set (under every point)")
    config_file: str = ""
    sets: list[str] = Field(default_factory=list)
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted config key -> values, in the order given")
    seeds: list[int] = Field(default_factory=lambda: [0])
    chips: list[str] = Field(default_factory=lambda: ["emulator"])
    tags: list[str] = Field(default_factory=list)
    sample: str = ""
    comment: str = ""
    created_at: str = ""
    host: str = ""
    command: str = ""
    points: list[SweepPoint] = Field(default_factory=list)

    def point_config(self, point: SweepPoint) -> dict[str, Any]:
        """The config values of ``point``: the base config with the point's grid values on top."""
        data = dict(self.base_config)
        for key, value in point.params.items():
            if key != "chip":
                data = _deep_merge(data, _nested(key, value))
        return data


def _nested(key: str, value: Any) -> dict[str, Any]:
    from hil.config import nest_key

    return nest_key(key, value)


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    from hil.config import _deep_merge as merge

    return merge(base, extra)


def sweeps_folder(folder: str | os.PathLike[str]) -> Path:
    """Where the sweep records of a runs folder live."""
    return Path(folder) / SWEEPS_DIR


def record_path(folder: str | os.PathLike[str], sweep_id: str) -> Path:
    """The sweep record's file of ``sweep_id`` in the runs folder ``folder``."""
    return sweeps_folder(folder) / f"{sweep_id}.json"


def save_record(record: SweepRecord, folder: str | os.PathLike[str]) -> Path:
    """Write ``record`` into the runs folder atomically (a temporary file, fsync, rename)."""
    path = record_path(folder, record.sweep_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(record.model_dump_json(indent=1))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return path


def _read_record(path: Path) -> SweepRecord:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SweepError(f"cannot read sweep record {path}: {exc.strerror or exc}.") from exc
    try:
        return SweepRecord.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
        raise SweepError(f"{path} is not a hil sweep record ({problems}); it was damaged or written by something else.") from None


def list_sweeps(folder: str | os.PathLike[str]) -> list[SweepRecord]:
    """The sweeps recorded in a runs folder, oldest first (unreadable records are skipped)."""
    out = []
    for path in sorted(sweeps_folder(folder).glob("*.json")):
        with contextlib.suppress(SweepError):
            out.append(_read_record(path))
    out.sort(key=lambda r: (r.created_at, r.sweep_id))
    return out


def load_sweep(folder: str | os.PathLike[str], ref: str) -> SweepRecord:
    """The sweep record of ``ref`` (a sweep id or a unique prefix of one) in the runs folder ``folder``."""
    folder = Path(folder)
    if not ref or "/" in ref or ref.startswith("."):
        raise SweepError(f"sweep id {ref!r}: give the id `hil sweep` printed (sweep-YYYYMMDD-HHMMSS-XXXXXX), or a unique prefix.")
    exact = record_path(folder, ref)
    if exact.is_file():
        return _read_record(exact)
    names = sorted(p.stem for p in sweeps_folder(folder).glob(f"{ref}*.json")) if sweeps_folder(folder).is_dir() else []
    if len(names) == 1:
        return _read_record(record_path(folder, names[0]))
    if not names:
        known = [p.stem for p in sweeps_folder(folder).glob("*.json")] if sweeps_folder(folder).is_dir() else []
        raise SweepError(
            f"no sweep {ref!r} in {folder}{did_you_mean(ref, known)}; `hil sweep --list --runs {folder}` lists the sweeps "
            "there (name the runs folder the sweep wrote to with --runs DIR)."
        )
    raise SweepError(f"{ref!r} matches {len(names)} sweeps in {folder} ({', '.join(names[:5])}); give more of the id.")


# ---------------------------------------------------------------------------------------------- parsing
def split_values(text: str) -> list[str]:
    """``1,2,[3,4],'a,b'`` -> ``['1', '2', '[3,4]', "'a,b'"]``: commas split, except inside brackets and quotes."""
    out, depth, quote, cur = [], 0, "", []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur))
    return [v.strip() for v in out]


def parse_grid(items: Iterable[str]) -> dict[str, list[Any]]:
    """``["lr=0.1,0.2", "mode=a,b"]`` -> ``{"lr": [0.1, 0.2], "mode": ["a", "b"]}``; values are YAML
    (numbers, true/false, lists in brackets), as ``--set`` reads them."""
    from hil.config import load_yaml

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key or not raw.strip():
            raise SweepError(f"--grid expects KEY=V1,V2,... (e.g. --grid batch=16,32), got {item!r}.")
        if key in grid:
            raise SweepError(f"--grid {key} is given twice; list all its values in one --grid {key}=V1,V2,...")
        values = []
        for piece in split_values(raw):
            if not piece:
                raise SweepError(f"--grid {item!r} has an empty value; separate values by single commas (KEY=V1,V2).")
            try:
                values.append(load_yaml(piece, f"--grid {key} value"))
            except ConfigError:
                values.append(piece)
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """``0-9`` -> 0..9; ``0,3,7``; ``0-3,10``: the seeds of a sweep (integers in [0, 2**63), no repeats)."""
    seeds: list[int] = []
    hint = "give N, A-B (both included) or a comma list of them, e.g. --seeds 0-9 or --seeds 0,3,7"
    for part in (p.strip() for p in str(text).split(",")):
        m = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not m:
            raise SweepError(f"--seeds {text!r}: {part!r} is not a seed or range; {hint}.")
        lo, hi = int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))
        if hi < lo:
            raise SweepError(f"--seeds {text!r}: range {part!r} runs backwards; write {hi}-{lo}.")
        if hi >= _SEEDS_MAX:
            raise SweepError(f"--seeds {text!r}: seeds are integers in [0, 2**63).")
        if hi - lo + 1 > MAX_POINTS:
            raise SweepError(f"--seeds {text!r}: {hi - lo + 1} seeds; a sweep has at most {MAX_POINTS} points.")
        seeds.extend(range(lo, hi + 1))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1}) if len(seeds) < 2000 else []
    if repeated or len(set(seeds)) != len(seeds):
        raise SweepError(
            f"--seeds {text!r} names seed(s) {repeated[:5] or '...'} more than once; each seed is one run per point."
        )
    return seeds


# ---------------------------------------------------------------------------------------------- planning
def new_sweep_id() -> str:
    """``sweep-YYYYMMDD-HHMMSS-<6 hex>``: sortable by start time and unique."""
    return f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def _check_chip(spec_text: str, parallel: bool) -> None:
    from hil.chips import backend_class

    name = spec_text.partition(":")[0]
    if name == "replay":
        raise SweepError(f"--chip {spec_text}: a sweep makes new runs; a replay: chip only replays one (use `hil replay RUN`).")
    if name == "lab" and parallel:
        raise SweepError(
            f"--chip {spec_text}: a lab chip is one physical chip, so its runs cannot run side by side (they would "
            "interleave pulses on one array); run the sweep with --workers 0 (one run after another, in this process)."
        )
    from hil.chips import check_spec
    from hil.errors import ChipInputError

    try:
        backend_class(name)
    except HilError as exc:
        raise ChipInputError(f"--chip {spec_text}: {exc}") from None
    try:
        check_spec(spec_text)  # every part of the spec, before any run starts
    except ChipInputError as exc:
        raise ChipInputError(f"--chip {spec_text}: {exc}") from None


def plan_sweep(
    protocol: str,
    *,
    grid: Mapping[str, Sequence[Any]] | None = None,
    seeds: Iterable[int] | str = (0,),
    chips: Sequence[str] | str = ("emulator",),
    config: Mapping[str, Any] | None = None,
    config_file: str | os.PathLike[str] | None = None,
    sets: Iterable[str] = (),
    tags: Iterable[str] = (),
    sample: str = "",
    comment: str = "",
    protocol_modules: Iterable[str] = (),
    check: bool = True,
    parallel: bool = True,
    sweep_id: str | None = None,
) -> SweepRecord:
    """Plan and validate a sweep; returns its :class:`SweepRecord` (nothing is written or run).

    ``grid``: dotted config key -> values; ``seeds`` (or ``"0-9"``); ``chips``: one chip spec or
    several (then ``chip`` is a grid axis too); ``config`` / ``config_file`` / ``sets``: the values
    under every point (``--set`` keys may not also be grid keys). Every point's config is validated
    against the protocol's config model, and with ``check`` the protocol's own check runs against
    each chip (opened once here), so bad input raises :class:`hil.errors.ConfigError` (or
    :class:`SweepError`, :class:`hil.errors.ChipInputError`) before any run starts.
    ``parallel``: whether runs may run side by side (refuses lab chips then).
    """
    from hil.config import load_config_file, parse_set, resolve_config
    from hil.protocol import get_protocol, load_protocol_module
    from hil.runner import RunOptions, new_run_id, redact_command
    from hil.runs.metadata import now_iso

    modules = [os.fspath(m) for m in protocol_modules]
    for ref in modules:
        load_protocol_module(ref)
    spec = get_protocol(protocol)
    fields = spec.config_model.model_fields
    grid = dict(grid or {})
    seeds = parse_seeds(seeds) if isinstance(seeds, str) else [int(s) for s in seeds]
    chips = [chips] if isinstance(chips, str) else list(chips)
    if not chips:
        raise SweepError("a sweep needs a chip: --chip SPEC (repeat it to sweep over chips).")
    if len(set(chips)) != len(chips):
        raise SweepError(f"--chip {chips}: a chip spec is given twice.")
    if not seeds:
        raise SweepError("a sweep needs at least one seed (--seeds 0-9).")
    for s in seeds:
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s < _SEEDS_MAX:
            raise SweepError(f"seed {s!r}: seeds are integers in [0, 2**63).")
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"seeds {seeds[:10]}: a seed is given twice.")
    try:
        RunOptions(tags=list(tags), sample=sample, comment=comment)
    except ValidationError as exc:
        raise ConfigError(f"invalid run options: {exc.errors()[0]['msg']}") from None

    # The base config: --config, then --set, as `hil run` reads them.
    base: dict[str, Any] = dict(config or {})
    if config_file is not None:
        base = _deep_merge(base, load_config_file(config_file))
    set_keys = []
    for item in sets:
        parsed = parse_set(item)
        set_keys.append(item.partition("=")[0].strip())
        base = _deep_merge(base, parsed)

    for key, values in grid.items():
        top = key.split(".")[0]
        if key in ("seed", "seeds"):
            raise SweepError(f"--grid {key}=...: seeds are not a config key; give them with --seeds (e.g. --seeds 0-9).")
        if key == "chip":
            raise SweepError("--grid chip=...: give each chip with its own --chip SPEC (repeatable); chip specs contain commas.")
        if top not in fields:
            raise ConfigError(
                f"--grid {key}: protocol {spec.name!r} has no config key {top!r}{did_you_mean(top, fields)}; "
                f"valid keys: {', '.join(fields)} (`hil protocols {spec.name}` lists keys, defaults and limits)."
            )
        if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
            raise SweepError(f"--grid {key}: give a non-empty list of values, got {values!r}.")
        clash = [s for s in set_keys if s == key or s.startswith(key + ".") or key.startswith(s + ".")]
        if clash:
            raise SweepError(f"--grid {key} and --set {clash[0]}=... both set {key}; drop one of them.")
        for value in values:  # each value on its own first: the message names it
            try:
                resolve_config(spec, base=_deep_merge(base, _nested(key, value)))
            except ConfigError as exc:
                raise ConfigError(f"--grid {key}={value!r} is not a valid value:\n{exc}") from None
    n_points = len(chips) * len(seeds)
    for values in grid.values():
        n_points *= len(values)
    if n_points > MAX_POINTS:
        raise SweepError(f"the sweep has {n_points} points; at most {MAX_POINTS} are allowed (split it, or fewer values).")
    for chip in chips:
        _check_chip(chip, parallel)

    record = SweepRecord(
        sweep_id=sweep_id or new_sweep_id(), protocol=spec.name, protocol_source=spec.source, protocol_modules=modules,
        base_config=json.loads(_to_json(base)), config_file=os.fspath(config_file) if config_file is not None else "",
        sets=list(sets), grid={k: json.loads(_to_json(list(v))) for k, v in grid.items()}, seeds=seeds, chips=chips,
        tags=list(tags), sample=sample, comment=comment, created_at=now_iso(), host=socket.gethostname(),
        command=redact_command(sys.argv),
    )
    if not _SWEEP_ID.match(record.sweep_id):
        raise SweepError(f"sweep id {record.sweep_id!r}: use letters, digits and _ . - (at most 100, starting alphanumeric).")
    keys = list(record.grid)
    run_ids: set[str] = set()
    points = []
    for chip in chips:
        for combo in itertools.product(*(record.grid[k] for k in keys)):
            params = dict(zip(keys, combo, strict=True))
            if len(chips) > 1:
                params["chip"] = chip
            for seed in seeds:
                run_id = new_run_id(spec.name)
                while run_id in run_ids:
                    run_id = new_run_id(spec.name)
                run_ids.add(run_id)
                points.append(SweepPoint(point=len(points), run_id=run_id, seed=seed, chip=chip, params=params))
    record.points = points
    configs: dict[str, Any] = {}
    for p in points:  # every point's whole config (validators across keys)
        key = _to_json(record.point_config(p))
        if key in configs:
            continue
        try:
            configs[key] = resolve_config(spec, base=record.point_config(p))
        except ConfigError as exc:
            raise ConfigError(f"sweep point {p.point} ({_params_text(p)}):\n{exc}") from None
    if check and spec.check is not None:
        _run_checks(spec, record, configs)
    return record


def _run_checks(spec: Any, record: SweepRecord, configs: dict[str, Any]) -> None:
    """The protocol's own check of each distinct config against each chip (opened once each)."""
    from hil.chips import open_chip
    from hil.runner import _check_inputs, load_inputs

    for chip_spec in record.chips:
        chip = open_chip(chip_spec, seed=0)
        try:
            done: set[str] = set()
            for p in record.points:
                if p.chip != chip_spec:
                    continue
                key = _to_json(record.point_config(p))
                if key in done:
                    continue
                done.add(key)
                cfg = configs[key]
                try:
                    _check_inputs(spec, cfg, chip, load_inputs(spec, cfg))
                except HilError as exc:
                    raise type(exc)(f"sweep point {p.point} ({_params_text(p)}) on {chip_spec}: {exc}") from None
        finally:
            chip.close()


def _to_json(value: Any) -> str:
    from hil.runs.metadata import to_json

    return to_json(value)


def _params_text(p: SweepPoint) -> str:
    parts = [f"{k}={json.dumps(v)}" for k, v in p.params.items()]
    return ", ".join([*parts, f"seed {p.seed}"])


# ---------------------------------------------------------------------------------------------- worker side
#: Sweeps whose not-yet-started points this process must skip (a Ctrl-C of the sweep).
_CANCELLED: set[str] = set()
_LOADED_MODULES: set[str] = set()
_SETUP_LOCK = threading.Lock()


def dask_setup(worker: Any) -> None:
    """Dask preload hook of the local cluster's workers: ignore SIGINT (a Ctrl-C in the terminal
    reaches the whole process group; the sweep's driver handles it and stops the runs cleanly)."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _limit_threads(n: int, chip: str) -> None:
    if n <= 0:
        return
    if "torch" in sys.modules or chip.startswith("emulator"):
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency of the emulator
            return
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _ensure_protocol(name: str, source: str, modules: Sequence[str]) -> None:
    from hil.protocol import UnknownProtocolError, get_protocol, load_protocol_module

    with _SETUP_LOCK:
        for ref in modules:
            if ref not in _LOADED_MODULES:
                load_protocol_module(ref)
                _LOADED_MODULES.add(ref)
        try:
            get_protocol(name)
        except UnknownProtocolError:
            kind, _, where = source.partition(":")
            if kind not in ("module", "file") or not where or where in _LOADED_MODULES:
                raise
            # The sweep's driver had this protocol from here (it imported it): the worker does too.
            load_protocol_module(where)
            _LOADED_MODULES.add(where)
            get_protocol(name)


def _outcome_of_file(path: Path, task: Mapping[str, Any], note: str) -> dict[str, Any]:
    from hil.runs import RunReader

    try:
        with RunReader(path) as r:
            status, stop = r.effective_status, r.stop
        return {"status": status, "reason": stop.exit_reason, "message": note, "n_calls": stop.n_calls,
                "wall_s": stop.wall_s, "summary": stop.summary}
    except (HilError, OSError) as exc:
        return {"status": "error", "reason": "run_file", "message": f"{note}; it does not open: {exc}"}


def run_task(task: Mapping[str, Any]) -> dict[str, Any]:
    """Run (``mode=run``) or resume (``mode=resume``) one point; what a Dask worker executes.

    Never runs a point twice: a ``run`` whose file exists already (an earlier attempt on a worker
    that died, rescheduled by Dask) is left as it is and reported, for ``hil sweep --resume``.
    Errors before the run file exists come back as status ``error``.
    """
    from hil.runner import RunInterrupted, RunOptions, resume_run, run_protocol

    base = {"point": task["point"], "run_id": task["run_id"], "host": socket.gethostname(), "pid": os.getpid()}
    if f"{task['sweep_id']}/{task.get('attempt', '')}" in _CANCELLED:
        return {**base, "status": "not_started", "reason": "", "message": "the sweep was interrupted before this point started"}
    path = Path(task["out"]) / f"{task['run_id']}.h5"
    try:
        _limit_threads(int(task.get("torch_threads") or 0), task["chip"])
        _ensure_protocol(task["protocol"], task["protocol_source"], task["protocol_modules"])
        if task["mode"] == "run":
            if path.exists():
                return {**base, **_outcome_of_file(path, task, "an earlier attempt at this point (on a worker that died) "
                                                   "left its run file; it is not run again")}
            opts = RunOptions(
                out=Path(task["out"]), progress=False, telemetry=task.get("telemetry"), run_id=task["run_id"],
                tags=task["tags"], sample=task["sample"], comment=task["comment"], sweep=task["sweep_id"],
                sweep_point=task["point"], sweep_params=task["params"],
            )
            try:
                res = run_protocol(task["protocol"], chip=task["chip"], config=task["config"], seed=task["seed"], options=opts)
            except RunInterrupted as exc:
                res = exc.result
        else:
            try:
                res = resume_run(path, progress=False, telemetry=task.get("telemetry"))
            except RunInterrupted as exc:
                res = exc.result
    except ChipCommunicationError as exc:
        return {**base, "status": "error", "reason": "chip_communication", "message": str(exc), "exit_code": 5}
    except (HilError, ValidationError, ImportError, OSError) as exc:
        return {**base, "status": "error", "reason": type(exc).__name__, "message": str(exc)}
    out = res.to_dict()
    out.pop("path", None)
    return {**base, **out}


def _cancel_sweep(sweep_id: str, attempt: str) -> list[str]:
    """On a worker: skip the points of this attempt at the sweep (one run_sweep or resume_sweep call)
    that have not started, and interrupt the sweep's running runs."""
    from hil.runner import interrupt_runs

    _CANCELLED.add(f"{sweep_id}/{attempt}")
    return interrupt_runs(sweep=sweep_id)


# ---------------------------------------------------------------------------------------------- outcome
#: Point states of a sweep, as :func:`point_states` reads them from the runs folder.
PointState = Literal["pending", "running", "incomplete", "abort", "success", "fail"]


def point_states(record: SweepRecord, folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """run id -> its index entry (with ``effective_status``) for the record's runs that have a file
    (a point without one never started: ``pending``)."""
    from hil.runs import RunIndex

    wanted = {p.run_id for p in record.points}
    return {e["run_id"]: e for e in RunIndex(folder).entries() if e["run_id"] in wanted}


@dataclass
class SweepResult:
    """Outcome of :func:`run_sweep` / :func:`resume_sweep` (also what ``hil sweep --json`` prints)."""

    sweep_id: str
    protocol: str
    folder: Path
    record_path: Path
    #: One dict per point: point, run_id, seed, chip, params, status, reason, message, file.
    points: list[dict[str, Any]]
    #: Points this call ran or resumed.
    ran: int = 0
    wall_s: float = 0.0
    workers: str = ""
    interrupted: bool = False
    scheduler_lost: bool = False
    resumed: bool = False
    messages: list[str] = field(default_factory=list)

    @property
    def counts(self) -> dict[str, int]:
        """Points per status."""
        out: dict[str, int] = {}
        for p in self.points:
            out[p["status"]] = out.get(p["status"], 0) + 1
        return out

    @property
    def unfinished(self) -> int:
        """Points that ``hil sweep --resume`` would run or resume."""
        return sum(1 for p in self.points if p["status"] in ("pending", "incomplete", "abort", "not_started"))

    @property
    def exit_code(self) -> int:
        """0 every point succeeded; 1 a point failed; 3 points are left to resume; 5 the scheduler was lost."""
        if self.scheduler_lost:
            return 5
        if any(p["status"] in ("fail", "error") for p in self.points):
            return 1
        if self.unfinished or any(p["status"] == "running" for p in self.points):
            return 3
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "sweep_id": self.sweep_id, "protocol": self.protocol, "folder": str(self.folder),
            "record": str(self.record_path), "counts": self.counts, "ran": self.ran, "wall_s": round(self.wall_s, 3),
            "workers": self.workers, "interrupted": self.interrupted, "resumed": self.resumed,
            "exit_code": self.exit_code, "messages": self.messages, "points": self.points,
        }


def _collect(record: SweepRecord, folder: Path, outcomes: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    states = point_states(record, folder)
    rows = []
    for p in record.points:
        entry = states.get(p.run_id)
        got = outcomes.get(p.run_id, {})
        status = entry.get("effective_status", "running") if entry else "pending"
        if entry is None and got.get("status") == "error":
            status = "error"
        rows.append({
            "point": p.point, "run_id": p.run_id, "seed": p.seed, "chip": p.chip, "params": p.params, "status": status,
            "reason": (entry or {}).get("reason") or got.get("reason", ""), "message": got.get("message", ""),
            "file": str(folder / entry["file"]) if entry else "",
        })
    return rows


# ---------------------------------------------------------------------------------------------- running
class _SweepLock:
    """An exclusive lock on running a sweep (a second `hil sweep --resume` of a live sweep is refused)."""

    def __init__(self, folder: Path, sweep_id: str) -> None:
        path = sweeps_folder(folder) / f".{sweep_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(path, "a+")  # noqa: SIM115 - closed in release()
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            who = self.fh.read().strip() or "another process"
            self.fh.close()
            raise SweepError(
                f"sweep {sweep_id} is being run by {who}; wait for it to finish (or stop it with Ctrl-C) before resuming it."
            ) from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()} on {socket.gethostname()}")
        self.fh.flush()

    def release(self) -> None:
        self.fh.close()


def _tasks(
    record: SweepRecord, folder: Path, modes: Mapping[str, str], torch_threads: int, telemetry: Any
) -> list[dict[str, Any]]:
    return [
        {
            "mode": modes[p.run_id], "sweep_id": record.sweep_id, "point": p.point, "run_id": p.run_id, "seed": p.seed,
            "chip": p.chip, "params": p.params, "config": record.point_config(p), "protocol": record.protocol,
            "protocol_source": record.protocol_source, "protocol_modules": record.protocol_modules, "out": str(folder),
            "tags": record.tags, "sample": record.sample, "comment": record.comment, "torch_threads": torch_threads,
            "telemetry": telemetry,
        }
        for p in record.points if p.run_id in modes
    ]


def _connect(scheduler: str, timeout_s: float) -> Any:
    from distributed import Client

    if not re.match(r"^(tcp|tls|inproc|ucx|ws|wss)://[^\s]+$", scheduler):
        raise SweepError(
            f"--scheduler {scheduler!r}: give the scheduler's address, e.g. tcp://HOST:8786 (`dask scheduler` prints it)."
        )
    try:
        return Client(scheduler, timeout=timeout_s, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SchedulerUnreachableError(
            f"the Dask scheduler at {scheduler} did not answer within {timeout_s:g} s ({exc}); start it (`dask scheduler`, "
            "or your dask-jobqueue cluster), check the address, or leave out --scheduler to run on a local cluster."
        ) from None


def _local_cluster(workers: int, torch_threads: int, processes: bool) -> Any:
    import dask
    from distributed import LocalCluster

    env = {k: str(torch_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    # A run whose worker died is not run again by Dask more than once, and run_task never runs a
    # point whose file exists: the run stays incomplete for `hil sweep --resume`.
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}):
        kwargs: dict[str, Any] = dict(n_workers=workers, threads_per_worker=1, processes=processes, host="127.0.0.1",
                                      dashboard_address="127.0.0.1:0", silence_logs=logging.ERROR)
        if processes:
            kwargs.update(preload=["hil.sweep"], env=env)
        return LocalCluster(**kwargs)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _execute(
    record: SweepRecord, folder: Path, modes: dict[str, str], *, workers: int | None, scheduler: str | None, client: Any,
    torch_threads: int | None, progress: bool | None, telemetry: Any, scheduler_timeout_s: float, resumed: bool,
) -> SweepResult:
    """Connect (or start a local cluster), lock the sweep, save a new record, run the tasks, collect."""
    from hil.runner import _ProgressBar

    t0 = time.perf_counter()
    outcomes: dict[str, dict[str, Any]] = {}
    interrupted = lost = False
    messages: list[str] = []
    serial = workers == 0 and scheduler is None and client is None
    own_cluster = own_client = None
    where = "this process"
    threads = torch_threads or 0
    if modes and not serial:
        if client is not None:
            where = f"the given client (scheduler {getattr(getattr(client, 'scheduler', None), 'address', '?')})"
        elif scheduler is not None:
            client = own_client = _connect(scheduler, scheduler_timeout_s)
            where = f"scheduler {scheduler}"
        else:
            from distributed import Client

            n = workers or max(1, min(_available_cpus(), len(modes)))
            threads = torch_threads or max(1, _available_cpus() // n)
            own_cluster = _local_cluster(n, threads, processes=True)
            client = own_client = Client(own_cluster, set_as_default=False)
            where = f"a local cluster of {n} worker process(es) on 127.0.0.1"
        threads = threads or 1
    bar = _ProgressBar(progress)
    total = len(record.points)
    already = total - len(modes)
    desc = f"sweep {record.sweep_id}"

    def tick(out: Mapping[str, Any] | None = None) -> None:
        if out is not None:
            outcomes[str(out["run_id"])] = dict(out)
        bar.update(already + len(outcomes), total, desc)

    try:
        lock = _SweepLock(folder, record.sweep_id)
        try:
            if not resumed:
                save_record(record, folder)
            if not modes:
                pass
            elif serial:
                tick()
                try:
                    for task in _tasks(record, folder, modes, threads, telemetry):
                        out = run_task(task)
                        tick(out)
                        if out.get("status") == "abort" and out.get("reason") == "keyboard_interrupt":
                            interrupted = True
                            break
                except KeyboardInterrupt:  # between two runs
                    interrupted = True
            else:
                interrupted, lost = _on_dask(client, record, folder, modes, threads, telemetry, tick, messages)
        finally:
            bar.close()
            lock.release()
    finally:
        if own_client is not None:
            with contextlib.suppress(Exception):
                own_client.close()
        if own_cluster is not None:
            with contextlib.suppress(Exception):
                own_cluster.close()
    result = SweepResult(
        sweep_id=record.sweep_id, protocol=record.protocol, folder=folder, record_path=record_path(folder, record.sweep_id),
        points=_collect(record, folder, outcomes),
        ran=sum(1 for o in outcomes.values() if o.get("status") != "not_started"), wall_s=time.perf_counter() - t0, workers=where,
        interrupted=interrupted, scheduler_lost=lost, resumed=resumed, messages=messages,
    )
    for p in result.points:
        if outcomes.get(p["run_id"], {}).get("status") == "error":
            result.messages.append(f"point {p['point']} ({p['run_id']}) could not {'resume' if resumed else 'start'}: "
                                   f"{p['message']}")
    return result


def _on_dask(
    client: Any, record: SweepRecord, folder: Path, modes: dict[str, str], torch_threads: int, telemetry: Any,
    tick: Any, messages: list[str],
) -> tuple[bool, bool]:
    """Submit the tasks and wait for them; returns (interrupted, scheduler_lost)."""
    from distributed import as_completed, wait

    token = secrets.token_hex(3)
    tasks = [{**t, "attempt": token} for t in _tasks(record, folder, modes, torch_threads, telemetry)]
    futures = [client.submit(run_task, t, key=f"hil-{record.sweep_id}-{t['point']}-{token}", pure=False) for t in tasks]
    by_key = {f.key: t for f, t in zip(futures, tasks, strict=True)}
    tick()
    pending = set(futures)
    try:
        for fut in as_completed(futures, loop=client.loop):
            pending.discard(fut)
            task = by_key[fut.key]
            try:
                out = fut.result()
            except Exception as exc:  # the worker died (KilledWorker), or the task was lost
                out = {"point": task["point"], "run_id": task["run_id"], "status": "lost", "reason": type(exc).__name__,
                       "message": f"its worker was lost ({type(exc).__name__}: {exc})"}
                if _scheduler_gone(client):
                    raise SchedulerUnreachableError("lost") from exc
            tick(out)
    except KeyboardInterrupt:
        messages.append("interrupted (Ctrl-C): the running runs were asked to stop (recorded as abort), the rest not started")
        _stop(client, record.sweep_id, token, [f for f in futures if not f.done()], wait)
        for fut in pending:
            if fut.done() and fut.status == "finished":
                with contextlib.suppress(Exception):
                    tick(fut.result(timeout=1))
        return True, False
    except SchedulerUnreachableError:
        messages.append(f"lost the Dask scheduler during the sweep; {len(pending)} point(s) did not report back")
        return False, True
    except OSError as exc:
        if _scheduler_gone(client):
            messages.append(f"lost the Dask scheduler during the sweep ({exc}); {len(pending)} point(s) did not report back")
            return False, True
        raise
    return False, False


def _scheduler_gone(client: Any) -> bool:
    return getattr(client, "status", "running") not in ("running", "connecting")


def _stop(client: Any, sweep_id: str, attempt: str, running: list[Any], wait: Any) -> None:
    """After a Ctrl-C: skip the points not started, interrupt the running runs, let them record abort."""
    try:
        client.run(_cancel_sweep, sweep_id, attempt, on_error="ignore")
        wait(running, timeout=INTERRUPT_GRACE_S)
    except KeyboardInterrupt:
        pass  # a second Ctrl-C: stop waiting (runs still going are left incomplete, resumable too)
    except Exception:  # best effort while stopping
        pass
    with contextlib.suppress(Exception):
        client.cancel([f for f in running if not f.done()])


def run_sweep(
    protocol: str | SweepRecord,
    *,
    out: str | os.PathLike[str] | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    torch_threads: int | None = None,
    progress: bool | None = None,
    telemetry: Any = None,
    scheduler_timeout_s: float = SCHEDULER_TIMEOUT_S,
    **plan: Any,
) -> SweepResult:
    """Run a sweep: every point a run in ``out`` (default: the runs folder); returns a :class:`SweepResult`.

    ``protocol``: a protocol name (then ``plan`` holds :func:`plan_sweep`'s keywords: ``grid``,
    ``seeds``, ``chips``, ``sets``, ...) or a planned :class:`SweepRecord`. Where: ``client`` (a
    ``distributed.Client``), else ``scheduler`` (``tcp://HOST:PORT``), else a local cluster of
    ``workers`` processes (default: one per CPU, at most one per point); ``workers=0`` runs the
    points one after another in this process. ``torch_threads``: torch threads per run (default:
    the CPUs over the workers, locally; 1 on a scheduler). The record is written before the first
    run; bad input raises before it. Ctrl-C stops the running runs (status ``abort``) and returns
    with ``interrupted`` set; :func:`resume_sweep` finishes the sweep.
    """
    from hil.runs.index import default_runs_folder

    folder = Path(out if out is not None else default_runs_folder()).resolve()
    parallel = not (workers in (0, 1) and scheduler is None and client is None)
    record = protocol if isinstance(protocol, SweepRecord) else plan_sweep(protocol, parallel=parallel, **plan)
    if isinstance(protocol, SweepRecord) and plan:
        raise TypeError(f"run_sweep(record, ...) takes no planning keywords ({', '.join(plan)}); they are in the record.")
    _check_where(workers, torch_threads, scheduler, client)
    folder.mkdir(parents=True, exist_ok=True)
    if record_path(folder, record.sweep_id).exists():
        raise SweepError(
            f"sweep {record.sweep_id} exists in {folder} already; `hil sweep --resume {record.sweep_id}` continues it."
        )
    modes = {p.run_id: "run" for p in record.points}
    return _execute(record, folder, modes, workers=workers, scheduler=scheduler, client=client, torch_threads=torch_threads,
                    progress=progress, telemetry=telemetry, scheduler_timeout_s=scheduler_timeout_s, resumed=False)


def _check_where(workers: int | None, torch_threads: int | None, scheduler: str | None, client: Any) -> None:
    if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= 1024):
        raise SweepError(f"--workers {workers!r}: give 0 (this process, one run after another) to 1024 worker processes.")
    if torch_threads is not None and (not isinstance(torch_threads, int) or not 1 <= torch_threads <= 1024):
        raise SweepError(f"--torch-threads {torch_threads!r}: give 1 to 1024 threads per run.")
    if scheduler is not None and client is not None:
        raise SweepError("give a scheduler address or a client, not both.")
    if workers is not None and (scheduler is not None or client is not None):
        raise SweepError("--workers starts a local cluster; an existing --scheduler has its own workers (drop one of them).")


def resume_sweep(
    sweep_id: str,
    folder: str | os.PathLike[str] | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    torch_threads: int | None = None,
    progress: bool | None = None,
    telemetry: Any = None,
    scheduler_timeout_s: float = SCHEDULER_TIMEOUT_S,
) -> SweepResult:
    """Finish a sweep: run its points that never started, resume (:func:`hil.resume_run`) its
    incomplete and aborted runs, and leave the others alone (successes, failures, runs still being
    written). ``sweep_id``: the id or a unique prefix; the other keywords as for :func:`run_sweep`."""
    from hil.protocol import load_protocol_module
    from hil.runs.index import default_runs_folder

    folder = Path(folder if folder is not None else default_runs_folder()).resolve()
    record = load_sweep(folder, sweep_id)
    _check_where(workers, torch_threads, scheduler, client)
    for ref in record.protocol_modules:
        load_protocol_module(ref)
    states = point_states(record, folder)
    modes: dict[str, str] = {}
    for p in record.points:
        entry = states.get(p.run_id)
        if entry is None:
            modes[p.run_id] = "run"
        elif entry["effective_status"] in ("incomplete", "abort"):
            modes[p.run_id] = "resume"
    parallel = not ((workers in (0, 1)) and scheduler is None and client is None)
    for chip in record.chips:
        _check_chip(chip, parallel)
    return _execute(record, folder, modes, workers=workers, scheduler=scheduler, client=client, torch_threads=torch_threads,
                    progress=progress, telemetry=telemetry, scheduler_timeout_s=scheduler_timeout_s, resumed=True)


# ---------------------------------------------------------------------------------------------- results
def results(folder: str | os.PathLike[str] | None, sweep_id: str) -> Any:
    """A sweep's points as a pandas DataFrame indexed by run id, in point order.

    Columns: ``point``, ``seed``, ``chip``, one per grid key (named by the key, e.g. ``batch`` or
    ``noise.sigma``), ``status`` (effective; ``pending`` for a point that never started), ``reason``,
    ``wall_s``, ``n_calls``, ``file``, then ``summary.<key>`` for every scalar of the summaries. Read
    from the sweep record and the runs folder's index (no run file is opened).
    """
    import pandas as pd

    from hil.runs.index import default_runs_folder

    folder = Path(folder) if folder is not None else default_runs_folder()
    record = load_sweep(folder, sweep_id)
    states = point_states(record, folder)
    keys = list(record.grid) + (["chip"] if len(record.chips) > 1 else [])
    rows = []
    for p in record.points:
        e = states.get(p.run_id) or {}
        row: dict[str, Any] = {"run_id": p.run_id, "point": p.point, "seed": p.seed, "chip": p.chip}
        for k in keys:
            if k != "chip":
                row[k] = p.params.get(k)
        row.update({
            "status": e.get("effective_status", "pending"), "reason": e.get("reason", ""),
            "wall_s": e.get("wall_s"), "n_calls": e.get("n_calls"), "file": e.get("file", ""),
        })
        for k, v in (e.get("summary") or {}).items():
            row[f"summary.{k}"] = v
        rows.append(row)
    df = pd.DataFrame(rows).set_index("run_id")
    df.attrs["sweep_id"] = record.sweep_id
    df.attrs["protocol"] = record.protocol
    df.attrs["grid"] = record.grid
    return df


def main(argv: Sequence[str] | None = None) -> int:
    """``hil sweep ARGV`` (:mod:`hil.sweep_cli`); returns the exit code."""
    from hil.sweep_cli import main as cli_main

    return cli_main(argv)


__all__ = [
    "MAX_POINTS",
    "SWEEPS_DIR",
    "SchedulerUnreachableError",
    "SweepError",
    "SweepPoint",
    "SweepRecord",
    "SweepResult",
    "list_sweeps",
    "load_sweep",
    "main",
    "parse_grid",
    "parse_seeds",
    "plan_sweep",
    "point_states",
    "record_path",
    "results",
    "resume_sweep",
    "run_sweep",
    "run_task",
]

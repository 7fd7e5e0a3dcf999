"""The station file: which instruments a bench has, where they are, simulated or real, and its safety limits.

A station file is YAML validated by :class:`StationConfig` (unknown keys are errors)::

    name: pcm-bench-1
    simulated: false            # default for every instrument; true runs the whole bench on pyvisa-sim
    limits:
      write_head_current_ua: 600
      supply_voltage_v: 3.6
      supply_current_a: 1.0
      temperature_k: 358.15
      smu_voltage_v: 5.0
      pulse_voltage_v: 3.0
    instruments:
      psu: {driver: keysight_e36300, address: "TCPIP0::192.168.1.13::inst0::INSTR"}
      tc:  {driver: lakeshore_336, address: "TCPIP0::192.168.1.15::7777::SOCKET", simulated: true}
      amp: {driver: "mylab.drivers:CurrentAmplifier", address: "TCPIP0::192.168.1.16::inst0::INSTR"}
    board:
      address: "TCPIP0::192.168.1.20::5025::SOCKET"

Switching between simulated and real is a change of this file only: a simulated instrument opens
the driver's pyvisa-sim YAML (a fresh copy per station, so no state leaks between stations), a
simulated board starts ``python -m emulator.server`` on a free local port. :class:`Station` opens
everything, passes each driver its limits, and on any tripped limit switches every output off
(:meth:`Station.safe_shutdown`) before the :class:`hil.SafetyLimitError` reaches the protocol.

``driver:`` is a built-in name, a name an installed package registers in the ``hil.drivers``
entry-point group, or an import path ``package.module:Class`` (see :func:`drivers.driver_class`);
the driver class's ``limit_kwargs(limits)`` says which of the station's limits it receives. A
station file is trusted code: loading it imports the driver modules it names, and a path in
``visa_library`` loads that shared library. Its YAML is still read with a bounded loader
(:func:`hil.config.load_yaml`: no tags beyond YAML's own, few aliases, a bounded expanded size), so a
file of a few hundred bytes cannot expand into gigabytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pyvisa
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from drivers import driver_class
from drivers.instrument import (
    DriverLookupError,
    Instrument,
    InstrumentCommunicationError,
    UnknownDriverError,
    default_resource_manager,
)
from hil.config import load_yaml
from hil.errors import ConfigError, HilError

log = logging.getLogger("drivers.station")


class StationFileError(HilError, ValueError):
    """The station file is missing, not YAML, or does not match the schema."""


class SafetyLimits(BaseModel):
    """Safety limits of a bench; every one is required so that no limit is an unnoticed default."""

    model_config = ConfigDict(extra="forbid")

    write_head_current_ua: float = Field(
        gt=0, le=800, description="largest programming pulse current (uA) on the board, and SMU current (uA)"
    )
    supply_voltage_v: float = Field(gt=0, le=30, description="largest power-supply voltage setpoint (V), any output")
    supply_current_a: float = Field(gt=0, le=10, description="largest power-supply current limit and reading (A)")
    temperature_k: float = Field(gt=0, le=500, description="largest stage temperature setpoint and reading (K)")
    smu_voltage_v: float = Field(gt=0, le=40.4, description="largest SMU source voltage and voltage compliance (V)")
    pulse_voltage_v: float = Field(gt=0, le=10, description="largest pulse-generator output level magnitude (V)")


class InstrumentConfig(BaseModel):
    """One instrument of the station."""

    model_config = ConfigDict(extra="forbid")

    driver: str = Field(description="driver name (built-in or hil.drivers entry point) or import path package.module:Class")
    address: str = Field(min_length=1, description="VISA address of the real instrument")
    simulated: bool | None = Field(None, description="None: the station's 'simulated' setting")
    timeout_s: float = Field(5.0, gt=0, le=600, description="I/O timeout (s)")

    @field_validator("driver")
    @classmethod
    def _known_driver(cls, value: str) -> str:
        # Resolved here, so that a bad driver is reported with the file and field, before anything opens.
        try:
            driver = driver_class(value)
        except UnknownDriverError as exc:
            raise _field_error(f"Input should be a known driver name or an import path package.module:Class; {exc}") from None
        except DriverLookupError as exc:
            raise _field_error(str(exc)) from None
        if getattr(driver.limit_kwargs, "__func__", None) is Instrument.limit_kwargs.__func__:  # the base's, which raises
            raise _field_error(
                f"driver {value!r} ({driver.__module__}:{driver.__qualname__}) does not say which station safety limits "
                "it takes; define the classmethod limit_kwargs(cls, limits) on it, returning its limit keyword "
                "arguments ({} if it has no outputs)."
            )
        return value


def _field_error(message: str) -> PydanticCustomError:
    # The message is passed as context so that braces in it are not read as a template.
    return PydanticCustomError("station_driver", "{message}", {"message": message})


class EmulatorBoardConfig(BaseModel):
    """What a simulated board runs: the emulator server's preset, seed and (optionally small) geometry."""

    model_config = ConfigDict(extra="forbid")

    preset: str = "hermes"
    seed: int = Field(0, ge=0)
    cores: int | None = Field(None, ge=1, le=1024)
    rows: int | None = Field(None, ge=1, le=4096)
    cols: int | None = Field(None, ge=1, le=4096)


class BoardConfig(BaseModel):
    """The chip control board (see docs/board-protocol.md)."""

    model_config = ConfigDict(extra="forbid")

    address: str = Field(min_length=1, description="'TCPIP0::HOST::PORT::SOCKET' or 'HOST:PORT'")
    simulated: bool | None = Field(None, description="None: the station's setting; true starts an emulator server")
    emulator: EmulatorBoardConfig = Field(default_factory=EmulatorBoardConfig)
    timeout_s: float = Field(60.0, gt=0, le=3600, description="reply timeout per request (s)")
    connect_timeout_s: float = Field(5.0, gt=0, le=600, description="timeout of one connection attempt (s)")
    reconnect_timeout_s: float = Field(
        10.0, ge=0, le=3600, description="how long to keep reconnecting after a fault (s); then the run fails"
    )
    token_file: Path | None = Field(
        None, description="file holding the board's shared secret (hil emulate --token-file); default $HIL_BOARD_TOKEN"
    )


class StationConfig(BaseModel):
    """A whole station file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    simulated: bool = Field(False, description="default of every instrument's and the board's 'simulated'")
    visa_library: str = Field("@py", description="pyvisa backend for real instruments ('@py' or a VISA path)")
    limits: SafetyLimits
    instruments: dict[str, InstrumentConfig] = Field(default_factory=dict)
    board: BoardConfig | None = None

    @field_validator("instruments")
    @classmethod
    def _names(cls, value: dict[str, InstrumentConfig]) -> dict[str, InstrumentConfig]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"instrument name {name!r} must be an identifier (letters, digits, _)")
        return value


def load_station_config(path: str | os.PathLike[str]) -> StationConfig:
    """Read and validate a station file; errors name the file and every bad field."""
    p = Path(path)
    try:
        data = load_yaml(p.read_text(), f"station file {p}")
    except OSError as exc:
        raise StationFileError(f"cannot read station file {p}: {exc}") from exc
    except ConfigError as exc:
        raise StationFileError(str(exc)) from exc
    if not isinstance(data, dict):
        raise StationFileError(f"station file {p} must hold a mapping (name, limits, instruments, board).")
    try:
        config = StationConfig.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise StationFileError(f"station file {p} is invalid:\n" + "\n".join(lines)) from None
    if config.board is not None and config.board.token_file is not None and not config.board.token_file.is_absolute():
        config.board.token_file = p.parent / config.board.token_file  # relative to the station file
    return config


class Station:
    """Opens the instruments and board of a :class:`StationConfig` and shuts them down safely.

    Use as a context manager, or call :meth:`connect` and :meth:`close`. ``station['psu']`` is an
    open driver; :meth:`chip` the lab chip on the board.
    """

    def __init__(self, config: StationConfig, path: str | os.PathLike[str] | None = None) -> None:
        self.config = config
        #: The station file it was loaded from (recorded in every run on this station), if any.
        self.path = Path(path).resolve() if path is not None else None
        self.instruments: dict[str, Instrument] = {}
        self.trip_reasons: list[str] = []
        self._sim_dir: tempfile.TemporaryDirectory[str] | None = None
        self._sim_rms: dict[str, pyvisa.ResourceManager] = {}
        self._chip: Any = None
        self._server: subprocess.Popen[str] | None = None
        self._lock = threading.RLock()

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> Station:
        """A station from a station file (not yet connected)."""
        return cls(load_station_config(path), path)

    # ------------------------------------------------------------------ opening
    def is_simulated(self, name: str) -> bool:
        """Whether instrument ``name`` (or 'board') runs simulated per the station file."""
        item = self.config.board if name == "board" else self.config.instruments[name]
        if item is None:
            raise KeyError("this station has no board")
        return self.config.simulated if item.simulated is None else item.simulated

    def _sim_rm(self, driver: type[Instrument]) -> pyvisa.ResourceManager:
        # pyvisa caches one simulator per YAML path for the whole process, so each station loads its
        # own copy: a fresh simulated bench whose state no other station or test can see.
        source = driver.sim_path()
        key = str(source)
        if key not in self._sim_rms:
            if self._sim_dir is None:
                self._sim_dir = tempfile.TemporaryDirectory(prefix="hil-station-")
            copy = Path(self._sim_dir.name) / f"{len(self._sim_rms)}-{source.name}"  # plugins may reuse a file name
            shutil.copyfile(source, copy)
            self._sim_rms[key] = pyvisa.ResourceManager(f"{copy}@sim")
        return self._sim_rms[key]

    def connect(self) -> Station:
        """Open every instrument (reading back its state); on failure close what was opened and raise."""
        try:
            for name, cfg in self.config.instruments.items():
                cls = driver_class(cfg.driver)
                if self.is_simulated(name):
                    rm, address = self._sim_rm(cls), cls.sim_address
                else:
                    rm, address = self._real_rm(), cfg.address
                self.instruments[name] = cls(
                    address,
                    name=name,
                    resource_manager=rm,
                    timeout_s=cfg.timeout_s,
                    trip_handler=self._on_trip,
                    **cls.limit_kwargs(self.config.limits),
                )
        except BaseException:
            self.close()
            raise
        return self

    def _real_rm(self) -> pyvisa.ResourceManager:
        if self.config.visa_library == "@py":
            return default_resource_manager()
        return pyvisa.ResourceManager(self.config.visa_library)

    def __getitem__(self, name: str) -> Any:
        if name not in self.instruments:
            known = ", ".join(self.instruments) or "(none: call connect() first)"
            raise KeyError(f"no instrument {name!r} in station {self.config.name!r}; open instruments: {known}")
        return self.instruments[name]

    def chip(self) -> Any:
        """The :class:`drivers.board.LabChip` on this station's board (opened on first call)."""
        from drivers.board import LabChip  # the board module is only needed by stations with a board

        if self._chip is not None:
            return self._chip
        board = self.config.board
        if board is None:
            raise StationFileError(f"station {self.config.name!r} has no 'board' section; add one to use the chip.")
        address = self._start_emulator_server(board) if self.is_simulated("board") else board.address
        self._chip = LabChip(
            address,
            timeout_s=board.timeout_s,
            connect_timeout_s=board.connect_timeout_s,
            reconnect_timeout_s=board.reconnect_timeout_s,
            max_pulse_ua=self.config.limits.write_head_current_ua,
            trip_handler=self._on_trip,
            token_file=board.token_file,
        )
        self._chip.station = self  # runs on this chip record the station's snapshot and file
        return self._chip

    def _start_emulator_server(self, board: BoardConfig) -> str:
        em = board.emulator
        cmd = [sys.executable, "-m", "emulator.server", "--host", "127.0.0.1", "--port", "0"]
        cmd += ["--preset", em.preset, "--seed", str(em.seed)]
        for flag, value in (("--cores", em.cores), ("--rows", em.rows), ("--cols", em.cols)):
            if value is not None:
                cmd += [flag, str(value)]
        if board.token_file is not None:  # the simulated board asks for the same token as the real one
            cmd += ["--token-file", str(board.token_file)]
        self._server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        return f"TCPIP0::127.0.0.1::{wait_for_listening(self._server, timeout_s=120.0)}::SOCKET"

    # ------------------------------------------------------------------ safety
    def _on_trip(self, source: Any, reason: str) -> None:
        failures = self.safe_shutdown(reason)
        if failures:
            raise InstrumentCommunicationError("; ".join(failures))

    def safe_shutdown(self, reason: str = "") -> list[str]:
        """Switch every instrument's outputs off; return the failures (never stops half-way)."""
        with self._lock:
            if reason:
                self.trip_reasons.append(reason)
            log.warning("station %s: safe shutdown (%s)", self.config.name, reason or "requested")
            failures = []
            for name, inst in self.instruments.items():
                if inst.closed:
                    continue
                try:
                    inst.safe_state()
                except Exception as exc:  # keep going: the other outputs must still be switched off
                    failures.append(f"{name}: safe_state failed: {exc}")
                    log.error("station %s: %s could not be made safe: %s", self.config.name, name, exc)
            return failures

    def snapshot(self) -> dict[str, Any]:
        """The station's cached instrument settings (no I/O), for run metadata: each instrument's
        driver, identity (``*IDN?`` at connect) and the settings read at connect or set since."""
        instruments = {}
        for n, inst in self.instruments.items():
            cfg = self.config.instruments.get(n)
            instruments[n] = {
                "simulated": self.is_simulated(n), "driver": cfg.driver if cfg is not None else type(inst).__name__,
                **inst.snapshot(),
            }
        out: dict[str, Any] = {
            "name": self.config.name,
            "limits": self.config.limits.model_dump(),
            "instruments": instruments,
        }
        if self.config.board is not None:
            out["board"] = {"address": self.config.board.address, "simulated": self.is_simulated("board")}
        if self.path is not None:
            out["file"] = str(self.path)
        return out

    # ------------------------------------------------------------------ closing
    def close(self) -> None:
        """Close the board, the instruments and this station's own simulators (not the shared manager)."""
        if self._chip is not None:
            self._chip.close()
            self._chip = None
        for inst in self.instruments.values():
            inst.close()
        self.instruments.clear()
        for rm in self._sim_rms.values():
            with contextlib.suppress(Exception):
                rm.close()
        self._sim_rms.clear()
        if self._sim_dir is not None:
            self._sim_dir.cleanup()
            self._sim_dir = None
        if self._server is not None:
            stop_process(self._server)
            self._server = None

    def __enter__(self) -> Station:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_listening(proc: subprocess.Popen[str], timeout_s: float) -> int:
    """Read an emulator server's stdout until its ``listening on HOST:PORT`` line; return PORT."""
    deadline = time.monotonic() + timeout_s
    assert proc.stdout is not None
    lines: list[str] = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = re.search(r"listening on \S+:(\d+)", line)
        if m:
            return int(m.group(1))
    stop_process(proc)
    raise InstrumentCommunicationError(
        f"the emulator server did not start (exit code {proc.returncode}); its output: {' | '.join(lines) or '(none)'}"
    )


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    """Terminate a child process started here, and wait for it (kill if it does not stop)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)
    if proc.stdout is not None:
        proc.stdout.close()

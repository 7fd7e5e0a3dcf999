"""The base of every instrument driver: one logged write/query point over a pyvisa resource.

Conventions every driver follows (a meta-test in ``tests/drivers`` checks them):

* Every byte to or from the instrument goes through :meth:`Instrument._write` or
  :meth:`Instrument._query`, which log the exchange (logger ``drivers.<name>``, DEBUG) and defer
  Ctrl-C until the exchange is complete, so an interrupted transaction never leaves a half-read
  reply in the instrument's buffer.
* Connecting reads the instrument's real state back (``*IDN?`` and the settings the driver
  exposes); it never sends ``*RST``, ``*CLS`` or a device clear, so attaching to a running
  experiment does not disturb it.
* :meth:`Instrument.close` closes the instrument's own resource, never the shared pyvisa
  ``ResourceManager`` (closing it would close every other instrument too).
* Properties are in the instrument's units (named in the property name and docstring). Their
  setters validate the value against the instrument's range (:class:`InstrumentInputError`) and the
  station's safety limits (:class:`hil.SafetyLimitError`) before anything is written.
* A tripped safety limit first puts the outputs into their safe state (the station's
  ``safe_shutdown`` if the driver belongs to a station, else the driver's own :meth:`safe_state`),
  then raises :class:`hil.SafetyLimitError`.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyvisa
from pyvisa import errors as visa_errors
from pyvisa.resources import MessageBasedResource

from hil.errors import ChipCommunicationError, HilError, SafetyLimitError

if TYPE_CHECKING:
    from drivers.station import SafetyLimits

#: ``trip_handler(instrument, reason)``: called when a safety limit trips, before the error is raised.
TripHandler = Callable[["Instrument", str], None]

_default_rm: pyvisa.ResourceManager | None = None
_default_rm_lock = threading.Lock()


class InstrumentInputError(HilError, ValueError):
    """A value is outside what the instrument can do; nothing was written."""


class InstrumentCommunicationError(ChipCommunicationError):
    """An instrument did not answer, or answered something the driver cannot parse."""


class DriverLookupError(HilError, KeyError):
    """A station-file ``driver:`` value names no usable driver class (unknown, not importable, not an Instrument)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownDriverError(DriverLookupError):
    """A driver name is neither built in nor registered in the ``hil.drivers`` entry-point group."""


def default_resource_manager() -> pyvisa.ResourceManager:
    """The process-wide pyvisa-py ``ResourceManager('@py')``, created on first use.

    Drivers share it and never close it; whoever wants it closed (a test session, a station that
    created its own managers) closes it explicitly.
    """
    global _default_rm
    with _default_rm_lock:
        if _default_rm is None:
            _default_rm = pyvisa.ResourceManager("@py")
        return _default_rm


def sim_file_path(file_name: str, package: str = "drivers") -> Path:
    """Path of a pyvisa-sim YAML shipped as package data under ``<package>/sim/`` (default ``drivers/sim/``)."""
    path = Path(str(resources.files(package) / "sim" / file_name))
    if not path.is_file():
        raise FileNotFoundError(
            f"pyvisa-sim file {file_name!r} is missing from {package.replace('.', '/')}/sim/ (looked at {path})."
        )
    return path


def check_value(name: str, value: float, low: float, high: float, unit: str, fix: str = "") -> float:
    """Return ``float(value)`` or raise :class:`InstrumentInputError` naming value, range and fix."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InstrumentInputError(f"{name}={value!r} is not a number; give a value in {unit}.") from None
    if not (low <= v <= high):  # also catches NaN
        hint = f" {fix}" if fix else ""
        raise InstrumentInputError(f"{name}={value!r} {unit} is out of range; allowed [{low}, {high}] {unit}.{hint}")
    return v


def fmt_float(value: float) -> str:
    """SCPI number text with 7 significant digits, e.g. ``1.250000E-03`` (parsed by every instrument)."""
    return f"{float(value):.6E}"


def check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise :class:`InstrumentInputError`."""
    if value not in choices:
        raise InstrumentInputError(f"{name}={value!r} is not allowed; choose one of {list(choices)}.")
    return value


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C until the block ends (main thread only; elsewhere a no-op).

    Why: a KeyboardInterrupt between a query's write and its read leaves the reply in the
    instrument's output buffer, and the next query would read the stale answer.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[tuple[int, Any]] = []

    def handler(signum: int, frame: Any) -> None:
        received.append((signum, frame))

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not allowed here (e.g. embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received and callable(previous):
            previous(*received[0])


class Instrument:
    """Base class of the instrument drivers.

    ``resource`` is a VISA address (opened with ``resource_manager``, default the shared
    pyvisa-py manager) or an already open message-based resource. ``name`` labels the log and the
    station snapshot. ``timeout_s`` is the I/O timeout in seconds (0.01 to 600).
    ``trip_handler(instrument, reason)`` is called when a safety limit trips (a station passes its
    ``safe_shutdown``); without one the driver calls its own :meth:`safe_state`.
    """

    #: Termination appended to every command.
    write_termination: ClassVar[str] = "\n"
    #: Termination that ends every reply.
    read_termination: ClassVar[str] = "\n"
    #: Name of this driver in station files (``driver: <station_name>``). Built-in and entry-point
    #: drivers set it; a class named in a station file by its import path may leave it empty.
    station_name: ClassVar[str] = ""
    #: pyvisa-sim YAML of this instrument: a file under ``sim/`` of the package of the module that
    #: sets it (``drivers/sim/`` for the built-in drivers), or an absolute path.
    sim_file: ClassVar[str] = ""
    #: VISA address of the simulated instrument inside :attr:`sim_file`.
    sim_address: ClassVar[str] = ""
    #: Substring expected in the ``*IDN?`` reply (model check at connect; a mismatch only warns).
    idn_model: ClassVar[str] = ""
    #: Commands a driver must never send implicitly (checked by the meta-test).
    FORBIDDEN_AT_CONNECT: ClassVar[tuple[str, ...]] = ("*RST", "*CLS", "SYST:PRES", "reset()")

    def __init__(
        self,
        resource: str | MessageBasedResource,
        *,
        name: str,
        resource_manager: pyvisa.ResourceManager | None = None,
        timeout_s: float = 5.0,
        trip_handler: TripHandler | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise InstrumentInputError(f"name={name!r}: give every instrument a non-empty name.")
        check_value("timeout_s", timeout_s, 0.01, 600.0, "s")
        self.name = name
        self.trip_handler = trip_handler
        self.log = logging.getLogger(f"drivers.{name}")
        self.n_writes = 0
        self.n_queries = 0
        if isinstance(resource, str):
            rm = resource_manager or default_resource_manager()
            try:
                opened = rm.open_resource(resource)
            except (visa_errors.Error, OSError, ValueError) as exc:
                raise InstrumentCommunicationError(
                    f"{name}: could not open {resource!r} ({exc}). Check the address and that the instrument is on."
                ) from exc
            if not isinstance(opened, MessageBasedResource):
                opened.close()
                raise InstrumentCommunicationError(f"{name}: {resource!r} is not a message-based instrument.")
            self._resource: MessageBasedResource | None = opened
        else:
            self._resource = resource
        self.address = str(self._resource.resource_name)
        self._resource.write_termination = self.write_termination
        self._resource.read_termination = self.read_termination
        self._resource.timeout = timeout_s * 1000.0
        self.idn = ""
        try:
            self.connect()
        except BaseException:
            self.close()
            raise

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, Any]:
        """The constructor keyword arguments that carry a station's safety limits to this driver.

        Every driver a station opens overrides this (an instrument without outputs returns ``{}``):
        the base raises, so that no driver ends up without its limits by omission.
        """
        raise NotImplementedError(
            f"{cls.__module__}:{cls.__qualname__} does not say which station safety limits it takes; define "
            "the classmethod limit_kwargs(cls, limits) returning its limit keyword arguments ({} if it has no outputs)."
        )

    @classmethod
    def sim_path(cls) -> Path:
        """Path of this driver's pyvisa-sim YAML (see :attr:`sim_file`)."""
        owner = next((k for k in cls.__mro__ if vars(k).get("sim_file")), None)
        if owner is None:
            raise FileNotFoundError(
                f"{cls.__module__}:{cls.__qualname__} has no pyvisa-sim YAML (sim_file is empty); "
                "set sim_file and sim_address on the class, or run this instrument with simulated: false."
            )
        if Path(owner.sim_file).is_absolute():
            path = Path(owner.sim_file)
            if not path.is_file():
                raise FileNotFoundError(f"pyvisa-sim file {path} of {cls.__qualname__} does not exist.")
            return path
        module = sys.modules[owner.__module__]
        if module.__package__:
            return sim_file_path(owner.sim_file, module.__package__)
        path = Path(str(module.__file__)).parent / "sim" / owner.sim_file  # a top-level module: sim/ beside it
        if not path.is_file():
            raise FileNotFoundError(f"pyvisa-sim file {owner.sim_file!r} of {cls.__qualname__} is missing (looked at {path}).")
        return path

    # ------------------------------------------------------------------ the one I/O point
    def _write(self, command: str) -> None:
        """Send one command (no reply expected). Every driver write goes through here."""
        res = self._require_open()
        self.log.debug("write %r", command)
        with _deferred_interrupt():
            try:
                res.write(command)
            except (visa_errors.Error, OSError) as exc:
                raise InstrumentCommunicationError(f"{self.name}: writing {command!r} failed: {exc}") from exc
        self.n_writes += 1

    def _query(self, command: str) -> str:
        """Send one query and return its reply without the termination. Every read goes here."""
        res = self._require_open()
        with _deferred_interrupt():
            try:
                reply = res.query(command)
            except (visa_errors.Error, OSError) as exc:
                raise InstrumentCommunicationError(
                    f"{self.name}: query {command!r} got no valid reply ({exc}). "
                    "Check the connection, the address and the timeout."
                ) from exc
        self.n_queries += 1
        self.log.debug("query %r -> %r", command, reply)
        return reply.strip()

    def _query_float(self, command: str) -> float:
        reply = self._query(command)
        try:
            return float(reply.strip().strip('"'))
        except ValueError:
            raise InstrumentCommunicationError(f"{self.name}: {command!r} returned {reply!r}, not a number.") from None

    def _query_int(self, command: str) -> int:
        return round(self._query_float(command))

    def _require_open(self) -> MessageBasedResource:
        if self._resource is None:
            raise InstrumentCommunicationError(f"{self.name} is closed; create the driver again to reconnect.")
        return self._resource

    # ------------------------------------------------------------------ lifecycle
    def connect(self) -> None:
        """Read back identity and state (``*IDN?``, then :meth:`read_state`); never resets."""
        self.idn = self._query("*IDN?")
        if self.idn_model and self.idn_model.lower() not in self.idn.lower():
            self.log.warning("%s: *IDN? says %r; this driver expects a %s", self.name, self.idn, self.idn_model)
        self.read_state()

    def read_state(self) -> None:
        """Query the settings this driver exposes and cache them (subclasses extend)."""

    def safe_state(self) -> None:
        """Put the instrument's outputs into their safe state (outputs off). Subclasses implement."""

    def snapshot(self) -> dict[str, Any]:
        """Cached settings (no I/O): name, address, identity and the state read at connect or set since."""
        return {"name": self.name, "address": self.address, "idn": self.idn}

    def close(self) -> None:
        """Close this instrument's resource (never the shared ResourceManager). Safe to call twice."""
        res, self._resource = self._resource, None
        if res is not None:
            with contextlib.suppress(visa_errors.Error, OSError):
                res.close()

    @property
    def closed(self) -> bool:
        """Get whether the driver has been closed (bool)."""
        return self._resource is None

    def __enter__(self) -> Instrument:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.address}>"

    # ------------------------------------------------------------------ safety
    def check_limit(self, name: str, value: float, limit: float | None, unit: str) -> None:
        """Trip unless ``|value| <= limit`` (``limit=None`` means no station limit)."""
        if limit is None or abs(value) <= limit:
            return
        self.trip(
            f"{self.name}: {name}={value} {unit} exceeds the station safety limit of {limit} {unit}; "
            f"allowed magnitude up to {limit} {unit}. Lower the value or raise the limit in the station file."
        )

    def trip(self, reason: str) -> None:
        """Switch outputs to their safe state, then raise :class:`hil.SafetyLimitError`."""
        self.log.error("safety limit tripped: %s", reason)
        try:
            if self.trip_handler is not None:
                self.trip_handler(self, reason)
            else:
                self.safe_state()
        except Exception as exc:  # the refusal must still reach the caller, with both facts
            raise SafetyLimitError(f"{reason} (switching outputs off also failed: {exc})") from exc
        raise SafetyLimitError(reason)


class Channel:
    """A channel (output, input or loop) of a multi-channel instrument; I/O goes through the parent."""

    def __init__(self, parent: Instrument, channel_id: Any) -> None:
        self.parent = parent
        self.id = channel_id

    def _write(self, command: str) -> None:
        self.parent._write(command)

    def _query(self, command: str) -> str:
        return self.parent._query(command)

    def _query_float(self, command: str) -> float:
        return self.parent._query_float(command)

    def _query_int(self, command: str) -> int:
        return self.parent._query_int(command)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id!r} of {self.parent.name!r}>"

"""Lab drivers: pyvisa instrument drivers, the station file, and the chip control board backend.

* Instruments (one module each, each with a pyvisa-sim YAML under ``drivers/sim/``): Keithley
  2600B SMU, Keysight 33500B pulse generator, Keysight 34465A DMM, Lake Shore 336 temperature
  controller, Keysight E36300 power supply. Base class and conventions: :mod:`drivers.instrument`.
* :mod:`drivers.station`: the YAML station file (instruments, addresses, simulated or real, safety
  limits) and :class:`~drivers.station.Station`, which opens them and shuts them down safely.
* :mod:`drivers.board`: :class:`~drivers.board.LabChip`, a :class:`hil.Chip` that talks to the
  chip's control board over TCP (pyvisa-py SOCKET) with the protocol of
  :mod:`hil.board_protocol` (spec: ``docs/board-protocol.md``).

The driver registry is derived from the driver classes: each declares its station-file name
(``station_name``) and which station limits it takes (``limit_kwargs``). A station file's
``driver:`` is one of

* a built-in name (a class with a ``station_name`` in one of :data:`BUILTIN_DRIVER_MODULES`),
* a name an installed package registers in the ``hil.drivers`` entry-point group
  (``name = "package.module:Class"``), or
* an import path ``package.module:Class`` of a lab's own class.

Importing this package is cheap: the driver modules load on first use of the registry.
"""

from __future__ import annotations

import logging
import re
from functools import cache
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

    from drivers.instrument import Instrument

log = logging.getLogger("drivers")

#: Modules of the drivers shipped with this package; each defines its driver class with a ``station_name``.
BUILTIN_DRIVER_MODULES: tuple[str, ...] = (
    "drivers.keithley_2600b",
    "drivers.keysight_33500b",
    "drivers.keysight_34465a",
    "drivers.lakeshore_336",
    "drivers.keysight_e36300",
)

#: Entry-point group through which an installed package adds drivers: ``name = "package.module:Class"``.
ENTRY_POINT_GROUP = "hil.drivers"

_IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*")

HOW_TO_ADD = (
    f"To add a driver, install a package that registers its Instrument subclass in the {ENTRY_POINT_GROUP!r} "
    'entry-point group (name = "package.module:Class"), or give the class by its import path in the station '
    "file (driver: package.module:Class)."
)


def is_import_path(spec: str) -> bool:
    """Whether a ``driver:`` value is an import path ``package.module:Class`` (rather than a name)."""
    return _IMPORT_PATH.fullmatch(spec) is not None


@cache
def builtin_driver_classes() -> dict[str, type[Instrument]]:
    """Built-in station name -> driver class, collected from :data:`BUILTIN_DRIVER_MODULES` (imported here)."""
    from drivers.instrument import Instrument

    found: dict[str, type[Instrument]] = {}
    for module_name in BUILTIN_DRIVER_MODULES:
        module = import_module(module_name)
        for obj in vars(module).values():
            if not (isinstance(obj, type) and issubclass(obj, Instrument) and obj.__module__ == module_name):
                continue
            name = vars(obj).get("station_name")
            if not name:
                continue
            if name in found:
                raise RuntimeError(f"two built-in drivers claim station_name {name!r}: {found[name]} and {obj}")
            found[name] = obj
    return dict(sorted(found.items()))


def entry_point_drivers() -> dict[str, list[EntryPoint]]:
    """Driver name -> the entry points of installed packages that register it (not loaded; read afresh each call)."""
    from importlib.metadata import entry_points

    found: dict[str, list[EntryPoint]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        same = found.setdefault(ep.name, [])
        if all(other.value != ep.value for other in same):
            same.append(ep)
    return found


def known_drivers() -> dict[str, str]:
    """Every driver name a station file can use, built-in first: name -> ``module:Class`` (nothing but built-ins loaded)."""
    known = {name: _path_of(cls) for name, cls in builtin_driver_classes().items()}
    for name, eps in sorted(entry_point_drivers().items()):
        known.setdefault(name, " | ".join(ep.value for ep in eps))
    return known


def driver_class(spec: str) -> type[Instrument]:
    """The driver class for a station file's ``driver:`` value: a built-in name, an entry-point name or an import path.

    Raises :class:`drivers.instrument.DriverLookupError` (a ``KeyError``) naming the value, the
    known names and how to add a driver; an :class:`~drivers.instrument.UnknownDriverError` when a
    name is not known at all.
    """
    from drivers.instrument import DriverLookupError, UnknownDriverError

    if not isinstance(spec, str) or not spec:
        raise DriverLookupError(f"driver={spec!r}: give a driver name or an import path package.module:Class.")
    if is_import_path(spec):
        return _checked(_import_class(spec), repr(spec))
    builtins = builtin_driver_classes()
    eps = entry_point_drivers().get(spec, [])
    if spec in builtins:
        if eps:
            log.warning("driver %r is built in; ignoring the entry point(s) %s", spec, ", ".join(ep.value for ep in eps))
        return builtins[spec]
    if not eps:
        raise UnknownDriverError(f"unknown driver {spec!r}. Known drivers: {', '.join(known_drivers())}. {HOW_TO_ADD}")
    if len(eps) > 1:
        raise DriverLookupError(
            f"driver {spec!r} is registered by more than one installed package ({', '.join(_describe(ep) for ep in eps)}); "
            "uninstall one, or name the class by its import path (driver: package.module:Class)."
        )
    ep = eps[0]
    try:
        cls = ep.load()
    except Exception as exc:  # a broken plugin must not look like an unknown name
        raise DriverLookupError(f"driver {spec!r} ({_describe(ep)}) failed to load: {type(exc).__name__}: {exc}") from exc
    cls = _checked(cls, f"{spec!r} ({_describe(ep)})")
    declared = vars(cls).get("station_name") or ""
    if declared and declared != spec:
        raise DriverLookupError(
            f"driver {spec!r} ({_describe(ep)}) is a class whose station_name is {declared!r}; make the entry-point "
            "name and the class's station_name the same."
        )
    return cls


def _import_class(spec: str) -> Any:
    from drivers.instrument import DriverLookupError

    module_name, _, qualname = spec.partition(":")
    try:
        obj: Any = import_module(module_name)
    except Exception as exc:  # ImportError, or whatever the lab's module raises while importing
        raise DriverLookupError(
            f"driver {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}). "
            "Install its package or put its folder on PYTHONPATH."
        ) from exc
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise DriverLookupError(f"driver {spec!r}: module {module_name!r} has no attribute {qualname!r}.")
        obj = getattr(obj, part)
    return obj


def _checked(obj: Any, where: str) -> type[Instrument]:
    from drivers.instrument import DriverLookupError, Instrument

    if obj is Instrument:
        raise DriverLookupError(f"driver {where} is the base class itself; name a driver class derived from it.")
    if not (isinstance(obj, type) and issubclass(obj, Instrument)):
        raise DriverLookupError(
            f"driver {where} is {obj!r}, not a subclass of drivers.instrument.Instrument; a station driver must "
            "derive from it (it gives the logged I/O, the safety checks and safe_state)."
        )
    return obj


def _path_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    origin = f" from {dist.metadata['Name']} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name} = {ep.value}{origin}"


def __getattr__(name: str) -> Any:
    # DRIVERS is computed on first use, so that importing the package imports no driver module.
    if name == "DRIVERS":
        return {n: _path_of(cls) for n, cls in builtin_driver_classes().items()}
    raise AttributeError(f"module 'drivers' has no attribute {name!r}")


#: ``DRIVERS``: built-in station name -> ``module:Class`` (computed from the classes on access).
__all__ = [
    "BUILTIN_DRIVER_MODULES",
    "DRIVERS",
    "ENTRY_POINT_GROUP",
    "builtin_driver_classes",
    "driver_class",
    "entry_point_drivers",
    "is_import_path",
    "known_drivers",
]

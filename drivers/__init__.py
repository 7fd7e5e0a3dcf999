"""Lab drivers: pyvisa instrument drivers, the station file, and the chip control board backend.

* Instruments (one module each, each with a pyvisa-sim YAML under ``drivers/sim/``): Keithley
  2600B SMU, Keysight 33500B pulse generator, Keysight 34465A DMM, Lake Shore 336 temperature
  controller, Keysight E36300 power supply. Base class and conventions: :mod:`drivers.instrument`.
* :mod:`drivers.station`: the YAML station file (instruments, addresses, simulated or real, safety
  limits) and :class:`~drivers.station.Station`, which opens them and shuts them down safely.
* :mod:`drivers.board`: :class:`~drivers.board.LabChip`, a :class:`hil.Chip` that talks to the
  chip's control board over TCP (pyvisa-py SOCKET) with the protocol of
  :mod:`hil.board_protocol` (spec: ``docs/board-protocol.md``).

Importing this package is cheap: the driver modules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: Station-file driver name -> ``module:Class``.
DRIVERS: dict[str, str] = {
    "keithley_2600b": "drivers.keithley_2600b:Keithley2600B",
    "keysight_33500b": "drivers.keysight_33500b:Keysight33500B",
    "keysight_34465a": "drivers.keysight_34465a:Keysight34465A",
    "lakeshore_336": "drivers.lakeshore_336:LakeShore336",
    "keysight_e36300": "drivers.keysight_e36300:KeysightE36300",
}


def driver_class(name: str) -> Any:
    """The driver class registered under ``name`` (see :data:`DRIVERS`)."""
    if name not in DRIVERS:
        raise KeyError(f"unknown driver {name!r}; known drivers: {', '.join(sorted(DRIVERS))}")
    module, _, cls = DRIVERS[name].partition(":")
    return getattr(import_module(module), cls)


__all__ = ["DRIVERS", "driver_class"]

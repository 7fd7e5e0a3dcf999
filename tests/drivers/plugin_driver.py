"""A lab's own instrument driver, outside the ``drivers`` package: a one-output bench supply, SCPI.

Used by tests/drivers/test_driver_registry.py the way a lab uses its own class: named in a station
file by its import path (``driver: tests.drivers.plugin_driver:BenchSupply``) or registered by an
installed package in the ``hil.drivers`` entry-point group. Its pyvisa-sim YAML lies beside it, in
``tests/drivers/sim/bench_supply.yaml``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from drivers.instrument import Instrument, InstrumentInputError, check_value, fmt_float

if TYPE_CHECKING:
    from drivers.station import SafetyLimits


class BenchSupply(Instrument):
    """One-output bench supply (0 to 12 V). ``max_voltage_v``: station limit on the setpoint (V; None for none)."""

    sim_file: ClassVar[str] = "bench_supply.yaml"
    sim_address: ClassVar[str] = "TCPIP0::192.168.10.99::inst0::INSTR"
    idn_model: ClassVar[str] = "BS-1"
    MAX_VOLTAGE_V: ClassVar[float] = 12.0

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, float]:
        """Station limit: the supply voltage setpoint (V)."""
        return {"max_voltage_v": limits.supply_voltage_v}

    def __init__(self, resource: Any, *, name: str, max_voltage_v: float | None = None, **kwargs: Any) -> None:
        self.max_voltage_v = max_voltage_v
        self.state: dict[str, Any] = {}
        super().__init__(resource, name=name, **kwargs)

    def read_state(self) -> None:
        """Read the setpoint and the output state back."""
        _ = self.voltage_v, self.output_enabled

    @property
    def voltage_v(self) -> float:
        """Control the voltage setpoint in V (float, 0 to 12, capped by the station limit)."""
        value = self._query_float("VOLT?")
        self.state["voltage_v"] = value
        return value

    @voltage_v.setter
    def voltage_v(self, value: float) -> None:
        v = check_value("voltage_v", value, 0.0, self.MAX_VOLTAGE_V, "V")
        self.check_limit("voltage_v", v, self.max_voltage_v, "V")
        self._write(f"VOLT {fmt_float(v)}")
        self.state["voltage_v"] = v

    @property
    def output_enabled(self) -> bool:
        """Control whether the output is on (bool)."""
        value = bool(self._query_int("OUTP?"))
        self.state["output_enabled"] = value
        return value

    @output_enabled.setter
    def output_enabled(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InstrumentInputError(f"output_enabled={value!r}; give True or False.")
        self._write(f"OUTP {int(value)}")
        self.state["output_enabled"] = value

    def safe_state(self) -> None:
        """Switch the output off."""
        self._write("OUTP 0")
        self.state["output_enabled"] = False

    def snapshot(self) -> dict[str, Any]:
        """Cached settings (no I/O)."""
        return {**super().snapshot(), **self.state}


class NoLimitsSupply(BenchSupply):
    """A driver that forgot to say which station limits it takes (the station must refuse it)."""

    limit_kwargs = classmethod(Instrument.limit_kwargs.__func__)  # type: ignore[assignment]


class NotAnInstrument:
    """A class that is not an :class:`~drivers.instrument.Instrument` (the station must refuse it)."""

"""Keysight E36300 series (E36312A) triple-output programmable DC power supply, SCPI.

Powers the chip's rails. Each output is addressed with a channel list ``(@n)`` so no command
depends on a previously selected output. Output ranges are those of the E36312A: output 1 up to
6.18 V / 5.15 A, outputs 2 and 3 up to 25.75 V / 1.03 A. Station limits ``supply_voltage_v`` and
``supply_current_a`` cap every output further.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from drivers.instrument import Channel, Instrument, InstrumentInputError, check_value, fmt_float

if TYPE_CHECKING:
    from drivers.station import SafetyLimits


class E36300Output(Channel):
    """One output (1, 2 or 3) of a :class:`KeysightE36300`."""

    parent: KeysightE36300

    @property
    def max_voltage_v(self) -> float:
        """Get the largest voltage setpoint this output accepts in V (float, 6.18 or 25.75)."""
        return self.parent.OUTPUT_RANGES[self.id][0]

    @property
    def max_current_a(self) -> float:
        """Get the largest current limit this output accepts in A (float, 5.15 or 1.03)."""
        return self.parent.OUTPUT_RANGES[self.id][1]

    @property
    def voltage_v(self) -> float:
        """Control the voltage setpoint in V (float, 0 to max_voltage_v, capped by the station limit)."""
        value = self._query_float(f"VOLT? (@{self.id})")
        self.parent.state[self.id]["voltage_v"] = value
        return value

    @voltage_v.setter
    def voltage_v(self, value: float) -> None:
        v = check_value(f"output {self.id} voltage_v", value, 0.0, self.max_voltage_v, "V")
        self.parent.check_limit(f"output {self.id} voltage_v", v, self.parent.max_voltage_v, "V")
        self._write(f"VOLT {fmt_float(v)},(@{self.id})")
        self.parent.state[self.id]["voltage_v"] = v

    @property
    def current_limit_a(self) -> float:
        """Control the current limit in A (float, 0.001 to max_current_a, capped by the station limit)."""
        value = self._query_float(f"CURR? (@{self.id})")
        self.parent.state[self.id]["current_limit_a"] = value
        return value

    @current_limit_a.setter
    def current_limit_a(self, value: float) -> None:
        a = check_value(f"output {self.id} current_limit_a", value, 0.001, self.max_current_a, "A")
        self.parent.check_limit(f"output {self.id} current_limit_a", a, self.parent.max_current_a, "A")
        self._write(f"CURR {fmt_float(a)},(@{self.id})")
        self.parent.state[self.id]["current_limit_a"] = a

    @property
    def output_enabled(self) -> bool:
        """Control whether the output is on (bool)."""
        value = bool(self._query_int(f"OUTP? (@{self.id})"))
        self.parent.state[self.id]["output_enabled"] = value
        return value

    @output_enabled.setter
    def output_enabled(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InstrumentInputError(f"output {self.id} output_enabled={value!r}; give True or False.")
        if value:
            # The setpoints may predate this session (read back at connect); check them before power-up.
            st = self.parent.state[self.id]
            self.parent.check_limit(f"output {self.id} voltage_v", st["voltage_v"], self.parent.max_voltage_v, "V")
            self.parent.check_limit(
                f"output {self.id} current_limit_a", st["current_limit_a"], self.parent.max_current_a, "A"
            )
        self._write(f"OUTP {int(value)},(@{self.id})")
        self.parent.state[self.id]["output_enabled"] = value

    @property
    def measured_voltage_v(self) -> float:
        """Measure the output voltage in V (float)."""
        return self._query_float(f"MEAS:VOLT? (@{self.id})")

    @property
    def measured_current_a(self) -> float:
        """Measure the output current in A (float); trips if above the station current limit."""
        value = self._query_float(f"MEAS:CURR? (@{self.id})")
        self.parent.check_limit(f"output {self.id} measured current", value, self.parent.max_current_a, "A")
        return value


class KeysightE36300(Instrument):
    """Keysight E36312A triple-output power supply.

    ``max_voltage_v`` / ``max_current_a``: station safety limits applied to every output (V, A;
    None for none). Outputs are ``psu.output(1)`` .. ``psu.output(3)``.
    """

    station_name: ClassVar[str] = "keysight_e36300"
    sim_file: ClassVar[str] = "keysight_e36300.yaml"
    sim_address: ClassVar[str] = "TCPIP0::192.168.10.13::inst0::INSTR"
    idn_model: ClassVar[str] = "E363"
    #: Output number -> (largest voltage setpoint in V, largest current limit in A), E36312A.
    OUTPUT_RANGES: ClassVar[dict[int, tuple[float, float]]] = {1: (6.18, 5.15), 2: (25.75, 1.03), 3: (25.75, 1.03)}

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, float]:
        """Station limits: supply voltage setpoints (V) and current limits and readings (A), every output."""
        return {"max_voltage_v": limits.supply_voltage_v, "max_current_a": limits.supply_current_a}

    def __init__(
        self,
        resource: Any,
        *,
        name: str,
        max_voltage_v: float | None = None,
        max_current_a: float | None = None,
        **kwargs: Any,
    ) -> None:
        self.max_voltage_v = max_voltage_v
        self.max_current_a = max_current_a
        self.outputs = {n: E36300Output(self, n) for n in self.OUTPUT_RANGES}
        self.state: dict[int, dict[str, Any]] = {n: {} for n in self.OUTPUT_RANGES}
        super().__init__(resource, name=name, **kwargs)

    def output(self, number: int) -> E36300Output:
        """Output ``number`` (1, 2 or 3)."""
        if number not in self.outputs:
            raise InstrumentInputError(f"output {number!r} does not exist; the E36312A has outputs 1, 2 and 3.")
        return self.outputs[number]

    def read_state(self) -> None:
        """Read setpoints, current limits and output states of all outputs; trip if a live output is unsafe."""
        for out in self.outputs.values():
            _ = out.voltage_v, out.current_limit_a, out.output_enabled
        for n, st in self.state.items():
            if st["output_enabled"]:  # a live output set beyond the limits before we connected
                self.check_limit(f"output {n} voltage_v", st["voltage_v"], self.max_voltage_v, "V")
                self.check_limit(f"output {n} current_limit_a", st["current_limit_a"], self.max_current_a, "A")

    def safe_state(self) -> None:
        """Switch every output off."""
        for n in self.outputs:
            self._write(f"OUTP 0,(@{n})")
            self.state[n]["output_enabled"] = False

    def snapshot(self) -> dict[str, Any]:
        """Cached settings of every output (no I/O)."""
        return {**super().snapshot(), "outputs": {str(n): dict(s) for n, s in self.state.items()}}

"""Keithley 2600B series (2602B) dual-channel source-measure unit, TSP (Lua) command set.

Used for single-device characterisation (I-V sweeps, read currents). Commands are TSP
assignments (``smua.source.levelv = 1.000000E+00``) and ``print(...)`` queries, whose replies are
numbers such as ``1.00000e+00``. Ranges are those of the 2602B: source +-40.4 V / +-3.03 A (DC).
The station limits ``smu_voltage_v`` and the write-head current cap the source and compliance
values further.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from drivers.instrument import Channel, Instrument, InstrumentInputError, check_value, fmt_float

if TYPE_CHECKING:
    from drivers.station import SafetyLimits

#: TSP constants of ``smuX.source.func``.
_FUNC_CODES = {"current": 0, "voltage": 1}


class Keithley2600Channel(Channel):
    """One SMU channel ('a' or 'b') of a :class:`Keithley2600B`."""

    parent: Keithley2600B
    MAX_VOLTAGE_V: ClassVar[float] = 40.4
    MAX_CURRENT_A: ClassVar[float] = 3.03

    @property
    def _smu(self) -> str:
        return f"smu{self.id}"

    def _set(self, attribute: str, key: str, value: Any, text: str) -> None:
        self._write(f"{self._smu}.source.{attribute} = {text}")
        self.parent.state[self.id][key] = value

    def _get(self, attribute: str) -> float:
        return self._query_float(f"print({self._smu}.source.{attribute})")

    @property
    def source_function(self) -> str:
        """Control what the channel sources (str, 'voltage' or 'current')."""
        code = round(self._get("func"))
        names = {v: k for k, v in _FUNC_CODES.items()}
        if code not in names:
            raise InstrumentInputError(f"{self.parent.name}: smu{self.id}.source.func returned {code}, not 0 or 1.")
        self.parent.state[self.id]["source_function"] = names[code]
        return names[code]

    @source_function.setter
    def source_function(self, value: str) -> None:
        if value not in _FUNC_CODES:
            raise InstrumentInputError(f"source_function={value!r}; choose 'voltage' or 'current'.")
        self._set("func", "source_function", value, str(_FUNC_CODES[value]))

    @property
    def source_voltage_v(self) -> float:
        """Control the source voltage level in V (float, -40.4 to 40.4, capped by the station limit)."""
        value = self._get("levelv")
        self.parent.state[self.id]["source_voltage_v"] = value
        return value

    @source_voltage_v.setter
    def source_voltage_v(self, value: float) -> None:
        v = check_value("source_voltage_v", value, -self.MAX_VOLTAGE_V, self.MAX_VOLTAGE_V, "V")
        self.parent.check_limit(f"smu{self.id} source_voltage_v", v, self.parent.max_voltage_v, "V")
        self._set("levelv", "source_voltage_v", v, fmt_float(v))

    @property
    def source_current_a(self) -> float:
        """Control the source current level in A (float, -3.03 to 3.03, capped by the station limit)."""
        value = self._get("leveli")
        self.parent.state[self.id]["source_current_a"] = value
        return value

    @source_current_a.setter
    def source_current_a(self, value: float) -> None:
        a = check_value("source_current_a", value, -self.MAX_CURRENT_A, self.MAX_CURRENT_A, "A")
        self.parent.check_limit(f"smu{self.id} source_current_a", a, self.parent.max_current_a, "A")
        self._set("leveli", "source_current_a", a, fmt_float(a))

    @property
    def compliance_voltage_v(self) -> float:
        """Control the voltage compliance in V (float, 0.01 to 40.4, capped by the station limit)."""
        value = self._get("limitv")
        self.parent.state[self.id]["compliance_voltage_v"] = value
        return value

    @compliance_voltage_v.setter
    def compliance_voltage_v(self, value: float) -> None:
        v = check_value("compliance_voltage_v", value, 0.01, self.MAX_VOLTAGE_V, "V")
        self.parent.check_limit(f"smu{self.id} compliance_voltage_v", v, self.parent.max_voltage_v, "V")
        self._set("limitv", "compliance_voltage_v", v, fmt_float(v))

    @property
    def compliance_current_a(self) -> float:
        """Control the current compliance in A (float, 1e-08 to 3.03, capped by the station limit)."""
        value = self._get("limiti")
        self.parent.state[self.id]["compliance_current_a"] = value
        return value

    @compliance_current_a.setter
    def compliance_current_a(self, value: float) -> None:
        a = check_value("compliance_current_a", value, 1e-8, self.MAX_CURRENT_A, "A")
        self.parent.check_limit(f"smu{self.id} compliance_current_a", a, self.parent.max_current_a, "A")
        self._set("limiti", "compliance_current_a", a, fmt_float(a))

    @property
    def output_enabled(self) -> bool:
        """Control whether the channel's output relay is on (bool)."""
        value = bool(round(self._get("output")))
        self.parent.state[self.id]["output_enabled"] = value
        return value

    @output_enabled.setter
    def output_enabled(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InstrumentInputError(f"smu{self.id} output_enabled={value!r}; give True or False.")
        if value:
            self.parent.check_live_limits(self.id)
        self._set("output", "output_enabled", value, str(int(value)))

    @property
    def measured_current_a(self) -> float:
        """Measure the channel current in A (float); trips if above the station current limit."""
        value = self._query_float(f"print({self._smu}.measure.i())")
        self.parent.check_limit(f"smu{self.id} measured current", value, self.parent.max_current_a, "A")
        return value

    @property
    def measured_voltage_v(self) -> float:
        """Measure the channel voltage in V (float)."""
        return self._query_float(f"print({self._smu}.measure.v())")


class Keithley2600B(Instrument):
    """Keithley 2602B source-measure unit; channels ``smu.channel('a')`` and ``smu.channel('b')``.

    ``max_voltage_v`` / ``max_current_a``: station safety limits on source levels and compliances
    (V, A; None for none).
    """

    station_name: ClassVar[str] = "keithley_2600b"
    sim_file: ClassVar[str] = "keithley_2600b.yaml"
    sim_address: ClassVar[str] = "TCPIP0::192.168.10.11::inst0::INSTR"
    idn_model: ClassVar[str] = "260"
    CHANNELS: ClassVar[tuple[str, ...]] = ("a", "b")

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, float]:
        """Station limits: SMU voltage (V) and the write-head current (uA, given to the SMU in A)."""
        return {"max_voltage_v": limits.smu_voltage_v, "max_current_a": limits.write_head_current_ua * 1e-6}

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
        self.channels = {c: Keithley2600Channel(self, c) for c in self.CHANNELS}
        self.state: dict[str, dict[str, Any]] = {c: {} for c in self.CHANNELS}
        super().__init__(resource, name=name, **kwargs)

    def channel(self, channel_id: str) -> Keithley2600Channel:
        """SMU channel ``'a'`` or ``'b'``."""
        if channel_id not in self.channels:
            raise InstrumentInputError(f"channel {channel_id!r} does not exist; the 2602B has 'a' and 'b'.")
        return self.channels[channel_id]

    def read_state(self) -> None:
        """Read function, levels, compliances and output state of both channels; trip if a live one is unsafe."""
        for ch in self.channels.values():
            _ = (
                ch.source_function,
                ch.source_voltage_v,
                ch.source_current_a,
                ch.compliance_voltage_v,
                ch.compliance_current_a,
                ch.output_enabled,
            )
        for c, st in self.state.items():
            if st["output_enabled"]:
                self.check_live_limits(c)

    def check_live_limits(self, channel_id: str) -> None:
        """Trip if the cached levels of a channel about to be (or already) live exceed the station limits."""
        st = self.state[channel_id]
        if st.get("source_function") == "voltage":
            self.check_limit(f"smu{channel_id} source_voltage_v", st["source_voltage_v"], self.max_voltage_v, "V")
            self.check_limit(
                f"smu{channel_id} compliance_current_a", st["compliance_current_a"], self.max_current_a, "A"
            )
        else:
            self.check_limit(f"smu{channel_id} source_current_a", st["source_current_a"], self.max_current_a, "A")
            self.check_limit(
                f"smu{channel_id} compliance_voltage_v", st["compliance_voltage_v"], self.max_voltage_v, "V"
            )

    def safe_state(self) -> None:
        """Switch both output relays off."""
        for c in self.channels:
            self._write(f"smu{c}.source.output = 0")
            self.state[c]["output_enabled"] = False

    def snapshot(self) -> dict[str, Any]:
        """Cached settings of both channels (no I/O)."""
        return {**super().snapshot(), "channels": {c: dict(s) for c, s in self.state.items()}}

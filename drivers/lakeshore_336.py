"""Lake Shore Model 336 temperature controller (chip stage temperature), Lake Shore command set.

Inputs A-D read temperatures in kelvin (``KRDG?``); control loops 1 and 2 drive heaters towards a
setpoint (``SETP``) within a heater range (``RANGE``: 0 off, 1 low, 2 medium, 3 high). Commands
end with CR LF and set commands get no reply. The station limit ``temperature_k`` caps setpoints,
and a reading above it trips the station (heaters off).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from drivers.instrument import Channel, Instrument, InstrumentInputError, check_value

if TYPE_CHECKING:
    from drivers.station import SafetyLimits


class LakeShore336Input(Channel):
    """Sensor input 'A' to 'D' of a :class:`LakeShore336`."""

    parent: LakeShore336

    @property
    def temperature_k(self) -> float:
        """Measure the input temperature in K (float); trips the station if above its temperature limit."""
        value = self._query_float(f"KRDG? {self.id}")
        self.parent.check_limit(f"input {self.id} temperature_k", value, self.parent.max_temperature_k, "K")
        return value


class LakeShore336Loop(Channel):
    """Control loop (heater output) 1 or 2 of a :class:`LakeShore336`."""

    parent: LakeShore336
    HEATER_RANGES: ClassVar[tuple[int, ...]] = (0, 1, 2, 3)

    @property
    def setpoint_k(self) -> float:
        """Control the loop setpoint in K (float, 0 to 1500, capped by the station temperature limit)."""
        value = self._query_float(f"SETP? {self.id}")
        self.parent.state[self.id]["setpoint_k"] = value
        return value

    @setpoint_k.setter
    def setpoint_k(self, value: float) -> None:
        k = check_value(f"loop {self.id} setpoint_k", value, 0.0, 1500.0, "K", fix="Give kelvin, not Celsius.")
        self.parent.check_limit(f"loop {self.id} setpoint_k", k, self.parent.max_temperature_k, "K")
        self._write(f"SETP {self.id},{k:.3f}")
        self.parent.state[self.id]["setpoint_k"] = k

    @property
    def heater_range(self) -> int:
        """Control the heater range (int, 0 off, 1 low, 2 medium, 3 high)."""
        value = self._query_int(f"RANGE? {self.id}")
        self.parent.state[self.id]["heater_range"] = value
        return value

    @heater_range.setter
    def heater_range(self, value: int) -> None:
        if value not in self.HEATER_RANGES or isinstance(value, bool):
            raise InstrumentInputError(f"loop {self.id} heater_range={value!r}; choose 0 (off), 1, 2 or 3.")
        if value > 0:
            self.parent.check_limit(
                f"loop {self.id} setpoint_k", self.parent.state[self.id]["setpoint_k"], self.parent.max_temperature_k, "K"
            )
        self._write(f"RANGE {self.id},{int(value)}")
        self.parent.state[self.id]["heater_range"] = int(value)

    @property
    def heater_output_percent(self) -> float:
        """Measure the heater output in percent of the range (float, 0 to 100)."""
        return self._query_float(f"HTR? {self.id}")


class LakeShore336(Instrument):
    """Lake Shore 336 temperature controller; ``tc.input('A')`` .. ``tc.input('D')``, ``tc.loop(1)``, ``tc.loop(2)``.

    ``max_temperature_k``: station safety limit on setpoints and readings (K; None for none).
    """

    station_name: ClassVar[str] = "lakeshore_336"
    write_termination: ClassVar[str] = "\r\n"
    read_termination: ClassVar[str] = "\r\n"
    sim_file: ClassVar[str] = "lakeshore_336.yaml"
    sim_address: ClassVar[str] = "TCPIP0::192.168.10.15::7777::SOCKET"
    idn_model: ClassVar[str] = "MODEL336"
    INPUTS: ClassVar[tuple[str, ...]] = ("A", "B", "C", "D")
    LOOPS: ClassVar[tuple[int, ...]] = (1, 2)

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, float]:
        """Station limit: stage temperature setpoints and readings (K)."""
        return {"max_temperature_k": limits.temperature_k}

    def __init__(self, resource: Any, *, name: str, max_temperature_k: float | None = None, **kwargs: Any) -> None:
        self.max_temperature_k = max_temperature_k
        self.inputs = {i: LakeShore336Input(self, i) for i in self.INPUTS}
        self.loops = {n: LakeShore336Loop(self, n) for n in self.LOOPS}
        self.state: dict[int, dict[str, Any]] = {n: {} for n in self.LOOPS}
        super().__init__(resource, name=name, **kwargs)

    def input(self, name: str) -> LakeShore336Input:
        """Sensor input 'A', 'B', 'C' or 'D'."""
        if name not in self.inputs:
            raise InstrumentInputError(f"input {name!r} does not exist; the 336 has inputs A, B, C and D.")
        return self.inputs[name]

    def loop(self, number: int) -> LakeShore336Loop:
        """Control loop 1 or 2."""
        if number not in self.loops:
            raise InstrumentInputError(f"loop {number!r} does not exist; the 336 heater loops are 1 and 2.")
        return self.loops[number]

    def read_state(self) -> None:
        """Read setpoint and heater range of both loops; trip if a heating loop aims above the limit."""
        for lp in self.loops.values():
            _ = lp.setpoint_k, lp.heater_range
        for n, st in self.state.items():
            if st["heater_range"] > 0:
                self.check_limit(f"loop {n} setpoint_k", st["setpoint_k"], self.max_temperature_k, "K")

    def safe_state(self) -> None:
        """Switch both heaters off (range 0)."""
        for n in self.loops:
            self._write(f"RANGE {n},0")
            self.state[n]["heater_range"] = 0

    def snapshot(self) -> dict[str, Any]:
        """Cached loop settings (no I/O)."""
        return {**super().snapshot(), "loops": {str(n): dict(s) for n, s in self.state.items()}}

"""Keysight 33500B series (33522B) two-channel waveform / pulse generator, SCPI.

Drives programming pulses onto a write head or a single device. Every command names its channel
(``SOUR1:``, ``OUTP1``) so none depends on a selected channel. Ranges (33522B): levels within
+-5 V into 50 ohm or +-10 V into high impedance, pulse width 16 ns to 1000 s (shorter than the
period), frequency 1 uHz to 30 MHz. The station limit ``pulse_voltage_v`` caps the levels further.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

from drivers.instrument import Channel, Instrument, InstrumentInputError, check_value, fmt_float

if TYPE_CHECKING:
    from drivers.station import SafetyLimits

#: ``OUTPx:LOAD?`` answers this for an infinite (high-impedance) load.
_INF_LOAD = 9.9e37


class Awg33500Channel(Channel):
    """Output channel 1 or 2 of a :class:`Keysight33500B`."""

    parent: Keysight33500B
    FUNCTIONS: ClassVar[tuple[str, ...]] = ("PULS", "SQU", "SIN", "DC")
    TRIGGER_SOURCES: ClassVar[tuple[str, ...]] = ("IMM", "BUS", "EXT")

    @property
    def _st(self) -> dict[str, Any]:
        return self.parent.state[self.id]

    def _store(self, key: str, value: Any) -> Any:
        self._st[key] = value
        return value

    @property
    def function(self) -> str:
        """Control the waveform (str, one of 'PULS', 'SQU', 'SIN', 'DC')."""
        return self._store("function", self._query(f"SOUR{self.id}:FUNC?").strip('"'))

    @function.setter
    def function(self, value: str) -> None:
        if value not in self.FUNCTIONS:
            raise InstrumentInputError(f"function={value!r}; choose one of {list(self.FUNCTIONS)}.")
        self._write(f"SOUR{self.id}:FUNC {value}")
        self._store("function", value)

    @property
    def frequency_hz(self) -> float:
        """Control the repetition frequency in Hz (float, 1e-06 to 3e7)."""
        return self._store("frequency_hz", self._query_float(f"SOUR{self.id}:FREQ?"))

    @frequency_hz.setter
    def frequency_hz(self, value: float) -> None:
        f = check_value("frequency_hz", value, 1e-6, 3e7, "Hz")
        width = self._st.get("pulse_width_s")
        if width is not None and width >= 1.0 / f:
            raise InstrumentInputError(
                f"frequency_hz={f} gives a period of {1.0 / f} s, not longer than the pulse width {width} s; "
                "shorten the pulse first or pick a lower frequency."
            )
        self._write(f"SOUR{self.id}:FREQ {fmt_float(f)}")
        self._store("frequency_hz", f)

    def _level_range(self) -> float:
        load = self._st.get("load_ohm", 50.0)
        return 10.0 if math.isinf(load) else 5.0

    @property
    def high_level_v(self) -> float:
        """Control the high level in V (float, -5 to 5 into 50 ohm or -10 to 10 into high-Z; above low_level_v)."""
        return self._store("high_level_v", self._query_float(f"SOUR{self.id}:VOLT:HIGH?"))

    @high_level_v.setter
    def high_level_v(self, value: float) -> None:
        r = self._level_range()
        v = check_value("high_level_v", value, -r, r, "V")
        low = self._st.get("low_level_v")
        if low is not None and v <= low:
            raise InstrumentInputError(f"high_level_v={v} V must be above low_level_v={low} V; lower the low level first.")
        self.parent.check_limit(f"channel {self.id} high_level_v", v, self.parent.max_voltage_v, "V")
        self._write(f"SOUR{self.id}:VOLT:HIGH {fmt_float(v)}")
        self._store("high_level_v", v)

    @property
    def low_level_v(self) -> float:
        """Control the low level in V (float, -5 to 5 into 50 ohm or -10 to 10 into high-Z; below high_level_v)."""
        return self._store("low_level_v", self._query_float(f"SOUR{self.id}:VOLT:LOW?"))

    @low_level_v.setter
    def low_level_v(self, value: float) -> None:
        r = self._level_range()
        v = check_value("low_level_v", value, -r, r, "V")
        high = self._st.get("high_level_v")
        if high is not None and v >= high:
            raise InstrumentInputError(f"low_level_v={v} V must be below high_level_v={high} V; raise the high level first.")
        self.parent.check_limit(f"channel {self.id} low_level_v", v, self.parent.max_voltage_v, "V")
        self._write(f"SOUR{self.id}:VOLT:LOW {fmt_float(v)}")
        self._store("low_level_v", v)

    @property
    def pulse_width_s(self) -> float:
        """Control the pulse width in s (float, 1.6e-08 to 1000, shorter than the period)."""
        return self._store("pulse_width_s", self._query_float(f"SOUR{self.id}:FUNC:PULS:WIDT?"))

    @pulse_width_s.setter
    def pulse_width_s(self, value: float) -> None:
        w = check_value("pulse_width_s", value, 16e-9, 1000.0, "s", fix="Give the width in seconds (100 ns = 1e-7).")
        freq = self._st.get("frequency_hz")
        if freq is not None and w >= 1.0 / freq:
            raise InstrumentInputError(
                f"pulse_width_s={w} is not shorter than the period {1.0 / freq} s; lower frequency_hz first."
            )
        self._write(f"SOUR{self.id}:FUNC:PULS:WIDT {fmt_float(w)}")
        self._store("pulse_width_s", w)

    @property
    def load_ohm(self) -> float:
        """Control the load the levels refer to in ohm (float, 1 to 10000, or inf for high impedance)."""
        value = self._query_float(f"OUTP{self.id}:LOAD?")
        return self._store("load_ohm", math.inf if value >= 1e37 else value)

    @load_ohm.setter
    def load_ohm(self, value: float) -> None:
        if isinstance(value, (int, float)) and math.isinf(value) and value > 0:
            self._write(f"OUTP{self.id}:LOAD INF")
            self._store("load_ohm", math.inf)
            return
        ohm = check_value("load_ohm", value, 1.0, 10000.0, "ohm", fix="Use math.inf for high impedance.")
        self._write(f"OUTP{self.id}:LOAD {fmt_float(ohm)}")
        self._store("load_ohm", ohm)

    @property
    def output_enabled(self) -> bool:
        """Control whether the channel output is on (bool)."""
        return self._store("output_enabled", bool(self._query_int(f"OUTP{self.id}?")))

    @output_enabled.setter
    def output_enabled(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InstrumentInputError(f"channel {self.id} output_enabled={value!r}; give True or False.")
        if value:
            self.parent.check_live_limits(self.id)
        self._write(f"OUTP{self.id} {int(value)}")
        self._store("output_enabled", value)

    @property
    def burst_enabled(self) -> bool:
        """Control whether burst mode is on (bool): the channel emits burst_cycles pulses per trigger."""
        return self._store("burst_enabled", bool(self._query_int(f"SOUR{self.id}:BURS:STAT?")))

    @burst_enabled.setter
    def burst_enabled(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InstrumentInputError(f"burst_enabled={value!r}; give True or False.")
        self._write(f"SOUR{self.id}:BURS:STAT {int(value)}")
        self._store("burst_enabled", value)

    @property
    def burst_cycles(self) -> int:
        """Control the pulses per burst (int, 1 to 100000000)."""
        return self._store("burst_cycles", self._query_int(f"SOUR{self.id}:BURS:NCYC?"))

    @burst_cycles.setter
    def burst_cycles(self, value: int) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100_000_000:
            raise InstrumentInputError(f"burst_cycles={value!r}; give an integer from 1 to 100000000.")
        self._write(f"SOUR{self.id}:BURS:NCYC {value}")
        self._store("burst_cycles", value)

    @property
    def trigger_source(self) -> str:
        """Control what starts a burst (str, 'IMM', 'BUS' for software triggers, or 'EXT')."""
        return self._store("trigger_source", self._query(f"TRIG{self.id}:SOUR?"))

    @trigger_source.setter
    def trigger_source(self, value: str) -> None:
        if value not in self.TRIGGER_SOURCES:
            raise InstrumentInputError(f"trigger_source={value!r}; choose one of {list(self.TRIGGER_SOURCES)}.")
        self._write(f"TRIG{self.id}:SOUR {value}")
        self._store("trigger_source", value)

    def configure_single_pulse(self, high_level_v: float, width_s: float, low_level_v: float = 0.0) -> None:
        """Set up one pulse per software trigger: PULS waveform, levels in V, width in s, burst of 1 on BUS."""
        if not high_level_v > low_level_v:
            raise InstrumentInputError(
                f"high_level_v={high_level_v} V must be above low_level_v={low_level_v} V for a positive pulse."
            )
        self.function = "PULS"
        # Order the two writes so that high > low holds after each one (the instrument refuses otherwise).
        if high_level_v > self._st.get("low_level_v", -math.inf):
            self.high_level_v = high_level_v
            self.low_level_v = low_level_v
        else:
            self.low_level_v = low_level_v
            self.high_level_v = high_level_v
        self.pulse_width_s = width_s
        self.burst_cycles = 1
        self.trigger_source = "BUS"
        self.burst_enabled = True


class Keysight33500B(Instrument):
    """Keysight 33522B two-channel waveform generator; channels ``awg.channel(1)`` and ``awg.channel(2)``.

    ``max_voltage_v``: station safety limit on the magnitude of any output level (V; None for none).
    """

    station_name: ClassVar[str] = "keysight_33500b"
    sim_file: ClassVar[str] = "keysight_33500b.yaml"
    sim_address: ClassVar[str] = "TCPIP0::192.168.10.12::inst0::INSTR"
    idn_model: ClassVar[str] = "335"
    CHANNELS: ClassVar[tuple[int, ...]] = (1, 2)

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, float]:
        """Station limit: pulse-generator output level magnitude (V)."""
        return {"max_voltage_v": limits.pulse_voltage_v}

    def __init__(self, resource: Any, *, name: str, max_voltage_v: float | None = None, **kwargs: Any) -> None:
        self.max_voltage_v = max_voltage_v
        self.channels = {n: Awg33500Channel(self, n) for n in self.CHANNELS}
        self.state: dict[int, dict[str, Any]] = {n: {} for n in self.CHANNELS}
        super().__init__(resource, name=name, **kwargs)

    def channel(self, number: int) -> Awg33500Channel:
        """Output channel 1 or 2."""
        if number not in self.channels:
            raise InstrumentInputError(f"channel {number!r} does not exist; the 33522B has channels 1 and 2.")
        return self.channels[number]

    def read_state(self) -> None:
        """Read waveform, levels, timing, load, burst and output state of both channels."""
        for n, ch in self.channels.items():
            _ = (ch.function, ch.frequency_hz, ch.high_level_v, ch.low_level_v, ch.pulse_width_s, ch.load_ohm)
            _ = (ch.burst_enabled, ch.burst_cycles, ch.trigger_source, ch.output_enabled)
            if self.state[n]["output_enabled"]:
                self.check_live_limits(n)

    def check_live_limits(self, number: int) -> None:
        """Trip if the cached levels of a channel about to be (or already) live exceed the station limit."""
        st = self.state[number]
        for key in ("high_level_v", "low_level_v"):
            if key in st:
                self.check_limit(f"channel {number} {key}", st[key], self.max_voltage_v, "V")

    def trigger(self) -> None:
        """Send a software trigger (``*TRG``): every channel armed on BUS emits its burst."""
        self._write("*TRG")

    def safe_state(self) -> None:
        """Switch both outputs off."""
        for n in self.channels:
            self._write(f"OUTP{n} 0")
            self.state[n]["output_enabled"] = False

    def snapshot(self) -> dict[str, Any]:
        """Cached settings of both channels (no I/O)."""
        return {**super().snapshot(), "channels": {str(n): dict(s) for n, s in self.state.items()}}

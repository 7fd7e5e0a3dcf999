"""Keysight 34465A 6.5-digit digital multimeter, SCPI.

Reads DC voltage (V), DC current (A) or 2-wire resistance (ohm): device read currents, rail
voltages, heater or reference resistors. Range, integration time and autorange are settings of the
selected function, so changing the function reads them back again. The meter only measures, so
it has no safety limits and no outputs to switch off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from drivers.instrument import Instrument, InstrumentInputError, fmt_float

if TYPE_CHECKING:
    from drivers.station import SafetyLimits

#: Measurement function -> (unit, ranges the 34465A offers in that unit).
_FUNCTIONS: dict[str, tuple[str, tuple[float, ...]]] = {
    "VOLT": ("V", (0.1, 1.0, 10.0, 100.0, 1000.0)),
    "CURR": ("A", (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 3.0)),
    "RES": ("ohm", (100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9)),
}


class Keysight34465A(Instrument):
    """Keysight 34465A multimeter (DC voltage, DC current, 2-wire resistance)."""

    station_name: ClassVar[str] = "keysight_34465a"
    sim_file: ClassVar[str] = "keysight_34465a.yaml"
    sim_address: ClassVar[str] = "TCPIP0::192.168.10.14::inst0::INSTR"
    idn_model: ClassVar[str] = "34465A"
    #: Integration times in power-line cycles the 34465A accepts (without the DIG option).
    NPLC_VALUES: ClassVar[tuple[float, ...]] = (0.02, 0.06, 0.2, 1.0, 10.0, 100.0)

    @classmethod
    def limit_kwargs(cls, limits: SafetyLimits) -> dict[str, float]:
        """Station limits: none (the meter only measures, it has no outputs)."""
        return {}

    def __init__(self, resource: Any, *, name: str, **kwargs: Any) -> None:
        self.state: dict[str, Any] = {}
        super().__init__(resource, name=name, **kwargs)

    def read_state(self) -> None:
        """Read the function and its integration time, range and autorange setting."""
        _ = self.function
        self._read_function_settings()

    def _read_function_settings(self) -> None:
        _ = self.nplc, self.range, self.autorange_enabled

    @property
    def _func(self) -> str:
        return str(self.state["function"])

    @property
    def function(self) -> str:
        """Control the measurement function (str, 'VOLT' for DC V, 'CURR' for DC A, 'RES' for 2-wire ohm)."""
        value = self._query("SENS:FUNC?").strip('"').split(":")[0]
        if value not in _FUNCTIONS:
            raise InstrumentInputError(
                f"{self.name} measures {value!r}, which this driver does not support; set function to one of "
                f"{list(_FUNCTIONS)}."
            )
        self.state["function"] = value
        return value

    @function.setter
    def function(self, value: str) -> None:
        if value not in _FUNCTIONS:
            raise InstrumentInputError(f"function={value!r}; choose one of {list(_FUNCTIONS)}.")
        self._write(f'SENS:FUNC "{value}"')
        self.state["function"] = value
        self._read_function_settings()  # range and NPLC belong to the function

    @property
    def unit(self) -> str:
        """Get the unit of readings of the present function (str, 'V', 'A' or 'ohm')."""
        return _FUNCTIONS[self._func][0]

    @property
    def nplc(self) -> float:
        """Control the integration time in power-line cycles (float, one of 0.02, 0.06, 0.2, 1, 10, 100)."""
        value = self._query_float(f"SENS:{self._func}:NPLC?")
        self.state["nplc"] = value
        return value

    @nplc.setter
    def nplc(self, value: float) -> None:
        if value not in self.NPLC_VALUES:
            raise InstrumentInputError(f"nplc={value!r}; choose one of {list(self.NPLC_VALUES)}.")
        self._write(f"SENS:{self._func}:NPLC {fmt_float(value)}")
        self.state["nplc"] = float(value)

    @property
    def range(self) -> float:
        """Control the measurement range in the function's unit (float, V: 0.1 to 1000, A: 1e-06 to 3, ohm: 100 to 1e9)."""
        value = self._query_float(f"SENS:{self._func}:RANG?")
        self.state["range"] = value
        return value

    @range.setter
    def range(self, value: float) -> None:
        unit, ranges = _FUNCTIONS[self._func]
        if value not in ranges:
            raise InstrumentInputError(f"range={value!r} {unit} is not a {self._func} range; choose one of {list(ranges)}.")
        self._write(f"SENS:{self._func}:RANG {fmt_float(value)}")
        self.state["range"] = float(value)
        self.state["autorange_enabled"] = False  # a fixed range switches autorange off on the instrument

    @property
    def autorange_enabled(self) -> bool:
        """Control whether the meter picks the range itself (bool)."""
        value = bool(self._query_int(f"SENS:{self._func}:RANG:AUTO?"))
        self.state["autorange_enabled"] = value
        return value

    @autorange_enabled.setter
    def autorange_enabled(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise InstrumentInputError(f"autorange_enabled={value!r}; give True or False.")
        self._write(f"SENS:{self._func}:RANG:AUTO {int(value)}")
        self.state["autorange_enabled"] = value

    @property
    def reading(self) -> float:
        """Measure one reading in the unit of the present function (float, V, A or ohm)."""
        return self._query_float("READ?")

    def snapshot(self) -> dict[str, Any]:
        """Cached settings (no I/O)."""
        return {**super().snapshot(), **self.state}

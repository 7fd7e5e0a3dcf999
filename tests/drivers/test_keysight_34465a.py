"""Exact-exchange tests of the Keysight 34465A multimeter driver."""

from __future__ import annotations

import pytest

from drivers.instrument import InstrumentInputError
from drivers.keysight_34465a import Keysight34465A
from drivers.testing import expected_exchange

IDN = ("*IDN?", "Keysight Technologies,34465A,MY54500001,A.03.01-03.15-03.01-00.52-04-02")


def settings(func="VOLT", nplc=10.0, rng=10.0, auto=1):
    return [
        (f"SENS:{func}:NPLC?", f"{nplc:+.15E}"),
        (f"SENS:{func}:RANG?", f"{rng:+.15E}"),
        (f"SENS:{func}:RANG:AUTO?", str(auto)),
    ]


def connect(func="VOLT", **kw):
    return [IDN, ("SENS:FUNC?", f'"{func}"'), *settings(func, **kw)]


def test_connect_reads_function_and_its_settings():
    with expected_exchange(Keysight34465A, connect("CURR", nplc=1.0, rng=1e-3, auto=0)) as dmm:
        assert dmm.snapshot()["function"] == "CURR"
        assert dmm.state == {"function": "CURR", "nplc": 1.0, "range": 1e-3, "autorange_enabled": False}
        assert dmm.unit == "A"


def test_function_change_reads_the_new_functions_settings_then_measures():
    script = [*connect(), ('SENS:FUNC "RES"', None), *settings("RES", nplc=1.0, rng=10000.0, auto=1), ("SENS:RES:NPLC 1.000000E+02", None), ("SENS:RES:RANG 1.000000E+03", None), ("READ?", "+9.87654321E+02")]
    with expected_exchange(Keysight34465A, script) as dmm:
        dmm.function = "RES"
        dmm.nplc = 100
        dmm.range = 1e3
        assert dmm.reading == pytest.approx(987.654321)
        assert dmm.unit == "ohm" and dmm.state["autorange_enabled"] is False


def test_autorange_toggle_names_the_function():
    with expected_exchange(Keysight34465A, [*connect(), ("SENS:VOLT:RANG:AUTO 0", None)]) as dmm:
        dmm.autorange_enabled = False


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("nplc", 5.0, "choose one of"),
        ("range", 3.0, "is not a VOLT range"),
        ("function", "FREQ", "choose one of"),
        ("autorange_enabled", 1, "True or False"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(attr, value, match):
    with expected_exchange(Keysight34465A, connect()) as dmm, pytest.raises(InstrumentInputError, match=match):
        setattr(dmm, attr, value)


def test_an_unsupported_function_at_connect_is_reported_clearly():
    script = [IDN, ("SENS:FUNC?", '"FREQ"')]
    with pytest.raises(InstrumentInputError, match="measures 'FREQ'"), expected_exchange(Keysight34465A, script):
        pass

"""Exact-exchange tests of the Lake Shore 336 temperature-controller driver (CR LF terminations)."""

from __future__ import annotations

import pytest

from drivers.instrument import InstrumentInputError
from drivers.lakeshore_336 import LakeShore336
from drivers.testing import expected_exchange
from hil.errors import SafetyLimitError

IDN = ("*IDN?", "LSCI,MODEL336,LSA1234/1234567,2.9")


def connect(setp=(295.0, 295.0), rng=(0, 0)):
    return [
        IDN,
        ("SETP? 1", f"{setp[0]:+08.3f}"),
        ("RANGE? 1", str(rng[0])),
        ("SETP? 2", f"{setp[1]:+08.3f}"),
        ("RANGE? 2", str(rng[1])),
    ]


HEATERS_OFF = [("RANGE 1,0", None), ("RANGE 2,0", None)]


def test_connect_reads_loops():
    with expected_exchange(LakeShore336, connect(setp=(300.0, 77.5), rng=(2, 0))) as tc:
        assert tc.snapshot()["loops"] == {"1": {"setpoint_k": 300.0, "heater_range": 2}, "2": {"setpoint_k": 77.5, "heater_range": 0}}


def test_heating_session():
    script = [*connect(), ("SETP 1,330.000", None), ("RANGE 1,2", None), ("KRDG? A", "+329.875"), ("HTR? 1", "+045.30")]
    with expected_exchange(LakeShore336, script, max_temperature_k=358.15) as tc:
        tc.loop(1).setpoint_k = 330
        tc.loop(1).heater_range = 2
        assert tc.input("A").temperature_k == pytest.approx(329.875)
        assert tc.loop(1).heater_output_percent == pytest.approx(45.3)


@pytest.mark.parametrize(
    ("which", "attr", "value", "match"),
    [
        ("loop", "setpoint_k", -10.0, "Give kelvin, not Celsius"),
        ("loop", "heater_range", 4, "choose 0 .off., 1, 2 or 3"),
        ("loop", "heater_range", True, "choose 0"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(which, attr, value, match):
    with expected_exchange(LakeShore336, connect()) as tc, pytest.raises(InstrumentInputError, match=match):
        setattr(tc.loop(1), attr, value)


def test_unknown_input_and_loop():
    with expected_exchange(LakeShore336, connect()) as tc:
        with pytest.raises(InstrumentInputError, match="inputs A, B, C and D"):
            tc.input("E")
        with pytest.raises(InstrumentInputError, match="loops are 1 and 2"):
            tc.loop(3)


def test_setpoint_above_limit_trips_and_switches_heaters_off():
    with expected_exchange(LakeShore336, connect(rng=(3, 1)) + HEATERS_OFF, max_temperature_k=358.15) as tc:
        with pytest.raises(SafetyLimitError, match=r"setpoint_k=400\.0 K exceeds the station safety limit of 358\.15 K"):
            tc.loop(2).setpoint_k = 400.0
        assert tc.state[1]["heater_range"] == 0 and tc.state[2]["heater_range"] == 0


def test_reading_above_limit_trips():
    script = [*connect(), ("KRDG? B", "+360.100"), *HEATERS_OFF]
    with expected_exchange(LakeShore336, script, max_temperature_k=358.15) as tc, pytest.raises(SafetyLimitError, match="input B"):
        _ = tc.input("B").temperature_k


def test_connecting_to_a_loop_heating_beyond_the_limit_trips():
    script = connect(setp=(400.0, 295.0), rng=(2, 0)) + HEATERS_OFF
    with pytest.raises(SafetyLimitError, match="loop 1"), expected_exchange(LakeShore336, script, max_temperature_k=358.15):
        pass

"""Exact-exchange tests of the Keysight E36300 power-supply driver."""

from __future__ import annotations

import pytest

from drivers.instrument import InstrumentInputError
from drivers.keysight_e36300 import KeysightE36300
from drivers.testing import expected_exchange
from hil.errors import SafetyLimitError

IDN = ("*IDN?", "Keysight Technologies,E36312A,MY12345678,2.1.0-1.0.4-1.12")


def connect(volts=(1.2, 3.3, 0.0), amps=(0.5, 0.1, 0.1), on=(0, 1, 0)):
    ex = [IDN]
    for n in (1, 2, 3):
        ex += [
            (f"VOLT? (@{n})", f"{volts[n - 1]:+.8E}"),
            (f"CURR? (@{n})", f"{amps[n - 1]:+.8E}"),
            (f"OUTP? (@{n})", str(on[n - 1])),
        ]
    return ex


OFF_ALL = [("OUTP 0,(@1)", None), ("OUTP 0,(@2)", None), ("OUTP 0,(@3)", None)]


def test_connect_reads_back_state_and_sends_nothing_else():
    with expected_exchange(KeysightE36300, connect()) as psu:
        snap = psu.snapshot()
    assert snap["idn"].startswith("Keysight Technologies,E36312A")
    assert snap["outputs"]["1"] == {"voltage_v": 1.2, "current_limit_a": 0.5, "output_enabled": False}
    assert snap["outputs"]["2"]["output_enabled"] is True


def test_setters_write_channel_addressed_commands():
    script = [*connect(), ("VOLT 1.000000E+00,(@1)", None), ("CURR 2.500000E-01,(@1)", None), ("OUTP 1,(@1)", None), ("MEAS:VOLT? (@1)", "+9.99800000E-01"), ("MEAS:CURR? (@1)", "+1.20000000E-02"), ("OUTP 0,(@1)", None)]
    with expected_exchange(KeysightE36300, script, max_voltage_v=3.6, max_current_a=1.0) as psu:
        out = psu.output(1)
        out.voltage_v = 1.0
        out.current_limit_a = 0.25
        out.output_enabled = True
        assert out.measured_voltage_v == pytest.approx(0.9998)
        assert out.measured_current_a == pytest.approx(0.012)
        out.output_enabled = False
        assert psu.state[1] == {"voltage_v": 1.0, "current_limit_a": 0.25, "output_enabled": False}


@pytest.mark.parametrize(
    ("number", "attr", "value", "match"),
    [
        (1, "voltage_v", 6.5, r"allowed \[0.0, 6.18\] V"),
        (2, "voltage_v", -0.1, "out of range"),
        (2, "current_limit_a", 1.5, r"allowed \[0.001, 1.03\] A"),
        (3, "output_enabled", 1, "True or False"),
        (1, "voltage_v", float("nan"), "out of range"),
        (1, "voltage_v", "1.2 V", "not a number"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(number, attr, value, match):
    with expected_exchange(KeysightE36300, connect()) as psu, pytest.raises(InstrumentInputError, match=match):
        setattr(psu.output(number), attr, value)


def test_unknown_output_is_refused():
    with expected_exchange(KeysightE36300, connect()) as psu, pytest.raises(InstrumentInputError, match="outputs 1, 2 and 3"):
        psu.output(4)


def test_voltage_above_station_limit_trips_and_switches_all_outputs_off():
    with expected_exchange(KeysightE36300, connect() + OFF_ALL, max_voltage_v=3.6) as psu:
        with pytest.raises(SafetyLimitError, match=r"voltage_v=5.0 V exceeds the station safety limit of 3.6 V"):
            psu.output(2).voltage_v = 5.0
        assert not any(psu.state[n]["output_enabled"] for n in (1, 2, 3))
        assert psu.state[2]["voltage_v"] == 3.3  # the refused value was never recorded


def test_current_reading_above_limit_trips():
    script = [*connect(), ("MEAS:CURR? (@2)", "+1.50000000E+00"), *OFF_ALL]
    with expected_exchange(KeysightE36300, script, max_current_a=1.0) as psu, pytest.raises(SafetyLimitError, match="measured current"):
        _ = psu.output(2).measured_current_a


def test_connecting_to_a_live_output_beyond_the_limits_trips_at_once():
    script = connect(volts=(1.2, 5.0, 0.0), on=(0, 1, 0)) + OFF_ALL
    with pytest.raises(SafetyLimitError, match=r"output 2 voltage_v=5\.0"), expected_exchange(KeysightE36300, script, max_voltage_v=3.6):
        pass


def test_enabling_an_output_whose_old_setpoint_is_unsafe_trips():
    script = connect(volts=(4.0, 1.0, 0.0), on=(0, 0, 0)) + OFF_ALL
    with expected_exchange(KeysightE36300, script, max_voltage_v=3.6) as psu, pytest.raises(SafetyLimitError):
        psu.output(1).output_enabled = True


def test_a_trip_handler_replaces_the_drivers_own_shutdown():
    calls = []
    with (
        expected_exchange(KeysightE36300, connect(), max_voltage_v=3.6, trip_handler=lambda inst, why: calls.append(why)) as psu,
        pytest.raises(SafetyLimitError),
    ):
        psu.output(1).voltage_v = 4.0
    assert len(calls) == 1 and "3.6 V" in calls[0]

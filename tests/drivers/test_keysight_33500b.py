"""Exact-exchange tests of the Keysight 33500B pulse-generator driver."""

from __future__ import annotations

import math

import pytest

from drivers.instrument import InstrumentInputError
from drivers.keysight_33500b import Keysight33500B
from drivers.testing import expected_exchange
from hil.errors import SafetyLimitError

IDN = ("*IDN?", "Agilent Technologies,33522B,MY52600001,4.00-1.19-2.00-58-00")


def channel_state(n, func="SIN", freq=1e3, high=0.05, low=-0.05, width=1e-4, load=50.0, burst=0, ncyc=1, trig="IMM", out=0):
    return [
        (f"SOUR{n}:FUNC?", func),
        (f"SOUR{n}:FREQ?", f"{freq:+.15E}"),
        (f"SOUR{n}:VOLT:HIGH?", f"{high:+.15E}"),
        (f"SOUR{n}:VOLT:LOW?", f"{low:+.15E}"),
        (f"SOUR{n}:FUNC:PULS:WIDT?", f"{width:+.15E}"),
        (f"OUTP{n}:LOAD?", f"{load:+.15E}"),
        (f"SOUR{n}:BURS:STAT?", str(burst)),
        (f"SOUR{n}:BURS:NCYC?", f"{float(ncyc):+.15E}"),
        (f"TRIG{n}:SOUR?", trig),
        (f"OUTP{n}?", str(out)),
    ]


def connect(ch1=None, ch2=None):
    return [IDN, *channel_state(1, **(ch1 or {})), *channel_state(2, **(ch2 or {}))]


OFF_ALL = [("OUTP1 0", None), ("OUTP2 0", None)]


def test_connect_reads_back_state_and_infinite_load():
    with expected_exchange(Keysight33500B, connect(ch2={"load": 9.9e37, "func": "PULS"})) as awg:
        st = awg.snapshot()["channels"]
    assert st["1"]["function"] == "SIN" and st["1"]["load_ohm"] == 50.0
    assert st["2"]["function"] == "PULS" and math.isinf(st["2"]["load_ohm"])


def test_single_pulse_set_up_and_trigger():
    script = [*connect(), ("SOUR1:FUNC PULS", None), ("SOUR1:VOLT:HIGH 1.500000E+00", None), ("SOUR1:VOLT:LOW 0.000000E+00", None), ("SOUR1:FUNC:PULS:WIDT 1.000000E-07", None), ("SOUR1:BURS:NCYC 1", None), ("TRIG1:SOUR BUS", None), ("SOUR1:BURS:STAT 1", None), ("OUTP1 1", None), ("*TRG", None), ("OUTP1 0", None)]
    with expected_exchange(Keysight33500B, script, max_voltage_v=3.0) as awg:
        ch = awg.channel(1)
        ch.configure_single_pulse(high_level_v=1.5, width_s=100e-9)
        ch.output_enabled = True
        awg.trigger()
        ch.output_enabled = False


def test_levels_are_written_in_an_order_the_instrument_accepts():
    # Present levels 2..3 V; new pulse 0.5..1 V: the low level must go first.
    script = [*connect(ch1={"high": 3.0, "low": 2.0}), ("SOUR1:FUNC PULS", None), ("SOUR1:VOLT:LOW 5.000000E-01", None), ("SOUR1:VOLT:HIGH 1.000000E+00", None), ("SOUR1:FUNC:PULS:WIDT 1.000000E-06", None), ("SOUR1:BURS:NCYC 1", None), ("TRIG1:SOUR BUS", None), ("SOUR1:BURS:STAT 1", None)]
    with expected_exchange(Keysight33500B, script) as awg:
        awg.channel(1).configure_single_pulse(1.0, 1e-6, low_level_v=0.5)


def test_load_setting_and_reading():
    script = [*connect(), ("OUTP2:LOAD INF", None), ("OUTP2:LOAD 5.000000E+01", None), ("OUTP2:LOAD?", "+9.900000000000000E+37")]
    with expected_exchange(Keysight33500B, script) as awg:
        awg.channel(2).load_ohm = math.inf
        awg.channel(2).load_ohm = 50
        assert math.isinf(awg.channel(2).load_ohm)


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("high_level_v", 6.0, r"allowed \[-5.0, 5.0\] V"),
        ("high_level_v", -0.06, "must be above low_level_v"),
        ("low_level_v", 0.05, "must be below high_level_v"),
        ("pulse_width_s", 100.0, "not shorter than the period"),
        ("pulse_width_s", 1e-9, "Give the width in seconds"),
        ("frequency_hz", 5e7, "out of range"),
        ("function", "NOISE", "choose one of"),
        ("burst_cycles", 0, "from 1 to 100000000"),
        ("trigger_source", "TIM", "choose one of"),
        ("load_ohm", 0.5, "Use math.inf for high impedance"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(attr, value, match):
    with expected_exchange(Keysight33500B, connect()) as awg, pytest.raises(InstrumentInputError, match=match):
        setattr(awg.channel(1), attr, value)


def test_level_above_the_station_limit_trips_and_switches_outputs_off():
    with (
        expected_exchange(Keysight33500B, connect() + OFF_ALL, max_voltage_v=3.0) as awg,
        pytest.raises(SafetyLimitError, match=r"high_level_v=4\.0 V exceeds the station safety limit of 3\.0 V"),
    ):
        awg.channel(2).high_level_v = 4.0


def test_high_impedance_allows_ten_volts_but_not_the_limit():
    script = [*connect(ch1={"load": 9.9e+37}), ("SOUR1:VOLT:HIGH 8.000000E+00", None)]
    with expected_exchange(Keysight33500B, script) as awg:
        awg.channel(1).high_level_v = 8.0

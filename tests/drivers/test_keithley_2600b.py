"""Exact-exchange tests of the Keithley 2600B (TSP) source-measure unit driver."""

from __future__ import annotations

import pytest

from drivers.instrument import InstrumentInputError
from drivers.keithley_2600b import Keithley2600B
from drivers.testing import expected_exchange
from hil.errors import SafetyLimitError

IDN = ("*IDN?", "Keithley Instruments Inc., Model 2602B, 4321234, 3.3.5")
ATTRS = ("func", "levelv", "leveli", "limitv", "limiti", "output")


def connect(a=(1, 0.0, 0.0, 20.0, 1e-4, 0), b=(1, 0.0, 0.0, 20.0, 1e-4, 0)):
    ex = [IDN]
    for ch, values in (("a", a), ("b", b)):
        ex += [(f"print(smu{ch}.source.{attr})", f"{float(v):.5e}") for attr, v in zip(ATTRS, values, strict=True)]
    return ex


OFF_ALL = [("smua.source.output = 0", None), ("smub.source.output = 0", None)]


def test_connect_reads_back_both_channels():
    with expected_exchange(Keithley2600B, connect(b=(0, 0.0, 2e-4, 5.0, 1e-4, 0))) as smu:
        snap = smu.snapshot()["channels"]
    assert snap["a"]["source_function"] == "voltage"
    assert snap["b"] == {
        "source_function": "current",
        "source_voltage_v": 0.0,
        "source_current_a": 2e-4,
        "compliance_voltage_v": 5.0,
        "compliance_current_a": 1e-4,
        "output_enabled": False,
    }


def test_voltage_sourcing_session():
    script = [*connect(), ("smua.source.func = 1", None), ("smua.source.limiti = 5.000000E-04", None), ("smua.source.levelv = 2.000000E-01", None), ("smua.source.output = 1", None), ("print(smua.measure.i())", "1.23450e-05"), ("print(smua.measure.v())", "2.00010e-01"), ("smua.source.output = 0", None)]
    with expected_exchange(Keithley2600B, script, max_voltage_v=5.0, max_current_a=8e-4) as smu:
        a = smu.channel("a")
        a.source_function = "voltage"
        a.compliance_current_a = 5e-4
        a.source_voltage_v = 0.2
        a.output_enabled = True
        assert a.measured_current_a == pytest.approx(1.2345e-5)
        assert a.measured_voltage_v == pytest.approx(0.20001)
        a.output_enabled = False


@pytest.mark.parametrize(
    ("attr", "value", "match"),
    [
        ("source_voltage_v", 41.0, r"allowed \[-40.4, 40.4\] V"),
        ("source_current_a", -3.5, "out of range"),
        ("compliance_current_a", 0.0, r"allowed \[1e-08, 3.03\] A"),
        ("source_function", "resistance", "'voltage' or 'current'"),
        ("output_enabled", "on", "True or False"),
    ],
)
def test_bad_values_are_refused_before_anything_is_sent(attr, value, match):
    with expected_exchange(Keithley2600B, connect()) as smu, pytest.raises(InstrumentInputError, match=match):
        setattr(smu.channel("b"), attr, value)


def test_unknown_channel():
    with expected_exchange(Keithley2600B, connect()) as smu, pytest.raises(InstrumentInputError, match="'a' and 'b'"):
        smu.channel("c")


def test_current_above_the_write_head_limit_trips_and_switches_both_outputs_off():
    with (
        expected_exchange(Keithley2600B, connect() + OFF_ALL, max_current_a=8e-4) as smu,
        pytest.raises(SafetyLimitError, match=r"source_current_a=0\.001 A exceeds the station safety limit of 0\.0008 A"),
    ):
        smu.channel("a").source_current_a = 1e-3


def test_enabling_output_checks_the_compliance_it_inherited():
    # Compliance 0.1 A from an earlier session: switching on must not happen with an 800 uA limit.
    script = connect(a=(1, 0.1, 0.0, 20.0, 0.1, 0)) + OFF_ALL
    with expected_exchange(Keithley2600B, script, max_current_a=8e-4) as smu, pytest.raises(SafetyLimitError, match=r"compliance_current_a=0\.1"):
        smu.channel("a").output_enabled = True


def test_connecting_to_a_live_unsafe_channel_trips():
    script = connect(b=(0, 0.0, 2e-3, 20.0, 1e-4, 1)) + OFF_ALL
    with pytest.raises(SafetyLimitError, match="smub source_current_a"), expected_exchange(Keithley2600B, script, max_current_a=8e-4):
        pass

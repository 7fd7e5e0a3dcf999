"""Opt-in hardware test of the Keysight E36300 power supply driver: `pytest -m hardware --device-address=VISA_ADDRESS tests/drivers/test_keysight_e36300_with_device.py`.

It only reads: connecting reads the state back, then every output's voltage is measured. Nothing is switched on.
"""

from __future__ import annotations

import math

import pytest

from drivers.keysight_e36300 import KeysightE36300
from tests.drivers.helpers import connected

pytestmark = pytest.mark.hardware


def test_connects_reads_state_and_measures(device_address):
    with connected(KeysightE36300, device_address, "Keysight E36300 power supply") as (inst, _snap):
        for n in (1, 2, 3):
            v = inst.output(n).measured_voltage_v
            assert math.isfinite(v) and -0.1 <= v <= inst.output(n).max_voltage_v + 0.1
        assert {n: s["output_enabled"] for n, s in inst.state.items()} == {n: inst.output(n).output_enabled for n in (1, 2, 3)}

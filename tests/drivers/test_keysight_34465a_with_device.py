"""Opt-in hardware test of the Keysight 34465A multimeter driver: `pytest -m hardware --device-address=VISA_ADDRESS tests/drivers/test_keysight_34465a_with_device.py`.

It only reads: connecting reads the state back, then one reading is taken in the present function. Nothing is switched on.
"""

from __future__ import annotations

import math

import pytest

from drivers.keysight_34465a import Keysight34465A
from tests.drivers.helpers import connected

pytestmark = pytest.mark.hardware


def test_connects_reads_state_and_measures(device_address):
    with connected(Keysight34465A, device_address, "Keysight 34465A multimeter") as (inst, snap):
        value = inst.reading
        assert math.isfinite(value) or abs(value) >= 9.9e37  # 9.9e37 is the meter's overload reading
        assert snap["function"] in ("VOLT", "CURR", "RES")

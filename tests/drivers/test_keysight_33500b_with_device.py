"""Opt-in hardware test of the Keysight 33500B pulse generator driver: `pytest -m hardware --device-address=VISA_ADDRESS tests/drivers/test_keysight_33500b_with_device.py`.

It only reads: connecting reads the state back, then both channels are read back a second time and must agree. Nothing is switched on.
"""

from __future__ import annotations

import math

import pytest

from drivers.keysight_33500b import Keysight33500B
from tests.drivers.helpers import connected

pytestmark = pytest.mark.hardware


def test_connects_reads_state_and_measures(device_address):
    with connected(Keysight33500B, device_address, "Keysight 33500B pulse generator") as (inst, snap):
        for n in (1, 2):
            ch = inst.channel(n)
            assert ch.function.isalpha()  # e.g. SIN, PULS, RAMP
            assert ch.high_level_v == pytest.approx(snap["channels"][str(n)]["high_level_v"])
            assert math.isfinite(ch.frequency_hz)

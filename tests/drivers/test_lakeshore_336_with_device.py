"""Opt-in hardware test of the Lake Shore 336 temperature controller driver: `pytest -m hardware --device-address=VISA_ADDRESS tests/drivers/test_lakeshore_336_with_device.py`.

It only reads: connecting reads the state back, then input A is read. Nothing is switched on.
"""

from __future__ import annotations

import pytest

from drivers.lakeshore_336 import LakeShore336
from tests.drivers.helpers import connected

pytestmark = pytest.mark.hardware


def test_connects_reads_state_and_measures(device_address):
    with connected(LakeShore336, device_address, "Lake Shore 336 temperature controller") as (inst, snap):
        t = inst.input("A").temperature_k
        assert 0.0 <= t <= 1500.0
        assert inst.loop(1).setpoint_k == pytest.approx(snap["loops"]["1"]["setpoint_k"])

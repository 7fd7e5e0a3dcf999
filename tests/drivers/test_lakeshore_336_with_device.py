"""Opt-in hardware test of the Lake Shore 336 temperature controller driver: `pytest -m hardware --device-address=VISA_ADDRESS tests/drivers/test_lakeshore_336_with_device.py`.

It only reads: connecting reads the state back, then input A is read. Nothing is switched on.
"""

from __future__ import annotations

import pytest

from drivers.lakeshore_336 import LakeShore336

pytestmark = pytest.mark.hardware


def test_connects_reads_state_and_measures(device_address):
    with LakeShore336(device_address, name="dut") as inst:
        assert LakeShore336.idn_model.lower() in inst.idn.lower(), f"{inst.idn!r} is not a Lake Shore 336 temperature controller"
        snap = inst.snapshot()
        assert snap["address"] == device_address
        t = inst.input("A").temperature_k
        assert 0.0 <= t <= 1500.0
        assert inst.loop(1).setpoint_k == pytest.approx(snap["loops"]["1"]["setpoint_k"])

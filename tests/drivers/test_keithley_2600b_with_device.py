"""Opt-in hardware test of the Keithley 2600B SMU driver: `pytest -m hardware --device-address=VISA_ADDRESS tests/drivers/test_keithley_2600b_with_device.py`.

It only reads: connecting reads the state back, then both channels are read back a second time and must agree. Nothing is switched on.
"""

from __future__ import annotations

import pytest

from drivers.keithley_2600b import Keithley2600B
from tests.drivers.helpers import connected

pytestmark = pytest.mark.hardware


def test_connects_reads_state_and_measures(device_address):
    with connected(Keithley2600B, device_address, "Keithley 2600B SMU") as (inst, snap):
        for c in ("a", "b"):
            ch = inst.channel(c)
            assert ch.source_function in ("voltage", "current")
            assert ch.compliance_current_a == pytest.approx(snap["channels"][c]["compliance_current_a"])

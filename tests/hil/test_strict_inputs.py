"""Requests that used to be truncated or reached the backend before failing are refused up front,
with the value, the range and the fix, leaving chip state and random generators untouched."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hil import ChipInputError, Geometry, PulseKind
from hil.arguments import MAX_ELEMENTS, MAX_MVM_VALUES
from hil.testing import FakeChip

P = {"kind": PulseKind.PARTIAL, "amplitude_ua": 300.0, "width_ns": 125.0}
CASES: list[tuple[str, Callable[[FakeChip], Any], str]] = [
    ("scalar row 0.9", lambda c: c.apply_pulses([0], 0.9, [0], [0], **P), "row=0.9 is not a whole number"),
    ("kind 2.7", lambda c: c.apply_pulses([0], [0], [0], [0], kind=2.7, amplitude_ua=300.0, width_ns=125.0),
     "kind=2.7 is not a whole number"),
    ("kind True", lambda c: c.apply_pulses([0], [0], [0], [0], kind=True, amplitude_ua=125.0, width_ns=250.0),
     "kind is a boolean"),
    ("bool addresses", lambda c: c.read_cells(np.array([True, False]), [0, 0], [0, 0]), "core is a boolean"),
    ("device 1.5", lambda c: c.read_devices([0], [0], [0], 1.5), "device=1.5 is not a whole number"),
    ("sleep '10'", lambda c: c.sleep("10"), "seconds='10' must be a number"),
    ("sleep True", lambda c: c.sleep(True), "seconds=True must be a number"),
    ("sleep too long", lambda c: c.sleep(2e10), "allowed \\[0.0, 10000000000.0\\]"),
    ("duplicate LDPU cores", lambda c: c.set_ldpu([0, 0], 1.0, 0.0), "repeats a core"),
    ("MVM batch 1e7", lambda c: c.mvm(np.broadcast_to(np.int8(1), (10_000_000, 16)), [0, 1]),
     f"allowed up to {MAX_MVM_VALUES}. Split the batch"),
    ("pulse batch too large", lambda c: c.apply_pulses(np.zeros(MAX_ELEMENTS + 1, np.int64), 0, 0, 0, **P),
     f"allowed up to {MAX_ELEMENTS}"),
    ("NaN address", lambda c: c.read_cells([0], [np.nan], [0]), "row contains nan"),
]


@pytest.mark.parametrize(("case", "call", "message"), CASES, ids=[c for c, _, _ in CASES])
def test_refused_with_a_clear_error_and_nothing_changed(case: str, call: Callable[[FakeChip], Any], message: str) -> None:
    chip = FakeChip(Geometry(n_cores=2, n_rows=16, n_cols=16), seed=3)
    chip.apply_pulses([0, 1], [1, 2], [3, 4], [0, 1], **P)
    g, t, rng = chip.conductances(), chip.now(), copy.deepcopy(chip._rng.bit_generator.state)
    ldpu = chip.get_ldpu()
    with pytest.raises(ChipInputError, match=message):
        call(chip)
    np.testing.assert_array_equal(chip.conductances(), g)
    assert chip.now() == t and chip._rng.bit_generator.state == rng
    np.testing.assert_array_equal(chip.get_ldpu().scale, ldpu.scale)


def test_integral_floats_and_numpy_integers_are_still_fine() -> None:
    chip = FakeChip(Geometry(n_cores=2, n_rows=4, n_cols=4), noise=0)
    chip.apply_pulses(np.array([0.0, 1.0]), np.uint8(2), [1, 3], np.int32(0), kind=np.int64(2), amplitude_ua=300, width_ns=125)
    assert chip.conductances()[0, 2, 1, 0] > 0 and chip.conductances()[1, 2, 3, 0] > 0
    chip.sleep(np.float32(1.5))
    assert chip.now() > 1.5


def test_a_tiny_npy_declaring_a_huge_matrix_is_refused_before_loading(tmp_path) -> None:
    from protocols.mapping import load_weight_file

    header = np.lib.format.header_data_from_array_1_0(np.zeros(1))
    header["shape"] = (10**6, 10**6)
    with open(tmp_path / "big.npy", "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
    assert (tmp_path / "big.npy").stat().st_size <= 128
    with pytest.raises(ChipInputError, match="declares 1000000000000 weights"):
        load_weight_file(tmp_path / "big.npy")


def test_an_emulator_too_large_for_memory_is_refused_with_the_fix() -> None:
    from emulator import EmulatedChip

    with pytest.raises(ChipInputError, match=r"needs about 2304 GiB.*Use fewer cores"):
        EmulatedChip.from_spec("hermes,cores=1024,rows=4096,cols=4096")

"""ReplayChip accepts the MVM calls its recording holds, also above the default per-call limit.

A run on a GPU emulator records calls of up to 2**30 values (``emulator.chip.MAX_GPU_MVM_VALUES``),
four times the default 2**28 (``hil.arguments.MAX_MVM_VALUES``). Such files are too large for a test,
so the case is scaled down: the default limit is patched to 2**10 and a "GPU-like" emulator records
calls of 1,600 values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hil.arguments
import tests.hil.helper_protocols  # noqa: F401 - registers test-steps
from emulator import EmulatedChip
from emulator.chip import MAX_GPU_MVM_VALUES
from hil.errors import ChipInputError
from hil.replay import ReplayChip
from hil.runner import replay_run, resume_run, run_protocol
from hil.runs import RunReader
from tests.hil.test_resume import assert_same_data

SMALL_LIMIT = 2**10
SPEC = "emulator:hermes,cores=2,rows=16,cols=16,matmul=float32,chain=eager"
BATCH = 100  # one core x 100 x 16 = 1,600 values per call: above SMALL_LIMIT
STEPS = [f"batch={BATCH}", "steps=6"]


class GpuLikeChip(EmulatedChip):
    """An emulator that allows the GPU's per-call limit on any device."""

    def validate_mvm(self, x, cores, output, mode):  # type: ignore[no-untyped-def]
        return hil.arguments.mvm(self.geometry, x, cores, output, mode, max_values=MAX_GPU_MVM_VALUES)


def _gpu_chip(seed: int = 3) -> GpuLikeChip:
    return GpuLikeChip.from_spec(SPEC.partition(":")[2], seed=seed)


@pytest.fixture
def small_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default per-call limit scaled down (the module constant and the default argument alike)."""
    monkeypatch.setattr(hil.arguments, "MAX_MVM_VALUES", SMALL_LIMIT)
    monkeypatch.setattr(hil.arguments.mvm, "__defaults__", (SMALL_LIMIT,))


def test_the_scaled_down_limit_refuses_a_default_chip(small_limit: None) -> None:
    chip = EmulatedChip.from_spec(SPEC.partition(":")[2], seed=3)
    with pytest.raises(ChipInputError, match=f"allowed up to {SMALL_LIMIT}"):
        chip.mvm(np.zeros((BATCH, 16), np.int8), [0])
    assert _gpu_chip().mvm(np.zeros((BATCH, 16), np.int8), [0]).shape == (1, BATCH, 16)


def test_a_replay_accepts_the_recorded_calls_above_the_default_limit(tmp_path: Path, small_limit: None) -> None:
    rec = run_protocol("test-steps", chip=_gpu_chip(), chip_spec=SPEC, sets=STEPS, seed=5, out=tmp_path / "rec")
    assert rec.status == "success", rec.message
    with RunReader(rec.path) as r:
        assert r.journal.largest_mvm_values() == BATCH * 16 > SMALL_LIMIT
    res = replay_run(rec.path, out=tmp_path / "replay")
    assert res.status == "success", res.message
    with RunReader(rec.path) as a, RunReader(res.path) as b:
        np.testing.assert_array_equal(a.stream("steps")["y"], b.stream("steps")["y"])
    # A call larger than anything recorded is still refused, naming the recording's limit.
    chip = ReplayChip(rec.path)
    try:
        with pytest.raises(ChipInputError, match=f"allowed up to {BATCH * 16}"):
            chip.mvm(np.zeros((BATCH + 1, 16), np.int8), [0])
        assert chip.position == 0  # refused before it was matched against the journal
    finally:
        chip.close()


def test_a_replay_without_large_calls_keeps_the_default_limit(tmp_path: Path, small_limit: None) -> None:
    rec = run_protocol("test-steps", chip=_gpu_chip(), chip_spec=SPEC, sets=["batch=4", "steps=2"], seed=5, out=tmp_path)
    chip = ReplayChip(rec.path)
    try:
        with pytest.raises(ChipInputError, match=f"allowed up to {SMALL_LIMIT}"):
            chip.mvm(np.zeros((BATCH, 16), np.int8), [0])
    finally:
        chip.close()


def test_a_resume_reexecutes_large_recorded_calls_then_goes_live_on_the_live_chip(
        tmp_path: Path, small_limit: None, monkeypatch: pytest.MonkeyPatch) -> None:
    whole = run_protocol("test-steps", chip=_gpu_chip(), chip_spec=SPEC, sets=STEPS, seed=5, out=tmp_path / "whole")
    monkeypatch.setenv("HIL_TEST_INTERRUPT_AT_STEP", "3")
    with pytest.raises(KeyboardInterrupt):
        run_protocol("test-steps", chip=_gpu_chip(), chip_spec=SPEC, sets=STEPS, seed=5, out=tmp_path / "cut")
    monkeypatch.delenv("HIL_TEST_INTERRUPT_AT_STEP")
    (path,) = (tmp_path / "cut").glob("*.h5")
    res = resume_run(path, chip=_gpu_chip())  # recorded calls: the replay's limit; new ones: the live chip's
    assert res.status == "success", res.message
    assert_same_data(whole.path, path)

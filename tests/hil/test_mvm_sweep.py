"""The mvm-sweep protocol on the emulator: programming converges, MVM error is measured honestly."""

from __future__ import annotations

import numpy as np
import pytest

from hil import ChipInputError, Geometry, MemoryRunLog
from protocols.mvm_sweep import MvmSweepConfig, mvm_sweep


def _chip(seed: int = 3, **overrides):
    from emulator import EmulatedChip

    return EmulatedChip("hermes", seed=seed, geometry=Geometry(n_cores=2, n_rows=32, n_cols=32), overrides=overrides or None)


def test_programming_converges_and_read_back_tracks_the_target() -> None:
    run = MemoryRunLog(seed=1)
    summary = mvm_sweep(_chip(), MvmSweepConfig(program_iterations=12, repeats=1), run)
    active = run.column("program", "active")
    assert active[0] > 4 * active[-1]  # most devices reach tolerance within a dozen pulses
    target = run.column("weights", "w_target_counts").reshape(-1)
    read = run.column("weights", "w_read_counts").reshape(-1).astype(float)
    assert np.corrcoef(target, read)[0, 1] > 0.9
    assert summary["cores"] == [0, 1] and set(summary["rel_error_by_scale"]) == {"0.125", "0.25", "0.5", "1"}


def test_mvm_error_is_small_with_an_ideal_periphery_and_grows_with_noise() -> None:
    cfg = MvmSweepConfig(program_iterations=10, repeats=1, batch=16, input_scales=[0.5])
    ideal = _chip(adc={"gain_sigma": 0.0}, noise={"read_noise_scale": 0.0})
    quiet = mvm_sweep(ideal, cfg, MemoryRunLog(seed=2))["rel_error_by_scale"]["0.5"]
    # The slow 1/f part is frozen between redraws, so the read-back reference holds it and only the
    # fast part shows in the MVM error: a strong scale makes it plain.
    noisy = mvm_sweep(_chip(noise={"read_noise_scale": 8.0}), cfg, MemoryRunLog(seed=2))["rel_error_by_scale"]["0.5"]
    assert quiet < 0.1 and noisy > 2 * quiet


def test_take_cores_as_they_are_makes_no_pulses_and_logs_each_core_scale_repeat(tmp_path) -> None:
    from hil.journal import RecordingChip
    from hil.runs import RunReader, RunWriter

    writer = RunWriter(tmp_path / "j.h5", {"run_id": "j", "protocol": "mvm-sweep"})
    run = MemoryRunLog(seed=0)
    cfg = MvmSweepConfig(program=False, cores=[1], input_scales=[0.25, 1.0], repeats=3)
    mvm_sweep(RecordingChip(_chip(), writer), cfg, run)
    writer.close(status="success")
    with RunReader(tmp_path / "j.h5") as r:
        assert r.journal.counts() == {"read_cells": 1, "mvm": 6}  # no pulses on cores taken as they are
    assert run.column("mvm", "core").tolist() == [1] * 6
    assert run.column("mvm", "scale").tolist() == [0.25] * 3 + [1.0] * 3
    assert run.column("mvm", "col_rel_error").shape == (6, 32)


def test_cores_that_do_not_exist_are_refused() -> None:
    with pytest.raises(ChipInputError, match=r"cores=\[0, 7\] but the chip has 2 cores"):
        mvm_sweep(_chip(), MvmSweepConfig(cores=[0, 7]), MemoryRunLog())

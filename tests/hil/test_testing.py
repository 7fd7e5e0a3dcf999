"""hil.testing: the fake chip and check_protocol, which catches protocols that cannot be replayed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from hil import Chip, PulseKind, RunLog
from hil.testing import FakeChip, check_protocol


class Small(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 3


def good(chip: Chip, config: Small, run: RunLog) -> dict:
    rng = run.rng("good")
    for i in range(config.n):
        rows = rng.integers(0, chip.geometry.n_rows, 3)
        chip.apply_pulses([0] * 3, rows, 0, 0, kind=PulseKind.PARTIAL, amplitude_ua=200.0, width_ns=125.0)
        run.log("reads", i=i, counts=chip.read_devices([0] * 3, rows, 0, 0)[None])
    return {"n": config.n, "wall_s": time.perf_counter()}


def unseeded(chip: Chip, config: Small, run: RunLog) -> dict:
    rows = np.random.default_rng().integers(0, chip.geometry.n_rows, 8)  # not from run.rng: differs on replay
    chip.read_cells([0] * 8, rows, 0)
    return {}


def clock_driven(chip: Chip, config: Small, run: RunLog) -> dict:
    run.log("t", wall=time.time())  # a stream that depends on wall time differs on replay
    return {}


def test_a_deterministic_protocol_passes_and_its_run_is_returned() -> None:
    res = check_protocol(good, Small(n=4))
    assert res.status == "success" and res.n_calls == 8 and res.summary["n"] == 4


def test_a_protocol_that_draws_from_an_unseeded_generator_fails_the_check() -> None:
    with pytest.raises(AssertionError, match=r"replaying .* failed: fail \(replay_mismatch\)"):
        check_protocol(unseeded, Small())


def test_a_protocol_whose_streams_follow_the_wall_clock_fails_the_check() -> None:
    with pytest.raises(AssertionError, match="stream 't' column 'wall' differs"):
        check_protocol(clock_driven, Small())


def test_fake_chip_is_deterministic_and_its_physics_is_monotone() -> None:
    a, b = FakeChip(seed=1), FakeChip(seed=1)
    for chip in (a, b):
        for _ in range(5):
            chip.apply_pulses([0], [0], [0], [0], kind=PulseKind.PARTIAL, amplitude_ua=250.0, width_ns=125.0)
    np.testing.assert_array_equal(a.read_devices([0], [0], [0], [0]), b.read_devices([0], [0], [0], [0]))
    assert 0 < a.conductances()[0, 0, 0, 0] < 100
    a.apply_pulses([0], [0], [0], [0], kind=PulseKind.RESET, amplitude_ua=700.0, width_ns=125.0)
    assert a.conductances()[0, 0, 0, 0] == 0

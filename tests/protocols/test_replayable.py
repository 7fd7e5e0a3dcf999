"""Every installed protocol passes hil.testing.check_protocol: its run file replays with the same calls,
streams and summary (on the fake chip where its physics suffices, else on a small emulated chip)."""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

import pytest

from hil.testing import check_protocol

FAKE = "fake:cores=2,rows=16,cols=16"
SMALL_EMULATOR = "emulator:hermes,cores=2,rows=32,cols=32"
#: protocol -> (chip, config): small enough for the default test run.
CASES: dict[str, tuple[str, dict[str, Any] | None]] = {
    "mvm-sweep": (FAKE, {"batch": 4, "repeats": 1}),
    "program-verify": (FAKE, None),
    "calibration": (FAKE, None),
    "drift": (FAKE, None),
    "gdp": (SMALL_EMULATOR, None),  # fits a programming curve: needs the emulator's device physics
    "attack": ("emulator:hermes,cores=4,rows=64,cols=64",
               {"samples": 20, "repeats": 1, "attacks": {"pgd": {"iterations": [1], "magnitudes": [0.1]}},
                "hil": {"refit_every": 2, "n_mvm": 100}}),
    "adapt": ("fake:cores=2,rows=128,cols=128",
              {"steps": 2, "readapt_steps": 1, "train_samples": 32, "calibration_samples": 16, "affine_inputs": 32,
               "gdc_inputs": 8, "proxy_inputs": 0}),
    "kernel-approx": (FAKE, {"approximations": ["orf"], "kernels": ["rbf"], "ks": [1], "seeds": [0], "n": 100, "d": 3,
                             "calibration_samples": 32, "test_subset": 30,
                             "deploy": {"proxy_inputs": 0, "gdc_inputs": 8, "affine_inputs": 64}}),
    "infer": ("emulator:hermes,cores=4,rows=64,cols=64",
              {"drift_times_s": [3600.0], "test_samples": 40, "error_samples": 8, "program_verify": {"max_iterations": 8}}),
}


def test_every_installed_protocol_has_a_replay_check() -> None:
    installed = {ep.name for ep in entry_points(group="hil.protocols")}
    assert installed == set(CASES), f"add a check_protocol case for {sorted(installed - set(CASES))}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_protocol_replays_exactly(name: str, tmp_path) -> None:
    chip, config = CASES[name]
    result = check_protocol(name, config, chip=chip, seed=1, out=tmp_path)
    assert result.status == "success" and result.n_calls > 0

"""Digital low-rank adapters: zero at the start, no pulse while adapting, accuracy recovered on a noisy chip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hil
from hil.errors import ChipInputError, ConfigError
from hil.ops import OP_NAMES
from hil.runs import RunReader
from hil.testing import check_protocol
from protocols.adapters import AdaptedModel, LowRankAdapter, train_adapters
from protocols.deploy import DeployConfig, deploy
from protocols.deploy.zoo import load_digits_split, load_zoo_model

NOISY = {"noise": {"prog_noise_scale": 8.0, "drift_scale": 4.0}}
PULSES = next(k for k, v in OP_NAMES.items() if v == "apply_pulses")


def noisy_chip(seed: int = 0) -> hil.Chip:
    from emulator import EmulatedChip

    return EmulatedChip("hermes", seed=seed, geometry=hil.Geometry(n_cores=4, n_rows=256, n_cols=256), overrides=NOISY)


def test_untrained_adapter_is_zero_and_rank_checked():
    ad = LowRankAdapter(8, 5, 2, np.random.default_rng(0))
    assert torch.equal(ad(torch.ones(3, 8, dtype=torch.float64)), torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ChipInputError, match="rank"):
        LowRankAdapter(8, 5, 6, np.random.default_rng(0))


def test_adapters_match_the_deployed_model_before_training():
    d = load_digits_split()
    dm = deploy(load_zoo_model("digits-mlp"), noisy_chip(), d.calibration(64), DeployConfig(programming="fast", proxy_inputs=0))
    am = AdaptedModel(dm, 2, np.random.default_rng(0))
    x = d.x_test[:50]
    a, b, c = dm.predict(x, "raw"), dm.predict(x, "raw"), am.predict(x)  # fresh read noise per MVM: close, not equal

    def rel(u: np.ndarray, v: np.ndarray) -> float:
        return float(np.linalg.norm(u - v) / np.linalg.norm(v))

    assert rel(c, a) < 1.5 * rel(b, a) + 0.02
    assert am.n_parameters == 2 * (64 + 128) + 2 * (128 + 10)


def test_recorded_run_recovers_accuracy_with_zero_pulses(tmp_path):
    """Noisy chip (prog. noise x8, drift x4), P&V with 3 iterations: adapters come within 2 points of FP, the journal
    has no apply_pulses while adapting, and re-adaptation after a day recovers most of the drift loss."""
    res = hil.run_protocol("adapt", chip=noisy_chip(), config={"program_verify": {"max_iterations": 3}, "readapt_steps": 100},
                           out=tmp_path, progress=False, chip_spec="emulator:hermes,cores=4")
    res.raise_for_status()
    s = res.summary
    assert s["fp_accuracy"] - s["chip_accuracy"] > 0.05  # the chip is deliberately bad
    assert s["fp_accuracy"] - s["adapted_accuracy"] <= 0.02
    loss = s["adapted_accuracy"] - s["drifted_accuracy"]
    assert loss > 0.01
    assert s["readapted_accuracy"] - s["drifted_accuracy"] >= 0.5 * loss
    with RunReader(res.path) as r:
        ph = r.stream("adapt_phase")
        calls = r.journal.calls
        assert calls["op"].tolist().count(PULSES) > 0  # programming pulsed
        for t0, t1 in zip(np.asarray(ph["t_start_s"]), np.asarray(ph["t_end_s"]), strict=True):
            inside = (calls["t_chip"] >= t0) & (calls["t_chip"] <= t1)
            assert inside.sum() > 0 and not np.any(calls["op"][inside] == PULSES)
        assert set(r.journal.counts()) <= {"now", "sleep", "apply_pulses", "read_devices", "read_cells", "mvm", "set_ldpu",
                                           "get_ldpu"}


def test_adapt_replays_on_a_fake_chip(tmp_path):
    check_protocol("adapt", {"steps": 3, "readapt_steps": 2, "train_samples": 64, "calibration_samples": 32,
                             "affine_inputs": 64, "gdc_inputs": 8, "proxy_inputs": 0},
                   chip="fake:cores=2,rows=128,cols=128", out=tmp_path)


def test_fast_path_refused(tmp_path):
    with pytest.raises((ConfigError, ChipInputError), match="not a chip operation"):
        hil.run_protocol("adapt", chip="fake:cores=2,rows=128,cols=128", config={"programming": "fast"}, out=tmp_path)


def test_train_adapters_uses_only_mvm():
    d = load_digits_split()
    chip = noisy_chip(1)
    dm = deploy(load_zoo_model("digits-mlp"), chip, d.calibration(64), DeployConfig(programming="fast", proxy_inputs=0))
    am = AdaptedModel(dm, 4, np.random.default_rng(0))
    before = dm.accuracy(d.x_test, d.y_test)
    h = train_adapters(am, d.x_train, d.y_train, steps=60, lr=0.02)
    assert h.loss[-1] < h.loss[0] and h.mvm_calls == 2 * 60
    assert am.accuracy(d.x_test, d.y_test) > before

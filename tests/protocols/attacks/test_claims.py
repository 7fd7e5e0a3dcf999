"""The ADV25 claims that hold on the digits models, as seeded statistical tests (means vs their standard errors,
only at clean-accuracy drops of at most 10 %). Figures and the claims that do not hold: docs/attacks.md.

CI subset: HWA below FP32 over 3 training seeds, recurrent weight noise lowers the ASR monotonically over three
levels, HIL beats transfer on the chip paired over 3 chip seeds, and Square/OnePixel in the protocol on the CNN.
The ``slow`` tests repeat the first three with more seeds / samples.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import hil
from protocols.attacks import TorchPlatform, study
from protocols.deploy.zoo import load_digits_split, load_zoo_model, train_digits

CHIP = "emulator:hermes,cores=4,rows=64,cols=64"
IT, EPS = [1, 5, 10], [0.03, 0.06, 0.1, 0.15]


def _se(a: np.ndarray) -> float:
    return float(np.std(a, ddof=1) / np.sqrt(len(a)))


def _env(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    p = TorchPlatform("m", model)
    return study.grid_envelope(p.predict, p.grad, x, y, IT, EPS)


def _fp32_vs_hwa(arch: str, seeds: range) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    torch.set_num_threads(1)
    d = load_digits_split()
    fp, hw, drop = [], [], []
    for s in seeds:
        m0, m1 = train_digits(arch, s), train_digits(arch, s, weight_noise=0.08)
        fp.append(_env(m0, d.x_test, d.y_test))
        hw.append(_env(m1, d.x_test, d.y_test))
        acc = [float((TorchPlatform("m", m).predict(d.x_test).argmax(1) == d.y_test).mean()) for m in (m0, m1)]
        drop.append(acc[0] - acc[1])
    return np.asarray(fp), np.asarray(hw), np.asarray(drop)


@pytest.mark.parametrize("arch, seeds", [("digits-mlp", range(3)),
                                         pytest.param("digits-mlp", range(10), marks=pytest.mark.slow),
                                         pytest.param("digits-cnn", range(3), marks=pytest.mark.slow)])
def test_fp32_asr_above_hwa_paired_over_training_seeds(arch: str, seeds: range) -> None:
    fp, hw, drop = _fp32_vs_hwa(arch, seeds)
    diff = fp - hw  # same seed, init and mini-batches; only the weight noise differs
    assert drop.max() <= 0.10
    assert diff.mean() > 2 * _se(diff) and diff.mean() > 0, (fp, hw)


@pytest.mark.parametrize("repeats, drops, seed", [(8, [0.0, 0.02, 0.05], 3),
                                                  pytest.param(20, [0.0, 0.02, 0.05], 11, marks=pytest.mark.slow)])
def test_more_recurrent_weight_noise_lowers_asr(repeats: int, drops: list[float], seed: int) -> None:
    """Recurrent (fresh per forward) weight noise, scaled to clean-accuracy drops 0 / 2 / 5 %: the ASR falls
    monotonically. (From 5 to 10 % it levels off: not asserted; docs/attacks.md.)"""
    torch.set_num_threads(1)
    d = load_digits_split()
    m, x_cal = load_zoo_model("digits-mlp"), d.calibration(256)
    ref = float((TorchPlatform("m", m).predict(d.x_test).argmax(1) == d.y_test).mean())
    means, ses = [], []
    for drop in drops:
        sigma = study.match_drop(m, x_cal, d.x_test, d.y_test, "weight_recurrent", drop, ref, repeats, seed=seed) if drop else 0.0
        acc, env, _ = study.source_asr(m, x_cal, d.x_test, d.y_test, study.source_params("weight_recurrent", sigma), IT, EPS,
                                       repeats, seed=seed)
        assert ref - acc.mean() <= 0.10 + 0.01
        means.append(env.mean())
        ses.append(_se(env) if sigma else 0.0)
    for k in range(len(drops) - 1):
        assert means[k] - means[k + 1] > np.hypot(ses[k], ses[k + 1]), (means, ses)


def _hil_vs_transfer(seeds: list[int], samples: int, tmp_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from hil.runs import RunReader

    cfg = {"samples": samples, "repeats": 1, "platforms": ["chip"], "program_verify": {"margin_counts": 20},
           "hil": {"refit_every": 0, "n_mvm": 1000}, "attacks": {"pgd": {"iterations": IT, "magnitudes": EPS}}}
    d = load_digits_split()
    ref = float((TorchPlatform("m", load_zoo_model("digits-mlp")).predict(d.x_test).argmax(1) == d.y_test).mean())
    tr, hl, drop = [], [], []
    for seed in seeds:
        res = hil.run_protocol("attack", chip=CHIP, config=cfg, seed=seed, out=tmp_path, progress=False)
        res.raise_for_status()
        env = res.summary["envelope_mean"]
        tr.append(env["chip/transfer/pgd"])
        hl.append(env["chip/hil/pgd"])
        with RunReader(res.path) as r:
            ca = r.stream("clean_accuracy")
        drop.append(ref - float(np.mean(ca["accuracy"])))
    return np.asarray(tr), np.asarray(hl), np.asarray(drop)


@pytest.mark.parametrize("seeds, samples", [([1, 2, 3], 100), pytest.param([1, 2, 3, 4, 5], 300, marks=pytest.mark.slow)])
def test_hil_beats_transfer_paired_over_chip_seeds(seeds: list[int], samples: int, tmp_path: Path) -> None:
    """The chip programmed coarsely (verify margin 20 counts, a chip-like 1-2 % accuracy drop): HIL knows the chip's
    instance (W_hat from its MVMs, its activations), the chip model only its statistics."""
    tr, hl, drop = _hil_vs_transfer(seeds, samples, tmp_path)
    assert drop.max() <= 0.10
    diff = hl - tr
    assert (diff > 0).all() and diff.mean() > 2 * _se(diff), (hl, tr)


def test_black_box_attacks_run_in_the_protocol_on_the_cnn(tmp_path: Path) -> None:
    pytest.importorskip("art")
    cfg = {"model": "digits-cnn", "samples": 10, "repeats": 1, "platforms": ["chip"], "chip_model": {},
           "hil": {"modes": ["hil"], "n_mvm": 200}, "calibration_samples": 32,
           "attacks": {"square": {"iterations": [5], "magnitudes": [0.3]}, "onepixel": {"iterations": [1], "magnitudes": [2]}}}
    res = hil.run_protocol("attack", chip=CHIP, config=cfg, seed=1, out=tmp_path, progress=False)
    res.raise_for_status()
    env = res.summary["envelope_mean"]
    assert set(env) == {"chip/hil/square", "chip/hil/onepixel"}
    assert all(0.0 <= v <= 1.0 for v in env.values())
    assert res.summary["chip_calls"] > 0

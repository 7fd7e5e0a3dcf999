"""LDPU affine calibration, input/conductance ranges and global drift compensation."""

from __future__ import annotations

import numpy as np
import pytest

import hil
from hil import ChipInputError
from protocols.calibration import (
    CalibrationConfig,
    GlobalDriftCompensation,
    calibrate_columns,
    calibration_protocol,
    column_gmax,
    input_ranges,
    quantize_inputs,
)
from protocols.mapping import map_to_conductance
from protocols.metrics import measure_mvm_errors
from protocols.program_verify import program_verify

from .conftest import MEDIUM, make_chip


def _programmed(overrides: dict | None = None, seed: int = 21) -> tuple[hil.Chip, np.ndarray]:
    chip = make_chip(MEDIUM, seed=seed, overrides=overrides)
    w = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64))
    t = map_to_conductance(w, 80.0)[0]
    program_verify(chip, [0, 1], t)
    return chip, t


def test_column_calibration_finds_the_adc_gains_and_removes_their_error() -> None:
    chip, t = _programmed()
    cores = np.arange(2)
    before, _, _ = measure_mvm_errors(chip, cores, t, np.random.default_rng(1), n_inputs=512)
    cal = calibrate_columns(chip, cores, t, np.random.default_rng(2), n_inputs=1024)
    true_gain = chip.adc_gains()  # ground truth, used only to judge
    fitted = cal.gain / cal.gain.mean(1, keepdims=True)
    assert np.corrcoef(fitted.ravel(), (true_gain / true_gain.mean(1, keepdims=True)).ravel())[0, 1] > 0.9
    regs = chip.get_ldpu(cores)
    np.testing.assert_array_equal(regs.scale, cal.scale.astype(np.float16))
    after, _, _ = measure_mvm_errors(chip, cores, t, np.random.default_rng(1), n_inputs=512, output="ldpu",
                                     scale=cal.out_scale)
    assert np.all(after.linear < 0.85 * before.linear)
    ldpu = np.asarray(chip.mvm(np.full((4, 64), 127, dtype=np.int8), cores, output="ldpu"))
    assert ldpu.dtype == np.int8


def test_calibration_protocol_with_gain_spread_gets_close_to_an_ideal_adc() -> None:
    cfg = CalibrationConfig(eval_inputs=512, calibration_inputs=1024, drift_times_s=[86400.0])
    outs = {}
    for name, ov in (("spread", None), ("ideal", {"adc": {"gain_sigma": 0.0}})):
        chip = make_chip(MEDIUM, seed=21, overrides=ov)
        outs[name] = calibration_protocol(chip, cfg, hil.MemoryRunLog(seed=4))
    spread, ideal = outs["spread"], outs["ideal"]
    assert spread["adc_gain_spread"] > 0.04 and ideal["adc_gain_spread"] < 0.03
    assert spread["after"]["total"] < spread["before"]["total"] - 0.01
    assert abs(spread["after"]["total"] - ideal["after"]["total"]) < 0.01
    day = spread["drift"][0]
    assert day["alpha_mean"] > 1.05  # conductances fell, the compensation scales up
    assert day["with_gdc"]["total"] < day["without_gdc"]["total"]


def test_global_drift_compensation_can_be_rerun() -> None:
    chip, _ = _programmed(seed=22)
    cores = np.arange(2)
    gdc = GlobalDriftCompensation.record(chip, cores, np.random.default_rng(0), n_inputs=64)
    np.testing.assert_allclose(gdc.alpha(chip), 1.0, atol=0.02)
    chip.sleep(3600.0)
    a1 = gdc.apply(chip)
    chip.sleep(86400.0)
    a2 = gdc.apply(chip)
    assert np.all(a2 > a1) and np.all(a1 > 1.0)
    np.testing.assert_allclose(chip.get_ldpu(cores).scale.astype(float), gdc.base_scale * a2[:, None], rtol=2e-3)


def test_input_ranges_and_quantisation() -> None:
    x = np.random.default_rng(0).normal(size=(3, 1000, 8))
    r = input_ranges(x, 99.0, axis=(1, 2))
    assert r.shape == (3,) and np.all((r > 2.3) & (r < 2.8))
    q = quantize_inputs(np.array([0.0, 0.5, -1.0, 7.0]), 1.0)
    np.testing.assert_array_equal(q, [0, 64, -127, 127])
    assert q.dtype == np.int8
    with pytest.raises(ChipInputError, match="percentile"):
        input_ranges(x, 0.0)
    with pytest.raises(ChipInputError, match="x_range"):
        quantize_inputs(x, 0.0)


def test_column_gmax_shrinks_only_columns_that_would_saturate() -> None:
    t = np.zeros((1, 256, 3))
    t[0, :, 0] = 80.0  # a column of full cells: saturates with dense inputs
    t[0, :8, 1] = 80.0  # a light column
    t[0, :, 2] = 20.0
    x = np.random.default_rng(0).integers(0, 128, (500, 256))
    g = column_gmax(t, x, 80.0, i_sat_ua=100.0, n_sigma=3.0, min_fraction=0.25)
    assert g[0, 1] == 80.0 and g[0, 2] == 80.0
    assert 20.0 <= g[0, 0] < 80.0


def test_calibration_rejects_bad_drift_times_before_any_pulse(small_chip) -> None:
    with pytest.raises(ChipInputError, match="strictly increasing"):
        calibration_protocol(small_chip, CalibrationConfig(drift_times_s=[100.0, 10.0]), hil.MemoryRunLog())
    assert small_chip.now() == 0.0

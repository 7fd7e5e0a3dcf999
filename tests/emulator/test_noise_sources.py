"""Noise sources with explicit recurrence (fast, default run).

Each test asserts a property of one source: its magnitude against the physics model's formula, or
when it is drawn (programming, slow 1/f epochs, every read, every MVM, once per column).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from emulator import EmulatedChip
from emulator.noise import DeviceNoiseModel, get_model, model_names
from emulator.noise.hermes import Hermes1Device
from emulator.noise.recurrence import band_split
from hil import ChipInputError, Geometry, grid

#: Emulator device of these tests: HIL_TEST_DEVICE=cuda runs them on a GPU (tests/benchmarks/gpu_check.sh).
DEVICE = os.environ.get("HIL_TEST_DEVICE", "cpu")

GEO = Geometry(n_cores=2, n_rows=64, n_cols=64)  # 8,192 cells
FINE_READS = {"verify": {"counts_per_us": 200.0}}  # 0.005 uS per count: quantisation far below the noise
EXACT_ADC = {"adc": {"gain_sigma": 0.0, "nonlinearity_per_ua": 0.0},
             "numerics": {"matmul_dtype": "float32", "noise_dtype": "float32"}}


def chip_at_level(preset: str, level: float, seed: int = 0, noise: dict | None = None, **over: dict) -> EmulatedChip:
    """Device 0 of every cell programmed to ``level`` x g_max without programming noise."""
    overrides = {**FINE_READS, **over, "noise": {"prog_noise_scale": 0.0, **(noise or {})}}
    chip = EmulatedChip(preset, seed=seed, device=DEVICE, geometry=GEO, overrides=overrides)
    target = np.zeros((GEO.n_cores, GEO.n_rows, GEO.n_cols, GEO.n_devices), np.float32)
    target[..., 0] = level * chip.preset.noise.g_max_us
    chip.program_conductances(range(GEO.n_cores), target)
    return chip


def read_device0_us(chip: EmulatedChip) -> np.ndarray:
    c, r, k = grid(range(GEO.n_cores), range(GEO.n_rows), range(GEO.n_cols))
    return chip.read_devices(c, r, k, 0).astype(np.float64) / chip.preset.verify.counts_per_us


def bands(chip: EmulatedChip, t_since_s: float) -> tuple[float, float]:
    """(slow, fast) standard deviations in units of Q_s of a device of the chip's model."""
    m, nm = chip._model, chip.preset.noise
    slow, fast = band_split(m, torch.tensor([t_since_s + m.t0_s]), nm.fast_corner_s)
    return float(slow), float(fast)


# ---------------------------------------------------------------------- found: pcm-like read-noise magnitude
def test_pcm_like_verify_read_noise_is_the_published_magnitude() -> None:
    """One read of a pcm-like device deviates by Q_s sqrt(ln((t0 + t_read) / 2 t_read)) at t = t_p
    ([AIHW] PCMLikeNoiseModel); the old preset read 0.8 of it."""
    chip = chip_at_level("pcm-like", 0.5)
    g = chip.true_conductances()[..., 0].reshape(-1)
    rel = (read_device0_us(chip) - g) / g
    nm = chip.preset.noise
    want = float(get_model("pcm-like").q_s(torch.tensor([0.5]))) * math.sqrt(math.log((nm.t0_s + nm.t_read_s) / (2 * nm.t_read_s)))
    assert rel.std() == pytest.approx(want, rel=0.04)


def test_pcm_like_mvm_read_noise_is_the_published_magnitude() -> None:
    """An MVM output deviates from x @ G by the published read noise summed over its devices (slow and
    fast parts together); the old preset's MVMs saw a quarter of it."""
    chip = chip_at_level("pcm-like", 0.3, **EXACT_ADC)
    rng = np.random.default_rng(0)
    x = rng.integers(-40, 41, (256, GEO.n_rows)).astype(np.int8)
    y = chip.mvm(x).astype(np.float64)
    g = chip.true_conductances()
    cell = g[..., 0] + g[..., 1] - g[..., 2] - g[..., 3]
    k = chip.preset.adc.gain_ghz_per_ua * chip.preset.periphery.v_read_v
    dev = y - np.einsum("br,crk->cbk", x.astype(np.float64), cell) * k
    nm = chip.preset.noise
    sig = g[..., 0] * get_model("pcm-like").q_s(torch.tensor([0.3])).item()
    sig *= math.sqrt(math.log((nm.t0_s + nm.t_read_s) / (2 * nm.t_read_s)))
    want = np.einsum("br,crk->cbk", x.astype(np.float64) ** 2, sig**2) * k * k + 2 / 12  # + two floored counters
    assert dev.var() / want.mean() == pytest.approx(1.0, rel=0.08)


# ---------------------------------------------------------------------- found: two-device t0 and read noise
def test_two_device_weights_drift_with_t0_300s_and_read_with_the_pair_noise() -> None:
    chip = EmulatedChip("hermes", seed=1, device=DEVICE, geometry=GEO, overrides={**FINE_READS, "noise": {"prog_noise_scale": 0.0}})
    pair = get_model("hermes-2dev")
    w = np.full((GEO.n_cores, GEO.n_rows, GEO.n_cols), 0.5 * pair.g_max_us, np.float32)
    chip.program_weights(range(GEO.n_cores), w, devices_per_weight=2)
    g0 = chip.true_conductances()
    cell0 = (g0 * GEO.device_sign).sum(-1).reshape(-1)
    c, r, k = grid(range(GEO.n_cores), range(GEO.n_rows), range(GEO.n_cols))
    read = chip.read_cells(c, r, k).astype(np.float64) / chip.preset.verify.counts_per_us
    nm = chip.preset.noise
    # hermes verify reads: slow and fast parts both at 0.8, i.e. 0.8 x the fit's accumulated noise
    want = 0.8 * float(pair.q_s(torch.tensor([0.5]))) * math.sqrt(pair.log_band(pair.t0_s))
    assert ((read - cell0) / cell0).std() == pytest.approx(want, rel=0.05)
    assert nm.slow_noise_scale == nm.fast_verify_scale == 0.8
    chip.sleep(86400.0)
    nu = chip.true_nu()
    assert np.array_equal(nu[..., 0], nu[..., 1])  # the pair fit: one nu per pair
    got = chip.true_conductances()[..., :2].sum(-1)
    np.testing.assert_allclose(got, g0[..., :2].sum(-1) * ((86400.0 + 300.0) / 300.0) ** -nu[..., 0], rtol=2e-4)


def test_pcm_like_two_device_weights_program_each_device_on_its_own() -> None:
    chip = EmulatedChip("pcm-like", seed=2, device=DEVICE, geometry=GEO)
    w = np.full((GEO.n_cores, GEO.n_rows, GEO.n_cols), -10.0, np.float32)
    chip.program_weights(range(GEO.n_cores), w, devices_per_weight=2)
    g = chip.true_conductances()
    assert g[..., 2].mean() == pytest.approx(5.0, rel=0.01) and g[..., 3].mean() == pytest.approx(5.0, rel=0.01)
    sigma = float(get_model("pcm-like").prog_sigma_us(torch.tensor([5.0])))
    assert g[..., 2].std() == pytest.approx(sigma, rel=0.05)
    assert abs(np.corrcoef(g[..., 2].ravel(), g[..., 3].ravel())[0, 1]) < 0.05


# ---------------------------------------------------------------------- found: averaging reads
def test_averaging_reads_at_one_instant_reduces_only_the_fast_part() -> None:
    chip = chip_at_level("hermes", 0.5, seed=3)
    g = chip.true_conductances()[..., 0].reshape(-1)
    n = 16
    reads = np.stack([read_device0_us(chip) for _ in range(n)])  # 16 x 768 ns apart: one instant
    rel = (reads - g) / g
    q = float(get_model("hermes-1dev").q_s(torch.tensor([0.5])))
    slow, fast = bands(chip, 0.0)
    s_slow, s_fast = chip.preset.noise.slow_noise_scale, chip.preset.noise.fast_verify_scale
    var_slow, var_fast = (q * slow * s_slow) ** 2, (q * fast * s_fast) ** 2
    # one read: both parts; the difference of two reads: the fast part only; the mean of 16: slow + fast / 16
    assert rel[0].var() == pytest.approx(var_slow + var_fast, rel=0.05)
    assert (rel[0] - rel[1]).var() == pytest.approx(2 * var_fast, rel=0.06)
    assert rel.mean(0).var() == pytest.approx(var_slow + var_fast / n, rel=0.05)
    assert rel.mean(0).var() > 0.8 * rel[0].var()  # 1/f noise does not average away (fresh noise would give 1/16)


def test_slow_part_is_kept_within_an_epoch_and_redrawn_after_it() -> None:
    chip = chip_at_level("hermes", 0.5, seed=4)
    t0, frac = chip.preset.noise.t0_s, chip.preset.noise.slow_redraw_frac
    g = chip.true_conductances()[..., 0].reshape(-1)
    r1 = read_device0_us(chip) - g
    chip.sleep(0.5 * frac * t0)  # epoch 0 lasts until t - t_p = frac t0
    g2 = chip.true_conductances()[..., 0].reshape(-1)
    r2 = read_device0_us(chip) - g2
    slow, fast = bands(chip, 0.5 * frac * t0)
    assert np.corrcoef(r1, r2)[0, 1] == pytest.approx(slow**2 / (slow**2 + fast**2), abs=0.03)
    chip.sleep(2 * frac * t0)  # two epochs later
    g3 = chip.true_conductances()[..., 0].reshape(-1)
    r3 = read_device0_us(chip) - g3
    assert abs(np.corrcoef(r1, r3)[0, 1]) < 0.05


def test_verify_reads_and_mvms_see_the_same_slow_part() -> None:
    geo = Geometry(n_cores=2, n_rows=32, n_cols=32)
    over = {**EXACT_ADC, "verify": {"counts_per_us": 1000.0}, "adc": {**EXACT_ADC["adc"], "counter_bits": 24},
            "noise": {"prog_noise_scale": 0.0, "fast_verify_scale": 0.0, "fast_mvm_scale": 0.0}}
    chip = EmulatedChip("hermes", seed=5, device=DEVICE, geometry=geo, overrides=over)
    rng = np.random.default_rng(5)
    target = np.zeros((2, 32, 32, 4), np.float32)
    target[..., 0] = rng.uniform(1.0, 8.0, (2, 32, 32))
    chip.program_conductances([0, 1], target)
    chip.sleep(3600.0)
    c, r, k = grid([0, 1], range(32), range(32))
    g_read = chip.read_devices(c, r, k, 0).reshape(2, 32, 32) / 1000.0
    assert np.array_equal(g_read, chip.read_devices(c, r, k, 0).reshape(2, 32, 32) / 1000.0)  # no fast part
    g_true = chip.true_conductances()[..., 0]
    assert np.abs(g_read / g_true - 1).std() > 0.03  # the slow part is there
    x = rng.integers(-127, 128, (8, 32)).astype(np.int8)
    y = chip.mvm(x).astype(np.float64)
    rest = chip.true_conductances()[..., 1:] * geo.device_sign[1:]
    kk = chip.preset.adc.gain_ghz_per_ua * chip.preset.periphery.v_read_v
    pred = np.einsum("br,crk->cbk", x.astype(np.float64), g_read + rest.sum(-1)) * kk
    # the RESET devices 1-3 carry their own slow noise (~0.01 uS each); reads are rounded to 1 nS
    assert np.abs(y - pred).max() < 1.5 + 0.01 * np.abs(pred).max()


def test_mvms_within_an_epoch_draw_no_slow_noise() -> None:
    """Speed and recurrence: MVMs at one epoch reuse the cached slow part (no full-array draw)."""
    chip = chip_at_level("hermes", 0.4, seed=6)
    x = np.ones((4, GEO.n_rows), np.int8)
    chip.mvm(x)
    state, z = chip._slow_gen.get_state(), chip._z_slow.clone()
    for _ in range(5):
        chip.mvm(x)
        chip.sleep(1.0)
    assert torch.equal(chip._slow_gen.get_state(), state) and torch.equal(chip._z_slow, z)
    chip.sleep(chip.preset.noise.slow_redraw_frac * chip.preset.noise.t0_s)  # into the next epoch
    chip.mvm(x)
    assert not torch.equal(chip._slow_gen.get_state(), state)
    assert (chip._z_slow != z).float().mean() > 0.99


# ---------------------------------------------------------------------- output noise
@pytest.mark.parametrize("recurrence", ["frozen", "per_mvm"])
def test_output_noise_per_column_frozen_or_per_mvm(recurrence: str) -> None:
    quiet = {**EXACT_ADC, "noise": {"read_noise_scale": 0.0, "prog_noise_scale": 0.0}}
    noisy = {**quiet, "noise": {**quiet["noise"], "output_noise_counts": 3.0, "output_noise_recurrence": recurrence}}
    geo = Geometry(n_cores=4, n_rows=32, n_cols=256)
    target = np.zeros((4, 32, 256, 4), np.float32)
    target[..., 0] = 2.0
    x = np.random.default_rng(7).integers(-127, 128, (64, 32)).astype(np.int8)
    outs = []
    for over in (quiet, noisy):
        chip = EmulatedChip("hermes", seed=7, device=DEVICE, geometry=geo, overrides=over)
        chip.program_conductances(range(4), target)
        outs.append((chip.mvm(x).astype(np.float64), chip.mvm(x).astype(np.float64)))
    d1, d2 = outs[1][0] - outs[0][0], outs[1][1] - outs[0][1]
    assert d1.std() == pytest.approx(3.0, rel=0.05)
    if recurrence == "frozen":
        assert np.array_equal(outs[1][0], outs[1][1])
        assert np.abs(d1 - d1[:, :1, :]).max() <= 1.0  # one value per column (up to rounding)
    else:
        assert abs(np.corrcoef(d1.ravel(), d2.ravel())[0, 1]) < 0.03


# ---------------------------------------------------------------------- models and presets
def test_presets_name_their_models_and_refuse_unknown_ones() -> None:
    assert {"hermes-1dev", "hermes-2dev", "pcm-like"} <= set(model_names())
    assert EmulatedChip("hermes", device=DEVICE, geometry=GEO)._model.name == "hermes-1dev"
    assert isinstance(EmulatedChip("hermes", device=DEVICE, geometry=GEO)._pair, DeviceNoiseModel)
    assert EmulatedChip("pcm-like", device=DEVICE, geometry=GEO)._pair is None
    with pytest.raises(ChipInputError, match="unknown physics model 'nope'"):
        EmulatedChip(device=DEVICE, geometry=GEO, overrides={"noise": {"fit": "nope"}})


class _TwiceTheProgrammingNoise(Hermes1Device):
    """A model defined elsewhere than emulator/noise registers by subclassing and naming itself."""

    name = "test-hermes-2x-prog"

    def prog_sigma_us(self, g_target_us: torch.Tensor) -> torch.Tensor:
        return 2 * super().prog_sigma_us(g_target_us)


def test_a_new_model_class_is_usable_by_name() -> None:
    sig = {}
    for fit in ("hermes-1dev", "test-hermes-2x-prog"):
        chip = EmulatedChip("hermes", seed=8, device=DEVICE, geometry=GEO, overrides={"noise": {"fit": fit}})
        target = np.zeros((2, 64, 64, 4), np.float32)
        target[..., 0] = 5.0
        chip.program_conductances([0, 1], target)
        sig[fit] = chip.true_conductances()[..., 0].std()
    assert sig["test-hermes-2x-prog"] == pytest.approx(2 * sig["hermes-1dev"], rel=0.05)


def test_same_seed_same_noise_across_epochs_and_sources_do_not_share_draws() -> None:
    def run(seed: int, **noise: float) -> tuple[np.ndarray, np.ndarray]:
        chip = chip_at_level("hermes", 0.3, seed=seed, noise={"prog_noise_scale": 1.0, **noise})
        x = np.random.default_rng(0).integers(-127, 128, (3, GEO.n_rows)).astype(np.int8)
        outs = [chip.mvm(x)]
        for dt in (5.0, 50.0, 5000.0):
            chip.sleep(dt)
            outs.append(chip.mvm(x))
        return np.stack(outs), chip.true_conductances()

    a, b, c = run(1), run(1), run(2)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    # switching a read-noise source off leaves the programming noise drawn for the same seed alone
    quiet = run(1, slow_noise_scale=0.0, fast_mvm_scale=0.0)
    assert np.array_equal(quiet[1], a[1])

"""Statistical fidelity of the emulator against its preset's formulas (``pytest -m slow``).

At five conductance levels from 0.05 to 1 g_max, with 131,072 devices per level, the emulator's
programming-noise sigma, drift-exponent mean and spread, drift factor after a day and read-noise
magnitude must match the formulas within 5 % relative. Run with ``-s`` to print the table.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from emulator import EmulatedChip
from emulator.statistics import nu_mean, nu_std, q_s, read_noise_time_factor, sigma_prog
from hil import Geometry

LEVELS = (0.05, 0.25, 0.5, 0.75, 1.0)
GEO = Geometry(n_cores=len(LEVELS), n_rows=256, n_cols=128)  # 32,768 cells x 4 devices per level
DAY = 86400.0

pytestmark = pytest.mark.slow


def folded_normal_moments(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and std of |N(mu, sigma)| (nu is drawn as |mu + sigma xi|)."""
    a = mu / sigma
    mean = sigma * np.sqrt(2 / np.pi) * np.exp(-a * a / 2) + mu * (1 - 2 * stats.norm.cdf(-a))
    return mean, float(np.sqrt(mu * mu + sigma * sigma - mean * mean))


def expected_drift_factor(mu: float, sigma: float, log_t: float) -> float:
    """E[exp(-nu log_t)] for nu ~ |N(mu, sigma)|."""
    def integrand(v: float) -> float:
        return np.exp(-v * log_t) * (stats.norm.pdf(v, mu, sigma) + stats.norm.pdf(-v, mu, sigma))
    return integrate.quad(integrand, 0, mu + 12 * sigma)[0]


@pytest.mark.parametrize("preset", ["hermes", "pcm-like"])
def test_device_statistics_match_the_preset_formulas(preset: str) -> None:
    chip = EmulatedChip(preset, seed=11, geometry=GEO)
    nm = chip.preset.noise
    g_max = nm.g_max_us
    target = np.empty((GEO.n_cores, GEO.n_rows, GEO.n_cols, GEO.n_devices), np.float32)
    for i, level in enumerate(LEVELS):
        target[i] = level * g_max
    chip.program_conductances(range(GEO.n_cores), target)
    g_prog = chip.true_conductances()  # no time has passed: the programmed values
    nu = chip.true_nu()
    # Read noise at programming time: draw one noisy read of every device through the verify path model.
    flat = np.arange(target.size)
    with torch.no_grad():
        noisy0 = chip._noisy_read(flat).cpu().numpy().reshape(target.shape)
    chip.sleep(DAY)
    g_day = chip.true_conductances()
    log_t = np.log1p(DAY / nm.t0_s)
    rows = []
    for i, level in enumerate(LEVELS):
        t = torch.tensor([level])
        want_sigma = float(sigma_prog(t, nm))
        mu, sd = float(nu_mean(t, nm)), float(nu_std(t, nm))
        want_nu_mean, want_nu_std = folded_normal_moments(mu, sd)
        want_drift = expected_drift_factor(mu, sd, log_t)
        want_read = float(q_s(torch.from_numpy(g_prog[i][g_prog[i] > 0] / g_max), nm).square().mean().sqrt())
        want_read *= read_noise_time_factor(0.0, nm) * nm.verify_noise_scale
        got_sigma = float(g_prog[i].std())
        got_nu_mean, got_nu_std = float(nu[i].mean()), float(nu[i].std())
        pos = g_prog[i] > 0  # devices clipped at 0 uS by programming noise neither drift nor read-noise
        got_drift = float((g_day[i][pos] / g_prog[i][pos]).mean())
        got_read = float(((noisy0[i][pos] - g_prog[i][pos]) / g_prog[i][pos]).std())
        rows.append((level, want_sigma, got_sigma, want_nu_mean, got_nu_mean, want_nu_std, got_nu_std,
                     want_drift, got_drift, want_read, got_read))
        # Programming noise is clipped at 0 uS; at 0.05 g_max that truncation shifts sigma < 1 %.
        assert got_sigma == pytest.approx(want_sigma, rel=0.05), f"sigma_prog at {level}"
        assert got_nu_mean == pytest.approx(want_nu_mean, rel=0.05), f"nu mean at {level}"
        assert got_nu_std == pytest.approx(want_nu_std, rel=0.05), f"nu std at {level}"
        assert got_drift == pytest.approx(want_drift, rel=0.05), f"drift factor at {level}"
        assert got_read == pytest.approx(want_read, rel=0.05), f"read noise at {level}"
    print(f"\n{preset}: level  sigma_prog(want/got uS)  nu_mean  nu_std  drift_1d  read_noise_rel")
    for r in rows:
        print(f"  {r[0]:4.2f}  {r[1]:.4f}/{r[2]:.4f}  {r[3]:.4f}/{r[4]:.4f}  {r[5]:.4f}/{r[6]:.4f}  "
              f"{r[7]:.4f}/{r[8]:.4f}  {r[9]:.4f}/{r[10]:.4f}")


def test_mvm_read_noise_variance_equals_the_device_level_model() -> None:
    """The per-MVM noise (a matmul of x^2 with device variances) has the variance that sampling every
    device would give: checked on 131,072 output samples."""
    geo = Geometry(n_cores=4, n_rows=256, n_cols=128)
    chip = EmulatedChip(seed=5, geometry=geo, overrides={"adc": {"gain_sigma": 0.0, "nonlinearity_per_ua": 0.0}, "noise": {"mvm_noise_scale": 1.0},
                                                       "numerics": {"matmul_dtype": "float32", "noise_dtype": "float32"}})
    rng = np.random.default_rng(0)
    target = np.zeros((4, 256, 128, 4), np.float32)
    target[..., 0] = rng.uniform(0, 3, (4, 256, 128))
    chip.program_conductances(range(4), target)
    x = rng.integers(-60, 61, (1, 256)).astype(np.int8)
    reps = 256
    ys = np.stack([chip.mvm(np.repeat(x, 1, 0)) for _ in range(reps)]).astype(np.float64)[:, :, 0, :]
    g = chip.true_conductances()
    nm = chip.preset.noise
    sig = g * chip._q.cpu().numpy() * read_noise_time_factor(chip.now(), nm) * nm.mvm_noise_scale
    var_charge = np.einsum("r,crk->ck", x[0].astype(np.float64) ** 2, (sig**2).sum(-1))
    k = chip.preset.adc.gain_ghz_per_ua * chip.preset.periphery.v_read_v
    want = var_charge * k * k + 2 / 12  # two counters, each floored (uniform quantisation error)
    got = ys.var(0, ddof=1)
    ratio = got.mean() / want.mean()
    print(f"\nMVM noise variance: measured/model = {ratio:.4f} over {ys.size} samples")
    assert ratio == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("devices_per_weight", [1, 2])
def test_weight_level_programming_noise_one_and_two_devices(devices_per_weight: int) -> None:
    """The weight-level fast path follows the HERMES 1-device (g_max 10.35 uS) and 2-device
    (g_max 20.7 uS) fits: sigma of G+ - G- within 5 % at five levels, 32,768 weights each."""
    chip = EmulatedChip("hermes", seed=3, geometry=GEO)
    g_max = 10.35 * devices_per_weight
    w = np.empty((GEO.n_cores, GEO.n_rows, GEO.n_cols), np.float32)
    for i, level in enumerate(LEVELS):
        w[i] = level * g_max * (1 if i % 2 else -1)
    chip.program_weights(range(GEO.n_cores), w, devices_per_weight=devices_per_weight)
    g = chip.true_conductances()
    fit = chip.preset.noise.model_copy(update={"fit": "hermes-2dev" if devices_per_weight == 2 else "hermes-1dev",
                                               "g_max_us": g_max})
    for i, level in enumerate(LEVELS):
        dev = slice(0, devices_per_weight) if w[i, 0, 0] >= 0 else slice(2, 2 + devices_per_weight)
        pol = g[i][..., dev].sum(-1)  # the programmed device(s) of the weight's polarity
        want = float(sigma_prog(torch.tensor([level]), fit))
        assert float(pol.std()) == pytest.approx(want, rel=0.05), f"level {level}"
        assert float(pol.mean()) == pytest.approx(level * g_max, rel=0.02)

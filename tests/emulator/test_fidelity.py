"""Statistical fidelity of the emulator against its presets' own formulas (``pytest -m slow``).

Per preset, at 12 conductance levels from 0.05 to 1 g_max with 131,072 devices per level: the
programming-noise sigma, the drift exponent's mean and spread, the drift factor and the read-noise
relative spread of one verify read at 1 s, 1 h and 1 day after programming must each match the
physics model's formulas (``emulator/noise/``) with the preset's scales within 5 % relative. The same
for two-device HERMES weights (131,072 devices = 65,536 weights per level) against the pair fit.
Run with ``-s`` to print the tables.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from emulator import EmulatedChip
from emulator.noise import DeviceNoiseModel, get_model
from emulator.noise.recurrence import band_split
from hil import Geometry, grid

#: Emulator device of these tests: HIL_TEST_DEVICE=cuda runs them on a GPU (tests/benchmarks/gpu_check.sh).
DEVICE = os.environ.get("HIL_TEST_DEVICE", "cpu")

LEVELS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
GEO = Geometry(n_cores=len(LEVELS), n_rows=256, n_cols=128)  # 32,768 cells x 4 devices per level
TIMES = (1.0, 3600.0, 86400.0)
# Verify reads at 1 nS per count, 24-bit counters: quantisation and clipping far below the noise.
FINE = {"verify": {"counts_per_us": 1000.0}, "adc": {"counter_bits": 24}}

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


def want_read_rel(model: DeviceNoiseModel, chip: EmulatedChip, g_prog: np.ndarray, t_since: float, q_factor: float = 1.0) -> float:
    """RMS over devices of the relative read-noise std of one verify read: Q_s(g_p) x
    sqrt((s_slow slow)^2 + (s_fast fast)^2) x s_read, the band split at the device age."""
    nm = chip.preset.noise
    slow, fast = band_split(model, torch.tensor([t_since + model.t0_s], dtype=torch.float64), nm.fast_corner_s)
    q = model.q_s(torch.from_numpy(g_prog / model.g_max_us)).double() * q_factor
    per = float(torch.sqrt((nm.slow_noise_scale * slow) ** 2 + (nm.fast_verify_scale * fast) ** 2))
    return float(q.square().mean().sqrt()) * per * nm.read_noise_scale


def check_level(rows: list, label: str, want: float, got: float) -> None:
    rows.append((label, want, got))
    assert got == pytest.approx(want, rel=0.05), f"{label}: want {want:.5g}, got {got:.5g}"


def print_table(title: str, table: dict[float, list]) -> None:
    labels = [r[0] for r in next(iter(table.values()))]
    print(f"\n{title} (want/got)")
    print("  level  " + "  ".join(f"{lab:>17}" for lab in labels))
    for level, rows in table.items():
        print(f"  {level:5.2f}  " + "  ".join(f"{w:8.4f}/{g:8.4f}" for _, w, g in rows))


@pytest.mark.parametrize("preset", ["hermes", "pcm-like"])
def test_device_statistics_match_the_preset_formulas(preset: str) -> None:
    chip = EmulatedChip(preset, seed=11, device=DEVICE, geometry=GEO, overrides=FINE)
    model = chip._model
    g_max = model.g_max_us
    target = np.empty((GEO.n_cores, GEO.n_rows, GEO.n_cols, GEO.n_devices), np.float32)
    for i, level in enumerate(LEVELS):
        target[i] = level * g_max
    chip.program_conductances(range(GEO.n_cores), target)
    g_prog = chip.true_conductances()  # no time has passed: the programmed values
    nu = chip.true_nu()
    c, r, k, d = (a.reshape(-1) for a in np.meshgrid(*(np.arange(n) for n in target.shape), indexing="ij"))
    start = chip.now()
    reads, truth = {}, {}
    for t in TIMES:
        chip.sleep(start + t - chip.now())
        truth[t] = chip.true_conductances()
        reads[t] = chip.read_devices(c, r, k, d).reshape(target.shape) / chip.preset.verify.counts_per_us
    table = {}
    for i, level in enumerate(LEVELS):
        rows: list = []
        lv = torch.tensor([level])
        check_level(rows, "sigma_prog uS", float(model.prog_sigma_us(lv * g_max)), float(g_prog[i].std()))
        mu, sd = float(model.nu_mean(lv)), float(model.nu_std(lv))
        want_mean, want_std = folded_normal_moments(mu, sd)
        check_level(rows, "nu mean", want_mean, float(nu[i].mean()))
        check_level(rows, "nu std", want_std, float(nu[i].std()))
        pos = g_prog[i] > 0  # devices clipped at 0 uS by programming noise neither drift nor read-noise
        for t in TIMES:
            want = expected_drift_factor(mu, sd, np.log1p(t / model.t0_s))
            check_level(rows, f"drift {t:g}s", want, float((truth[t][i][pos] / g_prog[i][pos]).mean()))
        for t in TIMES:
            got = float(((reads[t][i][pos] - truth[t][i][pos]) / truth[t][i][pos]).std())
            check_level(rows, f"read {t:g}s", want_read_rel(model, chip, g_prog[i][pos], t), got)
        table[level] = rows
    print_table(f"{preset} ({model.name}, {GEO.n_rows * GEO.n_cols * GEO.n_devices} devices per level)", table)


def test_two_device_weights_match_the_pair_fit() -> None:
    geo = Geometry(n_cores=len(LEVELS))  # 65,536 weights = 131,072 devices per level
    chip = EmulatedChip("hermes", seed=12, device=DEVICE, geometry=geo, overrides=FINE)
    pair = get_model("hermes-2dev")
    assert chip._pair.t0_s == 300.0 and chip._pair.g_max_us == pair.g_max_us
    w = np.empty((geo.n_cores, geo.n_rows, geo.n_cols), np.float32)
    for i, level in enumerate(LEVELS):
        w[i] = level * pair.g_max_us * (1 if i % 2 else -1)
    chip.program_weights(range(geo.n_cores), w, devices_per_weight=2)
    g0 = chip.true_conductances()
    nu = chip.true_nu()
    # The weight's two devices read one by one and summed: the opposite polarity's RESET devices
    # (0.1 uS, with their own drift and noise) would blur the pair's figures at low levels.
    c, r, k = grid(range(geo.n_cores), range(geo.n_rows), range(geo.n_cols))
    dev_a = np.repeat(np.where(w[:, 0, 0] >= 0, 0, 2), geo.n_rows * geo.n_cols)
    start = chip.now()
    reads, truth = {}, {}
    for t in TIMES:
        chip.sleep(start + t - chip.now())
        g_t = chip.true_conductances()
        truth[t] = np.where(w[..., None] >= 0, g_t[..., :2], g_t[..., 2:]).sum(-1)
        pair_read = chip.read_devices(c, r, k, dev_a) + chip.read_devices(c, r, k, dev_a + 1)
        reads[t] = pair_read.reshape(w.shape) / chip.preset.verify.counts_per_us
    table = {}
    for i, level in enumerate(LEVELS):
        rows: list = []
        dev = slice(0, 2) if w[i, 0, 0] >= 0 else slice(2, 4)
        g_pair = g0[i][..., dev].sum(-1)
        lv = torch.tensor([level])
        check_level(rows, "sigma_prog uS", float(pair.prog_sigma_us(lv * pair.g_max_us)), float(g_pair.std()))
        assert float(g_pair.mean()) == pytest.approx(level * pair.g_max_us, rel=0.02)
        mu, sd = float(pair.nu_mean(lv)), float(pair.nu_std(lv))
        want_mean, want_std = folded_normal_moments(mu, sd)
        nu_pair = nu[i][..., dev.start]
        check_level(rows, "nu mean", want_mean, float(nu_pair.mean()))
        check_level(rows, "nu std", want_std, float(nu_pair.std()))
        pos = g_pair > 0
        for t in TIMES:
            want = expected_drift_factor(mu, sd, np.log1p(t / pair.t0_s))
            got = float((truth[t][i][pos] / g_pair[pos]).mean())
            check_level(rows, f"drift {t:g}s", want, got)
        for t in TIMES:
            got = float(((reads[t][i][pos] - truth[t][i][pos]) / truth[t][i][pos]).std())
            check_level(rows, f"read {t:g}s", want_read_rel(pair, chip, g_pair[pos], t), got)
        table[level] = rows
    print_table("hermes two-device weights (hermes-2dev pair fit, t0 300 s)", table)


def test_mvm_fast_read_noise_variance_equals_the_device_level_model() -> None:
    """The per-MVM noise (a matmul of x^2 with the devices' fast-part variances) has the variance that
    sampling every device would give: checked on 131,072 output samples at one instant. The fast part
    is scaled up 10 x so that it is well above one ADC count (the floor model needs that)."""
    geo = Geometry(n_cores=4, n_rows=256, n_cols=128)
    chip = EmulatedChip(seed=5, device=DEVICE, geometry=geo, overrides={"adc": {"gain_sigma": 0.0, "nonlinearity_per_ua": 0.0},
                                                       "noise": {"fast_mvm_scale": 10.0},
                                                       "numerics": {"matmul_dtype": "float32", "noise_dtype": "float32"}})
    rng = np.random.default_rng(0)
    target = np.zeros((4, 256, 128, 4), np.float32)
    target[..., 0] = rng.uniform(0, 3, (4, 256, 128))
    chip.program_conductances(range(4), target)
    x = rng.integers(-60, 61, (1, 256)).astype(np.int8)
    reps = 256
    ys = np.stack([chip.mvm(x) for _ in range(reps)]).astype(np.float64)[:, :, 0, :]
    g = chip.true_conductances()
    model, nm = chip._model, chip.preset.noise
    _, fast = band_split(model, torch.tensor([chip.now() + model.t0_s]), nm.fast_corner_s)
    sig = g * chip._q.cpu().numpy() * float(fast) * nm.fast_mvm_scale
    var_charge = np.einsum("r,crk->ck", x[0].astype(np.float64) ** 2, (sig**2).sum(-1))
    k = chip.preset.adc.gain_ghz_per_ua * chip.preset.periphery.v_read_v
    want = var_charge * k * k + 2 / 12  # two counters, each floored (uniform quantisation error)
    got = ys.var(0, ddof=1)
    ratio = got.mean() / want.mean()
    print(f"\nMVM fast-noise variance: measured/model = {ratio:.4f} over {ys.size} samples")
    assert ratio == pytest.approx(1.0, rel=0.05)

"""Behaviour of the emulated chip on small cores (fast, default run)."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from emulator import EmulatedChip
from emulator.statistics import drift_factor
from hil import ChipInputError, Geometry, PulseKind, SafetyLimitError, grid

SMALL = Geometry(n_cores=2, n_rows=32, n_cols=32)
IDEAL = {"noise": {"read_noise_scale": 0.0, "prog_noise_scale": 0.0}, "adc": {"gain_sigma": 0.0, "nonlinearity_per_ua": 0.0}}


def small_chip(seed: int = 0, **kw: object) -> EmulatedChip:
    return EmulatedChip("hermes", seed=seed, geometry=SMALL, **kw)


def signed_targets(rng: np.random.Generator, geo: Geometry = SMALL, scale_us: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Random weights in [-1, 1] and per-device targets: device 0 for positive, 2 for negative."""
    w = rng.uniform(-1, 1, (geo.n_cores, geo.n_rows, geo.n_cols)).astype(np.float32)
    g = np.zeros((*w.shape, geo.n_devices), np.float32)
    g[..., 0] = np.clip(w, 0, None) * scale_us
    g[..., 2] = np.clip(-w, 0, None) * scale_us
    return w, g


def cell_conductance(chip: EmulatedChip) -> np.ndarray:
    g = chip.true_conductances()
    return g[..., 0] + g[..., 1] - g[..., 2] - g[..., 3]


def test_same_seed_same_results_and_different_seed_differs() -> None:
    rng = np.random.default_rng(1)
    _, g = signed_targets(rng)
    x = rng.integers(-127, 128, (5, 32)).astype(np.int8)
    outs = []
    for seed in (3, 3, 4):
        chip = small_chip(seed)
        chip.program_conductances([0, 1], g)
        chip.apply_pulses([0, 1], [2, 3], [4, 5], 1, kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0)
        outs.append((chip.mvm(x), chip.read_devices([0, 1], [2, 3], [4, 5], 1), chip.now()))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2]
    assert not np.array_equal(outs[0][0], outs[2][0])


def test_virtual_clock_sleep_costs_no_wall_time_and_ops_take_chip_time() -> None:
    chip = small_chip()
    start = time.perf_counter()
    chip.sleep(86400.0)
    assert time.perf_counter() - start < 0.1
    assert chip.now() == pytest.approx(86400.0)
    t0 = chip.now()
    chip.mvm(np.zeros((10, 32), np.int8))
    assert chip.now() - t0 == pytest.approx(10 * 520e-9, abs=1e-10)
    t1 = chip.now()
    chip.mvm(np.zeros((4, 32), np.int8), mode="1phase")
    assert chip.now() - t1 == pytest.approx(4 * 133e-9, abs=1e-10)
    # 64 pulses on one core with 32 write heads: 2 slots of (125 + 50) ns.
    t2 = chip.now()
    c, r, k = grid([0], range(8), range(8))
    chip.apply_pulses(c, r, k, 0, kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0)
    assert chip.now() - t2 == pytest.approx(2 * 175e-9, abs=1e-10)


def test_reset_set_and_partial_pulses_behave_physically() -> None:
    chip = small_chip()
    c, r, k = grid([0, 1], range(32), range(32))
    chip.apply_pulses(c, r, k, 0, kind=PulseKind.RESET, amplitude_ua=700.0, width_ns=125.0)
    reset = chip.read_devices(c, r, k, 0)
    assert np.mean(reset < 5) > 0.99  # |G_RESET| < 5 counts on >99 % of cells [NE23]
    chip.apply_pulses(c, r, k, 0, kind=PulseKind.SET, amplitude_ua=125.0, width_ns=250.0)
    g_set = chip.true_conductances()[..., 0]
    assert 11.0 < g_set.mean() < 13.0
    assert np.mean(chip.read_devices(c, r, k, 0) > 50) > 0.99  # SET yield criterion [NE23]
    # A PARTIAL pulse's final state falls with its current (melt-quench from SET).
    means = []
    for amp in (200.0, 400.0, 650.0):
        chip.apply_pulses(c, r, k, 0, kind=PulseKind.SET, amplitude_ua=125.0, width_ns=250.0)
        chip.apply_pulses(c, r, k, 0, kind=PulseKind.PARTIAL, amplitude_ua=amp, width_ns=125.0)
        means.append(chip.true_conductances()[..., 0].mean())
    assert means[0] > means[1] > means[2]
    # Below the target a weak pulse crystallises part of the way up.
    chip.apply_pulses(c, r, k, 0, kind=PulseKind.RESET, amplitude_ua=700.0, width_ns=125.0)
    low = chip.true_conductances()[..., 0].mean()
    chip.apply_pulses(c, r, k, 0, kind=PulseKind.PARTIAL, amplitude_ua=150.0, width_ns=125.0)
    up = chip.true_conductances()[..., 0].mean()
    assert low + 2.0 < up < 11.0


def test_repeated_pulses_on_one_device_apply_in_order() -> None:
    chip = small_chip()
    chip.apply_pulses([0, 0], [1, 1], [1, 1], [0, 0], kind=[PulseKind.SET, PulseKind.RESET], amplitude_ua=[125.0, 700.0], width_ns=[250.0, 125.0])
    assert chip.true_conductances()[0, 1, 1, 0] < 1.0  # RESET came last
    chip.apply_pulses([0, 0], [1, 1], [1, 1], [0, 0], kind=[PulseKind.RESET, PulseKind.SET], amplitude_ua=[700.0, 125.0], width_ns=[125.0, 250.0])
    assert chip.true_conductances()[0, 1, 1, 0] > 5.0  # SET came last


def test_drift_follows_each_devices_own_programming_time() -> None:
    chip = small_chip()
    _, g = signed_targets(np.random.default_rng(2))
    chip.program_conductances([0], g[:1])
    g0 = chip.true_conductances([0])[0]  # just programmed: no drift yet
    chip.sleep(1000.0)
    chip.program_conductances([1], g[1:])
    g1 = chip.true_conductances([1])[0]
    chip.sleep(86400.0)
    nu, t0 = chip.true_nu(), chip.preset.noise.t0_s
    np.testing.assert_allclose(chip.true_conductances([0])[0], g0 * ((87400.0 + t0) / t0) ** -nu[0], rtol=2e-4, atol=1e-6)
    np.testing.assert_allclose(chip.true_conductances([1])[0], g1 * ((86400.0 + t0) / t0) ** -nu[1], rtol=2e-4, atol=1e-6)
    assert 0.01 < nu.mean() < 0.15
    f = drift_factor(torch.tensor([86400.0]), torch.tensor([0.05]), chip.preset.noise)
    assert float(f) == pytest.approx(((86400 + 200) / 200) ** -0.05, rel=1e-5)


def test_read_noise_is_recurrent_and_mvm_is_linear_without_it() -> None:
    rng = np.random.default_rng(3)
    _, g = signed_targets(rng)
    x = rng.integers(-127, 128, (8, 32)).astype(np.int8)
    chip = small_chip(5)
    chip.program_conductances([0, 1], g)
    a, b = chip.mvm(x), chip.mvm(x)
    assert not np.array_equal(a, b)  # fresh noise on every MVM
    c, r, k = grid([0], range(32), range(32))
    assert not np.array_equal(chip.read_devices(c, r, k, 0), chip.read_devices(c, r, k, 0))
    ideal_chip = small_chip(5, overrides=IDEAL)
    ideal_chip.program_conductances([0, 1], g)
    y = ideal_chip.mvm(x).astype(np.float64)
    assert np.array_equal(y, ideal_chip.mvm(x))  # no noise: repeatable
    w = cell_conductance(ideal_chip)
    pre = ideal_chip.preset
    expected = np.einsum("br,crk->cbk", x.astype(np.float64), w) * pre.adc.gain_ghz_per_ua * pre.periphery.v_read_v
    # Each counter floors once: the difference is within 1 count of the ideal (bf16 matmuls allow 1 %).
    assert np.all(np.abs(y - expected) <= 1.0 + 0.01 * np.abs(expected))


def test_adc_saturates_and_counters_clip() -> None:
    geo = Geometry(n_cores=1, n_rows=256, n_cols=4)
    chip = EmulatedChip(seed=0, geometry=geo, overrides=IDEAL)
    g = np.zeros((1, 256, 4, 4), np.float32)
    g[..., 0] = 10.0  # 256 x 10 uS x 0.2 V = 512 uA >> 100 uA
    chip.program_conductances([0], g)
    y = chip.mvm(np.full((1, 256), 127, np.int8))
    # Mean current over the two P windows is clipped at i_sat: counts = A x 100 uA x 256 ns.
    assert np.all(y == int(0.035 * 100.0 * 256))
    chip2 = EmulatedChip(seed=0, geometry=geo, overrides={**IDEAL, "adc": {**IDEAL["adc"], "counter_bits": 8}})
    chip2.program_conductances([0], g)
    assert np.all(chip2.mvm(np.full((1, 256), 127, np.int8)) == 255)


def test_adc_gain_spread_and_one_phase_polarity_asymmetry() -> None:
    chip = EmulatedChip(seed=0, geometry=Geometry(n_cores=16, n_rows=8, n_cols=256))
    gains = chip.adc_gains() / chip.preset.adc.gain_ghz_per_ua
    assert 0.06 < gains.std() < 0.08 and np.abs(gains - 1).max() <= 0.21 + 1e-6
    geo = Geometry(n_cores=1, n_rows=32, n_cols=8)
    chip = EmulatedChip(seed=0, geometry=geo, overrides=IDEAL)
    g = np.zeros((1, 32, 8, 4), np.float32)
    g[..., 0] = 5.0
    chip.program_conductances([0], g)
    pos = chip.mvm(np.full((1, 32), 100, np.int8), mode="1phase")
    neg = chip.mvm(np.full((1, 32), -100, np.int8), mode="1phase")
    a = chip.preset.periphery.polarity_asymmetry
    assert np.all(neg < 0) and np.all(pos > 0)
    np.testing.assert_allclose(pos / -neg, 1 + a, rtol=0.02)


def test_ldpu_affine_relu_and_int8() -> None:
    chip = small_chip(overrides=IDEAL)
    rng = np.random.default_rng(4)
    _, g = signed_targets(rng)
    chip.program_conductances([0, 1], g)
    x = rng.integers(-127, 128, (6, 32)).astype(np.int8)
    scale = rng.uniform(0.1, 0.5, (2, 32))
    offset = rng.uniform(-3, 3, (2, 32))
    chip.set_ldpu([0, 1], scale, offset, relu=[False, True])
    regs = chip.get_ldpu([0, 1])
    assert regs.scale.dtype == np.float16 and np.array_equal(regs.relu, [False, True])
    raw = chip.mvm(x)
    out = chip.mvm(x, output="ldpu")
    assert out.dtype == np.int8
    expect = np.clip(np.round(raw * regs.scale.astype(np.float32)[:, None] + regs.offset.astype(np.float32)[:, None]), -128, 127)
    expect[1] = np.maximum(expect[1], 0)
    assert np.abs(out.astype(int) - expect).max() <= 1  # FP16 rounding between the FMAs


def test_ir_drop_option_attenuates_the_output() -> None:
    geo = Geometry(n_cores=1, n_rows=256, n_cols=4)
    g = np.zeros((1, 256, 4, 4), np.float32)
    g[..., 0] = 1.0
    x = np.full((1, 256), 127, np.int8)
    outs = []
    for ir in (False, True):
        chip = EmulatedChip(seed=0, geometry=geo, overrides={**IDEAL, "periphery": {"ir_drop": ir, "ir_drop_ohm_per_cell": 5.0}})
        chip.program_conductances([0], g)
        outs.append(chip.mvm(x).astype(float))
    assert np.all(outs[1] < 0.95 * outs[0])


def test_subset_of_cores_and_torch_inputs() -> None:
    rng = np.random.default_rng(6)
    _, g = signed_targets(rng)
    chip = small_chip(overrides=IDEAL)
    chip.program_conductances([0, 1], g)
    x = rng.integers(-127, 128, (2, 3, 32)).astype(np.int8)
    both = chip.mvm(x)
    one = chip.mvm(x[1:], cores=[1])
    assert np.array_equal(both[1:], one)
    as_torch = chip.mvm(torch.from_numpy(x))
    assert isinstance(as_torch, torch.Tensor) and np.array_equal(as_torch.numpy(), both)


def test_from_spec_and_presets() -> None:
    chip = EmulatedChip.from_spec("pcm-like,cores=2,rows=16,cols=8", seed=9)
    assert chip.geometry == Geometry(n_cores=2, n_rows=16, n_cols=8)
    assert chip.preset.noise.fit == "pcm-like" and chip.preset.noise.g_max_us == 25.0
    assert chip.info.serial == "seed=9" and chip.info.backend == "emulator"
    with pytest.raises(ChipInputError, match="cores=N"):
        EmulatedChip.from_spec("hermes,banks=3")


def test_full_chip_state_fits_in_one_gib() -> None:
    chip = EmulatedChip(seed=0)
    tensors = [v for v in vars(chip).values() if isinstance(v, torch.Tensor)]
    total = sum(t.numel() * t.element_size() for t in tensors)
    assert chip.geometry.n_cores * chip.geometry.n_rows * chip.geometry.n_cols * 4 == 16_777_216
    assert total < 2**30


# ---------------------------------------------------------------------- bad input leaves state untouched
def _snapshot(chip: EmulatedChip) -> tuple[np.ndarray, float, np.ndarray]:
    return chip.true_conductances(), chip.now(), chip.get_ldpu().scale.copy()


def _rng_states(chip: EmulatedChip) -> list[torch.Tensor]:
    """States of every noise source's generator (programming, slow 1/f, fast 1/f, output)."""
    return [g.get_state() for g in (chip._gen, chip._slow_gen, *chip._noise_gens, *chip._out_gens)]


BAD_CALLS = [
    ("amplitude above limit", lambda c: c.apply_pulses([0], [0], [0], [0], kind=PulseKind.PARTIAL, amplitude_ua=900.0, width_ns=125.0), SafetyLimitError, "800"),
    ("zero width", lambda c: c.apply_pulses([0], [0], [0], [0], kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=0.0), ChipInputError, "width_ns"),
    ("negative width", lambda c: c.apply_pulses([0, 0], [0, 1], [0, 0], [0, 0], kind=2, amplitude_ua=300.0, width_ns=[125.0, -5.0]), ChipInputError, "width_ns"),
    ("NaN amplitude", lambda c: c.apply_pulses([0], [0], [0], [0], kind=2, amplitude_ua=float("nan"), width_ns=125.0), ChipInputError, "amplitude_ua"),
    ("core out of range", lambda c: c.apply_pulses([0, 2], [0, 0], [0, 0], [0, 0], kind=2, amplitude_ua=300.0, width_ns=125.0), ChipInputError, r"core=2.*\[0, 1\]"),
    ("row out of range", lambda c: c.read_devices([0], [32], [0], [0]), ChipInputError, "row=32"),
    ("device out of range", lambda c: c.apply_pulses([0], [0], [0], [4], kind=2, amplitude_ua=300.0, width_ns=125.0), ChipInputError, "device=4"),
    ("unknown pulse kind", lambda c: c.apply_pulses([0], [0], [0], [0], kind=7, amplitude_ua=300.0, width_ns=125.0), ChipInputError, "kind=7"),
    ("float MVM input", lambda c: c.mvm(np.zeros((1, 32), np.float32)), ChipInputError, "dtype float32"),
    ("MVM input 128", lambda c: c.mvm(np.full((1, 32), 128, np.int16)), ChipInputError, "128"),
    ("MVM input -128", lambda c: c.mvm(np.full((1, 32), -128, np.int8)), ChipInputError, "-128"),
    ("MVM wrong width", lambda c: c.mvm(np.zeros((1, 31), np.int8)), ChipInputError, r"\(B, 32\)"),
    ("MVM repeated core", lambda c: c.mvm(np.zeros((2, 1, 32), np.int8), cores=[1, 1]), ChipInputError, "repeats"),
    ("MVM bad mode", lambda c: c.mvm(np.zeros((1, 32), np.int8), mode="2phase"), ChipInputError, "2phase"),
    ("address shapes differ", lambda c: c.apply_pulses([0, 0], [0], [0, 1], [0, 0], kind=2, amplitude_ua=300.0, width_ns=125.0), ChipInputError, "shape"),
    ("LDPU above FP16", lambda c: c.set_ldpu([0], 1e6, 0.0), ChipInputError, "65504"),
    ("negative sleep", lambda c: c.sleep(-1.0), ChipInputError, "seconds=-1.0"),
    ("weights of the wrong shape", lambda c: c.program_weights([0], np.zeros((1, 4, 4)), 2), ChipInputError, "shape"),
    ("three devices per weight", lambda c: c.program_weights([0], np.zeros((1, 32, 32)), 3), ChipInputError, "devices_per_weight"),
    ("conductance above range", lambda c: c.program_conductances([0], np.full((1, 32, 32, 4), 99.0)), ChipInputError, "g_us"),
]


@pytest.mark.parametrize(("what", "call", "exc", "match"), BAD_CALLS, ids=[b[0] for b in BAD_CALLS])
def test_bad_input_is_refused_and_state_untouched(what: str, call, exc: type, match: str) -> None:
    chip = small_chip()
    chip.program_conductances([0, 1], signed_targets(np.random.default_rng(0))[1])
    before, rng_before = _snapshot(chip), _rng_states(chip)
    with pytest.raises(exc, match=match):
        call(chip)
    after = _snapshot(chip)
    assert np.array_equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])
    assert all(torch.equal(x, y) for x, y in zip(rng_before, _rng_states(chip), strict=True))  # no source drew


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"adc": {"gain_sigma": 2.0}}, r"adc.gain_sigma=2.0"),
        ({"periphery": {"v_read_v": 0.9}}, r"periphery.v_read_v=0.9"),
        ({"device": {"set_g_us": -1}}, r"device.set_g_us=-1"),
        ({"adc": {"gain": 1.0}}, r"unknown preset key 'adc.gain'"),
    ],
)
def test_preset_constants_out_of_range_are_refused(overrides: dict, match: str) -> None:
    with pytest.raises(ChipInputError, match=match):
        EmulatedChip(geometry=SMALL, overrides=overrides)


def test_bad_device_and_seed() -> None:
    if not torch.cuda.is_available():
        with pytest.raises(ChipInputError, match="no CUDA"):
            EmulatedChip(geometry=SMALL, device="cuda")
    with pytest.raises(ChipInputError, match="seed"):
        EmulatedChip(geometry=SMALL, seed=-1)

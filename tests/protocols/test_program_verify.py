"""Program-and-verify on small emulated cores: behaviour and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

import hil
from hil import ChipInputError
from protocols.mapping import map_to_conductance
from protocols.program_verify import ProgramVerifyConfig, ProgramVerifyParams, program_verify, program_verify_protocol

from .conftest import conductance_counts, make_chip


def _targets(chip: hil.Chip, gmax: float = 80.0, seed: int = 0) -> np.ndarray:
    g = chip.geometry
    w = np.random.default_rng(seed).uniform(-1, 1, (g.n_cores, g.n_rows, g.n_cols))
    w[:, :4, :] = 0.0  # some zero weights
    return map_to_conductance(w, gmax)[0]


def test_pv_converges_within_the_margin_and_leaves_spare_devices_reset(small_chip) -> None:
    t = _targets(small_chip)
    run = hil.MemoryRunLog()
    st = program_verify(small_chip, [0, 1], t, ProgramVerifyParams(), run)
    assert st.converged.mean() > 0.98
    assert np.all(np.abs(st.read - t)[st.converged] < 5.0)
    truth = conductance_counts(small_chip)
    rel = (truth - t)[t != 0] / 80.0
    assert 0.02 < rel.std() < 0.09  # read noise makes it larger than the margin alone
    g = small_chip.true_conductances()
    pos, neg = t > 0, t < 0
    # ODP: only device 0 (positive) or 2 (negative) is programmed; the others stay RESET (< 1 uS).
    assert np.all(g[..., 1] < 1.0) and np.all(g[..., 3] < 1.0)
    assert np.all(g[..., 2][pos] < 1.0) and np.all(g[..., 0][neg] < 1.0)
    assert np.all(g[:, :4].max(-1) < 1.0)  # zero weights: all four devices RESET
    active = run.column("pv_iterations", "active")
    assert active[0] == t.size and np.all(np.diff(active) <= 0)
    assert st.chip_time_s > 0 and st.chip_time_s == pytest.approx(small_chip.now())


def test_pv_two_devices_per_weight_reaches_tdp_targets() -> None:
    chip = make_chip(seed=5)
    t = _targets(chip, gmax=160.0)
    st = program_verify(chip, [0, 1], t, ProgramVerifyParams(devices_per_weight=2))
    assert st.converged.mean() > 0.97
    big = np.abs(t) > 110  # beyond one device's SET level: both devices of the polarity conduct
    g = chip.true_conductances()
    both = np.where(t > 0, np.minimum(g[..., 0], g[..., 1]), np.minimum(g[..., 2], g[..., 3]))
    assert np.median(both[big]) > 3.0


def test_pv_averaging_reads_lowers_only_the_fast_part_of_the_true_error() -> None:
    # Averaging N verify reads at one instant removes the fast read noise only: the slow 1/f part is
    # correlated over the reads (docs/emulator.md), so with no slow part averaging pays clearly,
    # and with the hermes split it pays little.
    def err(reads: int, **noise: float) -> float:
        chip = make_chip(seed=7, overrides={"noise": noise} if noise else None)
        t = _targets(chip)
        program_verify(chip, [0, 1], t, ProgramVerifyParams(reads_per_verify=reads))
        return float(np.std((conductance_counts(chip) - t)[t != 0]))

    fast_only = {"slow_noise_scale": 0.0, "fast_verify_scale": 1.2}
    assert err(4, **fast_only) < 0.93 * err(1, **fast_only)  # measured 0.90
    assert err(4) > 0.95 * err(1)  # measured 1.01


def test_pv_protocol_summary(small_chip) -> None:
    out = program_verify_protocol(small_chip, ProgramVerifyConfig(eval_inputs=256), hil.MemoryRunLog(seed=2))
    assert out["cores"] == [0, 1] and out["gmax_counts"] == [80.0, 80.0]
    assert out["converged_fraction"] > 0.98
    assert 0 < out["mvm_error"]["linear"] < out["mvm_error"]["total"] < 0.5


@pytest.mark.parametrize(
    ("targets", "match"),
    [
        (np.zeros((2, 32, 31)), r"shape \(2, 32, 31\); expected \(2, 32, 32\)"),
        (np.full((2, 32, 32), np.nan), "non-finite"),
        (np.full((2, 32, 32), np.inf), "non-finite"),
        (np.full((2, 32, 32), 5000.0), r"allowed \[-4095.0, 4095.0\]"),
    ],
)
def test_bad_targets_are_refused_before_any_pulse(small_chip, targets, match) -> None:
    before = small_chip.true_conductances()
    with pytest.raises(ChipInputError, match=match):
        program_verify(small_chip, [0, 1], targets)
    assert small_chip.now() == 0.0
    np.testing.assert_array_equal(small_chip.true_conductances(), before)


@pytest.mark.parametrize(
    ("field", "value"),
    [("margin_counts", 0.0), ("margin_counts", 101.0), ("max_iterations", 0), ("max_iterations", 1001),
     ("reads_per_verify", 0), ("devices_per_weight", 3), ("min_ua", 900.0)],
)
def test_bad_parameters_are_refused_by_the_config(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        ProgramVerifyParams(**{field: value})


def test_inconsistent_currents_and_unknown_keys_are_refused(small_chip) -> None:
    with pytest.raises(ChipInputError, match=r"min_ua=500\.0 must be below max_ua=400\.0"):
        program_verify(small_chip, [0, 1], np.zeros((2, 32, 32)), ProgramVerifyParams(min_ua=500, max_ua=400))
    assert small_chip.now() == 0.0
    with pytest.raises(ValidationError, match="margin"):
        ProgramVerifyConfig(margin=5)

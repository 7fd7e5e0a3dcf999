"""Gradient-descent programming on small emulated cores."""

from __future__ import annotations

import numpy as np
import pytest

import hil
from hil import ChipInputError
from protocols.gdp import GdpConfig, GdpParams, gdp_protocol, gradient_descent_program, level_curve
from protocols.mapping import map_to_conductance
from protocols.metrics import measure_mvm_errors
from protocols.program_verify import ProgramVerifyParams, program_verify

from .conftest import MEDIUM, make_chip

FAST = GdpParams(batch=256, iterations=10)


def _targets(geo: hil.Geometry, seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).uniform(-1, 1, (geo.n_cores, geo.n_rows, geo.n_cols))
    return map_to_conductance(w, 80.0)[0]


@pytest.mark.parametrize("chain", ["eager", "native"])
def test_gdp_after_pv_lowers_the_mvm_error_of_the_same_cores(chain: str) -> None:
    """On either ADC chain (the torch one CI falls back to, and the C one a machine with a compiler uses)."""
    from emulator import native

    if chain == "native" and not native.available():
        pytest.skip(str(native.why_unavailable()))
    chip = make_chip(MEDIUM, seed=11, overrides={"numerics": {"adc_chain": chain}})
    t = _targets(MEDIUM)
    start = program_verify(chip, [0, 1], t)
    pv, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(99), n_inputs=512)
    run = hil.MemoryRunLog()
    res = gradient_descent_program(chip, [0, 1], t, FAST, run, start=start)
    gdp, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(99), n_inputs=512)
    assert np.all(gdp.total < 0.85 * pv.total)
    assert np.all(gdp.linear < 0.7 * pv.linear)
    assert res.loss.shape == (FAST.iterations + 1, 2) and res.loss[-1].mean() < res.loss[0].mean()
    assert res.chip_time_s > 0 and run.column("gdp_steps", "iteration")[-1] == FAST.iterations


def test_gdp_from_scratch_needs_no_single_device_reads() -> None:
    chip = make_chip(MEDIUM, seed=12)
    t = _targets(MEDIUM, seed=1)
    reads = []
    orig = chip.read_devices, chip.read_cells
    chip.read_devices = lambda *a: reads.append("device") or orig[0](*a)  # type: ignore[method-assign]
    chip.read_cells = lambda *a: reads.append("cell") or orig[1](*a)  # type: ignore[method-assign]
    res = gradient_descent_program(chip, [0, 1], t, GdpParams(batch=256, iterations=20))
    assert reads == []
    err, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(5), n_inputs=512)
    assert np.all(err.total < 0.2)
    assert res.loss[0].mean() > 0.5  # it started from the SET state, far from the targets


def test_gdp_protocol_reports_start_and_end(small_chip) -> None:
    cfg = GdpConfig(batch=64, iterations=4, eval_inputs=256)
    out = gdp_protocol(small_chip, cfg, hil.MemoryRunLog(seed=3))
    assert out["start"] == "program-verify" and "program_verify" in out
    assert out["mvm_error"]["total"] < out["mvm_error_start"]["total"]
    assert out["chip_time_s"] > 0 and len(out["alpha"]) == 2


def test_level_curve_is_monotone() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(5, 80, 5000)
    current = 700 - 6 * target + rng.normal(0, 20, 5000)
    t, i = level_curve(target, current, np.ones(5000, dtype=bool))
    assert np.all(np.diff(t) > 0) and np.all(np.diff(i) <= 0)
    assert np.interp(40.0, t, i) == pytest.approx(460.0, abs=15)
    with pytest.raises(ChipInputError, match="converged cells"):
        level_curve(target, current, np.zeros(5000, dtype=bool))


def test_gdp_bad_input_is_refused_before_any_pulse(small_chip) -> None:
    t = _targets(small_chip.geometry)
    with pytest.raises(ChipInputError, match="batch=16 is below the 32 rows"):
        gradient_descent_program(small_chip, [0, 1], t, GdpParams(batch=16))
    with pytest.raises(ChipInputError, match=r"threshold_counts=9\.0 must be below coarse_counts=8\.0"):
        gradient_descent_program(small_chip, [0, 1], t, GdpParams(threshold_counts=9.0))
    bad = t.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ChipInputError, match="non-finite"):
        gradient_descent_program(small_chip, [0, 1], bad, GdpParams(batch=64))
    with pytest.raises(ChipInputError, match="shape"):
        gradient_descent_program(small_chip, [0], t, GdpParams(batch=64))
    assert small_chip.now() == 0.0


def test_gdp_refuses_a_two_device_start(small_chip) -> None:
    t = _targets(small_chip.geometry) * 2
    start = program_verify(small_chip, [0, 1], t, ProgramVerifyParams(devices_per_weight=2))
    now = small_chip.now()
    with pytest.raises(ChipInputError, match="one programming device per polarity"):
        gradient_descent_program(small_chip, [0, 1], t, GdpParams(batch=64), start=start)
    assert small_chip.now() == now


@pytest.mark.slow
def test_gdp_study_subset() -> None:
    """A subset of ``python -m tests.protocols.gdp_study``: GDP at or below P&V on every core, 30 % lower in the median."""
    from .gdp_study import run_case

    cases = ["uniform", "normal-3sigma", "normal-2sigma", "sparse"]
    try:
        import sklearn  # noqa: F401

        cases.append("digits")
    except ImportError:
        pass
    rows = [run_case(case, 1, seed) for case in cases for seed in (0, 1)] + [run_case("normal-3sigma", 4, 0)]
    ratios = np.concatenate([np.asarray(r["gdp"]) / np.asarray(r["pv"]) for r in rows])
    assert np.all(ratios <= 1.0)
    assert np.median(ratios) <= 0.7
    assert all(r["stopped"] != "diverged" for r in rows)

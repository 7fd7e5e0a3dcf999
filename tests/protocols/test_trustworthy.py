"""Trustworthy programming: GDP on Gaussian weights, its divergence guard, cores without weights,
mapping with clipping, and input checks that need no chip."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import hil
from hil import ChipInputError
from protocols.gdp import GdpConfig, GdpParams, gdp_protocol, gradient_descent_program, level_curve
from protocols.gdp import check_inputs as check_gdp_inputs
from protocols.mapping import MappingSpec, below_margin_fraction, map_to_conductance, map_weights
from protocols.metrics import measure_mvm_errors
from protocols.program_verify import ProgramVerifyConfig, program_verify, program_verify_protocol
from protocols.program_verify import check_inputs as check_pv_inputs

from .conftest import MEDIUM, SMALL, make_chip

FAST = GdpParams(batch=256, iterations=10)


def _gaussian_targets(seed: int = 0) -> np.ndarray:
    w = np.random.default_rng(seed).normal(0, 0.3, (MEDIUM.n_cores, MEDIUM.n_rows, MEDIUM.n_cols))
    return map_to_conductance(w, 80.0)[0]


def _finite(obj: Any) -> bool:
    """True if no float anywhere in a (nested) summary is NaN or infinite."""
    if isinstance(obj, dict):
        return all(_finite(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return all(_finite(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


# ------------------------------------------------------------------------------- 1: GDP, Gaussian weights
def test_gdp_lowers_the_error_of_gaussian_weights() -> None:
    # Seed 0 diverged before the fix (0.18 -> 0.96): sub-margin cells' RESET pulses had put 125 uA into
    # the programming curve, so every fine pulse nearly SET a spare device.
    chip = make_chip(MEDIUM, seed=0)
    t = _gaussian_targets(0)
    start = program_verify(chip, [0, 1], t)
    pv, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(9), n_inputs=512)
    res = gradient_descent_program(chip, [0, 1], t, FAST, start=start)
    gdp, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(9), n_inputs=512)
    assert np.all(gdp.total < 0.7 * pv.total)
    assert np.all(res.loss[1] < res.loss[0])  # the very first step already helps
    assert res.summary()["stopped"] == "completed" and not res.restored.any()


def test_pv_marks_only_partial_pulsed_cells_for_the_programming_curve() -> None:
    chip = make_chip(MEDIUM, seed=0)
    t = _gaussian_targets(0)
    st = program_verify(chip, [0, 1], t)
    assert st.partial is not None
    small = np.abs(t) < 5.0
    assert not st.partial[small].any() and st.partial[~small & (st.pulses > 0)].all()


def test_level_curve_is_not_dragged_down_by_one_bad_bin() -> None:
    rng = np.random.default_rng(0)
    target = rng.uniform(5, 80, 5000)
    current = 700 - 6 * target + rng.normal(0, 5, 5000)
    current[target < 8] = 125.0  # a bin of meaningless currents at the low end
    t, i = level_curve(target, current, np.ones(5000, dtype=bool))
    assert np.all(np.diff(i) <= 0)
    assert np.interp(40.0, t, i) == pytest.approx(460.0, abs=15)  # the old running minimum gave 125


# -------------------------------------------------------------------------------- divergence guard
def test_a_bad_step_size_stops_gdp_early_and_returns_no_worse_core() -> None:
    chip = make_chip(MEDIUM, seed=1)
    t = _gaussian_targets(1)
    start = program_verify(chip, [0, 1], t)
    pv, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(9), n_inputs=512)
    run = hil.MemoryRunLog()
    res = gradient_descent_program(chip, [0, 1], t, GdpParams(batch=256, iterations=10, step=5.0), run, start=start)
    out = res.summary()
    assert out["stopped"] == "diverged" and out["stopped_cores"] == ["diverged", "diverged"]
    assert out["gdp_steps"] < FAST.iterations  # stopped early
    assert out["restored_cores"] == [0, 1] and run.column("gdp_restore", "core").tolist() == [0, 1]
    assert np.all(res.loss[-1] <= res.loss[0])  # GDP's own measurement: not worse than the start
    end, _, _ = measure_mvm_errors(chip, np.arange(2), t, np.random.default_rng(9), n_inputs=512)
    assert np.all(end.total <= 1.03 * pv.total)


def test_the_gdp_summary_records_why_it_stopped(small_chip) -> None:
    out = gdp_protocol(small_chip, GdpConfig(batch=64, iterations=4, eval_inputs=256, step=5.0), hil.MemoryRunLog(seed=3))
    assert out["stopped"] == "diverged" and out["restored_cores"] == [0, 1]
    assert out["mvm_error"]["total"] <= 1.05 * out["mvm_error_start"]["total"]
    assert _finite(out)


# ------------------------------------------------------------------------- 2: cores without weights
@pytest.mark.parametrize("protocol", ["gdp", "program-verify"])
def test_cores_without_weights_are_refused_before_any_chip_call(tmp_path, protocol: str) -> None:
    np.save(tmp_path / "w.npy", np.random.default_rng(0).normal(0, 0.3, (32, 16)))
    weights = {"kind": "file", "path": str(tmp_path / "w.npy")}
    chip = make_chip(SMALL)
    if protocol == "gdp":
        cfg, fn = GdpConfig(weights=weights, cores=[0, 1], batch=64, iterations=2), gdp_protocol
    else:
        cfg, fn = ProgramVerifyConfig(weights=weights, cores=[0, 1]), program_verify_protocol
    with pytest.raises(ChipInputError, match=r"cores=\[0, 1\] selects 2 cores.*fills only 1.*cores=\[0\]"):
        fn(chip, cfg, hil.MemoryRunLog(seed=1))
    assert chip.now() == 0.0
    # cores: null selects the cores the matrix fills; the summary holds no NaN.
    out = fn(chip, cfg.model_copy(update={"cores": None}), hil.MemoryRunLog(seed=1))
    assert out["cores"] == [0] and _finite(out)
    assert 0 < out["mvm_error"]["total"] < 0.5


# ------------------------------------------------------------------------------ 3: mapping options
def _heavy_tailed(shape: tuple[int, ...] = (1, 64, 64)) -> np.ndarray:
    w = np.random.default_rng(0).standard_normal(shape)
    w.reshape(-1)[0] = 9.0 * w.std()  # max / std about 9, as in trained layers
    return w


def test_clipping_keeps_small_weights_above_the_margin() -> None:
    w = _heavy_tailed()
    plain, _ = map_weights(w, 80.0)
    assert below_margin_fraction(w, plain, 5.0)[0] > 0.35  # ~40 % of the weights would stay RESET
    sigma, wmax = map_weights(w, 80.0, MappingSpec(clip="sigma", sigmas=3.0))
    assert below_margin_fraction(w, sigma, 5.0)[0] < 0.2
    assert wmax[0, 0] == pytest.approx(3.0 * w[w != 0].std()) and np.abs(sigma).max() == pytest.approx(80.0)
    pct, wmax_p = map_weights(w, 80.0, MappingSpec(clip="percentile", percentile=99.0))
    assert wmax_p[0, 0] == pytest.approx(np.percentile(np.abs(w), 99.0))
    assert np.mean(np.abs(pct) >= 80.0 - 1e-9) == pytest.approx(0.01, abs=0.002)
    np.testing.assert_allclose(map_weights(w, 80.0, MappingSpec())[0], map_to_conductance(w, 80.0)[0])


def test_per_column_mapping_gives_every_column_the_full_range() -> None:
    w = _heavy_tailed() * np.linspace(0.1, 1.0, 64)  # columns of very different scales
    g, wmax = map_weights(w, 80.0, MappingSpec(scale="column"))
    np.testing.assert_allclose(np.abs(g[0]).max(0), 80.0)
    np.testing.assert_allclose(g * wmax[:, None, :] / 80.0, w)  # no clipping: W comes back per column
    g_core, _ = map_weights(w, 80.0)
    assert below_margin_fraction(w, g, 5.0)[0] < below_margin_fraction(w, g_core, 5.0)[0]


def test_mapping_keys_in_the_configs_and_their_effect(small_chip, tmp_path) -> None:
    np.save(tmp_path / "w.npy", _heavy_tailed((32, 32)))
    weights = {"kind": "file", "path": str(tmp_path / "w.npy")}
    plain = program_verify_protocol(make_chip(), ProgramVerifyConfig(weights=weights, eval_inputs=0), hil.MemoryRunLog(seed=1))
    clipped = program_verify_protocol(
        make_chip(), ProgramVerifyConfig(weights=weights, eval_inputs=0, mapping={"clip": "sigma", "sigmas": 3}),
        hil.MemoryRunLog(seed=1))
    assert plain["mapping"]["below_margin_fraction"] > 0.35 > 0.2 > clipped["mapping"]["below_margin_fraction"]
    assert clipped["mapping"]["clipped_fraction"] > 0
    assert GdpConfig(mapping={"clip": "percentile", "percentile": 99.9, "scale": "column"}).mapping.scale == "column"
    with pytest.raises(ValidationError, match="clip"):
        ProgramVerifyConfig(mapping={"clip": "3sigma"})
    with pytest.raises(ValidationError, match="extra"):
        GdpConfig(mapping={"sigma": 3})


# ------------------------------------------------------------------ input checks without a chip
GEO = hil.Geometry(n_cores=2, n_rows=32, n_cols=32)


def _bad_file(tmp_path, kind: str) -> dict[str, Any]:
    path = tmp_path / "w.npy"
    if kind == "nan":
        w = np.ones((32, 32))
        w[3, 4] = np.nan
        np.save(path, w)
    elif kind == "3d":
        np.save(path, np.ones((2, 32, 32)))
    elif kind == "big":
        np.save(path, np.ones((100, 32)))
    elif kind == "zero-tile":
        w = np.ones((64, 32))
        w[32:] = 0
        np.save(path, w)
    return {"kind": "file", "path": str(path)}


@pytest.mark.parametrize("check", [check_gdp_inputs, check_pv_inputs])
@pytest.mark.parametrize(
    ("update", "match"),
    [
        ({"weights": "missing"}, "does not exist"),
        ({"weights": "nan"}, r"non-finite.*\(3, 4\)"),
        ({"weights": "3d"}, r"shape \(2, 32, 32\); expected 2-D"),
        ({"weights": "big"}, "needs 4 cores.*chip has 2"),
        ({"weights": "zero-tile"}, "tile 1 .* all zero"),
        ({"cores": [0, 2]}, r"contains 2; allowed \[0, 1\]"),
        ({"min_ua": 500.0, "max_ua": 400.0}, r"min_ua=500\.0 must be below max_ua=400\.0"),
    ],
)
def test_check_inputs_refuses_data_mistakes_without_a_chip(tmp_path, check, update: dict, match: str) -> None:
    update = dict(update)
    if "weights" in update:
        update["weights"] = _bad_file(tmp_path, update["weights"])
    model = GdpConfig if check is check_gdp_inputs else ProgramVerifyConfig
    if check is check_gdp_inputs and "min_ua" in update:
        update = {"program_verify": update}
    cfg = model.model_validate(update)
    with pytest.raises(ChipInputError, match=match):
        check(cfg, GEO)
    assert issubclass(ChipInputError, ValueError)


def test_check_inputs_refuses_gdp_parameters_that_cannot_work() -> None:
    with pytest.raises(ChipInputError, match="batch=16 is below the 32 rows"):
        check_gdp_inputs(GdpConfig(batch=16), GEO)
    with pytest.raises(ChipInputError, match="devices_per_weight=2"):
        check_gdp_inputs(GdpConfig(program_verify={"devices_per_weight": 2}), GEO)
    with pytest.raises(ChipInputError, match="4 devices per unit cell"):
        check_gdp_inputs(GdpConfig(), hil.Geometry(n_cores=1, n_rows=32, n_cols=32, n_devices=2))
    with pytest.raises(ChipInputError, match="devices_per_weight=2 needs 4 devices"):
        check_pv_inputs(ProgramVerifyConfig(devices_per_weight=2), hil.Geometry(n_cores=1, n_rows=32, n_cols=32, n_devices=2))
    check_gdp_inputs(GdpConfig(), GEO)  # defaults on a 2-core chip are fine
    check_pv_inputs(ProgramVerifyConfig(), GEO)


def test_the_protocols_run_the_checks_before_the_first_chip_call(small_chip, tmp_path) -> None:
    weights = _bad_file(tmp_path, "nan")
    for fn, cfg in ((gdp_protocol, GdpConfig(weights=weights)), (program_verify_protocol, ProgramVerifyConfig(weights=weights))):
        with pytest.raises(ChipInputError, match="non-finite"):
            fn(small_chip, cfg, hil.MemoryRunLog(seed=1))
    assert small_chip.now() == 0.0


def test_pv_summary_says_why_it_stopped(small_chip) -> None:
    out = program_verify_protocol(small_chip, ProgramVerifyConfig(eval_inputs=256, max_iterations=1), hil.MemoryRunLog(seed=2))
    assert out["stopped"] == "max_iterations" and _finite(out)

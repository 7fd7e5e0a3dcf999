"""Drift measurement: read schedule, nu fit, agreement with the emulator's true nu."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

import hil
from hil import ChipInputError
from protocols.drift import DriftConfig, check_read_times, drift_protocol, fit_nu, measure_drift

from .conftest import make_chip


def test_fit_nu_recovers_an_exact_power_law_and_its_time_offset() -> None:
    t = np.geomspace(30, 3e5, 16)
    nu = np.array([0.02, 0.05, 0.1])
    g = 60.0 * ((t[:, None] + 200.0) / 200.0) ** -nu - 0.5  # fit_nu adds half a count back
    fitted, _, _ = fit_nu(t, g, 200.0)
    np.testing.assert_allclose(fitted, nu, atol=1e-9)
    fitted2, _, off2 = fit_nu(t, g, "fit")
    assert off2 == pytest.approx(200.0, rel=0.05)
    np.testing.assert_allclose(fitted2, nu, atol=2e-3)
    low = np.concatenate([g, np.full((16, 1), 1.0)], axis=1)  # a device below min_counts: not fitted
    assert np.isnan(fit_nu(t, low, 200.0, min_counts=2.0)[0][-1])


def test_drift_protocol_nu_agrees_with_the_true_nu() -> None:
    chip = make_chip(hil.Geometry(n_cores=1, n_rows=64, n_cols=64), seed=31)
    cfg = DriftConfig(levels_counts=[10, 40, 80], read_times_s=list(np.geomspace(60, 4 * 86400, 12)))
    run = hil.MemoryRunLog()
    out = measure_drift(chip, cfg, run)
    true = chip.true_nu([0])[..., 0]  # ground truth, used only to judge
    nu = out["nu"]
    ok = np.isfinite(nu)
    assert ok.mean() > 0.97
    assert np.corrcoef(nu[ok], true[ok])[0, 1] > 0.9
    li = np.broadcast_to(out["level_index"], nu.shape)
    for i, level in enumerate(out["levels"]):
        m = ok & (li == i)
        assert abs(level["nu_mean"] - true[m].mean()) < 0.004
    assert out["levels"][0]["nu_mean"] > out["levels"][2]["nu_mean"]  # low conductance drifts faster
    times = run.column("drift_reads", "time_s")
    np.testing.assert_allclose(times, cfg.read_times_s, rtol=1e-6)
    assert chip.now() > 4 * 86400


def test_drift_protocol_summary_is_json_sized(small_chip) -> None:
    out = drift_protocol(small_chip, DriftConfig(read_times_s=[100.0, 1000.0, 10000.0], reads_per_point=2),
                         hil.MemoryRunLog())
    assert "nu" not in out and len(out["levels"]) == 5 and out["fitted_fraction"] > 0.9


@pytest.mark.parametrize(
    ("times", "match"),
    [([10.0, 10.0, 20.0], "not strictly increasing: 10.0 is followed by 10.0"),
     ([100.0, 50.0], "not strictly increasing"),
     ([-1.0, 10.0], "contains -1.0"),
     ([float("nan"), 10.0], "contains nan"),
     ([10.0], "at least 2 times")],
)
def test_bad_read_times(times: list[float], match: str) -> None:
    with pytest.raises(ChipInputError, match=match):
        check_read_times(times)
    with pytest.raises(ValidationError, match="read_times_s"):
        DriftConfig(read_times_s=times)


def test_bad_read_times_stop_before_any_pulse(small_chip) -> None:
    cfg = DriftConfig.model_construct(**{**DriftConfig().model_dump(), "read_times_s": [100.0, 10.0]})
    with pytest.raises(ChipInputError, match="strictly increasing"):
        measure_drift(small_chip, cfg)
    assert small_chip.now() == 0.0


def test_bad_levels_and_offsets() -> None:
    with pytest.raises(ValidationError, match="levels_counts"):
        DriftConfig(levels_counts=[])
    with pytest.raises(ValidationError, match="levels_counts"):
        DriftConfig(levels_counts=[10, -5])
    with pytest.raises(ValidationError, match="time_offset_s"):
        DriftConfig(time_offset_s=-3.0)

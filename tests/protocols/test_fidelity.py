"""Statistical checks of the protocols on full 256 x 256 cores of the ``hermes`` emulator (opt in: -m slow).

The emulator's ground truth (true conductances, true nu) is used only to judge the protocols.
"""

from __future__ import annotations

import numpy as np
import pytest

import hil
from protocols.calibration import CalibrationConfig, calibration_protocol
from protocols.drift import DriftConfig, measure_drift
from protocols.gdp import GdpParams, gradient_descent_program
from protocols.mapping import map_to_conductance
from protocols.metrics import measure_mvm_errors, weight_error
from protocols.program_verify import ProgramVerifyParams, program_verify

from .conftest import conductance_counts, make_chip

pytestmark = pytest.mark.slow
FULL2 = hil.Geometry(n_cores=2)


def _targets(n: int, seed: int = 0) -> np.ndarray:
    return map_to_conductance(np.random.default_rng(seed).uniform(-1, 1, (n, 256, 256)), 80.0)[0]


def test_pv_weight_error_spread() -> None:
    # HERMES-Core reports 4.8-5.3 % [JSSC22]; the emulator gives 5.1 % with single verify reads. The
    # slow 1/f part is correlated over the reads of one check, so two averaged reads gain little.
    out = {}
    for reads in (1, 2):
        chip = make_chip(FULL2, seed=3)
        t = _targets(2)
        st = program_verify(chip, [0, 1], t, ProgramVerifyParams(reads_per_verify=reads))
        assert st.converged.mean() > 0.998
        out[reads] = weight_error(conductance_counts(chip), t, 80.0)["std"]
    print(f"P&V weight error spread: 1 read {out[1]:.4f}, 2 reads {out[2]:.4f}")
    assert 0.048 < out[1] < 0.054
    assert 0.045 < out[2] < out[1]


def test_gdp_beats_pv_on_the_same_core() -> None:
    errs = {}
    for method in ("pv", "gdp"):
        chip = make_chip(hil.Geometry(n_cores=1), seed=4)
        t = _targets(1, seed=1)
        st = program_verify(chip, [0], t)
        if method == "gdp":
            gradient_descent_program(chip, [0], t, GdpParams(), start=st)
        errs[method], _, _ = measure_mvm_errors(chip, np.arange(1), t, np.random.default_rng(9), n_inputs=2048)
    assert errs["gdp"].total[0] < 0.7 * errs["pv"].total[0]
    assert errs["gdp"].linear[0] < 0.5 * errs["pv"].linear[0]


def test_calibration_reaches_the_ideal_adc_and_gdc_helps_after_a_day() -> None:
    cfg = CalibrationConfig(drift_times_s=[86400.0], eval_inputs=2048)
    out = {}
    for name, ov in (("spread", None), ("ideal", {"adc": {"gain_sigma": 0.0}})):
        out[name] = calibration_protocol(make_chip(FULL2, seed=5, overrides=ov), cfg, hil.MemoryRunLog(seed=1))
    s, i = out["spread"], out["ideal"]
    assert s["before"]["total"] - s["after"]["total"] > 0.012
    assert abs(s["after"]["total"] - i["after"]["total"]) < 0.005
    assert abs(s["after"]["total"] - i["before"]["total"]) < 0.005
    day = s["drift"][0]
    assert day["with_gdc"]["total"] < 0.9 * day["without_gdc"]["total"]


def test_drift_nu_matches_the_true_nu_on_a_full_core() -> None:
    chip = make_chip(hil.Geometry(n_cores=1), seed=6)
    out = measure_drift(chip, DriftConfig())
    nu, true = out["nu"], chip.true_nu([0])[..., 0]
    ok = np.isfinite(nu)
    assert ok.mean() > 0.99
    # Correlated (slow) 1/f read noise is common to reads close in log-time, so per-device fits are
    # noisier than with fresh noise on every read (0.996 before the noise split); 0.971 measured.
    assert np.corrcoef(nu[ok], true[ok])[0, 1] > 0.96
    li = np.broadcast_to(out["level_index"], nu.shape)
    for k, level in enumerate(out["levels"]):
        assert abs(level["nu_mean"] - true[ok & (li == k)].mean()) < 0.001
        assert abs(level["nu_std"] - true[ok & (li == k)].std()) < 0.002

"""Calibration of programmed cores: LDPU affine per column, input and conductance ranges, drift.

* **Per-column ADC/LDPU affine calibration** ([JSSC22] ADC calibration and LDPU, [NE23]): known random inputs X
  go through the programmed core; for each column c the raw counts are fitted by least squares as
  ``y_c ~ a_c (X T)_c + b_c`` with T the intended targets (counts). The LDPU registers get
  ``scale_c = s_out / a_c`` and ``offset_c = -b_c s_out / a_c`` so that the INT8 LDPU output is
  ``s_out (X T)_c``: the per-ADC gain spread (7 % on HERMES), offsets and any per-column scale
  error of the programmed conductances are removed. ``s_out`` (LDPU LSB per unit of X T) maps the
  ``output_percentile`` of |X T| to ``output_max`` LSB (ASSUMPTION: 99.9 % -> 120 leaves headroom
  below the INT8 clip at 127). ASSUMPTION: HERMES calibrates its ADCs with known currents, which
  the :class:`hil.Chip` interface cannot inject; known inputs on known programmed targets are the
  equivalent this interface offers.
* **Input (DAC) range** per core [PTO24 Alg. 1]: the ``percentile`` of |observed inputs| becomes
  full scale (127 PWM LSB); larger inputs clip.
* **Conductance range per column** [PTO24 Alg. 1]: with observed inputs, the bit-line current
  I of each column (4-phase window currents, :func:`protocols.mapping.bitline_currents_ua`) has
  mean mu and std sigma; if ``I_P = mu + L sigma`` exceeds the ADC saturation current I_S the
  column's Gmax is scaled by I_S / I_P (floored at ``min_fraction`` Gmax - the paper prints
  ``min(G_max I_S / I_P, G_min)``, read here as a floor). L is not published; 3 is this project's
  choice (ASSUMPTION).
* **Global drift compensation** ([JOSHI20] Methods E, [AIHW]
  GlobalDriftCompensation): right after programming, a fixed reference input set gives the
  reference readout r0 = mean |y| per core; later, ``alpha = r0 / r(t)`` rescales the core's LDPU
  scale registers (one factor per core, as [NE23] "per-core rescaling"). Re-run it at any time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.arguments import MAX_SLEEP_S
from hil.chip import INPUT_MAX, Chip
from hil.errors import ChipInputError
from hil.protocol import RunLog, register_protocol
from protocols.gdp import GdpParams, gradient_descent_program
from protocols.mapping import COUNTS_PER_US, WeightSpec, bitline_currents_ua, resolve_cores
from protocols.metrics import MvmErrors, chip_mvm, mvm_errors, random_inputs
from protocols.program_verify import ProgramVerifyParams, log_cells, prepare_targets, program_verify
from protocols.program_verify import inputs as weight_inputs

#: Largest LDPU register magnitude (FP16).
FP16_MAX = 65504.0


# ------------------------------------------------------------------------------ LDPU affine per column
@dataclass(frozen=True)
class ColumnCalibration:
    """Fitted per-column affine of raw counts vs ideal output, and the LDPU registers written.

    ``gain``/``offset_counts``: (n, cols) with counts = gain * (X T) + offset; ``out_scale``: (n,)
    LDPU LSB per unit of X T; ``scale``/``offset``: (n, cols) register values (before FP16 rounding).
    """

    cores: np.ndarray
    gain: np.ndarray
    offset_counts: np.ndarray
    out_scale: np.ndarray
    scale: np.ndarray
    offset: np.ndarray


def fit_columns(x: np.ndarray, y: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares ``y[n, :, c] ~ a[n, c] (x @ targets[n])[:, c] + b[n, c]``; returns (a, b)."""
    y_fp = np.matmul(x.astype(np.float64), targets)
    mf, my = y_fp.mean(1, keepdims=True), y.mean(1, keepdims=True)
    cov = ((y_fp - mf) * (y - my)).sum(1)
    var = ((y_fp - mf) ** 2).sum(1)
    dead = var <= 0
    a = np.where(dead, 1.0, cov / np.where(dead, 1.0, var))
    b = my[:, 0] - a * mf[:, 0]
    return a, b


def calibrate_columns(
    chip: Chip,
    cores: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    *,
    n_inputs: int = 2048,
    output_percentile: float = 99.9,
    output_max: float = 120.0,
    out_scale: Any = None,
    input_sparsity: float = 0.3,
) -> ColumnCalibration:
    """Fit and write per-column LDPU affine registers of ``cores`` (see the module docstring).

    ``out_scale``: LDPU LSB per unit of X T per core (scalar or (n,)), or None to derive it from
    ``output_percentile``/``output_max``. Columns whose fitted gain is not positive (no signal) keep
    the gain of the core's median column.
    """
    if not 0 < output_percentile <= 100:
        raise ChipInputError(f"output_percentile={output_percentile}; allowed (0, 100].")
    if not 0 < output_max <= 127:
        raise ChipInputError(f"output_max={output_max}; allowed (0, 127] (INT8 LDPU output).")
    if n_inputs < 2:
        raise ChipInputError(f"n_inputs={n_inputs}; need at least 2 inputs to fit a gain and an offset.")
    x = random_inputs(rng, n_inputs, chip.geometry.n_rows, input_sparsity)
    y = chip_mvm(chip, x, cores)
    a, b = fit_columns(x, y, targets)
    med = np.median(np.where(a > 0, a, np.nan), axis=1, keepdims=True)
    med = np.where(np.isfinite(med), med, 1.0)
    bad = ~(a > 0)
    a = np.where(bad, np.broadcast_to(med, a.shape), a)
    b = np.where(bad, 0.0, b)
    if out_scale is None:
        y_fp = np.abs(np.matmul(x.astype(np.float64), targets)).reshape(len(cores), -1)
        top = np.percentile(y_fp, output_percentile, axis=1)
        s_out = output_max / np.where(top > 0, top, 1.0)
    else:
        s_out = np.broadcast_to(np.asarray(out_scale, dtype=np.float64), (len(cores),)).copy()
    scale = s_out[:, None] / a
    offset = -b * scale
    if np.abs(scale).max() > FP16_MAX or np.abs(offset).max() > FP16_MAX:
        raise ChipInputError(
            f"calibrated LDPU registers reach {max(np.abs(scale).max(), np.abs(offset).max()):.3g}, above the "
            f"FP16 limit {FP16_MAX}; the core has (almost) no signal - is it programmed?"
        )
    chip.set_ldpu(cores, scale, offset)
    return ColumnCalibration(np.asarray(cores), a, b, s_out, scale, offset)


# ------------------------------------------------------------------------------ input and conductance ranges
def input_ranges(samples: Any, percentile: float = 99.99, axis: Any = None) -> np.ndarray:
    """Input range X_r: the ``percentile`` of |samples| (over ``axis``; None: all values, one range).

    For per-core ranges pass samples shaped (n_cores, n_samples, n_in) and ``axis=(1, 2)``.
    """
    arr = np.asarray(samples, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ChipInputError("input samples must be a non-empty array of finite numbers.")
    if not 0 < percentile <= 100:
        raise ChipInputError(f"percentile={percentile}; allowed (0, 100].")
    r = np.percentile(np.abs(arr), percentile, axis=axis)
    return np.where(r > 0, r, 1.0)


def quantize_inputs(x: Any, x_range: Any) -> np.ndarray:
    """Signed PWM codes ``clip(round(127 x / x_range), -127, 127)`` as int8."""
    xr = np.asarray(x_range, dtype=np.float64)
    if np.any(~np.isfinite(xr)) or np.any(xr <= 0):
        raise ChipInputError(f"x_range={xr!r} must be positive and finite.")
    q = np.round(np.asarray(x, dtype=np.float64) / xr * INPUT_MAX)
    return np.clip(q, -INPUT_MAX, INPUT_MAX).astype(np.int8)


def column_gmax(
    targets: np.ndarray,
    x: np.ndarray,
    gmax_counts: Any,
    *,
    i_sat_ua: float = 100.0,
    n_sigma: float = 3.0,
    min_fraction: float = 0.25,
    v_read_v: float = 0.2,
    counts_per_us: float = COUNTS_PER_US,
) -> np.ndarray:
    """Per-column Gmax [counts] bounded by ADC saturation [PTO24 Alg. 1] (see the module docstring).

    ``targets``: (n, rows, cols) counts mapped with ``gmax_counts`` (scalar or (n,)); ``x``: observed
    inputs (B, rows) as PWM codes. Returns (n, cols).
    """
    if not 0 < min_fraction <= 1:
        raise ChipInputError(f"min_fraction={min_fraction}; allowed (0, 1].")
    cur = bitline_currents_ua(targets, x, v_read_v=v_read_v, counts_per_us=counts_per_us)  # (n, B, cols)
    mu, sd = cur.mean(1), cur.std(1)
    i_p = mu + n_sigma * sd
    gm = np.broadcast_to(np.asarray(gmax_counts, dtype=np.float64), (targets.shape[0],))[:, None]
    factor = np.where(i_p > i_sat_ua, i_sat_ua / np.maximum(i_p, 1e-12), 1.0)
    return gm * np.maximum(factor, min_fraction)


# ------------------------------------------------------------------------------ global drift compensation
@dataclass
class GlobalDriftCompensation:
    """Per-core global drift compensation from a reference readout (re-run :meth:`apply` any time).

    ``x_ref``: the fixed reference inputs (B, rows); ``reference``: r0 per core (mean |counts|);
    ``base_scale``/``base_offset``: the LDPU registers at the time of the reference.
    """

    cores: np.ndarray
    x_ref: np.ndarray
    reference: np.ndarray
    base_scale: np.ndarray
    base_offset: np.ndarray

    @classmethod
    def record(cls, chip: Chip, cores: np.ndarray, rng: np.random.Generator, n_inputs: int = 256) -> GlobalDriftCompensation:
        """Measure the reference readout now (right after programming and calibration)."""
        x = random_inputs(rng, n_inputs, chip.geometry.n_rows, 0.0)
        regs = chip.get_ldpu(cores)
        r0 = readout(chip, cores, x)
        if np.any(r0 <= 0):
            raise ChipInputError(f"reference readout is zero on cores {np.asarray(cores)[r0 <= 0].tolist()}; program them first.")
        return cls(np.asarray(cores), x, r0, regs.scale.astype(np.float64), regs.offset.astype(np.float64))

    def alpha(self, chip: Chip) -> np.ndarray:
        """Compensation factor r0 / r(now) per core."""
        return self.reference / np.maximum(readout(chip, self.cores, self.x_ref), 1e-12)

    def apply(self, chip: Chip) -> np.ndarray:
        """Measure alpha and write scale = base_scale x alpha into the LDPU registers; returns alpha."""
        a = self.alpha(chip)
        chip.set_ldpu(self.cores, self.base_scale * a[:, None], self.base_offset)
        return a


def readout(chip: Chip, cores: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Mean |raw counts| per core for inputs ``x``."""
    return np.abs(chip_mvm(chip, x, cores)).mean(axis=(1, 2))


# ------------------------------------------------------------------------------ protocol
class CalibrationConfig(BaseModel):
    """Program weights, calibrate the LDPU per column, record and test global drift compensation."""

    model_config = ConfigDict(extra="forbid")

    cores: list[int] | None = Field(None, description="cores (null: all)")
    weights: WeightSpec = Field(default_factory=WeightSpec, description="target weights")
    gmax_counts: float | None = Field(None, gt=0.0, le=400.0, description="Gmax [counts]; null: 80 per device")
    bitline_limit_ua: float | None = Field(
        None, gt=0.0, le=1000.0, description="lower Gmax per core to keep BL currents below this [uA]"
    )
    programming: Literal["program-verify", "gdp"] = Field("program-verify", description="how to program the weights first")
    program_verify: ProgramVerifyParams = Field(default_factory=ProgramVerifyParams)
    gdp: GdpParams = Field(default_factory=GdpParams)
    conductance_range: bool = Field(False, description="scale each column's Gmax by the ADC saturation bound first")
    saturation_ua: float = Field(100.0, gt=0.0, le=1000.0, description="ADC saturation current I_S [uA]")
    saturation_sigmas: float = Field(3.0, gt=0.0, le=10.0, description="L of I_P = mu + L sigma")
    calibration_inputs: int = Field(2048, ge=16, le=65536, description="random MVMs for the affine fit")
    output_percentile: float = Field(99.9, gt=0.0, le=100.0, description="percentile of |X T| mapped to output_max")
    output_max: float = Field(120.0, gt=0.0, le=127.0, description="LDPU LSB at that percentile")
    gdc_inputs: int = Field(256, ge=1, le=65536, description="reference inputs of the drift compensation")
    drift_times_s: list[float] = Field(default_factory=list, description="times after calibration to test GDC [s]")
    eval_inputs: int = Field(1024, ge=256, le=65536, description="random MVMs per error measurement")


def _errors(chip: Chip, cores: np.ndarray, targets: np.ndarray, x: np.ndarray, output: str, scale: Any) -> MvmErrors:
    return mvm_errors(x, chip_mvm(chip, x, cores, output=output), targets, scale)


def _log_err(run: RunLog, stage: str, t: float, errs: MvmErrors, cores: np.ndarray) -> dict[str, float]:
    run.log("mvm_error", stage=np.array([stage] * cores.size), time_s=np.full(cores.size, t), core=cores,
            total=errs.total, linear=errs.linear, residual=errs.residual)
    return errs.summary()


def plots(run_file: Any, out_dir: Any) -> list[Any]:
    """Figures of a calibration run (see :mod:`protocols.plots`)."""
    from protocols.plots import calibration_plots

    return calibration_plots(run_file, out_dir)


def check_inputs(config: CalibrationConfig, geometry: Any, inputs: Any = None) -> None:
    """Config checks of ``calibration`` before any chip call: drift times, cores and the weight source."""
    times = np.asarray(config.drift_times_s, dtype=float)
    bad = times.size and (np.any(~np.isfinite(times)) or np.any(times <= 0) or np.any(np.diff(times) <= 0)
                          or np.any(times > MAX_SLEEP_S))
    if bad:
        raise ChipInputError(
            f"drift_times_s={config.drift_times_s} must be positive, strictly increasing and at most {MAX_SLEEP_S:g} [s]."
        )
    resolve_cores(config.cores, config.weights, geometry, (inputs or {}).get("weights"))


@register_protocol("calibration", CalibrationConfig, plots=plots, deterministic=True, inputs=weight_inputs,
                   check=check_inputs)
def calibration_protocol(chip: Chip, config: CalibrationConfig, run: RunLog) -> dict[str, Any]:
    """Per-column LDPU affine calibration and global drift compensation of programmed cores."""
    check_inputs(config, chip.geometry, run.inputs)
    times = np.asarray(config.drift_times_s, dtype=float)
    cores, targets, gmax = prepare_targets(chip, config, run, config.program_verify.devices_per_weight)
    programmed = targets
    out: dict[str, Any] = {"cores": cores.tolist(), "gmax_counts": gmax.tolist()}
    if config.conductance_range:
        x_obs = random_inputs(run.rng("observed-inputs"), config.eval_inputs, chip.geometry.n_rows, 0.3)
        col = column_gmax(targets, x_obs, gmax, i_sat_ua=config.saturation_ua, n_sigma=config.saturation_sigmas)
        programmed = targets * (col / gmax[:, None])[:, None, :]
        run.log("column_gmax", core=cores, gmax_counts=col)
        out["column_gmax_mean"] = float(col.mean())
    if config.programming == "program-verify":
        state = program_verify(chip, cores, programmed, config.program_verify, run)
    else:
        state = gradient_descent_program(chip, cores, programmed, config.gdp, run,
                                         set_params=config.program_verify).program
    log_cells(run, state)
    out["programming"] = state.summary(gmax)

    x_eval = random_inputs(run.rng("eval"), config.eval_inputs, chip.geometry.n_rows, 0.3)
    t0 = chip.now()
    out["before"] = _log_err(run, "before", 0.0, _errors(chip, cores, targets, x_eval, "adc", None), cores)
    wall = time.perf_counter()
    cal = calibrate_columns(chip, cores, targets, run.rng("calibration"), n_inputs=config.calibration_inputs,
                            output_percentile=config.output_percentile, output_max=config.output_max)
    out["calibration_wall_s"] = time.perf_counter() - wall
    run.log("ldpu", core=cores, gain=cal.gain, offset_counts=cal.offset_counts, out_scale=cal.out_scale,
            scale=cal.scale, offset=cal.offset)
    out["adc_gain_spread"] = float(np.mean(np.std(cal.gain, axis=1) / np.mean(cal.gain, axis=1)))
    out["after"] = _log_err(run, "after", 0.0, _errors(chip, cores, targets, x_eval, "ldpu", cal.out_scale), cores)
    gdc = GlobalDriftCompensation.record(chip, cores, run.rng("gdc"), config.gdc_inputs)
    drift: list[dict[str, Any]] = []
    run.declare("gdc", x="time_s", units={"time_s": "s", "alpha": "1"},
                long_names={"time_s": "time after calibration", "alpha": "global drift compensation factor"})
    for t in times:
        chip.sleep(max(0.0, t0 + t - chip.now()))
        chip.set_ldpu(cores, gdc.base_scale, gdc.base_offset)
        before = _log_err(run, "drift", t, _errors(chip, cores, targets, x_eval, "ldpu", cal.out_scale), cores)
        alpha = gdc.apply(chip)
        after = _log_err(run, "drift+gdc", t, _errors(chip, cores, targets, x_eval, "ldpu", cal.out_scale), cores)
        run.log("gdc", time_s=np.full(cores.size, t), core=cores, alpha=alpha)
        drift.append({"time_s": float(t), "alpha_mean": float(alpha.mean()), "without_gdc": before, "with_gdc": after})
    out["drift"] = drift
    return out

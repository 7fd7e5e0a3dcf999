"""Drift measurement: program devices to conductance levels, read them at log-spaced times, fit nu.

Law [NE23 IV; JOSHI20]: G(t) = G(t_ref) ((t + t_off) / (t_ref + t_off)) ** -nu, t counted from the end
of programming. Steps:

1. Program the devices: device 0 of every unit cell of the selected cores gets one of ``levels_counts``
   (cell k gets level k mod n_levels) by program-and-verify (one device per weight, the other
   three RESET), so a verify read of device 0 is the device itself.
2. At each of ``read_times_s`` (seconds after programming; strictly increasing) sleep until then
   (virtual on the emulator, a real wait on hardware; a late start - e.g. after ``hil resume`` - reads
   immediately and logs the true time), read device 0 of every cell ``reads_per_point`` times and
   log the mean counts. Each read point is its own row of stream ``drift_reads``, so a run of days
   loses at most the point in progress when the controlling process dies.
3. Fit per device by least squares in log-log: ln(G + 0.5) = a - nu ln(t + t_off). The half count
   undoes the floor of the ADC counter (ASSUMPTION). ``time_offset_s``: a fixed t_off, or ``"fit"`` to
   choose the one t_off (shared by all devices, from a log grid) that minimises the total squared
   residual - the measured times start at the end of programming, while a device's drift clock may
   effectively start earlier (ASSUMPTION; the emulator's aihwkit law uses t_off = t0 = 200 s).
   Devices that ever read below ``min_counts`` are not fitted (nu NaN): quantisation dominates there.
4. Report nu mean, std, median and count per level.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from hil.arguments import MAX_SLEEP_S
from hil.chip import Chip
from hil.errors import ChipInputError
from hil.protocol import MemoryRunLog, RunLog, register_protocol
from protocols.mapping import select_cores
from protocols.program_verify import ProgramVerifyParams, program_verify


def default_read_times() -> list[float]:
    """24 log-spaced read times from 30 s to 4 days [s]."""
    return [float(t) for t in np.round(np.geomspace(30.0, 4 * 86400.0, 24), 1)]


class DriftConfig(BaseModel):
    """Program levels, read at log-spaced times, fit the drift exponent nu per device."""

    model_config = ConfigDict(extra="forbid")

    cores: list[int] | None = Field([0], description="cores to measure (null: all)")
    levels_counts: list[float] = Field([10.0, 20.0, 40.0, 60.0, 80.0], description="conductance levels [verify counts]")
    read_times_s: list[float] = Field(default_factory=default_read_times, description="read times after programming [s]")
    reads_per_point: int = Field(8, ge=1, le=64, description="verify reads averaged per device and time")
    time_offset_s: float | Literal["fit"] = Field("fit", description="t_off of the drift law [s], or 'fit'")
    min_counts: float = Field(2.0, ge=0.0, le=100.0, description="devices reading below this are not fitted [counts]")
    program_verify: ProgramVerifyParams = Field(default_factory=ProgramVerifyParams)

    @field_validator("levels_counts")
    @classmethod
    def _levels(cls, v: list[float]) -> list[float]:
        arr = np.asarray(v, dtype=float)
        if arr.size == 0 or np.any(~np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > 4095):
            raise ValueError(f"levels_counts={v} must be a non-empty list of counts in (0, 4095].")
        return v

    @field_validator("read_times_s")
    @classmethod
    def _times(cls, v: list[float]) -> list[float]:
        check_read_times(v)
        return v

    @field_validator("time_offset_s")
    @classmethod
    def _offset(cls, v: float | str) -> float | str:
        if v != "fit" and not (np.isfinite(float(v)) and 0 <= float(v) <= 1e7):
            raise ValueError(f"time_offset_s={v}; allowed 'fit' or a number of seconds in [0, 1e7].")
        return v


def check_read_times(times: Any) -> np.ndarray:
    """Read times as an array after checking: >= 2 finite, positive, strictly increasing values."""
    arr = np.asarray(times, dtype=float)
    if arr.ndim != 1 or arr.size < 2:
        raise ChipInputError(f"read_times_s={list(np.atleast_1d(arr))} needs at least 2 times to fit a slope.")
    if np.any(~np.isfinite(arr)) or np.any(arr <= 0) or np.any(arr > MAX_SLEEP_S):
        bad = arr[~np.isfinite(arr) | (arr <= 0) | (arr > MAX_SLEEP_S)][0]
        raise ChipInputError(
            f"read_times_s contains {bad}; times must be positive seconds after programming, at most {MAX_SLEEP_S:g}."
        )
    steps = np.diff(arr)
    if np.any(steps <= 0):
        i = int(np.flatnonzero(steps <= 0)[0])
        raise ChipInputError(
            f"read_times_s is not strictly increasing: {arr[i]} is followed by {arr[i + 1]} (position {i + 1}); "
            "sort the times and drop repeats."
        )
    return arr


def fit_nu(times_s: np.ndarray, counts: np.ndarray, time_offset_s: float | str = "fit",
           min_counts: float = 2.0) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit nu per device: ``counts`` (K, N) at ``times_s`` (K,) -> (nu (N,), g at the first time, t_off).

    See the module docstring; devices with any reading below ``min_counts`` get NaN.
    """
    t = np.asarray(times_s, dtype=float)
    y = np.log(np.asarray(counts, dtype=float) + 0.5)
    valid = np.all(np.asarray(counts) >= min_counts, axis=0)
    yv = y[:, valid]
    yc = yv - yv.mean(0)

    def slope_resid(off: float) -> tuple[np.ndarray, float]:
        x = np.log(t + off)
        xc = x - x.mean()
        sxx = float(xc @ xc)
        b = xc @ yc / sxx
        return b, float((yc * yc).sum() - (b * b).sum() * sxx)

    if time_offset_s == "fit":
        grid = np.concatenate([[0.0], np.geomspace(max(t[0] * 1e-2, 1e-3), t[-1], 200)])
        res = [slope_resid(o)[1] for o in grid] if yv.shape[1] else [0.0]
        off = float(grid[int(np.argmin(res))])
    else:
        off = float(time_offset_s)
    nu = np.full(y.shape[1], np.nan)
    g0 = np.exp(y[0]) - 0.5
    if yv.shape[1]:
        nu[valid] = -slope_resid(off)[0]
    return nu, g0, off


def level_stats(nu: np.ndarray, level_index: np.ndarray, levels: list[float]) -> list[dict[str, float]]:
    """nu mean, std, median and count of fitted devices per level."""
    out = []
    for i, lv in enumerate(levels):
        v = nu[(level_index == i) & np.isfinite(nu)]
        out.append({
            "level_counts": float(lv), "n": int(v.size),
            "nu_mean": float(v.mean()) if v.size else float("nan"),
            "nu_std": float(v.std()) if v.size else float("nan"),
            "nu_median": float(np.median(v)) if v.size else float("nan"),
        })
    return out


def measure_drift(chip: Chip, config: DriftConfig, run: RunLog | None = None) -> dict[str, Any]:
    """Run the drift measurement (see the module docstring); returns the summary and the arrays.

    Extra keys beyond the JSON summary: ``nu`` (n_cores, rows, cols), ``level_index`` (rows, cols).
    """
    run = run or MemoryRunLog()
    g = chip.geometry
    cores = select_cores(config.cores, g)
    times = check_read_times(config.read_times_s)
    levels = np.asarray(config.levels_counts, dtype=float)
    level_index = (np.arange(g.n_rows * g.n_cols) % levels.size).reshape(g.n_rows, g.n_cols)
    targets = np.broadcast_to(levels[level_index], (cores.size, g.n_rows, g.n_cols)).copy()
    pv = config.program_verify.model_copy(update={"devices_per_weight": 1})
    wall0 = time.perf_counter()
    state = program_verify(chip, cores, targets, pv, run)
    t_prog = chip.now()
    run.note(f"drift: programmed {targets.size} devices to {levels.size} levels; converged {state.converged.mean():.4f}")
    c, r, k = (a.reshape(-1) for a in np.meshgrid(cores, np.arange(g.n_rows), np.arange(g.n_cols), indexing="ij"))
    reads = np.zeros((times.size, c.size))
    actual = np.zeros(times.size)
    run.declare("drift_reads", x="time_s", units={"time_s": "s", "scheduled_s": "s", "counts": "counts"},
                long_names={"time_s": "time after programming", "scheduled_s": "scheduled read time",
                            "counts": "mean verify read"},
                dims={"counts": ("core_sel", "row", "col")})
    for i, t in enumerate(times):
        wait = t_prog + t - chip.now()
        chip.sleep(max(0.0, wait))
        actual[i] = chip.now() - t_prog
        acc = np.zeros(c.size)
        for _ in range(config.reads_per_point):
            acc += chip.read_devices(c, r, k, 0)
        reads[i] = acc / config.reads_per_point
        run.log("drift_reads", point=i, time_s=actual[i], scheduled_s=float(t),
                counts=reads[i].reshape(1, cores.size, g.n_rows, g.n_cols).astype(np.float32))
        run.progress(i + 1, times.size, "drift reads")
    nu, g0, off = fit_nu(actual, reads, config.time_offset_s, config.min_counts)
    nu_map = nu.reshape(cores.size, g.n_rows, g.n_cols)
    li_map = np.broadcast_to(level_index, nu_map.shape)
    run.log("drift_fit", core=cores, nu=nu_map.astype(np.float32), level_index=li_map.astype(np.int16),
            g_first_counts=g0.reshape(nu_map.shape).astype(np.float32))
    per_level = level_stats(nu_map.reshape(-1), li_map.reshape(-1), list(levels))
    for row in per_level:
        run.log("drift_levels", **row)
    return {
        "cores": cores.tolist(),
        "time_offset_s": off,
        "levels": per_level,
        "fitted_fraction": float(np.isfinite(nu).mean()),
        "programming": state.summary(),
        "chip_time_s": chip.now() - t_prog + state.chip_time_s,
        "wall_s": time.perf_counter() - wall0,
        "nu": nu_map,
        "level_index": level_index,
    }


def plots(run_file: Any, out_dir: Any) -> list[Any]:
    """Figures of a drift run (see :mod:`protocols.plots`)."""
    from protocols.plots import drift_plots

    return drift_plots(run_file, out_dir)


@register_protocol("drift", DriftConfig, plots=plots, deterministic=True)
def drift_protocol(chip: Chip, config: DriftConfig, run: RunLog) -> dict[str, Any]:
    """Drift measurement: nu per device and per conductance level."""
    out = measure_drift(chip, config, run)
    out.pop("nu")
    out.pop("level_index")
    return out

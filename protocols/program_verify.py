"""Iterative program-and-verify (P&V) as on HERMES [NE23 Methods].

Per unit cell, batched over every cell of every selected core:

1. RESET all four devices (square 125 ns, 700 uA).
2. SET the devices of the weight's polarity (125 uA, 250 ns): device 0 (or 2 for a negative
   weight) with one device per weight (ODP), devices 0 and 1 (or 2 and 3) with two (TDP).
   Cells whose target is below the margin stay RESET (ASSUMPTION: a RESET cell already reads
   within the margin of such a target).
3. Choose the device to iterate on. ODP: the SET device. TDP (paper rule): read both SET devices;
   if the target exceeds the larger one, keep the larger at SET and iterate on the smaller, else
   iterate on the larger and RESET the smaller.
4. Up to ``max_iterations`` times: verify-read the unit cell (G+ - G- in ADC counts); a cell within
   ``margin_counts`` of its target is done (ASSUMPTION: once within the margin a cell is not read
   or pulsed again, so read noise cannot undo it); every other cell gets a square 125 ns PARTIAL
   pulse whose current follows the error (Papandreou et al., ISCAS 2011): the first pulse's current
   interpolates linearly between ``max_ua`` (target 0) and ``min_ua`` (target = the device's SET
   conductance, taken from the first verify read), then ``I <- clip(I + gain * error)`` with the
   error in counts (positive when the device is too conductive: more current melts it lower).
5. A last verify read decides which cells converged.

Pulses and reads of all cells of all cores go to the chip in one batch per step, so the chip
time is that of the parallel hardware (32 write heads and 256 ADCs per core).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.chip import Chip, Geometry, PulseKind
from hil.errors import ChipInputError
from hil.protocol import MemoryRunLog, RunLog, register_protocol
from protocols.mapping import (
    GMAX_ODP_COUNTS,
    MappingSpec,
    WeightSpec,
    below_margin_fraction,
    bitline_currents_ua,
    check_weights,
    clipped_fraction,
    map_weights,
    resolve_cores,
    select_cores,
    weight_inputs,
    weight_tiles,
)
from protocols.metrics import measure_mvm_errors

#: Largest |target| accepted [counts]: the 12-bit verify counter.
MAX_TARGET_COUNTS = 4095.0
#: Rows per pulse batch for whole-core RESET/SET: bounds the memory of one call to the chip.
_ROW_CHUNK = 64


class ProgramVerifyParams(BaseModel):
    """Hyperparameters of iterative program-and-verify (one set for every core and weight)."""

    model_config = ConfigDict(extra="forbid")

    margin_counts: float = Field(5.0, gt=0.0, le=100.0, description="accept |G - G_target| below this [counts]")
    max_iterations: int = Field(30, ge=1, le=1000, description="verify-and-pulse rounds per cell")
    devices_per_weight: Literal[1, 2] = Field(1, description="1: ODP (Gmax 80 counts), 2: TDP (Gmax 160)")
    reads_per_verify: int = Field(1, ge=1, le=64, description="verify reads averaged per check (HERMES: 1)")
    reset_ua: float = Field(700.0, ge=100.0, le=800.0, description="RESET pulse current [uA]")
    reset_ns: float = Field(125.0, gt=0.0, le=10_000.0, description="RESET pulse width [ns]")
    set_ua: float = Field(125.0, ge=10.0, le=800.0, description="SET pulse current [uA]")
    set_ns: float = Field(250.0, gt=0.0, le=10_000.0, description="SET pulse width [ns]")
    pulse_ns: float = Field(125.0, gt=0.0, le=10_000.0, description="iterative (PARTIAL) pulse width [ns]")
    min_ua: float = Field(125.0, ge=10.0, le=800.0, description="lowest iterative pulse current [uA]")
    max_ua: float = Field(700.0, ge=10.0, le=800.0, description="highest iterative pulse current [uA]")
    gain_ua_per_count: float = Field(4.0, gt=0.0, le=200.0, description="current change per count of error [uA]")


@dataclass
class ProgramState:
    """What a programming run leaves, per cell of the selected cores (arrays of shape (n, rows, cols)).

    ``read``: last verify read (counts, G+ - G-); ``converged``: within the margin; ``pulses``:
    iterative pulses applied; ``current_ua``: the last pulse current (where the next would start);
    ``device``: the device iterated on; ``chip_time_s`` / ``wall_s``: time the programming took;
    ``partial``: cells whose last pulse was a PARTIAL pulse on ``device`` (None: not recorded).
    """

    cores: np.ndarray
    targets: np.ndarray
    read: np.ndarray
    converged: np.ndarray
    pulses: np.ndarray
    current_ua: np.ndarray
    device: np.ndarray
    chip_time_s: float
    wall_s: float
    partial: np.ndarray | None = None  # last pulse was PARTIAL on ``device`` (its current_ua traces the curve)

    def summary(self, gmax: Any = None) -> dict[str, Any]:
        """JSON-able figures: convergence, mean pulses, verify-read error relative to ``gmax``."""
        err = self.read - self.targets
        nz = self.targets != 0
        out: dict[str, Any] = {
            "stopped": "converged" if bool(self.converged.all()) else "max_iterations",
            "converged_fraction": float(self.converged.mean()),
            "mean_pulses": float(self.pulses.mean()),
            "verify_error_rms_counts": float(np.sqrt(np.mean(err[nz] ** 2))) if nz.any() else 0.0,
            "chip_time_s": self.chip_time_s,
            "wall_s": self.wall_s,
        }
        if gmax is not None:
            gm = np.broadcast_to(np.asarray(gmax, dtype=float), (self.targets.shape[0],))[:, None, None]
            rel = np.broadcast_to(err / gm, err.shape)[nz]
            out["verify_error_std_rel"] = float(rel.std()) if rel.size else 0.0
        return out


def check_targets(chip: Chip, cores: np.ndarray, targets: Any) -> np.ndarray:
    """Targets (n_sel, rows, cols) in counts as float64, checked for shape, finiteness and range."""
    g = chip.geometry
    t = check_weights(targets, (cores.size, g.n_rows, g.n_cols), name="targets")
    big = np.abs(t) > MAX_TARGET_COUNTS
    if big.any():
        raise ChipInputError(
            f"targets contain {t[big][0]!r} counts; allowed [-{MAX_TARGET_COUNTS}, {MAX_TARGET_COUNTS}] "
            "(the verify counter). Map weights with map_to_conductance (Gmax 80 or 160 counts)."
        )
    return t


def _addr(cores: np.ndarray, flat: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return cores[flat // (rows * cols)], (flat // cols) % rows, flat % cols


def _pulse_cells(chip: Chip, cores: np.ndarray, flat: np.ndarray, device: Any, kind: Any,
                 amp: Any, width: Any) -> None:
    """One pulse per listed cell (flat index into (n, rows, cols)); device, kind, current [uA] and
    width [ns] are scalars or one per cell."""
    g = chip.geometry
    if flat.size == 0:
        return
    c, r, k = _addr(cores, flat, g.n_rows, g.n_cols)
    chip.apply_pulses(c, r, k, device, kind=kind, amplitude_ua=amp, width_ns=width)


def _reset_cells(chip: Chip, cores: np.ndarray, devices: tuple[int, ...], params: ProgramVerifyParams) -> None:
    """RESET ``devices`` of every cell of ``cores``, in row chunks (same chip time as one batch)."""
    g = chip.geometry
    for r0 in range(0, g.n_rows, _ROW_CHUNK):
        rows = np.arange(r0, min(g.n_rows, r0 + _ROW_CHUNK))
        c, r, k, d = (a.reshape(-1) for a in np.meshgrid(cores, rows, np.arange(g.n_cols), devices, indexing="ij"))
        chip.apply_pulses(c, r, k, d, kind=PulseKind.RESET, amplitude_ua=params.reset_ua, width_ns=params.reset_ns)


def verify(chip: Chip, cores: np.ndarray, flat: np.ndarray, reads: int) -> np.ndarray:
    """Verify reads (G+ - G- counts) of the listed cells, averaged over ``reads`` reads (float64)."""
    g = chip.geometry
    if flat.size == 0:
        return np.zeros(0)
    c, r, k = _addr(cores, flat, g.n_rows, g.n_cols)
    acc = np.zeros(flat.size)
    for _ in range(reads):
        acc += chip.read_cells(c, r, k)
    return acc / reads


def program_verify(
    chip: Chip,
    cores: Any,
    targets: Any,
    params: ProgramVerifyParams | None = None,
    run: RunLog | None = None,
    *,
    cells: np.ndarray | None = None,
) -> ProgramState:
    """Program signed targets [counts], shape (n_sel, rows, cols), into ``cores`` by P&V.

    Every argument is checked before the first pulse. Logs stream ``pv_iterations`` (one row per
    iteration) to ``run``. ``cells``: flat indices into (n_sel, rows, cols) of the only cells to
    program (RESET, SET, iterate); every other cell is neither pulsed nor read, and its entries of the
    returned state are zero (GDP uses this to re-program the cells it made worse). None: all cells.
    """
    params = params or ProgramVerifyParams()
    run = run or MemoryRunLog()
    g = chip.geometry
    cores = select_cores(list(np.atleast_1d(np.asarray(cores)).tolist()), g)
    t = check_targets(chip, cores, targets)
    if params.min_ua >= params.max_ua:
        raise ChipInputError(f"min_ua={params.min_ua} must be below max_ua={params.max_ua}.")
    if 2 * params.devices_per_weight > g.n_devices:
        raise ChipInputError(f"devices_per_weight={params.devices_per_weight} needs {2 * params.devices_per_weight} "
                             f"devices per unit cell; this chip has {g.n_devices}. Use devices_per_weight=1.")
    if cells is not None:
        cells = np.unique(np.asarray(cells, dtype=np.int64))
        if cells.size and (cells[0] < 0 or cells[-1] >= t.size):
            raise ChipInputError(f"cells holds {int(cells[0] if cells[0] < 0 else cells[-1])}; allowed [0, {t.size - 1}].")
    wall0, chip0 = time.perf_counter(), chip.now()
    n_cells = t.size
    mag = np.abs(t).reshape(-1)
    sign = np.where(t.reshape(-1) < 0, -1, 1)
    base = np.where(sign > 0, 0, g.n_devices // 2)
    todo = np.arange(n_cells) if cells is None else cells

    if cells is None:
        _reset_cells(chip, cores, tuple(range(g.n_devices)), params)
    else:
        every = np.repeat(todo, g.n_devices)
        _pulse_cells(chip, cores, every, np.tile(np.arange(g.n_devices), todo.size), PulseKind.RESET,
                     params.reset_ua, params.reset_ns)
    program = todo[mag[todo] >= params.margin_counts]
    device = base.copy()
    dev_target = mag.copy()
    if params.devices_per_weight == 1:
        _pulse_cells(chip, cores, program, base[program], PulseKind.SET, params.set_ua, params.set_ns)
    else:
        both = np.concatenate([program, program])
        devs = np.concatenate([base[program], base[program] + 1])
        _pulse_cells(chip, cores, both, devs, PulseKind.SET, params.set_ua, params.set_ns)
        c, r, k = _addr(cores, program, g.n_rows, g.n_cols)
        g_a = chip.read_devices(c, r, k, base[program]).astype(float)
        g_b = chip.read_devices(c, r, k, base[program] + 1).astype(float)
        hi_is_b = g_b > g_a
        g_hi = np.maximum(g_a, g_b)
        keep_hi = mag[program] > g_hi
        # Iterate on the lower device (the higher stays SET) or on the higher (the lower is RESET).
        iterate_b = np.where(keep_hi, ~hi_is_b, hi_is_b)
        device[program] = base[program] + iterate_b
        dev_target[program] = np.where(keep_hi, mag[program] - g_hi, mag[program])
        drop = program[~keep_hi]
        _pulse_cells(chip, cores, drop, base[drop] + (~hi_is_b[~keep_hi]), PulseKind.RESET,
                     params.reset_ua, params.reset_ns)

    current = np.full(n_cells, params.max_ua)
    pulses = np.zeros(n_cells, dtype=np.int32)
    read = np.zeros(n_cells)
    converged = np.zeros(n_cells, dtype=bool)
    # Cells whose last pulse was a PARTIAL one on the iterated device: only their current traces the
    # programming curve (target -> current) that GDP starts from.
    partial = np.zeros(n_cells, dtype=bool)
    active = todo.copy()
    first = np.ones(n_cells, dtype=bool)
    for it in range(params.max_iterations + 1):
        read[active] = verify(chip, cores, active, params.reads_per_verify)
        err = sign[active] * read[active] - mag[active]  # > 0: too conductive
        ok = np.abs(err) < params.margin_counts
        converged[active[ok]] = True
        run.log("pv_iterations", iteration=it, active=int(active.size), converged=int(converged.sum()),
                mean_abs_error_counts=float(np.abs(err).mean()) if err.size else 0.0, chip_time_s=chip.now() - chip0)
        run.progress(int(converged.sum()), todo.size, "program-verify")
        active, err = active[~ok], err[~ok]
        if it == params.max_iterations or active.size == 0:
            break
        # Cells whose target is below the margin but read outside it are RESET again (no current law).
        small = mag[active] < params.margin_counts
        # First pulse: current from the target's share of the device's SET read; later: follow the error.
        f = active[first[active] & ~small]
        if f.size:
            other = mag[f] - dev_target[f]  # conductance of a device kept at SET (TDP), else 0
            g_set = np.maximum(sign[f] * read[f] - other, 1.0)
            frac = np.clip(dev_target[f] / g_set, 0.0, 1.0)
            current[f] = params.max_ua - (params.max_ua - params.min_ua) * frac
            first[f] = False
        later = (pulses[active] > 0) & ~small
        current[active[later]] = np.clip(current[active[later]] + params.gain_ua_per_count * err[later],
                                         params.min_ua, params.max_ua)
        current[active[small]] = params.reset_ua
        kinds = np.where(small, int(PulseKind.RESET), int(PulseKind.PARTIAL))
        amps = np.where(small, params.reset_ua, current[active])
        widths = np.where(small, params.reset_ns, params.pulse_ns)
        _pulse_cells(chip, cores, active, device[active], kinds, amps, widths)
        pulses[active] += 1
        partial[active] = ~small

    shape = t.shape
    return ProgramState(
        cores=cores,
        targets=t,
        read=read.reshape(shape),
        converged=converged.reshape(shape),
        pulses=pulses.reshape(shape),
        current_ua=current.reshape(shape),
        device=device.reshape(shape).astype(np.int8),
        chip_time_s=chip.now() - chip0,
        wall_s=time.perf_counter() - wall0,
        partial=partial.reshape(shape),
    )


# ---------------------------------------------------------------------------------------- protocol
class ProgramVerifyConfig(ProgramVerifyParams):
    """Program target weights into cores by iterative program-and-verify and measure the result."""

    cores: list[int] | None = Field(None, description="cores to program (null: all; file weights: the cores they fill)")
    weights: WeightSpec = Field(default_factory=WeightSpec, description="target weights")
    mapping: MappingSpec = Field(default_factory=MappingSpec, description="weights -> conductances: clipping, per core/column")
    gmax_counts: float | None = Field(None, gt=0.0, le=400.0, description="Gmax [counts]; null: 80 ODP / 160 TDP")
    bitline_limit_ua: float | None = Field(
        None, gt=0.0, le=1000.0, description="lower Gmax per core to keep BL currents below this [uA]"
    )
    eval_inputs: int = Field(1024, ge=0, le=65536, description="random MVMs for the error metrics (0: skip)")


def check_inputs(config: ProgramVerifyConfig, geometry: Geometry, inputs: Mapping[str, Any] | None = None) -> None:
    """Every check of a ``program-verify`` config against a chip's geometry, with no chip call.

    Raises :class:`ChipInputError` (a ``ValueError``) naming the value, the allowed range and the
    fix: inconsistent currents, more devices per weight than the unit cell has, cores out of range or
    repeated, a missing / non-numeric / non-finite / non-2-D weight file, a matrix that needs more
    cores than selected or fills fewer, an all-zero tile. ``inputs``: the run's inputs (a stored
    weight matrix is checked instead of the file).
    """
    check_params(config, geometry)
    resolve_cores(config.cores, config.weights, geometry, (inputs or {}).get("weights"))


def inputs(config: Any) -> dict[str, Any]:
    """The run inputs of a config with ``weights``: the weight matrix of a file source (stored in the run)."""
    return weight_inputs(config.weights)


def check_params(params: ProgramVerifyParams, geometry: Geometry) -> None:
    """Consistency of P&V hyperparameters with each other and with the unit cell."""
    if params.min_ua >= params.max_ua:
        raise ChipInputError(f"min_ua={params.min_ua} must be below max_ua={params.max_ua}.")
    if 2 * params.devices_per_weight > geometry.n_devices:
        raise ChipInputError(f"devices_per_weight={params.devices_per_weight} needs {2 * params.devices_per_weight} "
                             f"devices per unit cell; this chip has {geometry.n_devices}. Use devices_per_weight=1.")


@dataclass
class Targets:
    """What :func:`map_targets` makes of a config: cores, targets [counts], Gmax per core [counts],
    Wmax (n, cols) in weight units and mapping figures per core."""

    cores: np.ndarray
    weights: np.ndarray
    targets: np.ndarray
    gmax: np.ndarray
    wmax: np.ndarray
    clipped_fraction: np.ndarray
    below_margin_fraction: np.ndarray

    def summary(self) -> dict[str, Any]:
        """JSON-able mapping figures (means over cores)."""
        return {"clipped_fraction": float(self.clipped_fraction.mean()),
                "below_margin_fraction": float(self.below_margin_fraction.mean())}


def map_targets(chip: Chip, cfg: Any, run: RunLog, devices_per_weight: int = 1, margin_counts: float = 5.0) -> Targets:
    """Cores, targets and Gmax from a config's ``cores``, ``weights``, ``mapping`` (optional; default
    max |W| per core), ``gmax_counts`` (None: 80 counts per device of a polarity) and
    ``bitline_limit_ua`` (lowers a core's Gmax so that no bit-line current can exceed it)."""
    g = chip.geometry
    matrix = run.inputs.get("weights")
    cores = resolve_cores(cfg.cores, cfg.weights, g, matrix)
    spec = getattr(cfg, "mapping", None) or MappingSpec()
    w = weight_tiles(cfg.weights, g, cores.size, run.rng("weights"), matrix)
    gmax = np.full(cores.size, float(cfg.gmax_counts or GMAX_ODP_COUNTS * devices_per_weight))
    targets, wmax = map_weights(w, gmax, spec)
    if cfg.bitline_limit_ua is not None:
        worst = bitline_currents_ua(targets).max(-1)
        factor = np.where(worst > cfg.bitline_limit_ua, cfg.bitline_limit_ua / np.maximum(worst, 1e-12), 1.0)
        gmax, targets = gmax * factor, targets * factor[:, None, None]
    return Targets(cores, w, targets, gmax, wmax, clipped_fraction(w, wmax), below_margin_fraction(w, targets, margin_counts))


def prepare_targets(chip: Chip, cfg: Any, run: RunLog, devices_per_weight: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cores, target counts (n, rows, cols) and Gmax per core of a config (see :func:`map_targets`)."""
    m = map_targets(chip, cfg, run, devices_per_weight)
    return m.cores, m.targets, m.gmax


def log_cells(run: RunLog, state: ProgramState, stream: str = "cells") -> None:
    """Log one row per programmed core: targets, last verify reads, pulses, convergence (maps)."""
    run.log(stream, core=state.cores, target_counts=state.targets.astype(np.float32),
            read_counts=state.read.astype(np.float32), pulses=state.pulses.astype(np.int16),
            converged=state.converged)


def plots(run_file: Any, out_dir: Any) -> list[Any]:
    """Figures of a program-and-verify run (see :mod:`protocols.plots`)."""
    from protocols.plots import programming_plots

    return programming_plots(run_file, out_dir)


@register_protocol("program-verify", ProgramVerifyConfig, plots=plots, deterministic=True, check=check_inputs,
                   inputs=inputs)
def program_verify_protocol(chip: Chip, config: ProgramVerifyConfig, run: RunLog) -> dict[str, Any]:
    """Iterative program-and-verify of target weights (HERMES), with MVM error metrics."""
    check_inputs(config, chip.geometry, run.inputs)
    m = map_targets(chip, config, run, config.devices_per_weight, config.margin_counts)
    cores, targets, gmax = m.cores, m.targets, m.gmax
    params = ProgramVerifyParams(**{k: getattr(config, k) for k in ProgramVerifyParams.model_fields})
    state = program_verify(chip, cores, targets, params, run)
    log_cells(run, state)
    out: dict[str, Any] = {"cores": cores.tolist(), "gmax_counts": gmax.tolist(), "mapping": m.summary(),
                           **state.summary(gmax)}
    if config.eval_inputs:
        errs, _, _ = measure_mvm_errors(chip, cores, targets, run.rng("eval"), n_inputs=config.eval_inputs)
        run.log("mvm_error", core=cores, total=errs.total, linear=errs.linear, residual=errs.residual)
        out["mvm_error"] = errs.summary()
    return out

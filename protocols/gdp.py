"""Gradient-descent programming (GDP): program a core by minimising its MVM error directly.

ASSUMPTION - a reconstruction. [GDP22]/[GDP23] are available as abstracts only
(docs/references.md#gdp22): GDP minimises the MVM error of the programmed crossbar by gradient descent with random inputs
through the full periphery, needs no high-resolution reads of single devices, and uses one set of
hyperparameters for all cores. Loss normalisation, inputs, batch size, step size and the mapping of
gradients onto pulses are not published; what follows is this project's choice.

Per iteration, for all selected cores at once:

1. Draw B random inputs X (B, rows) (uniform int8, shared by the cores) and measure the raw MVM
   outputs Y = chip.mvm(X) in ADC counts: the full periphery (PWM, read noise, per-column ADC gain,
   non-linearity, quantisation) is inside the loss.
2. Loss L(G) = ||Y / alpha - X T||^2 / B, T the targets in verify counts and alpha the MVM counts per
   (input LSB x verify count) of the core (fitted by least squares once, at the start).
   Gradient dL/dG = (2/B) X^T E with E = Y / alpha - X T. The step is preconditioned with
   (X^T X)^-1 (Gauss-Newton; for random inputs X^T X is nearly diagonal, so this is a normalised
   gradient step without cross-talk between rows): D = (X^T X)^-1 X^T E estimates, per unit cell,
   how far its effective conductance is from the target. Estimates of cells that were not pulsed
   since the last iteration are averaged with their earlier ones (the error is unchanged, so the
   average sharpens it).
3. The step -eta D becomes pulses on the positive or the negative devices:

   * ``|step| > coarse_counts``: re-program the cell's programming device (0 for a positive
     weight, 2 for a negative one) with a 125 ns PARTIAL pulse whose current follows the step,
     I <- clip(I - gain * sign(T) * step) (more current melts a PCM device lower).
   * ``threshold_counts < |step| <= coarse_counts``: a potentiating pulse on the spare device of
     the polarity the step asks for (device 1 for more G+, device 3 for more G-; both RESET after
     one-device-per-polarity P&V), or, when the other polarity's spare already holds a correction,
     melting that spare back down. Each spare has a desired level [counts]; its pulse current comes
     from the programming curve (|target| -> current) traced by the P&V start or by GDP's own coarse
     phase. A pulse at a level's current melts a device above the level down to it and lets a device
     below it crystallise part of the way up, so it does not overshoot in expectation, and a small
     correction on a nearly RESET device carries far less programming noise than re-programming
     the main device.
   * Cells within ``threshold_counts`` are not touched, so good cells pick up no fresh noise.

Starting points: ``program-verify`` (P&V first; GDP starts its currents from the P&V programming curve) or ``scratch``
(RESET all devices, SET the devices of each weight's sign, fit alpha to the SET state assuming a
mean SET cell of ``set_counts``, then GDP drives every cell down from SET).

The programming curve is traced only by cells whose last P&V pulse was a PARTIAL one on the
programming device (``ProgramState.partial``). Cells below the P&V margin get RESET pulses, and
their recorded current said nothing about the curve; with weights concentrated near zero
(Gaussian) they filled the lowest |target| bin with 125 uA, and the monotone fit carried 125 uA to
every level, so each fine pulse nearly SET a spare (+42 counts for a 3-8 count correction): the
MVM error went 0.19 -> 1.74 in one step. The curve is now fitted monotone by pooling (a bad bin is
averaged with its neighbours, not copied to all of them).

Guard (per core, on the error GDP measures anyway before every step): GDP tracks the best error
measured. A step after which the error exceeds the best by more than ``worse_tolerance`` halves the
core's step size; a core whose error exceeds ``diverge_factor`` times its start error, or whose step
has been halved more than ``max_halvings`` times, gets no more pulses (stopped: ``diverged``). Pulses
cannot be taken back, so "keeping" a state means re-programming: a core that ends worse than its
start (from P&V) has the cells pulsed since its best measured state RESET and re-programmed by P&V
(``restore``), then is measured once more.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.chip import Chip, Geometry, PulseKind
from hil.errors import ChipInputError
from hil.protocol import MemoryRunLog, RunLog, register_protocol
from protocols.mapping import MappingSpec, WeightSpec, resolve_cores, select_cores
from protocols.metrics import fit_scale, measure_mvm_errors, random_inputs
from protocols.program_verify import (
    ProgramState,
    ProgramVerifyParams,
    _pulse_cells,
    _reset_cells,
    check_targets,
    log_cells,
    map_targets,
    program_verify,
)
from protocols.program_verify import check_params as check_pv_params
from protocols.program_verify import inputs as pv_inputs


class GdpParams(BaseModel):
    """Hyperparameters of gradient-descent programming (one set for all cores and weights)."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(25, ge=1, le=1000, description="gradient steps")
    batch: int = Field(2048, ge=16, le=65536, description="random MVMs per step (>= rows for the Gauss-Newton step)")
    input_sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of zero inputs in the random MVMs")
    step: float = Field(1.0, gt=0.0, le=10.0,
                        description="eta: fraction of the estimated error corrected per step (> 1: overshoot)")
    threshold_counts: float = Field(2.5, ge=0.0, le=100.0, description="pulse only cells whose |step| exceeds this [counts]")
    coarse_counts: float = Field(8.0, gt=0.0, le=1000.0, description="steps above this re-program the main device [counts]")
    gain_ua_per_count: float = Field(4.0, gt=0.0, le=200.0, description="pulse current change per count of step [uA]")
    min_ua: float = Field(125.0, ge=10.0, le=800.0, description="lowest pulse current [uA]")
    max_ua: float = Field(700.0, ge=10.0, le=800.0, description="highest pulse current [uA]")
    pulse_ns: float = Field(125.0, gt=0.0, le=10_000.0, description="pulse width [ns]")
    set_counts: float = Field(93.0, gt=0.0, le=4095.0, description="assumed mean SET cell [counts] (scratch start only)")
    alpha: float | None = Field(None, gt=0.0, description="MVM counts per (LSB x verify count); null: fit at start")
    worse_tolerance: float = Field(0.03, ge=0.0, le=1.0,
                                   description="a step leaving the error above (1 + this) x the best halves the core's step")
    diverge_factor: float = Field(1.5, gt=1.0, le=100.0, description="a core above this x its start error stops (diverged)")
    max_halvings: int = Field(3, ge=0, le=20, description="a core whose step was halved more often stops (diverged)")
    restore: bool = Field(True, description="re-program by P&V the cells pulsed since the best state of a core that "
                                            "ends worse than its start (P&V start only)")


@dataclass
class GdpState:
    """Result of GDP: the programming state, per-core alpha and the per-step loss history."""

    program: ProgramState
    alpha: np.ndarray
    loss: np.ndarray  # (steps + 1 [+ 1 after a restore], n_cores): relative MVM error before each step and at the end
    chip_time_s: float
    wall_s: float
    stopped: list[str] = field(default_factory=list)  # per core: completed | converged | diverged
    restored: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per core: re-programmed by P&V

    def summary(self) -> dict[str, Any]:
        """JSON-able outcome: why GDP stopped (``diverged`` if any core did), per core, and the errors
        GDP measured (dense random inputs) at the start, at its best and at the end."""
        reasons = self.stopped or ["completed"] * self.loss.shape[1]
        overall = next((r for r in ("diverged", "completed", "converged") if r in reasons), "completed")
        return {"stopped": overall, "stopped_cores": list(reasons),
                "restored_cores": [int(c) for c in self.program.cores[self.restored]] if self.restored.size else [],
                "gdp_error_start": [float(v) for v in self.loss[0]],
                "gdp_error_best": [float(v) for v in self.loss.min(0)],
                "gdp_error_end": [float(v) for v in self.loss[-1]],
                "gdp_steps": int(self.loss.shape[0] - 1)}


def level_curve(target: np.ndarray, current: np.ndarray, use: np.ndarray, bins: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Programming curve (|target| knots [counts], current knots [uA], increasing |target|) traced by
    converged cells: the median final current per |target| bin, made non-increasing in |target| by
    pooling adjacent violators (weighted by the cells per bin)."""
    tg, cu = target[use], current[use]
    if tg.size < bins:
        raise ChipInputError(f"only {tg.size} converged cells to trace the programming curve; need >= {bins}.")
    edges = np.quantile(tg, np.linspace(0, 1, bins + 1))
    idx = np.clip(np.searchsorted(edges, tg, side="right") - 1, 0, bins - 1)
    knots_t = np.array([np.median(tg[idx == b]) if np.any(idx == b) else np.nan for b in range(bins)])
    knots_i = np.array([np.median(cu[idx == b]) if np.any(idx == b) else np.nan for b in range(bins)])
    counts = np.bincount(idx, minlength=bins).astype(np.float64)
    ok = np.isfinite(knots_t)
    return knots_t[ok], _non_increasing(knots_i[ok], counts[ok])


def _non_increasing(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares non-increasing fit of ``y`` (pool adjacent violators)."""
    vals: list[float] = []
    wts: list[float] = []
    lens: list[int] = []
    for v, c in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(v)
        wts.append(c)
        lens.append(1)
        while len(vals) > 1 and vals[-2] < vals[-1]:
            v2, w2, n2 = vals.pop(), wts.pop(), lens.pop()
            tot = wts[-1] + w2
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / tot if tot > 0 else 0.5 * (vals[-1] + v2)
            wts[-1] = tot
            lens[-1] += n2
    return np.repeat(np.array(vals), lens)


def _rows_first(t: np.ndarray) -> np.ndarray:
    """Targets (cores, rows, cols) [counts] as the float32 operand (rows, cores, cols) of one GEMM for
    every core (made once per GDP run, not per estimate)."""
    return np.ascontiguousarray(t.transpose(1, 0, 2), dtype=np.float32)


def _mvm_estimate(chip: Chip, cores: np.ndarray, t_rows: np.ndarray, rng: np.random.Generator, p: GdpParams,
                  alpha: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One batch of MVMs against the targets ``t_rows`` (:func:`_rows_first`): (per-cell error
    estimate D (cores, rows, cols), float32; alpha; relative MVM error per core)."""
    g = chip.geometry
    x = random_inputs(rng, p.batch, g.n_rows, p.input_sparsity)
    # float32 (counts below 2^12, errors of tens of counts: 1e-7 relative is ample); the small
    # (rows x rows) solve in float64.
    y = np.asarray(chip.mvm(x, cores), dtype=np.float32)
    xf = x.astype(np.float32)
    r, n, c = t_rows.shape
    b = xf.shape[0]
    # The inputs are shared by every core: each product is one GEMM over all cores' columns
    # (cores x C side by side), far faster than a batch of per-core products.
    y_fp = (xf @ t_rows.reshape(r, n * c)).reshape(b, n, c).transpose(1, 0, 2)
    if alpha is None:
        alpha = fit_scale(y, y_fp)
    e = y / alpha[:, None, None].astype(np.float32) - y_fp
    # Gauss-Newton step (X^T X)^-1 X^T E by the normal equations (X has full column rank): the
    # (rows x batch) solve once, then one GEMM for every core.
    x64 = xf.astype(np.float64)
    pinv = np.linalg.solve(x64.T @ x64, x64.T).astype(np.float32)
    d = (pinv @ e.transpose(1, 0, 2).reshape(b, n * c)).reshape(r, n, c).transpose(1, 0, 2)
    ee = np.einsum("kbc,kbc->k", e, e, dtype=np.float64)
    rel = np.sqrt(ee / np.maximum(np.einsum("kbc,kbc->k", y_fp, y_fp, dtype=np.float64), 1e-30))
    return d, alpha, rel


def check_params(p: GdpParams, geometry: Geometry) -> None:
    """Consistency of GDP hyperparameters with each other and with the chip's unit cell and rows."""
    if geometry.n_devices != 4:
        raise ChipInputError(f"GDP needs 4 devices per unit cell (a programming and a spare device per polarity); "
                             f"this chip has {geometry.n_devices}.")
    if p.batch < geometry.n_rows:
        raise ChipInputError(f"batch={p.batch} is below the {geometry.n_rows} rows; the Gauss-Newton step needs batch >= rows.")
    if p.min_ua >= p.max_ua:
        raise ChipInputError(f"min_ua={p.min_ua} must be below max_ua={p.max_ua}.")
    if p.threshold_counts >= p.coarse_counts:
        raise ChipInputError(f"threshold_counts={p.threshold_counts} must be below coarse_counts={p.coarse_counts}.")


def gradient_descent_program(
    chip: Chip,
    cores: Any,
    targets: Any,
    params: GdpParams | None = None,
    run: RunLog | None = None,
    *,
    start: ProgramState | None = None,
    set_params: ProgramVerifyParams | None = None,
) -> GdpState:
    """Program signed targets [counts] (n_sel, rows, cols) into ``cores`` by GDP.

    ``start``: the state a program-and-verify run left on these cores; None starts from scratch
    (RESET, SET with ``set_params``' pulses). Logs streams ``gdp_steps`` and, after a restore,
    ``gdp_restore``. ``set_params`` also drive the P&V of a restore.
    """
    p = params or GdpParams()
    sp = set_params or ProgramVerifyParams()
    run = run or MemoryRunLog()
    g = chip.geometry
    cores = select_cores(list(np.atleast_1d(np.asarray(cores)).tolist()), g)
    t = check_targets(chip, cores, targets)
    check_params(p, g)
    if start is not None and (start.targets.shape != t.shape or not np.array_equal(start.cores, cores)):
        raise ChipInputError("start state belongs to other cores or targets; pass the ProgramState of these cores.")
    if start is not None and not np.all(np.isin(start.device, (0, 2))):
        raise ChipInputError("GDP needs one programming device per polarity (devices 0 and 2, spares 1 and 3); "
                             "start from program-verify with devices_per_weight=1.")
    rng = run.rng("gdp-inputs")
    wall0, chip0 = time.perf_counter(), chip.now()
    n = t.size
    n_cores = cores.size
    core_of = np.arange(n) // (g.n_rows * g.n_cols)  # selected-core index of every flat cell
    sign = np.where(t.reshape(-1) < 0, -1, 1)
    mag = np.abs(t).reshape(-1)
    main = np.where(sign > 0, 0, 2)  # programming device of the weight's polarity
    spare = {1: 1, -1: 3}  # spare device of the positive / negative polarity (RESET at the start)

    if start is None:
        _reset_cells(chip, cores, tuple(range(g.n_devices)), sp)
        program = np.flatnonzero(mag > 0)
        _pulse_cells(chip, cores, program, main[program], PulseKind.SET, sp.set_ua, sp.set_ns)
        current = np.full(n, p.max_ua)
        pulses = np.zeros(n, dtype=np.int32)
        # alpha from the SET state: every programmed cell is then about +-set_counts.
        set_state = np.where(mag > 0, sign * p.set_counts, 0.0).reshape(t.shape)
        fixed = None if p.alpha is None else np.full(n_cores, p.alpha)
        _, alpha, _ = _mvm_estimate(chip, cores, _rows_first(set_state), rng, p, fixed)
        first = mag > 0
        curve: tuple[np.ndarray, np.ndarray] | None = None
    else:
        main = start.device.reshape(-1).astype(np.int64)
        pulses = start.pulses.reshape(-1).copy()
        alpha = None if p.alpha is None else np.full(n_cores, p.alpha)
        # The last P&V current of a cell is a controller state, not the current that melts the device
        # to its target (after a crystallising step it lies far below it), so GDP starts every cell
        # from the programming curve that the P&V run itself traced (target -> current), using only
        # cells whose last pulse was a PARTIAL one (RESET pulses of sub-margin cells trace nothing).
        ok = start.converged.reshape(-1) & (start.pulses.reshape(-1) > 0)
        if start.partial is not None:
            ok &= start.partial.reshape(-1)
        curve = level_curve(mag, start.current_ua.reshape(-1), ok)
        current = np.interp(mag, *curve)
        first = np.zeros(n, dtype=bool)

    level = np.zeros((2, n))  # desired conductance of the positive / negative spare device [counts]
    est = np.zeros(n)
    n_est = np.zeros(n, dtype=np.int32)
    eta = np.full(n_cores, p.step)  # step size per core (halved after a step that made it worse)
    halvings = np.zeros(n_cores, dtype=np.int32)
    live = np.ones(n_cores, dtype=bool)  # cores still pulsed
    reason = ["completed"] * n_cores
    since_best = np.zeros(n, dtype=bool)  # cells pulsed since their core's best measured state
    losses: list[np.ndarray] = []
    start_rel = best = np.zeros(n_cores)
    t_rows = _rows_first(t)
    for it in range(p.iterations + 1):
        d, alpha, rel = _mvm_estimate(chip, cores, t_rows, rng, p, alpha)
        losses.append(rel)
        if it == 0:
            start_rel, best = rel.copy(), rel.copy()
        else:
            better = rel < best
            best = np.where(better, rel, best)
            since_best[better[core_of]] = False
            worse = live & (rel > best * (1.0 + p.worse_tolerance))
            eta[worse] *= 0.5
            halvings[worse] += 1
            diverged = live & ((rel > p.diverge_factor * start_rel) | (halvings > p.max_halvings))
            for c in np.flatnonzero(diverged):
                reason[c] = "diverged"
            live &= ~diverged
        # Average the estimates of cells untouched since their last pulse.
        est = (est * n_est + d.reshape(-1)) / (n_est + 1)
        n_est += 1
        step = -eta[core_of] * est  # desired change of the cell's G+ - G- [counts]
        on = live[core_of]
        big = np.abs(step) > p.coarse_counts
        coarse = np.flatnonzero(big & (mag > 0) & on)
        fine = np.flatnonzero((np.abs(step) > p.threshold_counts) & ~(big & (mag > 0)) & on)
        if curve is None and it > 0:
            settled = (pulses > 0) & (np.abs(est) < p.coarse_counts) & (mag > 0)
            curve = level_curve(mag, current, settled) if settled.sum() >= 1000 else None
        if curve is None:
            fine = fine[:0]
        last = it == p.iterations
        run.log("gdp_steps", iteration=it, mvm_error=float(rel.mean()), coarse=0 if last else int(coarse.size),
                fine=0 if last else int(fine.size), step=float(eta[live].mean()) if live.any() else 0.0,
                live_cores=int(live.sum()), chip_time_s=chip.now() - chip0)
        run.progress(it, p.iterations, "gdp")
        if last or coarse.size + fine.size == 0:
            for c in np.flatnonzero(live):
                reason[c] = "completed" if last else "converged"
            break
        # Coarse: re-program the cell's programming device; its current follows the step.
        f = coarse[first[coarse]]
        if f.size:  # scratch: first pulse from the target's share of the cell's estimated SET level
            g_set = np.maximum(mag[f] + sign[f] * est[f], 1.0)
            current[f] = p.max_ua - (p.max_ua - p.min_ua) * np.clip(mag[f] / g_set, 0.0, 1.0)
            first[f] = False
        later = coarse[~np.isin(coarse, f)]
        current[later] = np.clip(current[later] - p.gain_ua_per_count * sign[later] * step[later], p.min_ua, p.max_ua)
        flat, devs, kinds, amps, widths = [coarse], [main[coarse]], [np.full(coarse.size, int(PulseKind.PARTIAL))], \
            [current[coarse]], [np.full(coarse.size, p.pulse_ns)]
        # Fine: potentiate the spare of the polarity the step asks for, or take back the other spare.
        if fine.size:
            assert curve is not None
            s = step[fine]
            take_back = np.where(s > 0, level[1, fine] > 0, level[0, fine] > 0)
            which = np.where(s > 0, np.where(take_back, 1, 0), np.where(take_back, 0, 1))  # 0: pos spare
            delta = np.where(take_back, -np.abs(s), np.abs(s))
            new_level = np.maximum(level[which, fine] + delta, 0.0)
            low = new_level < curve[0][0] / 2  # below what a partial pulse can hold: RESET the spare
            level[which, fine] = np.where(low, 0.0, new_level)
            flat.append(fine)
            devs.append(np.where(which == 0, spare[1], spare[-1]))
            kinds.append(np.where(low, int(PulseKind.RESET), int(PulseKind.PARTIAL)))
            amps.append(np.where(low, sp.reset_ua, np.clip(np.interp(new_level, *curve), p.min_ua, p.max_ua)))
            widths.append(np.where(low, sp.reset_ns, p.pulse_ns))
        # All pulses of a step in one batch: the write heads of every core work in parallel.
        _pulse_cells(chip, cores, *(np.concatenate(a) for a in (flat, devs, kinds, amps, widths)))
        touched = np.concatenate([coarse, fine])
        pulses[touched] += 1
        n_est[touched] = 0
        est[touched] = 0.0
        since_best[touched] = True

    # Keep: a core that ends worse than its P&V start gets the cells pulsed since its best state
    # re-programmed by P&V (pulses cannot be undone; RESET + P&V is the way back), then one more measurement.
    restored = np.zeros(n_cores, dtype=bool)
    if start is not None and p.restore:
        restored = (losses[-1] > start_rel) & np.array([bool(since_best[core_of == c].any()) for c in range(n_cores)])
    if restored.any():
        cells = np.flatnonzero(since_best & restored[core_of])
        pv = program_verify(chip, cores, t, sp, MemoryRunLog(), cells=cells)
        pulses[cells] += pv.pulses.reshape(-1)[cells]
        current[cells] = pv.current_ua.reshape(-1)[cells]
        level[:, cells] = 0.0
        est[cells] = pv.read.reshape(-1)[cells] - t.reshape(-1)[cells]  # verify error [counts]
        n_est[cells] = 0
        since_best[cells] = False
        _, alpha, rel = _mvm_estimate(chip, cores, t_rows, rng, p, alpha)
        losses.append(rel)
        run.log("gdp_restore", core=cores[restored], cells=np.bincount(core_of[cells], minlength=n_cores)[restored],
                mvm_error_before=losses[-2][restored], mvm_error_after=rel[restored],
                mvm_error_start=start_rel[restored])

    shape = t.shape
    state = ProgramState(
        cores=cores,
        targets=t,
        read=(t.reshape(-1) + est).reshape(shape),
        converged=(eta[core_of] * np.abs(est) <= p.threshold_counts).reshape(shape),
        pulses=pulses.reshape(shape),
        current_ua=current.reshape(shape),
        device=main.reshape(shape).astype(np.int8),
        chip_time_s=chip.now() - chip0,
        wall_s=time.perf_counter() - wall0,
    )
    return GdpState(state, np.asarray(alpha), np.asarray(losses), state.chip_time_s, state.wall_s,
                    stopped=reason, restored=restored)


# ---------------------------------------------------------------------------------------- protocol
class GdpConfig(GdpParams):
    """Program target weights by gradient-descent programming and measure the result."""

    cores: list[int] | None = Field(None, description="cores to program (null: all; file weights: the cores they fill)")
    weights: WeightSpec = Field(default_factory=WeightSpec, description="target weights")
    mapping: MappingSpec = Field(default_factory=MappingSpec, description="weights -> conductances: clipping, per core/column")
    gmax_counts: float | None = Field(None, gt=0.0, le=400.0, description="Gmax [counts]; null: 80 (one device per polarity)")
    bitline_limit_ua: float | None = Field(
        None, gt=0.0, le=1000.0, description="lower Gmax per core to keep BL currents below this [uA]"
    )
    start: Literal["program-verify", "scratch"] = Field("program-verify", description="where GDP starts")
    program_verify: ProgramVerifyParams = Field(default_factory=ProgramVerifyParams,
                                                description="P&V used for the start (and SET/RESET pulses from scratch)")
    eval_inputs: int = Field(1024, ge=0, le=65536, description="random MVMs for the error metrics (0: skip)")


def check_inputs(config: GdpConfig, geometry: Geometry, inputs: Mapping[str, Any] | None = None) -> None:
    """Every check of a ``gdp`` config against a chip's geometry, with no chip call.

    Raises :class:`ChipInputError` (a ``ValueError``) naming the value, the allowed range and the
    fix: GDP hyperparameters (batch below the rows, current limits, threshold above coarse), a chip
    without 4 devices per cell, ``devices_per_weight`` other than 1, the P&V parameters, cores out
    of range or repeated, and the weight source (missing / non-numeric / non-finite / non-2-D file,
    a matrix that needs more cores than selected or fills fewer, an all-zero tile).
    """
    if config.program_verify.devices_per_weight != 1:
        raise ChipInputError(f"program_verify.devices_per_weight={config.program_verify.devices_per_weight}: gdp "
                             "supports 1 only (one programming device per polarity, the other is GDP's spare).")
    check_params(config, geometry)
    check_pv_params(config.program_verify, geometry)
    resolve_cores(config.cores, config.weights, geometry, (inputs or {}).get("weights"))


def plots(run_file: Any, out_dir: Any) -> list[Any]:
    """Figures of a GDP run (see :mod:`protocols.plots`)."""
    from protocols.plots import programming_plots

    return programming_plots(run_file, out_dir)


@register_protocol("gdp", GdpConfig, plots=plots, deterministic=True, check=check_inputs, inputs=pv_inputs)
def gdp_protocol(chip: Chip, config: GdpConfig, run: RunLog) -> dict[str, Any]:
    """Gradient-descent programming of target weights (reconstruction), with MVM error metrics."""
    check_inputs(config, chip.geometry, run.inputs)
    m = map_targets(chip, config, run, 1, config.program_verify.margin_counts)
    cores, targets, gmax = m.cores, m.targets, m.gmax
    out: dict[str, Any] = {"cores": cores.tolist(), "gmax_counts": gmax.tolist(), "start": config.start,
                           "mapping": m.summary()}
    start = None
    if config.start == "program-verify":
        start = program_verify(chip, cores, targets, config.program_verify, run)
        out["program_verify"] = start.summary(gmax)
        if config.eval_inputs:
            errs, _, _ = measure_mvm_errors(chip, cores, targets, run.rng("eval-pv"), n_inputs=config.eval_inputs)
            run.log("mvm_error_start", core=cores, total=errs.total, linear=errs.linear, residual=errs.residual)
            out["mvm_error_start"] = errs.summary()
    params = GdpParams(**{k: getattr(config, k) for k in GdpParams.model_fields})
    res = gradient_descent_program(chip, cores, targets, params, run, start=start, set_params=config.program_verify)
    log_cells(run, res.program)
    out.update({"chip_time_s": res.chip_time_s, "wall_s": res.wall_s, "alpha": res.alpha.tolist(),
                "mean_pulses": float(res.program.pulses.mean()), **res.summary()})
    if config.eval_inputs:
        errs, _, _ = measure_mvm_errors(chip, cores, targets, run.rng("eval"), n_inputs=config.eval_inputs)
        run.log("mvm_error", core=cores, total=errs.total, linear=errs.linear, residual=errs.residual)
        out["mvm_error"] = errs.summary()
    return out

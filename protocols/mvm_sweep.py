"""``mvm-sweep``: MVM error over cores and input scales, against the ideal from verify reads.

Optionally programs random signed weights into the selected cores first, with a small iterative
program-and-verify loop that uses only the :class:`hil.Chip` API (RESET, then PARTIAL pulses whose
current is corrected per device from verify reads). Then it reads every unit cell back (G+ - G- in
verify counts, the "ideal" weights the chip holds now), runs MVMs with random signed PWM inputs at
each input scale (fraction of the full 127-LSB range), and compares the raw ADC counts with
``x @ W_read``. A per-column gain (ADC counts per verify count x LSB) is fitted at the smallest
scale; the error at larger scales then also shows ADC saturation and nonlinearity.

Streams: ``program`` (per iteration: active devices, RMS error in counts), ``weights`` (per core:
target and read-back maps), ``mvm`` (per core, scale, repeat: relative error, per-column error,
largest |output|).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil import Chip, ChipInputError, PulseKind, RunLog, grid, register_protocol

RESET_UA, RESET_NS = 700.0, 125.0
PARTIAL_NS = 125.0


class MvmSweepConfig(BaseModel):
    """Configuration of ``mvm-sweep``."""

    model_config = ConfigDict(extra="forbid")

    cores: list[Annotated[int, Field(ge=0, le=1023)]] | None = Field(
        None, description="cores to sweep (default: every core of the chip)", min_length=1
    )
    program: bool = Field(True, description="program random weights first; false: take the cores as they are")
    weight_counts: float = Field(
        30.0, gt=0.0, le=80.0, description="per-device target for |w| = 1 [verify counts; 80 ~ 10.35 uS]"
    )
    program_iterations: int = Field(8, ge=0, le=100, description="program-and-verify iterations")
    tolerance_counts: float = Field(2.0, gt=0.0, le=40.0, description="a device within this of its target is done [counts]")
    g_set_counts: float = Field(93.0, gt=1.0, le=1000.0, description="typical SET level [counts] for the first pulse guess")
    amp_mid_ua: float = Field(400.0, ge=125.0, le=800.0, description="PARTIAL current that aims at half of SET [uA]")
    amp_width_ua: float = Field(80.0, gt=1.0, le=400.0, description="logistic width of target vs current [uA]")
    feedback_ua_per_count: float = Field(2.0, ge=0.0, le=50.0, description="current correction per count of error [uA]")
    input_scales: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        [0.125, 0.25, 0.5, 1.0], min_length=1, description="input magnitudes as fractions of 127 LSB"
    )
    batch: int = Field(32, ge=1, le=4096, description="input vectors per MVM")
    repeats: int = Field(2, ge=1, le=1000, description="MVMs per core and scale")
    mode: str = Field("4phase", pattern="^(4phase|1phase)$", description="MVM read mode")


def _program(chip: Chip, cfg: MvmSweepConfig, cores: np.ndarray, w: np.ndarray, run: RunLog) -> dict[str, Any]:
    """Program signed weights ``w`` (n_sel, rows, cols) in [-1, 1] with program-and-verify."""
    g = chip.geometry
    half = g.n_devices // 2
    c, r, k, d = grid(cores, range(g.n_rows), range(g.n_cols), range(g.n_devices))
    sel = np.searchsorted(cores, c)
    w_dev = w[sel, r, k]
    positive = d < half
    # The weight's polarity gets |w| spread over its devices; the other polarity stays RESET.
    target = np.where(positive == (w_dev >= 0), np.abs(w_dev) * cfg.weight_counts, 0.0)
    chip.apply_pulses(c, r, k, d, kind=PulseKind.RESET, amplitude_ua=RESET_UA, width_ns=RESET_NS)
    todo = np.flatnonzero(target > cfg.tolerance_counts)
    frac = np.clip(target[todo] / cfg.g_set_counts, 0.02, 0.98)
    amp = cfg.amp_mid_ua - cfg.amp_width_ua * np.log(frac / (1.0 - frac))
    amp = np.clip(amp, 130.0, 790.0)
    rms = float("nan")
    n_iter = max(cfg.program_iterations, 0)
    for it in range(n_iter):
        if todo.size == 0:
            break
        chip.apply_pulses(c[todo], r[todo], k[todo], d[todo], kind=PulseKind.PARTIAL, amplitude_ua=amp, width_ns=PARTIAL_NS)
        read = chip.read_devices(c[todo], r[todo], k[todo], d[todo]).astype(np.float64)
        err = read - target[todo]
        rms = float(np.sqrt(np.mean(err**2)))
        run.log("program", iteration=it, active=int(todo.size), rms_error_counts=rms)
        run.progress(it + 1, n_iter, "program")
        # Too high -> more current (lower target conductance), too low -> less.
        amp = np.clip(amp + cfg.feedback_ua_per_count * err, 130.0, 790.0)
        keep = np.abs(err) > cfg.tolerance_counts
        todo, amp = todo[keep], amp[keep]
    return {"program_rms_error_counts": rms, "program_unconverged": int(todo.size)}


def plots(run_file: str | Path, out_dir: str | Path) -> list[Path]:
    """Relative MVM error vs input scale per core, and read-back vs target weights."""
    from matplotlib.figure import Figure

    from hil.runs import RunReader

    out = Path(out_dir)
    paths: list[Path] = []
    with RunReader(run_file) as reader:
        if "mvm" in reader.streams():
            m = reader.stream("mvm")
            fig = Figure(figsize=(6, 4), dpi=100)
            ax = fig.add_subplot()
            for core in np.unique(m["core"]):
                sel = m["core"] == core
                scales = np.unique(m["scale"][sel])
                ax.plot(scales, [m["rel_error"][sel & (m["scale"] == s)].mean() for s in scales], "o-", label=f"core {core}")
            ax.set_xlabel("input scale (fraction of 127 LSB)")
            ax.set_ylabel("relative MVM error")
            ax.set_xscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
            fig.tight_layout()
            paths.append(out / "mvm-sweep-error-vs-scale.png")
            fig.savefig(paths[-1])
        if "weights" in reader.streams() and bool(reader.config.get("program", True)):
            wgt = reader.stream("weights")
            fig = Figure(figsize=(4.5, 4.5), dpi=100)
            ax = fig.add_subplot()
            ax.plot(wgt["w_target_counts"].reshape(-1), wgt["w_read_counts"].reshape(-1), ".", ms=1, alpha=0.4)
            lim = float(np.abs(wgt["w_target_counts"]).max() or 1.0) * 1.1
            ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
            ax.set_xlabel("target G+ - G- [counts]")
            ax.set_ylabel("read back [counts]")
            fig.tight_layout()
            paths.append(out / "mvm-sweep-weights.png")
            fig.savefig(paths[-1])
    return paths


@register_protocol(
    "mvm-sweep",
    MvmSweepConfig,
    description="MVM error vs the ideal (from verify reads) over cores and input scales",
    plots=plots,
)
def mvm_sweep(chip: Chip, config: MvmSweepConfig, run: RunLog) -> dict[str, Any]:
    """MVM error vs the ideal (from verify reads) over cores and input scales."""
    g = chip.geometry
    cores = np.arange(g.n_cores) if config.cores is None else np.array(sorted(set(config.cores)), dtype=np.int64)
    if cores.max() >= g.n_cores:
        raise ChipInputError(
            f"cores={config.cores} but the chip has {g.n_cores} cores (0..{g.n_cores - 1}); choose cores that exist."
        )
    summary: dict[str, Any] = {"cores": cores.tolist()}
    w_target = None
    if config.program:
        w_target = run.rng("weights").uniform(-1.0, 1.0, size=(cores.size, g.n_rows, g.n_cols))
        summary.update(_program(chip, config, cores, w_target, run))
    c, r, k = grid(cores, range(g.n_rows), range(g.n_cols))
    w_read = chip.read_cells(c, r, k).reshape(cores.size, g.n_rows, g.n_cols)
    run.log(
        "weights",
        core=cores,
        w_target_counts=(np.zeros(w_read.shape) if w_target is None else 2 * w_target * config.weight_counts).astype(np.float32),
        w_read_counts=w_read,
    )
    rng = run.rng("inputs")
    scales = sorted(config.input_scales)
    total = len(scales) * config.repeats
    ideal_all, y_all = [], []
    for i, scale in enumerate(scales):
        amp = max(1, round(127 * scale))
        for rep in range(config.repeats):
            x = rng.integers(-amp, amp + 1, size=(config.batch, g.n_rows)).astype(np.int8)
            y = np.asarray(chip.mvm(x, cores, output="adc", mode=config.mode), dtype=np.float64)
            ideal = np.einsum("br,crk->cbk", x.astype(np.float64), w_read.astype(np.float64))
            ideal_all.append((scale, rep, ideal))
            y_all.append(y)
            run.progress(i * config.repeats + rep + 1, total, "mvm")
    # Per-core, per-column gain from the smallest scale (least saturation), by least squares.
    small = [j for j, (s, _, _) in enumerate(ideal_all) if s == scales[0]]
    num = sum((y_all[j] * ideal_all[j][2]).sum(axis=1) for j in small)
    den = sum((ideal_all[j][2] ** 2).sum(axis=1) for j in small)
    gain = np.where(den > 0, num / np.maximum(den, 1e-12), 0.0)  # (n_sel, n_cols)
    by_scale: dict[str, list[float]] = {}
    for (scale, rep, ideal), y in zip(ideal_all, y_all, strict=True):
        ref = gain[:, None, :] * ideal
        err = y - ref
        ref_rms = np.sqrt(np.mean(ref**2, axis=(1, 2)))
        rel = np.sqrt(np.mean(err**2, axis=(1, 2))) / np.maximum(ref_rms, 1e-12)
        col = np.sqrt(np.mean(err**2, axis=1)) / np.maximum(ref_rms[:, None], 1e-12)
        run.log(
            "mvm",
            core=cores,
            scale=np.full(cores.size, scale),
            repeat=np.full(cores.size, rep),
            rel_error=rel,
            col_rel_error=col.astype(np.float32),
            gain_counts_per_unit=gain.mean(axis=1),
            max_abs_output=np.abs(y).max(axis=(1, 2)),
        )
        by_scale.setdefault(f"{scale:g}", []).extend(rel.tolist())
    summary["rel_error_by_scale"] = {s: float(np.mean(v)) for s, v in by_scale.items()}
    summary["n_mvm_calls"] = total
    return summary

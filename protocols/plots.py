"""Figures of the programming, calibration and drift protocols for ``hil report``.

Each function takes a run file path and an output folder, reads the streams its protocol logged
(with :class:`hil.runs.RunReader`, i.e. h5py) and writes PNG files (matplotlib, Agg canvas, no
pyplot state), returning their paths. Streams a run does not have (an aborted run, a protocol
option that was off) are skipped, so a partial run still gets the figures its data allows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from hil.runs import RunReader

#: Cells drawn at most in scatter plots (a random subset beyond that).
_MAX_POINTS = 20_000


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig: Figure, out_dir: Path, name: str, paths: list[Path]) -> None:
    path = out_dir / name
    fig.savefig(path, dpi=110)
    paths.append(path)


def _streams(reader: RunReader) -> set[str]:
    return set(reader.streams())


def programming_plots(run_file: Any, out_dir: Any) -> list[Path]:
    """Convergence of P&V / GDP, programming error histogram, target-vs-read map, MVM errors."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with RunReader(run_file) as r:
        have = _streams(r)
        if "pv_iterations" in have or "gdp_steps" in have:
            fig, (ax,) = _figure()
            if "pv_iterations" in have:
                s = r.stream("pv_iterations")
                ax.semilogy(s["iteration"], np.maximum(s["active"], 0.5), "o-", ms=3, label="P&V: cells still active")
            ax.set_xlabel("iteration")
            ax.set_ylabel("cells")
            handles = list(ax.get_lines())
            if "gdp_steps" in have:
                s = r.stream("gdp_steps")
                ax2 = ax.twinx()
                handles += ax2.plot(s["iteration"], s["mvm_error"], "s-", ms=3, color="C1", label="GDP: relative MVM error")
                ax2.set_ylabel("relative MVM error ||e|| / ||y||")
            ax.legend(handles=handles, loc="upper right", fontsize=8)
            ax.set_title("programming convergence")
            _save(fig, out, "programming_convergence.png", paths)
        if "cells" in have:
            s = r.stream("cells")
            t = s["target_counts"].astype(float)
            rd = s["read_counts"].astype(float)
            nz = t != 0
            fig, (a1, a2) = _figure(2)
            err = (rd - t)[nz]
            a1.hist(err, bins=101, range=(-25, 25), color="C0")
            a1.set_xlabel("last read - target [counts]")
            a1.set_ylabel("cells")
            a1.set_title(f"programming error: std {err.std():.2f} counts" if err.size else "programming error")
            idx = np.flatnonzero(nz.reshape(-1))
            if idx.size > _MAX_POINTS:
                idx = np.random.default_rng(0).choice(idx, _MAX_POINTS, replace=False)
            a2.plot(t.reshape(-1)[idx], rd.reshape(-1)[idx], ",", alpha=0.5)
            lim = float(np.abs(t).max()) if t.size else 1.0
            a2.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
            a2.set_xlabel("target G+ - G- [counts]")
            a2.set_ylabel("last read [counts]")
            a2.set_title(f"converged {s['converged'].mean():.2%}")
            _save(fig, out, "programming_error.png", paths)
        for stream, name in (("mvm_error_start", "start (P&V)"), ("mvm_error", "final")):
            if stream in have and "stage" not in r.columns(stream):
                s = r.stream(stream)
                fig, (ax,) = _figure()
                keys = ("total", "linear", "residual")
                ax.bar(keys, [float(np.mean(s[k])) for k in keys], yerr=[float(np.std(s[k])) for k in keys], color="C2")
                ax.set_ylabel("||e|| / ||y_ideal|| (mean over cores)")
                ax.set_title(f"MVM error, {name}")
                _save(fig, out, f"{stream}.png", paths)
    return paths


def calibration_plots(run_file: Any, out_dir: Any) -> list[Path]:
    """ADC gain spread found by the LDPU calibration; MVM errors per stage and over drift time."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = programming_plots(run_file, out)
    with RunReader(run_file) as r:
        have = _streams(r)
        if "ldpu" in have:
            s = r.stream("ldpu")
            gain = s["gain"].astype(float)
            rel = gain / gain.mean(axis=1, keepdims=True) - 1.0
            fig, (ax,) = _figure()
            ax.hist(100 * rel.reshape(-1), bins=60, color="C4")
            ax.set_xlabel("column gain deviation from core mean [%]")
            ax.set_ylabel("columns")
            ax.set_title(f"fitted per-column gain: std {100 * rel.std():.2f} %")
            _save(fig, out, "calibration_gains.png", paths)
        if "mvm_error" in have and "stage" in r.columns("mvm_error"):
            s = r.stream("mvm_error")
            stages = s["stage"]
            fig, (a1, a2) = _figure(2)
            for i, st in enumerate(("before", "after")):
                m = stages == st
                if m.any():
                    a1.bar(np.arange(3) + 0.4 * i, [float(s[k][m].mean()) for k in ("total", "linear", "residual")],
                           width=0.4, label=st)
            a1.set_xticks(np.arange(3) + 0.2, ["total", "linear", "residual"])
            a1.set_ylabel("||e|| / ||y_ideal||")
            a1.set_title("MVM error before / after calibration")
            a1.legend(fontsize=8)
            for st, style in (("drift", "o-"), ("drift+gdc", "s-")):
                m = stages == st
                if m.any():
                    times = np.unique(s["time_s"][m])
                    a2.semilogx(times, [s["total"][m & (s["time_s"] == t)].mean() for t in times], style, label=st)
            a2.set_xlabel("time after calibration [s]")
            a2.set_ylabel("total MVM error")
            a2.set_title("drift and global drift compensation")
            if a2.lines:
                a2.legend(fontsize=8)
            _save(fig, out, "calibration_errors.png", paths)
    return paths


def _level_label(levels: dict[str, np.ndarray] | None, i: int) -> str:
    if levels is not None and i < len(levels["level_counts"]):
        return f"{levels['level_counts'][i]:g} counts"
    return f"level {i}"


def drift_plots(run_file: Any, out_dir: Any) -> list[Path]:
    """Median conductance per level vs time (log-log) and the fitted nu per level."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with RunReader(run_file) as r:
        have = _streams(r)
        if "drift_fit" in have:
            fit = r.stream("drift_fit")
            nu, li = fit["nu"].astype(float), fit["level_index"].astype(int)
            lv = r.stream("drift_levels") if "drift_levels" in have else None
            fig, (ax,) = _figure()
            for i in np.unique(li):
                v = nu[(li == i) & np.isfinite(nu)]
                label = _level_label(lv, int(i))
                if v.size:
                    ax.hist(v, bins=60, histtype="step", label=f"{label}: {v.mean():.3f} +- {v.std():.3f}")
            ax.set_xlabel("fitted drift exponent nu")
            ax.set_ylabel("devices")
            ax.legend(fontsize=7)
            ax.set_title("nu per programmed level")
            _save(fig, out, "drift_nu.png", paths)
            if "drift_reads" in have:
                reads = r.stream("drift_reads")
                t = reads["time_s"].astype(float)
                counts = reads["counts"].astype(float).reshape(len(t), -1)
                flat_li = li.reshape(-1)
                fig, (ax,) = _figure()
                for i in np.unique(flat_li):
                    label = _level_label(lv, int(i))
                    ax.loglog(t, np.median(counts[:, flat_li == i], axis=1), "o-", ms=3, label=label)
                ax.set_xlabel("time after programming [s]")
                ax.set_ylabel("median read [counts]")
                ax.set_title("conductance drift")
                ax.legend(fontsize=7)
                _save(fig, out, "drift_reads.png", paths)
    return paths

"""PNG plots of a run: one figure per data stream, plus the protocol's own ``plots`` hook.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Uses matplotlib's object API with the Agg canvas (``Figure.savefig``), never pyplot, so it works
headless and never changes the caller's matplotlib backend. For each stream: scalar columns are
line plots against the row number; per-row vectors are shown as mean with a min-max band (or as an
image when there are many rows); per-row matrices as an image of the last row.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hil.runs import RunReader

MAX_PANELS = 12


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _panel(ax: Any, name: str, data: np.ndarray) -> None:
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
    if data.dtype.kind in "SUO":
        values, counts = np.unique(data.astype(str), return_counts=True)
        ax.bar(range(len(values)), counts)
        ax.set_xticks(range(len(values)), [v[:12] for v in values], rotation=45, fontsize=6)
        return
    data = data.astype(np.float64) if data.dtype.kind in "biu" else np.real(data).astype(np.float64)
    rows = np.arange(data.shape[0])
    if data.ndim == 1:
        ax.plot(rows, data, ".-" if data.shape[0] < 200 else "-", lw=0.8, ms=3)
        ax.set_xlabel("row", fontsize=7)
    elif data.ndim == 2 and data.shape[0] > 1 and data.shape[0] * data.shape[1] <= 1_000_000:
        if data.shape[0] >= 20:
            im = ax.imshow(data.T, aspect="auto", interpolation="nearest", origin="lower")
            ax.figure.colorbar(im, ax=ax, fraction=0.05)
            ax.set_xlabel("row", fontsize=7)
        else:
            ax.plot(rows, data.mean(axis=1), ".-", lw=0.8, ms=3, label="mean")
            ax.fill_between(rows, data.min(axis=1), data.max(axis=1), alpha=0.25, label="min-max")
            ax.set_xlabel("row", fontsize=7)
            ax.legend(fontsize=6)
    else:
        last = data[-1]
        while last.ndim > 2:
            last = last[0]
        if last.ndim == 1:
            ax.plot(last, lw=0.8)
            ax.set_xlabel("index (last row)", fontsize=7)
        else:
            im = ax.imshow(last, aspect="auto", interpolation="nearest")
            ax.figure.colorbar(im, ax=ax, fraction=0.05)
            ax.set_xlabel("last row", fontsize=7)


def stream_figures(reader: RunReader, out_dir: Path) -> list[Path]:
    """One PNG per stream with up to 12 column panels."""
    from matplotlib.figure import Figure

    paths = []
    for stream in reader.streams():
        data = reader.stream(stream)
        names = [n for n in data if data[n].size][:MAX_PANELS]
        if not names:
            continue
        n_cols = min(3, len(names))
        n_rows = -(-len(names) // n_cols)
        fig = Figure(figsize=(4.2 * n_cols, 3.0 * n_rows), dpi=90)
        for i, name in enumerate(names):
            _panel(fig.add_subplot(n_rows, n_cols, i + 1), name, data[name])
        fig.suptitle(f"{reader.protocol} {reader.run_id}: stream {stream!r} ({reader.n_rows(stream)} rows)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"stream-{_safe(stream)}.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def make_report(
    run_file: str | os.PathLike[str], out_dir: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[str]]:
    """Write the run's PNGs into ``out_dir`` (default ``<run>-report/`` beside the run file).

    Returns (paths, warnings); a failing protocol hook is a warning, not an error.
    """
    run_file = Path(run_file)
    out = Path(out_dir) if out_dir is not None else run_file.with_name(run_file.stem + "-report")
    problems: list[str] = []
    with RunReader(run_file) as reader:
        out.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tight_layout chatter on crowded figures
            paths = stream_figures(reader, out)
        protocol = reader.protocol
    from hil.protocol import UnknownProtocolError, get_protocol

    try:
        spec = get_protocol(protocol)
    except UnknownProtocolError:
        spec = None
        problems.append(f"protocol {protocol!r} is not installed here; only the generic stream plots were made.")
    if spec is not None and spec.plots is not None:
        try:
            paths.extend(Path(p) for p in spec.plots(run_file, out))
        except Exception as exc:  # a protocol's own figures are best-effort
            problems.append(f"the {protocol} plots hook failed: {type(exc).__name__}: {exc}")
    return paths, problems

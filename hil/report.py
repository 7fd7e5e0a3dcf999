"""PNG plots of a run: one figure per data stream, plus the protocol's own ``plots`` hook.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Uses matplotlib's object API with the Agg canvas (``Figure.savefig``), never pyplot, so it works
headless and never changes the caller's matplotlib backend. For each stream: scalar columns are
line plots against the stream's declared x column (``run.declare(stream, x=...)``), else the row
number; per-row vectors are shown as mean with a min-max band (or as an image when there are many
rows); per-row matrices as an image of the last row. Axes and colour bars carry the declared long
names and units, string columns are counted in the order their values were first logged, and every
figure (the protocol's own too) carries the run id, in its title or corner and in its PNG metadata.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from hil.runs import RunReader
from hil.runs.reader import StreamInfo

MAX_PANELS = 12


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _order_of_appearance(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique values in the order they were first logged, and how often each occurs."""
    uniq, first, counts = np.unique(values, return_index=True, return_counts=True)
    order = np.argsort(first)
    return uniq[order], counts[order]


def _panel(ax: Any, name: str, data: np.ndarray, info: StreamInfo, x: np.ndarray, x_label: str) -> None:
    """One column's panel: against the stream's x column (or the row number), axes labelled with units."""
    ax.set_title(name, fontsize=8)
    ax.tick_params(labelsize=7)
    label = info.label(name)
    if data.dtype.kind in "SUO":
        values, counts = _order_of_appearance(data.astype(str))
        ax.bar(range(len(values)), counts)
        ax.set_xticks(range(len(values)), [v[:12] for v in values], rotation=45, fontsize=6)
        ax.set_xlabel(f"{label} (in the order logged)", fontsize=7)
        ax.set_ylabel("rows", fontsize=7)
        return
    data = data.astype(np.float64) if data.dtype.kind in "biu" else np.real(data).astype(np.float64)
    dims = info.dims.get(name, ())
    if data.ndim == 1:
        ax.plot(x, data, ".-" if data.shape[0] < 200 else "-", lw=0.8, ms=3)
        ax.set_xlabel(x_label, fontsize=7)
        ax.set_ylabel(label, fontsize=7)
    elif data.ndim == 2 and data.shape[0] > 1 and data.shape[0] * data.shape[1] <= 1_000_000:
        if data.shape[0] >= 20:
            im = ax.imshow(data.T, aspect="auto", interpolation="nearest", origin="lower",
                           extent=(float(x[0]), float(x[-1]), -0.5, data.shape[1] - 0.5) if _monotonic(x) else None)
            ax.figure.colorbar(im, ax=ax, fraction=0.05).set_label(label, fontsize=7)
            ax.set_xlabel(x_label, fontsize=7)
            ax.set_ylabel(dims[0] if dims else "index", fontsize=7)
        else:
            ax.plot(x, data.mean(axis=1), ".-", lw=0.8, ms=3, label=f"mean over {dims[0] if dims else 'index'}")
            ax.fill_between(x, data.min(axis=1), data.max(axis=1), alpha=0.25, label="min-max")
            ax.set_xlabel(x_label, fontsize=7)
            ax.set_ylabel(label, fontsize=7)
            ax.legend(fontsize=6)
    else:
        last = data[-1]
        shown = dims
        while last.ndim > 2:
            last, shown = last[0], shown[1:]
        if last.ndim == 1:
            ax.plot(last, lw=0.8)
            ax.set_xlabel(f"{shown[0] if shown else 'index'} (last row)", fontsize=7)
            ax.set_ylabel(label, fontsize=7)
        else:
            im = ax.imshow(last, aspect="auto", interpolation="nearest")
            ax.figure.colorbar(im, ax=ax, fraction=0.05).set_label(label, fontsize=7)
            ax.set_xlabel(f"{shown[1] if len(shown) > 1 else 'index'} (last row)", fontsize=7)
            ax.set_ylabel(shown[0] if shown else "index", fontsize=7)


def _monotonic(x: np.ndarray) -> bool:
    return x.size > 1 and bool(np.all(np.diff(x) > 0))


def png_metadata(run_id: str, what: str) -> dict[str, str]:
    """PNG text chunks of a hil figure: the run id travels with the file."""
    return {"Title": f"{what} ({run_id})", "Source": f"hil run {run_id}", "Software": "hil"}


def stamp_run_id(path: Path, run_id: str) -> None:
    """Write the run id into the corner of a PNG made elsewhere (a protocol's plots hook), and
    into its metadata, so that every figure of a report says which run it shows."""
    from matplotlib.figure import Figure
    from matplotlib.image import imread

    img = imread(path)
    h, w = img.shape[:2]
    fig = Figure(figsize=(w / 100, h / 100), dpi=100)
    fig.figimage(img, resize=False)
    fig.text(0.995, 0.003, run_id, ha="right", va="bottom", fontsize=6, color="0.35")
    fig.savefig(path, dpi=100, metadata=png_metadata(run_id, path.stem))


def stream_figures(reader: RunReader, out_dir: Path) -> list[Path]:
    """One PNG per stream with up to 12 column panels."""
    from matplotlib.figure import Figure

    paths = []
    for stream in reader.streams():
        data = reader.stream(stream)
        info = reader.stream_info(stream)
        n = reader.n_rows(stream)
        if info.x is not None and info.x in data:
            x, x_label = data[info.x].astype(np.float64), info.label(info.x)
        else:
            x, x_label = np.arange(n, dtype=np.float64), f"{info.row_dim} (order logged)"
        names = [c for c in data if data[c].size and c != info.x][:MAX_PANELS]
        if not names:
            continue
        n_cols = min(3, len(names))
        n_rows = -(-len(names) // n_cols)
        fig = Figure(figsize=(4.2 * n_cols, 3.0 * n_rows), dpi=90)
        for i, name in enumerate(names):
            _panel(fig.add_subplot(n_rows, n_cols, i + 1), name, data[name], info, x, x_label)
        fig.suptitle(f"{reader.protocol} {reader.run_id}: stream {stream!r} ({n} rows)", fontsize=9)
        fig.tight_layout()
        path = out_dir / f"stream-{_safe(stream)}.png"
        fig.savefig(path, metadata=png_metadata(reader.run_id, f"stream {stream}"))
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
        protocol, run_id = reader.protocol, reader.run_id
    from hil.protocol import UnknownProtocolError, get_protocol

    try:
        spec = get_protocol(protocol)
    except UnknownProtocolError:
        spec = None
        problems.append(f"protocol {protocol!r} is not installed here; only the generic stream plots were made.")
    if spec is not None and spec.plots is not None:
        try:
            own = [Path(p) for p in spec.plots(run_file, out)]
        except Exception as exc:  # a protocol's own figures are best-effort
            own = []
            problems.append(f"the {protocol} plots hook failed: {type(exc).__name__}: {exc}")
        for p in own:
            if p.suffix.lower() == ".png" and p.is_file():
                try:
                    stamp_run_id(p, run_id)
                except (OSError, ValueError) as exc:
                    problems.append(f"could not mark {p.name} with the run id: {exc}")
        paths.extend(own)
    return paths, problems

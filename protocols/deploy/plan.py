"""Analog layers onto cores: tiles per layer, distinct cores per tile, and the refusal when they do not fit.

Each analog layer's matrix (n_in, n_out) is cut into the fewest equal tiles that fit a core
([NE23 Methods]; :func:`protocols.mapping.tile_layout`, the rule of aihwkit's ``TileModuleArray``
[AIHW simulator/tiles/array.py]). Row tiles (parts of the inputs) give partial sums that are added
on the host; column tiles (parts of the outputs) are concatenated. Every tile gets its own core, in
layer order, from the selected cores.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hil.chip import Geometry
from hil.errors import ChipInputError
from protocols.deploy.layers import AnalogLayer, Converted
from protocols.mapping import TileLayout, tile_layout


@dataclass(frozen=True)
class Placement:
    """Where one analog layer lives: its tile layout and one core per tile (tile order of the layout)."""

    layer: AnalogLayer
    layout: TileLayout
    cores: np.ndarray

    @property
    def row_tiles(self) -> int:
        return len({t.rows.start for t in self.layout.tiles})

    @property
    def col_tiles(self) -> int:
        return len({t.cols.start for t in self.layout.tiles})


def cores_needed(conv: Converted, geometry: Geometry) -> list[int]:
    """Tiles (= cores) each analog layer needs on cores of ``geometry``."""
    shape = (geometry.n_rows, geometry.n_cols)
    return [tile_layout(la.shape, shape).n_tiles for la in conv.analog]


def place_layers(conv: Converted, geometry: Geometry, cores: list[int] | np.ndarray | None = None) -> list[Placement]:
    """Place every analog layer's tiles on distinct cores (``cores``: the selection, None = all, in order).

    Raises :class:`ChipInputError` with the count and the fix when the model needs more cores than
    selected, or for a bad core list.
    """
    sel = np.arange(geometry.n_cores) if cores is None else np.asarray(cores, dtype=np.int64).reshape(-1)
    if sel.size == 0 or sel.min() < 0 or sel.max() >= geometry.n_cores:
        raise ChipInputError(f"cores={np.asarray(sel).tolist()}: give core indices in [0, {geometry.n_cores - 1}].")
    if np.unique(sel).size != sel.size:
        raise ChipInputError(f"cores={sel.tolist()} repeats a core; each tile needs its own core.")
    need = cores_needed(conv, geometry)
    total = sum(need)
    if total > sel.size:
        per = ", ".join(f"{la.name} {la.shape[0]}x{la.shape[1]}: {n}" for la, n in zip(conv.analog, need, strict=True))
        where = (f"select at least {total} cores (cores=null selects all {geometry.n_cores})" if total <= geometry.n_cores
                 else f"use a chip with at least {total} cores of {geometry.n_rows} x {geometry.n_cols} or a smaller model")
        raise ChipInputError(f"the model needs {total} cores of {geometry.n_rows} x {geometry.n_cols} ({per}); "
                             f"only {sel.size} selected. Fix: {where}.")
    out: list[Placement] = []
    k = 0
    for la, n in zip(conv.analog, need, strict=True):
        out.append(Placement(la, tile_layout(la.shape, (geometry.n_rows, geometry.n_cols)), sel[k : k + n].copy()))
        k += n
    return out

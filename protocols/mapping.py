"""Weight matrices onto cores: tiling, per-core Gmax mapping and target conductances.

Conventions (as in :mod:`hil.chip`): a weight matrix ``W`` has shape ``(n_in, n_out)`` and the
chip computes ``y = x @ W``; crossbar rows are inputs and columns are outputs. Target conductances
are **signed unit-cell conductances in verify ADC counts** (G+ - G-), the unit the chip's verify
reads return.

* Tiling [NE23 Methods]: a matrix larger than a core is cut into the fewest *equal* sub-matrices
  whose dimensions fit a core (e.g. 2016 x 224 -> 8 tiles of 252 x 224), each zero-padded to the
  core size.
* Per-core Gmax mapping [NE23 eq. 1]: ``G = W * Gmax / Wmax`` with ``Wmax = max |W|`` of the tile on
  that core. ``Gmax`` is 80 counts for one device per polarity (ODP) and 160 for two (TDP) in the
  paper; optionally lowered per core so that no bit-line current can exceed a limit (see
  :func:`core_gmax`).
* Mapping options (:class:`MappingSpec`, :func:`map_weights`), as aihwkit's weight clipping and
  ``weight_scaling_columnwise``: ``Wmax`` from a percentile of ``|W|`` or ``n`` standard deviations of
  ``W`` instead of the maximum (weights beyond it are clipped to ``+-Wmax``), taken per core or per
  column (then each column has its own ``Wmax``, and the chip's per-column output scale - the LDPU
  registers - undoes it). Heavy-tailed trained weights mapped by ``max |W|`` leave most cells below
  the programming margin, where they stay RESET: :func:`below_margin_fraction` measures that.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.chip import Geometry
from hil.errors import ChipInputError

#: Paper values of Gmax in verify counts [NE23]: one device per polarity (ODP) and two (TDP).
GMAX_ODP_COUNTS = 80.0
GMAX_TDP_COUNTS = 160.0
#: Verify counts per uS: 80 counts ~ 10.35 uS, the HermesNoiseModel 1-device g_max (ASSUMPTION,
#: [NE23], [AIHW] - the papers give no count-to-uS scale). Used only to turn counts into bit-line
#: currents for the saturation bounds; set it from the lab chip's own characterisation there.
COUNTS_PER_US = 80.0 / 10.35


@dataclass(frozen=True)
class Tile:
    """One tile of a weight matrix: the slice of ``W`` it holds and its size before padding."""

    index: int
    rows: slice
    cols: slice

    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows.stop - self.rows.start, self.cols.stop - self.cols.start)


@dataclass(frozen=True)
class TileLayout:
    """How a weight matrix of ``shape`` is cut into tiles of a core of ``core_shape``."""

    shape: tuple[int, int]
    core_shape: tuple[int, int]
    tiles: tuple[Tile, ...]

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)


def tile_layout(shape: tuple[int, int], core_shape: tuple[int, int] = (256, 256)) -> TileLayout:
    """Fewest equal tiles that fit a core: ``ceil(n / core)`` parts per axis, sizes differ by <= 1.

    Raises :class:`ChipInputError` for an empty or non-2-D shape.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ChipInputError(f"weight shape {tuple(shape)} is not a non-empty 2-D (n_in, n_out) matrix.")
    parts = []
    for n, core in zip(shape, core_shape, strict=True):
        k = -(-n // core)
        edges = np.linspace(0, n, k + 1).round().astype(int)
        parts.append([slice(int(a), int(b)) for a, b in itertools.pairwise(edges)])
    tiles = tuple(
        Tile(i * len(parts[1]) + j, r, c) for i, r in enumerate(parts[0]) for j, c in enumerate(parts[1])
    )
    return TileLayout((int(shape[0]), int(shape[1])), (int(core_shape[0]), int(core_shape[1])), tiles)


def split_tiles(w: np.ndarray, core_shape: tuple[int, int] = (256, 256)) -> tuple[np.ndarray, TileLayout]:
    """Cut ``w`` (n_in, n_out) into zero-padded tiles: returns (n_tiles, *core_shape) and the layout."""
    w = check_weights(w)
    layout = tile_layout(w.shape, core_shape)
    out = np.zeros((layout.n_tiles, *layout.core_shape), dtype=np.float64)
    for t in layout.tiles:
        out[t.index, : t.shape[0], : t.shape[1]] = w[t.rows, t.cols]
    return out, layout


def merge_tiles(tiles: np.ndarray, layout: TileLayout) -> np.ndarray:
    """Inverse of :func:`split_tiles`: reassemble a (n_in, n_out) matrix from padded tiles."""
    if tiles.shape[0] != layout.n_tiles:
        raise ChipInputError(f"got {tiles.shape[0]} tiles; the layout has {layout.n_tiles}.")
    out = np.zeros(layout.shape, dtype=tiles.dtype)
    for t in layout.tiles:
        out[t.rows, t.cols] = tiles[t.index, : t.shape[0], : t.shape[1]]
    return out


def check_weights(w: np.ndarray, shape: tuple[int, ...] | None = None, name: str = "weights") -> np.ndarray:
    """``w`` as float64 after checking it is finite (and of ``shape`` if given)."""
    arr = np.asarray(w)
    if arr.dtype.kind not in "fiub":
        raise ChipInputError(f"{name} have dtype {arr.dtype}; pass a real-valued array.")
    arr = arr.astype(np.float64)
    if shape is not None and arr.shape != tuple(shape):
        raise ChipInputError(f"{name} have shape {arr.shape}; expected {tuple(shape)}.")
    if arr.size and not np.all(np.isfinite(arr)):
        flat = np.flatnonzero(~np.isfinite(arr.reshape(-1)))
        idx = np.unravel_index(int(flat[0]), arr.shape)
        raise ChipInputError(
            f"{name} contain {flat.size} non-finite value(s), first {arr[idx]!r} at index {tuple(map(int, idx))}; "
            "replace NaN/inf before programming."
        )
    return arr


class MappingSpec(BaseModel):
    """How weights become conductances: the clipping that sets ``Wmax``, and per core or per column.

    Statistics are taken over the nonzero weights of the core's tile (or column), so zero padding and
    pruned weights do not shrink them.
    """

    model_config = ConfigDict(extra="forbid")

    clip: Literal["none", "percentile", "sigma"] = Field(
        "none", description="Wmax: none = max|W| [NE23 eq. 1]; percentile of |W|; sigmas x std(W)")
    percentile: float = Field(99.5, gt=50.0, le=100.0, description="clip='percentile': percentile of |W| that maps to Gmax")
    sigmas: float = Field(3.0, gt=0.0, le=100.0, description="clip='sigma': Wmax = sigmas x std(W) (aihwkit clip 2-3 sigma)")
    scale: Literal["core", "column"] = Field("core", description="one Wmax per core, or one per column (output)")


def _wmax(w: np.ndarray, spec: MappingSpec) -> float:
    """Wmax of one set of weights (a tile or a column): max |W|, capped by the clipping rule; 1 if all zero."""
    nz = w[w != 0]
    if nz.size == 0:
        return 1.0
    top = float(np.abs(nz).max())
    if spec.clip == "percentile":
        cap = float(np.percentile(np.abs(nz), spec.percentile))
    elif spec.clip == "sigma":
        cap = spec.sigmas * float(nz.std()) if nz.size > 1 else top
    else:
        cap = top
    return cap if 0.0 < cap < top else top


def map_weights(w_tiles: np.ndarray, gmax_counts: np.ndarray | float,
                spec: MappingSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Targets [counts] ``G = clip(W, +-Wmax) * Gmax / Wmax`` per core (or per column) and ``Wmax``.

    ``w_tiles``: (n, rows, cols); ``gmax_counts``: scalar or (n,). Returns targets (n, rows, cols) and
    ``Wmax`` of shape (n, cols) (the same in every column with ``scale='core'``); weights are recovered
    as ``W = G * Wmax / Gmax`` column by column. ``spec=None`` is :func:`map_to_conductance`.
    """
    spec = spec or MappingSpec()
    w_tiles = check_weights(w_tiles)
    if w_tiles.ndim != 3:
        raise ChipInputError(f"w_tiles has shape {w_tiles.shape}; expected (n_tiles, rows, cols).")
    n, _, cols = w_tiles.shape
    gmax = np.broadcast_to(np.asarray(gmax_counts, dtype=np.float64), (n,))
    if np.any(~np.isfinite(gmax)) or np.any(gmax <= 0):
        raise ChipInputError(f"gmax_counts={gmax.tolist()} must be positive and finite (80 ODP, 160 TDP).")
    if spec.scale == "core":
        wmax = np.repeat(np.array([_wmax(w_tiles[i], spec) for i in range(n)])[:, None], cols, axis=1)
    else:
        wmax = np.array([[_wmax(w_tiles[i, :, c], spec) for c in range(cols)] for i in range(n)])
    w = np.clip(w_tiles, -wmax[:, None, :], wmax[:, None, :])
    return w * (gmax[:, None, None] / wmax[:, None, :]), wmax


def clipped_fraction(w_tiles: np.ndarray, wmax: np.ndarray) -> np.ndarray:
    """Per core: fraction of the nonzero weights beyond ``Wmax`` (n, cols), i.e. clipped by the mapping."""
    w = np.asarray(w_tiles, dtype=np.float64)
    nz = (w != 0).reshape(w.shape[0], -1).sum(1)
    over = (np.abs(w) > wmax[:, None, :] * (1 + 1e-12)).reshape(w.shape[0], -1).sum(1)
    return over / np.maximum(nz, 1)


def below_margin_fraction(w_tiles: np.ndarray, targets: np.ndarray, margin_counts: float) -> np.ndarray:
    """Per core: fraction of the nonzero weights whose |target| is below the P&V margin [counts].

    P&V leaves such cells RESET (about 0 counts), so in effect they are pruned.
    """
    w = np.asarray(w_tiles)
    nz = w != 0
    small = nz & (np.abs(targets) < margin_counts)
    return small.reshape(w.shape[0], -1).sum(1) / np.maximum(nz.reshape(w.shape[0], -1).sum(1), 1)


def bitline_currents_ua(
    g_counts: np.ndarray, x: np.ndarray | None = None, *, v_read_v: float = 0.2, counts_per_us: float = COUNTS_PER_US
) -> np.ndarray:
    """Largest window-mean bit-line current [uA] of each column in 4-phase mode.

    In 4-phase mode each 128 ns window drives one input sign onto one weight polarity, so a column
    carries ``v_read * sum_r x_r^s G_rc^p / 127`` in the (s, p) window (x as a fraction of full scale).
    ``g_counts``: signed targets (..., rows, cols); ``x``: inputs (B, rows) in [-127, 127] or None for
    the worst case (all rows at full scale). Returns (..., cols) for the worst case, or (..., B, cols).
    """
    g_us = np.asarray(g_counts, dtype=np.float64) / counts_per_us
    gp, gn = np.clip(g_us, 0, None), np.clip(-g_us, 0, None)
    if x is None:
        return v_read_v * np.maximum(gp.sum(-2), gn.sum(-2))
    xf = np.asarray(x, dtype=np.float64) / 127.0
    xp, xn = np.clip(xf, 0, None), np.clip(-xf, 0, None)
    windows = [a @ b for a in (xp, xn) for b in (gp, gn)]
    return v_read_v * np.max(np.stack(windows), axis=0)


def core_gmax(
    w_tiles: np.ndarray,
    gmax_counts: float,
    *,
    bitline_limit_ua: float | None = None,
    v_read_v: float = 0.2,
    counts_per_us: float = COUNTS_PER_US,
) -> np.ndarray:
    """Per-core Gmax [counts]: ``min(gmax_counts, value keeping every bit-line current < limit)``.

    [NE23 Methods]: per-core Gmax = min(unit-cell limit, value keeping every BL current below
    ~100 uA). The worst case taken here (ASSUMPTION, the paper does not say) is every row at full
    input scale with the sign that adds up in one 4-phase window. ``w_tiles``: (n, rows, cols).
    """
    w_tiles = np.asarray(w_tiles, dtype=np.float64)
    gmax = np.full(w_tiles.shape[0], float(gmax_counts))
    if bitline_limit_ua is None:
        return gmax
    wmax = np.abs(w_tiles).reshape(w_tiles.shape[0], -1).max(1)
    wmax = np.where(wmax > 0, wmax, 1.0)
    g = w_tiles * (gmax / wmax)[:, None, None]
    worst = bitline_currents_ua(g, None, v_read_v=v_read_v, counts_per_us=counts_per_us).max(-1)
    factor = np.where(worst > bitline_limit_ua, bitline_limit_ua / np.maximum(worst, 1e-12), 1.0)
    return gmax * factor


def map_to_conductance(w_tiles: np.ndarray, gmax_counts: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
    """Targets ``G = W * Gmax / Wmax`` [counts] per core, and ``Wmax`` per core.

    ``w_tiles``: (n, rows, cols) weights; ``gmax_counts``: scalar or (n,). An all-zero tile maps to
    zeros (its Wmax is reported as 1). Weight units are recovered as ``W = G * Wmax / Gmax``.
    """
    w_tiles = check_weights(w_tiles)
    if w_tiles.ndim != 3:
        raise ChipInputError(f"w_tiles has shape {w_tiles.shape}; expected (n_tiles, rows, cols).")
    n = w_tiles.shape[0]
    gmax = np.broadcast_to(np.asarray(gmax_counts, dtype=np.float64), (n,))
    if np.any(~np.isfinite(gmax)) or np.any(gmax <= 0):
        raise ChipInputError(f"gmax_counts={gmax.tolist()} must be positive and finite (80 ODP, 160 TDP).")
    wmax = np.abs(w_tiles).reshape(n, -1).max(1) if w_tiles.size else np.ones(n)
    wmax = np.where(wmax > 0, wmax, 1.0)
    return w_tiles * (gmax / wmax)[:, None, None], wmax


class WeightSpec(BaseModel):
    """Where a protocol's target weights come from.

    ``uniform`` / ``normal``: one independent random (rows x cols) matrix per selected core, drawn
    from the run's random generator (uniform in [-1, 1] or N(0, 1) clipped at 3 sigma), with a
    fraction ``sparsity`` of exact zeros. ``file``: a ``.npy`` matrix (no pickles) or an HDF5
    dataset (``path``, ``dataset``) of shape (n_in, n_out), split into core-sized tiles placed on
    the selected cores in order.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["uniform", "normal", "file"] = Field("uniform", description="source of the weights")
    sparsity: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of zero weights (random kinds)")
    path: str | None = Field(None, description="file with the weight matrix (kind='file'): .npy or .h5/.hdf5")
    dataset: str | None = Field(None, description="HDF5 dataset name inside `path`")

    @model_validator(mode="after")
    def _file_needs_path(self) -> WeightSpec:
        if self.kind == "file" and not self.path:
            raise ValueError("kind='file' needs `path` (a .npy file or an HDF5 file with `dataset`).")
        if self.kind != "file" and (self.path or self.dataset):
            raise ValueError(f"kind={self.kind!r} draws random weights; `path`/`dataset` are only for kind='file'.")
        return self


#: Most weights a weight file may hold (64 full cores of 256 x 256 is 4.2 M): checked before loading.
MAX_WEIGHTS = 2**26


def _check_npy_header(p: Path) -> None:
    """Refuse a .npy whose header declares more than MAX_WEIGHTS elements or a non-numeric dtype, before reading its data."""
    try:
        with open(p, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = reader(fh)
    except (ValueError, OSError) as exc:
        raise ChipInputError(f"{str(p)!r} is not a readable .npy file ({exc}); save the weights with np.save.") from None
    n = int(np.prod(shape, dtype=np.float64))
    if n > MAX_WEIGHTS:
        raise ChipInputError(f"{str(p)!r} declares {n} weights (shape {shape}); allowed up to {MAX_WEIGHTS}.")
    if dtype.kind not in "biuf":
        raise ChipInputError(f"{str(p)!r} holds no plain numeric array (dtype {dtype}); save a float array with np.save.")


def load_weight_file(path: str | Path, dataset: str | None = None) -> np.ndarray:
    """A 2-D weight matrix from a ``.npy`` file (``allow_pickle=False``) or an HDF5 dataset."""
    p = Path(path)
    if not p.is_file():
        raise ChipInputError(f"weight file {str(p)!r} does not exist; give the path of a .npy or .h5 file.")
    if p.suffix == ".npy":
        _check_npy_header(p)
        try:
            arr = np.load(p, allow_pickle=False)
        except ValueError as exc:  # object arrays need pickle, which we never load
            raise ChipInputError(f"{str(p)!r} holds no plain numeric array ({exc}); save a float array with np.save.") from None
    elif p.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            if not dataset or dataset not in f:
                names: list[str] = []
                f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) else None)
                raise ChipInputError(f"dataset={dataset!r} not in {str(p)!r}; datasets there: {names}.")
            ds = f[dataset]
            if not isinstance(ds, h5py.Dataset) or ds.size > MAX_WEIGHTS or ds.dtype.kind not in "biuf":
                raise ChipInputError(
                    f"dataset {dataset!r} in {str(p)!r} is not a numeric matrix of at most {MAX_WEIGHTS} weights."
                )
            arr = np.asarray(ds[()])
    else:
        raise ChipInputError(f"weight file {str(p)!r} has suffix {p.suffix!r}; use .npy, .h5 or .hdf5.")
    if arr.ndim != 2:
        raise ChipInputError(f"weight matrix in {str(p)!r} has shape {arr.shape}; expected 2-D (n_in, n_out).")
    return check_weights(arr, name=f"weights in {p.name}")


def weight_inputs(spec: WeightSpec) -> dict[str, Any]:
    """The run inputs of a weight source: ``{"weights": (matrix, absolute path)}`` for a file, else none.

    Protocols register this (``inputs=``) so the matrix is loaded before the run starts (a missing
    or bad file is bad input: exit 2, no run file) and stored in the run file with its sha256;
    replays and resumes then use the stored copy, from any folder.
    """
    if spec.kind != "file":
        return {}
    source = str(Path(spec.path or "").expanduser().resolve())
    return {"weights": (load_weight_file(spec.path or "", spec.dataset), source)}


def _matrix(spec: WeightSpec, matrix: np.ndarray | None) -> np.ndarray:
    """The file weights: the stored run input when there is one, else loaded from the file."""
    if matrix is not None:
        return check_weights(np.asarray(matrix, dtype=np.float64), name="the run's stored weights")
    return load_weight_file(spec.path or "", spec.dataset)


def weight_tiles(
    spec: WeightSpec, geometry: Geometry, n_cores: int, rng: np.random.Generator, matrix: np.ndarray | None = None
) -> np.ndarray:
    """Weights for ``n_cores`` cores as padded tiles (n_cores, rows, cols) (zeros on unused cores).

    ``matrix``: the file weights already loaded (the run's stored input); None loads ``spec.path``.
    """
    shape = (geometry.n_rows, geometry.n_cols)
    if spec.kind == "file":
        tiles, layout = split_tiles(_matrix(spec, matrix), shape)
        if layout.n_tiles > n_cores:
            raise ChipInputError(
                f"the weight matrix {layout.shape} needs {layout.n_tiles} cores of {shape}; only {n_cores} "
                "selected. Select more cores or use a smaller matrix."
            )
        out = np.zeros((n_cores, *shape))
        out[: layout.n_tiles] = tiles
        return out
    if spec.kind == "uniform":
        w = rng.uniform(-1.0, 1.0, size=(n_cores, *shape))
    else:
        w = np.clip(rng.standard_normal((n_cores, *shape)), -3.0, 3.0)
    if spec.sparsity > 0:
        w[rng.random(w.shape) < spec.sparsity] = 0.0
    return w


def select_cores(cores: list[int] | None, geometry: Geometry) -> np.ndarray:
    """Core indices from a config (None = all), checked: in range, no repeats."""
    if cores is None:
        return np.arange(geometry.n_cores)
    arr = np.asarray(cores, dtype=np.int64)
    if arr.ndim != 1 or arr.size == 0:
        raise ChipInputError(f"cores={cores!r}; give a non-empty list of core indices or null for all cores.")
    if arr.min() < 0 or arr.max() >= geometry.n_cores:
        bad = int(arr[(arr < 0) | (arr >= geometry.n_cores)][0])
        raise ChipInputError(f"cores contains {bad}; allowed [0, {geometry.n_cores - 1}] on this chip.")
    if np.unique(arr).size != arr.size:
        raise ChipInputError(f"cores={cores!r} repeats a core; list each core once.")
    return arr


def resolve_cores(
    cores: list[int] | None, spec: WeightSpec, geometry: Geometry, matrix: np.ndarray | None = None
) -> np.ndarray:
    """Cores a protocol programs, checked before any chip call (loads and checks a weight file).

    Random weights: :func:`select_cores` (null: all cores). File weights: null selects the first
    cores the matrix needs; a list must name exactly that many cores, because a core without weights
    has no MVM error to measure (its ideal output is zero). A tile of the file that is all zero is
    refused for the same reason.
    """
    if spec.kind != "file":
        return select_cores(cores, geometry)
    w = _matrix(spec, matrix)
    shape = (geometry.n_rows, geometry.n_cols)
    tiles, layout = split_tiles(w, shape)
    need = layout.n_tiles
    cores_word = "core" if need == 1 else "cores"
    if need > geometry.n_cores:
        raise ChipInputError(f"the weight matrix {layout.shape} needs {need} cores of {shape}; the chip has "
                             f"{geometry.n_cores}. Use a smaller matrix or a chip with more cores.")
    if cores is None:
        sel = np.arange(need)
    else:
        sel = select_cores(cores, geometry)
        if sel.size < need:
            raise ChipInputError(f"the weight matrix {layout.shape} needs {need} cores of {shape}; only {sel.size} "
                                 f"selected (cores={cores}). Select {need} cores or use a smaller matrix.")
        if sel.size > need:
            raise ChipInputError(f"cores={cores} selects {sel.size} cores, but the weight matrix {layout.shape} fills only "
                                 f"{need} of {shape}; the other cores would hold no weights. Select {need} {cores_word}, "
                                 f"e.g. cores={sel[:need].tolist()}, or null for the first {need}.")
    empty = [t for t in layout.tiles if not np.any(tiles[t.index])]
    if empty:
        t = empty[0]
        raise ChipInputError(f"tile {t.index} of the weight matrix (rows {t.rows.start}:{t.rows.stop}, cols "
                             f"{t.cols.start}:{t.cols.stop}) is all zero: its core would hold no weights and have no "
                             "MVM error. Remove the zero block from the matrix.")
    return sel

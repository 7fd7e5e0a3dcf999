"""Post-training optimisation (PTO) on real activations [PTO24 Alg. 1]: input ranges and conductance ranges.

* **Activations**: the input of every analog layer on calibration data, collected with forward
  pre-hooks on a float64 copy of the torch model (the way aihwkit's ``calibrate_input_ranges``
  does, [AIHW inference/calibration/calibration.py]), run on one torch thread so that the values -
  and the chip calls that follow from them - are the same bits in every process.
* **Input (DAC) range** per tile: ``X_r`` = the ``percentile`` of |X| over the tile's input rows;
  inputs beyond it clip at 127 PWM LSB. ``input_range='search'`` instead keeps, per tile, the
  candidate percentile whose chip output (after programming) is closest to the float output on the
  calibration activations (see :meth:`protocols.deploy.model.DeployedModel.search_input_ranges`).
  K is not published ([PTO24], docs/references.md): 99.99 is this project's default (ASSUMPTION).
* **Conductance range per column**: with the calibration inputs as PWM codes, the largest 4-phase
  window current of each column (``v_read sum_r x_r G_rc / 127``, as
  :func:`protocols.mapping.bitline_currents_ua`) has mean mu and std sigma over the non-zero
  samples; where ``I_P = mu + L sigma`` exceeds the ADC saturation current I_S (100 uA on HERMES
  [NE23 Methods]) the column's Gmax is scaled by I_S / I_P (floored at ``min_fraction`` Gmax;
  L = 3 is this project's choice, ASSUMPTION, as in :func:`protocols.calibration.column_gmax`).
  The column's output scale (the affine that turns counts into numbers) absorbs the change.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from hil.chip import INPUT_MAX
from hil.errors import ChipInputError
from protocols.deploy.layers import Converted, im2col, run_reference
from protocols.deploy.plan import Placement
from protocols.mapping import COUNTS_PER_US


class PtoParams(BaseModel):
    """Post-training optimisation settings [PTO24]; ``enabled: false`` maps by the plain maxima."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="false: input range = max |X|, column Gmax = Gmax (no PTO)")
    input_range: Literal["percentile", "search"] = Field("percentile", description="per-tile input range rule")
    percentile: float = Field(99.99, gt=50.0, le=100.0, description="K: percentile of |X| mapped to 127 LSB")
    search_percentiles: list[float] = Field([100.0, 99.99, 99.9, 99.5, 99.0, 98.0, 95.0, 90.0], min_length=2,
                                            description="candidates of input_range='search'")
    search_samples: int = Field(512, ge=16, le=65536, description="calibration rows per candidate MVM (search)")
    conductance_range: bool = Field(True, description="scale each column's Gmax so that its ADC does not saturate")
    saturation_ua: float = Field(100.0, gt=0.0, le=1000.0, description="I_S: ADC saturation current [uA]")
    saturation_sigmas: float = Field(3.0, gt=0.0, le=10.0, description="L of I_P = mu + L sigma")
    min_fraction: float = Field(0.25, gt=0.0, le=1.0, description="lowest column Gmax as a fraction of Gmax")
    v_read_v: float = Field(0.2, gt=0.0, le=1.0, description="read voltage [V] (HERMES 0.2 V)")
    counts_per_us: float = Field(COUNTS_PER_US, gt=0.0, description="verify counts per uS (80 counts ~ 10.35 uS, ASSUMPTION)")

    @field_validator("search_percentiles")
    @classmethod
    def _in_range(cls, v: list[float]) -> list[float]:
        bad = [p for p in v if not 50.0 < p <= 100.0]
        if bad:
            raise ValueError(f"search_percentiles {bad} out of range; allowed (50, 100].")
        return v


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one thread inside the block (values then do not depend on the thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def collect_layer_inputs(conv: Converted, x: np.ndarray, model: nn.Module | None = None) -> list[np.ndarray]:
    """Every analog layer's input on ``x`` as (rows, n_in) float64 (im2col patches for a conv).

    With ``model``: forward pre-hooks on a float64 copy of it (one torch thread); without: the
    converted layers' float64 reference.
    """
    if model is None:
        return run_reference(conv, x, capture=True)[1]
    m = copy.deepcopy(model).double().eval()
    mods = dict(m.named_modules())
    got: dict[str, np.ndarray] = {}
    handles = []
    for la in conv.analog:
        if la.name not in mods:
            raise ChipInputError(f"layer {la.name!r} is not a module of the model; cannot hook its inputs.")

        def hook(_mod: nn.Module, args: tuple[torch.Tensor, ...], name: str = la.name, layer=la) -> None:
            a = args[0].detach().numpy().astype(np.float64)
            got[name] = im2col(a, layer.conv)[0] if layer.conv is not None else a.reshape(a.shape[0], -1)

        handles.append(mods[la.name].register_forward_pre_hook(hook))
    try:
        with one_thread(), torch.no_grad():
            m(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    finally:
        for h in handles:
            h.remove()
    return [got[la.name] for la in conv.analog]


def tile_input_ranges(p: Placement, acts: np.ndarray, percentile: float, per_layer: bool = False) -> np.ndarray:
    """Input range per tile [input units]: the ``percentile`` of |X| over the tile's rows (or the whole layer)."""
    ranges = np.empty(p.layout.n_tiles)
    whole = float(np.percentile(np.abs(acts), percentile)) if per_layer else 0.0
    for t in p.layout.tiles:
        r = whole if per_layer else float(np.percentile(np.abs(acts[:, t.rows]), percentile))
        ranges[t.index] = r if r > 0 else 1.0
    return ranges


def quantize(x: np.ndarray, x_range: float) -> np.ndarray:
    """PWM codes ``clip(round(127 x / x_range), -127, 127)`` (int8), elementwise in float64."""
    q = np.rint(np.asarray(x, dtype=np.float64) * (INPUT_MAX / x_range))
    return np.clip(q, -INPUT_MAX, INPUT_MAX).astype(np.int8)


def window_currents_ua(g_counts: np.ndarray, codes: np.ndarray, v_read_v: float, counts_per_us: float) -> np.ndarray:
    """Largest 4-phase window current [uA] per sample and column: (n, B, cols) from targets (n, rows, cols)
    and codes (n, B, rows); fixed summation order (einsum)."""
    g_us = np.asarray(g_counts, dtype=np.float64) / counts_per_us
    gp, gn = np.clip(g_us, 0, None), np.clip(-g_us, 0, None)
    xf = np.asarray(codes, dtype=np.float64) / INPUT_MAX
    xp, xn = np.clip(xf, 0, None), np.clip(-xf, 0, None)
    best = None
    for a in (xp, xn):
        for b in (gp, gn):
            w = np.einsum("nbr,nrc->nbc", a, b, optimize=False)
            best = w if best is None else np.maximum(best, w)
    assert best is not None
    return v_read_v * best


def conductance_ranges(g_counts: np.ndarray, codes: np.ndarray, gmax: np.ndarray,
                       params: PtoParams) -> tuple[np.ndarray, np.ndarray]:
    """Per-column Gmax [counts] (n, cols) bounded by ADC saturation, and the predicted I_P [uA] (n, cols)
    of the targets ``g_counts`` (mapped at ``gmax`` (n,)) for the calibration ``codes`` (n, B, rows)."""
    n, _, cols = g_counts.shape
    i_p = np.zeros((n, cols))
    for k in range(n):
        used = np.any(codes[k] != 0, axis=1)
        if not used.any():
            continue
        cur = window_currents_ua(g_counts[k : k + 1], codes[k : k + 1][:, used], params.v_read_v, params.counts_per_us)[0]
        i_p[k] = cur.mean(0) + params.saturation_sigmas * cur.std(0)
    factor = np.where(i_p > params.saturation_ua, params.saturation_ua / np.maximum(i_p, 1e-12), 1.0)
    return gmax[:, None] * np.maximum(factor, params.min_fraction), i_p

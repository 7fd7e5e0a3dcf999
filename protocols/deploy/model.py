"""Deploy a torch model onto a chip and run it there: :func:`deploy` and :class:`DeployedModel`.

``deploy(model, chip, calibration_data)`` converts the model (:mod:`protocols.deploy.layers`),
places every tile on its own core (:mod:`protocols.deploy.plan`), runs PTO on the calibration
activations (:mod:`protocols.deploy.pto`), maps weights per column (``G = W Gmax_c / Wmax_c``,
[NE23 eq. 1] with aihwkit's column-wise scaling), programs them (program-and-verify [NE23], GDP
[GDP22], or the emulator's statistical fast path), fits each column's affine ``counts = a_c (X T)_c +
b_c`` ([JSSC22] per-ADC gain and offset, as :func:`protocols.calibration.fit_columns`) and records the
global drift compensation reference ([JOSHI20], :class:`protocols.calibration.GlobalDriftCompensation`).

Per analog layer, the forward pass is (all in float64 numpy, fixed order, no BLAS: the same bits in
every process, so a recorded run replays exactly):

1. ``codes_t = clip(round(127 x[:, rows_t] / X_r,t), -127, 127)`` for every tile t;
2. one ``chip.mvm`` with every tile's codes on its own core (batched over samples);
3. ``y[:, cols_t] += (counts_t - b_t) g_t`` over the row tiles in order, with the column gain
   ``g_t = alpha_t (X_r,t / 127) (Wmax_t / Gmax_t) / a_t`` (alpha: GDC factor, 1 until applied);
4. ``+ bias``; ReLU, pooling and flatten on the host.

``output='ldpu'`` (the HERMES dataflow [NE23]): a layer with one row tile whose output feeds another
analog layer has step 3-4 and the ReLU folded into its LDPU registers (``scale = g 127 / X_r,next``,
``offset = (bias - b g) 127 / X_r,next``); its INT8 outputs are the next layer's PWM codes (-128 -> -127).
Input ranges are then one per layer. The last layer always returns numbers (raw path).

Gradients: a differentiable proxy per layer - least-squares weights W_hat estimated from the chip's
own MVMs ([NE23] W_hat, [ADV25] eq. 1), straight-through estimators at the input quantisers - carries
the gradient while the value comes from the chip (``refit_proxy`` follows drift).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from hil.chip import INPUT_MAX, Chip
from hil.errors import ChipInputError
from hil.protocol import MemoryRunLog, RunLog
from protocols.calibration import FP16_MAX, GlobalDriftCompensation
from protocols.deploy.layers import AnalogLayer, Converted, DigitalOp, apply_digital, convert_model, fold_output, im2col
from protocols.deploy.plan import Placement, place_layers
from protocols.deploy.pto import PtoParams, collect_layer_inputs, conductance_ranges, quantize, tile_input_ranges
from protocols.gdp import GdpParams, gradient_descent_program
from protocols.mapping import GMAX_ODP_COUNTS, MappingSpec, map_weights, split_tiles
from protocols.metrics import least_squares_weights, random_inputs
from protocols.program_verify import ProgramVerifyParams, program_verify

Programming = Literal["program-verify", "gdp", "fast"]


class DeployConfig(BaseModel):
    """How :func:`deploy` maps, programs and calibrates a model."""

    model_config = ConfigDict(extra="forbid")

    programming: Programming = Field("program-verify", description="program-verify | gdp (P&V, then GDP) | fast "
                                     "(the emulator's statistical fast path, program_weights; emulator only)")
    program_verify: ProgramVerifyParams = Field(default_factory=ProgramVerifyParams)
    gdp: GdpParams = Field(default_factory=GdpParams)
    gmax_counts: float | None = Field(None, gt=0.0, le=400.0, description="Gmax [counts]; null: 80 per device per polarity")
    mapping: MappingSpec = Field(default_factory=lambda: MappingSpec(scale="column"),
                                 description="Wmax rule; scale='column' gives every column its own Wmax [AIHW]")
    pto: PtoParams = Field(default_factory=PtoParams)
    output: Literal["adc", "ldpu"] = Field("adc", description="adc: raw counts, affine on the host; ldpu: INT8 codes chained")
    calibration_rows: int = Field(2048, ge=16, le=1_000_000, description="most calibration rows per layer used for fits")
    affine_inputs: int = Field(1024, ge=0, le=65536, description="random MVMs added to the calibration rows for the affine")
    gdc_inputs: int = Field(256, ge=1, le=65536, description="reference inputs of the global drift compensation")
    proxy_inputs: int = Field(1024, ge=0, le=65536, description="random MVMs for the gradient proxy (0: fit on first use)")
    mvm_batch: int = Field(2048, ge=1, le=65536, description="input vectors per chip.mvm call")


@dataclass
class LayerState:
    """One analog layer on the chip: placement, ranges, mapping, affine and GDC factor (arrays per tile)."""

    placement: Placement
    x_range: np.ndarray  # (n_tiles,) input range [input units] -> 127 LSB
    wmax: np.ndarray  # (n_tiles, cols) weight mapped to the column's Gmax
    gmax: np.ndarray  # (n_tiles, cols) column Gmax [counts]
    targets: np.ndarray  # (n_tiles, rows, cols) programmed targets [counts]
    a: np.ndarray  # (n_tiles, cols) counts per (LSB x count)
    b: np.ndarray  # (n_tiles, cols) counts offset
    alpha: np.ndarray  # (n_tiles,) GDC factor
    ldpu: bool = False
    relu: bool = False
    next_range: float = 1.0
    i_p_ua: np.ndarray | None = None  # (n_tiles, cols) predicted I_P at the plain Gmax
    proxy_w: torch.Tensor | None = None  # (n_in, n_out) float64

    @property
    def layer(self) -> AnalogLayer:
        return self.placement.layer

    @property
    def cores(self) -> np.ndarray:
        return self.placement.cores

    def gain(self, x_range: np.ndarray | None = None) -> np.ndarray:
        """Column gain g (n_tiles, cols) [output units per count] for ``x_range`` (default the layer's)."""
        xr = self.x_range if x_range is None else x_range
        return (self.alpha * (xr / INPUT_MAX))[:, None] * (self.wmax / self.gmax) / self.a


@dataclass
class MvmStats:
    """Time spent in ``chip.mvm`` [s] and calls made, since the last :meth:`reset`."""

    seconds: float = 0.0
    calls: int = 0
    vectors: int = 0

    def reset(self) -> None:
        self.seconds, self.calls, self.vectors = 0.0, 0, 0


class DeployedModel(nn.Module):
    """A model whose analog layers run on ``chip`` (see the module docstring for the arithmetic)."""

    def __init__(self, chip: Chip, converted: Converted, layers: list[LayerState], config: DeployConfig,
                 gdc: GlobalDriftCompensation | None, rng: np.random.Generator) -> None:
        super().__init__()
        self.chip = chip
        self.converted = converted
        self.states = layers
        self.config = config
        self.gdc = gdc
        self.stats = MvmStats()
        self.report: dict[str, Any] = {}
        self.t_programmed = chip.now()
        self._rng = rng

    # ------------------------------------------------------------------ chip calls
    def _mvm(self, codes: np.ndarray, cores: np.ndarray, output: str = "adc") -> np.ndarray:
        """``chip.mvm`` of per-tile codes (n_tiles, N, rows), batched over N; (n_tiles, N, cols)."""
        parts = []
        step = self.config.mvm_batch
        for i in range(0, codes.shape[1], step):
            chunk = np.ascontiguousarray(codes[:, i : i + step])
            t0 = time.perf_counter()
            out = self.chip.mvm(chunk, cores, output=output)  # type: ignore[arg-type]
            self.stats.seconds += time.perf_counter() - t0
            self.stats.calls += 1
            self.stats.vectors += chunk.shape[1]
            parts.append(np.asarray(out))
        return np.concatenate(parts, axis=1)

    def _codes(self, st: LayerState, x: np.ndarray, x_range: np.ndarray | None = None) -> np.ndarray:
        xr = st.x_range if x_range is None else x_range
        rows = self.chip.geometry.n_rows
        codes = np.zeros((st.placement.layout.n_tiles, x.shape[0], rows), dtype=np.int8)
        for t in st.placement.layout.tiles:
            codes[t.index, :, : t.shape[0]] = quantize(x[:, t.rows], float(xr[t.index]))
        return codes

    def _combine(self, st: LayerState, counts: np.ndarray, g: np.ndarray, b: np.ndarray, bias: bool = True) -> np.ndarray:
        y = np.zeros((counts.shape[1], st.layer.shape[1]))
        for t in st.placement.layout.tiles:
            w = t.shape[1]
            y[:, t.cols] += (counts[t.index, :, :w] - b[t.index, :w]) * g[t.index, :w]
        return y + st.layer.bias if bias else y

    def _layer(self, st: LayerState, x: np.ndarray, mode: str) -> np.ndarray:
        """One analog layer on 2-D input (N, n_in) -> (N, n_out); ``mode`` chip | raw | ideal."""
        codes = self._codes(st, x)
        if mode == "ideal":
            counts = np.einsum("tnr,trc->tnc", codes.astype(np.float64), st.targets, optimize=False)
            g = (st.x_range / INPUT_MAX)[:, None] * (st.wmax / st.gmax)
            return self._combine(st, counts, g, np.zeros_like(st.b))
        if mode == "chip" and st.ldpu:
            out = self._mvm(codes, st.cores, "ldpu").astype(np.float64)
            out = np.maximum(out, -INPUT_MAX)
            y = np.zeros((x.shape[0], st.layer.shape[1]))
            for t in st.placement.layout.tiles:
                y[:, t.cols] = out[t.index, :, : t.shape[1]]
            return y * (st.next_range / INPUT_MAX)
        counts = self._mvm(codes, st.cores, "adc").astype(np.float64)
        return self._combine(st, counts, st.gain(), st.b)

    def _run(self, x: np.ndarray, mode: str = "chip") -> np.ndarray:
        h = np.asarray(x, dtype=np.float64)
        k = 0
        for la in self.converted.layers:
            if isinstance(la, DigitalOp):
                h = apply_digital(la, h)
                continue
            st = self.states[k]
            k += 1
            if la.conv is not None:
                cols, hw = im2col(h, la.conv)
                h = fold_output(self._layer(st, cols, mode), h.shape[0], hw)
            else:
                if h.ndim != 2 or h.shape[1] != la.shape[0]:
                    raise ChipInputError(f"layer {la.name!r} takes {la.shape[0]} inputs; got samples of shape {h.shape[1:]}.")
                h = self._layer(st, h, mode)
        return h

    # ------------------------------------------------------------------ public API
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Chip outputs (values); with ``x.requires_grad`` the gradient comes from the proxy (straight through)."""
        y = torch.from_numpy(self._run(x.detach().cpu().numpy())).to(x.dtype)
        if torch.is_grad_enabled() and x.requires_grad:
            yp = self.proxy_forward(x)
            return yp + (y - yp).detach()
        return y

    def predict(self, x: Any, mode: Literal["chip", "raw", "ideal"] = "chip") -> np.ndarray:
        """Outputs (logits) as float64 numpy. ``raw``: every layer on raw counts (no LDPU); ``ideal``: the
        int8-digital reference - the same input quantisation and mapping with exact weights, no chip call."""
        return self._run(np.asarray(x, dtype=np.float64), mode)

    def accuracy(self, x: Any, y: Any, mode: Literal["chip", "raw", "ideal"] = "chip") -> float:
        """Top-1 accuracy on ``(x, y)``."""
        return float((self.predict(x, mode).argmax(1) == np.asarray(y)).mean())

    def layer_errors(self, x: Any, mode: Literal["chip", "raw"] = "raw") -> list[float]:
        """Per analog layer: ``||y_chip - x W|| / ||x W||`` on the float activations of ``x`` (bias excluded)."""
        acts = collect_layer_inputs(self.converted, np.asarray(x, dtype=np.float64))
        out = []
        for st, a in zip(self.states, acts, strict=True):
            y_fp = np.einsum("bi,io->bo", a, st.layer.weight, optimize=False)
            y = self._layer(st, a, mode) - st.layer.bias
            out.append(float(np.sqrt(((y - y_fp) ** 2).sum()) / max(np.sqrt((y_fp**2).sum()), 1e-300)))
        return out

    def apply_gdc(self) -> np.ndarray:
        """Measure the global drift compensation factor of every core now and use it (LDPU registers too)."""
        if self.gdc is None:
            raise ChipInputError("this model has no drift-compensation reference (deployed with gdc_inputs=0?).")
        alpha = self.gdc.alpha(self.chip)
        k = 0
        for st in self.states:
            n = st.cores.size
            st.alpha = alpha[k : k + n].astype(np.float64)
            k += n
        self.write_ldpu()
        return alpha

    def reset_gdc(self) -> None:
        """Stop compensating drift (alpha = 1 on every core)."""
        for st in self.states:
            st.alpha = np.ones(st.cores.size)
        self.write_ldpu()

    def write_ldpu(self) -> None:
        """Write the LDPU registers of the layers that run on the LDPU path (scale, offset, ReLU)."""
        for st in self.states:
            if not st.ldpu:
                continue
            g = st.gain()
            f = INPUT_MAX / st.next_range
            scale = g * f
            bias = np.zeros_like(scale)
            for t in st.placement.layout.tiles:
                bias[t.index, : t.shape[1]] = st.layer.bias[t.cols]
            offset = (bias - st.b * g) * f
            if max(np.abs(scale).max(), np.abs(offset).max()) > FP16_MAX:
                top = max(np.abs(scale).max(), np.abs(offset).max())
                raise ChipInputError(f"layer {st.layer.name!r}: LDPU registers reach {top:.3g}, "
                                     f"above FP16 {FP16_MAX}; use output='adc'.")
            self.chip.set_ldpu(st.cores, scale, offset, np.full(st.cores.size, st.relu))

    def refit_proxy(self, n_mvm: int | None = None) -> None:
        """Estimate each layer's effective weights W_hat from ``n_mvm`` random chip MVMs (least squares)."""
        for st in self.states:
            tiles = st.placement.layout.tiles
            n = max(n_mvm or self.config.proxy_inputs, max(t.shape[0] for t in tiles) + 16)
            codes = np.zeros((len(tiles), n, self.chip.geometry.n_rows), dtype=np.int8)
            x = random_inputs(self._rng, n, self.chip.geometry.n_rows, 0.3)
            for t in tiles:
                codes[t.index, :, : t.shape[0]] = x[:, : t.shape[0]]
            counts = self._mvm(codes, st.cores, "adc").astype(np.float64)
            g = st.gain()
            w = np.zeros(st.layer.shape)
            for t in tiles:
                h, c = t.shape
                v = (counts[t.index, :, :c] - st.b[t.index, :c]) * g[t.index, :c]
                xv = x[:, :h].astype(np.float64) * (st.x_range[t.index] / INPUT_MAX)
                w[t.rows, t.cols] = least_squares_weights(xv, v[None])[0]
            st.proxy_w = torch.from_numpy(w)

    def proxy_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The differentiable proxy: STE input quantisation per tile, ``x W_hat + bias``, host ops in torch."""
        if any(st.proxy_w is None for st in self.states):
            self.refit_proxy()
        h = x.double()
        k = 0
        for la in self.converted.layers:
            if isinstance(la, DigitalOp):
                h = torch_digital(la, h)
                continue
            st = self.states[k]
            k += 1
            if la.conv is not None:
                n, _, hh, ww = h.shape
                ho, wo = la.conv.out_hw(hh, ww)
                cols = nn.functional.unfold(h, la.conv.kernel, padding=la.conv.padding, stride=la.conv.stride)
                y = _ste(cols.transpose(1, 2).reshape(-1, cols.shape[1]), st) @ st.proxy_w + torch.from_numpy(la.bias)
                h = y.reshape(n, ho * wo, -1).transpose(1, 2).reshape(n, -1, ho, wo)
            else:
                h = _ste(h, st) @ st.proxy_w + torch.from_numpy(la.bias)
        return h.to(x.dtype)

    def proxy(self) -> nn.Module:
        """The proxy as a module (for attacks and adapters that need a differentiable twin)."""
        outer = self

        class _Proxy(nn.Module):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return outer.proxy_forward(x)

        return _Proxy()

    def placement(self) -> list[dict[str, Any]]:
        """One JSON-able row per analog layer: name, kind, shape, tiles and cores."""
        return [{"layer": st.layer.name, "kind": st.layer.kind, "n_in": st.layer.shape[0], "n_out": st.layer.shape[1],
                 "row_tiles": st.placement.row_tiles, "col_tiles": st.placement.col_tiles,
                 "cores": [int(c) for c in st.cores], "ldpu": st.ldpu, "folded": list(st.layer.folded)} for st in self.states]


def torch_digital(op: DigitalOp, h: torch.Tensor) -> torch.Tensor:
    if op.kind == "relu":
        return torch.relu(h)
    if op.kind == "flatten":
        return h.flatten(op.start_dim)
    if op.kind == "maxpool":
        return nn.functional.max_pool2d(h, op.kernel, op.stride, op.padding)
    return nn.functional.avg_pool2d(h, op.kernel, op.stride, op.padding)


def _ste(x: torch.Tensor, st: LayerState) -> torch.Tensor:
    """Input quantisation with a straight-through estimator (gradient 1 inside the range, 0 where clipped)."""
    r = torch.ones(x.shape[1], dtype=x.dtype)
    for t in st.placement.layout.tiles:
        r[t.rows] = float(st.x_range[t.index])
    xc = torch.maximum(torch.minimum(x, r), -r)
    q = torch.round(xc * (INPUT_MAX / r)) * (r / INPUT_MAX)
    return xc + (q - xc).detach()


# ------------------------------------------------------------------------------ deploy
@dataclass
class _Mapped:
    placement: Placement
    x_range: np.ndarray
    unit: np.ndarray
    wmax: np.ndarray
    gmax: np.ndarray
    i_p: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _subsample(a: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows of ``a``, evenly spaced (deterministic)."""
    if a.shape[0] <= n:
        return a
    return a[np.linspace(0, a.shape[0] - 1, n).round().astype(np.int64)]


def check_fast_path(chip: Chip) -> None:
    """Refuse ``programming='fast'`` on a chip without the statistical fast path (found by capability)."""
    if not callable(getattr(chip, "program_weights", None)):
        raise ChipInputError(
            f"programming='fast' needs the emulator's statistical fast path (program_weights); this chip "
            f"({type(chip).__name__}) has none - the lab chip, a replay and a recorded run (hil run journals only "
            "chip operations) cannot use it. Use programming='program-verify' or 'gdp'.")


def deploy(model: nn.Module | Converted, chip: Chip, calibration_data: Any, config: DeployConfig | None = None, *,
           cores: list[int] | np.ndarray | None = None, run: RunLog | None = None,
           rng: np.random.Generator | None = None) -> DeployedModel:
    """Convert, place, PTO, map, program, calibrate and record GDC: the whole deployment in one call.

    ``model``: a torch module (or layers from :func:`protocols.deploy.layers.layers_from_matrices`);
    ``calibration_data``: float inputs (N, *sample shape); ``cores``: the cores to use (None: all, in
    order); ``run``: where programming streams go; ``rng``: random inputs of the calibration steps
    (default seeded from ``run``). Every check that needs no chip runs before the first pulse.
    """
    cfg = config or DeployConfig()
    run = run or MemoryRunLog()
    rng = rng or run.rng("deploy")
    x_cal = np.asarray(calibration_data, dtype=np.float64)
    if x_cal.ndim < 2 or x_cal.shape[0] < 1 or not np.all(np.isfinite(x_cal)):
        raise ChipInputError(f"calibration_data has shape {x_cal.shape}; give finite samples (N, ...), N >= 1.")
    torch_model = model if isinstance(model, nn.Module) else None
    conv = convert_model(model, tuple(x_cal.shape[1:])) if torch_model is not None else model
    if torch_model is None:
        from protocols.deploy.layers import output_shapes

        output_shapes(conv, tuple(x_cal.shape[1:]))  # type: ignore[arg-type]
    placements = place_layers(conv, chip.geometry, cores)  # type: ignore[arg-type]
    if cfg.programming == "fast":
        check_fast_path(chip)
    dpw = cfg.program_verify.devices_per_weight
    if cfg.programming == "gdp" and dpw != 1:
        raise ChipInputError("programming='gdp' needs program_verify.devices_per_weight=1 (GDP uses the spare devices).")
    gmax0 = cfg.gmax_counts or GMAX_ODP_COUNTS * dpw
    acts = [_subsample(a, cfg.calibration_rows) for a in collect_layer_inputs(conv, x_cal, torch_model)]  # type: ignore[arg-type]
    pto = cfg.pto
    per_layer = cfg.output == "ldpu"
    shape = (chip.geometry.n_rows, chip.geometry.n_cols)
    mapped: list[_Mapped] = []
    for p, a in zip(placements, acts, strict=True):
        x_range = tile_input_ranges(p, a, pto.percentile if pto.enabled else 100.0, per_layer)
        w_tiles, _ = split_tiles(p.layer.weight, shape)
        unit, wmax = map_weights(w_tiles, 1.0, cfg.mapping)
        gmax = np.full(wmax.shape, gmax0)
        i_p = None
        if pto.enabled and pto.conductance_range:
            codes = np.zeros((p.layout.n_tiles, a.shape[0], shape[0]), dtype=np.int8)
            for t in p.layout.tiles:
                codes[t.index, :, : t.shape[0]] = quantize(a[:, t.rows], float(x_range[t.index]))
            gmax, i_p = conductance_ranges(unit * gmax0, codes, np.full(p.layout.n_tiles, gmax0), pto)
        mapped.append(_Mapped(p, x_range, unit, wmax, gmax, i_p))
    all_cores = np.concatenate([m.placement.cores for m in mapped])
    targets = np.concatenate([m.unit * m.gmax[:, None, :] for m in mapped])

    # program
    report: dict[str, Any] = {"programming": cfg.programming}
    if cfg.programming == "fast":
        chip.program_weights(all_cores, targets / pto.counts_per_us, devices_per_weight=dpw)  # type: ignore[attr-defined]
    else:
        state = program_verify(chip, all_cores, targets, cfg.program_verify, run)
        report["program_verify"] = state.summary(gmax0)
        if cfg.programming == "gdp":
            res = gradient_descent_program(chip, all_cores, targets, cfg.gdp, run, start=state, set_params=cfg.program_verify)
            report["gdp"] = res.summary()

    # per-column affine on calibration rows plus random inputs (one MVM call per layer and batch)
    states: list[LayerState] = []
    k = 0
    for m, a in zip(mapped, acts, strict=True):
        p = m.placement
        n = p.layout.n_tiles
        tg = targets[k : k + n]
        k += n
        cal = np.zeros((n, a.shape[0] + cfg.affine_inputs, shape[0]), dtype=np.int8)
        rnd = random_inputs(rng, max(cfg.affine_inputs, 1), shape[0], 0.3)[: cfg.affine_inputs]
        for t in p.layout.tiles:
            cal[t.index, : a.shape[0], : t.shape[0]] = quantize(a[:, t.rows], float(m.x_range[t.index]))
            cal[t.index, a.shape[0] :, : t.shape[0]] = rnd[:, : t.shape[0]]
        st = LayerState(p, m.x_range, m.wmax, m.gmax, tg, np.ones((n, shape[1])), np.zeros((n, shape[1])), np.ones(n),
                        i_p_ua=m.i_p)
        states.append(st)
        tmp = DeployedModel(chip, conv, states, cfg, None, rng)  # type: ignore[arg-type]
        counts = tmp._mvm(cal, p.cores, "adc").astype(np.float64)
        st.a, st.b = fit_affine(cal, counts, tg)
    dm = DeployedModel(chip, conv, states, cfg, None, rng)  # type: ignore[arg-type]
    if pto.enabled and pto.input_range == "search":
        report["search"] = dm.search_input_ranges(acts)
    _wire_ldpu(dm)
    dm.write_ldpu()
    dm.gdc = GlobalDriftCompensation.record(chip, all_cores, rng, cfg.gdc_inputs)
    dm.t_programmed = chip.now()
    if cfg.proxy_inputs:
        dm.refit_proxy()
    report["saturating_columns"] = [_saturating(st, pto, gmax0) for st in states]
    dm.report = report
    return dm


def _saturating(st: LayerState, pto: PtoParams, gmax0: float) -> dict[str, float]:
    """Fraction of a layer's used columns whose predicted I_P exceeds I_S, before and after the conductance range."""
    if st.i_p_ua is None:
        return {"before": float("nan"), "after": float("nan")}
    used = np.zeros_like(st.i_p_ua, dtype=bool)
    for t in st.placement.layout.tiles:
        used[t.index, : t.shape[1]] = True
    before = st.i_p_ua[used] > pto.saturation_ua
    after = (st.i_p_ua * (st.gmax / gmax0))[used] > pto.saturation_ua * (1 + 1e-9)
    return {"before": float(before.mean()), "after": float(after.mean())}


def fit_affine(codes: np.ndarray, counts: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per tile and column, least squares ``counts ~ a (codes @ targets) + b`` (fixed order, einsum).

    ``codes`` (n, B, rows), ``counts`` (n, B, cols), ``targets`` (n, rows, cols). Columns without
    signal keep the tile's median gain and offset 0.
    """
    y_fp = np.einsum("nbr,nrc->nbc", codes.astype(np.float64), targets, optimize=False)
    mf, my = y_fp.mean(1, keepdims=True), counts.mean(1, keepdims=True)
    cov = ((y_fp - mf) * (counts - my)).sum(1)
    var = ((y_fp - mf) ** 2).sum(1)
    dead = var <= 1e-12 * np.maximum(var.max(axis=1, keepdims=True), 1e-300)
    a = np.where(dead, np.nan, cov / np.where(dead, 1.0, var))
    a = np.where(a > 0, a, np.nan)
    med = np.nanmedian(np.where(np.isnan(a).all(axis=1, keepdims=True), 1.0, a), axis=1, keepdims=True)
    bad = np.isnan(a)
    a = np.where(bad, med, a)
    b = np.where(bad, 0.0, my[:, 0] - a * mf[:, 0])
    return a, b


def _wire_ldpu(dm: DeployedModel) -> None:
    """Mark the layers that run on the LDPU path and what follows them (ReLU, the next layer's range)."""
    if dm.config.output != "ldpu":
        return
    layers = dm.converted.layers
    idx = [i for i, la in enumerate(layers) if isinstance(la, AnalogLayer)]
    for k, st in enumerate(dm.states[:-1]):
        between = layers[idx[k] + 1 : idx[k + 1]]
        kinds = {op.kind for op in between if isinstance(op, DigitalOp)}
        if st.placement.row_tiles != 1 or "avgpool" in kinds:
            continue
        st.ldpu = True
        st.relu = "relu" in kinds
        st.next_range = float(dm.states[k + 1].x_range[0])


def _search_one(dm: DeployedModel, st: LayerState, a: np.ndarray, candidates: list[float]) -> tuple[np.ndarray, np.ndarray]:
    """Relative partial-output error per candidate and tile, (n_cand, n_tiles), and the candidate ranges."""
    per_layer = dm.config.output == "ldpu"
    x = _subsample(a, dm.config.pto.search_samples)
    tiles = st.placement.layout.tiles
    y_fp = [np.einsum("bi,io->bo", x[:, t.rows], st.layer.weight[t.rows, t.cols], optimize=False) for t in tiles]
    errs = np.zeros((len(candidates), len(tiles)))
    ranges = np.zeros((len(candidates), len(tiles)))
    for i, pct in enumerate(candidates):
        xr = tile_input_ranges(st.placement, a, pct, per_layer)
        counts = dm._mvm(dm._codes(st, x, xr), st.cores, "adc").astype(np.float64)
        g = st.gain(xr)
        for t in tiles:
            v = (counts[t.index, :, : t.shape[1]] - st.b[t.index, : t.shape[1]]) * g[t.index, : t.shape[1]]
            e = v - y_fp[t.index]
            errs[i, t.index] = np.sqrt((e * e).sum()) / max(np.sqrt((y_fp[t.index] ** 2).sum()), 1e-300)
        ranges[i] = xr
    return errs, ranges


def search_input_ranges(dm: DeployedModel, acts: list[np.ndarray]) -> list[dict[str, Any]]:
    """PTO input-range search on the chip: per tile the candidate percentile with the least output error."""
    cands = list(dm.config.pto.search_percentiles)
    out = []
    for st, a in zip(dm.states, acts, strict=True):
        errs, ranges = _search_one(dm, st, a, cands)
        if dm.config.output == "ldpu":
            best = np.full(errs.shape[1], int(np.argmin(errs.mean(1))))
        else:
            best = np.argmin(errs, axis=0)
        st.x_range = ranges[best, np.arange(errs.shape[1])]
        out.append({"layer": st.layer.name, "candidates": cands, "errors": errs.tolist(),
                    "chosen": [cands[int(b)] for b in best], "x_range": st.x_range.tolist()})
    return out


DeployedModel.search_input_ranges = search_input_ranges  # type: ignore[attr-defined]

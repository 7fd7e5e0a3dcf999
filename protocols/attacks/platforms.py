"""The five target platforms of ADV25 behind one small interface, and the chip-model fit.

Every platform has ``predict(x) -> logits`` (float64 numpy), ``grad(x, y) -> d loss / d x`` (or None
where it has no gradients), ``new_repeat(seed)`` (redraw what a repeat draws once) and ``stochastic``.

* :class:`TorchPlatform` - FP32 (the zoo model) and HWA-FP32 (:func:`train_hwa`: fine-tuned with
  multiplicative weight noise, sigma 0.08 of each output channel's max |w|, plain torch, seeded).
* :class:`DigitalW4A8` - per-output-channel symmetric 4-bit weights, 8-bit activations (per-layer range
  from calibration data), straight-through estimators; deterministic (in-house PTQ, no Brevitas).
* :class:`ChipModel` - differentiable AIMC model: programming noise ``sigma(|w| / wmax_c)`` (a cubic,
  in units of the channel's wmax) drawn once per repeat, per-column output noise drawn per forward
  call, 8-bit input and output quantisation with STEs. :func:`fit_chip_model` extracts its parameters
  from a deployed model's own MVMs (W_hat - W, repeated identical MVMs).
* :class:`ChipPlatform` - the deployed model on any backend; ``grad`` is the hardware-in-the-loop
  gradient (:class:`HilGraph`): the chip runs layer by layer, every layer's chip input and the logits
  are cached, and the proxy (W_hat, refit every ``refit_every`` calls) carries an ideal backward pass.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from protocols.deploy import Converted, DeployedModel

_ANALOG = (nn.Linear, nn.Conv2d)


def _ce_grad(module: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xt = torch.from_numpy(np.array(x, dtype=np.float32)).requires_grad_(True)
    loss = nn.functional.cross_entropy(module(xt).float(), torch.from_numpy(np.array(y, dtype=np.int64)), reduction="sum")
    (g,) = torch.autograd.grad(loss, xt)
    return g.numpy().astype(np.float32)


def _channel_max(w: torch.Tensor) -> torch.Tensor:
    """max |w| per output channel, broadcastable to ``w`` (Linear: (out, in); Conv2d: (out, in, kh, kw))."""
    return w.detach().abs().reshape(w.shape[0], -1).amax(1).clamp_min(1e-12).reshape(-1, *([1] * (w.ndim - 1)))


def _ste_quant(x: torch.Tensor, r: float, levels: int = 127) -> torch.Tensor:
    xc = torch.clamp(x, -r, r)
    return xc + (torch.round(xc * (levels / r)) * (r / levels) - xc).detach()


def _input_ranges(model: nn.Module, x_cal: np.ndarray, percentile: float = 99.99) -> dict[str, tuple[float, float]]:
    """Per analog module: (input range, output range) at ``percentile`` of |values| on calibration data."""
    seen: dict[str, tuple[float, float]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, _ANALOG):
            def hook(mod: nn.Module, args: tuple, out: torch.Tensor, name: str = name) -> None:
                a = np.abs(args[0].detach().double().numpy()).ravel()
                o = np.abs(out.detach().double().numpy()).ravel()
                seen[name] = (max(float(np.percentile(a, percentile)), 1e-9), max(float(o.max()), 1e-9))
            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(torch.from_numpy(np.array(x_cal, dtype=np.float32)))
    for h in hooks:
        h.remove()
    return seen


class TorchPlatform:
    """A plain torch model (FP32 or HWA-FP32): deterministic, with exact gradients."""

    stochastic = False

    def __init__(self, name: str, model: nn.Module) -> None:
        self.name = name
        self.model = model.eval()

    def new_repeat(self, seed: int) -> None:
        """Nothing to redraw."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(np.array(x, dtype=np.float32))).double().numpy()

    def grad(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        return _ce_grad(self.model, x, y)


def train_hwa(model: nn.Module, x: np.ndarray, y: np.ndarray, sigma: float = 0.08, epochs: int = 15, seed: int = 0,
              lr: float = 1e-3, batch: int = 64) -> nn.Module:
    """Fine-tune a copy of ``model`` with weight-noise injection: ``w + sigma max_c|w| N(0, 1)`` drawn per mini-batch.

    The aihwkit HWA recipe of ADV25 (multiplicative Gaussian noise on unit-normalised weights, digital
    biases) in plain torch; seeded, one torch thread, fixed batch order.
    """
    from torch.func import functional_call

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        m = copy.deepcopy(model).train()
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(m.parameters(), lr=lr)
        xt, yt = torch.from_numpy(np.array(x, dtype=np.float32)), torch.from_numpy(np.array(y, dtype=np.int64))
        names = [f"{n}.weight" for n, mod in m.named_modules() if isinstance(mod, _ANALOG)]
        for _ in range(epochs):
            for idx in torch.randperm(len(xt), generator=gen).split(batch):
                params = dict(m.named_parameters())
                noisy = {k: (v + sigma * _channel_max(v) * torch.randn(v.shape, generator=gen)) if k in names else v
                         for k, v in params.items()}
                opt.zero_grad()
                nn.functional.cross_entropy(functional_call(m, noisy, (xt[idx],)), yt[idx]).backward()
                opt.step()
        return m.eval()
    finally:
        torch.set_num_threads(threads)


class DigitalW4A8(TorchPlatform):
    """Per-channel symmetric 4-bit weights (scale max|w| / 7), 8-bit signed activations at every analog layer's input."""

    def __init__(self, model: nn.Module, x_cal: np.ndarray, name: str = "digital") -> None:
        m = copy.deepcopy(model).eval()
        ranges = _input_ranges(m, x_cal, 100.0)
        for mname, mod in m.named_modules():
            if isinstance(mod, _ANALOG):
                with torch.no_grad():
                    s = _channel_max(mod.weight) / 7.0
                    mod.weight.copy_(torch.clamp(torch.round(mod.weight / s), -7, 7) * s)
                r = ranges[mname][0]
                mod.register_forward_pre_hook(lambda _m, args, r=r: (_ste_quant(args[0], r),))
        super().__init__(name, m)


class ChipModelParams(BaseModel):
    """The chip model's noise: programming-noise cubic and output noise (both in units of the channel's wmax)."""

    model_config = ConfigDict(extra="forbid")

    prog_coeffs: list[float] = Field([0.01, 0.02, 0.0, 0.0], min_length=4, max_length=4,
                                     description="sigma(a) = c0 + c1 a + c2 a^2 + c3 a^3, a = |w| / wmax_c [wmax_c]")
    out_sigma: float = Field(0.01, ge=0.0, le=10.0, description="output noise / (input range x wmax_c), per forward call")
    out_sigma_frozen: float = Field(0.0, ge=0.0, le=10.0,
                                    description="non-recurrent output noise (column offset drawn once per repeat), same units")
    out_per_batch: bool = Field(False, description="output noise: one draw per column and forward call, shared by the "
                                                   "batch (ADV25's chip model) instead of one per element (per MVM)")
    weight_sigma_recurrent: float = Field(0.0, ge=0.0, le=10.0,
                                          description="recurrent weight noise, fresh per forward call [wmax_c]")
    scale: float = Field(1.0, ge=0.0, le=100.0, description="multiplies both noise sources (noise-level sweeps)")
    in_bits: int = Field(8, ge=2, le=16, description="input DAC bits (sign + magnitude)")
    out_bits: int = Field(8, ge=2, le=16, description="output ADC bits (sign + magnitude)")


class ChipModel(TorchPlatform):
    """Differentiable AIMC chip model (see the module docstring); ``new_repeat(seed)`` draws the programming noise."""

    stochastic = True

    def __init__(self, model: nn.Module, x_cal: np.ndarray, params: ChipModelParams | None = None, seed: int = 0,
                 name: str = "chip_model") -> None:
        self.params = params or ChipModelParams()
        self.base = copy.deepcopy(model).eval()
        self.ranges = _input_ranges(self.base, x_cal)
        super().__init__(name, copy.deepcopy(self.base).eval())
        self._gen = torch.Generator()
        p = self.params
        for mname, mod in self.model.named_modules():
            if isinstance(mod, _ANALOG):
                r_in, r_out = self.ranges[mname]
                mod.register_forward_pre_hook(lambda _m, args, r=r_in: (_ste_quant(args[0], r, 2 ** (p.in_bits - 1) - 1),))
                mod.register_forward_hook(lambda m_, args, out, r_in=r_in, r_out=r_out: self._out(m_, args, out, r_in, r_out))
        self.new_repeat(seed)

    def _out(self, mod: nn.Module, args: tuple, y: torch.Tensor, r_in: float, r_out: float) -> torch.Tensor:
        p = self.params
        wmax = self._wmax[id(mod)].reshape(1, -1, *([1] * (y.ndim - 2)))
        if p.weight_sigma_recurrent * p.scale > 0:  # fresh W noise: x (dW)^T, exact since the layer is linear in W
            dw = (p.weight_sigma_recurrent * p.scale) * _channel_max(self._w0[id(mod)]) * torch.randn(
                mod.weight.shape, generator=self._gen).to(mod.weight.dtype)
            x = args[0]
            y = y + (nn.functional.linear(x, dw) if isinstance(mod, nn.Linear) else mod._conv_forward(x, dw, None))
        if p.out_sigma * p.scale > 0:
            shape = (1, *wmax.shape[1:]) if p.out_per_batch else y.shape
            y = y + (p.out_sigma * p.scale * r_in) * wmax * torch.randn(shape, generator=self._gen).to(y.dtype)
        if p.out_sigma_frozen * p.scale > 0:
            y = y + (p.out_sigma_frozen * p.scale * r_in) * wmax * self._ofix[id(mod)].reshape(wmax.shape).to(y.dtype)
        return _ste_quant(y, r_out, 2 ** (p.out_bits - 1) - 1)

    def new_repeat(self, seed: int) -> None:
        """Draw the non-recurrent noise once (this repeat's chip: programming noise, frozen output offsets) and
        restart the stream of the recurrent noise (output noise, recurrent weight noise)."""
        self._gen.manual_seed(int(seed))
        c = torch.tensor(self.params.prog_coeffs, dtype=torch.float64)
        self._wmax: dict[int, torch.Tensor] = {}
        self._w0: dict[int, torch.Tensor] = {}
        self._ofix: dict[int, torch.Tensor] = {}
        base = dict(self.base.named_modules())
        with torch.no_grad():
            for mname, mod in self.model.named_modules():
                if isinstance(mod, _ANALOG):
                    w = base[mname].weight.double()
                    wmax = _channel_max(w)
                    a = (w.abs() / wmax).clamp(0, 1)
                    sig = (c[0] + c[1] * a + c[2] * a**2 + c[3] * a**3).clamp_min(0) * self.params.scale * wmax
                    mod.weight.copy_((w + sig * torch.randn(w.shape, generator=self._gen, dtype=torch.float64)).float())
                    self._wmax[id(mod)] = wmax.reshape(-1).float()
                    self._w0[id(mod)] = w.float()
                    if self.params.out_sigma_frozen > 0:
                        self._ofix[id(mod)] = torch.randn(w.shape[0], generator=self._gen)


def fit_chip_model(deployed: DeployedModel, n_mvm: int = 2000, repeats: int = 16, seed: int = 0) -> ChipModelParams:
    """Chip-model parameters from the chip's own MVMs ("extracted from hardware", ADV25).

    Programming noise: W_hat (least squares over ``n_mvm`` random MVMs, :meth:`DeployedModel.refit_proxy`)
    minus W, normalised by each column's max |W|; the standard deviation in 8 bins of |W| / wmax is fitted
    with a cubic (weighted least squares). Output noise: the spread of ``repeats`` identical MVMs per core,
    over ``127 Gmax_c a_c`` counts (one full-scale input on one full-scale weight), averaged over columns.
    """
    deployed.refit_proxy(n_mvm)
    a_all, r_all = [], []
    for st in deployed.states:
        w = st.layer.weight
        wmax = np.maximum(np.abs(w).max(0, keepdims=True), 1e-12)
        a_all.append((np.abs(w) / wmax).ravel())
        r_all.append(((st.proxy_w.numpy() - w) / wmax).ravel())
    a, r = np.concatenate(a_all), np.concatenate(r_all)
    edges = np.linspace(0.0, 1.0, 9)
    centers, sig, wts = [], [], []
    for lo, hi in itertools.pairwise(edges):
        sel = (a >= lo) & (a <= hi)
        if sel.sum() >= 8:
            centers.append(a[sel].mean())
            sig.append(r[sel].std())
            wts.append(np.sqrt(sel.sum()))
    deg = min(3, len(centers) - 1)
    coef = np.polynomial.polynomial.polyfit(centers, sig, deg, w=wts) if deg >= 0 else np.zeros(1)
    coeffs = [float(v) for v in coef] + [0.0] * (4 - len(coef))
    rng = np.random.default_rng(seed)
    chip = deployed.chip
    rows = chip.geometry.n_rows
    rel = []
    for st in deployed.states:
        n = st.cores.size
        codes = np.repeat(rng.integers(-64, 65, size=(n, 1, rows), dtype=np.int8), repeats, axis=1)
        counts = np.asarray(chip.mvm(codes, st.cores, output="adc"), dtype=np.float64)
        rel.append((counts.std(1, ddof=1) / (127.0 * st.gmax * st.a)).mean())
    return ChipModelParams(prog_coeffs=coeffs, out_sigma=float(np.mean(rel)))


class HilGraph:
    """Hardware-in-the-loop forward/backward: the chip runs segment by segment (digital ops + one analog layer).

    The chip's input to every analog layer and the logits are cached (``last_io``); the torch graph uses the
    proxy of each segment (STE input quantisation, ``x W_hat + bias``) with its value replaced by the chip's
    (``yp + (y_chip - yp).detach()``), so ReLU masks and later layers see the chip's activations and the
    backward pass is ideal. ``refit_every``: refit W_hat from fresh chip MVMs every that many gradients.
    """

    def __init__(self, deployed: DeployedModel, refit_every: int = 10, n_mvm: int = 2000) -> None:
        self.dm = deployed
        self.refit_every, self.n_mvm = refit_every, n_mvm
        self.calls = 0
        self.last_io: list[np.ndarray] = []
        self.segments: list[DeployedModel] = []
        conv = deployed.converted
        ops: list[Any] = []
        k = 0
        for la in conv.layers:
            ops.append(la)
            if type(la).__name__ == "AnalogLayer":
                self.segments.append(DeployedModel(deployed.chip, Converted(ops, conv.method), [deployed.states[k]],
                                                   deployed.config, None, np.random.default_rng(0)))
                ops, k = [], k + 1
        if ops:
            self.segments.append(DeployedModel(deployed.chip, Converted(ops, conv.method), [], deployed.config, None,
                                               np.random.default_rng(0)))

    def chip_calls(self) -> int:
        """chip.mvm calls made by the segments and the deployed model (refits)."""
        return sum(s.stats.calls for s in self.segments) + self.dm.stats.calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_np = x.detach().double().numpy()
        h = x.double()
        self.last_io = []
        for seg in self.segments:
            self.last_io.append(h_np)
            y_chip = seg.predict(h_np)
            yp = seg.proxy_forward(h)
            h = yp + (torch.from_numpy(y_chip) - yp).detach()
            h_np = y_chip
        self.last_io.append(h_np)
        return h

    def grad(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.refit_every and self.calls and self.calls % self.refit_every == 0:
            self.dm.refit_proxy(self.n_mvm)
        self.calls += 1
        xt = torch.from_numpy(np.array(x, dtype=np.float64)).requires_grad_(True)
        loss = nn.functional.cross_entropy(self.forward(xt), torch.from_numpy(np.array(y, dtype=np.int64)), reduction="sum")
        (g,) = torch.autograd.grad(loss, xt)
        return g.numpy().astype(np.float32)


class ChipPlatform:
    """The deployed model on its chip (any backend): predictions from the chip, HIL gradients (:class:`HilGraph`)."""

    stochastic = True

    def __init__(self, deployed: DeployedModel, name: str = "chip", refit_every: int = 10, n_mvm: int = 2000) -> None:
        self.name = name
        self.dm = deployed
        self.hil = HilGraph(deployed, refit_every, n_mvm)

    def new_repeat(self, seed: int) -> None:
        """The chip is programmed once; each repeat re-reads it (read noise is the chip's own)."""

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.dm.predict(np.asarray(x, dtype=np.float64))

    def grad(self, x: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        return self.hil.grad(x, y)

    def chip_calls(self) -> int:
        return self.hil.chip_calls()

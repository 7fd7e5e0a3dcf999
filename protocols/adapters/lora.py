"""Digital low-rank adapters beside the analog layers of a deployed model [LORA24].

Each analog layer keeps its programmed conductances (the frozen "meta-weights"); a digital rank-r adapter
beside it adds ``x A B`` (A: n_in x r, B: r x n_out, B = 0 at the start, so an untrained adapter changes
nothing): ``y = chip(x) + x A B``. The adapters are trained with the chip in the loop: every forward pass
runs the analog layers on the chip (``chip.mvm``, raw ADC counts through the deployment's column affine,
docs/deploy.md); the gradient into earlier layers goes through the layer's weights ``W`` (or the chip's
least-squares estimate ``W_hat`` when the deployment fitted one) as a straight-through estimator
([ADV25] eq. 1: the value from the chip, the gradient from a model of it). No cell is reprogrammed:
training calls only ``chip.mvm``. After drift, :func:`train_adapters` again (re-adaptation) starts from the
current adapters.

Linear layers only (convolutions: not yet). Torch runs on one thread in float64, so a recorded run replays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from hil.errors import ChipInputError
from protocols.deploy.layers import DigitalOp
from protocols.deploy.model import DeployedModel, torch_digital
from protocols.deploy.pto import one_thread


class LowRankAdapter(nn.Module):
    """``x -> x A B``: A (n_in, rank) drawn N(0, 1/n_in), B (rank, n_out) zero."""

    def __init__(self, n_in: int, n_out: int, rank: int, rng: np.random.Generator) -> None:
        super().__init__()
        if not 1 <= rank <= min(n_in, n_out):
            raise ChipInputError(f"rank={rank} must be in 1..min(n_in, n_out) = {min(n_in, n_out)}.")
        self.a = nn.Parameter(torch.from_numpy(rng.standard_normal((n_in, rank)) / np.sqrt(n_in)))
        self.b = nn.Parameter(torch.zeros(rank, n_out, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a) @ self.b


class AdaptedModel(nn.Module):
    """A :class:`protocols.deploy.DeployedModel` with a :class:`LowRankAdapter` beside each analog layer."""

    def __init__(self, dm: DeployedModel, rank: int, rng: np.random.Generator) -> None:
        super().__init__()
        if any(st.layer.conv is not None for st in dm.states):
            raise ChipInputError("adapters support Linear layers only (this model has a convolution).")
        self.dm = dm
        self.adapters = nn.ModuleList(LowRankAdapter(*st.layer.shape, rank, rng) for st in dm.states)

    @property
    def n_parameters(self) -> int:
        """Digital adapter parameters."""
        return sum(p.numel() for p in self.adapters.parameters())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Chip values plus adapters; gradients through the adapters and a straight-through W (or W_hat)."""
        h = x.to(torch.float64)
        k = 0
        for la in self.dm.converted.layers:
            if isinstance(la, DigitalOp):
                h = torch_digital(la, h)
                continue
            st, ad = self.dm.states[k], self.adapters[k]
            k += 1
            y_chip = torch.from_numpy(self.dm._layer(st, h.detach().numpy(), "raw"))
            w = st.proxy_w if st.proxy_w is not None else torch.from_numpy(st.layer.weight)
            y_lin = h @ w + torch.from_numpy(st.layer.bias)
            h = y_lin + (y_chip - y_lin).detach() + ad(h)
        return h

    def predict(self, x: Any) -> np.ndarray:
        with torch.no_grad(), one_thread():
            return self(torch.from_numpy(np.array(x, dtype=np.float64))).numpy()

    def accuracy(self, x: Any, y: Any) -> float:
        return float((self.predict(x).argmax(1) == np.asarray(y)).mean())


@dataclass
class AdaptHistory:
    """Loss per step (and the chip calls made)."""

    loss: list[float] = field(default_factory=list)
    mvm_calls: int = 0


def train_adapters(model: AdaptedModel, x: np.ndarray, y: np.ndarray, *, steps: int = 40, lr: float = 0.01,
                   weight_decay: float = 0.0) -> AdaptHistory:
    """Full-batch Adam on the cross-entropy of ``model`` (chip in the loop) over ``(x, y)``; only adapters change."""
    xt = torch.from_numpy(np.array(x, dtype=np.float64))
    yt = torch.from_numpy(np.array(y, dtype=np.int64))
    opt = torch.optim.Adam(model.adapters.parameters(), lr=lr, weight_decay=weight_decay)
    hist = AdaptHistory()
    calls0 = model.dm.stats.calls
    with one_thread():
        for _ in range(steps):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(xt), yt)
            loss.backward()
            opt.step()
            hist.loss.append(float(loss.detach()))
    hist.mvm_calls = model.dm.stats.calls - calls0
    return hist

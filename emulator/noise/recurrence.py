"""Recurrence of the read noise: which part of the 1/f noise is frozen and which is drawn fresh.

A device's accumulated 1/f read noise at age a = t - t_p + t0 has the variance Q_s^2 L(a) of its
model (:meth:`DeviceNoiseModel.log_band`: the 1/f spectrum integrated from 1/a to 1/(2 t_read)).
The emulator splits that band at a corner time tau_c (``noise.fast_corner_s``):

* fast part, frequencies above 1/tau_c: variance Q_s^2 L(min(tau_c, a)), drawn fresh on every verify
  read and every MVM (consecutive reads are ~0.5-1 us apart, so these components decorrelate);
* slow part, frequencies from 1/a to 1/tau_c: variance Q_s^2 (L(a) - L(min(tau_c, a))), one standard
  normal per device, frozen and redrawn on a logarithmic grid of the device's age.

With both scales at 1 one read has exactly the published variance Q_s^2 L(a); averaging N reads at
one instant reduces only the fast variance (by N), as for 1/f noise.

Slow redraw rule (ASSUMPTION; ``noise.slow_redraw_frac`` = f): the slow normal of a device belongs to
epoch k = floor(ln(a / t0) / ln(1 + f)), i.e. epochs start at ages t0 (1 + f)^k, and a device draws a
new one when its epoch changes. Each interval is f x the age at its start: the rule "redraw when
t - t_draw > f (t_draw - t_p + t0)" on a grid fixed by t_p, so when a device's slow part changes
does not depend on when the chip happens to be read or used. Programming a device starts epoch 0 with a new draw (a new
amorphous configuration has its own fluctuations). Within an epoch the mid band (1/(f a) to
1/tau_c) is held frozen, which overstates its correlation; across epochs the lowest band is
redrawn, which understates it: a two-level approximation of a spectrum without a time scale.
"""

from __future__ import annotations

import math

import torch

from emulator.noise.base import DeviceNoiseModel

#: Largest slow epoch index (int16 state): ages up to t0 (1 + f)^32767, far beyond any experiment.
MAX_EPOCH = 32767


def slow_epoch(log_age_ratio: torch.Tensor, frac: float) -> torch.Tensor:
    """Epoch index (int16) from ln(a / t0) = log1p((t - t_p) / t0)."""
    return torch.floor(log_age_ratio / math.log1p(frac)).clamp_(0, MAX_EPOCH).to(torch.int16)


def epoch_end_since(epoch: torch.Tensor, t0_s: torch.Tensor, frac: float) -> torch.Tensor:
    """Time after programming [s, float64] at which ``epoch`` ends: t0 ((1 + f)^(k+1) - 1)."""
    k = epoch.to(torch.float64) + 1.0
    return t0_s.to(torch.float64) * torch.expm1(k * math.log1p(frac))


def band_split(model: DeviceNoiseModel, age_s: torch.Tensor, corner_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(slow, fast) standard deviations in units of Q_s at device age ``age_s`` [s]:
    sqrt(L(a) - L(min(tau_c, a))) and sqrt(L(min(tau_c, a)))."""
    total = model.log_band(age_s)
    fast = torch.minimum(total, torch.full_like(total, model.log_band(corner_s)))
    return (total - fast).clamp_min_(0.0).sqrt_(), fast.sqrt()


def fast_factor(model: DeviceNoiseModel, corner_s: float, min_age_s: float) -> float:
    """Fast-part standard deviation in units of Q_s for devices at least ``min_age_s`` old."""
    return math.sqrt(min(model.log_band(corner_s), model.log_band(min_age_s)))

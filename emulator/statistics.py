"""Device statistics as functions of the normalised conductance g_rel = g / g_max.

Formulas of the aihwkit noise models as given in ``shared/reference/hermes-chip.md``:
``pcm-like`` (2.2, PCMLikeNoiseModel, g_max 25 uS) and ``hermes-1dev`` / ``hermes-2dev`` (2.3,
HermesNoiseModel fitted on HERMES devices). ln is the natural logarithm. All functions take and
return torch tensors; ``sigma_prog`` returns uS, the others are dimensionless.
"""

from __future__ import annotations

import math

import torch

from emulator.presets import NoiseModel


def _poly(g: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """sum_i c_i g**i (coefficients in increasing order)."""
    out = torch.full_like(g, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * g + c
    return out


_PROG = {
    "pcm-like": ((0.26348, 1.9650, -1.1731), 25.0),
    "hermes-1dev": ((0.15781817, 2.32443916, -2.16310839, 0.68841818), 10.35),
    "hermes-2dev": ((0.16603222, 4.71806468, -8.48101252, 4.68961419), 20.7),
}


def sigma_prog(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Programming-noise standard deviation [uS] at target g_rel (times prog_noise_scale)."""
    coeffs, ref = _PROG[model.fit]
    s = _poly(g_rel, coeffs) * (model.g_max_us / ref)
    return s.clamp_min(0.0) * model.prog_noise_scale


def nu_mean(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Mean drift exponent at programmed g_rel."""
    g = g_rel.abs().clamp_min(1e-7)
    if model.fit == "pcm-like":
        return (-0.0155 * torch.log(g) + 0.0244).clamp(0.049, 0.1)
    low = (-0.0387 * torch.log(g) - 0.0182).clamp(0.0720, 0.13)
    high = -0.0436 * g * g - 0.0126 * g + 0.0736
    return torch.where(g < 0.0945, low, high)


def nu_std(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Device-to-device standard deviation of the drift exponent at programmed g_rel."""
    g = g_rel.abs().clamp_min(1e-7)
    if model.fit == "pcm-like":
        return (-0.0125 * torch.log(g) - 0.0059).clamp(0.008, 0.045)
    if model.fit == "hermes-1dev":
        low = (-0.0120 * torch.log(g) - 0.0023).clamp(0.0124, 0.04)
        return torch.where(g < 0.3039, low, -0.0165 * g * g + 0.0116 * g + 0.0104)
    low = (-0.0117 * torch.log(g) - 0.0057).clamp(0.0091, 0.04)
    return torch.where(g < 0.3055, low, -0.0118 * g * g + 0.0093 * g + 0.0073)


def q_s(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """1/f read-noise magnitude Q_s at programmed g_rel (times read_noise_scale)."""
    g = g_rel.abs()
    if model.fit == "pcm-like":
        out = (0.0088 / g.pow(0.65).clamp_min(1e-3)).clamp_max(0.2)
    elif model.fit == "hermes-1dev":
        gl = g.clamp_min(1e-7)
        low = (-0.0078 * torch.log(gl) + 0.0038).clamp(0.0179, 0.04)
        out = torch.where(g < 0.1591, low, _poly(g, (0.0088, 0.0768, -0.1352, 0.0664)))
    else:
        gl = g.clamp_min(1e-7)
        low = (-0.0117 * torch.log(gl) - 0.0069).clamp(0.015, 0.04)
        out = torch.where(g < 0.16, low, _poly(g, (0.0123, 0.0211, -0.0280, 0.0069)))
    return out * model.read_noise_scale


def drift_factor(t_since_s: torch.Tensor, nu: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """G(t)/G(t_p) = ((t - t_p + t0) / t0) ** -nu (the aihwkit form: t counted from t0)."""
    return torch.exp(-nu * torch.log1p(t_since_s.clamp_min(0.0) / model.t0_s))


def read_noise_time_factor(t_since_s: torch.Tensor | float, model: NoiseModel) -> torch.Tensor | float:
    """sqrt(ln((t - t_p + t0 + t_read) / (2 t_read))): the growth of 1/f noise with log time."""
    if isinstance(t_since_s, torch.Tensor):
        t = t_since_s.clamp_min(0.0) + model.t0_s
        return torch.sqrt(torch.log((t + model.t_read_s) / (2 * model.t_read_s)))
    t = max(float(t_since_s), 0.0) + model.t0_s
    return math.sqrt(math.log((t + model.t_read_s) / (2 * model.t_read_s)))

"""Device statistics of a preset's physics model as plain functions (kept for existing callers).

The formulas live in the model classes of ``emulator/noise/`` (one file per model); these wrappers
evaluate the model a :class:`NoiseModel` names, with its g_max / t0 / t_read and the preset's scales.
``sigma_prog`` returns uS, the others are dimensionless; g_rel = g / g_max.
"""

from __future__ import annotations

import torch

from emulator.presets import NoiseModel
from emulator.programming import physics_model


def sigma_prog(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Programming-noise standard deviation [uS] at target g_rel (times prog_noise_scale)."""
    return physics_model(model).prog_sigma_us(g_rel * model.g_max_us) * model.prog_noise_scale


def nu_mean(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Mean drift exponent at programmed g_rel."""
    return physics_model(model).nu_mean(g_rel)


def nu_std(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """Device-to-device standard deviation of the drift exponent at programmed g_rel."""
    return physics_model(model).nu_std(g_rel)


def q_s(g_rel: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """1/f read-noise magnitude Q_s at programmed g_rel (times read_noise_scale)."""
    return physics_model(model).q_s(g_rel) * model.read_noise_scale


def drift_factor(t_since_s: torch.Tensor, nu: torch.Tensor, model: NoiseModel) -> torch.Tensor:
    """G(t)/G(t_p) = ((t - t_p + t0) / t0) ** -nu (the aihwkit form: t counted from t0)."""
    return physics_model(model).drift_factor(t_since_s, nu)


def read_noise_time_factor(t_since_s: torch.Tensor | float, model: NoiseModel) -> torch.Tensor | float:
    """sqrt(ln((t - t_p + t0 + t_read) / (2 t_read))): the growth of the accumulated 1/f noise."""
    m = physics_model(model)
    if isinstance(t_since_s, torch.Tensor):
        return m.log_band(t_since_s.clamp_min(0.0) + m.t0_s).sqrt()
    return m.log_band(max(float(t_since_s), 0.0) + m.t0_s) ** 0.5

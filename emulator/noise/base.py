"""The base class of a PCM device physics model: the hooks the emulator needs.

A physics model is one class in one file of this package (``emulator/noise/<model>.py``) that
subclasses :class:`DeviceNoiseModel`, sets ``name`` (the key a preset's ``noise.fit`` names) and its
published constants, and implements the four statistics hooks:

* :meth:`DeviceNoiseModel.prog_sigma_us`: programming-noise standard deviation [uS] at a target [uS];
* :meth:`DeviceNoiseModel.nu_mean` / :meth:`DeviceNoiseModel.nu_std`: drift-exponent statistics at
  the normalised target g_rel = g / g_max;
* :meth:`DeviceNoiseModel.q_s`: 1/f read-noise magnitude Q_s at the normalised programmed conductance.

The laws common to the aihwkit-style PCM models are implemented here once (ln is the natural log):

* programming: g_p = max(g_T + s_prog sigma_prog(g_T) xi, 0), xi ~ N(0, 1);
* drift exponent: nu = |mu_nu(g_T) + sigma_nu(g_T) xi| x s_drift;
* drift: G(t) = g_p (a / t0) ** -nu with the device age a = t - t_p + t0 (aihwkit's t = t_inference + t0);
* accumulated 1/f read noise (PSD S_G / G^2 = Q_s^2 / f, integrated from 1/a to 1/(2 t_read)):
  sigma_G / |G| = Q_s sqrt(L(a)), L(x) = ln((x + t_read) / (2 t_read)).

How the emulator splits that read noise into a slow and a fast part, and when each is redrawn, is in
:mod:`emulator.noise.recurrence`; it only needs :meth:`DeviceNoiseModel.log_band`.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch

_REGISTRY: dict[str, type[DeviceNoiseModel]] = {}


def poly(g: torch.Tensor, coeffs: tuple[float, ...]) -> torch.Tensor:
    """sum_i c_i g**i (coefficients in increasing order), by Horner's rule."""
    out = torch.full_like(g, coeffs[-1])
    for c in reversed(coeffs[:-1]):
        out = out * g + c
    return out


class DeviceNoiseModel:
    """Statistics of one PCM device (or of one device pair acting as one weight).

    ``g_max_us``, ``t0_s``, ``t_read_s`` default to the model's published values (class attributes
    ``G_MAX_US``, ``T0_S``, ``T_READ_S``); a preset may override them.
    """

    #: Registry key, named by a preset's ``noise.fit``.
    name: ClassVar[str] = ""
    #: Published constants of the fit: conductance the fit is normalised to [uS], drift reference [s],
    #: read duration of the 1/f law [s].
    G_MAX_US: ClassVar[float]
    T0_S: ClassVar[float]
    T_READ_S: ClassVar[float]
    #: Where the formulas come from (source tags of docs/references.md).
    SOURCE: ClassVar[str] = ""
    #: Devices one weight of this model spans (2 for a fit made on device pairs).
    DEVICES: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("name"):
            if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
                raise ValueError(f"noise model name {cls.name!r} is taken by {_REGISTRY[cls.name].__qualname__}")
            _REGISTRY[cls.name] = cls

    def __init__(self, g_max_us: float | None = None, t0_s: float | None = None, t_read_s: float | None = None) -> None:
        self.g_max_us = float(self.G_MAX_US if g_max_us is None else g_max_us)
        self.t0_s = float(self.T0_S if t0_s is None else t0_s)
        self.t_read_s = float(self.T_READ_S if t_read_s is None else t_read_s)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(g_max_us={self.g_max_us}, t0_s={self.t0_s}, t_read_s={self.t_read_s})"

    # ------------------------------------------------------------------ hooks of a model
    def prog_sigma_us(self, g_target_us: torch.Tensor) -> torch.Tensor:
        """Programming-noise standard deviation [uS] of devices programmed to ``g_target_us`` [uS]."""
        raise NotImplementedError

    def nu_mean(self, g_rel: torch.Tensor) -> torch.Tensor:
        """Mean drift exponent at the normalised target conductance ``g_rel``."""
        raise NotImplementedError

    def nu_std(self, g_rel: torch.Tensor) -> torch.Tensor:
        """Device-to-device standard deviation of the drift exponent at ``g_rel``."""
        raise NotImplementedError

    def q_s(self, g_rel: torch.Tensor) -> torch.Tensor:
        """1/f read-noise magnitude Q_s (relative, per sqrt(ln time)) at the normalised programmed ``g_rel``."""
        raise NotImplementedError

    def pair(self) -> DeviceNoiseModel | None:
        """The model of a weight stored on two devices of one polarity, or None where no pair fit exists
        (then each device is programmed on its own with this model)."""
        return None

    # ------------------------------------------------------------------ laws shared by the models
    def program(self, g_target_us: torch.Tensor, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
        """Programmed conductances [uS]: max(g_T + scale sigma_prog(g_T) xi, 0)."""
        z = torch.randn(g_target_us.shape, generator=gen, device=g_target_us.device, dtype=g_target_us.dtype)
        return (g_target_us + scale * self.prog_sigma_us(g_target_us) * z).clamp_min(0.0)

    def draw_nu(self, g_target_us: torch.Tensor, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
        """Drift exponents of devices programmed to ``g_target_us`` [uS]: |N(mu, sigma)| x scale."""
        g_rel = g_target_us / self.g_max_us
        z = torch.randn(g_rel.shape, generator=gen, device=g_rel.device, dtype=g_rel.dtype)
        return (self.nu_mean(g_rel) + self.nu_std(g_rel) * z).abs() * scale

    def q_s_us(self, g_prog_us: torch.Tensor) -> torch.Tensor:
        """Q_s of devices programmed to ``g_prog_us`` [uS] (evaluated at g_p, as aihwkit's code does)."""
        return self.q_s(g_prog_us / self.g_max_us)

    def drift_factor(self, t_since_s: torch.Tensor, nu: torch.Tensor) -> torch.Tensor:
        """G(t) / g_p = ((t - t_p + t0) / t0) ** -nu."""
        return torch.exp(-nu * torch.log1p(t_since_s.clamp_min(0.0) / self.t0_s))

    def log_band(self, x_s: torch.Tensor | float) -> torch.Tensor | float:
        """L(x) = ln((x + t_read) / (2 t_read)), clipped at 0: the 1/f variance (in units of Q_s^2)
        accumulated over frequencies from 1/x to 1/(2 t_read)."""
        if isinstance(x_s, torch.Tensor):
            return torch.log((x_s + self.t_read_s) / (2 * self.t_read_s)).clamp_min(0.0)
        return max(math.log((float(x_s) + self.t_read_s) / (2 * self.t_read_s)), 0.0)

    def read_noise_rel_std(self, g_prog_us: torch.Tensor, t_since_s: torch.Tensor | float) -> torch.Tensor:
        """Published accumulated read noise sigma_G / |G| = Q_s(g_p) sqrt(L(t - t_p + t0))."""
        if isinstance(t_since_s, torch.Tensor):
            band = self.log_band(t_since_s.clamp_min(0.0) + self.t0_s)
        else:
            band = self.log_band(max(float(t_since_s), 0.0) + self.t0_s)
        return self.q_s_us(g_prog_us) * (band.sqrt() if isinstance(band, torch.Tensor) else math.sqrt(band))


def registered() -> dict[str, type[DeviceNoiseModel]]:
    """Registered model classes by name (a copy)."""
    return dict(_REGISTRY)

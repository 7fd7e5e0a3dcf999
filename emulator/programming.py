"""Programming physics of PCM devices: what a RESET, SET or PARTIAL pulse does to a device.

Model (ASSUMPTION where the papers give no formula; constants in :class:`DeviceModel`):

* RESET (kind RESET and at least ``reset_min_ua``): melt-quench to the amorphous state,
  g = |N(reset_g_us, reset_sigma_us)|.
* SET (kind SET, up to ``set_max_ua``): crystallise toward the device's own SET level g_set,d
  (drawn once per device: device-to-device spread) with cycle-to-cycle spread; pulses shorter than
  a few ``set_tau_ns`` crystallise only part of the way.
* PARTIAL (and SET/RESET pulses outside their current window): the current I sets a target
  g_T(I) = g_reset + (g_set,d - g_reset) / (1 + exp((I - I_mid) / I_w)), falling with I. A device
  above g_T is partly re-melted down to it (fraction 1 - exp(-w / tau)); a device below moves up a
  stochastic fraction kappa ~ N(kappa_mean, kappa_sigma) (partial crystallisation, state
  dependent). Every result gets programming noise sigma_prog(g) of the preset's fit, scaled by
  ``partial_noise_scale``. This makes iterative program-and-verify converge stochastically in a
  handful of pulses and lets gradient-descent programming move devices both ways.
* Pulses below ``min_effect_ua`` do nothing (too little heating).

Each pulse that changes a device redraws its drift exponent nu at the new conductance, resets its
programming time t_p and starts a new slow read-noise epoch (``emulator/noise/recurrence.py``).
The device statistics come from the preset's physics model (``emulator/noise/``).
"""

from __future__ import annotations

import torch

from emulator.noise import DeviceNoiseModel, get_model
from emulator.presets import EmulatorPreset, NoiseModel
from hil.chip import PulseKind


def physics_model(noise: NoiseModel) -> DeviceNoiseModel:
    """The preset's physics model with the preset's g_max, t0 and t_read."""
    return get_model(noise.fit, g_max_us=noise.g_max_us, t0_s=noise.t0_s, t_read_s=noise.t_read_s)


def pulse_response(
    g: torch.Tensor,
    g_set: torch.Tensor,
    kind: torch.Tensor,
    amp_ua: torch.Tensor,
    width_ns: torch.Tensor,
    preset: EmulatorPreset,
    gen: torch.Generator,
    model: DeviceNoiseModel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """New conductances [uS] of devices at ``g`` [uS] after one pulse each; also a changed-mask."""
    d = preset.device
    model = model or physics_model(preset.noise)
    n = g.shape[0]
    z = torch.randn((3, n), generator=gen, device=g.device, dtype=g.dtype)
    is_reset = (kind == int(PulseKind.RESET)) & (amp_ua >= d.reset_min_ua)
    is_set = (kind == int(PulseKind.SET)) & (amp_ua <= d.set_max_ua) & (amp_ua >= d.min_effect_ua)
    active = amp_ua >= d.min_effect_ua

    # RESET: amorphous state with its own spread.
    g_reset = (d.reset_g_us + d.reset_sigma_us * z[0]).abs()
    # SET: crystallise toward the device's SET level, c2c spread, incomplete for short pulses.
    frac_set = 1.0 - torch.exp(-width_ns / d.set_tau_ns)
    g_set_new = g + frac_set * (g_set * (1.0 + d.set_c2c_sigma * z[1]) - g)
    # PARTIAL: current-dependent target, melt down or crystallise part of the way up.
    target = d.reset_g_us + (g_set - d.reset_g_us) * torch.sigmoid((d.partial_mid_ua - amp_ua) / d.partial_width_ua)
    melt = 1.0 - torch.exp(-width_ns / d.partial_tau_ns)
    kappa = (d.partial_kappa_mean + d.partial_kappa_sigma * z[2]).clamp(0.0, 1.0)
    step = torch.where(target < g, melt, melt * kappa)
    g_partial = g + step * (target - g)
    noise_z = torch.randn(n, generator=gen, device=g.device, dtype=g.dtype)
    sigma = model.prog_sigma_us(g_partial) * (d.partial_noise_scale * preset.noise.prog_noise_scale)
    g_partial = g_partial + sigma * noise_z

    out = torch.where(is_reset, g_reset, torch.where(is_set, g_set_new, g_partial))
    out = torch.where(active, out, g).clamp_min(0.0)
    return out, active


def draw_nu(g: torch.Tensor, preset: EmulatorPreset, gen: torch.Generator,
            model: DeviceNoiseModel | None = None) -> torch.Tensor:
    """Drift exponents of devices just programmed to ``g`` [uS]: |N(mu(g), sigma(g))| x drift_scale."""
    return (model or physics_model(preset.noise)).draw_nu(g, gen, preset.noise.drift_scale)


def read_noise_q(g: torch.Tensor, preset: EmulatorPreset, model: DeviceNoiseModel | None = None) -> torch.Tensor:
    """Q_s of devices programmed to ``g`` [uS] (frozen at programming, as in the published model)."""
    return (model or physics_model(preset.noise)).q_s_us(g)


def statistical_program(g_target: torch.Tensor, preset: EmulatorPreset, gen: torch.Generator,
                        model: DeviceNoiseModel | None = None) -> torch.Tensor:
    """Fast path: conductances [uS] that iterative programming to ``g_target`` leaves, drawn from the
    model's programming noise g = max(g_T + s_prog sigma_prog(g_T) xi, 0)."""
    return (model or physics_model(preset.noise)).program(g_target, gen, preset.noise.prog_noise_scale)

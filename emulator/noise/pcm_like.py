"""The PCM-like device model: aihwkit's PCMLikeNoiseModel of a 1M-device 90 nm PCM array.

Source: [AIHW] ``src/aihwkit/inference/noise/pcm.py`` (``PCMLikeNoiseModel``, defaults), calibrated on
the array of [JOSHI20] (Joshi et al., Nat. Commun. 11, 2473, 2020) and Nandakumar et al., ICECS 2019;
docs/references.md#aihw and #joshi20. g_max 25 uS, t0 20 s, t_read 250 ns;
g_rel = g / g_max, ln natural.

* sigma_prog = (0.26348 + 1.9650 g - 1.1731 g^2) x g_max / 25 [uS]
* mu_nu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1); sigma_nu = clip(-0.0125 ln g - 0.0059, 0.008, 0.045)
* Q_s = min(0.0088 / max(g^0.65, 1e-3), 0.2), on the programmed conductance (aihwkit's code; its docs
  write g_T)

The model has no two-device fit: a weight on two devices programs each device on its own.
"""

from __future__ import annotations

import torch

from emulator.noise.base import DeviceNoiseModel, poly

_ZERO_CLIP = 1e-7


class PCMLike(DeviceNoiseModel):
    """[AIHW] PCMLikeNoiseModel with its published defaults ([JOSHI20])."""

    name = "pcm-like"
    G_MAX_US = 25.0
    T0_S = 20.0
    T_READ_S = 250e-9
    SOURCE = "[AIHW] pcm.py PCMLikeNoiseModel; [JOSHI20]"
    PROG = (0.26348, 1.9650, -1.1731)
    PROG_REF_US = 25.0

    def prog_sigma_us(self, g_target_us: torch.Tensor) -> torch.Tensor:
        s = poly(g_target_us / self.g_max_us, self.PROG) * (self.g_max_us / self.PROG_REF_US)
        return s.clamp_min(0.0)

    def nu_mean(self, g_rel: torch.Tensor) -> torch.Tensor:
        g = g_rel.abs().clamp_min(_ZERO_CLIP)
        return (-0.0155 * torch.log(g) + 0.0244).clamp(0.049, 0.1)

    def nu_std(self, g_rel: torch.Tensor) -> torch.Tensor:
        g = g_rel.abs().clamp_min(_ZERO_CLIP)
        return (-0.0125 * torch.log(g) - 0.0059).clamp(0.008, 0.045)

    def q_s(self, g_rel: torch.Tensor) -> torch.Tensor:
        return (0.0088 / g_rel.abs().pow(0.65).clamp_min(1e-3)).clamp_max(0.2)

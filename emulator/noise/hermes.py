"""HERMES PCM device statistics: the HermesNoiseModel fits of aihwkit, one and two devices per weight.

Source: [AIHW] ``src/aihwkit/inference/noise/hermes.py`` (``HermesNoiseModel``), fitted on the PCM
devices of the IBM HERMES project chip ([NE23], [JSSC22]) with the methodology of Nandakumar et al.,
ICECS 2019 (docs/references.md#aihw). g_rel = g / g_max, ln
natural. The two-device fit uses the programming of Vasilopoulos et al., TED 2023 and models drift
"as if both devices hold the same conductance" (one nu per pair).

One device (``hermes-1dev``): g_max 10.35 uS, t0 200 s, t_read 512 ns.

* sigma_prog = (0.15781817 + 2.32443916 g - 2.16310839 g^2 + 0.68841818 g^3) x g_max / 10.35 [uS]
* mu_nu = clip(-0.0387 ln g - 0.0182, 0.0720, 0.13) for g < 0.0945, else -0.0436 g^2 - 0.0126 g + 0.0736
* sigma_nu = clip(-0.0120 ln g - 0.0023, 0.0124, 0.04) for g < 0.3039, else -0.0165 g^2 + 0.0116 g + 0.0104
* Q_s = clip(-0.0078 ln g + 0.0038, 0.0179, 0.04) for g < 0.1591, else 0.0664 g^3 - 0.1352 g^2 + 0.0768 g + 0.0088

Two devices (``hermes-2dev``; one weight = two devices of one polarity): g_max 20.7 uS, t0 300 s,
t_read 512 ns; mu_nu as above.

* sigma_prog = (0.16603222 + 4.71806468 g - 8.48101252 g^2 + 4.68961419 g^3) x g_max / 20.7 [uS]
* sigma_nu = clip(-0.0117 ln g - 0.0057, 0.0091, 0.04) for g < 0.3055, else -0.0118 g^2 + 0.0093 g + 0.0073
* Q_s = clip(-0.0117 ln g - 0.0069, 0.015, 0.04) for g < 0.16, else 0.0069 g^3 - 0.0280 g^2 + 0.0211 g + 0.0123

All two-device statistics describe the pair's summed conductance G = G_a + G_b.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from emulator.noise.base import DeviceNoiseModel, poly

_ZERO_CLIP = 1e-7


def _hermes_nu_mean(g_rel: torch.Tensor) -> torch.Tensor:
    g = g_rel.abs().clamp_min(_ZERO_CLIP)
    low = (-0.0387 * torch.log(g) - 0.0182).clamp(0.0720, 0.13)
    return torch.where(g < 0.0945, low, -0.0436 * g * g - 0.0126 * g + 0.0736)


class _HermesFit(DeviceNoiseModel):
    """The shape both HERMES fits share ([AIHW] HermesNoiseModel): a cubic programming-noise
    polynomial, the nu mean of :func:`_hermes_nu_mean`, and nu std and Q_s each a clamped log law
    below a knee and a polynomial above it. The subclasses hold their fitted coefficients."""

    PROG: ClassVar[tuple[float, ...]]
    PROG_REF_US: ClassVar[float]
    #: nu std: (log slope, offset, clamp low, clamp high, knee, c2, c1, c0) of c2 g^2 + c1 g + c0 above the knee.
    NU_STD: ClassVar[tuple[float, ...]]
    #: Q_s: (log slope, offset, clamp low, clamp high, knee) and the polynomial above the knee.
    Q_LOW: ClassVar[tuple[float, ...]]
    Q_POLY: ClassVar[tuple[float, ...]]

    def prog_sigma_us(self, g_target_us: torch.Tensor) -> torch.Tensor:
        s = poly(g_target_us / self.g_max_us, self.PROG) * (self.g_max_us / self.PROG_REF_US)
        return s.clamp_min(0.0)

    def nu_mean(self, g_rel: torch.Tensor) -> torch.Tensor:
        return _hermes_nu_mean(g_rel)

    def nu_std(self, g_rel: torch.Tensor) -> torch.Tensor:
        slope, offset, lo, hi, knee, c2, c1, c0 = self.NU_STD
        g = g_rel.abs().clamp_min(_ZERO_CLIP)
        low = (slope * torch.log(g) + offset).clamp(lo, hi)
        return torch.where(g < knee, low, c2 * g * g + c1 * g + c0)

    def q_s(self, g_rel: torch.Tensor) -> torch.Tensor:
        slope, offset, lo, hi, knee = self.Q_LOW
        g = g_rel.abs()
        low = (slope * torch.log(g.clamp_min(_ZERO_CLIP)) + offset).clamp(lo, hi)
        return torch.where(g < knee, low, poly(g, self.Q_POLY))


class Hermes1Device(_HermesFit):
    """HERMES fit, one PCM device per weight polarity ([AIHW] HermesNoiseModel, num_devices=1)."""

    name = "hermes-1dev"
    G_MAX_US = 10.35
    T0_S = 200.0
    T_READ_S = 512e-9
    SOURCE = "[AIHW] hermes.py HermesNoiseModel(num_devices=1); [NE23], [JSSC22]"
    PROG = (0.15781817, 2.32443916, -2.16310839, 0.68841818)
    PROG_REF_US = 10.35
    NU_STD = (-0.0120, -0.0023, 0.0124, 0.04, 0.3039, -0.0165, 0.0116, 0.0104)
    Q_LOW = (-0.0078, 0.0038, 0.0179, 0.04, 0.1591)
    Q_POLY = (0.0088, 0.0768, -0.1352, 0.0664)

    def pair(self) -> DeviceNoiseModel:
        """The two-device fit at twice this g_max, with its own published t0 (300 s) and this t_read."""
        return Hermes2Device(g_max_us=2 * self.g_max_us, t_read_s=self.t_read_s)


class Hermes2Device(_HermesFit):
    """HERMES fit, two PCM devices per weight polarity ([AIHW] HermesNoiseModel, num_devices=2)."""

    name = "hermes-2dev"
    G_MAX_US = 20.7
    T0_S = 300.0
    T_READ_S = 512e-9
    DEVICES = 2
    SOURCE = "[AIHW] hermes.py HermesNoiseModel(num_devices=2); Vasilopoulos et al., TED 2023"
    PROG = (0.16603222, 4.71806468, -8.48101252, 4.68961419)
    PROG_REF_US = 20.7
    NU_STD = (-0.0117, -0.0057, 0.0091, 0.04, 0.3055, -0.0118, 0.0093, 0.0073)
    Q_LOW = (-0.0117, -0.0069, 0.015, 0.04, 0.16)
    Q_POLY = (0.0123, 0.0211, -0.0280, 0.0069)

    def pair(self) -> DeviceNoiseModel:
        """Already a pair fit: a two-device weight of this model is this model."""
        return self

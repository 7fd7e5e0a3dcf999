"""Noise-source study and noise-level sweeps on the chip model [ADV25, "which noise makes AIMC robust"].

ADV25 splits the chip model's noise into {recurrent, non-recurrent} x {weight (input-dependent), output
(input-independent)}, scales each source alone to a chosen clean-accuracy drop and compares the ASR.
Here the four sources are :class:`ChipModelParams` with one noise term set (8-bit I/O kept):

* ``weight_nonrecurrent``: programming-like weight noise ``sigma wmax_c N(0, 1)``, drawn once per repeat;
* ``weight_recurrent``: the same, fresh on every forward call (read-noise-like);
* ``output_nonrecurrent``: a per-column output offset ``sigma r_in wmax_c N(0, 1)``, drawn once per repeat;
* ``output_recurrent``: the same, fresh on every forward call and element (per MVM, as on the chip);
* ``output_recurrent_batch``: fresh on every forward call, one draw per column shared by the batch (ADV25's
  chip model draws its output noise per mini-batch). Weight noise is per forward call too (one dW per batch).

Clean and adversarial inputs are evaluated in one interleaved batch, so per-batch noise hits both alike,
while per-element output noise alone flips some clean-correct samples (``SourceResult.flip``).

:func:`match_drop` bisects ``sigma`` (on a log scale) until the mean clean accuracy over ``repeats`` draws
is the reference accuracy minus the target drop (the instances are those the ASR is measured on, seeds
``seed + r``, so with ``repeats == match_repeats`` the measured drop is the matched one).
:func:`source_asr` runs the PGD grid on the chip model
(generate and evaluate on the same platform; each repeat a new noise instance; recurrent noise differs
between generation and evaluation) and returns the envelope mean per repeat. Stochastic "robustness" is
partly this generation/evaluation mismatch (an EOT attacker would reduce it): a property of the protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from torch import nn

from protocols.attacks import lib
from protocols.attacks.platforms import ChipModel, ChipModelParams

SOURCES = ("weight_nonrecurrent", "weight_recurrent", "output_nonrecurrent", "output_recurrent", "output_recurrent_batch")


def source_params(source: str, sigma: float, base: ChipModelParams | None = None) -> ChipModelParams:
    """Chip-model parameters with only ``source`` switched on at ``sigma`` (I/O bits from ``base``)."""
    b = base or ChipModelParams()
    common = {"in_bits": b.in_bits, "out_bits": b.out_bits, "scale": 1.0, "prog_coeffs": [0.0, 0.0, 0.0, 0.0],
              "out_sigma": 0.0, "out_sigma_frozen": 0.0, "weight_sigma_recurrent": 0.0, "out_per_batch": False}
    if source == "weight_nonrecurrent":
        common["prog_coeffs"] = [float(sigma), 0.0, 0.0, 0.0]
    elif source == "weight_recurrent":
        common["weight_sigma_recurrent"] = float(sigma)
    elif source == "output_nonrecurrent":
        common["out_sigma_frozen"] = float(sigma)
    elif source == "output_recurrent":
        common["out_sigma"] = float(sigma)
    elif source == "output_recurrent_batch":
        common.update(out_sigma=float(sigma), out_per_batch=True)
    else:
        raise ValueError(f"noise source {source!r}; known: {', '.join(SOURCES)}")
    return ChipModelParams(**common)


def clean_accuracy(cm: ChipModel, x: np.ndarray, y: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """Clean accuracy of ``repeats`` noise instances (seeds ``seed + r``)."""
    out = []
    for r in range(repeats):
        cm.new_repeat(seed + r)
        out.append(float((cm.predict(x).argmax(1) == y).mean()))
    return np.asarray(out)


def match_drop(model: nn.Module, x_cal: np.ndarray, x: np.ndarray, y: np.ndarray, source: str, drop: float,
               reference: float, repeats: int = 20, steps: int = 12, seed: int = 0, hi: float = 2.0) -> float:
    """``sigma`` of ``source`` whose mean clean accuracy (``repeats`` draws) is ``reference - drop`` (log bisection)."""
    target = reference - drop
    lo_s, hi_s = 1e-4, hi

    def acc(s: float) -> float:
        return float(clean_accuracy(ChipModel(model, x_cal, source_params(source, s)), x, y, repeats, seed).mean())

    while acc(hi_s) > target and hi_s < 10.0:
        lo_s, hi_s = hi_s, min(10.0, hi_s * 2)
    for _ in range(steps):
        mid = float(np.sqrt(lo_s * hi_s))
        if acc(mid) > target:
            lo_s = mid
        else:
            hi_s = mid
    return float(np.sqrt(lo_s * hi_s))


@dataclass(frozen=True)
class SourceResult:
    """One source at one level: sigma, clean accuracy, envelope mean and noise-only flip rate, per repeat.

    ``flip`` is the ASR of the identity "attack" (x_adv = x, evaluated interleaved): the part of the ASR that
    recurrent noise alone makes (clean-correct in one draw, wrong in the next).
    """

    source: str
    sigma: float
    accuracy: np.ndarray
    envelope: np.ndarray
    flip: np.ndarray

    @staticmethod
    def _se(a: np.ndarray) -> float:
        return float(a.std(ddof=1) / np.sqrt(a.size)) if a.size > 1 else float("nan")

    @property
    def asr_mean(self) -> float:
        return float(self.envelope.mean())

    @property
    def asr_se(self) -> float:
        return self._se(self.envelope)

    @property
    def acc_mean(self) -> float:
        return float(self.accuracy.mean())


def grid_envelope(predict: Callable, grad: Callable, x: np.ndarray, y: np.ndarray, iterations: list[int],
                  magnitudes: list[float]) -> float:
    """Envelope mean of a PGD grid (generate with ``grad``, evaluate interleaved with ``predict``)."""
    g = np.full((len(iterations), len(magnitudes)), np.nan)
    for i, it in enumerate(iterations):
        for j, eps in enumerate(magnitudes):
            xa = lib.pgd(grad, x, y, float(eps), int(it))
            pc, pa = lib.interleaved_predict(predict, x, xa)
            g[i, j] = lib.asr(pc, pa, y).asr
    return float(np.nanmean([r[3] for r in lib.envelope(g, iterations, magnitudes)]))


def source_asr(model: nn.Module, x_cal: np.ndarray, x: np.ndarray, y: np.ndarray, params: ChipModelParams,
               iterations: list[int], magnitudes: list[float], repeats: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clean accuracy, envelope mean, noise-only flip rate) per repeat of the chip model with ``params``;
    repeat r uses seed ``seed + r``."""
    cm = ChipModel(model, x_cal, params)
    acc, env, flip = [], [], []
    for r in range(repeats):
        cm.new_repeat(seed + r)
        acc.append(float((cm.predict(x).argmax(1) == y).mean()))
        flip.append(lib.asr(*lib.interleaved_predict(cm.predict, x, x), y).asr)
        env.append(grid_envelope(cm.predict, cm.grad, x, y, iterations, magnitudes))
    return np.asarray(acc), np.asarray(env), np.asarray(flip)


def study(model: nn.Module, x_cal: np.ndarray, x: np.ndarray, y: np.ndarray, drops: list[float],
          iterations: list[int], magnitudes: list[float], repeats: int = 10, sources: tuple[str, ...] = SOURCES,
          seed: int = 0, match_repeats: int = 50) -> Iterator[SourceResult]:
    """For each source and drop: match sigma (:func:`match_drop`), then the ASR; yields one result per (source, drop)."""
    import torch

    with torch.no_grad():
        reference = float((model(torch.from_numpy(np.array(x, dtype=np.float32))).argmax(1).numpy() == y).mean())
    for source in sources:
        for drop in drops:
            sigma = match_drop(model, x_cal, x, y, source, drop, reference, match_repeats, seed=seed)
            acc, env, flip = source_asr(model, x_cal, x, y, source_params(source, sigma), iterations, magnitudes, repeats,
                                        seed)
            yield SourceResult(source, sigma, acc, env, flip)

"""Attack library: ASR (ADV25 Algorithm 1), the envelope, in-house PGD, and ART's Square and OnePixel.

* :func:`asr` - attack success rate among the samples a platform classifies correctly when clean.
* :func:`envelope` - the ASR along the diagonal of an (iterations x magnitude) grid, from its
  bottom-left to its top-right corner (bilinear on non-square grids) [ADV25 Fig. 2].
* :func:`pgd` - L-infinity PGD without random start (one iteration is FGSM), written in-house:
  deterministic, so a recorded run replays; it equals ART's ``ProjectedGradientDescent`` (tested).
* :func:`square`, :func:`onepixel` - ART's ``SquareAttack`` (black-box) and ``PixelAttack`` (DE,
  semi-black-box) on a predict-only classifier. ART draws from the global numpy generator: both
  seed it from the ``seed`` argument before every ``generate``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

#: ``grad_fn(x, y) -> d loss / d x`` (numpy, the shape of x); ``predict_fn(x) -> logits``.
GradFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
PredictFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class AsrResult:
    """ASR counts: ``n`` samples, ``n_correct`` right when clean, ``n_success`` of those wrong after the attack."""

    n: int
    n_correct: int
    n_success: int

    @property
    def asr(self) -> float:
        """n_success / n_correct (nan when no sample is classified correctly)."""
        return self.n_success / self.n_correct if self.n_correct else float("nan")


def asr(pred_clean: np.ndarray, pred_adv: np.ndarray, y: np.ndarray) -> AsrResult:
    """ADV25 Algorithm 1 on predicted labels (or logits: argmax over the last axis)."""
    pc, pa, y = (np.asarray(a) for a in (pred_clean, pred_adv, y))
    pc = pc.argmax(-1) if pc.ndim > 1 else pc
    pa = pa.argmax(-1) if pa.ndim > 1 else pa
    correct = pc == y
    return AsrResult(int(y.size), int(correct.sum()), int((correct & (pa != y)).sum()))


def interleaved_predict(predict: PredictFn, x: np.ndarray, x_adv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Evaluate clean and adversarial inputs in one interleaved batch (x0, adv0, x1, adv1, ...): drift hits both alike."""
    both = np.empty((2 * x.shape[0], *x.shape[1:]), dtype=x.dtype)
    both[0::2], both[1::2] = x, x_adv
    out = np.asarray(predict(both))
    return out[0::2], out[1::2]


def envelope(grid: np.ndarray, iterations: list[int], magnitudes: list[float]) -> list[tuple[float, float, float, float]]:
    """The diagonal of ``grid`` (n_iterations, n_magnitudes): rows (t in [0, 1], iterations, magnitude, ASR).

    ``max(n_it, n_mag)`` points from the bottom-left to the top-right corner; between grid points the
    ASR, the iterations and the magnitude are interpolated bilinearly (in index space).
    """
    g = np.asarray(grid, dtype=np.float64)
    ni, nm = g.shape
    n = max(ni, nm)
    rows = []
    for t in np.linspace(0.0, 1.0, n) if n > 1 else [0.0]:
        fi, fm = t * (ni - 1), t * (nm - 1)
        i0, m0 = int(np.floor(fi)), int(np.floor(fm))
        i1, m1 = min(i0 + 1, ni - 1), min(m0 + 1, nm - 1)
        a, b = fi - i0, fm - m0
        v = (g[i0, m0] * (1 - a) * (1 - b) + g[i1, m0] * a * (1 - b) + g[i0, m1] * (1 - a) * b + g[i1, m1] * a * b)
        it = iterations[i0] * (1 - a) + iterations[i1] * a
        mag = magnitudes[m0] * (1 - b) + magnitudes[m1] * b
        rows.append((float(t), float(it), float(mag), float(v)))
    return rows


def pgd(grad_fn: GradFn, x: np.ndarray, y: np.ndarray, eps: float, max_iter: int, eps_step: float | None = None,
        clip: tuple[float, float] = (0.0, 1.0), callback: Callable[[int, np.ndarray], None] | None = None) -> np.ndarray:
    """Untargeted L-infinity PGD, no random start (``max_iter=1``, ``eps_step=eps``: FGSM).

    Per iteration: ``x_adv = clip(x_adv + eps_step sign(grad)); x_adv = x + clip(x_adv - x, -eps, eps)``, the
    update of ART's ``ProjectedGradientDescent`` (``num_random_init=0``). ``eps_step`` defaults to ``eps`` for one
    iteration, else ``2.5 eps / max_iter`` (ART's own default is a fixed 0.1).
    ``callback(i, x_adv)`` sees every iterate (after iteration i).
    """
    step = eps_step if eps_step is not None else (eps if max_iter == 1 else 2.5 * eps / max_iter)
    x0 = np.asarray(x, dtype=np.float32)
    xa = x0.copy()
    for i in range(max_iter):
        g = np.nan_to_num(np.asarray(grad_fn(xa, y), dtype=np.float32))
        xa = np.clip(xa + np.float32(step) * np.sign(g), clip[0], clip[1]).astype(np.float32)
        xa = (x0 + np.clip(xa - x0, -eps, eps)).astype(np.float32)
        if callback is not None:
            callback(i, xa)
    return xa


def _blackbox(predict: PredictFn, shape: tuple[int, ...], n_classes: int):
    from art.estimators.classification import BlackBoxClassifierNeuralNetwork

    if len(shape) != 3:
        raise ValueError(f"ART's Square and OnePixel attacks need image inputs (C, H, W); got samples of shape {shape}.")
    return BlackBoxClassifierNeuralNetwork(lambda a: np.asarray(predict(a.astype(np.float32))), shape, n_classes,
                                           channels_first=True, clip_values=(0.0, 1.0))


def square(predict: PredictFn, x: np.ndarray, y: np.ndarray, eps: float, max_iter: int, n_classes: int, seed: int) -> np.ndarray:
    """ART ``SquareAttack`` (L-infinity, ART defaults otherwise) on a predict-only classifier; one sample at a time."""
    from art.attacks.evasion import SquareAttack

    att = SquareAttack(_blackbox(predict, tuple(x.shape[1:]), n_classes), norm=np.inf, eps=eps, max_iter=max_iter,
                       batch_size=1, verbose=False)
    np.random.seed(seed)
    return att.generate(np.asarray(x, dtype=np.float32), y=np.eye(n_classes, dtype=np.float32)[y]).astype(np.float32)


def onepixel(predict: PredictFn, x: np.ndarray, y: np.ndarray, th: int, max_iter: int, n_classes: int, seed: int) -> np.ndarray:
    """ART ``PixelAttack`` (differential evolution, ``th`` pixels, ``max_iter`` DE iterations) on a predict-only classifier."""
    from art.attacks.evasion import PixelAttack

    att = PixelAttack(_blackbox(predict, tuple(x.shape[1:]), n_classes), th=int(th), es=1, max_iter=max_iter, verbose=False)
    np.random.seed(seed)
    return att.generate(np.asarray(x, dtype=np.float32), y=np.eye(n_classes, dtype=np.float32)[y]).astype(np.float32)

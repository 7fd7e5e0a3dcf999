"""Random-feature maps, exact kernels, the kernel-approximation error and the ridge classifier [KRN24].

The recipe of ``IBM/kernel-approximation-using-analog-in-memory-computing@7a4deece``
(``imka-ridge-regression``), re-implemented in float64 numpy:

* kernels: RBF ``k(x, y) = exp(-gamma ||x - y||^2)`` (gamma 0.05) and arccos-0
  ``k(x, y) = (pi - theta) / pi`` (theta the angle between x and y);
* a feature map is one matrix-vector product ``W x`` with ``W`` (s, d) - the part that runs on the chip -
  followed by a digital offset and nonlinearity: RBF ``z = s^-1/2 [cos(Wx + b), sin(Wx + b)]``,
  ``W = sqrt(2 gamma) G``, ``b = 2 pi N(0, 1)``; arccos-0 ``z = sqrt(2) s^-1/2 H(Wx)`` (Heaviside), ``W = G``;
* G: RFF i.i.d. truncated normal (+-3); ORF [KRN24] d x d blocks ``Q`` of the QR decomposition of a truncated
  normal matrix, rows scaled by chi(d)-distributed norms; SORF ``sqrt(n) H D1 H D2 H D3`` (H the normalised
  n x n Hadamard matrix, D_i random signs, n = 2^ceil(log2 d), inputs zero-padded, so only the first d
  columns act);
* s = 2^k d - k features; error ``||K - K_hat||_F / ||K||_F`` on the test points; ridge as
  ``experiments/hardware/resources/models.py::RidgeClassifier``: alpha 0.5 on the raw features with a column of
  ones prepended (the intercept is regularised too), labels {0, 1}, prediction ``round(clip(., 0, 1))``
  (``hwkeap/utils/f.py::accuracy``). No feature standardisation: with z-scored features alpha 0.5 is negligible
  against ``Z^T Z`` (~N per diagonal entry instead of ~N/(2s)), the fit is almost unregularised and loses 2-3
  points more to the chip's per-MVM noise at k = 5 (measured, docs/kernels.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.linalg import hadamard

Approximation = Literal["rff", "orf", "sorf"]
Kernel = Literal["rbf", "arccos0"]
APPROXIMATIONS: tuple[str, ...] = ("rff", "orf", "sorf")
KERNELS: tuple[str, ...] = ("rbf", "arccos0")


def n_features(d: int, k: int) -> int:
    """s = 2^k d - k [KRN24, experiments/hardware/hardware_general.py]."""
    return int(2**k * d) - k


def _truncated_normal(rng: np.random.Generator, shape: tuple[int, ...], bound: float = 3.0) -> np.ndarray:
    out = rng.standard_normal(shape)
    bad = np.abs(out) > bound
    while np.any(bad):
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > bound
    return out


def _orf(s: int, d: int, rng: np.random.Generator) -> np.ndarray:
    blocks = []
    for _ in range(-(-s // d)):
        q, _ = np.linalg.qr(_truncated_normal(rng, (d, d)))
        norms = np.sqrt((_truncated_normal(rng, (d, d)) ** 2).sum(axis=1))  # chi(d)
        blocks.append(norms[:, None] * q.T)
    return np.concatenate(blocks)[:s]


def _sorf(s: int, d: int, rng: np.random.Generator) -> np.ndarray:
    n = 1 << max(int(np.ceil(np.log2(d))), 0)
    h = hadamard(n).astype(np.float64) / np.sqrt(n)
    blocks = []
    for _ in range(-(-s // n)):
        m = np.eye(n)
        for _ in range(3):
            m = m @ h @ np.diag(rng.choice([-1.0, 1.0], n))
        blocks.append(np.sqrt(n) * m)
    return np.concatenate(blocks)[:s, :d]


@dataclass
class FeatureMap:
    """The projection ``w`` (d, s), n_in x n_out as programmed on the chip, and the digital part."""

    approximation: str
    kernel: str
    w: np.ndarray  # (d, s)
    b: np.ndarray  # (s,)

    @property
    def s(self) -> int:
        return int(self.w.shape[1])

    def project(self, x: np.ndarray) -> np.ndarray:
        """The exact MVM ``x W^T`` (N, s), the floating-point reference of the chip's part."""
        return np.einsum("nd,ds->ns", x, self.w, optimize=False)

    def features(self, proj: np.ndarray) -> np.ndarray:
        """The digital offset and nonlinearity on projections (N, s) -> features."""
        if self.kernel == "rbf":
            a = proj + self.b
            return np.concatenate([np.cos(a), np.sin(a)], axis=1) / np.sqrt(self.s)
        return np.sqrt(2.0 / self.s) * (proj > 0).astype(np.float64)


def feature_map(approximation: str, kernel: str, s: int, d: int, rng: np.random.Generator, gamma: float = 0.05) -> FeatureMap:
    """Draw a random-feature map (see the module docstring)."""
    if approximation == "rff":
        g = _truncated_normal(rng, (s, d))
    elif approximation == "orf":
        g = _orf(s, d, rng)
    elif approximation == "sorf":
        g = _sorf(s, d, rng)
    else:
        raise ValueError(f"approximation={approximation!r}; known: {APPROXIMATIONS}")
    if kernel == "rbf":
        return FeatureMap(approximation, kernel, np.ascontiguousarray((np.sqrt(2.0 * gamma) * g).T),
                          2.0 * np.pi * rng.standard_normal(s))
    if kernel == "arccos0":
        return FeatureMap(approximation, kernel, np.ascontiguousarray(g.T), np.zeros(s))
    raise ValueError(f"kernel={kernel!r}; known: {KERNELS}")


def exact_kernel(kernel: str, x: np.ndarray, gamma: float = 0.05) -> np.ndarray:
    """The exact Gram matrix K (N, N) of ``x``."""
    if kernel == "rbf":
        sq = (x**2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (x @ x.T), 0.0)
        return np.exp(-gamma * d2)
    nrm = np.maximum(np.linalg.norm(x, axis=1), 1e-300)
    cos = np.clip((x @ x.T) / nrm[:, None] / nrm[None, :], -1.0, 1.0)
    return (np.pi - np.arccos(cos)) / np.pi


def approx_error(k_exact: np.ndarray, z: np.ndarray) -> float:
    """``||K - Z Z^T||_F / ||K||_F`` [KRN24, hwkeap.utils.f.approx_loss]."""
    return float(np.linalg.norm(k_exact - z @ z.T) / np.linalg.norm(k_exact))


def ridge_accuracy(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray, alpha: float = 0.5,
                   standardize: bool = False) -> float:
    """Test accuracy of the [KRN24] ridge classifier (closed form, labels {0, 1}).

    Default (the paper's ``RidgeClassifier``): ``X = [1, z]``, ``w = (X^T X + alpha I)^-1 X^T y`` (intercept
    regularised), prediction ``round(clip(X w, 0, 1))``. ``standardize=True``: this project's earlier variant -
    z-scored features and an unregularised intercept (kept for comparison only).
    """
    if standardize:
        mu, sd = z_train.mean(0), z_train.std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        a, t = (z_train - mu) / sd, (z_test - mu) / sd
        ym = float(y_train.mean())
        w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ (y_train - ym))
        pred = np.round(np.clip(t @ w + ym, 0.0, 1.0))
        return float((pred == y_test).mean())
    a = np.concatenate([np.ones((z_train.shape[0], 1)), z_train], axis=1)
    t = np.concatenate([np.ones((z_test.shape[0], 1)), z_test], axis=1)
    w = np.linalg.solve(a.T @ a + alpha * np.eye(a.shape[1]), a.T @ y_train)
    pred = np.round(np.clip(t @ w, 0.0, 1.0))
    return float((pred == y_test).mean())

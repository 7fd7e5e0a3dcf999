"""MVM error metrics of the HERMES paper and weight-programming error.

[NE23 eq. 2-4] for a core with intended matrix ``W`` (rows = inputs), inputs ``x`` and chip outputs
``y_exp`` (brought to the units of ``x @ W``):

* ``e_total = y_exp - y_fp``    with ``y_fp = x @ W``
* ``e_linear = x @ W_hat - y_fp``  (weight / programming error)
* ``e_residual = y_exp - x @ W_hat``  (read noise, ADC quantisation and non-linearity, ...)

each reported as ``||e|| / ||y_fp||`` over all inputs and columns of the core. ``W_hat`` is the
least-squares matrix ``argmin ||x W_hat - y_exp||`` from the same random MVMs; the inputs follow
[NE23]: uniform integers in [-127, 127] with 30 % of them zero.

Raw ADC counts are in their own unit. When no ``scale`` (counts per unit of ``x @ W``) is given, one
scalar per core is fitted by least squares (ASSUMPTION: the chip's per-core output rescaling, which
the LDPU or a global drift compensation applies, is not counted as error; per-column gains are).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hil.chip import Chip
from hil.errors import ChipInputError


@dataclass(frozen=True)
class MvmErrors:
    """Relative MVM errors per core (arrays of shape (n_cores,)) and the scale used (counts per unit)."""

    total: np.ndarray
    linear: np.ndarray
    residual: np.ndarray
    scale: np.ndarray

    def summary(self) -> dict[str, Any]:
        """Means over cores, and the total error of each core (JSON-able)."""
        return {
            "total": float(np.mean(self.total)),
            "linear": float(np.mean(self.linear)),
            "residual": float(np.mean(self.residual)),
            "total_per_core": [float(v) for v in self.total],
        }


def random_inputs(rng: np.random.Generator, batch: int, n_rows: int, sparsity: float = 0.3) -> np.ndarray:
    """(batch, n_rows) int8 inputs uniform in [-127, 127], a fraction ``sparsity`` set to 0 [NE23]."""
    if batch < 1 or n_rows < 1:
        raise ChipInputError(f"batch={batch}, n_rows={n_rows}: both must be >= 1.")
    if not 0.0 <= sparsity < 1.0:
        raise ChipInputError(f"sparsity={sparsity}; allowed [0, 1).")
    x = rng.integers(-127, 128, size=(batch, n_rows), dtype=np.int16)
    if sparsity > 0:
        x[rng.random(x.shape) < sparsity] = 0
    return x.astype(np.int8)


def least_squares_weights(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``W_hat = argmin ||x W_hat - y||``: x (B, rows) shared by all cores, y (n, B, cols) -> (n, rows, cols)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 3 or y.shape[1] != x.shape[0]:
        raise ChipInputError(f"x {x.shape} and y {y.shape} do not match: expected (B, rows) and (n, B, cols).")
    if x.shape[0] < x.shape[1]:
        raise ChipInputError(
            f"{x.shape[0]} inputs cannot determine {x.shape[1]} rows by least squares; use at least {x.shape[1]}."
        )
    y = np.asarray(y, dtype=np.float64)
    rhs = np.matmul(x.T, y)  # (n, rows, cols)
    sol = np.linalg.lstsq(x.T @ x, rhs.transpose(1, 0, 2).reshape(x.shape[1], -1), rcond=None)[0]
    return sol.reshape(x.shape[1], y.shape[0], y.shape[2]).transpose(1, 0, 2)


def fit_scale(y_exp: np.ndarray, y_fp: np.ndarray) -> np.ndarray:
    """Per-core least-squares scale s minimising ||y_exp - s y_fp|| (shape (n,)).

    A core whose ideal output is zero (no weights) or whose output carries none of it has no scale;
    it gets 1.0 instead of 0, so that dividing by the scale never makes NaN or inf.
    """
    num = (y_exp * y_fp).sum(axis=(1, 2))
    den = (y_fp * y_fp).sum(axis=(1, 2))
    s = num / np.where(den > 0, den, 1.0)
    return np.where((den > 0) & (s != 0) & np.isfinite(s), s, 1.0)


def mvm_errors(x: np.ndarray, y_exp: Any, w: np.ndarray, scale: Any = None) -> MvmErrors:
    """Total, linear and residual relative MVM errors per core.

    ``x``: (B, rows) inputs shared by all cores; ``y_exp``: (n, B, cols) chip outputs in any unit;
    ``w``: (n, rows, cols) intended matrices; ``scale``: output units per unit of ``x @ w`` (scalar or
    (n,)), or None to fit one per core.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y_exp, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 3 or y.ndim != 3 or w.shape[0] != y.shape[0] or w.shape[2] != y.shape[2] or w.shape[1] != x.shape[1]:
        raise ChipInputError(f"shapes do not match: x {x.shape}, y_exp {y.shape}, w {w.shape}.")
    y_fp = np.matmul(x, w)
    s = fit_scale(y, y_fp) if scale is None else np.broadcast_to(np.asarray(scale, dtype=np.float64), (w.shape[0],))
    y = y / s[:, None, None]
    w_hat = least_squares_weights(x, y)
    y_lin = np.matmul(x, w_hat)
    norm = np.sqrt((y_fp * y_fp).sum(axis=(1, 2)))
    norm = np.where(norm > 0, norm, 1.0)

    def rel(e: np.ndarray) -> np.ndarray:
        return np.sqrt((e * e).sum(axis=(1, 2))) / norm

    return MvmErrors(total=rel(y - y_fp), linear=rel(y_lin - y_fp), residual=rel(y - y_lin), scale=np.array(s))


def chip_mvm(chip: Chip, x: np.ndarray, cores: np.ndarray, *, output: str = "adc", batch: int = 512) -> np.ndarray:
    """MVMs of the same inputs ``x`` (B, rows) on ``cores``, in batches; float64 (n, B, cols)."""
    parts = [np.asarray(chip.mvm(x[i : i + batch], cores, output=output), dtype=np.float64)  # type: ignore[arg-type]
             for i in range(0, x.shape[0], batch)]
    return np.concatenate(parts, axis=1)


def measure_mvm_errors(
    chip: Chip,
    cores: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    *,
    n_inputs: int = 1024,
    scale: Any = None,
    output: str = "adc",
    sparsity: float = 0.3,
) -> tuple[MvmErrors, np.ndarray, np.ndarray]:
    """Run ``n_inputs`` random MVMs on ``cores`` and compare with ``targets`` (n, rows, cols).

    Returns the errors, the inputs (B, rows) and the outputs (n, B, cols).
    """
    x = random_inputs(rng, n_inputs, chip.geometry.n_rows, sparsity)
    y = chip_mvm(chip, x, cores, output=output)
    return mvm_errors(x, y, targets, scale), x, y


def weight_error(g_prog: np.ndarray, g_target: np.ndarray, gmax: Any, nonzero_only: bool = True) -> dict[str, float]:
    """Relative programming error ``(G_prog - G_target) / Gmax`` over cells (Gmax scalar or per core).

    Returns its standard deviation ``std`` (the HERMES-Core figure: 4.8-5.3 % [JSSC22]), ``mean``,
    ``rms`` and ``p99_abs``; ``nonzero_only`` skips cells with target 0 (RESET cells).
    """
    g_prog = np.asarray(g_prog, dtype=np.float64)
    g_target = np.asarray(g_target, dtype=np.float64)
    if g_prog.shape != g_target.shape:
        raise ChipInputError(f"g_prog {g_prog.shape} and g_target {g_target.shape} differ in shape.")
    gm = np.asarray(gmax, dtype=np.float64)
    if gm.ndim == 1:
        gm = gm.reshape(-1, *([1] * (g_prog.ndim - 1)))
    rel = (g_prog - g_target) / gm
    mask = g_target != 0 if nonzero_only else np.ones(g_target.shape, dtype=bool)
    r = np.broadcast_to(rel, g_target.shape)[mask]
    if r.size == 0:
        return {"std": 0.0, "mean": 0.0, "rms": 0.0, "p99_abs": 0.0, "n": 0}
    return {
        "std": float(r.std()),
        "mean": float(r.mean()),
        "rms": float(np.sqrt(np.mean(r * r))),
        "p99_abs": float(np.quantile(np.abs(r), 0.99)),
        "n": int(r.size),
    }

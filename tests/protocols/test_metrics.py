"""MVM error metrics [NE23 eq. 2-4] and the weight error."""

from __future__ import annotations

import numpy as np
import pytest

from hil import ChipInputError
from protocols.metrics import least_squares_weights, mvm_errors, random_inputs, weight_error


@pytest.fixture
def setup() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return random_inputs(rng, 512, 32), rng.uniform(-1, 1, (2, 32, 16))


def test_random_inputs_follow_the_paper_distribution() -> None:
    x = random_inputs(np.random.default_rng(1), 4000, 64, sparsity=0.3)
    assert x.dtype == np.int8 and x.min() >= -127 and x.max() <= 127
    assert abs(np.mean(x == 0) - 0.3) < 0.01


def test_exact_outputs_have_zero_error_at_any_global_scale(setup) -> None:
    x, w = setup
    y = 3.0 * np.matmul(x.astype(float), w)
    e = mvm_errors(x, y, w)
    np.testing.assert_allclose(e.scale, 3.0)
    assert np.all(e.total < 1e-10) and np.all(e.linear < 1e-10) and np.all(e.residual < 1e-10)
    # with a known, wrong scale the error is the scale error
    np.testing.assert_allclose(mvm_errors(x, y, w, scale=2.0).total, 0.5, rtol=1e-9)


def test_weight_errors_are_linear_and_noise_is_residual(setup) -> None:
    x, w = setup
    rng = np.random.default_rng(2)
    dw = 0.05 * rng.standard_normal(w.shape)
    xf = x.astype(float)
    y = np.matmul(xf, w + dw)
    e = mvm_errors(x, y, w, scale=1.0)
    expect = np.linalg.norm(np.matmul(xf, dw), axis=(1, 2)) / np.linalg.norm(np.matmul(xf, w), axis=(1, 2))
    np.testing.assert_allclose(e.linear, expect, rtol=1e-9)
    assert np.all(e.residual < 1e-9)
    noisy = np.matmul(xf, w) + 50.0 * rng.standard_normal(y.shape)
    e2 = mvm_errors(x, noisy, w, scale=1.0)
    assert np.all(e2.residual > 0.5 * e2.total) and np.all(e2.linear < e2.residual)
    np.testing.assert_allclose(e2.total**2, e2.linear**2 + e2.residual**2, rtol=0.05)


def test_least_squares_needs_enough_inputs(setup) -> None:
    x, w = setup
    np.testing.assert_allclose(least_squares_weights(x, np.matmul(x.astype(float), w)), w, atol=1e-9)
    with pytest.raises(ChipInputError, match="at least 32"):
        least_squares_weights(x[:10], np.zeros((2, 10, 16)))


def test_weight_error_is_relative_to_gmax_and_skips_zero_targets() -> None:
    t = np.array([[[0.0, 40.0], [80.0, -40.0]]])
    g = t + np.array([[[9.0, 4.0], [-4.0, 4.0]]])
    out = weight_error(g, t, 80.0)
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(4 / 3 / 80)
    assert out["rms"] == pytest.approx(4 / 80)


def test_a_core_without_weights_gives_finite_errors(setup) -> None:
    x, w = setup
    w = w.copy()
    w[1] = 0.0  # no weights: ideal output zero, no scale to fit
    y = np.matmul(x.astype(float), w) + np.random.default_rng(2).normal(0, 1.0, (2, x.shape[0], w.shape[2]))
    e = mvm_errors(x, y, w)
    assert np.all(np.isfinite(e.total)) and np.all(np.isfinite(e.scale)) and e.scale[1] == 1.0
    s = e.summary()
    assert len(s["total_per_core"]) == 2 and all(np.isfinite(v) for v in s["total_per_core"])

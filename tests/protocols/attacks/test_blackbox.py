"""ART's Square and OnePixel on a predict-only platform: seeded from the run, so they reproduce."""

from __future__ import annotations

import numpy as np
import pytest

from protocols.attacks import TorchPlatform, asr, onepixel, square
from protocols.deploy.zoo import load_digits_split, load_zoo_model

pytest.importorskip("art")


def test_square_and_onepixel_reproduce_with_the_seed() -> None:
    d = load_digits_split()
    p = TorchPlatform("fp32", load_zoo_model("digits-cnn"))
    x, y = d.x_test[:12], d.y_test[:12]
    a = square(p.predict, x, y, 0.2, 20, 10, seed=5)
    assert np.array_equal(a, square(p.predict, x, y, 0.2, 20, 10, seed=5))
    assert np.abs(a - x).max() <= 0.2 + 1e-6
    b = onepixel(p.predict, x[:4], y[:4], 1, 3, 10, seed=5)
    assert np.array_equal(b, onepixel(p.predict, x[:4], y[:4], 1, 3, 10, seed=5))
    assert ((b != x[:4]).reshape(4, -1).sum(1) <= 1).all()
    assert asr(p.predict(x), p.predict(a), y).n_correct > 0


def test_image_attacks_refuse_flat_inputs() -> None:
    d = load_digits_split()
    p = TorchPlatform("fp32", load_zoo_model("digits-mlp"))
    with pytest.raises(ValueError, match="image inputs"):
        square(p.predict, d.x_test[:2].reshape(2, -1), d.y_test[:2], 0.1, 5, 10, seed=0)

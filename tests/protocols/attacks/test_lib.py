"""ASR (Algorithm 1), the envelope, and in-house PGD against ART's ProjectedGradientDescent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.attacks import TorchPlatform, asr, envelope, interleaved_predict, pgd
from protocols.deploy.zoo import load_digits_split, load_zoo_model


def test_asr_counts_only_clean_correct_samples() -> None:
    y = np.array([0, 1, 2, 3])
    r = asr(np.array([0, 1, 2, 0]), np.array([1, 1, 0, 3]), y)  # sample 3 wrong when clean: not counted
    assert (r.n, r.n_correct, r.n_success) == (4, 3, 2) and r.asr == pytest.approx(2 / 3)
    assert np.isnan(asr(np.array([1]), np.array([1]), np.array([0])).asr)


def test_envelope_is_the_diagonal() -> None:
    g = np.arange(9.0).reshape(3, 3)
    assert [r[3] for r in envelope(g, [1, 5, 10], [0.1, 0.2, 0.3])] == [0.0, 4.0, 8.0]
    rows = envelope(np.array([[0.0, 1.0], [2.0, 3.0]]), [1, 10], [0.1, 0.2])
    assert [r[3] for r in rows] == [0.0, 3.0]
    rows = envelope(np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]), [1, 3], [0.1, 0.2, 0.3])  # bilinear
    assert [r[3] for r in rows] == pytest.approx([0.0, 2.5, 5.0]) and rows[1][1] == pytest.approx(2.0)


def test_interleaved_predict_splits_back() -> None:
    x, xa = np.zeros((3, 2)), np.ones((3, 2))
    pc, pa = interleaved_predict(lambda a: a.sum(1, keepdims=True), x, xa)
    assert np.all(pc == 0) and np.all(pa == 2)


@pytest.mark.parametrize("eps, iters", [(0.1, 1), (0.05, 5), (0.15, 10)])
def test_pgd_equals_art(eps: float, iters: int) -> None:
    pytest.importorskip("art")
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import PyTorchClassifier

    torch.set_num_threads(1)
    d = load_digits_split()
    m = load_zoo_model("digits-mlp").eval()
    x, y = d.x_test[:60], d.y_test[:60]
    step = eps if iters == 1 else 2.5 * eps / iters
    ours = pgd(TorchPlatform("fp32", m).grad, x, y, eps, iters, step)
    clf = PyTorchClassifier(m, torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10, clip_values=(0.0, 1.0))
    art = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=step, max_iter=iters, num_random_init=0,
                                   batch_size=60, verbose=False).generate(x, y=y)
    assert np.abs(ours - art).max() <= 1e-6
    assert np.array_equal(clf.predict(ours).argmax(1), clf.predict(art).argmax(1))
    assert np.abs(ours - x).max() <= eps + 1e-6 and ours.min() >= 0 and ours.max() <= 1


def test_pgd_is_deterministic() -> None:
    d = load_digits_split()
    p = TorchPlatform("fp32", load_zoo_model("digits-mlp"))
    a = pgd(p.grad, d.x_test[:40], d.y_test[:40], 0.1, 5)
    assert np.array_equal(a, pgd(p.grad, d.x_test[:40], d.y_test[:40], 0.1, 5))

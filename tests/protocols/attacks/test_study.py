"""The chip model's four noise sources (recurrent / non-recurrent x weight / output) and the accuracy-drop bisection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protocols.attacks import ChipModel, study
from protocols.deploy.zoo import load_digits_split, load_zoo_model


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    d = load_digits_split()
    return load_zoo_model("digits-mlp"), d


@pytest.mark.parametrize("source, recurrent", [("weight_nonrecurrent", False), ("weight_recurrent", True),
                                               ("output_nonrecurrent", False), ("output_recurrent", True),
                                               ("output_recurrent_batch", True)])
def test_recurrence_of_each_source(setup, source: str, recurrent: bool) -> None:
    m, d = setup
    x = d.x_test[:50]
    cm = ChipModel(m, d.calibration(64), study.source_params(source, 0.3), seed=1)
    a, b = cm.predict(x), cm.predict(x)
    assert (not np.array_equal(a, b)) == recurrent  # recurrent: fresh per forward; else fixed within a repeat
    cm.new_repeat(1)
    assert np.array_equal(cm.predict(x), a)  # a repeat is reproducible from its seed
    cm.new_repeat(2)
    assert not np.array_equal(cm.predict(x), a)
    g = cm.grad(x, d.y_test[:50])
    assert g.shape == x.shape and np.isfinite(g).all() and np.abs(g).sum() > 0


def test_no_noise_is_the_quantised_model(setup) -> None:
    m, d = setup
    cm = ChipModel(m, d.calibration(64), study.source_params("weight_recurrent", 0.0))
    with torch.no_grad():
        ref = m(torch.from_numpy(d.x_test)).numpy()
    assert np.array_equal(cm.predict(d.x_test), cm.predict(d.x_test))
    assert (cm.predict(d.x_test).argmax(1) == ref.argmax(1)).mean() > 0.98


def test_match_drop_hits_the_target(setup) -> None:
    m, d = setup
    ref = float((m(torch.from_numpy(d.x_test)).argmax(1).numpy() == d.y_test).mean())
    sigma = study.match_drop(m, d.calibration(64), d.x_test, d.y_test, "output_recurrent", 0.05, ref, repeats=8, seed=4)
    acc = study.clean_accuracy(ChipModel(m, d.calibration(64), study.source_params("output_recurrent", sigma)),
                               d.x_test, d.y_test, 8, 4)
    assert abs(ref - acc.mean() - 0.05) < 0.01
    with pytest.raises(ValueError, match="noise source"):
        study.source_params("thermal", 0.1)

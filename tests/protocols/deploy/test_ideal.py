"""Deployment on an ideal backend (exact integer MVM): outputs equal the model to quantisation error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hil
from protocols.deploy import DeployConfig, deploy
from protocols.deploy.zoo import load_digits_split, load_zoo_model

from .ideal_chip import IdealChip

FAST = DeployConfig(programming="fast", proxy_inputs=0)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_300x300_layer_with_row_and_column_tiles() -> None:
    torch.manual_seed(1)
    m = nn.Sequential(nn.Linear(300, 300))
    chip = IdealChip(hil.Geometry(n_cores=4, n_rows=256, n_cols=256))
    x = torch.rand(200, 300)
    dm = deploy(m, chip, x.numpy(), FAST)
    assert dm.states[0].placement.row_tiles == 2 and dm.states[0].placement.col_tiles == 2
    ref = m(x).detach().double().numpy()
    y = dm.predict(x.numpy())
    # 8-bit inputs (step X_r / 127) and whole ADC counts: about 0.3 % of the output norm here
    assert _rel(y, ref) < 0.01
    assert _rel(y, dm.predict(x.numpy(), "ideal")) < 0.003


def test_conv_layer_and_cnn_reproduce_the_model() -> None:
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten())
    x = torch.rand(16, 3, 10, 10)
    dm = deploy(m, IdealChip(hil.Geometry(n_cores=2, n_rows=32, n_cols=32)), x.numpy(), FAST)
    assert _rel(dm.predict(x.numpy()), m(x).detach().double().numpy()) < 0.01
    d = load_digits_split()
    cnn = load_zoo_model("digits-cnn")
    dm = deploy(cnn, IdealChip(hil.Geometry(n_cores=8, n_rows=64, n_cols=64)), d.calibration(256), FAST)
    ref = cnn(torch.from_numpy(d.x_test)).detach().double().numpy()
    assert _rel(dm.predict(d.x_test), ref) < 0.02
    assert abs(dm.accuracy(d.x_test, d.y_test) - float((ref.argmax(1) == d.y_test).mean())) <= 0.004


def test_ldpu_path_equals_raw_path_within_one_lsb() -> None:
    d = load_digits_split()
    m = load_zoo_model("digits-mlp")
    chip = IdealChip(hil.Geometry(n_cores=4, n_rows=64, n_cols=64))
    dm = deploy(m, chip, d.calibration(256), DeployConfig(programming="fast", output="ldpu", proxy_inputs=0))
    st = dm.states[0]
    assert st.ldpu and st.relu and not dm.states[1].ldpu
    x = d.x_test.reshape(len(d.x_test), -1).astype(np.float64)
    via_ldpu = np.rint(dm._layer(st, x, "chip") * (127 / st.next_range))
    raw = dm._layer(st, x, "raw")
    via_raw = np.clip(np.rint(np.maximum(raw, 0) * (127 / st.next_range)), -127, 127)
    assert np.abs(via_ldpu - via_raw).max() <= 1
    assert np.mean(via_ldpu != via_raw) < 0.03  # FP16 registers and FMA rounding [JSSC22 LDPU]
    assert abs(dm.accuracy(d.x_test, d.y_test) - dm.accuracy(d.x_test, d.y_test, "raw")) <= 0.004


def test_proxy_gives_gradients_and_the_chip_gives_values() -> None:
    torch.manual_seed(3)
    m = nn.Sequential(nn.Linear(20, 8), nn.ReLU(), nn.Linear(8, 3))
    chip = IdealChip(hil.Geometry(n_cores=2, n_rows=32, n_cols=32))
    x = torch.rand(64, 20)
    dm = deploy(m, chip, x.numpy(), DeployConfig(programming="fast", proxy_inputs=256))
    w_hat = dm.states[0].proxy_w.numpy()
    assert _rel(w_hat, m[0].weight.detach().double().numpy().T) < 0.02
    xg = x.clone().requires_grad_(True)
    y = dm(xg)
    assert torch.equal(y.detach(), torch.from_numpy(dm.predict(x.numpy())).float())
    y.sum().backward()
    xr = x.clone().requires_grad_(True)
    m(xr).sum().backward()
    assert xg.grad is not None and _rel(xg.grad.numpy(), xr.grad.numpy()) < 0.05


def test_fast_path_refused_without_the_capability() -> None:
    fake = hil.FakeChip(hil.Geometry(n_cores=2, n_rows=16, n_cols=16), noise=0.0)
    with pytest.raises(hil.ChipInputError, match=r"program_weights.*program-verify"):
        deploy(nn.Sequential(nn.Linear(4, 2)), fake, np.ones((4, 4)), FAST)
    assert fake.now() == 0.0

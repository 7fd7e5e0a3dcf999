"""Conversion of torch modules to layers, placement on cores, the zoo files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import hil
from protocols.deploy import convert_model, layers_from_matrices, place_layers
from protocols.deploy.layers import AnalogLayer, run_reference
from protocols.deploy.zoo import file_sha256, load_digits_split, load_zoo_model, manifest, read_weight_file, zoo_dir


def test_mlp_layers_in_order_with_transposed_weights() -> None:
    m = load_zoo_model("digits-mlp")
    conv = convert_model(m, (1, 8, 8))
    assert conv.method == "fx"
    assert [la.name for la in conv.layers] == ["flatten", "fc1", "relu", "fc2"]
    assert np.array_equal(conv.analog[0].weight, m.fc1.weight.detach().double().numpy().T)


def test_cnn_with_folded_batchnorm_matches_torch() -> None:
    m = load_zoo_model("digits-cnn")
    conv = convert_model(m, (1, 8, 8))
    assert conv.analog[0].folded == ["bn1"] and conv.analog[0].shape == (9, 8) and conv.analog[1].shape == (72, 16)
    x = load_digits_split().x_test[:64]
    ref = m(torch.from_numpy(x)).detach().double().numpy()
    got = run_reference(conv, x)[0]
    assert np.abs(got - ref).max() < 1e-4


def test_strided_padded_conv_im2col_matches_torch() -> None:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 5, (3, 2), stride=(2, 1), padding=(1, 2)), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten())
    x = torch.randn(4, 3, 9, 7)
    got = run_reference(convert_model(m, (3, 9, 7)), x.numpy())[0]
    assert np.abs(got - m(x).detach().double().numpy()).max() < 1e-5


@pytest.mark.parametrize("bad, word", [
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), "groups=2"),
    (nn.Sequential(nn.Linear(4, 4), nn.Sigmoid()), "Sigmoid"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, dilation=2)), "dilation"),
])
def test_unsupported_layers_are_refused_by_name(bad: nn.Module, word: str) -> None:
    with pytest.raises(hil.ChipInputError, match=word):
        convert_model(bad)


def test_branches_are_refused() -> None:
    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) + x

    with pytest.raises(hil.ChipInputError, match="chain"):
        convert_model(Residual())


def test_untraceable_model_falls_back_to_module_order() -> None:
    class Dynamic(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 1e9:  # data-dependent control flow: fx cannot trace it
                return x
            return self.fc2(self.act(self.fc1(x)))

    m = Dynamic()
    conv = convert_model(m, (6,))
    assert conv.method == "modules"
    x = torch.randn(7, 6)
    assert np.abs(run_reference(conv, x.numpy())[0] - m(x).detach().numpy()).max() < 1e-5


def test_bare_matrices_need_their_layout() -> None:
    w = np.arange(12.0).reshape(3, 4)  # torch layout: 3 outputs, 4 inputs
    with pytest.raises(hil.ChipInputError, match="layout"):
        layers_from_matrices([w], None, layout=None)
    conv = layers_from_matrices([w], None, layout="torch")
    assert isinstance(conv.layers[1], AnalogLayer) and conv.layers[1].shape == (4, 3)
    assert layers_from_matrices([w], None, layout="in_out").analog[0].shape == (3, 4)


def test_too_few_cores_refused_with_count_and_fix() -> None:
    conv = convert_model(nn.Sequential(nn.Linear(300, 300)), (300,))
    geo = hil.Geometry(n_cores=8, n_rows=256, n_cols=256)
    places = place_layers(conv, geo)
    assert places[0].row_tiles == 2 and places[0].col_tiles == 2 and places[0].cores.tolist() == [0, 1, 2, 3]
    with pytest.raises(hil.ChipInputError, match=r"needs 4 cores.*only 3 selected.*select at least 4"):
        place_layers(conv, geo, [5, 6, 7])


def test_zoo_files_match_manifest_and_hold_no_pickle() -> None:
    for name, entry in manifest().items():
        path = zoo_dir() / entry["file"]
        assert file_sha256(path) == entry["sha256"], name
        arrays = read_weight_file(path, entry["sha256"])
        assert all(a.dtype != object for a in arrays.values())
    with pytest.raises(hil.ConfigError, match="sha256"):
        read_weight_file(zoo_dir() / "digits-mlp.npz", "0" * 64)


def test_zoo_models_reach_their_recorded_accuracy() -> None:
    d = load_digits_split()
    for name, entry in manifest().items():
        m = load_zoo_model(name)
        with torch.no_grad():
            acc = float((m(torch.from_numpy(d.x_test)).argmax(1).numpy() == d.y_test).mean())
        assert abs(acc - entry["test_accuracy"]) < 1e-9 and acc > 0.95

"""kernel-approx: feature maps, the HERMES reference, the protocol on fake and emulated chips (seeded, seconds)."""

from __future__ import annotations

import numpy as np
import pytest

import hil
from hil.errors import ChipInputError, ConfigError
from hil.testing import check_protocol
from protocols import datafiles
from protocols.kernels import KernelApproxConfig, evaluate, reference, summarise
from protocols.kernels.datasets import load
from protocols.kernels.features import approx_error, exact_kernel, feature_map, n_features, ridge_accuracy
from protocols.kernels.protocol import plot_curves
from protocols.kernels.protocol import plots as kernel_plots


def test_n_features_matches_the_paper():
    assert [n_features(10, k) for k in range(1, 6)] == [19, 38, 77, 156, 315]
    assert n_features(30, 5) == 955


@pytest.mark.parametrize("approximation", ["rff", "orf", "sorf"])
@pytest.mark.parametrize("kernel", ["rbf", "arccos0"])
def test_floating_point_error_falls_as_inverse_sqrt_s(approximation, kernel):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 10))
    k_exact = exact_kernel(kernel, x)
    s_list = [n_features(10, k) for k in (1, 3, 5)]
    errs = [np.mean([approx_error(k_exact, (fm := feature_map(approximation, kernel, s, 10, np.random.default_rng(seed)))
                                  .features(fm.project(x))) for seed in range(3)]) for s in s_list]
    assert errs[0] > errs[1] > errs[2]
    assert -0.75 < reference.fp_slope(np.array(s_list), np.array(errs)) < -0.3


def test_orf_blocks_are_orthogonal_and_sorf_is_structured():
    fm = feature_map("orf", "arccos0", 20, 10, np.random.default_rng(1))
    g = fm.w.T[:10]
    off = g @ g.T - np.diag(np.diag(g @ g.T))
    assert np.abs(off).max() < 1e-9
    sorf = feature_map("sorf", "rbf", 37, 13, np.random.default_rng(2))
    assert sorf.w.shape == (13, 37)


def test_exact_kernels_and_ridge():
    x = np.random.default_rng(0).standard_normal((50, 5))
    for kernel in ("rbf", "arccos0"):
        k = exact_kernel(kernel, x)
        np.testing.assert_allclose(np.diag(k), 1.0)
        assert np.all(k >= -1e-12) and np.allclose(k, k.T)
    y = (x[:, 0] > 0).astype(float)
    assert ridge_accuracy(x, y, x, y) > 0.9


def test_hermes_reference_bands():
    ref = reference.load()
    assert set(reference.band_datasets(ref)) == {"cod-rna", "ijcnn1", "letter", "magic"}
    c = reference.curves("magic", "orf", "rbf", ref)
    assert c["hw_err"].shape == (5,) and np.all(c["hw_err"] > c["fp_err"])
    lo, hi = reference.floor_band("orf", "rbf", ref=ref)
    assert 0.01 < lo < 0.03 < 0.08 < hi < 0.2
    # the HERMES data pass their own checks: slope, rising ratio and accuracy (magic, ORF)
    rows = [{"approximation": "orf", "kernel": "rbf", "k": k, "s": n_features(10, k), "fp_err": c["fp_err"][k - 1],
             "chip_err": c["hw_err"][k - 1], "fp_acc": c["fp_acc"][k - 1], "chip_acc": c["hw_acc"][k - 1]} for k in range(1, 6)]
    assert reference.compare(rows, ref)["orf/rbf"]["ok"]


def test_data_dir_lookup(tmp_path, monkeypatch):
    assert (datafiles.data_dir() / "LICENSES.md").is_file()
    assert datafiles.data_path("hermes", "ibm_hermes_kernel_approx_results.json").is_file()
    (tmp_path / "LICENSES.md").write_text("x")
    monkeypatch.setenv("HIL_DATA", str(tmp_path))
    assert datafiles.data_dir() == tmp_path
    with pytest.raises(ConfigError, match="is not in"):
        datafiles.data_path("nope.json")


def test_datasets_are_binary_and_offline():
    for name, d in (("synthetic", 13), ("breast_cancer", 30), ("wine", 13), ("digits", 64)):
        b = load(name, d=d, n=300)
        assert b.d == d and set(np.unique(b.y_train)) == {0.0, 1.0}


SMALL = {"approximations": ["orf"], "kernels": ["rbf"], "ks": [1, 2], "seeds": [0], "n": 100, "d": 3,
         "calibration_samples": 32, "test_subset": 30, "deploy": {"proxy_inputs": 0, "gdc_inputs": 8, "affine_inputs": 64}}


def test_protocol_records_and_replays_on_a_fake_chip(tmp_path):
    res = check_protocol("kernel-approx", SMALL, chip="fake:cores=2,rows=16,cols=16", out=tmp_path)
    means = res.summary["means"]
    assert [m["s"] for m in means] == [5, 10]
    assert "orf/rbf" in res.summary["hermes"]
    figs = kernel_plots(res.path, tmp_path / "figs")
    assert [p.name for p in figs] == ["kernel-approx-error.png"] and figs[0].stat().st_size > 10_000


def test_fast_path_refused_in_a_recorded_run(tmp_path):
    with pytest.raises((ConfigError, ChipInputError), match="not a chip operation"):
        hil.run_protocol("kernel-approx", chip="fake:cores=2,rows=16,cols=16",
                         config={**SMALL, "deploy": {"programming": "fast"}}, out=tmp_path)


def test_emulator_band_checks_and_plot(tmp_path):
    """On the emulator: FP slope, accuracy within 2 points, projection on ceil(s/256) cores; the figure."""
    from emulator import EmulatedChip

    chip = EmulatedChip("hermes", seed=0, geometry=hil.Geometry(n_cores=2, n_rows=256, n_cols=256))
    b = load("synthetic", d=10, n=2000)
    cfg = KernelApproxConfig(test_subset=300)
    rows = [evaluate(chip, b.x_train, b.y_train, b.x_test, b.y_test, "orf", "rbf", k, 0, cfg) for k in (1, 5)]
    assert [r["cores"] for r in rows] == [1, 2]
    means = summarise(rows)
    checks = reference.compare(means)["orf/rbf"]
    assert checks["fp_slope"]["ok"], checks
    assert checks["accuracy_gap"]["ok"], checks
    assert 0.0 <= checks["floor_in_band"]["value"] < 0.2
    assert all(0.02 < r["mvm_error"] < 0.5 for r in rows)
    p = plot_curves(means, tmp_path / "k.png")
    assert p.stat().st_size > 10_000

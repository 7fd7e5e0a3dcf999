"""The ``infer`` protocol: bad input exits 2 before any pulse; a recorded run replays bit-exactly in another process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import hil
from hil.runs import RunReader
from protocols.deploy import infer

REPO = Path(__file__).resolve().parents[3]
CHIP = "emulator:hermes,cores=8,rows=64,cols=64"
QUICK = {"drift_times_s": [86400.0], "test_samples": 200, "error_samples": 32,
         "program_verify": {"max_iterations": 12}}


def _hil(*args: str, threads: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return subprocess.run([sys.executable, "-m", "hil.cli", *args, "--protocol-module", "protocols.deploy.infer"],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=240)


@pytest.mark.parametrize("sets, word", [
    ({"sha256": "0" * 64}, "sha256"),
    ({"cores": [0, 1, 2]}, "needs 4 cores"),
    ({"programming": "fast"}, "fast path"),
    ({"model": "digits-cnn", "architecture": "digits-mlp"}, "architecture"),
])
def test_bad_input_is_refused_before_the_run(tmp_path: Path, sets: dict, word: str) -> None:
    with pytest.raises((hil.ConfigError, hil.ChipInputError), match=word):
        hil.run_protocol("infer", chip=CHIP, config={**QUICK, **sets}, out=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.h5"))


def test_wrong_data_shape_and_unsupported_layer_exit_2(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", weight0=np.ones((10, 63)), bias0=np.zeros(10))  # 63 inputs, digits have 64
    r = _hil("run", "infer", "--chip", CHIP, "--set", f"model={tmp_path / 'm.npz'}", "--set", "architecture=mlp",
             "--set", "layout=torch", "--out", str(tmp_path))
    assert r.returncode == 2 and "64" in r.stderr and not list(tmp_path.glob("*.h5"))
    r = _hil("run", "infer", "--chip", CHIP, "--set", f"model={tmp_path / 'm.npz'}", "--set", "architecture=mlp",
             "--out", str(tmp_path))
    assert r.returncode == 2 and "layout" in r.stderr


def test_infer_replays_exactly_in_a_subprocess_with_other_thread_counts(tmp_path: Path) -> None:
    res = hil.run_protocol("infer", chip=CHIP, config=QUICK, seed=4, out=tmp_path, progress=False)
    res.raise_for_status()
    with RunReader(res.path) as rec:
        summary = rec.summary
        acc = rec.stream("accuracy")
        assert {"layers", "pto", "accuracy", "layer_error", "pv_iterations"} <= set(rec.streams())
        assert set(rec.input_info()) >= {"model.fc1.weight", "data.x_test"}
    assert summary["cores_used"] == 4
    assert min(a["no_gdc"] for a in summary["accuracy"]) > summary["fp_accuracy"] - 0.05
    for threads in (1, 2):
        out = tmp_path / f"replay{threads}"
        r = _hil("replay", str(res.path), "--out", str(out), threads=threads)
        assert r.returncode == 0, r.stderr
        (path,) = out.glob("*.h5")
        with RunReader(path) as rep:
            for name in ("accuracy", "layer_error", "pto"):
                a, b = RunReader(res.path).stream(name), rep.stream(name)
                for col in a:
                    assert np.array_equal(a[col], b[col], equal_nan=a[col].dtype.kind == "f"), (threads, name, col)
    assert np.all(np.isfinite(acc["accuracy"]))


def test_plots(tmp_path: Path) -> None:
    res = hil.run_protocol("infer", chip="emulator:hermes,cores=4,rows=64,cols=64",
                           config={**QUICK, "model": "digits-mlp", "test_samples": 60}, out=tmp_path, progress=False)
    res.raise_for_status()
    paths = infer.plots(res.path, tmp_path / "fig")
    assert [p.name for p in paths] == ["infer-accuracy-vs-time.png", "infer-layer-error.png"]
    assert all(p.stat().st_size > 1000 for p in paths)

"""data/: every file has its licence, the shipped runs replay and report, and a wheel carries data/.

The wheel test builds from a copy of the tree; if ``pyproject.toml`` has no ``[tool.setuptools.data-files]``
yet, the copy gets the proposed table (``DATA_FILES`` below), so the proposal itself is what is tested.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SHIPPED = [
    "LICENSES.md", "README.md", "hermes/ibm_hermes_kernel_approx_results.json", "runs/program-verify.h5", "runs/drift.h5",
    "runs/make_runs.py", "weights/normal-64x64.npy", "weights/uniform-128x64.npy", "weights/digits-mlp-fc1.npy",
    "zoo/digits-mlp.npz", "zoo/digits-cnn.npz", "zoo/manifest.json", "zoo/train.py",
]
DATA_FILES = """
[tool.setuptools.data-files]
"data" = ["data/LICENSES.md", "data/README.md"]
"data/hermes" = ["data/hermes/*.json"]
"data/runs" = ["data/runs/*.h5", "data/runs/make_runs.py"]
"data/weights" = ["data/weights/*.npy"]
"data/zoo" = ["data/zoo/*.npz", "data/zoo/manifest.json", "data/zoo/train.py"]
"""


def test_every_shipped_file_is_listed_with_its_licence():
    text = (DATA / "LICENSES.md").read_text(encoding="utf-8")
    on_disk = sorted(str(p.relative_to(DATA)) for p in DATA.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                     and not p.name.startswith("."))
    assert on_disk == sorted(SHIPPED), "data/ holds files not in SHIPPED (and data/LICENSES.md)"
    for f in SHIPPED:
        assert Path(f).name in text, f"{f} not listed in data/LICENSES.md"
    assert "Copyright (c) 2024 International Business Machines" in text and "MIT License" in text
    meta = json.loads((DATA / "hermes" / "ibm_hermes_kernel_approx_results.json").read_text())["_meta"]
    assert meta["licence"] == "MIT"


def test_shipped_size_is_a_few_mb():
    assert sum((DATA / f).stat().st_size for f in SHIPPED) < 6 * 2**20


def _hil(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hil.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("name", ["program-verify", "drift"])
def test_shipped_runs_replay_and_report(name, tmp_path):
    run = DATA / "runs" / f"{name}.h5"
    r = _hil("replay", str(run), "--out", str(tmp_path / "replay"), "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "replay matched all" in r.stderr + r.stdout
    r = _hil("report", str(run), "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert list((tmp_path / "report").glob("*.png"))
    assert not list((DATA / "runs").glob("*.jsonl")), "a command wrote into data/runs"


def _build_wheel(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "hil-runs", "*.pyc")
    for name in ("hil", "emulator", "drivers", "protocols", "data"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    pp = src / "pyproject.toml"
    if "[tool.setuptools.data-files]" not in pp.read_text():
        pp.write_text(pp.read_text() + DATA_FILES)
    env = {**os.environ, "PIP_NO_INDEX": "1"}
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w")],
                       cwd=src, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return next((tmp_path / "w").glob("hil-*.whl"))


def test_wheel_carries_data(tmp_path):
    """``pip wheel . --no-deps`` of the tree (with the proposed data-files table if missing) holds every data file."""
    wheel = _build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    data_root = next(n for n in names if n.endswith(".data/data/data/LICENSES.md")).removesuffix("LICENSES.md")
    missing = [f for f in SHIPPED if data_root + f not in names]
    assert not missing, missing
    assert any(n.startswith("protocols/datafiles.py") for n in names)
    assert "emulator/adc_kernel.c" in names  # the native ADC chain's source, built on the user's machine


def test_plain_install_finds_data(tmp_path):
    """``pip install`` of the wheel into a fresh venv: the code finds the installed data/ (not the repository's)."""
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    code = ("import protocols.datafiles as d, protocols.kernels.reference as r, emulator.native as nat; "
            "assert nat.SOURCE.is_file(), nat.SOURCE; "
            "print(d.__file__); print(d.data_dir()); print(len(r.load()['datasets']))")
    env = {k: v for k, v in os.environ.items() if k not in ("HIL_DATA", "PYTHONPATH")}
    r = subprocess.run([str(py), "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    mod, found, n = r.stdout.split()
    assert str(venv) in mod and Path(found) == venv / "data" and n == "6"

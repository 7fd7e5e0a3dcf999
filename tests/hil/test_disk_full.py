"""A full disk fails the run cleanly: a consistent file with what fitted, status and reason readable,
exit code 1, and `hil resume` finishes the run once there is room again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import h5py
import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

from hil import PulseKind, register_protocol
from hil.runner import run_protocol
from hil.runs import RunReader
from hil.runs import writer as writer_mod

REPO = Path(__file__).resolve().parents[2]
FAKE = "fake:cores=2,rows=16,cols=16"


class SlowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    steps: int = 30


@register_protocol("test-slow-steps", SlowConfig, description="chip calls with wall time between them (tests)")
def slow_steps(chip, config: SlowConfig, run) -> dict:
    for i in range(config.steps):
        chip.apply_pulses([0, 1], [i % 16, 3], [2, i % 16], [0, 1], kind=PulseKind.PARTIAL, amplitude_ua=250.0, width_ns=125.0)
        run.log("steps", step=i, counts=chip.read_devices([0, 1], [i % 16, 3], [2, i % 16], [0, 1])[None])
        time.sleep(0.01)  # wall time, so that the writer flushes during the run
    return {"steps": config.steps}


def test_an_injected_full_disk_fails_cleanly_and_the_run_resumes(tmp_path: Path, monkeypatch, cli) -> None:
    calls = {"n": 0}
    real = writer_mod.free_bytes

    def filling(folder: Path) -> int:
        calls["n"] += 1
        return real(folder) if calls["n"] <= 3 else 10_000  # full from the fourth write on

    monkeypatch.setattr(writer_mod, "free_bytes", filling)
    res = run_protocol("test-slow-steps", chip=FAKE, seed=2, out=tmp_path / "runs", progress=False, flush_interval_s=0.01)
    assert res.status == "fail" and res.reason == "run_file" and res.exit_code == 1, res
    assert "disk holding" in res.message and "is full" in res.message
    with h5py.File(res.path, "r") as f:  # consistent for plain HDF5 readers
        assert f.attrs["status"] == "fail"
    with RunReader(res.path) as r:
        assert r.stop is not None and r.stop.exit_reason == "run_file"
        n_kept = len(r.journal)
    assert not list((tmp_path / "runs").glob(".*.reserve"))
    monkeypatch.setattr(writer_mod, "free_bytes", real)
    out = cli("resume", str(res.path), "--json")
    assert out.code == 0, out.err
    ref = run_protocol("test-slow-steps", chip=FAKE, seed=2, out=tmp_path / "ref", progress=False)
    with RunReader(res.path) as resumed, RunReader(ref.path) as full:
        assert resumed.stop.status == "success" and len(resumed.journal) == len(full.journal) > n_kept > 0
        np.testing.assert_array_equal(resumed.stream("steps")["counts"], full.stream("steps")["counts"])


def test_no_room_for_the_reserve_refuses_to_start(tmp_path: Path, monkeypatch) -> None:
    from hil.errors import RunFileError

    def no_room(*args, **kwargs):
        raise OSError(28, "No space left on device")

    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".reserve"):
            no_room()
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    with pytest.raises(RunFileError, match="not enough free space"):
        run_protocol("test-steps", chip=FAKE, out=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.h5"))


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 3 MB tmpfs (needs root, as CI and the developers' machines have; skipped elsewhere)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root and mount(8) to make a small tmpfs (util-linux: apt-get install mount)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_gives_a_readable_failed_run_then_resumes(small_tmpfs: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    run = [sys.executable, "-m", "hil.cli", "run", "drift", "--chip", "emulator:hermes,cores=2,rows=64,cols=64",
           "--out", str(small_tmpfs / "runs"), "--no-progress", "--json"]
    res = subprocess.run(run, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 1, res.stderr  # a failed run, not a crash (was: SIGSEGV/SIGBUS)
    files = list((small_tmpfs / "runs").glob("*.h5"))
    assert len(files) == 1
    for argv in (["show", str(files[0])], ["show", "--verify", str(files[0])], ["ls", str(small_tmpfs / "runs")]):
        out = subprocess.run([sys.executable, "-m", "hil.cli", *argv], capture_output=True, text=True, timeout=60, env=env)
        assert out.returncode == 0, out.stderr
    assert "fail (run_file)" in subprocess.run([sys.executable, "-m", "hil.cli", "show", str(files[0])], capture_output=True,
                                               text=True, timeout=60, env=env).stdout
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    moved = roomy / files[0].name
    shutil.copy(files[0], moved)
    out = subprocess.run([sys.executable, "-m", "hil.cli", "resume", str(moved), "--json"], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    with RunReader(moved) as r:
        assert r.stop.status == "success" and r.n_rows("drift_fit") == 1

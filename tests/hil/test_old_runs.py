"""Run files written before the architecture change (layout v1, by hil at commit c88e2d4) still open,
replay and resume. The files are in tests/hil/fixtures/layout-v1 (made by make_layout_v1.py there)."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import h5py
import numpy as np
import pytest

from hil.runner import run_protocol
from hil.runs import RunReader, RunStart, RunStop

OLD = Path(__file__).parent / "fixtures" / "layout-v1"
FAKE = "fake:cores=2,rows=16,cols=16"


def copy(name: str, tmp_path: Path) -> Path:
    dst = tmp_path / name
    shutil.copy(OLD / name, dst)
    return dst


@pytest.mark.parametrize("name", sorted(p.name for p in OLD.glob("*.h5")))
def test_old_run_files_open_and_show(name: str, tmp_path: Path, cli) -> None:
    path = copy(name, tmp_path)
    with RunReader(path) as r:
        start = r.start
        assert start.protocol == "test-steps" and start.seed == 3 and start.config["steps"] in (6, 10)
        assert start.geometry == {"n_cores": 2, "n_rows": 16, "n_cols": 16, "n_devices": 4}
        assert len(r.journal) in (25, 30) and r.n_rows("steps") in (5, 6)
        if r.status != "running":
            stop = r.stop
            assert isinstance(stop, RunStop) and stop.status in ("success", "abort") and stop.n_calls == len(r.journal)
    res = cli("show", str(path), "--verify", "--json")
    assert res.code == 0, res.err
    assert res.json()["protocol"] == "test-steps"


@pytest.mark.parametrize("name", ["v1-emulator-success.h5", "v1-fake-success.h5"])
def test_old_runs_replay(name: str, tmp_path: Path, cli) -> None:
    path = copy(name, tmp_path)
    res = cli("replay", str(path), "--out", str(tmp_path / "replays"), "--json")
    assert res.code == 0, res.err
    out = res.json()
    with RunReader(path) as old, RunReader(out["path"]) as new:
        assert new.start.replay_of == old.run_id
        assert len(new.journal) == len(old.journal)
        for a, b in zip(old.journal, new.journal, strict=True):
            assert a.op == b.op and a.t_chip == b.t_chip
        np.testing.assert_array_equal(old.stream("steps")["counts"], new.stream("steps")["counts"])


def _uninterrupted(tmp_path: Path) -> Path:
    res = run_protocol("test-steps", chip=FAKE, config={"steps": 10}, seed=3, out=tmp_path / "ref", progress=False)
    assert res.status == "success"
    return res.path


@pytest.mark.parametrize("name", ["v1-fake-abort.h5", "v1-fake-killed.h5"])
def test_old_interrupted_runs_resume_to_the_uninterrupted_result(name: str, tmp_path: Path, cli) -> None:
    path = copy(name, tmp_path)
    if name == "v1-fake-killed.h5":
        # The writer of this file was SIGKILLed on the machine that made the fixture; make it this
        # machine's dead process, as after a crash here.
        with h5py.File(path, "r+") as f:
            f.attrs["host"] = socket.gethostname()
            f.attrs["pid"] = 0
    with RunReader(path) as r:
        assert r.effective_status in ("abort", "incomplete")
    res = cli("resume", str(path), "--json")
    assert res.code == 0, res.err
    ref = _uninterrupted(tmp_path)
    with RunReader(path) as resumed, RunReader(ref) as full:
        assert resumed.stop is not None and resumed.stop.status == "success"
        assert resumed.start.resume_count == 1 and len(resumed.start.resumed_at) == 1
        assert resumed.summary == full.summary
        assert len(resumed.journal) == len(full.journal) == 50
        for col in ("step", "counts", "y", "t_chip"):
            np.testing.assert_array_equal(resumed.stream("steps")[col], full.stream("steps")[col])


def test_start_document_of_an_old_file_is_typed() -> None:
    with RunReader(OLD / "v1-fake-success.h5") as r:
        start = r.start
    assert isinstance(start, RunStart)
    assert start.chip_spec == FAKE and start.chip_seed == 3 and start.resume_count == 0 and start.preceded_by == []
    assert start.versions["hil"] == "0.1.0"

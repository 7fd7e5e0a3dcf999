"""Run files open in plain h5py or xarray in the same process do not make hil call them damaged."""

from __future__ import annotations

from pathlib import Path

import h5py
import pytest

from hil.runner import run_protocol
from hil.runs import RunIndex, RunReader
from hil.runs.reader import LOCKING_MODES
from tests.hil.conftest import SMALL_CHIP


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=2"], out=tmp_path_factory.mktemp("runs"), progress=False)
    assert res.status == "success"
    return res.path


@pytest.mark.parametrize("mode", LOCKING_MODES, ids=str)
def test_h5py_then_runreader_in_one_process(run_file: Path, mode: object) -> None:
    with h5py.File(run_file, "r", locking=mode):
        with RunReader(run_file) as r:
            assert r.status == "success" and r.stream("steps")["step"].tolist() == [0, 1]
            assert len(r.journal) > 0 and r.verify()["datasets"] > 0
        assert RunIndex(run_file.parent).rebuild() == 1  # the index opens it too


def test_runreader_then_plain_h5py_and_xarray(run_file: Path) -> None:
    with RunReader(run_file) as r:
        with h5py.File(run_file, "r") as f:
            assert f.attrs["status"] == "success"
        xr = pytest.importorskip("xarray")
        pytest.importorskip("h5netcdf")
        with xr.open_dataset(run_file, group="netcdf/steps", engine="h5netcdf") as ds:
            assert ds.sizes["row"] == 2
        assert r.n_rows("steps") == 2


def test_a_busy_reader_of_another_locking_mode_is_not_damage(run_file: Path) -> None:
    handles = [h5py.File(run_file, "r", locking=m) for m in (True,)]
    try:
        with RunReader(run_file) as r:
            assert r.effective_status == "success"
    finally:
        for h in handles:
            h.close()

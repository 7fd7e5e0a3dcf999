"""``RunReader.stream(name, start=, stop=, columns=)``: bounded row slices and column subsets, checked
arguments, and the untrusted-file bounds on slices (stream columns and journal tables alike)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

import tests.hil.helper_protocols  # noqa: F401 - registers test-steps
from hil.errors import RunFileError
from hil.runner import run_protocol
from hil.runs import RunReader
from hil.runs.hdf5 import read_cost, read_rows
from tests.hil.conftest import SMALL_CHIP
from tests.hil.crafted import genuine

STEPS = 12


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=[f"steps={STEPS}"], seed=7, out=tmp_path_factory.mktemp("slices"))
    assert res.status == "success"
    return res.path


@pytest.mark.parametrize(("start", "stop"), [(0, None), (0, STEPS), (3, 7), (5, 5), (11, None), (4, 10**9), (STEPS, None),
                                             (10**9, None), (np.int64(2), np.int32(9))])
def test_a_slice_is_the_rows_of_the_whole_stream(run_file: Path, start: int, stop: int | None) -> None:
    with RunReader(run_file) as r:
        whole = r.stream("steps", meta=True)
        part = r.stream("steps", meta=True, start=start, stop=stop)
    assert list(part) == list(whole) == ["step", "counts", "y", "t_chip", "_t_wall", "_call"]
    for name, values in whole.items():
        np.testing.assert_array_equal(part[name], values[start:stop], err_msg=name)


def test_a_column_subset_reads_those_columns_in_the_order_asked(run_file: Path) -> None:
    with RunReader(run_file) as r:
        whole = r.stream("steps", meta=True)
        part = r.stream("steps", start=2, stop=6, columns=["y", "_call", "step"])
        assert list(part) == ["y", "_call", "step"]
        for name in part:
            np.testing.assert_array_equal(part[name], whole[name][2:6])
        np.testing.assert_array_equal(r.column("steps", "t_chip", start=9), whole["t_chip"][9:])
        np.testing.assert_array_equal(r.column("steps", "_t_wall"), whole["_t_wall"])
        assert r.stream("steps", columns=[]) == {}


@pytest.mark.parametrize(("kwargs", "error", "words"), [
    ({"start": -1}, ValueError, "start=-1 is negative"),
    ({"start": 5, "stop": 4}, ValueError, "stop=4 is below start=5"),
    ({"start": 1.5}, TypeError, "start=1.5 must be a whole number"),
    ({"start": True}, TypeError, "start=True must be a whole number"),
    ({"stop": "3"}, TypeError, "stop='3' must be a whole number"),
    ({"columns": "step"}, TypeError, "must be a list of column names"),
    ({"columns": ["step", 3]}, TypeError, "column names are strings"),
    ({"columns": ["step", "step"]}, ValueError, "names a column twice"),
    ({"columns": ["nope"]}, ValueError, "has no column 'nope'; columns: step, counts, y, t_chip, _t_wall, _call"),
])
def test_bad_slice_arguments_are_refused_clearly(run_file: Path, kwargs: dict, error: type, words: str) -> None:
    with RunReader(run_file) as r, pytest.raises(error) as info:
        r.stream("steps", **kwargs)
    assert words in str(info.value)


def test_slices_of_a_column_that_promises_more_than_the_file_holds(tmp_path: Path) -> None:
    """A column declared 10**9 rows long with nothing stored: the stream has the other columns' rows
    and a slice reads only those; a read that would cost more than the stored bytes allow is refused."""
    path = genuine(tmp_path / "huge.h5")
    with h5py.File(path, "r+") as f:
        del f["streams/steps/step"]
        f.create_dataset("streams/steps/step", shape=(10**9,), maxshape=(None,), dtype="<i8", chunks=(1 << 16,))
        ds = f["streams/steps/step"]
        assert read_cost(ds, 0, 1) == (1 << 16) * 8 and read_cost(ds, (1 << 16) - 1, (1 << 16) + 1) == 2 * (1 << 19)
        assert read_cost(ds, 3, 3) == 0
    with RunReader(path) as r:
        assert r.n_rows("steps") == 1
        assert r.stream("steps", start=0, stop=10**9, columns=["step"])["step"].shape == (1,)
        ds = r._f["streams/steps/step"]
        with pytest.raises(RunFileError, match=r"declares .* bytes for rows 0:100000000 but the file stores 0"):
            read_rows(ds, path, "step", 0, 10**8)


def test_a_journal_call_claiming_more_than_the_file_holds_is_refused_not_read(tmp_path: Path) -> None:
    """Unallocated journal tables of 2e9 elements and an MVM call row that claims 10**7 x 8 of them:
    the call is refused with a RunFileError instead of reading 320 MB of fill values."""
    path = genuine(tmp_path / "journal.h5")
    with h5py.File(path, "r+") as f:
        for name, dtype in (("x", "i1"), ("y", "<i4")):
            del f[f"journal/mvm/{name}"]
            f.create_dataset(f"journal/mvm/{name}", shape=(2 * 10**9,), maxshape=(None,), dtype=dtype, chunks=(1 << 16,))
        call = f["journal/mvm/call"][:]
        call["batch"][0], call["x_shared"][0] = 10**7, 1
        f["journal/mvm/call"][:] = call
    with RunReader(path) as r:
        j = r.journal
        i = [j.op(k) for k in range(len(j))].index("mvm")
        assert j.largest_mvm_values() == 10**7 * 8
        with pytest.raises(RunFileError, match=r"/journal/mvm/.* of call .* declares .* but the file stores 0"):
            j.call(i)
        assert j.call(0).op == "apply_pulses"  # the other calls still read

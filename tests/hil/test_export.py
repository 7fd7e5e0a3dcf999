"""Data out: declared units and dims, RunReader.to_xarray / to_dataframe, `hil export`, and the
netCDF view that xarray opens without phony dims."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil.errors import RunLogError
from hil.protocol import MemoryRunLog
from hil.runs import RunReader, RunStart, RunWriter
from hil.runs.export import export_run

xr = pytest.importorskip("xarray")
pd = pytest.importorskip("pandas")
pytest.importorskip("h5netcdf")

FIXTURES = Path(__file__).parent / "fixtures" / "layout-v1"


def _write(path: Path) -> Path:
    w = RunWriter(path, RunStart(run_id=path.stem, protocol="unit"))
    w.declare("sweep", units={"amp": "uA", "counts": "ADC counts"}, long_names={"counts": "verify read"},
              dims={"counts": ("core", "col")}, x="amp")
    for i in range(6):
        w.log("sweep", amp=100.0 + 10 * i, counts=np.arange(6, dtype=np.int32).reshape(1, 2, 3) + i,
              label=f"stage-{i % 2}", ok=bool(i % 2), gain=np.float32(0.5 * i))
    w.declare("maps", units={"g": "uS"}, dims={"g": ("row", "col")})  # a dim called row: the row axis is _row
    w.log("maps", g=np.random.default_rng(0).random((3, 4, 5)), step=np.arange(3))
    w.log("plain", row=np.arange(4), v=np.ones((4, 2), np.float64), c=np.arange(4) * (1 + 1j))
    w.close(status="success")
    return path


@pytest.fixture
def run_file(tmp_path: Path) -> Path:
    return _write(tmp_path / "r.h5")


def _equal(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape
    if a.dtype.kind in "US":
        assert [str(x) for x in a.ravel()] == [str(x) for x in b.ravel()]
    else:
        np.testing.assert_array_equal(a, b)


def test_to_xarray_round_trips_every_stream_with_units_and_dims(run_file: Path) -> None:
    with RunReader(run_file) as r:
        for stream in r.streams():
            ds = r.to_xarray(stream)
            data = r.stream(stream, meta=True)
            assert set(data) == set(ds.variables)
            for name, values in data.items():
                _equal(ds[name].values, values)
        ds = r.to_xarray("sweep")
        assert ds["counts"].dims == ("row", "core", "col") and ds["counts"].attrs == {"units": "ADC counts", "long_name": "verify read"}
        assert "amp" in ds.coords and ds["amp"].attrs["units"] == "uA" and ds.attrs["run_id"] == "r"
        assert r.to_xarray("maps")["g"].dims == ("_row", "row", "col")
        info = r.stream_info("sweep")
        assert info.x == "amp" and info.label("counts") == "verify read [ADC counts]"


def test_to_dataframe_and_csv_reload_with_pandas(tmp_path: Path, run_file: Path) -> None:
    files = export_run(run_file, "csv", tmp_path / "csv")
    assert sorted(f.name for f in files) == ["maps.csv", "plain.csv", "sweep.csv"]
    with RunReader(run_file) as r:
        for stream in ("sweep", "maps"):
            df = r.to_dataframe(stream)
            back = pd.read_csv(tmp_path / "csv" / f"{stream}.csv", index_col=0)
            assert list(back.columns) == list(df.columns) and len(back) == r.n_rows(stream)
            for name, values in r.stream(stream, meta=True).items():
                cols = [name] if values.ndim == 1 else [c for c in df.columns if c.startswith(f"{name}[")]
                got = back[cols].to_numpy().reshape(values.shape)
                if values.dtype.kind in "US":
                    _equal(got.astype(str), values)
                else:
                    np.testing.assert_array_equal(got.astype(values.dtype), values)
        df = r.to_dataframe("sweep")
        assert "counts[1,2]" in df.columns and df.attrs["units"]["counts"] == "ADC counts"


def test_netcdf_export_round_trips_and_carries_the_run(tmp_path: Path, run_file: Path) -> None:
    (nc,) = export_run(run_file, "netcdf", tmp_path / "out.nc")
    with RunReader(run_file) as r:
        for stream in r.streams():
            with xr.open_dataset(nc, group=f"streams/{stream}", engine="h5netcdf") as ds:
                for name, values in r.stream(stream, meta=True).items():
                    _equal(ds[name].values, values)
        with xr.open_dataset(nc, engine="h5netcdf") as root:
            assert root.attrs["run_id"] == "r" and root.attrs["protocol"] == "unit"


def test_xarray_opens_the_run_file_itself_without_phony_dims(run_file: Path) -> None:
    with RunReader(run_file) as r:  # a reader open in the same process too
        with xr.open_dataset(run_file, group="netcdf/sweep", engine="h5netcdf") as ds:
            assert ds["counts"].dims == ("row", "core", "col") and ds["counts"].attrs["units"] == "ADC counts"
            assert ds["amp"].attrs["units"] == "uA" and "amp" in ds.coords
            assert [str(v) for v in ds["label"].values] == [str(v) for v in r.stream("sweep")["label"]]
            np.testing.assert_array_equal(ds["counts"].values, r.stream("sweep")["counts"])
        with xr.open_dataset(run_file, group="netcdf/plain", engine="h5netcdf") as ds:
            assert ds["v"].dims == ("_row", "v_dim1") and ds.sizes["_row"] == 4
        assert r.streams() == ["maps", "plain", "sweep"] and r.columns("sweep") == ["amp", "counts", "label", "ok", "gain"]


def test_a_layout_v1_file_exports_with_default_dims(tmp_path: Path) -> None:
    src = FIXTURES / "v1-fake-success.h5"
    with RunReader(src) as r:
        for stream in r.streams():
            ds = r.to_xarray(stream)
            for name, values in r.stream(stream).items():
                _equal(ds[name].values, values)
                assert ds[name].dims[0] in ("row", "_row")
            assert len(r.to_dataframe(stream)) == r.n_rows(stream)
    assert export_run(src, "netcdf", tmp_path / "v1.nc")[0].stat().st_size > 0


def test_declarations_follow_the_column_rules_in_every_run_log(tmp_path: Path) -> None:
    w = RunWriter(tmp_path / "d.h5", RunStart(run_id="d"))
    mem = MemoryRunLog()
    for log in (w, mem):
        log.declare("a", units={"nope": "V"})
        with pytest.raises(RunLogError, match=r"names column\(s\) \['nope'\]"):
            log.log("a", v=1.0)
        log.declare("b", dims={"m": ("x",)})
        with pytest.raises(RunLogError, match="names 1 axes"):
            log.log("b", m=np.zeros((1, 2, 3)))
        log.declare("c", dims={"p": ("k",), "q": ("k",)})
        with pytest.raises(RunLogError, match="dimension 'k' has length 2"):
            log.log("c", p=np.zeros((1, 2)), q=np.zeros((1, 3)))
        log.log("e", v=1.0)
        with pytest.raises(RunLogError, match=r"after the stream.s first run\.log"):
            log.declare("e", units={"v": "V"})
        with pytest.raises(RunLogError, match="dimension name"):
            log.declare("f", dims={"v": ("1bad",)})
        log.declare("g", x="v")
        with pytest.raises(RunLogError, match="x='v' must be a column of one number per row"):
            log.log("g", v=np.zeros((1, 2)))
    assert mem.spec("e").row_dim == "row"
    w.close(status="success")

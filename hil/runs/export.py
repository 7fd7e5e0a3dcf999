"""Streams out of a run file: xarray Datasets, pandas DataFrames, netCDF and CSV files.

Internal module (its layout may change): use ``RunReader.to_xarray`` / ``RunReader.to_dataframe``
and ``hil export``. xarray, pandas and h5netcdf are imported here only, on first use.

* :func:`stream_to_xarray`: one variable per column, the values :meth:`RunReader.stream` returns,
  on the row dimension and the declared per-row dimensions, with ``units`` and ``long_name``;
* :func:`stream_to_dataframe`: one row per logged row, per-row arrays spread over ``name[i,j]``;
* :func:`export_run`: ``hil export RUN --format netcdf`` (one ``.nc`` file, a group per stream,
  the run's metadata as attributes) or ``--format csv`` (a folder, one ``<stream>.csv`` per stream).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hil.errors import HilError
from hil.runs.reader import RunReader

FORMATS = ("netcdf", "csv")
#: Most columns a DataFrame row of one stream may spread into (a 256 x 256 map per row is 65536).
MAX_FRAME_COLUMNS = 1 << 20


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise HilError(f"exporting streams needs {module} ({exc}); install it with `pip install {module}`.") from exc


def stream_to_xarray(reader: RunReader, stream: str) -> Any:
    """The stream as an ``xarray.Dataset`` (see :meth:`RunReader.to_xarray`)."""
    xr = _need("xarray")
    info = reader.stream_info(stream)
    data = reader.stream(stream, meta=True)
    variables: dict[str, Any] = {}
    coords: dict[str, Any] = {}
    for name, values in data.items():
        attrs = {}
        if name in info.units:
            attrs["units"] = info.units[name]
        if name in info.long_names:
            attrs["long_name"] = info.long_names[name]
        var = xr.Variable((info.row_dim, *info.dims.get(name, ())), values, attrs)
        if name in ("_t_wall", "_call") or name == info.x:
            coords[name] = var
        else:
            variables[name] = var
    return xr.Dataset(
        variables, coords=coords,
        attrs={"run_id": reader.run_id, "protocol": reader.protocol, "stream": stream, **({"x": info.x} if info.x else {})},
    )


def _flat_names(name: str, shape: tuple[int, ...]) -> list[str]:
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def stream_to_dataframe(reader: RunReader, stream: str) -> Any:
    """The stream as a ``pandas.DataFrame`` (see :meth:`RunReader.to_dataframe`)."""
    pd = _need("pandas")
    info = reader.stream_info(stream)
    data = reader.stream(stream, meta=True)
    n = reader.n_rows(stream)
    width = sum(int(np.prod(v.shape[1:], dtype=np.int64)) for v in data.values())
    if width > MAX_FRAME_COLUMNS:
        raise HilError(
            f"stream {stream!r} of {reader.path} spreads into {width} columns per row (over {MAX_FRAME_COLUMNS}); "
            "use RunReader.to_xarray or `hil export --format netcdf` for it."
        )
    parts: dict[str, np.ndarray] = {}
    for name, values in data.items():
        if values.ndim == 1:
            parts[name] = values
        else:
            flat = values.reshape(n, -1)
            for k, col in enumerate(_flat_names(name, values.shape[1:])):
                parts[col] = flat[:, k]
    df = pd.DataFrame(parts, index=pd.RangeIndex(n, name=info.row_dim))
    df.attrs.update({"run_id": reader.run_id, "stream": stream, "units": dict(info.units),
                     "long_names": dict(info.long_names)})
    return df


def _netcdf_attrs(reader: RunReader) -> dict[str, Any]:
    """The run's metadata as netCDF attributes (numbers and text; dicts and lists as JSON text)."""
    out: dict[str, Any] = {}
    for key, value in reader.attrs.items():
        if isinstance(value, bool | np.bool_):
            out[key] = int(value)
        elif isinstance(value, int | float | str | np.integer | np.floating):
            out[key] = value
        else:
            out[key] = json.dumps(value, default=str)
    return out


def export_run(path: str | os.PathLike[str], fmt: str, out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Write the run's streams as ``fmt`` (``netcdf`` or ``csv``); returns the files written.

    ``out``: the ``.nc`` file (netcdf; default ``<run>.nc`` beside the run file) or the folder of
    the CSV files (csv; default ``<run>-csv/``). Existing files there are replaced.
    """
    if fmt not in FORMATS:
        raise HilError(f"export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    path = Path(path)
    written: list[Path] = []
    with RunReader(path) as reader:
        streams = reader.streams()
        if fmt == "netcdf":
            _need("h5netcdf")
            xr = _need("xarray")
            target = Path(out) if out is not None else path.with_suffix(".nc")
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.unlink(missing_ok=True)
            xr.Dataset(attrs=_netcdf_attrs(reader)).to_netcdf(tmp, mode="w", engine="h5netcdf")
            for stream in streams:
                ds = stream_to_xarray(reader, stream)
                complex_data = any(v.dtype.kind == "c" for v in ds.variables.values())
                ds.to_netcdf(tmp, mode="a", group=f"streams/{stream}", engine="h5netcdf", invalid_netcdf=complex_data or None)
            os.replace(tmp, target)
            written.append(target)
        else:
            folder = Path(out) if out is not None else path.with_name(f"{path.stem}-csv")
            folder.mkdir(parents=True, exist_ok=True)
            for stream in streams:
                target = folder / f"{stream}.csv"
                stream_to_dataframe(reader, stream).to_csv(target)
                written.append(target)
    return written

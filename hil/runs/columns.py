"""The column rules of ``run.log``: names, dtypes and shapes, shared by every run log.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

:func:`prepare_rows` checks one ``run.log(stream, **columns)`` call against the stream's columns
(fixed by its first call) and returns the arrays to store; :class:`hil.runs.RunWriter` and
:class:`hil.MemoryRunLog` both use it, so a protocol's unit test refuses exactly the rows a real
run would refuse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hil.arguments import to_numpy
from hil.errors import RunLogError

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise RunLogError(
            f"{kind} name {name!r} is not allowed; use 1-100 letters, digits, '_', '.', '-' "
            "(not starting with '_', which is reserved)."
        )


#: Name of a stream's row dimension (``"_row"`` instead when a column or a declared dimension is
#: called ``row``, which chip streams often are).
ROW_DIM = "row"
_DIM_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,63}$")


@dataclass
class StreamDeclaration:
    """What ``run.declare(stream, ...)`` says about a stream's columns before its first rows.

    ``units`` and ``long_names``: column -> text (stored as the column's ``units`` and
    ``long_name`` attributes, the CF names that xarray and netCDF tools read); ``dims``: column ->
    names of its per-row axes (columns that share a name share the axis, which must then have the
    same length); ``x``: the scalar column the rows are plotted against (a coordinate in xarray).
    """

    units: dict[str, str] = field(default_factory=dict)
    long_names: dict[str, str] = field(default_factory=dict)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    x: str | None = None

    def merged(self, other: StreamDeclaration) -> StreamDeclaration:
        """This declaration with ``other``'s entries on top (a stream may be declared in parts)."""
        return StreamDeclaration(
            {**self.units, **other.units}, {**self.long_names, **other.long_names}, {**self.dims, **other.dims},
            other.x if other.x is not None else self.x,
        )


@dataclass
class StreamSpec:
    """A stream's columns (name -> (dtype, per-row shape)), fixed by its first log call, and its row count.

    ``declared``: the stream's :class:`StreamDeclaration`; once the columns are known, ``dims``
    holds every column's per-row dimension names (declared or ``<column>_dim<k>``) and ``row_dim``
    the name of the row axis.
    """

    name: str
    columns: dict[str, tuple[np.dtype, tuple[int, ...]]] = field(default_factory=dict)
    n_rows: int = 0
    declared: StreamDeclaration = field(default_factory=StreamDeclaration)
    dims: dict[str, tuple[str, ...]] = field(default_factory=dict)
    row_dim: str = ROW_DIM


def _text_map(stream: str, what: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise RunLogError(f"run.declare({stream!r}, {what}=...) takes a dict of column name -> text, got {value!r}.")
    too_long = [k for k, v in value.items() if len(v.encode()) > 1024]
    if too_long:
        raise RunLogError(f"run.declare({stream!r}, {what}=...): the text for {too_long[0]!r} is over 1024 bytes.")
    return dict(value)


def declare_stream(
    stream: str,
    spec: StreamSpec | None,
    *,
    units: dict[str, str] | None = None,
    long_names: dict[str, str] | None = None,
    dims: dict[str, Any] | None = None,
    x: str | None = None,
) -> StreamSpec:
    """Check one ``run.declare(stream, ...)`` call; returns the stream's spec with the declaration merged.

    A stream is declared before its first ``run.log`` (its datasets, and their dimension scales,
    are created from the first rows); the column names are checked against the first rows.
    """
    _check_name("stream", stream)
    if spec is not None and spec.columns:
        raise RunLogError(
            f"run.declare({stream!r}) after the stream's first run.log; declare units, long names and dims "
            "before logging its first rows."
        )
    dim_map: dict[str, tuple[str, ...]] = {}
    if dims is not None:
        if not isinstance(dims, dict):
            raise RunLogError(f"run.declare({stream!r}, dims=...) takes a dict of column name -> tuple of axis names.")
        for col, names in dims.items():
            names = (names,) if isinstance(names, str) else tuple(names)
            bad = [n for n in names if not isinstance(n, str) or not _DIM_RE.match(n)]
            if bad:
                raise RunLogError(
                    f"run.declare({stream!r}, dims=...): dimension name {bad[0]!r} of column {col!r} is not allowed; "
                    "use 1-64 letters, digits, '_', '.', '-', starting with a letter."
                )
            if len(set(names)) != len(names):
                raise RunLogError(f"run.declare({stream!r}, dims=...): column {col!r} names an axis twice: {names}.")
            dim_map[str(col)] = names
    if x is not None and not isinstance(x, str):
        raise RunLogError(f"run.declare({stream!r}, x=...) takes a column name, got {x!r}.")
    new = StreamDeclaration(_text_map(stream, "units", units), _text_map(stream, "long_names", long_names), dim_map, x)
    spec = spec or StreamSpec(stream)
    spec.declared = spec.declared.merged(new)
    return spec


def _resolve_dims(stream: str, spec: StreamSpec) -> None:
    """Check the declaration against the first rows' columns; fill ``spec.dims`` and ``spec.row_dim``."""
    decl = spec.declared
    for what, names in (("units", decl.units), ("long_names", decl.long_names), ("dims", decl.dims)):
        unknown = sorted(set(names) - set(spec.columns))
        if unknown:
            raise RunLogError(
                f"stream {stream!r}: run.declare({what}=...) names column(s) {unknown} that its first rows do not have; "
                f"its columns are {list(spec.columns)}."
            )
    if decl.x is not None:
        if decl.x not in spec.columns:
            raise RunLogError(f"stream {stream!r}: run.declare(x={decl.x!r}) is not one of its columns {list(spec.columns)}.")
        if spec.columns[decl.x][1] or spec.columns[decl.x][0].kind not in "biuf":
            raise RunLogError(f"stream {stream!r}: x={decl.x!r} must be a column of one number per row.")
    sizes: dict[str, int] = {}
    dims: dict[str, tuple[str, ...]] = {}
    for col, (_dtype, shape) in spec.columns.items():
        names = decl.dims.get(col) or tuple(f"{col}_dim{k + 1}" for k in range(len(shape)))
        if len(names) != len(shape):
            raise RunLogError(
                f"stream {stream!r} column {col!r}: run.declare(dims=...) names {len(names)} axes {names}, "
                f"but its rows have shape {shape} ({len(shape)} axes)."
            )
        for name, n in zip(names, shape, strict=True):
            if name in spec.columns:
                raise RunLogError(f"stream {stream!r}: dimension {name!r} of column {col!r} is also a column name; rename one.")
            if sizes.setdefault(name, n) != n:
                raise RunLogError(
                    f"stream {stream!r}: dimension {name!r} has length {sizes[name]} in one column and {n} in {col!r}; "
                    "columns that share an axis name need the same length."
                )
        dims[col] = tuple(names)
    spec.dims = dims
    spec.row_dim = "_row" if ROW_DIM in spec.columns or ROW_DIM in sizes else ROW_DIM


def _as_array(stream: str, name: str, value: Any) -> np.ndarray:
    arr = to_numpy(value)
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    if arr.dtype.kind not in "biufcS":
        raise RunLogError(
            f"stream {stream!r} column {name!r}: values of type {type(value).__name__} (dtype {arr.dtype}) "
            "cannot be stored; log numbers, booleans, strings or numpy arrays of them."
        )
    return arr


def _declare_dtype(arr: np.ndarray) -> np.dtype:
    if arr.dtype.kind == "S":
        width = max(32, 2 * int(arr.dtype.itemsize))
        return np.dtype(f"S{min(4096, -(-width // 16) * 16)}")
    return arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype


def _cast(stream: str, name: str, arr: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast later rows to the column's declared dtype, refusing lossy kinds and out-of-range values."""
    kind, want = arr.dtype.kind, dtype.kind
    where = f"stream {stream!r} column {name!r}"
    if want == "S":
        if kind != "S":
            raise RunLogError(f"{where} holds strings; got dtype {arr.dtype}. Log strings in this column.")
        if arr.dtype.itemsize > dtype.itemsize and arr.size and int(np.char.str_len(arr).max()) > dtype.itemsize:
            raise RunLogError(
                f"{where} holds strings of at most {dtype.itemsize} bytes (fixed by its first rows); "
                f"got one of {int(np.char.str_len(arr).max())} bytes. Shorten it or log it in a new stream."
            )
        return arr.astype(dtype)
    allowed = {"b": "b", "i": "biu", "u": "bu" if kind == "u" else "biu", "f": "biuf", "c": "biufc"}[want]
    if kind not in allowed:
        raise RunLogError(
            f"{where} is {dtype} (fixed by its first rows); got values of dtype {arr.dtype}. "
            "Log the same kind of value each time (cast explicitly if you mean it)."
        )
    if want in "iu" and arr.size and not np.can_cast(arr.dtype, dtype, "safe"):
        info = np.iinfo(dtype)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            bad = lo if lo < info.min else hi
            raise RunLogError(f"{where} is {dtype}: {bad} is out of its range [{info.min}, {info.max}].")
    return arr.astype(dtype, copy=False)


def prepare_rows(stream: str, columns: dict[str, Any], spec: StreamSpec | None) -> tuple[StreamSpec, dict[str, np.ndarray], int]:
    """Check one ``run.log(stream, **columns)`` call; returns (spec, arrays in the stored dtypes, rows).

    ``spec`` is the stream's spec from earlier calls, or None (or a spec holding only a
    declaration) for its first call: then a new spec is returned, with names and the declaration
    checked. Each column is a scalar (one row) or an array whose first axis
    is the rows; all columns need the same row count; later calls need the same columns, per-row
    shapes and a dtype that casts without loss. Nothing is changed when it raises.
    """
    if not columns:
        raise RunLogError(f"run.log({stream!r}) got no columns; pass at least one keyword, e.g. value=1.0.")
    arrays: dict[str, np.ndarray] = {}
    n_rows = None
    for name, value in columns.items():
        arr = _as_array(stream, name, value)
        if arr.ndim == 0:
            arr = arr.reshape(1)
        if n_rows is None:
            n_rows = arr.shape[0]
        elif arr.shape[0] != n_rows:
            sizes = {k: (1 if np.ndim(v) == 0 else len(v)) for k, v in columns.items()}
            raise RunLogError(
                f"stream {stream!r}: columns have different row counts {sizes}; every column of one "
                "log call needs the same number of rows (first axis)."
            )
        arrays[name] = arr
    assert n_rows is not None
    if spec is None or not spec.columns:
        _check_name("stream", stream)
        for name in arrays:
            _check_name("column", name)
        declared = spec.declared if spec is not None else StreamDeclaration()
        spec = StreamSpec(
            stream, {name: (_declare_dtype(a), tuple(a.shape[1:])) for name, a in arrays.items()}, declared=declared
        )
        _resolve_dims(stream, spec)
    elif set(arrays) != set(spec.columns):
        missing = sorted(set(spec.columns) - set(arrays))
        extra = sorted(set(arrays) - set(spec.columns))
        raise RunLogError(
            f"stream {stream!r} has columns {list(spec.columns)} (fixed by its first rows); "
            f"missing {missing}, unexpected {extra}. Log every column each time, or use a new stream."
        )
    converted = {}
    for name, (dtype, shape) in spec.columns.items():
        arr = arrays[name]
        if tuple(arr.shape[1:]) != shape:
            raise RunLogError(
                f"stream {stream!r} column {name!r} has rows of shape {shape} (fixed by its first rows); "
                f"got rows of shape {tuple(arr.shape[1:])}."
            )
        converted[name] = _cast(stream, name, arr, dtype)
    return spec, converted, n_rows

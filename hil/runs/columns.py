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


@dataclass
class StreamSpec:
    """A stream's columns (name -> (dtype, per-row shape)), fixed by its first log call, and its row count."""

    name: str
    columns: dict[str, tuple[np.dtype, tuple[int, ...]]] = field(default_factory=dict)
    n_rows: int = 0


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

    ``spec`` is the stream's spec from earlier calls, or None for its first call (then a new spec is
    returned, with names checked). Each column is a scalar (one row) or an array whose first axis
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
    if spec is None:
        _check_name("stream", stream)
        for name in arrays:
            _check_name("column", name)
        spec = StreamSpec(stream, {name: (_declare_dtype(a), tuple(a.shape[1:])) for name, a in arrays.items()})
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

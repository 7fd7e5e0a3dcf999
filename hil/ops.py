"""Each chip operation declared once: its journal code, fields, HDF5 encoding and how to call it.

An :class:`Op` says everything the run machinery needs about one :class:`hil.Chip` operation:

* ``name`` and ``code``: the journal's name and enum code (fixed by run-file layout version 1);
* ``method``: the backend method that performs it (``_apply_pulses``, ``now``, ...);
* ``args`` / ``results``: the journal fields of its (validated) arguments and of its result;
* ``pack(*method_args)`` / ``unpack(fields)``: between the backend method's arguments and the
  argument fields; ``result_fields(result)`` / ``result_from(fields)``: between its result and
  the result fields;
* ``encoding``: how its calls are laid out in ``/journal/<name>/`` of a run file.

Recording (:class:`hil.journal.RecordingChip`), replay and re-execution (:mod:`hil.replay`) and
the run-file writer and reader (:mod:`hil.runs`) all loop over :data:`OPS`; a new chip operation
is one more entry here (and a layout version bump, see ``docs/run-file.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from hil.arguments import is_broadcast, to_numpy
from hil.chip import Chip, LdpuRegisters, PulseBatch

#: MVM ``output`` and ``mode`` as stored in the journal (fixed by layout version 1).
MVM_OUTPUT_CODES: dict[str, int] = {"adc": 0, "ldpu": 1}
MVM_MODE_CODES: dict[str, int] = {"4phase": 0, "1phase": 1}
_MVM_OUTPUTS = {v: k for k, v in MVM_OUTPUT_CODES.items()}
_MVM_MODES = {v: k for k, v in MVM_MODE_CODES.items()}

Fields = dict[str, Any]


# ---------------------------------------------------------------------------------------------- encodings
def _table(**fields: str) -> np.dtype:
    return np.dtype(list(fields.items()))


def _records(dtype: np.dtype, fields: Fields, n: int) -> np.ndarray:
    """One structured row per addressed element; a missing result field (a call that raised) is 0."""
    out = np.zeros(n, dtype=dtype)
    for name in dtype.names or ():
        value = fields.get(name)
        if value is not None:
            out[name] = np.asarray(value).reshape(-1)
    return out


@dataclass(frozen=True)
class Encoding:
    """How one operation's calls are stored under ``/journal/<op>/``.

    ``call``: per-call scalars (one row of ``/journal/<op>/call`` per call); ``tables``: element
    tables ``/journal/<op>/<name>`` holding every call's elements back to back; ``lengths`` gives
    each call's element count per table from its call rows; ``encode``/``decode`` convert between
    the op's fields and this layout. ``narrow``: integer tables a writer may store in a smaller
    integer type than ``tables`` says, when the chip declares its results fit
    (:attr:`hil.journal.RecordingChip`, ``journal_result_dtypes``): table -> the dtypes allowed, all
    of which readers accept (decode casts to the op's result dtype).
    """

    call: np.dtype
    tables: tuple[tuple[str, np.dtype], ...]
    encode: Callable[[Fields], tuple[tuple[Any, ...], dict[str, np.ndarray]]]
    lengths: Callable[[np.ndarray], dict[str, np.ndarray]]
    decode: Callable[[np.void, dict[str, np.ndarray]], Fields]
    narrow: tuple[tuple[str, tuple[np.dtype, ...]], ...] = ()

    def readable(self, table: str) -> tuple[np.dtype, ...]:
        """Every dtype a reader accepts for ``table``: the declared one and its narrow forms."""
        return (dict(self.tables)[table], *dict(self.narrow).get(table, ()))


def _elements(table: str, dtype: np.dtype) -> Encoding:
    def encode(f: Fields) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
        n = int(np.size(f["core"]))
        return (n,), {table: _records(dtype, f, n)}

    return Encoding(
        call=_table(n="<u4"),
        tables=((table, dtype),),
        encode=encode,
        lengths=lambda calls: {table: calls["n"].astype(np.int64)},
        decode=lambda row, t: {name: np.ascontiguousarray(t[table][name]) for name in dtype.names or ()},
    )


def _scalar(name: str) -> Encoding:
    return Encoding(
        call=_table(**{name: "<f8"}),
        tables=(),
        encode=lambda f: ((float(f[name]),), {}),
        lengths=lambda calls: {},
        decode=lambda row, t: {name: float(row[name])},
    )


def _mvm_encode(f: Fields) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    x, cores = np.asarray(f["x"]), np.asarray(f["cores"]).reshape(-1)
    y = f.get("y")
    y = np.zeros((cores.size, x.shape[1], 0), dtype=np.int32) if y is None else np.asarray(y)
    row = (cores.size, x.shape[1], x.shape[2], y.shape[2], f["x_shared"], f["output"], f["mode"])
    return row, {
        "cores": cores.astype("<i4"),
        "x": x.astype("i1", copy=False).reshape(-1),
        "y": y.astype("<i4", copy=False).reshape(-1),
    }


def _mvm_lengths(calls: np.ndarray) -> dict[str, np.ndarray]:
    n, b = calls["n_cores"].astype(np.int64), calls["batch"].astype(np.int64)
    n_x = np.where(calls["x_shared"] > 0, 1, n)
    return {"cores": n, "x": n_x * b * calls["rows"], "y": n * b * calls["cols"]}


def _mvm_decode(row: np.void, t: dict[str, np.ndarray]) -> Fields:
    n, b = int(row["n_cores"]), int(row["batch"])
    n_x = 1 if row["x_shared"] else n
    return {
        "x": t["x"].reshape(n_x, b, int(row["rows"])),
        "x_shared": int(row["x_shared"]),
        "cores": t["cores"],
        "output": int(row["output"]),
        "mode": int(row["mode"]),
        "y": t["y"].reshape(n, b, int(row["cols"])).astype(np.int32, copy=False),  # int16 in narrowed files
    }


_LDPU_CORES = _table(core="<i4", relu="u1")
_LDPU_REGS = _table(scale="<f2", offset="<f2")


def _ldpu_encode(f: Fields) -> tuple[tuple[Any, ...], dict[str, np.ndarray]]:
    cores = np.asarray(f["cores"]).reshape(-1)
    scale = f.get("scale")
    cols = 0 if scale is None else int(np.shape(scale)[-1])
    return (cores.size, cols), {
        "cores": _records(_LDPU_CORES, {"core": cores, "relu": f.get("relu")}, cores.size),
        "registers": _records(_LDPU_REGS, f, cores.size * cols),
    }


def _ldpu_decode(row: np.void, t: dict[str, np.ndarray]) -> Fields:
    shape = (int(row["n_cores"]), int(row["cols"]))
    return {
        "cores": np.ascontiguousarray(t["cores"]["core"]),
        "scale": np.ascontiguousarray(t["registers"]["scale"]).reshape(shape),
        "offset": np.ascontiguousarray(t["registers"]["offset"]).reshape(shape),
        "relu": np.ascontiguousarray(t["cores"]["relu"]),
    }


_LDPU_ENCODING = Encoding(
    call=_table(n_cores="<u4", cols="<u4"),
    tables=(("cores", _LDPU_CORES), ("registers", _LDPU_REGS)),
    encode=_ldpu_encode,
    lengths=lambda calls: {
        "cores": calls["n_cores"].astype(np.int64),
        "registers": calls["n_cores"].astype(np.int64) * calls["cols"],
    },
    decode=_ldpu_decode,
)


# ---------------------------------------------------------------------------------------------- operations
@dataclass(frozen=True)
class Op:
    """One chip operation (see the module docstring)."""

    name: str
    code: int
    method: str
    args: tuple[str, ...]
    results: tuple[str, ...]
    pack: Callable[..., Fields]
    unpack: Callable[[Fields], tuple[Any, ...]]
    result_fields: Callable[[Any], Fields]
    result_from: Callable[[Fields], Any]
    encoding: Encoding

    def call(self, chip: Chip, fields: Fields) -> Any:
        """Execute this operation on ``chip``'s backend method with recorded argument ``fields``."""
        return getattr(chip, self.method)(*self.unpack(fields))


def _ints(f: Fields, *names: str) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(f[n]).astype(np.int64) for n in names)


def _none(result: Any) -> Fields:
    return {}


def _counts(result: Any) -> Fields:
    return {"counts": to_numpy(result)}


def _counts_from(f: Fields) -> np.ndarray:
    return np.asarray(f["counts"]).astype(np.int32)


_PULSE_FIELDS = ("core", "row", "col", "device", "kind", "amplitude_ua", "width_ns")


def _pack_pulses(batch: PulseBatch) -> Fields:
    return {name: getattr(batch, name) for name in _PULSE_FIELDS}


def _unpack_pulses(f: Fields) -> tuple[PulseBatch]:
    return (
        PulseBatch(
            *_ints(f, "core", "row", "col", "device"),
            kind=np.asarray(f["kind"]).astype(np.uint8),
            amplitude_ua=np.asarray(f["amplitude_ua"]).astype(np.float64),
            width_ns=np.asarray(f["width_ns"]).astype(np.float64),
        ),
    )


def _pack_mvm(x: Any, cores: np.ndarray, output: str, mode: str) -> Fields:
    shared = is_broadcast(x)
    return {
        "x": to_numpy(x[:1] if shared else x),
        "x_shared": int(shared),
        "cores": cores,
        "output": MVM_OUTPUT_CODES[output],
        "mode": MVM_MODE_CODES[mode],
    }


def _unpack_mvm(f: Fields) -> tuple[Any, ...]:
    (cores,) = _ints(f, "cores")
    x = f["x"]
    if f["x_shared"]:
        x = np.broadcast_to(x, (cores.size, *x.shape[1:]))
    return x, cores, _MVM_OUTPUTS[int(f["output"])], _MVM_MODES[int(f["mode"])]


def _mvm_from(f: Fields) -> np.ndarray:
    y = np.asarray(f["y"])
    return y.astype(np.int8 if int(f["output"]) == MVM_OUTPUT_CODES["ldpu"] else np.int32)


def _ldpu_fields(regs: LdpuRegisters) -> Fields:
    return {"scale": to_numpy(regs.scale), "offset": to_numpy(regs.offset), "relu": to_numpy(regs.relu)}


def _ldpu_from(f: Fields) -> LdpuRegisters:
    return LdpuRegisters(
        np.asarray(f["scale"]).astype(np.float16), np.asarray(f["offset"]).astype(np.float16), np.asarray(f["relu"]).astype(bool)
    )


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op(
            "now", 0, "now", (), ("t",),
            pack=lambda: {}, unpack=lambda f: (),
            result_fields=lambda t: {"t": float(t)}, result_from=lambda f: float(f["t"]),
            encoding=_scalar("t"),
        ),
        Op(
            "sleep", 1, "_sleep", ("seconds",), (),
            pack=lambda seconds: {"seconds": float(seconds)}, unpack=lambda f: (float(f["seconds"]),),
            result_fields=_none, result_from=lambda f: None,
            encoding=_scalar("seconds"),
        ),
        Op(
            "apply_pulses", 2, "_apply_pulses", _PULSE_FIELDS, (),
            pack=_pack_pulses, unpack=_unpack_pulses,
            result_fields=_none, result_from=lambda f: None,
            encoding=_elements(
                "pulses",
                _table(core="<i4", row="<i4", col="<i4", device="u1", kind="u1", amplitude_ua="<f8", width_ns="<f8"),
            ),
        ),
        Op(
            "read_devices", 3, "_read_devices", ("core", "row", "col", "device"), ("counts",),
            pack=lambda core, row, col, device: {"core": core, "row": row, "col": col, "device": device},
            unpack=lambda f: _ints(f, "core", "row", "col", "device"),
            result_fields=_counts, result_from=_counts_from,
            encoding=_elements("reads", _table(core="<i4", row="<i4", col="<i4", device="u1", counts="<i4")),
        ),
        Op(
            "read_cells", 4, "_read_cells", ("core", "row", "col"), ("counts",),
            pack=lambda core, row, col: {"core": core, "row": row, "col": col},
            unpack=lambda f: _ints(f, "core", "row", "col"),
            result_fields=_counts, result_from=_counts_from,
            encoding=_elements("reads", _table(core="<i4", row="<i4", col="<i4", counts="<i4")),
        ),
        Op(
            "mvm", 5, "_mvm", ("x", "x_shared", "cores", "output", "mode"), ("y",),
            pack=_pack_mvm, unpack=_unpack_mvm,
            result_fields=lambda y: {"y": to_numpy(y)}, result_from=_mvm_from,
            encoding=Encoding(
                call=_table(n_cores="<u4", batch="<u4", rows="<u4", cols="<u4", x_shared="u1", output="u1", mode="u1"),
                tables=(("cores", np.dtype("<i4")), ("x", np.dtype("i1")), ("y", np.dtype("<i4"))),
                encode=_mvm_encode,
                lengths=_mvm_lengths,
                decode=_mvm_decode,
                # ADC counts of 12-bit counters (P - N in [-4095, 4095]) and LDPU int8 fit int16.
                narrow=(("y", (np.dtype("<i2"), np.dtype("i1"))),),
            ),
        ),
        Op(
            "set_ldpu", 6, "_set_ldpu", ("cores", "scale", "offset", "relu"), (),
            pack=lambda cores, regs: {"cores": cores, **_ldpu_fields(regs)},
            unpack=lambda f: (*_ints(f, "cores"), _ldpu_from(f)),
            result_fields=_none, result_from=lambda f: None,
            encoding=_LDPU_ENCODING,
        ),
        Op(
            "get_ldpu", 7, "_get_ldpu", ("cores",), ("scale", "offset", "relu"),
            pack=lambda cores: {"cores": cores}, unpack=lambda f: _ints(f, "cores"),
            result_fields=_ldpu_fields, result_from=_ldpu_from,
            encoding=_LDPU_ENCODING,
        ),
    )
}
#: Journal enum code -> operation name.
OP_NAMES: dict[int, str] = {op.code: op.name for op in OPS.values()}
#: Backend method name -> operation.
BY_METHOD: dict[str, Op] = {op.method: op for op in OPS.values()}


def implement_ops(cls: type[Chip]) -> type[Chip]:
    """Class decorator: give ``cls`` every backend method of :data:`OPS`, each calling ``self._op(op, *args)``.

    Chip wrappers (recording, replay) implement one ``_op(op, *method_args)`` and get the whole
    backend surface from the table, so no operation can be forgotten.
    """
    import abc

    def make(op: Op) -> Callable[..., Any]:
        def method(self: Any, *method_args: Any) -> Any:
            return self._op(op, *method_args)

        method.__name__ = method.__qualname__ = op.method
        method.__doc__ = f"Backend method of the {op.name!r} operation (see hil.ops.OPS)."
        return method

    for op in OPS.values():
        if op.method not in cls.__dict__:
            setattr(cls, op.method, make(op))
    abc.update_abstractmethods(cls)
    return cls

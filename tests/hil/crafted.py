"""A corpus of crafted and damaged run files, each made from a small genuine run (tests of the readers).

``make_corpus(folder)`` writes one file per case and returns ``{case: path}``. Every case is what an
attacker or a broken disk could hand to ``hil show``, ``hil ls``, ``hil report`` or ``hil replay``:
links and storage pointing outside the file, shapes that promise far more than the file holds,
attributes of the wrong kind, journals whose tables disagree. ``python -m tests.hil.crafted DIR``
writes them for a look by hand.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from hil import Geometry, PulseKind
from hil.journal import RecordingChip
from hil.runs import RunWriter
from hil.testing import FakeChip

GEO = Geometry(n_cores=2, n_rows=8, n_cols=8)
SECRET = "/etc/passwd"


def genuine(path: Path) -> Path:
    """A small, healthy run file with streams, a journal of every op kind, notes and an input."""
    w = RunWriter(path, {"run_id": path.stem, "protocol": "test-steps", "geometry_json": GEO.model_dump_json(),
                         "config_json": '{"steps": 2}', "preceded_by_json": "[]"}, inputs={"w": np.arange(12.0)})
    chip = RecordingChip(FakeChip(GEO, seed=1), w)
    chip.apply_pulses([0, 1], [1, 2], [3, 4], [0, 1], kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0)
    counts = chip.read_devices([0, 1], [1, 2], [3, 4], [0, 1])
    chip.read_cells([0], [1], [3])
    y = chip.mvm(np.ones((3, GEO.n_rows), np.int8), [0])
    chip.set_ldpu([0], 0.5, 0.0)
    chip.get_ldpu([0])
    chip.sleep(1.0)
    chip.now()
    w.log("steps", step=0, counts=counts[None], y=y[0, :1])
    w.note("hello")
    w.close(status="success", summary_json='{"ok": 1}', n_calls=w.n_calls)
    return path


def _edit(fn: Callable[[h5py.File], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        with h5py.File(path, "r+") as f:
            fn(f)

    return apply


def _replace(name: str, make: Callable[[h5py.File, str], None]) -> Callable[[Path], None]:
    def fn(f: h5py.File) -> None:
        del f[name]
        make(f, name)

    return _edit(fn)


def _bytes(offset: int, data: bytes) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        raw = bytearray(path.read_bytes())
        raw[offset: offset + len(data)] = data
        path.write_bytes(bytes(raw))

    return apply


def _truncate(frac: float) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * frac)])

    return apply


def _attr(key: str, value: object) -> Callable[[Path], None]:
    def fn(f: h5py.File) -> None:
        f.attrs[key] = value

    return _edit(fn)


CASES: dict[str, Callable[[Path], None]] = {
    "external-link-stream": _edit(lambda f: f["streams"].__setitem__("leak", h5py.ExternalLink(SECRET, "/"))),
    "external-link-column": _replace("streams/steps/step", lambda f, n: f.__setitem__(n, h5py.ExternalLink("other.h5", "/x"))),
    "external-storage-column": _replace(
        "streams/steps/step", lambda f, n: f.create_dataset(n, shape=(1,), dtype="<i8", external=[(SECRET, 0, 8)])
    ),
    "external-storage-input": _replace(
        "inputs/w", lambda f, n: f.create_dataset(n, shape=(12,), dtype="u1", external=[(SECRET, 0, 12)])
    ),
    "virtual-dataset": _replace("streams/steps/step", lambda f, n: f.create_virtual_dataset(
        n, _layout(), fillvalue=0)),
    "soft-link-loop": _edit(lambda f: f["streams"].__setitem__("loop", h5py.SoftLink("/streams"))),
    "huge-unallocated-column": _replace(
        "streams/steps/step", lambda f, n: f.create_dataset(n, shape=(10**9,), maxshape=(None,), dtype="<i8", chunks=(1 << 16,))
    ),
    "huge-unallocated-journal-table": _replace(
        "journal/mvm/y", lambda f, n: f.create_dataset(n, shape=(2 * 10**9,), maxshape=(None,), dtype="<i4", chunks=(1 << 16,))
    ),
    "huge-calls-table": _replace(
        "journal/calls", lambda f, n: f.create_dataset(n, shape=(10**9,), maxshape=(None,), dtype=_calls_dtype(f),
                                                       chunks=(4096,))
    ),
    "mvm-sizes-overflow": _edit(lambda f: f["journal/mvm/call"].__setitem__(0, _big_mvm_row(f))),
    "bad-op-code": _edit(lambda f: _set_field(f, "journal/calls", 0, "op", 200)),
    "bad-row-index": _edit(lambda f: _set_field(f, "journal/calls", 1, "row", 10**15)),
    "pulses-wrong-dtype": _replace("journal/apply_pulses/pulses", lambda f, n: f.create_dataset(n, data=np.zeros(2, np.float64))),
    "calls-wrong-dtype": _replace("journal/calls", lambda f, n: f.create_dataset(n, data=np.zeros(9, np.int32))),
    "streams-is-a-dataset": _replace("streams", lambda f, n: f.create_dataset(n, data=np.zeros(3))),
    "column-is-a-group": _replace("streams/steps/counts", lambda f, n: f.create_group(n)),
    "columns-attr-not-json": _edit(lambda f: f["streams/steps"].attrs.__setitem__("columns", "[not json")),
    "columns-attr-not-a-list": _edit(lambda f: f["streams/steps"].attrs.__setitem__("columns", '{"a": 1}')),
    "columns-attr-huge": _edit(lambda f: f["streams/steps"].attrs.__setitem__("columns", '["x"]' + " " * 60000)),
    "notes-wrong-dtype": _replace("notes", lambda f, n: f.create_dataset(n, data=np.zeros(3))),
    "errors-wrong-dtype": _edit(lambda f: f["journal"].create_dataset("errors", data=np.zeros(3))),
    "non-scalar-seed": _attr("seed", np.arange(3)),
    "non-scalar-status": _attr("status", np.array([b"success", b"fail"])),
    "status-unknown": _attr("status", "exploded"),
    "run-id-int": _attr("run_id", 7),
    "config-not-json": _attr("config_json", "{not json"),
    "config-a-list": _attr("config_json", "[1, 2]"),
    "geometry-huge": _attr("geometry_json", '{"n_cores": 1000000000, "n_rows": 4096, "n_cols": 4096}'),
    "preceded-by-absolute": _attr("preceded_by_json", '["/etc/passwd"]'),
    "layout-version-string": _attr("hil_layout_version", "1"),
    "layout-version-future": _attr("hil_layout_version", 99),
    "not-ours": _attr("hil_layout", "something-else"),
    "truncated-half": _truncate(0.5),
    "truncated-tiny": _truncate(0.02),
    "zeroed-superblock-tail": _bytes(20, b"\0" * 28),
    "swmr-flag-bad-checksum": _bytes(11, b"\x05"),
    "swmr-flag-valid-checksum": lambda p: _set_flags(p, 0x05),
    "random-bytes": lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
    "empty": lambda p: p.write_bytes(b""),
    "hdf5-signature-only": lambda p: p.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100),
}


def _layout() -> h5py.VirtualLayout:
    layout = h5py.VirtualLayout(shape=(1,), dtype="<i8")
    layout[:] = h5py.VirtualSource("other.h5", "data", shape=(1,))
    return layout


def _calls_dtype(f: h5py.File) -> np.dtype:
    return np.dtype([("op", "u1"), ("row", "<u8"), ("t_chip", "<f8"), ("t_wall", "<f8"), ("dt_wall", "<f4"), ("error", "u1")])


def _big_mvm_row(f: h5py.File) -> np.void:
    row = f["journal/mvm/call"][0]
    row["n_cores"], row["batch"], row["rows"], row["cols"] = 2**31, 2**31, 2**31, 2**31
    return row


def _set_field(f: h5py.File, name: str, i: int, field: str, value: int) -> None:
    data = f[name][:]
    data[field][i] = value
    f[name][:] = data


def _set_flags(path: Path, flags: int) -> None:
    """Mark the file open for SWMR writing, as a writer killed inside a write leaves it (checksum fixed)."""
    from hil.runs.reader import lookup3

    raw = bytearray(path.read_bytes())
    raw[11] = flags
    raw[44:48] = lookup3(bytes(raw[:44])).to_bytes(4, "little")
    path.write_bytes(bytes(raw))


def make_corpus(folder: Path) -> dict[str, Path]:
    """Write every crafted case into ``folder``; returns case -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    base = genuine(folder / "genuine.h5")
    out = {"genuine": base}
    for case, damage in CASES.items():
        path = folder / f"{case}.h5"
        shutil.copy(base, path)
        with h5py.File(path, "r+") as f:
            f.attrs["run_id"] = case  # each file its own run, as in a folder of runs
        damage(path)
        out[case] = path
    return out


if __name__ == "__main__":
    for case, path in make_corpus(Path(sys.argv[1])).items():
        print(case, path)

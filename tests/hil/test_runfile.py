"""Run files: streams, journal, crash-safe flushing, SWMR reading, bad files, real HDF5 clients."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from hil import Geometry, grid
from hil.journal import RecordingChip
from hil.replay import ReplayChip
from hil.runs import LAYOUT_VERSION, LayoutVersionError, RunFileError, RunLogError, RunReader, RunWriter
from tests.hil.conftest import sha256
from tests.hil.system_tools import require

GEO = Geometry(n_cores=2, n_rows=16, n_cols=16)


def _writer(path: Path, **kw) -> RunWriter:
    return RunWriter(path, {"run_id": path.stem, "protocol": "unit", "geometry_json": GEO.model_dump_json()}, **kw)


def _chip(seed: int = 1):
    from emulator import EmulatedChip

    return EmulatedChip("hermes", seed=seed, geometry=GEO)


def _exercise(chip) -> list:
    """Every journaled operation once or twice; returns what the chip answered."""
    c, r, k, d = grid([0, 1], range(4), range(16), range(4))
    out = []
    chip.apply_pulses(c, r, k, d, kind=2, amplitude_ua=400.0, width_ns=125.0)
    out.append(chip.read_devices(c, r, k, d))
    x = np.random.default_rng(0).integers(-127, 128, (3, 16)).astype(np.int8)
    out.append(chip.mvm(x))
    out.append(chip.mvm(np.stack([x, -x]).astype(np.int16), [1, 0], output="ldpu", mode="1phase"))
    chip.sleep(86400.0)
    out.append(chip.now())
    chip.set_ldpu([1], np.linspace(0.1, 2.0, 16), -1.5, True)
    regs = chip.get_ldpu([0, 1])
    out += [regs.scale, regs.offset, regs.relu]
    out.append(chip.read_cells(c[::4], r[::4], k[::4]))
    return out


def test_streams_round_trip_with_dtypes_shapes_and_strings(tmp_path: Path) -> None:
    w = _writer(tmp_path / "s.h5")
    w.log("a", x=1.5, n=3, flag=True, label="first", vec=np.arange(4.0)[None])
    w.log("a", x=np.array([2.5, 3.5]), n=np.array([4, 5]), flag=[False, True], label=["b", "ccc"], vec=np.ones((2, 4)))
    w.log("maps", g=np.arange(24, dtype=np.int32).reshape(2, 3, 4))
    w.close(status="success")
    with RunReader(tmp_path / "s.h5") as r:
        assert r.streams() == ["a", "maps"]
        assert r.columns("a") == ["x", "n", "flag", "label", "vec"]
        a = r.stream("a", meta=True)
        np.testing.assert_array_equal(a["x"], [1.5, 2.5, 3.5])
        np.testing.assert_array_equal(a["n"], [3, 4, 5])
        assert a["flag"].dtype == bool and a["flag"].tolist() == [True, False, True]
        assert a["label"].tolist() == ["first", "b", "ccc"]
        assert a["vec"].shape == (3, 4) and a["vec"][0].tolist() == [0, 1, 2, 3]
        assert np.all(np.diff(a["_t_wall"]) >= 0) and a["_t_wall"][0] > 1e9
        assert r.stream("maps")["g"].shape == (2, 3, 4) and r.stream("maps")["g"].dtype == np.int32
        assert r.status == "success" and r.effective_status == "success"


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        ({"x": 1.0}, {"x": 1.0, "y": 2.0}, "unexpected \\['y'\\]"),
        ({"x": 1.0, "y": 2.0}, {"x": 1.0}, "missing \\['y'\\]"),
        ({"n": 1}, {"n": 1.5}, "is int64 .* got values of dtype float64"),
        ({"v": np.zeros((1, 3))}, {"v": np.zeros((1, 4))}, "rows of shape \\(3,\\)"),
        ({"s": "ab"}, {"s": "x" * 100}, "strings of at most 32 bytes"),
        ({"k": np.int8(1)}, {"k": 300}, "300 is out of its range \\[-128, 127\\]"),
    ],
)
def test_log_refuses_data_that_does_not_fit_its_stream(tmp_path: Path, first, second, match) -> None:
    w = _writer(tmp_path / "bad.h5")
    w.log("s", **first)
    with pytest.raises(RunLogError, match=match):
        w.log("s", **second)
    w.log("s", **first)  # the stream is still usable: nothing was half-appended
    w.close(status="success")
    with RunReader(tmp_path / "bad.h5") as r:
        assert r.n_rows("s") == 2


def test_log_refuses_bad_names_ragged_rows_and_objects(tmp_path: Path) -> None:
    w = _writer(tmp_path / "n.h5")
    with pytest.raises(RunLogError, match="stream name 'a/b' is not allowed"):
        w.log("a/b", x=1)
    with pytest.raises(RunLogError, match="column name '_x' is not allowed"):
        w.log("s", _x=1)
    with pytest.raises(RunLogError, match="different row counts"):
        w.log("s", x=[1, 2], y=[1, 2, 3])
    with pytest.raises(RunLogError, match="cannot be stored"):
        w.log("s", x={"a": 1})
    with pytest.raises(RunLogError, match="got no columns"):
        w.log("s")
    w.close(status="success")


def test_writer_refuses_to_overwrite_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "exists.h5"
    path.write_bytes(b"precious")
    with pytest.raises(RunFileError, match="already exists"):
        _writer(path)
    assert path.read_bytes() == b"precious"


def test_journal_records_every_op_with_arrays_and_replay_answers_identically(tmp_path: Path) -> None:
    path = tmp_path / "j.h5"
    chip = _chip()
    w = _writer(path)
    live = _exercise(RecordingChip(chip, w))
    w.close(status="success")
    with RunReader(path) as r:
        j = r.journal
        assert [j.op(i) for i in range(len(j))] == [
            "apply_pulses", "read_devices", "mvm", "mvm", "sleep", "now", "set_ldpu", "get_ldpu", "read_cells",
        ]
        mvm = j.call(3)
        assert mvm.fields["x"].dtype == np.int8 and mvm.fields["x"].shape == (2, 3, 16)
        assert mvm.fields["y"].shape == (2, 3, 16) and mvm.fields["cores"].tolist() == [1, 0]
        shared = j.call(2)
        assert shared.fields["x_shared"] == 1 and shared.fields["x"].shape == (1, 3, 16)  # stored once, not per core
        assert j.call(5).fields["t"] == pytest.approx(86400.0, abs=1.0)
        assert j.call(4).t_chip >= 86400.0 and all(j.call(i).t_wall > 1e9 for i in range(len(j)))
    # the raw datasets are numeric arrays, never text or pickles
    with h5py.File(path, "r") as f:
        # mvm/y narrowed to int16: the emulator declares 12-bit ADC counts (docs/run-file.md)
        assert f["journal/mvm/y"].dtype == np.int16 and f["journal/apply_pulses/pulses"].dtype["amplitude_ua"] == np.float64
    replayed = _exercise(ReplayChip(path))
    for a, b in zip(live, replayed, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_data_reaches_disk_within_a_second_and_a_reader_can_follow_it(tmp_path: Path) -> None:
    path = tmp_path / "live.h5"
    w = _writer(path)
    w.log("s", i=0)
    time.sleep(1.0)
    # Another process holds the file open (SWMR read) while the writer keeps appending.
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from hil.runs import RunReader; import time; r = RunReader({str(path)!r}); "
         "print(r.stream('s')['i'].tolist(), flush=True); time.sleep(2.5); r.close()"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "[0]"
    for i in range(1, 4):
        w.log("s", i=i)
    time.sleep(1.0)
    with RunReader(path) as r:  # no flush() called: the background writer got the rows there
        assert r.stream("s")["i"].tolist() == [0, 1, 2, 3]
        assert r.status == "running" and r.effective_status == "running"
    w.log("s", i=4)
    w.close(status="success")
    assert holder.wait(30) == 0
    assert w.n_flushes >= 3
    with RunReader(path) as r:
        assert r.stream("s")["i"].tolist() == [0, 1, 2, 3, 4] and r.status == "success"


def _resident_fraction(path: Path) -> float:
    """Fraction of ``path``'s pages in the page cache (mincore of a read-only mapping; Linux)."""
    import ctypes
    import mmap
    import os

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        assert libc.mincore(addr, size, vec) == 0, ctypes.get_errno()
        libc.munmap(addr, size)
    finally:
        os.close(fd)
    return sum(v & 1 for v in vec) / pages


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="page-cache residency via mincore: Linux")
def test_large_journal_writes_are_synced_and_leave_the_page_cache(tmp_path: Path) -> None:
    """A flush of >= SYNC_DROP_BYTES (a journal of large MVMs) is fdatasync'ed and its pages dropped,
    so the page cache does not grow by every byte (the journal's main cost on a VM); small runs'
    pages stay cached as before."""
    from hil.runs.writer import SYNC_DROP_BYTES

    def journal(path: Path, calls: int, cores: int) -> None:
        w = RunWriter(path, {"run_id": path.stem, "protocol": "unit", "geometry_json": Geometry().model_dump_json()},
                      compression="none")
        rng = np.random.default_rng(0)
        for _ in range(calls):
            x = rng.integers(-127, 128, (cores, 256, 256)).astype(np.int8)
            y = rng.integers(-4000, 4000, (cores, 256, 256)).astype(np.int32)
            w.journal("mvm", {"x": x, "x_shared": 0, "cores": np.arange(cores), "output": 0, "mode": 0, "y": y},
                      t_chip=0.0, t_wall=time.time(), dt_wall=0.0)
        w.flush()
        w.close(status="success")

    big, small = tmp_path / "big.h5", tmp_path / "small.h5"
    journal(big, 6, 16)  # 6 x 5 MB in one flush
    journal(small, 4, 1)  # 4 x 0.3 MB
    assert big.stat().st_size > 2 * SYNC_DROP_BYTES
    assert _resident_fraction(big) < 0.2
    assert _resident_fraction(small) > 0.8  # the check can tell: unsynced pages are still cached
    with RunReader(big) as r:  # and the dropped pages read back from disk
        assert len(r.journal) == 6 and r.journal.call(5).fields["y"].shape == (16, 256, 256)


def test_a_reader_open_in_the_writing_process_delays_but_does_not_break_the_run(tmp_path: Path) -> None:
    path = tmp_path / "same.h5"
    w = _writer(path)
    w.log("s", i=0)
    w.flush()
    reader = RunReader(path)
    w.log("s", i=1)
    time.sleep(0.8)
    assert reader.stream("s")["i"].tolist() == [0]  # the writer waits for the file
    reader.close()
    w.close(status="success")
    with RunReader(path) as r:
        assert r.stream("s")["i"].tolist() == [0, 1]


def test_a_killed_writer_leaves_a_readable_incomplete_file(tmp_path: Path) -> None:
    path = tmp_path / "killed.h5"
    script = textwrap.dedent(f"""
        import os, signal, time
        import numpy as np
        from hil.runs import RunWriter
        w = RunWriter({str(path)!r}, {{"run_id": "killed", "protocol": "unit"}})
        for i in range(50):
            w.log("s", i=i, v=np.full((1, 8), i))
        time.sleep(1.2)  # the background writer flushes these 50 rows
        for i in range(50, 60):
            w.log("s", i=i, v=np.full((1, 8), i))
        os.kill(os.getpid(), signal.SIGKILL)  # the last 10 rows were never flushed
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert proc.returncode == -9
    with RunReader(path) as r:
        assert r.status == "running" and r.effective_status == "incomplete"
        rows = r.stream("s")
        assert rows["i"].tolist() == list(range(50))
        assert rows["v"][-1].tolist() == [49] * 8
    # the standard tools open it too (the file is closed between flushes)
    require("h5ls")
    assert subprocess.run(["h5ls", "-r", str(path)], capture_output=True).returncode == 0


def _make_run(path: Path) -> None:
    w = _writer(path)
    _exercise(RecordingChip(_chip(), w))
    w.log("s", i=np.arange(10))
    w.close(status="success")


def test_bad_files_are_refused_with_clear_errors_and_left_untouched(tmp_path: Path) -> None:
    good = tmp_path / "good.h5"
    _make_run(good)
    data = good.read_bytes()
    cases = {}
    (tmp_path / "text.h5").write_text("hello, not hdf5\n")
    cases["text.h5"] = "not an HDF5 file"
    (tmp_path / "empty.h5").write_bytes(b"")
    cases["empty.h5"] = "not an HDF5 file"
    (tmp_path / "truncated.h5").write_bytes(data[: len(data) // 3])
    cases["truncated.h5"] = "damaged \\(truncated or corrupted\\)"
    corrupt = bytearray(data)
    corrupt[8:48] = b"\xff" * 40  # superblock fields after the signature
    (tmp_path / "corrupt.h5").write_bytes(bytes(corrupt))
    cases["corrupt.h5"] = "damaged \\(truncated or corrupted\\)"
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.arange(3)
    cases["other.h5"] = "not a hil run file"
    shutil.copy(good, tmp_path / "newer.h5")
    with h5py.File(tmp_path / "newer.h5", "r+") as f:
        f.attrs["hil_layout_version"] = LAYOUT_VERSION + 1
    cases["newer.h5"] = f"layout version {LAYOUT_VERSION + 1}; this hil reads versions up to {LAYOUT_VERSION}"
    cases["missing.h5"] = "no such file"
    for name, match in cases.items():
        path = tmp_path / name
        before = sha256(path) if path.exists() else None
        with pytest.raises(RunFileError, match=match) as info:
            RunReader(path)
        assert str(path) in str(info.value)
        assert (sha256(path) if path.exists() else None) == before
    with pytest.raises(LayoutVersionError):
        RunReader(tmp_path / "newer.h5")


def _everything(path: Path) -> dict:
    """All metadata, stream data and journal fields of a run, read through its checksums."""
    with RunReader(path) as r:
        r.verify()
        out = {"meta": r.metadata(), "streams": {s: r.stream(s) for s in r.streams()}}
        out["calls"] = [(c.op, c.t_chip, c.fields) for c in r.journal]
        out["meta"].pop("path")
    return out


def _assert_equal(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_equal(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_equal(x, y)
    else:
        np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(120)
def test_corruption_anywhere_is_reported_never_read_as_wrong_data(tmp_path: Path) -> None:
    good = tmp_path / "good.h5"
    _make_run(good)
    data = good.read_bytes()
    reference = _everything(good)
    refused = 0
    for frac in np.linspace(0.02, 0.98, 25):
        damaged = bytearray(data)
        at = int(len(data) * frac)
        damaged[at : at + 300] = bytes(b ^ 0x5A for b in damaged[at : at + 300])
        path = tmp_path / f"damaged-{frac:.2f}.h5"
        path.write_bytes(bytes(damaged))
        try:
            seen = _everything(path)
        except RunFileError as exc:
            assert "damaged" in str(exc) and str(path) in str(exc)
            refused += 1
            continue
        _assert_equal(reference, seen)  # the damage hit unused bytes only (free space, padding)
    assert refused >= 12  # most of the file is checksummed metadata and data


def test_h5ls_and_h5dump_read_a_run_file(tmp_path: Path) -> None:
    require("h5ls", "h5dump")
    path = tmp_path / "tools.h5"
    _make_run(path)
    ls = subprocess.run(["h5ls", "-r", str(path)], capture_output=True, text=True)
    assert ls.returncode == 0, ls.stderr
    for name in ("/journal/calls", "/journal/mvm/y", "/streams/s/i", "/journal/set_ldpu/registers", "/journal/apply_pulses/pulses"):
        assert name in ls.stdout
    dump = subprocess.run(["h5dump", "-d", "/journal/calls", str(path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "H5T_ENUM" in dump.stdout and "apply_pulses" in dump.stdout and "read_cells" in dump.stdout
    attrs = subprocess.run(["h5dump", "-a", "/hil_layout", str(path)], capture_output=True, text=True)
    assert attrs.returncode == 0 and '"hil-run"' in attrs.stdout
    regs = subprocess.run(["h5dump", "-d", "/journal/set_ldpu/registers", str(path)], capture_output=True, text=True)
    assert regs.returncode == 0 and '"scale"' in regs.stdout and '"offset"' in regs.stdout
    data = subprocess.run(["h5dump", "-d", "/streams/s/i", str(path)], capture_output=True, text=True)
    assert data.returncode == 0 and "(0): 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in data.stdout


def test_plain_h5py_reads_a_run_file_without_our_package(tmp_path: Path) -> None:
    path = tmp_path / "plain.h5"
    _make_run(path)
    script = textwrap.dedent(f"""
        import json, sys
        import h5py, numpy as np
        with h5py.File({str(path)!r}, "r") as f:
            calls = f["journal/calls"][:]
            ops = h5py.check_enum_dtype(f["journal/calls"].dtype["op"])
            names = {{v: k for k, v in ops.items()}}
            mvm = f["journal/mvm"]
            first = mvm["call"][0]
            shape = (int(first["n_cores"]), int(first["batch"]), int(first["cols"]))
            first_y = mvm["y"][: int(np.prod(shape))].reshape(shape)
            pulses = f["journal/apply_pulses/pulses"][:]
            out = {{
                "layout": f.attrs["hil_layout"], "version": int(f.attrs["hil_layout_version"]),
                "config": json.loads(f.attrs["config_json"]) if "config_json" in f.attrs else None,
                "ops": [names[int(o)] for o in calls["op"]], "y_shape": list(first_y.shape),
                "stream": f["streams/s/i"][:].tolist(), "hil_imported": "hil" in sys.modules,
                "pulse_fields": list(pulses.dtype.names), "n_pulses": int(pulses.shape[0]),
            }}
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["layout"] == "hil-run" and out["version"] == LAYOUT_VERSION
    assert out["ops"][:3] == ["apply_pulses", "read_devices", "mvm"] and len(out["ops"]) == 9
    assert out["y_shape"] == [2, 3, 16] and out["stream"] == list(range(10))
    assert out["hil_imported"] is False
    assert out["pulse_fields"] == ["core", "row", "col", "device", "kind", "amplitude_ua", "width_ns"] and out["n_pulses"] == 512


def test_a_call_that_raised_is_journaled_and_raises_again_on_replay(tmp_path: Path) -> None:
    from emulator import EmulatedChip
    from hil.errors import ChipCommunicationError

    class FlakyLink(EmulatedChip):
        """Loses the second cell read, like a dropped link to a board."""

        reads = 0

        def _read_cells(self, core, row, col):
            self.reads += 1
            if self.reads == 2:
                raise ChipCommunicationError("link dropped during read_cells")
            return super()._read_cells(core, row, col)

    def protocol(chip) -> list:
        out = []
        for _ in range(3):
            try:
                out.append(chip.read_cells([0, 1], [2, 3], [4, 5]))
            except ChipCommunicationError as exc:
                out.append(str(exc))
        return out

    path = tmp_path / "err.h5"
    w = _writer(path)
    live = protocol(RecordingChip(FlakyLink("hermes", seed=2, geometry=GEO), w))
    w.close(status="success")
    assert live[1] == "link dropped during read_cells"
    with RunReader(path) as r:
        assert r.journal.errors == {1: ("hil.errors.ChipCommunicationError", "link dropped during read_cells")}
        assert r.journal.call(1).error is not None and r.journal.call(0).error is None
    replayed = protocol(ReplayChip(path))
    assert replayed[1] == live[1]
    np.testing.assert_array_equal(replayed[0], live[0])
    np.testing.assert_array_equal(replayed[2], live[2])

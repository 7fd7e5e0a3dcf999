"""The operation table: every chip operation is declared once, and recording, replay, re-execution
and the run-file layout all cover every entry."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil import Chip, Geometry, PulseKind
from hil.journal import RecordingChip
from hil.ops import OP_NAMES, OPS, implement_ops
from hil.replay import ReplayChip, execute_call, reexecute_journal
from hil.runs import RunReader, RunWriter
from hil.runs.layout import JOURNAL_OPS, OP_DTYPE
from hil.testing import FakeChip

GEO = Geometry(n_cores=2, n_rows=8, n_cols=6)


def every_op(chip: Chip) -> dict[str, Any]:
    """One public call per operation of the table; returns the results by op name."""
    out: dict[str, Any] = {}
    out["now"] = chip.now()
    chip.sleep(2.5)
    out["sleep"] = None
    chip.apply_pulses([0, 1, 1], [1, 2, 3], [0, 1, 5], [0, 2, 3], kind=PulseKind.PARTIAL, amplitude_ua=[300.0, 400, 500],
                      width_ns=125.0)
    out["apply_pulses"] = None
    out["read_devices"] = chip.read_devices([0, 1], [1, 2], [0, 1], [0, 2])
    out["read_cells"] = chip.read_cells([1, 1], [2, 3], [1, 5])
    x = np.arange(-3, 5, dtype=np.int8).reshape(1, 8).repeat(3, axis=0)
    out["mvm"] = chip.mvm(x, [1, 0])
    chip.set_ldpu([0], scale=0.5, offset=1.0, relu=True)
    out["set_ldpu"] = None
    out["get_ldpu"] = chip.get_ldpu([0, 1])
    return out


def test_the_table_names_each_backend_method_of_the_contract_once() -> None:
    abstract = {name for name in Chip.__abstractmethods__ if name != "info"}
    assert {op.method for op in OPS.values()} == abstract
    assert len({op.code for op in OPS.values()}) == len(OPS)
    assert {op.code: name for name, op in OPS.items()} == OP_NAMES
    # Layout version 1 fixed these codes; changing one breaks every existing run file.
    assert JOURNAL_OPS == {"now": 0, "sleep": 1, "apply_pulses": 2, "read_devices": 3, "read_cells": 4, "mvm": 5,
                           "set_ldpu": 6, "get_ldpu": 7}
    from h5py import check_enum_dtype

    assert check_enum_dtype(OP_DTYPE) == JOURNAL_OPS


def test_each_op_packs_exactly_its_declared_argument_fields() -> None:
    regs = FakeChip(GEO).get_ldpu([0])
    x = np.zeros((2, 3, GEO.n_rows), dtype=np.int8)
    a = np.arange(2)
    from hil.chip import PulseBatch

    batch = PulseBatch(a, a, a, a, a.astype(np.uint8), a * 1.0, a * 1.0)
    samples = {
        "now": (), "sleep": (1.0,), "apply_pulses": (batch,), "read_devices": (a, a, a, a), "read_cells": (a, a, a),
        "mvm": (x, a, "adc", "4phase"), "set_ldpu": (a[:1], regs), "get_ldpu": (a,),
    }
    assert set(samples) == set(OPS)
    for name, op in OPS.items():
        params = [p for p in inspect.signature(getattr(Chip, op.method)).parameters if p != "self"]
        assert len(params) == len(samples[name]), name
        fields = op.pack(*samples[name])
        assert tuple(fields) == op.args, name
        assert not set(op.args) & set(op.results), name
        assert len(op.unpack(fields)) == len(params), name


def test_recording_and_replay_get_every_backend_method_from_the_table() -> None:
    for cls in (RecordingChip, ReplayChip):
        assert not cls.__abstractmethods__
        for op in OPS.values():
            assert callable(getattr(cls, op.method)), (cls.__name__, op.method)

    @implement_ops
    class Echo(Chip):
        geometry = GEO
        info = None  # type: ignore[assignment]

        def _op(self, op: Any, *args: Any) -> Any:
            self.last = (op.name, args)

    echo = Echo()
    echo.sleep(1.0)
    assert echo.last == ("sleep", (1.0,))


def test_every_op_round_trips_through_recording_the_file_replay_and_reexecution(tmp_path: Path) -> None:
    live = FakeChip(GEO, seed=4)
    writer = RunWriter(tmp_path / "ops.h5", {"run_id": "ops", "protocol": "unit", "geometry_json": GEO.model_dump_json()})
    recorded = every_op(RecordingChip(live, writer))
    writer.close(status="success")
    with RunReader(tmp_path / "ops.h5") as reader:
        journal = reader.journal
        assert [c.op for c in journal] == list(OPS)  # the layout stores every op, in call order
        for call in journal:
            op = OPS[call.op]
            assert set(call.fields) == set(op.args) | set(op.results), call.op
            assert np.isfinite(call.t_chip)
        # Replay answers every op from the journal with the recorded result.
        replayed = every_op(ReplayChip(reader))
        # Re-execution on a fresh chip of the same seed reproduces every recorded result.
        fresh = FakeChip(GEO, seed=4)
        assert reexecute_journal(fresh, reader) == len(OPS)
        np.testing.assert_array_equal(fresh.conductances(), live.conductances())
        again = FakeChip(GEO, seed=4)
        for call in journal:
            result = execute_call(again, call.op, call.fields)
            for name, value in OPS[call.op].result_fields(result).items():
                np.testing.assert_array_equal(np.asarray(value), np.asarray(call.fields[name]))
    for name in OPS:
        a, b = recorded[name], replayed[name]
        if name == "get_ldpu":
            for part in ("scale", "offset", "relu"):
                np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
                assert getattr(a, part).dtype == getattr(b, part).dtype
        elif a is not None:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert np.asarray(a).dtype == np.asarray(b).dtype, name


def test_an_op_past_the_end_or_differing_is_named(tmp_path: Path) -> None:
    from hil.errors import ReplayMismatchError

    writer = RunWriter(tmp_path / "r.h5", {"run_id": "r", "protocol": "unit", "geometry_json": GEO.model_dump_json()})
    rec = RecordingChip(FakeChip(GEO), writer)
    rec.read_cells([0], [1], [2])
    writer.close(status="success")
    with RunReader(tmp_path / "r.h5") as reader:
        replay = ReplayChip(reader)
        with pytest.raises(ReplayMismatchError, match=r"call #0 .*argument 'row' differs"):
            replay.read_cells([0], [2], [2])
        replay = ReplayChip(reader)
        replay.read_cells([0], [1], [2])
        with pytest.raises(ReplayMismatchError, match=r"sleep\(seconds=1.0\) goes past the end"):
            replay.sleep(1.0)


def test_every_journaled_call_is_announced_with_a_key_from_the_run_and_its_index(tmp_path: Path) -> None:
    class Keyed(FakeChip):
        def __init__(self) -> None:
            super().__init__(GEO)
            self.keys: list[str] = []

        def begin_call(self, key: str) -> None:
            self.keys.append(key)

    live = Keyed()
    writer = RunWriter(tmp_path / "k.h5", {"run_id": "k", "protocol": "unit", "geometry_json": GEO.model_dump_json()})
    every_op(RecordingChip(live, writer, run_key="20260101-000000-unit-abc123"))
    writer.close(status="success")
    assert live.keys == [f"20260101-000000-unit-abc123:{i}" for i in range(len(OPS))]
    # A resume answering from the journal announces only the calls that reach the live chip, with
    # the indices they have in the run: a repeated call gets the key it had before the crash.
    with RunReader(tmp_path / "k.h5") as reader:
        resumed = Keyed()
        w2 = RunWriter(tmp_path / "k2.h5", {"run_id": "k", "protocol": "unit"})
        chip = RecordingChip(ReplayChip(reader, live=resumed), w2, run_key="20260101-000000-unit-abc123")
        every_op(chip)
        chip.sleep(1.0)
        w2.close(status="success")
    assert resumed.keys == [f"20260101-000000-unit-abc123:{len(OPS)}"]


def test_mvm_calls_of_mixed_sizes_journal_exactly_what_was_sent_and_returned(tmp_path: Path) -> None:
    """Large and small MVM calls interleaved, the caller reusing one input buffer: the journal holds each
    call's own inputs and results (a writer that batches large tables must not mix them up)."""
    geo = Geometry(n_cores=2, n_rows=256, n_cols=256)
    live = FakeChip(geo, seed=2)
    writer = RunWriter(tmp_path / "mix.h5", {"run_id": "mix", "protocol": "unit", "geometry_json": geo.model_dump_json()})
    chip = RecordingChip(live, writer)
    rng = np.random.default_rng(7)
    buf = np.empty((2, 160, 256), dtype=np.int8)
    sent, got = [], []
    for i, batch in enumerate([160, 2, 160, 160, 1, 3, 160, 2, 160, 1]):
        x = buf[:, :batch]
        x[...] = rng.integers(-127, 128, x.shape)  # the same buffer, overwritten for every call
        sent.append(x.copy())
        got.append(np.asarray(chip.mvm(x, [0, 1])).copy())
        if i == 4:
            writer.flush()  # a flush between calls too
    writer.close(status="success")
    with RunReader(tmp_path / "mix.h5") as reader:
        calls = [c for c in reader.journal if c.op == "mvm"]
        assert len(calls) == len(sent)
        for k, (call, x, y) in enumerate(zip(calls, sent, got, strict=True)):
            np.testing.assert_array_equal(call.fields["x"].reshape(x.shape), x, err_msg=f"call {k} x")
            np.testing.assert_array_equal(call.fields["y"].reshape(y.shape), y, err_msg=f"call {k} y")

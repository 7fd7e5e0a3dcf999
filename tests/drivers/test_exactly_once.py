"""Exactly once on the lab path: a killed or terminated run, resumed, executes no board call twice.

The run machinery announces each journaled call (``Chip.begin_call("<run_id>:<index>")``); the lab chip
derives that call's request id from the key, so ``hil resume`` re-sends a call that the killed run made
but had not journaled under the same id, and the board answers it from its reply memory.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hil
from drivers.board import BoardAuthError, LabChip, ReplyEvictedError, RequestConflictError
from emulator import EmulatedChip
from emulator.server import ServerThread
from hil.board_protocol import _RID_RE, encode_message, join_chunks, rid_for_call_key
from hil.runs import RunReader
from tests.hil.conftest import popen_hil, run_hil_subprocess

from .conftest import SMALL, free_port, start_server_process

engine = pytest.importorskip("hil.runner")

STEPS = 12
SEED = 5
CHIP = hil.Geometry(n_cores=2, n_rows=16, n_cols=16)
EMULATOR_SPEC = "emulator:hermes,cores=2,rows=16,cols=16"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """test-steps on the in-process emulator: the data every lab run (interrupted or not) must reproduce."""
    import tests.hil.helper_protocols  # noqa: F401 - registers test-steps

    res = engine.run_protocol("test-steps", chip=EMULATOR_SPEC, sets=[f"steps={STEPS}"], seed=SEED,
                              out=tmp_path_factory.mktemp("ref"), progress=False)
    assert res.status == "success"
    return res.path


def board_stats(port: int) -> dict[str, int]:
    chip = LabChip(f"127.0.0.1:{port}")
    try:
        return chip.board_stats()
    finally:
        chip.close()


def pulses_in(path: Path) -> int:
    with RunReader(path) as r:
        return int(np.sum(r.journal.calls["op"] == 2))  # journal code 2: apply_pulses


def assert_same_run_data(ref: Path, path: Path) -> None:
    """Streams (every column), summary, and the journal's operations and arguments of ``path`` equal ``ref``'s."""
    with RunReader(ref) as a, RunReader(path) as b:
        assert b.status == "success" and a.summary == b.summary
        assert a.streams() == b.streams()
        for stream in a.streams():
            sa, sb = a.stream(stream), b.stream(stream)
            for col in sa:
                np.testing.assert_array_equal(sa[col], sb[col], err_msg=f"{stream}.{col}")
        ja, jb = a.journal, b.journal
        assert len(ja) == len(jb)
        np.testing.assert_array_equal(ja.calls["op"], jb.calls["op"])
        for i in range(len(ja)):
            ca, cb = ja.call(i), jb.call(i)
            for name, value in ca.fields.items():
                np.testing.assert_array_equal(value, cb.fields[name], err_msg=f"call {i} {ca.op}.{name}")


def sigkill_then_resume(tmp_path: Path, server_process: list) -> tuple[Path, dict[str, int], int, int]:
    """test-steps on a board process, SIGKILLed at step 9 with calls not yet journaled, then `hil resume`.

    Returns the run file, the board's counters after the resume, the pulse batches the board had
    executed at the kill and those the journal held then.
    """
    port = free_port()
    server_process.append(start_server_process(port, seed=SEED, geometry=CHIP))
    spec = f"lab:127.0.0.1:{port}"
    proc = run_hil_subprocess(
        "run", "test-steps", "--chip", spec, "--set", f"steps={STEPS}", "--seed", str(SEED), "--out", str(tmp_path),
        env={"HIL_TEST_KILL_AT_STEP": "9", "HIL_TEST_KILL_WAIT_S": "0"},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (path,) = tmp_path.glob("*.h5")
    executed_at_kill = board_stats(port)["executed_pulse"]
    with RunReader(path) as r:
        calls = len(r.journal)
    # Steps 0-8 made 45 journaled calls; the journal reaches the disk every 0.25 s, so the last ones
    # are missing unless a flush fell into the moment between the last call and the kill.
    assert calls < 45, "the kill left no unjournaled call: this test would prove nothing (a rare timing; rerun)"
    journaled = pulses_in(path)
    proc = run_hil_subprocess("resume", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return path, board_stats(port), executed_at_kill, journaled


def test_sigkilled_lab_run_resumed_executes_every_pulse_once(tmp_path: Path, uninterrupted: Path, server_process) -> None:
    path, stats, executed_at_kill, journaled = sigkill_then_resume(tmp_path, server_process)
    assert executed_at_kill == 9 and journaled <= executed_at_kill  # steps 0-8 each pulsed once
    # As many pulse batches as the uninterrupted run made: the lost ones were answered from memory.
    assert stats["executed_pulse"] == pulses_in(uninterrupted) == STEPS
    assert stats["replayed"] >= executed_at_kill - journaled  # (a lost clock read or read-back counts too)
    assert_same_run_data(uninterrupted, path)


def test_resumed_journal_has_the_original_chip_time_of_calls_answered_from_memory(
    tmp_path: Path, uninterrupted: Path, server_process
) -> None:
    path, _, _, _ = sigkill_then_resume(tmp_path, server_process)
    with RunReader(uninterrupted) as a, RunReader(path) as b:
        np.testing.assert_array_equal(a.journal.calls["t_chip"], b.journal.calls["t_chip"])


class SlowPulses(EmulatedChip):
    """An emulated chip whose pulse batches take ``delay_s`` of wall time; counts executed batches."""

    def __init__(self, *a, delay_s: float = 0.0, **kw) -> None:
        super().__init__(*a, **kw)
        self.delay_s = delay_s
        self.batches = 0
        self.started = threading.Event()

    def _apply_pulses(self, batch) -> None:
        self.batches += 1
        if self.batches == 4:
            self.started.set()
            time.sleep(self.delay_s)
        super()._apply_pulses(batch)


def sigterm_inside_a_pulse_then_resume(tmp_path: Path) -> tuple[Path, SlowPulses, dict[str, int]]:
    """Run test-steps on a board whose 4th pulse batch is slow, SIGTERM the run inside it, resume in process."""
    chip = SlowPulses.from_spec("hermes,cores=2,rows=16,cols=16", seed=SEED)
    chip.delay_s = 1.0
    with ServerThread(chip) as srv:
        proc = popen_hil("run", "test-steps", "--chip", f"lab:127.0.0.1:{srv.port}", "--set", f"steps={STEPS}",
                         "--seed", str(SEED), "--out", str(tmp_path))
        try:
            assert chip.started.wait(120), "the run never reached its 4th pulse batch"
            proc.send_signal(signal.SIGTERM)  # lands while the client waits for the 4th batch's reply
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode != 0, out + err
        (path,) = tmp_path.glob("*.h5")
        with RunReader(path) as r:
            assert r.status == "abort"
        assert pulses_in(path) == 3  # the interrupted 4th batch is not in the journal, but the board applied it
        chip.delay_s = 0.0
        res = engine.resume_run(path)
        assert res.status == "success", res.message
        return path, chip, dict(srv.server.stats)


def test_sigterm_inside_a_pulse_call_then_resume_executes_it_once(tmp_path: Path, uninterrupted: Path) -> None:
    path, chip, stats = sigterm_inside_a_pulse_then_resume(tmp_path)
    assert chip.batches == STEPS  # the 4th batch was answered from memory, not applied again
    assert stats["replayed"] >= 1
    assert_same_run_data(uninterrupted, path)


# ---------------------------------------------------------------------- the pieces
def test_call_keys_map_to_distinct_valid_request_ids():
    ids = {rid_for_call_key(f"{run}:{i}") for run in ("20250101-000000-ab12", "20250101-000000-ab13") for i in range(500)}
    assert len(ids) == 1000 and all(_RID_RE.fullmatch(r) for r in ids)
    assert rid_for_call_key("run-1:7") == rid_for_call_key("run-1:7") and rid_for_call_key("run-1:7").endswith("-7")
    assert _RID_RE.fullmatch(rid_for_call_key("no index here " * 20))


@pytest.fixture
def board():
    with ServerThread(EmulatedChip(seed=3, geometry=SMALL), cache_bytes=64 * 2**10) as srv:
        yield srv


def pulse(chip: hil.Chip, amp: float = 400.0) -> None:
    chip.apply_pulses([0, 1], 2, 3, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=amp, width_ns=125.0)


def test_a_repeated_key_is_answered_from_memory_with_the_original_timing(board):
    lab = LabChip(board.address)
    lab.begin_call("run-a:0")
    pulse(lab)
    assert lab.recorded_timing() is None  # a live call
    lab.sleep(100.0)
    other = LabChip(board.address)  # a resumed process: a new session, the same key
    other.begin_call("run-a:0")
    pulse(other)
    timing = other.recorded_timing()
    assert timing is not None and timing.t_chip < 100.0 and timing.t_wall <= time.time()
    assert board.server.stats["executed_pulse"] == 1 and other.stats["replayed"] == 1
    other.begin_call("run-a:1")
    pulse(other)
    assert board.server.stats["executed_pulse"] == 2 and other.recorded_timing() is None
    lab.close()
    other.close()


def test_a_reused_key_with_a_different_request_is_refused_and_not_executed(board):
    lab = LabChip(board.address)
    lab.begin_call("run-b:0")
    pulse(lab, 400.0)
    lab.begin_call("run-b:0")
    with pytest.raises(RequestConflictError, match=r"CONFLICT.*already used for a different PULSE request; this PULSE was not executed"):
        pulse(lab, 450.0)
    lab.begin_call("run-b:0")
    with pytest.raises(RequestConflictError, match="already used for PULSE"):
        lab.read_cells([0], 0, 0)
    assert board.server.stats["executed_pulse"] == 1 and board.server.stats["conflicts"] == 2
    lab.close()


def test_an_evicted_reply_fails_the_call_clearly_and_is_never_executed_again(board):
    lab = LabChip(board.address)
    lab.begin_call("run-c:0")
    pulse(lab)
    for _ in range(30):  # about 4 KiB replies each
        lab.read_cells(*hil.grid([0, 1], range(SMALL.n_rows), range(SMALL.n_cols)))
    assert board.server.cache.nbytes <= 64 * 2**10
    lab.begin_call("run-c:0")
    with pytest.raises(ReplyEvictedError, match=r"STALE.*executed by this board but its reply is no longer kept.*start it again"):
        pulse(lab)
    assert board.server.stats["executed_pulse"] == 1 and board.server.stats["stale"] == 1
    assert lab.now() > 0.0  # the chip goes on; only that call could not be answered
    lab.close()


def test_evicted_run_calls_are_remembered_whatever_their_number():
    from emulator.server import CachedReply, ReplyCache

    cache = ReplyCache(max_bytes=10_000, forget_limit=10)
    rid = [rid_for_call_key(f"run-d:{i}") for i in range(1000)]
    for r in rid:
        cache.put(r, CachedReply("NOW", b"", [b"OK x\n"], 0))
    assert len(cache) < 20 and all(cache.forgotten(r) for r in rid[:900])
    assert not cache.forgotten(rid_for_call_key("run-d:1000")) and not cache.forgotten(rid_for_call_key("run-e:3"))


def test_the_key_is_taken_by_the_next_call_even_when_it_fails_before_sending(board):
    lab = LabChip(board.address, max_pulse_ua=300.0)
    lab.begin_call("run-f:0")
    with pytest.raises(hil.SafetyLimitError):
        pulse(lab, 400.0)  # refused here: nothing sent
    t = lab.now()  # a clock read the run machinery makes between calls: a session id, executed
    lab.sleep(5.0)
    assert lab.now() == t + 5.0
    res = lab._ensure_connected()
    rid = rid_for_call_key("run-f:0")
    res.write_raw(join_chunks(encode_message("NOW", rid)))
    assert lab._read_reply(res, rid).params.get("cached") is None  # the key was never used
    lab.close()


def test_scripts_without_keys_keep_session_ids(board):
    lab = LabChip(board.address)
    lab.now()
    (rid,) = [r for r in board.server.cache._replies if r.startswith(lab._session)]
    assert rid == f"{lab._session}-1"
    lab.close()


def test_auth_errors_are_not_retried_for_the_whole_window():
    with ServerThread(EmulatedChip(seed=3, geometry=SMALL), token=b"s3cret-token-0123456789") as srv:
        t0 = time.monotonic()
        with pytest.raises(BoardAuthError, match="requires a token"):
            LabChip(srv.address, reconnect_timeout_s=30, token_file=None)
        assert time.monotonic() - t0 < 5

"""Faults on the lab path: dropped connections retried without double application, board restarts."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import hil
from drivers.board import BoardRestartedError, LabChip
from emulator import EmulatedChip
from emulator.server import ServerThread
from hil.errors import ChipCommunicationError
from hil.protocol import MemoryRunLog

from .conftest import SMALL, free_port, start_server_process
from .helpers import FlakyLink, MiniConfig, mini_protocol, nth, same_logs


def reference_run(seed: int = 11) -> tuple[dict, MemoryRunLog]:
    run = MemoryRunLog(seed=4)
    return mini_protocol(EmulatedChip(seed=seed, geometry=SMALL), MiniConfig(), run), run


@pytest.mark.parametrize(
    ("where", "rules"),
    [
        ("reply of the 3rd pulse batch lost after it was applied", {"drop_reply": nth(b"PULSE", 3)}),
        ("3rd pulse batch lost before it reached the board", {"drop_request": nth(b"PULSE", 3)}),
        ("reply of the first MVM lost", {"drop_reply": nth(b"MVM", 1)}),
    ],
)
def test_transient_drop_mid_protocol_goes_on_without_double_application(where, rules):
    expected, expected_run = reference_run()
    with ServerThread(EmulatedChip(seed=11, geometry=SMALL)) as srv:
        link = FlakyLink(srv.port, **rules)
        lab = LabChip(link.address, timeout_s=10, reconnect_timeout_s=10)
        run = MemoryRunLog(seed=4)
        got = mini_protocol(lab, MiniConfig(), run)
        stats = srv.server.stats
        lab.close()
        link.close()
    assert link.cuts == 1, where
    assert lab.stats["retries"] == 1 and lab.stats["connections"] == 2
    # A pulse batch applied twice would change every later verify read, MVM and the summary.
    assert got == expected
    same_logs(expected_run, run)
    lost_reply = "drop_reply" in rules
    assert stats["replayed"] == (1 if lost_reply else 0)


def test_retry_of_a_request_still_running_waits_for_it():
    # A slow board: the reply timeout fires while the request runs; the retry must not run it again.
    applied = []

    class SlowChip(EmulatedChip):
        def _apply_pulses(self, batch):
            time.sleep(0.6)
            super()._apply_pulses(batch)
            applied.append(len(batch))

    with ServerThread(SlowChip(seed=3, geometry=SMALL)) as srv:
        lab = LabChip(srv.address, timeout_s=0.25, reconnect_timeout_s=10, backoff_initial_s=0.01)
        lab.apply_pulses([0, 1], 2, 3, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=400.0, width_ns=125.0)
        counts = lab.read_devices([0, 1], 2, 3, 0)
        stats = dict(srv.server.stats)
        lab.close()
    ref = EmulatedChip(seed=3, geometry=SMALL)
    ref.apply_pulses([0, 1], 2, 3, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=400.0, width_ns=125.0)
    np.testing.assert_array_equal(counts, ref.read_devices([0, 1], 2, 3, 0))
    assert lab.stats["retries"] >= 1 and stats["replayed"] >= 1
    assert applied == [2]  # the batch ran once although it was sent twice
    assert stats["executed"] == 4  # HELLO per connection (2), PULSE, READDEV


class KillAt(MemoryRunLog):
    """A run log that calls ``action`` when the protocol reports progress step ``step``."""

    def __init__(self, step: int, action, **kw):
        super().__init__(**kw)
        self.step, self.action = step, action

    def progress(self, done, total=None, desc=""):
        super().progress(done, total, desc)
        if done == self.step:
            self.action()


def test_board_killed_and_restarted_mid_protocol_fails_clearly(server_process):
    port = free_port()
    server_process.append(start_server_process(port, seed=11))

    def kill_and_restart():
        server_process[0].kill()
        server_process[0].wait()
        # Restart in the background while the protocol already tries to go on.
        threading.Thread(target=lambda: server_process.append(start_server_process(port, seed=11)), daemon=True).start()

    lab = LabChip(f"127.0.0.1:{port}", timeout_s=2, reconnect_timeout_s=60)
    run = KillAt(2, kill_and_restart, seed=4)
    t0 = time.monotonic()
    with pytest.raises(BoardRestartedError, match=r"restarted while this run was using it \(boot id \w+ -> \w+\).*lost its whole chip state.*start it again"):
        mini_protocol(lab, MiniConfig(), run)
    assert time.monotonic() - t0 < 60
    assert lab.stats["retries"] >= 1
    assert "verify" not in run.streams  # the protocol stopped at its next chip call
    with pytest.raises(ChipCommunicationError, match="restarted"):
        lab.now()  # and the chip stays refused: its state assumptions are void
    lab.close()


def test_board_killed_for_good_fails_after_the_reconnect_budget(server_process):
    port = free_port()
    server_process.append(start_server_process(port, seed=11))
    lab = LabChip(f"127.0.0.1:{port}", timeout_s=2, reconnect_timeout_s=1.0)
    lab.sleep(1.0)
    server_process[0].kill()
    server_process[0].wait()
    t0 = time.monotonic()
    with pytest.raises(ChipCommunicationError, match=r"did not answer PULSE \(request \w+-\d+\) after \d+ attempt\(s\) over 1 s"):
        lab.apply_pulses([0], 0, 0, 0, kind=hil.PulseKind.SET, amplitude_ua=125.0, width_ns=250.0)
    assert time.monotonic() - t0 < 5.0
    lab.close()


def test_replies_are_remembered_within_bounds_and_old_ids_are_refused():
    with ServerThread(EmulatedChip(seed=1, geometry=SMALL), cache_entries=2) as srv:
        lab = LabChip(srv.address)
        first_rid = f"{lab._session}-{lab._seq + 1}"
        lab.sleep(1.0)
        lab.sleep(1.0)
        lab.sleep(1.0)
        # Re-send the first request by hand with its old id: executed once, so not run again.
        from hil.board_protocol import encode_message, join_chunks

        res = lab._ensure_connected()
        res.write_raw(join_chunks(encode_message("SLEEP", first_rid, {"s": 1.0})))
        reply = lab._read_reply(res, first_rid)
        assert reply.verb == "ERR" and reply.get_str("code") == "STALE"
        assert lab.now() == 3.0
        lab.close()

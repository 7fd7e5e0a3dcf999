"""Hosts that cannot be abused: connection cap, timeouts, memory budget, pulse repeats, token, strict parameters."""

from __future__ import annotations

import logging
import socket
import time

import numpy as np
import pytest

import hil
from drivers.board import BoardAuthError, LabChip
from emulator import EmulatedChip
from emulator.server import BoardServer, ServerThread, is_loopback
from hil.board_protocol import encode_message, join_chunks
from hil.errors import ChipCommunicationError, ChipInputError, ConfigError

from .conftest import SMALL, free_port, start_server_process
from .test_board_fuzz import exchange

TOKEN = "0123456789abcdef-test-token"


def recv_all(sock: socket.socket, timeout_s: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or ``timeout_s`` passes)."""
    sock.settimeout(timeout_s)
    out = bytearray()
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return bytes(out)


@pytest.fixture
def chip():
    return EmulatedChip(seed=7, geometry=SMALL)


def test_connections_beyond_the_cap_get_busy_and_are_closed(chip):
    with ServerThread(chip, max_connections=3) as srv:
        held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(3)]
        time.sleep(0.2)
        with socket.create_connection(("127.0.0.1", srv.port)) as extra:
            reply = recv_all(extra)
        assert reply.startswith(b"ERR - code=BUSY") and b"at most 3 connections" in reply
        with pytest.raises(ChipCommunicationError, match=r"did not answer HELLO .*closed the connection \(BUSY\)"):
            LabChip(srv.address, reconnect_timeout_s=0.3)
        held.pop().close()
        time.sleep(0.2)
        lab = LabChip(srv.address)  # a freed slot serves again
        assert lab.now() == 0.0
        assert srv.server.stats["refused_connections"] >= 2
        lab.close()
        for s in held:
            s.close()


def test_at_the_cap_a_long_idle_connection_makes_room_and_an_idle_lab_chip_reconnects(chip):
    with ServerThread(chip, max_connections=2, evict_idle_s=0.3) as srv:
        lab = LabChip(srv.address)
        lab.sleep(1.0)
        squatter = socket.create_connection(("127.0.0.1", srv.port))
        time.sleep(0.5)  # both connections are idle now; the lab chip's is the older one
        newcomer = LabChip(srv.address)  # evicts the longest-idle connection instead of being refused
        assert newcomer.now() == 1.0
        lab.sleep(1.0)  # its connection was closed: it reconnects (evicting the squatter) and goes on
        assert lab.now() == 2.0 and lab.stats["connections"] == 2
        assert srv.server.stats["evicted"] >= 2 and srv.server.stats["refused_connections"] == 0
        assert b"closed to make room for a new connection" in recv_all(squatter)
        for c in (lab, newcomer):
            c.close()
        squatter.close()


def test_idle_connections_are_closed_and_the_lab_chip_reconnects_transparently(chip):
    with ServerThread(chip, idle_timeout_s=0.3) as srv:
        with socket.create_connection(("127.0.0.1", srv.port)) as idle:
            t0 = time.monotonic()
            reply = recv_all(idle)
            assert reply.startswith(b"ERR - code=PROTOCOL") and b"no request for 0.3 s" in reply
            assert 0.25 < time.monotonic() - t0 < 3
        lab = LabChip(srv.address)
        lab.sleep(1.0)
        time.sleep(0.6)  # the board closes the idle connection meanwhile
        lab.sleep(1.0)
        assert lab.now() == 2.0 and lab.stats["connections"] == 2
        assert srv.server.stats["idle_closed"] >= 2 and srv.server.stats["executed_sleep"] == 2
        lab.close()


def test_a_trickled_command_line_is_cut_after_the_line_timeout(chip):
    with ServerThread(chip, line_timeout_s=0.3) as srv, socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(b"NOW r1 a=")
        t0 = time.monotonic()
        reply = recv_all(s)
        assert b"code=PROTOCOL" in reply and b"command line incomplete after 0.3 s" in reply
        assert time.monotonic() - t0 < 3


def test_a_request_above_the_memory_budget_is_refused_before_its_blocks_are_kept(chip):
    with ServerThread(chip, memory_budget_bytes=8 * 2**20) as srv:
        lab = LabChip(srv.address)
        x = np.ones((2, 4000, SMALL.n_rows), dtype=np.int8)  # 256 KB sent, about 24 MiB of work declared
        with pytest.raises(ChipInputError, match=r"would need about \d+ MiB on the board.*budget is 8 MiB.*Split"):
            lab.mvm(x)
        y = lab.mvm(x[:, :10])  # the same connection goes on
        assert y.shape == (2, 10, SMALL.n_cols) and lab.stats["connections"] == 1
        assert srv.server.stats["limit_refusals"] == 1 and srv.server.stats["executed_mvm"] == 1
        deadline = time.monotonic() + 2.0  # released right after the reply went out
        while srv.server.stats_snapshot()["memory_reserved"] and time.monotonic() < deadline:
            time.sleep(0.01)
        assert srv.server.stats_snapshot()["memory_reserved"] == 0
        lab.close()
        # A declared block is refused from the line alone, before a byte of it is sent.
        line = b"PULSE r1 core=@i1[100000000] row=0 col=0 device=0 kind=2 amp=300.0 width=100.0\n"
        with socket.create_connection(("127.0.0.1", srv.port)) as s:
            s.sendall(line)
            s.settimeout(5)
            assert s.recv(4096).startswith(b"ERR r1 code=LIMIT")


def test_estimates_follow_the_declared_sizes(chip):
    from hil.board_protocol import parse_line

    server = BoardServer(chip)
    small = server.request_bytes(*parse_line(b"PULSE r1 core=@i1[1000] row=0\n"))
    big = server.request_bytes(*parse_line(b"PULSE r1 core=@i1[1000000] row=0\n"))
    assert 1000 * 256 <= small < 1000 * 300 and big == pytest.approx(1000 * small, rel=0.01)
    shared = server.request_bytes(*parse_line(b"MVM r1 x=@i1[100,32] cores=@i1[2]\n"))
    per_core = server.request_bytes(*parse_line(b"MVM r1 x=@i1[2,100,32] cores=@i1[2]\n"))
    assert shared >= 2 * 100 * 64 * 48 and per_core >= 2 * 100 * 64 * 48


def test_repeated_pulses_on_one_device_cannot_hold_the_chip(chip):
    with ServerThread(chip) as srv:
        lab = LabChip(srv.address)
        t0 = time.monotonic()
        with pytest.raises(ChipInputError, match=r"10000 of the 10000 pulses address the same device; .* at most 1024 .*Split"):
            lab.apply_pulses(np.zeros(10_000, dtype=int), 0, 0, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=100.0)
        assert time.monotonic() - t0 < 1.0  # was 2.6-3.8 s of chip time
        assert lab.now() == 0.0 and srv.server.stats["executed_pulse"] == 0
        lab.apply_pulses(np.zeros(8, dtype=int), 0, 0, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=100.0)
        c, r, k, d = hil.grid([0, 1], range(SMALL.n_rows), range(SMALL.n_cols), range(4))
        lab.apply_pulses(c, r, k, d, kind=hil.PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=100.0)  # 8192 distinct: fine
        assert srv.server.stats["executed_pulse"] == 2
        lab.close()


# ---------------------------------------------------------------------- token
@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "board.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def test_token_handshake(chip, token_file, caplog, monkeypatch):
    monkeypatch.delenv("HIL_BOARD_TOKEN", raising=False)
    monkeypatch.delenv("HIL_BOARD_TOKEN_FILE", raising=False)
    with ServerThread(chip, token=TOKEN.encode()) as srv:
        with caplog.at_level(logging.DEBUG):
            lab = LabChip(srv.address, token_file=token_file)
            assert lab.now() == 0.0
            lab.close()
            with pytest.raises(BoardAuthError, match="requires a token"):
                LabChip(srv.address)
            with pytest.raises(BoardAuthError, match="refused the token: authentication failed"):
                LabChip(srv.address, token="wrong-token-0123456789")
        assert TOKEN not in caplog.text and TOKEN not in repr(lab.info.model_dump()) and TOKEN not in repr(vars(lab.info))
        assert srv.server.stats["auth_failures"] == 1
        monkeypatch.setenv("HIL_BOARD_TOKEN", TOKEN)
        spec_chip = LabChip.from_spec(f"127.0.0.1:{srv.port}")  # lab:HOST:PORT with the token from the environment
        assert spec_chip.now() == 0.0
        spec_chip.close()


@pytest.mark.parametrize(
    "data",
    [
        b"PULSE r1 core=@i1[1] row=0 col=0 device=0 kind=2 amp=300.0 width=100.0\n#11\x00\n",
        b"SLEEP r2 s=100.0\n",
        b"*IDN?\n",
        b"AUTH r3 mac=00\n",
        b"STATS r4\n",
    ],
)
def test_nothing_but_the_handshake_is_served_before_authentication(chip, data):
    with ServerThread(chip, token=TOKEN.encode()) as srv:
        reply = exchange(srv.port, data)
        assert b"code=AUTH" in reply, reply
        assert chip.now() == 0.0 and srv.server.stats["executed_pulse"] == 0


def test_an_unauthenticated_connection_is_closed_after_the_auth_timeout(chip):
    with ServerThread(chip, token=TOKEN.encode(), auth_timeout_s=0.3) as srv, socket.create_connection(("127.0.0.1", srv.port)) as s:
        s.sendall(join_chunks(encode_message("HELLO", "h1", {"proto": 1})))
        t0 = time.monotonic()
        reply = recv_all(s)
        assert b"challenge=" in reply and b"info=" not in reply  # no identity before authentication
        assert b"ERR - code=AUTH" in reply and time.monotonic() - t0 < 3


def test_listening_beyond_loopback_needs_a_token(chip, capsys):
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and not is_loopback("0.0.0.0") and not is_loopback("")
    with pytest.raises(ValueError, match=r"refusing to listen on '0\.0\.0\.0' without a token"):
        ServerThread(chip, host="0.0.0.0").start()
    from hil.cli import main as hil_main

    assert hil_main(["emulate", "--host", "0.0.0.0", "--port", "0"]) == 2
    assert "refusing to listen on '0.0.0.0' without a token" in capsys.readouterr().err


def test_bad_token_files_are_refused_without_showing_them(tmp_path, capsys):
    from hil.board_protocol import read_token

    short = tmp_path / "short"
    short.write_text("abc")
    with pytest.raises(ConfigError, match=r"token file .*short holds no usable board token") as exc:
        read_token(short)
    assert "abc" not in str(exc.value).replace(str(tmp_path), "")
    from hil.cli import main as hil_main

    assert hil_main(["emulate", "--port", "0", "--token-file", str(tmp_path / "missing")]) == 2
    assert "cannot read the token file" in capsys.readouterr().err


def test_hil_emulate_with_a_token_file_serves_authenticated_clients_only(token_file, server_process, monkeypatch):
    monkeypatch.delenv("HIL_BOARD_TOKEN", raising=False)
    port = free_port()
    proc = start_server_process(port, seed=1, extra=["--token-file", str(token_file)])
    server_process.append(proc)
    with pytest.raises(BoardAuthError):
        LabChip(f"127.0.0.1:{port}")
    lab = LabChip(f"127.0.0.1:{port}", token_file=token_file)
    assert lab.info.serial == "seed=1"
    lab.close()


# ---------------------------------------------------------------------- strict parameters
@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'SLEEP r1 s="1"\n', b's=\\"1\\" (a quoted string) is not a number'),
        (b"SLEEP r1 s=1_0\n", b"is not a number"),
        (b"SLEEP r1 s=True\n", b"is not a number"),
        (b"PULSE r1 core=@i1[1] row=0 col=0 device=0 kind=@b1[1] amp=300.0 width=100.0\n#11\x00#11\x01\n",
         b"kind=@b1[1] is not an array of integers"),
        (b"PULSE r1 core=@i1[1] row=0 col=0 device=0 kind=1.0 amp=300.0 width=100.0\n#11\x00\n", b"kind='1.0' is not an integer"),
        (b"PULSE r1 core=@i1[1] row=0 col=0 device=0 kind=1 amp=\"300\" width=100.0\n#11\x00\n", b"is not a number"),
        (b"PULSE r1 core=@f4[1] row=0 col=0 device=0 kind=1 amp=300.0 width=100.0\n#14\x00\x00\x00\x00\n",
         b"core=@f4[1] is not an array of integers"),
        (b"READDEV r1 core=@i1[1] row=@b1[1] col=0 device=0\n#11\x00#11\x00\n", b"row=@b1[1] is not an array of integers"),
        (b"LDPU.SET r1 cores=@i1[1] scale=1.0 offset=0 relu=2\n#11\x00\n", b"relu='2' is not a boolean"),
    ],
)
def test_parameters_are_parsed_strictly(chip, data, match):
    with ServerThread(chip) as srv:
        reply = exchange(srv.port, data)
        assert reply.startswith(b"ERR r1 code=INPUT") and match in reply, reply
        assert chip.now() == 0.0 and srv.server.stats["executed"] == 0


# ---------------------------------------------------------------------- a dead board: one reconnect window
def test_a_dead_board_fails_within_one_reconnect_window(server_process, tmp_path):
    engine = pytest.importorskip("hil.runner")
    from hil.protocol import register_protocol

    from .helpers import MiniConfig

    port = free_port()
    server_process.append(start_server_process(port, seed=2))
    lab = LabChip(f"127.0.0.1:{port}", reconnect_timeout_s=1.0, timeout_s=5)
    timings = {}

    def killing_protocol(chip, config, run):
        chip.sleep(1.0)
        server_process[0].kill()
        server_process[0].wait()
        timings["t0"] = time.monotonic()
        chip.sleep(1.0)

    import hil.protocol as hp

    saved = dict(hp._REGISTRY)
    try:
        register_protocol("test-dead-board", MiniConfig)(killing_protocol)
        res = engine.run_protocol("test-dead-board", chip=lab, chip_spec="lab:test", out=tmp_path, progress=False)
    finally:
        hp._REGISTRY.clear()
        hp._REGISTRY.update(saved)
    elapsed = time.monotonic() - timings["t0"]
    assert res.status == "fail" and "did not answer SLEEP" in res.message and "over 1 s" in res.message
    assert elapsed < 2.0, elapsed  # one window (1 s), not one per call the run machinery makes after the failure
    t0 = time.monotonic()
    with pytest.raises(ChipCommunicationError, match="has given up on the board"):
        lab.now()
    assert time.monotonic() - t0 < 0.1
    lab.close()


def test_bounded_flood_and_fuzz_leave_the_board_serving_within_its_memory(server_process):
    from .flood_board import flood, vm_kib

    port = free_port()
    proc = start_server_process(port, seed=1)
    server_process.append(proc)
    before_kib = vm_kib(proc.pid, "VmRSS")
    out = flood(port, connections=150, messages=150, seconds=40, big_mib=2, workers=4)
    assert out["connections_tried"] == 150 and out["busy_replies"] >= 150 - 32 - 10  # the cap held
    assert out["messages"] == out["error_replies"] == 150 and out["big_refused"] >= 1 and out["big_valid"] == 4
    lab = LabChip(f"127.0.0.1:{port}")
    assert lab.now() > 0.0 and lab.board_stats()["limit_refusals"] >= 1  # the 4 MVMs ran
    lab.close()
    assert proc.poll() is None
    assert vm_kib(proc.pid) - before_kib < 700 * 1024  # peak resident growth of the server (KiB)

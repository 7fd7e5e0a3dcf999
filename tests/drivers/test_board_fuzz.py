"""Garbage on the board socket gets an error reply and never crashes or blocks the server (bounded fuzz)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

import hil
from drivers.board import LabChip
from emulator import EmulatedChip
from emulator.server import ServerThread

from .conftest import SMALL

N_CASES = 300


def exchange(port: int, data: bytes, timeout_s: float = 5.0) -> bytes:
    """Send ``data``, close the sending side, return everything the server answers before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may already have closed on a fatal error; its reply is still readable
        out = bytearray()
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
    return bytes(out)


def garbage(rng: np.random.Generator) -> bytes:
    kind = int(rng.integers(12))
    rand = lambda n: rng.integers(0, 256, int(n), dtype=np.uint8).tobytes()  # noqa: E731
    if kind == 0:  # random bytes, one line
        return rand(rng.integers(1, 300)).replace(b"\n", b"") + b"\n"
    if kind == 1:  # unknown command
        return b"FROB%d r%d a=1\n" % (rng.integers(100), rng.integers(1000))
    if kind == 2:  # known command, missing or bad parameters
        return rng.choice([b"PULSE r1\n", b"MVM r2 x=3\n", b"SLEEP r3 s=soon\n", b"READDEV r4 core=1 row=x\n", b"HELLO r5 proto=99\n"])
    if kind == 3:  # block length disagrees with the declared shape
        n = int(rng.integers(1, 50))
        return b"MVM r6 x=@i1[%d] cores=@i1[1] output=adc mode=4phase\n#%d%d" % (n, len(str(n + 1)), n + 1) + rand(n + 1) + b"\n"
    if kind == 4:  # oversized block announced
        return b"MVM r7 x=@i8[1000000,1000] cores=@i1[1]\n#9800000000" + rand(1000)
    if kind == 5:  # malformed block header
        return b"PULSE r8 core=@i1[2]\n" + rng.choice([b"#", b"$12ab", b"#0", b"#2x1ab", b"#a"]) + rand(3)
    if kind == 6:  # truncated block, then the client hangs up
        return b"PULSE r9 core=@i1[100]\n#3100" + rand(rng.integers(0, 99))
    if kind == 7:  # overlong line without newline
        return b"NOW r10 " + b"a" * int(rng.integers(70_000, 100_000))
    if kind == 8:  # bad request id or verb
        return rng.choice([b"NOW\n", b"NOW \xff\xfe\n", b"NOW r!d\n", b"now r1\n", b"NOW " + b"x" * 80 + b"\n"])
    if kind == 9:  # valid framing, wrong dtypes and shapes (the chip validates)
        x = rand(2 * 4 * SMALL.n_rows)
        return b"MVM r11 x=@f4[2,%d] cores=@i1[1] output=adc mode=4phase\n#%d%d" % (SMALL.n_rows, len(str(len(x))), len(x)) + x + b"\n"
    if kind == 10:  # out-of-range addresses and currents
        return rng.choice([b"PULSE r12 core=@i1[1] row=99 col=0 device=0 kind=2 amp=300.0 width=100.0\n#11\x00\n",
                           b"PULSE r13 core=@i1[1] row=0 col=0 device=0 kind=2 amp=5000.0 width=100.0\n#11\x00\n",
                           b"LDPU.SET r14 cores=@i1[1] scale=1e9 offset=0 relu=0\n#11\x00\n"])
    return b"\n" * int(rng.integers(1, 5)) + b"  \t \n"  # blank lines


@pytest.fixture
def board():
    with ServerThread(EmulatedChip(seed=21, geometry=SMALL), part_timeout_s=0.5) as srv:
        yield srv


def test_fuzz_loop_gets_error_replies_and_leaves_the_chip_untouched(board):
    rng = np.random.default_rng(1234)
    t0 = time.monotonic()
    for i in range(N_CASES):
        data = garbage(rng)
        reply = exchange(board.port, data)
        if data.strip():
            assert reply.startswith(b"ERR "), f"case {i}: {data[:80]!r} -> {reply[:200]!r}"
            assert b"code=" in reply and b"message=" in reply
    assert time.monotonic() - t0 < 60
    stats = board.server.stats
    assert stats["protocol_errors"] + stats["errors"] >= N_CASES * 0.8
    # The server is alive, answers properly, and the chip state is what a fresh chip of the seed has.
    lab = LabChip(board.address)
    ref = EmulatedChip(seed=21, geometry=SMALL)
    addr = hil.grid([0, 1], range(SMALL.n_rows), [0, 5])
    np.testing.assert_array_equal(lab.read_cells(*addr), ref.read_cells(*addr))
    assert lab.now() == ref.now()
    lab.close()


def test_a_connection_goes_on_after_a_non_fatal_error(board):
    reply = exchange(board.port, b"FROB r1\nNOW r2\nNOW r3 x=\"a b\"\n")
    lines = reply.split(b"\n")
    assert lines[0].startswith(b"ERR r1 code=UNKNOWN")
    assert lines[1].startswith(b"OK r2 t=0.0 exec_s=")
    assert lines[2].startswith(b"OK r3 t=0.0 ")  # unknown parameters are ignored, like SCPI optional ones


def test_a_stalled_client_blocks_nobody_and_is_cut_after_the_part_timeout(board):
    stalled = socket.create_connection(("127.0.0.1", board.port), timeout=5)
    stalled.sendall(b"MVM r1 x=@i1[1000] cores=@i1[1]\n#41000" + b"\x00" * 10)  # 990 bytes never come
    t0 = time.monotonic()
    lab = LabChip(board.address)
    assert lab.now() == 0.0
    assert time.monotonic() - t0 < 0.5
    reply = stalled.recv(4096)
    assert reply.startswith(b"ERR r1 code=PROTOCOL") and b"incomplete after 0.5 s" in reply
    stalled.close()
    lab.close()

"""Test helpers of the lab path: a small protocol touching the whole chip interface, and a faulty link."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

import hil
from hil.board_protocol import block_header, parse_line
from hil.protocol import RunLog


class MiniConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rounds: int = 3
    batch: int = 16


def mini_protocol(chip: hil.Chip, config: MiniConfig, run: RunLog) -> dict[str, Any]:
    """Program, verify, drift, MVM and LDPU on every core: the whole hil.Chip interface, deterministic."""
    g = chip.geometry
    rng = run.rng("mini")
    cores = np.arange(g.n_cores)
    c, r, k, d = hil.grid(cores, range(g.n_rows), range(g.n_cols), range(g.n_devices))
    chip.apply_pulses(c, r, k, d, kind=hil.PulseKind.RESET, amplitude_ua=700.0, width_ns=125.0)
    run.progress(1, config.rounds + 3, "reset")
    c2, r2, k2, d2 = hil.grid(cores, range(g.n_rows), range(g.n_cols), [0, 2])
    chip.apply_pulses(c2, r2, k2, d2, kind=hil.PulseKind.SET, amplitude_ua=125.0, width_ns=250.0)
    run.progress(2, config.rounds + 3, "set")
    for i in range(config.rounds):
        amps = rng.uniform(200.0, 650.0, c2.size)
        chip.apply_pulses(c2, r2, k2, d2, kind=hil.PulseKind.PARTIAL, amplitude_ua=amps, width_ns=125.0)
        run.log("verify", round=i, counts=chip.read_devices(c2, r2, k2, d2)[None])
        run.progress(3 + i, config.rounds + 3, "partial")
    chip.sleep(3600.0)
    cells = chip.read_cells(*hil.grid(cores, range(g.n_rows), range(g.n_cols)))
    x = rng.integers(-127, 128, (config.batch, g.n_rows)).astype(np.int8)
    y_adc = chip.mvm(x)
    chip.set_ldpu(cores, rng.uniform(0.05, 0.5, (cores.size, g.n_cols)), rng.uniform(-5, 5, g.n_cols), [True] * (cores.size - 1) + [False])
    x3 = rng.integers(-127, 128, (cores.size, config.batch, g.n_rows)).astype(np.int16)
    y_ldpu = chip.mvm(x3, cores, output="ldpu", mode="1phase")
    regs = chip.get_ldpu()
    run.log("final", cells=cells[None], y_adc=y_adc[None], y_ldpu=y_ldpu[None], scale=regs.scale[None], relu=regs.relu[None])
    run.progress(config.rounds + 3, config.rounds + 3, "done")
    return {"t_end_s": chip.now(), "cells_sum": int(cells.sum()), "y_adc_sum": int(y_adc.sum())}


def same_logs(a: Any, b: Any) -> None:
    """Assert two MemoryRunLogs hold bit-identical streams (dtype, shape and values)."""
    assert a.streams.keys() == b.streams.keys()
    for stream, cols in a.streams.items():
        assert cols.keys() == b.streams[stream].keys()
        for key, parts in cols.items():
            other = b.streams[stream][key]
            assert len(parts) == len(other), (stream, key)
            for p, q in zip(parts, other, strict=True):
                assert p.dtype == q.dtype and p.shape == q.shape, (stream, key, p.dtype, q.dtype)
                np.testing.assert_array_equal(p, q, err_msg=f"{stream}.{key}")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _read_message(sock: socket.socket, pending: bytearray) -> bytes:
    """One whole board-protocol message (line plus blocks) from ``sock``."""
    while b"\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError
        pending += chunk
    i = pending.index(b"\n") + 1
    line = bytes(pending[:i])
    del pending[:i]
    _, arrays = parse_line(line)
    need = sum(len(block_header(s.nbytes)) + s.nbytes for _, s in arrays) + (1 if arrays else 0)
    body = bytes(pending[:need])
    del pending[: len(body)]
    if len(body) < need:
        body += _recv_exactly(sock, need - len(body))
    return line + body


def _reset(sock: socket.socket) -> None:
    # An abortive close (RST): the client sees the fault at once instead of waiting for a timeout.
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class FlakyLink:
    """A TCP proxy in front of a board that cuts connections on purpose, message-aware.

    ``drop_request(line) -> bool``: cut before forwarding this request (it never reaches the board).
    ``drop_reply(line) -> bool``: the board executed the request but the reply is lost and the
    connection cut. Both see the message's first line; each returns True to cut.
    """

    def __init__(self, target_port: int,
                 drop_request: Callable[[bytes], bool] = lambda line: False,
                 drop_reply: Callable[[bytes], bool] = lambda line: False) -> None:
        self.target_port = target_port
        self.drop_request = drop_request
        self.drop_reply = drop_reply
        self.cuts = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"TCPIP0::127.0.0.1::{self.port}::SOCKET"

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target_port))
        c_buf, s_buf = bytearray(), bytearray()
        try:
            while True:
                request = _read_message(client, c_buf)
                first = request.split(b"\n", 1)[0]
                if self.drop_request(first):
                    self.cuts += 1
                    break
                server.sendall(request)
                reply = _read_message(server, s_buf)
                if self.drop_reply(first):
                    self.cuts += 1
                    break
                client.sendall(reply)
        except (EOFError, OSError):
            pass
        finally:
            _reset(client)
            server.close()

    def close(self) -> None:
        self._stop = True
        self._listener.close()


def nth(verb: bytes, n: int) -> Callable[[bytes], bool]:
    """A drop rule that fires once, on the n-th request line starting with ``verb``."""
    seen = [0]

    def rule(line: bytes) -> bool:
        if line.startswith(verb + b" "):
            seen[0] += 1
            return seen[0] == n
        return False

    return rule


@contextmanager
def connected(cls: type, address: str, what: str) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Open a real instrument (opt-in hardware tests): check that its IDN names ``cls``, read its state back."""
    with cls(address, name="dut") as inst:
        assert cls.idn_model.lower() in inst.idn.lower(), f"{inst.idn!r} is not a {what}"
        snap = inst.snapshot()
        assert snap["address"] == address
        yield inst, snap

"""Bounded flood and fuzz of a board server process over loopback: connections, garbage, large declared arrays.

``python -m tests.drivers.flood_board [--connections N] [--messages N] [--seconds S] [--json]`` starts
``python -m emulator.server`` on a free loopback port, floods it, and reports what it tried and the
server's peak memory (``VmHWM`` of its process). Every loop is bounded in count and in time.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from tests.drivers.test_board_fuzz import exchange, garbage


def vm_kib(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of process ``pid`` from /proc (KiB): VmHWM is the peak resident size."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _open(port: int) -> socket.socket | None:
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=2.0)
    except OSError:
        return None


def _big_declared(rng: np.random.Generator) -> bytes:
    """Requests that declare huge arrays: the board must refuse them from the line, before reading blocks."""
    n = int(rng.integers(10**7, 10**8))
    return rng.choice([
        b"PULSE f1 core=@i1[%d] row=0 col=0 device=0 kind=2 amp=300.0 width=100.0\n" % n,
        b"MVM f2 x=@i1[64,%d,32] cores=@i1[64] output=adc mode=4phase\n" % (n // 1000),
        b"READDEV f3 core=@i1[%d] row=0 col=0 device=0\n" % n,
    ])


def _within_budget(port: int, rows: int, mib: int, i: int) -> bytes:
    """One real request with a block of about ``mib`` MiB (a large, valid MVM the board executes)."""
    batch = mib * 2**20 // rows
    x = np.zeros((batch, rows), dtype=np.int8)
    msg = b"MVM w%d x=@i1[%d,%d] cores=@i1[1] output=adc mode=4phase\n" % (i, batch, rows)
    n = str(x.nbytes).encode()
    cores = b"#11\x00"
    return exchange(port, msg + b"#" + str(len(n)).encode() + n + x.tobytes() + cores + b"\n", timeout_s=60.0)


def flood(port: int, *, connections: int = 600, messages: int = 2000, seconds: float = 90.0, seed: int = 0,
          rows: int = 32, big_mib: int = 16, workers: int = 8) -> dict[str, Any]:
    """Flood the board at ``port``; counts of what was tried and how the board answered."""
    deadline = time.monotonic() + seconds
    out: dict[str, Any] = {"connections_tried": 0, "connections_opened": 0, "busy_replies": 0, "messages": 0,
                           "error_replies": 0, "big_declared": 0, "big_refused": 0, "big_valid": 0}
    # 1. Connection flood: open and hold as many as allowed (bounded), then see who was answered BUSY.
    held: list[socket.socket] = []
    for _ in range(connections):
        if time.monotonic() > deadline:
            break
        out["connections_tried"] += 1
        s = _open(port)
        if s is not None:
            held.append(s)
            out["connections_opened"] += 1
    time.sleep(0.5)
    for s in held:
        s.setblocking(False)
        try:
            if s.recv(4096).startswith(b"ERR - code=BUSY"):
                out["busy_replies"] += 1
        except (BlockingIOError, OSError):
            pass
        s.close()
    held.clear()

    # 2. Garbage and huge declarations from several clients at once.
    def one(i: int) -> tuple[int, int, int]:
        local = np.random.default_rng(seed * 1_000_003 + i)
        if time.monotonic() > deadline:
            return 0, 0, 0
        if i % 10 == 0:
            reply = exchange(port, _big_declared(local), timeout_s=10.0)
            return 1, int(reply.startswith(b"ERR")), int(b"code=LIMIT" in reply)
        data = garbage(local)
        reply = exchange(port, data, timeout_s=10.0)
        return 1, int(reply.startswith(b"ERR") or not data.strip()), 0

    with ThreadPoolExecutor(workers) as pool:
        for i, (sent, err, limit) in enumerate(pool.map(one, range(messages))):
            out["messages"] += sent
            out["error_replies"] += err
            if i % 10 == 0:
                out["big_declared"] += sent
                out["big_refused"] += limit
        # 3. A few large valid requests at once: the memory budget serialises them.
        if big_mib and time.monotonic() < deadline:
            replies = list(pool.map(lambda i: _within_budget(port, rows, big_mib, i), range(workers)))
            out["big_valid"] = sum(r.startswith(b"OK") for r in replies)
    out["elapsed_s"] = round(seconds - (deadline - time.monotonic()), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    from drivers.board import LabChip
    from drivers.station import stop_process
    from tests.drivers.conftest import free_port, start_server_process

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--connections", type=int, default=600)
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--seconds", type=float, default=90.0)
    p.add_argument("--big-mib", type=int, default=16)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    port = free_port()
    proc = start_server_process(port, seed=1)
    try:
        before = vm_kib(proc.pid, "VmRSS")
        result = flood(port, connections=args.connections, messages=args.messages, seconds=args.seconds,
                       big_mib=args.big_mib)
        lab = LabChip(f"127.0.0.1:{port}")
        result["board_stats"] = lab.board_stats()
        result["serves_after"] = lab.now() >= 0.0
        lab.close()
        result["server_rss_before_mib"] = round(before / 1024, 1)
        result["server_peak_mib"] = round(vm_kib(proc.pid) / 1024, 1)
        result["server_alive"] = proc.poll() is None
    finally:
        stop_process(proc)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

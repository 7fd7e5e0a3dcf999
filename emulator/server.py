"""The emulator as a virtual lab board: an asyncio TCP server speaking the board protocol.

``hil emulate --host 127.0.0.1 --port 5025 --preset hermes --seed 0`` (or ``python -m
emulator.server ...``) serves an :class:`emulator.EmulatedChip` exactly as the chip's control
board would, so protocols run through the real lab path: protocol -> :class:`drivers.board.LabChip`
-> pyvisa -> TCP -> this server. The protocol is specified in ``docs/board-protocol.md``; its
encoding lives in :mod:`hil.board_protocol` (shared with the client).

:class:`BoardServer` serves any :class:`hil.Chip`. Requests run one at a time on a worker thread
(the chip is not thread-safe), so the event loop keeps answering other connections, including
garbage, while a long MVM runs. Request ids make retries idempotent: the replies of recent
requests are kept (bounded by bytes) with a digest of their request, a repeated id gets the stored
reply, the same id with a different request gets a ``CONFLICT`` error, and an id whose reply was
dropped from memory gets a ``STALE`` error; none of them is executed again. Nothing survives a
restart: a new process has a new boot id, which the client checks.

Limits that keep one client from starving the others (docs/board-protocol.md, section 6): a
connection cap, idle, line and part timeouts, a memory budget checked against a request's declared
array sizes before its blocks are read, a bound on repeated pulses per device in one batch, and an
optional shared-secret handshake (``--token-file``), required when listening beyond loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import math
import queue
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import hil
from hil.board_protocol import (
    AUTH_SCHEME,
    DEFAULT_MAX_BLOCK_BYTES,
    DTYPES,
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    TOKEN_ENV,
    ArraySpec,
    BoardProtocolError,
    IdleTimeoutError,
    Message,
    auth_mac,
    encode_message,
    error_reply,
    join_chunks,
    read_message,
    read_token,
    request_digest,
    skip_blocks,
)
from hil.chip import Chip
from hil.errors import ChipInputError, HilError, SafetyLimitError

log = logging.getLogger("emulator.server")

Chunks = list[Any]
#: Size of the slices large reply blocks are written in (bytes).
_SLICE_BYTES = 1 << 20


#: Memory an entry of the reply cache costs beyond its reply bytes (bytes; Python objects, id, digest).
_ENTRY_OVERHEAD_BYTES = 600
_KEYED_RID_RE = re.compile(r"(k[0-9a-f]{24})-([0-9]{1,18})")


@dataclass
class CachedReply:
    """A kept reply: the request's verb and digest, the encoded reply, and when it was executed.

    ``t_chip``: chip clock after execution (s); ``t_wall``: unix time at its start (s); ``exec_s``:
    execution time (s). A replay of it carries these, so a client can journal the original timing.
    """

    verb: str
    digest: bytes
    chunks: Chunks
    size: int
    t_chip: float = math.nan
    t_wall: float = math.nan
    exec_s: float = 0.0

    def replayed(self) -> Chunks:
        """The reply as sent for a repeated request id: the original line plus ``cached=1 t_chip= t_wall=``."""
        line = bytes(self.chunks[0])
        extra = f" cached=1 t_chip={self.t_chip!r} t_wall={self.t_wall!r}".encode()
        return [line[:-1] + extra + b"\n", *self.chunks[1:]]


class ReplyCache:
    """Replies of recent request ids, bounded by ``max_bytes`` (and ``max_entries``, None: no count limit).

    Oldest entries are dropped first. Dropped ids are remembered so a late retry is refused, not
    re-executed: ids of run calls (``k<run hash>-<index>``, see :func:`hil.board_protocol.rid_for_call_key`)
    by the highest dropped index per run (exact, whatever the number), other ids one by one (the last
    ``forget_limit``; about 80 bytes each).
    """

    def __init__(self, max_entries: int | None = None, max_bytes: int = 256 * 2**20, forget_limit: int = 200_000) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._replies: OrderedDict[str, CachedReply] = OrderedDict()
        self._bytes = 0
        self._forgotten: set[int] = set()
        self._forgotten_order: deque[int] = deque()
        self._forget_limit = forget_limit
        self._dropped_upto: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._replies)

    @property
    def nbytes(self) -> int:
        """Bytes the kept replies account for (replies plus a fixed overhead per entry)."""
        return self._bytes

    def get(self, rid: str) -> CachedReply | None:
        return self._replies.get(rid)

    def forgotten(self, rid: str) -> bool:
        m = _KEYED_RID_RE.fullmatch(rid)
        if m is not None and int(m.group(2)) <= self._dropped_upto.get(m.group(1), -1):
            return True
        return hash(rid) in self._forgotten

    def put(self, rid: str, entry: CachedReply) -> None:
        entry.size = sum(len(c) for c in entry.chunks) + len(rid) + _ENTRY_OVERHEAD_BYTES
        old = self._replies.pop(rid, None)
        if old is not None:
            self._bytes -= old.size
        self._replies[rid] = entry
        self._bytes += entry.size
        while self._replies and (
            (self.max_entries is not None and len(self._replies) > self.max_entries) or self._bytes > self.max_bytes
        ):
            dropped, item = self._replies.popitem(last=False)
            self._bytes -= item.size
            self._forget(dropped)

    def _forget(self, rid: str) -> None:
        m = _KEYED_RID_RE.fullmatch(rid)
        if m is not None:
            run, index = m.group(1), int(m.group(2))
            self._dropped_upto[run] = max(index, self._dropped_upto.get(run, -1))
            return
        h = hash(rid)
        self._forgotten.add(h)
        self._forgotten_order.append(h)
        if len(self._forgotten_order) > self._forget_limit:
            self._forgotten.discard(self._forgotten_order.popleft())


class CallerThreadRunner:
    """Runs chip calls on the thread that calls :meth:`serve` (normally the main thread).

    Why: torch's OpenMP pool belongs to the thread that first used it; the same MVM issued from a
    second thread of the process runs about twice as slowly (measured on the 2-core CI machine).
    The chip is built on the main thread, so its calls are executed there too, while the event
    loop runs on another thread.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Queue ``fn(*args)`` for the serving thread and await its result (event-loop side)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._jobs.put((fn, args, loop, future))
        return await future

    def serve(self, stop: threading.Event) -> None:
        """Execute queued calls until ``stop`` is set (blocking; the caller's thread)."""
        while not stop.is_set():
            try:
                fn, args, loop, future = self._jobs.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                outcome, failed = fn(*args), False
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome, failed = exc, True
            loop.call_soon_threadsafe(_settle, future, outcome, failed)


def _settle(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    if future.done():
        return
    if failed:
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


#: Memory a request may need per addressed element while it executes, beyond its arrays (bytes), by
#: command. Measured peaks of the emulator (VmHWM, 8 x 256 x 256 chip): a 1e6-pulse batch 165 MB,
#: a 1e6-element read 50 MB, an MVM with S*B*(rows+cols) = 2e6 elements 66 MB; these are 1.5 times that.
_BYTES_PER_PULSE = 256
_BYTES_PER_READ = 96
_BYTES_PER_MVM_ELEMENT = 48
_BYTES_PER_LDPU_ELEMENT = 64


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches this machine only (every address it resolves to is loopback)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


@dataclass
class _Connection:
    """State of one client connection."""

    peer: Any
    authenticated: bool
    opened: float = field(default_factory=time.monotonic)
    challenge: str = ""
    nonce: str = ""
    reserved: int = 0
    writer: asyncio.StreamWriter | None = None
    busy: bool = False
    last_active: float = field(default_factory=time.monotonic)


class BoardServer:
    """Serve ``chip`` over the board protocol.

    ``max_block_bytes``: largest array accepted in one request (bytes). ``part_timeout_s``: once a
    command line has arrived, each of its blocks must follow within this time (s), else the
    connection is closed. ``cache_bytes`` / ``cache_entries``: how many replies are kept for
    retries and resumes (bytes; count, None: no count limit). ``runner``: where chip calls execute
    (default: a worker thread via ``asyncio.to_thread``; ``hil emulate`` uses a
    :class:`CallerThreadRunner` on its main thread).

    Limits (docs/board-protocol.md, section 6): ``max_connections`` open at once (at the cap, the
    longest-idle connection idle for at least ``evict_idle_s`` is closed to make room; if none is,
    the newcomer is answered ``BUSY`` and closed); ``idle_timeout_s`` without a request closes a connection;
    ``line_timeout_s`` for a command line once its first byte arrived (s); ``memory_budget_bytes``
    for the requests in progress, estimated from their declared arrays before any block is read
    (a request above it alone is refused with ``LIMIT``; one that has to wait for others longer
    than ``part_timeout_s`` gets ``BUSY``); ``max_pulse_repeats`` pulses on one device in one batch
    and ``max_repeat_elements`` (batch size times repeats) bound how long a batch holds the chip,
    because the emulator applies repeated pulses in rounds. ``token``: the shared secret of the
    handshake (bytes, None: no authentication; required by :meth:`start` beyond loopback);
    ``auth_timeout_s``: time a new connection has to authenticate (s).
    """

    def __init__(
        self,
        chip: Chip,
        *,
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
        part_timeout_s: float = 30.0,
        cache_entries: int | None = None,
        cache_bytes: int = 256 * 2**20,
        runner: CallerThreadRunner | None = None,
        max_connections: int = 32,
        idle_timeout_s: float | None = 600.0,
        line_timeout_s: float = 10.0,
        memory_budget_bytes: int = 4 * 2**30,
        max_pulse_repeats: int = 1024,
        max_repeat_elements: int = 50_000_000,
        token: bytes | None = None,
        auth_timeout_s: float = 10.0,
        evict_idle_s: float = 1.0,
    ) -> None:
        if token is not None and not token:
            raise ValueError("token must not be empty; give None for no authentication")
        self.chip = chip
        self._run: Callable[..., Any] = runner.run if runner is not None else asyncio.to_thread
        self.max_block_bytes = max_block_bytes
        self.part_timeout_s = part_timeout_s
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.line_timeout_s = line_timeout_s
        self.memory_budget_bytes = memory_budget_bytes
        self.max_pulse_repeats = max_pulse_repeats
        self.max_repeat_elements = max_repeat_elements
        self.auth_timeout_s = auth_timeout_s
        self.evict_idle_s = evict_idle_s
        self._token = token
        self.boot_id = secrets.token_hex(8)
        self.cache = ReplyCache(cache_entries, cache_bytes)
        self._handlers: dict[str, Callable[[Message], dict[str, Any]]] = {
            "NOW": lambda m: {"t": self.chip.now()},
            "SLEEP": self._sleep,
            "PULSE": self._pulse,
            "READDEV": self._read_devices,
            "READCELL": self._read_cells,
            "MVM": self._mvm,
            "LDPU.SET": self._set_ldpu,
            "LDPU.GET": self._get_ldpu,
            "STATS": lambda m: self.stats_snapshot(),
        }
        #: Counters (diagnostics, ``STATS``): ``executed`` requests and ``executed_<verb>`` per command
        #: (successful executions; a repeat answered from memory is ``replayed``), refusals and connections.
        self.stats: dict[str, int] = {
            "executed": 0, "replayed": 0, "errors": 0, "protocol_errors": 0, "connections": 0,
            "refused_connections": 0, "evicted": 0, "idle_closed": 0, "auth_failures": 0, "limit_refusals": 0, "conflicts": 0,
            "stale": 0,
            **{self._verb_stat(v): 0 for v in ("HELLO", *self._handlers)},
        }  # fmt: skip
        self._inflight: dict[str, tuple[bytes, asyncio.Future[CachedReply]]] = {}
        self._chip_lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._states: dict[asyncio.Task[None], _Connection] = {}
        self._mem_used = 0
        self._mem_cond: asyncio.Condition | None = None

    @staticmethod
    def _verb_stat(verb: str) -> str:
        return "executed_" + verb.lower().replace(".", "_").replace("?", "").replace("*", "")

    def stats_snapshot(self) -> dict[str, int]:
        """The counters plus the current state (open connections, kept replies and their bytes, memory reserved)."""
        return {
            **self.stats,
            "connections_open": len(self._connections),
            "cache_entries": len(self.cache),
            "cache_bytes": self.cache.nbytes,
            "memory_reserved": self._mem_used,
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); return the port.

        Refuses (``ValueError``) to listen beyond loopback without a token: anyone who can connect
        could otherwise pulse the chip.
        """
        if self._token is None and not is_loopback(host):
            raise ValueError(
                f"refusing to listen on {host!r} without a token: every client that can reach it could program the "
                "chip. Give --token-file FILE (or set HIL_BOARD_TOKEN), or listen on 127.0.0.1."
            )
        self._mem_cond = asyncio.Condition()
        self._server = await asyncio.start_server(self._client, host, port, limit=MAX_LINE_BYTES)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Stop listening, end every connection and wait (up to 5 s) for running requests to finish."""
        if self._server is not None:
            self._server.close()
            self._server = None
        # Ending connections by closing their transports lets each handler return normally (a
        # cancelled handler task makes asyncio log a spurious error in Python 3.11).
        for writer in list(self._connections.values()):
            writer.transport.abort()
        tasks = list(self._connections)
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=5.0)
            for task in late:
                task.cancel()

    # ------------------------------------------------------------------ connections
    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if len(self._connections) >= self.max_connections and not self._evict_idle():
            self.stats["refused_connections"] += 1
            text = (f"the board serves at most {self.max_connections} connections at once and all are in use; "
                    "try again later, or close idle clients")
            with contextlib.suppress(Exception):
                writer.write(join_chunks(error_reply("-", "BUSY", text)))
                await asyncio.wait_for(writer.drain(), 1.0)
            writer.transport.abort()
            return
        self.stats["connections"] += 1
        conn = _Connection(peer, authenticated=self._token is None, writer=writer)
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
            self._states[task] = conn
        try:
            while True:
                conn.busy = False
                conn.last_active = time.monotonic()
                idle, line = self.idle_timeout_s, self.line_timeout_s
                if not conn.authenticated:  # an unauthenticated connection only has until its auth deadline
                    left = max(0.001, conn.opened + self.auth_timeout_s - time.monotonic())
                    idle, line = (left if idle is None else min(idle, left)), min(line, left)
                try:
                    msg = await read_message(
                        reader, max_block_bytes=self.max_block_bytes, part_timeout_s=self.part_timeout_s,
                        idle_timeout_s=idle, line_timeout_s=line, admit=lambda m, a: self._admit(conn, m, a),
                    )
                except IdleTimeoutError as exc:
                    if conn.authenticated:
                        self.stats["idle_closed"] += 1
                        await self._send(writer, error_reply("-", "PROTOCOL", str(exc)))
                    else:
                        self.stats["auth_failures"] += 1
                        text = f"not authenticated within {self.auth_timeout_s:g} s; closing the connection"
                        await self._send(writer, error_reply("-", "AUTH", text))
                    break
                except BoardProtocolError as exc:
                    self._release(conn)
                    if exc.code == "LIMIT":
                        self.stats["limit_refusals"] += 1
                    elif exc.code == "AUTH":
                        self.stats["auth_failures"] += 1
                    else:
                        self.stats["protocol_errors"] += 1
                    log.info("%s: %s", peer, exc)
                    await self._send(writer, error_reply(exc.rid, exc.code, str(exc)))
                    if exc.fatal:
                        break
                    if exc.skip:  # answered at once; the refused request's blocks are dropped unread
                        try:
                            await skip_blocks(reader, exc.skip, exc.rid, self.part_timeout_s)
                        except BoardProtocolError as late:
                            self.stats["protocol_errors"] += 1
                            await self._send(writer, error_reply(late.rid, late.code, str(late)))
                            break
                    continue
                except TimeoutError:
                    self.stats["protocol_errors"] += 1
                    text = f"message incomplete after {self.part_timeout_s} s; closing the connection"
                    await self._send(writer, error_reply("-", "PROTOCOL", text))
                    break
                if msg is None:
                    break
                conn.busy = True
                try:
                    if msg.verb == "*IDN?":
                        if not conn.authenticated:
                            self.stats["auth_failures"] += 1
                            await self._send(writer, error_reply("-", "AUTH", self._auth_needed_text("*IDN?")))
                            break
                        await self._send(writer, [self._idn().encode() + b"\n"])
                        continue
                    if msg.verb in ("HELLO", "AUTH"):
                        chunks, close = await self._session(conn, msg)
                        await self._send(writer, chunks)
                        if close:
                            break
                        continue
                    await self._send(writer, await self._dispatch(msg))
                finally:
                    self._release(conn)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away; its request (if any) still completed and is cached
        finally:
            self._release(conn)
            self._connections.pop(task, None)  # type: ignore[arg-type]
            self._states.pop(task, None)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _evict_idle(self) -> bool:
        """Make room for a new connection by closing the longest-idle one, if one has been idle long enough.

        Why: a cap alone lets whoever opens connections first lock everyone else out for the idle
        timeout. An idle lab chip loses nothing (it reconnects and re-sends under the same request id).
        """
        now = time.monotonic()
        idle = [c for c in self._states.values() if not c.busy and now - c.last_active >= self.evict_idle_s]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        victim.busy = True  # never picked twice
        self.stats["evicted"] += 1
        text = f"closed to make room for a new connection (idle for {now - victim.last_active:.1f} s); reconnect"
        with contextlib.suppress(Exception):
            assert victim.writer is not None
            victim.writer.write(join_chunks(error_reply("-", "BUSY", text)))
            victim.writer.transport.close()
        return True

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, chunks: Chunks) -> None:
        # Large blocks go out in 1 MiB slices with a drain after each: the transport then sends
        # straight from the array instead of copying tens of MiB into its own buffer first.
        for chunk in chunks:
            view = memoryview(chunk)
            if view.nbytes <= _SLICE_BYTES:
                writer.write(view)
                continue
            for start in range(0, view.nbytes, _SLICE_BYTES):
                writer.write(view[start : start + _SLICE_BYTES])
                await writer.drain()
        await writer.drain()

    def _idn(self) -> str:
        info = self.chip.info
        return f"hil,{info.backend} board,{info.serial or '-'},{hil.__version__}".replace("\n", " ")

    # ------------------------------------------------------------------ admission (before any block is read)
    def _auth_needed_text(self, verb: str) -> str:
        return (f"{verb} before authentication: this board requires the token handshake (HELLO, then AUTH); give the "
                "client the board's token (station file board.token_file or HIL_BOARD_TOKEN)")

    async def _admit(self, conn: _Connection, msg: Message, arrays: list[tuple[str, ArraySpec]]) -> None:
        """Refuse a request from its line alone: unauthenticated, or above the memory budget; else reserve its memory."""
        conn.busy = True  # its blocks may take a while to arrive: never evicted meanwhile
        if not conn.authenticated and msg.verb not in ("HELLO", "AUTH"):
            raise BoardProtocolError(self._auth_needed_text(msg.verb), rid=msg.rid, fatal=True, code="AUTH")
        if not conn.authenticated and arrays:
            raise BoardProtocolError(f"{msg.verb} carries no arrays", rid=msg.rid, fatal=True, code="AUTH")
        need = self.request_bytes(msg, arrays)
        if need > self.memory_budget_bytes:
            raise BoardProtocolError(
                f"{msg.verb} {msg.rid} would need about {need / 2**20:.0f} MiB on the board (its declared arrays and "
                f"their working memory); the board's memory budget is {self.memory_budget_bytes / 2**20:.0f} MiB. "
                "Split the request into smaller batches.", rid=msg.rid, code="LIMIT")
        await self._reserve(conn, need)

    def request_bytes(self, msg: Message, arrays: list[tuple[str, ArraySpec]]) -> int:
        """Memory a request needs on the board (bytes), from its declared arrays: received, widened and worked on."""
        specs = dict(arrays)
        total = sum(s.nbytes + math.prod(s.shape) * DTYPES[s.logical].itemsize for s in specs.values())

        def count(key: str) -> int:
            spec = specs.get(key)
            return math.prod(spec.shape) if spec is not None else 1

        verb = msg.verb
        if verb == "PULSE":
            total += count("core") * _BYTES_PER_PULSE
        elif verb in ("READDEV", "READCELL"):
            total += count("core") * _BYTES_PER_READ
        elif verb == "MVM":
            x = specs.get("x")
            n_cores = count("cores")
            if x is not None and x.shape:
                rows, batch = x.shape[-1], math.prod(x.shape[:-1]) if len(x.shape) > 2 else x.shape[0]
                per_core = batch if len(x.shape) > 2 else batch * n_cores
                total += per_core * (rows + self.chip.geometry.n_cols) * _BYTES_PER_MVM_ELEMENT
        elif verb in ("LDPU.SET", "LDPU.GET"):
            total += count("cores") * self.chip.geometry.n_cols * _BYTES_PER_LDPU_ELEMENT
        return int(total)

    async def _reserve(self, conn: _Connection, need: int) -> None:
        assert self._mem_cond is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.part_timeout_s
        async with self._mem_cond:
            while self._mem_used + need > self.memory_budget_bytes:
                left = deadline - loop.time()
                try:
                    if left <= 0:
                        raise TimeoutError
                    await asyncio.wait_for(self._mem_cond.wait(), left)
                except TimeoutError:
                    raise BoardProtocolError(
                        f"the board's memory budget ({self.memory_budget_bytes / 2**20:.0f} MiB) stayed taken by other "
                        f"requests for {self.part_timeout_s:g} s; try again later", code="BUSY") from None
            self._mem_used += need
            conn.reserved += need

    def _release(self, conn: _Connection) -> None:
        if conn.reserved and self._mem_cond is not None:
            self._mem_used -= conn.reserved
            conn.reserved = 0
            cond = self._mem_cond

            async def notify() -> None:
                async with cond:
                    cond.notify_all()

            asyncio.get_running_loop().create_task(notify())

    # ------------------------------------------------------------------ session: HELLO and AUTH
    async def _session(self, conn: _Connection, msg: Message) -> tuple[Chunks, bool]:
        """Answer HELLO or AUTH (never cached: they belong to one connection); (reply, close the connection)."""
        rid = msg.rid
        try:
            if msg.verb == "HELLO":
                proto = msg.get_int("proto") if "proto" in msg.params else PROTOCOL_VERSION
                if proto != PROTOCOL_VERSION:
                    raise BoardProtocolError(
                        f"protocol version {proto} is not supported; this board speaks {PROTOCOL_VERSION}", rid=rid)
                reply: dict[str, Any] = {"proto": PROTOCOL_VERSION, "boot": self.boot_id, "server": f"hil-{hil.__version__}"}
                if self._token is None:
                    reply.update(auth="none", info=await self._run(self._info_blob))
                else:
                    conn.challenge = secrets.token_hex(16)
                    conn.nonce = msg.get_str("nonce") if "nonce" in msg.params else ""
                    reply.update(auth=AUTH_SCHEME, challenge=conn.challenge)
                self.stats["executed"] += 1
                self.stats["executed_hello"] += 1
                return encode_message("OK", rid, reply), False
            # AUTH
            if self._token is None:
                raise BoardProtocolError("this board has no token; AUTH is not needed (HELLO is enough)", rid=rid)
            if not conn.challenge:
                raise BoardProtocolError("AUTH before HELLO: send HELLO first and answer its challenge", rid=rid,
                                         code="AUTH")
            expected = auth_mac(self._token, "client", conn.challenge, conn.nonce)
            if not hmac.compare_digest(expected, msg.get_str("mac")):
                self.stats["auth_failures"] += 1
                log.warning("%s: authentication failed", conn.peer)
                return error_reply(rid, "AUTH", "authentication failed: wrong token; closing the connection"), True
            conn.authenticated = True
            proof = auth_mac(self._token, "board", conn.challenge, conn.nonce)
            return encode_message("OK", rid, {"info": await self._run(self._info_blob), "proof": proof}), False
        except BoardProtocolError as exc:
            self.stats["protocol_errors"] += 1
            return error_reply(rid, exc.code, str(exc)), not conn.authenticated

    def _info_blob(self) -> np.ndarray:
        with self._chip_lock:
            info = {"chip": self.chip.info.model_dump(mode="json"), "geometry": self.chip.geometry.model_dump()}
        return np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)

    # ------------------------------------------------------------------ requests
    async def _dispatch(self, msg: Message) -> Chunks:
        rid = msg.rid
        size = sum(v.nbytes for v in msg.params.values() if isinstance(v, np.ndarray))
        digest = request_digest(msg) if size < 2**20 else await asyncio.to_thread(request_digest, msg)
        cached = self.cache.get(rid)
        if cached is not None:
            if cached.digest != digest:
                return self._conflict(rid, msg.verb, cached.verb)
            self.stats["replayed"] += 1
            return cached.replayed()
        pending = self._inflight.get(rid)
        if pending is not None:  # a retry of a request that is still running: wait for its reply
            if pending[0] != digest:
                return self._conflict(rid, msg.verb, None)
            self.stats["replayed"] += 1
            return (await asyncio.shield(pending[1])).replayed()
        if self.cache.forgotten(rid):
            self.stats["stale"] += 1
            return error_reply(
                rid, "STALE", f"request {rid} was executed by this board but its reply is no longer kept (the board keeps "
                f"{self.cache.max_bytes / 2**20:.0f} MiB of replies, hil emulate --cache-mib); it was not run again"
            )
        future: asyncio.Future[CachedReply] = asyncio.get_running_loop().create_future()
        self._inflight[rid] = (digest, future)
        entry = CachedReply(msg.verb, digest, [], 0)
        try:
            entry = await self._run(self._execute, msg, digest)
        except BaseException as exc:  # e.g. cancelled at shutdown: retries must not hang on the future
            entry.chunks = error_reply(rid, "INTERNAL", f"request {rid} aborted: {type(exc).__name__}")
            raise
        finally:
            self.cache.put(rid, entry)
            del self._inflight[rid]
            future.set_result(entry)
        return entry.chunks

    def _conflict(self, rid: str, verb: str, kept_verb: str | None) -> Chunks:
        self.stats["conflicts"] += 1
        what = f"a different {kept_verb} request" if kept_verb == verb else (f"{kept_verb}" if kept_verb else "another request")
        return error_reply(
            rid, "CONFLICT", f"request id {rid} was already used for {what}; this {verb} was not executed. Request ids "
            "must be unique (on a resumed run: the protocol made a different call here than the interrupted run did)"
        )

    def _execute(self, msg: Message, digest: bytes) -> CachedReply:
        """Run one request on the chip (worker thread); its reply with the chip clock after it."""
        entry = CachedReply(msg.verb, digest, [], 0, t_wall=time.time())
        handler = self._handlers.get(msg.verb)
        if handler is None:
            self.stats["errors"] += 1
            known = ", ".join(sorted([*self._handlers, "HELLO", "AUTH"]))
            entry.chunks = error_reply(msg.rid, "UNKNOWN", f"unknown command {msg.verb!r}; known commands: {known}, *IDN?")
            return entry
        try:
            with self._chip_lock:
                start = time.perf_counter()
                try:
                    result = handler(msg)
                finally:
                    entry.exec_s = time.perf_counter() - start
                    with contextlib.suppress(Exception):
                        entry.t_chip = float(self.chip.now())
                # The board's own execution time: lets a client tell transport from chip time.
                result["exec_s"] = entry.exec_s
                self.stats["executed"] += 1
                self.stats[self._verb_stat(msg.verb)] += 1
            entry.chunks = encode_message("OK", msg.rid, result, narrow=True)
            return entry
        except BoardProtocolError as exc:
            code, text = exc.code, str(exc)
        except ChipInputError as exc:
            code, text = "INPUT", str(exc)
        except SafetyLimitError as exc:
            code, text = "SAFETY", str(exc)
        except HilError as exc:
            code, text = "CHIP", f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug must not kill the server; the client gets the reason
            log.exception("request %s %s failed", msg.verb, msg.rid)
            code, text = "INTERNAL", f"{type(exc).__name__}: {exc}"
        self.stats["errors"] += 1
        if code == "LIMIT":
            self.stats["limit_refusals"] += 1
        entry.chunks = error_reply(msg.rid, code, text)
        return entry

    # ------------------------------------------------------------------ commands
    def _sleep(self, msg: Message) -> dict[str, Any]:
        self.chip.sleep(msg.get_float("s"))
        return {"t": self.chip.now()}

    def _pulse(self, msg: Message) -> dict[str, Any]:
        core = msg.get_array("core", scalar_ok=False, kind="int")
        # Chip.apply_pulses is validate_pulses, then _apply_pulses: done in two steps here so that the
        # batch's repeats per device are bounded before the chip spends time on it.
        batch = self.chip.validate_pulses(
            core,
            msg.get_array("row", kind="int"),
            msg.get_array("col", kind="int"),
            msg.get_array("device", kind="int"),
            kind=msg.get_array("kind", kind="int"),
            amplitude_ua=msg.get_array("amp", kind="float"),
            width_ns=msg.get_array("width", kind="float"),
        )
        self._check_repeats(batch)
        if len(batch):
            self.chip._apply_pulses(batch)
        return {"n": len(batch)}

    def _check_repeats(self, batch: Any) -> None:
        """Refuse a batch that puts so many pulses on one device that it would hold the chip for long.

        Why: pulses on the same device act in order, so the emulator applies a batch in rounds of
        distinct devices; each round costs a fixed 0.25-0.4 ms (torch calls) plus a pass over the
        batch. 10 000 pulses on one device (a 10 KB request) took 2.6-3.8 s.
        """
        n = len(batch)
        if n <= 1:
            return
        g = self.chip.geometry
        flat = np.sort(((batch.core * g.n_rows + batch.row) * g.n_cols + batch.col) * g.n_devices + batch.device)
        edges = np.flatnonzero(np.diff(flat))
        repeats = int(np.diff(np.r_[-1, edges, n - 1]).max())
        if repeats > 1 and (repeats > self.max_pulse_repeats or repeats * n > self.max_repeat_elements):
            raise BoardProtocolError(
                f"PULSE: {repeats} of the {n} pulses address the same device; the board applies at most "
                f"{self.max_pulse_repeats} pulses per device in one batch, and batch size x repeats at most "
                f"{self.max_repeat_elements}, so that no request holds the chip for long. Split the batch "
                "(pulses on one device act in order either way).", code="LIMIT")

    def _read_devices(self, msg: Message) -> dict[str, Any]:
        counts = self.chip.read_devices(
            msg.get_array("core", scalar_ok=False, kind="int"), msg.get_array("row", kind="int"),
            msg.get_array("col", kind="int"), msg.get_array("device", kind="int"),
        )
        return {"counts": np.asarray(counts, dtype=np.int32)}

    def _read_cells(self, msg: Message) -> dict[str, Any]:
        counts = self.chip.read_cells(
            msg.get_array("core", scalar_ok=False, kind="int"), msg.get_array("row", kind="int"),
            msg.get_array("col", kind="int"),
        )
        return {"counts": np.asarray(counts, dtype=np.int32)}

    def _mvm(self, msg: Message) -> dict[str, Any]:
        x = msg.get_array("x", scalar_ok=False, kind="int")
        y = self.chip.mvm(
            x, msg.get_array("cores", scalar_ok=False, kind="int"), output=msg.get_str("output"), mode=msg.get_str("mode")
        )
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        return {"y": np.ascontiguousarray(y)}

    def _set_ldpu(self, msg: Message) -> dict[str, Any]:
        self.chip.set_ldpu(
            msg.get_array("cores", scalar_ok=False, kind="int"),
            msg.get_array("scale", kind="float"),
            msg.get_array("offset", kind="float"),
            msg.get_array("relu", kind="bool"),
        )
        return {}

    def _get_ldpu(self, msg: Message) -> dict[str, Any]:
        regs = self.chip.get_ldpu(msg.get_array("cores", scalar_ok=False, kind="int"))
        return {
            "scale": np.ascontiguousarray(regs.scale, dtype=np.float16),
            "offset": np.ascontiguousarray(regs.offset, dtype=np.float16),
            "relu": np.ascontiguousarray(regs.relu, dtype=bool),
        }


class ServerThread:
    """A :class:`BoardServer` on its own event loop in a daemon thread (tests, benchmarks, notebooks).

    ``with ServerThread(chip) as srv: LabChip(srv.address)``.
    """

    def __init__(self, chip: Chip, host: str = "127.0.0.1", port: int = 0, **server_kwargs: Any) -> None:
        self.server = BoardServer(chip, **server_kwargs)
        self.host = host
        self._port = port
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="board-server", daemon=True)

    @property
    def address(self) -> str:
        """VISA address of the server."""
        return f"TCPIP0::{self.host}::{self.port}::SOCKET"

    def start(self) -> ServerThread:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start(self.host, self._port), self._loop)
        try:
            self.port = fut.result(30.0)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30.0)
            self._loop.close()
            raise
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result(30.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30.0)
        self._loop.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hil emulate",
        description="Serve an emulated chip over the board protocol (a virtual lab board, docs/board-protocol.md).",
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to listen on (default 127.0.0.1: this machine only; any other needs a token)")
    p.add_argument("--port", type=int, default=5025, help="TCP port (0: pick a free one; default 5025)")
    p.add_argument("--preset", default="hermes", help="emulator preset (default hermes)")
    p.add_argument("--seed", type=int, default=0, help="emulator seed (default 0)")
    p.add_argument("--cores", type=int, help="number of cores (small chips for tests; default the preset's)")
    p.add_argument("--rows", type=int, help="rows per core")
    p.add_argument("--cols", type=int, help="columns per core")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    p.add_argument("--token-file", type=Path, default=None,
                   help=f"file holding the shared secret clients must prove they know (default: ${TOKEN_ENV} if set, "
                        "else no authentication, which is allowed on loopback only)")
    p.add_argument("--max-block-mib", type=float, default=DEFAULT_MAX_BLOCK_BYTES / 2**20,
                   help="largest array accepted in one request, MiB (default %(default)s)")
    p.add_argument("--memory-budget-mib", type=float, default=4096.0,
                   help="memory for the requests in progress, estimated from their declared arrays, MiB (default 4096)")
    p.add_argument("--part-timeout", type=float, default=30.0,
                   help="seconds each part of a started message may take to arrive (default 30)")
    p.add_argument("--line-timeout", type=float, default=10.0,
                   help="seconds a command line may take once its first byte arrived (default 10)")
    p.add_argument("--idle-timeout", type=float, default=600.0,
                   help="seconds without a request after which a connection is closed (default 600; 0: never)")
    p.add_argument("--max-connections", type=int, default=32, help="connections served at once (default 32)")
    p.add_argument("--cache-mib", type=float, default=256.0,
                   help="memory for kept replies (retries and resumed runs are answered from them), MiB (default 256)")
    p.add_argument("--cache-entries", type=int, default=None, help="also limit the kept replies by count (default: no)")
    p.add_argument("--max-pulse-repeats", type=int, default=1024,
                   help="pulses on one device in one batch (default 1024; repeats are applied in rounds)")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if not 0 <= args.port <= 65535:
        print(f"hil emulate: --port {args.port} is not a TCP port; give 0 to 65535.", file=sys.stderr)
        return 2
    for flag, value, low in (("--max-connections", args.max_connections, 1), ("--max-pulse-repeats", args.max_pulse_repeats, 1),
                             ("--memory-budget-mib", args.memory_budget_mib, 1), ("--cache-mib", args.cache_mib, 0),
                             ("--line-timeout", args.line_timeout, 0.01), ("--part-timeout", args.part_timeout, 0.01),
                             ("--idle-timeout", args.idle_timeout, 0)):
        if not value >= low:
            print(f"hil emulate: {flag} {value} is too small; give at least {low}.", file=sys.stderr)
            return 2
    try:
        token = read_token(args.token_file)
    except HilError as exc:
        print(f"hil emulate: {exc}", file=sys.stderr)
        return 2
    if token is None and not is_loopback(args.host):
        print(f"hil emulate: refusing to listen on {args.host!r} without a token: every client that can reach it could "
              "program the chip. Give --token-file FILE (or set HIL_BOARD_TOKEN), or listen on 127.0.0.1.", file=sys.stderr)
        return 2
    from emulator.chip import EmulatedChip

    spec = ",".join(
        [args.preset] + [f"{k}={v}" for k, v in (("cores", args.cores), ("rows", args.rows), ("cols", args.cols)) if v]
    )
    try:
        chip = EmulatedChip.from_spec(spec, seed=args.seed, device=args.device)
    except (HilError, ValueError) as exc:
        print(f"hil emulate: {exc}", file=sys.stderr)
        return 2
    runner = CallerThreadRunner()
    srv = ServerThread(
        chip,
        args.host,
        args.port,
        max_block_bytes=int(args.max_block_mib * 2**20),
        part_timeout_s=args.part_timeout,
        line_timeout_s=args.line_timeout,
        idle_timeout_s=args.idle_timeout or None,
        max_connections=args.max_connections,
        memory_budget_bytes=int(args.memory_budget_mib * 2**20),
        cache_bytes=int(args.cache_mib * 2**20),
        cache_entries=args.cache_entries,
        max_pulse_repeats=args.max_pulse_repeats,
        token=token,
        runner=runner,
    )
    try:
        srv.start()
    except (OSError, ValueError) as exc:
        print(f"hil emulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    g = chip.geometry
    print(
        f"hil emulate: listening on {args.host}:{srv.port} (preset {args.preset}, seed {args.seed}, "
        f"{g.n_cores} cores x {g.n_rows} x {g.n_cols}, boot {srv.server.boot_id}, "
        f"{'token required' if token is not None else 'no token'})",
        flush=True,
    )
    try:
        runner.serve(stop)  # chip calls run here, on the main thread, until SIGINT/SIGTERM
    finally:
        stopper = threading.Thread(target=srv.stop, daemon=True)
        stopper.start()
        # Requests still queued while the loop shuts down are served until it is gone.
        done = threading.Event()
        threading.Thread(target=lambda: (stopper.join(), done.set()), daemon=True).start()
        runner.serve(done)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

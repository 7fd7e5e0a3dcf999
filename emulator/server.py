"""The emulator as a virtual lab board: an asyncio TCP server speaking the board protocol.

``hil emulate --host 127.0.0.1 --port 5025 --preset hermes --seed 0`` (or ``python -m
emulator.server ...``) serves an :class:`emulator.EmulatedChip` exactly as the chip's control
board would, so protocols run through the real lab path: protocol -> :class:`drivers.board.LabChip`
-> pyvisa -> TCP -> this server. The protocol is specified in ``docs/board-protocol.md``; its
encoding lives in :mod:`hil.board_protocol` (shared with the client).

:class:`BoardServer` serves any :class:`hil.Chip`. Requests run one at a time on a worker thread
(the chip is not thread-safe), so the event loop keeps answering other connections, including
garbage, while a long MVM runs. Request ids make retries idempotent: the replies of recent
requests are kept (bounded by count and bytes) and a repeated id gets the stored reply; an id
whose reply was dropped from memory gets a ``STALE`` error instead of being executed again.
Nothing survives a restart: a new process has a new boot id, which the client checks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import secrets
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import numpy as np

import hil
from hil.board_protocol import (
    DEFAULT_MAX_BLOCK_BYTES,
    MAX_LINE_BYTES,
    PROTOCOL_VERSION,
    BoardProtocolError,
    Message,
    encode_message,
    error_reply,
    read_message,
)
from hil.chip import Chip
from hil.errors import ChipInputError, HilError, SafetyLimitError

log = logging.getLogger("emulator.server")

Chunks = list[Any]
#: Size of the slices large reply blocks are written in (bytes).
_SLICE_BYTES = 1 << 20


class ReplyCache:
    """Replies of recent request ids, bounded by ``max_entries`` and ``max_bytes`` (oldest dropped first).

    Dropped ids are remembered (up to ``forget_limit``) so a late retry is refused, not re-executed.
    """

    def __init__(self, max_entries: int = 1024, max_bytes: int = 256 * 2**20, forget_limit: int = 1_000_000) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._replies: OrderedDict[str, tuple[str, Chunks, int]] = OrderedDict()
        self._bytes = 0
        self._forgotten: set[str] = set()
        self._forgotten_order: deque[str] = deque()
        self._forget_limit = forget_limit

    def get(self, rid: str) -> tuple[str, Chunks] | None:
        item = self._replies.get(rid)
        return None if item is None else (item[0], item[1])

    def forgotten(self, rid: str) -> bool:
        return rid in self._forgotten

    def put(self, rid: str, verb: str, chunks: Chunks) -> None:
        size = sum(len(c) for c in chunks)
        self._replies[rid] = (verb, chunks, size)
        self._bytes += size
        while self._replies and (len(self._replies) > self.max_entries or self._bytes > self.max_bytes):
            old, (_, _, old_size) = self._replies.popitem(last=False)
            self._bytes -= old_size
            self._forgotten.add(old)
            self._forgotten_order.append(old)
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


class BoardServer:
    """Serve ``chip`` over the board protocol.

    ``max_block_bytes``: largest array accepted in one request (bytes). ``part_timeout_s``: once a
    command line has arrived, its blocks must follow within this time (s), else the connection is
    closed. ``cache_entries`` / ``cache_bytes``: how many replies are kept for retries.
    ``runner``: where chip calls execute (default: a worker thread via ``asyncio.to_thread``;
    ``hil emulate`` uses a :class:`CallerThreadRunner` on its main thread).
    """

    def __init__(
        self,
        chip: Chip,
        *,
        max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
        part_timeout_s: float = 30.0,
        cache_entries: int = 1024,
        cache_bytes: int = 256 * 2**20,
        runner: CallerThreadRunner | None = None,
    ) -> None:
        self.chip = chip
        self._run: Callable[..., Any] = runner.run if runner is not None else asyncio.to_thread
        self.max_block_bytes = max_block_bytes
        self.part_timeout_s = part_timeout_s
        self.boot_id = secrets.token_hex(8)
        self.cache = ReplyCache(cache_entries, cache_bytes)
        self.stats = {"executed": 0, "replayed": 0, "errors": 0, "protocol_errors": 0, "connections": 0}
        self._inflight: dict[str, asyncio.Future[Chunks]] = {}
        self._chip_lock = threading.Lock()
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._handlers: dict[str, Callable[[Message], dict[str, Any]]] = {
            "HELLO": self._hello,
            "NOW": lambda m: {"t": self.chip.now()},
            "SLEEP": self._sleep,
            "PULSE": self._pulse,
            "READDEV": self._read_devices,
            "READCELL": self._read_cells,
            "MVM": self._mvm,
            "LDPU.SET": self._set_ldpu,
            "LDPU.GET": self._get_ldpu,
            "STATS": lambda m: dict(self.stats),
        }

    # ------------------------------------------------------------------ lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: a free port); return the port."""
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
        self.stats["connections"] += 1
        peer = writer.get_extra_info("peername")
        task = asyncio.current_task()
        if task is not None:
            self._connections[task] = writer
        try:
            while True:
                try:
                    msg = await read_message(
                        reader, max_block_bytes=self.max_block_bytes, part_timeout_s=self.part_timeout_s
                    )
                except BoardProtocolError as exc:
                    self.stats["protocol_errors"] += 1
                    log.info("%s: %s", peer, exc)
                    await self._send(writer, error_reply(exc.rid, exc.code, str(exc)))
                    if exc.fatal:
                        break
                    continue
                except TimeoutError:
                    self.stats["protocol_errors"] += 1
                    text = f"message incomplete after {self.part_timeout_s} s; closing the connection"
                    await self._send(writer, error_reply("-", "PROTOCOL", text))
                    break
                if msg is None:
                    break
                if msg.verb == "*IDN?":
                    await self._send(writer, [self._idn().encode() + b"\n"])
                    continue
                await self._send(writer, await self._dispatch(msg))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass  # the client went away; its request (if any) still completed and is cached
        finally:
            self._connections.pop(task, None)  # type: ignore[arg-type]
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

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

    async def _dispatch(self, msg: Message) -> Chunks:
        rid = msg.rid
        if msg.verb == "HELLO":  # handshakes are per connection: never replayed
            return await self._run(self._execute, msg)
        cached = self.cache.get(rid)
        if cached is not None:
            verb, chunks = cached
            if verb != msg.verb:
                return error_reply(rid, "PROTOCOL", f"request id {rid} was already used for {verb}; use a new id")
            self.stats["replayed"] += 1
            return chunks
        pending = self._inflight.get(rid)
        if pending is not None:  # a retry of a request that is still running: wait for its reply
            self.stats["replayed"] += 1
            return await asyncio.shield(pending)
        if self.cache.forgotten(rid):
            return error_reply(
                rid, "STALE", f"request {rid} was executed but its reply is no longer kept; it was not run again"
            )
        future: asyncio.Future[Chunks] = asyncio.get_running_loop().create_future()
        self._inflight[rid] = future
        try:
            chunks = await self._run(self._execute, msg)
        except BaseException as exc:  # e.g. cancelled at shutdown: retries must not hang on the future
            chunks = error_reply(rid, "INTERNAL", f"request {rid} aborted: {type(exc).__name__}")
            raise
        finally:
            self.cache.put(rid, msg.verb, chunks)
            del self._inflight[rid]
            future.set_result(chunks)
        return chunks

    def _execute(self, msg: Message) -> Chunks:
        """Run one request on the chip (worker thread) and encode its reply."""
        handler = self._handlers.get(msg.verb)
        if handler is None:
            self.stats["errors"] += 1
            known = ", ".join(sorted(self._handlers))
            return error_reply(msg.rid, "UNKNOWN", f"unknown command {msg.verb!r}; known commands: {known}, *IDN?")
        try:
            with self._chip_lock:
                start = time.perf_counter()
                result = handler(msg)
                # The board's own execution time: lets a client tell transport from chip time.
                result["exec_s"] = time.perf_counter() - start
                self.stats["executed"] += 1
            return encode_message("OK", msg.rid, result, narrow=True)
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
        return error_reply(msg.rid, code, text)

    # ------------------------------------------------------------------ commands
    def _hello(self, msg: Message) -> dict[str, Any]:
        proto = msg.get_int("proto") if "proto" in msg.params else PROTOCOL_VERSION
        if proto != PROTOCOL_VERSION:
            raise BoardProtocolError(f"protocol version {proto} is not supported; this board speaks {PROTOCOL_VERSION}")
        info = {"chip": self.chip.info.model_dump(mode="json"), "geometry": self.chip.geometry.model_dump()}
        blob = np.frombuffer(json.dumps(info).encode(), dtype=np.uint8)
        return {"proto": PROTOCOL_VERSION, "boot": self.boot_id, "server": f"hil-{hil.__version__}", "info": blob}

    def _sleep(self, msg: Message) -> dict[str, Any]:
        self.chip.sleep(msg.get_float("s"))
        return {"t": self.chip.now()}

    def _pulse(self, msg: Message) -> dict[str, Any]:
        core = msg.get_array("core", scalar_ok=False)
        self.chip.apply_pulses(
            core,
            msg.get_array("row"),
            msg.get_array("col"),
            msg.get_array("device"),
            kind=msg.get_array("kind"),
            amplitude_ua=msg.get_array("amp"),
            width_ns=msg.get_array("width"),
        )
        return {"n": int(core.shape[0]) if core.ndim else 1}

    def _read_devices(self, msg: Message) -> dict[str, Any]:
        counts = self.chip.read_devices(
            msg.get_array("core", scalar_ok=False), msg.get_array("row"), msg.get_array("col"), msg.get_array("device")
        )
        return {"counts": np.asarray(counts, dtype=np.int32)}

    def _read_cells(self, msg: Message) -> dict[str, Any]:
        counts = self.chip.read_cells(msg.get_array("core", scalar_ok=False), msg.get_array("row"), msg.get_array("col"))
        return {"counts": np.asarray(counts, dtype=np.int32)}

    def _mvm(self, msg: Message) -> dict[str, Any]:
        x = msg.get_array("x", scalar_ok=False)
        y = self.chip.mvm(
            x, msg.get_array("cores", scalar_ok=False), output=msg.get_str("output"), mode=msg.get_str("mode")
        )
        if hasattr(y, "detach"):
            y = y.detach().cpu().numpy()
        return {"y": np.ascontiguousarray(y)}

    def _set_ldpu(self, msg: Message) -> dict[str, Any]:
        self.chip.set_ldpu(
            msg.get_array("cores", scalar_ok=False),
            msg.get_array("scale"),
            msg.get_array("offset"),
            msg.get_array("relu"),
        )
        return {}

    def _get_ldpu(self, msg: Message) -> dict[str, Any]:
        regs = self.chip.get_ldpu(msg.get_array("cores", scalar_ok=False))
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
        self.port = fut.result(30.0)
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
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=5025, help="TCP port (0: pick a free one; default 5025)")
    p.add_argument("--preset", default="hermes", help="emulator preset (default hermes)")
    p.add_argument("--seed", type=int, default=0, help="emulator seed (default 0)")
    p.add_argument("--cores", type=int, help="number of cores (small chips for tests; default the preset's)")
    p.add_argument("--rows", type=int, help="rows per core")
    p.add_argument("--cols", type=int, help="columns per core")
    p.add_argument("--device", default="cpu", help="torch device: cpu or cuda (default cpu)")
    p.add_argument("--max-block-mib", type=float, default=DEFAULT_MAX_BLOCK_BYTES / 2**20,
                   help="largest array accepted in one request, MiB (default %(default)s)")
    p.add_argument("--part-timeout", type=float, default=30.0,
                   help="seconds a started message may take to arrive completely (default 30)")
    p.add_argument("--cache-entries", type=int, default=1024, help="replies kept for retries (default 1024)")
    p.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGINT or SIGTERM; return the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    if not 0 <= args.port <= 65535:
        print(f"hil emulate: --port {args.port} is not a TCP port; give 0 to 65535.", file=sys.stderr)
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
        cache_entries=args.cache_entries,
        runner=runner,
    )
    try:
        srv.start()
    except OSError as exc:
        print(f"hil emulate: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    g = chip.geometry
    print(
        f"hil emulate: listening on {args.host}:{srv.port} (preset {args.preset}, seed {args.seed}, "
        f"{g.n_cores} cores x {g.n_rows} x {g.n_cols}, boot {srv.server.boot_id})",
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

"""Best-effort MQTT telemetry of runs (aiomqtt 2.x): status and progress as small JSON messages.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Topics under ``<prefix>/<run_id>/``: ``status`` (retained: ``{"state": "running" | "success" |
"abort" | "fail" | "offline", ...}``; the broker publishes ``offline`` as Last Will if this process
dies) and ``progress`` (``{"done", "total", "desc", "t"}``, at most every ``min_interval_s``).

The sink never stops or slows a run: messages go into a bounded drop-oldest queue that a background
thread drains with its own asyncio loop (the aiomqtt client is created inside that running loop).
Connection failures are counted and retried with a fresh client and backoff; ``close`` waits at most
``close_timeout_s``. No arrays and no pickles: only JSON summaries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import threading
import time
from typing import Any
from urllib.parse import urlparse

from hil.errors import HilError

log = logging.getLogger("hil.telemetry")


class MqttTelemetry:
    """Publishes one run's status and progress to an MQTT broker (QoS 0, best effort)."""

    def __init__(
        self,
        host: str,
        port: int = 1883,
        *,
        prefix: str = "hil",
        run_id: str = "run",
        queue_size: int = 256,
        min_interval_s: float = 0.2,
        close_timeout_s: float = 2.0,
    ) -> None:
        if not 0 < port < 65536:
            raise HilError(f"MQTT port={port} is out of range; allowed 1-65535.")
        self.host, self.port = host, port
        self.base = f"{prefix.strip('/')}/{run_id}"
        self.min_interval_s = min_interval_s
        self.close_timeout_s = close_timeout_s
        self._queue: collections.deque[tuple[str, str, bool]] = collections.deque(maxlen=queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._last_progress = 0.0
        self.published = 0
        self.dropped = 0
        self.errors = 0
        self.last_error = ""
        self._thread = threading.Thread(target=self._run_loop, name=f"hil-mqtt-{run_id}", daemon=True)
        self._thread.start()

    @classmethod
    def from_url(cls, url: str, *, run_id: str) -> MqttTelemetry:
        """``mqtt://HOST[:PORT][/PREFIX]`` (port 1883 and prefix ``hil`` by default)."""
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        if parsed.scheme != "mqtt" or not parsed.hostname:
            raise HilError(f"telemetry URL {url!r} is not of the form mqtt://HOST[:PORT][/PREFIX].")
        try:
            port = parsed.port or 1883
        except ValueError as exc:
            raise HilError(f"telemetry URL {url!r} has a bad port: {exc}.") from exc
        return cls(parsed.hostname, port, prefix=parsed.path.strip("/") or "hil", run_id=run_id)

    # ------------------------------------------------------------------ the sink API (engine side)
    def started(self, meta: dict[str, Any]) -> None:
        self._put("status", {"state": "running", **meta}, retain=True)

    def progress(self, done: int, total: int | None, desc: str = "") -> None:
        now = time.monotonic()
        if now - self._last_progress < self.min_interval_s and done != total:
            return
        self._last_progress = now
        self._put("progress", {"done": done, "total": total, "desc": desc, "t": time.time()})

    def finished(self, result: dict[str, Any]) -> None:
        self._put("status", {"state": result.get("status", "fail"), **result}, retain=True)

    def close(self) -> None:
        """Publish what is queued if the broker is there, then stop (waits at most close_timeout_s)."""
        self._stop.set()
        self._poke()
        self._thread.join(self.close_timeout_s)

    # ------------------------------------------------------------------ internals
    def _put(self, topic: str, payload: dict[str, Any], *, retain: bool = False) -> None:
        try:
            text = json.dumps(payload, default=str)
        except (TypeError, ValueError):
            text = json.dumps({"unserialisable": repr(payload)[:500]})
        with self._lock:
            if len(self._queue) == self._queue.maxlen:
                self.dropped += 1  # drop-oldest: a slow broker never holds up the run
            self._queue.append((f"{self.base}/{topic}", text, retain))
        self._poke()

    def _poke(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(wake.set)

    def _run_loop(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception as exc:  # never propagate into the run
            self.errors += 1
            self.last_error = repr(exc)

    async def _main(self) -> None:
        import aiomqtt

        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        backoff = 0.2
        will = aiomqtt.Will(f"{self.base}/status", json.dumps({"state": "offline"}), qos=0, retain=True)
        while True:
            try:
                # A fresh client per attempt: aiomqtt 2.x clients are not reusable after a failure.
                async with aiomqtt.Client(self.host, self.port, will=will, timeout=2.0) as client:
                    backoff = 0.2
                    while True:
                        await self._drain(client)
                        if self._stop.is_set():
                            return
                        self._wake.clear()
                        if not self._queue:
                            await self._wait()
            except aiomqtt.MqttError as exc:
                self.errors += 1
                self.last_error = str(exc)
                log.debug("MQTT telemetry to %s:%s failed: %s", self.host, self.port, exc)
                if self._stop.is_set():
                    return
                await self._sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _wait(self, seconds: float = 1.0) -> None:
        assert self._wake is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _sleep(self, seconds: float) -> None:
        assert self._wake is not None
        self._wake.clear()
        await self._wait(seconds)

    async def _drain(self, client: Any) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    return
                topic, text, retain = self._queue[0]
            await client.publish(topic, payload=text, qos=0, retain=retain)
            with self._lock:
                if self._queue and self._queue[0] == (topic, text, retain):
                    self._queue.popleft()
            self.published += 1

"""Best-effort MQTT telemetry of runs (aiomqtt 2.x): status and progress as small JSON messages.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Topics under ``<prefix>/<run_id>/``: ``status`` (retained: ``{"state": "running" | "success" |
"abort" | "fail" | "offline", ...}``; the broker publishes ``offline`` as Last Will if this process
dies) and ``progress`` (``{"done", "total", "desc", "t"}``, at most every ``min_interval_s``).
``docs/telemetry.md`` describes them. The broker is named by a URL (:class:`MqttSettings`):
``mqtt[s]://[USER[:PASSWORD]@]HOST[:PORT][/PREFIX][?client_id=ID&password_env=VAR&password_file=PATH&ca=PATH]``;
``mqtts`` is TLS (port 8883). A password is best kept out of the URL (it would show in ``ps``):
``password_env``/``password_file`` or ``$HIL_MQTT_PASSWORD``/``$HIL_MQTT_PASSWORD_FILE`` give it.
:func:`watch_runs` is the other side: it follows the status and progress of live runs (``hil watch``).

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
import os
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from hil.errors import HilError, did_you_mean

log = logging.getLogger("hil.telemetry")


#: Query parameters a broker URL may carry.
URL_OPTIONS = ("client_id", "password_env", "password_file", "ca", "insecure")
#: Environment variables the broker settings fall back to.
ENV_USERNAME, ENV_PASSWORD, ENV_PASSWORD_FILE = "HIL_MQTT_USERNAME", "HIL_MQTT_PASSWORD", "HIL_MQTT_PASSWORD_FILE"
ENV_CA, ENV_CLIENT_ID = "HIL_MQTT_CA", "HIL_MQTT_CLIENT_ID"
#: Final states of a run's ``status`` topic (``offline``: the publisher died; its Last Will).
FINAL_STATES = ("success", "abort", "fail", "offline")


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to reach a broker, from a URL (see the module docstring) and the environment."""

    host: str
    port: int = 1883
    prefix: str = "hil"
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str | None = None
    ca_file: str | None = None
    insecure: bool = False

    @classmethod
    def from_url(cls, url: str, env: Mapping[str, str] | None = None) -> MqttSettings:
        env = os.environ if env is None else env
        parsed = urlparse(url if "://" in url else f"mqtt://{url}")
        shown = redact_url(url)
        if parsed.scheme not in ("mqtt", "mqtts") or not parsed.hostname:
            raise HilError(
                f"telemetry URL {shown!r} is not of the form mqtt://HOST[:PORT][/PREFIX] "
                "(mqtts:// for TLS, USER@HOST with a user; see docs/telemetry.md)."
            )
        try:
            port = parsed.port or (8883 if parsed.scheme == "mqtts" else 1883)
        except ValueError as exc:
            raise HilError(f"telemetry URL {shown!r} has a bad port: {exc}.") from exc
        query = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
        unknown = [k for k in query if k not in URL_OPTIONS]
        if unknown:
            raise HilError(
                f"telemetry URL {shown!r}: unknown option {unknown[0]!r}{did_you_mean(unknown[0], URL_OPTIONS)}; "
                f"valid: {', '.join(URL_OPTIONS)}."
            )
        password = unquote(parsed.password) if parsed.password is not None else None
        if password is None and query.get("password_env"):
            var = query["password_env"]
            if var not in env:
                raise HilError(f"telemetry URL {shown!r}: password_env={var} names an environment variable that is not set.")
            password = env[var]
        pw_file = query.get("password_file") or env.get(ENV_PASSWORD_FILE)
        if password is None and pw_file:
            try:
                password = Path(pw_file).expanduser().read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise HilError(
                    f"telemetry URL {shown!r}: cannot read the password file {pw_file}: {exc.strerror or exc}."
                ) from exc
        if password is None and env.get(ENV_PASSWORD):
            password = env[ENV_PASSWORD]
        username = unquote(parsed.username) if parsed.username else env.get(ENV_USERNAME) or None
        if password is not None and not username:
            raise HilError(
                f"telemetry URL {shown!r}: a password without a user name; write mqtt://USER@HOST or set ${ENV_USERNAME}."
            )
        ca = query.get("ca") or env.get(ENV_CA) or None
        if ca is not None and not Path(ca).expanduser().is_file():
            raise HilError(f"telemetry URL {shown!r}: the CA file {ca} does not exist.")
        if (ca or "insecure" in query) and parsed.scheme != "mqtts":
            raise HilError(f"telemetry URL {shown!r}: ca= and insecure= are TLS options; use mqtts://.")
        return cls(
            host=parsed.hostname, port=port, prefix=parsed.path.strip("/") or "hil", tls=parsed.scheme == "mqtts",
            username=username, password=password, client_id=query.get("client_id") or env.get(ENV_CLIENT_ID) or None,
            ca_file=str(Path(ca).expanduser()) if ca else None, insecure=query.get("insecure", "0") not in ("", "0", "false"),
        )

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context of an ``mqtts`` broker (system CAs, or ``ca``; ``insecure`` verifies nothing)."""
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``aiomqtt.Client`` for these settings."""
        return {"hostname": self.host, "port": self.port, "username": self.username, "password": self.password,
                "identifier": self.client_id, "tls_context": self.tls_context()}

    def __str__(self) -> str:
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}/{self.prefix}"


def redact_url(url: str) -> str:
    """``url`` with a password replaced by ``***`` (for messages and logs)."""
    parsed = urlparse(url)
    if parsed.password is None:
        return url
    netloc = parsed.netloc.replace(f":{parsed.password}@", ":***@", 1)
    return parsed._replace(netloc=netloc).geturl()


class MqttTelemetry:
    """Publishes one run's status and progress to an MQTT broker (QoS 0, best effort).

    ``username``/``password``: broker credentials; ``tls_context``: TLS (``MqttSettings.tls_context``);
    ``client_id``: the MQTT client identifier (default: one the client library picks).
    :meth:`stats` counts what was published, dropped and what failed (refused credentials included).
    """

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
        username: str | None = None,
        password: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        client_id: str | None = None,
    ) -> None:
        if not 0 < port < 65536:
            raise HilError(f"MQTT port={port} is out of range; allowed 1-65535.")
        self.host, self.port = host, port
        self._auth = {"username": username, "password": password, "identifier": client_id, "tls_context": tls_context}
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
    def from_url(cls, url: str, *, run_id: str, **kwargs: Any) -> MqttTelemetry:
        """A sink for the broker of ``url`` (see :class:`MqttSettings`; port 1883, 8883 for
        ``mqtts``, and prefix ``hil`` by default)."""
        s = MqttSettings.from_url(url)
        return cls(s.host, s.port, prefix=s.prefix, run_id=run_id, username=s.username, password=s.password,
                   tls_context=s.tls_context(), client_id=s.client_id, **kwargs)

    def stats(self) -> dict[str, Any]:
        """Messages published and dropped, connection errors and the last one."""
        return {"published": self.published, "dropped": self.dropped, "errors": self.errors, "last_error": self.last_error}

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
                async with aiomqtt.Client(self.host, self.port, will=will, timeout=2.0, **self._auth) as client:
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


# ---------------------------------------------------------------------------------------------- watching
def _final(payload: dict[str, Any]) -> bool:
    return payload.get("state") in FINAL_STATES


async def watch_runs(
    settings: MqttSettings,
    on_message: Callable[[str, str, dict[str, Any]], None],
    *,
    run_id: str | None = None,
    timeout_s: float | None = None,
) -> dict[str, Any] | None:
    """Follow runs' ``status`` and ``progress`` under ``settings.prefix``; calls
    ``on_message(run_id, topic, payload)`` for each message (retained ones first).

    With ``run_id``: returns that run's final status payload once it has one (success, abort,
    fail or offline). Without: follows every run until ``timeout_s`` (returns None). Raises
    ``aiomqtt.MqttError`` when the broker cannot be reached or refuses the credentials.
    """
    import aiomqtt

    kwargs = settings.client_kwargs()
    async with aiomqtt.Client(**kwargs, timeout=5.0) as client:
        base = settings.prefix.strip("/")
        await client.subscribe(f"{base}/{run_id}/#" if run_id else f"{base}/+/+")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        messages = client.messages.__aiter__()
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            try:
                message = await asyncio.wait_for(messages.__anext__(), timeout=left)
            except TimeoutError:
                return None
            parts = str(message.topic)[len(base) + 1:].split("/")
            if len(parts) != 2:
                continue
            run, topic = parts
            try:
                payload = json.loads(bytes(message.payload).decode("utf-8"))  # type: ignore[arg-type]
            except (ValueError, TypeError):
                continue
            if not isinstance(payload, dict):
                continue
            on_message(run, topic, payload)
            if run_id is not None and topic == "status" and _final(payload):
                return payload


def describe_message(run: str, topic: str, payload: dict[str, Any]) -> str:
    """One line of ``hil watch`` for a telemetry message."""
    if topic == "progress":
        done, total = payload.get("done"), payload.get("total")
        numeric = isinstance(done, int | float) and isinstance(total, int | float) and total
        pct = f" ({100 * done / total:.0f} %)" if numeric else ""
        desc = f" {payload['desc']}" if payload.get("desc") else ""
        return f"{run}  progress {done}/{total if total is not None else '?'}{pct}{desc}"
    state = payload.get("state", "?")
    if state == "running":
        return f"{run}  running  {payload.get('protocol', '')} on {payload.get('chip_spec') or '?'} (seed {payload.get('seed')})"
    if state == "offline":
        return f"{run}  offline  (the writing process went away without finishing)"
    extra = f" ({payload.get('reason')})" if payload.get("reason") else ""
    calls = f", {payload['n_calls']} chip calls" if "n_calls" in payload else ""
    wall = f", {payload['wall_s']:.1f} s" if isinstance(payload.get("wall_s"), int | float) else ""
    return f"{run}  {state}{extra}{calls}{wall}"

"""MQTT telemetry against a real broker (mosquitto on a free loopback port, or amqtt in-process)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil.runner import run_protocol
from hil.telemetry import MqttTelemetry
from tests.hil.conftest import SMALL_CHIP


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"no broker on port {port}")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    """A real MQTT broker on 127.0.0.1: mosquitto if installed, else amqtt in a thread."""
    port = _free_port()
    if shutil.which("mosquitto"):
        conf = tmp_path / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_port(port)
            yield port
        finally:
            proc.terminate()
            proc.wait(10)
        return
    amqtt_broker = pytest.importorskip("amqtt.broker")
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict = {}

    async def serve() -> None:
        b = amqtt_broker.Broker({
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        })
        await b.start()
        holder["b"] = b
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()), loop.run_forever()), daemon=True)
    thread.start()
    started.wait(10)
    try:
        yield port
    finally:
        asyncio.run_coroutine_threadsafe(holder["b"].shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


class Subscriber:
    """Collects messages on a topic filter in a background thread."""

    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[tuple[str, dict, bool]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(port, topic)), daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "subscriber did not connect"

    async def _run(self, port: int, topic: str) -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(topic)
            self.ready.set()
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(anext(client.messages), timeout=0.2)
                except TimeoutError:
                    continue
                self.messages.append((str(msg.topic), json.loads(msg.payload), bool(msg.retain)))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_a_run_publishes_status_and_progress(tmp_path: Path, broker: int) -> None:
    sub = Subscriber(broker, "lab7/#")
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=5"], out=tmp_path, telemetry=f"mqtt://127.0.0.1:{broker}/lab7")
    deadline = time.time() + 10
    while time.time() < deadline and not any(m[1].get("state") == "success" for m in sub.messages):
        time.sleep(0.05)
    sub.stop()
    topics = [m[0] for m in sub.messages]
    states = [m[1]["state"] for m in sub.messages if m[0].endswith("/status")]
    assert states == ["running", "success"], sub.messages
    assert all(t.startswith(f"lab7/{res.run_id}/") for t in topics)
    progress = [m[1] for m in sub.messages if m[0].endswith("/progress")]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 5
    final = next(m[1] for m in sub.messages if m[1].get("state") == "success")
    assert final["run_id"] == res.run_id and final["n_calls"] == 25 and final["path"] == str(res.path)
    # the final status is retained: a late subscriber still learns how the run ended
    late = Subscriber(broker, f"lab7/{res.run_id}/status")
    deadline = time.time() + 5
    while time.time() < deadline and not late.messages:
        time.sleep(0.05)
    late.stop()
    assert late.messages and late.messages[0][1]["state"] == "success" and late.messages[0][2] is True


def test_a_missing_broker_never_stops_or_stalls_a_run(tmp_path: Path) -> None:
    port = _free_port()  # nothing listens there
    t0 = time.perf_counter()
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=3"], out=tmp_path, telemetry=f"mqtt://127.0.0.1:{port}/x")
    assert res.status == "success" and time.perf_counter() - t0 < 10
    sink = MqttTelemetry("127.0.0.1", port, run_id="r", queue_size=4, min_interval_s=0.0, close_timeout_s=0.5)
    for i in range(50):
        sink.progress(i, 50)
    sink.finished({"status": "success"})
    sink.close()
    assert sink.published == 0 and sink.errors >= 1 and sink.dropped > 0


def test_bad_telemetry_url_is_refused() -> None:
    from hil.errors import HilError

    with pytest.raises(HilError, match="not of the form mqtt://HOST"):
        MqttTelemetry.from_url("http://example/x", run_id="r")

"""MQTT telemetry with credentials, an ACL and TLS, against mosquitto started here (with a password
file, an ACL and a TLS listener whose certificate openssl makes), and `hil watch`."""

from __future__ import annotations

import asyncio
import getpass
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hil.errors import HilError
from hil.runner import run_protocol
from hil.telemetry import MqttSettings, MqttTelemetry
from tests.hil.conftest import SMALL_CHIP, popen_hil
from tests.hil.system_tools import require
from tests.hil.test_telemetry import _free_port, _wait_port

USER, PASSWORD = "rig1", "s3cret-pw"
VIEWER, VIEWER_PASSWORD = "viewer", "look-only"


@dataclass
class SecureBroker:
    port: int
    tls_port: int
    ca: Path
    folder: Path


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    require("mosquitto", "mosquitto_passwd", "openssl")
    d = tmp_path_factory.mktemp("mosquitto")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem")], check=True, capture_output=True, timeout=60)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(d / "passwd"), USER, PASSWORD], check=True, capture_output=True)
    subprocess.run(["mosquitto_passwd", "-b", str(d / "passwd"), VIEWER, VIEWER_PASSWORD], check=True, capture_output=True)
    (d / "acl").write_text(f"user {USER}\ntopic readwrite lab/#\n\nuser {VIEWER}\ntopic read lab/#\n")
    port, tls_port = _free_port(), _free_port()
    (d / "mosquitto.conf").write_text(
        # `user`: started as root, mosquitto would switch to user mosquitto, who cannot read this folder
        f"user {getpass.getuser()}\nper_listener_settings false\nallow_anonymous false\npersistence false\n"
        f"password_file {d / 'passwd'}\nacl_file {d / 'acl'}\n"
        f"listener {port} 127.0.0.1\n"
        f"listener {tls_port} 127.0.0.1\ncertfile {d / 'cert.pem'}\nkeyfile {d / 'key.pem'}\n"
    )
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=open(d / "mosquitto.log", "w"))  # noqa: SIM115 - closed with the process
    try:
        _wait_port(port)
        _wait_port(tls_port)
        yield SecureBroker(port, tls_port, d / "cert.pem", d)
    finally:
        proc.terminate()
        proc.wait(10)


class Subscriber:
    """Collects (topic, payload) on a topic filter in a background thread, logged in as a user."""

    def __init__(self, port: int, topic: str, username: str, password: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run(port, topic, username, password)), daemon=True)
        self._thread.start()
        assert self.ready.wait(10), "subscriber did not connect"

    async def _run(self, port: int, topic: str, username: str, password: str) -> None:
        import aiomqtt

        async with aiomqtt.Client("127.0.0.1", port, username=username, password=password) as client:
            await client.subscribe(topic)
            self.ready.set()
            while not self._stop.is_set():
                try:
                    msg = await asyncio.wait_for(anext(client.messages), timeout=0.2)
                except TimeoutError:
                    continue
                self.messages.append((str(msg.topic), json.loads(msg.payload)))

    def wait_for(self, done: object, timeout: float = 10.0) -> list[tuple[str, dict]]:
        deadline = time.time() + timeout
        while time.time() < deadline and not done(list(self.messages)):  # type: ignore[operator]
            time.sleep(0.05)
        assert done(list(self.messages)), self.messages  # type: ignore[operator]
        return list(self.messages)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _subscriber(port: int, topic: str, *, username: str, password: str) -> Subscriber:
    return Subscriber(port, topic, username, password)


def test_right_credentials_publish_and_the_acl_is_enforced(secure_broker: SecureBroker, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIG_PW", PASSWORD)
    sub = _subscriber(secure_broker.port, "lab/#", username=VIEWER, password=VIEWER_PASSWORD)
    url = f"mqtt://{USER}@127.0.0.1:{secure_broker.port}/lab/rig1?password_env=RIG_PW&client_id=hil-test-rig1"
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=3", "sleep_s=0"], out=tmp_path, telemetry=url, progress=False)
    assert res.status == "success" and res.telemetry is not None and res.telemetry["errors"] == 0
    assert res.telemetry["published"] >= 3
    msgs = sub.wait_for(lambda m: any(t.endswith("/status") and p.get("state") == "success" for t, p in m))
    assert any(t == f"lab/rig1/{res.run_id}/progress" for t, _ in msgs)
    from hil.runs import RunReader

    with RunReader(res.path) as r:
        assert PASSWORD not in json.dumps(r.metadata(), default=str)
    # the ACL: the viewer may read but not publish; a rig publishing outside lab/# reaches nobody
    outside = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=1", "sleep_s=0"], out=tmp_path, progress=False,
                           telemetry=f"mqtt://{USER}:{PASSWORD}@127.0.0.1:{secure_broker.port}/elsewhere")
    assert outside.status == "success"
    time.sleep(0.5)
    assert not [t for t, _ in sub.messages if outside.run_id in t]
    sub.stop()


def test_wrong_credentials_are_refused_and_the_run_still_succeeds(secure_broker: SecureBroker, tmp_path: Path, cli) -> None:
    sink = MqttTelemetry("127.0.0.1", secure_broker.port, prefix="lab", run_id="wrong", username=USER, password="nope",
                         close_timeout_s=1.0)
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=2", "sleep_s=0"], out=tmp_path, telemetry=sink, progress=False)
    assert res.status == "success" and sink.published == 0 and sink.errors >= 1
    assert "authori" in sink.last_error.lower() or "refused" in sink.last_error.lower(), sink.last_error
    assert res.telemetry == sink.stats()
    out = cli("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=1", "--out", str(tmp_path),
              "--mqtt", f"mqtt://{USER}:wrong@127.0.0.1:{secure_broker.port}/lab")
    assert out.code == 0 and "telemetry (best effort): 0 messages published" in out.err
    with pytest.raises(HilError, match="password without a user name"):
        MqttSettings.from_url("mqtt://127.0.0.1/lab", env={"HIL_MQTT_PASSWORD": "x"})
    with pytest.raises(HilError, match="did you mean 'client_id'"):
        MqttSettings.from_url("mqtt://u@127.0.0.1/lab?clientid=x", env={})


def test_tls_with_a_password_file_publishes(secure_broker: SecureBroker, tmp_path: Path) -> None:
    pw = tmp_path / "pw"
    pw.write_text(PASSWORD + "\n")
    sub = _subscriber(secure_broker.port, "lab/#", username=USER, password=PASSWORD)
    url = f"mqtts://{USER}@127.0.0.1:{secure_broker.tls_port}/lab/tls?password_file={pw}&ca={secure_broker.ca}"
    settings = MqttSettings.from_url(url, env={})
    assert settings.tls and settings.password == PASSWORD and PASSWORD not in repr(settings)
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=2", "sleep_s=0"], out=tmp_path, telemetry=url, progress=False)
    assert res.status == "success" and res.telemetry["errors"] == 0, res.telemetry
    sub.wait_for(lambda m: any(t == f"lab/tls/{res.run_id}/status" and p.get("state") == "success" for t, p in m))
    sub.stop()
    # without the CA the certificate is not trusted: counted, never fatal
    bad = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=1", "sleep_s=0"], out=tmp_path, progress=False,
                       telemetry=f"mqtts://{USER}:{PASSWORD}@127.0.0.1:{secure_broker.tls_port}/lab")
    assert bad.status == "success" and bad.telemetry["published"] == 0 and bad.telemetry["errors"] >= 1


def test_hil_watch_follows_a_live_run(secure_broker: SecureBroker, tmp_path: Path) -> None:
    env = {"HIL_MQTT_PASSWORD": PASSWORD}
    url = f"mqtt://{USER}@127.0.0.1:{secure_broker.port}/lab/watch"
    run = popen_hil("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=30", "--set", "sleep_s=0", "--out", str(tmp_path),
                    "--mqtt", url, env=env)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 0, err
    run_id = Path(out.strip()).stem
    # the run's final status is retained: watching it afterwards ends at once with the run's exit code
    watch = popen_hil("watch", f"mqtt://{VIEWER}@127.0.0.1:{secure_broker.port}/lab/watch", "--run", run_id,
                      "--timeout", "20", env={"HIL_MQTT_PASSWORD": VIEWER_PASSWORD})
    wout, werr = watch.communicate(timeout=60)
    assert watch.returncode == 0, werr
    assert f"{run_id}  success (completed)" in wout
    # follow every run under the prefix while one is live
    follower = popen_hil("watch", url, "--timeout", "15", "--json", env=env)
    time.sleep(1.5)
    live = popen_hil("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=40", "--set", "sleep_s=0", "--out",
                     str(tmp_path), "--mqtt", url, env=env)
    lout, _ = live.communicate(timeout=120)
    follower.terminate()
    fout, _ = follower.communicate(timeout=30)
    live_id = Path(lout.strip()).stem
    seen = [json.loads(line) for line in fout.splitlines() if line.startswith("{")]
    mine = [m for m in seen if m["run_id"] == live_id]
    assert any(m["topic"] == "status" and m["state"] == "running" for m in mine), fout
    assert any(m["topic"] == "progress" for m in mine)
    bad = popen_hil("watch", f"mqtt://{VIEWER}:wrong@127.0.0.1:{secure_broker.port}/lab", "--timeout", "5")
    _, berr = bad.communicate(timeout=60)
    assert bad.returncode == 5 and "telemetry broker" in berr


def test_threads_are_not_left_behind() -> None:
    assert not [t for t in threading.enumerate() if t.name.startswith("hil-mqtt") and t.is_alive()]

"""``hil serve`` without a browser: the JSON API, escaping, access control, path traversal, crafted files, read-only."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette 1.x: "Using httpx with starlette.testclient is deprecated"
    from starlette.testclient import TestClient

from hil.cli import main as hil_main
from hil.errors import HilError
from hil.web.app import create_app
from hil.web.figures import FigureCache, Figures
from hil.web.security import AccessMiddleware, bind_token, is_loopback
from tests.hil.crafted import SECRET, make_corpus
from tests.web.conftest import HOSTILE, snapshot

REPO = Path(__file__).resolve().parents[2]


def client(folder: Path, **kw: object) -> TestClient:
    return TestClient(create_app(folder, **kw), base_url="http://127.0.0.1:8765")


def cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert hil_main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_the_json_api_mirrors_hil_ls_and_hil_show(runs: Path, figure_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ls = cli_json(capsys, "ls", str(runs), "--json")  # (this indexes copied-in.h5 in this copy: fine, the API reads it)
    with client(runs, figure_cache=figure_cache) as c:
        api = c.get("/api/runs").json()
        assert [e["run_id"] for e in api] == [e["run_id"] for e in reversed(ls)]  # the same runs, newest first
        assert api[0].keys() == ls[-1].keys()
        oldest = c.get("/api/runs?order=oldest").json()
        assert [e["run_id"] for e in oldest] == [e["run_id"] for e in ls]
        assert {e["protocol"] for e in c.get("/api/runs?protocol=drift").json()} == {"drift"}
        assert [e["effective_status"] for e in c.get("/api/runs?status=fail").json()] == ["fail"]
        assert {e["sample"] for e in c.get("/api/runs?tag=first").json()} == {"chip-A"}
        assert len(c.get("/api/runs?tag=web").json()) >= 2
        assert len(c.get("/api/runs?where=reads_per_point=2").json()) == 1
        bad = c.get("/api/runs?where=nosuchkey=1")
        assert bad.status_code == 400 and "no run here has a key" in bad.json()["error"]
        assert c.get("/api/runs?limit=x").status_code == 400

        rid = next(e["run_id"] for e in api if e["protocol"] == "drift" and e["status"] == "success")
        show = cli_json(capsys, "show", rid, "--runs", str(runs), "--json")
        doc = c.get(f"/api/runs/{rid}").json()
        assert doc.keys() == show.keys()
        assert doc["path"] == f"{rid}.h5"  # the file's name, not the server's absolute path
        for key in ("run_id", "config", "summary", "streams", "journal", "effective_status", "tags"):
            assert json.dumps(doc[key], sort_keys=True) == json.dumps(show[key], sort_keys=True).replace("NaN", "null"), key

        s = c.get(f"/api/runs/{rid}/streams/drift_reads").json()
        assert s["rows"] == 4 and s["x"] == "time_s" and s["row"] == [0, 1, 2, 3]
        assert s["columns"]["time_s"]["kind"] == "scalar" and s["columns"]["counts"]["kind"] == "array"
        assert len(s["columns"]["counts"]["min"]) == 4 and s["units"]["time_s"] == "s"
        assert c.get(f"/api/runs/{rid}/streams/drift_reads?start=3").json()["row"] == [3]
        assert len(c.get(f"/api/runs/{rid}/streams/drift_reads?max_points=2").json()["row"]) == 2
        assert c.get(f"/api/runs/{rid}/streams/nostream").status_code == 404

        figs = c.get(f"/api/runs/{rid}/figures").json()
        assert figs["figures"] and not figs["pending"]
        png = c.get(figs["figures"][0]["url"])
        assert png.status_code == 200 and png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"

        # A finished run's event stream: one full update marked 'end', then the stream closes.
        with c.stream("GET", f"/api/runs/{rid}/events") as ev:
            text = "".join(ev.iter_text())
        assert ev.headers["content-type"].startswith("text/event-stream")
        events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)
        assert [name for name, _ in events] == ["end"]
        end = json.loads(events[0][1])
        assert end["full"] and end["state"]["effective_status"] == "success" and end["data"]["drift_reads"]["rows"] == 4


#: A writer in its own process: 40 rows of a scalar and a vector column, 40 ms apart, then success.
SLOW_WRITER = r"""
import os, socket, sys, time
import numpy as np
from hil.runs import RunWriter
path = sys.argv[1]
w = RunWriter(path, {"run_id": os.path.basename(path)[:-3], "protocol": "slow", "host": socket.gethostname(),
                     "pid": os.getpid(), "started_unix": time.time()}, flush_interval_s=0.05)
for i in range(40):
    w.log("ticks", i=i, v=np.full((1, 3), float(i)))
    time.sleep(0.04)
w.close(status="success", summary_json='{"ticks": 40}')
"""


def test_the_event_stream_follows_a_run_being_written(runs: Path) -> None:
    path = runs / "slow-run.h5"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(path)], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "timeout"
            time.sleep(0.02)
        with client(runs, poll_s=0.05) as c, c.stream("GET", "/api/runs/slow-run/events") as ev:
            text = "".join(ev.iter_text())
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = [(name, json.loads(data)) for name, data in re.findall(r"event: (\w+)\ndata: (.*)\n\n", text)]
    updates = [d for name, d in events if name in ("update", "end")]
    assert events[-1][0] == "end" and updates[-1]["state"]["effective_status"] == "success"
    counts = [d["state"]["streams"].get("ticks", 0) for d in updates]
    assert len(set(counts)) >= 3 and counts == sorted(counts) and counts[-1] == 40, counts
    assert updates[0]["full"] and not any(d["full"] for d in updates[1:])
    rows: list[int] = []  # the rows pushed, put together, are every row once, in order
    for d in updates:
        if "ticks" in d["data"]:
            p = d["data"]["ticks"]
            assert p["start"] == len(rows)
            rows += p["row"]
            assert p["columns"]["v"]["kind"] == "array" and p["columns"]["v"]["values"] == p["columns"]["i"]["values"]
    assert rows == list(range(40))
    assert not [d for name, d in events if name == "problem" and d["final"]]


def test_pages_escape_what_run_files_say(runs: Path, figure_cache: Path) -> None:
    with client(runs, figure_cache=figure_cache) as c:
        listing = c.get("/")
        assert listing.status_code == 200 and "text/html" in listing.headers["content-type"]
        assert HOSTILE not in listing.text and "&lt;script&gt;window.__pwned" in listing.text
        assert "copied-in" in listing.text  # a run file the index does not know is listed too
        assert "script-src 'self'" in listing.headers["content-security-policy"]
        rid = c.get("/api/runs?tag=first").json()[0]["run_id"]
        page = c.get(f"/runs/{rid}")
        assert page.status_code == 200 and HOSTILE not in page.text and "<script>window" not in page.text
        assert "&lt;img src=x onerror=&quot;window.__pwned=1&quot;&gt;" in page.text
        assert 'class="stream-plot"' in page.text and "<img src=\"/runs/" in page.text  # the plots and the figures
        filtered = c.get("/?protocol=drift&status=fail")
        assert filtered.text.count('class="run"') == 1 and "status-fail" in filtered.text
        assert c.get("/?tag=first").text.count('class="run"') == 1
        live = c.get(f"/runs/{rid}/live")
        assert live.status_code == 200 and 'id="row-count"' in live.text
        assert c.get("/static/hil.js").headers["content-type"].startswith("text/javascript")
        assert c.get("/nowhere").status_code == 404


def test_run_ids_must_name_a_file_inside_the_folder(runs: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = sorted(runs.glob("2*.h5"))[0]
    (outside / "secret.h5").write_bytes(victim.read_bytes())
    (runs / "escape.h5").symlink_to(outside / "secret.h5")
    with client(runs) as c:
        for url in ["/runs/..%2F..%2Fetc%2Fpasswd", "/runs/%2E%2E", "/runs/.hil-index", "/api/runs/..%2Foutside%2Fsecret",
                    "/api/runs/escape", "/runs/escape", "/api/runs/%00x", "/api/runs/a%5C..%5Cb",
                    "/api/runs/..%2F..%2Fetc%2Fpasswd/streams/x", "/runs/escape/figures/0"]:
            r = c.get(url)
            assert r.status_code in (400, 404), (url, r.status_code)
            assert "root:" not in r.text
        assert c.get(f"/api/runs/{victim.stem}").status_code == 200


def test_a_token_is_needed_off_loopback_and_checked_on_every_request(runs: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.1.2.3")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("::")
    assert bind_token("127.0.0.1", None) is None
    made = bind_token("0.0.0.0", None)
    assert made and len(made) >= 16 and made != bind_token("0.0.0.0", None)
    with pytest.raises(ValueError, match="at least 16"):
        bind_token("0.0.0.0", "short")
    with pytest.raises(ValueError, match="only letters"):
        bind_token("0.0.0.0", "a" * 16 + "; Path=/")
    with pytest.raises(HilError, match="needs a token"):
        create_app(runs, host="0.0.0.0")

    token = "t0ken-" + "x" * 20
    with TestClient(create_app(runs, host="0.0.0.0", token=token), base_url="http://lab-pc.example:8765") as c:
        for url in ["/", "/api/runs", "/static/hil.js", "/runs/x", "/api/runs/x/events"]:
            r = c.get(url)
            assert r.status_code == 401 and "token" in r.text, url
        assert c.get("/api/runs", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
        assert c.get("/api/runs", params={"token": token[:-1]}).status_code == 401
        assert c.get("/api/runs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        first = c.get("/", params={"token": token})  # the printed URL: sets a cookie for the links and the live page
        assert first.status_code == 200 and "HttpOnly" in first.headers["set-cookie"]
        assert c.get("/api/runs").status_code == 200  # the cookie now
        c.cookies.clear()
        assert c.get("/api/runs").status_code == 401
    # Bound to loopback, no token: only loopback Host names (a DNS-rebinding page cannot read runs).
    with TestClient(create_app(runs), base_url="http://evil.example") as c:
        assert c.get("/api/runs").status_code == 403
    for host in ("127.0.0.1:9", "localhost", "[::1]:8765"):
        assert AccessMiddleware(None, token=None, loopback_only=True).allowed({"host": host}, "")[0], host


def test_figures_of_a_file_that_cannot_be_drawn_are_a_message(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path / "crafted")
    cache = FigureCache(tmp_path / "crafted", tmp_path / "cache")
    for case in ("not-ours", "truncated-half", "columns-attr-not-json"):
        figs = cache.figures(corpus[case])
        assert figs.paths == () and "the figures could not be made" in figs.problems[0], case
    assert cache.figures(corpus["genuine"]).paths  # and a genuine one draws


def test_crafted_files_give_error_pages_not_crashes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The figures (hil report) of every crafted file are checked in tests/hil/test_crafted_files.py; here the
    # pages around them (and test_figures_of_a_file_that_cannot_be_drawn: a failed rendering is a message).
    monkeypatch.setattr(FigureCache, "figures", lambda self, path: Figures((), ()))
    corpus = make_corpus(tmp_path / "crafted")
    secret = Path(SECRET).read_text().splitlines()[0] if Path(SECRET).exists() else None
    with client(tmp_path / "crafted", poll_s=0.01) as c:
        listing = c.get("/")
        assert listing.status_code == 200 and "not readable runs" in listing.text
        assert c.get("/api/runs").status_code == 200
        for case, path in corpus.items():
            for url in [f"/runs/{path.stem}", f"/api/runs/{path.stem}/streams/steps", f"/runs/{path.stem}/live"]:
                r = c.get(url)
                assert r.status_code in (200, 400, 404, 422), (case, url, r.status_code, r.text[-300:])
                assert "Traceback" not in r.text, (case, url)
                if secret:
                    assert secret not in r.text, (case, url)
            if case == "genuine":
                assert c.get(f"/runs/{path.stem}").status_code == 200
            if case in ("not-ours", "random-bytes", "truncated-half", "layout-version-future"):
                page = c.get(f"/runs/{path.stem}")
                assert page.status_code == 422 and "cannot be read" in page.text
                assert f"{tmp_path}/crafted/" not in page.text  # files are named by their name, not the server's path
                with c.stream("GET", f"/api/runs/{path.stem}/events") as ev:  # the live page's events say so, then end
                    events = re.findall(r"event: (\w+)\ndata: (.*)\n\n", "".join(ev.iter_text()))
                assert {name for name, _ in events} == {"problem"} and json.loads(events[-1][1])["final"], case


def test_a_session_leaves_the_runs_folder_as_it_was(runs: Path) -> None:
    before = snapshot(runs)
    with client(runs) as c:
        ids = [e["run_id"] for e in c.get("/api/runs").json()]
        assert "copied-in" in ids
        for rid in ids:
            doc = c.get(f"/api/runs/{rid}").json()
            for stream in doc["streams"]:
                assert c.get(f"/api/runs/{rid}/streams/{stream}").status_code == 200
            if rid != "copied-in":  # (the figures of a copy are those of its original: the same hooks, made once)
                assert c.get(f"/runs/{rid}").status_code == 200
                for fig in c.get(f"/api/runs/{rid}/figures").json()["figures"]:
                    assert c.get(fig["url"]).status_code == 200
            with c.stream("GET", f"/api/runs/{rid}/events") as ev:
                "".join(ev.iter_text())
            c.get(f"/runs/{rid}/live")
        c.get("/?status=success")
        cache = c.app.state.figures.root
        assert runs.resolve() not in cache.parents and any(cache.iterdir())
    assert snapshot(runs) == before  # no new file (no index entry for copied-in.h5), no byte or mtime changed
    assert not cache.exists()  # the figure cache goes with the server


def test_hil_serve_prints_its_url_and_stops_cleanly_on_ctrl_c(runs: Path) -> None:
    assert hil_main(["serve", "--runs", str(runs / "nope")]) == 2
    assert hil_main(["serve", "--runs", str(runs), "--port", "70000"]) == 2
    proc = subprocess.Popen([sys.executable, "-m", "hil.cli", "serve", "--runs", str(runs), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert m, line + proc.stderr.read()
        import httpx

        r = httpx.get(m.group(1) + "api/runs", timeout=30)
        assert r.status_code == 200 and len(r.json()) == 4
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped" in out and "Traceback" not in err

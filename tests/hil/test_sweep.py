"""Sweeps (hil sweep): points are ordinary runs on Dask workers; bad grids exit 2 before any run; a
worker SIGKILLed mid-run leaves its run incomplete and ``--resume`` finishes it alone; Ctrl-C marks
the running runs abort; a dead scheduler is a clear error; the index and the DataFrame know the sweep.

One local Dask cluster (2 worker processes on 127.0.0.1) serves the tests that need workers; the
``hil sweep`` drivers of the fault tests run as subprocesses against its scheduler.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict, Field

from hil import Chip, RunLog, register_protocol
from hil.errors import ConfigError
from hil.runner import run_protocol
from hil.runs import RunIndex, RunReader
from hil.sweep import (
    SweepError,
    load_sweep,
    parse_grid,
    parse_seeds,
    plan_sweep,
    record_path,
    results,
    resume_sweep,
    run_sweep,
)
from tests.hil.conftest import REPO, SMALL_CHIP, sha256

FAKE_CHIP = "fake:cores=1,rows=8,cols=8"
MODULE = "tests.hil.test_sweep"


class HoldConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(6, ge=1, le=100_000)
    gain: float = Field(1.0, ge=0.0)
    #: At this step the point with gain == hold_gain and seed 0 writes its pid to ``marker`` (once)
    #: and waits there to be killed.
    hold_at: int = -1
    hold_gain: float = -1.0
    marker: str = ""
    #: While this file does not exist, every step waits 20 ms (a slow run, for Ctrl-C).
    gate: str = ""


def _check(config: HoldConfig, geometry: Any) -> None:
    if config.gain > 100:
        raise ValueError(f"gain={config.gain} is above 100; the write heads saturate there")


@register_protocol("test-sweep-hold", HoldConfig, check=_check, description="chip reads per step; holds or waits (sweep tests)")
def hold(chip: Chip, config: HoldConfig, run: RunLog) -> dict[str, Any]:
    rng = run.rng("hold")
    total = 0.0
    for i in range(config.steps):
        if config.marker and i == config.hold_at and config.gain == config.hold_gain and run.seed == 0:
            marker = Path(config.marker)
            if not marker.exists():
                tmp = marker.with_suffix(".tmp")
                tmp.write_text(str(os.getpid()))
                tmp.replace(marker)
                deadline = time.monotonic() + 120.0
                while time.monotonic() < deadline:  # the test SIGKILLs this worker process here
                    time.sleep(0.05)
        if config.gate and not Path(config.gate).exists():
            time.sleep(0.02)
        rows = rng.integers(0, chip.geometry.n_rows, 4)
        counts = chip.read_cells(np.zeros(4, int), rows, np.zeros(4, int))
        total += float(np.sum(counts)) * config.gain
        run.log("steps", step=i, counts=counts[None])
    torch = sys.modules.get("torch")
    return {"total": total, "gain": config.gain, "steps": config.steps,
            "torch_threads": torch.get_num_threads() if torch is not None else 0}


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A local cluster of 2 worker processes (127.0.0.1) shared by this module; closed at the end."""
    from distributed import Client, LocalCluster

    cl = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      silence_logs=logging.ERROR, preload=["hil.sweep"])
    client = Client(cl, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cl.close()


def sweep_cli(*argv: str) -> subprocess.Popen:
    """``hil sweep ARGV`` as a driver process of its own (it loads this module's protocols)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "hil.cli", "sweep", "--protocol-module", MODULE, "--no-progress", *argv],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate: Any, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def statuses(folder: Path, sweep_id: str) -> dict[int, str]:
    df = results(folder, sweep_id)
    return dict(zip(df["point"], df["status"], strict=True))


# ---------------------------------------------------------------------------------------------- parsing
def test_grid_and_seed_syntax() -> None:
    assert parse_grid(["gain=0.5,2", "mode=a,'b,c'", "lst=[1,2],[3]"]) == {
        "gain": [0.5, 2], "mode": ["a", "b,c"], "lst": [[1, 2], [3]]}
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10] and parse_seeds("7") == [7]
    for bad, match in [("3-1", "runs backwards"), ("x", "not a seed or range"), ("1,1", "more than once")]:
        with pytest.raises(SweepError, match=match):
            parse_seeds(bad)
    with pytest.raises(SweepError, match="given twice"):
        parse_grid(["a=1", "a=2"])
    with pytest.raises(SweepError, match="empty value"):
        parse_grid(["a=1,,2"])


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--grid", "gian=1,2"], r"no config key 'gian'.*did you mean 'gain'.*valid keys: steps, gain"),
        (["--grid", "gain=1,oops"], r"--grid gain='oops' is not a valid value.*gain='oops'"),
        (["--grid", "gain=1,-2"], r"--grid gain=-2 is not a valid value.*greater than or equal to 0"),
        (["--grid", "gain=1,500"], r"sweep point 1 \(gain=500, seed 0\).*gain=500.0 is above 100"),
        (["--grid", "seed=1,2"], r"seeds are not a config key; give them with --seeds"),
        (["--grid", "gain=1,2", "--set", "gain=3"], r"--grid gain and --set gain=\.\.\. both set gain"),
        (["--seeds", "5-2"], r"range '5-2' runs backwards; write 2-5"),
        (["--chip", "replay:x.h5"], r"a replay: chip only replays one"),
        (["--chip", "nochip"], r"--chip nochip: .*installed backends"),
        (["--workers", "2", "--chip", "lab:127.0.0.1:1"], r"one physical chip.*--workers 0"),
        (["--chip", "emulator:hermes,cores=1,noise.fast_mvm_scale=300"], r"--chip emulator:.*fast_mvm_scale.*100"),
    ],
    ids=["unknown-key", "bad-type", "below-limit", "protocol-check", "seed-key", "set-clash", "seeds", "replay", "chip", "lab",
         "chip-part"],
)
def test_bad_grids_exit_2_before_any_run(tmp_path: Path, cli: Any, argv: list[str], match: str) -> None:
    out = tmp_path / "runs"
    extra = ([] if "--chip" in argv else ["--chip", FAKE_CHIP]) + ([] if "--workers" in argv else ["--workers", "0"])
    res = cli("sweep", "test-sweep-hold", *argv, *extra, "--out", str(out), "--no-progress")
    assert res.code == 2, res.err
    assert re.search(match, res.err, re.DOTALL), res.err
    assert not out.exists() or not any(out.iterdir()), "nothing is written before the sweep is valid"


# ---------------------------------------------------------------------------------------------- in-process
def test_a_sweep_in_this_process_is_runs_in_the_index_and_a_dataframe(tmp_path: Path, cli: Any) -> None:
    res = cli("sweep", "test-sweep-hold", "--chip", FAKE_CHIP, "--grid", "gain=0.5,2", "--seeds", "3-4", "--set", "steps=5",
              "--tag", "study", "--workers", "0", "--out", str(tmp_path), "--json")
    assert res.code == 0, res.err
    doc = res.json()
    sweep_id = doc["sweep_id"]
    assert doc["counts"] == {"success": 4} and [p["params"] for p in doc["points"]] == [
        {"gain": 0.5}, {"gain": 0.5}, {"gain": 2}, {"gain": 2}]
    record = json.loads(record_path(tmp_path, sweep_id).read_text())
    assert [p["seed"] for p in record["points"]] == [3, 4, 3, 4] and record["grid"] == {"gain": [0.5, 2]}

    listed = cli("ls", str(tmp_path), "--where", f"sweep={sweep_id}", "--json").json()
    assert sorted(e["run_id"] for e in listed) == sorted(p["run_id"] for p in doc["points"])
    assert all(e["tags"] == ["study"] and e["config"]["steps"] == 5 for e in listed)
    assert len(cli("ls", str(tmp_path), "--where", f"sweep={sweep_id}", "--where", "gain=2", "--json").json()) == 2

    df = results(tmp_path, sweep_id[:15])  # a unique prefix does
    assert list(df["gain"]) == [0.5, 0.5, 2, 2] and list(df["seed"]) == [3, 4, 3, 4]
    assert (df["status"] == "success").all() and "summary.total" in df
    # Each point is an ordinary run: the same as `hil run` with its config and seed.
    ref = run_protocol("test-sweep-hold", chip=FAKE_CHIP, sets=["steps=5", "gain=2"], seed=4, out=tmp_path / "ref", progress=False)
    assert df["summary.total"].iloc[3] == ref.summary["total"] and df["summary.total"].iloc[2] != ref.summary["total"]
    with RunReader(tmp_path / df["file"].iloc[3]) as r:
        assert r.start.sweep == sweep_id and r.start.sweep_point == 3 and r.start.sweep_params == {"gain": 2}

    cat = __import__("hil").catalog(tmp_path, where=[f"sweep={sweep_id}"])
    assert len(cat) == 4 and set(cat["sweep_point"]) == {0, 1, 2, 3}
    table = cli("sweep", "--results", sweep_id, "--runs", str(tmp_path))
    assert table.code == 0 and "summary.total" in table.out and table.out.count("success") == 4
    listed = cli("sweep", "--list", "--runs", str(tmp_path))
    assert sweep_id in listed.out and "4 success" in listed.out
    again = cli("sweep", "--resume", sweep_id, "--runs", str(tmp_path), "--json")
    assert again.code == 0 and again.json()["ran"] == 0, "a finished sweep has nothing to resume"


def test_old_index_entries_without_a_sweep_still_load_and_filter(tmp_path: Path) -> None:
    from hil.runs.catalog import select

    old = {"run_id": "r1", "file": "r1.h5", "protocol": "p", "status": "success", "config": {"a": 1}}
    new = {**old, "run_id": "r2", "file": "r2.h5", "sweep": "sweep-x", "sweep_point": 0}
    assert [e["run_id"] for e in select([old, new], where=["sweep=sweep-x"])] == ["r2"]
    with pytest.raises(Exception, match="no run here has a key 'sweep'"):
        select([old], where=["sweep=sweep-x"])


# ---------------------------------------------------------------------------------------------- on Dask
def test_points_on_workers_match_the_same_runs_in_one_process(tmp_path: Path, cluster: Any) -> None:
    plan = dict(grid={"gain": [1.0, 3.0]}, seeds=[0, 1], chips=[SMALL_CHIP], sets=["steps=4"])
    par = run_sweep("test-sweep-hold", out=tmp_path / "par", client=cluster, progress=False, **plan)
    ser = run_sweep("test-sweep-hold", out=tmp_path / "ser", workers=0, progress=False, **plan)
    assert par.exit_code == 0 and par.counts == {"success": 4}, par.to_dict()
    a, b = results(tmp_path / "par", par.sweep_id), results(tmp_path / "ser", ser.sweep_id)
    np.testing.assert_array_equal(a["summary.total"].to_numpy(), b["summary.total"].to_numpy())
    assert len(set(a["summary.total"])) == 4
    with RunReader(tmp_path / "par" / a["file"].iloc[0]) as r:
        assert r.attrs["pid"] != os.getpid(), "the run was written by a worker process"
    assert set(a["summary.torch_threads"]) == {1}, "on a scheduler each run gets one torch thread unless told"


def test_a_worker_killed_mid_run_leaves_it_incomplete_and_resume_finishes_only_it(tmp_path: Path, cluster: Any) -> None:
    out, marker = tmp_path / "runs", tmp_path / "held.pid"
    proc = sweep_cli("test-sweep-hold", "--chip", FAKE_CHIP, "--grid", "gain=1,2", "--seeds", "0-1", "--set", "steps=8",
                     "--set", "hold_at=3", "--set", "hold_gain=2", "--set", f"marker={marker}",
                     "--scheduler", cluster.scheduler.address, "--out", str(out))
    wait_for(marker.exists, "the held run's marker")
    pid = int(marker.read_text())
    assert pid != proc.pid and pid in {w["pid"] for w in cluster.run(lambda: {"pid": os.getpid()}).values()}
    os.kill(pid, signal.SIGKILL)  # the worker process, mid-run
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    sweep_id = stdout.strip()
    assert f"hil sweep --resume {sweep_id}" in stderr
    before = statuses(out, sweep_id)
    assert before == {0: "success", 1: "success", 2: "incomplete", 3: "success"}, stderr
    df = results(out, sweep_id)
    hashes = {f: sha256(out / f) for f in df["file"]}

    res = resume_sweep(sweep_id, out, client=cluster, progress=False)
    assert res.exit_code == 0 and res.ran == 1, res.to_dict()
    after = results(out, sweep_id)
    assert (after["status"] == "success").all()
    for i, f in enumerate(after["file"]):
        with RunReader(out / f) as r:
            assert r.start.resume_count == (1 if i == 2 else 0)
        if i != 2:
            assert sha256(out / f) == hashes[f], "a finished run was not touched"
    ref = run_protocol("test-sweep-hold", chip=FAKE_CHIP, sets=["steps=8", "gain=2"], seed=0, out=tmp_path / "ref", progress=False)
    assert after["summary.total"].iloc[2] == ref.summary["total"]
    assert len(RunIndex(out).entries()) == 4


def test_ctrl_c_marks_the_running_runs_abort_and_resume_finishes_the_sweep(tmp_path: Path, cluster: Any) -> None:
    out, gate = tmp_path / "runs", tmp_path / "gate"
    proc = sweep_cli("test-sweep-hold", "--chip", FAKE_CHIP, "--grid", "gain=1,2,3", "--seeds", "0-1", "--set", "steps=800",
                     "--set", f"gate={gate}", "--scheduler", cluster.scheduler.address, "--out", str(out))

    def two_running() -> bool:
        try:
            return sum(e["effective_status"] == "running" for e in RunIndex(out).entries(sync=False)) == 2
        except Exception:
            return False

    wait_for(two_running, "two runs on the two workers")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 3, stderr
    sweep_id = stdout.strip()
    assert "interrupted" in stderr and f"hil sweep --resume {sweep_id}" in stderr
    st = statuses(out, sweep_id)
    assert sorted(st.values()) == ["abort", "abort", "pending", "pending", "pending", "pending"], st
    for f in results(out, sweep_id)["file"]:
        if f:
            with RunReader(out / f) as r:
                assert r.stop.exit_reason == "keyboard_interrupt" and 0 < len(r.journal) < 800

    gate.write_text("open")
    res = resume_sweep(sweep_id, out, client=cluster, progress=False)
    assert res.exit_code == 0 and res.counts == {"success": 6} and res.ran == 6, res.to_dict()
    df = results(out, sweep_id)
    ref = run_protocol("test-sweep-hold", chip=FAKE_CHIP, sets=["steps=800", "gain=3"], seed=1, out=tmp_path / "ref",
                       progress=False)
    assert df["summary.total"].iloc[5] == ref.summary["total"]


def test_a_dead_scheduler_is_a_clear_error_and_nothing_is_written(tmp_path: Path, cli: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    res = cli("sweep", "test-sweep-hold", "--chip", FAKE_CHIP, "--grid", "gain=1,2", "--scheduler", f"tcp://127.0.0.1:{port}",
              "--scheduler-timeout", "1", "--out", str(tmp_path / "runs"), "--no-progress")
    assert res.code == 5, res.err
    assert f"the Dask scheduler at tcp://127.0.0.1:{port} did not answer" in res.err and "dask scheduler" in res.err
    assert not list((tmp_path / "runs").glob("**/*.h5")) and not list((tmp_path / "runs").glob("sweeps/*.json"))
    bad = cli("sweep", "test-sweep-hold", "--chip", FAKE_CHIP, "--scheduler", "127.0.0.1:8786", "--out", str(tmp_path / "r2"))
    assert bad.code == 2 and "e.g. tcp://HOST:8786" in bad.err


def test_the_default_local_cluster_runs_a_sweep(tmp_path: Path, cli: Any) -> None:
    res = cli("sweep", "test-sweep-hold", "--chip", SMALL_CHIP, "--grid", "gain=1,2", "--set", "steps=3", "--workers", "1",
              "--torch-threads", "3", "--out", str(tmp_path), "--json")
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["counts"] == {"success": 2} and "local cluster of 1 worker" in doc["workers"]
    assert load_sweep(tmp_path, doc["sweep_id"]).grid == {"gain": [1, 2]}
    df = results(tmp_path, doc["sweep_id"])
    assert list(df["summary.torch_threads"]) == [3, 3], "each run got the torch threads it was given"


def test_plan_sweep_validates_every_point_without_writing(tmp_path: Path) -> None:
    record = plan_sweep("test-sweep-hold", grid={"gain": [1, 2], "steps": [2, 3]}, seeds=[0, 1, 2], chips=[FAKE_CHIP, SMALL_CHIP])
    assert len(record.points) == 24 and record.points[0].params == {"gain": 1, "steps": 2, "chip": FAKE_CHIP}
    assert len({p.run_id for p in record.points}) == 24
    with pytest.raises(ConfigError, match=r"--grid steps=0 is not a valid value"):
        plan_sweep("test-sweep-hold", grid={"steps": [1, 0]}, chips=[FAKE_CHIP])

"""The ``hil`` command line: every command, JSON output, exit codes, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import h5py
import pytest

from hil.cli import DEMO_STEPS
from hil.runs import LAYOUT_VERSION, RunReader
from tests.hil.conftest import SMALL_CHIP, sha256

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def recorded(tmp_path: Path, cli) -> Path:
    res = cli("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=3", "--seed", "4", "--out", str(tmp_path / "runs"))
    assert res.code == 0, res.err
    path = Path(res.out.strip())
    assert path.exists() and path.parent == tmp_path / "runs"
    return path


def test_protocols_lists_installed_ones_with_config_keys(cli) -> None:
    res = cli("protocols", "--json")
    assert res.code == 0
    by_name = {p["name"]: p for p in res.json()}
    assert "mvm-sweep" in by_name and by_name["mvm-sweep"]["has_plots"]
    keys = {k["key"]: k for k in by_name["mvm-sweep"]["config"]}
    assert keys["batch"]["default"] == 32 and keys["batch"]["limits"] == {"minimum": 1, "maximum": 4096}
    text = cli("protocols", "mvm-sweep")
    assert text.code == 0 and "input_scales" in text.out and "default [0.125, 0.25, 0.5, 1.0]" in text.out


def test_run_show_ls_report_replay(tmp_path: Path, cli, recorded: Path) -> None:
    shown = cli("show", str(recorded), "--json")
    assert shown.code == 0
    meta = shown.json()
    assert meta["status"] == "success" and meta["config"]["steps"] == 3 and meta["seed"] == 4
    assert meta["streams"]["steps"]["rows"] == 3 and meta["streams"]["steps"]["columns"]["y"]["shape"] == [4, 16]
    assert meta["journal"] == {"calls": 15, "by_op": {"now": 3, "sleep": 3, "apply_pulses": 3, "read_devices": 3, "mvm": 3}, "errors": 0}
    text = cli("show", meta["run_id"][:22], "--runs", str(recorded.parent))  # run-id prefix lookup
    assert text.code == 0 and "journal:  15 chip calls" in text.out and "status success (completed)" in text.out

    listed = cli("ls", str(recorded.parent), "--json")
    assert listed.code == 0 and [e["run_id"] for e in listed.json()] == [meta["run_id"]]

    report = cli("report", str(recorded), "--out", str(tmp_path / "png"), "--json")
    assert report.code == 0
    plots = [Path(p) for p in report.json()["plots"]]
    assert [p.name for p in plots] == ["stream-steps.png"]
    assert plots[0].read_bytes()[:8] == PNG and plots[0].stat().st_size > 5000

    replayed = cli("replay", str(recorded), "--json")
    assert replayed.code == 0, replayed.err
    out = replayed.json()
    assert out["status"] == "success" and out["n_calls"] == 15 and out["summary"] == meta["summary"]
    assert len(cli("ls", str(recorded.parent), "--json").json()) == 2


def test_mvm_sweep_report_includes_the_protocol_plots(tmp_path: Path, cli) -> None:
    run = cli("run", "mvm-sweep", "--chip", SMALL_CHIP, "--set", "batch=8", "--set", "repeats=1", "--out", str(tmp_path), "--json")
    assert run.code == 0, run.err
    report = cli("report", run.json()["path"], "--json")
    names = {Path(p).name for p in report.json()["plots"]}
    assert {"mvm-sweep-error-vs-scale.png", "mvm-sweep-weights.png", "stream-mvm.png", "stream-weights.png"} <= names
    assert report.json()["warnings"] == []


def test_demo_writes_runs_plots_and_a_summary(tmp_path: Path, cli) -> None:
    out = tmp_path / "demo"
    res = cli("demo", "--out", str(out), "--chip", "emulator:hermes,cores=2,rows=32,cols=32", "--json")
    assert res.code == 0, res.err
    data = res.json()
    assert [r["protocol"] for r in data["runs"]] == [p for p, _ in DEMO_STEPS]
    assert all(r["status"] == "success" and Path(r["path"]).exists() for r in data["runs"])
    assert all(any(Path(p).read_bytes()[:8] == PNG for p in r["plots"]) for r in data["runs"])
    text = cli("demo", "--out", str(out), "--chip", "emulator:hermes,cores=2,rows=32,cols=32", "--no-report")
    n = len(DEMO_STEPS)
    assert text.code == 0 and f"hil demo: {n} run(s)" in text.out and "rel_error_by_scale" in text.out
    assert "mvm_error" in text.out and "adc_gain_spread" in text.out
    assert len(list(out.glob("*.h5"))) == 2 * n


def test_bad_input_exit_codes_and_messages(tmp_path: Path, cli, recorded: Path) -> None:
    res = cli("run", "no-such-protocol", "--out", str(tmp_path))
    assert res.code == 2 and "valid protocols:" in res.err and "mvm-sweep" in res.err
    res = cli("run", "mvm-sweep", "--set", "nope=1", "--out", str(tmp_path))
    assert res.code == 2 and "unknown config key 'nope'" in res.err and "valid keys: cores" in res.err
    res = cli("run", "mvm-sweep", "--set", "batch=99999", "--out", str(tmp_path), "--json")
    assert res.code == 2 and "batch=99999: Input should be less than or equal to 4096" in res.json()["error"]
    bad_yaml = tmp_path / "c.yaml"
    bad_yaml.write_text("just a string\n")
    res = cli("run", "mvm-sweep", "--config", str(bad_yaml), "--out", str(tmp_path))
    assert res.code == 2 and "must hold a mapping" in res.err
    res = cli("run", "mvm-sweep", "--chip", "warp-drive", "--out", str(tmp_path))
    assert res.code == 2 and "unknown chip 'warp-drive'" in res.err
    res = cli("run", "mvm-sweep", "--chip", "emulator:hermes,cores=zero", "--out", str(tmp_path))
    assert res.code == 2 and "cores=zero" in res.err
    assert not list(tmp_path.glob("*.h5"))  # no half-written runs
    res = cli("bogus-command")
    assert res.code == 2 and "invalid choice" in res.err

    not_run = tmp_path / "notes.txt"
    not_run.write_text("hello")
    truncated = tmp_path / "cut.h5"
    truncated.write_bytes(recorded.read_bytes()[:4000])
    newer = tmp_path / "newer.h5"
    shutil.copy(recorded, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["hil_layout_version"] = LAYOUT_VERSION + 1
    for path, words in ((not_run, "not an HDF5 file"), (truncated, "damaged"), (newer, "Upgrade hil")):
        before = sha256(path)
        for command in ("show", "replay", "resume", "report"):
            res = cli(command, str(path))
            assert res.code == 2 and words in res.err, (command, path, res.err)
        assert sha256(path) == before
    res = cli("show", str(tmp_path / "missing.h5"))
    assert res.code == 2 and "no such file" in res.err
    res = cli("show", "nonexistent-run-id", "--runs", str(recorded.parent))
    assert res.code == 2 and "no run 'nonexistent-run-id'" in res.err


def test_replay_that_differs_exits_4_and_names_the_call(tmp_path: Path, cli, recorded: Path) -> None:
    before = sha256(recorded)
    res = cli("run", "test-steps", "--chip", f"replay:{recorded}", "--set", "devices=5", "--out", str(tmp_path / "r"), "--json")
    assert res.code == 4
    out = res.json()
    assert out["reason"] == "replay_mismatch" and "differs at call #0" in out["message"]
    assert "apply_pulses argument 'core' differs: shape (5,) vs recorded (6,)" in out["message"]
    assert sha256(recorded) == before


def test_resume_of_a_finished_run_is_refused(cli, recorded: Path) -> None:
    res = cli("resume", str(recorded))
    assert res.code == 2 and "only incomplete or aborted runs can be resumed" in res.err


def test_failed_and_aborted_runs_exit_1_and_3(tmp_path: Path, cli) -> None:
    res = cli("run", "test-fail", "--chip", SMALL_CHIP, "--out", str(tmp_path), "--json")
    assert res.code == 1 and res.json()["exception_type"] == "builtins.RuntimeError"
    res = cli("run", "test-fail", "--chip", SMALL_CHIP, "--set", "kind=interrupt", "--out", str(tmp_path))
    assert res.code == 3 and "hil resume" in res.err
    statuses = sorted(e["effective_status"] for e in cli("ls", str(tmp_path), "--json").json())
    assert statuses == ["abort", "fail"]
    with RunReader(next(tmp_path.glob("*.h5"))) as r:
        assert r.status in ("abort", "fail")


def test_the_installed_console_script_runs(tmp_path: Path) -> None:
    exe = shutil.which("hil")
    if exe is None:
        pytest.skip("the hil console script is not on PATH (pip install -e .)")
    proc = subprocess.run([exe, "protocols", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "mvm-sweep" in {p["name"] for p in json.loads(proc.stdout)}
    usage = subprocess.run([exe, "run"], capture_output=True, text=True, timeout=120)
    assert usage.returncode == 2 and "the following arguments are required: protocol" in usage.stderr


def test_bench_and_emulate_forward_their_arguments(cli) -> None:
    pytest.importorskip("tests.benchmarks.bench_emulator")
    res = cli("bench", "--help")
    assert res.code == 0 and "usage: hil bench" in res.out and "--batches" in res.out
    pytest.importorskip("emulator.server")
    res = cli("emulate", "--help")
    assert res.code == 0 and "--port" in res.out
    res = cli("emulate", "--port", "99999")
    assert res.code == 2

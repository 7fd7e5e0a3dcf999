"""Resume: a run killed (real SIGKILL) or aborted and then resumed ends with the data of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hil.errors import HilError
from hil.runner import resume_run, run_protocol
from hil.runs import RunIndex, RunReader
from tests.hil.conftest import REPO, SMALL_CHIP, popen_hil, run_hil_subprocess, sha256

STEPS = 12
SEED = 5


def assert_same_data(a_path: Path, b_path: Path) -> None:
    """Same streams (every column, row for row) and the same journal (ops, arguments, results, chip clock)."""
    with RunReader(a_path) as a, RunReader(b_path) as b:
        assert a.streams() == b.streams()
        for stream in a.streams():
            sa, sb = a.stream(stream, meta=True), b.stream(stream, meta=True)
            for col in sa:
                if col != "_t_wall":
                    np.testing.assert_array_equal(sa[col], sb[col], err_msg=f"{stream}.{col}")
        ja, jb = a.journal, b.journal
        assert len(ja) == len(jb)
        np.testing.assert_array_equal(ja.calls["op"], jb.calls["op"])
        np.testing.assert_array_equal(ja.calls["t_chip"], jb.calls["t_chip"])
        for i in range(len(ja)):
            ca, cb = ja.call(i), jb.call(i)
            for name, value in ca.fields.items():
                np.testing.assert_array_equal(value, cb.fields[name], err_msg=f"call {i} {ca.op}.{name}")
        assert a.summary == b.summary and b.status == "success"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=[f"steps={STEPS}"], seed=SEED, out=out)
    assert res.status == "success"
    return res.path


@pytest.mark.parametrize(
    ("kill_at", "wait_s"),
    [(0, 0.0), (4, 1.2), (9, 0.0)],
    ids=["before-first-call", "after-a-flush", "with-unflushed-calls"],
)
def test_sigkill_then_resume_gives_the_uninterrupted_data(tmp_path: Path, uninterrupted: Path, kill_at: int, wait_s: float) -> None:
    proc = run_hil_subprocess(
        "run", "test-steps", "--chip", SMALL_CHIP, "--set", f"steps={STEPS}", "--seed", str(SEED), "--out", str(tmp_path),
        env={"HIL_TEST_KILL_AT_STEP": str(kill_at), "HIL_TEST_KILL_WAIT_S": str(wait_s)},
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (path,) = tmp_path.glob("*.h5")
    with RunReader(path) as r:
        assert r.effective_status == "incomplete"
        calls = len(r.journal)
        if wait_s:  # everything before the kill had been flushed
            assert calls == 5 * kill_at and r.n_rows("steps") == kill_at
        else:
            assert calls <= 5 * kill_at
    (entry,) = RunIndex(tmp_path).entries()
    assert entry["effective_status"] == "incomplete"
    res = resume_run(path)
    assert res.status == "success", res.message
    assert res.path == path and not list(tmp_path.glob(".*resuming"))
    assert_same_data(uninterrupted, path)
    with RunReader(path) as r:
        assert r.attrs["resume_count"] == 1 and r.run_id == entry["run_id"]
        assert any(f"the {calls} recorded calls matched" in text for _, text in r.notes())
    (entry,) = RunIndex(tmp_path).entries()
    assert entry["effective_status"] == "success"


def test_kill_from_outside_mid_run_then_resume(tmp_path: Path) -> None:
    steps = 800
    proc = popen_hil("run", "test-steps", "--chip", SMALL_CHIP, "--set", f"steps={steps}", "--seed", "2", "--out", str(tmp_path / "k"))
    seen = 0
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        files = list((tmp_path / "k").glob("*.h5"))
        if files:
            try:
                with RunReader(files[0]) as r:  # read while it is written
                    seen = len(r.journal)
            except HilError:
                pass
            if seen >= 1000:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    (path,) = (tmp_path / "k").glob("*.h5")
    with RunReader(path) as r:
        assert r.effective_status == "incomplete" and seen <= len(r.journal) < 5 * steps
    assert resume_run(path).status == "success"
    ref = run_protocol("test-steps", chip=SMALL_CHIP, sets=[f"steps={steps}"], seed=2, out=tmp_path / "ref")
    assert_same_data(ref.path, path)


def test_resume_refuses_finished_runs_and_a_different_chip_leaves_the_run_untouched(tmp_path: Path, uninterrupted: Path) -> None:
    with pytest.raises(HilError, match="finished with status 'success'; only incomplete or aborted runs"):
        resume_run(uninterrupted)
    proc = run_hil_subprocess(
        "run", "test-steps", "--chip", SMALL_CHIP, "--set", f"steps={STEPS}", "--seed", str(SEED), "--out", str(tmp_path),
        env={"HIL_TEST_KILL_AT_STEP": "3", "HIL_TEST_KILL_WAIT_S": "1.2"},
    )
    assert proc.returncode == -signal.SIGKILL
    (path,) = tmp_path.glob("*.h5")
    before = sha256(path)
    # The emulator with another seed answers differently: re-execution detects it at the first read.
    res = resume_run(path, chip=_other_seed_chip())
    assert res.status == "fail" and res.reason == "replay_mismatch" and res.exit_code == 4
    assert "differs at call #1" in res.message and "read_devices" in res.message
    assert sha256(path) == before and not list(tmp_path.glob(".*resuming"))
    with RunReader(path) as r:
        assert r.effective_status == "incomplete"
    assert resume_run(path).status == "success"  # the right chip still resumes it


def _other_seed_chip():
    from emulator import EmulatedChip

    return EmulatedChip.from_spec("hermes,cores=2,rows=16,cols=16", seed=SEED + 1)


def test_resume_on_hardware_like_chip_answers_from_the_journal_then_goes_live(tmp_path: Path, uninterrupted: Path, monkeypatch) -> None:
    from emulator import EmulatedChip

    class HardwareLikeChip(EmulatedChip):
        """State survives the controlling process (like the lab board): resume must not re-execute."""

        resume_by_reexecution = False

    board = HardwareLikeChip.from_spec("hermes,cores=2,rows=16,cols=16", seed=SEED)
    monkeypatch.setenv("HIL_TEST_INTERRUPT_AT_STEP", "6")
    with pytest.raises(KeyboardInterrupt):
        run_protocol("test-steps", chip=board, chip_spec=SMALL_CHIP, sets=[f"steps={STEPS}"], seed=SEED, out=tmp_path)
    monkeypatch.delenv("HIL_TEST_INTERRUPT_AT_STEP")
    (path,) = tmp_path.glob("*.h5")
    with RunReader(path) as r:
        assert r.status == "abort" and len(r.journal) == 30
    t_board = board.now()
    res = resume_run(path, chip=board)
    assert res.status == "success"
    assert board.now() > t_board  # went live on the same board after the 30 recorded calls
    assert_same_data(uninterrupted, path)


def test_resume_rebuilds_chip_state_from_preceding_runs(tmp_path: Path) -> None:
    from emulator import EmulatedChip

    def chain(out: Path, interrupt: bool) -> tuple[Path, Path]:
        chip = EmulatedChip.from_spec("hermes,cores=2,rows=16,cols=16", seed=9)
        first = run_protocol("test-steps", chip=chip, chip_spec=SMALL_CHIP, sets=["steps=5"], seed=9, out=out)
        kwargs = dict(chip=chip, chip_spec=SMALL_CHIP, sets=["steps=8", "devices=3"], seed=10, out=out, preceded_by=[first.path])
        if not interrupt:
            return first.path, run_protocol("test-steps", **kwargs).path
        import os

        os.environ["HIL_TEST_INTERRUPT_AT_STEP"] = "4"
        try:
            with pytest.raises(KeyboardInterrupt):
                run_protocol("test-steps", **kwargs)
        finally:
            del os.environ["HIL_TEST_INTERRUPT_AT_STEP"]
        second = max(out.glob("*.h5"), key=lambda p: RunReader(p).attrs["started_unix"])
        return first.path, second

    _, ref_second = chain(tmp_path / "ref", interrupt=False)
    _, second = chain(tmp_path / "cut", interrupt=True)
    res = resume_run(second)  # a fresh emulator: the first run's journal is re-executed before this one's
    assert res.status == "success", res.message
    assert_same_data(ref_second, second)


def test_lab_board_run_killed_then_resumed_answers_from_the_journal(tmp_path: Path, uninterrupted: Path) -> None:
    """The board keeps its state when the controlling process dies: resume must not re-execute."""
    server = pytest.importorskip("emulator.server")
    from emulator import EmulatedChip

    chip = EmulatedChip.from_spec("hermes,cores=2,rows=16,cols=16", seed=SEED)
    with server.ServerThread(chip) as srv:
        spec = f"lab:127.0.0.1:{srv.port}"
        proc = run_hil_subprocess(
            "run", "test-steps", "--chip", spec, "--set", f"steps={STEPS}", "--seed", str(SEED), "--out", str(tmp_path),
            env={"HIL_TEST_KILL_AT_STEP": "7", "HIL_TEST_KILL_WAIT_S": "1.2"},
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        (path,) = tmp_path.glob("*.h5")
        with RunReader(path) as r:
            assert r.effective_status == "incomplete" and len(r.journal) == 35 and r.chip_spec == spec
        t_board = chip.now()
        res = resume_run(path)  # opens lab:127.0.0.1:PORT from the recorded spec
        assert res.status == "success", res.message
        assert chip.now() > t_board  # the board went on from where it was, live
    assert_same_data(uninterrupted, path)


SLOW_CLOSE = r"""
import os, signal, sys, threading
import numpy as np
from pydantic import BaseModel, ConfigDict
from hil import register_protocol
from hil.runner import run_protocol

class C(BaseModel):
    model_config = ConfigDict(extra="forbid")

@register_protocol("test-slow-close", C)
def slow_close(chip, config, run):
    chip.read_cells([0], [0], [0])
    run.log("big", x=np.random.default_rng(0).normal(size=(64, 256, 256)).astype(np.float32))  # 16 MB to deflate
    threading.Timer(0.05, os.kill, (os.getpid(), int(sys.argv[2]))).start()  # lands inside the final flush
    return {"ok": 1}

run_protocol("test-slow-close", chip="fake", out=sys.argv[1], progress=False, compression="gzip")
print("returned")
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_the_final_flush_waits_for_the_status(sig: int, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", SLOW_CLOSE, str(tmp_path), str(int(sig))], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    files = list(tmp_path.glob("*.h5"))
    assert len(files) == 1, proc.stderr
    with RunReader(files[0]) as r:
        assert r.status == "success" and r.n_rows("big") == 64  # was: killed with status=running
    if sig == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # delivered once the file was complete
    else:
        assert proc.returncode == 0 and "returned" in proc.stdout


def test_resume_makes_the_runs_numerics_choice_not_this_machines(tmp_path: Path, monkeypatch) -> None:
    """The emulator picks its matmul dtype and ADC chain per machine (a table); a resume where the table
    now says otherwise (another machine, a re-measured table) must re-execute with the recorded ones."""
    import json

    import torch

    from emulator import native, numerics

    recorded_chain = "native" if native.available() else "eager"  # native draws other noise than eager

    def table(choice: str, chain: str) -> Path:
        path = tmp_path / f"table-{choice}.json"
        path.write_text(json.dumps({numerics.machine_key(torch.device("cpu")): {"choice": choice, "adc_chain": chain}}))
        return path

    sets = [f"steps={STEPS}"]
    monkeypatch.setenv("HIL_NUMERICS_TABLE", str(table("float32", recorded_chain)))
    ref = run_protocol("test-steps", chip=SMALL_CHIP, sets=sets, seed=SEED, out=tmp_path / "ref")
    monkeypatch.setenv("HIL_TEST_INTERRUPT_AT_STEP", "6")
    with pytest.raises(KeyboardInterrupt):
        run_protocol("test-steps", chip=SMALL_CHIP, sets=sets, seed=SEED, out=tmp_path / "cut")
    monkeypatch.delenv("HIL_TEST_INTERRUPT_AT_STEP")
    (path,) = (tmp_path / "cut").glob("*.h5")
    with RunReader(path) as r:
        assert r.start.chip_info["details"]["numerics"]["matmul_dtype"] == "float32"
    monkeypatch.setenv("HIL_NUMERICS_TABLE", str(table("bfloat16", "eager")))
    from emulator import EmulatedChip

    assert EmulatedChip.from_spec("hermes,cores=2,rows=16,cols=16").matmul_dtype == "bfloat16"  # the table now differs
    res = resume_run(path)
    assert res.status == "success"
    with RunReader(path) as r:
        assert r.start.chip_spec == SMALL_CHIP + f",matmul=float32,chain={recorded_chain}"
        assert r.start.chip_info["details"]["numerics"]["matmul_dtype"] == "float32"
    assert_same_data(ref.path, path)

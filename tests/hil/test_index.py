"""The run index: instant listing of thousands of runs, self-healing, incomplete detection."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

import pytest

from hil.runner import run_protocol
from hil.runs import INDEX_NAME, RunIndex
from tests.hil.conftest import SMALL_CHIP


def test_ls_of_thousands_of_runs_reads_only_the_index(tmp_path: Path, cli) -> None:
    index = RunIndex(tmp_path)
    n = 3000
    lines = []
    for i in range(n):
        run_id = f"20260101-000000-sweep-{i:06x}"
        # Empty files: listing must not open run files (opening these would fail).
        (tmp_path / f"{run_id}.h5").touch()
        lines.append(json.dumps({"run_id": run_id, "file": f"{run_id}.h5", "protocol": "sweep", "status": "running",
                                 "started_unix": 1.0 + i, "host": socket.gethostname(), "pid": os.getpid()}))
        lines.append(json.dumps({"run_id": run_id, "file": f"{run_id}.h5", "status": "success" if i % 3 else "fail"}))
    (tmp_path / INDEX_NAME).write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    res = cli("ls", str(tmp_path), "--json")
    elapsed = time.perf_counter() - t0
    assert res.code == 0
    entries = res.json()
    assert len(entries) == n and elapsed < 2.0, elapsed
    assert entries[0]["run_id"].endswith("000000") and entries[-1]["run_id"].endswith(f"{n - 1:06x}")
    assert sum(e["effective_status"] == "fail" for e in entries) == n // 3
    assert len(index.entries()) == n
    res = cli("ls", str(tmp_path), "--status", "fail", "--limit", "5", "--json")
    assert len(res.json()) == 5 and {e["status"] for e in res.json()} == {"fail"}


def test_index_heals_itself_and_marks_dead_writers_incomplete(tmp_path: Path) -> None:
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=2"], out=tmp_path / "a")
    # A run file copied in from elsewhere is indexed on the next listing.
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(res.path, other / res.path.name)
    (other / "junk.h5").write_text("not a run")
    (entry,) = RunIndex(other).entries()
    assert entry["run_id"] == res.run_id and entry["effective_status"] == "success"
    # a torn last line (crash while appending) is skipped
    with open(other / INDEX_NAME, "a") as fh:
        fh.write('{"run_id": "half')
    assert [e["run_id"] for e in RunIndex(other).entries()] == [res.run_id]
    # a run still marked running whose process is gone is incomplete
    RunIndex(other).record({"run_id": res.run_id, "file": res.path.name, "status": "running", "pid": 2**22 + 12345,
                            "host": socket.gethostname(), "started_unix": time.time()})
    (entry,) = RunIndex(other).entries()
    assert entry["effective_status"] == "incomplete"
    assert RunIndex(other).rebuild() == 1
    (entry,) = RunIndex(other).entries()
    assert entry["effective_status"] == "success"
    # a removed file drops out of the listing
    (other / res.path.name).unlink()
    assert RunIndex(other).entries() == []


def test_find_by_run_id_prefix(tmp_path: Path) -> None:
    a = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=1"], out=tmp_path, run_id="20260101-000000-x-aaaaaa")
    run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=1"], out=tmp_path, run_id="20260101-000000-x-aabbbb")
    index = RunIndex(tmp_path)
    assert index.find("20260101-000000-x-aaa") == a.path
    assert index.find(a.path.name) == a.path
    from hil.errors import HilError

    with pytest.raises(HilError, match="matches 2 runs"):
        index.find("20260101-000000-x-aa")
    with pytest.raises(HilError, match="no run 'zzz'"):
        index.find("zzz")

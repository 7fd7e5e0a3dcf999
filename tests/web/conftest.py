"""Fixtures of the web-view tests: a small folder of runs (made once per session) and a snapshot of its bytes."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import h5py
import pytest

import hil

#: A comment that would run script if a page put it into HTML unescaped.
HOSTILE = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned=1"> & "quotes"'


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder``: relative name -> (size, mtime_ns, sha256)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() or p.is_symlink():
            st = p.lstat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "link"
            out[str(p.relative_to(folder))] = (st.st_size, st.st_mtime_ns, digest)
    return out


@pytest.fixture(scope="session")
def made_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three runs on fake chips: drift (tagged, hostile comment), program-verify, and a failed drift."""
    folder = tmp_path_factory.mktemp("web-runs")
    hil.run_protocol("drift", chip="fake:cores=1,rows=8,cols=8", out=folder, progress=False, telemetry=False,
                     sets=["read_times_s=[10,100,1000,10000]", "reads_per_point=2"], tags=["first", "web"],
                     sample="chip-A", comment=HOSTILE)
    hil.run_protocol("program-verify", chip="fake:cores=1,rows=8,cols=8", out=folder, progress=False, telemetry=False,
                     tags=["web"])
    hil.run_protocol("drift", chip="fake:cores=1,rows=8,cols=8", out=folder, progress=False, telemetry=False,
                     sets=["read_times_s=[10,100]", "cores=[5]"])
    return folder


@pytest.fixture
def runs(made_runs: Path, tmp_path: Path) -> Path:
    """A fresh copy of the session's runs, plus a run file the index does not know (copied in by hand)."""
    folder = tmp_path / "runs"
    shutil.copytree(made_runs, folder)
    first = next(folder.glob("*-program-verify-*.h5"))
    shutil.copy2(first, folder / "copied-in.h5")
    with h5py.File(folder / "copied-in.h5", "r+") as f:
        f.attrs["run_id"] = "copied-in"  # its own run, from elsewhere
    os.utime(folder / "copied-in.h5", ns=(1_000_000_000_000, 1_000_000_000_000))
    return folder


@pytest.fixture(scope="session")
def figure_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A figure cache shared by the tests' servers (each copy of the runs renders its figures once)."""
    return tmp_path_factory.mktemp("web-figures")

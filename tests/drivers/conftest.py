"""Fixtures of the driver tests (``--device-address`` itself is declared in tests/conftest.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import hil

REPO = Path(__file__).resolve().parents[2]
SMALL = hil.Geometry(n_cores=2, n_rows=32, n_cols=32)


@pytest.fixture
def device_address(request: pytest.FixtureRequest) -> str:
    """The ``--device-address`` given on the command line; the test is skipped without one."""
    address = request.config.getoption("--device-address", default=None)
    if not address:
        pytest.skip("needs a real instrument: pytest --device-address=VISA_ADDRESS -m hardware")
    return str(address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server_process(
    port: int, seed: int = 0, geometry: hil.Geometry = SMALL, extra: list[str] | None = None
) -> subprocess.Popen[str]:
    """``python -m emulator.server`` on ``port`` with a small chip (``extra``: more arguments); returns once it listens."""
    from drivers.station import wait_for_listening

    cmd = [sys.executable, "-m", "emulator.server", "--host", "127.0.0.1", "--port", str(port), "--seed", str(seed)]
    cmd += ["--cores", str(geometry.n_cores), "--rows", str(geometry.n_rows), "--cols", str(geometry.n_cols)]
    cmd += extra or []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    wait_for_listening(proc, timeout_s=120.0)
    return proc


@pytest.fixture
def server_process() -> Iterator[list[subprocess.Popen[str]]]:
    """A list the test fills with server processes; all are stopped at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    from drivers.station import stop_process

    for p in procs:
        stop_process(p)

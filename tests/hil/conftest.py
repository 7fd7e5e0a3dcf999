"""Fixtures of the run tests: a small emulated chip spec, CLI and subprocess helpers."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tests.hil.helper_protocols  # noqa: F401 - registers test-steps and test-fail
from hil.cli import main

REPO = Path(__file__).resolve().parents[2]
SMALL_CHIP = "emulator:hermes,cores=2,rows=16,cols=16"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> object:
        return json.loads(self.out)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Run ``hil`` in-process: ``cli("run", "x", ...)`` -> CliResult(code, stdout, stderr)."""

    def run(*argv: str) -> CliResult:
        code = main(list(argv))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def run_hil_subprocess(*argv: str, env: dict[str, str] | None = None, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """``hil ARGV`` in a fresh Python process that also registers the test protocols."""
    code = "import sys, tests.hil.helper_protocols; from hil.cli import main; sys.exit(main(sys.argv[1:]))"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", code, *argv], cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def popen_hil(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    code = "import sys, tests.hil.helper_protocols; from hil.cli import main; sys.exit(main(sys.argv[1:]))"
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-c", code, *argv], cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )

"""Packaging: typed package, one source for the version, the git revision in every run file."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from importlib import metadata, resources
from pathlib import Path

import pytest

import hil
from hil.runner import run_protocol
from hil.runs import RunReader
from hil.version import SOURCE_ROOT, git_revision

REPO = Path(__file__).resolve().parents[2]


def test_the_package_is_typed() -> None:
    assert resources.files("hil").joinpath("py.typed").is_file()


def test_the_version_has_one_source() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    if "version" in project.get("dynamic", []):
        attr = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["dynamic"]["version"]["attr"]
        assert attr == "hil.version.__version__"
    else:  # until pyproject.toml reads it from hil.version, the two must agree
        assert project["version"] == hil.__version__
    assert metadata.version("hil") == hil.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([.-]?\w+)*", hil.__version__)


def test_every_run_file_records_the_git_revision(tmp_path: Path) -> None:
    res = run_protocol("test-steps", chip="fake", sets=["steps=1"], out=tmp_path, progress=False)
    with RunReader(res.path) as r:
        recorded = r.start.git_revision
    if shutil.which("git") is None or not (SOURCE_ROOT / ".git").exists():
        assert recorded == ""
        pytest.skip("the source tree is not a git checkout (or git is missing): nothing to record")
    head = subprocess.run(["git", "-C", str(SOURCE_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert recorded in (head, f"{head}-dirty")
    assert git_revision(tmp_path) == ""  # not a checkout

"""On a machine without h5ls, h5dump, mosquitto, openssl, chromium or a C compiler the tests that need them skip, naming the
tool and its install command, and the rest pass (CI installs the tools: .ci/run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.hil.system_tools import PACKAGES

REPO = Path(__file__).resolve().parents[2]
TOOL_TESTS = [
    "tests/hil/test_runfile.py::test_h5ls_and_h5dump_read_a_run_file",
    "tests/hil/test_runfile.py::test_a_killed_writer_leaves_a_readable_incomplete_file",
    "tests/hil/test_telemetry_auth.py",
    "tests/hil/test_telemetry.py",
    "tests/web/test_browser.py",
    "tests/emulator/test_native.py",
]


def _path_without(tools: set[str], bin_dir: Path) -> str:
    """A PATH of one folder with links to every program on PATH except ``tools``."""
    bin_dir.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            target = bin_dir / name
            if name in tools or target.exists() or target.is_symlink():
                continue
            src = Path(folder) / name
            if os.access(src, os.X_OK) and not src.is_dir():
                target.symlink_to(src)
    return str(bin_dir)


def test_tool_tests_skip_with_an_install_hint_without_the_tools(tmp_path: Path) -> None:
    path = _path_without(set(PACKAGES), tmp_path / "bin")
    env = {**{k: v for k, v in os.environ.items() if k != "CC"}, "PATH": path, "PYTHONPATH": str(REPO)}
    selected = [t for t in TOOL_TESTS if (REPO / t.split("::")[0]).is_file()]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *selected], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert any("h5ls, h5dump not installed: sudo apt-get install hdf5-tools" in s for s in skips), proc.stdout[-2000:]
    assert any("mosquitto" in s and "apt-get install mosquitto" in s for s in skips), proc.stdout[-2000:]
    assert any("chromium" in s and "apt-get install chromium chromium-driver" in s for s in skips), proc.stdout[-2000:]
    assert any("native ADC chain" in s and "apt-get install gcc" in s for s in skips), proc.stdout[-2000:]

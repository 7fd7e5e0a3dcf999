"""A command line that helps: --version, "did you mean", the runs folder default, hints that run as
printed, a readable `hil show`, the run summary, the resume hint after Ctrl-C, shell completion."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import hil
from hil.runs import RunReader
from tests.hil.conftest import REPO, SMALL_CHIP


def _hints(text: str) -> list[list[str]]:
    """The commands of every `next:` line, split as a POSIX shell would."""
    out = []
    for line in text.splitlines():
        if line.startswith("next:"):
            out += [shlex.split(part) for part in line[len("next:"):].split("|")]
    return out


def test_version(cli) -> None:
    res = cli("--version")
    assert res.code == 0 and res.out.startswith(f"hil {hil.__version__}")


def test_did_you_mean_for_commands_protocols_and_keys(tmp_path: Path, cli) -> None:
    res = cli("shwo", "x")
    assert res.code == 2 and "invalid choice" in res.err and "did you mean 'show'?" in res.err
    res = cli("run", "mvm-swep", "--out", str(tmp_path))
    assert res.code == 2 and "did you mean 'mvm-sweep'?" in res.err and "valid protocols:" in res.err
    res = cli("run", "mvm-sweep", "--set", "bacth=4", "--out", str(tmp_path))
    assert res.code == 2 and "did you mean 'batch'?" in res.err
    res = cli("run", "mvm-sweep", "--config", str(_yaml(tmp_path, "repeat: 2\n")), "--out", str(tmp_path))
    assert res.code == 2 and "did you mean 'repeats'?" in res.err
    assert not list(tmp_path.glob("*.h5"))


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_the_demo_hints_run_as_printed(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HIL_RUNS", raising=False)
    res = cli("demo", "--out", "demo runs", "--chip", "emulator:hermes,cores=2,rows=32,cols=32", "--no-report")
    assert res.code == 0, res.err
    hints = _hints(res.out)
    assert [h[:2] for h in hints] == [["hil", "ls"], ["hil", "show"], ["hil", "replay"], ["hil", "export"]]
    for argv in hints:
        done = cli(*argv[1:])
        assert done.code == 0, (argv, done.err)
    # `hil run` prints its path on stdout, the summary and its own runnable hints on stderr
    run = cli("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=2", "--out", "demo runs")
    assert run.code == 0 and Path(run.out.strip()).is_file()
    assert "hil run: test-steps success" in run.err and "counts_sum" in run.err
    for argv in _hints(run.err):
        done = cli(*argv[1:])
        assert done.code == 0, (argv, done.err)


def test_runs_folder_defaults_to_hil_runs_env_or_the_current_index(tmp_path: Path, cli, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "lab runs"
    monkeypatch.setenv("HIL_RUNS", str(folder))
    monkeypatch.chdir(tmp_path)
    res = cli("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=1")
    assert res.code == 0 and Path(res.out.strip()).parent == folder
    run_id = Path(res.out.strip()).stem
    assert cli("show", run_id).code == 0 and run_id in cli("ls").out
    monkeypatch.delenv("HIL_RUNS")
    missing = cli("show", run_id)
    assert missing.code == 2 and "--runs DIR" in missing.err and "(--out)" not in missing.err
    monkeypatch.chdir(folder)  # a folder that holds an index is the default
    assert cli("show", run_id).code == 0 and cli("export", run_id[:20], "--format", "csv").code == 0
    res = cli("ls", str(tmp_path / "nowhere"))
    assert res.code == 2 and "not a folder of runs" in res.err


def test_show_is_readable(tmp_path: Path, cli) -> None:
    res = cli("run", "mvm-sweep", "--chip", SMALL_CHIP, "--set", "batch=8", "--set", "repeats=1", "--out", str(tmp_path),
              "--tag", "demo", "--sample", "S-1", "--comment", "a comment")
    shown = cli("show", res.out.strip())
    assert shown.code == 0
    lines = shown.out.splitlines()
    config = lines.index("config:")
    assert "  batch: 8" in lines[config:] and "  input_scales: [0.125, 0.25, 0.5, 1.0]" in lines[config:]
    summary = lines.index("summary:")
    assert any(re.match(r"  rel_error_by_scale\s+= \{0.125: ", line) for line in lines[summary:])
    assert "catalogue tags demo    sample S-1" in shown.out and "comment   a comment" in shown.out
    assert all(len(line) < 400 for line in lines)


def test_ctrl_c_prints_a_resume_command_with_the_path(tmp_path: Path, cli) -> None:
    res = cli("run", "test-fail", "--chip", SMALL_CHIP, "--set", "kind=interrupt", "--out", str(tmp_path))
    assert res.code == 3
    m = re.search(r"hil resume (\S+)", res.err)
    assert m, res.err
    path = Path(shlex.split(m.group(1))[0])
    assert path.is_file() and path.parent == tmp_path
    with RunReader(path) as r:
        assert r.status == "abort"


COMPLETE = """
import io, json, os, sys
import argcomplete
from hil.cli import build_parser
out = {}
for line in sys.argv[1:]:
    os.environ.update(_ARGCOMPLETE="1", _ARGCOMPLETE_IFS="\\n", COMP_LINE=line, COMP_POINT=str(len(line)))
    buf = io.StringIO()
    argcomplete.autocomplete(build_parser(), output_stream=buf, exit_method=lambda *_: None)
    out[line] = [w.strip() for w in buf.getvalue().split("\\n") if w.strip()]
print(json.dumps(out))
"""


def test_shell_completion_of_commands_protocols_run_ids_and_keys(tmp_path: Path, cli) -> None:
    pytest.importorskip("argcomplete")
    res = cli("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=1", "--out", str(tmp_path))
    run_id = Path(res.out.strip()).stem
    lines = ["hil sh", "hil run mvm", "hil run mvm-sweep --set ba", f"hil show --runs {tmp_path} {run_id[:6]}",
             f"hil ls {tmp_path} --where con"]
    # In a child process: argcomplete writes its debug output to file descriptor 9 when it is open.
    proc = subprocess.run([sys.executable, "-c", COMPLETE, *lines], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert "show" in got[lines[0]] and "mvm-sweep" in got[lines[1]] and "batch=" in got[lines[2]]
    assert run_id in got[lines[3]] and "config.steps=" in got[lines[4]]
    code = cli("completion", "bash")
    assert code.code == 0 and "complete" in code.out


def test_progress_shows_in_a_notebook_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    from hil import runner

    assert runner.interactive_output() is False  # pytest captures stderr: not a terminal
    fake_ipython = types.ModuleType("IPython")
    fake_ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", fake_ipython)
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    assert runner.interactive_output() is True

"""Config files, command lines and run files from outside cannot make hil expand, leak or reach outside."""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import h5py
import pytest

from hil.config import MAX_YAML_ALIASES, load_config_file, load_yaml, parse_set
from hil.errors import ConfigError
from hil.runner import redact_command, run_protocol
from hil.runs import RunReader

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
)


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    assert len(BOMB) < 600
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text(BOMB)
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 100000 nodes"):
        load_config_file(cfg)
    many = tmp_path / "many.yaml"
    many.write_text("a: &a 1\nb: [" + ",".join(["*a"] * (MAX_YAML_ALIASES + 1)) + "]\n")
    with pytest.raises(ConfigError, match=f"more than {MAX_YAML_ALIASES} aliases"):
        load_config_file(many)
    with pytest.raises(ConfigError, match="aliases"):
        parse_set("x=" + BOMB.replace("\n", ", ").join("{}"))
    assert time.perf_counter() - t0 < 1.0
    # a few aliases are fine, but not a few that expand to a huge tree
    assert load_yaml("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}
    deep = "l0: &l0 [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]\n" + "".join(
        f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 6)
    )
    (tmp_path / "deep.yaml").write_text(deep)
    with pytest.raises(ConfigError, match=r"aliases|expands"):
        load_config_file(tmp_path / "deep.yaml")


def test_python_objects_and_huge_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml("!!python/object/apply:os.system ['echo hi']")
    big = tmp_path / "big.yaml"
    big.write_text("k: " + "x" * (2 << 20))
    with pytest.raises(ConfigError, match="larger than"):
        load_config_file(big)


def test_credentials_never_reach_the_run_file(tmp_path: Path, monkeypatch) -> None:
    argv = ["hil", "run", "test-steps", "--mqtt", "mqtt://alice:s3cret@broker:1883/lab", "--token", "abc123",
            "--board-token=zzz", "--set", "steps=2"]
    assert redact_command(argv) == ("hil run test-steps --mqtt mqtt://***@broker:1883/lab --token *** --board-token=*** "
                                    "--set steps=2")
    monkeypatch.setattr("sys.argv", argv)
    res = run_protocol("test-steps", chip="fake", config={"steps": 2}, out=tmp_path, progress=False, telemetry=False)
    raw = res.path.read_bytes()
    assert b"s3cret" not in raw and b"abc123" not in raw and b"zzz" not in raw
    with RunReader(res.path) as r:
        assert "mqtt://***@broker" in r.start.command


def test_a_preceding_run_outside_the_folder_is_refused(tmp_path: Path, cli) -> None:
    res = run_protocol("test-steps", chip="fake", config={"steps": 3}, out=tmp_path, progress=False)
    with h5py.File(res.path, "r+") as f:
        f.attrs["status"] = "abort"
        f.attrs["preceded_by_json"] = '["/etc/passwd"]'
    out = cli("resume", str(res.path))
    assert out.code == 2 and "outside its folder" in out.err


def test_two_resumes_of_one_run_do_not_trample_each_other(tmp_path: Path) -> None:
    from hil.runner import _resume_lock

    res = run_protocol("test-steps", chip="fake", config={"steps": 3}, out=tmp_path, progress=False)
    held = _resume_lock(res.path)
    try:
        from hil.errors import HilError
        from hil.runner import resume_run

        with pytest.raises(HilError, match="being resumed by another process"):
            resume_run(res.path)
    finally:
        held.close()
    # and concurrently for real: two threads, one wins, the other is refused or finds it done
    with h5py.File(res.path, "r+") as f:
        f.attrs["status"] = "abort"
    outcomes: list[str] = []

    def go() -> None:
        from hil.runner import resume_run

        try:
            outcomes.append(resume_run(res.path, progress=False).status)
        except Exception as exc:  # the loser's error is the point
            outcomes.append(type(exc).__name__ + ": " + str(exc)[:60])

    threads = [threading.Thread(target=go) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "success" in outcomes and len(outcomes) == 2
    assert not list(tmp_path.glob(".*.resuming"))
    shutil.rmtree(tmp_path, ignore_errors=True)

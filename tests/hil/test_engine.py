"""The run engine: config resolution, run status and reasons, interrupts, replay through the engine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from hil.config import resolve_config
from hil.errors import ConfigError, ReplayMismatchError
from hil.journal import InterruptGuard
from hil.protocol import UnknownProtocolError, get_protocol
from hil.replay import ReplayChip
from hil.runner import run_protocol
from hil.runs import RunReader
from tests.hil.conftest import SMALL_CHIP, popen_hil, sha256


def test_config_precedence_defaults_then_file_then_set(tmp_path: Path) -> None:
    spec = get_protocol("mvm-sweep")
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch: 7\nrepeats: 3\ninput_scales: [0.5]\n")
    cfg = resolve_config(spec, config_file=cfg_file, sets=["repeats=5", "program=false", "cores=[1, 0]"])
    assert cfg.batch == 7 and cfg.repeats == 5 and cfg.input_scales == [0.5]
    assert cfg.program is False and cfg.cores == [1, 0]
    assert cfg.weight_counts == spec.config_model().weight_counts  # untouched keys keep their defaults


def test_config_errors_name_the_key_value_and_the_valid_choices(tmp_path: Path) -> None:
    spec = get_protocol("mvm-sweep")
    with pytest.raises(ConfigError, match=r"unknown config key 'bach'.*valid keys: cores, program, .*batch"):
        resolve_config(spec, sets=["bach=3"])
    with pytest.raises(ConfigError, match="batch=0: Input should be greater than or equal to 1"):
        resolve_config(spec, sets=["batch=0"])
    with pytest.raises(ConfigError, match=r"input_scales\.0=1\.5: Input should be less than or equal to 1"):
        resolve_config(spec, sets=["input_scales=[1.5]"])
    with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
        resolve_config(spec, sets=["batch"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("batch: [1, 2\n")
    with pytest.raises(ConfigError, match="is not valid YAML"):
        resolve_config(spec, config_file=bad_yaml)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        resolve_config(spec, config_file=listy)
    with pytest.raises(ConfigError, match="cannot read config file"):
        resolve_config(spec, config_file=tmp_path / "missing.yaml")
    with pytest.raises(UnknownProtocolError, match=r"unknown protocol 'nope'; valid protocols: .*mvm-sweep"):
        get_protocol("nope")


def test_bad_config_creates_no_run_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        run_protocol("mvm-sweep", chip=SMALL_CHIP, sets=["batch=-1"], out=tmp_path)
    assert not list(tmp_path.glob("*.h5"))


def test_success_records_metadata_summary_and_index(tmp_path: Path) -> None:
    res = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=3"], seed=11, out=tmp_path)
    assert res.status == "success" and res.reason == "completed" and res.exit_code == 0
    assert res.n_calls == 3 * 5 and res.path.exists()
    with RunReader(res.path) as r:
        meta = r.metadata()
        assert meta["protocol"] == "test-steps" and meta["seed"] == 11 and meta["config"]["steps"] == 3
        assert meta["chip_spec"] == SMALL_CHIP and meta["chip_backend"] == "emulator"
        assert meta["geometry"]["n_cores"] == 2 and "numpy" in meta["versions"] and "hdf5" in meta["versions"]
        assert meta["status"] == "success" and meta["exit_reason"] == "completed" and meta["exception_type"] == ""
        assert meta["summary"] == res.summary and meta["n_calls"] == 15
        assert r.n_rows("steps") == 3 and len(r.journal) == 15
    from hil.runs import RunIndex

    (entry,) = RunIndex(tmp_path).entries()
    assert entry["run_id"] == res.run_id and entry["effective_status"] == "success" and entry["n_calls"] == 15


def test_failure_is_recorded_with_reason_and_exception_type(tmp_path: Path) -> None:
    res = run_protocol("test-fail", chip=SMALL_CHIP, sets=["after_calls=3"], out=tmp_path)
    assert res.status == "fail" and res.reason == "exception" and res.exit_code == 1
    assert res.exception_type == "builtins.RuntimeError" and "on purpose" in res.message
    with RunReader(res.path) as r:
        assert r.status == "fail" and r.attrs["exit_reason"] == "exception"
        assert r.attrs["exception_type"] == "builtins.RuntimeError"
        assert len(r.journal) == 3 and r.stream("before")["i"].tolist() == [3]
        assert any("RuntimeError: boom" in text for _, text in r.notes())  # the traceback is kept
    with pytest.raises(RuntimeError, match="on purpose"):
        res.raise_for_status()


def test_chip_errors_get_their_own_reason(tmp_path: Path) -> None:
    res = run_protocol("mvm-sweep", chip=SMALL_CHIP, sets=["cores=[5]"], out=tmp_path)
    assert res.status == "fail" and res.reason == "chip_input"
    assert res.exception_type == "hil.errors.ChipInputError" and "the chip has 2 cores" in res.message


def test_keyboard_interrupt_is_recorded_as_abort_then_re_raised(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        run_protocol("test-fail", chip=SMALL_CHIP, sets=["kind=interrupt", "after_calls=2"], out=tmp_path)
    (path,) = tmp_path.glob("*.h5")
    with RunReader(path) as r:
        assert r.status == "abort" and r.attrs["exit_reason"] == "keyboard_interrupt"
        assert r.attrs["exception_type"] == "builtins.KeyboardInterrupt" and len(r.journal) == 2


def _has_rows(folder: Path) -> bool:
    files = list(folder.glob("*.h5"))
    if not files:
        return False
    try:
        with RunReader(files[0]) as r:
            return "steps" in r.streams() and r.n_rows("steps") > 0
    except Exception:  # a file being created
        return False


def test_sigterm_aborts_the_run_cleanly(tmp_path: Path) -> None:
    proc = popen_hil("run", "test-steps", "--chip", SMALL_CHIP, "--set", "steps=100000", "--out", str(tmp_path))
    deadline = time.time() + 120
    while time.time() < deadline and not _has_rows(tmp_path):  # the protocol is running (under load too)
        time.sleep(0.1)
    proc.terminate()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    (path,) = tmp_path.glob("*.h5")
    with RunReader(path) as r:
        assert r.status == "abort" and r.attrs["exit_reason"] == "terminated"
        assert r.n_rows("steps") > 0 and len(r.journal) >= 5 * r.n_rows("steps")


def test_interrupt_guard_defers_ctrl_c_until_the_call_is_journaled() -> None:
    guard = InterruptGuard()
    with pytest.raises(KeyboardInterrupt):
        guard.interrupt()  # outside a chip call: at once
    done = []
    with pytest.raises(KeyboardInterrupt), guard:
        guard.interrupt()  # inside: only marked
        done.append("journaled")
    assert done == ["journaled"] and not guard.pending
    with pytest.raises(KeyboardInterrupt), guard:
        guard.interrupt()
        guard.interrupt()  # a second Ctrl-C does not wait
        done.append("never")
    assert done == ["journaled"]


def test_replay_through_the_engine_matches_and_reports_differences(tmp_path: Path) -> None:
    rec = run_protocol("test-steps", chip=SMALL_CHIP, sets=["steps=4"], seed=3, out=tmp_path / "rec")
    again = run_protocol("test-steps", chip=f"replay:{rec.path}", out=tmp_path / "replay")
    assert again.status == "success" and again.summary == rec.summary and again.n_calls == rec.n_calls
    with RunReader(rec.path) as a, RunReader(again.path) as b:
        for col in ("counts", "y", "t_chip"):
            np.testing.assert_array_equal(a.column("steps", col), b.column("steps", col))
        assert b.attrs["replay_of"] == rec.run_id and b.attrs["chip_spec"] == f"replay:{rec.path}"
    before = sha256(rec.path)
    longer = run_protocol("test-steps", chip=f"replay:{rec.path}", sets=["steps=5"], out=tmp_path / "replay")
    assert longer.status == "fail" and longer.reason == "replay_mismatch" and longer.exit_code == 4
    assert "differs at call #20 (of 20 recorded): apply_pulses(" in longer.message and "past the end" in longer.message
    shorter = run_protocol("test-steps", chip=f"replay:{rec.path}", sets=["steps=3"], out=tmp_path / "replay")
    assert shorter.reason == "replay_mismatch" and "finished after 15 calls" in shorter.message
    other = run_protocol("test-steps", chip=f"replay:{rec.path}", seed=4, out=tmp_path / "replay")
    assert other.reason == "replay_mismatch" and "differs at call #0" in other.message
    assert sha256(rec.path) == before  # replays never touch the recording
    with pytest.raises(ReplayMismatchError, match="argument 'device' differs"):
        _first_call_with_other_device(rec.path)


def _first_call_with_other_device(path: Path) -> None:
    chip = ReplayChip(path)
    call = chip.journal.call(0)
    f = call.fields
    chip.apply_pulses(f["core"], f["row"], f["col"], (f["device"] + 1) % 4, kind=f["kind"], amplitude_ua=f["amplitude_ua"], width_ns=f["width_ns"])


def test_a_protocol_module_that_fails_to_import_is_skipped_and_named(monkeypatch) -> None:
    from importlib.metadata import EntryPoint

    import pytest as _pytest

    from hil import protocol as proto

    broken = EntryPoint(name="broken-one", value="protocols.no_such_module", group="hil.protocols")
    real = proto.entry_points

    def fake(group: str):
        return [*real(group=group), broken]

    monkeypatch.setattr(proto, "entry_points", fake)
    with _pytest.warns(UserWarning, match="broken-one"):
        names = proto.protocols()
    assert "mvm-sweep" in names and "broken-one" not in names
    with _pytest.raises(proto.UnknownProtocolError, match="failed to import: ModuleNotFoundError"):
        proto.get_protocol("broken-one")

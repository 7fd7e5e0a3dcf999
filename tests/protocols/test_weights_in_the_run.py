"""Weight files: checked before the run file exists (bad input exits 2 and leaves no file), stored in the
run with their sha256 and absolute source, and replayed from the stored copy in any folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from hil.cli import main
from hil.runs import RunReader

CHIP = "emulator:hermes,cores=2,rows=32,cols=32"


def hil(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("protocol", ["program-verify", "gdp", "calibration"])
def test_weights_are_stored_and_a_replay_from_elsewhere_uses_them(protocol: str, tmp_path: Path, capsys, monkeypatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    w = np.random.default_rng(1).normal(0.0, 0.3, (32, 20))
    np.save("W.npy", w)
    extra = ["--set", "eval_inputs=64"] if protocol != "calibration" else ["--set", "drift_times_s=[60.0]"]
    code, out, err = hil(capsys, "run", protocol, "--chip", CHIP, "--set", "weights.kind=file", "--set", "weights.path=W.npy",
                         *extra, "--out", "runs", "--json", "--no-progress")
    assert code == 0, err
    path = Path(json.loads(out)["path"]).resolve()
    with RunReader(path) as r:
        info = r.input_info()["weights"]
        assert info["source"] == str((work / "W.npy").resolve()) and info["shape"] == [32, 20]
        np.testing.assert_array_equal(r.inputs()["weights"], w)
    os.remove(work / "W.npy")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = hil(capsys, "replay", str(path), "--out", str(elsewhere), "--json", "--no-progress")
    assert code == 0, err


@pytest.mark.parametrize(
    ("case", "sets", "message"),
    [
        ("missing file", ["weights.path=nope.npy"], "does not exist"),
        ("NaN weights", ["weights.path=nan.npy"], "NaN|finite"),
        ("1-D weights", ["weights.path=flat.npy"], "expected 2-D"),
        ("core out of range", ["weights.path=W.npy", "cores=[7]"], "cores contains 7"),
        ("more cores than the matrix fills", ["weights.path=W.npy", "cores=[0, 1]"], "fills only"),
    ],
)
@pytest.mark.parametrize("protocol", ["program-verify", "gdp"])
def test_data_mistakes_exit_2_and_leave_no_run_file(protocol: str, case: str, sets: list[str], message: str, tmp_path: Path,
                                                     capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    np.save("W.npy", np.ones((32, 20)))
    np.save("nan.npy", np.full((32, 20), np.nan))
    np.save("flat.npy", np.ones(32))
    argv = ["run", protocol, "--chip", CHIP, "--set", "weights.kind=file", "--out", "runs", "--no-progress"]
    for item in sets:
        argv += ["--set", item]
    code, _, err = hil(capsys, *argv)
    assert code == 2, err
    import re

    assert re.search(message, err), err
    assert not list(tmp_path.glob("runs/*.h5"))


@pytest.mark.parametrize(("protocol", "item"), [("drift", "read_times_s=[30.0, 2e10]"), ("calibration", "drift_times_s=[60.0, 2e10]")])
def test_times_beyond_the_chip_clock_limit_are_refused_before_the_run(protocol: str, item: str, tmp_path: Path, capsys) -> None:
    code, _, err = hil(capsys, "run", protocol, "--chip", CHIP, "--set", item, "--out", str(tmp_path), "--no-progress")
    assert code == 2 and "at most 1e+10" in err, err
    assert not list(tmp_path.glob("*.h5"))

"""The protocols through the real run engine: registration, HDF5 run files, plots, replay, resume."""

from __future__ import annotations

import numpy as np
import pytest

from hil.protocol import get_protocol
from hil.runner import replay_run, run_protocol
from hil.runs import RunReader

SPEC = "emulator:hermes,cores=2,rows=32,cols=32"
CASES = {
    "program-verify": {"eval_inputs": 256},
    "gdp": {"batch": 64, "iterations": 4, "eval_inputs": 256},
    "calibration": {"eval_inputs": 256, "calibration_inputs": 256, "drift_times_s": [3600.0, 86400.0]},
    "drift": {"read_times_s": [60.0, 600.0, 6000.0], "reads_per_point": 2},
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_protocol_runs_into_a_run_file_plots_and_replays(name: str, tmp_path) -> None:
    spec = get_protocol(name)
    assert spec.deterministic and spec.plots is not None
    res = run_protocol(name, chip=SPEC, config=CASES[name], out=tmp_path, progress=False, seed=5)
    assert res.status == "success", res.message
    with RunReader(res.path) as r:
        assert r.protocol == name and r.streams()
        assert r.summary == res.summary
    figs = spec.plots(res.path, tmp_path / "figs")
    assert figs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figs)
    again = replay_run(res.path, out=tmp_path / "replay")
    assert again.status == "success", again.message
    assert _no_wall(again.summary) == _no_wall(res.summary)  # everything but wall-clock times replays


def _no_wall(obj: object) -> object:
    if isinstance(obj, dict):
        return {k: _no_wall(v) for k, v in obj.items() if "wall" not in k}
    if isinstance(obj, list):
        return [_no_wall(v) for v in obj]
    return obj


def test_drift_run_files_hold_every_read_point(tmp_path) -> None:
    res = run_protocol("drift", chip=SPEC, config=CASES["drift"], out=tmp_path, progress=False)
    with RunReader(res.path) as r:
        reads = r.stream("drift_reads")
        assert reads["counts"].shape == (3, 1, 32, 32)  # default: core 0
        np.testing.assert_allclose(reads["time_s"], [60.0, 600.0, 6000.0])
        fit = r.stream("drift_fit")
        assert fit["nu"].shape == (1, 32, 32) and np.nanmean(fit["nu"]) > 0.01


def test_bad_config_is_refused_before_a_run_file_exists(tmp_path) -> None:
    from hil.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="margin_counts"):
        run_protocol("program-verify", chip=SPEC, config={"margin_counts": 0}, out=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.h5"))


def test_a_drift_run_killed_midway_resumes_to_the_same_result(tmp_path) -> None:
    from emulator import EmulatedChip
    from hil import Geometry
    from hil.runner import resume_run

    class StopsAtThirdWait(EmulatedChip):
        """The controlling process dies (Ctrl-C) during the third scheduled wait."""

        waits = 0

        def _sleep(self, seconds: float) -> None:
            StopsAtThirdWait.waits += 1
            if StopsAtThirdWait.waits == 3:
                raise KeyboardInterrupt
            super()._sleep(seconds)

    spec = "emulator:hermes,cores=1,rows=32,cols=32"
    cfg = {"read_times_s": [60.0, 600.0, 6000.0, 60000.0], "reads_per_point": 2}
    chip = StopsAtThirdWait("hermes", seed=0, geometry=Geometry(n_cores=1, n_rows=32, n_cols=32))
    with pytest.raises(KeyboardInterrupt):
        run_protocol("drift", chip=chip, chip_spec=spec, config=cfg, out=tmp_path / "a", progress=False)
    (path,) = (tmp_path / "a").glob("*.h5")
    with RunReader(path) as r:
        assert r.status == "abort" and r.n_rows("drift_reads") == 2
    resumed = resume_run(path, progress=False)
    assert resumed.status == "success", resumed.message
    clean = run_protocol("drift", chip=spec, config=cfg, out=tmp_path / "b", progress=False)
    assert _no_wall(resumed.summary) == _no_wall(clean.summary)
    with RunReader(path) as r:
        np.testing.assert_allclose(r.stream("drift_reads")["time_s"], cfg["read_times_s"])

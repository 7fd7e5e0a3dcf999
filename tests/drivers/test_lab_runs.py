"""Runs through the engine on the lab path: results and journals in run files, a safety trip recorded."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import BaseModel, ConfigDict

import hil
from drivers.station import Station
from hil.protocol import register_protocol

from .conftest import SMALL
from .helpers import MiniConfig, mini_protocol
from .test_station import BENCH, write

engine = pytest.importorskip("hil.runner")
runfile = pytest.importorskip("hil.runs")

class PulseConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amplitude_ua: float = 400.0


def pulse_protocol(chip: hil.Chip, config: PulseConfig, run: Any) -> dict[str, Any]:
    chip.apply_pulses([0], 1, 1, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0)
    run.log("reads", counts=chip.read_devices([0], 1, 1, 0))
    chip.apply_pulses([0, 1], 1, 1, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=config.amplitude_ua, width_ns=125.0)
    return {"done": True}


@pytest.fixture(autouse=True)
def test_protocols(monkeypatch):
    """Register this module's protocols in a private copy of the registry (others never see them)."""
    import hil.protocol as hp

    monkeypatch.setattr(hp, "_REGISTRY", dict(hp._REGISTRY))
    register_protocol("test-lab-mini", MiniConfig)(mini_protocol)
    register_protocol("test-lab-pulse", PulseConfig)(pulse_protocol)


def board_station(tmp_path, write_head_ua: int = 500) -> Station:
    bench = BENCH.replace("write_head_current_ua: 500", f"write_head_current_ua: {write_head_ua}")
    text = bench + f"board:\n  address: 'TCPIP0::10.0.0.20::5025::SOCKET'\n  emulator: {{seed: 0, cores: {SMALL.n_cores}, rows: {SMALL.n_rows}, cols: {SMALL.n_cols}}}\n"
    return Station.from_yaml(write(tmp_path, text))


def test_lab_run_file_matches_the_emulator_run_file(tmp_path):
    with board_station(tmp_path, write_head_ua=800) as st:  # the protocol RESETs at 700 uA
        # run seed 0 = the seed of the board's emulator in the station file, so both chips start alike
        lab = engine.run_protocol("test-lab-mini", chip=st.chip(), chip_spec="lab:station", seed=0, out=tmp_path / "lab", progress=False)
    emu = engine.run_protocol("test-lab-mini", chip=f"emulator:hermes,cores={SMALL.n_cores},rows={SMALL.n_rows},cols={SMALL.n_cols}",
                              seed=0, out=tmp_path / "emu", progress=False)
    assert lab.status == emu.status == "success", (lab.message, emu.message)
    assert lab.summary == emu.summary and lab.n_calls == emu.n_calls
    with runfile.RunReader(lab.path) as a, runfile.RunReader(emu.path) as b:
        assert a.chip_info["backend"] == "lab" and b.chip_info["backend"] == "emulator"
        assert a.streams() == b.streams()


def test_a_tripped_limit_stops_the_run_with_outputs_off_and_the_reason_in_the_run_file(tmp_path):
    with board_station(tmp_path) as st:
        st["psu"].output(1).voltage_v = 1.0
        st["psu"].output(1).output_enabled = True
        result = engine.run_protocol(
            "test-lab-pulse", chip=st.chip(), chip_spec="lab:station", config={"amplitude_ua": 650.0}, out=tmp_path, progress=False
        )
        assert st["psu"].output(1).output_enabled is False
        assert st.chip().board_stats()["executed"] >= 1  # the board is still up; only the unsafe call was refused
    assert (result.status, result.reason, result.exception_type) == ("fail", "safety_limit", "hil.errors.SafetyLimitError")
    assert "amplitude_ua=650.0 exceeds the station write-head limit of 500.0 uA" in result.message
    with runfile.RunReader(result.path) as rf:
        meta = rf.metadata()
        assert rf.status == "fail"
        text = " ".join(str(v) for v in meta.values())
        assert "safety_limit" in text and "write-head limit of 500.0 uA" in text
        assert np.asarray(rf.streams()).size >= 1

"""Lab runs record the station: each instrument's identity and settings at start, and the station file."""

from __future__ import annotations

from pathlib import Path

import pytest

from hil.runner import run_protocol
from hil.runs import RunReader

station_mod = pytest.importorskip("drivers.station")

STATION = """
name: snapshot-bench
simulated: true
limits:
  write_head_current_ua: 700
  supply_voltage_v: 3.6
  supply_current_a: 1.0
  temperature_k: 358.15
  smu_voltage_v: 5.0
  pulse_voltage_v: 3.0
instruments:
  psu: {driver: keysight_e36300, address: "TCPIP0::10.0.0.13::inst0::INSTR"}
  tc: {driver: lakeshore_336, address: "TCPIP0::10.0.0.15::7777::SOCKET"}
board:
  address: "TCPIP0::10.0.0.20::5025::SOCKET"
  emulator: {seed: 0, cores: 2, rows: 16, cols: 16}
"""


def test_a_lab_run_stores_the_station_snapshot_and_file(tmp_path: Path, cli) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(STATION)
    with station_mod.Station.from_yaml(path) as st:
        st["tc"].loop(1).setpoint_k = 301.5  # a setting made before the run is what the run records
        expected = st.snapshot()
        res = run_protocol("test-steps", chip=st.chip(), chip_spec="lab:station", sets=["steps=1", "mvm=false"],
                           out=tmp_path / "runs", progress=False)
    assert res.status == "success", res.message
    with RunReader(res.path) as r:
        s = r.start
        assert s.station == expected and s.station_file == str(path.resolve()) and s.station_yaml == STATION
        psu = s.station["instruments"]["psu"]
        assert psu["idn"].startswith("Keysight Technologies,E36312A") and psu["simulated"] is True
        assert psu["driver"] == "keysight_e36300" and "outputs" in psu
        assert s.station["board"]["simulated"] is True and s.station["limits"]["write_head_current_ua"] == 700
        assert s.station["instruments"]["tc"]["loops"]["1"]["setpoint_k"] == 301.5
    shown = cli("show", str(res.path))
    assert shown.code == 0 and "station   snapshot-bench (2 instruments" in shown.out and "Keysight Technologies" in shown.out


def test_an_emulator_run_records_no_station(tmp_path: Path) -> None:
    res = run_protocol("test-steps", chip="fake", sets=["steps=1"], out=tmp_path, progress=False)
    with RunReader(res.path) as r:
        assert r.start.station == {} and r.start.station_yaml == ""


def test_the_command_line_runs_on_a_station_file_and_records_it(tmp_path: Path, cli) -> None:
    path = tmp_path / "bench.yaml"
    path.write_text(STATION)
    res = cli("run", "test-steps", "--chip", f"lab:station={path}", "--set", "steps=2", "--set", "mvm=false",
              "--out", str(tmp_path / "runs"), "--json", "--no-progress")
    assert res.code == 0, res.err
    run = res.json()
    with RunReader(run["path"]) as r:
        assert r.start.chip_spec == f"lab:station={path}" and r.start.station_file == str(path.resolve())
        assert set(r.start.station["instruments"]) == {"psu", "tc"} and r.n_rows("steps") == 2
    bad = cli("run", "test-steps", "--chip", "lab:station=", "--out", str(tmp_path / "runs"))
    assert bad.code == 2 and "needs a station file" in bad.err

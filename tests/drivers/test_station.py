"""Station file validation, simulated benches, safe shutdown on a tripped limit."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

import hil
from drivers.station import Station, StationFileError, load_station_config
from drivers.testing import ScriptedInstrument
from hil.errors import SafetyLimitError

LIMITS = """
limits:
  write_head_current_ua: 500
  supply_voltage_v: 3.6
  supply_current_a: 1.0
  temperature_k: 358.15
  smu_voltage_v: 5.0
  pulse_voltage_v: 3.0
"""

BENCH = (
    """
name: test-bench
simulated: true
"""
    + LIMITS
    + """
instruments:
  smu: {driver: keithley_2600b, address: "TCPIP0::10.0.0.11::inst0::INSTR"}
  awg: {driver: keysight_33500b, address: "TCPIP0::10.0.0.12::inst0::INSTR"}
  psu: {driver: keysight_e36300, address: "TCPIP0::10.0.0.13::inst0::INSTR"}
  dmm: {driver: keysight_34465a, address: "TCPIP0::10.0.0.14::inst0::INSTR"}
  tc: {driver: lakeshore_336, address: "TCPIP0::10.0.0.15::7777::SOCKET"}
"""
)


def write(tmp_path, text, name="station.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_simulated_bench_connects_every_instrument(tmp_path):
    with Station.from_yaml(write(tmp_path, BENCH)) as st:
        snap = st.snapshot()
        assert set(snap["instruments"]) == {"smu", "awg", "psu", "dmm", "tc"}
        assert all(i["simulated"] for i in snap["instruments"].values())
        assert snap["instruments"]["psu"]["idn"].startswith("Keysight Technologies,E36312A")
        assert snap["limits"]["write_head_current_ua"] == 500
        assert st["tc"].input("A").temperature_k == pytest.approx(295.15)
        with pytest.raises(KeyError, match=r"no instrument 'scope'.*open instruments: smu, awg"):
            st["scope"]


def test_each_station_gets_a_fresh_simulator(tmp_path):
    path = write(tmp_path, BENCH)
    with Station.from_yaml(path) as a:
        a["psu"].output(1).voltage_v = 2.5
        with Station.from_yaml(path) as b:
            assert b["psu"].output(1).voltage_v == 0.0
        assert a["psu"].output(1).voltage_v == 2.5


def test_tripped_limit_switches_every_output_off(tmp_path):
    with Station.from_yaml(write(tmp_path, BENCH)) as st:
        psu, smu, awg, tc = st["psu"], st["smu"], st["awg"], st["tc"]
        psu.output(1).voltage_v = 1.2
        psu.output(1).output_enabled = True
        smu.channel("a").output_enabled = True
        awg.channel(1).configure_single_pulse(1.0, 1e-7)
        awg.channel(1).output_enabled = True
        tc.loop(1).setpoint_k = 300.0
        tc.loop(1).heater_range = 1
        with pytest.raises(SafetyLimitError, match=r"voltage_v=4\.0 V exceeds the station safety limit of 3\.6 V"):
            psu.output(2).voltage_v = 4.0
        # read the real (simulated) state back, not the drivers' caches
        assert [psu.output(n).output_enabled for n in (1, 2, 3)] == [False] * 3
        assert [smu.channel(c).output_enabled for c in "ab"] == [False, False]
        assert [awg.channel(n).output_enabled for n in (1, 2)] == [False, False]
        assert [tc.loop(n).heater_range for n in (1, 2)] == [0, 0]
        assert len(st.trip_reasons) == 1 and "3.6 V" in st.trip_reasons[0]


def test_switching_to_real_is_a_change_of_the_file_only(tmp_path):
    dmm_connect = [
        ("*IDN?", "Keysight Technologies,34465A,MY1,A.03"),
        ("SENS:FUNC?", '"VOLT"'),
        ("SENS:VOLT:NPLC?", "+1.0E+00"),
        ("SENS:VOLT:RANG?", "+1.0E+00"),
        ("SENS:VOLT:RANG:AUTO?", "0"),
        ("READ?", "+4.2E-01"),
    ]
    real = ScriptedInstrument(dmm_connect, "\n", "\n").start()  # stands in for the instrument on the network
    text = f"name: b\nsimulated: SIM\n{LIMITS}\ninstruments:\n  dmm: {{driver: keysight_34465a, address: '{real.address}'}}\n"
    with Station.from_yaml(write(tmp_path, text.replace("SIM", "true"), "sim.yaml")) as st:
        assert st.is_simulated("dmm") and st["dmm"].reading == pytest.approx(0.123456780)
    with Station.from_yaml(write(tmp_path, text.replace("SIM", "false"), "real.yaml")) as st:
        assert not st.is_simulated("dmm") and st["dmm"].reading == pytest.approx(0.42)
    assert real.finish() == []


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (BENCH + "oscilloscope: true\n", r"oscilloscope: Extra inputs are not permitted"),
        ("name: x\ninstruments: {}\n", r"limits: Field required"),
        (BENCH.replace("write_head_current_ua: 500", "write_head_current_ua: 900"), r"limits\.write_head_current_ua: Input should be less than or equal to 800"),
        (BENCH.replace("driver: keysight_34465a", "driver: fluke_8846a"), r"instruments\.dmm\.driver: Input should be"),
        (BENCH.replace("  tc: {", "  tc: {port: 1, "), r"instruments\.tc\.port: Extra inputs"),
        (BENCH.replace("  dmm:", "  my-dmm:"), r"must be an identifier"),
        ("name: [unclosed\n", r"is not valid YAML"),
        ("- a list\n", r"must hold a mapping"),
    ],
)
def test_bad_station_files_are_refused_with_the_field_named(tmp_path, text, match):
    with pytest.raises(StationFileError, match=match):
        load_station_config(write(tmp_path, text))


def test_missing_file(tmp_path):
    with pytest.raises(StationFileError, match="cannot read station file"):
        load_station_config(tmp_path / "nope.yaml")


def test_a_station_without_board_says_so(tmp_path):
    with Station.from_yaml(write(tmp_path, BENCH)) as st, pytest.raises(StationFileError, match="no 'board' section"):
        st.chip()


def test_pulse_above_the_station_limit_never_reaches_the_board(tmp_path):
    text = BENCH + "board:\n  address: 'TCPIP0::10.0.0.20::5025::SOCKET'\n  emulator: {seed: 5, cores: 2, rows: 16, cols: 16}\n"
    with Station.from_yaml(write(tmp_path, text)) as st:
        chip = st.chip()
        assert chip.geometry == hil.Geometry(n_cores=2, n_rows=16, n_cols=16)
        st["psu"].output(1).voltage_v = 1.0
        st["psu"].output(1).output_enabled = True
        chip.apply_pulses([0, 1], 3, 4, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=450.0, width_ns=125.0)
        before = chip.board_stats()["executed"]
        chip.read_devices([0, 1], 3, 4, 0)
        with pytest.raises(SafetyLimitError, match=r"amplitude_ua=600\.0 exceeds the station write-head limit of 500\.0 uA"):
            chip.apply_pulses([0, 1], 3, 4, 0, kind=hil.PulseKind.PARTIAL, amplitude_ua=np.array([450.0, 600.0]), width_ns=125.0)
        assert st["psu"].output(1).output_enabled is False
        stats = chip.board_stats()
        assert stats["executed"] == before + 2  # the read and this STATS, no PULSE
        assert "write-head limit" in st.trip_reasons[0]

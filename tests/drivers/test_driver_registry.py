"""The driver registry: built-in drivers from their classes, entry-point drivers, import-path drivers.

The entry-point tests install a real (temporary) distribution: a ``*.dist-info`` directory with an
``entry_points.txt`` and its package, on ``sys.path``; ``importlib.metadata`` finds it as it finds
any installed package.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import drivers
from drivers import DRIVERS, driver_class, known_drivers
from drivers.instrument import DriverLookupError, Instrument, UnknownDriverError
from drivers.keithley_2600b import Keithley2600B
from drivers.station import SafetyLimits, Station, StationFileError, load_station_config
from drivers.testing import ScriptedInstrument
from hil.errors import SafetyLimitError
from tests.drivers.plugin_driver import BenchSupply
from tests.drivers.test_station import LIMITS as STATION_LIMITS

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "tests.drivers.plugin_driver"

LIMITS = STATION_LIMITS.lstrip("\n")


def station_text(instruments: dict[str, str], simulated: bool = True) -> str:
    """A station file with ``instruments`` (name -> driver) at placeholder addresses."""
    lines = [
        f"  {name}: {{driver: '{driver}', address: 'TCPIP0::10.0.0.{i}::inst0::INSTR'}}"
        for i, (name, driver) in enumerate(instruments.items())
    ]
    return f"name: plugin-bench\nsimulated: {str(simulated).lower()}\n{LIMITS}instruments:\n" + "\n".join(lines) + "\n"


def write(tmp_path: Path, text: str, name: str = "station.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def acme_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A third-party distribution 'acme-lab-drivers' on sys.path, registering drivers in 'hil.drivers'."""
    site = tmp_path / "site"
    package = site / "acme_lab_drivers"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f'''\
            """Acme's drivers (a stand-in for an installed third-party package)."""
            from {PLUGIN} import BenchSupply


            class AcmeSupply(BenchSupply):
                """Acme's one-output supply (the test plugin's protocol and sim YAML)."""

                station_name = "acme_supply"


            class Misnamed(BenchSupply):
                """Registered under another name than the one it declares."""

                station_name = "acme_other"
            '''
        )
    )
    info = site / "acme_lab_drivers-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-lab-drivers\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        textwrap.dedent(
            f"""\
            [hil.drivers]
            acme_supply = acme_lab_drivers:AcmeSupply
            acme_misnamed = acme_lab_drivers:Misnamed
            acme_not_an_instrument = {PLUGIN}:NotAnInstrument
            acme_broken = acme_lab_drivers.missing:Nope
            keithley_2600b = acme_lab_drivers:AcmeSupply
            """
        )
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    sys.modules.pop("acme_lab_drivers", None)


# ---------------------------------------------------------------- built-in drivers


def test_builtin_registry_is_derived_from_the_driver_classes():
    assert DRIVERS == {
        "keithley_2600b": "drivers.keithley_2600b:Keithley2600B",
        "keysight_33500b": "drivers.keysight_33500b:Keysight33500B",
        "keysight_34465a": "drivers.keysight_34465a:Keysight34465A",
        "keysight_e36300": "drivers.keysight_e36300:KeysightE36300",
        "lakeshore_336": "drivers.lakeshore_336:LakeShore336",
    }
    for name in DRIVERS:
        cls = driver_class(name)
        assert cls.station_name == name
        assert cls.limit_kwargs.__func__ is not Instrument.limit_kwargs.__func__, f"{name} must declare limit_kwargs"


def test_builtin_drivers_take_the_station_limits_they_always_did():
    lim = SafetyLimits(
        write_head_current_ua=500,
        supply_voltage_v=3.6,
        supply_current_a=1.0,
        temperature_k=358.15,
        smu_voltage_v=5.0,
        pulse_voltage_v=3.0,
    )
    got = {name: driver_class(name).limit_kwargs(lim) for name in DRIVERS}
    assert got == {
        "keithley_2600b": {"max_voltage_v": 5.0, "max_current_a": pytest.approx(500e-6)},
        "keysight_33500b": {"max_voltage_v": 3.0},
        "keysight_34465a": {},
        "lakeshore_336": {"max_temperature_k": 358.15},
        "keysight_e36300": {"max_voltage_v": 3.6, "max_current_a": 1.0},
    }


def test_importing_drivers_imports_no_driver_module_pyvisa_or_hil():
    code = "import sys, drivers; print(sorted(m for m in sys.modules if m.startswith(('drivers', 'pyvisa', 'hil'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "['drivers']"


def test_unknown_name_lists_the_known_drivers_and_how_to_add_one(tmp_path):
    with pytest.raises(StationFileError) as info:
        load_station_config(write(tmp_path, station_text({"dmm": "fluke_8846a"})))
    msg = str(info.value)
    assert "instruments.dmm.driver: Input should be" in msg and "unknown driver 'fluke_8846a'" in msg
    assert "keithley_2600b, keysight_33500b, keysight_34465a, keysight_e36300, lakeshore_336." in msg
    assert "'hil.drivers' entry-point group" in msg and "driver: package.module:Class" in msg
    assert "acme_supply" not in msg  # not installed in this test
    with pytest.raises(UnknownDriverError, match="unknown driver 'fluke_8846a'") as direct:
        driver_class("fluke_8846a")
    assert isinstance(direct.value, KeyError)  # callers that caught the old KeyError still do


# ---------------------------------------------------------------- a lab's own class by import path


def test_import_path_driver_runs_simulated_with_the_station_limits(tmp_path):
    text = station_text({"heater": f"{PLUGIN}:BenchSupply", "psu": "keysight_e36300"})
    with Station.from_yaml(write(tmp_path, text)) as st:
        heater, psu = st["heater"], st["psu"]
        assert isinstance(heater, BenchSupply) and heater.max_voltage_v == 3.6
        assert st.snapshot()["instruments"]["heater"]["idn"] == "Lab Workshop,BS-1,0001,1.0"
        heater.voltage_v = 3.0
        heater.output_enabled = True
        psu.output(1).voltage_v = 1.0
        psu.output(1).output_enabled = True
        assert heater.voltage_v == 3.0
        with pytest.raises(SafetyLimitError, match=r"voltage_v=4\.0 V exceeds the station safety limit of 3\.6 V"):
            heater.voltage_v = 4.0
        # read back from the simulators: the plugin's own YAML and the built-in driver's
        assert heater.output_enabled is False and heater.voltage_v == 3.0
        assert psu.output(1).output_enabled is False
        assert len(st.trip_reasons) == 1 and st.trip_reasons[0].startswith("heater: voltage_v=4.0 V")


def test_each_station_gets_its_own_copy_of_a_plugin_sim_yaml(tmp_path):
    path = write(tmp_path, station_text({"heater": f"{PLUGIN}:BenchSupply"}))
    with Station.from_yaml(path) as a, Station.from_yaml(path) as b:
        a["heater"].voltage_v = 2.0
        assert b["heater"].voltage_v == 0.0


def test_import_path_driver_on_a_real_instrument_gets_its_limits(tmp_path):
    # connect reads the state back; the refused setpoint sends nothing; the trip switches the output off
    script = [("*IDN?", "Lab Workshop,BS-1,7,2.0"), ("VOLT?", "+1.5E+00"), ("OUTP?", "0"), ("OUTP 0", None)]
    real = ScriptedInstrument(script, "\n", "\n").start()
    text = f"name: b\nsimulated: false\n{LIMITS}instruments:\n  heater: {{driver: '{PLUGIN}:BenchSupply', address: '{real.address}'}}\n"
    with Station.from_yaml(write(tmp_path, text)) as st:
        assert not st.is_simulated("heater")
        assert st["heater"].max_voltage_v == 3.6 and st["heater"].state == {"voltage_v": 1.5, "output_enabled": False}
        with pytest.raises(SafetyLimitError):
            st["heater"].voltage_v = 5.0
    assert real.finish() == []


@pytest.mark.parametrize(
    ("driver", "match"),
    [
        (
            f"{PLUGIN}:NotAnInstrument",
            r"driver 'tests\.drivers\.plugin_driver:NotAnInstrument' is <class .*NotAnInstrument'>, not a subclass of drivers\.instrument\.Instrument",
        ),
        (f"{PLUGIN}:NoLimitsSupply", r"does not say which station safety limits it takes; define the classmethod limit_kwargs"),
        ("drivers.instrument:Instrument", r"is the base class itself"),
        (
            "no_such_lab.drivers:Amp",
            r"cannot import module 'no_such_lab\.drivers' \(ModuleNotFoundError: .*\)\. Install its package or put its folder on PYTHONPATH",
        ),
        (f"{PLUGIN}:NoSuchClass", r"module 'tests\.drivers\.plugin_driver' has no attribute 'NoSuchClass'"),
        (f"{PLUGIN}:check_value", r"is <function check_value .*>, not a subclass"),
    ],
)
def test_bad_import_paths_are_refused_at_load_with_the_field_named(tmp_path, driver, match):
    with pytest.raises(StationFileError, match=r"instruments\.x\.driver: .*" + match):
        load_station_config(write(tmp_path, station_text({"x": driver})))


def test_a_simulated_plugin_without_a_sim_yaml_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(BenchSupply, "sim_file", "")
    with pytest.raises(
        FileNotFoundError, match=r"BenchSupply has no pyvisa-sim YAML .*or run this instrument with simulated: false"
    ):
        Station.from_yaml(write(tmp_path, station_text({"heater": f"{PLUGIN}:BenchSupply"}))).connect()


def test_a_plugin_sim_yaml_may_be_an_absolute_path(tmp_path, monkeypatch):
    own = tmp_path / "my_supply.yaml"
    own.write_text((REPO / "tests" / "drivers" / "sim" / "bench_supply.yaml").read_text().replace("Lab Workshop", "Own YAML"))
    monkeypatch.setattr(BenchSupply, "sim_file", str(own))
    with Station.from_yaml(write(tmp_path, station_text({"heater": f"{PLUGIN}:BenchSupply"}))) as st:
        assert st["heater"].idn.startswith("Own YAML,BS-1")


# ---------------------------------------------------------------- installed packages (entry points)


@pytest.mark.usefixtures("acme_installed")
def test_entry_point_driver_runs_from_a_station_file_with_its_limits(tmp_path):
    assert known_drivers()["acme_supply"] == "acme_lab_drivers:AcmeSupply"
    text = station_text({"heater": "acme_supply", "psu": "keysight_e36300"})
    with Station.from_yaml(write(tmp_path, text)) as st:
        heater = st["heater"]
        assert type(heater).__name__ == "AcmeSupply" and heater.max_voltage_v == 3.6
        st["psu"].output(2).voltage_v = 2.0
        st["psu"].output(2).output_enabled = True
        heater.output_enabled = True
        with pytest.raises(SafetyLimitError, match=r"exceeds the station safety limit of 3\.6 V"):
            heater.voltage_v = 3.7
        assert heater.output_enabled is False and st["psu"].output(2).output_enabled is False


@pytest.mark.usefixtures("acme_installed")
def test_unknown_name_lists_the_entry_point_drivers_too(tmp_path):
    with pytest.raises(StationFileError, match=r"Known drivers: keithley_2600b, .*lakeshore_336, acme_broken, .*acme_supply\."):
        load_station_config(write(tmp_path, station_text({"x": "fluke_8846a"})))


@pytest.mark.usefixtures("acme_installed")
@pytest.mark.parametrize(
    ("driver", "match"),
    [
        (
            "acme_not_an_instrument",
            r"driver 'acme_not_an_instrument' \(entry point acme_not_an_instrument = tests\.drivers\.plugin_driver:NotAnInstrument from acme-lab-drivers 1\.0\) is <class .*>, not a subclass of drivers\.instrument\.Instrument",
        ),
        (
            "acme_misnamed",
            r"driver 'acme_misnamed' \(entry point .*\) is a class whose station_name is 'acme_other'; make the entry-point name and the class's station_name the same",
        ),
        (
            "acme_broken",
            r"driver 'acme_broken' \(entry point acme_broken = acme_lab_drivers\.missing:Nope from acme-lab-drivers 1\.0\) failed to load: ModuleNotFoundError",
        ),
    ],
)
def test_bad_entry_points_are_refused_clearly(tmp_path, driver, match):
    with pytest.raises(StationFileError, match=r"instruments\.x\.driver: " + match):
        load_station_config(write(tmp_path, station_text({"x": driver})))


@pytest.mark.usefixtures("acme_installed")
def test_a_builtin_name_is_not_taken_over_by_an_entry_point(caplog):
    with caplog.at_level(logging.WARNING, logger="drivers"):
        assert driver_class("keithley_2600b") is Keithley2600B
    assert "driver 'keithley_2600b' is built in; ignoring the entry point(s) acme_lab_drivers:AcmeSupply" in caplog.text


def test_two_packages_registering_one_name_is_refused(acme_installed, tmp_path, monkeypatch):
    other = tmp_path / "site2"
    info = other / "other_drivers-2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: other-drivers\nVersion: 2.0\n")
    (info / "entry_points.txt").write_text("[hil.drivers]\nacme_supply = other_drivers:Supply\n")
    monkeypatch.syspath_prepend(str(other))
    with pytest.raises(
        DriverLookupError,
        match=r"driver 'acme_supply' is registered by more than one installed package .*other-drivers 2\.0.*acme-lab-drivers 1\.0",
    ):
        driver_class("acme_supply")


def test_the_module_exposes_no_other_lazy_names():
    with pytest.raises(AttributeError, match="no attribute 'DRIVER'"):
        drivers.DRIVER  # noqa: B018

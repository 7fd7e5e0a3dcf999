"""Meta-tests: every driver in drivers.DRIVERS follows the conventions of drivers/instrument.py.

Each driver is opened on its own pyvisa-sim YAML (a fresh copy, so no state is shared) and checked:
one logged I/O point, no reset at connect, docstrings with units and ranges, validators that run
before any write, the sim YAML as package data covering every command, and test files present.
"""

from __future__ import annotations

import inspect
import logging
import re
import shutil
import tomllib
from pathlib import Path

import pytest
import pyvisa
import yaml

from drivers import DRIVERS, driver_class
from drivers.instrument import Channel, Instrument, InstrumentInputError, default_resource_manager, sim_file_path
from hil.errors import SafetyLimitError

REPO = Path(__file__).resolve().parents[2]
NAMES = sorted(DRIVERS)
UNIT_SUFFIXES = ("_v", "_a", "_k", "_hz", "_s", "_ohm", "_percent", "_ua")
UNIT_WORDS = r"\bin (V|A|K|Hz|s|ohm|percent|uA|power-line cycles|the function's unit|the unit of)"


@pytest.fixture
def sim(tmp_path):
    """Open a driver on a private copy of its pyvisa-sim YAML."""
    opened = []

    def open_driver(name: str, **kwargs) -> Instrument:
        cls = driver_class(name)
        copy = tmp_path / cls.sim_file
        shutil.copyfile(sim_file_path(cls.sim_file), copy)
        rm = pyvisa.ResourceManager(f"{copy}@sim")
        inst = cls(cls.sim_address, name=name, resource_manager=rm, **kwargs)
        opened.append((inst, rm))
        return inst

    yield open_driver
    for inst, rm in opened:
        inst.close()
        rm.close()


def parts(inst: Instrument) -> list[object]:
    """The instrument and every channel object it holds."""
    found: list[object] = [inst]
    for value in vars(inst).values():
        if isinstance(value, dict):
            found += [v for v in value.values() if isinstance(v, Channel)]
    return found


def properties(obj: object) -> dict[str, property]:
    out = {}
    for klass in type(obj).__mro__:
        if klass in (Instrument, Channel, object):
            continue
        for name, attr in vars(klass).items():
            if isinstance(attr, property) and not name.startswith("_") and name not in out:
                out[name] = attr
    return out


@pytest.mark.parametrize("name", NAMES)
def test_driver_class_basics(name):
    cls = driver_class(name)
    assert issubclass(cls, Instrument)
    assert cls.__doc__ and inspect.getmodule(cls).__doc__, "class and module need docstrings"
    assert cls.sim_file == f"{name}.yaml" and cls.sim_address and cls.idn_model
    params = inspect.signature(cls.__init__).parameters
    assert params["name"].kind is inspect.Parameter.KEYWORD_ONLY, "name= must be keyword-only"


@pytest.mark.parametrize("name", NAMES)
def test_sim_yaml_is_package_data_and_declares_the_address(name):
    cls = driver_class(name)
    path = sim_file_path(cls.sim_file)
    assert path.parent == REPO / "drivers" / "sim"
    data = yaml.safe_load(path.read_text())
    assert data["spec"] and cls.sim_address in data["resources"]
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["drivers"]
    assert any(Path("sim", cls.sim_file).match(g) for g in globs), f"{cls.sim_file} is not shipped as package data"


@pytest.mark.parametrize("name", NAMES)
def test_only_the_base_class_touches_the_resource(name):
    source = inspect.getsource(inspect.getmodule(driver_class(name)))
    banned = re.findall(r"\._resource\b|\.write\(|\.query\(|\.read\(|write_raw|read_raw|read_bytes|query_ascii|query_binary|\.clear\(\)", source)
    assert not banned, f"drivers talk to the instrument only via _write/_query; found {banned}"
    assert not re.search(r"\*RST|\*CLS|SYST:PRES|reset\(\)", source), "a driver must not contain reset commands"


@pytest.mark.parametrize("name", NAMES)
def test_connect_logs_every_exchange_and_sends_no_reset(name, sim, caplog):
    with caplog.at_level(logging.DEBUG, logger=f"drivers.{name}"):
        inst = sim(name)
    records = [r.getMessage() for r in caplog.records if r.name == f"drivers.{name}"]
    assert inst.n_queries > 1, "connect must read back state beyond *IDN?"
    assert len(records) == inst.n_writes + inst.n_queries
    assert records[0].startswith("query '*IDN?'")
    sent = " ".join(records)
    for bad in Instrument.FORBIDDEN_AT_CONNECT:
        assert bad not in sent
    assert inst.n_writes == 0, "connect must not write (it only reads state back)"


@pytest.mark.parametrize("name", NAMES)
def test_property_docstrings_state_kind_type_units_and_booleans_read_as_questions(name, sim):
    inst = sim(name)
    checked = 0
    for part in parts(inst):
        for prop_name, prop in properties(part).items():
            doc = (prop.__doc__ or "").strip()
            where = f"{type(part).__name__}.{prop_name}"
            assert re.match(r"(Control|Get|Measure|Set) ", doc), f"{where}: docstring must start with Control/Get/Measure/Set"
            m = re.search(r"\((float|int|str|bool)\b", doc)
            assert m, f"{where}: docstring must give the type in parentheses, e.g. '(float, 0 to 6)'"
            if m.group(1) == "float":
                assert prop_name.endswith(UNIT_SUFFIXES) or re.search(UNIT_WORDS, doc), f"{where}: say the unit"
                if doc.startswith("Control"):
                    assert re.search(r"\d", doc), f"{where}: give the range"
            if m.group(1) == "bool":
                assert prop_name.endswith(("_enabled", "_active")) or prop_name == "closed", f"{where}: name booleans *_enabled"
            if (prop.fset is None) != (not doc.startswith(("Control", "Set"))):
                pytest.fail(f"{where}: Control/Set properties have setters, Get/Measure ones do not")
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("name", NAMES)
def test_every_control_property_round_trips_on_the_sim(name, sim):
    """Write back each value read: the YAML must understand every command the driver sends."""
    inst = sim(name)
    for part in parts(inst):
        for prop_name, prop in properties(part).items():
            if prop.fset is None:
                continue
            value = getattr(part, prop_name)
            setattr(part, prop_name, value)
            assert getattr(part, prop_name) == value, f"{type(part).__name__}.{prop_name}"


BAD = {"float": 1e30, "int": 10**12, "str": "NO-SUCH-SETTING", "bool": "yes"}


@pytest.mark.parametrize("name", NAMES)
def test_every_setter_validates_before_writing(name, sim):
    inst = sim(name)
    for part in parts(inst):
        for prop_name, prop in properties(part).items():
            if prop.fset is None:
                continue
            kind = re.search(r"\((float|int|str|bool)\b", prop.__doc__).group(1)
            writes = inst.n_writes
            with pytest.raises((InstrumentInputError, SafetyLimitError)):
                setattr(part, prop_name, BAD[kind])
            assert inst.n_writes == writes, f"{type(part).__name__}.{prop_name} wrote before refusing"


@pytest.mark.parametrize("name", NAMES)
def test_unknown_keyword_is_rejected_and_name_is_required(name, sim):
    cls = driver_class(name)
    with pytest.raises(TypeError):
        cls(cls.sim_address, name="x", no_such_option=1)
    with pytest.raises(TypeError):
        cls(cls.sim_address)


@pytest.mark.parametrize("name", NAMES)
def test_safe_state_writes_only_and_returns(name, sim):
    inst = sim(name)
    queries = inst.n_queries
    inst.safe_state()
    assert inst.n_queries == queries, "safe_state must not depend on replies (it runs when things go wrong)"


def test_closing_one_instrument_keeps_the_shared_manager_and_the_others_open():
    from drivers.testing import ScriptedInstrument

    rm = default_resource_manager()
    psu_cls, tc_cls = driver_class("keysight_e36300"), driver_class("lakeshore_336")
    a = ScriptedInstrument([("*IDN?", "Keysight,E36312A,1,1")] + [(q, "0") for n in (1, 2, 3) for q in (f"VOLT? (@{n})", f"CURR? (@{n})", f"OUTP? (@{n})")], "\n", "\n").start()
    b = ScriptedInstrument([("*IDN?", "LSCI,MODEL336,1,1"), ("SETP? 1", "+1.0"), ("RANGE? 1", "0"), ("SETP? 2", "+1.0"), ("RANGE? 2", "0"), ("KRDG? A", "+4.200")], "\r\n", "\r\n").start()
    psu = psu_cls(a.address, name="psu", resource_manager=rm)
    tc = tc_cls(b.address, name="tc", resource_manager=rm)
    psu.close()
    psu.close()  # twice is fine
    assert psu.closed
    assert rm.session is not None
    assert tc.input("A").temperature_k == 4.2
    tc.close()
    assert a.finish() == [] and b.finish() == []


@pytest.mark.parametrize("name", NAMES)
def test_each_driver_has_exchange_and_hardware_tests(name):
    here = Path(__file__).parent
    exchange, device = here / f"test_{name}.py", here / f"test_{name}_with_device.py"
    assert exchange.is_file() and "expected_exchange" in exchange.read_text()
    assert device.is_file() and "device_address" in device.read_text() and "pytest.mark.hardware" in device.read_text()

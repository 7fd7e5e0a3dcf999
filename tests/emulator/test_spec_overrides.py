"""Preset constants in emulator chip specs (``emulator:hermes,noise.fast_mvm_scale=3``): parsed, validated by
the preset's pydantic models with messages that name the key and its range, recorded in the run file,
and reopened alike by resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.hil.helper_protocols  # noqa: F401 - registers test-steps
from emulator import EmulatedChip
from emulator.presets import MAX_FAST_MVM_SCALE, spec_keys
from hil.chips import check_spec, open_chip
from hil.errors import ChipInputError
from hil.runner import resume_run, run_protocol
from hil.runs import RunReader
from tests.hil.test_resume import assert_same_data

BASE = "hermes,cores=2,rows=16,cols=16,matmul=float32,chain=eager"
OVERRIDES = "noise.fast_mvm_scale=30,noise.output_noise_counts=2.5,noise.output_noise_recurrence=frozen,adc.gain_sigma=0"


def _mvm_spread(chip: EmulatedChip, reps: int = 16) -> float:
    """Std of repeated MVM outputs at one instant (the per-MVM noise), on a seeded programmed chip."""
    rng = np.random.default_rng(3)
    g = chip.geometry
    target = np.zeros((g.n_cores, g.n_rows, g.n_cols, g.n_devices), np.float32)
    target[..., 0] = rng.uniform(0.0, 8.0, (g.n_cores, g.n_rows, g.n_cols))
    chip.program_conductances(range(g.n_cores), target)
    x = rng.integers(-100, 101, (2, g.n_rows)).astype(np.int8)
    ys = np.stack([chip.mvm(x) for _ in range(reps)]).astype(np.float64)
    return float(ys.std(0, ddof=1).mean())


def test_spec_parts_set_preset_constants_like_python_overrides() -> None:
    chip = EmulatedChip.from_spec(f"{BASE},{OVERRIDES},periphery.ir_drop=true,adc.counter_bits=14", seed=4)
    nm = chip.preset.noise
    assert nm.fast_mvm_scale == 30.0 and nm.output_noise_counts == 2.5 and nm.output_noise_recurrence == "frozen"
    assert chip.preset.adc.gain_sigma == 0.0 and chip.preset.adc.counter_bits == 14 and chip.preset.periphery.ir_drop is True
    assert chip.preset.numerics.matmul_dtype == "float32" and chip.preset.numerics.adc_chain == "eager"
    same = EmulatedChip("hermes", seed=4, geometry=chip.geometry, overrides={
        "noise": {"fast_mvm_scale": 30.0, "output_noise_counts": 2.5, "output_noise_recurrence": "frozen"},
        "adc": {"gain_sigma": 0.0, "counter_bits": 14}, "periphery": {"ir_drop": True},
        "numerics": {"matmul_dtype": "float32", "adc_chain": "eager"}})
    assert same.preset == chip.preset
    assert _mvm_spread(chip) == _mvm_spread(same)  # the same chip, draw for draw
    opened = open_chip(f"emulator:{BASE},noise.fast_mvm_scale=7", seed=1)
    assert isinstance(opened, EmulatedChip) and opened.preset.noise.fast_mvm_scale == 7.0
    assert opened.info.details["preset"]["noise"]["fast_mvm_scale"] == 7.0  # what a run file records


def test_the_fast_mvm_scale_reaches_100_and_scales_the_per_mvm_noise() -> None:
    assert MAX_FAST_MVM_SCALE == 100.0
    spreads = {s: _mvm_spread(EmulatedChip.from_spec(f"{BASE},noise.fast_mvm_scale={s}", seed=2)) for s in (1, 10, 100)}
    # The fast part grows with the scale; at 100 it is far above the 1-count ADC floor noise.
    assert spreads[1] < spreads[10] < spreads[100]
    assert spreads[100] > 5 * spreads[10] > 5 * spreads[1]
    with pytest.raises(ChipInputError) as info:
        EmulatedChip.from_spec(f"{BASE},noise.fast_mvm_scale=101")
    text = str(info.value)
    assert "noise.fast_mvm_scale" in text and "[0, 100]" in text and "noise.fast_mvm_scale=V" in text


@pytest.mark.parametrize(("part", "words"), [
    ("noise.fast_mvm_scale=-1", ["noise.fast_mvm_scale", "[0, 100]", "greater than or equal to 0"]),
    ("noise.fast_mvm_scale=nan", ["noise.fast_mvm_scale", "[0, 100]"]),
    ("noise.fast_mvm_scale=lots", ["noise.fast_mvm_scale", "valid number", "a number in [0, 100]"]),
    ("noise.t0_s=0", ["noise.t0_s", "(0, 100000]"]),
    ("noise.output_noise_recurrence=sometimes", ["one of per_mvm, frozen"]),
    ("adc.counter_bits=12.5", ["adc.counter_bits", "a whole number in [4, 24]"]),
    ("periphery.ir_drop=maybe", ["periphery.ir_drop", "true or false"]),
    ("noise.fit=nope", ["unknown physics model 'nope'", "hermes-1dev"]),
    ("noise.fast_mvm=3", ["unknown emulator spec key 'noise.fast_mvm'", "noise.fast_mvm_scale", "noise.slow_noise_scale"]),
    ("nois.fast_mvm_scale=3", ["unknown emulator spec key 'nois.fast_mvm_scale'", "noise, device, adc"]),
    ("geometry.n_cores=2", ["cores=N"]),
    ("noise.fast_mvm_scale", ["bad emulator spec part 'noise.fast_mvm_scale'", "SECTION.FIELD=VALUE"]),
    ("noise.fast_mvm_scale=3,noise.fast_mvm_scale=4", ["both set noise.fast_mvm_scale", "give it once"]),
    ("numerics.matmul_dtype=bfloat16", ["'matmul=float32'", "both set numerics.matmul_dtype"]),
    ("hermes,cores=0", ["cores=0", "greater than or equal to 1"]),
    ("hermes,cores=2,cores=4", ["both set cores"]),
])
def test_bad_spec_parts_are_refused_naming_the_key_and_the_fix(part: str, words: list[str]) -> None:
    with pytest.raises(ChipInputError) as info:
        EmulatedChip.from_spec(part if part.startswith("hermes") else f"{BASE},{part}")
    for word in words:
        assert word in str(info.value), str(info.value)


def test_every_field_of_every_section_is_a_spec_key() -> None:
    keys = spec_keys()
    assert "noise.fast_mvm_scale" in keys and "device.set_g_us" in keys and "numerics.drift_rel_tol" in keys
    assert not any(k.startswith("geometry.") for k in keys)


def test_check_spec_validates_without_building_a_chip() -> None:
    check_spec(f"emulator:{BASE},{OVERRIDES}")
    check_spec("fake:cores=2")  # a backend without parse_spec: only its name is checked
    with pytest.raises(ChipInputError, match=r"noise.fast_mvm_scale.*\[0, 100\]"):
        check_spec(f"emulator:{BASE},noise.fast_mvm_scale=300")
    with pytest.raises(ChipInputError, match="unknown chip"):
        check_spec("nochip:x")


def test_a_bad_spec_writes_no_run_file(tmp_path: Path) -> None:
    with pytest.raises(ChipInputError, match=r"\[0, 100\]"):
        run_protocol("test-steps", chip=f"emulator:{BASE},noise.fast_mvm_scale=1000", sets=["steps=2"], seed=1, out=tmp_path)
    assert not list(tmp_path.iterdir())


def test_a_resumed_run_on_an_override_spec_equals_the_uninterrupted_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = f"emulator:{BASE},{OVERRIDES}"
    steps = ["steps=8"]
    whole = run_protocol("test-steps", chip=spec, sets=steps, seed=5, out=tmp_path / "whole")
    assert whole.status == "success"
    plain = run_protocol("test-steps", chip=f"emulator:{BASE}", sets=steps, seed=5, out=tmp_path / "plain")
    with RunReader(whole.path) as a, RunReader(plain.path) as b:
        assert a.chip_spec == spec
        assert a.chip_info["details"]["preset"]["noise"]["fast_mvm_scale"] == 30.0
        assert not np.array_equal(a.stream("steps")["y"], b.stream("steps")["y"])  # the overrides took effect
    monkeypatch.setenv("HIL_TEST_INTERRUPT_AT_STEP", "5")
    with pytest.raises(KeyboardInterrupt):
        run_protocol("test-steps", chip=spec, sets=steps, seed=5, out=tmp_path / "cut")
    monkeypatch.delenv("HIL_TEST_INTERRUPT_AT_STEP")
    (path,) = (tmp_path / "cut").glob("*.h5")
    with RunReader(path) as r:
        assert r.status == "abort" and r.n_rows("steps") == 5
    res = resume_run(path)  # reopens the recorded spec, re-executes the journal, then goes on live
    assert res.status == "success", res.message
    assert_same_data(whole.path, path)

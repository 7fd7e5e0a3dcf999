"""The public face: what a script needs is importable from ``hil``, cheaply; the Chip contract is explicit."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import hil
from hil import ChipInputError, FakeChip, Geometry, PulseKind


def test_every_public_name_resolves() -> None:
    for name in hil.__all__:
        assert getattr(hil, name) is not None, name
    assert hil.run_protocol.__module__ == "hil.runner" and hil.RunReader.__module__ == "hil.runs.reader"


def test_importing_hil_does_not_load_the_run_machinery() -> None:
    code = "import sys, hil; print(sorted(m for m in ('h5py', 'torch', 'hil.runner', 'emulator', 'drivers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_optional_members_of_the_contract_have_defaults() -> None:
    assert hil.Chip.seed is None and hil.Chip.resume_by_reexecution is False
    assert FakeChip().recorded_timing() is None and FakeChip.resume_by_reexecution is True
    with pytest.raises(ChipInputError, match="Chip cannot be opened from a chip spec"):
        hil.Chip.from_spec("")


def test_pulse_parameters_are_keyword_only_with_a_deprecated_positional_form() -> None:
    a, b = FakeChip(Geometry(n_cores=1, n_rows=4, n_cols=4), noise=0), FakeChip(Geometry(n_cores=1, n_rows=4, n_cols=4), noise=0)
    a.apply_pulses([0], [1], [2], [0], kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0)
    with pytest.warns(DeprecationWarning, match="pass kind=, amplitude_ua= and width_ns= by keyword"):
        b.apply_pulses([0], [1], [2], [0], PulseKind.PARTIAL, 300.0, 125.0)
    np.testing.assert_array_equal(a.conductances(), b.conductances())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ChipInputError, match="needs amplitude_ua, width_ns"):
            a.apply_pulses([0], [1], [2], [0], kind=PulseKind.SET)
        with pytest.raises(ChipInputError, match="by keyword"):
            a.apply_pulses([0], [1], [2], [0], PulseKind.SET, 100.0, 250.0, 1.0)


def test_the_fake_backend_opens_from_a_spec_like_every_backend() -> None:
    chip = hil.open_chip("fake:cores=3,rows=8,cols=4,noise=0", seed=5)
    assert isinstance(chip, FakeChip) and chip.geometry == Geometry(n_cores=3, n_rows=8, n_cols=4) and chip.seed == 5
    with pytest.raises(ChipInputError, match="bad fake-chip spec part 'bogus=1'"):
        hil.open_chip("fake:bogus=1")
    with pytest.raises(ChipInputError, match=r"unknown chip 'nochip'.*installed backends: emulator, fake, lab, replay"):
        hil.open_chip("nochip")
    with pytest.raises(ChipInputError, match="needs a run file"):
        hil.open_chip("replay:")


def test_docs_map_every_module_of_hil() -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    root = Path(hil.__file__).parent
    names = [p.name for p in root.rglob("*.py") if p.name != "__init__.py"]
    missing = [n for n in names if not re.search(rf"^\s+{re.escape(n)}\s", text, re.MULTILINE)]
    assert not missing, f"docs/extending.md does not mention {missing}"

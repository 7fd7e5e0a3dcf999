"""The ``attack`` protocol: bad input refused before the run, a recorded run (HIL included) replays exactly, plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import hil
import protocols.attacks.protocol as ap
from hil.testing import check_protocol

CHIP = "emulator:hermes,cores=4,rows=64,cols=64"
QUICK = {"samples": 30, "repeats": 2, "attacks": {"pgd": {"iterations": [1, 3], "magnitudes": [0.05, 0.15]}},
         "hil": {"refit_every": 2, "n_mvm": 200}}


@pytest.mark.parametrize("sets, word", [
    ({"attacks": {"pgd": {"iterations": [1], "magnitudes": [2.0]}}}, "eps"),
    ({"attacks": {"onepixel": {"iterations": [5], "magnitudes": [1]}}}, "image inputs"),
    ({"attacks": {"pgd": {"iterations": [0], "magnitudes": [0.1]}}}, "iterations"),
    ({"noise_study": {"drops": [0.7]}}, "drops"),
    ({"model": "digits-cnn", "attacks": {"square": {"iterations": [5], "magnitudes": [0.1]}}, "noise_study": {}}, "noise_study"),
])
def test_bad_input_is_refused_before_the_run(tmp_path: Path, sets: dict, word: str) -> None:
    with pytest.raises((hil.ConfigError, hil.ChipInputError, ValueError), match=word):
        hil.run_protocol("attack", chip=CHIP, config={**QUICK, **sets}, out=tmp_path, progress=False)
    assert not list(tmp_path.glob("*.h5"))


def test_attack_with_hil_replays_exactly(tmp_path: Path) -> None:
    study = {"sources": ["weight_recurrent", "output_nonrecurrent"], "drops": [0.05], "repeats": 2, "match_repeats": 2}
    res = check_protocol("attack", {**QUICK, "noise_study": study}, chip=CHIP, seed=2, out=tmp_path)
    from hil.runs import RunReader

    with RunReader(res.path) as r:
        a = r.stream("asr")
        modes = {m.decode() if isinstance(m, bytes) else str(m) for m in np.asarray(a["mode"])}
        assert {"same", "transfer", "hil"} <= modes
        assert {"asr", "clean_accuracy", "envelope", "chip_calls", "noise_study"} <= set(r.streams())
        assert set(r.summary["noise_study"]) == {"weight_recurrent/0.05", "output_nonrecurrent/0.05"}
        assert r.summary["chip_calls"] > 0
        assert r.summary["envelope_se"]["chip/hil/pgd"] >= 0  # repeats: 2, so the mean carries its standard error
    paths = ap.plots(res.path, tmp_path / "fig")
    assert all(p.stat().st_size > 0 for p in paths) and len(paths) == 3

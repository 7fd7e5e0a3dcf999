"""Small emulated chips for the protocol tests (seeded, CPU)."""

from __future__ import annotations

import numpy as np
import pytest

import hil

SMALL = hil.Geometry(n_cores=2, n_rows=32, n_cols=32)
MEDIUM = hil.Geometry(n_cores=2, n_rows=64, n_cols=64)


def make_chip(geometry: hil.Geometry = SMALL, seed: int = 3, overrides: dict | None = None) -> hil.Chip:
    from emulator import EmulatedChip

    return EmulatedChip("hermes", seed=seed, geometry=geometry, overrides=overrides)


def conductance_counts(chip) -> np.ndarray:
    """Ground truth G+ - G- of every cell in verify counts (emulator only; used to judge protocols)."""
    g = chip.true_conductances()
    return (g * chip.geometry.device_sign).sum(-1) * chip.preset.verify.counts_per_us


@pytest.fixture
def small_chip() -> hil.Chip:
    return make_chip()

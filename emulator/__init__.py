"""A faithful, fast software emulator of a 64-core phase-change-memory AIMC chip (HERMES kind)."""

from emulator.chip import EmulatedChip
from emulator.presets import PRESETS, EmulatorPreset, resolve_preset

__all__ = ["PRESETS", "EmulatedChip", "EmulatorPreset", "resolve_preset"]

"""Exceptions of the framework, and the small validators that raise them.

Every error names the bad value, the allowed range and what to do about it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


class HilError(Exception):
    """Base class of every error this package raises on purpose."""


class ChipInputError(HilError, ValueError):
    """A request to a chip was malformed (shape, dtype, range); nothing was applied."""


class SafetyLimitError(HilError, ValueError):
    """A request would exceed a hardware safety limit; it was refused before reaching hardware."""


class ChipCommunicationError(HilError, ConnectionError):
    """The chip (or its control board) could not be reached or answered with an error."""


class ReplayMismatchError(HilError):
    """A replayed call differs from the recorded journal."""


class RunFileError(HilError):
    """A file is not a readable run file (not HDF5, not ours, truncated, corrupted) or cannot be written."""


class LayoutVersionError(RunFileError):
    """The run file was written with a newer layout than this version of hil reads."""


class RunLogError(HilError, ValueError):
    """A protocol logged data that does not fit its stream (names, columns, dtypes, shapes)."""


class ConfigError(HilError, ValueError):
    """A protocol configuration (YAML file or --set item) is invalid."""


def check_range(name: str, value: Any, low: float, high: float, fix: str = "") -> None:
    """Raise :class:`ChipInputError` unless every element of ``value`` lies in ``[low, high]``.

    NaN is always out of range. The message names the first offending value.
    """
    arr = np.asarray(value)
    if arr.size == 0:
        return
    if arr.dtype.kind in "fc":
        bad = ~np.isfinite(arr) | (arr < low) | (arr > high)
    else:
        bad = (arr < low) | (arr > high)
    if np.any(bad):
        first = arr.reshape(-1)[int(np.flatnonzero(bad.reshape(-1))[0])].item()
        hint = f" {fix}" if fix else ""
        raise ChipInputError(f"{name}={first!r} is out of range; allowed [{low}, {high}].{hint}")


def check_index(name: str, value: Any, size: int) -> np.ndarray:
    """Return ``value`` as an int64 array after checking it indexes ``range(size)``."""
    arr = np.asarray(value)
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and arr.size and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        elif arr.size:
            raise ChipInputError(f"{name} must be integers, got dtype {arr.dtype}; pass an int array.")
        else:
            arr = arr.astype(np.int64)
    check_range(name, arr, 0, size - 1, fix=f"Use an index from 0 to {size - 1}.")
    return arr.astype(np.int64, copy=False)

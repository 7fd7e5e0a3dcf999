"""Exceptions of the framework, and the small validators that raise them.

Every error names the bad value, the allowed range and what to do about it.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def did_you_mean(word: str, choices: Any) -> str:
    """`` (did you mean 'x'?)`` for the choices closest to a mistyped ``word``, or ``""``."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=2, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


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
    """Return ``value`` as an int64 array after checking it indexes ``range(size)``.

    Only integer values are accepted: booleans and non-integral floats are refused (nothing is
    truncated); integral floats such as ``3.0`` are taken as the integers they are.
    """
    arr = as_integers(name, value)
    check_range(name, arr, 0, size - 1, fix=f"Use an index from 0 to {size - 1}.")
    return arr


def as_integers(name: str, value: Any) -> np.ndarray:
    """``value`` as an int64 array; refuses booleans, strings and floats that are not whole numbers."""
    arr = np.asarray(value)
    if arr.dtype.kind == "b" or isinstance(value, bool):
        raise ChipInputError(f"{name} is a boolean ({value!r}); pass integers (True is not 1 here).")
    if arr.dtype.kind in "iu":
        if arr.dtype.kind == "u" and arr.size and arr.dtype.itemsize == 8 and int(arr.max()) > np.iinfo(np.int64).max:
            raise ChipInputError(f"{name}={int(arr.max())} is out of range for an index.")
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr)):
            raise ChipInputError(f"{name} contains {arr[~np.isfinite(arr)].reshape(-1)[0].item()!r}; pass finite integers.")
        if arr.size and not np.all(arr == np.round(arr)):
            bad = arr[arr != np.round(arr)].reshape(-1)[0].item()
            raise ChipInputError(f"{name}={bad!r} is not a whole number; pass integers (values are never truncated).")
        if arr.size and np.any(np.abs(arr) > 2**53):
            raise ChipInputError(f"{name} holds values beyond 2**53; pass int64 integers.")
        return arr.astype(np.int64)
    if arr.size == 0:
        return arr.astype(np.int64)
    raise ChipInputError(f"{name} must be integers, got dtype {arr.dtype}; pass an int array.")


def as_number(name: str, value: Any) -> float:
    """A real number (int or float, numpy or Python); refuses booleans, strings and arrays."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ChipInputError(f"{name}={value!r} must be a number ({type(value).__name__} given).")
    return float(value)

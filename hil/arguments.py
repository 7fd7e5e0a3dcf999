"""Argument normalisation for :class:`hil.Chip`: every public chip call's arguments, checked and made canonical.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Each function takes the chip's :class:`~hil.chip.Geometry` and the caller's values (numpy arrays,
lists, scalars or torch tensors) and returns the canonical arrays a backend's ``_`` method gets
(flat int64 addresses, uint8 pulse kinds, float64 currents and widths, FP16 LDPU registers), or
raises :class:`hil.ChipInputError` / :class:`hil.SafetyLimitError` naming the value, the allowed
range and the fix. Nothing here touches a chip, so a refused call changes no state.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from hil.errors import ChipInputError, SafetyLimitError, as_integers, as_number, check_index, check_range

if TYPE_CHECKING:
    from hil.chip import Geometry, LdpuRegisters, PulseBatch

#: Signed PWM input range: sign + 7-bit magnitude (1 ns per LSB, 128 ns window).
INPUT_MIN, INPUT_MAX = -127, 127
#: Largest write-head current any backend accepts (uA); HERMES write heads are limited to 800 uA.
WRITE_HEAD_LIMIT_UA = 800.0
#: Longest single pulse any backend accepts (ns); longer requests are almost surely a unit error.
MAX_PULSE_WIDTH_NS = 100_000.0
#: Longest sleep in one call (s): about 300 years of chip time.
MAX_SLEEP_S = 1e10
#: Most addressed elements (pulses or verify reads) in one call: four times a whole 64-core chip.
MAX_ELEMENTS = 2**26
#: Most values (inputs or outputs, n_cores x batch x rows or cols) in one MVM call; split larger batches.
MAX_MVM_VALUES = 2**28
READ_MODES: tuple[str, ...] = ("4phase", "1phase")
MVM_OUTPUTS: tuple[str, ...] = ("adc", "ldpu")


def to_numpy(x: Any) -> np.ndarray:
    """Numpy view of numpy arrays, lists, scalars or torch tensors (torch is not imported here)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def is_broadcast(x: Any) -> bool:
    """True when ``x`` (n_sel, B, rows) is one (B, rows) block repeated over its first axis (stride 0)."""
    if hasattr(x, "stride") and callable(x.stride):
        return x.shape[0] > 1 and x.stride(0) == 0
    return isinstance(x, np.ndarray) and x.shape[0] > 1 and x.strides[0] == 0


def as_1d(name: str, value: Any, n: int, dtype: Any) -> np.ndarray:
    """``value`` as an (n,) array of ``dtype``; a scalar is broadcast."""
    arr = to_numpy(value)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ChipInputError(f"{name} has shape {np.shape(value)}; expected a scalar or shape ({n},) like the addresses.")
    if np.dtype(dtype).kind == "f" and arr.dtype.kind not in "fiu":
        raise ChipInputError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return arr.astype(dtype, copy=False)


def seconds(value: Any) -> float:
    """A sleep time in seconds, checked to be a number in [0, MAX_SLEEP_S]."""
    s = as_number("seconds", value)
    check_range("seconds", s, 0.0, MAX_SLEEP_S, fix="Sleep a non-negative, finite time in seconds.")
    return s


def _count(name: str, n: int) -> None:
    if n > MAX_ELEMENTS:
        raise ChipInputError(f"{name} addresses {n} elements in one call; allowed up to {MAX_ELEMENTS}. Split the call.")


def pulses(g: Geometry, core: Any, row: Any, col: Any, device: Any, kind: Any, amplitude_ua: Any, width_ns: Any) -> PulseBatch:
    """A checked :class:`~hil.chip.PulseBatch`; raises before anything is applied."""
    from hil.chip import PulseBatch, PulseKind

    core_raw = np.atleast_1d(to_numpy(core))
    if core_raw.ndim != 1:
        raise ChipInputError(f"core has shape {core_raw.shape}; pass flat (N,) address arrays.")
    _count("apply_pulses", core_raw.shape[0])
    core_a = check_index("core", core_raw, g.n_cores)
    n = core_a.shape[0]
    addr = {"core": core_a}
    for name, value, size in (("row", row, g.n_rows), ("col", col, g.n_cols), ("device", device, g.n_devices)):
        raw = to_numpy(value)
        if raw.ndim != 0 and (raw.ndim != 1 or raw.shape[0] != n):
            raise ChipInputError(f"{name} has shape {raw.shape}; expected ({n},) to match core (one address per pulse).")
        idx = check_index(name, raw, size)
        addr[name] = np.full(n, idx) if idx.ndim == 0 else idx
    kind_raw = to_numpy(kind)
    if kind_raw.ndim != 0 and kind_raw.shape != (n,):
        raise ChipInputError(f"kind has shape {kind_raw.shape}; expected a scalar or shape ({n},) like the addresses.")
    kind_a = np.broadcast_to(as_integers("kind", kind_raw), (n,))
    check_range("kind", kind_a, 0, max(PulseKind), fix="Use PulseKind.RESET, SET or PARTIAL.")
    amp = as_1d("amplitude_ua", amplitude_ua, n, np.float64)
    if np.any(np.isfinite(amp) & (amp > WRITE_HEAD_LIMIT_UA)):
        bad = float(amp[amp > WRITE_HEAD_LIMIT_UA][0])
        raise SafetyLimitError(
            f"amplitude_ua={bad} exceeds the write-head limit of {WRITE_HEAD_LIMIT_UA} uA; "
            f"allowed (0, {WRITE_HEAD_LIMIT_UA}]. Lower the pulse current."
        )
    check_range("amplitude_ua", amp, 1e-3, WRITE_HEAD_LIMIT_UA, fix="Give a positive current in uA.")
    width = as_1d("width_ns", width_ns, n, np.float64)
    check_range("width_ns", width, 1e-3, MAX_PULSE_WIDTH_NS, fix="Give a positive pulse width in ns (not seconds).")
    return PulseBatch(
        core=addr["core"], row=addr["row"], col=addr["col"], device=addr["device"],
        kind=kind_a.astype(np.uint8), amplitude_ua=amp, width_ns=width,
    )


def cell_addresses(g: Geometry, core: Any, row: Any, col: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (N,) core, row and col arrays of unit cells; ``row``/``col`` may be scalars."""
    core_a = np.atleast_1d(to_numpy(core))
    row_a, col_a = to_numpy(row), to_numpy(col)
    n = core_a.shape[0] if core_a.ndim == 1 else -1
    _count("the read", max(n, 0))
    if n < 0 or np.shape(row_a) not in ((), (n,)) or np.shape(col_a) not in ((), (n,)):
        raise ChipInputError(
            f"address shapes core {core_a.shape}, row {np.shape(row_a)}, col {np.shape(col_a)} differ; "
            "pass flat (N,) arrays of equal length."
        )
    return (
        check_index("core", core_a, g.n_cores),
        check_index("row", np.broadcast_to(row_a, (n,)), g.n_rows),
        check_index("col", np.broadcast_to(col_a, (n,)), g.n_cols),
    )


def device_addresses(g: Geometry, core: Any, row: Any, col: Any, device: Any) -> tuple[np.ndarray, ...]:
    """Flat (N,) core, row, col and device arrays of single devices."""
    c, r, k = cell_addresses(g, core, row, col)
    d_raw = to_numpy(device)
    if np.shape(d_raw) not in ((), c.shape):
        raise ChipInputError(f"device has shape {np.shape(d_raw)}; expected () or {c.shape}.")
    return c, r, k, check_index("device", np.broadcast_to(d_raw, c.shape), g.n_devices)


def core_list(g: Geometry, cores: Any, name: str = "cores") -> np.ndarray:
    """A non-empty 1-D int64 array of distinct core indices; ``None`` means every core."""
    if cores is None:  # every core: valid and distinct by construction (the common, hot case)
        return np.arange(g.n_cores)
    cores_a = np.atleast_1d(to_numpy(cores))
    if cores_a.ndim != 1 or cores_a.size == 0:
        raise ChipInputError(f"{name} has shape {cores_a.shape}; pass a non-empty 1-D list of core indices.")
    cores_a = check_index(name, cores_a, g.n_cores)
    if np.unique(cores_a).size != cores_a.size:
        raise ChipInputError(f"{name}={cores_a.tolist()} repeats a core; list each core once.")
    return cores_a


def mvm(g: Geometry, x: Any, cores: Any, output: str, mode: str,
        max_values: int = MAX_MVM_VALUES) -> tuple[Any, np.ndarray]:
    """Check an MVM request; returns ``(x, cores)`` with ``x`` of shape (n_sel, B, n_rows).

    ``x`` keeps its array type (numpy or torch) so the emulator can avoid copies; shared (B, rows)
    inputs become a stride-0 broadcast over the selected cores. ``max_values``: the most values
    (cores x batch x max(rows, cols)) one call may move (a backend on a large GPU allows more).
    """
    if output not in MVM_OUTPUTS:
        raise ChipInputError(f"output={output!r} is not one of {MVM_OUTPUTS}.")
    if mode not in READ_MODES:
        raise ChipInputError(f"mode={mode!r} is not one of {READ_MODES}.")
    cores_a = core_list(g, cores)
    dt = getattr(x, "dtype", None)
    if dt is None:
        dt = np.asarray(x).dtype
    if isinstance(dt, np.dtype):  # numpy: by kind (str() of a dtype is slow on this hot path)
        signed, is_int8 = dt.kind == "i", dt.kind == "i" and dt.itemsize == 1
    else:  # torch and other array types
        name = str(dt)
        signed = any(t in name for t in ("int8", "int16", "int32", "int64")) and "uint" not in name
        is_int8 = signed and "int8" in name
    if not signed:
        dtype = str(dt)
        raise ChipInputError(
            f"x has dtype {dtype}; MVM inputs are signed 8-bit PWM codes. "
            f"Quantise to integers in [{INPUT_MIN}, {INPUT_MAX}] (e.g. np.int8)."
        )
    shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
    batch = shape[-2] if len(shape) >= 2 else 0
    values = cores_a.size * batch * max(g.n_rows, g.n_cols)
    if values > max_values:
        raise ChipInputError(
            f"an MVM of batch {batch} on {cores_a.size} cores moves {values} values; allowed up to {max_values}. "
            "Split the batch into smaller calls."
        )
    if len(shape) == 2:
        if shape[1] != g.n_rows:
            raise ChipInputError(f"x has shape {shape}; expected (B, {g.n_rows}) or (n_cores, B, {g.n_rows}).")
        if hasattr(x, "expand"):
            x = x[None].expand(cores_a.size, *shape)
        else:
            x = np.broadcast_to(np.asarray(x)[None], (cores_a.size, *shape))
    elif len(shape) != 3 or shape[0] != cores_a.size or shape[2] != g.n_rows:
        raise ChipInputError(
            f"x has shape {shape}; expected (B, {g.n_rows}) or ({cores_a.size}, B, {g.n_rows}) "
            f"for {cores_a.size} selected cores."
        )
    if not is_int8:
        lo, hi = (int(x.min()), int(x.max())) if math.prod(shape) else (0, 0)
        if lo < INPUT_MIN or hi > INPUT_MAX:
            bad = lo if lo < INPUT_MIN else hi
            raise ChipInputError(f"x contains {bad}; allowed [{INPUT_MIN}, {INPUT_MAX}]. Clip or rescale.")
    else:
        lo = int(x.min()) if math.prod(shape) else 0
        if lo < INPUT_MIN:
            raise ChipInputError(f"x contains {lo}; allowed [{INPUT_MIN}, {INPUT_MAX}] (-128 has no PWM code).")
    return x, cores_a


def ldpu(g: Geometry, cores: Any, scale: Any, offset: Any, relu: Any) -> tuple[np.ndarray, LdpuRegisters]:
    """Checked LDPU registers for ``cores``: scale/offset broadcast to (n_sel, n_cols) FP16, relu (n_sel,)."""
    from hil.chip import LdpuRegisters

    cores_a = core_list(g, cores)
    shape = (cores_a.size, g.n_cols)
    regs = {}
    for name, value in (("scale", scale), ("offset", offset)):
        arr = np.asarray(to_numpy(value), dtype=np.float64)
        try:
            arr = np.broadcast_to(arr, shape)
        except ValueError:
            raise ChipInputError(f"{name} has shape {arr.shape}; expected a scalar, ({g.n_cols},) or {shape}.") from None
        check_range(name, arr, -65504.0, 65504.0, fix="LDPU registers are FP16.")
        regs[name] = arr.astype(np.float16)
    relu_a = np.asarray(to_numpy(relu))
    if relu_a.dtype.kind not in "bui" or relu_a.shape not in ((), (cores_a.size,)):
        raise ChipInputError(f"relu must be a bool or ({cores_a.size},) bools, got {relu_a!r}.")
    relu_b = np.broadcast_to(relu_a, (cores_a.size,)).astype(bool)
    return cores_a, LdpuRegisters(regs["scale"], regs["offset"], relu_b)


def ldpu_cores(g: Geometry, cores: Any) -> np.ndarray:
    """Cores to read LDPU registers of (``None``: all)."""
    return np.arange(g.n_cores) if cores is None else check_index("cores", np.atleast_1d(to_numpy(cores)), g.n_cores)

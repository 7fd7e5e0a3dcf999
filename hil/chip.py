"""The one contract: an abstract analog in-memory computing (AIMC) chip.

The interface speaks the chip's own language (HERMES-like PCM chip):

* ``Geometry``: cores x rows x columns unit cells x devices per cell. Rows are the crossbar
  inputs (source lines driven by PWM), columns the outputs (bit lines, one ADC and one LDPU
  channel each). Device index 0 and 1 are the two devices of the positive weight polarity
  (G+ = g0 + g1), 2 and 3 the negative polarity (G- = g2 + g3).
* Programming pulses on addressed devices (kind RESET/SET/PARTIAL, amplitude in uA, width in ns).
* Verify reads in ADC counts, per device or per unit cell.
* MVMs on one or many cores at once: signed 8-bit inputs (int8 in [-127, 127], 1 ns PWM per LSB),
  returning raw ADC counts (ADC_P - ADC_N, int32) or LDPU outputs (int8).
* Per-column LDPU affine registers (FP16 scale and offset, optional ReLU).
* A clock: ``now()`` in seconds of chip time, ``sleep(seconds)``.

Concrete backends (the emulator, the lab board driver, the replay of a recorded run) implement the
underscore methods. The public methods here validate every argument first, so each backend refuses
bad input in the same words and nothing is half-applied.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.errors import ChipInputError, SafetyLimitError, check_index, check_range

ReadMode = Literal["4phase", "1phase"]
MvmOutput = Literal["adc", "ldpu"]
READ_MODES: tuple[str, ...] = ("4phase", "1phase")
MVM_OUTPUTS: tuple[str, ...] = ("adc", "ldpu")

#: Signed PWM input range: sign + 7-bit magnitude (1 ns per LSB, 128 ns window).
INPUT_MIN, INPUT_MAX = -127, 127
#: Largest write-head current any backend accepts (uA); HERMES write heads are limited to 800 uA.
WRITE_HEAD_LIMIT_UA = 800.0
#: Longest single pulse any backend accepts (ns); longer requests are almost surely a unit error.
MAX_PULSE_WIDTH_NS = 100_000.0


class PulseKind(IntEnum):
    """Programming pulse shapes of the chip's write heads."""

    RESET = 0  #: square melt-quench pulse (about 700 uA, 125 ns): amorphous, low conductance
    SET = 1  #: crystallising pulse (about 125 uA, 250 ns plus trailing edge): high conductance
    PARTIAL = 2  #: square pulse of 125-800 uA, the iterative-programming pulse


class Geometry(BaseModel):
    """Physical layout of a chip."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_cores: int = Field(64, ge=1, le=1024, description="cores on the chip")
    n_rows: int = Field(256, ge=1, le=4096, description="crossbar inputs (PWM source lines) per core")
    n_cols: int = Field(256, ge=1, le=4096, description="crossbar outputs (bit lines, ADCs) per core")
    n_devices: int = Field(4, ge=2, le=4, description="PCM devices per unit cell (half per polarity)")

    @property
    def device_sign(self) -> np.ndarray:
        """+1 for devices of the positive polarity, -1 for the negative one (int8, shape (n_devices,))."""
        half = self.n_devices // 2
        return np.array([1] * half + [-1] * (self.n_devices - half), dtype=np.int8)

    @property
    def n_unit_cells(self) -> int:
        return self.n_cores * self.n_rows * self.n_cols


class ChipInfo(BaseModel):
    """Identity of a chip backend, stored in every run file."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field(description="'emulator', 'lab', 'replay', ...")
    name: str = Field(description="human-readable chip name")
    serial: str = Field("", description="chip or board serial number, emulator seed, or source file")
    details: dict[str, Any] = Field(default_factory=dict, description="backend-specific JSON-able facts")


@dataclass(frozen=True)
class PulseBatch:
    """A validated batch of N programming pulses, one per addressed device.

    All arrays have shape (N,): ``core``, ``row``, ``col``, ``device`` (int64), ``kind`` (uint8,
    :class:`PulseKind`), ``amplitude_ua`` (float64, uA) and ``width_ns`` (float64, ns). Pulses are
    applied in order; two pulses on the same device in one batch act one after the other.
    """

    core: np.ndarray
    row: np.ndarray
    col: np.ndarray
    device: np.ndarray
    kind: np.ndarray
    amplitude_ua: np.ndarray
    width_ns: np.ndarray

    def __len__(self) -> int:
        return int(self.core.shape[0])


@dataclass(frozen=True)
class LdpuRegisters:
    """Per-column LDPU affine registers of a set of cores (FP16 values, stored as float16 arrays).

    ``y = int8(round(relu?(scale * adc_counts + offset)))``, ``scale`` and ``offset`` of shape
    (n_cores_selected, n_cols); ``relu`` of shape (n_cores_selected,) (bool).
    """

    scale: np.ndarray
    offset: np.ndarray
    relu: np.ndarray


def _as_1d(name: str, value: Any, n: int, dtype: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = np.full(n, arr)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ChipInputError(
            f"{name} has shape {np.shape(value)}; expected a scalar or shape ({n},) like the addresses."
        )
    if np.dtype(dtype).kind == "f" and arr.dtype.kind not in "fiu":
        raise ChipInputError(f"{name} must be numeric, got dtype {arr.dtype}.")
    return arr.astype(dtype, copy=False)


def _to_numpy(x: Any) -> np.ndarray:
    """Convert numpy arrays, lists or torch tensors to numpy without importing torch here."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Chip(ABC):
    """Abstract AIMC chip. See the module docstring for the conventions."""

    #: Backends set this in ``__init__``.
    geometry: Geometry

    # ------------------------------------------------------------------ identity and clock
    @property
    @abstractmethod
    def info(self) -> ChipInfo:
        """Identity of this chip (backend, name, serial, details)."""

    @abstractmethod
    def now(self) -> float:
        """Chip time in seconds (virtual on the emulator, wall-clock based on hardware)."""

    def sleep(self, seconds: float) -> None:
        """Let ``seconds`` of chip time pass (on the emulator this costs no wall time)."""
        check_range("seconds", seconds, 0.0, 1e10, fix="Sleep a non-negative, finite time in seconds.")
        self._sleep(float(seconds))

    @abstractmethod
    def _sleep(self, seconds: float) -> None: ...

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the backend's resources. Safe to call twice."""

    def __enter__(self) -> Chip:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ programming
    def validate_pulses(
        self,
        core: Any,
        row: Any,
        col: Any,
        device: Any,
        kind: Any,
        amplitude_ua: Any,
        width_ns: Any,
    ) -> PulseBatch:
        """Check and normalise a pulse request; raise before anything is applied."""
        g = self.geometry
        core_a = check_index("core", np.atleast_1d(_to_numpy(core)), g.n_cores)
        if core_a.ndim != 1:
            raise ChipInputError(f"core has shape {core_a.shape}; pass flat (N,) address arrays.")
        n = core_a.shape[0]
        addr = {"core": core_a}
        for name, value, size in (("row", row, g.n_rows), ("col", col, g.n_cols), ("device", device, g.n_devices)):
            arr = _as_1d(name, _to_numpy(value), n, np.int64) if np.ndim(_to_numpy(value)) == 0 else None
            if arr is None:
                raw = _to_numpy(value)
                if raw.ndim != 1 or raw.shape[0] != n:
                    raise ChipInputError(
                        f"{name} has shape {raw.shape}; expected ({n},) to match core (one address per pulse)."
                    )
                arr = raw
            addr[name] = check_index(name, arr, size)
        kind_a = _as_1d("kind", _to_numpy(kind), n, np.int64)
        check_range("kind", kind_a, 0, max(PulseKind), fix="Use PulseKind.RESET, SET or PARTIAL.")
        amp = _as_1d("amplitude_ua", _to_numpy(amplitude_ua), n, np.float64)
        if np.any(np.isfinite(amp) & (amp > WRITE_HEAD_LIMIT_UA)):
            bad = float(amp[amp > WRITE_HEAD_LIMIT_UA][0])
            raise SafetyLimitError(
                f"amplitude_ua={bad} exceeds the write-head limit of {WRITE_HEAD_LIMIT_UA} uA; "
                f"allowed (0, {WRITE_HEAD_LIMIT_UA}]. Lower the pulse current."
            )
        check_range("amplitude_ua", amp, 1e-3, WRITE_HEAD_LIMIT_UA, fix="Give a positive current in uA.")
        width = _as_1d("width_ns", _to_numpy(width_ns), n, np.float64)
        check_range(
            "width_ns", width, 1e-3, MAX_PULSE_WIDTH_NS, fix="Give a positive pulse width in ns (not seconds)."
        )
        return PulseBatch(
            core=addr["core"],
            row=addr["row"],
            col=addr["col"],
            device=addr["device"],
            kind=kind_a.astype(np.uint8),
            amplitude_ua=amp,
            width_ns=width,
        )

    def apply_pulses(
        self,
        core: Any,
        row: Any,
        col: Any,
        device: Any,
        kind: PulseKind | int | Any,
        amplitude_ua: float | Any,
        width_ns: float | Any,
    ) -> None:
        """Apply one programming pulse to each addressed device.

        ``core``, ``row``, ``col``, ``device``: int arrays of shape (N,) (scalars broadcast for all but
        ``core``); ``kind``, ``amplitude_ua`` (uA, at most 800), ``width_ns`` (ns): scalars or (N,).
        The chip clock advances by the time the write heads need (32 per core, cores in parallel).
        """
        batch = self.validate_pulses(core, row, col, device, kind, amplitude_ua, width_ns)
        if len(batch):
            self._apply_pulses(batch)

    @abstractmethod
    def _apply_pulses(self, batch: PulseBatch) -> None: ...

    # ------------------------------------------------------------------ verify reads
    def _addresses(self, core: Any, row: Any, col: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        g = self.geometry
        core_a = np.atleast_1d(_to_numpy(core))
        row_a, col_a = _to_numpy(row), _to_numpy(col)
        n = core_a.shape[0] if core_a.ndim == 1 else -1
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

    def read_devices(self, core: Any, row: Any, col: Any, device: Any) -> np.ndarray:
        """Verify-read single devices; return their conductances in ADC counts (int32, shape (N,))."""
        c, r, k = self._addresses(core, row, col)
        d_raw = _to_numpy(device)
        if np.shape(d_raw) not in ((), c.shape):
            raise ChipInputError(f"device has shape {np.shape(d_raw)}; expected () or {c.shape}.")
        d = check_index("device", np.broadcast_to(d_raw, c.shape), self.geometry.n_devices)
        if c.size == 0:
            return np.zeros(0, dtype=np.int32)
        return self._read_devices(c, r, k, d)

    @abstractmethod
    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray: ...

    def read_cells(self, core: Any, row: Any, col: Any) -> np.ndarray:
        """Verify-read unit cells; return G+ - G- in ADC counts (int32, shape (N,), signed)."""
        c, r, k = self._addresses(core, row, col)
        if c.size == 0:
            return np.zeros(0, dtype=np.int32)
        return self._read_cells(c, r, k)

    @abstractmethod
    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray: ...

    # ------------------------------------------------------------------ MVM
    def validate_mvm(self, x: Any, cores: Any, output: str, mode: str) -> tuple[Any, np.ndarray]:
        """Check an MVM request. Returns ``(x, cores)`` with ``x`` of shape (n_sel, B, n_rows).

        ``x`` keeps its array type (numpy or torch) so the emulator can avoid copies.
        """
        g = self.geometry
        if output not in MVM_OUTPUTS:
            raise ChipInputError(f"output={output!r} is not one of {MVM_OUTPUTS}.")
        if mode not in READ_MODES:
            raise ChipInputError(f"mode={mode!r} is not one of {READ_MODES}.")
        cores_a = np.arange(g.n_cores) if cores is None else np.atleast_1d(_to_numpy(cores))
        if cores_a.ndim != 1 or cores_a.size == 0:
            raise ChipInputError(f"cores has shape {cores_a.shape}; pass a non-empty 1-D list of core indices.")
        cores_a = check_index("cores", cores_a, g.n_cores)
        if np.unique(cores_a).size != cores_a.size:
            raise ChipInputError(f"cores={cores_a.tolist()} repeats a core; list each core once.")
        dtype = str(getattr(x, "dtype", np.asarray(x).dtype))
        if not any(t in dtype for t in ("int8", "int16", "int32", "int64")) or "uint" in dtype:
            raise ChipInputError(
                f"x has dtype {dtype}; MVM inputs are signed 8-bit PWM codes. "
                f"Quantise to integers in [{INPUT_MIN}, {INPUT_MAX}] (e.g. np.int8)."
            )
        shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
        if len(shape) == 2:
            if shape[1] != g.n_rows:
                raise ChipInputError(f"x has shape {shape}; expected (B, {g.n_rows}) or (n_cores, B, {g.n_rows}).")
            x = x[None].expand(cores_a.size, *shape) if hasattr(x, "expand") else np.broadcast_to(
                np.asarray(x)[None], (cores_a.size, *shape)
            )
        elif len(shape) != 3 or shape[0] != cores_a.size or shape[2] != g.n_rows:
            raise ChipInputError(
                f"x has shape {shape}; expected (B, {g.n_rows}) or ({cores_a.size}, B, {g.n_rows}) "
                f"for {cores_a.size} selected cores."
            )
        if "int8" not in dtype:
            lo, hi = (int(x.min()), int(x.max())) if np.prod(shape) else (0, 0)
            if lo < INPUT_MIN or hi > INPUT_MAX:
                bad = lo if lo < INPUT_MIN else hi
                raise ChipInputError(f"x contains {bad}; allowed [{INPUT_MIN}, {INPUT_MAX}]. Clip or rescale.")
        else:
            lo = int(x.min()) if np.prod(shape) else 0
            if lo < INPUT_MIN:
                raise ChipInputError(f"x contains {lo}; allowed [{INPUT_MIN}, {INPUT_MAX}] (-128 has no PWM code).")
        return x, cores_a

    def mvm(self, x: Any, cores: Any = None, *, output: MvmOutput = "adc", mode: ReadMode = "4phase") -> Any:
        """Run matrix-vector multiplications on one or many cores at once.

        ``x``: signed integers in [-127, 127], shape (B, n_rows) (same inputs to every selected core)
        or (n_sel, B, n_rows). ``cores``: core indices (default: all). ``output='adc'`` returns raw
        ADC counts ADC_P - ADC_N (int32), ``'ldpu'`` the LDPU INT8 outputs; shape (n_sel, B, n_cols).
        ``mode``: '4phase' (four 128 ns windows, all devices read at one polarity) or '1phase'.
        Numpy in gives numpy out; a backend may return a torch tensor for torch input.
        """
        x, cores_a = self.validate_mvm(x, cores, output, mode)
        return self._mvm(x, cores_a, output, mode)

    @abstractmethod
    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any: ...

    # ------------------------------------------------------------------ LDPU
    def set_ldpu(self, cores: Any, scale: Any, offset: Any, relu: Any = False) -> None:
        """Write per-column LDPU affine registers (FP16) of ``cores``.

        ``scale``/``offset``: scalars, (n_cols,) or (n_sel, n_cols); ``relu``: bool or (n_sel,).
        Values are rounded to FP16; magnitudes above 65504 are refused.
        """
        g = self.geometry
        cores_a = check_index("cores", np.atleast_1d(_to_numpy(cores)), g.n_cores)
        shape = (cores_a.size, g.n_cols)
        regs = {}
        for name, value in (("scale", scale), ("offset", offset)):
            arr = np.asarray(_to_numpy(value), dtype=np.float64)
            try:
                arr = np.broadcast_to(arr, shape)
            except ValueError:
                raise ChipInputError(f"{name} has shape {arr.shape}; expected a scalar, ({g.n_cols},) or {shape}.") from None
            check_range(name, arr, -65504.0, 65504.0, fix="LDPU registers are FP16.")
            regs[name] = arr.astype(np.float16)
        relu_a = np.asarray(_to_numpy(relu))
        if relu_a.dtype.kind not in "bui" or relu_a.shape not in ((), (cores_a.size,)):
            raise ChipInputError(f"relu must be a bool or ({cores_a.size},) bools, got {relu_a!r}.")
        relu_b = np.broadcast_to(relu_a, (cores_a.size,)).astype(bool)
        self._set_ldpu(cores_a, LdpuRegisters(regs["scale"], regs["offset"], relu_b))

    @abstractmethod
    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None: ...

    def get_ldpu(self, cores: Any = None) -> LdpuRegisters:
        """Read back the LDPU registers of ``cores`` (default all)."""
        g = self.geometry
        cores_a = np.arange(g.n_cores) if cores is None else check_index("cores", np.atleast_1d(_to_numpy(cores)), g.n_cores)
        return self._get_ldpu(cores_a)

    @abstractmethod
    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters: ...


def grid(cores: Any, rows: Any, cols: Any, devices: Any = None) -> tuple[np.ndarray, ...]:
    """Flattened address arrays of the Cartesian product of cores x rows x cols (x devices).

    Handy for addressing whole cores: ``chip.read_cells(*grid([0], range(256), range(256)))``.
    """
    axes = [np.atleast_1d(np.asarray(a, dtype=np.int64)) for a in (cores, rows, cols)]
    if devices is not None:
        axes.append(np.atleast_1d(np.asarray(devices, dtype=np.int64)))
    mesh = np.meshgrid(*axes, indexing="ij")
    return tuple(m.reshape(-1) for m in mesh)

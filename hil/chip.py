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

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil import arguments as args
from hil.arguments import (  # noqa: F401 - part of this module's public names
    INPUT_MAX,
    INPUT_MIN,
    MAX_PULSE_WIDTH_NS,
    MVM_OUTPUTS,
    READ_MODES,
    WRITE_HEAD_LIMIT_UA,
)
from hil.errors import ChipInputError

ReadMode = Literal["4phase", "1phase"]
MvmOutput = Literal["adc", "ldpu"]


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


class RecordedTiming(NamedTuple):
    """Chip clock and wall times of a call served from a recording (see :meth:`Chip.recorded_timing`)."""

    t_chip: float  #: chip clock after the call (s)
    t_wall: float  #: wall clock at the call's start (s, unix time)
    dt_wall: float  #: wall time the call took (s)


class Chip(ABC):
    """Abstract AIMC chip. See the module docstring for the conventions.

    **Required of a backend**: set :attr:`geometry` in ``__init__``; implement :attr:`info`,
    :meth:`now` and the underscore methods ``_sleep``, ``_apply_pulses``, ``_read_devices``,
    ``_read_cells``, ``_mvm``, ``_set_ldpu`` and ``_get_ldpu``, which receive arguments already
    checked and normalised by the public methods (see :mod:`hil.arguments`).

    **Optional, with defaults here**: :meth:`from_spec` (so ``--chip NAME:SPEC`` can open it),
    :attr:`seed`, :attr:`resume_by_reexecution`, :meth:`begin_call`, :meth:`recorded_timing` and
    :meth:`close`.
    """

    #: Backends set this in ``__init__``.
    geometry: Geometry
    #: The seed the chip was built with (noise draws), or None for a chip that has none (hardware).
    seed: int | None = None
    #: True when the chip's whole state lives in this process (the emulator): ``hil resume`` then
    #: rebuilds it by re-executing the journal. False (hardware): recorded calls are answered from
    #: the journal and only later calls reach the chip.
    resume_by_reexecution: ClassVar[bool] = False

    @classmethod
    def from_spec(cls, spec: str, *, seed: int | None = None) -> Chip:
        """Build the chip from the part of a chip spec after ``NAME:`` (``--chip NAME:SPEC``)."""
        raise ChipInputError(f"{cls.__name__} cannot be opened from a chip spec; pass a chip object instead.")

    @classmethod
    def resume_spec(cls, spec: str, info: dict[str, Any]) -> str:
        """The spec (after ``NAME:``) that rebuilds the chip a run recorded, given its ``ChipInfo`` dict.

        ``hil resume`` re-executes the journal on a chip opened from this spec. A backend whose
        construction makes machine-dependent choices (the emulator's matmul dtype, measured per
        machine) pins the recorded ones here, so a resume on another machine or after the choice
        changed computes what the run did. The default returns ``spec`` unchanged.
        """
        return spec

    def begin_call(self, key: str) -> None:  # noqa: B027 - optional hook
        """The next backend call is the call ``key`` (``"<run_id>:<journal index>"``) of a run.

        The run machinery says this before every journaled call. A backend whose requests can be
        executed at most once (the lab board: request ids with a reply cache) derives the request id
        from ``key``, so a call repeated after a crash or a resume is answered from the board's cache
        instead of being executed twice. Others ignore it.
        """

    def recorded_timing(self) -> RecordedTiming | None:
        """Timing of the call just served from a recording (a replay), or None for a live call.

        A :class:`hil.journal.RecordingChip` around a replay journals these recorded times, so a
        replayed run file carries the original chip clock and wall times.
        """
        return None

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
        self._sleep(args.seconds(seconds))

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
        self, core: Any, row: Any, col: Any, device: Any, *, kind: Any, amplitude_ua: Any, width_ns: Any
    ) -> PulseBatch:
        """Check and normalise a pulse request; raise before anything is applied."""
        return args.pulses(self.geometry, core, row, col, device, kind, amplitude_ua, width_ns)

    def apply_pulses(
        self,
        core: Any,
        row: Any,
        col: Any,
        device: Any,
        *positional: Any,
        kind: PulseKind | int | Any = None,
        amplitude_ua: float | Any = None,
        width_ns: float | Any = None,
    ) -> None:
        """Apply one programming pulse to each addressed device.

        ``core``, ``row``, ``col``, ``device``: int arrays of shape (N,) (scalars broadcast for all but
        ``core``); keyword-only ``kind`` (:class:`PulseKind`), ``amplitude_ua`` (uA, at most 800) and
        ``width_ns`` (ns): scalars or (N,). The chip clock advances by the time the write heads need
        (32 per core, cores in parallel). Passing kind, amplitude and width positionally still works
        but is deprecated: two positional floats (uA, ns) are too easy to swap.
        """
        if positional:
            if len(positional) > 3 or any(v is not None for v in (kind, amplitude_ua, width_ns)[: len(positional)]):
                raise ChipInputError(
                    f"apply_pulses got {4 + len(positional)} positional arguments; pass "
                    "kind=, amplitude_ua= and width_ns= by keyword."
                )
            warnings.warn(
                "apply_pulses(core, row, col, device, kind, amplitude_ua, width_ns) with positional pulse "
                "parameters is deprecated; pass kind=, amplitude_ua= and width_ns= by keyword.",
                DeprecationWarning,
                stacklevel=2,
            )
            kind, amplitude_ua, width_ns = (*positional, *(kind, amplitude_ua, width_ns)[len(positional) :])
        missing = [n for n, v in (("kind", kind), ("amplitude_ua", amplitude_ua), ("width_ns", width_ns)) if v is None]
        if missing:
            raise ChipInputError(
                f"apply_pulses needs {', '.join(missing)}; e.g. kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0."
            )
        batch = self.validate_pulses(core, row, col, device, kind=kind, amplitude_ua=amplitude_ua, width_ns=width_ns)
        if len(batch):
            self._apply_pulses(batch)

    @abstractmethod
    def _apply_pulses(self, batch: PulseBatch) -> None: ...

    # ------------------------------------------------------------------ verify reads
    def read_devices(self, core: Any, row: Any, col: Any, device: Any) -> np.ndarray:
        """Verify-read single devices; return their conductances in ADC counts (int32, shape (N,))."""
        c, r, k, d = args.device_addresses(self.geometry, core, row, col, device)
        if c.size == 0:
            return np.zeros(0, dtype=np.int32)
        return self._read_devices(c, r, k, d)

    @abstractmethod
    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray: ...

    def read_cells(self, core: Any, row: Any, col: Any) -> np.ndarray:
        """Verify-read unit cells; return G+ - G- in ADC counts (int32, shape (N,), signed)."""
        c, r, k = args.cell_addresses(self.geometry, core, row, col)
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
        return args.mvm(self.geometry, x, cores, output, mode)

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
        cores_a, regs = args.ldpu(self.geometry, cores, scale, offset, relu)
        self._set_ldpu(cores_a, regs)

    @abstractmethod
    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None: ...

    def get_ldpu(self, cores: Any = None) -> LdpuRegisters:
        """Read back the LDPU registers of ``cores`` (default all)."""
        return self._get_ldpu(args.ldpu_cores(self.geometry, cores))

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

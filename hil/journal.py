"""Recording of chip calls: :class:`RecordingChip` wraps any :class:`hil.Chip` and journals every call.

The wrapper is itself a :class:`hil.Chip`: its public methods validate arguments exactly like every
backend, then its ``_`` methods call the wrapped chip's ``_`` methods and hand the validated
arguments, the result, the chip clock after the call and wall timestamps to a journal sink (the
:class:`hil.runfile.RunWriter`). So the journal holds normalised arrays (flat int addresses, PWM
inputs as int8, ADC counts as int32), never text or pickles, and a replay compares like with like.

Emulator-only extras (ground truth, ``program_conductances``) are deliberately not forwarded: a
protocol that used them could not be replayed or run on hardware.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from hil.chip import Chip, ChipInfo, LdpuRegisters, PulseBatch
from hil.runfile import MVM_MODE_CODES, MVM_OUTPUT_CODES


class JournalSink(Protocol):
    """Where recorded calls go (:class:`hil.runfile.RunWriter` implements it)."""

    def journal(
        self,
        op: str,
        fields: dict[str, Any],
        *,
        t_chip: float,
        t_wall: float,
        dt_wall: float,
        error: BaseException | tuple[str, str] | None = None,
    ) -> int: ...


class InterruptGuard:
    """Defers Ctrl-C while a chip call and its journal entry are in flight.

    The engine's SIGINT handler calls :meth:`interrupt`: outside a call it raises
    ``KeyboardInterrupt`` at once; inside one it only marks it pending, and the call raises it once
    the journal holds the call (so a resumed run knows what the hardware did). A second Ctrl-C while
    one is pending raises immediately.
    """

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False

    def interrupt(self) -> None:
        if self.depth == 0 or self.pending:
            self.pending = False
            raise KeyboardInterrupt
        self.pending = True

    def __enter__(self) -> InterruptGuard:
        self.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1
        if self.depth == 0 and self.pending:
            self.pending = False
            raise KeyboardInterrupt


def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _is_broadcast(x: Any) -> bool:
    """True when x (n_sel, B, rows) is one (B, rows) block repeated over its first axis (stride 0)."""
    if hasattr(x, "stride") and callable(x.stride):
        return x.shape[0] > 1 and x.stride(0) == 0
    return isinstance(x, np.ndarray) and x.shape[0] > 1 and x.strides[0] == 0


class RecordingChip(Chip):
    """A :class:`hil.Chip` that forwards to ``chip`` and journals every call to ``sink``.

    ``guard``: an :class:`InterruptGuard` shared with the engine (optional). If the wrapped chip
    offers ``recorded_clock()`` / ``recorded_wall()`` (a replay), those give the chip time and wall
    timestamps of the recorded call instead of a live ``now()`` and the wall clock.
    """

    def __init__(self, chip: Chip, sink: JournalSink, *, guard: InterruptGuard | None = None) -> None:
        self.inner = chip
        self.geometry = chip.geometry
        self._sink = sink
        self._guard = guard or InterruptGuard()
        self._clock = getattr(chip, "recorded_clock", None) or chip.now
        self._wall = getattr(chip, "recorded_wall", None)

    @property
    def info(self) -> ChipInfo:
        return self.inner.info

    def close(self) -> None:
        self.inner.close()

    def _call(self, op: str, fn: Any, args: dict[str, Any], result_fields: Any) -> Any:
        """Run ``fn()``, then journal ``args`` plus ``result_fields(result)``; re-raise its error."""
        with self._guard:
            t_wall = time.time()
            t0 = time.perf_counter()
            try:
                result = fn()
            except Exception as exc:
                dt = time.perf_counter() - t0
                self._record(op, args, t_wall, dt, exc)
                raise
            dt = time.perf_counter() - t0
            fields = dict(args)
            if result_fields is not None:
                fields.update(result_fields(result))
            self._record(op, fields, t_wall, dt, None)
            return result

    def _record(self, op: str, fields: dict[str, Any], t_wall: float, dt: float, error: BaseException | None) -> None:
        try:
            t_chip = float(self._clock())
        except Exception:  # a dead link must not hide the call's own error
            t_chip = float("nan")
        if self._wall is not None:
            recorded = self._wall()
            if recorded is not None:
                t_wall, dt = recorded
        self._sink.journal(op, fields, t_chip=t_chip, t_wall=t_wall, dt_wall=dt, error=error)

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        with self._guard:
            t_wall = time.time()
            t0 = time.perf_counter()
            t = float(self.inner.now())
            dt = time.perf_counter() - t0
            if self._wall is not None and (recorded := self._wall()) is not None:
                t_wall, dt = recorded
            self._sink.journal("now", {"t": t}, t_chip=t, t_wall=t_wall, dt_wall=dt)
            return t

    def _sleep(self, seconds: float) -> None:
        self._call("sleep", lambda: self.inner._sleep(seconds), {"seconds": seconds}, None)

    # ------------------------------------------------------------------ programming and reads
    def _apply_pulses(self, batch: PulseBatch) -> None:
        args = {
            "core": batch.core, "row": batch.row, "col": batch.col, "device": batch.device,
            "kind": batch.kind, "amplitude_ua": batch.amplitude_ua, "width_ns": batch.width_ns,
        }
        self._call("apply_pulses", lambda: self.inner._apply_pulses(batch), args, None)

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        return self._call(
            "read_devices",
            lambda: self.inner._read_devices(core, row, col, device),
            {"core": core, "row": row, "col": col, "device": device},
            lambda r: {"counts": _np(r)},
        )

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return self._call(
            "read_cells",
            lambda: self.inner._read_cells(core, row, col),
            {"core": core, "row": row, "col": col},
            lambda r: {"counts": _np(r)},
        )

    # ------------------------------------------------------------------ MVM and LDPU
    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        shared = _is_broadcast(x)
        x_rec = _np(x[:1] if shared else x)
        args = {
            "x": x_rec, "x_shared": int(shared), "cores": cores,
            "output": MVM_OUTPUT_CODES[output], "mode": MVM_MODE_CODES[mode],
        }
        return self._call("mvm", lambda: self.inner._mvm(x, cores, output, mode), args, lambda r: {"y": _np(r)})

    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None:
        args = {"cores": cores, "scale": regs.scale, "offset": regs.offset, "relu": regs.relu}
        self._call("set_ldpu", lambda: self.inner._set_ldpu(cores, regs), args, None)

    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters:
        return self._call(
            "get_ldpu",
            lambda: self.inner._get_ldpu(cores),
            {"cores": cores},
            lambda r: {"scale": _np(r.scale), "offset": _np(r.offset), "relu": _np(r.relu)},
        )

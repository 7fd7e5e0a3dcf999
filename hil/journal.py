"""Recording of chip calls: :class:`RecordingChip` wraps any :class:`hil.Chip` and journals every call.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

The wrapper is itself a :class:`hil.Chip`: its public methods validate arguments exactly like every
backend, then its ``_`` methods call the wrapped chip's ``_`` methods and hand the validated
arguments, the result, the chip clock after the call and wall timestamps to a journal sink (the
:class:`hil.runs.RunWriter`). So the journal holds normalised arrays (flat int addresses, PWM
inputs as int8, ADC counts as int32 or, where the chip declares they fit, int16), never text or
pickles, and a replay compares like with like.

Emulator-only extras (ground truth, ``program_conductances``) are deliberately not forwarded: a
protocol that used them could not be replayed or run on hardware.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

import numpy as np

from hil.chip import Chip, ChipInfo
from hil.ops import OPS, Op, implement_ops


class JournalSink(Protocol):
    """Where recorded calls go (:class:`hil.runs.RunWriter` implements it)."""

    @property
    def n_calls(self) -> int: ...

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


@implement_ops
class RecordingChip(Chip):
    """A :class:`hil.Chip` that forwards to ``chip`` and journals every call to ``sink``.

    Its backend methods come from the operation table (:func:`hil.ops.implement_ops`): each
    calls the wrapped chip's backend method and journals :meth:`hil.ops.Op.pack` of the arguments
    plus the result fields. ``guard``: an :class:`InterruptGuard` shared with the engine
    (optional). ``run_key``: the run's id; each call is announced to the chip as
    ``begin_call("<run_key>:<journal index>")`` (exactly-once requests on the lab board). If
    the wrapped chip serves recorded calls (a replay, see :meth:`hil.Chip.recorded_timing`),
    their recorded chip time and wall times are journaled instead of a live ``now()`` and the
    wall clock.
    """

    def __init__(
        self, chip: Chip, sink: JournalSink, *, guard: InterruptGuard | None = None, run_key: str | None = None
    ) -> None:
        self.inner = chip
        self.geometry = chip.geometry
        self._sink = sink
        self._guard = guard or InterruptGuard()
        self._run_key = run_key
        # A chip may declare that its results fit smaller integers ({"mvm.y": "<i2"}: 12-bit ADC counts);
        # the writer then stores those journal tables narrower (docs/run-file.md).
        narrow = getattr(sink, "narrow_table", None)
        declared = getattr(chip, "journal_result_dtypes", None)
        if callable(narrow) and isinstance(declared, dict) and sink.n_calls == 0:
            for key, dtype in declared.items():
                op, _, table = str(key).partition(".")
                narrow(op, table, dtype)

    @property
    def info(self) -> ChipInfo:
        return self.inner.info

    def validate_mvm(self, x: Any, cores: Any, output: str, mode: str) -> tuple[Any, np.ndarray]:
        """The wrapped chip's MVM checks (a backend may allow larger calls than the default)."""
        return self.inner.validate_mvm(x, cores, output, mode)

    def close(self) -> None:
        self.inner.close()

    def now(self) -> float:
        return self._op(OPS["now"])

    def _op(self, op: Op, *method_args: Any) -> Any:
        """Run ``op`` on the wrapped chip, then journal its arguments and result; re-raise its error."""
        with self._guard:
            args = op.pack(*method_args)
            if self._run_key is not None:
                self.inner.begin_call(f"{self._run_key}:{self._sink.n_calls}")
            t_wall = time.time()
            t0 = time.perf_counter()
            try:
                result = getattr(self.inner, op.method)(*method_args)
            except Exception as exc:
                self._record(op, args, t_wall, time.perf_counter() - t0, exc)
                raise
            dt = time.perf_counter() - t0
            self._record(op, {**args, **op.result_fields(result)}, t_wall, dt, None)
            return result

    def _record(self, op: Op, fields: dict[str, Any], t_wall: float, dt: float, error: BaseException | None) -> None:
        recorded = self.inner.recorded_timing()
        if recorded is not None:
            t_chip, t_wall, dt = recorded
        elif op.name == "now" and error is None:
            t_chip = float(fields["t"])
        else:
            try:
                t_chip = float(self.inner.now())
            except Exception:  # a dead link must not hide the call's own error
                t_chip = float("nan")
        self._sink.journal(op.name, fields, t_chip=t_chip, t_wall=t_wall, dt_wall=dt, error=error)

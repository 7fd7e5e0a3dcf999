"""Replay of recorded chip calls: :class:`ReplayChip` answers from a run file's journal.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

A protocol run against a ``ReplayChip`` makes the same calls it made when the run was recorded
(protocols are deterministic functions of config, seed and chip answers); each call is checked
against the journal and answered with the recorded result, so analysis code and whole protocols
re-run on recorded data with no hardware. The first call that differs (another operation, another
argument, or a call past the end of the recording) raises :class:`hil.ReplayMismatchError` naming it.

The same class drives ``hil resume``: with a ``live`` chip, calls past the end of the journal go to
the live chip. With ``reexecute=True`` (chips whose state lives in this process, the emulator) the
recorded calls are also executed on the live chip and their results checked against the journal,
which rebuilds the chip's state; otherwise (the lab board, whose state lives in the hardware) they
are answered from the journal and the live chip is used only after the last recorded call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from hil import arguments as hil_arguments
from hil import errors as hil_errors
from hil.arguments import to_numpy as _np
from hil.chip import Chip, ChipInfo, Geometry, RecordedTiming
from hil.errors import ChipInputError, HilError, ReplayMismatchError
from hil.ops import OPS, Op, implement_ops
from hil.runs.reader import JournalCall, RunReader


def _fmt(value: Any) -> str:
    if isinstance(value, np.ndarray | list | tuple) or hasattr(value, "shape"):
        arr = _np(value)
        if arr.ndim == 0:
            return repr(arr.item())
        body = np.array2string(arr.reshape(-1)[:6], separator=",", threshold=6)
        more = ",..." if arr.size > 6 else ""
        return f"{body[:-1]}{more}] shape {arr.shape}"
    return repr(value)


def describe_call(op: str, fields: dict[str, Any]) -> str:
    """``op(arg=value, ...)`` with arrays shortened, for error messages."""
    return f"{op}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in fields.items()) + ")"


def _difference(recorded: Any, given: Any) -> str | None:
    """Why two values differ (None if they are equal); arrays compare by shape and values."""
    a, b = _np(recorded), _np(given)
    if a.shape != b.shape:
        return f"shape {b.shape} vs recorded {a.shape}"
    if a.size == 0:
        return None
    fa, fb = a.reshape(-1), b.reshape(-1)
    if fa.dtype.kind in "fc" or fb.dtype.kind in "fc":
        fa, fb = fa.astype(np.float64), fb.astype(np.float64)
        bad = ~((fa == fb) | (np.isnan(fa) & np.isnan(fb)))
    else:
        bad = fa.astype(np.int64) != fb.astype(np.int64)
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    where = f"[{', '.join(str(int(k)) for k in np.unravel_index(i, a.shape))}]" if a.ndim else ""
    return f"element {where} is {fb[i]!r} vs recorded {fa[i]!r}" if a.ndim else f"{fb[i]!r} vs recorded {fa[i]!r}"


def recorded_error(call: JournalCall) -> Exception:
    """The exception a recorded failed call raised, rebuilt from its type name and message."""
    etype, message = call.error or ("hil.errors.HilError", "recorded error")
    cls = getattr(hil_errors, etype.rsplit(".", 1)[-1], None) if etype.startswith("hil.") else None
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return HilError(f"{etype}: {message} (recorded)")


def execute_call(chip: Chip, op: str, fields: dict[str, Any]) -> Any:
    """Execute a recorded call on ``chip`` through its backend (``_``) method; returns the result."""
    spec = OPS.get(op)
    if spec is None:
        raise HilError(f"unknown journal op {op!r}; known: {', '.join(OPS)}")
    return spec.call(chip, fields)


def result_difference(op: str, recorded: dict[str, Any], result: Any) -> tuple[str, str] | None:
    """(field, why) of the first result field of ``op`` that differs from the recording, or None."""
    for name, value in OPS[op].result_fields(result).items():
        why = _difference(recorded[name], value)
        if why is not None:
            return name, why
    return None


@implement_ops
class ReplayChip(Chip):
    """A :class:`hil.Chip` answering from the journal of a run file.

    ``source``: run file path or an open :class:`hil.runs.RunReader`. ``live``: a chip to use
    after the journal ends (resume); without one, a call past the end raises
    :class:`hil.ReplayMismatchError`. ``reexecute``: also run recorded calls on ``live`` and check
    their results and chip clock (rebuilds in-process chip state). ``on_live``: called once, just
    before the first live call.
    """

    def __init__(
        self,
        source: str | os.PathLike[str] | RunReader,
        *,
        live: Chip | None = None,
        reexecute: bool = False,
        on_live: Callable[[], None] | None = None,
    ) -> None:
        self._owns_reader = not isinstance(source, RunReader)
        self.reader = RunReader(source) if self._owns_reader else source  # type: ignore[arg-type]
        self.journal = self.reader.journal
        try:
            recorded = Geometry(**self.reader.geometry)
        except Exception as exc:
            raise HilError(f"{self.reader.path}: recorded chip geometry is missing or invalid ({exc}).") from exc
        if live is not None and live.geometry != recorded:
            raise HilError(
                f"the live chip's geometry {live.geometry.model_dump()} differs from the recorded "
                f"{recorded.model_dump()}; resume on the same kind of chip (see --chip)."
            )
        if reexecute and live is None:
            raise HilError("reexecute=True needs a live chip to execute the recorded calls on.")
        self.geometry = recorded
        self._live = live
        self._reexecute = reexecute
        self._on_live = on_live
        self._pos = 0
        self._last: JournalCall | None = None
        self._key: str | None = None
        self._mvm_limit: int | None = None
        self.went_live = False

    @classmethod
    def from_spec(cls, spec: str, *, seed: int | None = None) -> ReplayChip:
        """``spec`` is the run file's path (``--chip replay:FILE``); ``seed`` is ignored."""
        if not spec:
            raise ChipInputError("chip spec 'replay:' needs a run file: --chip replay:PATH/TO/RUN.h5")
        return cls(Path(spec))

    @property
    def info(self) -> ChipInfo:
        if self._live is not None:
            return self._live.info
        rec = self.reader.chip_info
        return ChipInfo(
            backend="replay",
            name=f"replay of {rec.get('name', 'a recorded chip')}",
            serial=str(self.reader.path),
            details={"run_id": self.reader.run_id, "recorded_chip": rec, "recorded_calls": len(self.journal)},
        )

    def validate_mvm(self, x: Any, cores: Any, output: str, mode: str) -> tuple[Any, np.ndarray]:
        """As :meth:`hil.Chip.validate_mvm`, allowing what the recording holds: a call may move as
        many values as the largest recorded MVM (a run on a GPU emulator records calls of up to 2**30
        values, above the default :data:`hil.arguments.MAX_MVM_VALUES`); each call is then checked
        against the journal. That bound comes from the file's own tables, whose reads the untrusted
        HDF5 layer bounds by the bytes stored. Past the end of the journal the live chip's own checks
        apply."""
        if self._live is not None and self._pos >= len(self.journal):
            return self._live.validate_mvm(x, cores, output, mode)
        if self._mvm_limit is None:
            self._mvm_limit = max(hil_arguments.MAX_MVM_VALUES, self.journal.largest_mvm_values())
        return hil_arguments.mvm(self.geometry, x, cores, output, mode, max_values=self._mvm_limit)

    @property
    def position(self) -> int:
        """Recorded calls served so far."""
        return self._pos

    @property
    def remaining(self) -> int:
        """Recorded calls not yet served."""
        return len(self.journal) - self._pos

    def close(self) -> None:
        if self._owns_reader:
            self.reader.close()
        if self._live is not None:
            self._live.close()

    # ------------------------------------------------------------------ hooks for RecordingChip
    def begin_call(self, key: str) -> None:
        """Remembered and passed to the live chip if the next call reaches it."""
        self._key = key

    def recorded_timing(self) -> RecordedTiming | None:
        """Chip time and wall times of the recorded call just served; once live, the live chip's own
        (a lab board answering a repeated call from its reply cache gives the original times)."""
        if self._last is None:
            return self._live.recorded_timing() if self._live is not None else None
        return RecordedTiming(self._last.t_chip, self._last.t_wall, self._last.dt_wall)

    # ------------------------------------------------------------------ matching
    def _mismatch(self, message: str, index: int | None = None) -> ReplayMismatchError:
        return ReplayMismatchError(
            f"replay of {self.reader.path.name} differs at call #{self._pos if index is None else index} "
            f"(of {len(self.journal)} recorded): {message}"
        )

    def _next(self, op: str, args: dict[str, Any]) -> JournalCall | None:
        """Check the call against the journal; the recorded call, or None when it goes live."""
        if self._pos >= len(self.journal):
            if self._live is None:
                status = self.reader.effective_status
                extra = f"; the recorded run ended with status {status}" if status != "success" else ""
                raise self._mismatch(f"{describe_call(op, args)} goes past the end of the recording{extra}.")
            if not self.went_live:
                self.went_live = True
                if self._on_live is not None:
                    self._on_live()
            self._last = None
            return None
        rec = self.journal.call(self._pos)
        if rec.op != op:
            raise self._mismatch(
                f"the protocol called {describe_call(op, args)} but the recording has "
                f"{describe_call(rec.op, rec.fields)}."
            )
        for name, value in args.items():
            why = _difference(rec.fields[name], value)
            if why is not None:
                raise self._mismatch(f"{op} argument {name!r} differs: {why}. Call: {describe_call(op, args)}.")
        self._pos += 1
        self._last = rec
        return rec

    def _op(self, op: Op, *method_args: Any) -> Any:
        """Serve one call of ``op``: check it against the journal, answer from it (or re-execute, or go live)."""
        args = op.pack(*method_args)
        rec = self._next(op.name, args)
        live = self._live
        key, self._key = self._key, None
        if live is not None and key is not None and (rec is None or self._reexecute):
            live.begin_call(key)
        if rec is None:
            assert live is not None
            return getattr(live, op.method)(*method_args)
        if not self._reexecute:
            if rec.error is not None:
                raise recorded_error(rec)
            return op.result_from(rec.fields)
        assert live is not None
        try:
            result = getattr(live, op.method)(*method_args)
        except Exception as exc:
            if rec.error is None:
                raise self._mismatch(
                    f"re-executing {op.name} on the live chip raised {exc!r}; the recording has no error.", rec.index
                ) from exc
            raise
        if rec.error is not None:
            raise self._mismatch(
                f"re-executing {op.name} succeeded on the live chip but the recording has {rec.error[0]}.", rec.index
            )
        diff = result_difference(op.name, rec.fields, result)
        if diff is not None:
            name, why = diff
            if op.name == "now":
                raise self._mismatch(f"the live chip clock reads {result} s vs recorded {rec.fields['t']} s.", rec.index)
            raise self._mismatch(
                f"re-executing {op.name} on the live chip gave another {name!r} ({why}); "
                "the chip is not the recorded one (spec, seed, preceding runs) or is not deterministic.",
                rec.index,
            )
        t_live = float(live.now())
        if not (t_live == rec.t_chip or (np.isnan(t_live) and np.isnan(rec.t_chip))):
            raise self._mismatch(
                f"after re-executing {op.name} the live chip clock reads {t_live} s vs recorded {rec.t_chip} s.", rec.index
            )
        return result

    # ------------------------------------------------------------------ the chip interface
    def now(self) -> float:
        return float(self._op(OPS["now"]))


def reexecute_journal(chip: Chip, source: str | os.PathLike[str] | RunReader) -> int:
    """Execute every recorded call of a run on ``chip``, checking results; returns the call count.

    Rebuilds an in-process chip's state from a run that used it before (e.g. an earlier step of
    ``hil demo``) before the journal of a later run is re-executed on it.
    """
    reader = source if isinstance(source, RunReader) else RunReader(source)
    try:
        journal = reader.journal
        for i in range(len(journal)):
            rec = journal.call(i)
            try:
                result = execute_call(chip, rec.op, rec.fields)
            except Exception as exc:
                if rec.error is None:
                    raise ReplayMismatchError(
                        f"re-executing {reader.path.name} call #{i} ({rec.op}) raised {exc!r}; the recording has no error."
                    ) from exc
                continue
            diff = result_difference(rec.op, rec.fields, result)
            if diff is not None:
                raise ReplayMismatchError(
                    f"re-executing {reader.path.name} call #{i} ({rec.op}) gave another {diff[0]!r} ({diff[1]}); "
                    "the chip is not the recorded one or is not deterministic."
                )
        return len(journal)
    finally:
        if not isinstance(source, RunReader):
            reader.close()

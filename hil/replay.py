"""Replay of recorded chip calls: :class:`ReplayChip` answers from a run file's journal.

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

from hil import errors as hil_errors
from hil.chip import Chip, ChipInfo, Geometry, LdpuRegisters, PulseBatch
from hil.errors import HilError, ReplayMismatchError
from hil.journal import _is_broadcast, _np
from hil.runfile import MVM_MODE_CODES, MVM_OUTPUT_CODES, JournalCall, RunReader

_MVM_OUTPUTS = {v: k for k, v in MVM_OUTPUT_CODES.items()}
_MVM_MODES = {v: k for k, v in MVM_MODE_CODES.items()}


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
    f = fields
    if op == "now":
        return chip.now()
    if op == "sleep":
        return chip._sleep(float(f["seconds"]))
    if op == "apply_pulses":
        batch = PulseBatch(
            core=f["core"].astype(np.int64), row=f["row"].astype(np.int64), col=f["col"].astype(np.int64),
            device=f["device"].astype(np.int64), kind=f["kind"].astype(np.uint8),
            amplitude_ua=f["amplitude_ua"].astype(np.float64), width_ns=f["width_ns"].astype(np.float64),
        )
        return chip._apply_pulses(batch)
    if op == "read_devices":
        return chip._read_devices(*(f[k].astype(np.int64) for k in ("core", "row", "col", "device")))
    if op == "read_cells":
        return chip._read_cells(*(f[k].astype(np.int64) for k in ("core", "row", "col")))
    if op == "mvm":
        cores = f["cores"].astype(np.int64)
        x = f["x"]
        if f["x_shared"]:
            x = np.broadcast_to(x, (cores.size, *x.shape[1:]))
        return chip._mvm(x, cores, _MVM_OUTPUTS[int(f["output"])], _MVM_MODES[int(f["mode"])])
    if op == "set_ldpu":
        regs = LdpuRegisters(f["scale"].astype(np.float16), f["offset"].astype(np.float16), f["relu"].astype(bool))
        return chip._set_ldpu(f["cores"].astype(np.int64), regs)
    if op == "get_ldpu":
        return chip._get_ldpu(f["cores"].astype(np.int64))
    raise HilError(f"unknown journal op {op!r}")


def _result_fields(op: str, result: Any) -> dict[str, Any]:
    if op == "now":
        return {"t": float(result)}
    if op in ("read_devices", "read_cells"):
        return {"counts": _np(result)}
    if op == "mvm":
        return {"y": _np(result)}
    if op == "get_ldpu":
        return {"scale": _np(result.scale), "offset": _np(result.offset), "relu": _np(result.relu)}
    return {}


class ReplayChip(Chip):
    """A :class:`hil.Chip` answering from the journal of a run file.

    ``source``: run file path or an open :class:`hil.runfile.RunReader`. ``live``: a chip to use
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
        self.went_live = False

    @classmethod
    def from_spec(cls, spec: str, *, seed: int | None = None) -> ReplayChip:
        """``spec`` is the run file's path (``--chip replay:FILE``); ``seed`` is ignored."""
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
    def recorded_clock(self) -> float:
        """Chip time after the call just served (recorded), or the live chip's clock once live."""
        if self._last is not None:
            return self._last.t_chip
        if self._live is not None:
            return self._live.now()
        return 0.0

    def recorded_wall(self) -> tuple[float, float] | None:
        """(wall start, duration) of the recorded call just served; None once live."""
        return None if self._last is None else (self._last.t_wall, self._last.dt_wall)

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

    def _serve(self, op: str, args: dict[str, Any], live_fn: Callable[[], Any], from_record: Callable[[JournalCall], Any]) -> Any:
        rec = self._next(op, args)
        if rec is None:
            assert self._live is not None
            return live_fn()
        if not self._reexecute:
            if rec.error is not None:
                raise recorded_error(rec)
            return from_record(rec)
        try:
            result = live_fn()
        except Exception as exc:
            if rec.error is None:
                raise self._mismatch(
                    f"re-executing {op} on the live chip raised {exc!r}; the recording has no error.", rec.index
                ) from exc
            raise
        if rec.error is not None:
            raise self._mismatch(f"re-executing {op} succeeded on the live chip but the recording has {rec.error[0]}.", rec.index)
        for name, value in _result_fields(op, result).items():
            why = _difference(rec.fields[name], value)
            if why is not None:
                raise self._mismatch(
                    f"re-executing {op} on the live chip gave another {name!r} ({why}); "
                    "the chip is not the recorded one (spec, seed, preceding runs) or is not deterministic.",
                    rec.index,
                )
        t_live = float(self._live.now()) if self._live is not None else rec.t_chip
        if not (t_live == rec.t_chip or (np.isnan(t_live) and np.isnan(rec.t_chip))):
            raise self._mismatch(
                f"after re-executing {op} the live chip clock reads {t_live} s vs recorded {rec.t_chip} s.", rec.index
            )
        return result

    # ------------------------------------------------------------------ the chip interface
    def now(self) -> float:
        rec = self._next("now", {})
        if rec is None:
            assert self._live is not None
            return float(self._live.now())
        if self._reexecute:
            assert self._live is not None
            t = float(self._live.now())
            if t != rec.fields["t"]:
                raise self._mismatch(f"the live chip clock reads {t} s vs recorded {rec.fields['t']} s.", rec.index)
        return float(rec.fields["t"])

    def _sleep(self, seconds: float) -> None:
        live = self._live
        self._serve("sleep", {"seconds": seconds}, lambda: live._sleep(seconds), lambda r: None)  # type: ignore[union-attr]

    def _apply_pulses(self, batch: PulseBatch) -> None:
        args = {
            "core": batch.core, "row": batch.row, "col": batch.col, "device": batch.device,
            "kind": batch.kind, "amplitude_ua": batch.amplitude_ua, "width_ns": batch.width_ns,
        }
        live = self._live
        self._serve("apply_pulses", args, lambda: live._apply_pulses(batch), lambda r: None)  # type: ignore[union-attr]

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        live = self._live
        return self._serve(
            "read_devices",
            {"core": core, "row": row, "col": col, "device": device},
            lambda: live._read_devices(core, row, col, device),  # type: ignore[union-attr]
            lambda r: r.fields["counts"].astype(np.int32),
        )

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        live = self._live
        return self._serve(
            "read_cells",
            {"core": core, "row": row, "col": col},
            lambda: live._read_cells(core, row, col),  # type: ignore[union-attr]
            lambda r: r.fields["counts"].astype(np.int32),
        )

    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        shared = _is_broadcast(x)
        args = {
            "x": _np(x[:1] if shared else x), "x_shared": int(shared), "cores": cores,
            "output": MVM_OUTPUT_CODES[output], "mode": MVM_MODE_CODES[mode],
        }
        live = self._live
        dtype = np.int8 if output == "ldpu" else np.int32
        return self._serve(
            "mvm", args, lambda: live._mvm(x, cores, output, mode), lambda r: r.fields["y"].astype(dtype)  # type: ignore[union-attr]
        )

    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None:
        args = {"cores": cores, "scale": regs.scale, "offset": regs.offset, "relu": regs.relu}
        live = self._live
        self._serve("set_ldpu", args, lambda: live._set_ldpu(cores, regs), lambda r: None)  # type: ignore[union-attr]

    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters:
        live = self._live
        return self._serve(
            "get_ldpu",
            {"cores": cores},
            lambda: live._get_ldpu(cores),  # type: ignore[union-attr]
            lambda r: LdpuRegisters(
                r.fields["scale"].astype(np.float16), r.fields["offset"].astype(np.float16), r.fields["relu"].astype(bool)
            ),
        )


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
            for name, value in _result_fields(rec.op, result).items():
                why = _difference(rec.fields[name], value)
                if why is not None:
                    raise ReplayMismatchError(
                        f"re-executing {reader.path.name} call #{i} ({rec.op}) gave another {name!r} ({why}); "
                        "the chip is not the recorded one or is not deterministic."
                    )
        return len(journal)
    finally:
        if not isinstance(source, RunReader):
            reader.close()

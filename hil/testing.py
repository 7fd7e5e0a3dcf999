"""Tools for testing protocols: a fast fake chip and :func:`check_protocol`.

:class:`FakeChip` is a deterministic, in-process :class:`hil.Chip` with a toy conductance model
(no physics, microseconds per call): RESET empties a device, SET fills it, a PARTIAL pulse adds
conductance in proportion to its current, reads and MVMs add seeded integer noise. It is what a
protocol's unit tests run on; it is registered as the chip backend ``fake``
(``--chip fake:cores=2,rows=16,cols=16``).

:func:`check_protocol` runs a protocol on a fake chip into a real run file, replays that file and
checks that the replay made exactly the recorded calls: the test every protocol should pass.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hil.chip import Chip, ChipInfo, Geometry, LdpuRegisters, PulseBatch, PulseKind
from hil.errors import ChipInputError

#: Conductance of a fully SET device, in ADC counts of a verify read.
FAKE_G_MAX = 100.0
#: ADC counts one unit of input times one count of conductance gives in an MVM.
FAKE_MVM_GAIN = 1.0 / 64.0
#: Chip time one pulse batch takes per pulse (s), a verify read per element, an MVM per call.
FAKE_PULSE_S = 1e-6
FAKE_READ_S = 1e-7
FAKE_MVM_S = 1e-6


class FakeChip(Chip):
    """A deterministic toy chip for protocol tests (state in-process; resumed by re-execution).

    ``geometry``: defaults to 2 cores of 16 x 16 unit cells; ``seed`` seeds the read and MVM noise
    (``noise`` counts of standard deviation, 0 for exact answers).
    """

    resume_by_reexecution = True

    def __init__(self, geometry: Geometry | None = None, *, seed: int = 0, noise: float = 1.0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ChipInputError(f"seed={seed!r} must be an int in [0, 2**63).")
        if not 0.0 <= noise <= 100.0:
            raise ChipInputError(f"noise={noise!r} is out of range; allowed [0, 100] counts.")
        self.geometry = geometry or Geometry(n_cores=2, n_rows=16, n_cols=16)
        if self.geometry.n_unit_cells * self.geometry.n_devices > 2**26:
            raise ChipInputError(
                f"a fake chip of {self.geometry.n_unit_cells} unit cells is too large for a test chip; "
                "allowed up to 2**24 unit cells (e.g. cores=4,rows=256,cols=256)."
            )
        self.seed = seed
        self.noise = float(noise)
        g = self.geometry
        self._g = np.zeros((g.n_cores, g.n_rows, g.n_cols, g.n_devices), dtype=np.float64)
        self._rng = np.random.default_rng(seed)
        self._t = 0.0
        self._scale = np.ones((g.n_cores, g.n_cols), dtype=np.float16)
        self._offset = np.zeros((g.n_cores, g.n_cols), dtype=np.float16)
        self._relu = np.zeros(g.n_cores, dtype=bool)

    @classmethod
    def from_spec(cls, spec: str = "", *, seed: int | None = None) -> FakeChip:
        """``cores=N,rows=N,cols=N,noise=X`` (all optional)."""
        geo: dict[str, int] = {}
        noise = 1.0
        keys = {"cores": "n_cores", "rows": "n_rows", "cols": "n_cols"}
        for part in (p.strip() for p in spec.split(",") if p.strip()):
            key, _, value = part.partition("=")
            if key == "noise":
                try:
                    noise = float(value)
                except ValueError:
                    raise ChipInputError(f"bad fake-chip spec part {part!r}; noise=X takes a number of counts.") from None
            elif key in keys and value.isdigit():
                geo[keys[key]] = int(value)
            else:
                raise ChipInputError(f"bad fake-chip spec part {part!r}; use cores=N, rows=N, cols=N or noise=X.")
        geometry = Geometry(**{"n_cores": 2, "n_rows": 16, "n_cols": 16, **geo})
        return cls(geometry, seed=0 if seed is None else seed, noise=noise)

    @property
    def info(self) -> ChipInfo:
        return ChipInfo(
            backend="fake", name="fake test chip", serial=f"seed={self.seed}",
            details={"seed": self.seed, "noise": self.noise},
        )

    def now(self) -> float:
        return self._t

    def _sleep(self, seconds: float) -> None:
        self._t += seconds

    def _apply_pulses(self, batch: PulseBatch) -> None:
        for kind in (PulseKind.RESET, PulseKind.SET, PulseKind.PARTIAL):
            sel = batch.kind == kind
            if not sel.any():
                continue
            idx = (batch.core[sel], batch.row[sel], batch.col[sel], batch.device[sel])
            if kind == PulseKind.RESET:
                self._g[idx] = 0.0
            elif kind == PulseKind.SET:
                self._g[idx] = FAKE_G_MAX
            else:
                step = FAKE_G_MAX * 0.02 * batch.amplitude_ua[sel] / 125.0 * np.minimum(batch.width_ns[sel], 1000.0) / 125.0
                np.add.at(self._g, idx, step)
                self._g[idx] = np.minimum(self._g[idx], FAKE_G_MAX)
        self._t += FAKE_PULSE_S * len(batch)

    def _noisy(self, values: np.ndarray) -> np.ndarray:
        if self.noise:
            values = values + self._rng.normal(0.0, self.noise, values.shape)
        return np.rint(values)

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        self._t += FAKE_READ_S * core.size
        return self._noisy(self._g[core, row, col, device]).astype(np.int32)

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        self._t += FAKE_READ_S * core.size
        sign = self.geometry.device_sign.astype(np.float64)
        return self._noisy(self._g[core, row, col] @ sign).astype(np.int32)

    def _weights(self, cores: np.ndarray) -> np.ndarray:
        sign = self.geometry.device_sign.astype(np.float64)
        return self._g[cores] @ sign  # (n_sel, rows, cols)

    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        xs = np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)
        y = np.einsum("sbr,src->sbc", xs, self._weights(cores)) * FAKE_MVM_GAIN
        adc = self._noisy(y)
        self._t += FAKE_MVM_S
        if output == "adc":
            return adc.astype(np.int32)
        out = self._scale[cores][:, None, :].astype(np.float64) * adc + self._offset[cores][:, None, :]
        out = np.where(self._relu[cores][:, None, None], np.maximum(out, 0.0), out)
        return np.clip(np.rint(out), -127, 127).astype(np.int8)

    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None:
        self._scale[cores] = regs.scale
        self._offset[cores] = regs.offset
        self._relu[cores] = regs.relu

    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters:
        return LdpuRegisters(self._scale[cores].copy(), self._offset[cores].copy(), self._relu[cores].copy())

    # ------------------------------------------------------------------ test helpers (not journaled)
    def conductances(self) -> np.ndarray:
        """A copy of every device's conductance in counts, shape (cores, rows, cols, devices)."""
        return self._g.copy()


def _spec_for(fn: Any, config: Any) -> Any:
    """The registered protocol for ``fn`` (a name, a registered function, or a new function to register)."""
    from pydantic import BaseModel

    from hil.protocol import _REGISTRY, get_protocol, register_protocol

    if isinstance(fn, str):
        return get_protocol(fn)
    for spec in _REGISTRY.values():
        if spec.fn is fn:
            return spec
    if not isinstance(config, BaseModel):
        raise TypeError(
            f"{getattr(fn, '__name__', fn)!r} is not a registered protocol; pass its config as a pydantic model "
            "instance so check_protocol can register it, or register it with @hil.register_protocol."
        )
    name = f"check-{getattr(fn, '__name__', 'protocol')}"
    register_protocol(name, type(config))(fn)
    return get_protocol(name)


def _journal_difference(a: Any, b: Any) -> str | None:
    from hil.replay import _difference, describe_call

    if len(a) != len(b):
        return f"the recording has {len(a)} chip calls, the replay {len(b)}"
    for i in range(len(a)):
        ca, cb = a.call(i), b.call(i)
        if ca.op != cb.op:
            return f"call #{i}: {describe_call(ca.op, ca.fields)} recorded, {describe_call(cb.op, cb.fields)} replayed"
        for name in ca.fields:
            why = _difference(ca.fields[name], cb.fields.get(name))
            if why is not None:
                return f"call #{i} ({ca.op}) field {name!r}: {why}"
    return None


def _summary_difference(a: Any, b: Any, where: str = "summary") -> str | None:
    """Where two summaries differ, ignoring wall-clock keys (any key containing 'wall'), or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = [k for k in {*a, *b} if "wall" not in str(k)]
        for k in sorted(keys, key=str):
            if k not in a or k not in b:
                return f"{where}[{k!r}] (present in only one)"
            why = _summary_difference(a[k], b[k], f"{where}[{k!r}]")
            if why is not None:
                return why
        return None
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where} (lengths {len(a)} vs {len(b)})"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            why = _summary_difference(x, y, f"{where}[{i}]")
            if why is not None:
                return why
        return None
    same = a == b or (isinstance(a, float) and isinstance(b, float) and a != a and b != b)
    return None if same else f"{where}: {a!r} vs {b!r}"


def check_protocol(
    fn: Any,
    config: Any = None,
    *,
    chip: str | Chip = "fake:cores=2,rows=16,cols=16",
    seed: int = 0,
    out: str | os.PathLike[str] | None = None,
) -> Any:
    """Run a protocol into a real run file on a fake chip, replay the file, and check the replay.

    ``fn``: a protocol name, a registered protocol function, or an unregistered ``fn(chip, config,
    run)`` (then ``config`` must be a pydantic model instance; it is registered as
    ``check-<name>``). ``config``: a dict or model of config values. ``chip``: a chip spec or
    object (default a 2-core 16 x 16 :class:`FakeChip`). Asserts that the run succeeds, that
    ``hil replay`` of its file succeeds, and that the replay's journal, streams and summary
    (wall-clock keys aside) equal the recording's; returns the run's :class:`hil.RunResult`. Run
    files go to ``out`` (default a new temporary folder).
    """
    import numpy as np

    from hil.runner import replay_run, run_protocol
    from hil.runs import RunReader

    spec = _spec_for(fn, config)
    folder = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="hil-check-"))
    result = run_protocol(spec.name, chip=chip, config=config, seed=seed, out=folder, progress=False)
    if result.status != "success":
        raise AssertionError(
            f"protocol {spec.name!r} did not succeed: {result.status} ({result.reason}) "
            f"{result.exception_type}: {result.message}"
        ) from result.error
    replay = replay_run(result.path, out=folder / "replay", progress=False)
    if replay.status != "success":
        raise AssertionError(
            f"replaying {result.path.name} failed: {replay.status} ({replay.reason}) {replay.exception_type}: {replay.message}"
        ) from replay.error
    with RunReader(result.path) as rec, RunReader(replay.path) as rep:
        why = _journal_difference(rec.journal, rep.journal)
        if why is not None:
            raise AssertionError(f"the replay of {result.path.name} journaled other calls than the run: {why}")
        if rec.streams() != rep.streams():
            raise AssertionError(f"the replay logged streams {rep.streams()}, the run {rec.streams()}")
        for name in rec.streams():
            a, b = rec.stream(name), rep.stream(name)
            for col in a:
                exact = a[col].dtype.kind in "fc"
                same = a[col].shape == b[col].shape and np.array_equal(a[col], b[col], equal_nan=exact)
                if not same:
                    raise AssertionError(f"stream {name!r} column {col!r} differs between the run and its replay")
        why = _summary_difference(rec.summary, rep.summary)
        if why is not None:
            raise AssertionError(f"the replay's summary differs from the run's at {why}")
    return result


__all__ = ["FAKE_G_MAX", "FakeChip", "check_protocol"]

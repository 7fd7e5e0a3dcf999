"""The emulated 64-core PCM chip: a :class:`hil.Chip` backed by batched torch.

State per device (shape (cores, rows, cols, devices)): programmed conductance g_p [uS], time of
last programming t_p [s, float64], drift reference t0 [s] (200 s, 300 s for two-device HERMES
weights), drift exponent nu and 1/f noise magnitude Q_s (both drawn or set when the device is
programmed), the slow 1/f read-noise normal and its epoch (``emulator/noise/recurrence.py``), and the
device's own SET level (device-to-device spread). Drift G(t) = g_p ((t - t_p + t0) / t0) ** -nu
runs on a virtual clock.

Noise sources and where they are drawn: programming noise and nu when a device is programmed
(generator ``_gen``); the slow 1/f part when a device enters a new epoch of its age (``_slow_gen``);
the fast 1/f part on every verify read and MVM (``_noise_gens``); the optional output noise once per
column or on every MVM (``_out_gens``). One generator per source, so the scale of one source does
not change the draws of another.

MVMs use per-core matrices cached at the current chip time: G+ - G- and G+ + G- with the slow read
noise in them, and the variance of the fast part summed over the cell's devices. They are recomputed
for a core after it is programmed, when one of its devices enters a new slow epoch, or when the clock
has moved more than ``numerics.drift_rel_tol`` x (t - t_p + t0) since the last computation (the
conductance change is then below nu x tol, far under the read noise). Cells whose devices were
pulsed or got a new slow normal are recomputed alone while the rest of their core is still valid.
How it computes (matmul dtype by measurement, stacked small-batch matmul, cache-sized ADC chunks,
compiled or native ADC chain): ``emulator/numerics.py``, the MVM itself ``emulator/datapath.py``, and
docs/emulator.md, deviations 2, 6 and 7.
Full-chip state: 16.7 M devices x 30 bytes + 3 cached matrices (and their stacked copy) = about 0.55 GiB.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch

from emulator import numerics, periphery
from emulator import spec as spec_grammar
from emulator.datapath import MvmDatapath
from emulator.noise.recurrence import band_split, slow_epoch
from emulator.presets import EmulatorPreset, resolve_preset
from emulator.programming import draw_nu, physics_model, pulse_response, read_noise_q, statistical_program
from hil import arguments as args
from hil.chip import Chip, ChipInfo, Geometry, LdpuRegisters, PulseBatch
from hil.errors import ChipInputError

#: Independent random streams for per-MVM noise; fixed so results do not depend on the core count.
_NOISE_STREAMS = 4
#: Most devices one emulated chip holds (four 64-core HERMES chips), checked before allocating.
MAX_DEVICES = 2**26
#: State per device (bytes): conductance, SET level, nu, Q_s, t0 (float32), programming time (float64), slow noise.
BYTES_PER_DEVICE = 36
_CORE_CHUNK = 8  # cores per batch when recomputing cached matrices (bounds temporary memory)
#: A core with more than 1/_DENSE_DIRTY of its cells dirty is recomputed whole (cheaper than gathers).
_DENSE_DIRTY = 4
#: Most values (cores x batch x max(rows, cols)) one MVM call may move on a GPU.
MAX_GPU_MVM_VALUES = 2**30


periphery.keep_freed_memory()


class EmulatedChip(MvmDatapath, Chip):
    """A faithful, fast software emulator of a HERMES-like 64-core PCM chip.

    ``preset``: 'hermes' (default), 'pcm-like' or an :class:`EmulatorPreset`; ``seed`` makes every
    result deterministic; ``device``: 'cpu' or 'cuda'; ``geometry`` overrides the preset's geometry
    (small chips for tests); ``overrides``: nested dict of preset constants.
    """

    #: Resume rebuilds this chip's state by re-executing the journal (its state lives in-process).
    resume_by_reexecution = True

    def __init__(
        self,
        preset: str | EmulatorPreset = "hermes",
        *,
        seed: int = 0,
        device: str = "cpu",
        geometry: Geometry | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        self.preset = resolve_preset(preset, overrides, geometry)
        self.geometry = self.preset.geometry
        n_devices = self.geometry.n_unit_cells * self.geometry.n_devices
        if n_devices > MAX_DEVICES:
            raise ChipInputError(
                f"an emulated chip of {self.geometry.n_cores} x {self.geometry.n_rows} x {self.geometry.n_cols} x "
                f"{self.geometry.n_devices} devices ({n_devices}) needs about {n_devices * BYTES_PER_DEVICE / 2**30:.0f} GiB; "
                f"allowed up to {MAX_DEVICES} devices (four 64-core HERMES chips). Use fewer cores, rows or columns."
            )
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
            raise ChipInputError(f"seed={seed!r} must be an int in [0, 2**63).")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ChipInputError(f"device={device!r} but no CUDA GPU is available; use device='cpu'.")
        if not (device == "cpu" or device.startswith("cuda")):
            raise ChipInputError(f"device={device!r}; use 'cpu' or 'cuda'.")
        self.device = torch.device(device)
        self.seed = seed
        self._gen = torch.Generator(device=self.device).manual_seed(seed)
        n_streams = _NOISE_STREAMS if self.device.type == "cpu" else 1
        self._noise_gens = [
            torch.Generator(device=self.device).manual_seed((seed * 7919 + 104729 * (i + 1)) % 2**63)
            for i in range(n_streams)
        ]
        self._slow_gen = torch.Generator(device=self.device).manual_seed((seed * 6131 + 15485863) % 2**63)
        self._out_gens = [
            torch.Generator(device=self.device).manual_seed((seed * 3571 + 32452843 * (i + 1)) % 2**63)
            for i in range(n_streams)
        ]
        self._model = physics_model(self.preset.noise)
        self._pair = self._model.pair()
        if self._pair is not None and self._pair.t_read_s != self._model.t_read_s:
            raise ChipInputError(f"the pair model of {self._model.name!r} has t_read {self._pair.t_read_s} s, "
                                 f"the model {self._model.t_read_s} s; the emulator needs one t_read per chip.")
        self._t0_min = min(self._model.t0_s, self._pair.t0_s if self._pair is not None else math.inf)
        self._t = 0.0
        g = self.geometry
        shape = (g.n_cores, g.n_rows, g.n_cols, g.n_devices)
        d = self.preset.device
        dev = self.device
        with torch.no_grad():
            z = torch.randn(shape, generator=self._gen, device=dev)
            self._g_set = (d.set_g_us * (1.0 + d.set_d2d_sigma * z)).clamp_min(0.05 * d.set_g_us)
            z.normal_(generator=self._gen)
            self._g = (d.reset_g_us + d.reset_sigma_us * z).abs_()  # a fresh chip: every device RESET
            del z
            self._nu = draw_nu(self._g, self.preset, self._gen, self._model)
            self._q = read_noise_q(self._g, self.preset, self._model)
            self._tp = torch.zeros(shape, dtype=torch.float64, device=dev)
            self._t0 = torch.full(shape, self._model.t0_s, device=dev)
            adc = self.preset.adc
            zg = torch.randn((g.n_cores, 1, g.n_cols), generator=self._gen, device=dev)
            self._adc_gain = adc.gain_ghz_per_ua * (1.0 + (adc.gain_sigma * zg).clamp(-adc.gain_clip, adc.gain_clip))
            zo = torch.randn((g.n_cores, 1, g.n_cols), generator=self._gen, device=dev)
            self._adc_offset = adc.offset_ghz + adc.offset_sigma_ghz * zo
            self._z_slow = torch.zeros(shape, device=dev)
            self._k_slow = torch.full(shape, -1, dtype=torch.int16, device=dev)  # -1: not drawn yet
            nm = self.preset.noise
            self._out_frozen: torch.Tensor | None = None
            if nm.output_noise_counts > 0 and nm.output_noise_recurrence == "frozen":
                zf = torch.randn((g.n_cores, 1, g.n_cols), generator=self._out_gens[0], device=dev)
                self._out_frozen = nm.output_noise_counts * zf
        self._ldpu_scale = torch.full((g.n_cores, g.n_cols), self.preset.ldpu_scale, dtype=torch.float16, device=dev)
        self._ldpu_offset = torch.zeros((g.n_cores, g.n_cols), dtype=torch.float16, device=dev)
        self._ldpu_relu = torch.zeros(g.n_cores, dtype=torch.bool, device=dev)
        mdt, self._dtype_source = numerics.resolve(self.preset.numerics.matmul_dtype, self.device)
        ndt = mdt if self.preset.numerics.noise_dtype == "auto" else numerics.DTYPES[self.preset.numerics.noise_dtype]
        mat = (g.n_cores, g.n_rows, g.n_cols)
        # D = G+ - G-, S = G+ + G- and Var side by side (one stacked matmul at small batch); views.
        self._w_diff = torch.zeros(mat, dtype=mdt, device=dev)
        self._w_sum = torch.zeros(mat, dtype=mdt, device=dev)
        self._w_var = torch.zeros(mat, dtype=ndt, device=dev)
        # The same three stacked and transposed, [D | S | Var]^T (cores, 3 cols, rows), for the one-matmul
        # small-batch path (a contiguous copy: a strided view would make the bf16 batched matmul copy
        # its operand on every call; transposed, the matrix-vector products stream it faster).
        self._w3 = torch.zeros((g.n_cores, 3 * g.n_cols, g.n_rows), dtype=mdt, device=dev) if mdt == ndt else None
        try:
            self._adc_chain = numerics.resolve_adc_chain(self.preset.numerics.adc_chain, self.device)
        except ValueError as exc:
            raise ChipInputError(str(exc)) from None
        # Key of the native chain's counter-based generator (its per-call nonce comes from _noise_gens).
        self._native_key = (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64
        self._native_consts: dict[str, tuple[Any, ...]] = {}
        self._native_calls = 0
        self._cache_t = np.full(g.n_cores, -np.inf)
        self._slow_next = np.zeros(g.n_cores)  # earliest start of a new slow epoch in the core (lower bound)
        self._tp_max = np.zeros(g.n_cores)
        # Cells whose devices changed since their cached matrices were computed (pulses, new slow normals).
        self._dirty = np.zeros((g.n_cores, g.n_rows * g.n_cols), dtype=bool)
        self._dirty_cores = np.zeros(g.n_cores, dtype=bool)
        self._fresh_until = -np.inf  # clock time until which no core needs a recompute (see _refresh)
        self._any_dirty = False
        self._all_cores = np.arange(g.n_cores)

    # ------------------------------------------------------------------ construction helpers
    #: Shorthand spec parts for numerics fields (``matmul=float32`` is ``numerics.matmul_dtype=float32``).
    SPEC_SHORTHANDS: ClassVar[dict[str, str]] = spec_grammar.SHORTHANDS

    @classmethod
    def parse_spec(cls, spec: str = "") -> tuple[str, Geometry | None, dict[str, dict[str, Any]]]:
        """``(preset, geometry, overrides)`` of a chip spec, every part checked; builds nothing
        (:func:`emulator.spec.parse_spec`)."""
        return spec_grammar.parse_spec(spec)

    @classmethod
    def from_spec(cls, spec: str = "", *, seed: int | None = None, device: str = "cpu") -> EmulatedChip:
        """Build from a chip spec (see :meth:`parse_spec`), e.g. ``hermes,cores=4,noise.fast_mvm_scale=3``."""
        preset, geometry, overrides = cls.parse_spec(spec)
        return cls(preset, seed=0 if seed is None else seed, device=device, geometry=geometry,
                   overrides=overrides or None)

    @classmethod
    def resume_spec(cls, spec: str, info: dict[str, Any]) -> str:
        """``spec`` with the recorded numerics pinned (:func:`emulator.spec.resume_spec`)."""
        return spec_grammar.resume_spec(spec, info)

    @property
    def journal_result_dtypes(self) -> dict[str, str]:
        """Result tables a run file may store narrower (hil.journal): MVM outputs fit int16 while the
        counters have at most 15 bits (P - N of 12-bit counters: [-4095, 4095]; LDPU outputs int8)."""
        return {"mvm.y": "<i2"} if self.preset.adc.counter_bits <= 15 else {}

    @property
    def matmul_dtype(self) -> str:
        """The dtype the MVM matmuls run in ('float32' or 'bfloat16'), resolved at construction."""
        return str(self._w_diff.dtype).removeprefix("torch.")

    @property
    def info(self) -> ChipInfo:
        return ChipInfo(
            backend="emulator",
            name=f"emulated {self.preset.name} chip",
            serial=f"seed={self.seed}",
            details={"preset": self.preset.model_dump(mode="json"), "device": str(self.device), "seed": self.seed,
                     "numerics": {"matmul_dtype": self.matmul_dtype, "noise_dtype": str(self._w_var.dtype).removeprefix("torch."),
                                  "adc_chain": self._adc_chain}},
        )

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        return self._t

    def _sleep(self, seconds: float) -> None:
        self._t += seconds

    def _advance_ns(self, ns: float) -> None:
        self._t += ns * 1e-9

    # ------------------------------------------------------------------ programming
    def _apply_pulses(self, batch: PulseBatch) -> None:
        g = self.geometry
        flat = ((batch.core * g.n_rows + batch.row) * g.n_cols + batch.col) * g.n_devices + batch.device
        # Time: write heads of all cores work in parallel; a core needs ceil(n / heads) pulse slots.
        per_core = np.bincount(batch.core, minlength=g.n_cores)
        slots = int(np.ceil(per_core.max() / self.preset.timing.write_heads_per_core))
        self._advance_ns(slots * (float(batch.width_ns.max()) + self.preset.timing.pulse_overhead_ns))
        t_end = self._t
        # Several pulses on one device act in order: apply them in rounds of distinct devices.
        order = np.argsort(flat, kind="stable")
        sorted_flat = flat[order]
        first = np.r_[0, np.flatnonzero(np.diff(sorted_flat)) + 1]
        rank = np.empty_like(flat)
        rank[order] = np.arange(flat.size) - np.repeat(first, np.diff(np.r_[first, flat.size]))
        gv, sv, nv, qv, tv = (t.view(-1) for t in (self._g, self._g_set, self._nu, self._q, self._tp))
        t0v, kv = self._t0.view(-1), self._k_slow.view(-1)
        model = self._model
        n_rounds = int(rank.max()) + 1
        # The pulses of each round, ascending within it, from one sort (not a scan of the batch per round).
        by_round = np.argsort(rank, kind="stable")
        bounds = np.r_[0, np.cumsum(np.bincount(rank, minlength=n_rounds))]
        for r in range(n_rounds):
            sel = by_round[bounds[r] : bounds[r + 1]] if n_rounds > 1 else slice(None)
            idx = torch.from_numpy(flat[sel]).to(self.device)

            def col(a: np.ndarray, sel: Any = sel) -> torch.Tensor:
                return torch.from_numpy(np.ascontiguousarray(a[sel])).to(self.device)

            with torch.no_grad():
                old = gv[idx]
                new, changed = pulse_response(
                    old, sv[idx], col(batch.kind.astype(np.int64)), col(batch.amplitude_ua).float(),
                    col(batch.width_ns).float(), self.preset, self._gen, model,
                )
                gv[idx] = new
                nu = draw_nu(new, self.preset, self._gen, model)  # drawn for every pulse (fixed stream use)
                q = read_noise_q(new, self.preset, model)
                if not bool(changed.all()):  # pulses below the effect threshold keep their device's state
                    idx, nu, q = idx[changed], nu[changed], q[changed]
                nv[idx] = nu
                qv[idx] = q
                tv.index_fill_(0, idx, t_end)
                t0v.index_fill_(0, idx, model.t0_s)
                # A re-programmed device starts a new slow 1/f epoch; epoch -1 makes its next use draw it.
                kv.index_fill_(0, idx, -1)
        touched = np.flatnonzero(per_core)
        self._mark_dirty(flat // g.n_devices)
        self._tp_max[touched] = t_end

    def program_conductances(self, cores: Any, g_us: Any) -> None:
        """Statistical fast path (emulator only): set devices of ``cores`` as if iteratively programmed
        to ``g_us`` [uS], shape (n_sel, rows, cols, devices); noise from the preset's sigma_prog fit,
        nu drawn at the target. Takes no chip time (it models a finished programming run)."""
        g = self.geometry
        cores_a = np.atleast_1d(np.asarray(cores, dtype=np.int64))
        if cores_a.min() < 0 or cores_a.max() >= g.n_cores:
            raise ChipInputError(f"cores={cores_a.tolist()} out of range; allowed [0, {g.n_cores - 1}].")
        target = torch.as_tensor(np.asarray(g_us, dtype=np.float32), device=self.device)
        want = (cores_a.size, g.n_rows, g.n_cols, g.n_devices)
        if tuple(target.shape) != want:
            raise ChipInputError(f"g_us has shape {tuple(target.shape)}; expected {want}.")
        if not torch.isfinite(target).all() or target.min() < 0 or target.max() > 2 * self.preset.device.set_g_us:
            raise ChipInputError(
                f"g_us must be finite and in [0, {2 * self.preset.device.set_g_us}] uS; got "
                f"[{float(target.min())}, {float(target.max())}]."
            )
        idx = torch.from_numpy(cores_a).to(self.device)
        with torch.no_grad():
            prog = statistical_program(target, self.preset, self._gen, self._model)
            self._g[idx] = prog
            self._nu[idx] = draw_nu(target, self.preset, self._gen, self._model)
            self._q[idx] = read_noise_q(prog, self.preset, self._model)
            self._tp[idx] = self._t
            self._t0[idx] = self._model.t0_s
            self._k_slow[idx] = -1  # a new slow 1/f epoch, drawn when the devices are next used
        self._invalidate(cores_a)
        self._tp_max[cores_a] = self._t

    def program_weights(self, cores: Any, g_weight_us: Any, devices_per_weight: int = 1) -> None:
        """Statistical fast path at the weight level (emulator only).

        ``g_weight_us`` (n_sel, rows, cols): signed unit-cell conductance G+ - G- [uS]. Positive weights
        go to the G+ devices, negative ones to G-, the other polarity stays at 0 uS (RESET). With
        ``devices_per_weight=2`` (HERMES two-device programming) both devices of the polarity hold half.
        Where the physics model has a pair fit (``hermes``: [AIHW] HermesNoiseModel num_devices=2, g_max
        2 x 10.35 uS, t0 300 s) the weight follows it: the pair's programming noise is split equally over
        the two devices, both share one nu ("as if both devices hold the same conductance") and the pair's
        t0, and each device's read noise is sqrt(2) x the pair's Q_s, so that the two independent device
        noises add up to the pair fit's read noise. Without a pair fit (``pcm-like``) each device is
        programmed on its own at half the weight.
        """
        g = self.geometry
        w = np.asarray(g_weight_us, dtype=np.float32)
        cores_a = np.atleast_1d(np.asarray(cores, dtype=np.int64))
        if devices_per_weight not in (1, 2):
            raise ChipInputError(f"devices_per_weight={devices_per_weight!r}; allowed 1 or 2.")
        if w.shape != (cores_a.size, g.n_rows, g.n_cols):
            raise ChipInputError(f"g_weight_us has shape {w.shape}; expected {(cores_a.size, g.n_rows, g.n_cols)}.")
        half = g.n_devices // 2
        target = np.zeros((*w.shape, g.n_devices), np.float32)
        if devices_per_weight == 1:
            target[..., 0], target[..., half] = np.clip(w, 0, None), np.clip(-w, 0, None)
            self.program_conductances(cores_a, target)
            return
        pair = self._pair
        if pair is None:
            target[..., :half] = np.clip(w, 0, None)[..., None] / 2
            target[..., half:] = np.clip(-w, 0, None)[..., None] / 2
            self.program_conductances(cores_a, target)
            return
        self.program_conductances(cores_a, target)  # validates and RESETs everything first
        nm = self.preset.noise
        with torch.no_grad():
            wt = torch.from_numpy(w).to(self.device)
            mag = wt.abs()
            prog = pair.program(mag, self._gen, nm.prog_noise_scale)
            nu = pair.draw_nu(mag, self._gen, nm.drift_scale)
            q = pair.q_s_us(prog) * math.sqrt(2.0)
            idx = torch.from_numpy(cores_a).to(self.device)
            pos = (wt >= 0)[..., None]
            mine = torch.cat([pos.expand(*w.shape, half), (~pos).expand(*w.shape, g.n_devices - half)], -1)

            def put(state: torch.Tensor, value: torch.Tensor | float) -> None:
                # the weight's devices get the pair's values; the opposite polarity keeps its RESET state
                cur = state[idx]
                val = value[..., None].expand_as(cur) if isinstance(value, torch.Tensor) else value
                state[idx] = torch.where(mine, val, cur)

            put(self._g, prog / 2)
            put(self._nu, nu)
            put(self._q, q)
            put(self._t0, pair.t0_s)
        self._invalidate(cores_a)

    # ------------------------------------------------------------------ ground truth (emulator only)
    def true_conductances(self, cores: Any = None) -> np.ndarray:
        """Noise-free drifted conductances now [uS], shape (n_sel, rows, cols, devices)."""
        idx = self._core_index(cores)
        with torch.no_grad():
            ts = (self._t - self._tp[idx]).float().clamp_min_(0.0)
            return (self._g[idx] * torch.exp(-self._nu[idx] * torch.log1p(ts / self._t0[idx]))).cpu().numpy()

    def true_nu(self, cores: Any = None) -> np.ndarray:
        """Drift exponents of the devices of ``cores``, shape (n_sel, rows, cols, devices)."""
        return self._nu[self._core_index(cores)].cpu().numpy()

    def adc_gains(self, cores: Any = None) -> np.ndarray:
        """Per-column CCO gain A_c [counts/(ns uA)], shape (n_sel, cols)."""
        return self._adc_gain[self._core_index(cores), 0].cpu().numpy()

    def _core_index(self, cores: Any) -> torch.Tensor:
        arr = self._all_cores if cores is None else np.atleast_1d(np.asarray(cores, dtype=np.int64))
        return torch.from_numpy(arr).to(self.device)

    # ------------------------------------------------------------------ verify reads
    def _sync_slow(self, idx: torch.Tensor, epoch: torch.Tensor) -> None:
        """Redraw the slow 1/f normal of devices ``idx`` (flat) that entered a new epoch; such cores'
        cached MVM matrices become stale."""
        kv = self._k_slow.view(-1)
        new = epoch != kv[idx]
        if not bool(new.any()):
            return
        upd = idx[new]
        self._z_slow.view(-1)[upd] = torch.randn(upd.shape, generator=self._slow_gen, device=self.device)
        kv[upd] = epoch[new]
        self._mark_dirty((upd // self.geometry.n_devices).cpu().numpy())

    def _invalidate(self, cores: np.ndarray) -> None:
        """Cores whose cached matrices must be recomputed whole at the next MVM."""
        self._cache_t[cores] = -np.inf
        self._fresh_until = -np.inf

    def _mark_dirty(self, cells: np.ndarray) -> None:
        """Cells (global flat index core x rows x cols) whose cached matrix entries are out of date."""
        self._dirty.reshape(-1)[cells] = True
        self._dirty_cores[np.unique(cells // self._dirty.shape[1])] = True
        self._any_dirty = True

    def _noisy_read(self, flat: np.ndarray) -> torch.Tensor:
        """Drifted conductances with the slow (frozen) and a fresh fast 1/f read noise, flat devices [uS]."""
        idx = torch.from_numpy(flat).to(self.device)
        nm = self.preset.noise
        ts = (self._t - self._tp.view(-1)[idx]).float().clamp_min_(0.0)
        t0 = self._t0.view(-1)[idx]
        log_age = torch.log1p(ts / t0)
        gd = self._g.view(-1)[idx] * torch.exp(-self._nu.view(-1)[idx] * log_age)
        self._sync_slow(idx, slow_epoch(log_age, nm.slow_redraw_frac))
        slow_sd, fast_sd = band_split(self._model, ts + t0, nm.fast_corner_s)
        q = self._q.view(-1)[idx] * nm.read_noise_scale
        slow = (slow_sd * q).mul_(self._z_slow.view(-1)[idx]).mul_(nm.slow_noise_scale)
        g_now = gd.mul(slow.add_(1.0)).clamp_min_(0.0)
        z = torch.randn(gd.shape, generator=self._noise_gens[0], device=self.device)
        return g_now.add_(gd.mul_(q).mul_(fast_sd).mul_(z).mul_(nm.fast_verify_scale))

    def _read_time(self, core: np.ndarray, reads_per_address: int) -> None:
        per_core = np.bincount(core, minlength=self.geometry.n_cores) * reads_per_address
        v = self.preset.verify
        self._advance_ns(math.ceil(per_core.max() / v.parallel_per_core) * v.read_ns)

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        g = self.geometry
        flat = ((core * g.n_rows + row) * g.n_cols + col) * g.n_devices + device
        with torch.no_grad():
            val = self._noisy_read(flat)
            counts = torch.floor(val * self.preset.verify.counts_per_us).clamp_(0, 2**self.preset.adc.counter_bits - 1)
        self._read_time(core, 1)
        return counts.to(torch.int32).cpu().numpy()

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        g = self.geometry
        base = ((core * g.n_rows + row) * g.n_cols + col) * g.n_devices
        flat = (base[:, None] + np.arange(g.n_devices)[None, :]).reshape(-1)
        sign = torch.as_tensor(g.device_sign, dtype=torch.float32, device=self.device)
        top = float(2**self.preset.adc.counter_bits - 1)
        with torch.no_grad():
            val = (self._noisy_read(flat).view(-1, g.n_devices) * sign).sum(-1)
            counts = torch.floor(val * self.preset.verify.counts_per_us).clamp_(-top, top)
        self._read_time(core, 1)
        return counts.to(torch.int32).cpu().numpy()

    # ------------------------------------------------------------------ cached MVM matrices
    def _refresh(self, cores: np.ndarray) -> None:
        """Bring the cached drifted G+ - G-, G+ + G- (with the slow read noise) and the fast read-noise
        variance of ``cores`` up to date.

        A whole core is recomputed when it was programmed by the fast paths, a device entered a new
        slow epoch, or the clock moved past the drift tolerance. Cells whose devices were pulsed or
        got a new slow normal since (``_dirty``) are recomputed alone while the rest of their core is
        still within the tolerance (far cheaper during program-and-verify and GDP, which pulse a
        fraction of the cells between MVMs); with IR drop (column-coupled) their core is recomputed.
        """
        if self._t < self._fresh_until and not self._any_dirty:  # the common case of repeated MVMs
            return
        tol = self.preset.numerics.drift_rel_tol
        age = self._cache_t[cores] - self._tp_max[cores] + self._t0_min
        full = ((self._t - self._cache_t[cores]) > tol * np.maximum(age, 0.0)) | (self._t >= self._slow_next[cores])
        dirty = ~full & self._dirty_cores[cores]
        if dirty.any():
            per_core = self._dirty.shape[1]
            dense = self._dirty[cores].sum(1) > per_core // _DENSE_DIRTY
            promote = dirty & (dense | self.preset.periphery.ir_drop)
            full |= promote
            dirty &= ~promote
        stale = cores[full]
        for start in range(0, stale.size, _CORE_CHUNK):
            chunk = stale[start:start + _CORE_CHUNK]
            cs = torch.from_numpy(chunk).to(self.device)
            with torch.no_grad():
                wp, wn, var, rem = self._cell_terms(lambda t, cs=cs: t[cs], lambda t, v, cs=cs: t.__setitem__(cs, v))
                self._slow_next[chunk] = self._t + rem.view(len(chunk), -1).amin(1).double().cpu().numpy()
                if self.preset.periphery.ir_drop:
                    wp, wn = self._ir_drop(wp, wn)
                wd, ws, wv = (wp - wn).to(self._w_diff.dtype), (wp + wn).to(self._w_sum.dtype), var.to(self._w_var.dtype)
                self._w_diff[cs], self._w_sum[cs], self._w_var[cs] = wd, ws, wv
                if self._w3 is not None:
                    self._w3[cs] = torch.cat([wd, ws, wv], -1).transpose(1, 2)
        self._cache_t[stale] = self._t
        self._dirty[stale] = False
        self._dirty_cores[stale] = False
        if dirty.any():
            self._refresh_cells(cores[dirty])
        # Until when every core stays valid without a recompute (a lower bound; any change resets it).
        all_age = np.maximum(self._cache_t - self._tp_max + self._t0_min, 0.0)
        self._fresh_until = float(np.minimum(self._cache_t + tol * all_age, self._slow_next).min())
        self._any_dirty = bool(self._dirty_cores.any())

    def _refresh_cells(self, cores: np.ndarray) -> None:
        """Recompute the dirty cells of ``cores`` (whose other cells are still valid) at the current time."""
        g = self.geometry
        per_core = g.n_rows * g.n_cols
        rows = self._dirty[cores]
        local = np.nonzero(rows)
        cell = cores[local[0]] * per_core + local[1]  # global cell index (core, row, col), ascending
        ci = torch.from_numpy(cell).to(self.device)
        d = g.n_devices

        def take(t: torch.Tensor) -> torch.Tensor:
            return t.view(-1, d)[ci]

        def put(t: torch.Tensor, v: torch.Tensor) -> None:
            t.view(-1, d)[ci] = v

        with torch.no_grad():
            wp, wn, var, rem = self._cell_terms(take, put)
            wd, ws, wv = (wp - wn).to(self._w_diff.dtype), (wp + wn).to(self._w_sum.dtype), var.to(self._w_var.dtype)
            self._w_diff.view(-1)[ci], self._w_sum.view(-1)[ci], self._w_var.view(-1)[ci] = wd, ws, wv
            if self._w3 is not None:
                # the stacked transposed matrices (cores, 3 cols, rows): cell (k, r, c) -> (k 3C + c) R + r
                c, r = g.n_cols, g.n_rows
                k, rc = cell // per_core, cell % per_core
                base = torch.from_numpy((k * 3 * c + rc % c) * r + rc // c).to(self.device)
                flat = self._w3.view(-1)
                flat[base], flat[base + c * r], flat[base + 2 * c * r] = wd, ws, wv
        core_of = cell // per_core
        nxt = np.full(g.n_cores, np.inf)
        np.minimum.at(nxt, core_of, self._t + rem.amin(-1).double().cpu().numpy())
        self._slow_next = np.minimum(self._slow_next, nxt)
        self._dirty[cores] = False
        self._dirty_cores[cores] = False

    def _cell_terms(self, take: Any, put: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Drifted G+ and G- sums (with the slow read noise), fast-noise variance and time to the next
        slow epoch [s] of the cells that ``take(state)`` gathers (shape (..., devices)); new slow normals
        (devices in a new epoch) are drawn in the gathered order and stored with ``put(state, value)``."""
        nm = self.preset.noise
        half = self.geometry.n_devices // 2
        ts = (self._t - take(self._tp)).float().clamp_min_(0.0)
        t0 = take(self._t0)
        log_age = torch.log1p(ts.div(t0))
        gd = take(self._g).mul_(torch.exp(log_age.mul(take(self._nu)).neg_()))
        epoch = slow_epoch(log_age, nm.slow_redraw_frac)
        del log_age
        k_old = take(self._k_slow)
        z = take(self._z_slow)
        new = epoch != k_old
        n_new = int(new.sum())
        if n_new == z.numel():  # all devices in a new epoch (after programming): no masked scatter
            z = torch.randn(z.shape, generator=self._slow_gen, device=self.device)
        elif n_new:
            z[new] = torch.randn(n_new, generator=self._slow_gen, device=self.device)
        if n_new:
            put(self._z_slow, z)
            put(self._k_slow, epoch)
        del k_old, new
        age = ts.add_(t0)
        # Time to the next slow epoch: t0 (1 + f)^(k+1) - a, 1e-5 late so that the float32
        # epoch above has turned by then (or every MVM in between would recompute the core).
        rem = torch.exp((epoch.float() + 1.0).mul_(math.log1p(nm.slow_redraw_frac))).mul_(t0).mul_(1.0 + 1e-5).sub_(age)
        del epoch, t0
        if self._t0_min >= nm.fast_corner_s:  # always for the shipped presets: one fast factor
            fast_sd: torch.Tensor | float = math.sqrt(self._model.log_band(nm.fast_corner_s))
            slow_sd = self._model.log_band(age).sub_(fast_sd**2).clamp_min_(0.0).sqrt_()
        else:
            slow_sd, fast_sd = band_split(self._model, age, nm.fast_corner_s)
        del age
        gq = take(self._q).mul_(gd).mul_(nm.read_noise_scale)
        var = (gq * (fast_sd * nm.fast_mvm_scale)).square_().sum(-1)
        g_now = gd.add_(gq.mul_(slow_sd).mul_(z).mul_(nm.slow_noise_scale)).clamp_min_(0.0)
        del slow_sd, gq, z
        return g_now[..., :half].sum(-1), g_now[..., half:].sum(-1), var, rem

    def _ir_drop(self, wp: torch.Tensor, wn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First-order static IR drop, worst case of full inputs: the bit-line voltage at row r sags by
        R_wire x (r + 1) x the column's summed current (ASSUMPTION). ``wp``/``wn``: (n, rows, cols)."""
        per = self.preset.periphery
        rows = torch.arange(1, self.geometry.n_rows + 1, device=self.device, dtype=wp.dtype)[None, :, None]
        load = (wp + wn).sum(1, keepdim=True) * 1e-6 * per.ir_drop_ohm_per_cell
        att = 1.0 / (1.0 + rows * load)
        return wp * att, wn * att

    # ------------------------------------------------------------------ MVM
    def validate_mvm(self, x: Any, cores: Any, output: str, mode: str) -> tuple[Any, np.ndarray]:
        """As :meth:`hil.Chip.validate_mvm`; on a GPU one call may move up to 2**30 values (a full
        chip at batch 65,536: about 40 GiB of temporaries), on the CPU the default 2**28."""
        limit = MAX_GPU_MVM_VALUES if self.device.type == "cuda" else args.MAX_MVM_VALUES
        return args.mvm(self.geometry, x, cores, output, mode, max_values=limit)

    # ------------------------------------------------------------------ LDPU
    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None:
        ci = torch.from_numpy(cores).to(self.device)
        self._ldpu_scale[ci] = torch.from_numpy(regs.scale.copy()).to(self.device)
        self._ldpu_offset[ci] = torch.from_numpy(regs.offset.copy()).to(self.device)
        self._ldpu_relu[ci] = torch.from_numpy(regs.relu.copy()).to(self.device)

    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters:
        ci = torch.from_numpy(cores).to(self.device)
        return LdpuRegisters(
            scale=self._ldpu_scale[ci].cpu().numpy(),
            offset=self._ldpu_offset[ci].cpu().numpy(),
            relu=self._ldpu_relu[ci].cpu().numpy(),
        )

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
conductance change is then below nu x tol, far under the read noise).
Full-chip state: 16.7 M devices x 30 bytes + 3 cached matrices = about 0.5 GiB.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from emulator import periphery
from emulator.noise.recurrence import band_split, slow_epoch
from emulator.presets import EmulatorPreset, resolve_preset
from emulator.programming import draw_nu, physics_model, pulse_response, read_noise_q, statistical_program
from hil.chip import Chip, ChipInfo, Geometry, LdpuRegisters, PulseBatch
from hil.errors import ChipInputError

#: Independent random streams for per-MVM noise; fixed so results do not depend on the core count.
_NOISE_STREAMS = 4
#: Most devices one emulated chip holds (four 64-core HERMES chips), checked before allocating.
MAX_DEVICES = 2**26
#: State per device (bytes): conductance, SET level, nu, Q_s, t0 (float32), programming time (float64), slow noise.
BYTES_PER_DEVICE = 36
_CORE_CHUNK = 8  # cores per batch when recomputing cached matrices (bounds temporary memory)


def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read(1 << 16)
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # bfloat16 only where the CPU multiplies it natively (about 3x fp32 there); see docs/emulator.md
        # for the error budget. CUDA runs float32.
        name = "bfloat16" if device.type == "cpu" and _cpu_has_bf16() else "float32"
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


periphery.keep_freed_memory()


class EmulatedChip(Chip):
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
        mdt = _dtype(self.preset.numerics.matmul_dtype, self.device)
        ndt = _dtype(self.preset.numerics.noise_dtype, self.device)
        mat = (g.n_cores, g.n_rows, g.n_cols)
        self._w_diff = torch.zeros(mat, dtype=mdt, device=dev)
        self._w_sum = torch.zeros(mat, dtype=mdt, device=dev)
        self._w_var = torch.zeros(mat, dtype=ndt, device=dev)
        self._cache_t = np.full(g.n_cores, -np.inf)
        self._slow_next = np.zeros(g.n_cores)  # earliest start of a new slow epoch in the core (lower bound)
        self._tp_max = np.zeros(g.n_cores)
        self._all_cores = np.arange(g.n_cores)

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_spec(cls, spec: str = "", *, seed: int | None = None, device: str = "cpu") -> EmulatedChip:
        """Build from a chip spec: ``PRESET[,cores=N][,rows=N][,cols=N]`` (all parts optional)."""
        parts = [p.strip() for p in spec.split(",") if p.strip()]
        preset = "hermes"
        if parts and "=" not in parts[0]:
            preset = parts.pop(0)
        geo: dict[str, int] = {}
        keys = {"cores": "n_cores", "rows": "n_rows", "cols": "n_cols"}
        for part in parts:
            key, _, value = part.partition("=")
            if key not in keys or not value.isdigit():
                raise ChipInputError(f"bad emulator spec part {part!r}; use cores=N, rows=N or cols=N.")
            geo[keys[key]] = int(value)
        geometry = Geometry(**geo) if geo else None
        return cls(preset, seed=0 if seed is None else seed, device=device, geometry=geometry)

    @property
    def info(self) -> ChipInfo:
        return ChipInfo(
            backend="emulator",
            name=f"emulated {self.preset.name} chip",
            serial=f"seed={self.seed}",
            details={"preset": self.preset.model_dump(mode="json"), "device": str(self.device), "seed": self.seed},
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
                nv[idx] = torch.where(changed, draw_nu(new, self.preset, self._gen, model), nv[idx])
                qv[idx] = torch.where(changed, read_noise_q(new, self.preset, model), qv[idx])
                tv[idx] = torch.where(changed, torch.full_like(tv[idx], t_end), tv[idx])
                t0v[idx] = torch.where(changed, torch.full_like(t0v[idx], model.t0_s), t0v[idx])
                # A re-programmed device starts a new slow 1/f epoch; epoch -1 makes its next use draw it.
                kv[idx] = torch.where(changed, torch.full_like(kv[idx], -1), kv[idx])
        touched = np.flatnonzero(per_core)
        self._cache_t[touched] = -np.inf
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
        self._cache_t[cores_a] = -np.inf
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
        self._cache_t[cores_a] = -np.inf

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
        per_core = self.geometry.n_rows * self.geometry.n_cols * self.geometry.n_devices
        hit = torch.bincount(upd // per_core, minlength=self.geometry.n_cores) > 0
        self._cache_t[hit.cpu().numpy()] = -np.inf

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
        """Recompute drifted G+ - G-, G+ + G- (with the slow read noise) and the fast read-noise variance
        of ``cores`` where stale: programmed, a device entered a new slow epoch, or drifted past the tolerance."""
        tol = self.preset.numerics.drift_rel_tol
        age = self._cache_t[cores] - self._tp_max[cores] + self._t0_min
        stale = cores[((self._t - self._cache_t[cores]) > tol * np.maximum(age, 0.0)) | (self._t >= self._slow_next[cores])]
        if stale.size == 0:
            return
        g, nm, per = self.geometry, self.preset.noise, self.preset.periphery
        half = g.n_devices // 2
        for start in range(0, stale.size, _CORE_CHUNK):
            chunk = stale[start:start + _CORE_CHUNK]
            cs = torch.from_numpy(chunk).to(self.device)
            with torch.no_grad():
                tp = self._tp[cs]
                ts = (self._t - tp).float().clamp_min_(0.0)
                del tp
                t0 = self._t0[cs]
                log_age = torch.log1p(ts.div(t0))
                gd = self._g[cs].mul_(torch.exp(log_age.mul(self._nu[cs]).neg_()))
                epoch = slow_epoch(log_age, nm.slow_redraw_frac)
                del log_age
                k_old = self._k_slow[cs]
                z = self._z_slow[cs]
                new = epoch != k_old
                n_new = int(new.sum())
                if n_new == z.numel():  # all devices in a new epoch (after programming): no masked scatter
                    z = torch.randn(z.shape, generator=self._slow_gen, device=self.device)
                elif n_new:
                    z[new] = torch.randn(n_new, generator=self._slow_gen, device=self.device)
                if n_new:
                    self._z_slow[cs] = z
                    self._k_slow[cs] = epoch
                del k_old, new
                age = ts.add_(t0)
                # Time to the next slow epoch: t0 (1 + f)^(k+1) - a, 1e-5 late so that the float32
                # epoch above has turned by then (or every MVM in between would recompute the core).
                rem = torch.exp((epoch.float() + 1.0).mul_(math.log1p(nm.slow_redraw_frac))).mul_(t0).mul_(1.0 + 1e-5).sub_(age)
                self._slow_next[chunk] = self._t + rem.view(len(chunk), -1).amin(1).double().cpu().numpy()
                del rem, epoch, t0
                if self._t0_min >= nm.fast_corner_s:  # always for the shipped presets: one fast factor
                    fast_sd: torch.Tensor | float = math.sqrt(self._model.log_band(nm.fast_corner_s))
                    slow_sd = self._model.log_band(age).sub_(fast_sd**2).clamp_min_(0.0).sqrt_()
                else:
                    slow_sd, fast_sd = band_split(self._model, age, nm.fast_corner_s)
                del age
                gq = self._q[cs].mul_(gd).mul_(nm.read_noise_scale)
                var = (gq * (fast_sd * nm.fast_mvm_scale)).square_().sum(-1)
                g_now = gd.add_(gq.mul_(slow_sd).mul_(z).mul_(nm.slow_noise_scale)).clamp_min_(0.0)
                del slow_sd, gq, z
                wp, wn = g_now[..., :half].sum(-1), g_now[..., half:].sum(-1)
                del g_now
                if per.ir_drop:
                    # First-order static IR drop, worst case of full inputs: the bit-line voltage
                    # at row r sags by R_wire x (r + 1) x the column's summed current (ASSUMPTION).
                    rows = torch.arange(1, g.n_rows + 1, device=self.device, dtype=wp.dtype)[None, :, None]
                    load = (wp + wn).sum(1, keepdim=True) * 1e-6 * per.ir_drop_ohm_per_cell
                    att = 1.0 / (1.0 + rows * load)
                    wp, wn = wp * att, wn * att
                self._w_diff[cs] = (wp - wn).to(self._w_diff.dtype)
                self._w_sum[cs] = (wp + wn).to(self._w_sum.dtype)
                self._w_var[cs] = var.to(self._w_var.dtype)
        self._cache_t[stale] = self._t

    # ------------------------------------------------------------------ MVM
    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        as_numpy = not isinstance(x, torch.Tensor)
        xt = torch.from_numpy(np.array(x, copy=not np.asarray(x).flags.writeable or None, order='C')) if as_numpy else x
        self._refresh(cores)
        all_cores = cores.size == self.geometry.n_cores and bool(np.all(cores == self._all_cores))
        if all_cores:
            wd, ws, wv = self._w_diff, self._w_sum, self._w_var
            gain, off = self._adc_gain, self._adc_offset
        else:
            ci = torch.from_numpy(cores).to(self.device)
            wd, ws, wv = self._w_diff[ci], self._w_sum[ci], self._w_var[ci]
            gain, off = self._adc_gain[ci], self._adc_offset[ci]
        with torch.no_grad():
            counts = self._counts(xt.to(self.device), wd, ws, wv, gain, off, mode, cores)
            timing = self.preset.timing
            self._advance_ns(xt.shape[1] * (timing.mvm_4phase_ns if mode == "4phase" else timing.mvm_1phase_ns))
            if output == "ldpu":
                ci = torch.from_numpy(cores).to(self.device)
                out = periphery.ldpu(counts, self._ldpu_scale[ci], self._ldpu_offset[ci], self._ldpu_relu[ci])
            else:
                out = counts
        return out.cpu().numpy() if as_numpy else out

    def _counts(self, x: torch.Tensor, wd: torch.Tensor, ws: torch.Tensor, wv: torch.Tensor,
                gain: torch.Tensor, off: torch.Tensor, mode: str, cores: np.ndarray) -> torch.Tensor:
        """Raw ADC_P - ADC_N counts (int32) of inputs ``x`` (n, B, rows) on the given matrices."""
        xsq = x.to(wv.dtype)
        std = torch.bmm(xsq.mul_(xsq), wv)
        del xsq
        noise = periphery.fill_normal(torch.empty(std.shape, device=std.device), self._noise_gens)
        noise.mul_(std.sqrt_())
        del std
        xf = x.to(wd.dtype)
        window = self.preset.periphery.window_ns
        if mode == "4phase":
            d = noise.add_(torch.bmm(xf, wd))
            s = torch.bmm(xf.abs_(), ws).float()
            del xf
            # P = (S + D) / 2 and N = (S - D) / 2: the 1/2 is folded into the charge scale.
            p = s.add(d)
            n = s.sub_(d)
            del d
            cp = periphery.cco_counts(p, 4 * window, gain, off, self.preset, count_window_ns=2 * window)
            cn = periphery.cco_counts(n, 4 * window, gain, off, self.preset, count_window_ns=2 * window)
            return self._output_noise(cp.sub_(cn), cores).to(torch.int32)
        a = self.preset.periphery.polarity_asymmetry
        q = noise.add_(torch.bmm(xf, wd))
        if a > 0:
            q.add_(torch.bmm(xf.clamp_(min=0), wd), alpha=a)
        sign = torch.sign(q)
        c = periphery.cco_counts(q.abs_(), window, gain, off, self.preset)
        return self._output_noise(c.mul_(sign), cores).to(torch.int32)

    def _output_noise(self, counts: torch.Tensor, cores: np.ndarray) -> torch.Tensor:
        """Add the input-independent output noise [counts] per column (frozen pattern or fresh per MVM),
        rounded to whole counts and clipped to the counter range."""
        nm = self.preset.noise
        if nm.output_noise_counts <= 0:
            return counts
        if self._out_frozen is not None:
            pattern = self._out_frozen[torch.from_numpy(cores).to(self.device)]
            counts = counts.add_(pattern)
        else:
            z = periphery.fill_normal(torch.empty(counts.shape, device=counts.device), self._out_gens)
            counts = counts.add_(z.mul_(nm.output_noise_counts))
        top = float(2**self.preset.adc.counter_bits - 1)
        return counts.round_().clamp_(-top, top)

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

"""The emulated chip's MVM datapath: from validated inputs to ADC counts (or LDPU outputs).

:class:`MvmDatapath` is a mixin of :class:`emulator.chip.EmulatedChip`, which owns the state it reads:
the cached matrices (``_w_diff``, ``_w_sum``, ``_w_var`` and their stacked transposed copy ``_w3``,
kept current by ``_refresh``), the per-ADC gain and offset, the LDPU registers, the noise generators
and the chosen ADC chain. Three paths, by a fixed rule on the call's shape and the chain (so results
never depend on timing):

* batch <= :data:`STACK_MAX_BATCH` on the native chain: the whole MVM in C (``emulator/native.py``
  ``mvm_small``: products in float32 from the stacked matrices, then the chain);
* otherwise the products as torch matmuls (:meth:`MvmDatapath._products`: one matmul of the stacked
  inputs up to the same batch, three above it), then the chain (:meth:`MvmDatapath._counts`): native
  (C), compiled (``torch.compile``, large calls only) or eager (in-place float32 chunks);
* then the optional output noise, and the LDPU for ``output='ldpu'``.

Physics and units: ``emulator/periphery.py``; speed choices: docs/emulator.md, deviations 6 and 7.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from emulator import native, periphery
from emulator.presets import EmulatorPreset
from hil.chip import Geometry

#: Up to this batch an MVM does its three products in one matmul of the stacked inputs [x; |x|; x^2]
#: with the stacked matrices [D | S | Var] (reads the matrices once; 3x the arithmetic, which is free
#: while the call is bound by memory and per-call overhead). A fixed rule, so results never depend on
#: timing; both paths compute the same products (they differ in float rounding only).
STACK_MAX_BATCH = 8
#: Elements (cores x batch x cols) per chunk of the ADC chain on CPU: chunks stay in the cache.
_ADC_CHUNK = 1 << 18
#: Outputs (cores x batch x cols) from which an MVM uses the compiled ADC chain where the machine's
#: choice is 'compiled' (a full chip from batch 16): small calls never pay a compilation. Fixed, so
#: a call's path depends on its shape only.
COMPILE_MIN_OUTPUTS = 1 << 18


def _own_float(t: torch.Tensor) -> torch.Tensor:
    """``t`` as a float32 tensor that may be modified: a converted copy, or ``t`` itself when it is
    already float32 and contiguous (the matmul results are fresh tensors nobody else holds)."""
    return t if t.dtype == torch.float32 and t.is_contiguous() else t.float().contiguous()



class MvmDatapath:
    """The MVM methods of :class:`emulator.chip.EmulatedChip` (see the module docstring)."""

    preset: EmulatorPreset
    geometry: Geometry
    device: torch.device
    _w_diff: torch.Tensor
    _w_sum: torch.Tensor
    _w_var: torch.Tensor
    _w3: torch.Tensor | None
    _adc_gain: torch.Tensor
    _adc_offset: torch.Tensor
    _adc_chain: str
    _noise_gens: list[torch.Generator]
    _out_gens: list[torch.Generator]
    _out_frozen: torch.Tensor | None
    _native_key: int
    _native_calls: int
    _native_consts: dict[str, tuple[Any, ...]]
    _all_cores: np.ndarray
    _ldpu_scale: torch.Tensor
    _ldpu_offset: torch.Tensor
    _ldpu_relu: torch.Tensor

    # and, from EmulatedChip: _refresh(cores) (bring the cached matrices up to date), _advance_ns(ns)
    # (the virtual clock)

    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        as_numpy = not isinstance(x, torch.Tensor)
        if as_numpy:
            xa = np.asarray(x)
            if xa.ndim == 3 and xa.shape[0] > 1 and xa.strides[0] == 0:  # shared inputs: convert one copy
                xt = torch.from_numpy(np.array(xa[0]))[None].expand(xa.shape)
            else:
                xt = torch.from_numpy(xa if xa.flags.writeable else xa.copy())
        else:
            xt = x
        self._refresh(cores)
        all_cores = cores.size == self.geometry.n_cores and bool(np.all(cores == self._all_cores))
        stacked = self._w3 is not None and xt.shape[1] <= STACK_MAX_BATCH
        mats: tuple[torch.Tensor, ...] = (self._w3,) if stacked else (self._w_diff, self._w_sum, self._w_var)  # type: ignore[assignment]
        # The native chain does a small batch whole in C, products included (no matrix gathered).
        small = (stacked and self._adc_chain == "native" and xt.device.type == "cpu"
                 and max(self.geometry.n_rows, self.geometry.n_cols) <= native.SMALL_MAX_RC)
        gain, off = self._adc_gain, self._adc_offset
        if not all_cores and not small:
            first = int(cores[0])
            if bool(np.all(np.diff(cores) == 1)):  # a run of cores (a layer's tiles): views, no copy
                mats = tuple(m[first:first + cores.size] for m in mats)
                gain, off = gain[first:first + cores.size], off[first:first + cores.size]
            else:
                ci = torch.from_numpy(cores).to(self.device)
                mats = tuple(m[ci] for m in mats)
                gain, off = gain[ci], off[ci]
        with torch.no_grad():
            if small:
                consts = self._native_consts.get(mode)
                if consts is None:  # the ADC constants are fixed at manufacture: once per mode
                    consts = self._native_consts[mode] = periphery.native_constants(gain, off, self.preset, mode)
                asym = self.preset.periphery.polarity_asymmetry if mode == "1phase" else 0.0
                counts = native.mvm_small(xt, torch.from_numpy(cores), self._w3, *consts[:2], mode == "4phase", asym,
                                          *consts[2:], self._native_key, self._native_nonce())
                counts = self._native_output_noise(counts, cores)
            else:
                counts = self._counts(xt.to(self.device), mats, gain, off, mode, cores)
            timing = self.preset.timing
            self._advance_ns(xt.shape[1] * (timing.mvm_4phase_ns if mode == "4phase" else timing.mvm_1phase_ns))
            if output == "ldpu":
                ci = torch.from_numpy(cores).to(self.device)
                out = periphery.ldpu(counts, self._ldpu_scale[ci], self._ldpu_offset[ci], self._ldpu_relu[ci])
            else:
                out = counts
        return out.cpu().numpy() if as_numpy else out

    def _products(self, x: torch.Tensor, mats: tuple[torch.Tensor, ...],
                  mode: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """The matmuls of an MVM of inputs ``x`` (n, B, rows): ``(d, s, var)`` (n, B, cols) in the matmul
        dtype (the ADC chain converts them to float32).

        d = x (G+ - G-) [4-phase; 1-phase: x G + a x+ G], s = |x| (G+ + G-) (4-phase only, else None),
        var = x^2 Var(G) of the fast read noise. ``mats``: (stacked [D | S | Var],) for one matmul of the
        stacked inputs, or (D, S, Var). Inputs are exact in bf16 (|x| <= 127); x^2 is rounded there
        (0.4 %, it only scales the noise).
        """
        c = self.geometry.n_cols
        b = x.shape[1]
        xf = x.to(mats[0].dtype)
        a = self.preset.periphery.polarity_asymmetry
        if mode == "4phase":
            second = xf.abs()
        elif a > 0:
            second = xf.clamp(min=0)
        else:
            second = None
        if len(mats) == 1:
            parts = [xf, xf.square()] if second is None else [xf, second, xf.square()]
            # (n, 3 C, rows) @ (n, rows, k B) -> transposed (n, k B, 3 C); the k diagonal blocks are used
            y = torch.bmm(mats[0], torch.cat(parts, 1).transpose(1, 2)).transpose(1, 2)
            d = y[:, :b, :c]
            if second is None:
                return d, None, y[:, b:, 2 * c :]
            var = y[:, 2 * b :, 2 * c :]
            if mode == "4phase":
                return d, y[:, b : 2 * b, c : 2 * c], var
            return d.float().add_(y[:, b : 2 * b, :c], alpha=a), None, var
        wd, ws, wv = mats
        var = torch.bmm((xf if wv.dtype == xf.dtype else x.to(wv.dtype)).square(), wv)
        d = torch.bmm(xf, wd)
        if mode == "4phase":
            return d, torch.bmm(second, ws), var
        if second is not None:
            d = d.float().add_(torch.bmm(second, wd), alpha=a)
        return d, None, var

    def _counts(self, x: torch.Tensor, mats: tuple[torch.Tensor, ...],
                gain: torch.Tensor, off: torch.Tensor, mode: str, cores: np.ndarray) -> torch.Tensor:
        """Raw ADC_P - ADC_N counts (int32) of inputs ``x`` (n, B, rows) on the given matrices.

        The elementwise ADC chain runs in place on chunks of cores that fit in the cache (on CPU);
        the fast read noise is one fill of the whole output from the seeded streams, so the chunking
        does not change the draws.
        """
        d, s, var = self._products(x, mats, mode)
        if self._adc_chain == "native":
            counts = periphery.adc_native(d, s, var, gain, off, self.preset, mode, self._native_key, self._native_nonce())
            return self._native_output_noise(counts, cores)
        noise = periphery.fill_normal(torch.empty(d.shape, device=d.device), self._noise_gens)
        n, b, c = d.shape
        if self._adc_chain == "compiled" and n * b * c >= COMPILE_MIN_OUTPUTS:
            plain = self.preset.noise.output_noise_counts <= 0  # no output noise: the kernel writes int32
            fused = periphery.fused_adc(self.preset, mode, as_int32=plain)
            d, var = d.contiguous(), var.contiguous()  # strided views (small batch) would specialise the kernel
            counts = fused(d, d if s is None else s.contiguous(), var, noise, gain, off)
            return counts if plain else self._output_noise(counts, cores).to(torch.int32)
        step = n if d.device.type != "cpu" else max(1, _ADC_CHUNK // max(1, b * c))
        out = torch.empty(d.shape, dtype=torch.int32, device=d.device)
        for i in range(0, n, step):
            sl = slice(i, i + step)
            # Work in place on float32 chunks; bf16 products are converted first (mixed-dtype
            # elementwise ops run unvectorised). The noise chunk, once used, is the scratch buffer.
            q = _own_float(d[sl]).addcmul_(noise[sl], var[sl].float().sqrt_())  # signal + fast read noise
            if mode == "4phase":
                counts = periphery.adc_4phase(_own_float(s[sl]), q, gain[sl], off[sl], self.preset, scratch=noise[sl])
            else:
                counts = periphery.adc_1phase(q, gain[sl], off[sl], self.preset, scratch=noise[sl])
            out[sl] = self._output_noise(counts, cores[sl])
        return out

    def _native_nonce(self) -> int:
        """This call's counter half of the native chain's generator: the number of native-chain MVMs
        before it (so a chip's draws follow from its seed and its calls; a replay or resume makes the
        same calls in the same order)."""
        self._native_calls += 1
        return self._native_calls

    def _native_output_noise(self, counts: torch.Tensor, cores: np.ndarray) -> torch.Tensor:
        """:meth:`_output_noise` on the native chain's int32 counts (a no-op without output noise)."""
        if self.preset.noise.output_noise_counts <= 0:
            return counts
        return self._output_noise(counts.float(), cores).to(torch.int32)

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

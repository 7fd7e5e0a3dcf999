"""Periphery of a core: the MVM datapath from PWM inputs to ADC counts and LDPU outputs.

Charges are computed as matmuls of the PWM pulse widths (ns) with conductances (uS); times the
read voltage (V) they are in fC (uA ns). The MVM keeps four facts of the chip:

* 4-phase mode: four 128 ns windows (+x G+, +x G-, -x G+, -x G-), all devices read at one polarity.
  Counter ADC_P integrates the (+x G+) and (-x G-) windows, ADC_N the other two. Both totals come
  from two matmuls: D = x (G+ - G-) and S = |x| (G+ + G-); P = (S + D)/2, N = (S - D)/2.
* 1-phase mode: one 128 ns window, all combinations at once; positive inputs are read at V+ where
  the PCM conductance is (1 + a) times higher (polarity asymmetry a): Q = x G + a x+ G, one counter
  counts depending on the sign of the net current.
* The CCO transfer f(i) = A_c i / (1 + B i) + C_c (counts/ns, i in uA, per-ADC gain A_c with 7 %
  spread), saturating at ``i_sat_ua``, applied to the window-mean current of each counter: exact for
  the linear part; the PWM staircase within a window and the split of a counter over its two windows
  are averaged (error second order in B, documented choice for speed). Counters floor and clip to
  12 bits.
* Read noise is recurrent: a fresh Gaussian per output with variance x^2 @ Var(G) (one matmul; no
  device is sampled).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from emulator.presets import EmulatorPreset

_POOL: ThreadPoolExecutor | None = None


def fill_normal(out: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """Fill ``out`` with N(0, 1) samples, one chunk per generator in parallel threads on CPU.

    torch's CPU normal_ is single-threaded; chunks with their own seeded generators keep the
    result deterministic and use every core.
    """
    global _POOL
    flat = out.view(-1)
    if out.device.type != "cpu" or len(gens) == 1 or flat.numel() < (1 << 18):
        return flat.normal_(generator=gens[0]).view_as(out)
    chunks = flat.chunk(len(gens))
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=len(gens), thread_name_prefix="hil-rng")
    list(_POOL.map(lambda cg: cg[0].normal_(generator=cg[1]), zip(chunks, gens, strict=False)))
    return out


def cco_counts(charge: torch.Tensor, charge_window_ns: float, gain: torch.Tensor, offset: torch.Tensor,
               preset: EmulatorPreset, count_window_ns: float | None = None,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Counter values (float, floored, clipped to the counter) of one ADC counter.

    ``charge`` [uS LSB] is turned into the mean current i = charge x V_read x ns/LSB /
    ``charge_window_ns`` [uA], clipped to [0, i_sat]; the counter integrates
    f(i) = A_c i / (1 + B i) + C_c [counts/ns] over ``count_window_ns`` (default the same).
    Works in place on ``charge`` (returned); ``scratch`` (same shape, float32) holds 1 + B i, else a
    new tensor. ``gain``/``offset``: (n, 1, n_cols) in counts/(ns uA), counts/ns. The clip is applied
    to the charge (at i_sat / k) and the scale k folded into the gain.
    """
    adc, per = preset.adc, preset.periphery
    t = charge_window_ns if count_window_ns is None else count_window_ns
    k = per.v_read_v * per.pwm_ns_per_lsb / charge_window_ns  # uA per charge unit
    c = charge.clamp_(0.0, adc.i_sat_ua / k)
    if adc.nonlinearity_per_ua > 0:
        den = torch.mul(c, adc.nonlinearity_per_ua * k, out=scratch).add_(1.0)  # 1 + B i
        f = c.mul_(gain * (k * t)).div_(den)
    else:
        f = c.mul_(gain * (k * t))
    if _has_offset(preset):
        f.add_(offset * t)
    return f.floor_().clamp_(0.0, float(2**adc.counter_bits - 1))


def _has_offset(preset: EmulatorPreset) -> bool:
    return preset.adc.offset_ghz != 0 or preset.adc.offset_sigma_ghz != 0


def adc_4phase(s: torch.Tensor, d: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor,
               preset: EmulatorPreset, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """ADC_P - ADC_N (float counts) of a 4-phase MVM from S = |x| (G+ + G-) and D = x (G+ - G-)
    (read noise included) [uS LSB]: P = (S + D)/2 over windows 1 and 4, N = (S - D)/2 over 2 and 3.
    The 1/2 is folded into the charge scale (4 windows). In place: ``s`` becomes P, ``d`` N (float32)."""
    window = preset.periphery.window_ns
    n = torch.sub(s, d, out=d)  # S - D
    p = s.add_(s).sub_(n)  # 2 S - (S - D) = S + D, without another buffer
    cp = cco_counts(p, 4 * window, gain, offset, preset, count_window_ns=2 * window, scratch=scratch)
    cn = cco_counts(n, 4 * window, gain, offset, preset, count_window_ns=2 * window, scratch=scratch)
    return cp.sub_(cn)


def adc_1phase(q: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor, preset: EmulatorPreset,
               scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Signed counts of a 1-phase MVM from its net charge ``q`` [uS LSB] (read noise included): one
    counter counts |q|, the sign of the net current says which. ``q`` is overwritten."""
    sign = torch.sign(q)
    return cco_counts(q.abs_(), preset.periphery.window_ns, gain, offset, preset, scratch=scratch).mul_(sign)


def adc_reference(d: torch.Tensor, s: torch.Tensor, var: torch.Tensor, noise: torch.Tensor, gain: torch.Tensor,
                  offset: torch.Tensor, preset: EmulatorPreset, mode: str) -> torch.Tensor:
    """The whole ADC chain as pure torch ops, from the matmul products to float counts (before the
    output noise): q = d + noise sqrt(var), then :func:`adc_4phase` (``s`` used) or :func:`adc_1phase`.

    The same formulas as the eager path, written without in-place ops so that ``torch.compile``
    fuses them into one loop (:func:`fused_adc`); also the reference the tests compare both with.
    """
    adc, per = preset.adc, preset.periphery
    window = per.window_ns
    q = d.float() + noise * var.float().sqrt()
    top = float(2**adc.counter_bits - 1)

    def cco(charge: torch.Tensor, charge_window_ns: float, t: float) -> torch.Tensor:
        k = per.v_read_v * per.pwm_ns_per_lsb / charge_window_ns
        c = charge.clamp(0.0, adc.i_sat_ua / k)
        f = c * (gain * (k * t))
        if adc.nonlinearity_per_ua > 0:
            f = f / (1.0 + c * (adc.nonlinearity_per_ua * k))
        if _has_offset(preset):
            f = f + offset * t
        return f.floor().clamp(0.0, top)

    if mode == "4phase":
        sf = s.float()
        return cco(sf + q, 4 * window, 2 * window) - cco(sf - q, 4 * window, 2 * window)
    return cco(q.abs(), window, window) * torch.sign(q)


def adc_native(d: torch.Tensor, s: torch.Tensor | None, var: torch.Tensor, gain: torch.Tensor, offset: torch.Tensor,
               preset: EmulatorPreset, mode: str, key: int, nonce: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    """The ADC chain of :func:`adc_reference` with the fast read noise drawn inside, as int32 counts,
    by the C loop of ``emulator/adc_kernel.c`` (``emulator/native.py``; CPU only). ``key``/``nonce``:
    the generator's key and this call's nonce; ``noise`` (tests) replaces the generator, and then the
    counts equal :func:`adc_reference`'s but for float rounding at a count boundary."""
    from emulator import native

    gk, ot, clip_hi, bk, top = native_constants(gain, offset, preset, mode)
    return native.adc_counts(d, s if mode == "4phase" else None, var, gk, ot, mode == "4phase", clip_hi, bk, top,
                             key, nonce, noise)


def native_constants(gain: torch.Tensor, offset: torch.Tensor, preset: EmulatorPreset,
                     mode: str) -> tuple[torch.Tensor, torch.Tensor, float, float, float]:
    """The native chain's constants, the same float32 values :func:`cco_counts` computes: gain k t and
    offset t (n, C) [counts per charge unit, counts], the charge clip i_sat / k, B k and the counter's
    top [counts] for ``mode``'s windows."""
    adc, per = preset.adc, preset.periphery
    window = per.window_ns
    charge_window, t = (4 * window, 2 * window) if mode == "4phase" else (window, window)
    k = per.v_read_v * per.pwm_ns_per_lsb / charge_window
    n, c = gain.shape[0], gain.shape[-1]
    gk = (gain * (k * t)).reshape(n, c).float()
    ot = (offset * t).reshape(n, c).float() if _has_offset(preset) else torch.zeros((n, c))
    bk = adc.nonlinearity_per_ua * k if adc.nonlinearity_per_ua > 0 else 0.0
    return gk, ot, adc.i_sat_ua / k, bk, float(2**adc.counter_bits - 1)


_FUSED: dict[tuple[str, str], Any] = {}


def fused_adc(preset: EmulatorPreset, mode: str, as_int32: bool = False) -> Any:
    """:func:`adc_reference` for ``preset`` and ``mode`` compiled by ``torch.compile`` (one fused loop
    over the outputs; dynamic shapes, so one compilation serves every batch); ``as_int32``: the
    kernel also casts the (whole-number) counts to int32. Cached per process; the first call
    compiles (seconds; inductor keeps a disk cache for later processes)."""
    key = (preset.model_dump_json(include={"adc", "periphery"}), mode, as_int32)
    fn = _FUSED.get(key)
    if fn is None:
        # One code object serves every preset, mode and dtype: allow that many specialisations
        # (past the limit dynamo would run the chain unfused, correct but slow).
        cfg = torch._dynamo.config
        cfg.recompile_limit = max(cfg.recompile_limit, 64)
        cfg.accumulated_recompile_limit = max(cfg.accumulated_recompile_limit, 256)

        def chain(d: torch.Tensor, s: torch.Tensor, var: torch.Tensor, noise: torch.Tensor,
                  gain: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
            counts = adc_reference(d, s, var, noise, gain, offset, preset, mode)
            return counts.to(torch.int32) if as_int32 else counts

        fn = _FUSED[key] = torch.compile(chain, dynamic=True)
    return fn


def ldpu(counts: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, relu: torch.Tensor) -> torch.Tensor:
    """LDPU: int8(round(relu?(scale * counts + offset))) with FP16 rounding after each FMA step.

    ``counts`` (n, B, C) int32; ``scale``/``offset`` (n, C) float16; ``relu`` (n,) bool.
    """
    y = (counts.float() * scale.float()[:, None, :]).half().float()
    y = (y + offset.float()[:, None, :]).half().float()
    y = torch.where(relu[:, None, None] & (y < 0), torch.zeros_like(y), y)
    return torch.round(y).clamp_(-128, 127).to(torch.int8)


def keep_freed_memory() -> None:
    """Ask glibc to keep freed large blocks for reuse instead of returning them to the OS.

    An MVM at batch 1024 creates several 64 MiB temporaries; with glibc's defaults each is a fresh
    mmap whose page faults cost more than the arithmetic on it. Set HIL_KEEP_FREED_MEMORY=0 to opt out.
    """
    import ctypes
    import os
    import sys

    if os.environ.get("HIL_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    # mallopt takes a C int: 1 << 34 (this call's value until 2026-12) wrapped to 0, trimming the
    # heap on every free, so each large temporary was fresh pages again (8,000 faults per 32 MiB).
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 2**31 - 1)

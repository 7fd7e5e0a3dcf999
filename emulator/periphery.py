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
               preset: EmulatorPreset, count_window_ns: float | None = None) -> torch.Tensor:
    """Counter values (float, floored, clipped to the counter) of one ADC counter.

    ``charge`` [uS LSB] is turned into the mean current i = charge x V_read x ns/LSB /
    ``charge_window_ns`` [uA]; the counter integrates f(i) over ``count_window_ns`` (default the same).
    Modifies ``charge`` in place. ``gain``/``offset``: (n, 1, n_cols) in counts/(ns uA), counts/ns.
    """
    adc, per = preset.adc, preset.periphery
    t = charge_window_ns if count_window_ns is None else count_window_ns
    i = charge.mul_(per.v_read_v * per.pwm_ns_per_lsb / charge_window_ns).clamp_(0.0, adc.i_sat_ua)  # uA
    if adc.nonlinearity_per_ua > 0:
        f = torch.mul(i, gain * t).div_(i.mul_(adc.nonlinearity_per_ua).add_(1.0))
    else:
        f = i.mul_(gain * t)
    if adc.offset_ghz != 0 or adc.offset_sigma_ghz != 0:
        f.add_(offset * t)
    return f.floor_().clamp_(0.0, float(2**adc.counter_bits - 1))


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
    libc.mallopt(m_mmap_threshold, 1 << 30)
    libc.mallopt(m_trim_threshold, 1 << 34)

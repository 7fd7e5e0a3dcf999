"""``hil bench``: speed of the emulator, measured in one run next to plain torch.

Prints one JSON object (``--json``) or a table: full-chip MVMs per second (64 cores x 256 x 256,
8-bit inputs, read noise and ADC model on, per-core inputs) at batch 1, 64 and 1024 as
``chip_mvm_per_s`` (chip MVM calls/s) and ``chip_vectors_per_s`` (calls x batch: input vectors per
core per second, the unit other tools count), a plain torch fp32 batched matmul of the same shapes as
``torch_bmm_per_s``, their ratio, and programming pulses per second as ``pulses_per_s``.
``matmul_dtype`` is the dtype the emulator chose (``emulator/numerics.py``: measured once per machine;
``--probe`` re-measures and rewrites the table first, ``--matmul float32`` pins the exact mode).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from emulator import numerics
from emulator.chip import EmulatedChip
from hil.chip import PulseKind


def _rate(fn: Callable[[], Any], min_time_s: float, min_calls: int = 3) -> float:
    """Calls per second of ``fn`` after one warm-up call."""
    fn()
    n, start = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - start < min_time_s:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def choose_adc_chain(device: torch.device, preset: str, min_time_s: float, *, replace: bool = False) -> dict[str, Any]:
    """Measure the ADC chains (eager, compiled, native; emulator/numerics.py CHAINS) at batch 64 on a
    full chip (where this machine's table has no choice yet, or ``replace``) and record the fastest in
    the table; another chain than eager must beat it by 5 %.

    Returns ``{"choice": ..., "eager_mvm_per_s": ..., "compiled_mvm_per_s": ..., "native_mvm_per_s": ...}``
    (empty if the table already had a choice). A chain that cannot run here (no compiler) gets 0 and
    its error as ``<chain>_error``.
    """
    entry = numerics.table_entry(device)
    if entry is not None and entry.get("adc_chain") in numerics.CHAINS and not replace:
        return {}
    rates: dict[str, float] = {}
    errors: dict[str, str] = {}
    x = np.random.default_rng(0).integers(-127, 128, (64, 256)).astype(np.int8)
    for chain in numerics.CHAINS:
        try:
            chip = EmulatedChip(preset, seed=0, device=str(device), overrides={"numerics": {"adc_chain": chain}})
            chip.mvm(x)  # compiles
        except Exception as exc:
            rates[chain] = 0.0
            errors[f"{chain}_error"] = repr(exc)[:200]
            continue
        rates[chain] = round(_rate(lambda chip=chip: chip.mvm(x), min_time_s / 2), 2)
        del chip
    best = max(rates, key=lambda k: rates[k])
    choice = best if best != "eager" and rates[best] > 1.05 * rates["eager"] else "eager"
    numerics.set_adc_chain(device, choice, rates, replace=True)
    return {"choice": choice, **{f"{k}_mvm_per_s": v for k, v in rates.items()}, **errors}


def run_bench(batches: tuple[int, ...] = (1, 64, 1024), min_time_s: float = 2.0, device: str = "cpu",
              preset: str = "hermes", seed: int = 0, matmul: str = "auto", probe: bool = False,
              chain: str = "auto") -> dict[str, Any]:
    """Measure and return the benchmark figures (see the module docstring)."""
    probed = None
    if probe:
        probed = numerics.probe(torch.device(device))
        numerics.write_entry(torch.device(device), probed, replace=True)
    chain_probe = choose_adc_chain(torch.device(device), preset, min_time_s, replace=probe)
    pins = {k: v for k, v in (("matmul_dtype", matmul), ("adc_chain", chain)) if v != "auto"}
    overrides = {"numerics": pins} if pins else None
    chip = EmulatedChip(preset, seed=seed, device=device, overrides=overrides)
    g = chip.geometry
    rng = np.random.default_rng(seed)
    w = rng.uniform(-1, 1, (g.n_cores, g.n_rows, g.n_cols)).astype(np.float32)
    target = np.zeros((g.n_cores, g.n_rows, g.n_cols, g.n_devices), np.float32)
    target[..., 0] = np.clip(w, 0, None) * 2.0
    target[..., 2] = np.clip(-w, 0, None) * 2.0
    chip.program_conductances(range(g.n_cores), target)
    result: dict[str, Any] = {
        "device": str(chip.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "shape": [g.n_cores, g.n_rows, g.n_cols],
        "matmul_dtype": chip.matmul_dtype,
        "dtype_probe": probed,
        "adc_chain": chip.info.details["numerics"]["adc_chain"],
        "adc_chain_probe": chain_probe,
        "batches": list(batches),
        "chip_mvm_per_s": {},
        "chip_vectors_per_s": {},
        "torch_bmm_per_s": {},
        "ratio": {},
    }
    dev = chip.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    for b in batches:
        x_np = rng.integers(-127, 128, (g.n_cores, b, g.n_rows)).astype(np.int8)
        x_in: Any = x_np if dev.type == "cpu" else torch.from_numpy(x_np).to(dev)
        xf = torch.from_numpy(x_np.astype(np.float32)).to(dev)
        wf = torch.from_numpy(w).to(dev)

        def chip_call(x_in: Any = x_in) -> None:
            chip.mvm(x_in)
            sync()

        def bmm_call(xf: torch.Tensor = xf, wf: torch.Tensor = wf) -> None:
            torch.bmm(xf, wf)
            sync()

        # Interleave the two measurements so both see the same machine state.
        c1 = _rate(chip_call, min_time_s / 2)
        t1 = _rate(bmm_call, min_time_s / 2)
        c2 = _rate(chip_call, min_time_s / 2)
        t2 = _rate(bmm_call, min_time_s / 2)
        chip_rate, bmm_rate = max(c1, c2), max(t1, t2)
        result["chip_mvm_per_s"][str(b)] = round(chip_rate, 2)
        result["chip_vectors_per_s"][str(b)] = round(chip_rate * b, 1)
        result["torch_bmm_per_s"][str(b)] = round(bmm_rate, 2)
        result["ratio"][str(b)] = round(chip_rate / bmm_rate, 3)
    # Programming pulses: one PARTIAL pulse on every device 0 of 4 full cores per call.
    n_cores = min(4, g.n_cores)
    core, row, col = (a.reshape(-1) for a in np.meshgrid(
        np.arange(n_cores), np.arange(g.n_rows), np.arange(g.n_cols), indexing="ij"))
    amps = rng.uniform(125, 700, core.size)

    def pulse_call() -> None:
        chip.apply_pulses(core, row, col, 0, kind=PulseKind.PARTIAL, amplitude_ua=amps, width_ns=125.0)

    result["pulses_per_s"] = round(_rate(pulse_call, min_time_s / 2) * core.size, 1)
    result["pulses_per_call"] = int(core.size)
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``hil bench``; returns the exit code."""
    ap = argparse.ArgumentParser(prog="hil bench", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--preset", default="hermes")
    ap.add_argument("--batches", default="1,64,1024", help="comma-separated batch sizes")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds per measurement pair")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matmul", default="auto", choices=["auto", *numerics.DTYPES],
                    help="emulator matmul dtype (auto: measured per machine; float32: exact)")
    ap.add_argument("--chain", default="auto", choices=["auto", *numerics.CHAINS],
                    help="emulator ADC chain (auto: measured per machine; eager: torch's generator)")
    ap.add_argument("--probe", action="store_true",
                    help="re-measure this machine's table entry (matmul dtype, ADC chain) first")
    args = ap.parse_args(argv)
    try:
        batches = tuple(int(b) for b in args.batches.split(","))
    except ValueError:
        ap.error(f"--batches={args.batches!r}; give comma-separated positive integers like 1,64,1024")
    if any(b < 1 or b > 65536 for b in batches):
        ap.error(f"--batches={args.batches!r}; each batch must be in [1, 65536]")
    res = run_bench(batches, args.min_time, args.device, args.preset, args.seed, args.matmul, args.probe, args.chain)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"device {res['device']}, torch {res['torch']}, {res['threads']} threads, matmul {res['matmul_dtype']}, "
              f"ADC chain {res['adc_chain']}")
        print(f"{'batch':>6} {'chip MVM/s':>12} {'vectors/s':>12} {'torch bmm/s':>12} {'ratio':>7}")
        for b in res["chip_mvm_per_s"]:
            print(f"{b:>6} {res['chip_mvm_per_s'][b]:>12.1f} {res['chip_vectors_per_s'][b]:>12.0f} "
                  f"{res['torch_bmm_per_s'][b]:>12.1f} {res['ratio'][b]:>7.3f}")
        print(f"programming pulses/s: {res['pulses_per_s']:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m tests.benchmarks.bench_protocols``: wall time and chip time to program a core and the whole chip.

For each method - program-and-verify (HERMES), GDP from scratch, and P&V followed by GDP - and for
one full 256 x 256 core and all 64 cores of the emulated ``hermes`` chip, it programs uniform random
weights (Gmax 80 counts) and prints wall seconds, chip seconds (the emulator's virtual clock, i.e.
what the parallel hardware would need), pulses per cell and the total MVM error afterwards.
``--json`` prints one JSON object; ``--cores 1 8`` picks the chip sizes; ``--methods`` the methods.
A benchmark, not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from typing import Any

import numpy as np
import torch

from hil.chip import Geometry
from hil.protocol import MemoryRunLog
from protocols.gdp import GdpParams, gradient_descent_program
from protocols.mapping import map_to_conductance
from protocols.metrics import measure_mvm_errors
from protocols.program_verify import ProgramVerifyParams, program_verify

METHODS = ("program-verify", "gdp-scratch", "pv+gdp")


def bench_one(method: str, n_cores: int, seed: int = 0, device: str = "cpu") -> dict[str, Any]:
    """Program ``n_cores`` full cores with ``method``; return timing and quality figures."""
    from emulator import EmulatedChip

    chip = EmulatedChip("hermes", seed=seed, device=device, geometry=Geometry(n_cores=n_cores))
    g = chip.geometry
    rng = np.random.default_rng(seed)
    targets, _ = map_to_conductance(rng.uniform(-1, 1, (n_cores, g.n_rows, g.n_cols)), 80.0)
    cores = np.arange(n_cores)
    run = MemoryRunLog(seed)
    wall0, chip0 = time.perf_counter(), chip.now()
    pulses: float
    if method == "program-verify":
        st = program_verify(chip, cores, targets, ProgramVerifyParams(), run)
        pulses = float(st.pulses.mean())
    elif method == "gdp-scratch":
        res = gradient_descent_program(chip, cores, targets, GdpParams(), run)
        pulses = float(res.program.pulses.mean())
    elif method == "pv+gdp":
        st = program_verify(chip, cores, targets, ProgramVerifyParams(), run)
        res = gradient_descent_program(chip, cores, targets, GdpParams(), run, start=st)
        pulses = float(res.program.pulses.mean())
    else:
        raise ValueError(f"method={method!r}; choose from {METHODS}")
    wall = time.perf_counter() - wall0
    chip_s = chip.now() - chip0
    errs, _, _ = measure_mvm_errors(chip, cores, targets, np.random.default_rng(seed + 1), n_inputs=1024)
    return {
        "method": method, "cores": n_cores, "wall_s": round(wall, 3), "chip_s": chip_s,
        "pulses_per_cell": round(pulses, 3), "mvm_error_total": round(float(errs.total.mean()), 5),
    }


def _warm_up(device: str) -> None:
    """Run both methods once on a tiny chip so that one-time costs (torch kernels) are not timed."""
    from emulator import EmulatedChip

    chip = EmulatedChip("hermes", seed=0, device=device, geometry=Geometry(n_cores=1, n_rows=32, n_cols=32))
    t = map_to_conductance(np.random.default_rng(0).uniform(-1, 1, (1, 32, 32)), 80.0)[0]
    st = program_verify(chip, [0], t)
    gradient_descent_program(chip, [0], t, GdpParams(batch=64, iterations=2), start=st)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_protocols", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 64], help="chip sizes in cores (default 1 64)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="emulator device: cpu or cuda")
    args = ap.parse_args(argv)
    _warm_up(args.device)
    rows = []
    for n in args.cores:
        for m in args.methods:
            rows.append(bench_one(m, n, args.seed, args.device))
            if not args.json:
                r = rows[-1]
                print(f"{r['method']:>15} {r['cores']:>3} cores: wall {r['wall_s']:8.2f} s  chip {r['chip_s'] * 1e3:8.2f} ms  "
                      f"pulses/cell {r['pulses_per_cell']:6.2f}  MVM error {r['mvm_error_total']:.4f}", flush=True)
    if args.json:
        info = {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(), "device": args.device}
        print(json.dumps({"machine": info, "results": rows}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

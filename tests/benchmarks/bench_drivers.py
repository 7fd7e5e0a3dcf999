"""Benchmark of the lab path: full-chip MVMs over loopback next to the in-process emulator, same run.

``python -m tests.benchmarks.bench_drivers --json`` starts ``python -m emulator.server`` on a free local port,
builds an in-process emulated chip of the same preset, seed and geometry, programs both alike
(one PARTIAL pulse on two devices of every cell, random currents) and times full-chip MVMs
(every core, 8-bit inputs, ADC output) at batch 1 and 1024, with inputs shared by all cores
``(B, rows)`` and per core ``(cores, B, rows)``. It reports per-call times, MVM calls per second
(``mvm_per_s``; times the batch for vectors per second), the transport cost (each lab call's time
minus the board's own execution time of that call, ``exec_s`` in its reply: encoding, pyvisa, TCP
and decoding) and that cost as a fraction of the in-process time. Calls alternate between the two
paths so both see the same machine load. It also checks that both paths gave bit-identical
results. The emulator is reached through the backend registry, so ``drivers`` does not import it.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from typing import Any

import numpy as np

from hil.chip import PulseKind, grid
from hil.chips import backend_class


def _interleaved(local_fn: Any, lab_fn: Any, lab: Any, calls: int) -> dict[str, float]:
    """Median times (s) of in-process and lab calls, alternated so that both see the same machine load.

    ``board_exec_s`` is the board's own execution time of each lab call (its ``exec_s``), so
    ``transport_s`` (lab call minus board execution, per call) is free of load differences.
    """
    local_fn()  # warm-up: caches, allocator, connection
    lab_fn()
    t_local, t_lab, t_exec, t_transport = [], [], [], []
    for _ in range(calls):
        t = time.perf_counter()
        local_fn()
        t_local.append(time.perf_counter() - t)
        t = time.perf_counter()
        lab_fn()
        t_lab.append(time.perf_counter() - t)
        t_exec.append(lab.last_board_exec_s)
        t_transport.append(t_lab[-1] - t_exec[-1])
    med = lambda v: float(np.median(v))  # noqa: E731
    return {"inproc_call_s": med(t_local), "lab_call_s": med(t_lab), "board_exec_s": med(t_exec),
            "transport_s": med(t_transport)}


def run_bench(
    *,
    preset: str = "hermes",
    seed: int = 0,
    cores: int | None = None,
    rows: int | None = None,
    cols: int | None = None,
    device: str = "cpu",
    batches: tuple[int, ...] = (1, 1024),
    calls: dict[int, int] | None = None,
    program: bool = True,
) -> dict[str, Any]:
    """Measure and return the figures described in the module docstring."""
    from drivers.board import LabChip
    from drivers.station import stop_process, wait_for_listening

    geo = [f"{k}={v}" for k, v in (("cores", cores), ("rows", rows), ("cols", cols)) if v]
    spec = ",".join([preset, *geo])
    local = backend_class("emulator").from_spec(spec, seed=seed, device=device)
    cmd = [sys.executable, "-m", "emulator.server", "--port", "0", "--preset", preset, "--seed", str(seed)]
    cmd += ["--device", device]
    for flag, value in (("--cores", cores), ("--rows", rows), ("--cols", cols)):
        if value:
            cmd += [flag, str(value)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        port = wait_for_listening(server, timeout_s=300.0)
        lab = LabChip(f"127.0.0.1:{port}", timeout_s=600.0)
        g = local.geometry
        out: dict[str, Any] = {
            "geometry": g.model_dump(),
            "preset": preset,
            "seed": seed,
            "device": device,
            "host": {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()},
            "server": "python -m emulator.server (separate process), pyvisa-py TCPIP SOCKET over loopback",
        }
        rng = np.random.default_rng(seed)
        if program:
            c, r, k, d = grid(range(g.n_cores), range(g.n_rows), range(g.n_cols), [0, 2])
            amps = rng.integers(150, 650, c.size).astype(np.float64)  # whole uA: sent as float32, exactly
            timing = {}
            for name, chip in (("inproc", local), ("lab", lab)):
                t = time.perf_counter()
                chip.apply_pulses(c, r, k, d, kind=PulseKind.PARTIAL, amplitude_ua=amps, width_ns=125.0)
                timing[f"{name}_s"] = time.perf_counter() - t
            out["programming"] = {"pulses": int(c.size), **timing}
        results = []
        identical = True
        for batch in batches:
            for mode in ("shared", "per_core"):
                shape = (batch, g.n_rows) if mode == "shared" else (g.n_cores, batch, g.n_rows)
                x = rng.integers(-127, 128, shape).astype(np.int8)
                y_local, y_lab = local.mvm(x), lab.mvm(x)  # the same call on both: must agree bit for bit
                identical &= bool(y_local.dtype == y_lab.dtype and np.array_equal(y_local, y_lab))
                n = (calls or {}).get(batch, 30 if batch <= 64 else 7)
                t = _interleaved(lambda x=x: local.mvm(x), lambda x=x: lab.mvm(x), lab, n)
                results.append({
                    "batch": batch,
                    "inputs": mode,
                    "request_bytes": int(x.nbytes),
                    "reply_bytes_int32": int(y_local.nbytes),
                    **t,
                    "inproc_mvm_per_s": 1.0 / t["inproc_call_s"],
                    "lab_mvm_per_s": 1.0 / t["lab_call_s"],
                    "inproc_vectors_per_s": batch / t["inproc_call_s"],
                    "lab_vectors_per_s": batch / t["lab_call_s"],
                    "transport_fraction_of_inproc": t["transport_s"] / t["inproc_call_s"],
                })
        out["results"] = results
        out["bit_identical"] = identical
        out["board_stats"] = lab.board_stats()
        lab.close()
        return out
    finally:
        stop_process(server)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_drivers", description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--preset", default="hermes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cores", type=int, help="smaller chip (default: the preset's 64 cores)")
    p.add_argument("--rows", type=int)
    p.add_argument("--cols", type=int)
    p.add_argument("--device", default="cpu", help="torch device of both emulators (cpu or cuda)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 1024])
    p.add_argument("--no-program", action="store_true", help="skip programming (fresh, all-RESET chips)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    out = run_bench(
        preset=args.preset, seed=args.seed, cores=args.cores, rows=args.rows, cols=args.cols, device=args.device,
        batches=tuple(args.batches), program=not args.no_program,
    )
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    g = out["geometry"]
    print(f"lab path vs in-process, {g['n_cores']} cores x {g['n_rows']} x {g['n_cols']}, device {out['device']}, "
          f"bit-identical: {out['bit_identical']}")
    print(f"{'batch':>6} {'inputs':>9} {'in-proc MVM/s':>14} {'lab MVM/s':>10} {'transport ms':>13} {'of in-proc':>10}")
    for r in out["results"]:
        print(f"{r['batch']:>6} {r['inputs']:>9} {r['inproc_mvm_per_s']:>14.1f} {r['lab_mvm_per_s']:>10.1f} "
              f"{1e3 * r['transport_s']:>13.2f} {100 * r['transport_fraction_of_inproc']:>9.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

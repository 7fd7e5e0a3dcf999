"""Benchmarks of run files: ``python -m hil.bench_runs [--json] [--calls N] [--mvm-calls N]``.

1. Journaling overhead: a protocol making ``--calls`` (10,000) small chip calls on a small emulated
   chip, run bare (``MemoryRunLog``, no journal) and through the engine (recording wrapper, HDF5 run
   file); overhead = journaled / bare - 1 of the protocol's time (best of ``--repeats``), and of the
   whole run including creating and closing the file.
2. Write throughput for large MVM batches: ``--mvm-calls`` calls of x (1, B, 256) int8 shared over
   C cores and y (C, B, 256) int32 ADC counts, journaled by :class:`hil.runfile.RunWriter` (auto
   compression and none) next to a plain h5py write of the same arrays into one chunked dataset.
   MB/s counts the array bytes handed over (x + y), wall time to the closed file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.chip import Chip, PulseKind
from hil.protocol import MemoryRunLog, RunLog, register_protocol
from hil.runfile import LIBVER, RunWriter


class SmallCallsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calls: int = Field(10_000, ge=4, le=10_000_000, description="chip calls to make (multiple of 4)")


@register_protocol("bench-small-calls", SmallCallsConfig, description="many small chip calls (benchmark)")
def small_calls(chip: Chip, config: SmallCallsConfig, run: RunLog) -> dict[str, Any]:
    """Cycles pulse (4 devices), verify read (4 devices), one-vector MVM on one core, clock read."""
    g = chip.geometry
    rng = run.rng("bench")
    n_iter = config.calls // 4
    core = rng.integers(0, g.n_cores, (n_iter, 4))
    row, col = rng.integers(0, g.n_rows, (n_iter, 4)), rng.integers(0, g.n_cols, (n_iter, 4))
    dev = rng.integers(0, g.n_devices, (n_iter, 4))
    amp = rng.uniform(200.0, 600.0, (n_iter, 4))
    x = rng.integers(-127, 128, (n_iter, 1, g.n_rows)).astype(np.int8)
    acc = 0
    for i in range(n_iter):
        chip.apply_pulses(core[i], row[i], col[i], dev[i], PulseKind.PARTIAL, amp[i], 125.0)
        acc += int(chip.read_devices(core[i], row[i], col[i], dev[i]).sum())
        acc += int(np.asarray(chip.mvm(x[i], [int(core[i, 0])])).sum())
        chip.now()
        if i % 25 == 0:
            run.log("progress", step=i, acc=acc)
    return {"calls": n_iter * 4, "acc": acc}


def bench_overhead(calls: int, repeats: int, spec: str) -> dict[str, Any]:
    from hil.backends import backend_class
    from hil.engine import run_protocol

    emulator = backend_class("emulator")
    cfg = SmallCallsConfig(calls=calls)
    bare, journaled, total = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            chip = emulator.from_spec(spec, seed=0)
            t0 = time.perf_counter()
            small_calls(chip, cfg, MemoryRunLog(seed=0))
            bare.append(time.perf_counter() - t0)
            chip = emulator.from_spec(spec, seed=0)
            t0 = time.perf_counter()
            res = run_protocol("bench-small-calls", chip=chip, chip_spec=f"emulator:{spec}", config=cfg, out=tmp, progress=False)
            total.append(time.perf_counter() - t0)
            journaled.append(res.wall_s)
            if res.n_calls != cfg.calls // 4 * 4:
                raise RuntimeError(f"journal holds {res.n_calls} calls, expected {cfg.calls}")
            size = Path(res.path).stat().st_size
    b, j, t = min(bare), min(journaled), min(total)
    return {
        "chip": f"emulator:{spec}",
        "calls": cfg.calls // 4 * 4,
        "bare_s": round(b, 4),
        "journaled_s": round(j, 4),
        "journaled_total_s": round(t, 4),
        "overhead_pct": round(100 * (j / b - 1), 2),
        "overhead_total_pct": round(100 * (t / b - 1), 2),
        "us_per_call_bare": round(1e6 * b / calls, 1),
        "us_per_call_added": round(1e6 * (j - b) / calls, 1),
        "run_file_MB": round(size / 1e6, 3),
        "repeats": repeats,
    }


def _mvm_arrays(n_calls: int, cores: int, batch: int, cols: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, (1, batch, 256)).astype(np.int8)
    # ADC-count-like outputs: int32 with a spread of tens of counts (what the emulator returns).
    ys = [np.round(rng.normal(0.0, 40.0, (cores, batch, cols))).astype(np.int32) for _ in range(n_calls)]
    return x, ys


def bench_throughput(n_calls: int, cores: int, batch: int) -> dict[str, Any]:
    cols = 256
    x, ys = _mvm_arrays(n_calls, cores, batch, cols)
    cores_a = np.arange(cores)
    nbytes = sum(x.nbytes + y.nbytes for y in ys)
    out: dict[str, Any] = {
        "calls": n_calls, "x_shape": list(x.shape), "y_shape": [cores, batch, cols], "MB": round(nbytes / 1e6, 1)
    }
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("auto", "none"):
            path = Path(tmp) / f"hil-{mode}.h5"
            t0 = time.perf_counter()
            w = RunWriter(path, {"run_id": "bench", "protocol": "bench"}, compression=mode)
            for i, y in enumerate(ys):
                w.journal(
                    "mvm",
                    {"x": x, "x_shared": 1, "cores": cores_a, "output": 0, "mode": 0, "y": y},
                    t_chip=float(i), t_wall=time.time(), dt_wall=0.0,
                )
            w.close(status="success")
            dt = time.perf_counter() - t0
            out[f"hil_{mode}_MBps"] = round(nbytes / 1e6 / dt, 1)
            out[f"hil_{mode}_file_MB"] = round(path.stat().st_size / 1e6, 1)
        path = Path(tmp) / "plain.h5"
        t0 = time.perf_counter()
        with h5py.File(path, "w", libver=LIBVER) as f:
            dx = f.create_dataset("x", data=x)
            dy = f.create_dataset("y", shape=(0, cores, batch, cols), maxshape=(None, cores, batch, cols),
                                  dtype=np.int32, chunks=(1, 1, batch, cols))
            for y in ys:
                n = dy.shape[0]
                dy.resize(n + 1, axis=0)
                dy[n] = y
            del dx
        dt = time.perf_counter() - t0
        out["h5py_plain_MBps"] = round(nbytes / 1e6 / dt, 1)
        out["h5py_plain_file_MB"] = round(path.stat().st_size / 1e6, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.bench_runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--calls", type=int, default=10_000, help="small chip calls for the overhead test")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (best of) for the overhead test")
    parser.add_argument("--chip", default="hermes,cores=2,rows=32,cols=32", help="emulator spec for the overhead test")
    parser.add_argument("--mvm-calls", type=int, default=16, help="MVM calls for the throughput test")
    parser.add_argument("--cores", type=int, default=16, help="cores per MVM call")
    parser.add_argument("--batch", type=int, default=1024, help="input vectors per MVM call")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: small calls gain nothing from more, and on a "
                        "shared machine extra threads only add contention noise)")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
    except ImportError:  # pragma: no cover - torch comes with the emulator
        pass
    results: dict[str, Any] = {
        "threads": args.threads,
        "journal_overhead": bench_overhead(args.calls, args.repeats, args.chip),
        "write_throughput": bench_throughput(args.mvm_calls, args.cores, args.batch),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        o, w = results["journal_overhead"], results["write_throughput"]
        print(f"journaling overhead: {o['calls']} calls, bare {o['bare_s']} s, journaled {o['journaled_s']} s "
              f"-> {o['overhead_pct']} % ({o['overhead_total_pct']} % with file create/close), "
              f"+{o['us_per_call_added']} us/call")
        print(f"MVM write throughput ({w['MB']} MB): hil auto {w['hil_auto_MBps']} MB/s ({w['hil_auto_file_MB']} MB file), "
              f"hil none {w['hil_none_MBps']} MB/s, plain h5py {w['h5py_plain_MBps']} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

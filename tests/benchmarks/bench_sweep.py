"""Benchmark of sweeps: ``python -m tests.benchmarks.bench_sweep [--json] [--workers 2] [--runs 16]``.

The same ``--runs`` runs (``--protocol`` on ``--chip``, seeds 0..N-1) one after another in this
process (``hil.run_protocol`` in a loop), with torch's default threads and again with one thread,
then as a sweep on a local Dask cluster of ``--workers`` processes (``hil.sweep.run_sweep``; the
CPUs split between the workers' torch threads). Reports the wall times, the speed-ups (the sweep's
wall time includes starting and stopping its cluster) and whether every run's summary (but its wall
times) is the same all ways (with a different number of torch threads, float sums may round
differently: the largest relative difference is reported too).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_sweep", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=16, help="runs (seeds 0..N-1; default 16)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the sweep (default 2)")
    ap.add_argument("--protocol", default="program-verify")
    ap.add_argument("--chip", default="emulator:hermes,cores=4,rows=128,cols=128")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config of every run")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from hil.runner import run_protocol
    from hil.runs.metadata import scalars as flat
    from hil.sweep import results, run_sweep

    seeds = list(range(args.runs))
    default_threads = torch.get_num_threads()

    def scalars(summary: dict) -> dict:  # as the index holds them: nested keys joined with "."
        return {k: v for k, v in flat(summary).items() if v is not None and "wall" not in k}

    with tempfile.TemporaryDirectory() as tmp:
        serial: dict[int, tuple[float, list[dict]]] = {}
        for threads in dict.fromkeys((default_threads, 1)):
            torch.set_num_threads(threads)
            t0 = time.perf_counter()
            runs = [run_protocol(args.protocol, chip=args.chip, sets=args.set, seed=s, out=Path(tmp) / f"serial{threads}",
                                 progress=False) for s in seeds]
            serial[threads] = (time.perf_counter() - t0, [scalars(r.summary) for r in runs])
            assert all(r.status == "success" for r in runs), [r.message for r in runs if r.status != "success"]
        torch.set_num_threads(default_threads)
        sweep_dir = Path(tmp) / "sweep"
        t0 = time.perf_counter()
        swept = run_sweep(args.protocol, seeds=seeds, chips=[args.chip], sets=args.set, out=sweep_dir,
                          workers=args.workers, progress=False)
        sweep_s = time.perf_counter() - t0
        df = results(sweep_dir, swept.sweep_id)
        cols = [c for c in df.columns if c.startswith("summary.") and "wall" not in c]
        got = [{c[len("summary."):]: row[c] for c in cols if row[c] == row[c]} for _, row in df.iterrows()]
        same = {t: all(got[i] == serial[t][1][i] for i in range(args.runs)) for t in serial}
        diff = max((abs(float(v) - float(serial[t][1][i][k])) / max(abs(float(v)), 1e-12)
                    for t in serial for i in range(args.runs) for k, v in got[i].items()
                    if isinstance(v, int | float) and not isinstance(v, bool) and k in serial[t][1][i]), default=0.0)
        run_wall = float(df["wall_s"].sum())
    serial_s = serial[default_threads][0]
    out = {
        "runs": args.runs, "protocol": args.protocol, "chip": args.chip, "workers": args.workers,
        "cpus": len(os.sched_getaffinity(0)), "serial_torch_threads": default_threads,
        "serial_s": round(serial_s, 2), "serial_1_thread_s": round(serial[1][0], 2), "sweep_s": round(sweep_s, 2),
        "speedup": round(serial_s / sweep_s, 2), "speedup_vs_1_thread": round(serial[1][0] / sweep_s, 2),
        "sweep_runs_wall_sum_s": round(run_wall, 2), "all_success": swept.counts == {"success": args.runs},
        "same_summaries": all(same.values()),
        **{f"same_summaries_as_serial_{t}_thread{'s' if t > 1 else ''}": ok for t, ok in same.items()},
        "max_relative_summary_difference": float(f"{diff:.3g}"),
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.runs} runs of {args.protocol} on {args.chip}: one after another {serial_s:.1f} s "
              f"({default_threads} torch threads), {serial[1][0]:.1f} s (1 thread); sweep on {args.workers} workers "
              f"{sweep_s:.1f} s (cluster start included): speed-up {out['speedup']}x ({out['speedup_vs_1_thread']}x "
              f"against 1 thread); same summaries: {same} (largest relative difference {diff:.3g})")
    return 0 if out["all_success"] and same[1] else 1


if __name__ == "__main__":
    sys.exit(main())

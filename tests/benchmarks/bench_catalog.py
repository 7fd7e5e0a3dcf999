"""Benchmark of the run catalogue: ``python -m tests.benchmarks.bench_catalog [--json] [--runs N]``.

Writes an index of ``--runs`` (10,000) synthetic runs (empty ``.h5`` files beside it, so nothing is
opened), each with tags, a sample and config and summary scalars, then times, as the median of
``--repeats``: reading the index (``RunIndex.entries``), filtering it (``select`` with two
``--where`` conditions, a tag and ``--since``), the whole ``hil ls --where ... --json`` in-process,
and ``hil.catalog`` (the DataFrame). Target: filtering 10,000 entries under a second.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def make_index(folder: Path, n: int) -> None:
    from hil.runs import INDEX_NAME

    t0 = time.time() - n
    lines = []
    for i in range(n):
        run_id = f"20260101-000000-sweep-{i:06x}"
        (folder / f"{run_id}.h5").touch()
        lines.append(json.dumps({
            "run_id": run_id, "file": f"{run_id}.h5", "protocol": "mvm-sweep", "status": "success", "started_unix": t0 + i,
            "started_at": "2026-01-01T00:00:00.000Z", "tags": ["chipA", "calib"] if i % 3 == 0 else ["chipB"],
            "sample": f"wafer-{i % 10}", "comment": "synthetic", "n_calls": 100 + i, "wall_s": 1.0,
            "config": {"batch": 2 ** (i % 8), "repeats": i % 4, "mode": "4phase", "tolerance_counts": 2.0},
            "summary": {"mvm_error": (i % 100) / 1000.0, "program_unconverged": i % 50},
        }))
    (folder / INDEX_NAME).write_text("\n".join(lines) + "\n")


def _median(fn: Any, repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_catalog", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import hil
    from hil.cli import main as hil_main
    from hil.runs import RunIndex
    from hil.runs.catalog import select

    where = ["batch>=16", "summary.mvm_error<0.05"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        make_index(folder, args.runs)
        index = RunIndex(folder)
        load_s, entries = _median(lambda: index.entries(), args.repeats)
        filter_s, hits = _median(lambda: select(entries, where=where, tags=["chipA"], since="2020-01-01"), args.repeats)

        def ls() -> int:
            with contextlib.redirect_stdout(io.StringIO()):
                return hil_main(["ls", str(folder), "--json", "--tag", "chipA", *[a for w in where for a in ("--where", w)]])

        ls_s, code = _median(ls, args.repeats)
        catalog_s, df = _median(lambda: hil.catalog(folder, where=where, tags=["chipA"]), args.repeats)
    result = {
        "runs": args.runs, "matches": len(hits), "load_index_s": round(load_s, 4), "filter_s": round(filter_s, 4),
        "load_and_filter_s": round(load_s + filter_s, 4), "hil_ls_where_json_s": round(ls_s, 4),
        "catalog_dataframe_s": round(catalog_s, 4), "ls_exit_code": code, "catalog_rows": len(df),
        "target": "load_and_filter_s < 1.0",
    }
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:<22} {v}")
    return 0 if load_s + filter_s < 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())

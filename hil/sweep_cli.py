"""``hil sweep``: the command line of :mod:`hil.sweep` (options, output, exit codes; docs/sweeps.md).

Internal module (its layout may change): ``hil.sweep.main`` is the entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from hil.errors import ChipCommunicationError, HilError, RunFileError
from hil.sweep import (
    SCHEDULER_TIMEOUT_S,
    SweepError,
    SweepRecord,
    SweepResult,
    _params_text,
    _to_json,
    list_sweeps,
    parse_grid,
    parse_seeds,
    plan_sweep,
    point_states,
    results,
    resume_sweep,
    run_sweep,
)


def _parser() -> argparse.ArgumentParser:
    from hil.cli import EPILOG, _Parser
    from hil.runs.index import DEFAULT_OUT, RUNS_ENV

    runs_default = f"${RUNS_ENV}, else . if it holds an index, else {DEFAULT_OUT}"
    p = _Parser(
        prog="hil sweep",
        description="Run a protocol over a grid of config values, seeds and chips; every point is an ordinary run "
        "with its own run file, on Dask workers (a local cluster by default). Also: --resume ID, --results ID, --list.",
        epilog=EPILOG + ". docs/sweeps.md",
    )
    p.add_argument("protocol", nargs="?", help="protocol name (see `hil protocols`)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="sweep a config key over values (YAML values; "
                   "commas inside [] or quotes stay; nested keys a.b; repeatable: the points are every combination)")
    p.add_argument("--seeds", default="0", metavar="SEEDS", help="seeds of every grid point: N, A-B, or a comma list (default 0)")
    p.add_argument("--chip", action="append", metavar="SPEC",
                   help="chip spec (default emulator); repeat it to sweep over chips (emulator:hermes, emulator:pcm-like)")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML mapping of config keys under every point")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="a fixed config key of every point (repeatable)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="local worker processes (default: one per CPU, at most one per point; 0: this process, "
                   "one run after another)")
    p.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT",
                   help="run on an existing Dask scheduler (a cluster; docs/sweeps.md: SLURM through dask-jobqueue)")
    p.add_argument("--scheduler-timeout", type=float, default=SCHEDULER_TIMEOUT_S, metavar="S",
                   help=f"how long to wait for --scheduler to answer (default {SCHEDULER_TIMEOUT_S:g} s)")
    p.add_argument("--torch-threads", type=int, default=None, metavar="N",
                   help="torch threads per run (default: CPUs / workers locally, 1 on a scheduler)")
    p.add_argument("--out", "--runs", dest="out", default=None, metavar="DIR", help=f"runs folder (default {runs_default})")
    p.add_argument("--tag", action="append", metavar="TAG", help="label every run for `hil ls --tag` (repeatable)")
    p.add_argument("--sample", default="", help="the sample or chip under test, as you name it")
    p.add_argument("--comment", default="", help="free text stored with every run")
    p.add_argument("--mqtt", default=None, metavar="URL", help="each run's telemetry to mqtt[s]://[USER@]HOST[:PORT][/PREFIX]")
    p.add_argument("--no-check", action="store_true",
                   help="skip the protocol's own checks here (they open each chip once); config validation always runs")
    p.add_argument("--dry-run", action="store_true", help="validate and list the points; run nothing, write nothing")
    p.add_argument("--protocol-module", action="append", metavar="MODULE|FILE.py",
                   help="import a module or .py file that registers protocols first, here and on every worker (repeatable)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--resume", default=None, metavar="SWEEP_ID",
                   help="finish a sweep: run the points never started, resume the incomplete and aborted ones; "
                   "nothing else re-runs")
    g.add_argument("--results", default=None, metavar="SWEEP_ID", help="print a sweep's points: parameters, status, summary")
    g.add_argument("--list", action="store_true", help="list the sweeps in the runs folder")
    p.add_argument("--csv", default=None, metavar="FILE", help="with --results: also write the table as CSV")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    pg = p.add_mutually_exclusive_group()
    pg.add_argument("--progress", dest="progress", action="store_true", default=None,
                    help="always show the sweep's progress bar (default: on a terminal)")
    pg.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")
    return p


def _summary_text(res: SweepResult) -> list[str]:
    from hil.cli import _arg

    counts = ", ".join(f"{n} {s}" for s, n in sorted(res.counts.items()))
    head = "resumed" if res.resumed else "ran"
    lines = [f"hil sweep: {res.sweep_id} ({res.protocol}): {len(res.points)} points ({counts}); {head} {res.ran} in "
             f"{res.wall_s:.1f} s on {res.workers}"]
    lines += [f"hil sweep: {m}" for m in res.messages]
    folder = _arg(res.folder)
    for p in res.points:
        if p["status"] == "fail":
            lines.append(f"  point {p['point']} ({p['run_id']}) failed ({p['reason']}): hil show {p['run_id']} --runs {folder}")
    if res.unfinished:
        lines.append(f"hil sweep: {res.unfinished} point(s) unfinished; finish them with: "
                     f"hil sweep --resume {res.sweep_id} --runs {folder}")
    lines.append(f"next: hil sweep --results {res.sweep_id} --runs {folder}   |   hil ls {folder} --where sweep={res.sweep_id}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``hil sweep``: returns the exit code (0 all points succeeded, 1 a point failed, 2 bad input,
    3 points left to resume (Ctrl-C, a worker killed), 5 the scheduler or a chip could not be reached)."""
    from hil.cli import EXIT_ABORTED, EXIT_CHIP, EXIT_OK, EXIT_USAGE

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))

    def fail(code: int, message: str) -> int:
        print(f"hil sweep: error: {message}", file=sys.stderr)
        if args.json:
            print(json.dumps({"error": message, "exit_code": code}))
        return code

    try:
        from hil.runs.index import default_runs_folder

        folder = Path(args.out) if args.out else default_runs_folder()
        if args.list:
            return _cmd_list(args, folder)
        if args.results:
            return _cmd_results(args, folder)
        where = {"workers": args.workers, "scheduler": args.scheduler, "torch_threads": args.torch_threads,
                 "progress": args.progress, "telemetry": args.mqtt, "scheduler_timeout_s": args.scheduler_timeout}
        if args.resume:
            if args.protocol or args.grid or args.set or args.config or args.chip:
                raise SweepError("--resume takes the sweep id alone: the points, config and chips are in its record.")
            for ref in args.protocol_module or []:
                from hil.protocol import load_protocol_module

                load_protocol_module(ref)
            res = resume_sweep(args.resume, folder, **where)
        else:
            if not args.protocol:
                raise SweepError("name the protocol to sweep (`hil sweep PROTOCOL --grid KEY=V1,V2 --seeds 0-9`), or give "
                                 "--resume ID, --results ID or --list.")
            parallel = not ((args.workers in (0, 1)) and args.scheduler is None)
            record = plan_sweep(
                args.protocol, grid=parse_grid(args.grid or []), seeds=parse_seeds(args.seeds), chips=args.chip or ["emulator"],
                config_file=args.config, sets=args.set or [], tags=args.tag or [], sample=args.sample, comment=args.comment,
                protocol_modules=args.protocol_module or [], check=not args.no_check, parallel=parallel,
            )
            if args.dry_run:
                return _cmd_dry_run(args, record)
            res = run_sweep(record, out=folder, **where)
    except KeyboardInterrupt:
        return fail(EXIT_ABORTED, "interrupted (Ctrl-C) before the sweep's runs started; nothing was run.")
    except ChipCommunicationError as exc:
        return fail(EXIT_CHIP, str(exc))
    except (HilError, RunFileError) as exc:
        return fail(EXIT_USAGE, str(exc))
    except ValidationError as exc:
        return fail(EXIT_USAGE, f"invalid value: {exc}")
    except ImportError as exc:
        return fail(EXIT_USAGE, f"a module failed to import ({exc}); fix it, or the --protocol-module you named.")
    except OSError as exc:
        return fail(EXIT_USAGE, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    if args.json:
        print(_to_json(res.to_dict()))
    else:
        print(res.sweep_id)
        print("\n".join(_summary_text(res)), file=sys.stderr)
    return res.exit_code if res.exit_code in (0, 1, 3, 5) else EXIT_OK


def _cmd_dry_run(args: argparse.Namespace, record: SweepRecord) -> int:
    if args.json:
        print(_to_json(record.model_dump(mode="json")))
        return 0
    print(f"hil sweep --dry-run: {record.protocol}, {len(record.points)} point(s), all valid; nothing was run")
    for p in record.points:
        print(f"  {p.point:>5}  {p.chip:<28} {_params_text(p)}")
    return 0


def _cmd_list(args: argparse.Namespace, folder: Path) -> int:
    records = list_sweeps(folder)
    rows = []
    for r in records:
        states = point_states(r, folder)
        counts: dict[str, int] = {}
        for p in r.points:
            s = states[p.run_id]["effective_status"] if p.run_id in states else "pending"
            counts[s] = counts.get(s, 0) + 1
        rows.append({"sweep_id": r.sweep_id, "protocol": r.protocol, "points": len(r.points), "created_at": r.created_at,
                     "counts": counts, "grid": r.grid, "seeds": len(r.seeds), "chips": r.chips})
    if args.json:
        print(_to_json(rows))
        return 0
    lines = [f"{'SWEEP':<30} {'PROTOCOL':<16} {'POINTS':>6}  {'CREATED':<24} STATUS"]
    for row in rows:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(row["counts"].items()))
        lines.append(f"{row['sweep_id']:<30} {row['protocol']:<16} {row['points']:>6}  {row['created_at']:<24} {counts}")
    print("\n".join(lines) if rows else f"(no sweeps in {folder})")
    return 0


def _cmd_results(args: argparse.Namespace, folder: Path) -> int:
    import pandas as pd

    df = results(folder, args.results)
    if args.csv:
        df.to_csv(args.csv)
    if args.json:
        print(_to_json({"sweep_id": df.attrs["sweep_id"], "protocol": df.attrs["protocol"], "grid": df.attrs["grid"],
                        "points": json.loads(df.reset_index().to_json(orient="records"))}))
        return 0
    with pd.option_context("display.max_rows", 500, "display.max_columns", 30, "display.width", 200):
        shown = df.drop(columns=["file"])
        print(shown.to_string())
    return 0


__all__ = ["main"]

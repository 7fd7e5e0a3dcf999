# PYTHON_ARGCOMPLETE_OK
"""The ``hil`` command line (argparse).

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

Commands: ``demo``, ``run``, ``protocols``, ``ls``, ``show``, ``export``, ``repair``, ``replay``, ``resume``,
``report``, ``watch``, ``completion``, ``bench`` (forwards to ``tests/benchmarks/bench_emulator.py``) and
``emulate`` (forwards to ``emulator.server``). Progress bars go to stderr, on a terminal or in a
notebook; ``--json`` prints one JSON document on stdout. ``hil run`` prints the run file's path on
stdout (for scripts) and its summary on stderr. Run ids are looked up in ``--runs`` (default
``$HIL_RUNS``, else the current folder if it holds an index, else ``hil-runs``). Every command a
message suggests is printed so that it runs as printed. Shell completion (commands, protocols, run
ids, config keys) comes from argcomplete when it is installed (``hil completion bash``).

Exit codes: 0 ok, 1 run failed, 2 bad input or usage, 3 run aborted (resumable), 4 replay differs
from the recording, 5 chip could not be opened or reached.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hil.chips import open_chip
from hil.config import describe_config
from hil.errors import ChipCommunicationError, HilError, ReplayMismatchError, did_you_mean
from hil.runner import DEFAULT_OUT, RunInterrupted, RunOptions, RunResult, replay_run, resume_run, run_protocol
from hil.runs import RunReader, to_json
from hil.runs.index import RUNS_ENV, default_runs_folder
from hil.version import __version__, git_revision

#: Exit codes of ``hil`` commands (scripts may rely on them).
EXIT_OK = 0
EXIT_FAILED = 1  #: the run failed (the protocol or the chip raised)
EXIT_USAGE = 2  #: bad input: unknown protocol or key, bad value, not a run file, newer layout, ...
EXIT_ABORTED = 3  #: the run was aborted (Ctrl-C, SIGTERM); it can be resumed
EXIT_MISMATCH = 4  #: a replay or resume met a call that differs from the recording
EXIT_CHIP = 5  #: the chip could not be opened or reached
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_FAILED: "run failed",
    EXIT_USAGE: "bad input or usage",
    EXIT_ABORTED: "run aborted (resumable)",
    EXIT_MISMATCH: "replay differs from the recording",
    EXIT_CHIP: "chip could not be opened or reached",
}


def exit_code_for(status: str, reason: str) -> int:
    """The exit code of a run that ended with ``status`` and ``reason`` (:class:`hil.runs.RunStop`)."""
    if status == "success":
        return EXIT_OK
    if status == "abort":
        return EXIT_ABORTED
    if reason == "replay_mismatch":
        return EXIT_MISMATCH
    return EXIT_FAILED

#: What ``hil demo`` runs: one chip, then these (protocol, config) steps in order on it. The
#: programming protocols slot in here ahead of the sweep (with "program": False for the sweep).
DEMO_CHIP = "emulator:hermes,cores=4,rows=64,cols=64"
DEMO_STEPS: list[tuple[str, dict[str, Any]]] = [
    ("program-verify", {}),
    ("calibration", {"drift_times_s": [3600.0, 86400.0]}),
    ("mvm-sweep", {"program": False, "batch": 32, "repeats": 2}),
]

EPILOG = "exit codes: " + ", ".join(f"{code} {what}" for code, what in EXIT_CODES.items())


def version_text() -> str:
    """``hil X.Y.Z`` and the git revision of the source tree, when it is a checkout."""
    rev = git_revision()
    return f"hil {__version__}" + (f" (git {rev[:12]}{'-dirty' if rev.endswith('-dirty') else ''})" if rev else "")


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")


class _Parser(argparse.ArgumentParser):
    """argparse that exits with our usage code (2) and a hint (with "did you mean" for a mistyped choice)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        m = _INVALID_CHOICE.search(message)
        if m:
            choices = re.findall(r"'([^']*)'", m.group(2))
            message += did_you_mean(m.group(1), choices)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"hil: error: {message} (see `{self.prog} --help`)\n")


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    if getattr(args, "json", False):
        print(to_json(data))
    elif text:
        print(text)


def _runs_folder(runs: str | None) -> Path:
    return Path(runs) if runs else default_runs_folder()


def _resolve_run(ref: str, runs: str | None) -> Path:
    """A run file from a path, or a run id / unique prefix looked up in the runs folder."""
    p = Path(ref)
    if p.exists() or p.suffix == ".h5" or "/" in ref:
        return p
    from hil.runs import RunIndex

    folder = _runs_folder(runs)
    if not folder.is_dir():
        raise HilError(
            f"no run {ref!r}: the runs folder {folder} does not exist; give the folder with --runs DIR "
            f"(or set ${RUNS_ENV}), or the run file's path."
        )
    return RunIndex(folder).find(ref)


def _arg(text: str | Path) -> str:
    """A command-line argument quoted for a POSIX shell when it needs it (hints run as printed)."""
    return shlex.quote(str(text))


def _value_text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict) and len(value) <= 8 and all(not isinstance(v, dict | list) for v in value.values()):
        return "{" + ", ".join(f"{k}: {_value_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list) and len(value) <= 8 and all(isinstance(v, int | float | str) for v in value):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    if isinstance(value, int | str | bool) or value is None:
        return str(value)
    return f"({type(value).__name__} of {len(value)})" if hasattr(value, "__len__") else str(value)


def summary_lines(summary: dict[str, Any], indent: str = "      ") -> list[str]:
    """A run's summary as aligned ``key = value`` lines (long lists and nested dicts abbreviated)."""
    width = max((len(str(k)) for k in summary), default=0)
    return [f"{indent}{k!s:<{width}} = {_value_text(v)}" for k, v in summary.items()]


def _progress(args: argparse.Namespace) -> bool | None:
    return {None: None, True: True, False: False}[getattr(args, "progress", None)]


def _result_text(res: RunResult) -> str:
    line = f"{res.path}"
    if res.status != "success":
        line += f"\nrun {res.run_id}: {res.status} ({res.reason}) {res.exception_type}: {res.message}"
    return line


def _telemetry_warning(res: RunResult) -> None:
    t = res.telemetry
    if t and (t.get("errors") or t.get("dropped")):
        print(f"hil: warning: telemetry (best effort): {t.get('published', 0)} messages published, {t.get('dropped', 0)} "
              f"dropped, {t.get('errors', 0)} connection errors (last: {t.get('last_error') or '-'})", file=sys.stderr)


def _finish(args: argparse.Namespace, res: RunResult, *, summary: bool = False) -> int:
    _emit(args, res.to_dict(), _result_text(res))
    if not args.json:
        _telemetry_warning(res)
        if summary and res.status == "success":
            # The summary goes to stderr: stdout stays the run file's path, for scripts.
            lines = [f"hil run: {res.protocol} {res.status} in {res.wall_s:.1f} s, {res.n_calls} chip calls, run {res.run_id}"]
            lines += summary_lines(res.summary)
            lines.append(f"next: hil show {_arg(res.path)}   |   hil report {_arg(res.path)}   |   hil export {_arg(res.path)}")
            print("\n".join(lines), file=sys.stderr)
    if res.status != "success" and not args.json:
        print(f"hil: run {res.status}: {res.reason}: {res.message}", file=sys.stderr)
        if res.status == "abort":
            print(f"hil: resume it with: hil resume {_arg(res.path)}", file=sys.stderr)
    return res.exit_code


# ---------------------------------------------------------------------------------------------- commands
def _load_modules(args: argparse.Namespace) -> None:
    from hil.protocol import load_protocol_module

    for ref in getattr(args, "protocol_module", None) or []:
        load_protocol_module(ref)


def cmd_run(args: argparse.Namespace) -> int:
    _load_modules(args)
    res = run_protocol(
        args.protocol,
        chip=args.chip,
        config_file=args.config,
        sets=args.set or [],
        seed=args.seed,
        out=args.out or default_runs_folder(),
        progress=_progress(args),
        telemetry=args.mqtt,
        compression=args.compression,
        tags=args.tag or [],
        sample=args.sample,
        comment=args.comment,
    )
    return _finish(args, res, summary=True)


def cmd_protocols(args: argparse.Namespace) -> int:
    from hil.protocol import get_protocol, protocols

    _load_modules(args)
    specs = [get_protocol(args.name)] if args.name else list(protocols().values())
    data = [
        {
            "name": s.name,
            "description": s.description,
            "deterministic": s.deterministic,
            "has_plots": s.plots is not None,
            "config": describe_config(s.config_model),
        }
        for s in specs
    ]
    lines = []
    for s in data:
        lines.append(f"{s['name']:<18} {s['description']}")
        if args.name:
            for key in s["config"]:
                limits = ", ".join(f"{k} {v}" for k, v in key["limits"].items())
                lines.append(f"    {key['key']:<24} default {json.dumps(key['default'])}"
                             + (f" [{limits}]" if limits else "") + f"  {key['description']}")
    _emit(args, data, "\n".join(lines) or "(no protocols installed)")
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    from hil.runs import RunIndex
    from hil.runs.catalog import known_keys, select

    folder = _runs_folder(args.dir)
    index = RunIndex(folder)
    if args.rebuild:
        index.rebuild()
    all_entries = index.entries()
    if args.keys:
        keys = known_keys(all_entries)
        _emit(args, keys, "\n".join(keys))
        return EXIT_OK
    entries = select(all_entries, where=args.where or [], tags=args.tag or [], since=args.since,
                     protocol=args.protocol, status=args.status)
    if args.limit:
        entries = entries[-args.limit:]
    rows = [f"{'RUN':<44} {'PROTOCOL':<16} {'STATUS':<11} {'STARTED':<24} {'CALLS':>7}  CHIP"]
    for e in entries:
        calls = "" if e.get("n_calls") is None else str(e["n_calls"])
        extra = "".join(f"  #{t}" for t in e.get("tags") or []) + (f"  sample={e['sample']}" if e.get("sample") else "")
        rows.append(f"{e['run_id']:<44} {e.get('protocol', ''):<16} {e['effective_status']:<11} "
                    f"{str(e.get('started_at', ''))[:23]:<24} {calls:>7}  {e.get('chip', '')}{extra}")
    filtered = bool(args.where or args.tag or args.since or args.protocol or args.status)
    empty = f"(no runs in {folder} match)" if filtered and all_entries else f"(no runs in {folder})"
    _emit(args, entries, "\n".join(rows) if entries else empty)
    return EXIT_OK


def _show_data(reader: RunReader) -> dict[str, Any]:
    return reader.document()


def cmd_show(args: argparse.Namespace) -> int:
    path = _resolve_run(args.run, args.runs)
    with RunReader(path) as reader:
        data = _show_data(reader)
        if args.verify:
            data["verified"] = reader.verify()
    status = data["effective_status"]
    reason = f" ({data.get('exit_reason')})" if data.get("exit_reason") else ""
    lines = [
        f"run       {data.get('run_id')}",
        f"file      {path} ({data['size_bytes'] / 1e6:.2f} MB, layout v{data.get('hil_layout_version')})",
        f"protocol  {data.get('protocol')}    status {status}{reason}",
        f"started   {data.get('started_at')}    stopped {data.get('stopped_at') or '-'}"
        + (f"    wall {data['wall_s']:.2f} s" if isinstance(data.get("wall_s"), float) else ""),
        f"chip      {data.get('chip_spec') or '(object)'}  [{data.get('chip_name')}, {data.get('chip_serial')}]",
        f"seed      {data.get('seed')}    resumed {data.get('resume_count', 0)} time(s)",
    ]
    if data.get("tags") or data.get("sample"):
        lines.append(f"catalogue tags {', '.join(data.get('tags') or []) or '-'}    sample {data.get('sample') or '-'}")
    if data.get("comment"):
        lines.append(f"comment   {data['comment']}")
    if data.get("git_revision"):
        lines.append(f"source    hil {data.get('versions', {}).get('hil', '?')} at git {data['git_revision']}")
    station = data.get("station") or {}
    if station:
        insts = station.get("instruments", {})
        lines.append(f"station   {station.get('name', '?')} ({len(insts)} instruments"
                     + (f", file {data.get('station_file')}" if data.get("station_file") else "") + ")")
        for name, inst in insts.items():
            lines.append(f"  {name:<10} {inst.get('idn', '?')}{'  [simulated]' if inst.get('simulated') else ''}")
    config = data.get("config") or {}
    lines.append("config:" + ("" if config else " (defaults of an empty model)"))
    lines += _indented_yaml(config, "  ")
    if data.get("exception_type"):
        lines.append(f"error     {data['exception_type']}: {data.get('exception_message')}")
    if data.get("summary"):
        lines.append("summary:")
        lines += summary_lines(data["summary"], "  ")
    lines.append("streams:")
    for name, s in data["streams"].items():
        cols = ", ".join(f"{c} {v['dtype']}{tuple(v['shape']) if v['shape'] else ''}" for c, v in s["columns"].items())
        lines.append(f"  {name}: {s['rows']} rows; {cols}")
    j = data["journal"]
    raised = f", {j['errors']} raised" if j["errors"] else ""
    lines.append(f"journal:  {j['calls']} chip calls {json.dumps(j['by_op'])}{raised}")
    for note in data["notes"][-5:]:
        lines.append(f"note:     {note.splitlines()[-1] if note else ''}")
    if "verified" in data:
        v = data["verified"]
        lines.append(f"verified: {v['datasets']} datasets, {v['bytes'] / 1e6:.2f} MB read back through their checksums")
    _emit(args, data, "\n".join(lines))
    return EXIT_OK


def _indented_yaml(value: dict[str, Any], indent: str) -> list[str]:
    """A config as indented YAML (short lists on one line), the form a --config file takes."""
    import yaml

    text = yaml.safe_dump(json.loads(to_json(value)), sort_keys=False, default_flow_style=None, width=110)
    return [indent + line for line in text.rstrip().splitlines()] if value else []


def cmd_export(args: argparse.Namespace) -> int:
    from hil.runs.export import export_run

    path = _resolve_run(args.run, args.runs)
    files = export_run(path, args.format, args.out)
    _emit(args, {"run": str(path), "format": args.format, "files": [str(f) for f in files]}, "\n".join(str(f) for f in files))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    import asyncio

    import aiomqtt

    from hil.telemetry import MqttSettings, describe_message, watch_runs

    settings = MqttSettings.from_url(args.url)

    def show(run: str, topic: str, payload: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps({"run_id": run, "topic": topic, **payload}, default=str), flush=True)
        else:
            print(describe_message(run, topic, payload), flush=True)

    try:
        final = asyncio.run(watch_runs(settings, show, run_id=args.run, timeout_s=args.timeout))
    except aiomqtt.MqttError as exc:
        raise ChipCommunicationError(f"telemetry broker {settings}: {exc}") from exc
    if args.run is None:
        return EXIT_OK
    if final is None:
        print(f"hil: watch: run {args.run} did not finish within {args.timeout} s", file=sys.stderr)
        return EXIT_ABORTED
    state = final.get("state")
    if state == "offline":
        return EXIT_ABORTED
    return exit_code_for(str(state), str(final.get("reason", "")))


def cmd_completion(args: argparse.Namespace) -> int:
    try:
        import argcomplete
    except ImportError:
        print("hil: error: shell completion needs argcomplete: pip install argcomplete", file=sys.stderr)
        return EXIT_USAGE
    print(argcomplete.shellcode(["hil"], shell=args.shell))
    return EXIT_OK


def cmd_repair(args: argparse.Namespace) -> int:
    from hil.runs import repair

    path = _resolve_run(args.run, args.runs)
    cleared = repair(path)
    text = f"{path}: cleared the open-for-writing flags; standard HDF5 tools open it now"
    if not cleared:
        text = f"{path}: nothing to repair"
    _emit(args, {"run": str(path), "cleared": cleared}, text)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    path = _resolve_run(args.run, args.runs)
    _load_modules(args)
    res = replay_run(path, out=args.out, progress=_progress(args))
    if res.status == "success" and not args.json:
        print(f"replay matched all {res.n_calls} recorded calls of {path.name}", file=sys.stderr)
    return _finish(args, res)


def cmd_resume(args: argparse.Namespace) -> int:
    path = _resolve_run(args.run, args.runs)
    _load_modules(args)
    res = resume_run(path, chip=args.chip, progress=_progress(args))
    return _finish(args, res)


def cmd_report(args: argparse.Namespace) -> int:
    from hil.report import make_report

    path = _resolve_run(args.run, args.runs)
    paths, problems = make_report(path, args.out)
    for p in problems:
        print(f"hil: warning: {p}", file=sys.stderr)
    _emit(args, {"run": str(path), "plots": [str(p) for p in paths], "warnings": problems}, "\n".join(str(p) for p in paths))
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from hil.report import make_report

    chip_spec = args.chip or DEMO_CHIP
    out = Path(args.out) if args.out else default_runs_folder()
    t0 = time.perf_counter()
    chip = open_chip(chip_spec, seed=args.seed)
    results: list[dict[str, Any]] = []
    code = EXIT_OK
    done: list[Path] = []
    try:
        for protocol, config in DEMO_STEPS:
            res = run_protocol(
                protocol, chip=chip, config=config, seed=args.seed,
                options=RunOptions(out=out, progress=_progress(args), chip_spec=chip_spec, preceded_by=done),
            )
            entry = res.to_dict()
            if res.status == "success" and not args.no_report:
                plots, problems = make_report(res.path)
                entry["plots"] = [str(p) for p in plots]
                entry["warnings"] = problems
            results.append(entry)
            done.append(res.path)
            if res.status != "success":
                code = res.exit_code
                break
    finally:
        chip.close()
    wall = time.perf_counter() - t0
    lines = [f"hil demo: {len(results)} run(s) on {chip_spec} (seed {args.seed}) in {wall:.1f} s, written to {out}/"]
    for r in results:
        lines.append(f"  {r['protocol']:<16} {r['status']:<8} {r['n_calls']:>6} chip calls  {r['path']}")
        lines += summary_lines(r["summary"])
        if r.get("plots"):
            lines.append(f"      plots: {Path(r['plots'][0]).parent}/ ({len(r['plots'])} PNG)")
    if results:
        last = results[-1]["run_id"]
        lines.append(f"next: hil ls {_arg(out)}   |   hil show {last} --runs {_arg(out)}   |   "
                     f"hil replay {last} --runs {_arg(out)}   |   hil export {last} --runs {_arg(out)}")
    _emit(args, {"chip": chip_spec, "seed": args.seed, "out": str(out), "wall_s": wall, "runs": results}, "\n".join(lines))
    return code


#: Where ``hil bench`` finds the benchmarks: they ship with the source tree, not inside the packages.
BENCH_MODULE = "tests.benchmarks.bench_emulator"
# Commands whose parser lives in their own module (``main(argv) -> int``): name -> (module, help).
FORWARDED: dict[str, tuple[str, str]] = {
    "sweep": ("hil.sweep", "run a protocol over a grid of config values and seeds on Dask workers (try `hil sweep --help`)"),
    "serve": ("hil.web.app", "serve a read-only web view of a runs folder (try `hil serve --help`)"),
}


def _forward(module: str, argv: list[str]) -> int:
    import importlib

    if module.startswith("tests."):
        root = Path(__file__).resolve().parents[1]
        if (root / "tests" / "benchmarks").is_dir() and str(root) not in sys.path:
            sys.path.insert(0, str(root))
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        where = " (benchmarks ship with the source tree: run from a clone installed with pip install -e .)" if module.startswith(
            "tests.") else ""
        print(f"hil: error: {module} is not available ({exc}){where}.", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(mod.main(argv) or 0)
    except SystemExit as exc:  # argparse inside the forwarded command (--help, usage errors)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_USAGE)


# ---------------------------------------------------------------------------------------------- completion
def _complete_protocols(prefix: str, **_: Any) -> list[str]:
    from hil.protocol import protocols

    return [n for n in protocols() if n.startswith(prefix)]


def _complete_runs(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    from hil.runs import RunIndex

    folder = _runs_folder(getattr(parsed_args, "runs", None))
    try:
        ids = [e["run_id"] for e in RunIndex(folder).entries(sync=False)]
    except (HilError, OSError):
        ids = []
    return [i for i in ids if i.startswith(prefix)] or [str(p) for p in Path(".").glob(f"{prefix}*.h5")]


def _complete_config_keys(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    """``KEY=`` for the keys of the protocol already on the command line (nested: ``KEY.SUB=``)."""
    from hil.protocol import get_protocol

    try:
        spec = get_protocol(getattr(parsed_args, "protocol", "") or "")
    except HilError:
        return []
    return [f"{k['key']}=" for k in describe_config(spec.config_model) if f"{k['key']}=".startswith(prefix)]


def _complete_where(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    from hil.runs import RunIndex
    from hil.runs.catalog import known_keys

    try:
        keys = known_keys(RunIndex(_runs_folder(getattr(parsed_args, "dir", None))).entries(sync=False))
    except (HilError, OSError):
        return []
    return [f"{k}=" for k in keys if k.startswith(prefix)]


def _completer(action: argparse.Action, fn: Any) -> None:
    action.completer = fn  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hil",
        description="Hardware-in-the-loop runs for analog in-memory computing chips: run protocols on the "
        "emulator or the lab chip, log them to HDF5, replay and resume them.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    runs_default = f"${RUNS_ENV}, else . if it holds an index, else {DEFAULT_OUT}"

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
        return p

    def progress(p: argparse.ArgumentParser) -> None:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--progress", dest="progress", action="store_true", default=None,
                       help="always show progress bars (default: on a terminal or in a notebook)")
        g.add_argument("--no-progress", dest="progress", action="store_false", help="never show progress bars")

    def modules(p: argparse.ArgumentParser) -> None:
        p.add_argument("--protocol-module", action="append", metavar="MODULE|FILE.py",
                       help="import a module or .py file that registers protocols first (repeatable; runs its code)")

    def runs(p: argparse.ArgumentParser) -> None:
        _completer(p.add_argument("run", metavar="RUN", help="run file, or run id (prefix) in the --runs folder"), _complete_runs)
        p.add_argument("--runs", default=None, metavar="DIR", help=f"folder to look run ids up in (default {runs_default})")

    p = add("demo", "run the demo on the emulator: runs and PNG plots into --out, and a short summary")
    p.add_argument("--out", default=None, help=f"output folder (default {runs_default})")
    p.add_argument("--chip", default=None, help=f"chip spec (default {DEMO_CHIP})")
    p.add_argument("--seed", type=int, default=0, help="seed of the chip and the protocols (default 0)")
    p.add_argument("--no-report", action="store_true", help="skip the PNG plots")
    progress(p)
    p.set_defaults(func=cmd_demo)

    p = add("run", "run a protocol: the run file's path on stdout, its summary on stderr")
    _completer(p.add_argument("protocol", help="protocol name (see `hil protocols`)"), _complete_protocols)
    p.add_argument("--chip", default="emulator", help="emulator[:PRESET[,cores=N,rows=N,cols=N,matmul=DTYPE,SECTION.FIELD=V]] "
                   "| lab:HOST:PORT | replay:FILE | fake[:cores=N] (emulator parts: docs/emulator.md)")
    p.add_argument("--config", default=None, metavar="FILE.yaml", help="YAML mapping of config keys")
    _completer(p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set a config key (YAML value; repeatable)"),
               _complete_config_keys)
    p.add_argument("--seed", type=int, default=None, help="seed (default 0, or the recorded one for replay:)")
    p.add_argument("--out", default=None, help=f"output folder (default {runs_default})")
    p.add_argument("--tag", action="append", metavar="TAG", help="label the run for `hil ls --tag` (repeatable)")
    p.add_argument("--sample", default="", help="the sample or chip under test, as you name it")
    p.add_argument("--comment", default="", help="free text stored with the run")
    p.add_argument("--mqtt", default=None, metavar="URL",
                   help="publish status and progress to mqtt[s]://[USER@]HOST[:PORT][/PREFIX] (best effort; docs/telemetry.md)")
    p.add_argument("--compression", default="auto", choices=["auto", "gzip", "none"],
                   help="deflate datasets: auto (where it saves >= 25%%), gzip (always), none (fastest writes)")
    progress(p)
    modules(p)
    p.set_defaults(func=cmd_run)

    p = add("protocols", "list installed protocols, or one protocol's config keys")
    _completer(p.add_argument("name", nargs="?", help="show this protocol's config keys, defaults and limits"),
               _complete_protocols)
    modules(p)
    p.set_defaults(func=cmd_protocols)

    p = add("ls", "list the runs in a folder (from its index; instant with thousands of runs)")
    p.add_argument("dir", nargs="?", default=None, help=f"runs folder (default {runs_default})")
    _completer(p.add_argument("--protocol", default=None, help="only runs of this protocol"), _complete_protocols)
    p.add_argument("--status", default=None, choices=["running", "incomplete", "success", "abort", "fail"])
    _completer(p.add_argument("--where", action="append", metavar="KEY=VALUE",
                              help="only runs whose KEY (an index field, config.K, summary.K or a bare config/summary key) "
                              "compares so (= != < <= > >= ~contains; repeatable, all must hold)"), _complete_where)
    p.add_argument("--tag", action="append", metavar="TAG", help="only runs with this tag (repeatable, all must be there)")
    p.add_argument("--since", default=None, metavar="DATE",
                   help="only runs started at or after DATE (YYYY-MM-DD, ISO date-time, today, yesterday, 12h, 3d)")
    p.add_argument("--keys", action="store_true", help="list the keys --where can use here")
    p.add_argument("--limit", type=int, default=0, help="only the newest N runs")
    p.add_argument("--rebuild", action="store_true", help="rebuild the index from the run files first")
    p.set_defaults(func=cmd_ls)

    p = add("show", "show a run's metadata, config, summary, streams, journal and status")
    runs(p)
    p.add_argument("--verify", action="store_true", help="also read every dataset back through its checksums")
    p.set_defaults(func=cmd_show)

    p = add("export", "write a run's streams as netCDF (one .nc file, a group per stream) or CSV (one file per stream)")
    runs(p)
    p.add_argument("--format", default="netcdf", choices=["netcdf", "csv"], help="netcdf (default) or csv")
    p.add_argument("--out", default=None, help="the .nc file, or the CSV folder (default <run>.nc or <run>-csv/ beside the run)")
    p.set_defaults(func=cmd_export)

    p = add("repair", "clear the open-for-writing flags a killed run left (like h5clear -s), for non-hil HDF5 tools")
    runs(p)
    p.set_defaults(func=cmd_repair)

    p = add("replay", "re-run a recorded run against its own journal (no hardware) into a new run file")
    runs(p)
    p.add_argument("--out", default=None, help="folder for the replay's run file (default: the run's folder)")
    progress(p)
    modules(p)
    p.set_defaults(func=cmd_replay)

    p = add("resume", "continue an incomplete or aborted run: replay its journal, then go on live")
    runs(p)
    p.add_argument("--chip", default=None, help="chip spec to resume on (default: the recorded one)")
    progress(p)
    modules(p)
    p.set_defaults(func=cmd_resume)

    p = add("report", "write PNG plots of a run's streams (and the protocol's own plots)")
    runs(p)
    p.add_argument("--out", default=None, help="folder for the PNGs (default <run>-report/ beside the run)")
    p.set_defaults(func=cmd_report)

    p = add("watch", "follow live runs' status and progress from their MQTT telemetry (hil run --mqtt URL)")
    p.add_argument("url", metavar="URL", help="mqtt[s]://[USER@]HOST[:PORT][/PREFIX] (see docs/telemetry.md)")
    p.add_argument("--run", default=None, metavar="RUN_ID", help="follow only this run, and exit with its exit code when it ends")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="stop after S seconds")
    p.set_defaults(func=cmd_watch)

    p = add("completion", "print the shell code that completes hil commands (eval \"$(hil completion bash)\")")
    p.add_argument("shell", nargs="?", default="bash", choices=["bash", "zsh", "fish", "tcsh", "powershell"])
    p.set_defaults(func=cmd_completion)

    sub.add_parser("bench", help="emulator benchmarks (tests/benchmarks/bench_emulator.py; try `hil bench --help`)",
                   add_help=False)
    sub.add_parser("emulate", help="serve the emulator as a lab board: hil emulate --host H --port N [...]",
                   add_help=False)
    for name, (_, help_) in FORWARDED.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def _autocomplete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request (argcomplete sets _ARGCOMPLETE) if argcomplete is installed."""
    import os

    if "_ARGCOMPLETE" not in os.environ:
        return
    try:
        import argcomplete
    except ImportError:
        return
    argcomplete.autocomplete(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hil`` command; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":
        return _forward(BENCH_MODULE, argv[1:])
    if argv and argv[0] == "emulate":
        return _forward("emulator.server", argv[1:])
    if argv and argv[0] in FORWARDED:
        return _forward(FORWARDED[argv[0]][0], argv[1:])
    parser = build_parser()
    _autocomplete(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    want_json = getattr(args, "json", False)

    def fail(code: int, message: str) -> int:
        print(f"hil: error: {message}", file=sys.stderr)
        if want_json:
            print(json.dumps({"error": message, "exit_code": code}))
        return code

    try:
        return args.func(args)
    except RunInterrupted as exc:
        return fail(EXIT_ABORTED, f"interrupted (Ctrl-C); run {exc.result.run_id} is marked 'abort'; resume it with: "
                    f"hil resume {_arg(exc.result.path)}")
    except KeyboardInterrupt:
        return fail(EXIT_ABORTED, "interrupted (Ctrl-C); an interrupted run is marked 'abort' and `hil resume RUN_FILE` "
                    "continues it (`hil ls --status abort` lists them).")
    except ReplayMismatchError as exc:
        return fail(EXIT_MISMATCH, str(exc))
    except ChipCommunicationError as exc:
        return fail(EXIT_CHIP, f"the chip could not be reached: {exc}")
    except HilError as exc:
        return fail(EXIT_USAGE, str(exc))
    except ValidationError as exc:
        return fail(EXIT_USAGE, f"invalid value: {exc}")
    except ImportError as exc:  # an installed protocol or backend module that does not import
        return fail(EXIT_USAGE, f"a plugin module failed to import ({exc}); fix or uninstall it.")
    except BrokenPipeError:  # pragma: no cover - `hil ls | head`
        return EXIT_OK
    except OSError as exc:
        return fail(EXIT_USAGE, f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "DEMO_CHIP",
    "DEMO_STEPS",
    "EXIT_ABORTED",
    "EXIT_CHIP",
    "EXIT_CODES",
    "EXIT_FAILED",
    "EXIT_MISMATCH",
    "EXIT_OK",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "main",
    "summary_lines",
    "version_text",
]

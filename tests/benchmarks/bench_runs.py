"""Benchmarks of run files: ``python -m tests.benchmarks.bench_runs [--json] [--calls N] [--mvm-calls N]``.

1. Journaling overhead: a protocol making ``--calls`` (10,000) small chip calls on a small emulated
   chip, run bare (``MemoryRunLog``, no journal) and through the engine (recording wrapper, HDF5 run
   file), in ``--repeats`` pairs; overhead = median of journaled / bare - 1, for the protocol's wall
   time, the whole run's wall time (with creating and closing the file) and the process CPU time.
   A steadier figure on a shared machine: the CPU time recording adds per call, measured against an
   instant chip (protocol thread and writer thread), as a fraction of the emulator's time per call.
2. Journal cost of an MVM-heavy run (``--inference``): ``--inference-calls`` (1,000) MVM calls at batch
   ``--inference-batch`` (256) on ``--inference-cores`` (16) full 256 x 256 cores of an emulated chip,
   per-core int8 inputs (the worst case: nothing shared), bare, floor and journaled in ``--repeats``
   interleaved rounds: wall overhead (median of journaled / bare - 1), run-file bytes per MVM and the
   y table's dtype (int16 where the chip declares 12-bit counts). The floor writes the same bytes to
   a plain file from a thread: what this disk charges for them, whatever the journal's format.
3. Write throughput for large MVM batches: ``--mvm-calls`` calls of x (1, B, 256) int8 shared over
   C cores and y (C, B, 256) int32 ADC counts, journaled by :class:`hil.runs.RunWriter` (auto
   compression and none) next to a plain h5py write of the same arrays into one chunked dataset.
   MB/s counts the array bytes handed over (x + y), wall time to the closed file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from hil.chip import Chip, ChipInfo, Geometry, PulseKind
from hil.protocol import MemoryRunLog, RunLog, register_protocol
from hil.runs import LIBVER, RunWriter
from hil.runs.writer import SYNC_DROP_BYTES


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
        chip.apply_pulses(core[i], row[i], col[i], dev[i], kind=PulseKind.PARTIAL, amplitude_ua=amp[i], width_ns=125.0)
        acc += int(chip.read_devices(core[i], row[i], col[i], dev[i]).sum())
        acc += int(np.asarray(chip.mvm(x[i], [int(core[i, 0])])).sum())
        chip.now()
        if i % 25 == 0:
            run.log("progress", step=i, acc=acc)
    return {"calls": n_iter * 4, "acc": acc}


class InferenceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    calls: int = Field(1000, ge=1, le=1_000_000, description="MVM calls")
    batch: int = Field(256, ge=1, le=4096, description="input vectors per call and core")
    cores: int = Field(16, ge=1, le=64, description="cores per call")


@register_protocol("bench-inference", InferenceConfig, description="MVM-heavy inference-like load (benchmark)")
def inference(chip: Chip, config: InferenceConfig, run: RunLog) -> dict[str, Any]:
    """``calls`` MVMs of fresh per-core int8 inputs on the first ``cores`` cores; logs one checksum row per 100."""
    g = chip.geometry
    rng = run.rng("bench")
    cores = list(range(config.cores))
    pool = rng.integers(-127, 128, (8, config.cores, config.batch, g.n_rows)).astype(np.int8)  # inputs cycle
    acc = 0
    for i in range(config.calls):
        y = np.asarray(chip.mvm(pool[i % len(pool)], cores))
        acc += int(y[:, 0, 0].sum())
        if i % 100 == 0:
            run.log("progress", step=i, acc=acc)
    return {"calls": config.calls, "acc": acc}


class _RawJournal:
    """The floor of any journal of :func:`inference` on this machine: the same bytes per MVM (x int8,
    y int16) appended to a plain file by a thread every 0.25 s (``os.write``; no HDF5, no checksums,
    no metadata), each large write synced and its pages dropped as the run writer does
    (``hil.runs.writer.SYNC_DROP_BYTES``). A duck-typed chip: :func:`inference` only uses ``geometry``
    and ``mvm``."""

    def __init__(self, chip: Chip, path: Path) -> None:
        import threading

        self.geometry = chip.geometry
        self._chip = chip
        self._pending: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def mvm(self, x: Any, cores: Any) -> np.ndarray:
        y = np.asarray(self._chip.mvm(x, cores))
        blocks = [np.array(x, dtype=np.int8), y.astype(np.int16)]
        with self._lock:
            self._pending += blocks
        return y

    def _drain(self) -> None:
        with self._lock:
            blocks, self._pending = self._pending, []
        for block in blocks:
            os.write(self._fd, block)
        if sum(b.nbytes for b in blocks) >= SYNC_DROP_BYTES:
            os.fdatasync(self._fd)
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def _loop(self) -> None:
        while not self._done.wait(0.25):
            self._drain()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._drain()
        os.close(self._fd)


def bench_inference(calls: int, batch: int, cores: int, repeats: int, compression: str = "auto") -> dict[str, Any]:
    """Journal cost of :func:`inference`: bare / raw-file floor / journaled runs on ``emulator:hermes``,
    interleaved in ``repeats`` rounds (medians of the per-round ratios); ``compression``: the run
    file's (auto, gzip, none).

    ``overhead_pct``: the whole journaled ``run_protocol`` (engine start, run file, close) against the
    bare protocol; ``overhead_protocol_pct``: the protocol's own wall time in the engine (the run's
    ``wall_s``); ``floor_overhead_pct``: the same bytes written to a plain file by a thread
    (:class:`_RawJournal`), what this machine charges for the bytes alone. The percentages depend on
    how fast the emulator is; ``journal_ms_per_mvm`` / ``floor_ms_per_mvm`` (median extra wall time per
    MVM call) and ``journal_MB_per_s`` (bytes per MVM over that time) do not.
    """
    from hil.chips import backend_class
    from hil.protocol import protocols
    from hil.runner import run_protocol

    protocols()  # load the entry-point protocols now: a once-per-process cost, not a run's
    emulator = backend_class("emulator")
    cfg = InferenceConfig(calls=calls, batch=batch, cores=cores)
    bare, bare_j, floor, journaled, protocol, sizes, floor_sizes = [], [], [], [], [], [], []
    dtype = ""

    def fresh() -> Chip:
        chip = emulator.from_spec("hermes", seed=0)
        warm = np.zeros((cores, batch, chip.geometry.n_rows), np.int8)
        chip.mvm(warm, list(range(cores)))  # warm-up at the run's shape (and any compilation)
        return chip

    def run_bare() -> float:
        chip = fresh()
        w0 = time.perf_counter()
        inference(chip, cfg, MemoryRunLog(seed=0))
        return time.perf_counter() - w0

    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            # Each written arm follows its own bare run (and is compared with it): memory a deleted file
            # held is cheaper to write again for a while (a sandboxed VM's first touch of a page is
            # slow), so a written arm right after another would be favoured.
            bare.append(run_bare())
            raw_path = Path(tmp) / f"raw{rep}.bin"
            raw = _RawJournal(fresh(), raw_path)
            w0 = time.perf_counter()
            inference(raw, cfg, MemoryRunLog(seed=0))  # type: ignore[arg-type]
            raw.close()
            floor.append(time.perf_counter() - w0)
            floor_sizes.append(raw_path.stat().st_size)
            raw_path.unlink()
            bare_j.append(run_bare())
            chip = fresh()
            w0 = time.perf_counter()
            res = run_protocol("bench-inference", chip=chip, chip_spec="emulator:hermes", config=cfg, out=tmp, progress=False,
                               compression=compression)
            journaled.append(time.perf_counter() - w0)
            protocol.append(res.wall_s)
            sizes.append(Path(res.path).stat().st_size)
            with h5py.File(res.path, "r") as f:
                dtype = str(f["journal/mvm/y"].dtype)
            Path(res.path).unlink()

    def pct(arm: list[float], base: list[float]) -> float:
        return round(100 * float(np.median([a / b - 1 for a, b in zip(arm, base, strict=True)])), 2)

    def extra_ms(arm: list[float], base: list[float]) -> float:
        return float(np.median([a - b for a, b in zip(arm, base, strict=True)])) * 1e3 / calls

    journal_ms = extra_ms(journaled, bare_j)

    return {
        "calls": calls, "batch": batch, "cores": cores,
        "bare_s": round(float(np.median(bare + bare_j)), 3),
        "floor_s": round(float(np.median(floor)), 3),
        "journaled_s": round(float(np.median(journaled)), 3),
        "overhead_pct": pct(journaled, bare_j),
        "overhead_protocol_pct": pct(protocol, bare_j),
        "floor_overhead_pct": pct(floor, bare),
        "journal_ms_per_mvm": round(journal_ms, 3),
        "floor_ms_per_mvm": round(extra_ms(floor, bare), 3),
        "journal_MB_per_s": round(float(np.median(sizes)) / calls / 1e6 / max(journal_ms * 1e-3, 1e-9), 1),
        "bytes_per_mvm": round(float(np.median(sizes)) / calls),
        "floor_bytes_per_mvm": round(float(np.median(floor_sizes)) / calls),
        "array_bytes_per_mvm": cores * batch * 256 * (1 + np.dtype(dtype).itemsize),
        "y_dtype": dtype,
        "compression": compression,
        "repeats": repeats,
        "rounds": {"bare_s": [round(v, 3) for v in bare], "bare_before_journaled_s": [round(v, 3) for v in bare_j],
                   "floor_s": [round(v, 3) for v in floor],
                   "journaled_s": [round(v, 3) for v in journaled], "protocol_s": [round(v, 3) for v in protocol]},
    }


def bench_overhead(calls: int, repeats: int, spec: str) -> dict[str, Any]:
    """Paired runs (bare, journaled) ``repeats`` times; medians of wall and process-CPU times.

    Process CPU time (all threads, including the run writer's) is the steadier figure on a shared
    machine, where other processes steal wall time from one run or the other.
    """
    from hil.chips import backend_class
    from hil.runner import run_protocol

    emulator = backend_class("emulator")
    cfg = SmallCallsConfig(calls=calls)
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            chip = emulator.from_spec(spec, seed=0)
            w0, c0 = time.perf_counter(), time.process_time()
            small_calls(chip, cfg, MemoryRunLog(seed=0))
            bare_wall, bare_cpu = time.perf_counter() - w0, time.process_time() - c0
            chip = emulator.from_spec(spec, seed=0)
            w0, c0 = time.perf_counter(), time.process_time()
            res = run_protocol("bench-small-calls", chip=chip, chip_spec=f"emulator:{spec}", config=cfg, out=tmp, progress=False)
            rows.append({
                "bare_wall": bare_wall, "bare_cpu": bare_cpu, "run_wall": res.wall_s,
                "total_wall": time.perf_counter() - w0, "total_cpu": time.process_time() - c0,
            })
            if res.n_calls != cfg.calls // 4 * 4:
                raise RuntimeError(f"journal holds {res.n_calls} calls, expected {cfg.calls}")
            size = Path(res.path).stat().st_size
    med = {k: float(np.median([r[k] for r in rows])) for k in rows[0]}
    ratio = {
        "wall": float(np.median([r["run_wall"] / r["bare_wall"] - 1 for r in rows])),
        "total_wall": float(np.median([r["total_wall"] / r["bare_wall"] - 1 for r in rows])),
        "total_cpu": float(np.median([r["total_cpu"] / r["bare_cpu"] - 1 for r in rows])),
    }
    n = cfg.calls // 4 * 4
    return {
        "chip": f"emulator:{spec}",
        "calls": n,
        "bare_s": round(med["bare_wall"], 4),
        "journaled_s": round(med["run_wall"], 4),
        "overhead_pct": round(100 * ratio["wall"], 2),
        "overhead_total_pct": round(100 * ratio["total_wall"], 2),
        "overhead_cpu_pct": round(100 * ratio["total_cpu"], 2),
        "us_per_call_bare": round(1e6 * med["bare_wall"] / n, 1),
        "us_per_call_added_cpu": round(1e6 * (med["total_cpu"] - med["bare_cpu"]) / n, 1),
        "run_file_MB": round(size / 1e6, 3),
        "repeats": repeats,
    }


class InstantChip(Chip):
    """A chip that answers at once (zeros): isolates the recording's own cost from the emulator's."""

    def __init__(self, geometry: Geometry) -> None:
        self.geometry = geometry
        self._t = 0.0

    @property
    def info(self) -> ChipInfo:
        return ChipInfo(backend="instant", name="instant benchmark chip")

    def now(self) -> float:
        return self._t

    def _sleep(self, seconds: float) -> None:
        self._t += seconds

    def _apply_pulses(self, batch: Any) -> None:
        self._t += 1e-6

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        return np.zeros(core.size, np.int32)

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        return np.zeros(core.size, np.int32)

    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> np.ndarray:
        return np.zeros((cores.size, x.shape[1], self.geometry.n_cols), np.int32)

    def _set_ldpu(self, cores: np.ndarray, regs: Any) -> None:
        pass

    def _get_ldpu(self, cores: np.ndarray) -> Any:
        raise NotImplementedError


def bench_cost(calls: int, repeats: int, geometry: Geometry) -> dict[str, Any]:
    """CPU microseconds per call that recording adds: protocol thread and writer thread separately."""
    from hil.journal import RecordingChip

    main_add, writer_cpu = [], []
    cfg = SmallCallsConfig(calls=calls)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            t0 = time.thread_time()
            small_calls(InstantChip(geometry), cfg, MemoryRunLog(seed=0))
            bare = time.thread_time() - t0
            writer = RunWriter(Path(tmp) / f"cost{i}.h5", {"run_id": f"cost{i}", "protocol": "bench"})
            t0 = time.thread_time()
            small_calls(RecordingChip(InstantChip(geometry), writer), cfg, MemoryRunLog(seed=0))
            main_add.append(time.thread_time() - t0 - bare)
            writer.close(status="success")
            writer_cpu.append(writer.cpu_s)
    return {
        "protocol_thread_us_per_call": round(1e6 * float(np.median(main_add)) / calls, 1),
        "writer_thread_us_per_call": round(1e6 * float(np.median(writer_cpu)) / calls, 1),
    }


def _mvm_arrays(n_calls: int, cores: int, batch: int, cols: int) -> tuple[np.ndarray, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.integers(-127, 128, (1, batch, 256)).astype(np.int8)
    # ADC-count-like outputs: int32 with a spread of tens of counts (what the emulator returns).
    ys = [np.round(rng.normal(0.0, 40.0, (cores, batch, cols))).astype(np.int32) for _ in range(n_calls)]
    return x, ys


def _write_hil(path: Path, mode: str, x: np.ndarray, ys: list[np.ndarray]) -> None:
    cores = np.arange(ys[0].shape[0])
    w = RunWriter(path, {"run_id": "bench", "protocol": "bench"}, compression=mode)
    for i, y in enumerate(ys):
        w.journal(
            "mvm", {"x": x, "x_shared": 1, "cores": cores, "output": 0, "mode": 0, "y": y},
            t_chip=float(i), t_wall=time.time(), dt_wall=0.0,
        )
    w.close(status="success")


def _write_plain(path: Path, x: np.ndarray, ys: list[np.ndarray]) -> None:
    shape = ys[0].shape
    with h5py.File(path, "w", libver=LIBVER) as f:
        f.create_dataset("x", data=x)
        dy = f.create_dataset("y", shape=(0, *shape), maxshape=(None, *shape), dtype=np.int32, chunks=(1, 1, *shape[1:]))
        for y in ys:
            n = dy.shape[0]
            dy.resize(n + 1, axis=0)
            dy[n] = y


def bench_throughput(n_calls: int, cores: int, batch: int, repeats: int = 3) -> dict[str, Any]:
    """MB/s to a closed file (median of ``repeats``, methods interleaved) and file sizes."""
    cols = 256
    x, ys = _mvm_arrays(n_calls, cores, batch, cols)
    nbytes = sum(x.nbytes + y.nbytes for y in ys)
    out: dict[str, Any] = {
        "calls": n_calls, "x_shape": list(x.shape), "y_shape": [cores, batch, cols], "MB": round(nbytes / 1e6, 1)
    }
    methods = {
        "hil_auto": lambda p: _write_hil(p, "auto", x, ys),
        "hil_none": lambda p: _write_hil(p, "none", x, ys),
        "h5py_plain": lambda p: _write_plain(p, x, ys),
    }
    times: dict[str, list[float]] = {k: [] for k in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats + 1):  # the first round warms the page cache and is not counted
            for name, write in methods.items():
                path = Path(tmp) / f"{name}.h5"
                path.unlink(missing_ok=True)
                t0 = time.perf_counter()
                write(path)
                if rep:
                    times[name].append(time.perf_counter() - t0)
                out[f"{name}_file_MB"] = round(path.stat().st_size / 1e6, 1)
    for name, ts in times.items():
        out[f"{name}_MBps"] = round(nbytes / 1e6 / float(np.median(ts)), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_runs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--calls", type=int, default=10_000, help="small chip calls for the overhead test")
    parser.add_argument("--repeats", type=int, default=5, help="paired repeats (median) for the overhead test")
    parser.add_argument("--chip", default="hermes,cores=2,rows=32,cols=32", help="emulator spec for the overhead test")
    parser.add_argument("--mvm-calls", type=int, default=16, help="MVM calls for the throughput test")
    parser.add_argument("--cores", type=int, default=16, help="cores per MVM call")
    parser.add_argument("--batch", type=int, default=1024, help="input vectors per MVM call")
    parser.add_argument("--inference", action="store_true", help="only the MVM-heavy journal-cost benchmark (item 2)")
    parser.add_argument("--inference-calls", type=int, default=1000)
    parser.add_argument("--inference-batch", type=int, default=256)
    parser.add_argument("--inference-cores", type=int, default=16)
    parser.add_argument("--compression", default="auto", choices=["auto", "gzip", "none"], help="run-file compression (item 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: small calls gain nothing from more, and on a "
                        "shared machine extra threads only add contention noise)")
    args = parser.parse_args(argv)
    try:
        import torch

        torch.set_num_threads(max(1, args.threads))
    except ImportError:  # pragma: no cover - torch comes with the emulator
        pass
    if args.inference:
        res = bench_inference(args.inference_calls, args.inference_batch, args.inference_cores, args.repeats, args.compression)
        if args.json:
            print(json.dumps({"threads": args.threads, "inference": res}, indent=2))
        else:
            print(f"inference-like run: {res['calls']} MVMs x batch {res['batch']} on {res['cores']} cores: bare "
                  f"{res['bare_s']} s, journaled {res['journaled_s']} s -> {res['overhead_pct']} % wall "
                  f"({res['overhead_protocol_pct']} % of the protocol's own time); {res['bytes_per_mvm']} bytes/MVM "
                  f"in the file (y {res['y_dtype']}); floor (same bytes, plain file) {res['floor_overhead_pct']} %")
        return 0
    overhead = bench_overhead(args.calls, args.repeats, args.chip)
    from hil.chips import backend_class

    cost = bench_cost(args.calls, args.repeats, backend_class("emulator").from_spec(args.chip, seed=0).geometry)
    per_call = cost["protocol_thread_us_per_call"] + cost["writer_thread_us_per_call"]
    overhead["cost_us_per_call"] = cost
    overhead["overhead_from_cost_pct"] = round(100 * per_call / overhead["us_per_call_bare"], 2)
    results: dict[str, Any] = {
        "threads": args.threads,
        "journal_overhead": overhead,
        "write_throughput": bench_throughput(args.mvm_calls, args.cores, args.batch),
    }
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        o, w = results["journal_overhead"], results["write_throughput"]
        print(f"journaling overhead: {o['calls']} calls, bare {o['bare_s']} s, journaled {o['journaled_s']} s "
              f"-> {o['overhead_pct']} % wall ({o['overhead_total_pct']} % with file create/close), "
              f"{o['overhead_cpu_pct']} % process CPU, +{o['us_per_call_added_cpu']} us CPU/call")
        c = o["cost_us_per_call"]
        print(f"recording cost on an instant chip: {c['protocol_thread_us_per_call']} us/call protocol thread + "
              f"{c['writer_thread_us_per_call']} us/call writer thread = {o['overhead_from_cost_pct']} % of an emulator call "
              f"({o['us_per_call_bare']} us)")
        print(f"MVM write throughput ({w['MB']} MB): hil auto {w['hil_auto_MBps']} MB/s ({w['hil_auto_file_MB']} MB file), "
              f"hil none {w['hil_none_MBps']} MB/s, plain h5py {w['h5py_plain_MBps']} MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How the emulator computes: the matmul dtype, chosen by measurement and remembered per machine.

``numerics.matmul_dtype="auto"`` no longer follows a CPU flag. The first chip built on a machine runs
a short probe (about 0.2 s: a full-chip-shaped batched matmul, 64 x 256 x 256 at batch 256, in
float32 and in bfloat16) and writes the faster dtype to a small JSON table; every later chip on that
machine reads the table, so all runs, resumes and replays there make the same choice (resume works by
re-executing the journal, and another dtype would give other ADC counts). The resolved dtype is part
of the chip's info (``details["numerics"]``) and so of every run file; pin it with the chip spec part
``matmul=float32`` (exact) or ``matmul=bfloat16``.

Table: ``$HIL_NUMERICS_TABLE`` if set (``off``: no table, ``auto`` means float32), else
``$XDG_CACHE_HOME/hil/emulator-numerics.json`` (``~/.cache/...``). Keyed by device kind, CPU/GPU
name and torch version (not the thread count: results must not depend on it). The first writer wins
(exclusive create), so two processes that probe at once still agree. ``hil bench --probe`` re-measures and rewrites the entry.
Where no table can be read or written, ``auto`` is float32 (the exact mode), never a fresh guess.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from emulator import native

DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}
#: The ADC chains (``numerics.adc_chain``): eager torch ops, torch.compile of them (the same draws),
#: and the C loop of emulator/adc_kernel.c with its own counter-based generator (other draws).
CHAINS = ("eager", "compiled", "native")
#: Shape of the probe: (cores, batch, rows, cols) of one batched matmul.
PROBE_SHAPE = (64, 256, 256, 256)


def table_path() -> Path | None:
    """Where the dtype table lives, or None (``HIL_NUMERICS_TABLE=off``)."""
    env = os.environ.get("HIL_NUMERICS_TABLE")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "none", "0") else Path(env).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hil" / "emulator-numerics.json"


def machine_key(device: torch.device) -> str:
    """Key of this machine's entry: device kind, processor/GPU name and torch version. Not the thread
    count: a run replayed or resumed with other threads must make the same choice."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return f"{device.type}|{name}|torch {torch.__version__}"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def probe(device: torch.device, min_time_s: float = 0.08) -> dict[str, Any]:
    """Measure batched-matmul throughput [GFLOP/s] per dtype at :data:`PROBE_SHAPE` on ``device``.

    Returns ``{"gflops": {dtype: value}, "choice": fastest dtype, "shape": [...], "measured_at": unix s}``.
    """
    n, b, r, c = PROBE_SHAPE
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randint(-127, 128, (n, b, r), generator=gen, device=device).float()
    w = torch.rand((n, r, c), generator=gen, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    gflops: dict[str, float] = {}
    for name, dt in DTYPES.items():
        xd, wd = x.to(dt), w.to(dt)
        best = float("inf")
        for _ in range(2):  # best of two rounds: robust to a busy neighbour
            torch.bmm(xd, wd)
            sync()
            k, start = 0, time.perf_counter()
            while k < 2 or time.perf_counter() - start < min_time_s / 4:
                torch.bmm(xd, wd)
                k += 1
            sync()
            best = min(best, (time.perf_counter() - start) / k)
        gflops[name] = round(2.0 * n * b * r * c / best / 1e9, 1)
    choice = max(gflops, key=lambda k: gflops[k])
    return {"gflops": gflops, "choice": choice, "shape": list(PROBE_SHAPE), "measured_at": round(time.time())}


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_entry(device: torch.device, entry: dict[str, Any], *, replace: bool = False) -> dict[str, Any] | None:
    """Store ``entry`` for this machine; without ``replace`` an existing entry wins. Returns the entry
    now in the table (None if the table cannot be written)."""
    path = table_path()
    if path is None:
        return None
    key = machine_key(device)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = path.with_name(path.name + ".lock")
        for _ in range(200):  # a lock file by exclusive create: a few processes at most contend
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                break
            except FileExistsError:
                if time.time() - lock.stat().st_mtime > 30:  # left by a killed process
                    lock.unlink(missing_ok=True)
                time.sleep(0.01)
        else:
            return None
        try:
            table = _read(path)
            if key in table and not replace:
                return table[key]
            table[key] = entry
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(table, indent=1, sort_keys=True))
            os.replace(tmp, path)
            return entry
        finally:
            os.close(fd)
            lock.unlink(missing_ok=True)
    except OSError:
        return None


def resolve(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The matmul dtype for ``name`` ('auto', 'float32', 'bfloat16') on ``device`` and where it came
    from ('preset', 'table', 'probe' or 'no table')."""
    if name != "auto":
        return DTYPES[name], "preset"
    path = table_path()
    if path is None:
        return torch.float32, "no table"
    entry = _read(path).get(machine_key(device))
    if isinstance(entry, dict) and entry.get("choice") in DTYPES:
        return DTYPES[entry["choice"]], "table"
    stored = write_entry(device, probe(device))
    if stored is None or stored.get("choice") not in DTYPES:
        return torch.float32, "no table"
    return DTYPES[stored["choice"]], "probe"


def table_entry(device: torch.device) -> dict[str, Any] | None:
    """This machine's table entry (None without a table or entry)."""
    path = table_path()
    entry = _read(path).get(machine_key(device)) if path is not None else None
    return entry if isinstance(entry, dict) else None


def resolve_adc_chain(name: str, device: torch.device) -> str:
    """The ADC chain (one of :data:`CHAINS`) for ``numerics.adc_chain=name``.

    'auto' follows this machine's table entry (``adc_chain``: written by ``hil bench`` after it timed
    all three, or by the first chip built on a CPU machine: native where the C kernel builds, else
    eager). Eager without a table (``HIL_NUMERICS_TABLE=off`` or unwritable: never a fresh guess),
    on a GPU without an entry, and where the table's native chain cannot be built any more.

    Raises ValueError for ``native`` asked for by name where it cannot run (not a CPU, no compiler),
    with the reason and the fix: a run pinned to it must not silently draw other noise.
    """
    if name == "native":
        if device.type != "cpu":
            raise ValueError(f"chain=native runs on the CPU only (device {device}); use chain=eager or compiled there.")
        why = native.why_unavailable()
        if why is not None:
            raise ValueError(f"chain=native: {why}. Or use chain=eager (other noise draws for the same seed).")
        return name
    if name != "auto":
        return name
    path = table_path()
    entry = _read(path).get(machine_key(device)) if path is not None else None
    chosen = entry.get("adc_chain") if isinstance(entry, dict) else None
    if chosen is None and path is not None and device.type == "cpu":
        why = native.why_unavailable()
        chosen = set_adc_chain(device, "eager" if why else "native", {}, source=why or "first chip: the C kernel builds")
    if chosen == "native":
        return "native" if device.type == "cpu" and native.available() else "eager"
    return str(chosen) if chosen in CHAINS else "eager"


def set_adc_chain(device: torch.device, choice: str, measured: dict[str, Any], *, replace: bool = False,
                  source: str = "hil bench") -> str:
    """Record the ADC-chain choice in this machine's table entry (kept if there and not ``replace``),
    with the rates it was chosen by (``measured``, MVM/s per chain) and why (``source``).
    Returns the choice now in force."""
    path = table_path()
    if path is None:
        return "eager"
    entry = dict(_read(path).get(machine_key(device)) or {})
    if entry.get("adc_chain") in CHAINS and not replace:
        return str(entry["adc_chain"])
    if "choice" not in entry:
        entry.update(probe(device))
    entry["adc_chain"] = choice
    entry["adc_chain_mvm_per_s"] = measured
    entry["adc_chain_source"] = source
    stored = write_entry(device, entry, replace=True)
    return str((stored or {}).get("adc_chain", "eager"))

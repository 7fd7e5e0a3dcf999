"""The native ADC chain: ``emulator/adc_kernel.c`` built with this machine's C compiler, called by ctypes.

One loop per output row does what the eager chain does in about twenty passes over memory: draws the
fast read noise (Philox4x32-10 with Box-Muller, counter-based: output (row, column) of a call always
gets the same normal, whatever the split over threads), adds it, runs both CCO counters and writes
int32 counts. Rows are split over ``torch.get_num_threads()`` Python threads (ctypes releases the GIL),
so results do not depend on the thread count.

The library is compiled on first use (``cc -O3 -march=native -fopenmp``, well under a second; plainer
flags where those fail) into ``$XDG_CACHE_HOME/hil/kernels/`` (``~/.cache/...``), keyed by the source,
flags, compiler, OpenMP runtime and CPU (name and feature flags), and written atomically, so
concurrent processes agree. Without a compiler the chain is unavailable:
:func:`why_unavailable` says why and how to fix it; ``numerics.adc_chain='auto'`` then never picks it.
Its noise stream differs from the eager chain's (torch's generator), so a run's chain is part of its
chip info and pinned on resume (``emulator/spec.py``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

SOURCE = Path(__file__).with_name("adc_kernel.c")
#: Widest row the kernel takes (its stack buffers); every preset's columns are far below.
MAX_COLS = 4096
#: Outputs below which a call runs on the calling thread alone (threads cost more than they save).
THREAD_MIN_OUTPUTS = 1 << 13
#: Largest batch, rows and columns of :func:`mvm_small` (its buffers in adc_kernel.c).
SMALL_MAX_BATCH, SMALL_MAX_RC = 8, 1024
_BASE_FLAGS = ["-O3", "-std=c11", "-shared", "-fPIC", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
#: Tried in order until one builds: OpenMP (the runtime torch loaded, so the chain runs on torch's warm
#: thread team instead of competing with its spinning workers), vectorised for this CPU; then plainer.
_ARCH_FLAGS = (["-fopenmp", "-march=native", "-mprefer-vector-width=512"], ["-fopenmp", "-march=native"],
               ["-march=native"], [])
_SUFFIX = {torch.float32: "f", torch.bfloat16: "b"}

_LOCK = threading.Lock()
_lib: ctypes.CDLL | None = None
_error: str | None = None
_pool: ThreadPoolExecutor | None = None


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return next((p for p in (shutil.which(c) for c in ("cc", "gcc", "clang")) if p), None)


def _cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "hil" / "kernels"


def _cpu_identity() -> bytes:
    """What -march=native code depends on: the CPU's name and feature flags (a shared cache folder on
    a cluster of different nodes must not hand one node's build to another), and the architecture."""
    from emulator.numerics import _cpu_name

    flags = ""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return "\0".join([_cpu_name(), flags.strip(), platform.machine()]).encode()


def _openmp_runtime() -> str | None:
    """The OpenMP runtime this process already loaded (torch's own copy, maybe renamed by auditwheel),
    linked by path so that the kernel runs on torch's thread team instead of a second runtime's."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "/lib" in line and ".so" in line}
    except OSError:
        return None
    found = sorted(p for p in paths if Path(p).name.startswith(("libgomp", "libomp", "libiomp")))
    return found[0] if found else None


def _remove_stale(folder: Path) -> None:
    """Remove what builds killed mid-way left (temporary ``.adc-*`` files over an hour old)."""
    now = time.time()
    for leftover in folder.glob(".adc-*"):
        with contextlib.suppress(OSError):
            if now - leftover.stat().st_mtime > 3600:
                leftover.unlink()


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        named = os.environ.get("CC")
        raise RuntimeError((f"$CC={named!r} is not an executable" if named else "no C compiler found (cc, gcc or clang)")
                           + "; install one, e.g. apt-get install gcc, or set $CC")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    source = SOURCE.read_bytes()
    runtime = _openmp_runtime()
    last = ""
    for arch in _ARCH_FLAGS:
        flags = _BASE_FLAGS + arch
        openmp = "-fopenmp" in flags
        # OpenMP: compile, then link the object against the runtime already loaded (or the
        # compiler's own where none is); otherwise one step.
        link = ([runtime] if runtime else ["-fopenmp"]) if openmp else []
        key = hashlib.sha256(b"\0".join([source, " ".join(flags + link).encode(), version.encode(),
                                          _cpu_identity()])).hexdigest()[:16]
        for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"hil-kernels-{os.getuid()}"):
            path = folder / f"adc-{key}.so"
            if path.is_file():
                return ctypes.CDLL(str(path))
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _remove_stale(folder)
                fd, tmp = tempfile.mkstemp(prefix=".adc-", suffix=".so", dir=folder)
                os.close(fd)
            except OSError:
                continue
            obj = tmp + ".o"
            try:
                steps = ([[cc, *flags, "-c", "-o", obj, str(SOURCE)], [cc, "-shared", "-o", tmp, obj, *link]] if openmp
                         else [[cc, *flags, "-o", tmp, str(SOURCE)]])
                failed = None
                for cmd in steps:
                    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                    if done.returncode != 0:
                        failed = done.stderr.strip()[-400:]
                        break
                if failed is not None:
                    last = failed
                    break  # these flags do not build here: try plainer ones
                os.replace(tmp, path)
                return ctypes.CDLL(str(path))
            finally:
                Path(tmp).unlink(missing_ok=True)
                Path(obj).unlink(missing_ok=True)
    raise RuntimeError(f"{cc} could not build {SOURCE.name}: {last or 'no writable cache folder'}")


def _load() -> ctypes.CDLL | None:
    if _lib is not None:  # every MVM asks: no lock once loaded
        return _lib
    with _LOCK:
        return _load_locked()


def _load_locked() -> ctypes.CDLL | None:
    global _lib, _error
    if _lib is None and _error is None:
        try:
            lib = _build()
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            _error = str(exc)
            return None
        i64, u64, f32, ptr = ctypes.c_int64, ctypes.c_uint64, ctypes.c_float, ctypes.c_void_p
        for d in "fb":
            for v in "fb":
                fn = getattr(lib, f"hil_adc_{d}{d}{v}")
                fn.restype = ctypes.c_int
                fn.argtypes = [i64, i64, ctypes.c_int32, i64, i64, ctypes.c_int32, i64, ptr, i64, i64, ptr, i64, i64,
                               ptr, i64, i64, ptr, ptr, ptr, f32, f32, f32, u64, u64, ptr]
        for w in "fb":
            fn = getattr(lib, f"hil_mvm_small_{w}")
            fn.restype = ctypes.c_int
            fn.argtypes = [i64, ptr, i64, i64, i64, ctypes.c_int32, f32, ptr, i64, i64, ptr, ptr, ptr, f32, f32, f32,
                           u64, u64, ctypes.c_int32, ptr]
        lib.hil_adc_openmp.restype = ctypes.c_int
        lib.hil_adc_openmp.argtypes = []
        lib.hil_philox4x32_10.restype = None
        lib.hil_philox4x32_10.argtypes = [ptr, ptr, ptr]
        lib.hil_philox_normals.restype = None
        lib.hil_philox_normals.argtypes = [ptr, i64, u64, u64, u64]
        _lib = lib
    return _lib


def _loaded() -> ctypes.CDLL:
    """The library, or RuntimeError saying why it cannot be built here."""
    lib = _load()
    if lib is None:
        raise RuntimeError(why_unavailable())
    return lib


def why_unavailable() -> str | None:
    """None where the native chain can run here, else why not (with the fix)."""
    return None if _load() is not None else f"the native ADC chain is unavailable: {_error}"


def available() -> bool:
    """Whether the native chain can run on this machine (builds the library on first call)."""
    return _load() is not None


def normals(n4: int, first: int, nonce: int, key: int) -> torch.Tensor:
    """The generator alone: the 4 ``n4`` normals of counters ``first`` .. ``first + n4 - 1`` (tests)."""
    lib = _loaded()
    z = torch.empty(4 * n4)
    lib.hil_philox_normals(z.data_ptr(), n4, first, nonce, key)
    return z


def philox4x32_10(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, ...]:
    """The generator's raw output words for ``counter`` (4 x 32 bits) and ``key`` (2 x 32 bits): a
    known-answer check against the published Philox4x32-10 test vectors (tests)."""
    lib = _loaded()
    c, k, out = (ctypes.c_uint32 * 4)(*counter), (ctypes.c_uint32 * 2)(*key), (ctypes.c_uint32 * 4)()
    lib.hil_philox4x32_10(c, k, out)
    return tuple(out)


def adc_counts(d: torch.Tensor, s: torch.Tensor | None, var: torch.Tensor, gk: torch.Tensor, ot: torch.Tensor,
               four_phase: bool, clip_hi: float, bk: float, top: float, key: int, nonce: int,
               noise: torch.Tensor | None = None) -> torch.Tensor:
    """int32 counts (n, B, C) of the chain on CPU tensors ``d``, ``s`` (4-phase), ``var`` (n, B, C),
    float32 or bfloat16 with one column stride (views of the stacked small-batch product allowed);
    ``gk``/``ot`` (n, C) float32: gain k t [counts per charge unit] and offset t [counts]; ``clip_hi``
    [charge units], ``bk`` [per charge unit], ``top`` [counts]; ``key``/``nonce``: the generator's key
    and this call's counter half (64 bits each); ``noise`` replaces the generator (tests)."""
    lib = _loaded()
    n, b, c = d.shape
    s = d if s is None else s
    if s.dtype != d.dtype:
        s = s.to(d.dtype)
    cs = d.stride(2)
    if not (s.stride(2) == cs and var.stride(2) == cs and 0 < c <= MAX_COLS and cs > 0):
        d, s, var = d.contiguous(), s.contiguous(), var.contiguous()
        cs = 1
    if d.dtype not in _SUFFIX or var.dtype not in _SUFFIX:
        raise TypeError(f"native ADC chain: dtypes {d.dtype}/{var.dtype}; float32 or bfloat16 expected")
    fn = getattr(lib, f"hil_adc_{_SUFFIX[d.dtype] * 2}{_SUFFIX[var.dtype]}")
    gk, ot = gk.contiguous(), ot.contiguous()
    zp = None
    if noise is not None:
        noise = noise.contiguous().float()
        zp = noise.data_ptr()
    out = torch.empty((n, b, c), dtype=torch.int32)
    rows = n * b
    args = (b, c, int(four_phase), cs, d.data_ptr(), d.stride(0), d.stride(1), s.data_ptr(), s.stride(0), s.stride(1),
            var.data_ptr(), var.stride(0), var.stride(1), zp, gk.data_ptr(), ot.data_ptr(), clip_hi, bk, top,
            key & (2**64 - 1), nonce & (2**64 - 1), out.data_ptr())
    threads = max(1, torch.get_num_threads()) if rows * c >= THREAD_MIN_OUTPUTS else 1
    if threads == 1 or lib.hil_adc_openmp():
        codes = [fn(0, rows, threads, *args)]
    else:
        global _pool
        if _pool is None or _pool._max_workers < threads - 1:
            _pool = ThreadPoolExecutor(max_workers=threads - 1, thread_name_prefix="hil-adc")
        edges = [rows * i // threads for i in range(threads + 1)]
        # threads - 1 helpers and this thread (which would otherwise only wait)
        futures = [_pool.submit(fn, edges[i], edges[i + 1], 1, *args) for i in range(1, threads)]
        codes = [fn(edges[0], edges[1], 1, *args)] + [f.result() for f in futures]
    if any(codes):
        raise ValueError(f"native ADC chain refused the shape {tuple(d.shape)} (columns 1..{MAX_COLS})")
    return out


def mvm_small(x: torch.Tensor, cores: torch.Tensor, w3: torch.Tensor, gk: torch.Tensor, ot: torch.Tensor,
              four_phase: bool, asym: float, clip_hi: float, bk: float, top: float, key: int, nonce: int) -> torch.Tensor:
    """int32 counts (n, B, C) of a whole small-batch MVM in one C loop: the products of int8 inputs
    ``x`` (n, B, R) (any core/batch strides, rows contiguous; shared inputs as a stride-0 view) with
    the stacked transposed matrices ``w3`` (all cores, 3 C, R) of the selected ``cores`` (int64, n),
    accumulated in float32 (``gk``/``ot`` of all cores too), then the chain of :func:`adc_counts` with the same noise for the same
    (key, nonce, row, column). ``asym``: the 1-phase polarity asymmetry (d = x D + a x+ D). Takes
    B <= :data:`SMALL_MAX_BATCH` and R, C <= :data:`SMALL_MAX_RC` (the caller checks)."""
    lib = _loaded()
    n, b, r = x.shape
    c = w3.shape[1] // 3
    if x.dtype != torch.int8 or x.stride(2) != 1:
        x = x.to(torch.int8).contiguous()
    if w3.dtype not in _SUFFIX or not w3.is_contiguous():
        raise TypeError(f"native small MVM: matrices {w3.dtype}, contiguous float32 or bfloat16 expected")
    cores = cores.to(torch.int64).contiguous()
    gk, ot = gk.contiguous(), ot.contiguous()
    out = torch.empty((n, b, c), dtype=torch.int32)
    threads = max(1, torch.get_num_threads()) if n * b * c >= THREAD_MIN_OUTPUTS else 1
    code = getattr(lib, f"hil_mvm_small_{_SUFFIX[w3.dtype]}")(
        n, cores.data_ptr(), b, r, c, int(four_phase), asym, x.data_ptr(), x.stride(0), x.stride(1), w3.data_ptr(),
        gk.data_ptr(), ot.data_ptr(), clip_hi, bk, top, key & (2**64 - 1), nonce & (2**64 - 1), threads, out.data_ptr())
    if code == 1:
        raise ValueError(f"native small MVM refused the shape {tuple(x.shape)} x {tuple(w3.shape)}")
    if code:
        raise MemoryError("native small MVM: out of memory for its buffers")
    return out

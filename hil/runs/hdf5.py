"""The HDF5 layer under the run-file reader: run files from elsewhere are untrusted.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

* :func:`open_run_h5`: opens a file whatever locking mode another handle in this process uses and
  whatever status flags a killed writer left (through :class:`FlagsClearedView`), checking the
  superblock checksum (:func:`lookup3`) first, and never hanging in an SWMR open of a damaged file;
* :func:`check_structure`: refuses external links, soft links, external storage and virtual datasets;
* :func:`read_rows` / :func:`read_dataset` / :func:`typed`: reads (whole or row slices) bounded by the
  bytes the file stores, chunk rounding included, with type checks.
"""

from __future__ import annotations

import io
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hil.errors import RunFileError

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
#: What h5py raises on a damaged file, depending on where the damage is.
H5_ERRORS = (OSError, KeyError, RuntimeError, ValueError, TypeError)


#: Largest read of one dataset (bytes); a run file's datasets are read whole only below it.
MAX_READ_BYTES = 2 * 2**30
#: Most logical bytes per stored byte a dataset may claim: deflate's limit is about 1032.
MAX_EXPANSION = 1100
#: How long to look again at a file that fails to open while its writer is alive (s).
BUSY_RETRY_S = 1.0


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & 0xFFFFFFFF


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 ``hashlittle``: the checksum of HDF5 metadata (superblock v2/3)."""
    m = 0xFFFFFFFF
    n, i = len(data), 0
    a = b = c = (0xDEADBEEF + n + initval) & m
    while n > 12:
        a = (a + int.from_bytes(data[i : i + 4], "little")) & m
        b = (b + int.from_bytes(data[i + 4 : i + 8], "little")) & m
        c = (c + int.from_bytes(data[i + 8 : i + 12], "little")) & m
        a = ((a - c) & m) ^ _rot(c, 4)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 6)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 8)
        b = (b + a) & m
        a = ((a - c) & m) ^ _rot(c, 16)
        c = (c + b) & m
        b = ((b - a) & m) ^ _rot(a, 19)
        a = (a + c) & m
        c = ((c - b) & m) ^ _rot(b, 4)
        b = (b + a) & m
        n, i = n - 12, i + 12
    if n == 0:
        return c
    tail = data[i:] + b"\0" * (12 - n)
    a = (a + int.from_bytes(tail[0:4], "little")) & m
    b = (b + int.from_bytes(tail[4:8], "little")) & m
    c = (c + int.from_bytes(tail[8:12], "little")) & m
    c = ((c ^ b) - _rot(b, 14)) & m
    a = ((a ^ c) - _rot(c, 11)) & m
    b = ((b ^ a) - _rot(a, 25)) & m
    c = ((c ^ b) - _rot(b, 16)) & m
    a = ((a ^ c) - _rot(c, 4)) & m
    b = ((b ^ a) - _rot(a, 14)) & m
    c = ((c ^ b) - _rot(b, 24)) & m
    return c


#: File-locking settings tried in turn for a read-only open. HDF5 refuses to open a file twice in
#: one process with different locking settings ("file locking flag values don't match"), and the
#: first handle may be anyone's: plain h5py and xarray use HDF5's default (``None``), hil's writer
#: ``False``. The default comes first so that a later plain ``h5py.File(path)`` in this process
#: also works while a RunReader holds the file; ``False`` last also reads a file whose lock is
#: taken by another process's writer or that sits on a file system without locks.
LOCKING_MODES: tuple[bool | str | None, ...] = (None, False, True, "best-effort")


def open_matching_lock(path: Path, **kwargs: Any) -> h5py.File:
    """``h5py.File(path, "r")`` with the first locking setting HDF5 accepts (see :data:`LOCKING_MODES`)."""
    first: BaseException | None = None
    for mode in LOCKING_MODES:
        try:
            return h5py.File(path, "r", locking=mode, **kwargs)
        except OSError as exc:
            text = str(exc).lower()
            if "lock" not in text:  # not a locking problem: damaged, missing, busy
                raise
            first = first or exc
    assert first is not None
    raise first


def open_run_h5(path: Path) -> h5py.File:
    if not path.exists():
        raise RunFileError(f"{path}: no such file. Give the path of a .h5 run file (see `hil ls`).")
    if path.is_dir():
        raise RunFileError(f"{path} is a folder, not a run file. Give the path of a .h5 run file (see `hil ls {path}`).")
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            signed = head == _HDF5_SIGNATURE or any(
                fh.seek(off) == off and fh.read(8) == _HDF5_SIGNATURE for off in (512, 1024, 2048)
            )
    except OSError as exc:
        raise RunFileError(f"cannot read {path}: {exc}") from exc
    if not signed:
        raise RunFileError(f"{path} is not an HDF5 file (no HDF5 signature), so it is not a hil run file.")
    # A file marked open for writing ("status flags" in its superblock) is being written, or its
    # writer died inside a write. HDF5 opens such a file only in SWMR mode, whose reader retries
    # checksum failures for minutes, so a damaged one would hang it. Instead it is read through a
    # view whose superblock has the flags cleared (what `h5clear -s` does, without changing the
    # file), in plain mode, which fails fast; a live writer's file is then reopened in SWMR mode
    # (RunReader does that). While a writer is inside one of its short writes a plain open may
    # see metadata in flux: look again for up to BUSY_RETRY_S before calling the file damaged.
    deadline = time.monotonic() + BUSY_RETRY_S
    while True:
        eof, flags, valid = superblock(path)
        size = path.stat().st_size
        if eof is not None and not valid:
            raise RunFileError(f"{path} is damaged (corrupted): its superblock checksum is wrong.")
        if eof is not None and size < eof and not flags:
            raise RunFileError(f"{path} is damaged (truncated or corrupted): {size} bytes on disk, its superblock says {eof}.")
        try:
            if flags:
                return h5py.File(FlagsClearedView(path), "r", locking=False)
            return open_matching_lock(path)
        except H5_ERRORS as exc:
            error = str(exc)
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    raise RunFileError(f"{path} is damaged (truncated or corrupted): HDF5 says {error}")


class FlagsClearedView(io.RawIOBase):
    """A read-only view of an HDF5 file whose v2/3 superblock has its status flags cleared.

    Serves the file's bytes, except bytes 11 (flags) and 44-47 (superblock checksum, recomputed),
    so HDF5 opens a file left marked "open for writing" by a killed writer in plain read mode.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        self._fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        head = bytearray(self._fh.read(48))
        head[11] = 0
        head[44:48] = lookup3(bytes(head[:44])).to_bytes(4, "little")
        self._head = bytes(head)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        self._pos = self._fh.seek(offset, whence)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        self._fh.seek(self._pos)
        n = self._fh.readinto(view)
        if n and self._pos < len(self._head):
            k = min(n, len(self._head) - self._pos)
            view[:k] = self._head[self._pos : self._pos + k]
        self._pos += n or 0
        return n or 0

    def close(self) -> None:
        self._fh.close()
        super().close()


def read_cost(ds: h5py.Dataset, start: int, stop: int) -> int:
    """Bytes HDF5 handles to read rows ``[start, stop)`` of ``ds``: whole chunks are read (and
    decompressed), so the rows are rounded out to chunk boundaries and every chunk across the
    trailing axes counts; a chunk larger than the dataset counts whole."""
    if stop <= start:
        return 0
    item = ds.dtype.itemsize
    if not ds.ndim:
        return item
    trailing = int(np.prod(ds.shape[1:], dtype=np.float64))
    chunks = ds.chunks
    if chunks is None:  # contiguous: the rows themselves
        return int((stop - start) * trailing * item)
    c0 = int(chunks[0])
    n_row_chunks = -(-stop // c0) - start // c0
    across = 1.0
    for size, c in zip(ds.shape[1:], chunks[1:], strict=True):
        across *= max(1, -(-int(size) // int(c)))
    return int(n_row_chunks * across * float(np.prod(chunks, dtype=np.float64)) * item)


def read_rows(ds: Any, path: Path, where: str, start: int = 0, stop: int | None = None,
              max_bytes: int | None = None) -> np.ndarray:
    """``ds[start:stop]`` (clipped to the dataset's rows) after checking it is a dataset and that the
    read is bounded: at most ``max_bytes`` (default :data:`MAX_READ_BYTES`) and no more than the
    bytes the file stores for the dataset allow (:data:`MAX_EXPANSION`), chunk rounding included.

    A crafted file can declare a shape of 10**9 rows with no data behind it (HDF5 then returns fill
    values), or chunks far larger than the rows asked for, so a read must not cost more than the
    bytes actually stored allow.
    """
    if not isinstance(ds, h5py.Dataset):
        raise RunFileError(f"{path}: {where} is a {type(ds).__name__}, not a dataset (damaged or crafted file).")
    if not ds.ndim:
        try:
            return np.asarray(ds[()])
        except H5_ERRORS as exc:
            raise RunFileError(f"{path}: {where} cannot be read (corrupted?): {exc}") from exc
    rows = ds.shape[0]
    lo = max(0, min(rows, start))
    hi = rows if stop is None else max(lo, min(rows, stop))
    want = read_cost(ds, lo, hi)
    stored = ds.id.get_storage_size()
    limit = MAX_READ_BYTES if max_bytes is None else max_bytes
    if want > limit or want > MAX_EXPANSION * stored + (1 << 20):
        raise RunFileError(
            f"{path}: {where} declares {want} bytes for rows {lo}:{hi} but the file stores {stored} for it "
            f"(allowed up to {min(limit, MAX_EXPANSION * stored + (1 << 20))}); the file is damaged or crafted."
        )
    try:
        return ds[lo:hi]
    except H5_ERRORS as exc:
        raise RunFileError(f"{path}: {where} cannot be read (corrupted?): {exc}") from exc


def read_dataset(ds: Any, path: Path, where: str, stop: int | None = None) -> np.ndarray:
    """``ds[:stop]`` bounded as :func:`read_rows` (a scalar dataset: its value)."""
    return read_rows(ds, path, where, 0, stop)


def typed(ds: Any, dtype: np.dtype, path: Path, where: str, stop: int | None = None) -> np.ndarray:
    """:func:`read_dataset` of a 1-D dataset that must hold ``dtype`` (same field names and kinds)."""
    if isinstance(ds, h5py.Dataset) and (ds.ndim != 1 or not same_layout(ds.dtype, dtype)):
        raise RunFileError(
            f"{path}: {where} has dtype {ds.dtype} and shape {ds.shape}; expected 1-D {dtype} (damaged or crafted)."
        )
    return read_dataset(ds, path, where, stop)


def same_layout(have: np.dtype, want: np.dtype) -> bool:
    if want.names is None:
        return have.names is None and have.kind == want.kind and have.itemsize == want.itemsize
    if have.names != want.names:
        return False
    return all(same_layout(have.fields[n][0], want.fields[n][0]) for n in want.names)


#: Most links a run file may hold (a run has a few hundred; the bound keeps a crafted file's walk short).
MAX_LINKS = 100_000


def check_structure(f: h5py.File, path: Path) -> None:
    """Refuse anything that would make a reader look outside the file: external links, soft links,
    external storage and virtual datasets (hil writes none of them), and more links than a run holds."""
    problems: list[str] = []
    count = 0

    def visit(name: str, link: Any) -> Any:
        nonlocal count
        count += 1
        if count > MAX_LINKS:
            problems.append(f"more than {MAX_LINKS} objects")
            return True
        if isinstance(link, h5py.ExternalLink):
            problems.append(f"an external link /{name} -> {link.filename}:{link.path}")
        elif isinstance(link, h5py.SoftLink):
            problems.append(f"a soft link /{name} -> {link.path}")
        else:
            obj = f.get(name)
            if isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    problems.append(f"a virtual dataset /{name}")
                elif obj.external:
                    problems.append(f"a dataset /{name} stored in external file(s) {[e[0] for e in obj.external][:3]}")
        return True if problems else None

    f.visititems_links(visit)
    if problems:
        raise RunFileError(
            f"{path} holds {problems[0]} that points outside the file; hil reads nothing outside a run file "
            "(it was crafted, or written by another tool)."
        )


def superblock(path: Path) -> tuple[int | None, int, bool]:
    """(end-of-file address, status flags, checksum valid) of a v2/3 superblock at offset 0.

    (None, 0, True) for other superblocks (hil writes version 3).
    """
    with open(path, "rb") as fh:
        sb = fh.read(48)
    if len(sb) < 48 or sb[:8] != _HDF5_SIGNATURE or sb[8] not in (2, 3) or sb[9] != 8:
        return None, 0, True
    base = int.from_bytes(sb[12:20], "little")
    valid = lookup3(sb[:44]) == int.from_bytes(sb[44:48], "little")
    return base + int.from_bytes(sb[28:36], "little"), sb[11] & 0x05, valid  # bit 0: write, bit 2: SWMR write

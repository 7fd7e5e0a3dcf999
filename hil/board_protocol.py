"""Message encoding of the chip control board protocol, shared by the client and the server.

Internal module (its layout may change): import public names from ``hil`` or ``hil.runs``.

The full specification is ``docs/board-protocol.md``; in short, a message is one ASCII line

    VERB RID key=value key=value ...\\n

followed, if any value is an array, by one IEEE 488.2 definite-length block per array
(``#<n><n digits: byte count><bytes>``, in the order the arrays appear in the line) and a final
``\\n``. A value is a bare token (number or word), a JSON string literal, or an array descriptor
``@WIRE[:LOGICAL][d0,d1,...]``: little-endian elements of dtype WIRE (``i1 i2 i4 i8 u1 u2 u4 u8 f2
f4 f8 b1``) widened to LOGICAL on receipt (a sender may narrow arrays losslessly). Replies
are ``OK RID ...`` or ``ERR RID code=CODE message="..."``; the request id RID (``[A-Za-z0-9._-]``,
at most 64 characters) makes retries idempotent.

This module does no I/O on sockets itself: :func:`encode_message` builds bytes,
:func:`parse_line` and :func:`decode_block` parse them, :func:`read_message` reads one message
from an asyncio stream (server side) and :class:`Message` carries the parsed result.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROTOCOL_VERSION = 1
#: Longest command line in bytes (arrays travel as blocks, so lines stay short).
MAX_LINE_BYTES = 65536
#: Default largest block the server accepts (bytes); a full-chip 64 x 1024 x 256 int32 MVM is 64 MiB.
DEFAULT_MAX_BLOCK_BYTES = 512 * 2**20

#: Wire dtype codes -> numpy dtypes (little-endian).
DTYPES: dict[str, np.dtype[Any]] = {
    code: np.dtype(spec)
    for code, spec in {
        "i1": "<i1", "i2": "<i2", "i4": "<i4", "i8": "<i8",
        "u1": "<u1", "u2": "<u2", "u4": "<u4", "u8": "<u8",
        "f2": "<f2", "f4": "<f4", "f8": "<f8", "b1": "?",
    }.items()
}  # fmt: skip
_CODE_OF = {(v.kind, v.itemsize): k for k, v in DTYPES.items()}

_RID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_VERB_RE = re.compile(r"[A-Z*][A-Z0-9.:?*]{0,31}")
_KEY_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_BARE_RE = re.compile(r"[A-Za-z0-9_.:+-]+")
_ARRAY_RE = re.compile(r"@([a-z][0-9])(?::([a-z][0-9]))?\[([0-9,]*)\]")
_INT_RE = re.compile(r"[+-]?[0-9]+")
_TOKEN_RE = re.compile(r'\s*([a-z][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)')

#: Error codes of ``ERR`` replies.
ERROR_CODES = ("PROTOCOL", "UNKNOWN", "INPUT", "SAFETY", "STALE", "CHIP", "INTERNAL")


class BoardProtocolError(ValueError):
    """A malformed message. ``fatal``: the framing is lost, so the connection must be closed."""

    def __init__(self, message: str, *, rid: str = "-", fatal: bool = False, code: str = "PROTOCOL") -> None:
        super().__init__(message)
        self.rid = rid
        self.fatal = fatal
        self.code = code


@dataclass(frozen=True)
class ArraySpec:
    """An array announced in a line: wire dtype, logical dtype and shape."""

    wire: str
    logical: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPES[self.wire].itemsize


@dataclass
class Message:
    """A parsed message: ``verb`` (``OK``/``ERR`` for replies), request id and parameters.

    Parameter values are ``str`` for bare and quoted tokens, ``np.ndarray`` for arrays.
    """

    verb: str
    rid: str
    params: dict[str, Any] = field(default_factory=dict)

    # ---- typed access (raising BoardProtocolError naming the parameter)
    def _get(self, key: str) -> Any:
        if key not in self.params:
            raise BoardProtocolError(f"{self.verb} needs parameter {key!r}", rid=self.rid)
        return self.params[key]

    def get_int(self, key: str) -> int:
        """Parameter ``key`` as an integer."""
        value = self._get(key)
        if isinstance(value, str) and _INT_RE.fullmatch(value):
            return int(value)
        raise BoardProtocolError(f"{self.verb}: {key}={value!r} is not an integer", rid=self.rid)

    def get_float(self, key: str) -> float:
        """Parameter ``key`` as a float (``repr`` text, also inf and nan)."""
        value = self._get(key)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise BoardProtocolError(f"{self.verb}: {key}={value!r} is not a number", rid=self.rid)

    def get_str(self, key: str) -> str:
        """Parameter ``key`` as text."""
        value = self._get(key)
        if isinstance(value, str):
            return value
        raise BoardProtocolError(f"{self.verb}: {key} must be a word or string, got an array", rid=self.rid)

    def get_array(self, key: str, *, scalar_ok: bool = True) -> Any:
        """An array parameter, or (``scalar_ok``) a bare number meaning 'the same for every element'."""
        value = self._get(key)
        if isinstance(value, np.ndarray):
            return value
        if scalar_ok and isinstance(value, str):
            if _INT_RE.fullmatch(value):
                return int(value)
            try:
                return float(value)
            except ValueError:
                pass
        raise BoardProtocolError(f"{self.verb}: {key}={value!r} must be an array", rid=self.rid)


# ---------------------------------------------------------------------- encoding
def _format_value(key: str, value: Any) -> str:
    if isinstance(value, np.ndarray):
        raise TypeError("arrays are encoded by encode_message")
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return repr(float(value))  # repr round-trips a float64 exactly
    text = str(value)
    if _BARE_RE.fullmatch(text) and not text.startswith("@"):
        return text
    return json.dumps(text)  # ASCII, escapes quotes and newlines


def narrow_int(arr: np.ndarray) -> np.ndarray:
    """The smallest signed integer dtype that holds ``arr`` exactly (a copy only if it narrows)."""
    if arr.dtype.kind not in "iu" or arr.size == 0:
        return arr
    lo, hi = int(arr.min()), int(arr.max())
    for dt in (np.int8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return arr if arr.dtype == dt else arr.astype(dt)
    return arr


def narrow_float(arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32 when that holds every float64 value exactly, else unchanged."""
    if arr.dtype != np.float64 or arr.size == 0:
        return arr
    f4 = arr.astype(np.float32)
    return f4 if np.array_equal(f4.astype(np.float64), arr, equal_nan=True) else arr


def array_code(dtype: np.dtype[Any]) -> str:
    """Wire code of a numpy dtype (``ValueError`` if the protocol has none)."""
    dt = np.dtype(dtype)
    key = (dt.kind, dt.itemsize)
    if key not in _CODE_OF or not dt.isnative:
        raise ValueError(f"dtype {dt} has no wire code; use one of {sorted(DTYPES)}")
    return _CODE_OF[key]


def encode_message(verb: str, rid: str, params: dict[str, Any] | None = None, *, narrow: bool = False) -> list[Any]:
    """Encode a message as a list of byte chunks (line, then blocks, then ``\\n`` if any block).

    ``narrow``: send integer arrays in the smallest lossless integer dtype and float64 arrays as
    float32 where that is exact (the receiver widens them back).
    Chunks may be memoryviews of the arrays; join them or write them in order.
    """
    parts = [verb, rid]
    blocks: list[Any] = []
    for key, value in (params or {}).items():
        if not _KEY_RE.fullmatch(key):
            raise ValueError(f"parameter name {key!r} is not allowed")
        if isinstance(value, np.ndarray):
            logical = array_code(value.dtype)
            wire_arr = (narrow_float(value) if value.dtype.kind == "f" else narrow_int(value)) if narrow else value
            wire = array_code(wire_arr.dtype)
            data = np.ascontiguousarray(wire_arr).astype(DTYPES[wire], copy=False)
            dims = ",".join(str(d) for d in value.shape)
            parts.append(f"{key}=@{wire}{':' + logical if logical != wire else ''}[{dims}]")
            nbytes = data.nbytes
            count = str(nbytes)
            blocks.append(f"#{len(count)}{count}".encode())
            if nbytes:
                blocks.append(memoryview(data.reshape(-1)).cast("B"))
        else:
            parts.append(f"{key}={_format_value(key, value)}")
    line = " ".join(parts).encode("ascii") + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise ValueError(f"command line of {len(line)} bytes exceeds {MAX_LINE_BYTES}; send long data as arrays")
    return [line, *blocks, b"\n"] if blocks else [line]


def join_chunks(chunks: list[Any]) -> bytes:
    """One bytes object from :func:`encode_message` chunks."""
    return b"".join(chunks)


# ---------------------------------------------------------------------- decoding
def parse_line(line: bytes) -> tuple[Message, list[tuple[str, ArraySpec]]]:
    """Parse a message line (with or without its ``\\n``).

    Returns the message (array parameters not yet filled in) and the announced arrays in order.
    Raises :class:`BoardProtocolError`; it is fatal when the line may have announced blocks that
    can no longer be skipped.
    """
    announces_blocks = b"@" in line
    try:
        text = line.rstrip(b"\r\n").decode("ascii")
    except UnicodeDecodeError:
        raise BoardProtocolError("the command line is not ASCII", fatal=announces_blocks) from None
    head = text.split(" ", 2)
    if len(head) < 2:
        raise BoardProtocolError(f"line {text[:80]!r} has no request id; send 'VERB RID key=value ...'",
                                 fatal=announces_blocks)
    verb, rid = head[0], head[1]
    rest = head[2] if len(head) > 2 else ""
    if not _RID_RE.fullmatch(rid):
        raise BoardProtocolError(f"request id {rid[:80]!r} must be 1-64 characters of [A-Za-z0-9._-]",
                                 fatal=announces_blocks)
    if not _VERB_RE.fullmatch(verb):
        raise BoardProtocolError(f"command {verb[:40]!r} is malformed", rid=rid, fatal=announces_blocks)
    msg = Message(verb, rid)
    arrays: list[tuple[str, ArraySpec]] = []
    pos = 0
    while pos < len(rest):
        if rest[pos:].strip() == "":
            break
        m = _TOKEN_RE.match(rest, pos)
        if m is None:
            raise BoardProtocolError(f"cannot parse {rest[pos:pos + 60]!r}; expected key=value", rid=rid,
                                     fatal=announces_blocks)
        key, raw = m.group(1), m.group(2)
        pos = m.end()
        if key in msg.params:
            raise BoardProtocolError(f"parameter {key!r} given twice", rid=rid, fatal=announces_blocks)
        if raw.startswith('"'):
            try:
                msg.params[key] = json.loads(raw)
            except ValueError:
                raise BoardProtocolError(f"{key}: bad string literal", rid=rid, fatal=announces_blocks) from None
        elif raw.startswith("@"):
            am = _ARRAY_RE.fullmatch(raw)
            if am is None or am.group(1) not in DTYPES or (am.group(2) and am.group(2) not in DTYPES):
                raise BoardProtocolError(
                    f"{key}={raw[:60]!r} is not an array descriptor @DTYPE[:DTYPE][dims] with DTYPE in "
                    f"{sorted(DTYPES)}", rid=rid, fatal=True)
            dims = am.group(3)
            try:
                shape = tuple(int(d) for d in dims.split(",")) if dims else ()
            except ValueError:
                raise BoardProtocolError(f"{key}: bad dimensions {dims!r}", rid=rid, fatal=True) from None
            if len(shape) > 8:
                raise BoardProtocolError(f"{key}: {len(shape)} dimensions, at most 8", rid=rid, fatal=True)
            spec = ArraySpec(am.group(1), am.group(2) or am.group(1), shape)
            arrays.append((key, spec))
            msg.params[key] = spec
        else:
            if not _BARE_RE.fullmatch(raw):
                raise BoardProtocolError(f"{key}={raw[:60]!r}: quote values with spaces or symbols", rid=rid,
                                         fatal=announces_blocks)
            msg.params[key] = raw
    return msg, arrays


def block_header(nbytes: int) -> bytes:
    """IEEE 488.2 definite-length block header for ``nbytes`` bytes."""
    count = str(nbytes)
    return f"#{len(count)}{count}".encode()


def parse_block_header(head: bytes) -> tuple[int, int]:
    """``#<n>`` prefix (2 bytes) -> n (digits to follow). Raises on anything else."""
    if len(head) != 2 or head[:1] != b"#" or not (b"1" <= head[1:2] <= b"9"):
        raise BoardProtocolError(f"expected a definite-length block '#<1-9>', got {head!r}", fatal=True)
    return int(head[1:2]), 2


def decode_block(
    spec: ArraySpec, data: bytes | bytearray | memoryview, *, writable: bool = True, copy: bool = False
) -> np.ndarray:
    """Array of ``spec`` from its block payload, widened to the logical dtype.

    ``copy``: the result never shares memory with ``data`` (for reused receive buffers).
    """
    if len(data) != spec.nbytes:
        raise BoardProtocolError(f"block of {len(data)} bytes; {spec} needs {spec.nbytes}", fatal=True)
    arr = np.frombuffer(data, dtype=DTYPES[spec.wire]).reshape(spec.shape)
    logical = DTYPES[spec.logical]
    if spec.logical != spec.wire:
        wire = DTYPES[spec.wire]
        if wire.kind == logical.kind == "f" or (wire.kind in "iu" and logical.kind in "iu"):
            return arr.astype(logical)
        raise BoardProtocolError(f"cannot widen {spec.wire} to {spec.logical}; only integer to integer and float to "
                                 "float are allowed", fatal=True)
    return arr.copy() if copy or (writable and not arr.flags.writeable) else arr


async def read_message(
    reader: asyncio.StreamReader,
    *,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    part_timeout_s: float | None = 30.0,
) -> Message | None:
    """Read one message from ``reader``; None at a clean end of stream.

    The line is awaited without a time limit (an idle connection is fine); once it has arrived
    every further part must arrive within ``part_timeout_s``. Raises :class:`BoardProtocolError`
    (fatal ones mean: reply, then close the connection), also when the rest of a message is late.
    """
    try:
        line = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise BoardProtocolError("connection closed in the middle of a command line", fatal=True) from None
        return None
    except asyncio.LimitOverrunError:
        raise BoardProtocolError(f"command line longer than {MAX_LINE_BYTES} bytes", fatal=True) from None
    if line.strip() == b"*IDN?":
        return Message("*IDN?", "-")
    msg, arrays = parse_line(line)

    async def exactly(n: int) -> bytes:
        try:
            return await asyncio.wait_for(reader.readexactly(n), part_timeout_s)
        except asyncio.IncompleteReadError as exc:
            raise BoardProtocolError(
                f"connection closed in the middle of a message ({len(exc.partial)} of {n} bytes arrived)",
                rid=msg.rid, fatal=True) from None
        except TimeoutError:
            raise BoardProtocolError(
                f"message incomplete after {part_timeout_s} s (waiting for {n} more bytes); closing the connection",
                rid=msg.rid, fatal=True) from None

    for key, spec in arrays:
        if spec.nbytes > max_block_bytes:
            raise BoardProtocolError(
                f"{key}: array of {spec.nbytes} bytes exceeds the server limit of {max_block_bytes} bytes; "
                "split the request", rid=msg.rid, fatal=True)
        try:
            n_digits, _ = parse_block_header(await exactly(2))
            digits = await exactly(n_digits)
        except BoardProtocolError as exc:
            exc.rid = msg.rid
            raise
        if not digits.isdigit():
            raise BoardProtocolError(f"{key}: block length {digits!r} is not decimal", rid=msg.rid, fatal=True)
        nbytes = int(digits)
        if nbytes != spec.nbytes:
            raise BoardProtocolError(
                f"{key}: block holds {nbytes} bytes but @{spec.wire}{list(spec.shape)} needs {spec.nbytes}",
                rid=msg.rid, fatal=True)
        try:
            msg.params[key] = decode_block(spec, await exactly(nbytes))
        except BoardProtocolError as exc:
            exc.rid = msg.rid
            raise
    if arrays and await exactly(1) != b"\n":
        raise BoardProtocolError("missing '\\n' after the last block", rid=msg.rid, fatal=True)
    return msg


def error_reply(rid: str, code: str, message: str) -> list[bytes]:
    """Encoded ``ERR`` reply (the message is cut to 2000 characters)."""
    if code not in ERROR_CODES:
        code = "INTERNAL"
    return encode_message("ERR", rid if _RID_RE.fullmatch(rid) else "-", {"code": code, "message": message[:2000]})

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
import hashlib
import hmac
import json
import logging
import math
import os
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hil.errors import ConfigError

log = logging.getLogger("hil.board_protocol")

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
#: A number as Python ``repr`` writes a float (or an integer): no underscores, no words but inf and nan.
_FLOAT_RE = re.compile(r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|nan)")
_TOKEN_RE = re.compile(r'\s*([a-z][a-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S+)')

#: Error codes of ``ERR`` replies.
ERROR_CODES = ("PROTOCOL", "UNKNOWN", "INPUT", "SAFETY", "STALE", "CONFLICT", "LIMIT", "BUSY", "AUTH", "CHIP", "INTERNAL")
#: Kinds of value a typed getter accepts (see :meth:`Message.get_array`).
ValueKind = Literal["int", "float", "bool"]
#: dtype kinds of arrays accepted for each value kind: integers are numbers, booleans are not.
_ARRAY_KINDS: dict[str, str] = {"int": "iu", "float": "iuf", "bool": "b"}


class BoardProtocolError(ValueError):
    """A malformed message. ``fatal``: the framing is lost, so the connection must be closed."""

    def __init__(self, message: str, *, rid: str = "-", fatal: bool = False, code: str = "PROTOCOL") -> None:
        super().__init__(message)
        self.rid = rid
        self.fatal = fatal
        self.code = code
        #: Blocks still on the wire after a request refused from its line (see :func:`skip_blocks`).
        self.skip: list[tuple[str, ArraySpec]] = []


class Quoted(str):
    """A parameter value that arrived as a JSON string literal: text, never a number."""

    __slots__ = ()


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

    def _refuse(self, key: str, value: Any, what: str) -> BoardProtocolError:
        if isinstance(value, Quoted):
            shown = f"{key}={json.dumps(str(value))[:60]} (a quoted string)"
        elif isinstance(value, np.ndarray):
            shown = f"{key}=@{array_code(value.dtype)}{list(value.shape)}"
        else:
            shown = f"{key}={value!r}"
        return BoardProtocolError(f"{self.verb}: {shown} is not {what}", rid=self.rid, code="INPUT")

    def get_int(self, key: str) -> int:
        """Parameter ``key`` as an integer: a bare decimal token (no quotes, no fraction, no bool words)."""
        value = self._get(key)
        if isinstance(value, str) and not isinstance(value, Quoted) and _INT_RE.fullmatch(value):
            return int(value)
        raise self._refuse(key, value, "an integer")

    def get_float(self, key: str) -> float:
        """Parameter ``key`` as a float: a bare number token (``repr`` text, also inf and nan; never quoted)."""
        value = self._get(key)
        if isinstance(value, str) and not isinstance(value, Quoted) and _FLOAT_RE.fullmatch(value):
            return float(value)
        raise self._refuse(key, value, "a number")

    def get_str(self, key: str) -> str:
        """Parameter ``key`` as text (a bare word or a quoted string)."""
        value = self._get(key)
        if isinstance(value, str):
            return str(value)
        raise BoardProtocolError(f"{self.verb}: {key} must be a word or string, got an array", rid=self.rid, code="INPUT")

    def get_array(self, key: str, *, scalar_ok: bool = True, kind: ValueKind | None = None) -> Any:
        """An array parameter, or (``scalar_ok``) a bare number meaning 'the same for every element'.

        ``kind``: what the values must be. ``"int"``: integer arrays (``i*``, ``u*``) or integer
        tokens; ``"float"``: integer or float arrays, number tokens; ``"bool"``: ``b1`` arrays or the
        tokens ``0`` / ``1``. Anything else (a bool array for an integer, a float for an integer, a
        quoted string for a number) is refused with an ``INPUT`` error naming the parameter.
        """
        value = self._get(key)
        if isinstance(value, np.ndarray):
            if kind is not None and value.dtype.kind not in _ARRAY_KINDS[kind]:
                raise self._refuse(key, value, f"an array of {_KIND_PLURAL[kind]}")
            return value
        if scalar_ok and isinstance(value, str) and not isinstance(value, Quoted):
            if kind == "bool":
                if value in ("0", "1"):
                    return value == "1"
            elif _INT_RE.fullmatch(value):
                return int(value)
            elif kind != "int" and _FLOAT_RE.fullmatch(value):
                return float(value)
        if kind is None:
            raise BoardProtocolError(f"{self.verb}: {key}={value!r} must be an array", rid=self.rid, code="INPUT")
        raise self._refuse(key, value, _KIND_TEXT[kind] if scalar_ok else f"an array of {_KIND_PLURAL[kind]}")


_KIND_TEXT = {"int": "an integer", "float": "a number", "bool": "a boolean (0/1 or a b1 array)"}
_KIND_PLURAL = {"int": "integers", "float": "numbers", "bool": "booleans (b1)"}


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
                text = json.loads(raw)
            except ValueError:
                raise BoardProtocolError(f"{key}: bad string literal", rid=rid, fatal=announces_blocks) from None
            if not isinstance(text, str):
                raise BoardProtocolError(f"{key}: bad string literal", rid=rid, fatal=announces_blocks)
            msg.params[key] = Quoted(text)
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


class IdleTimeoutError(BoardProtocolError):
    """No message began on a connection within the idle timeout (the connection is closed)."""


#: ``admit(msg, arrays)``: called once a line is parsed, before any block is read (see :func:`read_message`).
Admit = Callable[["Message", list[tuple[str, ArraySpec]]], Awaitable[None]]
#: Blocks of refused requests are read and dropped in pieces of this size (bytes).
_DISCARD_BYTES = 1 << 20


async def read_message(
    reader: asyncio.StreamReader,
    *,
    max_block_bytes: int = DEFAULT_MAX_BLOCK_BYTES,
    part_timeout_s: float | None = 30.0,
    idle_timeout_s: float | None = None,
    line_timeout_s: float | None = None,
    admit: Admit | None = None,
) -> Message | None:
    """Read one message from ``reader``; None at a clean end of stream.

    Timeouts (s, None: no limit): ``idle_timeout_s`` for the first byte of a message
    (:class:`IdleTimeoutError`), ``line_timeout_s`` for the rest of its command line once the first
    byte has arrived, ``part_timeout_s`` for each further part (block header, block, final LF).
    ``admit(msg, arrays)`` runs after the line is parsed and before any block is read, so that a
    request can be refused from its declared array sizes before memory is spent on it; when it
    raises a non-fatal :class:`BoardProtocolError`, it is raised at once with the announced arrays in
    its ``skip``: the caller answers, then drops the blocks with :func:`skip_blocks` (never holding
    them in memory), so the connection stays usable. Raises
    :class:`BoardProtocolError` (fatal ones mean: reply, then close the connection).
    """
    try:
        first = await asyncio.wait_for(reader.read(1), idle_timeout_s)
    except TimeoutError:
        raise IdleTimeoutError(f"no request for {idle_timeout_s:g} s; closing the idle connection", fatal=True) from None
    if not first:
        return None
    try:
        line = first if first == b"\n" else first + await asyncio.wait_for(reader.readuntil(b"\n"), line_timeout_s)
    except asyncio.IncompleteReadError:
        raise BoardProtocolError("connection closed in the middle of a command line", fatal=True) from None
    except asyncio.LimitOverrunError:
        raise BoardProtocolError(f"command line longer than {MAX_LINE_BYTES} bytes", fatal=True) from None
    except TimeoutError:
        raise BoardProtocolError(
            f"command line incomplete after {line_timeout_s:g} s; closing the connection", fatal=True) from None
    if line.strip() == b"*IDN?":
        return Message("*IDN?", "-")
    msg, arrays = parse_line(line)

    for key, spec in arrays:
        if spec.nbytes > max_block_bytes:
            raise BoardProtocolError(
                f"{key}: array of {spec.nbytes} bytes exceeds the server limit of {max_block_bytes} bytes; "
                "split the request", rid=msg.rid, fatal=True)
    if admit is not None:
        try:
            await admit(msg, arrays)
        except BoardProtocolError as exc:
            exc.rid = msg.rid
            if not exc.fatal and arrays:
                exc.skip = arrays  # the caller answers at once, then drops the blocks (skip_blocks)
            raise
    for key, spec in arrays:
        nbytes = await _block_length(reader, key, spec, msg.rid, part_timeout_s)
        try:
            msg.params[key] = decode_block(spec, await _exactly(reader, nbytes, msg.rid, part_timeout_s))
        except BoardProtocolError as exc:
            exc.rid = msg.rid
            raise
    if arrays and await _exactly(reader, 1, msg.rid, part_timeout_s) != b"\n":
        raise BoardProtocolError("missing '\\n' after the last block", rid=msg.rid, fatal=True)
    return msg


async def skip_blocks(
    reader: asyncio.StreamReader, arrays: list[tuple[str, ArraySpec]], rid: str, part_timeout_s: float | None = 30.0
) -> None:
    """Read and drop the announced blocks of a refused request (1 MiB at a time), so the connection stays usable."""
    for key, spec in arrays:
        nbytes = await _block_length(reader, key, spec, rid, part_timeout_s)
        for start in range(0, nbytes, _DISCARD_BYTES):
            await _exactly(reader, min(_DISCARD_BYTES, nbytes - start), rid, part_timeout_s)
    if arrays and await _exactly(reader, 1, rid, part_timeout_s) != b"\n":
        raise BoardProtocolError("missing '\\n' after the last block", rid=rid, fatal=True)


async def _exactly(reader: asyncio.StreamReader, n: int, rid: str, part_timeout_s: float | None) -> bytes:
    try:
        return await asyncio.wait_for(reader.readexactly(n), part_timeout_s)
    except asyncio.IncompleteReadError as exc:
        raise BoardProtocolError(
            f"connection closed in the middle of a message ({len(exc.partial)} of {n} bytes arrived)",
            rid=rid, fatal=True) from None
    except TimeoutError:
        raise BoardProtocolError(
            f"message incomplete after {part_timeout_s} s (waiting for {n} more bytes); closing the connection",
            rid=rid, fatal=True) from None


async def _block_length(reader: asyncio.StreamReader, key: str, spec: ArraySpec, rid: str, part_timeout_s: float | None) -> int:
    """Read a block header and check it against the array's declaration; the block's byte count."""
    try:
        n_digits, _ = parse_block_header(await _exactly(reader, 2, rid, part_timeout_s))
    except BoardProtocolError as exc:
        exc.rid = rid
        raise
    digits = await _exactly(reader, n_digits, rid, part_timeout_s)
    if not digits.isdigit():
        raise BoardProtocolError(f"{key}: block length {digits!r} is not decimal", rid=rid, fatal=True)
    nbytes = int(digits)
    if nbytes != spec.nbytes:
        raise BoardProtocolError(
            f"{key}: block holds {nbytes} bytes but @{spec.wire}{list(spec.shape)} needs {spec.nbytes}",
            rid=rid, fatal=True)
    return nbytes


# ---------------------------------------------------------------------- request identity and authentication
def request_digest(msg: Message) -> bytes:
    """SHA-256 of a request's verb and parameters (arrays by logical dtype, shape and values).

    The board keeps it with the reply of a request id, so a reused id carrying a different request
    is refused instead of being answered with another request's reply. The digest does not depend on
    how a sender narrowed its arrays, only on their values.
    """
    h = hashlib.sha256(msg.verb.encode("ascii") + b"\0")
    for key in sorted(msg.params):
        value = msg.params[key]
        h.update(key.encode("ascii") + b"=")
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            h.update(f"@{array_code(arr.dtype)}{list(arr.shape)}".encode())
            h.update(memoryview(arr.reshape(-1)).cast("B"))
        elif isinstance(value, Quoted):
            h.update(b'"' + str(value).encode("utf-8", "backslashreplace") + b'"')
        else:
            h.update(str(value).encode("ascii", "backslashreplace"))
        h.update(b"\0")
    return h.digest()


_CALL_KEY_RE = re.compile(r"(.+):([0-9]{1,18})")


def rid_for_call_key(key: str) -> str:
    """The request id of the chip call ``key`` (``"<run_id>:<journal index>"``, see ``hil.Chip.begin_call``).

    ``k`` + 24 hex digits of a hash of the run id + ``-`` + the index, e.g. ``k1f0c...9a-42``: the same
    key always gives the same id (a call re-sent after a crash is answered from the board's
    memory), different runs or indices give different ids, and no id of a client session
    (``<8 hex>-<n>``) looks like one. Other keys hash whole.
    """
    m = _CALL_KEY_RE.fullmatch(key)
    if m is None:
        return "k" + hashlib.blake2b(key.encode("utf-8", "backslashreplace"), digest_size=16).hexdigest()
    run = hashlib.blake2b(m.group(1).encode("utf-8", "backslashreplace"), digest_size=12).hexdigest()
    return f"k{run}-{int(m.group(2))}"


#: Authentication scheme of the board's token handshake (docs/board-protocol.md, "Authentication").
AUTH_SCHEME = "hmac-sha256"
#: Shortest token a board accepts (characters).
MIN_TOKEN_CHARS = 16


#: Environment variable holding the board token (client and ``hil emulate``) when no token file is given.
TOKEN_ENV = "HIL_BOARD_TOKEN"


def read_token(path: str | os.PathLike[str] | None = None) -> bytes | None:
    """The board's shared secret: from the file ``path``, else from ``$HIL_BOARD_TOKEN``, else None.

    The token is one line of at least 16 printable characters without spaces (surrounding
    whitespace is ignored), e.g. ``python -c "import secrets; print(secrets.token_hex(32))" > board.token``.
    Errors and log lines name the file or the variable, never the token. A token file that others
    can read is accepted with a warning (``chmod 600`` it).
    """
    if path is not None:
        where = f"token file {os.fspath(path)}"
        try:
            text = open(path, encoding="ascii").read(4096)  # noqa: SIM115 - one bounded read
            mode = os.stat(path).st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the {where}: {type(exc).__name__}: {getattr(exc, 'strerror', None) or exc}") from None
        if os.name == "posix" and mode & 0o077:
            log.warning("the %s can be read by other users; restrict it with chmod 600", where)
    else:
        where = f"${TOKEN_ENV}"
        text = os.environ.get(TOKEN_ENV, "")
        if not text.strip():
            return None
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(
            f"the {where} holds no usable board token: it must be one line of at least {MIN_TOKEN_CHARS} printable "
            "characters without spaces (e.g. the output of python -c \"import secrets; print(secrets.token_hex(32))\")."
        )
    return token.encode("ascii")


def auth_mac(token: bytes, role: Literal["client", "board"], challenge: str, nonce: str) -> str:
    """HMAC-SHA256 proof that ``role`` knows ``token``, over the board's challenge and the client's nonce (hex)."""
    text = f"hil-board-auth-{PROTOCOL_VERSION} {role} {challenge} {nonce}".encode("ascii")
    return hmac.new(token, text, hashlib.sha256).hexdigest()


def error_reply(rid: str, code: str, message: str) -> list[bytes]:
    """Encoded ``ERR`` reply (the message is cut to 2000 characters)."""
    if code not in ERROR_CODES:
        code = "INTERNAL"
    return encode_message("ERR", rid if _RID_RE.fullmatch(rid) else "-", {"code": code, "message": message[:2000]})

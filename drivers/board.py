"""The lab chip: a :class:`hil.Chip` on the chip's control board, over pyvisa (pyvisa-py TCPIP SOCKET).

Every chip call becomes one request of the board protocol (``docs/board-protocol.md``,
:mod:`hil.board_protocol`): a command line with a request id plus IEEE 488.2 blocks for
arrays. The public :class:`hil.Chip` methods validate arguments here first, so bad input is
refused before anything is sent, and the board validates again.

Faults: when a request fails on the way (connection refused or dropped, reply timeout) the chip
drops the connection, reconnects with exponential back-off and sends the *same* request again
with the *same* request id. The board remembers recent request ids with their replies, so a
request that was applied before the connection dropped is answered from memory, never applied
twice. Each new connection starts with ``HELLO``, whose boot id tells whether the board
restarted: a restarted board has lost its memory of request ids (and an emulator its whole chip
state), so the chip then fails with :class:`hil.ChipCommunicationError` naming the request that
may or may not have been applied, and refuses every further call. A board that stays away for the
whole reconnect window fails the call, and every later call fails at once.

Exactly once across crashes: the run machinery announces each journaled call with
:meth:`LabChip.begin_call` (``"<run_id>:<journal index>"``); the request id of that call is derived
from the key (:func:`hil.board_protocol.rid_for_call_key`), so a call that a killed run made but did
not journal is sent again by ``hil resume`` under the *same* id and answered from the board's
memory. Calls without a key (scripts using the chip directly) use ids of this chip's session.

Authentication: a board that has a token (``hil emulate --token-file``) answers ``HELLO`` with a
challenge; the chip proves it knows the token (HMAC, the token never travels) and checks the
board's proof. The token comes from ``token`` / ``token_file``, else ``$HIL_BOARD_TOKEN_FILE`` or
``$HIL_BOARD_TOKEN``; it is never logged, stored in run files or shown in :attr:`LabChip.info`.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import secrets
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyvisa
from pyvisa import constants
from pyvisa import errors as visa_errors
from pyvisa.resources import MessageBasedResource

from drivers.instrument import default_resource_manager
from hil.board_protocol import (
    AUTH_SCHEME,
    PROTOCOL_VERSION,
    BoardProtocolError,
    Message,
    auth_mac,
    block_header,
    decode_block,
    encode_message,
    join_chunks,
    parse_block_header,
    parse_line,
    read_token,
    rid_for_call_key,
)
from hil.chip import WRITE_HEAD_LIMIT_UA, Chip, ChipInfo, Geometry, LdpuRegisters, PulseBatch, RecordedTiming
from hil.errors import ChipCommunicationError, ChipInputError, HilError, SafetyLimitError, check_range

log = logging.getLogger("drivers.board")

#: Errors after which a request is retried on a fresh connection.
_TRANSIENT: tuple[type[BaseException], ...] = (visa_errors.VisaIOError, OSError, BoardProtocolError, EOFError)
#: pyvisa-py reads sockets in 4 KiB pieces by default; large MVM replies go much faster in bigger ones.
_RECV_BYTES = 1 << 20
#: Messages from this size (bytes) on use the fast socket paths (see ``LabChip._send_fast``).
_FAST_BYTES = 1 << 16


#: Environment variable naming a token file (read before ``$HIL_BOARD_TOKEN``).
TOKEN_FILE_ENV = "HIL_BOARD_TOKEN_FILE"


class BoardRestartedError(ChipCommunicationError):
    """The board restarted (new boot id) while this chip was using it; its state is gone."""


class BoardAuthError(ChipCommunicationError):
    """The board and this chip do not share a token (or one of them has none where the other needs one)."""


class ReplyEvictedError(ChipCommunicationError):
    """The board executed this request id before, but no longer keeps its reply (``STALE``); it was not run again."""


class RequestConflictError(ChipCommunicationError):
    """The board executed a different request under this request id (``CONFLICT``); this one was not run."""


#: Errors that no retry can mend: the chip stops at once.
_FATAL: tuple[type[BaseException], ...] = (BoardRestartedError, BoardAuthError)


def normalize_address(address: str) -> str:
    """'HOST:PORT' -> 'TCPIP0::HOST::PORT::SOCKET'; VISA addresses pass unchanged."""
    if "::" in address:
        return address
    m = re.fullmatch(r"\[?([A-Za-z0-9_.\-]+)\]?:(\d{1,5})", address.strip())
    if m is None:
        raise ChipInputError(
            f"board address {address!r} is neither 'HOST:PORT' nor a VISA address like "
            "'TCPIP0::127.0.0.1::5025::SOCKET'."
        )
    return f"TCPIP0::{m.group(1)}::{int(m.group(2))}::SOCKET"


def _compact(arr: np.ndarray) -> Any:
    """A constant array as one scalar (the board broadcasts it); otherwise the array itself."""
    flat = arr.reshape(-1)
    if flat.size and bool(np.all(flat == flat[0])):
        return flat[0].item()
    return arr


class LabChip(Chip):
    """A chip on a control board that speaks the board protocol (a lab board or ``hil emulate``).

    ``address``: 'HOST:PORT' or a VISA address 'TCPIP0::HOST::PORT::SOCKET'. ``timeout_s``: reply
    timeout per request (s; a full-chip MVM batch can take seconds on an emulator).
    ``connect_timeout_s``: timeout of one connection attempt (s). ``reconnect_timeout_s``: how
    long to keep retrying after a failure (s), with back-off from ``backoff_initial_s`` doubling
    up to ``backoff_max_s``. ``max_pulse_ua``: the station's write-head current limit (uA, at most
    800); a pulse above it trips: ``trip_handler(chip, reason)`` runs (a station switches its
    outputs off) and :class:`hil.SafetyLimitError` is raised before anything is sent.
    ``fast_io``: send and receive messages of 64 KiB or more directly on pyvisa-py's socket
    (same bytes, fewer copies; see ``_send_fast``); False keeps every byte on VISA calls.
    ``token`` / ``token_file``: the board's shared secret (see the module docstring; default
    ``$HIL_BOARD_TOKEN_FILE``, then ``$HIL_BOARD_TOKEN``, else none).

    Faults: after a failure the chip keeps reconnecting for one window of ``reconnect_timeout_s``
    (each attempt's connection set-up is cut to what is left of it); when the window passes without
    an answer the call fails, and so does every later call, at once.
    """

    #: Resume must not re-execute a journal on real hardware: the state lives on the board.
    resume_by_reexecution = False
    #: The :class:`drivers.station.Station` this chip belongs to (set by ``Station.chip()``); runs
    #: on the chip record its snapshot and station file.
    station: Any = None

    def __init__(
        self,
        address: str,
        *,
        resource_manager: pyvisa.ResourceManager | None = None,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        reconnect_timeout_s: float = 10.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        max_pulse_ua: float = WRITE_HEAD_LIMIT_UA,
        trip_handler: Callable[[Any, str], None] | None = None,
        fast_io: bool = True,
        token: str | bytes | None = None,
        token_file: str | os.PathLike[str] | None = None,
    ) -> None:
        check_range("timeout_s", timeout_s, 0.01, 3600.0, fix="Give the reply timeout in seconds.")
        check_range("connect_timeout_s", connect_timeout_s, 0.01, 600.0)
        check_range("reconnect_timeout_s", reconnect_timeout_s, 0.0, 3600.0)
        check_range("backoff_initial_s", backoff_initial_s, 0.001, 60.0)
        check_range("backoff_max_s", backoff_max_s, backoff_initial_s, 600.0)
        check_range("max_pulse_ua", max_pulse_ua, 1e-3, WRITE_HEAD_LIMIT_UA, fix="The write heads allow 800 uA.")
        self.address = normalize_address(address)
        self.timeout_s = float(timeout_s)
        self.connect_timeout_s = float(connect_timeout_s)
        self.reconnect_timeout_s = float(reconnect_timeout_s)
        self.backoff_initial_s = float(backoff_initial_s)
        self.backoff_max_s = float(backoff_max_s)
        self.max_pulse_ua = float(max_pulse_ua)
        self.trip_handler = trip_handler
        self.fast_io = bool(fast_io)
        if token is not None and token_file is not None:
            raise ChipInputError("give the board token either as token= or as token_file=, not both")
        if token is not None:
            self._token: bytes | None = token.encode() if isinstance(token, str) else bytes(token)
        else:
            self._token = read_token(token_file if token_file is not None else os.environ.get(TOKEN_FILE_ENV) or None)
        self._rx: np.ndarray | None = None
        #: Key of the next chip call (``begin_call``), taken by the next backend method.
        self._pending_key: str | None = None
        #: Timing of the last call if the board answered it from memory (see ``recorded_timing``).
        self._replayed_timing: RecordedTiming | None = None
        #: End of the current reconnect window (time.monotonic), while retrying.
        self._window_end: float | None = None
        self._rm = resource_manager or default_resource_manager()
        self._session = secrets.token_hex(4)
        self._seq = 0
        self._res: MessageBasedResource | None = None
        self._boot: str | None = None
        self._failed: str | None = None
        self._closed = False
        #: Requests sent, retries made, reconnections and replies the board gave from memory (diagnostics, tests).
        self.stats = {"requests": 0, "retries": 0, "connections": 0, "replayed": 0}
        #: The board's own execution time of the last request (s), if it reports one (``exec_s``).
        self.last_board_exec_s: float | None = None
        self._hello: Message | None = None
        self._with_retry("HELLO", "-", self._ensure_connected)
        assert self._hello is not None
        try:
            details = json.loads(self._hello.get_array("info", scalar_ok=False).tobytes().decode())
            self.geometry = Geometry.model_validate(details["geometry"])
            self._remote_info = ChipInfo.model_validate(details["chip"])
        except (ValueError, KeyError, TypeError, BoardProtocolError) as exc:
            self.close()
            raise ChipCommunicationError(f"board at {self.address} sent an unusable HELLO reply: {exc}") from exc

    @classmethod
    def from_spec(cls, spec: str, seed: int | None = None, **kwargs: Any) -> LabChip:
        """Chip from a spec 'HOST:PORT' (as in ``lab:HOST:PORT``); the token, if any, from the environment.

        ``seed`` is accepted for a uniform backend interface but cannot seed hardware; an emulator
        behind the board has the seed it was started with (``hil emulate --seed``). A different
        one is logged as a warning.
        """
        if spec.startswith("station="):
            return cls._from_station(spec.partition("=")[2])
        chip = cls(spec, **kwargs)
        remote_seed = chip._remote_info.details.get("seed")
        if seed is not None and remote_seed is not None and int(remote_seed) != int(seed):
            log.warning("lab chip %s: requested seed %s, but the board's emulator runs seed %s", spec, seed, remote_seed)
        return chip

    @classmethod
    def _from_station(cls, path: str) -> LabChip:
        """``lab:station=FILE``: connect the station of a station file (instruments read back, limits set)
        and return its board's chip; closing the chip closes the station (outputs off, simulators stopped).
        Runs on it record the station's snapshot and file. Give an absolute path so `hil resume` finds it."""
        from drivers.station import Station

        if not path:
            raise ChipInputError("chip spec 'lab:station=' needs a station file: --chip lab:station=/PATH/TO/bench.yaml")
        station = Station.from_yaml(Path(path).expanduser().resolve()).connect()
        try:
            chip = station.chip()
        except BaseException:
            station.close()
            raise
        chip._owning_station = station
        return chip

    # ------------------------------------------------------------------ identity and clock
    @property
    def info(self) -> ChipInfo:
        r = self._remote_info
        return ChipInfo(
            backend="lab",
            name=f"{r.name} (board {self.address})",
            serial=r.serial,
            details={
                "address": self.address,
                "boot_id": self._boot,
                "protocol": PROTOCOL_VERSION,
                "board_backend": r.backend,
                "board": r.details,
            },
        )

    def now(self) -> float:
        return self._request("NOW", key=self._take_key()).get_float("t")

    def _sleep(self, seconds: float) -> None:
        self._request("SLEEP", {"s": float(seconds)}, key=self._take_key())

    # ------------------------------------------------------------------ exactly-once hooks
    def begin_call(self, key: str) -> None:
        """The next chip call is call ``key`` of a run: its request id is derived from ``key``.

        Taken by the next backend method (also when it fails before sending), so the calls the run
        machinery makes between journaled calls (such as reading the clock) keep session ids.
        """
        self._pending_key = str(key)

    def _take_key(self) -> str | None:
        key, self._pending_key = self._pending_key, None
        self._replayed_timing = None
        return key

    def recorded_timing(self) -> RecordedTiming | None:
        """Chip clock and board wall time of the last call if the board answered it from memory, else None.

        A call re-sent after a crash is answered with the reply the board kept, which carries the
        chip clock right after the original execution (``t_chip``) and its start (``t_wall``, the
        board's unix time). A journal then records those, as for any call served from a recording.
        """
        return self._replayed_timing

    # ------------------------------------------------------------------ programming and reads
    def _apply_pulses(self, batch: PulseBatch) -> None:
        key = self._take_key()
        if np.any(batch.amplitude_ua > self.max_pulse_ua):
            i = int(np.flatnonzero(batch.amplitude_ua > self.max_pulse_ua)[0])
            self._trip(
                f"pulse {i}: amplitude_ua={batch.amplitude_ua[i]} exceeds the station write-head limit of "
                f"{self.max_pulse_ua} uA; allowed (0, {self.max_pulse_ua}]. Lower the pulse current or raise "
                "write_head_current_ua in the station file."
            )
        params = {
            "core": batch.core,  # never a scalar: its length is the batch size
            "row": _compact(batch.row),
            "col": _compact(batch.col),
            "device": _compact(batch.device),
            "kind": _compact(batch.kind),
            "amp": _compact(batch.amplitude_ua),
            "width": _compact(batch.width_ns),
        }
        reply = self._request("PULSE", params, key=key)
        if reply.get_int("n") != len(batch):
            raise ChipCommunicationError(f"board applied {reply.get_int('n')} pulses, {len(batch)} were sent")

    def _trip(self, reason: str) -> None:
        log.error("lab chip: safety limit tripped: %s", reason)
        if self.trip_handler is not None:
            try:
                self.trip_handler(self, reason)
            except Exception as exc:  # the refusal still has to reach the protocol
                raise SafetyLimitError(f"{reason} (safe shutdown also failed: {exc})") from exc
        raise SafetyLimitError(reason)

    def _read_devices(self, core: np.ndarray, row: np.ndarray, col: np.ndarray, device: np.ndarray) -> np.ndarray:
        params = {"core": core, "row": _compact(row), "col": _compact(col), "device": _compact(device)}
        reply = self._request("READDEV", params, key=self._take_key())
        return reply.get_array("counts", scalar_ok=False).astype(np.int32, copy=False)

    def _read_cells(self, core: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        params = {"core": core, "row": _compact(row), "col": _compact(col)}
        reply = self._request("READCELL", params, key=self._take_key())
        return reply.get_array("counts", scalar_ok=False).astype(np.int32, copy=False)

    # ------------------------------------------------------------------ MVM
    def _mvm(self, x: Any, cores: np.ndarray, output: str, mode: str) -> Any:
        key = self._take_key()
        is_torch = hasattr(x, "detach") and hasattr(x, "cpu")
        xs = x.detach().cpu() if is_torch else np.asarray(x)
        # validate_mvm broadcasts shared (B, rows) inputs to every core; send them once.
        stride0 = xs.stride(0) if is_torch else xs.strides[0]
        shared = stride0 == 0
        arr = xs[0] if shared else xs
        arr_np = arr.numpy() if is_torch else arr
        params = {"x": np.ascontiguousarray(arr_np, dtype=np.int8), "cores": cores, "output": output, "mode": mode}
        y = self._request("MVM", params, key=key).get_array("y", scalar_ok=False)
        if is_torch:
            import torch  # only when the caller works in torch anyway

            return torch.from_numpy(np.ascontiguousarray(y))
        return y

    # ------------------------------------------------------------------ LDPU
    def _set_ldpu(self, cores: np.ndarray, regs: LdpuRegisters) -> None:
        self._request(
            "LDPU.SET",
            {
                "cores": cores,
                "scale": np.ascontiguousarray(regs.scale, dtype=np.float16),
                "offset": np.ascontiguousarray(regs.offset, dtype=np.float16),
                "relu": np.ascontiguousarray(regs.relu, dtype=bool),
            },
            key=self._take_key(),
        )

    def _get_ldpu(self, cores: np.ndarray) -> LdpuRegisters:
        r = self._request("LDPU.GET", {"cores": cores}, key=self._take_key())
        return LdpuRegisters(
            scale=r.get_array("scale", scalar_ok=False).astype(np.float16, copy=False),
            offset=r.get_array("offset", scalar_ok=False).astype(np.float16, copy=False),
            relu=r.get_array("relu", scalar_ok=False).astype(bool, copy=False),
        )

    def board_stats(self) -> dict[str, int]:
        """The board's counters (``STATS``): requests executed (``executed``, and per command
        ``executed_pulse``, ``executed_mvm``, ...), answered from memory (``replayed``), refused, connections."""
        r = self._request("STATS")
        return {k: int(v) for k, v in r.params.items() if k != "exec_s" and isinstance(v, str) and v.isdigit()}

    # ------------------------------------------------------------------ transport
    def _request(self, verb: str, params: dict[str, Any] | None = None, *, key: str | None = None) -> Message:
        """Send one request and return its ``OK`` reply (an ``ERR`` reply is raised as the matching error).

        ``key``: the run call this request is (``begin_call``): its id is derived from the key, else
        the chip's session id and a counter are used.
        """
        if self._closed:
            raise ChipCommunicationError(f"lab chip at {self.address} is closed; create a new one.")
        if self._failed is not None:
            raise ChipCommunicationError(self._failed)
        self._seq += 1
        rid = rid_for_call_key(key) if key is not None else f"{self._session}-{self._seq}"
        chunks = encode_message(verb, rid, params, narrow=True)
        size = sum(len(c) for c in chunks)
        payload = None if self.fast_io and size >= _FAST_BYTES else join_chunks(chunks)
        self.stats["requests"] += 1

        def attempt() -> Message:
            res = self._ensure_connected()
            if payload is None and self._send_fast(res, chunks):
                pass
            else:
                res.write_raw(payload if payload is not None else join_chunks(chunks))
            return self._read_reply(res, rid)

        reply = self._with_retry(verb, rid, attempt)
        if reply.params.get("cached") == "1":
            self.stats["replayed"] += 1
            try:
                t_chip, t_wall = float(reply.params["t_chip"]), float(reply.params["t_wall"])
                exec_s = float(reply.params.get("exec_s", "nan"))
                self._replayed_timing = RecordedTiming(t_chip, t_wall, exec_s)
            except (KeyError, ValueError):
                self._replayed_timing = None
        if reply.verb == "ERR":
            raise self._error_from_reply(verb, reply)
        exec_s = reply.params.get("exec_s")
        self.last_board_exec_s = float(exec_s) if isinstance(exec_s, str) else None
        return reply

    def _with_retry(self, verb: str, rid: str, fn: Callable[[], Any]) -> Any:
        """``fn()``, retried on transport failures for one reconnect window (then this chip fails for good)."""
        delay = self.backoff_initial_s
        attempts = 0
        self._window_end = None
        try:
            while True:
                attempts += 1
                try:
                    return fn()
                except _FATAL as exc:
                    self._failed = str(exc)
                    self._drop_connection()
                    raise
                except _TRANSIENT as exc:
                    self._drop_connection()
                    now = time.monotonic()
                    if self._window_end is None:
                        self._window_end = now + self.reconnect_timeout_s
                    if now + delay > self._window_end:
                        text = (
                            f"board at {self.address} did not answer {verb} (request {rid}) after {attempts} attempt(s) "
                            f"over {self.reconnect_timeout_s:g} s; last error: {type(exc).__name__}: {exc}. "
                            "Check that the board (or 'hil emulate') is running, or raise reconnect_timeout_s / timeout_s."
                        )
                        self._failed = (
                            f"{text} This lab chip has given up on the board; create a new one once the board is back."
                        )
                        raise ChipCommunicationError(text) from exc
                    log.warning("board %s: %s %s failed (%s); retrying in %.3g s", self.address, verb, rid, exc, delay)
                    self.stats["retries"] += 1
                    time.sleep(delay)
                    delay = min(2.0 * delay, self.backoff_max_s)
        finally:
            self._window_end = None

    def _setup_timeout_s(self) -> float:
        """Timeout of one connection set-up step (s): ``connect_timeout_s``, cut to what is left of the window."""
        if self._window_end is None:
            return self.connect_timeout_s
        return max(0.01, min(self.connect_timeout_s, self._window_end - time.monotonic()))

    def _ensure_connected(self) -> MessageBasedResource:
        if self._res is not None:
            return self._res
        setup_s = self._setup_timeout_s()
        try:
            res = self._rm.open_resource(self.address, open_timeout=max(1, round(setup_s * 1000)))
        except visa_errors.VisaIOError:
            raise
        except Exception as exc:  # pyvisa-py raises a bare Exception when it cannot connect
            raise OSError(f"cannot open {self.address}: {exc}") from exc
        if not isinstance(res, MessageBasedResource):
            res.close()
            raise ChipCommunicationError(f"{self.address} is not a message-based VISA resource")
        try:
            res.read_termination = "\n"
            res.write_termination = ""
            res.timeout = self._setup_timeout_s() * 1000.0
            self._tune(res)
            n = self.stats["connections"] + 1
            rid = f"{self._session}-h{n}"
            nonce = secrets.token_hex(16)
            res.write_raw(join_chunks(encode_message("HELLO", rid, {"proto": PROTOCOL_VERSION, "nonce": nonce})))
            hello = self._read_reply(res, rid)
            if hello.verb == "ERR":
                code, text = hello.params.get("code"), hello.params.get("message")
                if code == "AUTH":
                    raise BoardAuthError(f"board at {self.address} refused HELLO: {text}")
                raise ChipCommunicationError(f"board at {self.address} refused HELLO: {text}")
            boot = hello.get_str("boot")
            if self._boot is not None and boot != self._boot:
                raise BoardRestartedError(
                    f"the board at {self.address} restarted while this run was using it (boot id {self._boot} -> "
                    f"{boot}). A restarted board has forgotten which requests it applied, and an emulator has lost "
                    f"its whole chip state (conductances, LDPU registers, clock), so request {self._seq} may or may "
                    "not have been applied. The run cannot go on; start it again."
                )
            auth = hello.params.get("auth", "none")
            if auth == AUTH_SCHEME:
                hello.params["info"] = self._authenticate(res, hello.get_str("challenge"), nonce, n)
            elif auth != "none":
                raise BoardAuthError(f"board at {self.address} asks for authentication {auth!r}; this client speaks "
                                     f"{AUTH_SCHEME!r}. Update hil on one side.")
            elif self._token is not None and self._boot is None:
                log.warning("board %s does not ask for a token; connecting without authentication", self.address)
            self._boot = boot
            self._hello = hello
            res.timeout = self.timeout_s * 1000.0
        except BaseException:
            res.close()
            raise
        self._res = res
        self.stats["connections"] += 1
        return res

    def _authenticate(self, res: MessageBasedResource, challenge: str, nonce: str, n: int) -> Any:
        """Answer the board's challenge (the token itself is never sent); check its proof; return HELLO's info."""
        if self._token is None:
            raise BoardAuthError(
                f"board at {self.address} requires a token; give it in the station file (board.token_file), as "
                "token_file= / token=, or in $HIL_BOARD_TOKEN_FILE / $HIL_BOARD_TOKEN."
            )
        rid = f"{self._session}-a{n}"
        mac = auth_mac(self._token, "client", challenge, nonce)
        res.write_raw(join_chunks(encode_message("AUTH", rid, {"mac": mac})))
        reply = self._read_reply(res, rid)
        if reply.verb == "ERR":
            raise BoardAuthError(f"board at {self.address} refused the token: {reply.params.get('message')}")
        proof = reply.get_str("proof")
        if not hmac.compare_digest(proof, auth_mac(self._token, "board", challenge, nonce)):
            raise BoardAuthError(f"board at {self.address} could not prove that it holds the token; is it the right board?")
        return reply.get_array("info", scalar_ok=False)

    @staticmethod
    def _tune(res: MessageBasedResource) -> None:
        """Socket settings for a request/reply protocol with large blocks.

        TCP_NODELAY: pyvisa-py sends a request in 4 KiB pieces; with Nagle's algorithm on, the
        last piece waits for the board's delayed ACK (40 ms on Linux) before it leaves. The VISA
        attribute is the proper way, but pyvisa-py 0.8 routes its setter to a stub, so the
        session's own socket is used where the attribute fails. Bigger ``recv()`` calls (a plain
        attribute of pyvisa-py's socket session, 4 KiB by default) make large MVM replies faster.
        Other VISA libraries are left alone.
        """
        sessions = getattr(res.visalib, "sessions", None)
        session = sessions.get(res.session) if isinstance(sessions, dict) else None
        try:
            res.set_visa_attribute(constants.ResourceAttribute.tcpip_nodelay, constants.VisaBoolean.true)
        except Exception:
            sock = getattr(session, "interface", None)
            if isinstance(sock, socket.socket):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if session is not None and isinstance(getattr(session, "max_recv_size", None), int):
            session.max_recv_size = _RECV_BYTES

    def _wait_readable(self, res: MessageBasedResource) -> None:
        """Wait (up to the resource's timeout) until a reply line can be read; EOFError if the board closed.

        pyvisa-py reads a socket that the peer closed as 'no data yet' until its timeout runs out, so
        a board that died would cost a whole reply timeout (``timeout_s``) before the first retry.
        Peeking tells a closed connection at once; the bytes themselves are still read by VISA.
        """
        found = self._pyvisa_py_socket(res)
        if found is None:
            return
        session, sock = found
        if b"\n" in session._pending_buffer:
            return
        deadline = time.monotonic() + float(res.timeout or 0.0) / 1000.0
        while True:
            ready, _, _ = select.select([sock], [], [], max(0.0, min(0.5, deadline - time.monotonic())))
            if ready:
                try:
                    peek = sock.recv(1, socket.MSG_PEEK)
                except BlockingIOError:
                    continue
                if not peek:
                    raise EOFError("the board closed the connection")
                return
            if time.monotonic() >= deadline:
                return  # VISA's read reports the timeout

    def _read_reply(self, res: MessageBasedResource, rid: str) -> Message:
        self._wait_readable(res)
        line = res.read_raw()
        if not line.endswith(b"\n"):
            raise EOFError(f"reply line cut short: {line[:80]!r}")
        msg, arrays = parse_line(line)
        if arrays:
            total = sum(len(block_header(s.nbytes)) + s.nbytes for _, s in arrays) + 1
            # Blocks are binary: the termination character must not end a read inside them.
            fast = self._recv_fast(res, total) if self.fast_io and total >= _FAST_BYTES else None
            if fast is not None:
                data = fast
            else:
                res.read_termination = None
                try:
                    data = memoryview(self._read_exact(res, total))
                finally:
                    res.read_termination = "\n"
            pos = 0
            for key, spec in arrays:
                n_digits, _ = parse_block_header(bytes(data[pos : pos + 2]))
                count = int(bytes(data[pos + 2 : pos + 2 + n_digits]))
                if count != spec.nbytes:
                    raise BoardProtocolError(f"reply block {key} has {count} bytes, expected {spec.nbytes}", fatal=True)
                pos += 2 + n_digits
                msg.params[key] = decode_block(spec, data[pos : pos + count], copy=True)
                pos += count
            if bytes(data[pos : pos + 1]) != b"\n":
                raise BoardProtocolError("reply does not end with '\\n' after its blocks", fatal=True)
        if msg.rid != rid:
            if msg.verb == "ERR" and msg.rid == "-":  # the board closed this connection (busy, idle, ...) and said why
                code, text = msg.params.get("code"), msg.params.get("message")
                if code == "AUTH":
                    raise BoardAuthError(f"board at {self.address}: {text}")
                raise BoardProtocolError(f"the board closed the connection ({code}): {text}", fatal=True)
            raise BoardProtocolError(f"reply to request {msg.rid!r} arrived while waiting for {rid!r}", fatal=True)
        return msg

    @staticmethod
    def _read_exact(res: MessageBasedResource, total: int) -> bytes:
        """``total`` bytes through the VISA read call (one call unless the reply arrives in parts)."""
        parts: list[bytes] = []
        got = 0
        while got < total:
            with res.ignore_warning(constants.StatusCode.success_max_count_read):
                chunk, _ = res.visalib.read(res.session, total - got)
            if not chunk:
                raise EOFError(f"reply cut short after {got} of {total} bytes")
            parts.append(chunk)
            got += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    # Fast paths for large messages. pyvisa-py's socket session sends in 4 KiB pieces with a
    # select() per piece and copies a reply several times on the way in (about 30 ms per copy of
    # 32 MiB where fresh pages fault, as in small VMs). When the resource is a pyvisa-py socket
    # session, large requests go out with one sendall() on its socket and large blocks come in
    # with recv_into() straight into their final buffer, after the bytes pyvisa-py has already
    # buffered. Connection set-up, lines and small messages stay on the VISA calls, and
    # ``fast_io=False`` keeps everything on them (same bytes on the wire either way).
    @staticmethod
    def _pyvisa_py_socket(res: MessageBasedResource) -> tuple[Any, socket.socket] | None:
        sessions = getattr(res.visalib, "sessions", None)
        session = sessions.get(res.session) if isinstance(sessions, dict) else None
        sock = getattr(session, "interface", None)
        if isinstance(sock, socket.socket) and isinstance(getattr(session, "_pending_buffer", None), bytearray):
            return session, sock
        return None

    def _send_fast(self, res: MessageBasedResource, chunks: list[Any]) -> bool:
        found = self._pyvisa_py_socket(res)
        if found is None:
            return False
        sock = found[1]
        sock.settimeout(self.timeout_s)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
        finally:
            sock.settimeout(None)
        return True

    def _recv_fast(self, res: MessageBasedResource, total: int) -> memoryview | None:
        found = self._pyvisa_py_socket(res)
        if found is None:
            return None
        session, sock = found
        # One receive buffer per chip, reused: fresh pages for every large reply would cost more
        # than the copy out of it (decode_block copies, so no returned array aliases it).
        if self._rx is None or self._rx.size < total:
            self._rx = np.empty(total, dtype=np.uint8)
        out = memoryview(self._rx)[:total]
        pending: bytearray = session._pending_buffer
        pos = min(len(pending), total)
        out[:pos] = pending[:pos]
        del pending[:pos]
        sock.settimeout(self.timeout_s)
        try:
            while pos < total:
                n = sock.recv_into(out[pos:], total - pos)
                if n == 0:
                    raise EOFError(f"the board closed the connection after {pos} of {total} reply bytes")
                pos += n
        finally:
            sock.settimeout(None)
        return out

    def _error_from_reply(self, verb: str, reply: Message) -> HilError:
        code = str(reply.params.get("code", "INTERNAL"))
        text = str(reply.params.get("message", ""))
        if code in ("INPUT", "LIMIT"):
            return ChipInputError(text)
        if code == "SAFETY":
            return SafetyLimitError(text)
        if code == "STALE":
            return ReplyEvictedError(
                f"board at {self.address} refused {verb} (STALE): {text}. The board executed this call before "
                "(in the run that was interrupted) but no longer keeps its result, so the run cannot go on exactly "
                "once from here; start it again (and give the board more reply memory, hil emulate --cache-mib)."
            )
        if code == "CONFLICT":
            return RequestConflictError(f"board at {self.address} refused {verb} (CONFLICT): {text}")
        if code == "AUTH":
            return BoardAuthError(f"board at {self.address} refused {verb} (AUTH): {text}")
        return ChipCommunicationError(f"board at {self.address} refused {verb} ({code}): {text}")

    def _drop_connection(self) -> None:
        res, self._res = self._res, None
        if res is not None:
            try:
                res.close()
            except Exception as exc:  # closing a broken socket may fail; the connection is gone either way
                log.debug("closing %s: %s", self.address, exc)

    def close(self) -> None:
        """Close the connection (never the shared ResourceManager). Safe to call twice.

        A chip opened from a station file (``lab:station=FILE``) closes its station too.
        """
        station, self._owning_station = getattr(self, "_owning_station", None), None
        self._closed = True
        self._drop_connection()
        if station is not None:
            station.close()

"""Exact-exchange testing of instrument drivers over a real socket.

:func:`expected_exchange` starts a scripted instrument on a local TCP port, opens the driver on it
through pyvisa-py (``TCPIP0::127.0.0.1::PORT::SOCKET``) and checks that the driver sends exactly
the listed commands, in order: an extra, a different or a missing message fails, as does a reply
the driver never asked for. Typical use::

    with expected_exchange(KeysightE36300, [("*IDN?", "Keysight,E36312A,1,1"), ...]) as psu:
        psu.output(1).voltage_v = 1.2

Unlike a mock of pyvisa, this exercises the real resource, its terminations and its timeouts.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from typing import Any

from drivers.instrument import Instrument, default_resource_manager

#: Reply the scripted instrument gives to a message it did not expect (so a query fails fast).
UNEXPECTED_REPLY = "!!UNEXPECTED"

Exchange = tuple[str, str | None]


class ScriptedInstrument:
    """A one-connection TCP instrument that expects ``exchanges`` in order.

    ``exchanges``: ``(command, reply)`` pairs without terminations; ``reply=None`` for a command
    that has no reply. Mismatches are collected in :attr:`errors`.
    """

    def __init__(self, exchanges: Sequence[Exchange], write_termination: str, read_termination: str) -> None:
        self.exchanges = list(exchanges)
        self.write_term = write_termination.encode()
        self.read_term = read_termination.encode()
        self.errors: list[str] = []
        self.received: list[str] = []
        self.index = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._serve, name="scripted-instrument", daemon=True)

    @property
    def address(self) -> str:
        """VISA address of this scripted instrument."""
        return f"TCPIP0::127.0.0.1::{self.port}::SOCKET"

    def start(self) -> ScriptedInstrument:
        self._thread.start()
        return self

    def _serve(self) -> None:
        self._listener.settimeout(30.0)
        try:
            conn, _ = self._listener.accept()
        except OSError as exc:
            self.errors.append(f"no connection: {exc}")
            return
        finally:
            self._listener.close()
        buffer = b""
        with conn:
            conn.settimeout(30.0)
            while True:
                try:
                    chunk = conn.recv(65536)
                except OSError as exc:
                    self.errors.append(f"socket error: {exc}")
                    return
                if not chunk:
                    if buffer:
                        self.errors.append(f"unterminated message at close: {buffer!r}")
                    return
                buffer += chunk
                while self.write_term in buffer:
                    raw, buffer = buffer.split(self.write_term, 1)
                    reply = self._handle(raw.decode(errors="replace"))
                    if reply is not None:
                        conn.sendall(reply.encode() + self.read_term)

    def _handle(self, message: str) -> str | None:
        self.received.append(message)
        if self.errors:  # once off script, every further message is reported too
            self.errors.append(f"message {len(self.received)}: {message!r} after an earlier mismatch")
            return UNEXPECTED_REPLY
        if self.index >= len(self.exchanges):
            self.errors.append(f"message {len(self.received)}: extra command {message!r}; the script has ended")
            return UNEXPECTED_REPLY
        expected, reply = self.exchanges[self.index]
        if message != expected:
            self.errors.append(f"message {len(self.received)}: sent {message!r}, expected {expected!r}")
            return UNEXPECTED_REPLY
        self.index += 1
        return reply

    def finish(self, timeout_s: float = 10.0) -> list[str]:
        """Wait for the connection to end and return every problem found (empty when exact)."""
        self._thread.join(timeout_s)
        problems = list(self.errors)
        if self._thread.is_alive():
            problems.append("the driver did not close its connection")
        if not self.errors and self.index < len(self.exchanges):
            missing = self.exchanges[self.index :]
            problems.append(f"{len(missing)} expected message(s) never sent, first {missing[0]!r}")
        return problems


class ExchangeMismatchError(AssertionError):
    """The driver's traffic differed from the script."""


class expected_exchange:  # noqa: N801 - used like a function in ``with`` statements
    """Context manager: a driver connected to a :class:`ScriptedInstrument` playing ``exchanges``.

    On exit the driver is closed and any difference from the script raises
    :class:`ExchangeMismatchError` (also when the body raised because of the difference).
    """

    def __init__(self, driver_class: type[Instrument], exchanges: Sequence[Exchange], **kwargs: Any) -> None:
        self.driver_class = driver_class
        self.kwargs = {"name": "scripted", "timeout_s": 2.0, **kwargs}
        self.server = ScriptedInstrument(exchanges, driver_class.write_termination, driver_class.read_termination)
        self.driver: Instrument | None = None

    def __enter__(self) -> Any:
        self.server.start()
        try:
            self.driver = self.driver_class(
                self.server.address, resource_manager=default_resource_manager(), **self.kwargs
            )
        except Exception as exc:
            problems = self.server.finish()
            if problems:
                raise ExchangeMismatchError("; ".join(problems)) from exc
            raise
        return self.driver

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        if self.driver is not None:
            self.driver.close()
        problems = self.server.finish()
        if problems:
            raise ExchangeMismatchError("; ".join(problems)) from exc
        return False

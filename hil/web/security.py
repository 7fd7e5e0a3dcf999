"""Who may talk to ``hil serve``: loopback binds, the access token, the Host header.

Internal module (its layout may change).

* Bound to a loopback address (the default, 127.0.0.1) the server needs no token, but it answers
  only requests whose ``Host`` header names a loopback host, so a web page elsewhere cannot reach
  it through DNS rebinding.
* Bound to any other address it needs a token: ``--token``, else ``$HIL_SERVE_TOKEN``, else a
  random one printed with the URL. Every request must then carry it: ``Authorization: Bearer
  TOKEN``, ``?token=TOKEN`` (which also sets a cookie, so links and the live page's event stream
  work in a browser), or that cookie. Without it the answer is 401.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

#: Environment variable holding the token for a non-loopback bind.
TOKEN_ENV = "HIL_SERVE_TOKEN"
COOKIE = "hil_serve_token"
#: Host header names a loopback-bound server answers to (any port).
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
MIN_TOKEN = 16


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (127.0.0.0/8, ::1, localhost)."""
    h = host.strip().strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def bind_token(host: str, token: str | None) -> str | None:
    """The token a server bound to ``host`` uses: None on loopback without one, else ``token`` or a new one.

    Raises ValueError for a token too short to be one.
    """
    if token is not None and token != "":
        if len(token) < MIN_TOKEN:
            raise ValueError(f"the token is {len(token)} characters; use at least {MIN_TOKEN} (or give none and hil makes one).")
        if not re.fullmatch(r"[A-Za-z0-9._~-]+", token):
            raise ValueError("the token may hold only letters, digits and . _ ~ - (it travels in URLs and a cookie).")
        return token
    if is_loopback(host):
        return None
    return secrets.token_urlsafe(24)


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class AccessMiddleware:
    """ASGI middleware: the token check (when a token is set), else the loopback Host check."""

    def __init__(self, app: Any, *, token: str | None, loopback_only: bool) -> None:
        self.app = app
        self.token = token
        self.loopback_only = loopback_only

    def allowed(self, headers: dict[str, str], query: str) -> tuple[bool, bool]:
        """(allowed, set the cookie) for a request's headers and query string."""
        if self.token is None:
            if not self.loopback_only:
                return True, False
            return _host_name(headers.get("host", "")) in LOOPBACK_NAMES, False
        want = self.token.encode()
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer ") and hmac.compare_digest(auth[7:].strip().encode(), want):
            return True, False
        for given in parse_qs(query).get("token", []):
            if hmac.compare_digest(given.encode(), want):
                return True, True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            return False, False
        morsel = cookie.get(COOKIE)
        if morsel is not None and hmac.compare_digest(morsel.value.encode(), want):
            return True, False
        return False, False

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                      send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        ok, set_cookie = self.allowed(headers, scope.get("query_string", b"").decode("latin-1"))
        if not ok:
            if self.token is None:
                body, status = b"hil serve answers only requests to a loopback host name (127.0.0.1, localhost).\n", 403
            else:
                body, status = (b"401: this hil serve needs its token: open the URL it printed (?token=...), "
                                b"or send 'Authorization: Bearer TOKEN'.\n", 401)
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                    (b"www-authenticate", b'Bearer realm="hil serve"')]})
            await send({"type": "http.response.body", "body": body})
            return
        if not set_cookie:
            await self.app(scope, receive, send)
            return
        assert self.token is not None
        cookie_header = f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict".encode("latin-1")

        async def send_with_cookie(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"set-cookie", cookie_header)]}
            await send(message)

        await self.app(scope, receive, send_with_cookie)

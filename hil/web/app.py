"""``hil serve``: a read-only web view of a runs folder (Starlette on uvicorn).

Internal module (its layout may change); the command is ``hil serve --runs DIR [--host H] [--port N]``
(``docs/web.md``).

Pages: ``/`` the run list (filters protocol, status, tag; newest first), ``/runs/ID`` a run
(metadata, config, summary, the report figures, each stream as an interactive plot), and
``/runs/ID/live`` a running run, updated by server-sent events. The JSON API for scripts mirrors
``hil ls --json`` and ``hil show --json``:

``/api/runs``                            the run list (``?protocol= &status= &tag= &where= &since= &limit= &order=``)
``/api/runs/ID``                         one run (``hil show --json``; ``path`` is the file name in the folder)
``/api/runs/ID/streams/S``               a stream's rows for plotting (``?start= &max_points=``)
``/api/runs/ID/figures``                 the report figures' names and URLs
``/api/runs/ID/events``                  server-sent events: ``update`` (status, rows per stream, new rows), then ``end``

The server only reads: it opens run files through :class:`hil.runs.RunReader`, reads the index
without adding to it, and renders figures into a temporary folder of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hil.errors import HilError, RunFileError
from hil.web import pages
from hil.web.assets import CSS, JS
from hil.web.data import MAX_POINTS, BadRequestError, NotFoundError, RunsFolder, live_state, run_document, stream_payload
from hil.web.figures import FigureCache
from hil.web.security import TOKEN_ENV, AccessMiddleware, bind_token, is_loopback

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
#: Seconds between two looks at a running run's file (the live page).
POLL_S = 0.5
#: Most rows of one stream an event carries (more are thinned evenly).
EVENT_MAX_ROWS = 4000

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}


class _Headers:
    """ASGI middleware adding :data:`SECURITY_HEADERS` to every response."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.headers = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                have = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *((k, v) for k, v in self.headers if k not in have)]}
            await send(message)

        await self.app(scope, receive, add)


def create_app(runs: str | os.PathLike[str], *, host: str = DEFAULT_HOST, token: str | None = None,
               poll_s: float = POLL_S, figure_cache: str | os.PathLike[str] | None = None) -> Any:
    """The ASGI app serving ``runs`` read-only.

    ``host`` is the address it is bound to: a loopback one answers loopback Host names only; any
    other needs ``token`` (:func:`hil.web.security.bind_token` makes one). A given ``token`` is
    always required. ``figure_cache``: where figures are rendered (default: a temporary folder,
    removed when the app shuts down); never inside ``runs``.
    """
    folder_path = Path(runs)
    if not folder_path.is_dir():
        raise HilError(f"{folder_path} is not a folder of runs (no such folder); give the folder the runs were "
                       "written to: hil serve --runs DIR.")
    if token is None and not is_loopback(host):
        raise HilError(f"binding {host} (not a loopback address) needs a token; hil serve makes one when none is given.")
    folder = RunsFolder(folder_path)
    cache = FigureCache(folder.folder, Path(figure_cache) if figure_cache is not None else None)
    label = str(folder.folder) if token is None else folder.folder.name  # the server's paths stay home off loopback

    def html_error(status: int, message: str) -> HTMLResponse:
        return HTMLResponse(pages.error_page(status, message, folder=label), status_code=status)

    def json_error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    def said(exc: BaseException) -> str:
        """An error's message, run files named by their name in the folder (not the server's path)."""
        return str(exc).replace(f"{folder.folder}{os.sep}", "")

    async def guarded(make: Callable[[], Any], error: Callable[[int, str], Response]) -> Response:
        """Run ``make`` in a thread; hil's errors become 400/404/422 pages, anything else a 500 page."""
        try:
            return await run_in_threadpool(make)
        except BadRequestError as exc:
            return error(400, said(exc))
        except NotFoundError as exc:
            return error(404, said(exc))
        except RunFileError as exc:
            return error(422, said(exc))
        except HilError as exc:
            return error(400, said(exc))
        except Exception as exc:  # a crafted file must give an error page, never take the server down
            return error(500, f"{type(exc).__name__}: {said(exc)}")

    def _filters(request: Request) -> dict[str, Any]:
        q = request.query_params
        return {"protocol": q.get("protocol") or None, "status": q.get("status") or None,
                "tag": q.get("tag") or None}

    # ------------------------------------------------------------------ pages
    async def index_page(request: Request) -> Response:
        def make() -> Response:
            f = _filters(request)
            entries, unreadable = folder.entries()
            unreadable = {name: message.replace(f"{folder.folder}{os.sep}", "") for name, message in unreadable.items()}
            chosen = folder.select(protocol=f["protocol"], status=f["status"], tags=[f["tag"]] if f["tag"] else [],
                                   entries=entries)
            protocols = sorted({str(e.get("protocol", "")) for e in entries if e.get("protocol")})
            tags = sorted({str(t) for e in entries for t in (e.get("tags") or [])})
            return HTMLResponse(pages.run_list(chosen, folder=label, unreadable=unreadable, filters=f,
                                               protocols=protocols, tags=tags, total=len(entries)))

        return await guarded(make, html_error)

    def _figure_list(run_id: str, path: Path, status: str) -> tuple[list[tuple[str, str]] | None, list[str]]:
        if status == "running":
            return None, []
        figs = cache.figures(path)
        items = [(p.name, f"/runs/{pages.url_part(run_id)}/figures/{i}") for i, p in enumerate(figs.paths)]
        return items, [p.replace(f"{folder.folder}{os.sep}", "") for p in figs.problems]

    async def run_view(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        def make() -> Response:
            path = folder.resolve(run_id)
            with folder.open(path) as r:
                doc = run_document(r, path.name)
            figures, problems = _figure_list(run_id, path, str(doc.get("effective_status")))
            return HTMLResponse(pages.run_page(doc, folder=label, figures=figures, figure_problems=problems))

        return await guarded(make, html_error)

    async def live_view(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        def make() -> Response:
            path = folder.resolve(run_id)
            with folder.open(path) as r:
                state = live_state(r)
            return HTMLResponse(pages.live_page(state, folder=label))

        return await guarded(make, html_error)

    async def figure(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        def make() -> Response:
            path = folder.resolve(run_id)
            n = request.path_params["n"]
            figs = cache.figures(path)
            if not 0 <= n < len(figs.paths):
                raise NotFoundError(f"run {run_id!r} has {len(figs.paths)} figures; there is no figure {n}.")
            return FileResponse(figs.paths[n], media_type="image/png")

        return await guarded(make, html_error)

    # ------------------------------------------------------------------ JSON
    async def api_runs(request: Request) -> Response:
        def make() -> Response:
            q = request.query_params
            try:
                limit = int(q["limit"]) if q.get("limit") else None
            except ValueError:
                raise BadRequestError(f"limit={q.get('limit')!r} is not a whole number.") from None
            order = q.get("order", "newest")
            if order not in ("newest", "oldest"):
                raise BadRequestError(f"order={order!r}; use newest or oldest.")
            entries = folder.select(protocol=q.get("protocol"), status=q.get("status"), tags=q.getlist("tag"),
                                    where=q.getlist("where"), since=q.get("since"), limit=limit,
                                    newest_first=order == "newest")
            return Response(_json_text(json.dumps(entries, default=str)), media_type="application/json")

        return await guarded(make, json_error)

    async def api_run(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        def make() -> Response:
            from hil.runs import to_json

            path = folder.resolve(run_id)
            with folder.open(path) as r:
                doc = run_document(r, path.name)
            return Response(_json_text(to_json(doc)), media_type="application/json")

        return await guarded(make, json_error)

    async def api_stream(request: Request) -> Response:
        run_id, stream = request.path_params["run_id"], request.path_params["stream"]

        def make() -> Response:
            q = request.query_params
            try:
                start = int(q.get("start", "0"))
                max_points = int(q.get("max_points", str(MAX_POINTS)))
            except ValueError:
                raise BadRequestError("start and max_points must be whole numbers.") from None
            path = folder.resolve(run_id)
            with folder.open(path) as r:
                payload = stream_payload(r, stream, start=start, max_points=min(max(max_points, 2), 100_000))
            return Response(_json_text(json.dumps(payload, default=str)), media_type="application/json")

        return await guarded(make, json_error)

    async def api_figures(request: Request) -> Response:
        run_id = request.path_params["run_id"]

        def make() -> Response:
            path = folder.resolve(run_id)
            with folder.open(path) as r:
                status = r.effective_status
            figures, problems = _figure_list(run_id, path, status)
            items = [{"name": n, "url": u} for n, u in (figures or [])]
            return JSONResponse({"run_id": run_id, "status": status, "figures": items, "problems": problems,
                                 "pending": figures is None})

        return await guarded(make, json_error)

    async def api_events(request: Request) -> Response:
        run_id = request.path_params["run_id"]
        try:
            path = await run_in_threadpool(folder.resolve, run_id)
        except BadRequestError as exc:
            return json_error(400, str(exc))
        except NotFoundError as exc:
            return json_error(404, str(exc))

        async def events() -> AsyncIterator[str]:
            sent: dict[str, int] = {}
            first, failures, last_beat = True, 0, time.monotonic()
            yield "retry: 2000\n\n"
            wait = poll_s
            while True:
                try:
                    t0 = time.monotonic()
                    state, data = await run_in_threadpool(_poll, folder, path, sent)
                    # A look reads only the new rows of each stream (a whole stream when more than EVENT_MAX_ROWS
                    # arrived, to thin them): a slow look still means a busy file or server, so look less often.
                    wait = max(poll_s, 4.0 * (time.monotonic() - t0))
                    failures = 0
                except Exception as exc:  # a file caught between two writes: look again; a crafted one: give up
                    failures += 1
                    message = said(exc) if isinstance(exc, HilError) else f"{type(exc).__name__}: {said(exc)}"
                    yield _event("problem", {"error": message, "tries": failures, "final": failures >= 20})
                    if failures >= 20:
                        return
                    await asyncio.sleep(poll_s)
                    continue
                done = state["effective_status"] != "running"
                if first or data or done:
                    yield _event("end" if done else "update", {"state": state, "data": data, "full": first})
                    first, last_beat = False, time.monotonic()
                elif time.monotonic() - last_beat > 15:
                    yield ": keep-alive\n\n"
                    last_beat = time.monotonic()
                if done:
                    return
                await asyncio.sleep(wait)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def static_css(request: Request) -> Response:
        return Response(CSS, media_type="text/css")

    async def static_js(request: Request) -> Response:
        return Response(JS, media_type="text/javascript")

    async def favicon(request: Request) -> Response:
        return Response(status_code=204)

    async def not_found(request: Request, exc: Exception) -> Response:
        if request.url.path.startswith("/api/"):
            return json_error(404, f"no such address {request.url.path!r}")
        return html_error(404, f"no such page {request.url.path!r}")

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            yield
        finally:
            cache.close()

    routes = [
        Route("/", index_page),
        Route("/runs/{run_id}", run_view),
        Route("/runs/{run_id}/live", live_view),
        Route("/runs/{run_id}/figures/{n:int}", figure),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run_id}", api_run),
        Route("/api/runs/{run_id}/streams/{stream}", api_stream),
        Route("/api/runs/{run_id}/figures", api_figures),
        Route("/api/runs/{run_id}/events", api_events),
        Route("/static/hil.css", static_css),
        Route("/static/hil.js", static_js),
        Route("/favicon.ico", favicon),
    ]
    app = Starlette(routes=routes, exception_handlers={404: not_found}, lifespan=lifespan)
    app.state.folder = folder
    app.state.figures = cache
    wrapped: Any = AccessMiddleware(_Headers(app), token=token, loopback_only=is_loopback(host))
    wrapped.state = app.state
    return wrapped


def _json_text(text: str) -> str:
    """``to_json`` output with NaN and infinities as null (browsers' JSON.parse refuses them)."""
    return json.dumps(json.loads(text, parse_constant=lambda _c: None))


def _event(name: str, data: dict[str, Any]) -> str:
    return f"event: {name}\ndata: {_json_text(json.dumps(data, default=str))}\n\n"


def _poll(folder: RunsFolder, path: Path, sent: dict[str, int]) -> tuple[dict[str, Any], dict[str, Any]]:
    """One look at a run file: its live state and the new rows of each stream since ``sent`` (updated)."""
    with folder.open(path) as r:
        state = live_state(r)
        data: dict[str, Any] = {}
        for stream, n in state["streams"].items():
            have = sent.get(stream, 0)
            if n <= have and stream in sent:
                continue
            payload = stream_payload(r, stream, start=have if n - have <= EVENT_MAX_ROWS else 0, max_points=EVENT_MAX_ROWS)
            data[stream] = payload
            sent[stream] = n
    return state, data


# ---------------------------------------------------------------------------------------------- the command
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hil serve",
        description="A read-only web view of a runs folder: the run list, each run (metadata, config, summary, figures, "
                    "interactive stream plots), a live page for running runs, and a JSON API (/api/runs).",
        epilog=f"Binding an address other than loopback needs a token: --token, else ${TOKEN_ENV}, else a random one "
               "(printed in the URL). Every request then needs it. Ctrl-C stops the server.",
    )
    p.add_argument("--runs", metavar="DIR", help="the runs folder (default: $HIL_RUNS, else the current folder if it holds "
                                                 "an index, else hil-runs)")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST}: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--token", help=f"access token (at least 16 characters; prefer ${TOKEN_ENV}, which ps does not show)")
    p.add_argument("--poll", type=float, default=POLL_S, help=f"seconds between looks at a running run (default {POLL_S})")
    return p


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError:
        sock.close()
        raise
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(argv: list[str] | None = None) -> int:
    """``hil serve``: serve a runs folder until Ctrl-C; returns the exit code (0, or 2 for bad input)."""
    import uvicorn

    from hil.runs.index import default_runs_folder

    args = build_parser().parse_args(argv)
    folder = Path(args.runs) if args.runs else default_runs_folder()
    if not 0 <= args.port <= 65535:
        print(f"hil serve: error: --port {args.port} is not a port (0-65535).", file=sys.stderr)
        return 2
    if not args.poll > 0:
        print(f"hil serve: error: --poll {args.poll} must be a positive number of seconds.", file=sys.stderr)
        return 2
    try:
        token = bind_token(args.host, args.token or os.environ.get(TOKEN_ENV) or None)
        app = create_app(folder, host=args.host, token=token, poll_s=args.poll)
    except (HilError, ValueError) as exc:
        print(f"hil serve: error: {exc}", file=sys.stderr)
        return 2
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        hint = " (in use? try another --port, or --port 0 for a free one)" if args.port else ""
        print(f"hil serve: error: cannot listen on {args.host}:{args.port}: {exc.strerror or exc}{hint}", file=sys.stderr)
        return 2
    port = sock.getsockname()[1]
    shown = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    print(f"hil serve: {folder.resolve()} at {url}  (read-only; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2, lifespan="on")
    server = uvicorn.Server(config)

    def _terminated(signum: int, frame: Any) -> None:  # uvicorn re-raises SIGTERM after its clean shutdown
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _terminated) if threading.current_thread() is threading.main_thread() else None
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        app.state.figures.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print("hil serve: stopped.", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""The web view's HTML pages: the run list, a run, the live page, errors.

Internal module (its layout may change).

Every value from a run file or the index (run ids, config values, comments, tags, column names,
notes) is user or attacker text: it reaches the page only through :func:`esc` (HTML) or
:func:`url_part` (a URL path segment). The pages work without JavaScript (list, filters, metadata,
config, summary, figures; the live page refreshes itself); the script adds the interactive plots
and the live updates.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlencode

from hil.runs.metadata import EFFECTIVE_STATUSES

#: Longest text shown for one metadata or config value (the API has the whole).
MAX_VALUE = 4000


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML content and quoted attributes."""
    return html.escape(str(value), quote=True)


def url_part(value: Any) -> str:
    """``value`` as one URL path segment (``/`` and everything else special percent-encoded)."""
    return quote(str(value), safe="")


def status_badge(status: Any) -> str:
    s = str(status)
    cls = s if s in EFFECTIVE_STATUSES else "other"
    return f'<span class="status status-{cls}">{esc(s)}</span>'


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= MAX_VALUE else text[:MAX_VALUE] + f"... ({len(text)} characters)"


def page(title: str, body: str, *, folder: str = "", head: str = "") -> str:
    """A whole HTML document around ``body`` (already escaped HTML)."""
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)} - hil</title><link rel=\"stylesheet\" href=\"/static/hil.css\">{head}"
        "<script src=\"/static/hil.js\" defer></script></head><body>"
        f"<header class=\"top\"><a href=\"/\">hil runs</a><span class=\"folder\">{esc(folder)}</span>"
        "<span class=\"folder\">read-only</span></header>"
        f"<main>{body}</main></body></html>\n"
    )


def kv_table(rows: Iterable[tuple[str, Any]], *, cls: str = "kv") -> str:
    cells = "".join(f"<tr><th>{esc(k)}</th><td class=\"value\">{v}</td></tr>" for k, v in rows)
    return f"<table class=\"{cls}\">{cells}</table>"


def nested_table(doc: Any, *, depth: int = 0) -> str:
    """A config or summary: nested dicts as nested tables, other values as JSON text."""
    if isinstance(doc, dict) and doc and depth < 6:
        return kv_table((str(k), nested_table(v, depth=depth + 1)) for k, v in doc.items())
    if isinstance(doc, dict):
        return "<span class=\"muted\">(empty)</span>" if not doc else f"<code>{esc(_short(doc))}</code>"
    if isinstance(doc, str):
        return esc(_short(doc))
    return f"<code>{esc(_short(doc))}</code>"


def _when(entry: dict[str, Any]) -> str:
    text = str(entry.get("started_at") or "")
    return text[:19].replace("T", " ") if text else ""


def run_list(entries: list[dict[str, Any]], *, folder: str, unreadable: dict[str, str], filters: dict[str, Any],
             protocols: list[str], tags: list[str], total: int) -> str:
    """The run list page: filters (a plain GET form), then one row per run, newest first."""
    def options(name: str, values: Iterable[str], chosen: str) -> str:
        opts = [f"<option value=\"\">any {esc(name)}</option>"]
        for v in values:
            sel = " selected" if v == chosen else ""
            opts.append(f"<option value=\"{esc(v)}\"{sel}>{esc(v)}</option>")
        return f"<select name=\"{esc(name)}\">{''.join(opts)}</select>"

    form = (
        "<form class=\"filters\" method=\"get\" action=\"/\">"
        f"<label>protocol {options('protocol', protocols, filters.get('protocol') or '')}</label>"
        f"<label>status {options('status', EFFECTIVE_STATUSES, filters.get('status') or '')}</label>"
        f"<label>tag {options('tag', tags, filters.get('tag') or '')}</label>"
        "<button type=\"submit\">filter</button> <a href=\"/\">all runs</a></form>"
    )
    rows = []
    for e in entries:
        rid = str(e.get("run_id", ""))
        status = str(e.get("effective_status", e.get("status", "")))
        live = f" <a href=\"/runs/{url_part(rid)}/live\">live</a>" if status == "running" else ""
        tags_html = "".join(f"<span class=\"tag\">{esc(t)}</span>" for t in (e.get("tags") or []))
        if e.get("sweep"):
            point = f" #{esc(e['sweep_point'])}" if e.get("sweep_point") is not None else ""
            tags_html += f"<span class=\"tag\">sweep {esc(e['sweep'])}{point}</span>"
        calls = "" if e.get("n_calls") is None else esc(e["n_calls"])
        wall = "" if not isinstance(e.get("wall_s"), int | float) else f"{float(e['wall_s']):.1f}"
        rows.append(
            f"<tr class=\"run\" data-run-id=\"{esc(rid)}\"><td class=\"mono\"><a class=\"run-id\" href=\"/runs/{url_part(rid)}\">"
            f"{esc(rid)}</a>{live}</td><td>{esc(e.get('protocol', ''))}</td><td class=\"run-status\">{status_badge(status)}</td>"
            f"<td>{esc(_when(e))}</td><td class=\"num\">{calls}</td><td class=\"num\">{wall}</td>"
            f"<td class=\"mono\">{esc(e.get('chip', ''))}</td><td>{tags_html}</td><td>{esc(e.get('sample', ''))}</td>"
            f"<td>{esc(str(e.get('comment', ''))[:200])}</td></tr>"
        )
    shown = f"{len(entries)} of {total} runs" if len(entries) != total else f"{total} runs"
    table = (
        "<table class=\"runs\" id=\"runs\"><thead><tr><th>run</th><th>protocol</th><th>status</th><th>started (UTC)</th>"
        "<th>calls</th><th>wall [s]</th><th>chip</th><th>tags</th><th>sample</th><th>comment</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
        if entries else "<p class=\"muted\">No runs match.</p>"
    )
    bad = ""
    if unreadable:
        items = "".join(f"<li><code>{esc(n)}</code>: {esc(msg[:300])}</li>" for n, msg in sorted(unreadable.items())[:50])
        bad = f"<h2>Files that are not readable runs ({len(unreadable)})</h2><ul class=\"problem\">{items}</ul>"
    api = "/api/runs" + (("?" + urlencode({k: v for k, v in filters.items() if v})) if any(filters.values()) else "")
    body = (f"<h1>Runs</h1>{form}<p class=\"muted\">{esc(shown)}, newest first · "
            f"<a href=\"{esc(api)}\">JSON</a></p>{table}{bad}")
    return page("runs", body, folder=folder)


#: Metadata rows of the run page: (label, key in the run document).
META_ROWS = (
    ("run id", "run_id"), ("protocol", "protocol"), ("description", "protocol_description"), ("status", "effective_status"),
    ("exit reason", "exit_reason"), ("started (UTC)", "started_at"), ("stopped (UTC)", "stopped_at"), ("wall [s]", "wall_s"),
    ("chip", "chip_spec"), ("chip name", "chip_name"), ("chip serial", "chip_serial"), ("seed", "seed"),
    ("tags", "tags"), ("sample", "sample"), ("comment", "comment"), ("sweep", "sweep"), ("sweep point", "sweep_point"),
    ("replay of", "replay_of"),
    ("resumed", "resume_count"), ("host", "host"), ("pid", "pid"), ("command", "command"),
    ("git revision", "git_revision"), ("protocol source", "protocol_source"), ("chip calls", "n_calls"),
    ("file", "path"), ("size [bytes]", "size_bytes"),
)


def run_page(doc: dict[str, Any], *, folder: str, figures: list[tuple[str, str]] | None, figure_problems: list[str]) -> str:
    """A run: metadata, config, summary, the report figures, one interactive plot per stream."""
    rid = str(doc.get("run_id", ""))
    status = str(doc.get("effective_status", ""))
    meta_rows = []
    for label, key in META_ROWS:
        value = doc.get(key)
        if value in (None, "", [], {}):
            continue
        if key == "effective_status":
            meta_rows.append((label, status_badge(value)))
        elif key == "tags":
            meta_rows.append((label, "".join(f"<span class=\"tag\">{esc(t)}</span>" for t in value)
                              if isinstance(value, list) else esc(value)))
        else:
            meta_rows.append((label, esc(_short(value))))
    if doc.get("exception_type"):
        meta_rows.append(("error", f"<span class=\"error\">{esc(doc['exception_type'])}: "
                                   f"{esc(_short(doc.get('exception_message', '')))}</span>"))
    links = [f"<a href=\"/api/runs/{url_part(rid)}\">JSON</a>"]
    if status == "running":
        links.insert(0, f"<a href=\"/runs/{url_part(rid)}/live\"><b>watch live</b></a>")
    parts = [f"<h1>{esc(rid)} {status_badge(status)}</h1><p>{' · '.join(links)}</p>", "<h2>Metadata</h2>",
             kv_table(meta_rows)]
    parts += ["<h2>Config</h2>", nested_table(doc.get("config") or {})]
    summary = doc.get("summary") or {}
    parts += ["<h2>Summary</h2>", nested_table(summary) if summary else "<p class=\"muted\">(none yet)</p>"]
    parts.append("<h2>Figures</h2><div class=\"figures\" id=\"figures\">")
    if figures is None:
        parts.append(f"<p class=\"muted\">The figures are made when the run has ended; "
                     f"<a href=\"/runs/{url_part(rid)}/live\">watch it live</a>.</p>")
    else:
        for name, src in figures:
            parts.append(f"<figure><img src=\"{esc(src)}\" alt=\"{esc(name)}\" loading=\"lazy\">"
                         f"<figcaption class=\"muted\">{esc(name)}</figcaption></figure>")
        if not figures and not figure_problems:
            parts.append("<p class=\"muted\">(no figures: no stream has data)</p>")
    for p in figure_problems:
        parts.append(f"<p class=\"problem\">{esc(p)}</p>")
    parts.append("</div><h2>Streams</h2>")
    streams = doc.get("streams") or {}
    if not streams:
        parts.append("<p class=\"muted\">(no streams)</p>")
    for name, s in streams.items():
        cols = ", ".join(f"{c} {v['dtype']}{tuple(v['shape']) if v['shape'] else ''}" for c, v in s["columns"].items())
        src = f"/api/runs/{url_part(rid)}/streams/{url_part(name)}"
        parts.append(
            f"<section class=\"stream\"><h3>stream {esc(name)} <span class=\"muted\">({esc(s['rows'])} rows)</span></h3>"
            f"<p class=\"muted mono\">{esc(cols)}</p><div class=\"stream-plot\" data-src=\"{esc(src)}\"></div>"
            f"<noscript><p class=\"muted\">Interactive plots need JavaScript; the figures above show this stream. "
            f"<a href=\"{esc(src)}\">Data (JSON)</a></p></noscript></section>"
        )
    j = doc.get("journal") or {}
    parts.append("<h2>Journal</h2>" + kv_table([("chip calls", esc(j.get("calls", 0))),
                                                ("by operation", f"<code>{esc(json.dumps(j.get('by_op', {})))}</code>"),
                                                ("raised", esc(j.get("errors", 0)))]))
    notes = doc.get("notes") or []
    if notes:
        parts.append("<h2>Notes</h2>" + "".join(f"<pre>{esc(_short(n))}</pre>" for n in notes[-20:]))
    rest = {k: v for k, v in doc.items() if k not in ("streams", "config", "summary", "notes", "journal")}
    parts.append(f"<details><summary>All metadata</summary><pre>{esc(json.dumps(rest, indent=1, default=str)[:200_000])}"
                 "</pre></details>")
    return page(rid, "".join(parts), folder=folder)


def live_page(state: dict[str, Any], *, folder: str) -> str:
    """The live page of a run: status, rows so far, plots that grow (server-sent events)."""
    rid = str(state.get("run_id", ""))
    status = str(state.get("effective_status", ""))
    total = sum(state.get("streams", {}).values())
    rows = "".join(f"<tr data-stream=\"{esc(n)}\"><td>{esc(n)}</td><td class=\"num rows\">{esc(c)}</td></tr>"
                   for n, c in state.get("streams", {}).items())
    started = float(state.get("started_unix") or 0.0)
    stopped = float(state.get("stopped_unix") or 0.0)
    elapsed = f"{max(0.0, (stopped or _dt.datetime.now().timestamp()) - started):.1f} s" if started else ""
    head = "<noscript><meta http-equiv=\"refresh\" content=\"3\"></noscript>" if status == "running" else ""
    events = f"/api/runs/{url_part(rid)}/events"
    body = (
        f"<div id=\"live\" data-events=\"{esc(events)}\"><h1>{esc(rid)} <span class=\"muted\">live</span></h1>"
        f"<div class=\"live-numbers\"><div>status<br><span id=\"status\" class=\"status status-{esc(status)}\">"
        f"{esc(status)}</span></div><div>rows<br><span id=\"row-count\" class=\"big\">{total}</span></div>"
        f"<div>elapsed<br><span id=\"elapsed\" class=\"big\">{esc(elapsed)}</span></div>"
        f"<div class=\"muted\">connection: <span id=\"connection\">(JavaScript off: this page reloads itself)</span></div></div>"
        f"<p id=\"finished\"{'' if status != 'running' else ' hidden'}>The run has ended: "
        f"<a href=\"/runs/{url_part(rid)}\">its page, with the figures</a>.</p>"
        f"<p class=\"error\" id=\"exception\">{esc(state.get('exception', ''))}</p>"
        f"<p class=\"muted\">last note: <span id=\"last-note\">{esc(state.get('last_note', ''))}</span></p>"
        f"<table><thead><tr><th>stream</th><th>rows</th></tr></thead><tbody id=\"stream-rows\">{rows}</tbody></table>"
        f"<div id=\"live-plots\"></div></div>"
    )
    return page(f"{rid} (live)", body, folder=folder, head=head)


def error_page(status: int, message: str, *, folder: str = "") -> str:
    titles = {400: "Bad request", 404: "Not found", 422: "This run file cannot be read", 500: "Server error"}
    body = (f"<h1>{esc(titles.get(status, 'Error'))}</h1><div class=\"error-box\"><p>{esc(message)}</p></div>"
            "<p><a href=\"/\">back to the run list</a></p>")
    return page(titles.get(status, "Error"), body, folder=folder)

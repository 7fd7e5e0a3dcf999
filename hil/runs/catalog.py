"""The run catalogue: finding runs by what the index knows (``hil ls --where``, ``hil.catalog``).

Internal module (its layout may change): use ``hil.catalog(folder)`` and ``hil ls``.

A folder's index (:mod:`hil.runs.index`) holds, per run, its identity and status, the tags, sample
and comment given at ``hil run``, and the scalar values of its config and summary. :func:`select`
filters those entries (``key=value`` conditions, tags, a start time) without opening a run file,
and :func:`catalog` returns them as a pandas DataFrame, one row per run.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.errors import HilError, did_you_mean
from hil.runs.index import RunIndex, default_runs_folder

#: Entry fields a condition may name directly (``status`` is the effective status).
FIELDS = ("run_id", "file", "protocol", "status", "started_at", "stopped_at", "seed", "chip", "reason", "host",
          "n_calls", "wall_s", "replay_of", "sample", "comment", "sweep", "sweep_point")
_COND = re.compile(r"^\s*([A-Za-z0-9_][A-Za-z0-9_.\-]*)\s*(!=|<=|>=|=|<|>|~)\s*(.*?)\s*$")
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Condition:
    """One ``key OP value`` condition of ``hil ls --where`` (OP: = != < <= > >= ~ (contains))."""

    key: str
    op: str
    value: Any

    @classmethod
    def parse(cls, text: str) -> Condition:
        m = _COND.match(text)
        if not m:
            raise HilError(
                f"--where {text!r} is not a condition; write KEY=VALUE (or !=, <, <=, >, >=, ~ for 'contains'), "
                "e.g. --where batch=32 --where summary.mvm_error<0.05."
            )
        key, op, raw = m.groups()
        return cls(key, op, _value(raw))

    def holds(self, entry: dict[str, Any]) -> bool:
        found, have = lookup(entry, self.key)
        if not found:
            return False
        want = self.value
        if self.op == "~":
            return str(want).lower() in _text(have).lower()
        if _number(have) and _number(want):
            a, b = float(have), float(want)
        else:
            a, b = _text(have), _text(want)  # type: ignore[assignment]
        return {"=": a == b, "!=": a != b, "<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[self.op]


def _value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.strip("\"'")


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    return str(v)


def lookup(entry: dict[str, Any], key: str) -> tuple[bool, Any]:
    """(found, value) of ``key`` in an index entry: an entry field, ``config.K``, ``summary.K``, or
    a bare config or summary key (config first)."""
    if key == "status":
        return True, entry.get("effective_status", entry.get("status"))
    if key in FIELDS:
        return key in entry, entry.get(key)
    for section in ("config", "summary"):
        if key.startswith(section + "."):
            values = entry.get(section) or {}
            sub = key[len(section) + 1:]
            return sub in values, values.get(sub)
    for section in ("config", "summary"):
        values = entry.get(section) or {}
        if key in values:
            return True, values[key]
    return False, None


def known_keys(entries: Iterable[dict[str, Any]]) -> list[str]:
    """Every key a condition could name in these entries (for messages and shell completion)."""
    keys = set(FIELDS)
    for e in entries:
        for section in ("config", "summary"):
            for k in e.get(section) or {}:
                keys.add(k)
                keys.add(f"{section}.{k}")
    return sorted(keys)


def parse_since(text: str, now: float | None = None) -> float:
    """A start time [s, unix] from ``YYYY-MM-DD``, an ISO date-time (local time unless it says a
    zone), ``today``, ``yesterday`` or an age such as ``90m``, ``12h``, ``3d``, ``2w``."""
    now = time.time() if now is None else now
    t = text.strip().lower()
    m = _RELATIVE.match(t)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    if t in ("today", "yesterday"):
        day = _dt.datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        return (day - _dt.timedelta(days=1 if t == "yesterday" else 0)).timestamp()
    try:
        return _dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise HilError(
            f"--since {text!r} is not a date; give YYYY-MM-DD, an ISO date-time (2026-03-01T14:00), "
            "today, yesterday, or an age such as 12h or 3d."
        ) from None


def select(
    entries: Sequence[dict[str, Any]],
    *,
    where: Iterable[str | Condition] = (),
    tags: Iterable[str] = (),
    since: str | float | None = None,
    protocol: str | None = None,
    status: str | None = None,
) -> list[dict[str, Any]]:
    """The entries that meet every condition, have every tag, and started at or after ``since``.

    A condition naming a key that no entry has is an error (with the closest keys), so a typo
    never looks like "no runs".
    """
    conditions = [c if isinstance(c, Condition) else Condition.parse(c) for c in where]
    if conditions and entries:
        keys = known_keys(entries)
        for c in conditions:
            if not any(lookup(e, c.key)[0] for e in entries):
                raise HilError(
                    f"--where: no run here has a key {c.key!r}{did_you_mean(c.key, keys)}; `hil ls --keys` lists them."
                )
    want_tags = set(tags)
    t0 = parse_since(since) if isinstance(since, str) else since
    out = []
    for e in entries:
        if protocol is not None and e.get("protocol") != protocol:
            continue
        if status is not None and e.get("effective_status", e.get("status")) != status:
            continue
        if t0 is not None and float(e.get("started_unix") or 0.0) < t0:
            continue
        if want_tags and not want_tags <= set(e.get("tags") or ()):
            continue
        if all(c.holds(e) for c in conditions):
            out.append(e)
    return out


def catalog(
    folder: str | os.PathLike[str] | None = None,
    *,
    where: Iterable[str] = (),
    tags: Iterable[str] = (),
    since: str | float | None = None,
    protocol: str | None = None,
    status: str | None = None,
) -> Any:
    """The runs of ``folder`` (default ``$HIL_RUNS``, else the current folder if it holds an index,
    else ``hil-runs``) as a pandas DataFrame indexed by run id, oldest first.

    Columns: the index fields (``protocol``, ``status`` (effective), ``started``, ``tags``,
    ``sample``, ``comment``, ...) then ``config.<key>`` and ``summary.<key>`` for every scalar.
    The filters are those of ``hil ls`` (:func:`select`).
    """
    import pandas as pd

    path = Path(folder) if folder is not None else default_runs_folder()
    entries = select(RunIndex(path).entries(), where=where, tags=tags, since=since, protocol=protocol, status=status)
    rows = []
    for e in entries:
        row = {k: v for k, v in e.items() if k not in ("config", "summary", "effective_status", "status")}
        row["status"] = e.get("effective_status", e.get("status"))
        row["started"] = pd.Timestamp(float(e.get("started_unix") or 0.0), unit="s", tz="UTC")
        for section in ("config", "summary"):
            for k, v in (e.get(section) or {}).items():
                row[f"{section}.{k}"] = v
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["protocol", "status", "started"]).rename_axis("run_id")
    return df.set_index("run_id")

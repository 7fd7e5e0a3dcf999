"""The web view reads only the rows it sends: ``stream_payload(start=k)`` and the live poll read rows
``[k, rows)`` through ``RunReader.stream`` slices, never the whole stream again."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hil.runs import RunReader
from hil.web.app import _poll
from hil.web.data import RunsFolder, stream_payload


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int | None]]:
    """Every (stream, start, stop) the readers read from a file."""
    seen: list[tuple[str, int, int | None]] = []
    original = RunReader._stream_rows

    def spy(self: RunReader, stream: str, names: list[str], start: int, stop: int | None) -> dict[str, np.ndarray]:
        seen.append((stream, start, stop))
        return original(self, stream, names, start, stop)

    monkeypatch.setattr(RunReader, "_stream_rows", spy)
    return seen


def _drift_run(runs: Path) -> Path:
    """The drift run with the longest stream (the folder also holds a failed drift run)."""
    def longest(path: Path) -> int:
        with RunReader(path) as r:
            return max((r.n_rows(s) for s in r.streams()), default=0)

    return max(sorted(runs.glob("*-drift-*.h5")), key=longest)


def test_a_payload_from_start_reads_and_sends_only_the_later_rows(runs: Path, reads: list) -> None:
    path = _drift_run(runs)
    with RunReader(path) as r:
        stream = max(r.streams(), key=r.n_rows)
        n = r.n_rows(stream)
        assert n >= 3
        full = stream_payload(r, stream)
        reads.clear()
        part = stream_payload(r, stream, start=n - 2)
        assert reads == [(stream, n - 2, n)]
        assert part["rows"] == n and part["start"] == n - 2 and part["row"] == [n - 2, n - 1]
        for name, col in part["columns"].items():
            assert col["values"] == full["columns"][name]["values"][n - 2:], name
        reads.clear()
        empty = stream_payload(r, stream, start=n + 5)  # past the end: nothing read, nothing sent
        assert empty["row"] == [] and empty["start"] == n and reads == [(stream, n, n)]


def test_the_live_poll_reads_the_new_rows_only(runs: Path, reads: list) -> None:
    path = _drift_run(runs)
    folder = RunsFolder(runs)
    sent: dict[str, int] = {}
    state, data = _poll(folder, path, sent)
    assert data and all(start == 0 for _, start, _ in reads)
    reads.clear()
    state, data = _poll(folder, path, sent)  # nothing new: no stream is read
    assert data == {} and reads == []
    stream = max(state["streams"], key=state["streams"].get)
    n = state["streams"][stream]
    sent[stream] = n - 1  # as if the last row had arrived since
    state, data = _poll(folder, path, sent)
    assert reads == [(stream, n - 1, n)] and data[stream]["row"] == [n - 1]

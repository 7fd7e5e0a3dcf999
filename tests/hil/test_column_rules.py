"""MemoryRunLog and the run-file writer apply the same column rules (hil.runs.columns)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hil import MemoryRunLog, RunLogError
from hil.runs import RunWriter

# (first call, second call): each second call breaks a rule of the stream its first call made.
BAD: list[tuple[str, Callable[[Any], None]]] = [
    ("no columns", lambda r: r.log("s")),
    ("bad stream name", lambda r: r.log("_hidden", v=1)),
    ("bad column name", lambda r: r.log("s", **{"a b": 1})),
    ("ragged rows", lambda r: r.log("s", a=np.zeros(3), b=np.zeros(2))),
    ("object values", lambda r: r.log("s", a=object())),
    ("missing column", lambda r: (r.log("s", a=1, b=2), r.log("s", a=1))),
    ("extra column", lambda r: (r.log("s", a=1), r.log("s", a=1, b=2))),
    ("other row shape", lambda r: (r.log("s", a=np.zeros((1, 3))), r.log("s", a=np.zeros((1, 4))))),
    ("float into int", lambda r: (r.log("s", a=np.int32(1)), r.log("s", a=1.5))),
    ("int out of range", lambda r: (r.log("s", a=np.int8(1)), r.log("s", a=np.int64(1000)))),
    ("string into number", lambda r: (r.log("s", a=1.0), r.log("s", a="x"))),
    ("string too long", lambda r: (r.log("s", a="ab"), r.log("s", a="x" * 500))),
]


@pytest.mark.parametrize(("case", "calls"), BAD, ids=[c for c, _ in BAD])
def test_memory_log_refuses_what_a_run_file_refuses(case: str, calls: Callable[[Any], None], tmp_path: Path) -> None:
    writer = RunWriter(tmp_path / "w.h5", {"run_id": "w", "protocol": "unit"})
    try:
        with pytest.raises(RunLogError) as in_file:
            calls(writer)
        with pytest.raises(RunLogError) as in_memory:
            calls(MemoryRunLog())
    finally:
        writer.close(status="success")
    assert str(in_memory.value) == str(in_file.value)


def test_memory_log_keeps_what_a_run_file_keeps(tmp_path: Path) -> None:
    mem = MemoryRunLog()
    for i in range(3):
        mem.log("s", i=i, x=np.full((2, 4), i, dtype=np.float32)[:1], name=f"r{i}")
    assert mem.column("s", "i").tolist() == [0, 1, 2]
    assert mem.column("s", "x").shape == (3, 4) and mem.column("s", "x").dtype == np.float32
    assert mem.column("s", "name").tolist() == ["r0", "r1", "r2"]

"""Run metadata is typed and defined once: the writer, the reader, the index and the docs agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hil.errors import RunFileError
from hil.runs import REASONS, STATUSES, IndexEntry, RunReader, RunStart, RunStop, RunWriter
from hil.runs.index import ENTRY_KEYS

DOCS = Path(__file__).resolve().parents[2] / "docs" / "run-file.md"


def test_the_docs_name_every_metadata_attribute_statuses_and_reasons() -> None:
    text = DOCS.read_text()
    documented = set(re.findall(r"`([a-z_]+)`", text))
    for doc in (RunStart, RunStop):
        missing = [a for a in doc.attr_names() if a not in documented]
        assert not missing, f"docs/run-file.md does not describe {doc.__name__} attributes {missing}"
    assert not [s for s in STATUSES if s not in documented]
    assert not [r for r in REASONS if r not in documented]


def test_writer_and_reader_use_the_documents(tmp_path: Path) -> None:
    start = RunStart(run_id="x", protocol="unit", config={"a": [1, 2]}, seed=7, preceded_by=["a.h5"])
    w = RunWriter(tmp_path / "x.h5", start)
    w.close(RunStop(status="fail", exit_reason="chip_input", summary={"k": 1.5}, n_calls=0))
    with RunReader(tmp_path / "x.h5") as r:
        assert r.start.config == {"a": [1, 2]} and r.start.seed == 7 and r.start.preceded_by == ["a.h5"]
        assert r.start.pid > 0 and r.start.started_unix > 0
        assert r.stop == RunStop(status="fail", exit_reason="chip_input", summary={"k": 1.5}, n_calls=0)
        entry = IndexEntry.from_attrs(r.attrs, "x.h5")
    assert entry.status == "fail" and entry.reason == "chip_input" and entry.seed == 7
    assert set(ENTRY_KEYS) == set(IndexEntry.model_fields)


def test_writing_unknown_metadata_or_statuses_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFileError, match=r"unknown run metadata.*'colour'"):
        RunWriter(tmp_path / "a.h5", {"run_id": "a", "colour": "red"})
    assert not (tmp_path / "a.h5").exists()
    w = RunWriter(tmp_path / "b.h5", {"run_id": "b"})
    with pytest.raises(RunFileError, match="unknown run metadata"):
        w.close(colour="red")
    with pytest.raises(ValueError, match="status"):
        RunStop(status="done")  # type: ignore[arg-type]
    w.close(status="success")


def test_a_malformed_attribute_is_a_clear_run_file_error(tmp_path: Path) -> None:
    import h5py

    w = RunWriter(tmp_path / "c.h5", {"run_id": "c"})
    w.close(status="success")
    with h5py.File(tmp_path / "c.h5", "r+") as f:
        f.attrs["config_json"] = "{not json"
        f.attrs["seed"] = "seven"
    with RunReader(tmp_path / "c.h5") as r, pytest.raises(RunFileError, match="config_json is not valid JSON"):
        _ = r.start

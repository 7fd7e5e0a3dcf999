"""The catalogue: tags, sample and comment stored in the run and the index; `hil ls` filters; hil.catalog."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import hil
from hil.errors import ConfigError, HilError
from hil.runner import run_protocol
from hil.runs import INDEX_NAME, RunIndex, RunReader
from hil.runs.catalog import parse_since, select
from tests.hil.conftest import SMALL_CHIP


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cat")
    for steps, tags, sample in ((1, ["calib", "chipA"], "wafer-7"), (2, ["chipA"], "wafer-7"), (3, [], "wafer-9")):
        res = run_protocol("test-steps", chip=SMALL_CHIP, sets=[f"steps={steps}", "mvm=false"], out=out, progress=False,
                           tags=tags, sample=sample, comment=f"{steps} steps, by the catalogue test")
        assert res.status == "success"
    return out


def test_tags_sample_comment_config_and_summary_reach_the_run_and_the_index(folder: Path) -> None:
    entries = RunIndex(folder).entries()
    first = entries[0]
    assert first["tags"] == ["calib", "chipA"] and first["sample"] == "wafer-7" and first["comment"].startswith("1 steps")
    assert first["config"]["steps"] == 1 and first["config"]["mvm"] is False and first["summary"]["steps"] == 1
    with RunReader(folder / first["file"]) as r:
        assert r.start.tags == ["calib", "chipA"] and r.start.sample == "wafer-7" and "catalogue" in r.start.comment
    # the index entry of a rebuilt index says the same
    before = {e["run_id"]: (e["tags"], e["config"], e["summary"]) for e in entries}
    RunIndex(folder).rebuild()
    assert {e["run_id"]: (e["tags"], e["config"], e["summary"]) for e in RunIndex(folder).entries()} == before


def test_ls_filters_by_where_tag_and_since(folder: Path, cli) -> None:
    def ids(*args: str) -> list[int]:
        res = cli("ls", str(folder), "--json", *args)
        assert res.code == 0, res.err
        return [e["config"]["steps"] for e in res.json()]

    assert ids() == [1, 2, 3]
    assert ids("--where", "steps=2") == [2]
    assert ids("--where", "config.steps>=2", "--where", "sample=wafer-7") == [2]
    assert ids("--where", "summary.steps<3") == [1, 2]
    assert ids("--where", "steps!=2") == [1, 3]
    assert ids("--where", "comment~CATALOGUE") == [1, 2, 3]
    assert ids("--where", "status=success", "--where", "mvm=false") == [1, 2, 3]
    assert ids("--tag", "chipA") == [1, 2] and ids("--tag", "chipA", "--tag", "calib") == [1]
    assert ids("--since", "1h") == [1, 2, 3] and ids("--since", "2999-01-01") == []
    res = cli("ls", str(folder), "--where", "stpes=2")
    assert res.code == 2 and "did you mean 'steps'" in res.err
    res = cli("ls", str(folder), "--where", "steps")
    assert res.code == 2 and "KEY=VALUE" in res.err
    res = cli("ls", str(folder), "--keys")
    assert res.code == 0 and "config.steps" in res.out.split() and "summary.counts_sum" in res.out.split()
    text = cli("ls", str(folder), "--tag", "calib")
    assert text.code == 0 and "#calib" in text.out and "sample=wafer-7" in text.out


def test_catalog_returns_a_dataframe(folder: Path) -> None:
    pytest.importorskip("pandas")
    df = hil.catalog(folder)
    assert list(df["config.steps"]) == [1, 2, 3] and df.index.name == "run_id"
    assert set(df["status"]) == {"success"} and "summary.counts_sum" in df.columns and df["started"].dt.year.min() > 2000
    assert list(hil.catalog(folder, tags=["chipA"], where=["steps>1"])["config.steps"]) == [2]
    assert hil.catalog(folder, since="2999-01-01").empty


def test_bad_tags_and_dates_are_refused() -> None:
    with pytest.raises(ConfigError, match="tag 'two words'"):
        run_protocol("test-steps", chip="fake", tags=["two words"], out="/nonexistent-never-created")
    with pytest.raises(HilError, match="--since 'last tuesday' is not a date"):
        parse_since("last tuesday")
    assert abs(parse_since("2d", now=1000.0 + 2 * 86400) - 1000.0) < 1e-6


def test_select_scales_to_ten_thousand_entries(tmp_path: Path) -> None:
    """Correctness on a large synthetic index (speed: tests/benchmarks/bench_catalog.py)."""
    lines = []
    for i in range(2000):
        run_id = f"20260101-000000-p-{i:06x}"
        (tmp_path / f"{run_id}.h5").touch()
        lines.append(json.dumps({"run_id": run_id, "file": f"{run_id}.h5", "protocol": "p", "status": "success",
                                 "started_unix": time.time() - i, "tags": ["even"] if i % 2 == 0 else [],
                                 "config": {"batch": i % 7}, "summary": {"err": i / 2000}}))
    (tmp_path / INDEX_NAME).write_text("\n".join(lines) + "\n")
    entries = RunIndex(tmp_path).entries(sync=False)
    got = select(entries, where=["batch=3", "err<0.5"], tags=["even"])
    assert len(got) == len([i for i in range(1000) if i % 7 == 3 and i % 2 == 0])

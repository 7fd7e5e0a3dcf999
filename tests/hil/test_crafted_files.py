"""Every reader, on every crafted or damaged file, ends in a clear RunFileError (or reads a healthy
file), within bounded time and memory, and never reads outside the file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hil.crafted import SECRET, make_corpus

REPO = Path(__file__).resolve().parents[2]

#: Runs every reader on one file in a process limited to 3 GiB of address space; prints JSON outcomes.
PROBE = r"""
import json, resource, sys, traceback
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
import numpy as np
import tests.hil.helper_protocols  # noqa: F401 (registers test-steps for replay)
from hil.errors import HilError
from hil.runs import RunReader
path = sys.argv[1]
out = {}

def probe(name, fn):
    try:
        value = fn()
        out[name] = ["ok", repr(value)[:300]]
    except HilError as exc:
        out[name] = ["clear", f"{type(exc).__name__}: {exc}"[:300]]
    except BaseException as exc:
        out[name] = ["traceback", "".join(traceback.format_exception(exc))[-1500:]]

def all_of(r):
    res = [r.metadata(), r.start, r.stop, r.effective_status, r.summary, r.notes(), r.input_info(), r.inputs()]
    for s in r.streams():
        res += [r.columns(s), r.n_rows(s), r.column_info(s), {k: v.shape for k, v in r.stream(s, meta=True).items()}]
    j = r.journal
    res += [len(j), j.counts(), [c.op for c in j]]
    res.append(r.verify())
    return len(res)

def read():
    with RunReader(path) as r:
        return all_of(r)

probe("reader", read)
from hil.cli import main
for argv in (["show", path, "--json"], ["show", path, "--verify", "--json"], ["report", path, "--out", path + "-report"],
             ["replay", path, "--out", path + "-replay", "--no-progress"]):
    probe(" ".join(argv[:1] + [a for a in argv[2:] if a.startswith("--v")]), lambda: main(argv))
print("@@" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_corpus(tmp_path_factory.mktemp("crafted"))


def _probe(path: Path) -> dict[str, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", PROBE, str(path)], capture_output=True, text=True, timeout=120, env=env,
                         cwd=REPO)
    marker = [line for line in res.stdout.splitlines() if line.startswith("@@")]
    assert marker, f"the readers crashed on {path.name} (exit {res.returncode}): {res.stderr[-1500:]}"
    return json.loads(marker[0][2:])


def test_every_reader_on_every_crafted_file_ends_cleanly(corpus: dict[str, Path]) -> None:
    secret = Path(SECRET).read_text().splitlines()[0] if Path(SECRET).exists() else None
    problems, tried = [], 0
    for case, path in corpus.items():
        outcomes = _probe(path)
        for reader, (kind, detail) in outcomes.items():
            tried += 1
            if kind == "traceback":
                problems.append(f"{case} / {reader}: {detail.splitlines()[-1]}")
            if secret and secret in detail:
                problems.append(f"{case} / {reader}: printed bytes of {SECRET}")
        if case == "genuine":
            assert all(kind == "ok" for kind, _ in outcomes.values()), outcomes
        elif case.startswith(("external", "virtual")):
            assert outcomes["reader"][0] == "clear" and "outside the file" in outcomes["reader"][1], (case, outcomes["reader"])
    assert not problems, f"{len(problems)} of {tried} reader runs raised a traceback or leaked:\n" + "\n".join(problems)


def test_ls_of_a_folder_of_crafted_files_lists_the_healthy_ones(corpus: dict[str, Path], cli) -> None:
    folder = corpus["genuine"].parent
    res = cli("ls", str(folder), "--json")
    assert res.code == 0, res.err
    listed = {e["file"] for e in res.json()}
    assert {"genuine.h5", "swmr-flag-valid-checksum.h5", "bad-op-code.h5"} <= listed
    assert not listed & {"random-bytes.h5", "non-scalar-seed.h5", "external-link-stream.h5", "truncated-half.h5", "status-unknown.h5"}

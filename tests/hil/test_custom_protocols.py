"""A protocol from a file or module outside the package runs, replays and resumes from the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from hil.runs import RunReader

PROTOCOL = textwrap.dedent(
    """
    import os, signal, time
    from pydantic import BaseModel, ConfigDict, Field
    from hil import PulseKind, register_protocol

    class CustomConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        steps: int = Field(6, ge=1, le=1000)

    @register_protocol("lab-custom", CustomConfig, description="a lab's own protocol (test)")
    def custom(chip, config, run):
        rng = run.rng("custom")
        total = 0
        for i in range(config.steps):
            if i == int(os.environ.get("KILL_AT", "-1")):
                time.sleep(1.2)  # let the writer flush what came before
                os.kill(os.getpid(), signal.SIGKILL)
            r = rng.integers(0, chip.geometry.n_rows, 4)
            chip.apply_pulses([0] * 4, r, 1, 0, kind=PulseKind.PARTIAL, amplitude_ua=300.0, width_ns=125.0)
            counts = chip.read_devices([0] * 4, r, 1, 0)
            total += int(counts.sum())
            run.log("steps", step=i, total=total)
        return {"total": total}
    """
)


def hil(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``hil ARGV`` in a fresh process (no protocol registered but the installed ones)."""
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "hil.cli", *argv], capture_output=True, text=True, timeout=120, env=full,
                          cwd=cwd)


def test_a_protocol_file_runs_replays_and_resumes_from_the_cli(tmp_path: Path) -> None:
    proto = tmp_path / "lab" / "my_protocol.py"
    proto.parent.mkdir()
    proto.write_text(PROTOCOL)
    out = tmp_path / "runs"
    res = hil("run", "lab-custom", "--protocol-module", str(proto), "--chip", "fake", "--out", str(out), "--json")
    assert res.returncode == 0, res.stderr
    run = json.loads(res.stdout)
    with RunReader(run["path"]) as r:
        assert r.start.protocol_source == f"file:{proto.resolve()}"
        assert r.n_rows("steps") == 6
    # Without the file hil does not know the protocol, and it never imports what a run file names.
    other = tmp_path / "elsewhere"
    other.mkdir()
    res = hil("replay", run["path"], "--out", str(other), cwd=other)
    assert res.returncode == 2
    assert "unknown protocol 'lab-custom'" in res.stderr and f"--protocol-module {proto.resolve()}" in res.stderr
    assert not list(other.glob("*.h5"))
    res = hil("replay", run["path"], "--out", str(other), "--protocol-module", str(proto), "--json", cwd=other)
    assert res.returncode == 0, res.stderr
    # Killed mid-run, then resumed with the same file: the same result as the uninterrupted run.
    res = hil("run", "lab-custom", "--protocol-module", str(proto), "--chip", "fake", "--out", str(out), "--json",
              env={"KILL_AT": "4"})
    assert res.returncode == -9
    killed = [p for p in out.glob("*.h5") if p.name != Path(run["path"]).name]
    assert len(killed) == 1
    res = hil("resume", str(killed[0]), "--protocol-module", str(proto), "--json")
    assert res.returncode == 0, res.stderr
    with RunReader(killed[0]) as resumed, RunReader(run["path"]) as full:
        assert resumed.summary == full.summary and resumed.start.resume_count == 1


def test_a_protocol_module_on_the_path_runs_and_lists(tmp_path: Path) -> None:
    pkg = tmp_path / "mylab"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "protos.py").write_text(PROTOCOL)
    env = {"PYTHONPATH": str(tmp_path)}
    res = hil("protocols", "--protocol-module", "mylab.protos", "--json", env=env)
    assert res.returncode == 0, res.stderr
    assert "lab-custom" in {p["name"] for p in json.loads(res.stdout)}
    res = hil("run", "lab-custom", "--protocol-module", "mylab.protos", "--chip", "fake:cores=1,rows=8,cols=8",
              "--set", "steps=2", "--out", str(tmp_path / "runs"), "--json", env=env)
    assert res.returncode == 0, res.stderr
    with RunReader(json.loads(res.stdout)["path"]) as r:
        assert r.start.protocol_source == "module:mylab.protos" and r.start.config == {"steps": 2}
    res = hil("run", "lab-custom", "--protocol-module", "mylab.nope", "--chip", "fake", env=env)
    assert res.returncode == 2 and "mylab.nope" in res.stderr
    res = hil("run", "lab-custom", "--protocol-module", str(tmp_path / "missing.py"), "--chip", "fake", env=env)
    assert res.returncode == 2 and "does not exist" in res.stderr


INPUT_PROTOCOL = textwrap.dedent(
    """
    from pathlib import Path
    import numpy as np
    from pydantic import BaseModel, ConfigDict
    from hil import register_protocol

    class WConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")
        path: str

    def load(config):
        w = np.load(config.path, allow_pickle=False)
        if not np.all(np.isfinite(w)):
            raise ValueError(f"weights in {config.path} hold NaN or inf; give finite weights")
        return {"weights": (w, str(Path(config.path).resolve()))}

    @register_protocol("with-weights", WConfig, inputs=load)
    def with_weights(chip, config, run):
        w = run.inputs["weights"]
        counts = chip.read_cells([0] * w.shape[0], np.arange(w.shape[0]), 0)
        run.log("w", w=w, counts=counts)
        return {"sum": float(w.sum())}
    """
)


def test_inputs_are_stored_in_the_run_and_replays_use_the_stored_copy(tmp_path: Path) -> None:
    import numpy as np

    proto = tmp_path / "wproto.py"
    proto.write_text(INPUT_PROTOCOL)
    data = tmp_path / "data"
    data.mkdir()
    w = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.save(data / "W.npy", w)
    out = tmp_path / "runs"
    res = hil("run", "with-weights", "--protocol-module", str(proto), "--chip", "fake", "--set", "path=data/W.npy",
              "--out", str(out), "--json", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    path = json.loads(res.stdout)["path"]
    path = str(tmp_path / path) if not Path(path).is_absolute() else path
    with RunReader(path) as r:
        info = r.input_info()["weights"]
        assert info["shape"] == [5, 3] and info["source"] == str((data / "W.npy").resolve()) and len(info["sha256"]) == 64
        np.testing.assert_array_equal(r.inputs()["weights"], w)
    (data / "W.npy").unlink()  # the replay, from another folder, needs only the run file
    other = tmp_path / "elsewhere"
    other.mkdir()
    res = hil("replay", path, "--protocol-module", str(proto), "--out", str(other), "--json", cwd=other)
    assert res.returncode == 0, res.stderr
    # Bad data is bad input: exit 2 and no run file.
    np.save(data / "bad.npy", np.array([[np.nan]]))
    before = sorted(out.glob("*.h5"))
    for item in ("path=data/missing.npy", "path=data/bad.npy"):
        res = hil("run", "with-weights", "--protocol-module", str(proto), "--chip", "fake", "--set", item,
                  "--out", str(out), cwd=tmp_path)
        assert res.returncode == 2, res.stderr
    assert "NaN or inf" in res.stderr
    assert sorted(out.glob("*.h5")) == before


def test_an_altered_input_is_refused(tmp_path: Path) -> None:
    import h5py
    import numpy as np

    from hil.errors import RunFileError
    from hil.runs import RunWriter

    RunWriter(tmp_path / "i.h5", {"run_id": "i"}, inputs={"w": np.arange(6.0)}).close(status="success")
    with h5py.File(tmp_path / "i.h5", "r+") as f:
        f["inputs/w"][0] = 99.0
    with RunReader(tmp_path / "i.h5") as r:
        import pytest

        with pytest.raises(RunFileError, match="does not match its recorded sha256"):
            r.inputs()

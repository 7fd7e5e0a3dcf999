"""Regenerate the recorded runs and sample weights shipped in ``data/`` (deterministic).

Run from the repository root: ``python data/runs/make_runs.py`` (about a minute on 2 CPU cores).

It writes

* ``data/weights/normal-64x64.npy``, ``data/weights/uniform-128x64.npy`` and ``data/weights/digits-mlp-fc1.npy``:
  sample weight matrices (n_in, n_out), float64; the first two from ``numpy.random.default_rng(2024)``,
  the last the first layer of the zoo's digits MLP (``data/zoo/digits-mlp.npz``, ``fc1.weight.T``);
* ``data/runs/program-verify.h5``: program-and-verify [NE23] of ``normal-64x64.npy`` on core 0 of
  ``emulator:hermes,cores=2,rows=64,cols=64`` (seed 0);
* ``data/runs/drift.h5``: the drift protocol [NE23, JOSHI20] on the same small chip, conductance levels read
  from 30 s to 4 days after programming (seed 0).

Licence: Apache-2.0 (the project's), like the files it writes (data/LICENSES.md).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parent
CHIP = "emulator:hermes,cores=2,rows=64,cols=64"
DRIFT_TIMES_S = [30.0, 100.0, 300.0, 1000.0, 3600.0, 10800.0, 36000.0, 86400.0, 172800.0, 345600.0]


def make_weights() -> list[Path]:
    """The sample weight matrices (.npy, no pickle)."""
    out = DATA / "weights"
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2024)
    normal = np.clip(rng.standard_normal((64, 64)), -3.0, 3.0) / 3.0
    uniform = rng.uniform(-1.0, 1.0, (128, 64))
    with np.load(DATA / "zoo" / "digits-mlp.npz") as z:
        fc1 = np.ascontiguousarray(np.asarray(z["fc1.weight"], dtype=np.float64).T)
    paths = []
    for name, w in (("normal-64x64", normal), ("uniform-128x64", uniform), ("digits-mlp-fc1", fc1)):
        p = out / f"{name}.npy"
        np.save(p, w, allow_pickle=False)
        paths.append(p)
    return paths


def make_runs() -> list[Path]:
    """The recorded runs (HDF5 run files, docs/run-file.md), renamed to stable names."""
    import hil

    targets = {
        "program-verify": {"weights": {"kind": "file", "path": "data/weights/normal-64x64.npy"}, "cores": [0],
                           "eval_inputs": 256},
        "drift": {"cores": [0], "read_times_s": DRIFT_TIMES_S, "reads_per_point": 4},
    }
    paths = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in targets.items():
            res = hil.run_protocol(name, chip=CHIP, config=cfg, seed=0, out=Path(tmp) / name, progress=False, compression="gzip",
                                   run_id=f"shipped-{name}", tags=["shipped"], comment="data/runs/make_runs.py")
            res.raise_for_status()
            dst = HERE / f"{name}.h5"
            shutil.copyfile(res.path, dst)
            paths.append(dst)
    return paths


def main() -> int:
    os.chdir(DATA.parent)  # config paths are relative to the repository root
    for p in [*make_weights(), *make_runs()]:
        print(p.relative_to(DATA.parent), f"{p.stat().st_size / 1024:.0f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

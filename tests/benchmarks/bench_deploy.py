"""``python -m tests.benchmarks.bench_deploy``: speed of a deployed model, and its accuracy table over chip seeds.

* speed (default): the digits MLP and CNN on the emulated ``hermes`` chip (4 full cores, fast
  path); one inference over the 540 test images, timed as a whole and inside ``chip.mvm``
  (``DeployedModel.stats``). The glue's overhead is the difference; the goal is total <= 2 x mvm.
* ``--accuracy``: FP, int8-digital and chip accuracy at 60 s, 1 h, 1 day and 1 week, with and
  without GDC, mean and std over ``--seeds`` chip seeds, per ``--programming`` method.

A benchmark, not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

import hil
from protocols.deploy import DeployConfig, deploy
from protocols.deploy.zoo import accuracy, load_digits_split, load_zoo_model

TIMES = (60.0, 3600.0, 86400.0, 604800.0)


def _chip(seed: int) -> hil.Chip:
    from emulator import EmulatedChip

    return EmulatedChip("hermes", seed=seed, geometry=hil.Geometry(n_cores=4))


def speed(model: str, repeats: int = 3) -> dict[str, Any]:
    """Inference time over the test set against the time of its chip.mvm calls (best of ``repeats``)."""
    d = load_digits_split()
    dm = deploy(load_zoo_model(model), _chip(0), d.calibration(256), DeployConfig(programming="fast", proxy_inputs=0))
    best: dict[str, Any] = {}
    for _ in range(repeats):
        dm.stats.reset()
        t0 = time.perf_counter()
        dm.predict(d.x_test)
        total = time.perf_counter() - t0
        if not best or total < best["total_s"]:
            best = {"model": model, "total_s": total, "mvm_s": dm.stats.seconds, "mvm_calls": dm.stats.calls,
                    "vectors": dm.stats.vectors, "ratio": total / dm.stats.seconds}
    return best


def accuracy_table(model: str, programming: str, seeds: int, **cfg: Any) -> dict[str, Any]:
    """Accuracies per seed at every time, with and without GDC; means and standard deviations."""
    d = load_digits_split()
    m = load_zoo_model(model)
    rows = []
    for seed in range(seeds):
        chip = _chip(seed)
        dm = deploy(m, chip, d.calibration(256), DeployConfig(programming=programming, proxy_inputs=0, **cfg),
                    rng=np.random.default_rng(seed))
        row: dict[str, Any] = {"seed": seed, "int8": dm.accuracy(d.x_test, d.y_test, "ideal")}
        for t in TIMES:
            chip.sleep(max(0.0, dm.t_programmed + t - chip.now()))
            dm.reset_gdc()
            row[f"{t:g}"] = dm.accuracy(d.x_test, d.y_test)
            dm.apply_gdc()
            row[f"{t:g}+gdc"] = dm.accuracy(d.x_test, d.y_test)
        rows.append(row)
    keys = [k for k in rows[0] if k != "seed"]
    return {"model": model, "programming": programming, "fp": accuracy(m, d.x_test, d.y_test), "seeds": seeds,
            "mean": {k: float(np.mean([r[k] for r in rows])) for k in keys},
            "std": {k: float(np.std([r[k] for r in rows])) for k in keys}, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--accuracy", action="store_true", help="the accuracy table instead of the speed benchmark")
    ap.add_argument("--models", nargs="+", default=["digits-mlp"])
    ap.add_argument("--programming", nargs="+", default=["program-verify", "gdp"])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--no-pto", action="store_true", help="deploy without PTO")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if not a.accuracy:
        out: list[dict[str, Any]] = [speed(m) for m in ("digits-mlp", "digits-cnn")]
    else:
        extra = {"pto": {"enabled": False}} if a.no_pto else {}
        out = [accuracy_table(m, p, a.seeds, **extra) for m in a.models for p in a.programming]
    if a.json:
        print(json.dumps(out, indent=1))
        return
    for r in out:
        if not a.accuracy:
            print(f"{r['model']}: inference {r['total_s'] * 1e3:.1f} ms, chip.mvm {r['mvm_s'] * 1e3:.1f} ms "
                  f"({r['mvm_calls']} calls, {r['vectors']} vectors), ratio {r['ratio']:.2f}")
            continue
        print(f"{r['model']} / {r['programming']}: FP {100 * r['fp']:.2f} %, seeds {r['seeds']}")
        for k in r["mean"]:
            print(f"  {k:>10}: {100 * r['mean'][k]:.2f} +- {100 * r['std'][k]:.2f}")


if __name__ == "__main__":
    main()

"""``python -m tests.benchmarks.bench_kernels``: the full kernel-approximation sweep on the emulator vs HERMES [KRN24].

Every data set (synthetic at the paper's d = 3, 8, 10, 13, 16; breast_cancer, wine, binarised digits) x RFF /
ORF / SORF x RBF / arccos-0 x k = 1..5 x ``--seeds`` seeds on an emulated ``hermes`` chip (8 full cores,
program-and-verify), through :func:`protocols.kernels.evaluate` (what the ``kernel-approx`` protocol runs).
Prints the seed means, the band-level checks against ``data/hermes`` (:func:`protocols.kernels.reference.compare`)
and the wall time; writes one figure per data set (``--out``, default ``bench-kernels/``).

A benchmark, not a test: the figures depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import hil
from protocols.kernels import KernelApproxConfig, evaluate, summarise
from protocols.kernels.datasets import load
from protocols.kernels.features import APPROXIMATIONS, KERNELS
from protocols.kernels.protocol import plot_curves
from protocols.kernels.reference import compare

SETS: list[tuple[str, int]] = [("synthetic", d) for d in (3, 8, 10, 13, 16)] + [("breast_cancer", 30), ("wine", 13), ("digits", 64)]


def sweep(name: str, d: int, seeds: int, programming: str, out: Path) -> dict[str, Any]:
    """One data set: every map, kernel, k and seed on a fresh chip; means, checks, figure, wall time."""
    from emulator import EmulatedChip

    t0 = time.perf_counter()
    chip = EmulatedChip("hermes", seed=0, geometry=hil.Geometry(n_cores=8))
    b = load(name, d=d, n=2000)
    cfg = KernelApproxConfig(deploy={"programming": programming, "proxy_inputs": 0, "gdc_inputs": 128})
    rows = [evaluate(chip, b.x_train, b.y_train, b.x_test, b.y_test, ap, ke, k, s, cfg)
            for ap in APPROXIMATIONS for ke in KERNELS for k in range(1, 6) for s in range(seeds)]
    means = summarise(rows)
    tag = f"{name}-d{d}" if name == "synthetic" else name
    fig = plot_curves(means, out / f"kernel-approx-{tag}.png")
    return {"dataset": tag, "d": b.d, "means": means, "checks": compare(means), "figure": str(fig),
            "wall_s": time.perf_counter() - t0}


def table(res: dict[str, Any]) -> str:
    """Markdown rows: per map/kernel, FP and chip error at k = 1 and 5, the k = 5 floor against the band, checks."""
    lines = []
    for pair, c in res["checks"].items():
        ap, ke = pair.split("/")
        ms = {m["k"]: m for m in res["means"] if m["approximation"] == ap and m["kernel"] == ke}
        fb = c["floor_in_band"]
        flags = " ".join(f"{k}={'y' if v['ok'] else 'n'}" for k, v in c.items() if isinstance(v, dict))
        lines.append(f"| {res['dataset']} | {pair} | {ms[1]['fp_err']:.3f} / {ms[1]['chip_err']:.3f} | {ms[5]['fp_err']:.3f} / "
                     f"{ms[5]['chip_err']:.3f} | {fb['value']:.3f} in [{fb['bound'][0]:.3f}, {fb['bound'][1]:.3f}] | "
                     f"{c['fp_slope']['value']:.2f} | {c['accuracy_gap']['value']:.1f} | {flags} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--programming", default="program-verify", choices=["program-verify", "gdp", "fast"])
    ap.add_argument("--datasets", nargs="*", default=None, help="names or synthetic-dN (default: all)")
    ap.add_argument("--out", type=Path, default=Path("bench-kernels"))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    sets = SETS if not a.datasets else [s for s in SETS if (f"{s[0]}-d{s[1]}" if s[0] == "synthetic" else s[0]) in a.datasets]
    t0 = time.perf_counter()
    results = [sweep(n, d, a.seeds, a.programming, a.out) for n, d in sets]
    if a.json:
        print(json.dumps(results, indent=1, default=float))
    else:
        print("| data | map/kernel | err k=1 FP / chip | err k=5 FP / chip | floor k=5 in HERMES band | FP slope | acc gap [pt] | checks |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results:
            print(table(r))
        n_ok = sum(c["ok"] for r in results for c in r["checks"].values())
        print(f"\n{n_ok} of {sum(len(r['checks']) for r in results)} map/kernel pairs pass every check; "
              f"wall {time.perf_counter() - t0:.0f} s ({a.seeds} seeds, {a.programming}); figures in {a.out}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GDP against program-and-verify on the emulator: total MVM error per weight distribution.

Run ``python -m tests.protocols.gdp_study --seeds 10 --cores 1 4`` (about 2 s per core and seed on a
CPU core). For every case and seed a fresh emulated ``hermes`` chip (seed = case seed) programs the
weights by P&V, the total MVM error [NE23 eq. 2] is measured (1024 random inputs, 30 % zeros), then
GDP (default hyperparameters) runs from that P&V state on the same cores and the error is measured
again with the same kind of inputs. Each selected core holds its own matrix.

Cases (weights per core, 256 x 256 unless the layer is smaller):

* ``uniform``: U(-1, 1), mapped by max |W|.
* ``normal-3sigma`` / ``normal-2sigma``: N(0, 1), mapping clipped at 3 or 2 standard deviations.
* ``sparse``: N(0, 1) clipped at 3 sigma with 50 % exact zeros.
* ``digits``: the first layer (64 x 128) of a 64-128-10 MLP trained on scikit-learn's ``load_digits``
  (numpy, Adam, 60 epochs; one network per core, initialised with the case seed), mapped by max |W|.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

CASES = ("uniform", "normal-3sigma", "normal-2sigma", "sparse", "digits")


def digits_layer(seed: int, hidden: int = 128, epochs: int = 60) -> np.ndarray:
    """First-layer weights (64, hidden) of a small MLP trained on the 8x8 digits (needs scikit-learn)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, np.sqrt(2 / 64), (64, hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, np.sqrt(1 / hidden), (hidden, 10))
    b2 = np.zeros(10)
    params = [w1, b1, w2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    step = 0
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for i in range(0, len(x), 32):
            idx = order[i:i + 32]
            xb, yb = x[idx], y[idx]
            h = np.maximum(xb @ w1 + b1, 0)
            z = h @ w2 + b2
            p = np.exp(z - z.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), yb] -= 1
            dz = p / len(idx)
            dh = (dz @ w2.T) * (h > 0)
            grads = [xb.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
            step += 1
            for j, (par, gr) in enumerate(zip(params, grads, strict=True)):
                m[j] = 0.9 * m[j] + 0.1 * gr
                v[j] = 0.999 * v[j] + 0.001 * gr * gr
                par -= 1e-3 * (m[j] / (1 - 0.9**step)) / (np.sqrt(v[j] / (1 - 0.999**step)) + 1e-8)
    return w1


def case_weights(case: str, n_cores: int, seed: int, rows: int = 256, cols: int = 256) -> tuple[np.ndarray, Any]:
    """Weights (n_cores, rows, cols) of a case (zero-padded) and its MappingSpec."""
    from protocols.mapping import MappingSpec

    rng = np.random.default_rng(seed)
    w = np.zeros((n_cores, rows, cols))
    spec = MappingSpec()
    if case == "uniform":
        w[:] = rng.uniform(-1, 1, w.shape)
    elif case in ("normal-3sigma", "normal-2sigma"):
        w[:] = rng.standard_normal(w.shape)
        spec = MappingSpec(clip="sigma", sigmas=3.0 if case == "normal-3sigma" else 2.0)
    elif case == "sparse":
        w[:] = np.clip(rng.standard_normal(w.shape), -3, 3) * (rng.random(w.shape) >= 0.5)
    elif case == "digits":
        for c in range(n_cores):
            layer = digits_layer(seed * 100 + c)
            w[c, : layer.shape[0], : layer.shape[1]] = layer
    else:
        raise ValueError(f"case={case!r}; allowed {CASES}")
    return w, spec


def run_case(case: str, n_cores: int, seed: int, rows: int = 256, cols: int = 256) -> dict[str, Any]:
    """P&V then GDP on ``n_cores`` cores of a fresh emulated chip; errors per core and timing."""
    import hil
    from emulator import EmulatedChip
    from protocols.gdp import GdpParams, gradient_descent_program
    from protocols.mapping import below_margin_fraction, map_weights
    from protocols.metrics import chip_mvm, measure_mvm_errors, mvm_errors, random_inputs
    from protocols.program_verify import ProgramVerifyParams, program_verify

    w, spec = case_weights(case, n_cores, seed, rows, cols)
    targets, _ = map_weights(w, 80.0, spec)
    chip = EmulatedChip("hermes", seed=seed, geometry=hil.Geometry(n_cores=n_cores, n_rows=rows, n_cols=cols))
    cores = np.arange(n_cores)
    t0 = time.perf_counter()
    st = program_verify(chip, cores, targets, ProgramVerifyParams())
    used = int(np.flatnonzero(np.any(w != 0, axis=(0, 2))).max()) + 1  # rows the matrix occupies

    def layer_error(rng: np.random.Generator) -> np.ndarray:
        x = random_inputs(rng, 1024, rows, 0.3)
        x[:, used:] = 0  # the layer's own inputs: padded rows carry none in inference
        return mvm_errors(x, chip_mvm(chip, x, cores), targets).total

    pv, _, _ = measure_mvm_errors(chip, cores, targets, np.random.default_rng([seed, 1]))
    pv_layer = layer_error(np.random.default_rng([seed, 3]))
    res = gradient_descent_program(chip, cores, targets, GdpParams(), start=st)
    gd, _, _ = measure_mvm_errors(chip, cores, targets, np.random.default_rng([seed, 2]))
    gd_layer = layer_error(np.random.default_rng([seed, 4]))
    return {"case": case, "cores": n_cores, "seed": seed, "pv": pv.total.tolist(), "gdp": gd.total.tolist(),
            "pv_layer": pv_layer.tolist(), "gdp_layer": gd_layer.tolist(), "used_rows": used,
            "below_margin": below_margin_fraction(w, targets, 5.0).tolist(), **res.summary(),
            "wall_s": time.perf_counter() - t0}


def table(rows: list[dict[str, Any]], pv_key: str = "pv", gdp_key: str = "gdp") -> str:
    """Markdown table: per case and core count, medians, worst GDP/P&V ratio, median reduction."""
    out = ["| case | cores | runs | P&V median | GDP median | GDP <= P&V (runs) | worst GDP/P&V | median reduction | "
           "stopped | below margin |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["case"], r["cores"]) for r in rows}, key=lambda k: (CASES.index(k[0]), k[1]))
    for case, n in keys:
        sel = [r for r in rows if r["case"] == case and r["cores"] == n]
        pv = np.array([np.mean(r[pv_key]) for r in sel])
        gd = np.array([np.mean(r[gdp_key]) for r in sel])
        worst = max(max(g / p for g, p in zip(r[gdp_key], r[pv_key], strict=True)) for r in sel)
        stops = sorted({r["stopped"] for r in sel})
        bm = np.mean([np.mean(r["below_margin"]) for r in sel])
        out.append(f"| {case} | {n} | {len(sel)} | {np.median(pv):.4f} | {np.median(gd):.4f} | {int(np.sum(gd <= pv))}/{len(sel)} "
                   f"| {worst:.3f} | {1 - np.median(gd / pv):.1%} | {','.join(stops)} | {bm:.1%} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--json", help="append one JSON line per run to this file")
    ap.add_argument("--from-json", help="only print the tables of the runs in this file (from --json)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    rows = []
    if args.from_json:
        with open(args.from_json) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        args.cores = []
    for n in args.cores:
        for case in args.cases:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                r = run_case(case, n, seed)
                rows.append(r)
                print(f"{case:14s} cores={n} seed={seed} P&V={np.mean(r['pv']):.4f} GDP={np.mean(r['gdp']):.4f} "
                      f"layer P&V={np.mean(r['pv_layer']):.4f} GDP={np.mean(r['gdp_layer']):.4f} "
                      f"{r['stopped']} {r['wall_s']:.1f}s", file=sys.stderr, flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps(r) + "\n")
    print("Total MVM error, random inputs on all rows of the core (measure_mvm_errors):")
    print(table(rows))
    print("\nTotal MVM error, random inputs only on the rows the matrix occupies (differs for digits: 64 of 256):")
    print(table(rows, "pv_layer", "gdp_layer"))
    pv = np.array([np.mean(r["pv"]) for r in rows])
    gd = np.array([np.mean(r["gdp"]) for r in rows])
    print(f"\nall runs: {len(rows)}, GDP <= P&V in {int(np.sum(gd <= pv))}, median reduction {1 - np.median(gd / pv):.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark of the ``attack`` protocol: ``python -m tests.benchmarks.bench_attacks [--seeds N]``.

Runs the PGD sweep (iterations 1/5/10 x eps .03/.06/.1/.15, 100 class-balanced images) on all five platforms
of the emulated chip (4 cores of 64 x 64) for each chip seed and prints the envelope means and wall time.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import hil
import protocols.attacks.protocol  # noqa: F401  (registers "attack")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    cfg = {"samples": args.samples, "repeats": 1,
           "attacks": {"pgd": {"iterations": [1, 5, 10], "magnitudes": [0.03, 0.06, 0.1, 0.15]}}}
    with tempfile.TemporaryDirectory() as out:
        for seed in range(1, args.seeds + 1):
            t0 = time.perf_counter()
            res = hil.run_protocol("attack", chip="emulator:hermes,cores=4,rows=64,cols=64", config=cfg, seed=seed, out=out,
                                   progress=False)
            res.raise_for_status()
            env = res.summary["envelope_mean"]
            print(f"seed {seed}: {time.perf_counter() - t0:.1f} s, chip calls {res.summary['chip_calls']}, "
                  + ", ".join(f"{k} {v:.3f}" for k, v in env.items()))


if __name__ == "__main__":
    main()

"""Benchmark of ADV25 on the digits models: ``python -m tests.benchmarks.bench_attacks [--parts ...] [--seeds N]``.

Parts (all by default; each prints its rows as they come, means with standard errors, and its wall time):

* ``hwa`` - FP32 vs HWA-FP32 (zoo recipe, same seed and mini-batches, weight noise 0.08) over training seeds,
  MLP (``--train-seeds``) and CNN (3 seeds): PGD envelope on the 540 test images, paired differences.
* ``platforms`` - the ``attack`` protocol, all five platforms, PGD 1/5/10 it x eps .03/.06/.1/.15, ``--samples``
  class-balanced images, 3 repeats, chip seeds 1..N, on the emulated chip (4 cores of 64 x 64) programmed with the
  default verify margin (5 counts) and a coarse one (20 counts); HIL vs transfer paired over the chip seeds.
* ``sources`` - the protocol's noise-source study on the chip model (4 sources x drops 2/5/10 %, 10 repeats).
* ``emulator`` - the emulator's own noise sources, one at a time (others off), each scaled by bisection to a
  5 % clean-accuracy drop of the chip, then PGD on the chip (HIL and transfer) over the chip seeds.
* ``blackbox`` - Square and OnePixel on the CNN on all five platforms (small grid).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import numpy as np

import hil
import protocols.attacks.protocol  # noqa: F401  (registers "attack")

CHIP = "emulator:hermes,cores=4,rows=64,cols=64"
IT, EPS = [1, 5, 10], [0.03, 0.06, 0.1, 0.15]
PGD = {"pgd": {"iterations": IT, "magnitudes": EPS}}


def _ms(a: Any) -> str:
    a = np.asarray(a, dtype=np.float64)
    se = a.std(ddof=1) / np.sqrt(a.size) if a.size > 1 else float("nan")
    return f"{a.mean():.4f} +- {se:.4f} (n={a.size})"


def _str(a: Any) -> np.ndarray:
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(a)])


def part_hwa(train_seeds: int) -> None:
    import torch

    from protocols.attacks import TorchPlatform, study
    from protocols.deploy.zoo import load_digits_split, train_digits

    torch.set_num_threads(1)
    d = load_digits_split()
    for arch, n in (("digits-mlp", train_seeds), ("digits-cnn", 3)):
        rows = []
        for s in range(n):
            envs, accs = [], []
            for sigma in (0.0, 0.08):
                p = TorchPlatform("m", train_digits(arch, s, weight_noise=sigma))
                envs.append(study.grid_envelope(p.predict, p.grad, d.x_test, d.y_test, IT, EPS))
                accs.append(float((p.predict(d.x_test).argmax(1) == d.y_test).mean()))
            rows.append(envs + accs)
            print(f"hwa {arch} seed {s}: fp32 {envs[0]:.4f} hwa {envs[1]:.4f} (accuracy {accs[0]:.3f} / {accs[1]:.3f})",
                  flush=True)
        r = np.asarray(rows)
        print(f"hwa {arch}: fp32 {_ms(r[:, 0])}, hwa {_ms(r[:, 1])}, fp32 - hwa {_ms(r[:, 0] - r[:, 1])}, "
              f"positive on {(r[:, 0] > r[:, 1]).sum()}/{len(r)}", flush=True)


def _run(cfg: dict, seed: int, out: str, chip: Any = CHIP) -> Any:
    res = hil.run_protocol("attack", chip=chip, config=cfg, seed=seed, out=out, progress=False)
    res.raise_for_status()
    return res


def _per_platform(res: Any) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Envelope mean per repeat for each platform/mode/attack, and clean accuracy per platform."""
    from hil.runs import RunReader

    with RunReader(res.path) as r:
        e, c = r.stream("envelope"), r.stream("clean_accuracy")
    key = np.char.add(np.char.add(np.char.add(np.char.add(_str(e["platform"]), "/"), _str(e["mode"])), "/"), _str(e["attack"]))
    env: dict[str, list[float]] = {}
    for k in dict.fromkeys(key.tolist()):
        sel = key == k
        env[k] = [float(np.nanmean(e["asr"][sel & (e["repeat"] == rep)])) for rep in np.unique(e["repeat"][sel])]
    cp = _str(c["platform"])
    acc = {p: float(c["accuracy"][cp == p].mean()) for p in dict.fromkeys(cp.tolist())}
    return env, acc


def part_platforms(seeds: int, samples: int, out: str) -> None:
    for margin in (5.0, 20.0):
        cfg = {"samples": samples, "repeats": 3, "attacks": PGD, "program_verify": {"margin_counts": margin, "max_iterations": 12}}
        per: dict[str, list[float]] = {}
        accs: dict[str, list[float]] = {}
        for seed in range(1, seeds + 1):
            t0 = time.perf_counter()
            env, acc = _per_platform(_run(cfg, seed, out))
            for k, v in env.items():
                per.setdefault(k, []).append(float(np.mean(v)))
            for k, v in acc.items():
                accs.setdefault(k, []).append(v)
            print(f"platforms margin {margin:g} seed {seed} ({time.perf_counter() - t0:.0f} s): "
                  + ", ".join(f"{k} {np.mean(v):.4f}" for k, v in env.items())
                  + " | accuracy " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)
        print(f"platforms margin {margin:g}, means over chip seeds: "
              + "; ".join(f"{k} {_ms(v)}" for k, v in per.items()), flush=True)
        print(f"platforms margin {margin:g}, clean accuracy: " + "; ".join(f"{k} {_ms(v)}" for k, v in accs.items()))
        diff = np.asarray(per["chip/hil/pgd"]) - np.asarray(per["chip/transfer/pgd"])
        print(f"platforms margin {margin:g}: HIL - transfer {_ms(diff)}, positive on {(diff > 0).sum()}/{diff.size}", flush=True)


def part_sources(out: str) -> None:
    cfg = {"samples": 540, "platforms": ["fp32"], "attacks": PGD,
           "noise_study": {"drops": [0.02, 0.05, 0.10], "repeats": 10, "match_repeats": 10}}
    res = _run(cfg, 1, out)
    for k, v in res.summary["noise_study"].items():
        print(f"sources (chip model) {k}: sigma {v['sigma']:.4f}, accuracy {v['accuracy']:.3f}, "
              f"ASR {v['asr']:.4f} +- {v['asr_se']:.4f}, noise-only flips {v['flip']:.4f}", flush=True)


#: The emulator's noise sources, one at a time: (name, function of the scale -> (preset overrides, protocol config)).
def _emulator_source(name: str, s: float) -> tuple[dict, dict]:
    quiet = {"read_noise_scale": 1.0, "slow_noise_scale": 0.0, "fast_mvm_scale": 0.0, "output_noise_counts": 0.0}
    pv = {"margin_counts": 5.0, "max_iterations": 12}
    if name == "weight_nonrecurrent":  # programming error left by program-and-verify: the acceptance margin
        pv = {"margin_counts": s, "max_iterations": 12}
    elif name == "weight_recurrent":  # fast 1/f read noise, fresh per MVM (input-dependent)
        quiet["fast_mvm_scale"] = s
    elif name == "output_recurrent":
        quiet.update(output_noise_counts=s, output_noise_recurrence="per_mvm")
    elif name == "output_nonrecurrent":
        quiet.update(output_noise_counts=s, output_noise_recurrence="frozen")
    return {"noise": quiet}, {"program_verify": pv}


EMU_RANGES = {"weight_nonrecurrent": (5.0, 60.0), "weight_recurrent": (0.5, 100.0), "output_recurrent": (0.5, 200.0),
              "output_nonrecurrent": (0.5, 200.0)}


def part_emulator(seeds: int, samples: int, out: str, drop: float = 0.05) -> None:
    from emulator.chip import EmulatedChip
    from hil.chip import Geometry

    geo = Geometry(n_cores=4, n_rows=64, n_cols=64)

    def chip(name: str, s: float, seed: int) -> tuple[Any, dict]:
        ov, cfg = _emulator_source(name, s)
        return EmulatedChip("hermes", seed=seed, geometry=geo, overrides=ov), cfg

    base = {"samples": samples, "repeats": 1, "attacks": PGD, "platforms": ["fp32", "chip"], "hil": {"refit_every": 0}}
    for name, (lo, hi) in EMU_RANGES.items():
        t0 = time.perf_counter()
        ref = None
        for _ in range(7):  # log bisection of the scale on the chip's clean accuracy (chip seed 100)
            mid = float(np.sqrt(lo * hi))
            c, cfg = chip(name, mid, 100)
            res = _run({**base, **cfg, "platforms": ["fp32", "chip"], "attacks": {"pgd": {"iterations": [1], "magnitudes": [0.01]}}},
                       100, out, c)
            _, acc = _per_platform(res)
            ref = acc["fp32"]
            if ref - acc["chip"] < drop:
                lo = mid
            else:
                hi = mid
        scale = float(np.sqrt(lo * hi))
        hl, tr, accs = [], [], []
        for seed in range(1, seeds + 1):
            c, cfg = chip(name, scale, seed)
            env, acc = _per_platform(_run({**base, **cfg}, seed, out, c))
            hl.append(np.mean(env["chip/hil/pgd"]))
            tr.append(np.mean(env["chip/transfer/pgd"]))
            accs.append(acc["chip"])
        print(f"emulator {name}: scale {scale:.3g} (fp32 accuracy {ref:.3f}, chip {_ms(accs)}): HIL {_ms(hl)}, "
              f"transfer {_ms(tr)} ({time.perf_counter() - t0:.0f} s)", flush=True)


def part_blackbox(out: str) -> None:
    cfg = {"model": "digits-cnn", "samples": 20, "repeats": 1, "hil": {"modes": ["hil"]},
           "attacks": {"square": {"iterations": [10, 50], "magnitudes": [0.1, 0.2]},
                       "onepixel": {"iterations": [3], "magnitudes": [1, 3]}}}
    res = _run(cfg, 1, out)
    print("blackbox (CNN, 20 images): " + ", ".join(f"{k} {v:.3f}" for k, v in res.summary["envelope_mean"].items()),
          flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="+", default=["hwa", "platforms", "sources", "emulator", "blackbox"],
                    choices=["hwa", "platforms", "sources", "emulator", "blackbox"])
    ap.add_argument("--seeds", type=int, default=3, help="chip seeds")
    ap.add_argument("--train-seeds", type=int, default=10, help="training seeds of the FP32/HWA comparison (MLP)")
    ap.add_argument("--samples", type=int, default=300)
    args = ap.parse_args()
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        for part in args.parts:
            t0 = time.perf_counter()
            if part == "hwa":
                part_hwa(args.train_seeds)
            elif part == "platforms":
                part_platforms(args.seeds, args.samples, out)
            elif part == "sources":
                part_sources(out)
            elif part == "emulator":
                part_emulator(args.seeds, args.samples, out)
            else:
                part_blackbox(out)
            print(f"== {part}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"== total {time.perf_counter() - t_all:.0f} s")


if __name__ == "__main__":
    main()

"""Protocol ``attack``: ADV25 adversarial-attack sweeps on the digits models, including hardware-in-the-loop attacks.

Platforms (:mod:`protocols.attacks.platforms`): ``fp32``, ``hwa`` (trained in the ``inputs`` hook, stored
as run inputs, so a replay uses the stored weights), ``digital`` (W4/A8), ``chip_model`` (parameters
fitted from the chip by :func:`fit_chip_model` when the chip is deployed, else the defaults) and ``chip``
(the model deployed with program-and-verify). Attacks: ``pgd`` (in-house), ``square`` and ``onepixel``
(ART, predict-only; on the chip they query the chip). For each platform x attack x grid point x repeat:
generate on the platform (for ``chip`` in mode ``transfer``: on the chip model; in mode ``hil``: PGD with
the HIL gradient), evaluate clean and adversarial interleaved on the platform, log the ASR counts.

HWA-FP32 is trained by default from scratch with the zoo's recipe (same seed, init and mini-batches as the FP32
zoo model; only the weight noise differs), so the two differ only in the noise injection.

Streams: ``asr`` (platform, mode, attack, iterations, magnitude, repeat, n, n_correct, n_success, asr),
``clean_accuracy`` (platform, repeat, accuracy), ``envelope`` (platform, mode, attack, t, iterations,
magnitude, asr), ``chip_calls`` (stage, calls), and with ``noise_study`` set ``noise_study`` (source, drop,
sigma, repeat, accuracy, asr = envelope mean, flip = noise-only ASR of x_adv = x). Figures: ASR vs magnitude per
platform, envelopes.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from hil.chip import Chip, Geometry
from hil.errors import ConfigError
from hil.protocol import RunLog, register_protocol
from protocols.attacks import lib, study
from protocols.attacks.platforms import (
    ChipModel,
    ChipModelParams,
    ChipPlatform,
    DigitalW4A8,
    TorchPlatform,
    fit_chip_model,
    train_hwa,
)
from protocols.deploy import DeployConfig, deploy
from protocols.deploy.plan import place_layers
from protocols.deploy.zoo import (
    ARCHITECTURES,
    build_model,
    load_digits_split,
    read_weight_file,
    resolve_model_file,
    train_digits,
)
from protocols.program_verify import ProgramVerifyParams

Platform = Literal["fp32", "hwa", "digital", "chip_model", "chip"]
AttackName = Literal["pgd", "square", "onepixel"]


class Grid(BaseModel):
    """One attack's sweep: iterations x magnitude (PGD/Square: eps in [0, 1]; OnePixel: pixels, integers >= 1)."""

    model_config = ConfigDict(extra="forbid")

    iterations: list[int] = Field([1, 5, 10], min_length=1)
    magnitudes: list[float] = Field([0.03, 0.06, 0.1, 0.15], min_length=1)

    @model_validator(mode="after")
    def _ranges(self) -> Grid:
        if any(i < 1 or i > 10_000 for i in self.iterations):
            raise ValueError(f"iterations {self.iterations} must lie in [1, 10000].")
        if any(not (0.0 < m <= 1000.0) for m in self.magnitudes):
            raise ValueError(f"magnitudes {self.magnitudes} must be positive.")
        return self


class HilSettings(BaseModel):
    """Hardware-in-the-loop gradients on the chip."""

    model_config = ConfigDict(extra="forbid")

    modes: list[Literal["transfer", "hil"]] = Field(["transfer", "hil"], min_length=1)
    refit_every: int = Field(10, ge=0, le=10_000, description="refit W_hat every that many gradients (0: never)")
    n_mvm: int = Field(2000, ge=16, le=100_000, description="random MVMs per layer for W_hat (ADV25: 2000)")


NoiseSource = Literal["weight_nonrecurrent", "weight_recurrent", "output_nonrecurrent", "output_recurrent",
                      "output_recurrent_batch"]


class NoiseStudy(BaseModel):
    """ADV25's noise-source study on the chip model (:mod:`protocols.attacks.study`): each source alone, scaled by
    bisection to each clean-accuracy drop (relative to FP32), then the PGD grid of ``attacks.pgd``."""

    model_config = ConfigDict(extra="forbid")

    sources: list[NoiseSource] = Field(["weight_nonrecurrent", "weight_recurrent", "output_nonrecurrent",
                                        "output_recurrent", "output_recurrent_batch"], min_length=1)
    drops: list[float] = Field([0.05], min_length=1, description="clean-accuracy drops to match [fraction, 0-0.5]")
    repeats: int = Field(5, ge=1, le=100, description="noise instances per (source, drop) for the ASR")
    match_repeats: int = Field(20, ge=1, le=1000, description="noise instances averaged per bisection step")

    @model_validator(mode="after")
    def _drops(self) -> NoiseStudy:
        if any(not (0.0 < d <= 0.5) for d in self.drops):
            raise ValueError(f"noise_study.drops {self.drops} must lie in (0, 0.5] (fractions of accuracy).")
        return self


class AttackConfig(BaseModel):
    """ADV25 attack sweep (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("digits-mlp", description="zoo name or .npz path (digits-mlp | digits-cnn architectures)")
    platforms: list[Platform] = Field(["fp32", "hwa", "digital", "chip_model", "chip"], min_length=1)
    attacks: dict[AttackName, Grid] = Field(default_factory=lambda: {"pgd": Grid()})
    samples: int = Field(100, ge=10, le=540, description="class-balanced test images (samples / 10 per class)")
    repeats: int = Field(3, ge=1, le=100, description="repeats on stochastic platforms")
    hwa_sigma: float = Field(0.08, ge=0.0, le=1.0, description="HWA training weight noise [channel wmax]")
    hwa_init: Literal["scratch", "finetune"] = Field(
        "scratch", description="scratch: the zoo recipe with weight noise (same seed and batches as the FP32 zoo model; "
                               "for a custom .npz use finetune); finetune: continue from the FP32 weights")
    hwa_epochs: int | None = Field(None, ge=1, le=400, description="null: the zoo recipe's epochs (scratch) or 15 (finetune)")
    hwa_seed: int = Field(0, ge=0, le=2**31 - 1, description="training seed of the HWA model (scratch; the zoo's is 0)")
    noise_study: NoiseStudy | None = Field(None, description="ADV25 noise-source study on the chip model (needs attacks.pgd)")
    chip_model: ChipModelParams | None = Field(None, description="null: fitted from the chip (if 'chip' is a platform)")
    hil: HilSettings = Field(default_factory=HilSettings)
    calibration_samples: int = Field(256, ge=16, le=1257)
    program_verify: ProgramVerifyParams = Field(default_factory=lambda: ProgramVerifyParams(max_iterations=12))


_MODEL = "model."


def inputs(config: AttackConfig) -> dict[str, Any]:
    """Model arrays, the HWA model (trained here, seeded), the class-balanced samples and calibration data."""
    _check_config(config)
    path, sha, _ = resolve_model_file(config.model)
    arrays = read_weight_file(path, sha)
    out: dict[str, Any] = {_MODEL + k: (v, str(path)) for k, v in arrays.items()}
    d = load_digits_split()
    per = config.samples // 10
    idx = np.concatenate([np.where(d.y_test == c)[0][:per] for c in range(10)])
    idx.sort()
    out["data.x"] = (d.x_test[idx], "sklearn:digits test, class-balanced")
    out["data.y"] = (d.y_test[idx], "sklearn:digits test, class-balanced")
    out["data.x_cal"] = (d.calibration(config.calibration_samples), "sklearn:digits train")
    if "hwa" in config.platforms:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            if config.hwa_init == "scratch":
                hwa = train_digits(_arch(config), config.hwa_seed, config.hwa_sigma, config.hwa_epochs)
                how = f"train_digits({_arch(config)!r}, seed={config.hwa_seed}, weight_noise={config.hwa_sigma})"
            else:
                hwa = train_hwa(_model(config, out), d.x_train, d.y_train, config.hwa_sigma, config.hwa_epochs or 15, seed=0)
                how = f"train_hwa(sigma={config.hwa_sigma}, epochs={config.hwa_epochs or 15})"
        finally:
            torch.set_num_threads(threads)
        for k, v in hwa.state_dict().items():
            out["hwa." + k] = (v.detach().numpy().copy(), how)
    return out


def _arch(config: AttackConfig) -> str:
    arch = resolve_model_file(config.model)[2]
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model {config.model!r} has architecture {arch!r}; the attack protocol takes {sorted(ARCHITECTURES)}.")
    return arch


def _model(config: AttackConfig, arrays: Mapping[str, Any], prefix: str = _MODEL) -> torch.nn.Module:
    state = {k[len(prefix):]: np.asarray(v[0] if isinstance(v, tuple) else v) for k, v in arrays.items() if k.startswith(prefix)}
    return build_model(_arch(config), state)


def _check_config(config: AttackConfig) -> str:
    """The checks that need no chip (run first by the ``inputs`` hook too, before any training); returns the architecture."""
    arch = _arch(config)
    shape = ARCHITECTURES[arch].input_shape  # type: ignore[attr-defined]
    for name, g in config.attacks.items():
        if name in ("pgd", "square") and max(g.magnitudes) > 1.0:
            raise ConfigError(f"attacks.{name}.magnitudes {g.magnitudes}: eps is L-infinity on [0, 1] pixels; keep it <= 1.")
        if name == "onepixel" and any(m != int(m) or m > 64 for m in g.magnitudes):
            raise ConfigError(f"attacks.onepixel.magnitudes {g.magnitudes}: whole pixel counts in [1, 64].")
        if name in ("square", "onepixel") and len(shape) != 3:
            raise ConfigError(f"attack {name!r} needs image inputs (C, H, W); model {config.model!r} ({arch}) takes "
                              f"flat inputs {shape}. Use model=digits-cnn or attack pgd.")
    if config.noise_study is not None and "pgd" not in config.attacks:
        raise ConfigError("noise_study runs the PGD grid of attacks.pgd; add attacks.pgd or drop noise_study.")
    return arch


def check(config: AttackConfig, geometry: Geometry) -> None:
    """Bad input exits 2 before anything runs: grids out of range, image attacks on a flat model, too few cores."""
    arch = _check_config(config)
    if "chip" in config.platforms:
        from protocols.deploy.layers import convert_model

        place_layers(convert_model(ARCHITECTURES[arch]()), geometry)


def _seed(run: RunLog, *key: Any) -> int:
    return int(run.rng("attack:" + ":".join(map(str, key))).integers(2**31))


def _generate(attack: str, gen: Any, x: np.ndarray, y: np.ndarray, it: int, mag: float, seed: int) -> np.ndarray:
    if attack == "pgd":
        return lib.pgd(gen.grad, x, y, float(mag), int(it))
    if attack == "square":
        return lib.square(gen.predict, x, y, float(mag), int(it), 10, seed)
    return lib.onepixel(gen.predict, x, y, int(mag), int(it), 10, seed)


def plots(run_file: Any, out_dir: Any) -> list[Path]:
    """``attack-asr.png`` (ASR vs magnitude per platform, one panel per attack), ``attack-envelope.png`` and, with a
    noise study, ``attack-noise-study.png`` (envelope mean +- SE vs accuracy drop per source)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hil.runs import RunReader

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def s(a: Any) -> np.ndarray:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(a)])

    paths = []
    with RunReader(run_file) as r:
        a, e = r.stream("asr"), r.stream("envelope")
        ns = r.stream("noise_study") if "noise_study" in r.streams() else None
    plat = np.char.add(np.char.add(s(a["platform"]), "/"), s(a["mode"]))
    att = s(a["attack"])
    attacks = list(dict.fromkeys(att.tolist()))
    for name, fname in (("magnitude", "attack-asr.png"), ("t", "attack-envelope.png")):
        fig = Figure(figsize=(4.5 * len(attacks), 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        axes = np.atleast_1d(fig.subplots(1, len(attacks)))
        pl = plat if name == "magnitude" else np.char.add(np.char.add(s(e["platform"]), "/"), s(e["mode"]))
        at = att if name == "magnitude" else s(e["attack"])
        for ax, an in zip(axes, attacks, strict=True):
            for p in dict.fromkeys(pl.tolist()):
                sel = (pl == p) & (at == an)
                if name == "magnitude":
                    top = a["iterations"][sel].max() if sel.any() else 0
                    sel &= a["iterations"] == top
                    mags = np.unique(a["magnitude"][sel])
                    ys = [np.nanmean(a["asr"][sel & (a["magnitude"] == m)]) for m in mags]
                    ax.plot(mags, ys, "o-", label=f"{p} ({top} it)")
                else:
                    ts = np.unique(e["t"][sel])
                    ax.plot(ts, [np.nanmean(e["asr"][sel & (e["t"] == t)]) for t in ts], "o-", label=p)
            ax.set_title(an)
            ax.set_xlabel("magnitude" if name == "magnitude" else "diagonal (iterations x magnitude), 0 -> 1")
            ax.set_ylabel("ASR")
            ax.legend(fontsize=7)
        fig.savefig(out / fname, dpi=110)
        paths.append(out / fname)
    if ns is not None:
        fig = Figure(figsize=(5.0, 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.subplots()
        src = s(ns["source"])
        for name in dict.fromkeys(src.tolist()):
            drops = np.unique(ns["drop"][src == name])
            vals = [ns["asr"][(src == name) & (ns["drop"] == d)] for d in drops]
            se = [v.std(ddof=1) / np.sqrt(v.size) if v.size > 1 else 0.0 for v in vals]
            ax.errorbar(100 * drops, [v.mean() for v in vals], yerr=se, fmt="o-", capsize=3, label=name)
        ax.set_xlabel("clean-accuracy drop [%]")
        ax.set_ylabel("PGD envelope mean ASR")
        ax.set_title("noise sources (chip model)")
        ax.legend(fontsize=7)
        fig.savefig(out / "attack-noise-study.png", dpi=110)
        paths.append(out / "attack-noise-study.png")
    return paths


@register_protocol("attack", AttackConfig, plots=plots, check=check, inputs=inputs)
def attack_protocol(chip: Chip, config: AttackConfig, run: RunLog) -> dict[str, Any]:
    """ADV25 attack sweep: ASR grids, envelopes and HIL attacks on the chip."""
    check(config, chip.geometry)
    torch.set_num_threads(1)
    x = np.asarray(run.inputs["data.x"], dtype=np.float32)
    y = np.asarray(run.inputs["data.y"], dtype=np.int64)
    x_cal = np.asarray(run.inputs["data.x_cal"], dtype=np.float32)
    model = _model(config, run.inputs)
    run.declare("asr", units={"magnitude": "eps [pixel] or pixels"}, x="magnitude")
    plats: dict[str, Any] = {"fp32": TorchPlatform("fp32", model)}
    if "hwa" in config.platforms:
        plats["hwa"] = TorchPlatform("hwa", _model(config, run.inputs, "hwa."))
    if "digital" in config.platforms:
        plats["digital"] = DigitalW4A8(model, x_cal)
    chip_p = None
    params = config.chip_model
    if "chip" in config.platforms:
        dm = deploy(model, chip, x_cal, DeployConfig(program_verify=config.program_verify, proxy_inputs=config.hil.n_mvm),
                    run=run, rng=run.rng("deploy"))
        run.log("chip_calls", stage="deploy", calls=dm.stats.calls)
        if params is None:
            params = fit_chip_model(dm, config.hil.n_mvm, seed=_seed(run, "fit"))
        chip_p = ChipPlatform(dm, refit_every=config.hil.refit_every, n_mvm=config.hil.n_mvm)
    cm = ChipModel(model, x_cal, params or ChipModelParams(), seed=_seed(run, "cm", 0))
    if "chip_model" in config.platforms:
        plats["chip_model"] = cm
    if chip_p is not None:
        plats["chip"] = chip_p
    per_repeat: dict[str, list[float]] = {}
    for pname in config.platforms:
        p = plats[pname]
        reps = config.repeats if p.stochastic else 1
        modes = config.hil.modes if pname == "chip" else ["same"]
        for rep in range(reps):
            p.new_repeat(_seed(run, pname, rep))
            cm.new_repeat(_seed(run, "cm", rep))
            clean = p.predict(x).argmax(1)
            run.log("clean_accuracy", platform=pname, repeat=rep, accuracy=float((clean == y).mean()))
            for mode in modes:
                for an, g in config.attacks.items():
                    grid = np.full((len(g.iterations), len(g.magnitudes)), np.nan)
                    for i, it in enumerate(g.iterations):
                        for j, mag in enumerate(g.magnitudes):
                            gen = cm if mode == "transfer" else p
                            if mode == "hil" and an != "pgd":
                                gen = p  # black-box attacks query the chip itself
                            seed = _seed(run, pname, mode, an, it, mag, rep)
                            xa = _generate(an, gen, x, y, it, mag, seed)
                            pc, pa = lib.interleaved_predict(p.predict, x, xa)
                            res = lib.asr(pc, pa, y)
                            grid[i, j] = res.asr
                            run.log("asr", platform=pname, mode=mode, attack=an, iterations=int(it), magnitude=float(mag),
                                    repeat=rep, n=res.n, n_correct=res.n_correct, n_success=res.n_success, asr=res.asr)
                    for t, it, mag, v in lib.envelope(grid, g.iterations, g.magnitudes):
                        run.log("envelope", platform=pname, mode=mode, attack=an, repeat=rep, t=t, iterations=it,
                                magnitude=mag, asr=v)
                    key = f"{pname}/{mode}/{an}"
                    env_mean = float(np.nanmean([r[3] for r in lib.envelope(grid, g.iterations, g.magnitudes)]))
                    per_repeat.setdefault(key, []).append(env_mean)
        if pname == "chip" and chip_p is not None:
            run.log("chip_calls", stage="attacks", calls=chip_p.chip_calls())
    envelopes = {k: float(np.mean(v)) for k, v in per_repeat.items()}
    envelope_se = {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None for k, v in per_repeat.items()}
    summary: dict[str, Any] = {"envelope_mean": envelopes, "envelope_se": envelope_se,
                               "chip_model": params.model_dump() if params else None,
                               "chip_calls": chip_p.chip_calls() if chip_p else 0}
    if config.noise_study is not None:
        summary["noise_study"] = _noise_study(config, run, model, x_cal, x, y)
    return summary


def _noise_study(config: AttackConfig, run: RunLog, model: torch.nn.Module, x_cal: np.ndarray, x: np.ndarray,
                 y: np.ndarray) -> dict[str, dict[str, float]]:
    """Stream ``noise_study`` rows (one per source, drop and repeat); returns {source/drop: mean, se, sigma, accuracy}."""
    ns = config.noise_study
    assert ns is not None
    g = config.attacks["pgd"]
    run.declare("noise_study", units={"sigma": "wmax_c (weight) or r_in wmax_c (output)", "drop": "fraction"}, x="drop")
    out: dict[str, dict[str, float]] = {}
    for source in ns.sources:
        for drop in ns.drops:
            seed = _seed(run, "study", source, drop)
            res = next(study.study(model, x_cal, x, y, [drop], g.iterations, g.magnitudes, ns.repeats, (source,), seed,
                                   ns.match_repeats))
            for r, (acc, env, flip) in enumerate(zip(res.accuracy, res.envelope, res.flip, strict=True)):
                run.log("noise_study", source=source, drop=float(drop), sigma=res.sigma, repeat=r, accuracy=float(acc),
                        asr=float(env), flip=float(flip))
            out[f"{source}/{drop:g}"] = {"asr": res.asr_mean, "asr_se": res.asr_se, "sigma": res.sigma,
                                         "accuracy": res.acc_mean, "flip": float(res.flip.mean())}
    return out

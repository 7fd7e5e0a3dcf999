"""Protocol ``infer``: deploy a zoo (or file) model onto the chip, calibrate it and measure accuracy over time.

Steps: FP accuracy (float64 reference of the converted layers), :func:`protocols.deploy.deploy`
(PTO [PTO24], mapping, program-and-verify [NE23] or GDP [GDP22], column affine, GDC reference),
the int8-digital accuracy (same quantisation and mapping, exact weights), then at
``first_time_s`` and every ``drift_times_s`` after programming the chip accuracy without and with
global drift compensation ([JOSHI20]), ``repeats`` times each, and the per-layer MVM error on real
activations.

The model weights and the data set are **run inputs** (``/inputs`` of the run file, with their
sha256): ``hil replay`` uses the stored copies. Bad input (an unsupported layer, data of the wrong
shape, a sha256 mismatch, too few cores, ``programming: fast`` in a recorded run) exits 2 before
any pulse.

Streams: ``layers`` (placement), ``pto`` (per tile: input range, column Gmax, predicted I_P),
``pto_search`` (search curves), ``accuracy`` (stage fp | int8 | chip, time, gdc, repeat, chip time),
``layer_error`` (per layer and time). Figures: accuracy against time, per-layer error.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, field_validator

from hil.chip import Chip, Geometry
from hil.errors import ChipInputError, ConfigError
from hil.protocol import RunLog, register_protocol
from protocols.deploy.layers import Converted, convert_model, layers_from_matrices, output_shapes, run_reference
from protocols.deploy.model import DeployConfig, deploy
from protocols.deploy.plan import place_layers
from protocols.deploy.zoo import ARCHITECTURES, build_model, load_digits_split, read_weight_file, resolve_model_file

_MODEL = "model."


class InferConfig(DeployConfig):
    """Deploy a model and measure its accuracy on the chip against time (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("digits-mlp", description="zoo name (data/zoo/manifest.json) or path of an .npz weight file")
    sha256: str | None = Field(None, description="expected sha256 of the model file (zoo models: the manifest's)")
    architecture: str | None = Field(None, description="digits-mlp | digits-cnn | mlp (bare matrices); zoo: from the manifest")
    layout: Literal["torch", "in_out"] | None = Field(
        None, description="architecture 'mlp': weight{i} stored (out, in) or (in, out)")
    zoo_root: str | None = Field(None, description="folder with manifest.json (null: data/zoo of the repository)")
    dataset: Literal["digits"] = Field("digits", description="scikit-learn digits, stratified 70/30 split")
    calibration_samples: int = Field(256, ge=1, le=100_000, description="training images used for PTO and the affine")
    test_samples: int | None = Field(None, ge=1, le=1_000_000, description="test images (null: all 540)")
    cores: list[int] | None = Field(None, description="cores to use, in order (null: all)")
    first_time_s: float = Field(60.0, ge=0.0, le=1e9, description="first accuracy measurement, after programming [s]")
    drift_times_s: list[float] = Field([3600.0, 86400.0, 604800.0], description="later measurements after programming [s]")
    repeats: int = Field(1, ge=1, le=1000, description="inferences over the test set per time and GDC setting")
    error_samples: int = Field(128, ge=1, le=100_000, description="test images for the per-layer MVM error")

    @field_validator("drift_times_s")
    @classmethod
    def _increasing(cls, v: list[float]) -> list[float]:
        t = np.asarray(v, dtype=float)
        if t.size and (np.any(~np.isfinite(t)) or np.any(t <= 0) or np.any(np.diff(t) <= 0)):
            raise ValueError(f"drift_times_s={v} must be positive and strictly increasing [s].")
        return v


# ------------------------------------------------------------------------------ inputs and checks
def inputs(config: InferConfig) -> dict[str, Any]:
    """Model arrays (``model.<key>``) and data (``data.x_cal``, ``data.x_test``, ``data.y_test``) for the run file."""
    path, sha, arch = resolve_model_file(config.model, config.zoo_root)
    want = config.sha256 or sha
    arrays = read_weight_file(path, want)
    if config.architecture and arch and config.architecture != arch:
        raise ConfigError(f"architecture={config.architecture!r} but the zoo says {config.model!r} is {arch!r}.")
    out: dict[str, Any] = {_MODEL + k: (v, str(path)) for k, v in arrays.items()}
    data = load_digits_split()
    n_test = config.test_samples or data.x_test.shape[0]
    out["data.x_cal"] = (data.calibration(config.calibration_samples), "sklearn:digits train")
    out["data.x_test"] = (data.x_test[:n_test], "sklearn:digits test")
    out["data.y_test"] = (data.y_test[:n_test], "sklearn:digits test")
    return out


def _architecture(config: InferConfig) -> str:
    if config.architecture:
        return config.architecture
    try:
        return resolve_model_file(config.model, config.zoo_root)[2] or "mlp"
    except ConfigError:
        return "mlp"


def build(config: InferConfig, run_inputs: Mapping[str, np.ndarray]) -> tuple[Any, Converted]:
    """(torch model or None, converted layers) from the run inputs."""
    state = {k[len(_MODEL):]: np.asarray(v) for k, v in run_inputs.items() if k.startswith(_MODEL)}
    arch = _architecture(config)
    if arch == "mlp":
        n = len([k for k in state if k.startswith("weight")])
        if n == 0 or any(f"weight{i}" not in state for i in range(n)):
            raise ConfigError("architecture 'mlp' needs arrays weight0, weight1, ... (and bias0, ...) in the model file.")
        biases = [state[f"bias{i}"] for i in range(n)] if all(f"bias{i}" in state for i in range(n)) else None
        return None, layers_from_matrices([state[f"weight{i}"] for i in range(n)], biases, layout=config.layout)
    if arch not in ARCHITECTURES:
        raise ConfigError(f"architecture={arch!r}; known: {[*sorted(ARCHITECTURES), 'mlp']}.")
    model = build_model(arch, state)
    return model, convert_model(model)


def check(config: InferConfig, geometry: Geometry, run_inputs: Mapping[str, np.ndarray]) -> None:
    """Everything that needs no chip: layers supported, data shape, cores enough, programming possible."""
    if config.programming == "fast":
        raise ChipInputError("programming='fast' (the emulator's statistical fast path) is not a chip operation, so a "
                             "recorded run cannot use or replay it; use programming='program-verify' or 'gdp' here, "
                             "or call protocols.deploy.deploy(..., DeployConfig(programming='fast')) from Python.")
    if config.programming == "gdp" and config.program_verify.devices_per_weight != 1:
        raise ChipInputError("programming='gdp' needs program_verify.devices_per_weight=1.")
    _, conv = build(config, run_inputs)
    x = np.asarray(run_inputs["data.x_test"])
    try:
        output_shapes(conv, tuple(x.shape[1:]))
    except ChipInputError as exc:
        raise ChipInputError(f"the data (samples of shape {tuple(x.shape[1:])}) does not fit the model: {exc}") from None
    place_layers(conv, geometry, config.cores)


# ------------------------------------------------------------------------------ plots
def plots(run_file: Any, out_dir: Any) -> list[Path]:
    """``infer-accuracy-vs-time.png`` (log time axis, with and without GDC) and ``infer-layer-error.png``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from hil.runs import RunReader

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    with RunReader(run_file) as r:
        have = set(r.streams())
        if "accuracy" in have:
            s = r.stream("accuracy")
            stage, t, gdc, acc = (np.asarray(s[k]) for k in ("stage", "time_s", "gdc", "accuracy"))
            stage = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in stage])
            fig = Figure(figsize=(5.5, 3.8), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            for flag, label, mk in ((False, "chip, no GDC", "o-"), (True, "chip, GDC", "s-")):
                sel = (stage == "chip") & (gdc == flag)
                ts = np.unique(t[sel])
                mean = [acc[sel & (t == v)].mean() * 100 for v in ts]
                std = [acc[sel & (t == v)].std() * 100 for v in ts]
                ax.errorbar(ts, mean, yerr=std, fmt=mk, ms=4, capsize=3, label=label)
            for st, ls in (("fp", "--"), ("int8", ":")):
                if np.any(stage == st):
                    ax.axhline(acc[stage == st].mean() * 100, ls=ls, color="k" if st == "fp" else "gray", label=st)
            ax.set_xscale("log")
            ax.set_xlabel("time after programming [s]")
            ax.set_ylabel("test accuracy [%]")
            ax.legend(fontsize=8)
            fig.savefig(out / "infer-accuracy-vs-time.png", dpi=110)
            paths.append(out / "infer-accuracy-vs-time.png")
        if "layer_error" in have:
            s = r.stream("layer_error")
            layer = np.array([v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(s["layer"])])
            t, err = np.asarray(s["time_s"]), np.asarray(s["error"])
            fig = Figure(figsize=(5.5, 3.8), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.subplots()
            names = list(dict.fromkeys(layer.tolist()))
            times = np.unique(t)
            width = 0.8 / max(len(times), 1)
            for i, tv in enumerate(times):
                ax.bar(np.arange(len(names)) + i * width, [err[(layer == n) & (t == tv)].mean() for n in names], width,
                       label=f"t = {tv:g} s")
            ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
            ax.set_ylabel("relative MVM error ||y - xW|| / ||xW||")
            ax.legend(fontsize=8)
            fig.savefig(out / "infer-layer-error.png", dpi=110)
            paths.append(out / "infer-layer-error.png")
    return paths


# ------------------------------------------------------------------------------ the protocol
@register_protocol("infer", InferConfig, plots=plots, deterministic=True, check=check, inputs=inputs)
def infer_protocol(chip: Chip, config: InferConfig, run: RunLog) -> dict[str, Any]:
    """Deploy a model, calibrate it and measure accuracy over time with and without GDC."""
    check(config, chip.geometry, run.inputs)
    model, conv = build(config, run.inputs)
    x_cal = np.asarray(run.inputs["data.x_cal"], dtype=np.float64)
    x_test = np.asarray(run.inputs["data.x_test"], dtype=np.float64)
    y_test = np.asarray(run.inputs["data.y_test"])
    fp = float((run_reference(conv, x_test)[0].argmax(1) == y_test).mean())
    run.log("accuracy", stage="fp", time_s=np.nan, gdc=False, repeat=0, accuracy=fp, chip_time_s=np.nan)
    cfg = DeployConfig(**{k: getattr(config, k) for k in DeployConfig.model_fields})
    dm = deploy(model if model is not None else conv, chip, x_cal, cfg, cores=config.cores, run=run, rng=run.rng("deploy"))
    for row in dm.placement():
        run.log("layers", layer=row["layer"], kind=row["kind"], n_in=row["n_in"], n_out=row["n_out"],
                row_tiles=row["row_tiles"], col_tiles=row["col_tiles"], cores=",".join(map(str, row["cores"])),
                ldpu=row["ldpu"], folded=",".join(row["folded"]))
    for st in dm.states:
        for t in st.placement.layout.tiles:
            w = t.shape[1]
            ip = st.i_p_ua[t.index, :w] if st.i_p_ua is not None else np.full(w, np.nan)
            run.log("pto", layer=st.layer.name, tile=t.index, core=int(st.cores[t.index]), x_range=float(st.x_range[t.index]),
                    gmax_mean_counts=float(st.gmax[t.index, :w].mean()), gmax_min_counts=float(st.gmax[t.index, :w].min()),
                    i_p_max_ua=float(np.max(ip)), saturating=float(np.mean(ip > config.pto.saturation_ua)))
    for row in dm.report.get("search", []):
        errs = np.asarray(row["errors"])
        for i, pct in enumerate(row["candidates"]):
            run.log("pto_search", layer=row["layer"], percentile=float(pct), error_mean=float(errs[i].mean()),
                    error_per_tile=errs[i])
    int8 = dm.accuracy(x_test, y_test, "ideal")
    run.log("accuracy", stage="int8", time_s=np.nan, gdc=False, repeat=0, accuracy=int8, chip_time_s=np.nan)
    x_err = x_test[: config.error_samples]
    results: list[dict[str, Any]] = []
    times = [config.first_time_s, *config.drift_times_s]
    for k, t in enumerate(times):
        chip.sleep(max(0.0, dm.t_programmed + t - chip.now()))
        row: dict[str, Any] = {"time_s": t}
        for gdc in (False, True):
            if gdc:
                alpha = dm.apply_gdc()
                row["alpha_mean"] = float(alpha.mean())
            else:
                dm.reset_gdc()
            accs = []
            for rep in range(config.repeats):
                a = dm.accuracy(x_test, y_test)
                accs.append(a)
                run.log("accuracy", stage="chip", time_s=t, gdc=gdc, repeat=rep, accuracy=a, chip_time_s=chip.now())
            row["gdc" if gdc else "no_gdc"] = float(np.mean(accs))
        errs = dm.layer_errors(x_err)
        for st, e in zip(dm.states, errs, strict=True):
            run.log("layer_error", layer=st.layer.name, time_s=t, gdc=True, error=e)
        row["layer_error"] = errs
        results.append(row)
        run.progress(k + 1, len(times), "accuracy over time")
    return {"fp_accuracy": fp, "int8_accuracy": int8, "placement": dm.placement(),
            "cores_used": int(sum(st.cores.size for st in dm.states)),
            "programming": {k: v for k, v in dm.report.items() if k != "search"}, "accuracy": results,
            "mvm_calls": dm.stats.calls}

"""Protocol ``adapt``: digital low-rank adapters trained with the chip in the loop, and re-adapted after drift [LORA24].

Steps: deploy a zoo MLP (:func:`protocols.deploy.deploy`: PTO [PTO24], program-and-verify [NE23] or GDP [GDP22]);
at ``first_time_s`` measure the chip's test accuracy; train a rank-``rank`` adapter beside every analog layer
for ``steps`` full-batch steps on the training split (:func:`protocols.adapters.lora.train_adapters`: only
``chip.mvm``, no pulse); measure; wait ``drift_s``, apply global drift compensation [JOSHI20] if ``gdc``,
measure; re-adapt for ``readapt_steps``; measure.

Streams: ``adapt`` (stage fp | chip | adapted | drifted | readapted, time after programming, accuracy, chip
time), ``adapt_loss`` (phase, step, loss), ``adapt_phase`` (phase adapt | readapt, chip time at its start and end:
the journal's ``apply_pulses`` calls inside these windows must number zero). The model arrays and the data are
run inputs (``model.<key>``, ``data.*``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import ConfigDict, Field

from hil.chip import Chip, Geometry
from hil.errors import ChipInputError
from hil.protocol import RunLog, register_protocol
from protocols.adapters.lora import AdaptedModel, train_adapters
from protocols.deploy.layers import convert_model, run_reference
from protocols.deploy.model import DeployConfig, deploy
from protocols.deploy.plan import place_layers
from protocols.deploy.zoo import build_model, load_digits_split, read_weight_file, resolve_model_file

_MODEL = "model."


class AdaptConfig(DeployConfig):
    """Deploy a model, train digital adapters on the chip, drift, re-adapt (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("digits-mlp", description="zoo MLP (data/zoo/manifest.json)")
    rank: int = Field(4, ge=1, le=256, description="adapter rank r (y = chip(x) + x A B)")
    steps: int = Field(100, ge=0, le=100_000, description="full-batch Adam steps of the first adaptation")
    readapt_steps: int = Field(50, ge=0, le=100_000, description="steps of the re-adaptation after drift")
    lr: float = Field(0.02, gt=0.0, le=10.0, description="Adam learning rate")
    train_samples: int | None = Field(None, ge=1, le=1_000_000, description="training images (null: all 1257)")
    calibration_samples: int = Field(256, ge=1, le=100_000, description="training images for PTO and the affine")
    first_time_s: float = Field(60.0, ge=0.0, le=1e9, description="first measurement after programming [s]")
    drift_s: float = Field(86400.0, ge=0.0, le=1e9, description="drift time before re-adaptation, after programming [s]")
    gdc: bool = Field(True, description="apply global drift compensation after the drift [JOSHI20]")
    cores: list[int] | None = Field(None, description="cores to use, in order (null: all)")
    adapter_seed: int = Field(0, ge=0, description="seed of the adapters' A matrices")


def inputs(config: AdaptConfig) -> dict[str, Any]:
    """Model arrays and the digits split as run inputs."""
    path, sha, _ = resolve_model_file(config.model)
    out: dict[str, Any] = {_MODEL + k: (v, str(path)) for k, v in read_weight_file(path, sha).items()}
    d = load_digits_split()
    n = config.train_samples or d.x_train.shape[0]
    out["data.x_cal"] = (d.calibration(config.calibration_samples), "sklearn:digits train")
    out["data.x_train"] = (d.x_train[:n], "sklearn:digits train")
    out["data.y_train"] = (d.y_train[:n], "sklearn:digits train")
    out["data.x_test"] = (d.x_test, "sklearn:digits test")
    out["data.y_test"] = (d.y_test, "sklearn:digits test")
    return out


def _build(config: AdaptConfig, run_inputs: Any) -> Any:
    _, _, arch = resolve_model_file(config.model)
    state = {k[len(_MODEL):]: np.asarray(v) for k, v in run_inputs.items() if k.startswith(_MODEL)}
    return build_model(arch or "digits-mlp", state)


def check(config: AdaptConfig, geometry: Geometry, run_inputs: Any) -> None:
    """Refuse the fast path in a recorded run, convolutions, and too few cores."""
    if config.programming == "fast":
        raise ChipInputError("programming='fast' is not a chip operation, so a recorded run cannot use it; use "
                             "program-verify or gdp (or protocols.adapters.AdaptedModel from Python).")
    conv = convert_model(_build(config, run_inputs))
    if any(la.conv is not None for la in conv.analog):
        raise ChipInputError(f"model {config.model!r} has convolutions; adapters support Linear layers only.")
    place_layers(conv, geometry, config.cores)


@register_protocol("adapt", AdaptConfig, check=check, inputs=inputs)
def adapt_protocol(chip: Chip, config: AdaptConfig, run: RunLog) -> dict[str, Any]:
    """Digital low-rank adapters trained with the chip in the loop; re-adaptation after drift."""
    check(config, chip.geometry, run.inputs)
    model = _build(config, run.inputs)
    x = {k: np.asarray(run.inputs[f"data.{k}"]) for k in ("x_cal", "x_train", "y_train", "x_test", "y_test")}
    run.declare("adapt", units={"time_s": "s", "accuracy": "1", "chip_time_s": "s"})
    run.declare("adapt_phase", units={"t_start_s": "s", "t_end_s": "s"})
    fp = float((run_reference(convert_model(model), x["x_test"].astype(np.float64))[0].argmax(1) == x["y_test"]).mean())
    run.log("adapt", stage="fp", time_s=np.nan, accuracy=fp, chip_time_s=np.nan)
    cfg = DeployConfig(**{k: getattr(config, k) for k in DeployConfig.model_fields})
    dm = deploy(model, chip, x["x_cal"], cfg, cores=config.cores, run=run, rng=run.rng("deploy"))
    am = AdaptedModel(dm, config.rank, np.random.default_rng(config.adapter_seed))
    out: dict[str, Any] = {"fp_accuracy": fp, "adapter_parameters": am.n_parameters,
                           "analog_weights": int(sum(np.prod(st.layer.shape) for st in dm.states))}

    def measure(stage: str) -> None:
        a = am.accuracy(x["x_test"], x["y_test"])
        run.log("adapt", stage=stage, time_s=chip.now() - dm.t_programmed, accuracy=a, chip_time_s=chip.now())
        out[f"{stage}_accuracy"] = a

    def adapt(phase: str, steps: int) -> None:
        t0 = chip.now()
        hist = train_adapters(am, x["x_train"], x["y_train"], steps=steps, lr=config.lr)
        for i, loss in enumerate(hist.loss):
            run.log("adapt_loss", phase=phase, step=i, loss=loss)
        run.log("adapt_phase", phase=phase, t_start_s=t0, t_end_s=chip.now(), mvm_calls=hist.mvm_calls)
        out[f"{phase}_mvm_calls"] = hist.mvm_calls

    chip.sleep(max(0.0, dm.t_programmed + config.first_time_s - chip.now()))
    measure("chip")
    adapt("adapt", config.steps)
    measure("adapted")
    chip.sleep(max(0.0, dm.t_programmed + config.drift_s - chip.now()))
    if config.gdc:
        dm.apply_gdc()
    measure("drifted")
    adapt("readapt", config.readapt_steps)
    measure("readapted")
    return out

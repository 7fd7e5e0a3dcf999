"""Networks on the chip: convert a torch model, place, PTO-calibrate, program, run (see docs/deploy.md).

Depends only on :mod:`hil` and torch (and the programming and calibration protocols), so a
deployed model runs on the emulator, the lab chip and a replay alike.
"""

from protocols.deploy.layers import AnalogLayer, Converted, ConvGeom, DigitalOp, convert_model, layers_from_matrices
from protocols.deploy.model import DeployConfig, DeployedModel, deploy, fit_affine
from protocols.deploy.plan import Placement, cores_needed, place_layers
from protocols.deploy.pto import PtoParams, collect_layer_inputs

__all__ = [
    "AnalogLayer",
    "ConvGeom",
    "Converted",
    "DeployConfig",
    "DeployedModel",
    "DigitalOp",
    "Placement",
    "PtoParams",
    "collect_layer_inputs",
    "convert_model",
    "cores_needed",
    "deploy",
    "fit_affine",
    "layers_from_matrices",
    "place_layers",
]

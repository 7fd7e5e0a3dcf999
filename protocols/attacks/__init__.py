"""Adversarial attack experiments on deployed networks [ADV25] (docs/attacks.md).

:mod:`protocols.attacks.lib` (ASR, envelope, PGD, ART's Square and OnePixel), :mod:`protocols.attacks.platforms`
(FP32, HWA-FP32, digital W4A8, chip model and :func:`fit_chip_model`, the chip with HIL gradients),
:mod:`protocols.attacks.study` (the noise-source study: four chip-model sources scaled to an accuracy drop) and the
protocol ``attack`` (:mod:`protocols.attacks.protocol`). Square and OnePixel need ART
(``adversarial-robustness-toolbox``, and ``packaging``); the rest needs only hil, torch and protocols.deploy.
"""

from protocols.attacks import study
from protocols.attacks.lib import AsrResult, asr, envelope, interleaved_predict, onepixel, pgd, square
from protocols.attacks.platforms import (
                                         ChipModel,
                                         ChipModelParams,
                                         ChipPlatform,
                                         DigitalW4A8,
                                         HilGraph,
                                         TorchPlatform,
                                         fit_chip_model,
                                         train_hwa,
)

__all__ = ["AsrResult", "ChipModel", "ChipModelParams", "ChipPlatform", "DigitalW4A8", "HilGraph", "TorchPlatform", "asr",
           "envelope", "fit_chip_model", "interleaved_predict", "onepixel", "pgd", "square", "study", "train_hwa"]

"""Digital low-rank adapters beside the analog layers, trained with the chip in the loop [LORA24] (docs/kernels.md).

Importing the package registers the protocol ``adapt``.
"""

from protocols.adapters.lora import AdaptedModel, AdaptHistory, LowRankAdapter, train_adapters
from protocols.adapters.protocol import AdaptConfig, adapt_protocol

__all__ = ["AdaptConfig", "AdaptHistory", "AdaptedModel", "LowRankAdapter", "adapt_protocol", "train_adapters"]

"""Kernel approximation with random features on the chip [KRN24] (docs/kernels.md).

``features`` (maps, kernels, error, ridge), ``datasets`` (offline data), ``reference`` (the HERMES
measurements and the band-level comparison), ``protocol`` (``kernel-approx``), ``protocols.datafiles`` (where
``data/`` is). Importing the package registers the protocol.
"""

from protocols.datafiles import data_dir, data_path
from protocols.kernels.features import FeatureMap, approx_error, exact_kernel, feature_map, n_features, ridge_accuracy
from protocols.kernels.protocol import KernelApproxConfig, evaluate, kernel_approx, summarise

__all__ = [
    "FeatureMap",
    "KernelApproxConfig",
    "approx_error",
    "data_dir",
    "data_path",
    "evaluate",
    "exact_kernel",
    "feature_map",
    "kernel_approx",
    "n_features",
    "ridge_accuracy",
    "summarise",
]

"""Train the zoo's digits models and write ``data/zoo/*.npz`` and ``manifest.json``.

``python data/zoo/train.py`` (about a minute on 2 CPU cores). Deterministic: one torch thread,
deterministic algorithms, seed 0, fixed mini-batch order; the same torch version on the same
machine writes the same files. Protocols never retrain: they load the files and check their sha256.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from protocols.deploy.zoo import (  # noqa: E402
    ARCHITECTURES,
    TRAIN_SETTINGS,
    accuracy,
    load_digits_split,
    save_state,
    train_digits,
)

#: Training settings per model: epochs, mini-batch, Adam learning rate, weight decay (the recipe lives in
#: protocols.deploy.zoo so that the attack protocol's HWA models are trained the same way).
SETTINGS = TRAIN_SETTINGS


def train(name: str, seed: int = 0) -> tuple[nn.Module, dict[str, float]]:
    """Train one zoo architecture on the digits split; returns the model (eval mode) and its accuracies."""
    data = load_digits_split()
    model = train_digits(name, seed)
    return model, {"train_accuracy": accuracy(model, data.x_train, data.y_train),
                   "test_accuracy": accuracy(model, data.x_test, data.y_test)}


def main() -> None:
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    models = {}
    for name in ARCHITECTURES:
        model, acc = train(name)
        sha = save_state(model, HERE / f"{name}.npz")
        models[name] = {"file": f"{name}.npz", "sha256": sha, "architecture": name, **acc,
                        "trained_with": f"torch {torch.__version__}, numpy {np.__version__}, seed 0, data/zoo/train.py"}
        print(name, acc, sha)
    doc = {"about": "digits models for tests and demos; weights are state_dict arrays in .npz (no pickle). "
                    "Data: scikit-learn load_digits, pixels/16, stratified 70/30 split, random_state=0.",
           "models": models}
    (HERE / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()

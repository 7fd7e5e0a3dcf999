"""A small model zoo for tests, demos and benchmarks: digits MLP and CNN, their data and weight files.

* Data: scikit-learn's ``load_digits`` (1797 images of 8 x 8 pixels, 0-16, ten classes; it ships
  inside scikit-learn, nothing is downloaded), pixels scaled to [0, 1], split 70 / 30 stratified
  with ``random_state=0`` (1257 train, 540 test). The calibration set is the first
  ``n_calibration`` training images.
* Models: :class:`DigitsMLP` (64-128-10, ReLU) and :class:`DigitsCNN` (conv 1->8 3x3 + BatchNorm +
  ReLU + 2x2 max-pool, conv 8->16 3x3 + ReLU + 2x2 max-pool, flatten, linear 64->10).
* Weight files: ``data/zoo/<name>.npz`` holding the module's ``state_dict`` as plain arrays (read
  with ``allow_pickle=False``: no code is executed), listed with their sha256, architecture and
  accuracy in ``data/zoo/manifest.json``. They are made once by ``python data/zoo/train.py``
  (deterministic, seeded); protocols load them and never retrain.

The zoo folder is found from the repository (``<repo>/data/zoo`` next to the ``protocols``
package) or from an explicit ``root``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hil.errors import ChipInputError, ConfigError

#: Largest model file accepted [bytes] (the zoo files are a few hundred kB).
MAX_MODEL_BYTES = 256 * 2**20


class DigitsMLP(nn.Module):
    """64-128-10 MLP with ReLU for 8 x 8 digits (input (B, 64) or (B, 1, 8, 8))."""

    input_shape = (64,)

    def __init__(self) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 128)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.relu(self.fc1(self.flatten(x))))


class DigitsCNN(nn.Module):
    """Small CNN for 8 x 8 digits (input (B, 1, 8, 8)): 81 MVM rows per image on 3 cores."""

    input_shape = (1, 8, 8)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.fc(self.flatten(x))


#: Architectures a weight file can name: class and input shape (without the batch axis).
ARCHITECTURES: dict[str, type[nn.Module]] = {"digits-mlp": DigitsMLP, "digits-cnn": DigitsCNN}


@dataclass(frozen=True)
class DigitsData:
    """The digits split: float32 images in [0, 1] (N, 1, 8, 8) and int64 labels (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def calibration(self, n: int) -> np.ndarray:
        """The first ``n`` training images (the PTO calibration set)."""
        return self.x_train[:n]


def load_digits_split() -> DigitsData:
    """scikit-learn's digits, pixels / 16, stratified 70 / 30 split with ``random_state=0``."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("the digits dataset needs scikit-learn: pip install scikit-learn") from exc
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    return DigitsData(np.ascontiguousarray(xtr), ytr, np.ascontiguousarray(xte), yte)


# ------------------------------------------------------------------------------ files
def zoo_dir(root: str | Path | None = None) -> Path:
    """The zoo folder: ``root`` if given, else ``data/zoo`` of the data folder (the checkout's, or the
    one a wheel installs; see :func:`protocols.datafiles.data_dir`)."""
    if root is not None:
        p = Path(root).expanduser().resolve()
    else:
        from protocols.datafiles import data_dir

        p = data_dir() / "zoo"
    if not (p / "manifest.json").is_file():
        raise ConfigError(f"no model zoo at {p} (manifest.json missing); pass the folder that holds manifest.json.")
    return p


def manifest(root: str | Path | None = None) -> dict[str, Any]:
    """The zoo's manifest: model name -> {file, sha256, architecture, accuracy, ...}."""
    return dict(json.loads((zoo_dir(root) / "manifest.json").read_text())["models"])


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_weight_file(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """Arrays of an ``.npz`` weight file, read without pickle; ``sha256`` (hex) is checked first if given."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"model file {str(p)!r} does not exist; give a zoo name (see data/zoo/manifest.json) or an .npz path.")
    if p.suffix != ".npz":
        raise ConfigError(f"model file {str(p)!r} has suffix {p.suffix!r}; weights are read only from .npz "
                          "(no pickle, no torch.load).")
    if p.stat().st_size > MAX_MODEL_BYTES:
        raise ConfigError(f"model file {str(p)!r} is {p.stat().st_size} bytes; allowed up to {MAX_MODEL_BYTES}.")
    if sha256 is not None:
        got = file_sha256(p)
        if got != sha256.lower():
            raise ConfigError(f"model file {str(p)!r} has sha256 {got}, not the expected {sha256}; "
                              "the file changed: restore it or pass its new sha256.")
    try:
        with np.load(p, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except ValueError as exc:
        raise ConfigError(f"model file {str(p)!r} holds non-numeric arrays ({exc}); save plain arrays with np.savez.") from None
    bad = [k for k, v in arrays.items() if v.dtype.kind not in "biuf"]
    if bad:
        raise ConfigError(f"model file {str(p)!r}: arrays {bad} are not numeric.")
    return arrays


def build_model(architecture: str, state: dict[str, np.ndarray]) -> nn.Module:
    """A zoo architecture with the given ``state_dict`` arrays (strict: every key must match), in eval mode."""
    if architecture not in ARCHITECTURES:
        raise ConfigError(f"architecture={architecture!r}; known: {sorted(ARCHITECTURES)}.")
    model = ARCHITECTURES[architecture]()
    try:
        model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    except RuntimeError as exc:
        raise ConfigError(f"the weights do not fit architecture {architecture!r}: {exc}") from None
    return model.eval()


def resolve_model_file(model: str, root: str | Path | None = None) -> tuple[Path, str | None, str | None]:
    """``(path, sha256 from the manifest or None, architecture from the manifest or None)`` of a zoo name or a path."""
    if model.endswith(".npz") or "/" in model:
        return Path(model).expanduser().resolve(), None, None
    entries = manifest(root)
    if model not in entries:
        raise ConfigError(f"model={model!r} is not in the zoo; zoo models: {sorted(entries)} (or give an .npz path).")
    e = entries[model]
    return zoo_dir(root) / e["file"], str(e["sha256"]), str(e["architecture"])


def load_zoo_model(name: str, root: str | Path | None = None) -> nn.Module:
    """A zoo model by name, its file checked against the manifest's sha256."""
    path, sha, arch = resolve_model_file(name, root)
    return build_model(arch or name, read_weight_file(path, sha))


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of a torch module (float32 inputs, no gradients)."""
    with torch.no_grad():
        logits = model(torch.as_tensor(x))
    return float((logits.argmax(1).cpu().numpy() == np.asarray(y)).mean())


def save_state(model: nn.Module, path: str | Path) -> str:
    """Write a module's ``state_dict`` as an uncompressed ``.npz``; returns the file's sha256."""
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    np.savez(path, **arrays)
    return file_sha256(path)


#: The zoo's training recipe per architecture: epochs, mini-batch, Adam learning rate, weight decay (cosine schedule).
TRAIN_SETTINGS: dict[str, tuple[int, int, float, float]] = {"digits-mlp": (60, 64, 3e-3, 1e-4),
                                                            "digits-cnn": (80, 64, 5e-3, 1e-4)}


def train_digits(architecture: str, seed: int = 0, weight_noise: float = 0.0, epochs: int | None = None) -> nn.Module:
    """Train a zoo architecture on the digits split with the zoo's recipe (``data/zoo/train.py`` uses this).

    Deterministic for a given torch build: seeded init, one fixed mini-batch order per ``seed``.
    ``weight_noise`` > 0 is hardware-aware training [ADV25]: every analog layer's weight gets
    ``weight_noise * max_c|w| * N(0, 1)`` (per output channel, drawn per mini-batch from a generator of
    its own), so a noisy and a clean model of the same ``seed`` see the same init and the same batches.
    Call under ``torch.set_num_threads(1)`` for bit-reproducible results.
    """
    from torch.func import functional_call

    if architecture not in TRAIN_SETTINGS:
        raise ConfigError(f"architecture={architecture!r}; trainable: {sorted(TRAIN_SETTINGS)}.")
    torch.manual_seed(seed)
    data = load_digits_split()
    model = ARCHITECTURES[architecture]()
    n_epochs, batch, lr, wd = TRAIN_SETTINGS[architecture]
    n_epochs = epochs or n_epochs
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, n_epochs)
    x = torch.from_numpy(data.x_train)
    y = torch.from_numpy(data.y_train)
    gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator().manual_seed(seed + 7919)
    noisy = [f"{n}.weight" for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for _ in range(n_epochs):
        model.train()
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            opt.zero_grad()
            if weight_noise > 0:
                params = {}
                for k, v in model.named_parameters():
                    if k in noisy:
                        wmax = v.detach().abs().reshape(v.shape[0], -1).amax(1).reshape(-1, *([1] * (v.ndim - 1)))
                        v = v + weight_noise * wmax * torch.randn(v.shape, generator=noise_gen)
                    params[k] = v
                out = functional_call(model, params, (x[idx],))
            else:
                out = model(x[idx])
            nn.functional.cross_entropy(out, y[idx]).backward()
            opt.step()
        sched.step()
    return model.eval()


def check_input_shape(model: nn.Module, shape: tuple[int, ...]) -> None:
    """Refuse data of the wrong per-sample ``shape`` for a zoo model (ChipInputError naming both)."""
    want = tuple(getattr(model, "input_shape", ()))
    if want and (int(np.prod(shape)) != int(np.prod(want)) or (len(want) == 3 and tuple(shape) != want)):
        raise ChipInputError(f"the data has samples of shape {tuple(shape)}; the model takes {want}.")

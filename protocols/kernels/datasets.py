"""Offline data sets for ``kernel-approx`` (nothing is downloaded) [KRN24 substitutes].

The paper's data sets (cod-rna, ijcnn1, letter, magic, skin) ship in no package; these stand in:
``synthetic`` (scikit-learn ``make_classification`` at the paper's input dimensions d = 3, 8, 10, 13, 16),
``breast_cancer`` (d = 30), ``wine`` (d = 13, class 0 against the rest) and ``digits`` (d = 64, binarised:
digit < 5 against >= 5). Labels are {0, 1}; inputs are z-scored with the training split's statistics;
splits are stratified, 70/30, ``random_state`` 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DATASETS: tuple[str, ...] = ("synthetic", "breast_cancer", "wine", "digits")


@dataclass
class BinaryData:
    """A binary classification split (float64 inputs, {0, 1} labels)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def d(self) -> int:
        return int(self.x_train.shape[1])


def load(name: str, *, d: int = 10, n: int = 2000, random_state: int = 0) -> BinaryData:
    """One data set by name (``d`` and ``n``: synthetic only)."""
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split

    if name == "synthetic":
        x, y = skd.make_classification(n_samples=n, n_features=d, n_informative=max(2, (2 * d) // 3),
                                       n_redundant=0, n_clusters_per_class=2, class_sep=1.0, random_state=random_state)
    elif name == "breast_cancer":
        x, y = skd.load_breast_cancer(return_X_y=True)
    elif name == "wine":
        x, y = skd.load_wine(return_X_y=True)
        y = (y == 0).astype(int)
    elif name == "digits":
        x, y = skd.load_digits(return_X_y=True)
        y = (y >= 5).astype(int)
    else:
        raise ValueError(f"dataset={name!r}; known: {DATASETS}")
    xtr, xte, ytr, yte = train_test_split(np.asarray(x, dtype=np.float64), np.asarray(y), test_size=0.3, stratify=y,
                                          random_state=random_state)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return BinaryData(name, (xtr - mu) / sd, ytr.astype(np.float64), (xte - mu) / sd, yte.astype(np.float64))

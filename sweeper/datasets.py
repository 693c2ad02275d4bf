"""Datasets: loaders that return every sample of a dataset as arrays, and K-fold splits.

A loader returns the *pooled* dataset (all samples) scaled to its ``clip_values``;
``fold_split`` then makes the stratified K-fold train/test split that a training job
uses, reproducibly from the seed. Loaders run once per sweep on the driver; trials get
the arrays through Ray's object store.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sweeper.registry import Registry


@dataclass(frozen=True)
class Dataset:
    name: str
    x: np.ndarray  # float32, NHWC, within clip_values
    y: np.ndarray  # int64 class indices
    class_names: tuple[str, ...]
    clip_values: tuple[float, float] = (0.0, 1.0)

    @property
    def nb_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader and the options a grid may set for it."""

    name: str
    load: Callable[..., Dataset]  # load(data_dir, **options) -> Dataset
    options: Mapping[str, Any] = field(default_factory=dict)  # option -> default
    description: str = ""


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _load_digits(data_dir: str | None = None) -> Dataset:
    # Bundled with scikit-learn: offline, 1,797 real 8x8 images with values 0..16.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    return Dataset(
        name="digits",
        x=x,
        y=digits.target.astype(np.int64),
        class_names=tuple(str(c) for c in range(10)),
    )


DATASETS.add("digits", DatasetSpec(
    "digits", _load_digits, {}, "scikit-learn's bundled 8x8 handwritten digits (embedded, offline)"))


def load(name: str, data_dir: str | None = None, **options: Any) -> Dataset:
    """Load a registered dataset with its options (already validated by the grid)."""
    spec = DATASETS.get(name)
    return spec.load(data_dir, **options)


def fold_split(y: np.ndarray, k: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of fold ``fold`` of a stratified, shuffled K-fold split."""
    from sklearn.model_selection import StratifiedKFold

    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range for k={k}")
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for index, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y)):
        if index == fold:
            return train, test
    raise AssertionError("unreachable")


def attack_subset(test_indices: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The test samples a job attacks: a seeded random subset, the same for every attack."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(test_indices)[: min(samples, len(test_indices))]
    return np.sort(chosen)

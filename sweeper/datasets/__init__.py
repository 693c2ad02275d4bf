"""Datasets: every sample of a dataset as arrays, and the K-fold splits a training job
uses.

A loader returns the *pooled* dataset (all samples, official train and test splits
together); ``fold_split`` then makes the stratified K-fold train/test split that a
training job uses, reproducibly from the seed, ``prepare_fold`` turns the pooled
dataset into what that job trains and attacks on, and ``attack_subset`` picks the samples
it attacks. Loaders run once per sweep on the driver; trials get the arrays through the
runner (Ray's object store). This module registers the datasets and owns the folds:

- ``spec.py``: ``Dataset``, ``DatasetSpec`` and the ``DATASETS`` registry;
- ``download.py``: the data directory and downloads (``URLS``, ``resolve_data_dir``);
- ``images.py``: ``digits`` (scikit-learn's bundled 8x8 digits, offline), ``cifar10`` and
  ``svhn`` (32x32, RGB or ``grayscale``), all in [0, 1];
- ``speech.py``: ``gsc``, Google Speech Commands v0.02 as MLPerf Tiny keyword-spotting
  MFCCs (``labels`` ``paper`` or ``mlperf``).

Scale. Attack budgets (eps 0.05, 8/255) are shares of the feature range, so every
dataset a job sees lies in [0, 1]: images as pixels/255 at load time. Raw MFCCs span
about [-124, 25], one coefficient far wider than another, so the loader returns them raw
and ``prepare_fold`` min-max scales each coefficient with statistics of the *training
fold only* (a test sample must not shape its own scaling). ``shape`` gives input shape
and class count without loading anything, and ``most_folds`` the largest K the official
files allow (every test fold can hold every class), so a grid is checked before anything
is loaded.

Groups. Samples that share a source must not straddle a split, or a model is tested on
what it has already heard: ``gsc``'s groups are speakers (and background-noise
recordings), and ``fold_split`` keeps a group on one side (StratifiedGroupKFold). SVHN,
CIFAR-10 and the digits carry no source ids: ``groups=None``, a plain stratified split.

TensorFlow and SciPy are imported inside the loaders that need them, so the CLI can
validate grids without them.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from sweeper.datasets import images, speech
from sweeper.datasets.download import URLS, resolve_data_dir  # noqa: F401  (the package's API)
from sweeper.datasets.spec import DATASETS, Dataset, DatasetSpec
from sweeper.errors import UserError, preview

DATASETS.add("digits", DatasetSpec(
    "digits", images.load_digits, {},
    "scikit-learn's bundled 8x8 handwritten digits (embedded, offline)",
    shape=lambda: ((8, 8, 1), 10),
    most_folds=lambda: (174, "its smallest class (digit 8) has 174 images")))
DATASETS.add("cifar10", DatasetSpec(
    "cifar10", images.load_cifar10, {"grayscale": False},
    "CIFAR-10 python batches, train+test pooled, 32x32 RGB (or BT.601 grayscale) in [0, 1]",
    {"grayscale": (False, True)}, shape=images.image_shape,
    most_folds=lambda grayscale=False: (6000, "each class has 6000 images")))
DATASETS.add("svhn", DatasetSpec(
    "svhn", images.load_svhn, {"grayscale": False},
    "SVHN cropped digits (train+test .mat, no extra), 32x32 RGB (or grayscale) in [0, 1]",
    {"grayscale": (False, True)}, shape=images.image_shape,
    # train_32x32.mat holds 4,659 nines and test_32x32.mat 1,595 (extra is left out)
    most_folds=lambda grayscale=False: (6254, "its smallest class (digit 9) has 6254 images")))
DATASETS.add("gsc", DatasetSpec(
    "gsc", speech.load_gsc, {"labels": "paper"},
    "Google Speech Commands v0.02 as MLPerf Tiny 49x10 MFCCs, speaker-grouped, scaled to "
    "[0, 1] per coefficient on each training fold; labels: paper (yes, no, zero..nine) or "
    "mlperf (10 words, silence, unknown)",
    {"labels": ("paper", "mlperf")}, prepare=speech.scale_mfccs, shape=speech.gsc_shape,
    most_folds=speech.gsc_most_folds))


def _with_defaults(spec: DatasetSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        raise UserError(f"dataset {spec.name!r}: unknown option {preview(unknown[0])}; "
                        f"accepted: {', '.join(spec.options) or 'none'}")
    return {**spec.options, **options}


def load(name: str, data_dir: str | os.PathLike | None = None, **options: Any) -> Dataset:
    """Load a registered dataset with its options; defaults fill the options not given."""
    spec = DATASETS.get(name)
    return spec.load(resolve_data_dir(data_dir), **_with_defaults(spec, options))


def shape(name: str, options: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()
          ) -> tuple[tuple[int, ...], int]:
    """(input_shape, nb_classes) of a dataset with its options (a mapping or the pairs of
    a dataset key), without loading it: models can be fingerprinted before the data is
    there. The same shape ``load`` and ``prepare_fold`` give."""
    spec = DATASETS.get(name)
    options = _with_defaults(spec, dict(options))
    if spec.shape is None:
        raise UserError(f"dataset {name!r} does not declare its shape; load it instead")
    return spec.shape(**options)


def most_folds(name: str, options: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()
               ) -> tuple[int, str] | None:
    """(K, why): the most folds a dataset with its options allows, so that every test
    fold can hold every class; None when the dataset does not declare it."""
    spec = DATASETS.get(name)
    options = _with_defaults(spec, dict(options))
    return None if spec.most_folds is None else spec.most_folds(**options)


def prepare_fold(data: Dataset, train_idx: np.ndarray) -> Dataset:
    """The dataset as a training job with training indices ``train_idx`` must see it: its
    spec's ``prepare`` (gsc: MFCCs scaled with statistics of ``data.x[train_idx]`` only);
    the same object for datasets that need nothing (the images, already in [0, 1])."""
    return DATASETS.get(data.name).prepare(data, np.asarray(train_idx))


def load_all(data_dir: str | os.PathLike | None,
             keys: Sequence[tuple[str, tuple]]) -> dict[tuple, Dataset]:
    """Each distinct (name, options) once: a grid may list one dataset twice, e.g. in
    colour and in grayscale, and many jobs share each."""
    return {key: load(key[0], data_dir, **dict(key[1])) for key in dict.fromkeys(keys)}


def fold_split(y: np.ndarray, k: int, fold: int, seed: int,
               groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and test indices of fold ``fold`` of a stratified, shuffled K-fold split.
    With ``groups`` (``Dataset.groups``) no group straddles the split: scikit-learn's
    StratifiedGroupKFold, stratified as far as whole groups allow. Without, the plain
    StratifiedKFold, whose folds for a seed must not change between versions."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if not 0 <= fold < k:
        raise ValueError(f"fold {fold} out of range for k={k}")
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        if len(groups) != len(y):
            raise ValueError(f"{len(groups)} groups for {len(y)} samples")
        count = len(np.unique(groups))
        if count < k:
            raise UserError(f"k={k} folds need at least {k} groups of samples (speakers, "
                            f"for gsc) to keep each group on one side, but there are {count}")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for index, (train, test) in enumerate(splitter.split(np.zeros(len(y)), y, groups)):
        if index == fold:
            return train, test
    raise AssertionError("unreachable")


def attack_subset(test_indices: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """The test samples a job attacks: a seeded random subset, the same for every attack."""
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(test_indices)[: min(samples, len(test_indices))]
    return np.sort(chosen)

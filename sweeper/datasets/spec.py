"""What a dataset is to sweeper: ``Dataset`` (every sample of it as arrays, its classes,
clip range, groups and how it was scaled) and ``DatasetSpec`` (a registered dataset: its
loader, options, fold preparation, and shape without loading), and the ``DATASETS``
registry the package fills."""

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
    groups: np.ndarray | None = None  # int64 source id per sample (speaker...); None: no ids
    grouping: str = "none"  # what a group is, in words, as results store it
    scaling: str = "as loaded"  # how x was scaled, in words, as results store it

    def __post_init__(self):
        if self.groups is not None and len(self.groups) != len(self.y):
            raise ValueError(f"dataset {self.name!r}: {len(self.groups)} groups "
                             f"for {len(self.y)} samples")

    @property
    def nb_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])


def _unchanged(data: Dataset, train_idx: np.ndarray) -> Dataset:
    return data


@dataclass(frozen=True)
class DatasetSpec:
    """A registered dataset: its loader, the options a grid may set for it, how a fold
    is prepared for training, and its shape without loading it."""

    name: str
    load: Callable[..., Dataset]  # load(data_dir: Path, **options) -> Dataset
    options: Mapping[str, Any] = field(default_factory=dict)  # option -> default
    description: str = ""
    choices: Mapping[str, tuple] = field(default_factory=dict)  # option -> accepted values
    # prepare(data, train_idx) -> the dataset a job trains and attacks on (see prepare_fold)
    prepare: Callable[[Dataset, np.ndarray], Dataset] = _unchanged
    # shape(**options) -> (input_shape, nb_classes), without loading; None: not declared
    shape: Callable[..., tuple[tuple[int, ...], int]] | None = None
    # most_folds(**options) -> (K, why): the most folds for which every test fold can hold
    # every class, from the official files' counts, without loading; None: not declared
    most_folds: Callable[..., tuple[int, str]] | None = None


DATASETS: Registry[DatasetSpec] = Registry("dataset")

"""Datasets: the embedded digits set and reproducible stratified K-fold splits."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import datasets


def test_digits_is_scaled_nhwc_with_ten_classes():
    data = datasets.load("digits")
    assert data.x.shape == (1797, 8, 8, 1) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.nb_classes == 10 and data.clip_values == (0.0, 1.0)


def test_folds_partition_the_data_stratified_and_reproducibly():
    y = datasets.load("digits").y
    tests = [datasets.fold_split(y, 3, fold, seed=7)[1] for fold in range(3)]
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(y)))  # a partition
    for fold, test in enumerate(tests):
        train, again = datasets.fold_split(y, 3, fold, seed=7)
        np.testing.assert_array_equal(test, again)
        assert not set(train) & set(test)
        share = np.bincount(y[test], minlength=10) / len(test)
        assert np.allclose(share, np.bincount(y, minlength=10) / len(y), atol=0.01)
    other_seed = datasets.fold_split(y, 3, 0, seed=8)[1]
    assert not np.array_equal(np.sort(other_seed), np.sort(tests[0]))


def test_fold_out_of_range():
    with pytest.raises(ValueError, match="fold 3 out of range"):
        datasets.fold_split(np.arange(30) % 3, 3, 3, 0)


def test_attack_subset_is_seeded_and_bounded():
    test = np.arange(100, 160)
    first = datasets.attack_subset(test, 20, seed=1)
    assert len(first) == 20 and set(first) <= set(test)
    np.testing.assert_array_equal(first, datasets.attack_subset(test, 20, seed=1))
    assert len(datasets.attack_subset(test, 500, seed=1)) == 60

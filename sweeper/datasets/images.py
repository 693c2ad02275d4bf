"""The image datasets: scikit-learn's bundled digits, CIFAR-10 (python batches) and SVHN
(cropped digits, ``.mat``), each as float32 NHWC in [0, 1] (pixels/255), CIFAR-10 and SVHN
optionally as one BT.601 luma channel. None of them carries source ids: no groups."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.datasets.download import URLS, download, ensure, fetch_archive
from sweeper.datasets.spec import Dataset
from sweeper.errors import UserError, preview

def load_digits(data_dir: Path | None = None) -> Dataset:
    # Bundled with scikit-learn: offline, 1,797 real 8x8 images with values 0..16.
    data = _bundled_digits()
    x = (data[:, :-1].reshape(-1, 8, 8).astype(np.float32) / 16.0)[..., np.newaxis]
    return Dataset(
        name="digits",
        x=x,
        y=data[:, -1].astype(np.int64),
        class_names=tuple(str(c) for c in range(10)),
        scaling="digits/16",
    )


def _bundled_digits() -> np.ndarray:
    """scikit-learn's digits file (``sklearn/datasets/data/digits.csv.gz``: 64 pixels, then
    the label, per row), parsed as ``sklearn.datasets.load_digits`` parses it, without
    importing scikit-learn: a launch loads the data while Ray starts, and importing it
    there (scipy with it, about 1.3 CPU-seconds) delayed Ray's start by about a second.
    Where the file is not found (another scikit-learn layout), scikit-learn loads it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # a top-level spec: nothing is imported
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            with gzip.open(path, "rt") as file:
                return np.loadtxt(file, delimiter=",")
    from sklearn.datasets import load_digits as bundled

    flat, target = bundled(return_X_y=True)
    return np.column_stack([flat, target])  # float64, as np.loadtxt gives


# --- images: CIFAR-10 and SVHN ---------------------------------------------------------

BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights for R, G, B


def _check_grayscale(grayscale: Any) -> None:
    if not isinstance(grayscale, bool):
        raise UserError(f"option 'grayscale' must be true or false, not {preview(grayscale)}")


def image_shape(grayscale: bool = False) -> tuple[tuple[int, ...], int]:
    _check_grayscale(grayscale)
    return (32, 32, 1 if grayscale else 3), 10


def _image_scaling(grayscale: bool) -> str:
    return "pixels/255, BT.601 luma" if grayscale else "pixels/255"


def _scale_images(images: np.ndarray, grayscale: bool) -> np.ndarray:
    """uint8 NHWC RGB -> float32 in [0, 1], optionally one BT.601 luma channel."""
    _check_grayscale(grayscale)
    if not grayscale:
        x = images.astype(np.float32, order="C")  # C order: the source is often a transposed view
        x /= 255.0
        return x
    x = np.zeros(images.shape[:-1], np.float32)
    for channel, weight in enumerate(BT601):  # per channel: no float copy of all three planes
        x += np.float32(weight / 255.0) * images[..., channel]
    np.clip(x, 0.0, 1.0, out=x)  # float32 rounding can put white a hair above 1
    return x[..., np.newaxis]


CIFAR10_DIR = "cifar-10-batches-py"
_CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def _unpickle(path: Path) -> dict:
    # The python version of CIFAR-10 is a set of pickles written by Python 2: bytes keys.
    with open(path, "rb") as file:
        return pickle.load(file, encoding="bytes")


def load_cifar10(data_dir: Path, grayscale: bool = False) -> Dataset:
    folder = data_dir / CIFAR10_DIR
    ensure("cifar10", folder, _CIFAR10_BATCHES + ("batches.meta",),
            "data_batch_1..5, test_batch, batches.meta",
            lambda: fetch_archive(URLS["cifar10"], data_dir), URLS["cifar10"],
            "the CIFAR-10 python version (the cifar-10-batches-py folder)")
    batches = [_unpickle(folder / name) for name in _CIFAR10_BATCHES]
    pixels = np.concatenate([batch[b"data"] for batch in batches])
    labels = np.concatenate([np.asarray(batch[b"labels"], np.int64) for batch in batches])
    names = tuple(name.decode() for name in _unpickle(folder / "batches.meta")[b"label_names"])
    # Each row holds the 32x32 R plane, then G, then B, each row-major: -> NHWC.
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return Dataset("cifar10", _scale_images(images, grayscale), labels, names,
                   scaling=_image_scaling(grayscale))


SVHN_DIR = "svhn"
_SVHN_FILES = ("train_32x32.mat", "test_32x32.mat")  # extra_32x32.mat is left out


def _fetch_svhn(folder: Path) -> None:
    for name in _SVHN_FILES:
        if not (folder / name).exists():
            download(URLS["svhn"] + name, folder / name)


def load_svhn(data_dir: Path, grayscale: bool = False) -> Dataset:
    from scipy.io import loadmat

    folder = data_dir / SVHN_DIR
    ensure("svhn", folder, _SVHN_FILES, ", ".join(_SVHN_FILES), lambda: _fetch_svhn(folder),
            f"{URLS['svhn']}{{{','.join(_SVHN_FILES)}}}",
            "the SVHN cropped-digit files (format 2)")
    parts = [loadmat(folder / name, variable_names=["X", "y"]) for name in _SVHN_FILES]
    images = np.concatenate([np.moveaxis(part["X"], -1, 0) for part in parts])  # HWCN -> NHWC
    labels = np.concatenate([part["y"].ravel() for part in parts]).astype(np.int64)
    labels[labels == 10] = 0  # SVHN stores digit 0 as label 10
    names = tuple(str(digit) for digit in range(10))
    # No grouping: the .mat files hold no source-image or house ids (module docstring).
    return Dataset("svhn", _scale_images(images, grayscale), labels, names,
                   scaling=_image_scaling(grayscale))

"""Datasets: loaders that return every sample of a dataset as arrays, and K-fold splits.

A loader returns the *pooled* dataset (all samples, official train and test splits
together); ``fold_split`` then makes the stratified K-fold train/test split that a
training job uses, reproducibly from the seed, and ``prepare_fold`` turns the pooled
dataset into what that job trains and attacks on. Loaders run once per sweep on the
driver; trials get the arrays through Ray's object store.

Datasets and their options (``DatasetSpec.options`` holds the defaults):

- ``digits``: scikit-learn's bundled 8x8 digits, offline, (N, 8, 8, 1) in [0, 1].
- ``cifar10``: the CIFAR-10 python batches, (N, 32, 32, 3) in [0, 1];
  ``grayscale=True`` gives (N, 32, 32, 1) with the ITU-R BT.601 luma weights.
- ``svhn``: SVHN cropped digits (``train_32x32.mat`` + ``test_32x32.mat``), like
  ``cifar10``; SVHN's label 10 is digit 0.
- ``gsc``: Google Speech Commands v0.02 as MLPerf Tiny keyword-spotting MFCCs,
  (N, 49, 10, 1); ``labels="paper"`` (yes, no, zero..nine) or ``"mlperf"`` (ten words,
  silence, unknown).

Scale. Attack budgets (eps 0.05, 8/255) are shares of the feature range, so every
dataset a job sees lies in [0, 1]: images as pixels/255 at load time. Raw MFCCs span
about [-124, 25], one coefficient far wider than another, so the loader returns them raw
(``clip_values`` their min and max) and ``prepare_fold`` min-max scales each of the 10
coefficients with statistics of the *training fold only* (a test sample must not shape
its own scaling), clipping test samples into [0, 1]. ``Dataset.scaling`` records the
rule; ``shape`` gives input shape and class count without loading anything, and
``most_folds`` the largest K that the official files allow (every test fold can hold
every class), so a grid is checked before anything is loaded.

Groups. Samples that share a source must not straddle a split, or a model is tested on
what it has already heard. ``gsc`` clips are named ``<speaker>_nohash_<n>.wav``, so its
``groups`` are speakers (a file without ``_nohash_`` is its own speaker); silence
segments are cut from a few long background recordings, so each recording is a group
too. ``fold_split`` keeps a group on one side (StratifiedGroupKFold). What cannot be
grouped: SVHN's ``.mat`` files carry no source-image or house ids, so near-duplicate
crops of one house number can straddle folds; CIFAR-10 and scikit-learn's digits carry
no source or writer ids either. Those get ``groups=None`` and a plain stratified split.

Files live under a data directory (``resolve_data_dir``: the grid's ``data_dir``, else
``$SWEEPER_DATA_DIR``, else a per-user cache). Missing files are downloaded from the
official source (``URLS``) unless ``SWEEPER_OFFLINE=1``; a download streams into a
temporary file and is moved into place only when complete. When that is impossible the
loader raises ``NotAvailableError`` with one line saying which files to put where.

TensorFlow and SciPy are imported inside the loaders that need them, so the CLI can
validate grids without them.
"""

from __future__ import annotations

import functools
import os
import pickle
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from sweeper.errors import NotAvailableError, UserError, preview
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

# Official sources. A module-level dict so tests can point them at a dead or local address.
URLS: dict[str, str] = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "svhn": "http://ufldl.stanford.edu/housenumbers/",  # + train_32x32.mat, test_32x32.mat
    "gsc": "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
}
# Short, so that a machine without network fails in seconds instead of hanging.
DOWNLOAD_TIMEOUT_S = 15.0


# --- data directory and downloads ---------------------------------------------------

def resolve_data_dir(configured: str | os.PathLike | None) -> Path:
    """The data directory: the grid's ``data_dir``, else ``$SWEEPER_DATA_DIR``, else the
    per-user cache (``$XDG_CACHE_HOME/sweeper/data`` or ``~/.cache/sweeper/data``)."""
    if configured:
        return Path(configured).expanduser()
    if os.environ.get("SWEEPER_DATA_DIR"):
        return Path(os.environ["SWEEPER_DATA_DIR"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "sweeper" / "data"


def _offline() -> bool:
    return os.environ.get("SWEEPER_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _ensure(dataset: str, folder: Path, required: Sequence[str], expected: str,
            fetch: Callable[[], None], source: str, what: str) -> None:
    """Make sure ``folder/<each required>`` exists, downloading with ``fetch`` if not;
    otherwise raise one line naming the dataset, the files and where to put them."""
    if all((folder / name).exists() for name in required):
        return
    missing = f"dataset {dataset!r}: files not found in {folder} (expected {expected})"
    if _offline():
        raise NotAvailableError(f"{missing} and downloads are off (SWEEPER_OFFLINE=1); "
                                f"download {source} and put {what} there")
    try:
        fetch()
    # URLError, refused connections and timeouts are OSErrors; the rest is a broken archive.
    except (OSError, EOFError, tarfile.TarError, zlib.error) as error:
        reason = " ".join(str(error).split()) or type(error).__name__
        raise NotAvailableError(f"{missing} and download from {source} failed ({reason}; "
                                f"no network?); put {what} there") from None
    if not all((folder / name).exists() for name in required):
        raise NotAvailableError(f"{missing}, not even after downloading {source}; put {what} there")


def _download(url: str, target: Path) -> None:
    """Stream ``url`` into a temporary file next to ``target``, renamed when complete."""
    import shutil
    import urllib.request

    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out, \
                urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            shutil.copyfileobj(response, out, 1 << 20)
            size, announced = out.tell(), response.headers.get("Content-Length")
        # http.client ends a cut-off body silently: a short file must not pass as complete.
        if announced is not None and size != int(announced):
            raise OSError(f"incomplete download: {size} of {announced} bytes")
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _fetch_archive(url: str, data_dir: Path, into: str = "") -> None:
    """Download a .tar.gz and unpack it into ``data_dir/into``, adding only what is missing."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # Scratch space inside the data dir, so the final renames stay on one filesystem.
    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".sweeper-download-") as scratch:
        archive, unpacked = Path(scratch) / "archive.tar.gz", Path(scratch) / "unpacked"
        _download(url, archive)
        with tarfile.open(archive) as tar:
            # The "data" filter refuses absolute paths and links out of the folder.
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(unpacked, **safe)
        _merge(unpacked, data_dir / into)


def _merge(source: Path, dest: Path) -> None:
    # Whole folders move with one rename, so a half-unpacked folder never appears in place.
    if not dest.exists():
        os.replace(source, dest)
    elif source.is_dir() and dest.is_dir():
        for child in source.iterdir():
            _merge(child, dest / child.name)


# --- digits ---------------------------------------------------------------------------

def _load_digits(data_dir: Path | None = None) -> Dataset:
    # Bundled with scikit-learn: offline, 1,797 real 8x8 images with values 0..16.
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images.astype(np.float32) / 16.0)[..., np.newaxis]
    return Dataset(
        name="digits",
        x=x,
        y=digits.target.astype(np.int64),
        class_names=tuple(str(c) for c in range(10)),
        scaling="digits/16",
    )


# --- images: CIFAR-10 and SVHN ---------------------------------------------------------

BT601 = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma weights for R, G, B


def _check_grayscale(grayscale: Any) -> None:
    if not isinstance(grayscale, bool):
        raise UserError(f"option 'grayscale' must be true or false, not {preview(grayscale)}")


def _image_shape(grayscale: bool = False) -> tuple[tuple[int, ...], int]:
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


def _load_cifar10(data_dir: Path, grayscale: bool = False) -> Dataset:
    folder = data_dir / CIFAR10_DIR
    _ensure("cifar10", folder, _CIFAR10_BATCHES + ("batches.meta",),
            "data_batch_1..5, test_batch, batches.meta",
            lambda: _fetch_archive(URLS["cifar10"], data_dir), URLS["cifar10"],
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
            _download(URLS["svhn"] + name, folder / name)


def _load_svhn(data_dir: Path, grayscale: bool = False) -> Dataset:
    from scipy.io import loadmat

    folder = data_dir / SVHN_DIR
    _ensure("svhn", folder, _SVHN_FILES, ", ".join(_SVHN_FILES), lambda: _fetch_svhn(folder),
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


# --- Google Speech Commands as MLPerf Tiny keyword-spotting MFCCs ----------------------

GSC_DIR = "speech_commands_v0.02"
GSC_NOISE_DIR = "_background_noise_"
GSC_WORDS = {
    "paper": ("yes", "no", "zero", "one", "two", "three", "four", "five", "six", "seven",
              "eight", "nine"),
    # MLPerf Tiny's order; it adds "silence" and "unknown" after the ten words.
    "mlperf": ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes"),
}
# Fixed, not the sweep's seed: which clips form silence/unknown is part of the data, the
# same for every trial and sweep, like the word clips themselves.
GSC_SEED = 20_200_602
SAMPLE_RATE = 16_000  # 1 s clips
# MLPerf Tiny KWS front end: 30 ms Hann windows every 20 ms (49 frames of 1 s), FFT of
# 512, 40 mel bins over 20-4000 Hz (the values MLPerf took from TF's contrib_audio.mfcc
# defaults), log(mel + 1e-6), and the first 10 MFCCs.
_WINDOW, _STRIDE, _FFT, _MEL_BINS, _MEL_HZ, _MFCCS = 480, 320, 512, 40, (20.0, 4000.0), 10
_GSC_BATCH = 512  # clips per TF call: about 50 MB of STFT, few ms of overhead per clip


def _read_wav(path: Path) -> np.ndarray:
    """The samples of a 16 kHz 16-bit PCM WAV file as float32 in [-1, 1), first channel."""
    import wave

    try:
        with wave.open(str(path), "rb") as wav:
            width, rate, channels = wav.getsampwidth(), wav.getframerate(), wav.getnchannels()
            frames = wav.readframes(wav.getnframes())
    except (wave.Error, EOFError) as error:
        raise UserError(f"dataset 'gsc': cannot read {path}: {error}") from None
    if width != 2 or rate != SAMPLE_RATE:
        raise UserError(f"dataset 'gsc': {path} is not 16 kHz 16-bit PCM")
    return np.frombuffer(frames, "<i2")[::channels].astype(np.float32) / 32768.0


@functools.lru_cache(maxsize=1)  # one trace per process, reused by every batch
def _mfcc_function():
    """A compiled batch front end: (B, 16000) float32 waves -> (B, 49, 10, 1) MFCCs."""
    import tensorflow as tf

    mel = tf.signal.linear_to_mel_weight_matrix(_MEL_BINS, _FFT // 2 + 1, SAMPLE_RATE, *_MEL_HZ)

    @tf.function(input_signature=[tf.TensorSpec([None, SAMPLE_RATE], tf.float32)])
    def mfcc(waves):
        # MLPerf divides each clip by its peak; |peak| here, so silence gives 0, not NaN.
        peak = tf.reduce_max(tf.abs(waves), axis=1, keepdims=True)
        waves = tf.math.divide_no_nan(waves, peak)
        stft = tf.signal.stft(waves, _WINDOW, _STRIDE, _FFT, window_fn=tf.signal.hann_window)
        log_mel = tf.math.log(tf.tensordot(tf.abs(stft), mel, 1) + 1e-6)
        return tf.signal.mfccs_from_log_mel_spectrograms(log_mel)[..., :_MFCCS, tf.newaxis]

    return mfcc


def _gsc_features(clips: Sequence[tuple[Path, int]],
                  noise: Mapping[Path, np.ndarray]) -> np.ndarray:
    """MFCCs of 1 s from each (file, start sample), zero-padded; ``noise`` holds files
    already read (the long background recordings that silence is cut from)."""
    mfcc = _mfcc_function()
    chunks = []
    for begin in range(0, len(clips), _GSC_BATCH):
        block = clips[begin:begin + _GSC_BATCH]
        waves = np.zeros((len(block), SAMPLE_RATE), np.float32)
        for row, (path, start) in enumerate(block):
            samples = noise[path] if path in noise else _read_wav(path)
            clip = samples[start:start + SAMPLE_RATE]  # trims clips longer than 1 s
            waves[row, :len(clip)] = clip
        chunks.append(mfcc(waves).numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 49, _MFCCS, 1), np.float32)


def _silence(noise: Mapping[Path, np.ndarray], count: int,
             rng: np.random.Generator) -> list[tuple[Path, int]]:
    """``count`` 1 s segments at seeded positions, uniform over every possible start in
    the noise files (segments may overlap: the files hold only ~400 disjoint seconds)."""
    paths = [path for path, samples in noise.items() if len(samples) >= SAMPLE_RATE]
    if not paths:
        raise NotAvailableError(f"dataset 'gsc': no WAV of at least 1 s in {GSC_NOISE_DIR}")
    starts = np.array([len(noise[path]) - SAMPLE_RATE + 1 for path in paths])  # per file
    ends = np.cumsum(starts)
    positions = np.sort(rng.integers(0, ends[-1], count))
    files = np.searchsorted(ends, positions, side="right")
    offsets = positions - (ends - starts)[files]
    return [(paths[file], int(offset)) for file, offset in zip(files, offsets)]


def _unknown(folder: Path, words: Sequence[str], count: int,
             rng: np.random.Generator) -> list[tuple[Path, int]]:
    """A seeded sample of ``count`` clips of all the other words (uniform over clips)."""
    others = sorted(path for sub in folder.iterdir()
                    if sub.is_dir() and not sub.name.startswith("_") and sub.name not in words
                    for path in sub.glob("*.wav"))
    chosen = np.sort(rng.choice(len(others), min(count, len(others)), replace=False))
    return [(others[index], 0) for index in chosen]


def _speaker(path: Path) -> str:
    """The speaker of a clip named ``<speaker>_nohash_<n>.wav``; a file named otherwise
    is its own speaker (its full path: the same name may be in two word folders)."""
    head, separator, _ = path.name.partition("_nohash_")
    return head if separator else str(path)


def _gsc_groups(clips: Sequence[tuple[Path, int]], noise: Mapping[Path, np.ndarray]) -> np.ndarray:
    """One int64 id per clip: its speaker, or for a silence segment its noise file (every
    file a group of its own, apart from every speaker). Ids follow sorted names."""
    keys = [("noise", str(path)) if path in noise else ("speaker", _speaker(path))
            for path, _ in clips]
    ids = {key: index for index, key in enumerate(sorted(set(keys)))}
    return np.array([ids[key] for key in keys], np.int64)


def _check_labels(labels: Any) -> None:
    if labels not in GSC_WORDS:
        raise UserError(f"dataset 'gsc': option 'labels' must be one of "
                        f"{', '.join(GSC_WORDS)}, not {preview(labels)}")


GSC_SPEAKERS = 2_618  # in v0.02 (Warden 2018)
GSC_NOISE_FILES = 6  # background-noise recordings in v0.02's _background_noise_


def _gsc_most_folds(labels: str = "paper") -> tuple[int, str]:
    _check_labels(labels)
    if labels == "mlperf":  # a recording is a group: each fold's silence needs one of its own
        return GSC_NOISE_FILES, (f"silence is cut from {GSC_NOISE_FILES} background-noise recordings, "
                                 f"each kept within one fold")
    return GSC_SPEAKERS, f"its {GSC_SPEAKERS} speakers are each kept within one fold"


def _gsc_shape(labels: str = "paper") -> tuple[tuple[int, ...], int]:
    _check_labels(labels)  # both sets have 12 classes: 12 words, or 10 + silence + unknown
    return (49, _MFCCS, 1), len(GSC_WORDS[labels]) + (2 if labels == "mlperf" else 0)


def _load_gsc(data_dir: Path, labels: str = "paper") -> Dataset:
    _check_labels(labels)
    folder, words = data_dir / GSC_DIR, GSC_WORDS[labels]
    required = words + ((GSC_NOISE_DIR,) if labels == "mlperf" else ())
    _ensure("gsc", folder, required, f"folders {', '.join(required)} of 16 kHz WAV files",
            lambda: _fetch_archive(URLS["gsc"], data_dir, GSC_DIR), URLS["gsc"],
            "the unpacked Speech Commands v0.02 archive")
    clips = [[(path, 0) for path in sorted((folder / word).glob("*.wav"))] for word in words]
    noise: dict[Path, np.ndarray] = {}
    if labels == "mlperf":
        # Silence and unknown would otherwise be tiny (~400 s of noise) or huge (~60k
        # clips); each gets the size of an average word class, drawn with a fixed seed.
        rng, size = np.random.default_rng(GSC_SEED), round(np.mean([len(c) for c in clips]))
        noise = {path: _read_wav(path) for path in sorted((folder / GSC_NOISE_DIR).glob("*.wav"))}
        clips += [_silence(noise, size, rng), _unknown(folder, words, size, rng)]
    pooled = [clip for group in clips for clip in group]
    x = _gsc_features(pooled, noise)
    y = np.repeat(np.arange(len(clips), dtype=np.int64), [len(group) for group in clips])
    names = words + (("silence", "unknown") if labels == "mlperf" else ())
    # Raw MFCCs are unbounded: their range until prepare_fold scales them to [0, 1].
    clip_values = (float(x.min()), float(x.max())) if len(x) else (0.0, 0.0)
    grouping = "speaker" + (" (silence: background-noise file)" if labels == "mlperf" else "")
    return Dataset("gsc", x, y, names, clip_values, groups=_gsc_groups(pooled, noise),
                   grouping=grouping, scaling="raw MFCC")


GSC_SCALING = "per-MFCC-coefficient min-max of the training fold, clipped to [0, 1]"


def _scale_mfccs(data: Dataset, train_idx: np.ndarray) -> Dataset:
    """Each MFCC coefficient (axis -2) min-max scaled over the training fold's samples and
    frames, then clipped to [0, 1]: an eps is then the same share of every coefficient's
    range (raw, c0 spans ~100 and c9 a few units). Test samples take no part in the
    statistics. A constant coefficient maps to 0 instead of dividing by zero."""
    if not len(train_idx):
        raise ValueError(f"dataset {data.name!r}: an empty training fold cannot be scaled")
    train = data.x[train_idx]
    axes = tuple(axis for axis in range(train.ndim) if axis != train.ndim - 2)
    low = train.min(axis=axes, keepdims=True)
    span = train.max(axis=axes, keepdims=True) - low
    span[span == 0] = 1
    x = (data.x - low) / span  # float32; a division, so the training max maps to exactly 1
    np.clip(x, 0.0, 1.0, out=x)
    return replace(data, x=x, clip_values=(0.0, 1.0), scaling=GSC_SCALING)


# --- registry and public entry points ---------------------------------------------------

DATASETS.add("digits", DatasetSpec(
    "digits", _load_digits, {},
    "scikit-learn's bundled 8x8 handwritten digits (embedded, offline)",
    shape=lambda: ((8, 8, 1), 10),
    most_folds=lambda: (174, "its smallest class (digit 8) has 174 images")))
DATASETS.add("cifar10", DatasetSpec(
    "cifar10", _load_cifar10, {"grayscale": False},
    "CIFAR-10 python batches, train+test pooled, 32x32 RGB (or BT.601 grayscale) in [0, 1]",
    {"grayscale": (False, True)}, shape=_image_shape,
    most_folds=lambda grayscale=False: (6000, "each class has 6000 images")))
DATASETS.add("svhn", DatasetSpec(
    "svhn", _load_svhn, {"grayscale": False},
    "SVHN cropped digits (train+test .mat, no extra), 32x32 RGB (or grayscale) in [0, 1]",
    {"grayscale": (False, True)}, shape=_image_shape,
    # train_32x32.mat holds 4,659 nines and test_32x32.mat 1,595 (extra is left out)
    most_folds=lambda grayscale=False: (6254, "its smallest class (digit 9) has 6254 images")))
DATASETS.add("gsc", DatasetSpec(
    "gsc", _load_gsc, {"labels": "paper"},
    "Google Speech Commands v0.02 as MLPerf Tiny 49x10 MFCCs, speaker-grouped, scaled to "
    "[0, 1] per coefficient on each training fold; labels: paper (yes, no, zero..nine) or "
    "mlperf (10 words, silence, unknown)",
    {"labels": ("paper", "mlperf")}, prepare=_scale_mfccs, shape=_gsc_shape,
    most_folds=_gsc_most_folds))


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

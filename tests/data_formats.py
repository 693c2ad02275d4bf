"""Small data sets written in each real dataset's on-disk format, for tests.

Each writer puts its files where ``sweeper.datasets`` expects them under ``data_dir`` (the
same layout as the official downloads), so tests load them through the public
``datasets.load(name, data_dir, **options)`` path that users' real files take. The
writers return what they wrote, for tests to compare against.
"""

from __future__ import annotations

import pickle
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CIFAR10_NAMES = (b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                 b"horse", b"ship", b"truck")
RED_PIXEL = (3, 5)  # (row, col) set to pure red in the first CIFAR/SVHN image
BLUE_PIXEL = (30, 1)  # (row, col) set to pure blue in the first CIFAR/SVHN image


def _images(rng: np.random.Generator, count: int) -> np.ndarray:
    """Random uint8 NHWC RGB images; the first has a pure red and a pure blue pixel."""
    images = rng.integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    images[0][RED_PIXEL] = (255, 0, 0)
    images[0][BLUE_PIXEL] = (0, 0, 255)
    return images


def write_cifar10(data_dir: Path, per_batch: int = 40, names: tuple[bytes, ...] = CIFAR10_NAMES,
                  seed: int = 0, learnable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 python batches (data_batch_1..5, test_batch, batches.meta) in
    ``data_dir/cifar-10-batches-py``; returns the pooled NHWC uint8 images and labels in
    file order (data_batch_1..5 then test_batch). ``learnable``: each image's brightness
    encodes its label, so a model can learn something in a few steps."""
    folder = Path(data_dir) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = _images(rng, 6 * per_batch)
    labels = rng.integers(0, len(names), 6 * per_batch)
    if learnable:
        level = (labels * 255 // max(1, len(names) - 1)).astype(np.int16)
        noise = rng.integers(-10, 11, images.shape)
        images = np.clip(level[:, None, None, None] + noise, 0, 255).astype(np.uint8)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(files):
        part = slice(index * per_batch, (index + 1) * per_batch)
        # Real rows: the R plane, then G, then B, each 32x32 row-major (channel first).
        rows = images[part].transpose(0, 3, 1, 2).reshape(per_batch, 3072)
        batch = {b"batch_label": name.encode(), b"labels": [int(v) for v in labels[part]],
                 b"data": rows,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        _pickle(folder / name, batch)
    _pickle(folder / "batches.meta", {b"label_names": list(names),
                                      b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return images, labels


def _pickle(path: Path, value: dict) -> None:
    with open(path, "wb") as file:
        pickle.dump(value, file, protocol=2)  # the real files are Python 2 pickles


def write_svhn(data_dir: Path, train: int = 60, test: int = 40,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """SVHN ``train_32x32.mat`` and ``test_32x32.mat`` (MATLAB v5: X (32, 32, 3, N) uint8,
    y (N, 1) uint8 with 10 for digit 0) in ``data_dir/svhn``; returns the pooled NHWC
    images and the raw labels 1..10 (train then test)."""
    from scipy.io import savemat

    folder = Path(data_dir) / "svhn"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = _images(rng, train + test)
    labels = rng.integers(1, 11, train + test).astype(np.uint8)
    labels[:3] = (10, 1, 9)  # make sure digit 0 (stored as 10) is there
    for name, part in (("train_32x32.mat", slice(0, train)),
                       ("test_32x32.mat", slice(train, None))):
        savemat(folder / name, {"X": np.moveaxis(images[part], 0, -1), "y": labels[part, None]})
    return images, labels


GSC_PAPER = ("yes", "no", "zero", "one", "two", "three", "four", "five", "six", "seven",
             "eight", "nine")
GSC_MLPERF = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")
GSC_EXTRA = ("bed", "cat", "dog")  # words in neither set: "unknown" material only


@dataclass(frozen=True)
class GscClip:
    word: str
    path: Path
    samples: int
    frequency: float
    speaker: str


def write_gsc(data_dir: Path, clips_per_word: int = 6,
              noise_seconds: tuple[float, ...] = (4.0, 3.0), seed: int = 0,
              speakers: int = 0) -> list[GscClip]:
    """A Speech Commands v0.02 folder in ``data_dir/speech_commands_v0.02``: one folder per
    word of 16 kHz mono 16-bit WAVs named ``<speaker>_nohash_<n>.wav``, each word a tone of
    its own frequency (plus a faint hiss) at a random loudness. Clips number 2, 5, 8, ...
    of a word last 0.6 s, number 1 lasts 1.25 s, the others 1 s. Also
    ``_background_noise_`` with noise recordings of ``noise_seconds`` (and a README, as in
    the real set).

    ``speakers=0``: every clip has a speaker of its own (n is then the clip's number).
    ``speakers=S``: as in the real set, S speakers say every word in turn (clip i of word
    w is speaker (i + w) mod S), some more than once, n counting their repetitions of
    the word. The sound is the same either way; only the file names differ."""
    root = Path(data_dir) / "speech_commands_v0.02"
    rng = np.random.default_rng(seed)
    pool = [f"{v:08x}" for v in np.random.default_rng(seed + 1).integers(16 ** 8, size=speakers)]
    words = sorted(set(GSC_PAPER) | set(GSC_MLPERF) | set(GSC_EXTRA))
    clips = []
    for index, word in enumerate(words):
        frequency = 200.0 + 150.0 * index  # 200..3650 Hz: inside the 20-4000 Hz mel range
        said: dict[str, int] = {}  # speaker -> clips of this word so far
        for n in range(clips_per_word):
            seconds = 0.6 if n % 3 == 2 else 1.25 if n == 1 else 1.0
            t = np.arange(int(seconds * 16000)) / 16000
            # A faint hiss at a fixed ratio to the tone: without it most mel bins would hold
            # only int16 rounding noise, whose level would vary with the loudness.
            tone = np.sin(2 * np.pi * frequency * t + rng.uniform(0, 6))
            wave_ = rng.uniform(0.2, 0.9) * (tone + rng.normal(0, 0.01, len(t)))
            speaker, number = f"{rng.integers(16 ** 8):08x}", n  # drawn either way: same sounds
            if speakers:
                speaker = pool[(n + index) % speakers]
                number = said[speaker] = said.get(speaker, -1) + 1
            path = root / word / f"{speaker}_nohash_{number}.wav"
            write_wav(path, wave_)
            clips.append(GscClip(word, path, len(t), frequency, speaker))
    for index, seconds in enumerate(noise_seconds):
        noise = rng.normal(0, 0.3, int(seconds * 16000)).clip(-1, 1)
        write_wav(root / "_background_noise_" / f"noise_{index}.wav", noise)
    (root / "_background_noise_" / "README.md").write_text("not audio")  # as in the real set
    return clips


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> None:
    """A mono 16-bit PCM WAV file of float samples in [-1, 1]."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm.tobytes())

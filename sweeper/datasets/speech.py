"""Google Speech Commands v0.02 as MLPerf Tiny keyword-spotting MFCCs: (N, 49, 10, 1)
features from 16 kHz WAV files, word sets ``paper`` and ``mlperf`` (with silence cut from
the background-noise recordings and a seeded sample of the other words as unknown),
speaker groups, and the per-coefficient scaling each training fold gets."""

from __future__ import annotations

import functools
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from sweeper.datasets.download import URLS, ensure, fetch_archive
from sweeper.datasets.spec import Dataset
from sweeper.errors import NotAvailableError, UserError, preview

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


def gsc_most_folds(labels: str = "paper") -> tuple[int, str]:
    _check_labels(labels)
    if labels == "mlperf":  # a recording is a group: each fold's silence needs one of its own
        return GSC_NOISE_FILES, (f"silence is cut from {GSC_NOISE_FILES} background-noise recordings, "
                                 f"each kept within one fold")
    return GSC_SPEAKERS, f"its {GSC_SPEAKERS} speakers are each kept within one fold"


def gsc_shape(labels: str = "paper") -> tuple[tuple[int, ...], int]:
    _check_labels(labels)  # both sets have 12 classes: 12 words, or 10 + silence + unknown
    return (49, _MFCCS, 1), len(GSC_WORDS[labels]) + (2 if labels == "mlperf" else 0)


def load_gsc(data_dir: Path, labels: str = "paper") -> Dataset:
    _check_labels(labels)
    folder, words = data_dir / GSC_DIR, GSC_WORDS[labels]
    required = words + ((GSC_NOISE_DIR,) if labels == "mlperf" else ())
    ensure("gsc", folder, required, f"folders {', '.join(required)} of 16 kHz WAV files",
            lambda: fetch_archive(URLS["gsc"], data_dir, GSC_DIR), URLS["gsc"],
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


def scale_mfccs(data: Dataset, train_idx: np.ndarray) -> Dataset:
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

"""Datasets: the embedded digits set, reproducible stratified K-fold splits, and the real
datasets (CIFAR-10, SVHN, Speech Commands) loaded from small files in their real formats;
Speech Commands folds that keep each speaker (and each noise recording) on one side, and
MFCCs scaled to [0, 1] from the training fold alone."""

from __future__ import annotations

import tarfile
import wave
from dataclasses import replace

import numpy as np
import pytest

from sweeper import datasets
from sweeper.errors import NotAvailableError, UserError
from sweeper.registry import Registry
from tests.data_formats import (BLUE_PIXEL, CIFAR10_NAMES, GSC_MLPERF, GSC_PAPER, RED_PIXEL,
                                write_cifar10, write_gsc, write_svhn)


def test_digits_is_scaled_nhwc_with_ten_classes():
    data = datasets.load("digits")
    assert data.x.shape == (1797, 8, 8, 1) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert data.nb_classes == 10 and data.clip_values == (0.0, 1.0)


def test_digits_are_scikit_learns_read_without_importing_it():
    # The launch's driver loads them while Ray starts: scikit-learn's import is not paid there.
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    data, bundled = datasets.load("digits"), load_digits()
    assert np.array_equal(data.x[..., 0], bundled.images.astype(np.float32) / 16.0)
    assert np.array_equal(data.y, bundled.target)
    probe = ("import sys; from sweeper import datasets; datasets.load('digits'); "
             "print(sorted(m for m in ('sklearn', 'scipy') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stderr[-2000:]


def test_digits_come_from_scikit_learn_itself_where_its_file_is_not_found(monkeypatch):
    import importlib.util

    from sweeper.datasets import images

    expected = images._bundled_digits()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert np.array_equal(images._bundled_digits(), expected)


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


def test_plain_split_is_still_sklearns_stratified_kfold():
    # Datasets without groups keep exactly the folds earlier versions made for a seed.
    from sklearn.model_selection import StratifiedKFold

    y = datasets.load("digits").y
    folds = list(StratifiedKFold(5, shuffle=True, random_state=3).split(np.zeros(len(y)), y))
    for fold, (train, test) in enumerate(folds):
        for split in (datasets.fold_split(y, 5, fold, 3),
                      datasets.fold_split(y, 5, fold, 3, groups=None)):
            np.testing.assert_array_equal(split[0], train)
            np.testing.assert_array_equal(split[1], test)


def test_grouped_split_needs_a_group_per_fold():
    y, groups = np.arange(30) % 3, np.arange(30) % 4
    assert len(datasets.fold_split(y, 4, 0, 0, groups)[1])  # four groups: four folds
    with pytest.raises(UserError, match="k=5 folds need at least 5 groups.*there are 4$"):
        datasets.fold_split(y, 5, 0, 0, groups)
    with pytest.raises(ValueError, match="29 groups for 30 samples"):
        datasets.fold_split(y, 3, 0, 0, groups[1:])


def test_fold_out_of_range():
    with pytest.raises(ValueError, match="fold 3 out of range"):
        datasets.fold_split(np.arange(30) % 3, 3, 3, 0)


def test_attack_subset_is_seeded_and_bounded():
    test = np.arange(100, 160)
    first = datasets.attack_subset(test, 20, seed=1)
    assert len(first) == 20 and set(first) <= set(test)
    np.testing.assert_array_equal(first, datasets.attack_subset(test, 20, seed=1))
    assert len(datasets.attack_subset(test, 500, seed=1)) == 60


# --- real on-disk formats (small files written by tests/data_formats.py) ---------------

BT601 = np.array([0.299, 0.587, 0.114])


@pytest.fixture(autouse=True)
def _no_real_downloads(monkeypatch):
    # A test must never reach the internet: point every source at a dead local port.
    for name in datasets.URLS:
        monkeypatch.setitem(datasets.URLS, name, "http://127.0.0.1:9/" + name)


def test_cifar10_keeps_file_order_labels_and_pixel_layout(tmp_path):
    images, labels = write_cifar10(tmp_path, per_batch=40)
    data = datasets.load("cifar10", tmp_path)
    assert data.x.shape == (240, 32, 32, 3) and data.x.dtype == np.float32
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0 and data.clip_values == (0.0, 1.0)
    assert data.class_names == tuple(name.decode() for name in CIFAR10_NAMES)
    np.testing.assert_array_equal(data.y, labels)  # data_batch_1..5, then test_batch
    assert data.y.dtype == np.int64
    np.testing.assert_array_equal(data.x[0][RED_PIXEL], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(data.x[0][BLUE_PIXEL], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(data.x, images / 255.0, atol=1e-7)  # every pixel, every image


def test_cifar10_label_names_come_from_the_meta_file(tmp_path):
    names = tuple(f"class{i}".encode() for i in range(9, -1, -1))
    write_cifar10(tmp_path, per_batch=10, names=names)
    assert datasets.load("cifar10", tmp_path).class_names == tuple(n.decode() for n in names)


def test_cifar10_grayscale_is_bt601_luma(tmp_path):
    images, _ = write_cifar10(tmp_path, per_batch=20)
    gray = datasets.load("cifar10", tmp_path, grayscale=True)
    assert gray.x.shape == (120, 32, 32, 1) and gray.x.dtype == np.float32
    np.testing.assert_allclose(gray.x[..., 0], images @ BT601 / 255.0, atol=1e-6)
    assert gray.x[0][RED_PIXEL][0] == pytest.approx(0.299, abs=1e-6)
    assert gray.x[0][BLUE_PIXEL][0] == pytest.approx(0.114, abs=1e-6)
    assert 0.0 <= gray.x.min() and gray.x.max() <= 1.0


def test_svhn_pools_train_and_test_and_maps_10_to_0(tmp_path):
    images, raw = write_svhn(tmp_path, train=60, test=40)
    data = datasets.load("svhn", tmp_path)
    assert data.x.shape == (100, 32, 32, 3) and data.x.dtype == np.float32
    assert data.class_names == tuple(str(d) for d in range(10))
    np.testing.assert_array_equal(data.y, np.where(raw == 10, 0, raw))
    assert data.y[0] == 0 and data.y[1] == 1 and data.y.max() == 9
    np.testing.assert_array_equal(data.x[0][RED_PIXEL], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(data.x, images / 255.0, atol=1e-7)
    gray = datasets.load("svhn", tmp_path, grayscale=True)
    assert gray.x.shape == (100, 32, 32, 1)
    np.testing.assert_allclose(gray.x[..., 0], images @ BT601 / 255.0, atol=1e-6)


def test_images_have_no_groups_and_say_how_they_were_scaled(tmp_path):
    write_cifar10(tmp_path, per_batch=4)
    write_svhn(tmp_path, train=5, test=5)
    loaded = {("digits", False): datasets.load("digits")}
    for name in ("cifar10", "svhn"):
        for gray in (False, True):
            loaded[name, gray] = datasets.load(name, tmp_path, grayscale=gray)
    for (name, gray), data in loaded.items():
        assert data.groups is None and data.grouping == "none", name
        assert data.clip_values == (0.0, 1.0)
        expected = "digits/16" if name == "digits" else \
            "pixels/255, BT.601 luma" if gray else "pixels/255"
        assert data.scaling == expected
        # Already in [0, 1]: a training fold sees them as loaded, the very same object.
        assert datasets.prepare_fold(data, np.arange(3)) is data


def test_shape_without_loading_matches_the_loaders(tmp_path, gsc_data):
    write_cifar10(tmp_path, per_batch=4)
    write_svhn(tmp_path, train=5, test=5)
    loaded = {("digits", ()): datasets.load("digits"),
              **{("gsc", (("labels", labels),)): data for labels, data in gsc_data.items()}}
    for name in ("cifar10", "svhn"):
        for gray in (False, True):
            loaded[name, (("grayscale", gray),)] = datasets.load(name, tmp_path, grayscale=gray)
    assert len(loaded) == 7
    for (name, options), data in loaded.items():
        assert datasets.shape(name, options) == (data.input_shape, data.nb_classes), name
        assert datasets.shape(name, dict(options)) == datasets.shape(name, options)
    assert datasets.shape("cifar10") == ((32, 32, 3), 10)  # defaults fill what is not given
    assert datasets.shape("gsc") == datasets.shape("gsc", {"labels": "mlperf"}) == ((49, 10, 1), 12)
    prepared = datasets.prepare_fold(gsc_data["paper"], np.arange(40))
    assert datasets.shape("gsc") == (prepared.input_shape, prepared.nb_classes)


def test_shape_checks_options_as_load_does(monkeypatch):
    with pytest.raises(UserError, match="dataset 'cifar10': unknown option 'colour'"):
        datasets.shape("cifar10", {"colour": True})
    with pytest.raises(UserError, match="'grayscale' must be true or false, not 'yes'"):
        datasets.shape("svhn", {"grayscale": "yes"})
    with pytest.raises(UserError, match="dataset 'gsc': option 'labels' must be one of"):
        datasets.shape("gsc", {"labels": "all"})
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        datasets.shape("mnist")
    registry = Registry("dataset")  # a plug-in that declares no shape
    registry.add("mine", datasets.DatasetSpec("mine", lambda data_dir: None))
    monkeypatch.setattr(datasets, "DATASETS", registry)
    with pytest.raises(UserError, match="dataset 'mine' does not declare its shape"):
        datasets.shape("mine")


def test_prepare_fold_runs_the_registered_preparation(monkeypatch):
    registry = Registry("dataset")
    calls = []
    prepare = lambda data, train: calls.append(train.tolist()) or data  # noqa: E731
    registry.add("mine", datasets.DatasetSpec("mine", lambda data_dir: None, prepare=prepare))
    monkeypatch.setattr(datasets, "DATASETS", registry)
    data = datasets.Dataset("mine", np.zeros((4, 2, 1), np.float32), np.arange(4), ("a",) * 4)
    assert datasets.prepare_fold(data, [0, 2]) is data and calls == [[0, 2]]


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown option 'colour'"):
        datasets.load("cifar10", tmp_path, colour=True)
    write_cifar10(tmp_path, per_batch=2)
    with pytest.raises(UserError, match="'grayscale' must be true or false"):
        datasets.load("cifar10", tmp_path, grayscale="yes")
    with pytest.raises(UserError, match="'labels' must be one of paper, mlperf"):
        datasets.load("gsc", tmp_path, labels="all")


def test_every_dataset_registers_its_options_with_defaults():
    options = {name: dict(datasets.DATASETS.get(name).options) for name in datasets.DATASETS}
    assert options == {"digits": {}, "cifar10": {"grayscale": False}, "svhn": {"grayscale": False},
                       "gsc": {"labels": "paper"}}


# --- Google Speech Commands -----------------------------------------------------------

@pytest.fixture(scope="module")
def gsc_dir(tmp_path_factory):
    # Five speakers say every word in turn, one of them twice per word, as in the real set.
    directory = tmp_path_factory.mktemp("gsc")
    return directory, write_gsc(directory, clips_per_word=6, speakers=5)


@pytest.fixture(scope="module")
def gsc_data(gsc_dir):
    directory, _ = gsc_dir
    return {labels: datasets.load("gsc", directory, labels=labels)
            for labels in ("paper", "mlperf")}


def _reference_mfcc(path) -> np.ndarray:
    """The MLPerf Tiny KWS front end rewritten with numpy/scipy, for one WAV file."""
    import tensorflow as tf
    from scipy.fft import dct
    from scipy.signal import get_window

    with wave.open(str(path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), "<i2").astype(np.float64)
    pcm = pcm / np.abs(pcm).max()  # MLPerf divides by max(x); sweeper by max|x| (no NaN)
    audio = np.zeros(16000)
    audio[:min(16000, len(pcm))] = pcm[:16000]
    frames = np.stack([audio[320 * k:320 * k + 480] for k in range(49)]) * get_window("hann", 480)
    spectrum = np.abs(np.fft.rfft(frames, n=512))
    mel = tf.signal.linear_to_mel_weight_matrix(40, 257, 16000, 20.0, 4000.0).numpy()
    log_mel = np.log(spectrum @ mel + 1e-6)
    return dct(log_mel, type=2, axis=-1)[:, :10] / np.sqrt(2 * 40)


def _class_means(data):
    # The mean MFCCs over frames 0..28, which every clip (0.6 s or longer) fills with sound.
    flat = data.x[:, :29, :, 0].mean(axis=1)
    return flat, np.stack([flat[data.y == c].mean(axis=0) for c in range(data.nb_classes)])


def test_gsc_paper_labels_give_mlperf_mfccs(gsc_dir):
    directory, clips = gsc_dir
    data = datasets.load("gsc", directory)
    assert data.class_names == GSC_PAPER
    assert data.x.shape == (72, 49, 10, 1) and data.x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(data.y), [6] * 12)
    assert data.clip_values == (float(data.x.min()), float(data.x.max()))
    assert data.clip_values[0] < -1 and data.clip_values[1] > 1  # MFCCs, not [0, 1]
    # Clips load word by word in file-name order: compare two with an independent rewrite.
    for word, position in (("yes", 0), ("nine", 1)):  # a 1 s clip and a 1.25 s one (trimmed)
        path = sorted(c.path for c in clips if c.word == word)[position]
        index = np.flatnonzero(data.y == GSC_PAPER.index(word))[position]
        np.testing.assert_allclose(data.x[index, :, :, 0], _reference_mfcc(path), atol=2e-3)


def test_gsc_short_clips_are_zero_padded_and_words_differ(gsc_dir):
    directory, clips = gsc_dir
    data = datasets.load("gsc", directory)
    # A 0.6 s clip ends after frame 29: later frames see only padding, a flat spectrum
    # whose MFCCs are all zero but the first.
    padded = np.all(np.abs(data.x[:, 30:, 1:, 0]) < 1e-3, axis=(1, 2))
    short = sum(c.samples < 16000 for c in clips if c.word in GSC_PAPER)
    assert padded.sum() == short == 24
    # Each word is a tone of its own pitch: the nearest class mean recovers every label.
    flat, means = _class_means(data)
    nearest = np.argmin(((flat[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, data.y)
    within = max(np.linalg.norm(flat[data.y == c] - means[c], axis=1).max() for c in range(12))
    between = np.linalg.norm(means[:, None] - means[None], axis=-1)[~np.eye(12, dtype=bool)]
    assert between.min() > 3 * within  # clearly apart, not just barely


def test_gsc_mlperf_labels_add_sized_silence_and_unknown(gsc_dir):
    directory, clips = gsc_dir
    data = datasets.load("gsc", directory, labels="mlperf")
    assert data.class_names == GSC_MLPERF + ("silence", "unknown")
    counts = np.bincount(data.y, minlength=12)
    np.testing.assert_array_equal(counts, [6] * 12)  # silence/unknown: an average word class
    flat, means = _class_means(data)
    words = means[:10]
    spread = max(np.linalg.norm(flat[data.y == c] - means[c], axis=1).max() for c in range(10))
    # Unknown clips are tones of other words and silence is noise: far from every word.
    for label in (10, 11):
        distance = np.linalg.norm(flat[data.y == label][:, None] - words[None], axis=-1)
        assert distance.min() > spread
    assert len(np.unique(flat[data.y == 11], axis=0)) == 6  # six different clips
    # Silence segments are whole seconds of noise: no zero-padded frames.
    assert not np.any(np.all(np.abs(data.x[data.y == 10][:, 30:, 1:, 0]) < 1e-3, axis=(1, 2)))
    again = datasets.load("gsc", directory, labels="mlperf")
    np.testing.assert_array_equal(again.x, data.x)  # silence/unknown drawn reproducibly


# --- Speech Commands: speaker groups -------------------------------------------------

def _straddling(groups: np.ndarray, train: np.ndarray, test: np.ndarray) -> set[int]:
    """The groups with samples on both sides of a split."""
    return set(groups[train].tolist()) & set(groups[test].tolist())


def test_gsc_groups_are_speakers_then_noise_files(gsc_dir, gsc_data):
    _, clips = gsc_dir
    paper, mlperf = gsc_data["paper"], gsc_data["mlperf"]
    assert paper.grouping == "speaker"
    assert mlperf.grouping == "speaker (silence: background-noise file)"
    # Clips load word by word in file-name order: the fixture's speakers, in that order.
    speakers = [c.speaker for word in GSC_PAPER
                for c in sorted((c for c in clips if c.word == word), key=lambda c: c.path)]
    assert paper.groups.dtype == np.int64 and len(paper.groups) == len(paper.y) == 72
    ids = dict(zip(speakers, paper.groups.tolist()))
    assert len(ids) == len(set(ids.values())) == 5  # one id per speaker and back
    assert [ids[speaker] for speaker in speakers] == paper.groups.tolist()
    # mlperf: silence gets the two noise files' groups, apart from the five speakers (of
    # the words and of the unknown clips, which are other words by the same speakers).
    silence = set(mlperf.groups[mlperf.y == 10].tolist())
    spoken = set(mlperf.groups[mlperf.y != 10].tolist())
    assert len(silence) == 2 and len(spoken) == 5 and not silence & spoken
    assert set(mlperf.groups[mlperf.y == 11].tolist()) <= set(mlperf.groups[mlperf.y < 10].tolist())


@pytest.mark.parametrize("labels", ["paper", "mlperf"])
@pytest.mark.parametrize("k, seed", [(3, 0), (3, 11), (5, 4)])
def test_gsc_folds_keep_each_speaker_and_noise_file_on_one_side(gsc_data, labels, k, seed):
    data = gsc_data[labels]
    tests = []
    for fold in range(k):
        train, test = datasets.fold_split(data.y, k, fold, seed, data.groups)
        assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(data.y)))
        assert not _straddling(data.groups, train, test)
        silence = data.groups[data.y == 10] if labels == "mlperf" else []
        for group in set(silence):  # each recording's segments all train, or all test
            assert len({index in set(test) for index in np.flatnonzero(data.groups == group)}) == 1
        tests.append(test)
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(data.y)))  # a partition
    again = datasets.fold_split(data.y, k, 1, seed, data.groups)[1]
    np.testing.assert_array_equal(again, tests[1])


@pytest.mark.parametrize("labels", ["paper", "mlperf"])
def test_plain_stratified_split_leaks_speakers_on_the_same_data(gsc_data, labels):
    # What the grouped split prevents: without groups, every fold of this data tests on
    # speakers (and in mlperf noise recordings) that it also trains on.
    data = gsc_data[labels]
    for fold in range(3):
        train, test = datasets.fold_split(data.y, 3, fold, 0)
        assert _straddling(data.groups, train, test)
        if labels == "mlperf":
            assert _straddling(data.groups, train[data.y[train] == 10], test[data.y[test] == 10])


def test_gsc_needs_more_speakers_than_folds(gsc_data):
    data = gsc_data["paper"]  # five speakers
    with pytest.raises(UserError, match="k=6 folds need at least 6 groups .* there are 5"):
        datasets.fold_split(data.y, 6, 0, 0, data.groups)


# --- Speech Commands: MFCCs scaled on the training fold --------------------------------

def _coefficient_range(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per MFCC coefficient (axis -2): min and max over samples, frames and channel."""
    return x.min(axis=(0, 1, 3)), x.max(axis=(0, 1, 3))


def test_gsc_prepare_fold_scales_each_coefficient_to_the_training_range(gsc_data):
    raw = gsc_data["mlperf"]
    assert raw.scaling == "raw MFCC" and raw.clip_values[0] < -1  # as loaded
    train, test = datasets.fold_split(raw.y, 3, 0, 0, raw.groups)
    data = datasets.prepare_fold(raw, train)
    assert data.clip_values == (0.0, 1.0) and data.x.dtype == np.float32
    assert data.scaling == "per-MFCC-coefficient min-max of the training fold, clipped to [0, 1]"
    low, high = _coefficient_range(data.x[train])
    np.testing.assert_array_equal(low, np.zeros(10))  # exactly: eps is a share of [0, 1]
    np.testing.assert_array_equal(high, np.ones(10))
    assert data.x.min() >= 0.0 and data.x.max() <= 1.0  # test samples clipped in
    # Per coefficient, an affine map of the raw values: (raw - min) / (max - min).
    raw_low, raw_high = _coefficient_range(raw.x[train])
    expected = (raw.x[train] - raw_low[:, None]) / (raw_high - raw_low)[:, None]
    np.testing.assert_allclose(data.x[train], expected, atol=1e-6)
    assert np.all((raw_high - raw_low)[0] > 10 * (raw_high - raw_low)[9])  # why per coefficient
    for field in ("y", "groups"):
        np.testing.assert_array_equal(getattr(data, field), getattr(raw, field))
    assert (data.name, data.class_names, data.grouping) == (raw.name, raw.class_names, raw.grouping)
    assert raw.scaling == "raw MFCC" and raw.clip_values[0] < -1  # the loaded copy untouched


def test_gsc_scaling_ignores_test_samples_and_clips_them(gsc_data):
    raw = gsc_data["paper"]
    train, test = datasets.fold_split(raw.y, 3, 1, 5, raw.groups)
    wild = raw.x.copy()
    wild[test[0]] = 1e4  # far above and below anything in the training fold
    wild[test[1]] = -1e4
    changed = datasets.prepare_fold(replace(raw, x=wild), train)
    plain = datasets.prepare_fold(raw, train)
    np.testing.assert_array_equal(changed.x[train], plain.x[train])  # statistics: train only
    np.testing.assert_array_equal(changed.x[test[2:]], plain.x[test[2:]])
    assert np.all(changed.x[test[0]] == 1.0) and np.all(changed.x[test[1]] == 0.0)
    # Other test samples outside the training range are clipped to it, not scaled past it.
    outside = (raw.x[test] < _coefficient_range(raw.x[train])[0][:, None]).any()
    assert 0.0 <= plain.x[test].min() and plain.x[test].max() <= 1.0 and outside


def test_gsc_scaling_maps_a_constant_coefficient_to_zero():
    x = np.random.default_rng(0).normal(size=(6, 49, 10, 1)).astype(np.float32)
    x[:, :, 3] = 7.0  # constant over the training fold
    x[5, :, 3] = 9.0  # a test sample above it
    data = datasets.Dataset("gsc", x, np.arange(6) % 2, ("a", "b"), (-5.0, 9.0))
    scaled = datasets.prepare_fold(data, np.arange(5)).x
    assert np.all(np.isfinite(scaled)) and np.all(scaled[:5, :, 3] == 0.0)
    assert np.all(scaled[5, :, 3] == 1.0)  # clipped


# --- data directory and missing data ----------------------------------------------------

def test_resolve_data_dir_prefers_grid_then_env_then_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.resolve_data_dir(str(tmp_path / "grid")) == tmp_path / "grid"
    assert datasets.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("SWEEPER_DATA_DIR")
    assert datasets.resolve_data_dir(None) == tmp_path / "xdg" / "sweeper" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.resolve_data_dir(None) == tmp_path / "home" / ".cache" / "sweeper" / "data"


def test_load_reads_from_the_resolved_data_dir(tmp_path, monkeypatch):
    write_svhn(tmp_path / "env", train=5, test=5)
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path / "env"))
    assert len(datasets.load("svhn").y) == 10


MISSING = {
    "cifar10": ("cifar-10-batches-py", "data_batch_1..5, test_batch"),
    "svhn": ("svhn", "train_32x32.mat, test_32x32.mat"),
    "gsc": ("speech_commands_v0.02", "yes, no, zero"),
}


def _one_line_naming_dataset_files_and_folder(error, name: str, data_dir) -> str:
    message = str(error.value)
    folder, expected = MISSING[name]
    assert "\n" not in message and f"dataset {name!r}" in message
    assert str(data_dir / folder) in message and expected in message
    return message


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_data_offline_says_what_to_put_where(name, tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEPER_OFFLINE", "1")
    with pytest.raises(NotAvailableError) as error:
        datasets.load(name, tmp_path)
    message = _one_line_naming_dataset_files_and_folder(error, name, tmp_path)
    assert "downloads are off (SWEEPER_OFFLINE=1)" in message
    assert not any(tmp_path.iterdir())  # offline: nothing created


@pytest.mark.parametrize("name", sorted(MISSING))
def test_missing_data_with_failing_download_leaves_no_files(name, tmp_path, monkeypatch):
    monkeypatch.delenv("SWEEPER_OFFLINE", raising=False)
    with pytest.raises(NotAvailableError) as error:
        datasets.load(name, tmp_path)
    message = _one_line_naming_dataset_files_and_folder(error, name, tmp_path)
    assert "download from http://127.0.0.1:9/" in message and "no network?" in message
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]


# --- downloads from a local server ------------------------------------------------------

@pytest.fixture
def server(tmp_path):
    """A local HTTP server of tmp_path/'served'; ``cut`` sends half of each file only."""
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    settings = {"cut": False}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = (served / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if settings["cut"] else body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/", settings
    httpd.shutdown()
    httpd.server_close()


def test_download_unpacks_the_archive_into_place(tmp_path, server, monkeypatch):
    served, url, _ = server
    monkeypatch.delenv("SWEEPER_OFFLINE", raising=False)
    _, labels = write_cifar10(tmp_path / "source", per_batch=5)
    with tarfile.open(served / "cifar.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setitem(datasets.URLS, "cifar10", url + "cifar.tar.gz")
    data = datasets.load("cifar10", tmp_path / "data")
    np.testing.assert_array_equal(data.y, labels)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["cifar-10-batches-py"]


def test_download_of_single_files_and_cut_transfers(tmp_path, server, monkeypatch):
    served, url, settings = server
    monkeypatch.delenv("SWEEPER_OFFLINE", raising=False)
    write_svhn(tmp_path / "source", train=5, test=4)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        (served / name).write_bytes((tmp_path / "source" / "svhn" / name).read_bytes())
    monkeypatch.setitem(datasets.URLS, "svhn", url)
    settings["cut"] = True  # a cut .mat file must not be kept as if it were complete
    with pytest.raises(NotAvailableError, match="incomplete download"):
        datasets.load("svhn", tmp_path / "data")
    assert not [path for path in (tmp_path / "data").rglob("*") if path.is_file()]
    settings["cut"] = False
    assert len(datasets.load("svhn", tmp_path / "data").y) == 9


def test_load_all_loads_each_distinct_dataset_once(monkeypatch):
    calls = []
    real = datasets.load
    monkeypatch.setattr(datasets, "load", lambda name, data_dir=None, **o: calls.append((name, o)) or real(name, data_dir, **o))
    loaded = datasets.load_all(None, [("digits", ()), ("digits", ()), ("digits", ())])
    assert list(loaded) == [("digits", ())] and calls == [("digits", {})]

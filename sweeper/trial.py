"""The trial: train one model (or load it from the cache), then attack it at every cell
of its training job, producing one result row per cell.

Plain Python and TensorFlow, no Ray: the sweep runs this inside Ray Tune trials and
``bench/overhead.py`` calls it directly. Rows are handed to ``report`` one at a time
as they are computed.
"""

from __future__ import annotations

import json
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

from sweeper import datasets
from sweeper.expand import CLEAN, Cell, TrainingJob
from sweeper.grid import Train
from sweeper.store import library_versions


@dataclass(frozen=True)
class JobContext:
    """What a trial needs besides the job: where to cache models and which MCUs to check."""

    grid_name: str
    mcus: tuple[str, ...]
    model_cache: str | None = None  # folder (path or URI) for trained weights; None: no cache
    launch_id: str = ""  # the launch whose provenance the rows point to


@dataclass(frozen=True)
class JobOutcome:
    trained: bool  # False when the model came from the cache
    rows: int


def run_job(job: TrainingJob, cells: Sequence[Cell], data: datasets.Dataset,
            context: JobContext, report: Callable[[dict[str, Any]], None]) -> JobOutcome:
    import tensorflow as tf

    from sweeper import footprint

    tf.keras.backend.clear_session()  # reused Ray actors would otherwise accumulate graphs
    train_idx, test_idx = datasets.fold_split(data.y, job.k, job.fold, job.seed)
    model, trained, train_s = _trained_model(job, data, train_idx, context.model_cache)
    fp = footprint.measure(model)
    base = _job_columns(job, context, data, model, test_idx, fp, trained, train_s)
    subset = datasets.attack_subset(test_idx, cells[0].samples if cells else 0, job.seed)
    x, y = data.x[subset], data.y[subset]
    clean_ok = _predict(model, x) == y  # the same model and samples for every cell
    classifier = _classifier(model, data) if any(c.attack != CLEAN for c in cells) else None
    for cell in cells:
        report({**base, **_attack_columns(cell, model, classifier, x, y, clean_ok, _job_seed(job))})
    return JobOutcome(trained=trained, rows=len(cells))


# ---------------------------------------------------------------- training

def _job_seed(job: TrainingJob) -> int:
    return int(job.job_id[:8], 16) % (2**31 - 1)


def _trained_model(job: TrainingJob, data, train_idx, cache: str | None):
    from sweeper import models
    from sweeper.quantizers import QUANTIZERS

    import tensorflow as tf

    tf.keras.utils.set_random_seed(_job_seed(job))
    model = models.build(job.model, data.input_shape, data.nb_classes, QUANTIZERS.get(job.quantizer))
    if cache and _load_cached(model, cache, job.job_id):
        return model, False, 0.0
    started = time.perf_counter()
    train(model, Train(**dict(job.train)), data.x[train_idx], data.y[train_idx], data.nb_classes)
    train_s = time.perf_counter() - started
    if cache:
        _save_cached(model, cache, job.job_id)
    return model, True, train_s


def train(model, settings: Train, x: np.ndarray, y: np.ndarray, nb_classes: int) -> None:
    """Compile and fit with the grid's settings: categorical cross-entropy on logits."""
    import tensorflow as tf

    steps = settings.epochs * int(np.ceil(len(x) / settings.batch_size))
    rate: Any = settings.learning_rate
    if settings.schedule == "cosine":
        rate = tf.keras.optimizers.schedules.CosineDecay(
            settings.learning_rate, decay_steps=steps,
            alpha=settings.min_learning_rate / settings.learning_rate)
    optimizers = {"adam": tf.keras.optimizers.Adam, "adamax": tf.keras.optimizers.Adamax,
                  "sgd": tf.keras.optimizers.SGD}
    model.compile(optimizer=optimizers[settings.optimizer](learning_rate=rate),
                  loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
    model.fit(x, tf.keras.utils.to_categorical(y, nb_classes), epochs=settings.epochs,
              batch_size=settings.batch_size, shuffle=True, verbose=0)


def _cache_file(cache: str, job_id: str):
    from sweeper.store import locate

    location = locate(cache)
    return location, f"{location.path}/{job_id}.weights.h5"


def _load_cached(model, cache: str, job_id: str) -> bool:
    import tempfile

    import pyarrow.fs as pafs

    location, remote = _cache_file(cache, job_id)
    if location.fs.get_file_info(remote).type != pafs.FileType.File:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/{job_id}.weights.h5"
        pafs.copy_files(remote, local, source_filesystem=location.fs,
                        destination_filesystem=pafs.LocalFileSystem())
        model.load_weights(local)
    return True


def _save_cached(model, cache: str, job_id: str) -> None:
    import tempfile

    import pyarrow.fs as pafs

    location, remote = _cache_file(cache, job_id)
    location.fs.create_dir(location.path, recursive=True)
    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/{job_id}.weights.h5"
        model.save_weights(local)
        # Copy then rename, so a reader never loads a half-written cache file.
        pafs.copy_files(local, remote + ".tmp", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=location.fs)
    location.fs.move(remote + ".tmp", remote)


# ---------------------------------------------------------------- rows

def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)


def _job_columns(job, context, data, model, test_idx, fp, trained, train_s) -> dict[str, Any]:
    from sweeper import footprint

    return {
        "job_id": job.job_id, "grid": context.grid_name, "dataset": job.dataset,
        "dataset_options": json.dumps(dict(job.dataset_options), sort_keys=True),
        "model": job.model, "quantizer": job.quantizer, "fold": job.fold, "k": job.k,
        "seed": job.seed, "train": json.dumps(dict(job.train), sort_keys=True),
        "test_acc": float(np.mean(_predict(model, data.x[test_idx]) == data.y[test_idx])),
        "params": fp.params, "flash_kb": fp.flash_kb, "ram_kb": fp.ram_kb,
        "mcu_targets": list(context.mcus), "fits_mcus": footprint.fitting(fp, list(context.mcus)),
        "model_cached": not trained, "train_s": train_s, "host": socket.gethostname(), "node": "",
        "n_classes": data.nb_classes, "n_features": int(np.prod(data.input_shape)),
        "launch_id": context.launch_id, **library_versions(),
    }


def _attack_columns(cell: Cell, model, classifier, x: np.ndarray, y: np.ndarray,
                    clean_ok: np.ndarray, seed: int) -> dict[str, Any]:
    started = time.perf_counter()
    x_adv = _adversarial(cell, classifier, x, y, clean_ok, seed)
    attack_s = time.perf_counter() - started
    adv_ok = clean_ok if cell.attack == CLEAN else _predict(model, x_adv) == y
    broken = np.sum(clean_ok & ~adv_ok)
    return {
        "cell_id": cell.cell_id, "attack": cell.attack, "attack_label": cell.attack_label,
        "norm": cell.norm, "eps": cell.eps, "eps_label": cell.eps_label,
        "attack_params": json.dumps(cell.art_params(), sort_keys=True, default=str),
        "n_samples": int(len(x)), "clean_acc": float(clean_ok.mean()),
        "adv_acc": float(adv_ok.mean()),
        "attack_success_rate": float(broken / clean_ok.sum()) if clean_ok.any() else float("nan"),
        "attack_s": attack_s, "finished_at": datetime.now(timezone.utc).isoformat(),
    }


def _adversarial(cell: Cell, classifier, x, y, clean_ok: np.ndarray, seed: int) -> np.ndarray:
    """Adversarial versions of the samples. Only the samples the model gets right are
    attacked: a misclassified one is already adversarial, and the query-hungry attacks
    (ZOO, Boundary, Square) would spend most of their budget on it for nothing."""
    from sweeper import attacks

    if cell.attack == CLEAN or not clean_ok.any():
        return x
    x_adv = x.copy()
    x_adv[clean_ok] = attacks.run(cell.attack, classifier, x[clean_ok], y[clean_ok], cell.eps,
                                  cell.norm, dict(cell.params), seed)
    return x_adv


def _classifier(model, data):
    from sweeper import attacks

    return attacks.make_classifier(model, data.nb_classes, data.input_shape, data.clip_values)

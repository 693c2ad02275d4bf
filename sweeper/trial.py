"""The trial: train one model (or load it from the cache), then attack it at every cell
of its training job, producing one result row per cell.

Plain Python and TensorFlow, no Ray: the sweep runs this inside Ray Tune trials and
``bench/overhead.py`` calls it directly. Rows are handed to ``report`` one at a time
as they are computed.
"""

from __future__ import annotations

import json
import math
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

import numpy as np

from sweeper import datasets, store
from sweeper.attacks import BUDGET_RTOL
from sweeper.expand import CLEAN, Cell, TrainingJob
from sweeper.grid import Train


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

    tf.keras.backend.clear_session()  # reused Ray actors would otherwise accumulate graphs
    train_idx, test_idx = datasets.fold_split(data.y, job.k, job.fold, job.seed, groups=data.groups)
    data = datasets.prepare_fold(data, train_idx)  # e.g. MFCCs scaled with training-fold statistics
    model, trained, train_s = _trained_model(job, data, train_idx, context.model_cache)
    deployed = _deployed(job, model, data.x[train_idx], context.model_cache)
    base = {**_job_columns(job, context, data, model, test_idx, trained, train_s),
            **_footprint_columns(model, deployed)}
    subset = datasets.attack_subset(test_idx, cells[0].samples if cells else 0, job.seed)
    x, y = data.x[subset], data.y[subset]
    samples = _Samples(subset, x, y, _predict(model, x), _deployed_predict(deployed, x))
    classifier = _classifier(model, data) if any(c.attack != CLEAN for c in cells) else None
    for group in _attack_groups(cells):
        for cell, columns in _evaluate(group, model, deployed, classifier, samples, _job_seed(job)):
            report({**base, **_cell_columns(cell), **columns})
    return JobOutcome(trained=trained, rows=len(cells))


@dataclass(frozen=True)
class _Samples:
    """The attacked test samples of a job, and the model's clean predictions of them."""

    index: np.ndarray  # positions in the pooled dataset
    x: np.ndarray
    y: np.ndarray
    clean_pred: np.ndarray
    deployed_clean_pred: np.ndarray | None  # the int8 .tflite's (None: not deployable)

    @property
    def clean_ok(self) -> np.ndarray:
        return self.clean_pred == self.y


# ---------------------------------------------------------------- training

def _job_seed(job: TrainingJob) -> int:
    return int(job.job_id[:8], 16) % (2**31 - 1)


def _trained_model(job: TrainingJob, data, train_idx, cache: str | None):
    from sweeper import models
    from sweeper.quantizers import QUANTIZERS

    import tensorflow as tf

    tf.keras.utils.set_random_seed(_job_seed(job))
    model = models.build(job.model, data.input_shape, data.nb_classes, QUANTIZERS.get(job.quantizer))
    if job.model_fingerprint and models.model_fingerprint(model) != job.model_fingerprint:
        # The plan was made by code that builds another model (a node running another
        # checkout): its rows and cached weights would be mislabelled.
        raise RuntimeError(f"job {job.job_id}: this worker builds {job.model}/{job.quantizer} with "
                           f"fingerprint {models.model_fingerprint(model)}, the plan expected "
                           f"{job.model_fingerprint}; run the same sweeper code on every node")
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


def _load_cached(model, cache: str, job_id: str) -> bool:
    import tempfile

    data = store.get_bytes(store.locate(cache), f"{job_id}.weights.h5")
    if data is None:
        return False
    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/{job_id}.weights.h5"
        with open(local, "wb") as file:
            file.write(data)
        model.load_weights(local)
    return True


def _save_cached(model, cache: str, job_id: str) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        local = f"{tmp}/{job_id}.weights.h5"
        model.save_weights(local)
        with open(local, "rb") as file:
            store.put_bytes(store.locate(cache), f"{job_id}.weights.h5", file.read())


# ---------------------------------------------------------------- deployment

def _deployed(job: TrainingJob, model, x_train: np.ndarray, cache: str | None):
    """The model converted to a full-int8 .tflite and measured (deploy.Deployment), kept
    in the store beside the weights (``models/<job_id>.tflite``): a user can flash it."""
    from sweeper import deploy

    name = f"{job.job_id}.tflite"
    cached = store.get_bytes(store.locate(cache), name) if cache else None
    if cached is not None:
        return deploy.measure(cached)
    # A seeded draw from the training fold calibrates the int8 ranges.
    chosen = np.random.default_rng(_job_seed(job)).permutation(len(x_train))[:deploy.REPRESENTATIVE_SAMPLES]
    deployment = deploy.deploy(model, x_train[np.sort(chosen)])
    if cache and deployment.flatbuffer is not None:
        store.put_bytes(store.locate(cache), name, deployment.flatbuffer)
    return deployment


def _deployed_predict(deployment, x: np.ndarray) -> np.ndarray | None:
    from sweeper import deploy

    return None if deployment.flatbuffer is None else deploy.evaluate(deployment.flatbuffer, x).predictions


def _footprint_columns(model, deployment) -> dict[str, Any]:
    """The three footprints: deployed (what the MCU fit uses), measured, packed."""
    from sweeper import footprint

    kb = footprint.BITS_PER_KB
    measured = deployment.error is None
    if measured:
        flash = deployment.flatbuffer_bytes / 1024 + footprint.RUNTIME_FLASH_KB
        ram = deployment.arena_bytes / 1024 * (1 + footprint.ARENA_MARGIN)
    else:  # the converter refused: int8 estimates of the same quantities
        flash = footprint.int8_weight_bits(model) / kb + footprint.RUNTIME_FLASH_KB
        ram = footprint.peak_activation_bits(model, fused=True, bits=8) / kb * (1 + footprint.ARENA_MARGIN)
    return {
        "params": int(model.count_params()), "flash_kb": flash, "ram_kb": ram,
        "footprint_source": "measured" if measured else "estimate",
        "tflite_kb": deployment.flatbuffer_bytes / 1024 if measured else None,
        "arena_kb": deployment.arena_bytes / 1024 if measured else None,
        "flash_packed_kb": footprint.flash_kb(model),
        "ram_packed_kb": footprint.peak_activation_bits(model, fused=True) / kb,
        "deploy_error": deployment.error, "deploy_s": deployment.convert_s + deployment.arena_s,
    }


# ---------------------------------------------------------------- rows

def _predict(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)


def _job_columns(job, context, data, model, test_idx, trained, train_s) -> dict[str, Any]:
    from sweeper.expand import ID_VERSION

    return {
        "job_id": job.job_id, "config_id": job.config_id, "id_version": ID_VERSION,
        "grid": context.grid_name, "dataset": job.dataset,
        "dataset_options": json.dumps(dict(job.dataset_options), sort_keys=True),
        "model": job.model, "quantizer": job.quantizer, "model_fingerprint": job.model_fingerprint,
        "weights_sha256": weights_sha256(model), "fold": job.fold, "k": job.k,
        "seed": job.seed, "train": json.dumps(dict(job.train), sort_keys=True),
        "test_acc": float(np.mean(_predict(model, data.x[test_idx]) == data.y[test_idx])),
        "mcu_targets": list(context.mcus), "model_cached": not trained, "train_s": train_s,
        "host": socket.gethostname(), "node": "",
        "n_classes": data.nb_classes, "n_features": int(np.prod(data.input_shape)),
        "clip_min": float(data.clip_values[0]), "clip_max": float(data.clip_values[1]),
        "feature_scaling": data.scaling, "fold_grouping": data.grouping,
        "launch_id": context.launch_id, **store.library_versions(),
    }


def weights_sha256(model) -> str:
    """A hash of the trained weights (values, shapes and order): two rows of one job
    computed with different models can be told apart."""
    import hashlib

    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(str(weights.shape).encode())
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def _cell_columns(cell: Cell) -> dict[str, Any]:
    return {"cell_id": cell.cell_id, "attack": cell.attack, "attack_label": cell.attack_label,
            "norm": cell.norm, "eps": cell.eps, "eps_label": cell.eps_label,
            "attack_params": json.dumps(cell.art_params(), sort_keys=True, default=str),
            "finished_at": datetime.now(timezone.utc).isoformat()}


# ---------------------------------------------------------------- attacking

def _attack_groups(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells that share one attack run. A minimal-perturbation attack (C&W, Boundary,
    ZOO) has no budget: it runs once, unbounded, per (attack, norm, parameters), and
    every eps of it is derived from the perturbation norms it found (as Foolbox 3's
    minimization attacks do). Every other cell is its own group."""
    from sweeper.attacks import is_minimal

    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        minimal = cell.attack != CLEAN and is_minimal(cell.attack)
        key = (cell.attack, cell.norm, cell.params) if minimal else (cell.cell_id,)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _evaluate(group: list[Cell], model, deployed, classifier, samples: _Samples, seed: int):
    """(cell, columns) for each cell of one group: the accuracies and per-sample outcomes,
    of the QKeras model and of its deployed .tflite on the same adversarial examples."""
    from sweeper.attacks import is_minimal

    first = group[0]
    started = time.perf_counter()
    x_adv = _adversarial(first, classifier, samples, math.inf if first.attack != CLEAN
                         and is_minimal(first.attack) else first.eps, seed)
    adv_pred = samples.clean_pred if first.attack == CLEAN else _predict(model, x_adv)
    attack_s = time.perf_counter() - started  # shared by every eps of a minimal attack
    deployed_adv = samples.deployed_clean_pred if first.attack == CLEAN else _deployed_predict(deployed, x_adv)
    norms = _perturbation_norms(samples.x, x_adv)
    for cell in group:
        # Post-hoc budget: an example outside eps counts as a failed attack (clean input).
        within = norms[cell.norm] <= cell.eps * (1 + BUDGET_RTOL) if cell.norm in norms else \
            np.ones(len(samples.y), bool)
        pred = np.where(within, adv_pred, samples.clean_pred)
        used = {name: np.where(within, values, 0.0) for name, values in norms.items()}
        deployed_pred = None if deployed_adv is None else np.where(within, deployed_adv, samples.deployed_clean_pred)
        yield cell, {**_outcome_columns(samples, pred, used), **_deployed_columns(samples, deployed_pred),
                     "attack_s": attack_s}


def _adversarial(cell: Cell, classifier, samples: _Samples, eps: float, seed: int) -> np.ndarray:
    """Adversarial versions of the samples. Only the samples the model gets right are
    attacked: a misclassified one is already adversarial, and the query-hungry attacks
    (ZOO, Boundary, Square) would spend most of their budget on it for nothing."""
    from sweeper import attacks

    ok = samples.clean_ok
    if cell.attack == CLEAN or not ok.any():
        return samples.x
    x_adv = samples.x.copy()
    x_adv[ok] = attacks.run(cell.attack, classifier, samples.x[ok], samples.y[ok], eps, cell.norm,
                            dict(cell.params), seed)
    return x_adv


def _deployed_columns(samples: _Samples, deployed_pred: np.ndarray | None) -> dict[str, Any]:
    if deployed_pred is None:
        return {"deployed_clean_acc": None, "deployed_adv_acc": None, "deployed_adv_correct": None}
    ok = deployed_pred == samples.y
    return {"deployed_clean_acc": float(np.mean(samples.deployed_clean_pred == samples.y)),
            "deployed_adv_acc": float(ok.mean()), "deployed_adv_correct": ok.tolist()}


def _perturbation_norms(x: np.ndarray, x_adv: np.ndarray) -> dict[str, np.ndarray]:
    from sweeper.attacks import perturbation_norms

    return {norm: perturbation_norms(x, x_adv, norm) for norm in ("inf", "2", "1")}


def _outcome_columns(samples: _Samples, adv_pred: np.ndarray, norms: dict[str, np.ndarray]) -> dict[str, Any]:
    clean_ok, adv_ok = samples.clean_ok, adv_pred == samples.y
    broken = np.sum(clean_ok & ~adv_ok)
    return {
        "n_samples": int(len(samples.y)), "clean_acc": float(clean_ok.mean()),
        "adv_acc": float(adv_ok.mean()),
        "attack_success_rate": float(broken / clean_ok.sum()) if clean_ok.any() else float("nan"),
        "sample_index": samples.index.tolist(), "clean_correct": clean_ok.tolist(),
        "adv_correct": adv_ok.tolist(), "adv_pred": adv_pred.astype(int).tolist(),
        "pert_linf": norms["inf"].astype(np.float32).tolist(),
        "pert_l2": norms["2"].astype(np.float32).tolist(),
        "pert_l1": norms["1"].astype(np.float32).tolist(),
    }


def _classifier(model, data):
    from sweeper import attacks

    return attacks.make_classifier(model, data.nb_classes, data.input_shape, data.clip_values)

"""The trial: train one model (or load it from the cache), then attack it at every cell
of its training job, producing one result row per cell.

Plain Python and TensorFlow, no Ray: the sweep runs this inside Ray Tune trials and
``bench/overhead.py`` calls it directly. Rows are handed to ``report`` one at a time
as they are computed.

Training checkpoints its state (``TrainState``) every few epochs to the store and to
the caller's hooks (Tune's checkpoint API in a sweep), and a rerun of the job continues
from the latest one; a resumed training ends with the model an uninterrupted one makes.

Transfer attacks: a source cell (``Cell.keeps_arrays``) stores its adversarial examples,
the job's attacked samples with their indices and the source's outcomes, once, as
``<adversarial folder>/<cell_id>.npz``; a transfer cell loads its source cell's file,
checks that it holds this job's samples, and costs a forward pass of the target.

Deployed attacks: a cell with ``target`` "deployed" attacks the job's int8 .tflite through
the TFLite interpreter (``attacks.make_deployed_classifier``) and counts the build's
outcomes (``_evaluate_deployed``).

Bit widths: a dbwt job's cells with ``eval_bits`` run last, per width, with the same
weights quantized at that width (``_evaluate_at_width``).

Controls: a cell of an attack with controls (the patch) also classifies them, made on the
same samples with the same seed, so at the same places (``_control_predictions``), and its
row carries ``target_rate`` beside the controls' numbers (``_target_columns``). A transfer
cell's controls are its source's: placed with the source job's seed on the samples the
source attacked.
Jacobians: every row of a job carries the model's input-to-logit and per-block Jacobian
norms on the job's attacked samples (``sweeper.models.jacobian.measure``, the ``jacobian_*``
columns), projections drawn from the job's seed, so a cached model gives the same ones.
"""

from __future__ import annotations

import functools
import json
import math
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from sweeper import datasets, store
from sweeper.models import jacobian
from sweeper.attacks import BUDGET_RTOL
from sweeper.keys import DEPLOYED_TARGET, MODEL_TARGET, NONE, OUTCOME_COLUMNS
from sweeper.plan.entries import Train
from sweeper.plan.expand import Cell, TrainingJob


@dataclass(frozen=True)
class JobContext:
    """What a trial needs besides the job: where to cache models and which MCUs to check."""

    grid_name: str
    mcus: tuple[str, ...]
    model_cache: str | None = None  # folder (path or URI) for trained weights; None: no cache
    launch_id: str = ""  # the launch whose provenance the rows point to
    checkpoints: str | None = None  # folder (path or URI) for training checkpoints; None: none
    checkpoint_every: int | str = "auto"  # the grid's train.checkpoint_every
    adversarial: str | None = None  # folder (path or URI) of source cells' examples; None: none


@dataclass(frozen=True)
class JobOutcome:
    trained: bool  # False when the model came from the cache
    rows: int


def run_job(job: TrainingJob, cells: Sequence[Cell], data: datasets.Dataset,
            context: JobContext, report: Callable[[dict[str, Any]], None],
            hooks: CheckpointHooks | None = None) -> JobOutcome:
    """``hooks``: where else checkpoints go and come back from (Tune's API in a sweep)."""
    import tensorflow as tf

    tf.keras.backend.clear_session()  # reused Ray actors would otherwise accumulate graphs
    train_idx, test_idx = datasets.fold_split(data.y, job.k, job.fold, job.seed, groups=data.groups)
    data = datasets.prepare_fold(data, train_idx)  # e.g. MFCCs scaled with training-fold statistics
    checkpoints = Checkpoints(context.checkpoints, job.job_id, context.checkpoint_every, hooks)
    model, trained, train_s, resumed, defense_reg = _trained_model(job, data, train_idx, context.model_cache,
                                                                   checkpoints)
    deployed = _deployed(job, model, data.x[train_idx], context.model_cache)
    subset = datasets.attack_subset(test_idx, cells[0].samples if cells else 0, job.seed)
    x, y = data.x[subset], data.y[subset]
    samples = _Samples(subset, x, y, _predict(model, x), _deployed_predict(deployed, x))
    base = {**_job_columns(job, context, data, model, test_idx, trained, train_s),
            **_footprint_columns(model, deployed), "resumed_from_epoch": resumed,
            **_defense_columns(job, defense_reg), **jacobian.measure(model, x, _job_seed(job))}
    own = [cell for cell in cells if cell.eval_bits is None]
    classifier = _classifier(model, data) if any(c.attack != NONE and c.target == MODEL_TARGET
                                                 and (c.source is None or _has_controls(c)) for c in own) else None
    build_classifier = functools.cache(lambda: _deployed_classifier(deployed, data))  # built once, if needed
    keep = _keeper(context.adversarial, samples) if context.adversarial else None
    training_images = lambda: data.x[train_idx]  # noqa: E731  (copied only for the patch)
    for group in _attack_groups([cell for cell in own if cell.source is None]):
        if group[0].target == DEPLOYED_TARGET:
            evaluated = _evaluate_deployed(group, deployed, build_classifier, samples, _job_seed(job), keep)
        else:
            evaluated = _evaluate(group, model, deployed, classifier, samples, _job_seed(job), keep, training_images)
        for cell, columns in evaluated:
            report({**base, **_cell_columns(cell), **columns})
    for cell in (cell for cell in own if cell.source is not None):  # after: nothing here is their source
        report({**base, **_cell_columns(cell), **_transfer(cell, model, deployed, samples, context.adversarial,
                                                           classifier)})
    widths = sorted({cell.eval_bits for cell in cells} - {None})
    for width in widths:
        at_width = [cell for cell in cells if cell.eval_bits == width]
        for cell, columns in _evaluate_at_width(job, width, at_width, model, data, test_idx, samples,
                                                training_images):
            report({**base, **columns, **_cell_columns(cell)})
    return JobOutcome(trained=trained, rows=len(cells))


def _evaluate_at_width(job: TrainingJob, width: int, cells: Sequence[Cell], model, data, test_idx,
                       samples: _Samples, training_images):
    """(cell, columns) for a dbwt job's cells at another bit width: the same weights
    quantized at ``width`` (``bit_width.at_bit_width``), attacked on the same samples.
    The columns that describe the model change with it (configuration, test accuracy,
    packed footprint, Jacobians); the .tflite is the preset's, so nothing is deployed here."""
    from sweeper.deploy import footprint
    from sweeper.defenses.bit_width import at_bit_width

    with at_bit_width(model, width):
        at = _Samples(samples.index, samples.x, samples.y, _predict(model, samples.x), None)
        classifier = _classifier(model, data) if any(c.attack != NONE for c in cells) else None
        columns = {
            "config_id": job.config_id_at(width), "eval_bits": width,
            "test_acc": _accuracy(model, data.x[test_idx], data.y[test_idx]),
            "flash_packed_kb": footprint.flash_kb(model),
            "ram_packed_kb": footprint.peak_activation_bits(model, fused=True) / footprint.BITS_PER_KB,
            **jacobian.measure(model, samples.x, _job_seed(job)),
        }
        for group in _attack_groups(cells):
            for cell, outcome in _evaluate(group, model, None, classifier, at, _job_seed(job),
                                           training_images=training_images):
                yield cell, {**columns, **outcome}


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


def robust(clean_ok: np.ndarray, adv_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: robust in a cell, i.e. the model classifies both the clean input and
    the cell's example correctly. The one definition every row's ``adv_correct`` (and the
    deployed build's, with its own clean predictions) uses: a sample the model gets wrong
    unperturbed is never robust, even where an example not crafted against it (transfer,
    another model's patch) happens to land on its label."""
    return clean_ok & (adv_pred == y)


# ---------------------------------------------------------------- training

def _job_seed(job: TrainingJob) -> int:
    return _seed_of(job.job_id)


def _seed_of(job_id: str) -> int:
    """The seed a job's training and attacks draw from (a transfer cell's controls: its source's)."""
    return int(job_id[:8], 16) % (2**31 - 1)


def _trained_model(job: TrainingJob, data, train_idx, cache: str | None, checkpoints: Checkpoints):
    """(model, trained, train_s, the epoch training resumed from or None, the defense's
    regularizer over the last epoch or None)."""
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    import tensorflow as tf

    tf.keras.utils.set_random_seed(_job_seed(job))
    preset = QUANTIZERS.get(job.quantizer)
    model = models.build(job.model, data.input_shape, data.nb_classes, preset)
    if job.model_fingerprint and models.model_fingerprint(model) != job.model_fingerprint:
        # The plan was made by code that builds another model (a node running another
        # checkout): its rows and cached weights would be mislabelled.
        raise RuntimeError(f"job {job.job_id}: this worker builds {job.model}/{job.quantizer} with "
                           f"fingerprint {models.model_fingerprint(model)}, the plan expected "
                           f"{job.model_fingerprint}; run the same sweeper code on every node")
    if cache and _load_cached(model, cache, job.job_id):
        checkpoints.remove()  # left by a run killed between caching and removing them
        return model, False, 0.0, None, _cached_defense_reg(cache, job)
    from sweeper import defenses

    defense = defenses.build(job.defense, dict(job.defense_params), clip_values=data.clip_values, preset=preset)
    started = time.perf_counter()
    resumed = train(model, Train(**dict(job.train)), data.x[train_idx], data.y[train_idx], data.nb_classes,
                    _job_seed(job), checkpoints, defense=defense)
    train_s = time.perf_counter() - started
    reg = defense.summary.get(defense.regularizer) if defense and defense.regularizer else None
    if cache:
        _save_cached(model, cache, job.job_id)
        if defense is not None:  # a relaunch's new cells of this job read it from here
            store.put_bytes(store.locate(cache), f"{job.job_id}.defense.json",
                            json.dumps({"defense_reg": reg, **defense.summary}).encode())
    checkpoints.remove()  # only now: until the weights are cached, they are the way back
    return model, True, train_s, resumed or None, reg


def _cached_defense_reg(cache: str, job: TrainingJob) -> float | None:
    data = store.get_bytes(store.locate(cache), f"{job.job_id}.defense.json") if job.defense != NONE else None
    return json.loads(data).get("defense_reg") if data else None


def _defense_columns(job: TrainingJob, reg: float | None) -> dict[str, Any]:
    return {"defense": job.defense, "defense_label": job.defense_label,
            "defense_params": json.dumps(dict(job.defense_params), sort_keys=True), "defense_reg": reg}


def train(model, settings: Train, x: np.ndarray, y: np.ndarray, nb_classes: int, seed: int = 0,
          checkpoints: Checkpoints | None = None, callbacks: Sequence = (), defense=None) -> int:
    """Compile and fit with the grid's settings: categorical cross-entropy on logits.
    Continues from the latest of ``checkpoints`` and saves new ones as it goes; returns
    the epoch it started from (0: from scratch). ``callbacks``: more Keras callbacks.
    ``defense``: a ``sweeper.defenses`` training step (``defenses.build``); None is plain
    ``model.fit``. After training, ``defense.summary`` holds its metrics' means over the
    last epoch trained (e.g. ``jr``: the Jacobian penalty)."""
    import tensorflow as tf

    steps = int(np.ceil(len(x) / settings.batch_size))
    optimizer = _optimizer(settings, settings.epochs * steps)
    loss = tf.keras.losses.CategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss)
    fitted = model
    if defense is not None:  # the same model, optimizer and loss, the defense's step
        from sweeper.defenses import base

        fitted = base.wrap(model, defense, loss, optimizer, seed)
    state = checkpoints.latest(seed) if checkpoints else None
    start = restore(model, optimizer, state) if state else 0
    if checkpoints:
        callbacks = [*callbacks, _saver(checkpoints, model, optimizer, seed, start, settings.epochs)]
    if start < settings.epochs:
        batches = _epoch_batches(x, tf.keras.utils.to_categorical(y, nb_classes), start, settings.epochs,
                                 settings.batch_size, seed)
        fitted.fit(batches, epochs=settings.epochs, initial_epoch=start, steps_per_epoch=steps,
                   callbacks=list(callbacks), verbose=0)
    if defense is not None:
        defense.summary = base.read_summary(fitted)
    return start


def _optimizer(settings: Train, steps: int):
    import tensorflow as tf

    rate: Any = settings.learning_rate
    if settings.schedule == "cosine":
        # The schedule reads the optimizer's iteration count, which a checkpoint restores.
        rate = tf.keras.optimizers.schedules.CosineDecay(
            settings.learning_rate, decay_steps=steps,
            alpha=settings.min_learning_rate / settings.learning_rate)
    optimizers = {"adam": tf.keras.optimizers.Adam, "adamax": tf.keras.optimizers.Adamax,
                  "sgd": tf.keras.optimizers.SGD}
    return optimizers[settings.optimizer](learning_rate=rate)


def _epoch_batches(x: np.ndarray, y: np.ndarray, first: int, epochs: int, batch_size: int, seed: int):
    """The batches of epochs first..epochs-1, epoch e shuffled by (seed, e) alone: a run
    resumed at epoch k draws exactly the batches an uninterrupted run draws from k on.
    (Keras's own shuffle continues one random stream, which a restart cannot rejoin.)"""
    import tensorflow as tf

    x, y, n = tf.constant(x), tf.constant(y), len(x)

    def epoch(e):
        key = tf.stack([tf.constant(seed, tf.int64), e])
        order = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
        return tf.data.Dataset.from_tensor_slices(order).batch(batch_size)

    return (tf.data.Dataset.range(first, epochs).flat_map(epoch)
            .map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx))).prefetch(2))


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


# ---------------------------------------------------------------- checkpoints

CHECKPOINT_SHARE = 0.02  # "auto" keeps one save under this share of the epochs between saves
CHECKPOINT_FILE = "state.npz"  # the file inside a checkpoint directory (Tune's)


@dataclass
class TrainState:
    """What resuming a training needs: the epochs done, every model variable (batch-norm
    statistics included), every optimizer variable (its iteration count, which drives the
    learning-rate schedule, and its moments), and the shuffle seed. The shuffle of epoch e
    is drawn from (seed, e) alone, so the seed and the epoch are its whole RNG state."""

    epoch: int
    seed: int
    model: list[np.ndarray]
    optimizer: list[np.ndarray]

    def to_bytes(self) -> bytes:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, epoch=self.epoch, seed=self.seed,
                 **{f"model_{i}": a for i, a in enumerate(self.model)},
                 **{f"optimizer_{i}": a for i, a in enumerate(self.optimizer)})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainState:
        import io

        with np.load(io.BytesIO(data)) as arrays:
            def listed(prefix):
                return [arrays[f"{prefix}_{i}"] for i in range(sum(k.startswith(prefix + "_") for k in arrays))]
            return cls(int(arrays["epoch"]), int(arrays["seed"]), listed("model"), listed("optimizer"))


def snapshot(model, optimizer, epoch: int, seed: int) -> TrainState:
    return TrainState(epoch, seed, model.get_weights(), [v.numpy() for v in optimizer.variables])


def restore(model, optimizer, state: TrainState) -> int:
    """Put ``state`` into a compiled model and its optimizer; returns the epochs done, or 0
    with nothing changed when the state does not fit them (a checkpoint a job cannot use
    costs its progress, never the job)."""
    optimizer.build(model.trainable_variables)  # its variables exist only once built
    variables = [*model.weights, *optimizer.variables]
    values = [*state.model, *state.optimizer]
    if len(state.model) != len(model.weights) or \
            [tuple(v.shape) for v in variables] != [tuple(v.shape) for v in values]:
        return 0
    for variable, value in zip(variables, values):
        variable.assign(value)
    return state.epoch


class CheckpointHooks(Protocol):
    """A second home for checkpoints, beside the store: Tune's checkpoint API in a sweep."""

    def latest(self) -> bytes | None: ...  # the last one saved in this run's earlier tries
    def save(self, data: bytes, epoch: int) -> None: ...
    def finished(self) -> None: ...  # training is over and its weights cached


class Checkpoints:
    """A job's checkpoints: ``<folder>/<job_id>.npz`` in the store (written atomically, so
    a new launch finds the last complete one) and ``hooks`` (a retried trial's)."""

    def __init__(self, folder: str | None, job_id: str, every: int | str = "auto",
                 hooks: CheckpointHooks | None = None):
        self.location = store.locate(folder) if folder else None
        self.name, self.every, self.hooks = f"{job_id}.npz", every, hooks

    def latest(self, seed: int) -> TrainState | None:
        """The furthest checkpoint of this job, from either home; one that does not load or
        was saved with another seed is ignored (training from scratch is slower, not wrong)."""
        found = [self.hooks.latest() if self.hooks else None,
                 store.get_bytes(self.location, self.name) if self.location else None]
        states = []
        for data in filter(None, found):
            try:
                states.append(TrainState.from_bytes(data))
            except (OSError, ValueError, KeyError):
                continue
        states = [state for state in states if state.seed == seed]
        return max(states, key=lambda state: state.epoch, default=None)

    def save(self, state: TrainState) -> None:
        data = state.to_bytes()
        if self.location:
            store.put_bytes(self.location, self.name, data)
        if self.hooks:
            self.hooks.save(data, state.epoch)

    def remove(self) -> None:
        if self.location:
            store.delete_bytes(self.location, self.name)
        if self.hooks:
            self.hooks.finished()


def auto_interval(save_s: float, epoch_s: float, share: float = CHECKPOINT_SHARE) -> int:
    """The fewest epochs N between saves with save_s / (N * epoch_s) < share."""
    return max(1, math.floor(save_s / (share * epoch_s)) + 1) if epoch_s > 0 else 1


class CheckpointSchedule:
    """When to save: every ``every`` epochs, or for "auto" after the first epoch (which
    measures a save) and then every ``auto_interval`` epochs, from the fastest epoch seen
    (the first also traces the graph) and the latest save's time."""

    def __init__(self, every: int | str, start: int, epochs: int):
        self.every, self.last, self.epochs = every, start, epochs
        self.epoch_s, self.save_s = math.inf, None

    def interval(self) -> int:
        if self.every != "auto":
            return int(self.every)
        return 1 if self.save_s is None else auto_interval(self.save_s, self.epoch_s)

    def due(self, done: int, epoch_s: float) -> bool:
        """After an epoch: whether to save now. Never after the last epoch: the final
        weights are cached at once, and that is the job's last checkpoint."""
        self.epoch_s = min(self.epoch_s, epoch_s)
        return done < self.epochs and done - self.last >= self.interval()

    def saved(self, done: int, save_s: float) -> None:
        self.last, self.save_s = done, save_s


def _saver(checkpoints: Checkpoints, model, optimizer, seed: int, start: int, epochs: int):
    """A Keras callback that saves ``checkpoints`` on the schedule of their interval."""
    import tensorflow as tf

    schedule = CheckpointSchedule(checkpoints.every, start, epochs)
    began = [0.0]

    def on_epoch_begin(epoch, logs=None):
        began[0] = time.perf_counter()

    def on_epoch_end(epoch, logs=None):
        if schedule.due(epoch + 1, time.perf_counter() - began[0]):
            started = time.perf_counter()
            checkpoints.save(snapshot(model, optimizer, epoch + 1, seed))
            schedule.saved(epoch + 1, time.perf_counter() - started)

    return tf.keras.callbacks.LambdaCallback(on_epoch_begin=on_epoch_begin, on_epoch_end=on_epoch_end)


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
    """The .tflite's predictions, or None where there is none (not deployable, or cells
    at another bit width than the one deployed)."""
    from sweeper import deploy

    if deployment is None or deployment.flatbuffer is None:
        return None
    return deploy.evaluate(deployment.flatbuffer, x).predictions


def _footprint_columns(model, deployment) -> dict[str, Any]:
    """The three footprints: deployed (what the MCU fit uses), measured, packed."""
    from sweeper.deploy import footprint

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


def _accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(_predict(model, x) == y))


def _job_columns(job, context, data, model, test_idx, trained, train_s) -> dict[str, Any]:
    from sweeper.plan.expand import ID_VERSION

    return {
        "job_id": job.job_id, "config_id": job.config_id, "id_version": ID_VERSION,
        "grid": context.grid_name, "dataset": job.dataset,
        "dataset_options": json.dumps(dict(job.dataset_options), sort_keys=True),
        "model": job.model, "quantizer": job.quantizer, "model_fingerprint": job.model_fingerprint,
        "weights_sha256": weights_sha256(model), "fold": job.fold, "k": job.k,
        "seed": job.seed, "train": json.dumps(dict(job.train), sort_keys=True),
        "test_acc": _accuracy(model, data.x[test_idx], data.y[test_idx]),
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
    source = cell.source
    return {"cell_id": cell.cell_id, "attack": cell.attack, "attack_label": cell.attack_label,
            "norm": cell.norm, "eps": cell.eps, "eps_label": cell.eps_label,
            "attack_params": json.dumps(cell.art_params(), sort_keys=True, default=str),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "source_job_id": source and source.job_id, "source_config_id": source and source.config_id,
            "source_model": source and source.model, "source_quantizer": source and source.quantizer,
            "transfer_rate": None, "eval_bits": cell.eval_bits, "target": cell.target}


# ---------------------------------------------------------------- attacking

def _attack_groups(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells that share one attack run. A minimal-perturbation attack (C&W, Boundary,
    HopSkipJump, ZOO) has no budget: it runs once, unbounded, per (attack, norm,
    parameters, target), and every eps of it is derived from the perturbation norms it
    found (as Foolbox 3's minimization attacks do). Every other cell is its own group."""
    from sweeper.attacks import is_minimal

    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        minimal = cell.attack != NONE and is_minimal(cell.attack)
        key = (cell.attack, cell.norm, cell.params, cell.target) if minimal else (cell.cell_id,)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def _evaluate(group: list[Cell], model, deployed, classifier, samples: _Samples, seed: int, keep=None,
              training_images: Callable[[], np.ndarray] | None = None):
    """(cell, columns) for each cell of one group: the accuracies and per-sample outcomes
    of the attacked network (the QKeras model; the build on a deployed cell, whose
    ``samples`` are then the build's: ``_evaluate_deployed``) and of its deployed .tflite
    on the same adversarial examples. ``keep(cell, x_used, pred, clean_ok)`` stores a
    source cell's examples as its row counts them."""
    from sweeper.attacks import is_minimal

    first = group[0]
    started = time.perf_counter()
    x_adv = _adversarial(first, classifier, samples, math.inf if first.attack != NONE
                         and is_minimal(first.attack) else first.eps, seed, training_images)
    adv_pred, deployed_adv = _predictions(first, model, deployed, classifier, samples, x_adv)
    attack_s = time.perf_counter() - started  # shared by every eps of a minimal attack
    norms = _perturbation_norms(samples.x, x_adv)
    controls = _control_predictions(first, model, classifier, samples, samples.clean_ok, seed)
    for cell in group:
        within, pred, columns = _within_budget(cell, samples, norms, adv_pred, deployed_adv)
        if keep is not None and cell.keeps_arrays:
            keep(cell, np.where(within.reshape(-1, *[1] * (x_adv.ndim - 1)), x_adv, samples.x), pred,
                 samples.clean_ok)
        yield cell, {**columns, **_target_columns(cell, samples, pred, controls), "attack_s": attack_s}


def _predictions(cell: Cell, model, deployed, classifier, samples: _Samples, x_adv: np.ndarray):
    """(the attacked network's predictions on x_adv, the deployed build's). On a deployed
    cell both are the build's, from the attack's own estimator (batched: checked bit for
    bit against one sample at a time when it was built)."""
    if cell.attack == NONE:
        return samples.clean_pred, samples.deployed_clean_pred
    if cell.target == DEPLOYED_TARGET:
        pred = np.argmax(classifier.predict(x_adv), axis=1)
        return pred, pred
    return _predict(model, x_adv), _deployed_predict(deployed, x_adv)


def _evaluate_deployed(group: list[Cell], deployed, build_classifier: Callable[[], Any], samples: _Samples,
                       seed: int, keep=None):
    """(cell, columns) for each cell of one group that attacks the deployed build
    (``target`` deployed) through ``build_classifier()`` (the .tflite as an ART
    classifier). Every outcome is the build's: its own clean predictions decide which
    samples are attacked and which count as robust (``robust``), and its predictions on
    the examples are ``adv_pred``; the deployed_* columns say the same. A model without
    a .tflite (conversion failed: the row's deploy_error says why) gets rows without
    outcomes."""
    if samples.deployed_clean_pred is None:
        for cell in group:
            yield cell, _no_build_columns(samples)
        return
    build = _Samples(samples.index, samples.x, samples.y, samples.deployed_clean_pred, samples.deployed_clean_pred)
    yield from _evaluate(group, None, deployed, build_classifier(), build, seed, keep)


def _no_build_columns(samples: _Samples) -> dict[str, Any]:
    """A deployed cell's columns when there is no build to attack: the sample count, no
    outcome (null, never zero: nothing was measured)."""
    empty = dict.fromkeys(("clean_acc", "adv_acc", "attack_success_rate", *OUTCOME_COLUMNS, *TARGET_COLUMNS))
    return {**empty, **_deployed_columns(samples, None), "n_samples": int(len(samples.y)), "attack_s": 0.0}


def _deployed_classifier(deployed, data):
    from sweeper import attacks

    return attacks.make_deployed_classifier(deployed.flatbuffer, data.nb_classes, data.input_shape, data.clip_values)


def _within_budget(cell: Cell, samples: _Samples, norms: dict[str, np.ndarray], adv_pred: np.ndarray,
                   deployed_adv: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Post-hoc budget: an example outside the cell's eps counts as a failed attack (the
    clean input). (which examples are within, the predictions counted, the outcome and
    deployed columns)."""
    within = norms[cell.norm] <= cell.eps * (1 + BUDGET_RTOL) if cell.norm in norms else \
        np.ones(len(samples.y), bool)
    pred = np.where(within, adv_pred, samples.clean_pred)
    used = {name: np.where(within, values, 0.0) for name, values in norms.items()}
    deployed_pred = None if deployed_adv is None else np.where(within, deployed_adv, samples.deployed_clean_pred)
    return within, pred, {**_outcome_columns(samples, pred, used), **_deployed_columns(samples, deployed_pred)}


def _adversarial(cell: Cell, classifier, samples: _Samples, eps: float, seed: int,
                 training_images: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Adversarial versions of the samples. Only the samples the model gets right are
    attacked: a misclassified one is already adversarial, and the query-hungry attacks
    (ZOO, Boundary, Square) would spend most of their budget on it for nothing. An attack
    that trains on the training fold (the patch) gets its images, never the test samples."""
    from sweeper import attacks

    ok = samples.clean_ok
    if cell.attack == NONE or not ok.any():
        return samples.x
    needs = attacks.ATTACKS.get(cell.attack).needs_training_data and training_images is not None
    x_adv = samples.x.copy()
    x_adv[ok] = attacks.run(cell.attack, classifier, samples.x[ok], samples.y[ok], eps, cell.norm,
                            dict(cell.params), seed, x_train=training_images() if needs else None)
    return x_adv


def _has_controls(cell: Cell) -> bool:
    from sweeper import attacks

    return cell.attack != NONE and attacks.ATTACKS.get(cell.attack).controls is not None


def _control_predictions(cell: Cell, model, classifier, samples: _Samples, attacked: np.ndarray,
                         seed: int) -> list[np.ndarray] | None:
    """The model's predictions on each of the cell's controls (``attacks.controls``: the
    patch's random and solid patches), pasted where the attack pasted, on the samples it
    perturbed (``attacked``; the others stay clean, as in its examples) with its seed.
    Forward passes only. None for an attack without controls and at eps 0."""
    from sweeper import attacks

    if not _has_controls(cell) or cell.eps == 0:
        return None
    if not attacked.any():  # nothing was perturbed: each control is the clean input
        return [samples.clean_pred]
    made = attacks.controls(cell.attack, classifier, samples.x[attacked], cell.eps, cell.norm, dict(cell.params),
                            seed)
    predictions = []
    for x_control in made.values():
        x_all = samples.x.copy()
        x_all[attacked] = x_control
        predictions.append(_predict(model, x_all))
    return predictions


TARGET_COLUMNS = ("target_rate", "target_n", "control_target_rate", "control_adv_acc")


def _target_columns(cell: Cell, samples: _Samples, pred: np.ndarray,
                    controls: list[np.ndarray] | None) -> dict[str, Any]:
    """A targeted attack with controls (the patch) scored against them (store.COLUMNS):
    its target rate and denominator, the highest target rate and the lowest (robust, as
    adv_acc's) accuracy of its controls. Null for every other row."""
    if controls is None:
        return dict.fromkeys(TARGET_COLUMNS)
    from sweeper.attacks import target_rate

    target = dict(cell.params)["target"]
    rate, n = target_rate(samples.y, samples.clean_pred, pred, target)
    rates = [target_rate(samples.y, samples.clean_pred, p, target)[0] for p in controls]
    return {"target_rate": rate, "target_n": n,
            "control_target_rate": float("nan") if n == 0 else max(rates),
            "control_adv_acc": min(float(np.mean(robust(samples.clean_ok, p, samples.y))) for p in controls)}


def _deployed_columns(samples: _Samples, deployed_pred: np.ndarray | None) -> dict[str, Any]:
    if deployed_pred is None:
        return {"deployed_clean_acc": None, "deployed_adv_acc": None, "deployed_adv_correct": None}
    clean_ok = samples.deployed_clean_pred == samples.y  # the .tflite's own, not the QKeras model's
    ok = robust(clean_ok, deployed_pred, samples.y)
    return {"deployed_clean_acc": float(clean_ok.mean()),
            "deployed_adv_acc": float(ok.mean()), "deployed_adv_correct": ok.tolist()}


def _perturbation_norms(x: np.ndarray, x_adv: np.ndarray) -> dict[str, np.ndarray]:
    from sweeper.attacks import perturbation_norms

    return {norm: perturbation_norms(x, x_adv, norm) for norm in ("inf", "2", "1")}


def _outcome_columns(samples: _Samples, adv_pred: np.ndarray, norms: dict[str, np.ndarray]) -> dict[str, Any]:
    clean_ok = samples.clean_ok
    adv_ok = robust(clean_ok, adv_pred, samples.y)
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


# ---------------------------------------------------------------- transfer attacks

def _keeper(folder: str, samples: _Samples):
    """Stores a source cell's examples (as its row counts them: an example outside the
    budget is the clean input) with the samples' indices and the source's outcomes
    (``clean_ok``: the attacked network's clean outcomes)."""
    location = store.locate(folder)

    def keep(cell: Cell, x_used: np.ndarray, pred: np.ndarray, clean_ok: np.ndarray) -> None:
        store.put_arrays(location, f"{cell.cell_id}.npz", sample_index=samples.index, x_adv=x_used,
                         clean_correct=clean_ok, adv_correct=robust(clean_ok, pred, samples.y))

    return keep


def _transfer(cell: Cell, model, deployed, samples: _Samples, folder: str | None, classifier=None) -> dict[str, Any]:
    """A transfer cell's columns: the target (this job's model and its .tflite) on its
    source cell's stored examples, a forward pass each, and the transfer rate; for an
    attack with controls, the target on the source's controls (same samples and places)."""
    started = time.perf_counter()
    source = _source_arrays(cell, samples, folder)
    x_adv = source["x_adv"]
    adv_pred = _predict(model, x_adv)
    attack_s = time.perf_counter() - started
    # The source kept only examples within the budget; the same rule as _evaluate, so a
    # row never counts an example outside eps.
    _, pred, columns = _within_budget(cell, samples, _perturbation_norms(samples.x, x_adv), adv_pred,
                                      _deployed_predict(deployed, x_adv))
    rate = transfer_rate(source["clean_correct"], source["adv_correct"], samples.clean_ok,
                         robust(samples.clean_ok, pred, samples.y))
    controls = _control_predictions(cell, model, classifier, samples, source["clean_correct"].astype(bool),
                                    _seed_of(cell.source.job_id)) if _has_controls(cell) else None
    return {**columns, **_target_columns(cell, samples, pred, controls), "attack_s": attack_s,
            "transfer_rate": rate}


def transfer_rate(source_clean: np.ndarray, source_adv: np.ndarray, target_clean: np.ndarray,
                  target_adv: np.ndarray) -> float:
    """Share of the samples both models classify correctly, and whose example fools the
    source, that also fool the target (NaN when there are none)."""
    base = source_clean & target_clean & ~source_adv
    return float(np.sum(base & ~target_adv) / base.sum()) if base.any() else float("nan")


def _source_arrays(cell: Cell, samples: _Samples, folder: str | None) -> dict[str, np.ndarray]:
    """The source cell's stored examples, checked to be of this job's samples: a mismatch
    would silently pair one sample's example with another's label."""
    source = cell.source
    arrays = store.get_arrays(store.locate(folder), f"{source.cell_id}.npz") if folder else None
    if arrays is None:
        raise RuntimeError(f"transfer cell {cell.cell_id}: the examples of source cell {source.cell_id} "
                           f"(job {source.job_id}, {source.model}/{source.quantizer}) are not in the store; "
                           f"its job must finish first (did it fail?)")
    if not np.array_equal(arrays["sample_index"], samples.index) or arrays["x_adv"].shape != samples.x.shape:
        raise RuntimeError(f"transfer cell {cell.cell_id}: source cell {source.cell_id} holds examples of other "
                           f"samples ({len(arrays['sample_index'])} stored, {len(samples.index)} here, "
                           f"indices differ); source and target must share dataset, fold, seed and sample count")
    return arrays

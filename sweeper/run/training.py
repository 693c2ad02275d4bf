"""Training a job's model: build it (checking its fingerprint against the plan's), load it
from the model cache or train it with the grid's settings and the job's defense,
continuing from the latest checkpoint (``checkpoints.py``), and cache the result
(``cache.py``). ``train`` is the compile-and-fit every caller shares: categorical
cross-entropy on logits, each epoch shuffled by (job seed, epoch) alone so a resumed run
draws exactly the batches an uninterrupted one draws."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from sweeper.keys import NONE
from sweeper.models import untuned
from sweeper.plan.entries import Train
from sweeper.plan.expand import TrainingJob
from sweeper.run.cache import ModelCache
from sweeper.run.checkpoints import Checkpoints, restore, saver
from sweeper.run.profile import span


@dataclass(frozen=True)
class Trained:
    """A job's model, and how it came to be."""

    model: Any
    trained: bool  # False: loaded from the model cache
    train_s: float  # seconds spent training (0 when cached)
    resumed: int | None  # the epoch training resumed from a checkpoint; None: not resumed
    defense_reg: float | None  # the defense's regularizer over the last epoch; None: none


def trained_model(job: TrainingJob, data, train_idx, cache: ModelCache, checkpoints: Checkpoints) -> Trained:
    """The job's model, from the cache or trained (and then cached)."""
    from sweeper import defenses, models
    from sweeper.models.quantizers import QUANTIZERS

    import tensorflow as tf

    tf.keras.utils.set_random_seed(job.draw_seed)
    preset = QUANTIZERS.get(job.quantizer)
    model = models.build(job.model, data.input_shape, data.nb_classes, preset)
    if job.model_fingerprint and models.model_fingerprint(model) != job.model_fingerprint:
        # The plan was made by code that builds another model (a node running another
        # checkout): its rows and cached weights would be mislabelled.
        raise RuntimeError(f"job {job.job_id}: this worker builds {job.model}/{job.quantizer} with "
                           f"fingerprint {models.model_fingerprint(model)}, the plan expected "
                           f"{job.model_fingerprint}; run the same sweeper code on every node")
    if cache.load_weights(model, job.job_id):
        checkpoints.remove()  # left by a run killed between caching and removing them
        return Trained(model, False, 0.0, None, cache.defense_reg(job.job_id) if job.defense != NONE else None)
    defense = defenses.build(job.defense, dict(job.defense_params), clip_values=data.clip_values, preset=preset)
    started = time.perf_counter()
    resumed = train(model, Train(**dict(job.train)), data.x[train_idx], data.y[train_idx], data.nb_classes,
                    job.draw_seed, checkpoints, defense=defense)
    train_s = time.perf_counter() - started
    reg = defense.summary.get(defense.regularizer) if defense and defense.regularizer else None
    cache.save_weights(model, job.job_id)
    if defense is not None:
        cache.save_defense(job.job_id, reg, defense.summary)
    checkpoints.remove()  # only now: until the weights are cached, they are the way back
    return Trained(model, True, train_s, resumed or None, reg)


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
        callbacks = [*callbacks, saver(checkpoints, model, optimizer, seed, start, settings.epochs)]
    if start < settings.epochs:
        batches = _epoch_batches(x, tf.keras.utils.to_categorical(y, nb_classes), start, settings.epochs,
                                 settings.batch_size, seed)
        with span("fit"):
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

    return untuned(tf.data.Dataset.range(first, epochs).flat_map(epoch)
                   .map(lambda idx: (tf.gather(x, idx), tf.gather(y, idx))).prefetch(2))

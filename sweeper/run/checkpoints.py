"""Training checkpoints: what resuming a training needs (``TrainState``), saving it on a
schedule ("auto": at most once per ``CHECKPOINT_MIN_S`` of training, and under
``CHECKPOINT_SHARE`` of it; or every N epochs), and finding the latest one again, from the
store (``checkpoints/<job_id>.npz``, written atomically) and from the runner's hooks (Tune's
checkpoint API in a Ray sweep). A resumed training ends with the model an uninterrupted one
makes."""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sweeper import store

CHECKPOINT_SHARE = 0.02  # "auto" keeps one save under this share of the epochs between saves
# ... and saves at most once per this many seconds of training: a preempted trial loses
# about this much at most, while a training shorter than this (redone in seconds by a
# retry) saves nothing, where each save also makes Tune's driver snapshot the experiment.
CHECKPOINT_MIN_S = 60.0
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
        buffer = io.BytesIO()
        np.savez(buffer, epoch=self.epoch, seed=self.seed,
                 **{f"model_{i}": a for i, a in enumerate(self.model)},
                 **{f"optimizer_{i}": a for i, a in enumerate(self.optimizer)})
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainState:
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
    """When to save: every ``every`` epochs, or for "auto" once both hold: at least
    ``CHECKPOINT_MIN_S`` seconds of training since the last save (or the start), and at
    least ``auto_interval`` epochs, from the fastest epoch seen (the first also traces the
    graph) and the latest save's time (one epoch before the first save, which measures one)."""

    def __init__(self, every: int | str, start: int, epochs: int):
        self.every, self.last, self.epochs = every, start, epochs
        self.epoch_s, self.save_s = math.inf, None
        self.since = 0.0  # seconds of training since the last save (or the start)

    def interval(self) -> int:
        if self.every != "auto":
            return int(self.every)
        return 1 if self.save_s is None else auto_interval(self.save_s, self.epoch_s)

    def due(self, done: int, epoch_s: float) -> bool:
        """After an epoch: whether to save now. Never after the last epoch: the final
        weights are cached at once, and that is the job's last checkpoint."""
        self.epoch_s = min(self.epoch_s, epoch_s)
        self.since += epoch_s
        if done >= self.epochs or done - self.last < self.interval():
            return False
        return self.every != "auto" or self.since >= CHECKPOINT_MIN_S

    def saved(self, done: int, save_s: float) -> None:
        self.last, self.save_s, self.since = done, save_s, 0.0


def saver(checkpoints: Checkpoints, model, optimizer, seed: int, start: int, epochs: int):
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

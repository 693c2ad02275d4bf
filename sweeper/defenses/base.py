"""What every defense shares: ``Defense`` (one training step's loss and gradients) and
``wrap``, the Keras model whose compiled ``train_step`` runs a defense on sweeper's model.

The wrapper holds the model, never copies it: its variables are the model's, so the
optimizer, checkpoints (``run.checkpoints.snapshot``/``restore``) and the cached weights see the
same variables as in plain training. Randomness (projections, random starts) is
stateless, drawn from (seed, optimizer iteration): a training resumed from a checkpoint
draws what an uninterrupted one draws, as the seeded shuffles do.
"""

from __future__ import annotations

from typing import Any


class Defense:
    """A built defense. Subclasses override ``gradients``; the base class is plain
    training (cross-entropy on the model's logits, as ``run.training.train`` compiles it), which
    tests use to check the wrapper against ``model.fit``.

    ``metric_names``: extra per-step values ``gradients`` returns; the wrapper averages
    each over an epoch, and ``summary`` holds their means over the last epoch trained."""

    name = "plain"
    metric_names: tuple[str, ...] = ()
    regularizer: str | None = None  # the metric a row stores as defense_reg

    def __init__(self) -> None:
        self.summary: dict[str, float] = {}

    def gradients(self, model, loss_fn, x, y, key, step) -> tuple[Any, list, dict[str, Any]]:
        """(loss, gradients of ``model.trainable_variables``, {metric: value}) for one
        batch. ``key``: a stateless RNG seed (shape [2]) unique to this step; ``step``:
        the optimizer's iteration count (a tensor)."""
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        return loss, tape.gradient(loss, model.trainable_variables), {}

    def setup(self, model) -> None:
        """Called once before training (checks that the model suits the defense)."""


def wrap(model, defense: Defense, loss_fn, optimizer, seed: int):
    """A compiled Keras model whose ``fit`` trains ``model`` with ``defense``'s step."""
    defense.setup(model)
    wrapper = _defended_class()(model, defense, loss_fn, seed)
    wrapper.compile(optimizer=optimizer)
    return wrapper


def read_summary(wrapper) -> dict[str, float]:
    """The per-epoch means of the last epoch trained (Keras resets the trackers at the
    start of every epoch, so after ``fit`` they hold the last one's)."""
    return {name: float(tracker.result().numpy()) for name, tracker in wrapper.trackers.items()
            if int(tracker.count.numpy()) > 0}


_DEFENDED = None


def _defended_class():
    """The wrapper class, created on first use so this module imports without TensorFlow."""
    global _DEFENDED
    if _DEFENDED is None:
        import tensorflow as tf

        class DefendedModel(tf.keras.Model):
            def __init__(self, inner, defense: Defense, loss_fn, seed: int):
                super().__init__()
                self.inner, self.loss_fn, self.seed = inner, loss_fn, int(seed)
                self._defense = [defense]  # a list: keeps Keras from tracking it as a layer
                self.trackers = {name: tf.keras.metrics.Mean(name=name)
                                 for name in ("loss", *defense.metric_names)}

            def call(self, inputs, training=None):
                return self.inner(inputs, training=training)

            @property
            def metrics(self):  # what fit resets at each epoch's start
                return list(self.trackers.values())

            def train_step(self, data):
                x, y = data
                step = tf.cast(self.optimizer.iterations, tf.int64)
                key = tf.stack([tf.constant(self.seed, tf.int64), step])
                loss, grads, extra = self._defense[0].gradients(self.inner, self.loss_fn, x, y, key, step)
                self.optimizer.apply_gradients(zip(grads, self.inner.trainable_variables))
                for name, value in {"loss": loss, **extra}.items():
                    self.trackers[name].update_state(value)
                return {name: tracker.result() for name, tracker in self.trackers.items()}

        _DEFENDED = DefendedModel
    return _DEFENDED

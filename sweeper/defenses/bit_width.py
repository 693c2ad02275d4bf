"""Dynamic bit-width training (``dbwt``): one set of float weights trained at bit widths
that cycle, so that the same weights work when quantized at each width.

The idea is QADT-R's "dynamic bit-width training" (arXiv 2503.07058; the follow-up
TriQDef trains shared weights across quantization levels). Neither publishes code or a
schedule, so sweeper names its own:

- ``bits`` (default [8, 4, 2]): the widths cycled through;
- ``period`` (default 1): optimizer steps spent at each width before the next. Step s
  trains at ``bits[(s // period) % len(bits)]``; s is the optimizer's iteration count,
  which checkpoints restore, so a resumed training keeps the cycle.

Mechanism: every fixed-point quantizer of the model (QKeras ``quantized_bits`` on
kernels and biases, ``quantized_relu`` on activations) reads its ``bits`` attribute when
called. The compiled step holds one branch per width (``tf.switch_case``), each traced
with the quantizers set to that width, and picks the branch from the step count: one
graph, one set of weights, no retracing. ``quantized_sigmoid`` (stq_net's gate) keeps
its width. Batch norm's running statistics are shared across widths too (the
literature's switchable batch norm is not used): they average over the cycle.

After training the quantizers are back at the preset's own width, so the model is the
job's model (same configuration and fingerprint). ``at_bit_width`` evaluates the same
weights at another width; ``accuracy_by_width`` does it for every width.

In a sweep a dbwt job is evaluated at each width of ``bits``: its own cells at the
preset's width, and a copy of its white-box cells (clean included) at every other width
(``other_widths``), whose rows carry ``eval_bits`` and a configuration of their own
(``expand``, ``trial``).
"""

from __future__ import annotations

import contextlib
import re

import numpy as np

from sweeper.defenses.base import Defense
from sweeper.defenses.spec import DefenseSpec, check_preset
from sweeper.models import predict_logits
from sweeper.plan.limits import Limit, whole


class DynamicBitWidth(Defense):
    name = "dbwt"
    metric_names = ("bits",)

    def __init__(self, bits: list[int], period: int):
        super().__init__()
        self.bits, self.period = list(bits), period

    def setup(self, model) -> None:
        if not switchable_quantizers(model):
            raise ValueError("defense 'dbwt': the model has no fixed-point quantizer to switch")

    def gradients(self, model, loss_fn, x, y, key, step):
        import tensorflow as tf

        def branch(bits):
            def run():
                with at_bit_width(model, bits):  # active while this branch is traced
                    with tf.GradientTape() as tape:
                        loss = loss_fn(y, model(x, training=True))
                    grads = tape.gradient(loss, model.trainable_variables)
                return loss, [tf.zeros_like(v) if g is None else g
                              for g, v in zip(grads, model.trainable_variables)]
            return run

        index = tf.cast((step // self.period) % len(self.bits), tf.int32)
        loss, grads = tf.switch_case(index, [branch(b) for b in self.bits])
        return loss, grads, {"bits": tf.gather(tf.constant(self.bits, tf.float32), index)}


def switchable_quantizers(model) -> list:
    """The model's fixed-point quantizer objects (``quantized_bits``, ``quantized_relu``),
    each once, whatever layer holds it."""
    from sweeper.models.qk import quantized_bits, quantized_relu

    found = {}
    for layer in model.layers:
        for value in vars(layer).values():
            if isinstance(value, (quantized_bits, quantized_relu)):
                found[id(value)] = value
    return list(found.values())


@contextlib.contextmanager
def at_bit_width(model, bits: int):
    """Quantize ``model`` at ``bits`` inside the block (the same weights), then restore
    each quantizer's own width. Keras's compiled predict/evaluate functions are dropped
    on entry and exit, so they retrace at the width in force; call the model (or build
    an attack classifier) inside the block."""
    quantizers = switchable_quantizers(model)
    own = [q.bits for q in quantizers]
    try:
        for quantizer in quantizers:
            quantizer.bits = int(bits)
        _drop_compiled(model)
        yield model
    finally:
        for quantizer, width in zip(quantizers, own):
            quantizer.bits = width
        _drop_compiled(model)


def _drop_compiled(model) -> None:
    model.predict_function = None
    model.test_function = None


def accuracy_by_width(model, x: np.ndarray, y: np.ndarray, bits: list[int]) -> dict[int, float]:
    """{width: accuracy of the model's argmax on (x, y) with its weights quantized at that
    width}, all from the same weights."""
    accuracies = {}
    for width in bits:
        with at_bit_width(model, width):
            predictions = np.argmax(predict_logits(model, x), axis=1)
        accuracies[int(width)] = float(np.mean(predictions == y))
    return accuracies


def preset_width(preset) -> int | None:
    """The one bit width of a fixed-point preset's kernels, biases and activations
    (``int4``: 4), or None when they differ or are not fixed-point; no TensorFlow."""
    expressions = (preset.kernel or "", preset.bias or "", preset.activation or "")
    widths = {re.match(r"quantized_(?:bits|relu)\((\d+)", e) for e in expressions}
    found = {int(match.group(1)) for match in widths if match is not None}
    return found.pop() if len(found) == 1 and None not in widths else None


def presets_by_width() -> dict[int, str]:
    """{width: the first registered preset of that one width} ({8: "int8", 4: "int4", ...})."""
    from sweeper.models.quantizers import QUANTIZERS

    found: dict[int, str] = {}
    for name in QUANTIZERS.names():
        width = preset_width(QUANTIZERS.get(name))
        if width is not None:
            found.setdefault(width, name)
    return found


def other_widths(bits: list[int], preset) -> list[int]:
    """The widths of ``bits`` a dbwt job is also evaluated at: all but the preset's own
    (its own cells are those)."""
    own = preset_width(preset)
    return [int(b) for b in bits if b != own]


def _preset_problem(preset) -> str | None:
    if not (preset.kernel or "").startswith("quantized_bits"):
        return f"switches bit widths, so it needs a fixed-point preset (int8, int4, int2), not {preset.name!r}"
    return None


def _build(p, clip, preset):
    if preset is not None:
        check_preset("dbwt", preset)
    return DynamicBitWidth(p["bits"], p["period"])


SPECS = (
    DefenseSpec("dbwt", {"bits": [8, 4, 2], "period": 1},
                {"bits": Limit("widths", 2, 16, what="bit widths"), "period": whole(1, 1_000_000)},
                "dynamic bit-width training: shared weights trained at bit widths that cycle",
                _build, "QADT-R (arXiv 2503.07058), schedule sweeper's", preset_problem=_preset_problem,
                widths=lambda p, preset: other_widths(list(p["bits"]), preset), at_width=at_bit_width),
)

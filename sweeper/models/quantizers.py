"""Quantizer presets: the paper's eight named ways of quantizing a network with QKeras.

A preset says, as QKeras quantizer expressions, how a model's weights (kernels), biases
and activations are quantized. Models read presets; they never hard-code quantizers.
Expressions are plain strings so this module imports without TensorFlow; ``make``
turns one into a QKeras quantizer object when a model is built.

Stochastic presets (``stq``, ``sbinary``) sample during training and are deterministic
at evaluation; ``models.QModel`` makes that true under TF2 (QKeras alone does not).

It also owns the leaner formulations of the activation quantizers (``_lean_classes``):
QKeras's ``quantized_relu``, ``ternary``, ``binary`` and ``stochastic_binary`` spend
several elementwise passes over every activation tensor on identities (``* 1.0``,
``/ 1.0``, ``p + stop_gradient(round(p) - p)`` before a stop_gradient, a scale that is
computed and discarded). ``make`` swaps in subclasses that skip those passes: same
class names, configuration and string (so model fingerprints are unchanged), outputs
and gradients bit-identical to QKeras on finite inputs (tests/test_quantizers.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sweeper.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    kernel: str | None  # None: full-precision float32 weights
    bias: str | None
    activation: str  # a QKeras activation quantizer, or plain "relu"
    stochastic: bool
    description: str


QUANTIZERS: Registry[Preset] = Registry("quantizer")


def _add(preset: Preset) -> None:
    QUANTIZERS.add(preset.name, preset)


_add(Preset("fp", None, None, "relu", False, "full precision float32 (baseline)"))
for _bits in (8, 4, 2):
    _add(Preset(
        f"int{_bits}",
        f"quantized_bits({_bits},0,alpha=1)",
        f"quantized_bits({_bits},0,alpha=1)",
        f"quantized_relu({_bits})",
        False,
        f"{_bits}-bit fixed-point weights, biases and ReLU activations",
    ))
# Ternary and binary nets keep 8-bit biases (a handful of values per layer) and use
# ternary/binary activations: the weights *and* the activations are deeply quantized.
_add(Preset("ternary", "ternary(alpha=1)", "quantized_bits(8,0,alpha=1)",
            "ternary(alpha=1)", False, "ternary {-1,0,1} weights and activations"))
# The stochastic presets' activations use a fixed scale (alpha=1). With alpha='auto_po2'
# an activation's scale is computed over the whole batch tensor, so a sample's prediction
# depends on which other samples share its batch: unlike inference on an MCU (batch 1),
# and it lets decision-based attacks such as Boundary "succeed" in ART's candidate batches
# but not in evaluation. Weights keep 'auto_po2': their scale depends only on the weights.
# QKeras's stochastic_ternary samples only with alpha 'auto'/'auto_po2' (it asserts so),
# so stq's activations are plain ternary; its weights carry the stochastic quantization.
_add(Preset("stq", "stochastic_ternary(alpha='auto_po2')", "quantized_bits(8,0,alpha=1)",
            "ternary(alpha=1)", True,
            "stochastic ternary weights (sampled while training), ternary activations"))
_add(Preset("binary", "binary(alpha=1)", "quantized_bits(8,0,alpha=1)",
            "binary(alpha=1)", False, "binary {-1,1} weights and activations"))
_add(Preset("sbinary", "stochastic_binary(alpha='auto_po2')", "quantized_bits(8,0,alpha=1)",
            "stochastic_binary(alpha=1)", True,
            "stochastic binary weights and activations (sampled while training)"))


def make(expression: str | None):
    """A fresh QKeras quantizer object for an expression (None stays None), in its lean
    formulation where one exists (see ``lean``)."""
    if expression is None:
        return None
    from sweeper.models.qk import get_quantizer

    return lean(get_quantizer(expression))


def make_original(expression: str | None):
    """The stock QKeras quantizer for an expression: the reference the lean ones are
    tested against."""
    if expression is None:
        return None
    from sweeper.models.qk import get_quantizer

    return get_quantizer(expression)


def lean(quantizer):
    """The quantizer with its class swapped, in place, for the lean subclass of its QKeras
    class (same name, attributes, configuration); other quantizers are returned as they
    are. A lean class falls back to QKeras's code for settings it does not cover."""
    cls = _lean_classes().get(type(quantizer))
    if cls is not None:
        quantizer.__class__ = cls
    return quantizer


@functools.cache
def _lean_classes() -> dict:
    """{QKeras class: lean subclass}. Each subclass is named like its parent, so Keras
    serialises it (and ``models.model_fingerprint`` hashes it) exactly as the original
    (name and module are the parent's: Keras writes both into layer configurations)."""
    from sweeper.models.qk import quantizers as qk

    classes = {}
    for parent, call in ((qk.quantized_relu, _relu_call), (qk.ternary, _ternary_call),
                         (qk.binary, _binary_call), (qk.stochastic_binary, _sbinary_call)):
        classes[parent] = type(parent.__name__, (parent,), {"__call__": call, "lean": True,
                                                            "__module__": parent.__module__})
    return classes


# The lean __call__s. Each returns exactly what QKeras's computes, in fewer ops:
# x * 1.0, x / 1.0 and 1.0 * x are exact; p + stop_gradient(-p + round(p)) equals
# round(p) bit for bit for finite p (round(p) - p is exact by Sterbenz's lemma), and
# under a stop_gradient its straight-through gradient is never used; -x + q == q - x.

def _relu_call(self, x):
    """quantized_relu(bits, integer=0) with QKeras's defaults: clipped ReLU at
    1 - 2^-bits with a straight-through gradient, values rounded to multiples of 2^-bits."""
    if not (not self.use_variables and self.integer == 0 and not self.use_sigmoid and self.negative_slope == 0.0
            and not self.use_stochastic_rounding and self.relu_upper_bound is None
            and self.is_quantized_clip and self.use_ste and self.qnoise_factor == 1.0
            and 0 < self.bits <= 16):
        return super(type(self), self).__call__(x)
    import tensorflow as tf

    x = tf.cast(x, tf.float32)
    m = 2.0 ** self.bits
    top = 1.0 - 1.0 / m
    x_u = tf.where(x <= top, tf.nn.relu(x), top)
    xq = tf.clip_by_value(tf.round(x * m) / m, 0.0, top)
    return x_u + tf.stop_gradient(xq - x_u)


def _ternary_call(self, x):
    """ternary(alpha=<number>): -alpha, 0 or alpha by a fixed threshold (activations)."""
    if not _fixed_alpha(self) or self.use_stochastic_rounding or isinstance(self.threshold, str):
        return super(type(self), self).__call__(x)
    import tensorflow as tf

    thres = self.default_threshold if self.threshold is None else self.threshold
    q = tf.where(tf.abs(x) >= thres, tf.sign(x), 0.0)  # (+0 for QKeras's -0: same result)
    return x + tf.stop_gradient(_scaled(self.alpha, q) - x)


def _binary_call(self, x):
    """binary(alpha=<number>): -alpha for x < 0, else alpha (0 included, as QKeras)."""
    if not _fixed_alpha(self) or self.use_stochastic_rounding or self.use_01:
        return super(type(self), self).__call__(x)
    import tensorflow as tf

    q = tf.where(x < 0.0, -1.0, 1.0)
    return x + tf.stop_gradient(_scaled(self.alpha, q) - x)


def _sbinary_call(self, x):
    """stochastic_binary(alpha=<number>): while training, +-alpha drawn with
    P(+1) = sigmoid(temperature * x) (one uniform draw per element, as QKeras); binary
    otherwise. QKeras also computes a deterministic sign it then discards."""
    from sweeper.models.qk import quantizers as qk

    phase = qk.K.learning_phase()  # a Python 0/1 under QModel; else QKeras's tf.cond
    if not _fixed_alpha(self) or not self.use_real_sigmoid or not isinstance(phase, int):
        return super(type(self), self).__call__(x)
    import tensorflow as tf

    if not phase:
        return _binary_call(self, x)
    p = tf.sigmoid(self.temperature * x)
    q = tf.sign(p - tf.random.uniform(tf.shape(x)))
    q += 1.0 - tf.abs(q)
    return x + tf.stop_gradient(_scaled(self.alpha, q) - x)


def _fixed_alpha(quantizer) -> bool:
    alpha = quantizer.alpha
    return isinstance(alpha, (int, float)) and not isinstance(alpha, bool)


def _scaled(alpha, q):
    return q if float(alpha) == 1.0 else float(alpha) * q


def activation(preset: Preset):
    """The activation a preset applies after each hidden layer (a QKeras layer)."""
    from sweeper.models.qk import QActivation

    if preset.activation == "relu":
        return QActivation("relu")
    return QActivation(make(preset.activation))

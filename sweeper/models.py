"""Models: QKeras network builders, registered by name, that output logits.

Every builder takes the dataset's input shape and class count and a quantizer preset,
and returns a ``QModel``. Outputs are logits (no softmax): softmax outputs mask
gradients for white-box attacks.
"""

from __future__ import annotations

from typing import Callable

from sweeper.quantizers import Preset, activation, make
from sweeper.registry import Registry

# build(input_shape, nb_classes, preset) -> QModel
ModelBuilder = Callable[[tuple, int, Preset], object]
MODELS: Registry[ModelBuilder] = Registry("model")

_QMODEL_CLASS = None


def qmodel_class():
    """The tf.keras Model subclass all sweeper models use (created on first use, so this
    module imports without TensorFlow).

    QKeras's stochastic quantizers branch on the global ``K.learning_phase()``, which
    TF2's fit loop never sets: left alone, "stochastic" ternary trains exactly like plain
    ternary. ``QModel.call`` sets the learning phase from Keras's ``training`` argument,
    so they sample when training (fit, or ``model(x, training=True)``) and are
    deterministic in evaluation, prediction and attacks.
    """
    global _QMODEL_CLASS
    if _QMODEL_CLASS is None:
        import warnings

        import tensorflow as tf
        from tf_keras.src import backend as keras_backend

        # learning_phase_scope is deprecated for Keras layers, but it is exactly the
        # global QKeras reads; keep its warning out of every forward pass.
        warnings.filterwarnings("ignore", message=".*learning_phase_scope.*deprecated")

        class QModel(tf.keras.Model):
            def call(self, inputs, training=None, mask=None):
                with keras_backend.learning_phase_scope(1 if training else 0):
                    return super().call(inputs, training=training, mask=mask)

        _QMODEL_CLASS = QModel
    return _QMODEL_CLASS


def build(name: str, input_shape: tuple, nb_classes: int, preset: Preset):
    return MODELS.get(name)(tuple(input_shape), nb_classes, preset)


def _qconv(preset: Preset, filters: int, kernel_size: int, strides: int = 1):
    from qkeras import QConv2D

    return QConv2D(filters, kernel_size, strides=strides, padding="same",
                   kernel_quantizer=make(preset.kernel), bias_quantizer=make(preset.bias))


def _qdense(preset: Preset, units: int):
    from qkeras import QDense

    return QDense(units, kernel_quantizer=make(preset.kernel), bias_quantizer=make(preset.bias))


@MODELS.register("small_cnn")
def small_cnn(input_shape: tuple, nb_classes: int, preset: Preset):
    """Two quantized conv blocks and a quantized dense classifier: the demo model
    (about 10k parameters on 8x8 digits)."""
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    x = inputs
    for filters, strides in ((16, 1), (32, 2)):
        x = _qconv(preset, filters, 3, strides)(x)
        # Batch norm keeps ternary/binary activations centred so they train.
        x = tf.keras.layers.BatchNormalization()(x)
        x = activation(preset)(x)
    x = tf.keras.layers.Flatten()(x)
    logits = _qdense(preset, nb_classes)(x)
    return qmodel_class()(inputs, logits, name=f"small_cnn_{preset.name}")

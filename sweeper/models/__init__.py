"""Models: the networks sweeper trains. This module owns the QKeras network builders,
registered by name, that output logits, ``QModel`` (stochastic quantizers stochastic in
training only) and model fingerprints; ``quantizers.py`` the quantizer presets a builder
takes; ``jacobian.py`` what a model's blocks are and its Jacobian norms;
``fingerprint_cache.py`` the fingerprints kept on disk between processes; ``qk.py`` the
one import of QKeras (without Keras 3).

Every builder takes the dataset's input shape and class count and a quantizer preset,
and returns a ``QModel``. Outputs are logits (no softmax): softmax outputs mask
gradients for white-box attacks. TensorFlow and QKeras are imported when a model is
built, never when the package is imported.
"""

from __future__ import annotations

import functools
from typing import Callable

from sweeper.models.quantizers import Preset, activation, make
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


def untuned(dataset):
    """``dataset`` without tf.data's autotuning. Sweeper's pipelines are in-memory
    gathers and batches with fixed buffers, so autotuning has nothing to tune; but its
    background thread is joined when the iterator is destroyed, which waited up to 1.2 s
    at the end of a ``fit`` and about 28 ms at the end of a ``predict`` on this machine,
    with the core idle (``bench/tf_data.py``). Elements and their order are unchanged."""
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def predict_logits(model, x, batch_size: int = 256):
    """The model's outputs on ``x`` in batches (``model.predict`` through an untuned
    pipeline: see ``untuned``)."""
    import tensorflow as tf

    return model.predict(untuned(tf.data.Dataset.from_tensor_slices(x).batch(batch_size)), verbose=0)


def _qconv(preset: Preset, filters: int, kernel_size, strides=1):
    from sweeper.models.qk import QConv2D

    return QConv2D(filters, kernel_size, strides=strides, padding="same",
                   kernel_quantizer=make(preset.kernel), bias_quantizer=make(preset.bias))


def _qdepthwise(preset: Preset, kernel_size, strides=1):
    from sweeper.models.qk import QDepthwiseConv2D

    return QDepthwiseConv2D(kernel_size, strides=strides, padding="same",
                            depthwise_quantizer=make(preset.kernel),
                            bias_quantizer=make(preset.bias))


def _qseparable(preset: Preset, filters: int, kernel_size, strides=1):
    from sweeper.models.qk import QSeparableConv2D

    return QSeparableConv2D(filters, kernel_size, strides=strides, padding="same",
                            depthwise_quantizer=make(preset.kernel),
                            pointwise_quantizer=make(preset.kernel),
                            bias_quantizer=make(preset.bias))


def _qdense(preset: Preset, units: int):
    from sweeper.models.qk import QDense

    return QDense(units, kernel_quantizer=make(preset.kernel), bias_quantizer=make(preset.bias))


def _bn(x):
    import tensorflow as tf

    return tf.keras.layers.BatchNormalization()(x)


def _bn_act(preset: Preset, x):
    """Batch norm then the preset's activation: the block after every hidden layer."""
    return activation(preset)(_bn(x))


def _average_all(x):
    """Average pooling over the whole remaining feature map, flattened (the MLPerf Tiny
    references pool with pool_size = the final spatial size, which adapts to any input)."""
    import tensorflow as tf

    x = tf.keras.layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]))(x)
    return tf.keras.layers.Flatten()(x)


def _halving_strides(x) -> tuple:
    """Stride 2 on each spatial axis still at least 4 long, else 1: small inputs (8x8
    digits, 10-wide MFCCs) stop shrinking instead of collapsing to 1x1."""
    return tuple(2 if size >= 4 else 1 for size in x.shape[1:3])


def _sigmoid(preset: Preset):
    """A sigmoid at the preset's activation bit width (QKeras ``quantized_sigmoid``:
    ternary -> 2 bits, binary -> 1 bit, i.e. a {0, 0.5} mask); float sigmoid at fp."""
    from sweeper.models.qk import QActivation

    if preset.activation == "relu":
        return QActivation("sigmoid")
    return QActivation(make(f"quantized_sigmoid({make(preset.activation).bits})"))


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


def _resnet_stack(preset: Preset, x, filters: int, strides: int):
    """One ResNet v1 stack: two 3x3 convs, the shortcut a strided 1x1 conv (no batch norm,
    as in the reference) where the shape changes, identity otherwise."""
    import tensorflow as tf

    y = _bn_act(preset, _qconv(preset, filters, 3, strides)(x))
    y = _bn(_qconv(preset, filters, 3)(y))
    if strides != 1 or x.shape[-1] != filters:
        x = _qconv(preset, filters, 1, strides)(x)
    return activation(preset)(tf.keras.layers.Add()([y, x]))


@MODELS.register("resnet8")
def resnet8(input_shape: tuple, nb_classes: int, preset: Preset):
    """MLPerf Tiny's image-classification reference ResNet-8 (``resnet_v1_eembc``):
    a 16-filter 3x3 conv, three residual stacks of 16, 32 (stride 2) and 64 (stride 2)
    filters, average pooling over the remaining map, one dense layer. 78,666 parameters
    on 32x32x3 with 10 classes. The reference's L1/L2 kernel regularizers are left out:
    they are a training choice and hold no weights."""
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    x = _bn_act(preset, _qconv(preset, 16, 3)(inputs))
    for filters, strides in ((16, 1), (32, 2), (64, 2)):
        x = _resnet_stack(preset, x, filters, strides)
    logits = _qdense(preset, nb_classes)(_average_all(x))
    return qmodel_class()(inputs, logits, name=f"resnet8_{preset.name}")


@MODELS.register("dscnn")
def dscnn(input_shape: tuple, nb_classes: int, preset: Preset):
    """MLPerf Tiny's keyword-spotting reference DS-CNN (small): a 64-filter (10,4)
    stride-2 conv, four depthwise-separable blocks (3x3 depthwise, 1x1 conv of 64, each
    followed by batch norm and ReLU), average pooling over the remaining map, one dense
    layer. 24,908 parameters on 49x10x1 MFCCs with 12 classes."""
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    x = _bn_act(preset, _qconv(preset, 64, (10, 4), (2, 2))(inputs))
    x = tf.keras.layers.Dropout(0.2)(x)
    for _ in range(4):
        x = _bn_act(preset, _qdepthwise(preset, 3)(x))
        x = _bn_act(preset, _qconv(preset, 64, 1)(x))
    x = tf.keras.layers.Dropout(0.4)(x)
    logits = _qdense(preset, nb_classes)(_average_all(x))
    return qmodel_class()(inputs, logits, name=f"dscnn_{preset.name}")


@MODELS.register("stq_net")
def stq_net(input_shape: tuple, nb_classes: int, preset: Preset):
    """The network of Pau, Ayaz, Zakariyya et al. (2025), "Quantitative Analysis of Deeply
    Quantized Tiny Neural Networks Robust to Adversarial Attacks", as far as it is described.

    Stated by the paper: six convolutional layers, depthwise and separable ones among
    them; a multi-branch topology with residual connections; batch normalization; ReLU
    and sigmoid activations; three fully connected layers; 998,824 parameters for its
    10-class 32x32 grayscale image model.

    Our choices (the paper does not give the layers): the order, widths, kernels and
    strides below; one multi-branch block whose sigmoid branch gates the other branch
    (multiplied in) before the identity shortcut is added; the sigmoid quantized with
    QKeras ``quantized_sigmoid`` at the preset's activation bit width (float at fp),
    deterministic even for stochastic presets; flattening (not pooling) into the dense
    layers, so most weights (about 93%) sit in the first one, as they must for about 1 M
    parameters with so few convolutions; dense widths 228 and 128, picked so the count
    lands on the paper's (999,214 on 32x32x1 with 10 classes, +0.04%).

        conv 3x3/32 -> conv 3x3/64 stride 2                            (each + BN + act)
        block: [depthwise 3x3 + BN + act -> conv 1x1/64 + BN]
               x sigmoid(separable 3x3/64 + BN)  + identity  -> act
        separable 3x3/64 stride 2 + BN + act -> flatten
        dense 228 + act -> dense 128 + act -> dense nb_classes (logits)

    Strides halve only axes at least 4 long, so 8x8 and 49x10 inputs still fit.
    """
    import tensorflow as tf

    inputs = tf.keras.Input(shape=input_shape)
    x = _bn_act(preset, _qconv(preset, 32, 3)(inputs))
    x = _bn_act(preset, _qconv(preset, 64, 3, _halving_strides(x))(x))

    features = _bn_act(preset, _qdepthwise(preset, 3)(x))
    features = _bn(_qconv(preset, 64, 1)(features))
    gate = _sigmoid(preset)(_bn(_qseparable(preset, 64, 3)(x)))
    gated = tf.keras.layers.Multiply()([features, gate])
    x = activation(preset)(tf.keras.layers.Add()([gated, x]))

    x = _bn_act(preset, _qseparable(preset, 64, 3, _halving_strides(x))(x))
    x = tf.keras.layers.Flatten()(x)
    for units in (228, 128):
        x = activation(preset)(_qdense(preset, units)(x))
    logits = _qdense(preset, nb_classes)(x)
    return qmodel_class()(inputs, logits, name=f"stq_net_{preset.name}")


# ---------------------------------------------------------------- fingerprints

def fingerprint(name: str, input_shape: tuple, nb_classes: int, preset: Preset) -> str:
    """A hash of the model a builder makes: every layer's class and configuration (the
    quantizers included) and how the layers connect, without Keras's auto-generated
    names. Part of a training job's id, so a changed architecture or preset never reuses
    old rows or cached weights; the trial recomputes it on the built model and refuses
    to run when it differs (a worker running other code than the driver)."""
    return _fingerprint_cached(name, tuple(input_shape), int(nb_classes), preset)


@functools.lru_cache(maxsize=None)
def _fingerprint_cached(name: str, input_shape: tuple, nb_classes: int, preset: Preset) -> str:
    # Kept on disk too (fingerprint_cache.py): a relaunch of a finished grid then needs
    # no TensorFlow at all.
    from sweeper.models import fingerprint_cache

    key = fingerprint_cache.key(name, MODELS.get(name), input_shape, nb_classes, preset)
    stored = fingerprint_cache.get(key)
    if stored is not None:
        return stored
    computed = _computed_fingerprint(name, input_shape, nb_classes, preset)
    fingerprint_cache.put(key, computed)
    return computed


def _computed_fingerprint(name: str, input_shape: tuple, nb_classes: int, preset: Preset) -> str:
    import warnings

    _import_quietly()
    with warnings.catch_warnings():  # tf-keras warns about unseeded initializers: nothing is trained here
        warnings.simplefilter("ignore")
        return model_fingerprint(build(name, input_shape, nb_classes, preset))


def _import_quietly() -> None:
    """Import TensorFlow and QKeras with the C++ start-up chatter (absl's "All log
    messages before absl::InitializeLog()", the CUDA probe) kept off the terminal: the
    CLI fingerprints models on the driver, where those lines would only confuse.
    SWEEPER_DEBUG=1 lets them through."""
    import os
    import sys

    if "qkeras" in sys.modules or os.environ.get("SWEEPER_DEBUG", "") not in ("", "0"):
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            from sweeper.models import qk  # noqa: F401  (imports TensorFlow and QKeras)
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def model_fingerprint(model) -> str:
    """The fingerprint of a built model (see ``fingerprint``)."""
    import hashlib
    import json
    import re
    import warnings

    index = {id(layer): i for i, layer in enumerate(model.layers)}
    described = []
    with warnings.catch_warnings():  # QKeras quantizers serialise through Keras's constraint API
        warnings.simplefilter("ignore")
        for layer in model.layers:
            config = {k: v for k, v in layer.get_config().items() if k != "name"}
            inbound = [[index[id(parent)] for parent in _as_list(node.inbound_layers)]
                       for node in layer._inbound_nodes]
            described.append([type(layer).__name__, config, inbound])
    text = json.dumps(described, sort_keys=True, default=str)
    text = re.sub(r" at 0x[0-9a-f]+", "", text)  # object addresses, should any slip through
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _as_list(layers) -> list:
    return list(layers) if isinstance(layers, (list, tuple)) else [layers]

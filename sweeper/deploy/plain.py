"""QKeras to plain Keras: ``strip(model)``, the QKeras model as plain tf.keras layers
carrying the quantized weight values, with every activation quantizer replaced by ops the
int8 converter fuses into the producing layer (``deployable_activation``,
``activation_grid`` and its ``Grid``), or a ``DeployError`` naming what cannot deploy.

Activations. TFLite Micro runs int8 tensors; an activation is the requantization of the
producing op's int32 accumulator, clamped by a fused activation (RELU, RELU_N1_TO_1).
``strip`` gives each activation tensor a fixed int8 grid (a FakeQuant with a constant
range) chosen so that this requantization *is* the QKeras quantizer, with no extra op:

* ``quantized_relu(b)``: grid step 2^-b, zero point 2^b - 1 steps below the top of the
  int8 range: the fused RELU clamps below, int8 saturation clamps at 1 - 2^-b, giving
  exactly QKeras's 2^b levels (b <= 8; 4-bit activations still take a byte each);
* ``quantized_sigmoid(b)`` (QKeras's hard sigmoid, round(clip(x/2 + 1/2) 2^b) / 2^b):
  x/2 + 1/2 folded into the producing op, then the same grid: exact;
* ``ternary(alpha=1)``: x scaled by 0.5/threshold (folded), RELU_N1_TO_1, grid step 1:
  round to nearest gives exactly {-1, 0, +1} with QKeras's dead zone |x| < 0.33;
* ``binary(alpha=1)``, ``stochastic_binary`` (deterministic at inference): the same with
  threshold 2^-13, i.e. sign(x) except |x| < 2^-13 gives 0 (QKeras: +1 at 0, -1 just
  below). A smaller threshold needs requantization multipliers whose int32 left shift
  can overflow TFLite's reference kernels (seen at 2^-28);
* ``relu``/``sigmoid`` (fp): RELU and LOGISTIC on the converter's calibrated scales;
* a global average pool reading a quantized activation becomes MEAN: int8
  AVERAGE_POOL_2D keeps its input's scale, so it would round the average of ternary
  values back to {-1, 0, 1} where QKeras averages in float.

What the deployed network computes differently from the QKeras one: the input is
quantized to int8 (scale from the representative samples); weights times their batch
norm factor are requantized to int8, per output channel for convolutions and per tensor
for dense layers (as the MLPerf Tiny references), so ternary, binary and sub-8-bit
weights leave their QKeras grid; biases are int32; pre-activations are int32 accumulators
requantized with fixed-point multipliers, and where an op cannot absorb the scale (an
activation after an Add: resnet8's residual joins, stq_net's gated block) the
pre-activation is itself an int8 tensor, so a ternary/binary decision is taken at its
int8 resolution (and costs a MUL op); exact halfway values round half up (QKeras: half
to even); fp models run int8 activations where QKeras runs float. ``strip``'s float
model already computes the deployed activations: its outputs equal the QKeras model's
except for those ties (frequent after a dense layer whose inputs and weights are both on
dyadic grids) and binary's dead zone. Binary networks amplify any flipped sign layer
after layer: expect their deployed predictions to diverge most.

TensorFlow, tf-keras and QKeras are imported inside functions only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweeper.deploy.common import DeployError

TERNARY_DEFAULT_THRESHOLD = 0.33  # QKeras ternary's threshold when none is given
BINARY_DEAD_ZONE = 2.0 ** -13  # binary deploys as ternary with this threshold (docstring)
PLAIN_LAYERS = {"QConv2D": "Conv2D", "QDepthwiseConv2D": "DepthwiseConv2D",
                "QSeparableConv2D": "SeparableConv2D", "QDense": "Dense"}


def strip(model):
    """The QKeras ``model`` as a plain tf.keras functional model computing the same
    network with its quantized weights (see the module docstring for the activations).

    The caller's model is left untouched: its weights are quantized the way
    ``qkeras.utils.model_save_quantized_weights`` does it (each weight through its
    layer's quantizer, in inference mode), but into the copy. Raises ``DeployError``
    for a layer or quantizer with no deployable counterpart.
    """
    import warnings

    import tensorflow as tf
    import tf_keras

    with warnings.catch_warnings():  # QKeras quantizers serialise through Keras's constraint API
        warnings.simplefilter("ignore")
        clone = tf_keras.models.clone_model(model, clone_function=_plain_layer)
    for layer in model.layers:
        weights = quantized_weights(layer)
        if weights:
            clone.get_layer(layer.name).set_weights(weights)
    return tf.keras.Model(clone.inputs, clone.outputs, name=f"{model.name}_plain")


def quantized_weights(layer) -> list:
    """A layer's weights as its QKeras quantizers map them at inference (unquantized ones
    as they are), the values ``model_save_quantized_weights`` would write."""
    from tf_keras.src import backend as keras_backend

    weights = layer.get_weights()
    if not hasattr(layer, "get_quantizers"):
        return weights
    with keras_backend.learning_phase_scope(0):  # stochastic quantizers: deterministic
        return [np.asarray(quantizer(weight)) if quantizer else weight
                for quantizer, weight in zip(layer.get_quantizers(), weights)]


def _plain_layer(layer):
    """clone_model's clone_function: the plain counterpart of one layer."""
    import tensorflow as tf

    kind = type(layer).__name__
    if kind in PLAIN_LAYERS:
        return getattr(tf.keras.layers, PLAIN_LAYERS[kind]).from_config(_plain_config(layer))
    if kind == "QActivation":
        return deployable_activation(layer.quantizer, layer.name)
    if kind.startswith("Q"):
        raise DeployError(f"{kind} layer {layer.name!r} has no plain Keras counterpart here")
    if kind == "AveragePooling2D" and _global_pool(layer) and _input_grid(layer):
        return _global_mean(layer.name)
    return layer.__class__.from_config(layer.get_config())


def _global_pool(layer) -> bool:
    """An average pool whose window covers its whole input (output 1x1)."""
    return tuple(layer.output_shape[1:3]) == (1, 1)


def _input_grid(layer) -> Grid | None:
    """The grid of the QKeras activation quantizer whose output the layer reads, directly
    or through dropout; None if it reads anything else."""
    parent = layer.inbound_nodes[0].inbound_layers
    while type(parent).__name__ in ("Dropout", "SpatialDropout2D"):
        parent = parent.inbound_nodes[0].inbound_layers
    if type(parent).__name__ != "QActivation" or type(parent.quantizer).__name__ == "function":
        return None
    return activation_grid(parent.quantizer, parent.name)


def _global_mean(name: str):
    """Global average pooling as a MEAN op: int8 AVERAGE_POOL_2D must keep its input's
    scale, which would round the average of ternary values back to {-1, 0, 1} (of 4-bit
    ReLUs to 1/16 steps); MEAN requantizes it to a calibrated scale, as QKeras's float
    average."""
    import tensorflow as tf

    return tf.keras.layers.Lambda(lambda x: tf.reduce_mean(x, axis=(1, 2), keepdims=True),
                                  name=name)


def _plain_config(layer) -> dict:
    """A Q layer's config without what plain layers do not take or QKeras cannot
    deserialize (quantizers, ranges, QInitializer, Clip constraints)."""
    dropped = ("quantizer", "_range", "initializer", "constraint", "regularizer")
    config = {k: v for k, v in layer.get_config().items() if not any(d in k for d in dropped)}
    activation = config.get("activation")
    if activation not in (None, "linear"):
        raise DeployError(f"{type(layer).__name__} {layer.name!r} has a built-in activation "
                          f"{activation!r}; put it in a QActivation layer to deploy")
    return config

# ---------------------------------------------------------------- activations

@dataclass(frozen=True)
class Grid:
    """A deployed activation: x*scale + offset (folded into the producing op), clamped
    by a fused RELU (RELU_N1_TO_1 if ``symmetric``), on the int8 grid [low, high] (255
    steps) whose saturation does the upper clamp."""

    low: float
    high: float
    scale: float = 1.0
    offset: float = 0.0
    symmetric: bool = False

    @classmethod
    def of(cls, step: float, top: int, **kwargs) -> "Grid":
        """The grid of ``step`` whose zero point lies ``top`` steps below the int8 maximum."""
        return cls((top - 255) * step, top * step, **kwargs)

    def layer(self, name: str):
        import tensorflow as tf

        def activation(x):
            if self.scale != 1.0 or self.offset != 0.0:
                x = x * self.scale + self.offset
            return self.snap(tf.clip_by_value(x, -1.0, 1.0) if self.symmetric else tf.nn.relu(x))

        return tf.keras.layers.Lambda(activation, name=name)

    def snap(self, x):
        """x rounded to this grid: TensorFlow's fixed-range int8 quantize-dequantize op, the
        one the converter turns into the tensor's int8 scale and zero point."""
        import tensorflow as tf

        return tf.quantization.fake_quant_with_min_max_args(x, min=self.low, max=self.high)


def deployable_activation(quantizer, name: str):
    """A plain layer computing what an int8 TFLM build of QKeras activation ``quantizer``
    computes (see the module docstring); ``DeployError`` if there is none."""
    import tensorflow as tf

    kind = type(quantizer).__name__
    if kind == "function" and quantizer.__name__ in ("relu", "sigmoid", "linear"):
        return tf.keras.layers.Activation(quantizer.__name__, name=name)
    return activation_grid(quantizer, name).layer(name)


def activation_grid(quantizer, name: str) -> Grid:
    """The int8 grid that reproduces a QKeras activation quantizer (module docstring)."""
    kind = type(quantizer).__name__
    if kind == "quantized_relu":
        _require(quantizer, name, negative_slope=0.0, use_sigmoid=0, is_quantized_clip=True,
                 use_stochastic_rounding=False)
        integer, bits = int(quantizer.integer), _bits(quantizer, name)
        return Grid.of(2.0 ** (integer - bits), 2 ** bits - 1)
    if kind == "quantized_sigmoid":
        _require(quantizer, name, symmetric=False, use_real_sigmoid=False,
                 use_stochastic_rounding=False)
        bits = _bits(quantizer, name)
        return Grid.of(2.0 ** -bits, 2 ** bits - 1, scale=0.5, offset=0.5)
    if kind in ("ternary", "binary", "stochastic_binary"):
        _require_unit_alpha(quantizer, name)
        if kind == "ternary":
            threshold = quantizer.threshold or TERNARY_DEFAULT_THRESHOLD
        else:
            _require(quantizer, name, use_01=False)
            threshold = BINARY_DEAD_ZONE
        return Grid.of(1.0, 254, scale=0.5 / threshold, symmetric=True)
    raise DeployError(f"activation {name!r}: {quantizer} has no int8 TFLite counterpart here")


def _bits(quantizer, name: str) -> int:
    bits = int(quantizer.bits)
    if bits > 8:
        raise DeployError(f"activation {name!r}: {quantizer} needs {bits} bits; int8 holds 8")
    return bits


def _require(quantizer, name: str, **expected) -> None:
    for attribute, value in expected.items():
        if getattr(quantizer, attribute, value) != value:
            raise DeployError(f"activation {name!r}: {quantizer} with {attribute}="
                              f"{getattr(quantizer, attribute)!r} is not supported for int8")


def _require_unit_alpha(quantizer, name: str) -> None:
    alpha = quantizer.alpha
    if not (alpha is None or (not isinstance(alpha, str) and float(alpha) == 1.0)):
        raise DeployError(f"activation {name!r}: {quantizer} needs alpha=1 (a fixed scale) "
                          "for int8; a batch-dependent scale cannot be deployed")

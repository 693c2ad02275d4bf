"""Deployment: a trained QKeras model as a full-int8 TensorFlow Lite Micro build, measured.

This module owns the path from a QKeras model to figures a microcontroller build
actually needs, and to the predictions the deployed network makes:

* ``strip(model)``: the QKeras model as plain Keras layers carrying the quantized weight
  values, with every activation quantizer replaced by ops the int8 converter fuses into
  the producing layer (see "Activations" below);
* ``convert_int8(plain, representative)``: the full-int8 ``.tflite`` flatbuffer (int8
  input and output, logits, batch norm and activations folded into the convolutions);
* ``arena_bytes(flatbuffer)``: the smallest TFLite Micro tensor arena that allocates it
  (bisection with TFLM's own Python interpreter, in a child process: a host build,
  reference kernels);
* ``constant_bytes`` / ``weight_bytes``: the flatbuffer's constant tensors by type (int8
  weights, int32 biases), the figure the MLPerf Tiny references quote;
* ``evaluate(flatbuffer, x, y)``: predictions of the int8 ``.tflite`` (batch of one, as
  on an MCU), for accuracy of the deployed network on clean and adversarial inputs;
* ``deploy(model, representative) -> Deployment``: all of the above for a trial, never
  raising (a failure is a one-line ``error``); ``measure(flatbuffer)``, the same figures
  for a flatbuffer already built (a cached one); ``estimate_ram_bytes(model)``, a fast
  fused-int8 liveness estimate for when conversion fails.

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

TensorFlow, QKeras and tflite-micro are imported inside functions only, so ``import
sweeper.deploy`` stays light.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

TERNARY_DEFAULT_THRESHOLD = 0.33  # QKeras ternary's threshold when none is given
BINARY_DEAD_ZONE = 2.0 ** -13  # binary deploys as ternary with this threshold (docstring)
REPRESENTATIVE_SAMPLES = 256  # calibration samples deploy() uses (conversion time grows with them)
ARENA_SEARCH_MAX = 64 * 1024 * 1024  # bytes; a model needing more is reported as failing
PLAIN_LAYERS = {"QConv2D": "Conv2D", "QDepthwiseConv2D": "DepthwiseConv2D",
                "QSeparableConv2D": "SeparableConv2D", "QDense": "Dense"}


class DeployError(ValueError):
    """A model that cannot be deployed as full int8, with a one-line reason."""


@dataclass(frozen=True)
class Deployment:
    """A model converted to full-int8 TFLite and allocated by TFLite Micro, or why not.

    On failure ``error`` is one line and every figure is None."""

    flatbuffer: bytes | None = None  # the .tflite file
    flatbuffer_bytes: int | None = None  # its size: what goes to flash, besides the runtime
    arena_bytes: int | None = None  # the smallest TFLM tensor arena (host build)
    weight_bytes: int | None = None  # int8 constant tensors (weights)
    bias_bytes: int | None = None  # int32 constant tensors (biases, and a few shape vectors)
    convert_s: float = 0.0  # strip + conversion seconds
    arena_s: float = 0.0  # arena search seconds
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


# ---------------------------------------------------------------- strip

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


# ---------------------------------------------------------------- convert and measure

@contextlib.contextmanager
def quiet():
    """Silence file descriptors 1 and 2 (the converter's C++ chatter, the TFLite
    interpreter's deprecation notice) and Python warnings, for the whole process."""
    import warnings

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def convert_int8(plain_model, representative: np.ndarray) -> bytes:
    """The full-int8 TFLite flatbuffer of a plain Keras model: int8 weights (per channel
    for convolutions), int32 biases, int8 activations calibrated on ``representative``
    (a few hundred training-fold samples, no batch axis per sample), int8 input and
    output. The output stays logits (no softmax is added)."""
    import tensorflow as tf

    samples = np.asarray(representative, dtype=np.float32)
    if len(samples) == 0:
        raise DeployError("no representative samples to calibrate the int8 ranges")

    def dataset():
        for sample in samples:
            yield [sample[None]]

    converter = tf.lite.TFLiteConverter.from_keras_model(plain_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    # Dense layers per tensor, as the MLPerf Tiny references and older TFLM/CMSIS-NN
    # builds (per-channel FULLY_CONNECTED costs ~8 B of arena per output unit).
    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    with quiet():
        flatbuffer = _rescale_biases(bytes(converter.convert()))
    floating = float_ops(flatbuffer)
    if floating:
        raise DeployError(f"the converter left float ops, not deployable as int8: "
                          f"{', '.join(floating[:8])}{'...' if len(floating) > 8 else ''}")
    return flatbuffer


def _rescale_biases(flatbuffer: bytes) -> bytes:
    """The flatbuffer with every conv/dense bias at scale input_scale * weight_scale, the
    scale TFLite's kernels assume. The converter quantizes some biases with the input's
    calibrated range instead of its FakeQuant grid (a dense layer after Flatten, a layer
    without batch norm after a grid activation): TFLM then rejects the op (per tensor)
    or silently scales the bias wrong (per channel). Edited in place: same sizes."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    data = bytearray(flatbuffer)
    model = schema.Model.GetRootAs(data, 0)
    subgraph = model.Subgraphs(0)
    for op in _ops_with_bias(model, subgraph, schema):
        source, weights, bias = (subgraph.Tensors(int(i)) for i in op.InputsAsNumpy()[:3])
        source_scale = np.float32(source.Quantization().ScaleAsNumpy()[0])
        want = source_scale * weights.Quantization().ScaleAsNumpy()
        scale = bias.Quantization().ScaleAsNumpy()  # views into ``data``: writable
        if np.allclose(scale, want, rtol=1e-6, atol=0):
            continue
        values = model.Buffers(bias.Buffer()).DataAsNumpy().view("<i4")
        rescaled = np.round(values * (scale.astype(np.float64) / want))
        if np.abs(rescaled).max(initial=0) >= 2 ** 31:
            raise DeployError("a bias overflows int32 at scale input x weight")
        if not np.array_equal(rescaled, values):  # zero biases (often shared) stay as they are
            if _buffer_users(subgraph, bias.Buffer()) > 1:
                raise DeployError("a mis-scaled bias shares its buffer with another tensor")
            values[:] = rescaled
        scale[:] = np.broadcast_to(want, scale.shape)
    return bytes(data)


def _ops_with_bias(model, subgraph, schema) -> list:
    """Operators taking (input, weights, bias): CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED."""
    kinds = {schema.BuiltinOperator.CONV_2D, schema.BuiltinOperator.DEPTHWISE_CONV_2D,
             schema.BuiltinOperator.FULLY_CONNECTED}
    found = []
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        if max(code.BuiltinCode(), code.DeprecatedBuiltinCode()) in kinds \
                and op.InputsLength() > 2 and op.Inputs(2) >= 0:
            found.append(op)
    return found


def _buffer_users(subgraph, buffer: int) -> int:
    return sum(subgraph.Tensors(t).Buffer() == buffer for t in range(subgraph.TensorsLength()))


def float_ops(flatbuffer: bytes) -> list[str]:
    """Names of the ops reading or writing a float32 tensor, once each, in graph order
    (the converter keeps ops it cannot quantize in float, between DEQUANTIZE/QUANTIZE)."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    op_names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    found: list[str] = []
    subgraph = model.Subgraphs(0)
    for i in range(subgraph.OperatorsLength()):
        op = subgraph.Operators(i)
        tensors = [*op.InputsAsNumpy(), *op.OutputsAsNumpy()] if op.InputsLength() else []
        if any(t >= 0 and subgraph.Tensors(t).Type() == schema.TensorType.FLOAT32 for t in tensors):
            code = model.OperatorCodes(op.OpcodeIndex())
            name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
            found += [] if name in found else [name]
    return found


def arena_bytes(flatbuffer: bytes, timeout_s: float = 300.0) -> int:
    """The smallest TFLite Micro tensor arena (bytes) that allocates ``flatbuffer``, by
    bisection: the figure ``print_allocations`` reports as "Arena allocation total".
    Host build: 64-bit structs and reference kernels (no CMSIS-NN scratch buffers).

    TFLM's Python interpreter crashes the process (segmentation fault) on some arena
    sizes that are too small, so the search runs in a child process that imports only
    tflite-micro and tries each size in a forked grandchild (POSIX only)."""
    import subprocess

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "sweeper.deploy", "arena"], input=flatbuffer,
                          capture_output=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONPATH": path})
    answer = done.stdout.decode().strip()
    if done.returncode != 0 or not answer.isdigit():
        reason = (done.stderr.decode().strip().splitlines() or [answer or "no answer"])[-1]
        raise DeployError(f"TFLM arena search failed: {reason}")
    return int(answer)


def _search_arena(flatbuffer: bytes) -> int:
    """Bisection over arena sizes (runs in the child process ``arena_bytes`` starts)."""
    high = 4096
    while not _allocates(flatbuffer, high):
        if high >= ARENA_SEARCH_MAX:
            raise DeployError(f"TFLM cannot allocate the model in {ARENA_SEARCH_MAX} bytes: "
                              f"{_allocation_failure(flatbuffer)}")
        high *= 2
    low = 0  # the largest size known to fail (0 always does)
    while high - low > 1:
        middle = (low + high) // 2
        if _allocates(flatbuffer, middle):
            high = middle
        else:
            low = middle
    return high


def _allocates(flatbuffer: bytes, size: int, log: int | None = None) -> bool:
    """Whether TFLM allocates the model in ``size`` bytes, tried in a forked process (a
    crash counts as no) with its output (e.g. "Failed to resize buffer") sent to the
    file descriptor ``log``, or silenced."""
    pid = os.fork()
    if pid == 0:  # the child: try, and report through the exit status only
        status = 1
        try:
            target = os.open(os.devnull, os.O_WRONLY) if log is None else log
            os.dup2(target, 1)
            os.dup2(target, 2)
            from tflite_micro.python.tflite_micro import runtime

            runtime.Interpreter.from_bytes(flatbuffer, arena_size=size)
            status = 0
        except BaseException as exc:
            print(one_line(exc), file=sys.stderr, flush=True)
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _allocation_failure(flatbuffer: bytes) -> str:
    """What TFLM says when even the largest arena fails (typically an op it lacks)."""
    import tempfile

    with tempfile.TemporaryFile() as log:
        _allocates(flatbuffer, ARENA_SEARCH_MAX, log.fileno())
        log.seek(0)
        lines = [line.strip() for line in log.read().decode(errors="replace").splitlines()]
    found = [line for line in lines if "find op" in line or "not supported" in line.lower()]
    return (found or [line for line in lines if line] or ["TFLM gave no reason (it crashed)"])[0]


def constant_bytes(flatbuffer: bytes) -> dict[str, int]:
    """Bytes of the flatbuffer's constant tensors by TFLite type, e.g. {"INT8": weights,
    "INT32": biases and shape vectors}; each buffer counted once."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = schema.Model.GetRootAs(flatbuffer, 0)
    type_names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    sizes: dict[int, tuple[str, int]] = {}
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        for t in range(subgraph.TensorsLength()):
            tensor = subgraph.Tensors(t)
            buffer = model.Buffers(tensor.Buffer())
            size = buffer.DataLength() or int(buffer.Size())  # Size: data outside the flatbuffer
            if tensor.Buffer() > 0 and size:
                sizes[tensor.Buffer()] = (type_names[tensor.Type()], size)
    totals: dict[str, int] = {}
    for type_name, size in sizes.values():
        totals[type_name] = totals.get(type_name, 0) + size
    return totals


def weight_bytes(flatbuffer: bytes) -> int:
    """Bytes of int8 constant tensors: the weights of a full-int8 model (what MLPerf Tiny
    quotes as "int8 weights"; biases are int32 and counted apart)."""
    return constant_bytes(flatbuffer).get("INT8", 0)


# ---------------------------------------------------------------- run

@dataclass(frozen=True)
class Evaluation:
    """Predicted labels of the deployed network, and their accuracy if labels were given."""

    predictions: np.ndarray
    accuracy: float | None = None


def evaluate(flatbuffer: bytes, x: np.ndarray, y: np.ndarray | None = None) -> Evaluation:
    """Run the int8 ``.tflite`` with TensorFlow's TFLite interpreter and its reference
    kernels (those TFLM's are ported from), one sample at a time (as on an MCU): float
    inputs are quantized with the input tensor's scale and zero point, the label is the
    argmax of the int8 logits. ``accuracy`` is set when labels ``y`` are given."""
    import tensorflow as tf

    with quiet():  # tf.lite.Interpreter's deprecation warning and delegate banner
        interpreter = tf.lite.Interpreter(  # reference kernels, as TFLM's, and no XNNPACK
            model_content=flatbuffer, num_threads=1,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    quantized = quantize_input(np.asarray(x, dtype=np.float32), source)
    predictions = np.empty(len(quantized), dtype=np.int64)
    for i, sample in enumerate(quantized):
        interpreter.set_tensor(source["index"], sample[None])
        interpreter.invoke()
        predictions[i] = int(np.argmax(interpreter.get_tensor(target["index"])[0]))
    accuracy = None if y is None else float(np.mean(predictions == np.asarray(y)))
    return Evaluation(predictions, accuracy)


def quantize_input(x: np.ndarray, details: dict) -> np.ndarray:
    """Float samples as the int8 input tensor expects them."""
    scale, zero_point = details["quantization"]
    if details["dtype"] != np.int8 or not scale:
        raise DeployError(f"the model's input is {details['dtype'].__name__}, not quantized int8")
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)


# ---------------------------------------------------------------- for the trial

def deploy(model, representative: np.ndarray) -> Deployment:
    """Strip, convert to full int8 and measure ``model``, calibrating on the first
    ``REPRESENTATIVE_SAMPLES`` of ``representative`` (training-fold samples). Never
    raises: a model that cannot be deployed gives a one-line ``error`` and no figures."""
    started = time.perf_counter()
    try:
        flatbuffer = convert_int8(strip(model), representative[:REPRESENTATIVE_SAMPLES])
    except Exception as exc:  # the converter raises many types; the trial must go on
        return Deployment(convert_s=time.perf_counter() - started, error=one_line(exc))
    return measure(flatbuffer, convert_s=time.perf_counter() - started)


def measure(flatbuffer: bytes, convert_s: float = 0.0) -> Deployment:
    """The figures of an int8 flatbuffer already built (e.g. one kept in a cache): its
    size, constants and TFLM arena. Never raises (a failed arena search is ``error``)."""
    started = time.perf_counter()
    try:
        arena = arena_bytes(flatbuffer)
        constants = constant_bytes(flatbuffer)
    except Exception as exc:
        return Deployment(convert_s=convert_s, arena_s=time.perf_counter() - started,
                          error=one_line(exc))
    return Deployment(flatbuffer=flatbuffer, flatbuffer_bytes=len(flatbuffer), arena_bytes=arena,
                      weight_bytes=constants.get("INT8", 0), bias_bytes=constants.get("INT32", 0),
                      convert_s=convert_s, arena_s=time.perf_counter() - started)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def estimate_ram_bytes(model) -> int:
    """Peak bytes of live int8 activation tensors for one batch-1 inference, with batch
    norm, activations and dropout fused into the op that produced their input (as the
    converter does) and 1 byte per element: an estimate of the arena's activation part,
    for when conversion fails. It leaves out the arena's persistent part (tensor and op
    structs, quantization parameters: a few KB) and any unfused op a deployment adds."""
    from sweeper.footprint import peak_activation_bits

    return peak_activation_bits(model, fused=True, bits=8) // 8


if __name__ == "__main__" and sys.argv[1:] == ["arena"]:  # arena_bytes's child process
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401  (once, before forking)

    try:
        print(_search_arena(sys.stdin.buffer.read()))
    except DeployError as exc:
        sys.exit(str(exc))

"""Conversion and the flatbuffer's contents: ``convert_int8(plain, representative)``, the
full-int8 ``.tflite`` flatbuffer of a plain Keras model (int8 input and output, logits,
batch norm and activations folded into the convolutions), with every conv/dense bias
rescaled to the scale TFLite's kernels assume (``_rescale_biases``) and no float op left
(``float_ops``); ``constant_bytes`` / ``weight_bytes``, the flatbuffer's constant tensors
by type (int8 weights, int32 biases), the figure the MLPerf Tiny references quote.

TensorFlow and tflite-micro's flatbuffer schema are imported inside functions only.
"""

from __future__ import annotations

import numpy as np

from sweeper.deploy.common import DeployError, quiet


def convert_int8(plain_model, representative: np.ndarray, via_saved_model: bool = False) -> bytes:
    """The full-int8 TFLite flatbuffer of a plain Keras model: int8 weights (per channel
    for convolutions), int32 biases, int8 activations calibrated on ``representative``
    (a few hundred training-fold samples, no batch axis per sample), int8 input and
    output. The output stays logits (no softmax is added).

    By default the converter reads the model's frozen batch-1 graph: about 8x faster
    than ``from_keras_model`` (which saves and reloads a SavedModel, ~1 s a model), and
    grappler folds a Flatten before a dense layer into FULLY_CONNECTED (one RESHAPE op
    and its tensors fewer). ``via_saved_model=True`` takes ``from_keras_model``'s path,
    which gives the graph the MLPerf Tiny reference files have (tests/test_deploy.py)."""
    import tensorflow as tf

    samples = np.asarray(representative, dtype=np.float32)
    if len(samples) == 0:
        raise DeployError("no representative samples to calibrate the int8 ranges")

    def dataset():
        for sample in samples:
            yield [sample[None]]

    if via_saved_model:
        converter = tf.lite.TFLiteConverter.from_keras_model(plain_model)
    else:
        spec = tf.TensorSpec([1, *plain_model.input_shape[1:]], tf.float32)
        call = tf.function(lambda x: plain_model(x, training=False), input_signature=[spec])
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [call.get_concrete_function()], plain_model)
        converter.experimental_lower_to_saved_model = False
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

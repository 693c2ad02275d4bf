"""Packed INT4 filters: ``int4_flatbuffer(int8_flatbuffer)``, the int8 build with every
filter whose values fit 4 bits retyped INT4 and packed two to a byte, the layout TFLM's
conv, depthwise and fully connected kernels accept (tflite-micro PRs 1547, 2314; the
converter never emits it, so the flatbuffer is rewritten).

Packing (``pack``): the tensor's int8 values in row-major order, two per byte, the
first of each pair in the low nibble, an odd last value alone in a low nibble: the
inverse of ``tflite::tensor_utils::UnpackDenseInt4IntoInt8`` (tensorflow/lite/kernels/
internal/portable_tensor_utils.cc), which the reference kernels call.

Which filters fit (``divisors``). The int8 build spreads every quantization channel
over +-127 (symmetric int8 quantization), so a sub-byte QKeras filter arrives as, e.g.,
ternary {-127, 0, 127}, and a 4-bit grid k/8 as round(127 k / max|k|), usually not a
multiple of anything. A channel packs when its values are d x k with k in [-8, 7] for
one integer d (the gcd of its non-zero magnitudes): its values become k and its scale d
times larger. With d = 1 nothing else changes and the INT4 build computes exactly what
the int8 build does. With d > 1 it computes a different network: the int32 bias must be
divided by d too (rounded, unless d divides it), and TFLM's fixed-point requantization
rounds the d-times-smaller accumulator at the same place, losing log2(d) bits of it
(e.g. an output of 0.4969 came out 1 instead of 0). A ternary or binary network
amplifies every flipped activation, so ``builds`` measures the effect and refuses the
build unless it predicts exactly as the int8 build does.

The cost: TFLM's reference kernels unpack each INT4 filter into an arena scratch buffer
of its unpacked size before computing, so on a host build the arena grows much as a LUT
build's does; CMSIS-NN's s4 kernels (arm_convolve_s4, arm_fully_connected_s4) read the
packed filter directly.
"""

from __future__ import annotations

import numpy as np

from sweeper.deploy.common import DeployError
from sweeper.deploy.filters import Filter, filter_ops, filters, read, scales, write

INT4_MIN, INT4_MAX = -8, 7


def pack(values: np.ndarray) -> bytes:
    """Signed 4-bit values (row-major) two per byte, the first in the low nibble."""
    flat = np.asarray(values, dtype=np.int64).ravel()
    if flat.size and (flat.min() < INT4_MIN or flat.max() > INT4_MAX):
        raise ValueError(f"values outside [{INT4_MIN}, {INT4_MAX}]")
    nibbles = (flat & 0xF).astype(np.uint8)
    if len(nibbles) % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8).tobytes()


def unpack(packed: bytes, count: int) -> np.ndarray:
    """``UnpackDenseInt4IntoInt8``: ``count`` signed values from packed nibbles."""
    data = np.frombuffer(packed, dtype=np.uint8).astype(np.int64)
    nibbles = np.stack([data & 0xF, data >> 4], axis=1).ravel()[:count]
    return np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)


def divisors(item: Filter) -> np.ndarray | None:
    """Per row, the integer d that maps the row onto [-8, 7] (values / d), or None if
    some row has none."""
    found = []
    for row in item.channels:
        magnitudes = np.unique(np.abs(row[row != 0]))
        d = int(np.gcd.reduce(magnitudes)) if len(magnitudes) else 1
        if row.min() // d < INT4_MIN or row.max() // d > INT4_MAX:
            return None
        found.append(d)
    return np.array(found, dtype=np.int64)


def int4_flatbuffer(int8_flatbuffer: bytes) -> tuple[bytes, str]:
    """The INT4 flatbuffer and a one-line summary (filters packed, largest divisor, biases
    not divisible), or ``DeployError`` if no filter fits 4 bits."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    model = read(int8_flatbuffer)
    ops = dict(filter_ops(model))
    everything = filters(model)
    packable = [(item, d) for item in everything if (d := divisors(item)) is not None]
    if not packable:
        raise DeployError("no filter fits 4 bits: every one has a channel whose int8 values "
                          "are not an integer multiple of values in [-8, 7]")
    inexact, largest, biases_done = 0, 1, set()
    for item, d in packable:
        tensor = ops[item.op_index].inputs[1]
        values = tensor.array.astype(np.int64)
        per_value = d.reshape([-1 if i == item.axis else 1 for i in range(values.ndim)]) \
            if item.axis is not None else d[0]
        _own_buffer(tensor, pack(values // per_value))
        tensor.dtype = schema.TensorType.INT4
        _rescale(tensor, d)
        largest = max(largest, int(d.max()))
        for _, op in filter_ops(model):
            bias = op.inputs[2] if len(op.inputs) > 2 else None
            if op.inputs[1] is tensor and bias is not None and id(bias) not in biases_done:
                biases_done.add(id(bias))
                inexact += _divide_bias(bias, d)
    summary = f"{len(packable)} of {len(everything)} filters packed"
    if largest > 1:
        summary += (f", rescaled by up to {largest}x ({inexact} bias values not divisible, "
                    "rounded)")
    return write(model), summary


def _own_buffer(tensor, data: bytes) -> None:
    """Give ``tensor`` its own buffer holding ``data`` (a buffer may be shared)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    tensor.buffer = model_editor.Buffer(data=data)


def _rescale(tensor, d: np.ndarray) -> None:
    """Multiply a tensor's scales by its rows' divisors."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    quantization = tensor.quantization
    scaled = scales(tensor) * d if len(d) > 1 else scales(tensor) * d[0]
    tensor.quantization = model_editor.Quantization(
        scales=[float(np.float32(s)) for s in scaled], zero_points=quantization.zero_points,
        axis=quantization.axis)


def _divide_bias(bias, d: np.ndarray) -> int:
    """Divide an int32 bias by its filter's divisors (rounded) and rescale it to input
    scale x new filter scale; returns how many values d did not divide."""
    if bias.buffer is None or d.max() == 1:
        return 0
    values = bias.array.astype(np.int64)
    per_value = np.broadcast_to(d, values.shape) if len(d) > 1 else d[0]
    divided = np.round(values / per_value).astype(np.int64)
    if np.abs(divided).max(initial=0) >= 2 ** 31:
        raise DeployError("a bias overflows int32 after dividing by the 4-bit divisor")
    _own_buffer(bias, divided.astype("<i4").tobytes())
    _rescale(bias, d)
    return int(np.sum(divided * per_value != values))

"""The filter tensors of an int8 flatbuffer, as the sub-byte builds see them, and the
flatbuffer editing they share: ``filters(model)`` lists every constant int8 weight tensor
of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED op with its values grouped by the
channels its quantization has (``Filter``); ``read``/``write`` edit a flatbuffer with
the model editor in the tflite-micro wheel and re-align it with the wheel's C++ tool
(the Python flatbuffers library ignores the schema's ``force_align``: TFLite's own
compression tool does the same).

The values are the *int8 build's*: batch norm folded in and requantized per output
channel (convolutions) or per tensor (dense layers). That is what a sub-byte build has
to store exactly, whatever the QKeras weights were.

tflite-micro is imported inside functions only.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

import numpy as np

# The ops whose inputs are (input, filter, bias): the ones TFLM's int4 kernels cover
FILTER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class Filter:
    """One filter tensor: the op reading it, and its int8 values.

    ``channels`` holds one row per quantization channel: per output channel when the
    tensor has a scale per channel (a row per slice along ``axis``, the quantized
    dimension: 0 for CONV_2D, 3 for DEPTHWISE_CONV_2D), one row for the whole tensor
    when it has a single scale (dense layers here). A value table, a packing divisor or
    a scale can only differ between rows, never within one."""

    op: str  # CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED
    op_index: int
    tensor: int  # index in subgraph 0
    shape: tuple
    axis: int | None  # the quantized dimension, None when per tensor
    channels: np.ndarray  # int64 [rows, values per row]

    @property
    def distinct(self) -> int:
        """The most distinct values any row holds: what a LUT's table must hold."""
        return max(len(np.unique(row)) for row in self.channels)

    @property
    def size(self) -> int:
        return int(self.channels.size)


def read(flatbuffer: bytes):
    """The flatbuffer as the wheel's editable model (``model_editor.Model``)."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    return model_editor.read(flatbuffer)


def write(model) -> bytes:
    """An edited model as an aligned flatbuffer, with buffers no tensor uses dropped."""
    from tflite_micro.tensorflow.lite.micro.compression import model_editor

    model_editor.prune_buffers(model)
    return align(bytes(model.build()))


def align(flatbuffer: bytes) -> bytes:
    """The flatbuffer re-packed by the wheel's C++ flatbuffers tool, which honours the
    schema's buffer alignment (the Python builder does not)."""
    from tflite_micro.tensorflow.lite.micro.tools import tflite_flatbuffer_align_wrapper

    with tempfile.TemporaryDirectory() as directory:
        source, target = os.path.join(directory, "in.tflite"), os.path.join(directory, "out.tflite")
        with open(source, "wb") as file:
            file.write(flatbuffer)
        tflite_flatbuffer_align_wrapper.align_tflite_model(source, target)
        with open(target, "rb") as file:
            return file.read()


def filter_ops(model) -> list:
    """(index, op) of subgraph 0's CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED ops."""
    return [(i, op) for i, op in enumerate(model.subgraphs[0].operators)
            if op.opcode_name in FILTER_OPS]


def filters(model) -> list[Filter]:
    """Every constant int8 filter tensor of subgraph 0, in graph order, once each."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    found, seen = [], set()
    for index, op in filter_ops(model):
        tensor = op.inputs[1]
        if tensor is None or tensor.buffer is None or not tensor.buffer.data \
                or tensor.dtype != schema.TensorType.INT8 or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        values = tensor.array.astype(np.int64)
        axis = channel_axis(tensor)
        rows = values.reshape(1, -1) if axis is None else np.moveaxis(values, axis, 0).reshape(
            values.shape[axis], -1)
        found.append(Filter(op.opcode_name, index, tensor.index, tuple(values.shape), axis, rows))
    return found


def channel_axis(tensor) -> int | None:
    """The quantized dimension of a tensor with a scale per channel; None for one scale."""
    scales = np.atleast_1d(np.asarray(tensor.quantization.scales))
    return None if len(scales) == 1 else int(tensor.quantization.axis or 0)


def scales(tensor) -> np.ndarray:
    """A tensor's quantization scales as float64 (one per channel, or one)."""
    return np.atleast_1d(np.asarray(tensor.quantization.scales, dtype=np.float64))

"""Multiply-accumulates per inference, counted exactly from a converted graph:
``mac_counts(flatbuffer)`` per op type, ``macs(flatbuffer)`` their total.

Counted, batch 1, from the tensors' shapes in the flatbuffer:

- CONV_2D: out_h x out_w x out_c x k_h x k_w x in_c (one MAC per filter tap per output);
- DEPTHWISE_CONV_2D: out_h x out_w x out_c x k_h x k_w;
- FULLY_CONNECTED: outputs x inputs (units x accumulation depth, per batch row);
- element-wise ADD, SUB, MUL: one per output element (a residual join, a gate).

Not counted: pooling and MEAN (additions without multiplies), activations, SOFTMAX,
LOGISTIC, QUANTIZE/DEQUANTIZE, RESHAPE and other data movement, DECODE (a LUT build's
table look-ups). The requantization every int8 op does per output element is part of
the op, not a MAC.

Against the published figures (silabs/mltk model docstrings, ``mltk summarize
--tflite``): MLPerf Tiny's ResNet-8 "Total MACs: 12.502 M" and DS-CNN "2.657 M"
(keyword_spotting.py, 50x10 input; 49x10 gives the same output shapes). MLTK counts an
ADD as 0 MACs, so sweeper's resnet8 has 12,501,632 from its convolutions and dense
layer, as MLTK, plus 28,672 from its three residual ADDs: 12,530,304.

tflite-micro's flatbuffer schema is imported inside functions only.
"""

from __future__ import annotations

from math import prod

ELEMENTWISE = ("ADD", "SUB", "MUL")
# The published counts (MLTK docstrings, "Total MACs", rounded to 1k), and sweeper's exact
# counts of the same networks (its resnet8 and dscnn, tests/test_resources.py checks both).
PUBLISHED_MACS = {"resnet8": 12_502_000, "dscnn": 2_657_000}
REFERENCE_MACS = {"resnet8": 12_530_304, "dscnn": 2_656_768}
COUNTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", *ELEMENTWISE)


def mac_counts(flatbuffer: bytes) -> dict[str, int]:
    """MACs per counted op type (only the types the graph has), batch 1."""
    from sweeper.deploy.filters import read

    counts: dict[str, int] = {}
    for op in read(flatbuffer).subgraphs[0].operators:
        name = op.opcode_name
        if name in COUNTED:
            counts[name] = counts.get(name, 0) + op_macs(name, op)
    return counts


def macs(flatbuffer: bytes) -> int:
    """Total multiply-accumulates of one inference (see the module docstring)."""
    return sum(mac_counts(flatbuffer).values())


def op_macs(name: str, op) -> int:
    """One op's MACs from its output and filter shapes."""
    output = _shape(op.outputs[0])
    if name in ELEMENTWISE:
        return prod(output)
    kernel = _shape(op.inputs[1])
    if name == "CONV_2D":  # output [1, h, w, c_out], filter [c_out, k_h, k_w, c_in]
        return prod(output) * prod(kernel[1:])
    if name == "DEPTHWISE_CONV_2D":  # filter [1, k_h, k_w, c_out]
        return prod(output) * kernel[1] * kernel[2]
    return prod(output) * kernel[-1]  # FULLY_CONNECTED: filter [units, depth]


def _shape(tensor) -> tuple:
    """A tensor's shape as Python ints (no int32 overflow), an unknown (-1) batch as 1."""
    return tuple(1 if d < 0 else int(d) for d in tensor.shape)

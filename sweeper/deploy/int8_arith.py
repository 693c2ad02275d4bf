"""The fixed-point arithmetic of TFLite's reference int8 kernels, for the numpy port
(``sweeper.deploy.int8_numpy`` and ``int8_pooling``): ``QuantizeMultiplier``,
gemmlowp's ``SaturatingRoundingDoublingHighMul`` and ``RoundingDivideByPOT``, the double-
and single-rounding ``MultiplyByQuantizedMultiplier`` (``Scaler``: its per-channel
constants prepared once, in-place int64 passes), int32 wrap-around, the quantized
activation range and clamp, TFLite's padding; and ``Unsupported``, what the port raises
for anything it does not cover.
"""

from __future__ import annotations

import math

import numpy as np


class Unsupported(ValueError):
    """The flatbuffer has an op, type or layout the port does not cover (the message says which)."""


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite's ``QuantizeMultiplier``: (Q31 significand, shift) of a double multiplier."""
    if real == 0.0:
        return 0, 0
    q, shift = math.frexp(real)
    q_fixed = int(math.floor(abs(q) * 2 ** 31 + 0.5)) * (1 if q >= 0 else -1)  # TfLiteRound
    if q_fixed == 2 ** 31:
        q_fixed, shift = q_fixed // 2, shift + 1
    if shift < -31:
        return 0, 0
    return q_fixed, shift


def wrap32(x: np.ndarray) -> np.ndarray:
    """int64 values reduced to int32 with two's-complement wrap-around (C++ int32 arithmetic)."""
    return ((x + 2 ** 31) & (2 ** 32 - 1)) - 2 ** 31


def saturating_rounding_doubling_high_mul(a: np.ndarray, b) -> np.ndarray:
    """gemmlowp's: (ab + nudge) / 2^31 truncated toward zero, nudge 2^30 for ab >= 0 and
    1 - 2^30 below, which is (ab + 2^30) >> 31 (a floor) for either sign: one add and one
    shift (tests/test_int8_numpy.py checks it against the literal definition). b is a
    non-negative multiplier, so gemmlowp's saturation (both INT32_MIN) never applies."""
    return (a * b + (1 << 30)) >> 31


def rounding_divide_by_pot(x: np.ndarray, exponent) -> np.ndarray:
    """gemmlowp's: x / 2^exponent rounded half away from zero, as
    (x + 2^(exponent-1) - [x < 0]) >> exponent (for exponent 0: x)."""
    exponent = np.asarray(exponent, dtype=np.int64)
    positive = exponent > 0
    half = np.where(positive, np.int64(1) << np.maximum(exponent - 1, 0), 0)
    return (x + half - ((x < 0) & positive)) >> exponent


def multiply_by_quantized_multiplier(x: np.ndarray, multiplier, shift) -> np.ndarray:
    """TFLite's double-rounding ``MultiplyByQuantizedMultiplier`` on int32 values (int64
    arrays); multiplier and shift broadcast (one per channel, along the last axis)."""
    return Scaler(multiplier, shift)(np.array(x, dtype=np.int64))


class Scaler:
    """``MultiplyByQuantizedMultiplier`` (double rounding) with its per-channel constants
    prepared once: x << left (wrapped to int32 when a left shift could overflow),
    SaturatingRoundingDoublingHighMul, RoundingDivideByPOT, plus ``offset`` (the output
    zero point) folded into the rounding constant: (v + offset x 2^right) >> right is
    (v >> right) + offset, one pass fewer."""

    def __init__(self, multiplier, shift, offset: int = 0):
        shift = np.asarray(shift, dtype=np.int64)
        self.multiplier = np.asarray(multiplier, dtype=np.int64)
        self.left = np.maximum(shift, 0) if np.any(shift > 0) else None
        right = np.maximum(-shift, 0)
        self.right, self.positive = right, (right > 0).astype(np.int64)
        self.half = np.where(self.positive, np.int64(1) << np.maximum(right - 1, 0), 0) + (offset << right)
        self.all_positive = bool(np.all(right > 0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The scaled values of x (int64; overwritten: in-place passes, the hot loop)."""
        if self.left is not None:  # int32 x << left wraps in C++: so here
            x = wrap32(x << self.left)
        x *= self.multiplier
        x += 1 << 30
        x >>= 31
        sign = x >> 63  # -1 below zero, else 0: the "- [x < 0]" without a bool cast
        if not self.all_positive:
            sign *= self.positive
        x += self.half
        x += sign
        x >>= self.right
        return x


def activation_range(activation: str, output) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` for an int8 output."""
    def quantize(value: float) -> int:
        q = np.float32(value) / np.float32(output.scale)  # float division, as TFLite's
        return output.zero_point + int(math.floor(abs(q) + 0.5)) * (1 if q >= 0 else -1)

    ranges = {"NONE": (-128, 127), "RELU": (max(-128, quantize(0.0)), 127),
              "RELU6": (max(-128, quantize(0.0)), min(127, quantize(6.0))),
              "RELU_N1_TO_1": (max(-128, quantize(-1.0)), min(127, quantize(1.0)))}
    if activation not in ranges:
        raise Unsupported(f"fused activation {activation}")
    return ranges[activation]


def clamped(out: np.ndarray, low: int, high: int) -> np.ndarray:
    """out (int64, overwritten) clamped to [low, high], as int8."""
    np.clip(out, low, high, out=out)
    return out.astype(np.int8)


def multiply_by_quantized_multiplier_single(x: np.ndarray, multiplier, shift) -> np.ndarray:
    """The single-rounding ``MultiplyByQuantizedMultiplier`` (x * multiplier rounded half
    up at bit 31 - shift, in int64), which the interpreter's FULLY_CONNECTED applies: its
    outputs match this bit for bit where the double-rounding one gives others on ties."""
    total = 31 - np.asarray(shift, dtype=np.int64)
    return wrap32((x * multiplier + (np.int64(1) << (total - 1))) >> total)


def padding(size: int, stride: int, dilation: int, kernel: int, same: bool) -> tuple[int, int]:
    """(output size, top/left pad) as TFLite's ``ComputePaddingHeightWidth``."""
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride if same else (size - effective + stride) // stride
    pad = max((out - 1) * stride + effective - size, 0) // 2 if same else 0
    return out, pad

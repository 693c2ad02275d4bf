"""MEAN and AVERAGE_POOL_2D for the numpy port of TFLite's reference int8 kernels
(``sweeper.deploy.int8_numpy``; the arithmetic is int8_arith's): ``resnet8``'s and ``dscnn``'s
global average pooling, MEAN over height and width at every quantized preset and
AVERAGE_POOL_2D at ``fp``.

MEAN: the sum of (input - input zero point) over height and width, requantized once by
input scale / (output scale x element count) (``MultiplyByQuantizedMultiplier``, double
rounding), plus the output zero point, clamped (dividing by the count apart, before or
after the scaling, gave other outputs on resnet8's builds: found by comparing variants
with the interpreter's MEAN output). AVERAGE_POOL_2D
(``reference_integer_ops::AveragePool``): the raw int8 values summed over the in-image
taps of each window, divided by their count rounding half away from zero (C++'s
truncating division of the sum plus or minus half the count), clamped to the activation's
range; input and output share their quantization. As for every op, the deployed
estimator uses the port only where it agrees with the interpreter bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sweeper.deploy.int8_arith import Scaler, Unsupported, activation_range, clamped, padding, quantize_multiplier


def _divided(total: np.ndarray, count) -> np.ndarray:
    """total / count rounded half away from zero as the kernels compute it: (total +
    count / 2) / count for total > 0, else (total - count / 2) / count, truncated."""
    half = np.asarray(count) // 2
    return np.where(total > 0, (total + half) // count, -((half - total) // count))


def mean_step(op, tensors, options) -> Callable[[dict], None]:
    source, axis, output = tensors[op.inputs[0]], tensors[op.inputs[1]], tensors[op.outputs[0]]
    if axis.values is None or len(source.shape) != 4 or sorted(np.ravel(axis.values).tolist()) != [1, 2]:
        raise Unsupported("a MEAN over other axes than height and width")
    count = source.shape[1] * source.shape[2]
    real = np.float64(source.scale) / (np.float64(output.scale) * count)  # the count in the multiplier
    scaler = Scaler(*quantize_multiplier(float(real)), output.zero_point)

    def run(values: dict) -> None:
        x = values[source.index]
        total = x.astype(np.int64).sum(axis=(1, 2)) - count * source.zero_point
        values[output.index] = clamped(scaler(total), -128, 127).reshape(len(x), *output.shape[1:])
    return run


def average_pool_step(op, tensors, options) -> Callable[[dict], None]:
    source, output = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if (source.scale, source.zero_point) != (output.scale, output.zero_point):
        raise Unsupported("an AVERAGE_POOL_2D that requantizes")
    kernel, stride = (options.FilterHeight(), options.FilterWidth()), (options.StrideH(), options.StrideW())
    same, (h, w) = options.Padding() == 0, source.shape[1:3]
    (out_h, pad_h), (out_w, pad_w) = (padding(h, stride[0], 1, kernel[0], same),
                                      padding(w, stride[1], 1, kernel[1], same))

    def window_sums(x: np.ndarray) -> np.ndarray:
        """Sums of each window's in-image values (out-of-image taps add 0)."""
        padded = np.zeros((len(x), max(h + pad_h, (out_h - 1) * stride[0] + kernel[0]),
                           max(w + pad_w, (out_w - 1) * stride[1] + kernel[1]), x.shape[-1]), dtype=np.int64)
        padded[:, pad_h:pad_h + h, pad_w:pad_w + w] = x
        return sum(padded[:, i:i + (out_h - 1) * stride[0] + 1:stride[0], j:j + (out_w - 1) * stride[1] + 1:stride[1]]
                   for i in range(kernel[0]) for j in range(kernel[1]))

    counts = window_sums(np.ones((1, h, w, 1), dtype=np.int64))  # in-image taps per window
    low, high = activation_range(op.activation, output)

    def run(values: dict) -> None:
        values[output.index] = clamped(_divided(window_sums(values[source.index]), counts), low, high)
    return run

"""A vectorised numpy port of TFLite's reference int8 kernels: ``Int8Program(flatbuffer)``
runs an int8 ``.tflite`` on a whole batch of int8 inputs with numpy, computing the integer
arithmetic of the kernels ``OpResolverType.BUILTIN_REF`` runs (TFLM's are ported from them),
so that its int8 outputs are the interpreter's bit for bit. Ops (``SUPPORTED``): CONV_2D,
DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MUL, RESHAPE, MEAN and AVERAGE_POOL_2D
(int8_pooling), LOGISTIC (the kernel's own table, int8_tables): every op of sweeper's
four models' builds. Any other op, type or layout raises ``Unsupported`` when built.

The arithmetic (int8_arith), as TFLite's: multipliers from ``QuantizeMultiplier`` on the double
effective scale (``frexp``, Q31 significand rounded half away from zero, shifts below -31
flushed to zero; FULLY_CONNECTED's input x filter scale product taken in float first, as
``GetQuantizedConvolutionMultipler``); convolutions requantize with the double-rounding
``MultiplyByQuantizedMultiplier`` (``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(
x * 2^left_shift, multiplier), right_shift)``, int32 wrap-around on the shift), while the
interpreter's FULLY_CONNECTED rounds once (``multiply_by_quantized_multiplier_single``:
found by comparing each layer with the interpreter, which it matches where the double
rounding differs on ties); activations clamped to ``CalculateActivationRangeQuantized``'s
range; SAME padding's top/left pad = total // 2, padded taps adding 0. Dot products run as
float32 (or float64) matrix products only where every partial sum of the integer terms,
bias included, is bounded below 2^24 (2^53) when built, where the float sum is exact
whatever BLAS's order. ADD and MUL read a table of their 65,536 exact results.

Nothing here proves the port exact for a build: ``sweeper.attacks.deployed`` checks that.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sweeper.deploy.int8_arith import (Scaler, Unsupported, activation_range, clamped,
                                       multiply_by_quantized_multiplier_single, padding, quantize_multiplier)
from sweeper.deploy.int8_pooling import average_pool_step, mean_step
from sweeper.deploy.int8_tables import TABULATED, unary_step

SUPPORTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "RESHAPE", "MEAN", "AVERAGE_POOL_2D",
             *TABULATED)


# ------------------------------------------------------------------------- the flatbuffer


class _Tensor:
    """One tensor of subgraph 0: shape, type name, quantization, constant values (or None)."""

    def __init__(self, model, subgraph, index: int, schema, type_names: dict):
        tensor = subgraph.Tensors(index)
        self.index = index
        self.shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
        self.type = type_names[tensor.Type()]
        quantization = tensor.Quantization()
        has_scale = quantization is not None and quantization.ScaleLength() > 0
        self.scales = quantization.ScaleAsNumpy().astype(np.float32) if has_scale else None
        self.zero_points = quantization.ZeroPointAsNumpy().astype(np.int64) if has_scale else None
        buffer = model.Buffers(tensor.Buffer())
        data = buffer.DataAsNumpy() if buffer is not None and buffer.DataLength() else None
        dtypes = {"INT8": np.int8, "INT32": np.int32, "INT64": np.int64}
        if data is None:
            self.values = None
        elif self.type not in dtypes:
            raise Unsupported(f"a constant tensor of type {self.type}")
        else:
            self.values = np.frombuffer(data.tobytes(), dtype=dtypes[self.type]).reshape(self.shape)

    @property
    def scale(self) -> float:
        return float(self.scales[0])

    @property
    def zero_point(self) -> int:
        return int(self.zero_points[0])


def _multipliers(reals) -> tuple[np.ndarray, np.ndarray]:
    pairs = [quantize_multiplier(float(r)) for r in np.atleast_1d(reals)]
    return (np.array([m for m, _ in pairs], dtype=np.int64), np.array([s for _, s in pairs], dtype=np.int64))


def _matmul_dtype(filter_values: np.ndarray, depth: int, bias) -> type:
    """float32 when every partial sum of a dot product, of (input - zero point) in
    [-255, 255] and these filter values, plus the bias, stays below 2^24, where float32
    adds integers exactly in any order; float64 below 2^53 (the int32 accumulator's
    range, checked: the reference's int32 sums never wrap); otherwise ``Unsupported``."""
    bound = int(np.abs(filter_values).max(initial=0)) * 255 * depth
    bound += 0 if bias is None else int(np.abs(bias.values.astype(np.int64)).max(initial=0))
    if bound >= 2 ** 31:
        raise Unsupported(f"a dot product whose int32 accumulator may wrap (bound {bound})")
    return np.float32 if bound < 2 ** 24 else np.float64


# ------------------------------------------------------------------------------- the ops

Step = Callable[[dict], None]


def _pad(x: np.ndarray, zero_point: int, kernel: tuple, stride: tuple, dilation: tuple, same: bool) -> tuple:
    """(the int8 input padded with its zero point, (out_h, out_w)): a padded tap adds
    (zero point - zero point) x filter = 0, what the reference's skipped tap adds."""
    n, h, w, c = x.shape
    (out_h, pad_h), (out_w, pad_w) = (padding(h, stride[0], dilation[0], kernel[0], same),
                                      padding(w, stride[1], dilation[1], kernel[1], same))
    need_h = (out_h - 1) * stride[0] + (kernel[0] - 1) * dilation[0] + 1
    need_w = (out_w - 1) * stride[1] + (kernel[1] - 1) * dilation[1] + 1
    if (pad_h, pad_w) == (0, 0) and need_h <= h and need_w <= w:
        return x, (out_h, out_w)
    padded = np.full((n, max(need_h, pad_h + h), max(need_w, pad_w + w), c), zero_point, dtype=x.dtype)
    padded[:, pad_h:pad_h + h, pad_w:pad_w + w] = x
    return padded, (out_h, out_w)


def _tap(padded: np.ndarray, i: int, j: int, out_h: int, out_w: int, stride: tuple, dilation: tuple):
    """The inputs filter tap (i, j) meets at every output position: [n, out_h, out_w, c]."""
    top, left = i * dilation[0], j * dilation[1]
    return padded[:, top:top + (out_h - 1) * stride[0] + 1:stride[0],
                  left:left + (out_w - 1) * stride[1] + 1:stride[1]]


def _conv_step(op, tensors, options, depthwise: bool) -> Step:
    source, weights, bias, output = _filter_operands(op, tensors)
    stride, dilation = (options.StrideH(), options.StrideW()), (options.DilationHFactor(), options.DilationWFactor())
    same, bounds = options.Padding() == 0, activation_range(op.activation, output)
    w = weights.values.astype(np.int64) - (weights.zero_points[:, None, None, None] if len(weights.zero_points) > 1
                                           else weights.zero_point)
    multipliers, shifts = _multipliers(np.float64(source.scale) * weights.scales.astype(np.float64)
                                       / np.float64(output.scale))
    if len(multipliers) == 1:
        multipliers, shifts = np.repeat(multipliers, output.shape[-1]), np.repeat(shifts, output.shape[-1])
    scaler = Scaler(multipliers, shifts, output.zero_point)
    b = np.zeros(output.shape[-1], dtype=np.int64) if bias is None else bias.values.astype(np.int64)
    offset, kernel = source.zero_point, w.shape[1:3]
    if depthwise:
        multiplier = options.DepthMultiplier() or output.shape[-1] // source.shape[-1]
        dtype = _matmul_dtype(w, kernel[0] * kernel[1], bias)
        filt = w[0].astype(dtype)  # [kh, kw, out_c]
        channels = np.repeat(np.arange(source.shape[-1]), multiplier)  # out channel -> in channel
    else:
        dtype = _matmul_dtype(w, w[0].size, bias)
        filt = np.ascontiguousarray(w.reshape(w.shape[0], -1).T.astype(dtype))  # [kh*kw*c, out_c]

    taps = [(i, j) for i in range(kernel[0]) for j in range(kernel[1])]
    b_float = b.astype(dtype)  # exact: _matmul_dtype bounds the sums with the bias

    def run(values: dict) -> None:
        x = values[source.index]
        padded, (out_h, out_w) = _pad(x, offset, kernel, stride, dilation, same)
        if depthwise:  # one multiply-add per tap, all channels at once
            padded = np.subtract(padded[..., channels] if multiplier > 1 else padded, offset, dtype=dtype)
            acc = _tap(padded, *taps[0], out_h, out_w, stride, dilation) * filt[taps[0]]
            product = np.empty_like(acc)
            for i, j in taps[1:]:
                acc += np.multiply(_tap(padded, i, j, out_h, out_w, stride, dilation), filt[i, j], out=product)
        else:  # im2col: the taps side by side (offset and converted on the way), one product
            c = padded.shape[-1]
            columns = np.empty((len(x), out_h, out_w, len(taps) * c), dtype=dtype)
            for k, (i, j) in enumerate(taps):
                np.subtract(_tap(padded, i, j, out_h, out_w, stride, dilation), offset,
                            out=columns[..., k * c:(k + 1) * c], dtype=dtype)
            acc = (columns.reshape(-1, columns.shape[-1]) @ filt).reshape(len(x), out_h, out_w, -1)
        acc += b_float
        values[output.index] = clamped(scaler(acc.astype(np.int64)), *bounds)  # the scaler adds the zero point
    return run


def _fully_connected_step(op, tensors, options) -> Step:
    source, weights, bias, output = _filter_operands(op, tensors)
    if options.WeightsFormat() != 0 or options.KeepNumDims():
        raise Unsupported("a FULLY_CONNECTED with shuffled weights or kept dimensions")
    per_channel = len(weights.scales) > 1
    w = weights.values.astype(np.int64) - (weights.zero_points[:, None] if per_channel else weights.zero_point)
    dtype = _matmul_dtype(w, w.shape[1], bias)
    filt = np.ascontiguousarray(w.T.astype(dtype))  # [depth, out]
    # GetQuantizedConvolutionMultipler: the input x filter scale product in float, then double
    multipliers, shifts = _multipliers((np.float32(source.scale) * weights.scales).astype(np.float64)
                                       / np.float64(output.scale))
    b = np.zeros(w.shape[0], dtype=np.int64) if bias is None else bias.values.astype(np.int64)
    offset, (low, high) = source.zero_point, activation_range(op.activation, output)
    b_float = b.astype(dtype)  # exact: _matmul_dtype bounds the sums with the bias

    def run(values: dict) -> None:
        x = np.subtract(values[source.index].reshape(-1, w.shape[1]), offset, dtype=dtype)
        acc = x @ filt
        acc += b_float
        acc = acc.astype(np.int64)
        out = multiply_by_quantized_multiplier_single(acc, multipliers, shifts) + output.zero_point
        values[output.index] = clamped(out, low, high)
    return run


def _add_step(op, tensors, options) -> Step:
    """``reference_integer_ops::Add``: both inputs scaled to 2 x the larger input scale
    with 20 bits of headroom, summed, requantized."""
    (a, b), output = [tensors[i] for i in op.inputs], tensors[op.outputs[0]]
    twice_max = np.float64(2 * max(np.float32(a.scale), np.float32(b.scale)))
    ma, sa = quantize_multiplier(np.float64(a.scale) / twice_max)
    mb, sb = quantize_multiplier(np.float64(b.scale) / twice_max)
    mo, so = quantize_multiplier(twice_max / np.float64(np.float32(1 << 20) * np.float32(output.scale)))
    if max(sa, sb, so) > 0:
        raise Unsupported("an ADD multiplier above one")
    scale_a, scale_b, scale_out = Scaler(ma, sa), Scaler(mb, sb), Scaler(mo, so)
    low, high = activation_range(op.activation, output)

    def add(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        # |input - zero point| <= 255, so the << 20 and the sum stay inside int32
        scaled = scale_a((left - a.zero_point) << 20) + scale_b((right - b.zero_point) << 20)
        return clamped(scale_out(scaled) + output.zero_point, low, high)
    return _elementwise(add, a, b, output)


def _mul_step(op, tensors, options) -> Step:
    """``reference_integer_ops::Mul``: the offset inputs' product, requantized by
    input1 x input2 / output scale (computed in float, as TFLite's Prepare)."""
    (a, b), output = [tensors[i] for i in op.inputs], tensors[op.outputs[0]]
    real = np.float32(np.float32(a.scale) * np.float32(b.scale)) / np.float32(output.scale)
    scaler = Scaler(*quantize_multiplier(float(np.float32(real))))
    low, high = activation_range(op.activation, output)

    def mul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
        product = (left - a.zero_point) * (right - b.zero_point)  # |product| <= 255^2: no wrap
        return clamped(scaler(product) + output.zero_point, low, high)
    return _elementwise(mul, a, b, output)


def _elementwise(arithmetic: Callable, a: _Tensor, b: _Tensor, output: _Tensor) -> Step:
    """An int8 x int8 -> int8 elementwise op as a table of its 65,536 results, computed
    once by ``arithmetic`` (the kernel's integer arithmetic on int64 arrays) and read at
    (a + 128) x 256 + (b + 128): the same outputs as the arithmetic, in a few passes
    instead of some thirty."""
    grid = np.arange(-128, 128, dtype=np.int64)
    table = arithmetic(np.repeat(grid, 256), np.tile(grid, 256))

    def run(values: dict) -> None:
        left = values[a.index] if a.values is None else a.values
        right = values[b.index] if b.values is None else b.values
        index = left.astype(np.int32) << 8
        index = index + right  # broadcasts a constant operand
        index += 128 * 257
        values[output.index] = table[index]
    return run


def _reshape_step(op, tensors, options) -> Step:
    source, output = tensors[op.inputs[0]], tensors[op.outputs[0]]
    if (source.scale, source.zero_point) != (output.scale, output.zero_point):
        raise Unsupported("a RESHAPE that requantizes")

    def run(values: dict) -> None:
        x = values[source.index]
        values[output.index] = x.reshape(len(x), *output.shape[1:])
    return run


def _filter_operands(op, tensors) -> tuple:
    inputs = list(op.inputs) + [-1] * (3 - len(op.inputs))
    source, weights = tensors[inputs[0]], tensors[inputs[1]]
    bias = tensors[inputs[2]] if inputs[2] >= 0 else None
    if weights.values is None or weights.type != "INT8" or (bias is not None and bias.type != "INT32"):
        raise Unsupported(f"a {op.name} whose filter is not a constant int8 tensor or bias not int32")
    return source, weights, bias, tensors[op.outputs[0]]


STEPS = {"CONV_2D": lambda op, t, o: _conv_step(op, t, o, depthwise=False),
         "DEPTHWISE_CONV_2D": lambda op, t, o: _conv_step(op, t, o, depthwise=True),
         "FULLY_CONNECTED": _fully_connected_step, "ADD": _add_step, "MUL": _mul_step,
         "RESHAPE": _reshape_step, "MEAN": mean_step, "AVERAGE_POOL_2D": average_pool_step,
         **{name: lambda op, t, o: unary_step(op, t) for name in TABULATED}}


class _Op:
    """One operator of subgraph 0: name, input and output tensor indices, options (the
    schema's options table, with ``activation`` its fused activation's name)."""

    def __init__(self, model, op, schema, op_names: dict, activation_names: dict):
        code = model.OperatorCodes(op.OpcodeIndex())
        self.name = op_names.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "CUSTOM")
        self.inputs = [int(i) for i in op.InputsAsNumpy()] if op.InputsLength() else []
        self.outputs = [int(i) for i in op.OutputsAsNumpy()]
        classes = {"CONV_2D": schema.Conv2DOptions, "DEPTHWISE_CONV_2D": schema.DepthwiseConv2DOptions,
                   "FULLY_CONNECTED": schema.FullyConnectedOptions, "ADD": schema.AddOptions, "MUL": schema.MulOptions,
                   "AVERAGE_POOL_2D": schema.Pool2DOptions}
        self.options, self.activation = None, "NONE"
        table = op.BuiltinOptions()
        if self.name in classes and table is not None:
            self.options = classes[self.name]()
            self.options.Init(table.Bytes, table.Pos)
            self.activation = activation_names[self.options.FusedActivationFunction()]
        elif self.name in classes:
            raise Unsupported(f"a {self.name} without options")


class Int8Program:
    """The flatbuffer's subgraph 0 as numpy steps, in graph order. ``__call__`` takes the
    int8 input tensor's values for a batch (n, *input shape without its batch dimension)
    and returns the int8 output tensor's (n, ...). Raises ``Unsupported`` when built if
    the graph holds anything the port does not cover (module doc)."""

    def __init__(self, flatbuffer: bytes):
        try:
            from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema
        except ImportError as error:  # its wheel is Linux x86_64 only
            raise Unsupported(f"the flatbuffer schema (tflite-micro) is not installed: {error}") from None

        model = schema.Model.GetRootAs(flatbuffer, 0)
        if model.SubgraphsLength() != 1:
            raise Unsupported(f"{model.SubgraphsLength()} subgraphs")
        subgraph = model.Subgraphs(0)

        def names(enum) -> dict:
            return {v: k for k, v in vars(enum).items() if not k.startswith("_")}

        type_names = names(schema.TensorType)
        self.tensors = {i: _Tensor(model, subgraph, i, schema, type_names) for i in range(subgraph.TensorsLength())}
        op_names, activations = names(schema.BuiltinOperator), names(schema.ActivationFunctionType)
        self.ops = [_Op(model, subgraph.Operators(i), schema, op_names, activations)
                    for i in range(subgraph.OperatorsLength())]
        inputs, outputs = subgraph.InputsAsNumpy().tolist(), subgraph.OutputsAsNumpy().tolist()
        if len(inputs) != 1 or len(outputs) != 1:
            raise Unsupported(f"{len(inputs)} inputs and {len(outputs)} outputs")
        self.input, self.output = self.tensors[inputs[0]], self.tensors[outputs[0]]
        for op in self.ops:
            if op.name not in SUPPORTED:
                raise Unsupported(f"op {op.name} (the port covers {', '.join(SUPPORTED)})")
            for index in op.inputs + op.outputs:
                tensor = self.tensors.get(index)
                if tensor is not None and tensor.values is None and (
                        tensor.type != "INT8" or tensor.scales is None or not tensor.shape or tensor.shape[0] != 1):
                    raise Unsupported(f"{op.name} on a {tensor.type} tensor of shape {tensor.shape} "
                                      "(the port runs batch-first int8 tensors)")
        self.steps = [STEPS[op.name](op, self.tensors, op.options) for op in self.ops]

    def __call__(self, quantized: np.ndarray) -> np.ndarray:
        values = {self.input.index: np.asarray(quantized, dtype=np.int8)}
        for step in self.steps:
            step(values)
        return values[self.output.index]

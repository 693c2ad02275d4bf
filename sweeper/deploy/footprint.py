"""Memory footprint of a trained QKeras model as counted from its layers.

This module owns:

* the *packed* figures: ``flash_kb(model)`` (every weight at its quantizer's bit width,
  densely packed) and ``peak_activation_bits(model, fused=True)`` (live activations
  with batch norm and activations fused, each at its quantizer's width), what a runtime
  with sub-byte kernels needs; ``measure(model) -> Footprint`` gives params, packed
  flash and the unfused tensor-level liveness;
* the int8 *estimates* used when a model cannot be converted (``int8_weight_bits``,
  ``peak_activation_bits(model, fused=True, bits=8)``), and the allowances added to the
  measured ones (``RUNTIME_FLASH_KB``, ``ARENA_MARGIN``): the measured .tflite and TFLM
  arena come from ``sweeper.deploy``;
* ``packed_kb(model)``: the packed columns of a result row; ``deployed_kb``: the flash and
  RAM the MCU fit uses for a measured build (allowance and margin added).

The MCU profiles these are checked against are ``mcus.py``'s; fit itself is judged in
SQL, by the store's ``fits`` view (``sweeper.analysis.query``), from a row's footprint and
the profiles, so a corrected profile corrects every stored row.

Units: KB means 1024 bytes throughout (the unit of MCU datasheets). Sub-byte values
are assumed densely packed (two 4-bit weights per byte), with no per-tensor padding.

TensorFlow and QKeras are imported inside functions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod


FLOAT_BITS = 32  # what an unquantized weight or activation costs (float32)
# Flash for the TensorFlow Lite Micro runtime itself: TensorFlow's docs give about 16 KB for
# the core on a Cortex-M3 and 22 KB with the keyword-spotting ops; CMSIS-NN kernels and
# the rest of the op set a model needs add more. What the fit adds to the .tflite.
RUNTIME_FLASH_KB = 32.0
# Margin on the host-measured TFLM arena: optimized kernels (CMSIS-NN) request scratch
# buffers the reference kernels measured here do not; the host's 64-bit structs make the
# persistent part a little larger than on a Cortex-M, which the margin also absorbs.
ARENA_MARGIN = 0.10
BITS_PER_KB = 8 * 1024

# Weight variable name -> the QKeras layer attribute holding its quantizer. Anything
# not listed here (or a layer without that attribute) is stored as float32.
WEIGHT_QUANTIZER_ATTR = {
    "kernel": "kernel_quantizer_internal",
    "bias": "bias_quantizer_internal",
    "depthwise_kernel": "depthwise_quantizer_internal",
    "pointwise_kernel": "pointwise_quantizer_internal",
    # QBatchNormalization: QKeras uses the quantized gamma/beta/mean/variance at
    # inference, so that is how they would be stored on the device.
    "gamma": "gamma_quantizer_internal",
    "beta": "beta_quantizer_internal",
    "moving_mean": "mean_quantizer_internal",
    "moving_variance": "variance_quantizer_internal",
}

# Layers that only move, select or drop values: their output holds values of the
# input's type, so a 4-bit tensor max-pooled or flattened is still 4-bit.
VALUE_PRESERVING_LAYERS = {
    "Flatten", "Reshape", "Permute", "RepeatVector",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
}


@dataclass(frozen=True)
class Footprint:
    """What a model needs on the device: parameter count, flash KB, peak RAM KB."""

    params: int
    flash_kb: float
    ram_kb: float


@dataclass(frozen=True)
class WeightEntry:
    """One weight variable of one layer, as it would be stored in flash."""

    layer: str
    weight: str  # short variable name: kernel, bias, gamma, ...
    count: int
    bits: int

    @property
    def total_bits(self) -> int:
        return self.count * self.bits


def quantizer_bits(quantizer) -> int:
    """Bit width of a QKeras quantizer; None or a plain function means float32."""
    bits = getattr(quantizer, "bits", None)
    return FLOAT_BITS if bits is None else int(bits)


def short_weight_name(variable) -> str:
    # "block1/q_conv2d/kernel:0" -> "kernel"
    return variable.name.split("/")[-1].split(":")[0]


def weight_bits(layer, variable) -> int:
    """Storage bits of one weight variable: its QKeras quantizer's, else float32."""
    attr = WEIGHT_QUANTIZER_ATTR.get(short_weight_name(variable))
    return quantizer_bits(getattr(layer, attr, None)) if attr else FLOAT_BITS


def leaf_layers(model) -> list:
    """All non-model layers, descending into nested models (weights live in leaves)."""
    leaves = []
    for layer in model.layers:
        if hasattr(layer, "layers"):
            leaves.extend(leaf_layers(layer))
        else:
            leaves.append(layer)
    return leaves


def weight_profile(model) -> list[WeightEntry]:
    """Every weight variable (trainable and not) with its element count and bits."""
    return [
        WeightEntry(layer.name, short_weight_name(v), int(prod(v.shape)), weight_bits(layer, v))
        for layer in leaf_layers(model)
        for v in layer.weights
    ]


# Batch-norm parameters the converter folds into the producing layer's weights and bias.
FOLDED_WEIGHTS = {"gamma", "beta", "moving_mean", "moving_variance"}


def int8_weight_bits(model) -> int:
    """What a full-int8 TFLite model stores for the weights, estimated: kernels at 8 bits,
    biases at 32, batch norm folded away (no per-channel scales, no graph): the flash
    figure used when the converter rejects a model."""
    return sum(entry.count * (32 if entry.weight == "bias" else 8) for entry in weight_profile(model)
               if entry.weight not in FOLDED_WEIGHTS)


def flash_kb(model) -> float:
    return sum(entry.total_bits for entry in weight_profile(model)) / BITS_PER_KB


def output_bits(layer, input_bits: list[int]) -> int:
    """Bits per element of a layer's output: set by the quantizer that produced it."""
    kind = type(layer).__name__
    if kind == "QActivation":
        return quantizer_bits(layer.quantizer)
    if kind in VALUE_PRESERVING_LAYERS and input_bits:
        return max(input_bits)
    # Q-layers with an activation quantizer (QDense(..., activation=quantized_relu(4)));
    # a plain activation function has no .bits and leaves the float32 default.
    return quantizer_bits(getattr(layer, "activation", None))


def tensor_bits(tensor, bits_per_element: int) -> int:
    # Batch size 1: the unknown batch dimension counts as one.
    return prod(d or 1 for d in tensor.shape) * bits_per_element


def execution_order(model) -> list:
    """Nodes in the order Keras itself runs them (Functional._run_internal_graph)."""
    nodes_by_depth = getattr(model, "_nodes_by_depth", None)
    if nodes_by_depth is None:
        raise TypeError(
            f"{type(model).__name__} is not a functional/sequential Keras model; "
            "RAM needs its layer graph"
        )
    return [
        node
        for depth in sorted(nodes_by_depth, reverse=True)
        for node in nodes_by_depth[depth]
        if not node.is_input
    ]


# Layers a deployed network does not materialise: the converter folds batch norm into the
# producing convolution and fuses the activation (and dropout is gone at inference).
FUSED_LAYERS = {"BatchNormalization", "QBatchNormalization", "Activation", "ReLU", "QActivation",
                "Dropout", "SpatialDropout2D"}


def peak_activation_bits(model, fused: bool = False, bits: int | None = None) -> int:
    """Peak over layers of the bits held by live tensors, by liveness analysis.

    A tensor is live from the layer that produces it until its last consumer has run;
    model outputs stay live to the end. While a layer runs, the live set is every
    earlier tensor still needed (its own inputs included) plus its outputs.

    ``fused``: batch norm and activation layers that are their input's only consumer
    write in place of the layer that produced it, as a deployed network computes them;
    the fused tensor is stored at the width of the last layer of its chain. ``bits``:
    store every tensor, the input included, at this width (8 for an int8 deployment);
    None keeps each tensor at its quantizer's width and the input at float32.
    """
    nodes = execution_order(model)
    consumers: dict[int, int] = {}
    for node in nodes:
        for t in node.keras_inputs:
            consumers[id(t)] = consumers.get(id(t), 0) + 1
    group, width, size = _tensor_groups(model, nodes, consumers if fused else None, bits)
    last_use: dict[int, int] = {}
    for step, node in enumerate(nodes):
        for t in node.keras_inputs:
            last_use[group[id(t)]] = step
    for t in model.outputs:
        last_use[group[id(t)]] = len(nodes)

    live = {group[id(t)]: size[group[id(t)]] * width[group[id(t)]] for t in model.inputs}
    peak = sum(live.values())
    for step, node in enumerate(nodes):
        for t in _outputs(node):
            live[group[id(t)]] = size[group[id(t)]] * width[group[id(t)]]
        peak = max(peak, sum(live.values()))
        # Free what no later layer reads (an unread output is freed at once).
        for key in [k for k in live if last_use.get(k, -1) <= step]:
            del live[key]
    return peak


def _outputs(node) -> list:
    import tensorflow as tf

    return tf.nest.flatten(node.outputs)


def _tensor_groups(model, nodes, consumers: dict[int, int] | None, bits: int | None):
    """Each tensor's storage group (a tensor and the fused layers written in its place),
    and per group its elements (batch 1) and bits per element."""
    group: dict[int, int] = {}
    width: dict[int, int] = {}
    size: dict[int, int] = {}
    tensor_bits_of: dict[int, int] = {}
    for t in model.inputs:
        group[id(t)], tensor_bits_of[id(t)] = id(t), bits or FLOAT_BITS
        width[id(t)], size[id(t)] = bits or FLOAT_BITS, tensor_bits(t, 1)
    for node in nodes:
        in_bits = [tensor_bits_of[id(t)] for t in node.keras_inputs]
        out_bits = bits or output_bits(node.layer, in_bits)
        inputs = node.keras_inputs
        in_place = (consumers is not None and type(node.layer).__name__ in FUSED_LAYERS
                    and len(inputs) == 1 and consumers.get(id(inputs[0])) == 1
                    and id(inputs[0]) not in {id(t) for t in model.inputs})
        for t in _outputs(node):
            tensor_bits_of[id(t)] = out_bits
            if in_place:  # the chain is stored at its last layer's width
                group[id(t)] = group[id(inputs[0])]
                width[group[id(t)]] = out_bits
            else:
                group[id(t)], width[id(t)], size[id(t)] = id(t), out_bits, tensor_bits(t, 1)
    return group, width, size


def measure(model) -> Footprint:
    """Params, flash KB and peak activation RAM KB of a tf.keras (QKeras) model."""
    return Footprint(
        params=int(model.count_params()),
        flash_kb=flash_kb(model),
        ram_kb=peak_activation_bits(model) / BITS_PER_KB,
    )


def packed_kb(model) -> dict[str, float]:
    """A result row's packed figures: ``flash_packed_kb`` (every weight at its bit width)
    and ``ram_packed_kb`` (peak fused activations at theirs), in KB."""
    return {"flash_packed_kb": flash_kb(model), "ram_packed_kb": peak_activation_bits(model, fused=True) / BITS_PER_KB}


def deployed_kb(flatbuffer_bytes: int, arena_bytes: int) -> tuple[float, float]:
    """What the MCU fit uses for a measured build, (flash KB, RAM KB): its .tflite plus
    the runtime allowance, its TFLM arena plus the margin. The one rule for every build
    (the int8 one of a row, and each ``deploy.builds`` record)."""
    return flatbuffer_bytes / 1024 + RUNTIME_FLASH_KB, arena_bytes / 1024 * (1 + ARENA_MARGIN)

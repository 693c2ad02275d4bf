"""Memory footprint of a trained QKeras model as counted from its layers, and the MCU
profiles footprints are checked against.

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
* ``MCUS``: a registry of microcontroller profiles (flash, SRAM, largest contiguous SRAM
  block, and the core and clock ``sweeper.deploy.latency`` estimates latency from);
* fit itself is judged in SQL, by the store's ``fits`` view (``sweeper.query``), from a
  row's footprint and these profiles, so a corrected profile corrects every stored row.

Units: KB means 1024 bytes throughout (the unit of MCU datasheets). Sub-byte values
are assumed densely packed (two 4-bit weights per byte), with no per-tensor padding.

TensorFlow and QKeras are imported inside functions only, so the CLI can list MCUs
without paying for a TensorFlow import.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

from sweeper.registry import Registry

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


@dataclass(frozen=True)
class MCUProfile:
    """A microcontroller's on-chip flash, total on-chip SRAM and largest contiguous SRAM
    block, in KB (1024 bytes), and its CPU core and top clock. A TensorFlow Lite Micro
    arena is one block of memory, so fit is judged against ``ram_block_kb``, not the
    total a datasheet headline quotes. The core picks the latency calibration
    (``sweeper.deploy.latency``), the clock scales it."""

    name: str
    flash_kb: float
    ram_kb: float
    ram_block_kb: float  # largest contiguous SRAM address range
    description: str
    source: str
    core: str  # cortex-m4, cortex-m7, cortex-m0+, xtensa-lx7
    clock_mhz: float  # the core's top clock, per the same source


MCUS = Registry[MCUProfile]("mcu")

for _profile in [
    MCUProfile(
        "stm32h7", 2048, 1024, 512,
        "STM32H743/753 (Cortex-M7, 480 MHz), the paper's target: 2 MB flash, "
        "1 MB RAM as ST quotes it (128 KB DTCM + 64 KB ITCM + 864 KB user SRAM: "
        "AXI SRAM 512 KB and SRAM1-4), split over several non-contiguous regions; the "
        "largest block is the 512 KB AXI SRAM at 0x24000000",
        "ST DS12110 STM32H743xI datasheet", "cortex-m7", 480,
    ),
    MCUProfile(
        "stm32f4", 512, 128, 128,
        "STM32F446RE (Cortex-M4F, 180 MHz, Nucleo-F446RE): 512 KB flash, "
        "128 KB total SRAM (SRAM1 112 KB + SRAM2 16 KB, adjacent from 0x20000000)",
        "ST DS10693 STM32F446xC/E datasheet", "cortex-m4", 180,
    ),
    MCUProfile(
        "stm32f7", 1024, 320, 320,
        "STM32F746NG (Cortex-M7, 216 MHz, STM32F746G-DISCO): 1 MB flash, "
        "320 KB total SRAM (DTCM 64 KB + SRAM1 240 KB + SRAM2 16 KB, adjacent from "
        "0x20000000; ITCM not counted)",
        "ST DS10916 STM32F745xx/STM32F746xx datasheet", "cortex-m7", 216,
    ),
    MCUProfile(
        "stm32l4", 1024, 128, 128,
        "STM32L476RG (Cortex-M4F, 80 MHz, Nucleo-L476RG): 1 MB flash, "
        "128 KB total SRAM (SRAM1 96 KB + SRAM2 32 KB, which is also mapped at "
        "0x20018000, right after SRAM1)",
        "ST DS10198 STM32L476xx datasheet", "cortex-m4", 80,
    ),
    MCUProfile(
        "nrf52840", 1024, 256, 256,
        "Nordic nRF52840 (Cortex-M4F, 64 MHz): 1 MB flash, 256 KB total SRAM, one "
        "address range from 0x20000000",
        "Nordic nRF52840 Product Specification v1.7", "cortex-m4", 64,
    ),
    MCUProfile(
        "arduino_nano33_ble_sense", 1024, 256, 256,
        "Arduino Nano 33 BLE Sense: nRF52840 SoC (Cortex-M4F, 64 MHz), 1 MB flash, 256 KB total SRAM "
        "(the Mbed OS core and bootloader use part of both)",
        "Arduino ABX00031 Nano 33 BLE Sense product reference manual (datasheet)", "cortex-m4", 64,
    ),
    MCUProfile(
        "rp2040", 2048, 264, 264,
        "Raspberry Pi RP2040 (dual Cortex-M0+, 133 MHz): 264 KB total on-chip SRAM "
        "(striped SRAM0-3 then SRAM4-5, one address range from 0x20000000); "
        "no on-chip flash, the 2048 KB is the external QSPI flash of the Raspberry Pi Pico",
        "Raspberry Pi RP2040 Datasheet; Raspberry Pi Pico Datasheet", "cortex-m0+", 133,
    ),
    MCUProfile(
        "esp32s3", 8192, 512, 416,
        "Espressif ESP32-S3 (dual Xtensa LX7, 240 MHz): 512 KB total on-chip SRAM "
        "(SRAM0 64 KB, SRAM1 416 KB, SRAM2 32 KB; optional PSRAM not counted); the largest "
        "block is SRAM1, less what ESP-IDF itself takes; flash is external or in-package, the 8192 KB is "
        "the 8 MB flash of the ESP32-S3-DevKitC-1 N8",
        "Espressif ESP32-S3 Series Datasheet; ESP32-S3-DevKitC-1 User Guide", "xtensa-lx7", 240,
    ),
]:
    MCUS.add(_profile.name, _profile)

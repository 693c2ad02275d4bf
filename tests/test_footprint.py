"""Footprint (params, flash, peak activation RAM) and the MCU profiles it is checked against."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from sweeper.deploy.mcus import MCUS
from sweeper.errors import UserError
from sweeper.deploy.footprint import (
    BITS_PER_KB,
    FLOAT_BITS,
    Footprint,
    measure,
    peak_activation_bits,
    weight_profile,
)

from conftest import lazy_module  # noqa: E402
tf = lazy_module("tensorflow")  # imported when a test runs, not at collection
qkeras = lazy_module("qkeras")


@pytest.fixture(autouse=True)
def no_autograph():
    """Build models without autograph: converting each layer's call() costs about a
    second per layer class and plays no part in what is measured here."""
    try:
        from tensorflow.python.autograph.core import ag_ctx
    except ImportError:  # private API moved: tests are only slower
        yield
        return
    with ag_ctx.ControlStatusCtx(status=ag_ctx.Status.DISABLED):
        yield


def qb(bits):
    return qkeras.quantized_bits(bits, 0, alpha=1)


def kb(bits):
    return bits / BITS_PER_KB


# --- flash and params -------------------------------------------------------------


def qkeras_weight_profile(model, capsys):
    """{(layer, weight): (count, bits)} parsed from qkeras.print_qstats' "Weight profiling"."""
    capsys.readouterr()
    qkeras.print_qstats(model)
    text = capsys.readouterr().out
    section = text.split("Weight profiling:")[1].split("\n\n")[0]
    # QKeras names: <layer>_weights, <layer>_weights_0/_1 (separable), <layer>_bias.
    suffix_to_weight = {"_weights_0": "depthwise_kernel", "_weights_1": "pointwise_kernel",
                        "_weights": "kernel", "_bias": "bias"}
    profile = {}
    for name, count, bits in re.findall(r"(\S+)\s+:\s+(\d+)\s+\((\d+)-bit unit\)", section):
        suffix = next(s for s in suffix_to_weight if name.endswith(s))
        layer = name[: -len(suffix)]
        weight = suffix_to_weight[suffix]
        if weight == "kernel" and isinstance(model.get_layer(layer), qkeras.QDepthwiseConv2D):
            weight = "depthwise_kernel"  # its only kernel
        if int(count):  # QKeras lists a bias of 0 for layers without one
            profile[(layer, weight)] = (int(count), int(bits))
    return profile


def test_flash_matches_qkeras_print_qstats(capsys):
    # One input channel, depth_multiplier 1: QKeras counts depthwise weights as
    # kh*kw*c_in*c_out, which is right only when c_in == 1 (see the hand test below).
    inp = tf.keras.Input((8, 8, 1))
    x = qkeras.QDepthwiseConv2D(3, depthwise_quantizer=qb(4), bias_quantizer=qb(6), name="dw")(inp)
    x = qkeras.QConv2D(4, 3, kernel_quantizer=qb(8), bias_quantizer=qb(4), name="conv")(x)
    x = qkeras.QSeparableConv2D(6, 3, depthwise_quantizer=qkeras.ternary(), pointwise_quantizer=qkeras.binary(),
                         bias_quantizer=qb(8), name="sep")(x)
    x = tf.keras.layers.Flatten()(x)
    out = qkeras.QDense(10, kernel_quantizer=qkeras.quantized_bits(2, 1, alpha=1), name="dense")(x)
    model = tf.keras.Model(inp, out)

    theirs = qkeras_weight_profile(model, capsys)
    ours = {(e.layer, e.weight): (e.count, e.bits) for e in weight_profile(model)}

    assert len(theirs) == 9  # every weight of the four Q-layers, float dense bias included
    assert ours == theirs
    their_bits = sum(count * bits for count, bits in theirs.values())
    assert measure(model).flash_kb == kb(their_bits)


def test_flash_and_params_of_mixed_quantizers_by_hand():
    inp = tf.keras.Input((6, 6, 2))
    x = qkeras.QConv2D(3, 3, kernel_quantizer=qb(8), bias_quantizer=qb(4), name="conv")(inp)
    x = qkeras.QBatchNormalization(name="qbn")(x)  # default po2 quantizers: 6/5/5/6 bits
    x = qkeras.QActivation(qkeras.quantized_relu(4))(x)
    x = tf.keras.layers.Flatten()(x)  # 4*4*3 = 48
    x = qkeras.QDense(5, kernel_quantizer=qkeras.ternary(), bias_quantizer=qkeras.binary(), name="tern")(x)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    out = tf.keras.layers.Dense(2, name="float")(x)
    model = tf.keras.Model(inp, out)

    expected = {
        ("conv", "kernel"): (54, 8), ("conv", "bias"): (3, 4),
        ("qbn", "gamma"): (3, 6), ("qbn", "beta"): (3, 5),
        ("qbn", "moving_mean"): (3, 5), ("qbn", "moving_variance"): (3, 6),
        ("tern", "kernel"): (240, 2), ("tern", "bias"): (5, 1),
        ("bn", "gamma"): (5, 32), ("bn", "beta"): (5, 32),
        ("bn", "moving_mean"): (5, 32), ("bn", "moving_variance"): (5, 32),
        ("float", "kernel"): (10, 32), ("float", "bias"): (2, 32),
    }
    assert {(e.layer, e.weight): (e.count, e.bits) for e in weight_profile(model)} == expected
    fp = measure(model)
    assert fp.params == 54 + 3 + 12 + 240 + 5 + 20 + 12 == model.count_params()
    # 432 + 12 + (18 + 15 + 15 + 18) + 480 + 5 + 640 + 384 bits
    assert fp.flash_kb == kb(2019)


def test_flash_of_depthwise_and_separable_with_several_channels():
    inp = tf.keras.Input((5, 5, 3))
    x = qkeras.QDepthwiseConv2D(3, depth_multiplier=2, depthwise_quantizer=qb(4), use_bias=False,
                         name="dw")(inp)  # kernel 3*3*3*2 = 54 @ 4 bits -> (3, 3, 6)
    x = qkeras.QSeparableConv2D(4, 3, depthwise_quantizer=qkeras.binary(), pointwise_quantizer=qb(8),
                         bias_quantizer=None, name="sep")(x)  # 54 @ 1, 24 @ 8, bias 4 @ 32
    # Unquantized kernel: 8 @ 32 bits; bias 2 @ 8 bits.
    out = qkeras.QConv2D(2, 1, kernel_quantizer=None, bias_quantizer=qb(8), name="conv")(x)
    model = tf.keras.Model(inp, out)

    fp = measure(model)
    assert fp.params == 54 + 54 + 24 + 4 + 8 + 2 == model.count_params()
    assert fp.flash_kb == kb(216 + 54 + 192 + 128 + 256 + 16)


# --- RAM: liveness of activation tensors --------------------------------------------


def sequential_model(activation):
    inp = tf.keras.Input((8, 8, 1))  # 64 floats = 2048 bits
    x = qkeras.QConv2D(4, 3, padding="same", kernel_quantizer=qb(8), bias_quantizer=qb(8))(inp)
    x = qkeras.QActivation(activation)(x)  # 256 values
    x = tf.keras.layers.MaxPooling2D()(x)  # 64 values, same type as its input
    x = tf.keras.layers.Flatten()(x)
    out = qkeras.QDense(10, kernel_quantizer=qb(8), bias_quantizer=qb(8),
                 activation=qkeras.quantized_bits(8, 0))(x)
    return tf.keras.Model(inp, out)


def test_ram_sequential_peak_and_quantized_activation_shrinks_it():
    # Float relu: peak at the activation, conv output (8192) + relu output (8192).
    assert measure(sequential_model("relu")).ram_kb == kb(8192 + 8192)
    # 2-bit relu output is 512 bits, so the peak moves to the conv: input 2048 + 8192.
    assert measure(sequential_model(qkeras.quantized_relu(2))).ram_kb == kb(2048 + 8192)


def test_ram_layers_that_only_move_values_keep_their_bits():
    inp = tf.keras.Input((4, 4, 1))  # 512 bits
    x = qkeras.QActivation(qkeras.quantized_relu(2))(inp)  # 32 bits
    x = tf.keras.layers.ZeroPadding2D(6)(x)  # 16x16 two-bit values: 512 bits, not 8192
    out = tf.keras.layers.Flatten()(x)  # 512 bits
    # Peak while Flatten runs: padded (512) + flat (512); the input is freed by then.
    assert measure(tf.keras.Model(inp, out)).ram_kb == kb(512 + 512)


def naive_peak_bits(model, bits=32):
    """max over layers of (inputs + outputs): what ignoring liveness would give."""
    def size(tensors):
        return sum(int(tf.reduce_prod(t.shape[1:])) * bits for t in tf.nest.flatten(tensors))
    return max(size(layer.input) + size(layer.output) for layer in model.layers[1:])


def test_ram_residual_skip_tensor_stays_live():
    # 4x4 spatial: one channel of float32 = 16 * 32 = 512 bits.
    inp = tf.keras.Input((4, 4, 8))
    skip = qkeras.QConv2D(8, 3, padding="same", kernel_quantizer=qb(8))(inp)
    wide = qkeras.QConv2D(32, 3, padding="same", kernel_quantizer=qb(8))(skip)
    narrow = qkeras.QConv2D(8, 3, padding="same", kernel_quantizer=qb(8))(wide)
    out = tf.keras.layers.Add()([skip, narrow])
    model = tf.keras.Model(inp, out)

    # While `narrow` runs: skip (8) + wide (32) + narrow (8) channels are live.
    assert measure(model).ram_kb == kb(48 * 512) == 3.0
    assert naive_peak_bits(model) == 40 * 512  # wide: 8 in + 32 out


def test_ram_parallel_branches_count_each_tensor_at_its_own_bits():
    inp = tf.keras.Input((4, 4, 1))  # 512 bits
    a = qkeras.QActivation(qkeras.quantized_relu(4))(qkeras.QConv2D(16, 1, kernel_quantizer=qb(8))(inp))
    b = qkeras.QConv2D(16, 1, kernel_quantizer=qb(8))(inp)
    out = tf.keras.layers.Add()([a, b])
    model = tf.keras.Model(inp, out)
    # Peak at the Add: 4-bit branch a (1024) + float branch b (8192) + float sum (8192);
    # counting a as float would give 3 * 8192, keeping the input live would add 512.
    assert measure(model).ram_kb == kb(1024 + 8192 + 8192)


# --- MCU profiles -----------------------------------------------------------------


def test_importing_footprint_does_not_import_tensorflow():
    code = "import sys, sweeper.deploy.footprint; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=Path(__file__).resolve().parents[1])
    assert result.stdout.strip() == "False"


def test_unknown_mcu_lists_available_names():
    with pytest.raises(UserError) as err:
        MCUS.get("nope")
    assert str(err.value) == f"unknown mcu 'nope'; available: {', '.join(MCUS.names())}"
    for name in ["stm32h7", "stm32f4", "stm32f7", "stm32l4", "nrf52840", "rp2040", "esp32s3",
                 "arduino_nano33_ble_sense"]:
        assert name in MCUS.names()
        assert MCUS.get(name).source


def test_profiles_state_the_largest_contiguous_block():
    """A TFLM arena is one block: the H7's 1 MB is several regions, the largest 512 KB."""
    h7 = MCUS.get("stm32h7")
    assert (h7.flash_kb, h7.ram_kb, h7.ram_block_kb) == (2048, 1024, 512)
    for name in MCUS.names():
        profile = MCUS.get(name)
        assert 0 < profile.ram_block_kb <= profile.ram_kb, name


@pytest.mark.parametrize("name, shape, classes, head_bytes", [
    # MLPerf Tiny v1.0 reference int8 models: the TFLM arena's non-persistent head
    ("resnet8", (32, 32, 3), 10, 49_152),
    ("dscnn", (49, 10, 1), 12, 16_000),
])
def test_fused_int8_liveness_matches_the_mlperf_arena_head(name, shape, classes, head_bytes):
    """Batch norm and activations folded into the producing layer, 1 byte per element:
    the peak equals the activation memory TFLM plans for the reference models."""
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    model = models.build(name, shape, classes, QUANTIZERS.get("fp"))
    assert peak_activation_bits(model, fused=True, bits=8) == head_bytes * 8
    # unfused, float32: batch-norm outputs the deployed network never creates
    assert peak_activation_bits(model) > 3 * head_bytes * 8


def test_fused_packed_liveness_stores_a_chain_at_its_last_width():
    """conv -> BN -> 2-bit activation is one tensor at 2 bits when fused, not a float32
    conv output, a float32 BN output and a 2-bit activation."""
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 1))
    x = qkeras.QConv2D(4, 3, padding="same", kernel_quantizer=qkeras.quantized_bits(4, 0, 1))(inputs)
    x = tf.keras.layers.BatchNormalization()(x)
    x = qkeras.QActivation(qkeras.quantized_relu(2))(x)
    model = tf.keras.Model(inputs, x)
    elements = 8 * 8 * 4
    assert peak_activation_bits(model, fused=True) == 64 * FLOAT_BITS + elements * 2
    assert peak_activation_bits(model) == elements * FLOAT_BITS * 2  # conv output + BN output

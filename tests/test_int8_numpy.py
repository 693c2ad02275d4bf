"""The numpy port of TFLite's reference int8 kernels (sweeper/deploy/int8_*.py) and
its use as the deployed estimator's forward: the fixed-point helpers against gemmlowp's
literal definitions; the port's int8 outputs bit for bit those of the BUILTIN_REF
interpreter on small_cnn and stq_net builds at fp, int8, ternary and binary (untrained:
exactness needs no training; stq_net at fp has a LOGISTIC) and resnet8 and dscnn builds
(MEAN, AVERAGE_POOL_2D) on random and extreme inputs;
an unsupported op (MAX_POOL_2D) and a port that disagrees both leave the interpreter on;
a spot check catches a port that goes wrong after it was proven; and Square on the
deployed build returns the same examples through the port as through the interpreter."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper.deploy import int8_arith, int8_numpy
from tests.conftest import digits_small_cnn

SHAPE = (8, 8, 1)
CLIP = (0.0, 1.0)
pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


# ------------------------------------------------------------------ fixed-point helpers


def _srdhm_literal(a: int, b: int) -> int:
    """gemmlowp's SaturatingRoundingDoublingHighMul, as written in C++."""
    if a == b == -(2 ** 31):
        return 2 ** 31 - 1
    ab = a * b
    nudge = (1 << 30) if ab >= 0 else 1 - (1 << 30)
    return (abs(ab + nudge) >> 31) * (1 if ab + nudge >= 0 else -1)  # C++ division truncates


def _rdbp_literal(x: int, exponent: int) -> int:
    mask = (1 << exponent) - 1
    remainder, threshold = x & mask, (mask >> 1) + (1 if x < 0 else 0)
    return (x >> exponent) + (1 if remainder > threshold else 0)


def test_fixed_point_helpers_are_gemmlowps():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.integers(-2 ** 31, 2 ** 31, 3000), rng.integers(-5000, 5000, 3000),
                        [0, 1, -1, 2 ** 31 - 1, -(2 ** 31), 2 ** 30, -(2 ** 30), -(2 ** 30) - 1]]).astype(np.int64)
    for multiplier in (1 << 30, 1095079771, 1758569344, 2 ** 31 - 1):
        high = int8_arith.saturating_rounding_doubling_high_mul(x, multiplier)
        assert high.tolist() == [_srdhm_literal(int(v), multiplier) for v in x]
        for exponent in (0, 1, 4, 9, 31):
            got = int8_arith.rounding_divide_by_pot(high, exponent)
            assert got.tolist() == [_rdbp_literal(int(v), exponent) for v in high]
            scaled = int8_arith.multiply_by_quantized_multiplier(x.copy(), multiplier, -exponent)
            np.testing.assert_array_equal(scaled, got)
    # Ties: 40.5 after the high mul rounds away from zero twice (double rounding), once
    # with the single rounding FULLY_CONNECTED uses (1270 x 0.0318725 = 40.476...).
    assert int8_arith.multiply_by_quantized_multiplier(np.array([1270, -1270]), 1095079771, -4).tolist() == [41, -41]
    single = int8_arith.multiply_by_quantized_multiplier_single(np.array([1270, -1270]), 1095079771, -4)
    assert single.tolist() == [40, -40]


def test_quantize_multiplier_is_tflites():
    assert int8_arith.quantize_multiplier(0.0) == (0, 0)
    assert int8_arith.quantize_multiplier(0.5) == (1 << 30, 0)
    assert int8_arith.quantize_multiplier(1.0) == (1 << 30, 1)
    assert int8_arith.quantize_multiplier(2.0 ** -40) == (0, 0)  # shifts below -31 flush to zero
    assert int8_arith.quantize_multiplier(1 - 2.0 ** -40) == (1 << 30, 1)  # a significand rounding up to 2^31


# ------------------------------------------------------------------------------ the builds


@pytest.fixture(scope="module")
def builds():
    """{(model, preset): int8 flatbuffer} of untrained small_cnn and stq_net, calibrated on
    uniform noise."""
    import tensorflow as tf

    from sweeper import deploy, models
    from sweeper.models import quantizers

    calibration = np.random.default_rng(0).uniform(*CLIP, (64, *SHAPE)).astype(np.float32)
    out = {}
    for model_name in ("small_cnn", "stq_net"):
        for preset in ("fp", "int8", "ternary", "binary"):
            tf.keras.utils.set_random_seed(0)
            model = models.build(model_name, SHAPE, 10, quantizers.QUANTIZERS.get(preset))
            out[model_name, preset] = deploy.convert_int8(deploy.strip(model), calibration)
    return out


def _reference(flatbuffer: bytes, quantized: np.ndarray) -> np.ndarray:
    """The BUILTIN_REF interpreter's int8 outputs, one sample per invocation."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=1,
                                      experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    out = []
    for sample in quantized:
        interpreter.set_tensor(source["index"], sample[None])
        interpreter.invoke()
        out.append(interpreter.get_tensor(target["index"])[0].copy())
    return np.array(out)


def _inputs(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.integers(-128, 128, (150, *SHAPE)), np.full((1, *SHAPE), -128),
                           np.full((1, *SHAPE), 127), rng.choice([-128, 127], (20, *SHAPE)),
                           rng.integers(-3, 4, (10, *SHAPE))]).astype(np.int8)


@pytest.mark.parametrize("model_name", ["small_cnn", "stq_net"])
@pytest.mark.parametrize("preset", ["fp", "int8", "ternary", "binary"])
def test_the_port_is_the_reference_kernels_bit_for_bit(builds, model_name, preset):
    flatbuffer = builds[model_name, preset]
    program = int8_numpy.Int8Program(flatbuffer)
    if (model_name, preset) == ("stq_net", "fp"):  # its gate's sigmoid, from the kernel's table
        assert "LOGISTIC" in [op.name for op in program.ops]
    quantized = _inputs(1)
    got, want = program(quantized), _reference(flatbuffer, quantized)
    assert got.dtype == np.int8 and got.shape == (len(quantized), 10)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want, axis=0)) > 1  # the inputs reach more than one output


@pytest.mark.parametrize("model_name,shape", [("resnet8", (32, 32, 3)), ("dscnn", (49, 10, 1))])
@pytest.mark.parametrize("preset", ["fp", "binary"])
def test_the_pooling_ops_are_the_reference_kernels_bit_for_bit(model_name, shape, preset):
    """MEAN (every quantized preset) and AVERAGE_POOL_2D (fp) end resnet8 and dscnn."""
    import tensorflow as tf

    from sweeper import deploy, models
    from sweeper.models import quantizers

    rng = np.random.default_rng(4)
    tf.keras.utils.set_random_seed(0)
    model = models.build(model_name, shape, 10, quantizers.QUANTIZERS.get(preset))
    flatbuffer = deploy.convert_int8(deploy.strip(model), rng.uniform(*CLIP, (16, *shape)).astype(np.float32))
    program = int8_numpy.Int8Program(flatbuffer)
    assert {"fp": "AVERAGE_POOL_2D", "binary": "MEAN"}[preset] in [op.name for op in program.ops]
    quantized = np.concatenate([rng.integers(-128, 128, (24, *shape)), np.full((1, *shape), -128),
                                np.full((1, *shape), 127), rng.choice([-128, 127], (6, *shape))]).astype(np.int8)
    np.testing.assert_array_equal(program(quantized), _reference(flatbuffer, quantized))


# ---------------------------------------------------------------- the deployed estimator


def test_an_unsupported_op_keeps_the_interpreter(caplog):
    import tensorflow as tf

    from sweeper import deploy
    from sweeper.attacks.deployed import Int8Logits

    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.layers.Input(SHAPE), tf.keras.layers.Conv2D(4, 3, activation="relu"),
                                 tf.keras.layers.MaxPooling2D(), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    x = np.random.default_rng(2).uniform(*CLIP, (32, *SHAPE)).astype(np.float32)
    flatbuffer = deploy.convert_int8(model, x)
    with caplog.at_level(logging.INFO, logger="sweeper.attacks.deployed"):
        runner = Int8Logits(flatbuffer, SHAPE, CLIP, check_inputs=x)
    assert runner.forward == "interpreter" and "op MAX_POOL_2D" in runner.port_reason
    assert "MAX_POOL_2D" in caplog.text
    np.testing.assert_array_equal(runner.int8(x), _reference(flatbuffer, deploy.quantize_input(x, runner._input)))


def test_a_port_that_disagrees_is_not_used_and_a_spot_check_catches_one_that_turns(builds, monkeypatch, caplog):
    from sweeper.attacks import deployed
    from sweeper.deploy import quantize_input

    flatbuffer = builds["small_cnn", "int8"]
    original = int8_numpy.Int8Program.__call__
    off_by_one_once = lambda self, q: np.where(np.arange(len(q))[:, None] == len(q) - 1,  # noqa: E731
                                               original(self, q) ^ 1, original(self, q)).astype(np.int8)
    monkeypatch.setattr(int8_numpy.Int8Program, "__call__", off_by_one_once)
    x = np.random.default_rng(3).uniform(*CLIP, (7, *SHAPE)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="sweeper.attacks.deployed"):
        runner = deployed.Int8Logits(flatbuffer, SHAPE, CLIP, check_inputs=x)
    assert runner.forward == "interpreter" and runner.port_reason.startswith("differs on 1 of ")
    assert "other int8 outputs" in caplog.text

    monkeypatch.setattr(int8_numpy.Int8Program, "__call__", original)
    runner = deployed.Int8Logits(flatbuffer, SHAPE, CLIP, check_inputs=x)
    assert runner.forward == "numpy port" and runner.port_reason is None
    want = _reference(flatbuffer, quantize_input(x, runner._input))
    # Proven, then wrong on every sample: the first spot check switches to the interpreter
    # and that call's outputs are the interpreter's.
    monkeypatch.setattr(int8_numpy.Int8Program, "__call__", lambda self, q: original(self, q) ^ 1)
    outputs = [runner.int8(x) for _ in range(deployed.SPOT_CHECK_EVERY)]
    assert all(not np.array_equal(out, want) for out in outputs[:-1])
    np.testing.assert_array_equal(outputs[-1], want)
    assert runner.forward == "interpreter" and runner.port_reason == "disagreed on a spot check"


def test_square_on_the_build_finds_the_same_examples_through_the_port(builds):
    """The acceptance test of the port: an attack on the build is the same attack."""
    from sweeper import attacks, deploy

    model, x, y = digits_small_cnn("int8", 1000, 2)
    flatbuffer = deploy.convert_int8(deploy.strip(model), x[:200])
    xs, ys = x[1500:1530], y[1500:1530]
    ported = attacks.make_deployed_classifier(flatbuffer, 10, SHAPE, CLIP, check_inputs=xs)
    interpreted = attacks.make_deployed_classifier(flatbuffer, 10, SHAPE, CLIP, port=False)
    assert ported.runner.forward == "numpy port" and interpreted.runner.forward == "interpreter"
    params = {"max_iter": 60}
    x_port = attacks.run("square", ported, xs, ys, 0.1, "inf", params, 7)
    x_interp = attacks.run("square", interpreted, xs, ys, 0.1, "inf", params, 7)
    np.testing.assert_array_equal(x_port, x_interp)
    fooled = interpreted.predict(x_interp).argmax(1) != ys
    assert fooled.sum() > (interpreted.predict(xs).argmax(1) != ys).sum()  # the attack did something

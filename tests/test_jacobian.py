"""Jacobian norms (sweeper.models.jacobian): the blocks of every registered model, the chain rule
that makes them blocks, and the measurement behind the jacobian_* columns checked against
its control: the exact Jacobian (tf batch_jacobian, every entry) on a tiny model, and its
stated standard error against the spread of repeated estimates."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sweeper import datasets
from sweeper.models import jacobian

SAMPLES = 40


def _model(name: str, shape: tuple, preset: str, seed: int = 0):
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    tf.keras.utils.set_random_seed(seed)
    return models.build(name, shape, 10, QUANTIZERS.get(preset))


@functools.cache
def _digits() -> np.ndarray:
    return datasets.load("digits").x[:SAMPLES]


@pytest.mark.parametrize("name, shape, blocks", [
    ("small_cnn", (8, 8, 1), ["conv2d", "conv2d", "dense"]),
    ("resnet8", (8, 8, 1), ["conv2d", "conv2d+conv2d", "conv2d+conv2d+conv2d", "conv2d+conv2d+conv2d", "dense"]),
    ("dscnn", (49, 10, 1), ["conv2d", *["depthwiseconv2d", "conv2d"] * 4, "dense"]),
    ("stq_net", (8, 8, 1), ["conv2d", "conv2d", "depthwiseconv2d+separableconv2d+conv2d", "separableconv2d",
                            "dense", "dense", "dense"]),
])
def test_every_model_is_cut_into_blocks_whose_jacobians_chain_to_the_whole(name, shape, blocks):
    """A residual stack and stq_net's gated unit are one block each (their inner
    activations are bypassed), and the blocks' vector-Jacobian products chained from the
    logits back to the input are the whole model's: every block starts at a cut."""
    import tensorflow as tf

    model = _model(name, shape, "int8")
    assert jacobian.block_names(model) == blocks
    x = tf.constant(np.random.default_rng(0).random((4, *shape)), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = jacobian.block_model(model)(x, training=False)
    np.testing.assert_allclose(outputs[-1], model(x, training=False), rtol=1e-5, atol=1e-6)
    v = tf.constant(np.random.default_rng(1).standard_normal(outputs[-1].shape), tf.float32)
    chained = v
    for output, source in reversed(list(zip(outputs, [x, *outputs[:-1]]))):
        chained = tape.gradient(output, source, output_gradients=chained)
    whole = tape.gradient(outputs[-1], x, output_gradients=v)
    np.testing.assert_allclose(chained, whole, rtol=1e-4, atol=1e-5 * float(tf.reduce_max(tf.abs(whole))))


def _exact(model, x: np.ndarray) -> tuple[float, list[float]]:
    """RMS over the samples of the Frobenius norms, from every entry of each Jacobian."""
    import tensorflow as tf

    x = tf.constant(x, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = jacobian.block_model(model)(x, training=False)
    rms = lambda j: float(np.sqrt(np.mean(np.sum(j.numpy().reshape(len(x), -1) ** 2, axis=1))))  # noqa: E731
    blocks = [rms(tape.batch_jacobian(output, source)) for output, source in zip(outputs, [x, *outputs[:-1]])]
    return rms(tape.batch_jacobian(outputs[-1], x)), blocks


@pytest.mark.parametrize("preset", ["fp", "ternary"])
def test_the_estimate_agrees_with_the_exact_norm_within_its_stated_error(preset):
    """The conv blocks (1,024 and 512 outputs) are estimated from 16 random projections;
    the dense block and the logits (10 outputs) use the basis, so they are exact."""
    model = _model("small_cnn", (8, 8, 1), preset)
    columns = jacobian.measure(model, _digits(), seed=3)
    whole, blocks = _exact(model, _digits())
    assert columns["jacobian_projections"] == jacobian.PROJECTIONS
    assert columns["jacobian_fro_se"] == 0 and columns["jacobian_fro"] == pytest.approx(whole, rel=1e-5)
    assert columns["jacobian_block_se"][2] == 0
    assert columns["jacobian_block_fro"][2] == pytest.approx(blocks[2], rel=1e-5)
    for estimate, se, exact in zip(columns["jacobian_block_fro"][:2], columns["jacobian_block_se"][:2], blocks):
        assert 0 < se < 0.02 * exact, (se, exact)
        assert abs(estimate - exact) < 4 * se, (estimate, exact, se)


def test_the_stated_error_is_the_spread_of_repeated_estimates():
    """The standard error a row states is what the estimate actually varies by: the
    standard deviation of 30 estimates with other projections, within a factor of 1.5."""
    model = _model("small_cnn", (8, 8, 1), "int8")
    runs = [jacobian.measure(model, _digits(), seed=seed) for seed in range(30)]
    for block in (0, 1):
        estimates = np.array([run["jacobian_block_fro"][block] for run in runs])
        stated = np.mean([run["jacobian_block_se"][block] for run in runs])
        assert stated / 1.5 < estimates.std(ddof=1) < stated * 1.5, (estimates.std(ddof=1), stated)


def test_no_samples_give_null_columns():
    columns = jacobian.measure(_model("small_cnn", (8, 8, 1), "fp"), np.zeros((0, 8, 8, 1), np.float32))
    assert set(columns) == {"jacobian_fro", "jacobian_fro_se", "jacobian_blocks", "jacobian_block_fro",
                            "jacobian_block_se", "jacobian_projections"}
    assert all(value is None for value in columns.values())

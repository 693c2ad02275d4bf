"""The lean activation quantizers (sweeper.models.quantizers.lean): bit-identical outputs and
gradients to QKeras's own on fixed inputs, the same draws for stochastic_binary under the
same seed, unchanged model fingerprints, and identical weights after real training."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import models
from sweeper.models import quantizers
from sweeper.models.quantizers import QUANTIZERS, make, make_original

from conftest import lazy_module  # noqa: E402
tf = lazy_module("tensorflow")  # imported when a test runs, not at collection

# Every activation expression of the presets, plus settings the lean code must hand back
# to QKeras (so the fallbacks are exercised too).
LEAN = ["quantized_relu(8)", "quantized_relu(4)", "quantized_relu(2)", "ternary(alpha=1)",
        "binary(alpha=1)", "stochastic_binary(alpha=1)", "ternary(alpha=0.5,threshold=0.2)",
        "binary(alpha=2)"]
FALLBACK = ["quantized_relu(4,2)", "quantized_relu(4,negative_slope=0.25)",
            "ternary(alpha='auto_po2')", "binary(alpha='auto_po2')", "binary(use_01=1,alpha=1)",
            "stochastic_binary(alpha='auto_po2')"]


def _inputs() -> np.ndarray:
    """Random values plus the edges: signed zeros, every rounding tie and threshold of
    the 2-, 4- and 8-bit grids, the clip points, values far outside [-1, 1]."""
    rng = np.random.default_rng(0)
    edges = [0.0, -0.0, 0.33, -0.33, 0.5, -0.5, 1.0, -1.0, 3.7, -3.7, 1e-30, -1e-30, 1e6]
    for bits in (2, 4, 8):
        m = 2.0 ** bits
        edges += list((np.arange(-2, m + 2) + 0.5) / m) + [1 - 1 / m, 1 - 0.5 / m]
    values = np.concatenate([rng.normal(0, 1, 4000), rng.uniform(-1.2, 1.2, 4000), edges])
    return values.astype(np.float32).reshape(-1, 1)  # one channel


def _run(quantizer, x: np.ndarray, phase: int, seed: int = 7):
    """Output and input gradient (of a fixed random weighting of the output), eagerly
    under a learning phase; the global seed is reset first so draws can be compared."""
    from tf_keras.src import backend as keras_backend

    x = tf.constant(x)
    weights = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
    tf.random.set_seed(seed)
    with keras_backend.learning_phase_scope(phase), tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x)
        loss = tf.reduce_sum(y * weights)
    return y.numpy(), tape.gradient(loss, x).numpy()


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


@pytest.mark.parametrize("expression", LEAN + FALLBACK)
@pytest.mark.parametrize("phase", [0, 1])
def test_lean_quantizers_match_qkeras_bit_for_bit(expression, phase):
    lean, original = make(expression), make_original(expression)
    assert type(lean) is not type(original) and type(lean).__name__ == type(original).__name__
    x = _inputs()
    y_lean, g_lean = _run(lean, x, phase)
    y_orig, g_orig = _run(original, x, phase)
    np.testing.assert_array_equal(_bits(y_lean), _bits(y_orig))  # signed zeros included
    np.testing.assert_array_equal(_bits(g_lean), _bits(g_orig))
    assert len(np.unique(y_lean)) >= 2  # the inputs really exercise the quantizer


def test_lean_stochastic_binary_draws_like_qkeras_and_differs_between_draws():
    x = _inputs()
    lean, original = make("stochastic_binary(alpha=1)"), make_original("stochastic_binary(alpha=1)")
    np.testing.assert_array_equal(_run(lean, x, 1, seed=3)[0], _run(original, x, 1, seed=3)[0])
    assert not np.array_equal(_run(lean, x, 1, seed=3)[0], _run(lean, x, 1, seed=4)[0])
    y = _run(lean, x, 1)[0]  # x + (q - x): +-1 up to float rounding, as in QKeras
    np.testing.assert_allclose(np.abs(y), 1.0, atol=1e-6)
    assert (y[x > 3] > 0).mean() > 0.99 and 0.3 < (y[np.abs(x) < 0.01] > 0).mean() < 0.7


def test_quantizers_without_a_lean_form_are_qkeras_own():
    for expression in ["quantized_bits(8,0,alpha=1)", "stochastic_ternary(alpha='auto_po2')",
                       "quantized_sigmoid(2)"]:
        assert type(make(expression)) is type(make_original(expression))


def _build(name, shape, preset, maker, monkeypatch):
    monkeypatch.setattr(quantizers, "make", maker)
    monkeypatch.setattr(models, "make", maker)
    tf.keras.utils.set_random_seed(0)
    return models.build(name, shape, 10, QUANTIZERS.get(preset))


@pytest.mark.parametrize("preset", QUANTIZERS.names())
def test_fingerprints_and_outputs_are_unchanged(preset, monkeypatch):
    x = np.random.default_rng(0).random((16, 8, 8, 1), dtype=np.float32)
    built = {maker.__name__: _build("stq_net", (8, 8, 1), preset, maker, monkeypatch)
             for maker in (make_original, make)}
    lean, original = built["make"], built["make_original"]
    assert models.model_fingerprint(lean) == models.model_fingerprint(original)
    lean.set_weights(original.get_weights())
    np.testing.assert_array_equal(lean(x, training=False).numpy(),
                                  original(x, training=False).numpy())


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["int4", "ternary", "binary"])
def test_training_ends_on_the_same_weights(preset, monkeypatch):
    """Real fit, same seed: the lean quantizers change nothing a trial computes."""
    rng = np.random.default_rng(0)
    x, y = rng.random((128, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, 128)
    weights = []
    for maker in (make_original, make):
        model = _build("small_cnn", (8, 8, 1), preset, maker, monkeypatch)
        model.compile(optimizer=tf.keras.optimizers.Adam(0.01),
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for lean_w, orig_w in zip(*weights):
        np.testing.assert_array_equal(lean_w, orig_w)
    assert not np.array_equal(weights[1][0], _build("small_cnn", (8, 8, 1), preset, make,
                                                    monkeypatch).get_weights()[0])  # it trained

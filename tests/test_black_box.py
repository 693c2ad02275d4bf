"""The fast black-box path returns ART's stock examples exactly.

sweeper's Square (``AnyShapeSquareAttack``: one prediction per iteration where ART makes
three) and Boundary (``BatchedTrialBoundaryAttack``: each trial's candidates drawn as one
batch) on the compiled estimator must give, under the same seed, the very examples of
ART's own SquareAttack and BoundaryAttack on ART's stock estimator. Cheap tests pin the
attacks alone (ART's class and sweeper's on the same compiled estimator, untrained tiny
models); slow ones run end to end on tiny trained stq models of the input shapes that
matter (8x8x1 digits, 32x32x3, 49x10x1 MFCCs). Each also checks that another seed gives
other examples, so equality cannot come from attacks that ignored their random draws.
"""

from __future__ import annotations

import contextlib
import functools
import math
import random
from unittest import mock

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks
from sweeper.attacks import black_box

CLIP = (0.0, 1.0)
SHAPES = {"digits": (8, 8, 1), "cifar10": (32, 32, 3), "speech_commands": (49, 10, 1)}
# ART's Square draws a square's position in [0, width - side): it fails on 49x10 unless
# the squares stay narrower than 10, which p_init 0.1 ensures (side 7 at first).
NARROW_P_INIT = 0.1


def _art_works(shape, norm, params) -> bool:
    """Whether ART's own Square runs on this shape (see NARROW_P_INIT); its L2 start lays
    5x5 bumps of side height // 5, which overrun a narrow width whatever p_init."""
    return shape[0] == shape[1] or (norm == "inf" and params.get("p_init") == NARROW_P_INIT)


# --------------------------------------------------------------------------- the attacks alone


@functools.cache
def _untrained(shape):
    """(compiled classifier, 4 noise inputs at four brightness levels, their predicted
    labels) for a tiny untrained QKeras model: some inputs are predicted unlike uniform
    noise, so Boundary finds starting points."""
    from tests.test_attacks import tiny_classifier

    classifier = tiny_classifier(shape)
    noise = np.random.default_rng(0).uniform(*CLIP, (4, *shape))
    x = (noise * np.linspace(0.2, 1.0, 4)[:, None, None, None]).astype(np.float32)
    return classifier, x, classifier.predict(x).argmax(axis=1)


@pytest.mark.parametrize("shape", [(8, 8, 1), (49, 10, 1), (3, 5, 1)])
@pytest.mark.parametrize("current_dtype", [np.float32, np.float64])
def test_orthogonal_perturbs_are_arts_draw_for_draw(shape, current_dtype):
    # ART's first step runs from a float32 start, later ones from float64 candidates.
    classifier = _untrained(shape)[0]
    attack = black_box._boundary_attack_class()(classifier, targeted=False, sample_size=20)
    rng = np.random.default_rng(1)
    original = rng.uniform(*CLIP, shape).astype(np.float32)
    current = rng.uniform(*CLIP, shape).astype(current_dtype)
    np.random.seed(3)
    expected = np.array([attack._orthogonal_perturb(0.01, current, original) for _ in range(20)])
    state = np.random.get_state()
    np.random.seed(3)
    stacked = attack._orthogonal_perturbs(0.01, current, original)
    assert stacked.dtype == expected.dtype
    np.testing.assert_array_equal(stacked, expected)
    # The global stream is left where ART's 20 draws leave it (odd sizes: the cached gauss).
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))


def _run(name, classifier, x, y, eps, norm, params, seed, art=False):
    with black_box.stock_art_classes() if art else contextlib.nullcontext():
        return attacks.run(name, classifier, x, y, eps, norm, params, seed)


@pytest.mark.parametrize("shape", [(8, 8, 1), (49, 10, 1)])
def test_boundary_is_arts_on_the_same_estimator(shape):
    classifier, x, y = _untrained(shape)
    params = {"max_iter": 10, "num_trial": 5, "init_size": 20}
    expected = _run("boundary", classifier, x, y, math.inf, "2", params, 2, art=True)
    np.testing.assert_array_equal(_run("boundary", classifier, x, y, math.inf, "2", params, 2),
                                  expected)
    assert (attacks.perturbation_norms(x, expected, "2") > 0).any()
    assert not np.array_equal(_run("boundary", classifier, x, y, math.inf, "2", params, 3),
                              expected)


@pytest.mark.parametrize("shape, norm, eps, params", [
    pytest.param((8, 8, 1), "inf", 0.1, {"max_iter": 40}, id="8x8-inf"),
    # L2 on 16x16: on 8x8 ART's L2 start is 0/0 (1-pixel bumps), NaN, which sweeper's Square
    # refuses (README: a non-finite candidate is never accepted), so there the two differ.
    pytest.param((16, 16, 1), "2", 0.5, {"max_iter": 40}, id="16x16-l2"),
    pytest.param((49, 10, 1), "inf", 0.1, {"max_iter": 40, "p_init": NARROW_P_INIT},
                 id="49x10-inf-narrow"),
])
def test_square_is_arts_on_the_same_estimator(shape, norm, eps, params):
    classifier, x, y = _untrained(shape)
    expected = _run("square", classifier, x, y, eps, norm, params, 5, art=True)
    assert np.isfinite(expected).all()  # ART's own run stayed finite: the comparison means something
    np.testing.assert_array_equal(_run("square", classifier, x, y, eps, norm, params, 5), expected)
    assert (attacks.perturbation_norms(x, expected, norm) > 0).any()
    assert not np.array_equal(_run("square", classifier, x, y, eps, norm, params, 6), expected)


def test_square_predicts_once_per_iteration():
    # ART: 3 predictions per iteration. sweeper's: the clean inputs, the start, then one
    # per iteration (a budget too small to fool any sample keeps every iteration running).
    classifier, x, y = _untrained((8, 8, 1))
    attack = attacks.ATTACKS.get("square").build(
        classifier, 1e-3, "inf", attacks.art_params("square", {"max_iter": 25}), 0)
    random.seed(0)
    np.random.seed(0)
    with mock.patch.object(classifier, "predict", wraps=classifier.predict) as predict:
        x_adv = attack.generate(x=x, y=y)
    assert (classifier.predict(x_adv).argmax(axis=1) == y).all()
    assert predict.call_count == 2 + 25


def test_predict_falls_back_to_the_default_executor_on_control_flow():
    # tf.cond inside a compiled function runs as Switch/Merge, which TensorFlow's
    # single-threaded executor refuses: predict must still return the model's logits.
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 1))
    flat = tf.keras.layers.Flatten()(inputs)
    doubled = tf.keras.layers.Lambda(
        lambda t: tf.cond(tf.reduce_sum(t) > 0, lambda: t * 2.0, lambda: t))(flat)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(doubled))
    classifier = attacks.make_classifier(model, 10, (8, 8, 1), CLIP)
    x = np.random.default_rng(0).uniform(*CLIP, (3, 8, 8, 1)).astype(np.float32)
    assert classifier._executor == "SINGLE_THREADED_EXECUTOR"
    np.testing.assert_array_equal(classifier.predict(x), model(x).numpy())
    assert classifier._executor == ""  # fell back, once
    np.testing.assert_array_equal(classifier.predict(x), model(x).numpy())


# --------------------------------------------------------------------------- end to end
# ART's stock attack on ART's stock estimator against sweeper's on the compiled one.


@pytest.fixture(scope="module")
def stq_models():
    """dataset -> (stock classifier, fast classifier, inputs, labels), trained on first use."""
    return functools.cache(lambda dataset: _trained_stq_model(SHAPES[dataset]))


def _trained_stq_model(shape):
    """sweeper's small_cnn under the stq preset, one epoch on a learnable noise task (the
    label is the brightest of 10 bands): trained weights, so the attacks have work to do."""
    import tensorflow as tf

    from sweeper import models
    from sweeper.models import quantizers

    tf.keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).uniform(*CLIP, (600, *shape)).astype(np.float32)
    bands = np.array_split(x.reshape(len(x), -1), 10, axis=1)
    y = np.argmax([band.mean(axis=1) for band in bands], axis=0)
    model = models.build("small_cnn", shape, 10, quantizers.QUANTIZERS.get("stq"))
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:500], y[:500], epochs=1, batch_size=32, verbose=0)
    stock = attacks.make_stock_classifier(model, 10, shape, CLIP)
    fast = attacks.make_classifier(model, 10, shape, CLIP)
    # Held-out noise at six brightness levels, labelled by the model: predicted unlike
    # plain uniform noise, so Boundary finds starting points, and all of them attacked.
    x = (x[500:506] * np.linspace(0.1, 1.0, 6)[:, None, None, None]).astype(np.float32)
    return stock, fast, x, fast.predict(x).argmax(axis=1)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_fast_predict_is_bitwise_stock_on_stq_models(dataset, stq_models):
    stock, fast, x, _ = stq_models(dataset)
    noise = np.random.default_rng(1).uniform(*CLIP, (33, *x.shape[1:])).astype(np.float32)
    for batch in (x[:1], x, noise):
        np.testing.assert_array_equal(fast.predict(batch), stock.predict(batch))
    # Square keeps a sample's logits from whichever batch predicted it: a row's logits
    # must not depend on the rest of its batch.
    np.testing.assert_array_equal(fast.predict(noise)[5:9], fast.predict(noise[5:9]))
    # The weights were quantized once, at tracing: one constant per quantized weight.
    assert len(fast._quantized) >= 4  # small_cnn: 2 conv + 1 dense, kernels and biases


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_boundary_is_arts_stock_attack_exactly(dataset, stq_models):
    stock, fast, x, y = stq_models(dataset)
    params = {"max_iter": 15, "init_size": 50}
    expected = _run("boundary", stock, x, y, math.inf, "2", params, 4, art=True)
    np.testing.assert_array_equal(_run("boundary", fast, x, y, math.inf, "2", params, 4),
                                  expected)
    assert (attacks.perturbation_norms(x, expected, "2") > 0).any()  # it did attack
    assert not np.array_equal(_run("boundary", fast, x, y, math.inf, "2", params, 5), expected)


SQUARE_RUNS = [("inf", 0.1, {"max_iter": 30}), ("2", 0.5, {"max_iter": 30}),
               ("inf", 0.1, {"max_iter": 30, "p_init": NARROW_P_INIT})]
SQUARE_CASES = [(dataset, *run) for dataset in SHAPES for run in SQUARE_RUNS
                if _art_works(SHAPES[dataset], run[0], run[2])]


@pytest.mark.slow
@pytest.mark.parametrize("dataset, norm, eps, params", SQUARE_CASES)
def test_square_is_arts_stock_attack_exactly(dataset, norm, eps, params, stq_models):
    stock, fast, x, y = stq_models(dataset)
    expected = _run("square", stock, x, y, eps, norm, params, 6, art=True)
    np.testing.assert_array_equal(_run("square", fast, x, y, eps, norm, params, 6), expected)
    assert (attacks.perturbation_norms(x, expected, norm) > 0).any()
    assert not np.array_equal(_run("square", fast, x, y, eps, norm, params, 7), expected)


@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 0.5)])
def test_square_is_ours_on_the_stock_estimator(norm, eps, stq_models):
    # Where ART cannot run (49x10 at p_init 0.8, any L2), the attack's own draws are
    # pinned on square inputs and at NARROW_P_INIT above; here the compiled estimator
    # must change nothing.
    stock, fast, x, y = stq_models("speech_commands")
    params = {"max_iter": 30}
    expected = _run("square", stock, x, y, eps, norm, params, 6)
    np.testing.assert_array_equal(_run("square", fast, x, y, eps, norm, params, 6), expected)
    assert (attacks.perturbation_norms(x, expected, norm) > 0).any()

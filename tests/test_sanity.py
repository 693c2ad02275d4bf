"""AutoAttack's sanity checks (sweeper.models.sanity): zero gradients measured on real
trained models (binary's logits lie so far apart that float32's softmax is one-hot and the
gradient exactly zero; fp's never), a softmax output flagged as a probability simplex where
the same model's logits are not, and a model that samples at inference flagged as
randomized where sweeper's stochastic presets (sampling only while training) are not."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import datasets
from sweeper.models import sanity

TRAIN = 1200  # digits for training; the other 597 are the held-out samples checked


def _trained(preset: str, epochs: int, seed: int = 0):
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan.entries import Train
    from sweeper.run.training import train

    data = datasets.load("digits")
    order = np.random.default_rng(seed).permutation(len(data.y))
    tf.keras.utils.set_random_seed(seed)
    model = models.build("small_cnn", data.input_shape, data.nb_classes, QUANTIZERS.get(preset))
    # grids/masking.yaml's training (Adam 0.003, cosine), 30 epochs: about 5 s a model
    train(model, Train(epochs=epochs, batch_size=64, learning_rate=0.003, schedule="cosine"),
          data.x[order[:TRAIN]], data.y[order[:TRAIN]], data.nb_classes, seed)
    return model, data.x[order[TRAIN:]], data.y[order[TRAIN:]]


@pytest.fixture(scope="module")
def fp_and_binary():
    return {preset: _trained(preset, 30) for preset in ("fp", "binary")}


@pytest.mark.slow
def test_binary_has_more_samples_with_zero_gradients_than_fp(fp_and_binary):
    """Measured here (seeds 0-2): fp 0 of 597 held-out digits, binary 5-9. A zero gradient
    must come with a float32-saturated softmax (the meaning, not only the mechanism): every
    other class's probability underflows (margin above about 85 logits)."""
    shares = {}
    for preset, (model, x, y) in fp_and_binary.items():
        zero = sanity.zero_gradients(model, x, y)
        shares[preset] = zero.mean()
        logits = np.asarray(model(x, training=False), np.float64)
        ranked = np.sort(logits, axis=1)
        margins = ranked[:, -1] - ranked[:, -2]
        assert np.all(margins[zero] > 80), (preset, margins[zero])
        assert sanity.measure(model, x, y)["zero_grad_share"] == pytest.approx(shares[preset])
    assert shares["fp"] == 0.0
    assert shares["binary"] * len(fp_and_binary["binary"][2]) >= 3, shares  # at least 3 samples of 597
    assert shares["binary"] > shares["fp"]


@pytest.mark.slow
def test_a_softmax_output_is_flagged_and_the_same_models_logits_are_not(fp_and_binary):
    import tensorflow as tf

    model, x, y = fp_and_binary["fp"]
    probabilities = tf.keras.Model(model.inputs, tf.keras.layers.Softmax()(model.outputs[0]))
    assert sanity.measure(probabilities, x, y)["output_is_simplex"] is True
    assert sanity.measure(model, x, y)["output_is_simplex"] is False
    # logits of a model that happen to sum to 1 but leave [0, 1] are no simplex
    assert not sanity.is_simplex(np.array([[1.5, -0.5], [0.5, 0.5]]))
    assert sanity.is_simplex(np.array([[0.25, 0.75], [1.0, 0.0]]))


@pytest.mark.slow
def test_a_model_that_samples_at_inference_is_flagged_randomized(fp_and_binary):
    import tensorflow as tf

    model, x, y = fp_and_binary["fp"]
    inputs = tf.keras.Input(model.input_shape[1:])
    # dropout kept on at inference: the textbook randomized defense that needs EOT
    noisy = tf.keras.Model(inputs, model(tf.keras.layers.Dropout(0.3)(inputs, training=True)))
    assert sanity.measure(noisy, x, y)["randomized"] is True
    assert sanity.measure(model, x, y)["randomized"] is False


def test_stochastic_presets_are_deterministic_where_attacks_query_them():
    """stq and sbinary sample while training only (sweeper.models.QModel): five evaluations
    agree, so they need no EOT. Untrained models suffice: the check is about the forward pass."""
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    data = datasets.load("digits")
    x, y = data.x[:64], data.y[:64]
    for preset in ("stq", "sbinary"):
        tf.keras.utils.set_random_seed(0)
        model = models.build("small_cnn", data.input_shape, data.nb_classes, QUANTIZERS.get(preset))
        columns = sanity.measure(model, x, y)
        assert columns["randomized"] is False and columns["output_is_simplex"] is False, preset
        # ...while a training-mode forward pass does sample: the check would see it
        first, second = (np.asarray(model(x, training=True)) for _ in range(2))
        assert not np.array_equal(first, second), preset


def test_no_samples_give_null_columns():
    assert sanity.measure(None, np.zeros((0, 8, 8, 1)), np.zeros(0)) == dict.fromkeys(sanity.COLUMNS)


def test_the_report_shows_the_checks_beside_the_masking_flags(tmp_path):
    """Pooled per configuration over its folds' models: zero-gradient samples out of the
    attacked samples, and whether any model's output is a simplex or randomized."""
    from sweeper import store
    from sweeper.analysis import report
    from tests.test_report import _rows

    shares = {"fp": (0.0, 0.0, 0.0), "int4": (0.02, 0.05, 0.0)}  # of 100 attacked samples per fold
    rows = [{**row, "zero_grad_share": shares[row["quantizer"]][row["fold"]], "output_is_simplex": False,
             "randomized": row["quantizer"] == "int4" and row["fold"] == 1} for row in _rows()]
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, rows)
    text = report.write(location.text, tmp_path / "report").read_text()
    section = text.split("## Gradient-masking diagnostics", 1)[1].split("\n## ", 1)[0]
    header = next(line for line in section.splitlines() if line.startswith("| dataset"))
    assert header.endswith("| zero grad | simplex | randomized |")
    cells = {line.split(" | ")[1]: line.strip(" |").split(" | ")[-3:] for line in section.splitlines()
             if line.startswith("| digits |")}
    assert cells == {"small_cnn / fp": ["0/300", "no", "no"], "small_cnn / int4": ["7/300", "no", "yes"]}

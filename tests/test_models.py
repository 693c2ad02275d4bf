"""Models and quantizer presets: QKeras layers carry each preset's quantizers, outputs
are logits, and the stochastic presets really sample while training (and only then)."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import models
from sweeper.quantizers import QUANTIZERS

tf = pytest.importorskip("tensorflow")


def _build(preset: str, model_class=None):
    tf.keras.utils.set_random_seed(0)
    model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get(preset))
    if model_class is not None:  # the same graph in another Model class
        model = model_class(model.inputs, model.outputs)
    return model


def _batch(n=32):
    rng = np.random.default_rng(0)
    return rng.random((n, 8, 8, 1), dtype=np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize("preset", QUANTIZERS.names())
def test_every_preset_builds_with_its_quantizers(preset):
    model = _build(preset)
    x, _ = _batch(4)
    logits = model(x, training=False).numpy()
    assert logits.shape == (4, 10)
    assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities
    kernels = [str(layer.kernel_quantizer_internal) for layer in model.layers
               if hasattr(layer, "kernel_quantizer_internal")]
    assert len(kernels) == 3
    expected = QUANTIZERS.get(preset).kernel
    if expected is None:
        assert set(kernels) == {"None"}
    else:
        assert all(k.split("(")[0] == expected.split("(")[0] for k in kernels)


def test_unknown_model_lists_available():
    with pytest.raises(Exception, match="unknown model 'vgg'; available: small_cnn"):
        models.build("vgg", (8, 8, 1), 10, QUANTIZERS.get("fp"))


def _losses_with_frozen_weights(model, epochs=3):
    """Loss of the same batch over several epochs of fit with learning rate 0: the weights
    and the batch never change, so the losses differ only if the forward pass samples."""
    x, y = _batch()
    model.compile(optimizer=tf.keras.optimizers.SGD(learning_rate=0.0),
                  loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
    history = model.fit(x, tf.keras.utils.to_categorical(y, 10), batch_size=len(x), epochs=epochs,
                        shuffle=False, verbose=0)
    return history.history["loss"]


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["stq", "sbinary"])
def test_stochastic_presets_sample_in_fit_and_are_deterministic_in_evaluation(preset):
    model = _build(preset)
    x, _ = _batch()
    losses = _losses_with_frozen_weights(model)
    assert len(set(np.round(losses, 6))) > 1, "fit saw the same loss each epoch: not stochastic"
    train_a, train_b = model(x, training=True).numpy(), model(x, training=True).numpy()
    assert not np.allclose(train_a, train_b)
    compiled = tf.function(lambda batch: model(batch, training=True))
    assert not np.allclose(compiled(x).numpy(), compiled(x).numpy())
    eval_a, eval_b = model(x, training=False).numpy(), model(x, training=False).numpy()
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_array_equal(model.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.slow
def test_deterministic_presets_do_not_sample():
    losses = _losses_with_frozen_weights(_build("ternary"))
    assert np.allclose(losses, losses[0])


@pytest.mark.slow
def test_plain_keras_model_hides_the_stochastic_quantizers():
    """The trap QModel exists for: QKeras's stochastic quantizers in a plain tf.keras
    Model train deterministically under TF2."""
    model = _build("stq", model_class=tf.keras.Model)
    x, _ = _batch()
    np.testing.assert_array_equal(model(x, training=True).numpy(), model(x, training=True).numpy())
    losses = _losses_with_frozen_weights(model, epochs=4)
    assert np.allclose(losses[1:], losses[1])  # (the first traced step differs, then never again)

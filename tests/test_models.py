"""Models and quantizer presets: QKeras layers carry each preset's quantizers, outputs
are logits, and the stochastic presets really sample while training (and only then)."""

from __future__ import annotations

import numpy as np
import pytest

from sweeper import models
from sweeper.deploy.footprint import WEIGHT_QUANTIZER_ATTR, leaf_layers, short_weight_name
from sweeper.models.quantizers import QUANTIZERS, make

from conftest import lazy_module  # noqa: E402
tf = lazy_module("tensorflow")  # imported when a test runs, not at collection


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


@pytest.mark.parametrize("preset", QUANTIZERS.names())
def test_a_samples_prediction_does_not_depend_on_its_batch(preset):
    # An MCU classifies one sample at a time; a quantizer whose scale is computed over the
    # batch (alpha='auto_po2' on activations) would make accuracy depend on batch size and
    # let decision-based attacks "succeed" in one batch and fail in another.
    model = _build(preset)
    x, _ = _batch(32)
    together = model(x, training=False).numpy()
    alone = np.concatenate([model(x[i:i + 1], training=False).numpy() for i in range(4)])
    np.testing.assert_allclose(alone, together[:4], rtol=1e-5, atol=1e-5)


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


# --- the registered architectures: MLPerf Tiny references and the paper's network ---

NEW_MODELS = ["resnet8", "dscnn", "stq_net"]
# (input shape, classes): embedded digits, CIFAR-10, grayscale 32x32, Speech Commands MFCCs
SHAPES = [((8, 8, 1), 10), ((32, 32, 3), 10), ((32, 32, 1), 10), ((49, 10, 1), 12)]
PAPER_STQ_PARAMS = 998_824


def _model(name, input_shape, nb_classes, preset="fp"):
    tf.keras.utils.set_random_seed(0)
    return models.build(name, input_shape, nb_classes, QUANTIZERS.get(preset))


@pytest.mark.parametrize("name, input_shape, nb_classes, params", [
    ("resnet8", (32, 32, 3), 10, 78_666),  # MLPerf Tiny image classification (CIFAR-10)
    ("dscnn", (49, 10, 1), 12, 24_908),  # MLPerf Tiny keyword spotting (49x10 MFCCs)
])
def test_mlperf_tiny_references_have_their_exact_parameter_counts(name, input_shape, nb_classes,
                                                                  params):
    assert _model(name, input_shape, nb_classes).count_params() == params


def test_stq_net_has_about_the_papers_parameter_count():
    params = _model("stq_net", (32, 32, 1), 10).count_params()
    print(f"stq_net on 32x32x1, 10 classes: {params:,} parameters (paper: {PAPER_STQ_PARAMS:,})")
    assert 0.9 * PAPER_STQ_PARAMS <= params <= 1.1 * PAPER_STQ_PARAMS


@pytest.mark.slow
def test_quantization_adds_no_weights():
    counts = {preset: _model("dscnn", (49, 10, 1), 12, preset).count_params()
              for preset in QUANTIZERS.names()}
    assert set(counts.values()) == {24_908}, counts


@pytest.mark.parametrize("name", models.MODELS.names())
def test_every_model_adapts_to_every_input_shape(name):
    for input_shape, nb_classes in SHAPES:
        model = _model(name, input_shape, nb_classes)
        x = np.random.default_rng(0).random((2, *input_shape), dtype=np.float32)
        logits = model(x, training=False).numpy()
        assert logits.shape == (2, nb_classes), (input_shape, logits.shape)
        assert np.isfinite(logits).all()
        assert not np.allclose(logits.sum(axis=1), 1.0)  # logits, not probabilities


def _expected_weight_quantizer(preset, weight: str) -> str:
    expression = preset.bias if weight == "bias" else preset.kernel  # kernel/depthwise/pointwise
    return str(make(expression))


@pytest.mark.parametrize("preset", QUANTIZERS.names())
@pytest.mark.parametrize("name", NEW_MODELS)
def test_every_weight_layer_carries_the_presets_quantizers(name, preset):
    """Every weight of every layer but batch norm is quantized by the preset (a plain
    Conv2D/Dense, or a QKeras layer built without its quantizer, fails here), and every
    activation but the sigmoid gate is the preset's."""
    p = QUANTIZERS.get(preset)
    model = _model(name, (8, 8, 1), 10, preset)
    quantized = 0
    for layer in leaf_layers(model):
        if isinstance(layer, tf.keras.layers.BatchNormalization) or not layer.weights:
            continue
        for variable in layer.weights:
            weight = short_weight_name(variable)
            attr = WEIGHT_QUANTIZER_ATTR[weight]
            assert hasattr(layer, attr), f"{layer.name} ({type(layer).__name__}) is not quantized"
            quantizer = getattr(layer, attr)
            assert str(quantizer) == _expected_weight_quantizer(p, weight), (layer.name, weight)
            if preset.startswith("int"):
                assert quantizer.__class__.__name__ == "quantized_bits"
                assert quantizer.bits == int(preset[3:])
            quantized += 1
    assert quantized >= 8  # kernels and biases of at least four layers

    if p.activation == "relu":
        return
    expected = make(p.activation)
    for layer in leaf_layers(model):
        if type(layer).__name__ != "QActivation":
            continue
        if str(layer.quantizer).startswith("quantized_sigmoid("):  # stq_net's gate
            assert name == "stq_net" and layer.quantizer.bits == expected.bits
        else:
            assert str(layer.quantizer) == str(expected), layer.name


def test_stq_net_samples_while_training_only():
    model = _model("stq_net", (8, 8, 1), 10, "stq")
    x, _ = _batch(8)
    assert not np.allclose(model(x, training=True).numpy(), model(x, training=True).numpy())
    np.testing.assert_array_equal(model(x, training=False).numpy(), model(x, training=False).numpy())


QKERAS_WITHOUT_KERAS3 = """
import sys
from sweeper.models import qk
from tensorflow_model_optimization.python.core.sparsity.keras import prune_registry
assert "keras" not in sys.modules, "Keras 3 was imported with QKeras"
assert prune_registry.base_layer is None  # the fallback tfmot takes when Keras 3 has no keras.src.engine
import keras
assert keras.__version__.startswith("3."), keras.__version__  # the block is lifted
print("ok")
"""


@pytest.mark.slow
def test_qkeras_is_imported_without_keras_3_and_keras_still_imports_afterwards():
    """sweeper.models.qk blocks `keras` only while QKeras imports (tfmot would import all of
    Keras 3 to fail on a missing module): the same fallback, a second less per process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", QKERAS_WITHOUT_KERAS3], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_sweepers_pipelines_run_untuned_with_the_same_batches_and_predictions(monkeypatch):
    """tf.data's autotuning thread is joined when an iterator dies: up to a second of idle
    core at the end of each fit (bench/tf_data.py). Every pipeline sweeper builds turns it
    off, and gives what the autotuned one gives."""
    from sweeper.defenses.bit_width import accuracy_by_width
    from sweeper.run import evaluate, training

    x, y = _batch(40)
    onehot = np.eye(10, dtype=np.float32)[y]
    batches = training._epoch_batches(x, onehot, 0, 2, 16, seed=3)
    assert batches.options().autotune.enabled is False
    monkeypatch.setattr(training, "untuned", lambda dataset: dataset)
    autotuned = training._epoch_batches(x, onehot, 0, 2, 16, seed=3)
    assert autotuned.options().autotune.enabled is not False
    pairs = list(zip(batches, autotuned))
    assert len(pairs) == 6  # 2 epochs of 3 batches
    for (x_a, y_a), (x_b, y_b) in pairs:
        np.testing.assert_array_equal(x_a, x_b)
        np.testing.assert_array_equal(y_a, y_b)

    model = _build("int4")
    np.testing.assert_array_equal(models.predict_logits(model, x, batch_size=16),
                                  model.predict(x, batch_size=16, verbose=0))
    built = []
    monkeypatch.setattr(models, "untuned", lambda dataset: built.append(dataset) or dataset)
    evaluate.predict(model, x)
    accuracy_by_width(model, x, y, [4])
    assert len(built) == 2  # the trial's predictions and each width's go through it


def _graph_outputs_and_gradients(model, x, y):
    """Inference logits, training-mode (sampling) logits and their loss's gradients, in one
    traced graph."""
    @tf.function
    def step(x, y):
        inference = model(x, training=False)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
        return [inference, logits, *tape.gradient(loss, model.trainable_weights)]

    tf.random.set_seed(7)  # the stochastic presets' draws, the same in both graphs
    return [tensor.numpy() for tensor in step(x, y)]


@pytest.mark.parametrize("name, preset", [*(("small_cnn", p) for p in QUANTIZERS.names()),
                                          ("dscnn", "int4"), ("stq_net", "stq")])
def test_qkeras_layers_without_autograph_compute_what_converted_layers_compute(name, preset):
    # sweeper.models.qk skips AutoGraph's conversion of QKeras's layers (about 2 s of CPU
    # per process); their graphs must be the ones Keras's converted calls trace: the same
    # logits and gradients, bit for bit, in inference and in training (sampling) mode.
    from sweeper.models import qk

    shape = (16, 16, 1) if name == "dscnn" else (8, 8, 1)
    x = np.random.default_rng(1).random((8, *shape), dtype=np.float32)
    y = np.arange(8) % 10
    model = _model(name, shape, 10, preset)
    assert hasattr(qk.QConv2D.call, "__wrapped__")  # sweeper's do_not_convert
    with qk.converted_by_autograph():
        assert not hasattr(qk.QConv2D.call, "__wrapped__")  # QKeras's own call, which Keras converts
        converted = _model(name, shape, 10, preset)
        converted.set_weights(model.get_weights())  # before a training-mode call moves BatchNorm's statistics
        expected = _graph_outputs_and_gradients(converted, x, y)
    got = _graph_outputs_and_gradients(model, x, y)
    assert len(got) == len(expected) > 3
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)

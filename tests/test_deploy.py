"""Deployment to TFLite Micro: stripping QKeras, full-int8 conversion, the measured arena and
weights against the MLPerf Tiny reference models, and the deployed network's predictions."""

import subprocess
import sys

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from sweeper import deploy

from conftest import lazy_module  # noqa: E402
tf = lazy_module("tensorflow")  # imported when a test runs, not at collection
lazy_module("qkeras")
lazy_module("tflite_micro")

from sweeper import models  # noqa: E402
from sweeper.models.quantizers import QUANTIZERS  # noqa: E402

# MLPerf Tiny v1.0 reference int8 models (mlcommons/tiny, benchmark/training/
# image_classification/trained_models/pretrainedResnet_quant.tflite and keyword_spotting/
# trained_models/kws_ref_model.tflite): int8 weight bytes, int32 constant bytes (biases
# and the RESHAPE shape vector), and the TFLM arena that deploy.arena_bytes measures for
# those very files on this host build (55,984 B = "56.0 kB", 24,272 B = "24.3 kB").
REFERENCES = {
    "resnet8": dict(shape=(32, 32, 3), classes=10, int8=77_360, int32=1_392, arena=55_984),
    "dscnn": dict(shape=(49, 10, 1), classes=12, int8=22_016, int32=2_360, arena=24_272),
}
INT_PRESETS = ("int8", "int4", "int2")

pytestmark = [pytest.mark.filterwarnings("ignore:The initializer .* is unseeded"),
              pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")]


@pytest.fixture(autouse=True)
def _fresh_graph():
    tf.keras.backend.clear_session()
    yield


def _briefly_trained(name, shape, classes, preset, steps=2, seed=0):
    """A model after a few optimizer steps on random data: non-zero, distinct biases and
    moved batch-norm statistics, which is all conversion needs."""
    tf.keras.utils.set_random_seed(seed)
    model = models.build(name, shape, classes, QUANTIZERS.get(preset))
    rng = np.random.default_rng(seed)
    x = rng.random((32 * steps, *shape), dtype=np.float32)
    model.compile(optimizer="adam",
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, rng.integers(0, classes, len(x)), batch_size=32, epochs=1, verbose=0)
    return model, x


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0).astype(np.float32)[..., None], digits.target


def test_import_is_light():
    code = ("import sys, sweeper.deploy; print(sorted(m for m in "
            "('tensorflow', 'qkeras', 'tflite_micro') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_reference_models_match_mlperf_tiny(name):
    """sweeper's resnet8/dscnn at fp, converted through a SavedModel (the reference files'
    graph, RESHAPE included), have exactly the MLPerf Tiny reference's int8 weights and
    int32 constants; with the reference's final SOFTMAX appended their TFLM arena is the
    reference's to the byte. sweeper's default conversion (the frozen graph, RESHAPE
    folded into FULLY_CONNECTED) has the same weights and biases and needs a little less
    arena: within the brief's 1 KB either way."""
    ref = REFERENCES[name]
    model, x = _briefly_trained(name, ref["shape"], ref["classes"], "fp")
    plain = deploy.strip(model)
    as_reference = deploy.convert_int8(plain, x[:32], via_saved_model=True)
    assert deploy.constant_bytes(as_reference) == {"INT8": ref["int8"], "INT32": ref["int32"]}
    with_softmax = tf.keras.Model(plain.inputs, tf.keras.layers.Softmax()(plain.outputs[0]))
    softmax_arena = deploy.arena_bytes(deploy.convert_int8(with_softmax, x[:32], via_saved_model=True))
    assert softmax_arena == ref["arena"]
    softmax_share = softmax_arena - deploy.arena_bytes(as_reference)
    assert 0 < softmax_share <= 256, softmax_share

    logits = deploy.convert_int8(plain, x[:32])  # what sweeper deploys
    constants = deploy.constant_bytes(logits)
    assert deploy.weight_bytes(logits) == constants["INT8"] == ref["int8"]
    assert ref["int32"] - 8 <= constants["INT32"] <= ref["int32"]  # less RESHAPE's shape vector
    arena = deploy.arena_bytes(logits)
    assert arena <= softmax_arena - softmax_share
    assert abs(arena + softmax_share - ref["arena"]) <= 1024
    assert abs(arena - ref["arena"]) <= 1024


def test_estimate_is_the_fused_int8_activation_peak():
    """The MLPerf references' non-persistent arena heads: 3 x 32x32x16 int8 tensors live
    at once in ResNet-8's first residual stack, 2 x 25x5x64 in DS-CNN."""
    resnet8 = models.build("resnet8", (32, 32, 3), 10, QUANTIZERS.get("int4"))
    assert deploy.estimate_ram_bytes(resnet8) == 49_152
    dscnn = models.build("dscnn", (49, 10, 1), 12, QUANTIZERS.get("ternary"))
    assert deploy.estimate_ram_bytes(dscnn) == 16_000


@pytest.mark.slow
def test_every_preset_of_small_cnn_deploys():
    sizes = {}
    for preset in QUANTIZERS.names():
        model, x = _briefly_trained("small_cnn", (8, 8, 1), 10, preset)
        deployed = deploy.deploy(model, x[:32])
        assert deployed.error is None, (preset, deployed.error)
        assert deployed.flatbuffer_bytes == len(deployed.flatbuffer)
        assert deployed.arena_bytes > 0 and deployed.convert_s > 0
        sizes[preset] = deployed.weight_bytes
    # TFLite stores every preset's weights as int8: one byte a weight, whatever the bits.
    kernels = 3 * 3 * 1 * 16 + 3 * 3 * 16 * 32 + 4 * 4 * 32 * 10
    assert set(sizes.values()) == {kernels}, sizes


@pytest.mark.parametrize("preset", INT_PRESETS)
def test_stripped_model_computes_the_qkeras_model(preset):
    model, x = _briefly_trained("small_cnn", (8, 8, 1), 10, preset)
    before = [w.copy() for w in model.get_weights()]
    plain = deploy.strip(model)
    assert not any(type(layer).__name__.startswith("Q") for layer in plain.layers)
    np.testing.assert_allclose(plain.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=0, atol=1e-5)
    for kept, now in zip(before, model.get_weights()):  # the caller's model is untouched
        np.testing.assert_array_equal(kept, now)


@pytest.mark.parametrize("preset,agreement", [("fp", 0.95), ("int8", 0.95), ("ternary", 0.9),
                                              ("binary", 0.8)])
def test_deployed_predictions_agree_with_qkeras(preset, agreement):
    """On held-out digits after brief training, the int8 .tflite predicts what the QKeras
    model predicts (measured: fp 1.000, int8 0.997, ternary 0.99, binary 0.91 after 8
    epochs; binary nets amplify every flipped sign)."""
    x, y = _digits()
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    tf.keras.utils.set_random_seed(0)
    model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get(preset))
    model.compile(optimizer="adam",
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1200], y[:1200], batch_size=64, epochs=6, verbose=0)
    flatbuffer = deploy.convert_int8(deploy.strip(model), x[:256])
    test_x, test_y = x[1200:], y[1200:]
    deployed = deploy.evaluate(flatbuffer, test_x, test_y)
    qkeras_pred = np.argmax(model.predict(test_x, verbose=0), axis=1)
    assert np.mean(deployed.predictions == qkeras_pred) >= agreement
    assert deployed.accuracy == pytest.approx(np.mean(deployed.predictions == test_y))
    assert deploy.evaluate(flatbuffer, test_x[:5]).accuracy is None
    _assert_biases_at_input_times_weight_scale(flatbuffer)


def _assert_biases_at_input_times_weight_scale(flatbuffer):
    """What TFLite's kernels assume of every conv/dense bias (the converter does not
    always deliver it: deploy rescales)."""
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    scales = {t["index"]: t["quantization_parameters"]["scales"]
              for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            source, weights, bias = op["inputs"][:3]
            np.testing.assert_allclose(scales[bias], scales[source][0] * scales[weights], rtol=1e-6)


def _tflm_allocates(path, size) -> bool:
    """TFLM's interpreter in a fresh process (it may crash on a too-small arena)."""
    code = ("import sys; from tflite_micro.python.tflite_micro import runtime; "
            "runtime.Interpreter.from_bytes(open(sys.argv[1], 'rb').read(), "
            "arena_size=int(sys.argv[2]))")
    done = subprocess.run([sys.executable, "-c", code, str(path), str(size)], capture_output=True)
    return done.returncode == 0


def test_arena_search_finds_the_minimum(tmp_path):
    model, x = _briefly_trained("small_cnn", (8, 8, 1), 10, "int4")
    flatbuffer = deploy.convert_int8(deploy.strip(model), x[:32])
    path = tmp_path / "model.tflite"
    path.write_bytes(flatbuffer)
    arena = deploy.arena_bytes(flatbuffer)
    assert _tflm_allocates(path, arena)
    assert not _tflm_allocates(path, arena - 1)
    measured = deploy.measure(flatbuffer)  # a cached flatbuffer: same figures, no conversion
    assert (measured.arena_bytes, measured.flatbuffer_bytes, measured.convert_s) == \
        (arena, len(flatbuffer), 0.0)
    assert deploy.measure(b"not a flatbuffer").error


@pytest.mark.parametrize("op,reason", [(lambda v: tf.math.erfinv(v), "Erfinv"),
                                       (lambda v: tf.math.lgamma(v), "float ops")])
def test_a_rejected_model_gives_an_error_not_an_exception(op, reason):
    """erfinv has no TFLite op (the converter raises); lgamma converts, but only to float
    ops between DEQUANTIZE and QUANTIZE, which is no int8 deployment either."""
    inputs = tf.keras.Input((8,))
    model = tf.keras.Model(inputs, tf.keras.layers.Lambda(op)(inputs))
    deployed = deploy.deploy(model, np.random.default_rng(0).random((8, 8), dtype=np.float32) / 2)
    assert reason in deployed.error and "\n" not in deployed.error
    assert deployed.flatbuffer is None and deployed.arena_bytes is None
    assert deployed.weight_bytes is None and not deployed.ok


def test_an_undeployable_quantizer_is_named():
    from qkeras import QActivation

    inputs = tf.keras.Input((8,))
    outputs = QActivation("quantized_tanh(4)", name="squash")(inputs)
    deployed = deploy.deploy(tf.keras.Model(inputs, outputs), np.zeros((4, 8), np.float32))
    assert "squash" in deployed.error and "quantized_tanh" in deployed.error
    assert "\n" not in deployed.error

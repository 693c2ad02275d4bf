"""Sub-byte builds (sweeper/deploy/builds.py, lut.py, int4.py): smaller flatbuffers that
TFLM's own interpreter must run to exactly the int8 build's predictions, or be refused
with the reason."""

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from sweeper import deploy

from conftest import lazy_module  # noqa: E402
tf = lazy_module("tensorflow")  # imported when a test runs, not at collection
lazy_module("qkeras")
lazy_module("tflite_micro")

from sweeper import models  # noqa: E402
from sweeper.deploy.filters import filters, read, write  # noqa: E402
from sweeper.deploy.int4 import int4_flatbuffer, pack, unpack  # noqa: E402
from sweeper.deploy.lut import lut_flatbuffer  # noqa: E402
from sweeper.deploy.tflm import tflm_outputs  # noqa: E402
from sweeper.models.quantizers import QUANTIZERS  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:The initializer .* is unseeded")]
CHECK = 100  # held-out digits every build is checked on


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    return (data.images / 16.0).astype(np.float32)[order][..., None], data.target[order]


@pytest.fixture(scope="module")
def int8_builds(digits):
    """{preset: int8 flatbuffer} of small_cnn after 3 epochs on 1,200 digits (ternary,
    binary, and int4, whose dense rows then hold 3 to 5 of the layer's 5 int8 values)."""
    x, y = digits
    built = {}
    for preset in ("ternary", "binary", "int4"):
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(0)
        model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get(preset))
        model.compile(optimizer="adam",
                      loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x[:1200], y[:1200], batch_size=64, epochs=3, verbose=0)
        built[preset] = deploy.convert_int8(deploy.strip(model), x[:200])
    return built


def test_int4_nibbles_are_tflms():
    """Two values a byte, the first in the low nibble, an odd last one alone: what
    tflite::tensor_utils::UnpackDenseInt4IntoInt8 reads back."""
    assert pack([1, -1, 7, -8, 3]) == bytes([0xF1, 0x87, 0x03])
    values = np.random.default_rng(0).integers(-8, 8, 101)
    np.testing.assert_array_equal(unpack(pack(values), 101), values)
    with pytest.raises(ValueError):
        pack([8])


@pytest.mark.parametrize("preset", ["ternary", "binary"])
def test_lut_build_is_exact_and_smaller_int4_is_refused(int8_builds, digits, preset):
    """The LUT build decodes the int8 build's very values: same int8 outputs on every
    check sample, 2-bit (ternary) or 1-bit (binary) indices, about 30% less flash, and
    the decoded filters in the arena. The INT4 build is smaller still, but to fit 4 bits
    its filters are divided by 127 (ternary/binary int8 values are +-127), which coarsens
    biases and requantization: it predicts differently, so it is refused with the
    reason, its figures kept, its flatbuffer not."""
    x = digits[0][1200:1200 + CHECK]
    int8, lut, int4 = deploy.builds(int8_builds[preset], x)
    assert (int8.format, lut.format, int4.format) == ("int8", "lut", "int4")
    assert int8.ok and int8.identical and int8.check_samples == CHECK

    assert lut.ok and lut.identical and lut.outputs_identical and lut.agreement == 1.0
    assert lut.check_samples == CHECK and lut.flatbuffer_bytes == len(lut.flatbuffer)
    assert lut.flatbuffer_bytes < 0.75 * int8.flatbuffer_bytes
    assert f"{1 if preset == 'binary' else 2}-bit indices" in lut.summary
    assert lut.arena_bytes > int8.arena_bytes  # DECODE writes the filters into the arena

    assert not int4.ok and int4.flatbuffer is None and not int4.identical
    assert "predicts differently" in int4.error and "rescaled by up to 127x" in int4.error
    assert int4.agreement < 1.0 and int4.check_samples == CHECK
    assert int4.flatbuffer_bytes < 0.75 * int8.flatbuffer_bytes  # binary LUT (1 bit) is smaller
    assert int4.arena_bytes > int8.arena_bytes  # reference kernels unpack into the arena


def test_int4_packing_computes_what_int8_does_on_the_same_values(int8_builds, digits):
    """Storage alone: the INT4 build against the same flatbuffer with its filters
    unpacked back to INT8 (same values, scales and biases). TFLM gives bit-identical
    outputs, so the nibble order and the retyping are right; the refusal above comes
    from the rescaling, not from the packing."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as schema

    packed, summary = int4_flatbuffer(int8_builds["ternary"])
    assert summary.startswith("3 of 3 filters packed")
    model = read(packed)
    retyped = 0
    for tensor in model.subgraphs[0].tensors:
        if tensor.dtype == schema.TensorType.INT4:
            count = int(np.prod(tensor.shape))
            assert len(tensor.buffer.data) == (count + 1) // 2
            values = unpack(tensor.buffer.data, count)
            assert set(np.unique(values)) <= {-1, 0, 1}  # ternary: 127 x {-1, 0, 1}
            tensor.dtype = schema.TensorType.INT8
            tensor.buffer.data = values.tobytes()
            retyped += 1
    assert retyped == 3
    x = digits[0][1200:1200 + 30]
    np.testing.assert_array_equal(tflm_outputs(packed, x), tflm_outputs(write(model), x))


def test_lut_tables_follow_the_tensors_quantization(int8_builds, digits):
    """Why an int4 LUT build once differed: TFLM's DECODE takes the channel count from
    the tensor's quantization, so a per-tensor-quantized dense kernel compressed with a
    table per output row is decoded with row 0's table for every row. The rows of this
    int4 dense layer hold different subsets of its values: that spec (the one issue 22
    measured) changes the outputs; the one lut_flatbuffer writes (one table, as the
    tensor has one scale) does not."""
    from tflite_micro.tensorflow.lite.micro.compression import compress, spec

    int8 = int8_builds["int4"]
    dense = [f for f in filters(read(int8)) if f.op == "FULLY_CONNECTED"][0]
    assert dense.axis is None  # one scale for the whole kernel
    rows = [frozenset(np.unique(row)) for row in dense.channels[0].reshape(10, -1)]
    assert len(set(rows)) > 1  # the rows hold different value sets
    bits = max(1, (max(len(r) for r in rows) - 1).bit_length())
    per_row = bytes(compress(int8, [spec.Tensor(subgraph=0, tensor=dense.tensor, compression=[
        spec.LookUpTableCompression(index_bitwidth=bits, mode=spec.PerChannel(axis=0))])]))
    x = digits[0][1200:1200 + CHECK]
    reference = tflm_outputs(int8, x)
    assert not np.array_equal(tflm_outputs(per_row, x), reference)
    compressed, summary = lut_flatbuffer(int8)
    assert "filters as" in summary
    np.testing.assert_array_equal(tflm_outputs(compressed, x), reference)


def test_too_many_values_per_table_refuses_the_lut_build(digits):
    """An fp model's filters take up to 255 int8 values: no filter shrinks with a LUT
    (8-bit indices are the DECODE format's limit plus one), so the LUT build is refused
    with the reason; so is INT4 (no channel is a multiple of a 4-bit grid)."""
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get("fp"))
    x = digits[0]
    int8, lut, int4 = deploy.builds(deploy.convert_int8(deploy.strip(model), x[:64]), x[:8])
    assert int8.ok
    assert lut.error.startswith("DeployError: no filter gains from LUT compression")
    assert "8-bit indices" in lut.error and lut.flatbuffer is None
    assert int4.error.startswith("DeployError: no filter fits 4 bits")
    assert "\n" not in lut.error + int4.error


def test_a_build_the_tools_reject_is_a_row_not_an_exception():
    built = deploy.builds(b"not a flatbuffer", np.zeros((2, 8, 8, 1), np.float32))
    assert [b.format for b in built] == ["int8", "lut", "int4"]
    assert all(b.error and "\n" not in b.error and b.flatbuffer is None for b in built[1:])
    assert built[0].error and not built[0].ok

"""Resource figures beyond memory: MACs counted from the converted graph against the
published MLPerf Tiny figures, and latency estimates against their calibration points."""

import dataclasses

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from sweeper.deploy.latency import CALIBRATIONS, RUNTIMES, calibration, estimate, latency_ms
from sweeper.deploy.macs import PUBLISHED_MACS, REFERENCE_MACS
from sweeper.deploy.mcus import MCUS
from sweeper.errors import UserError

pytestmark = [pytest.mark.filterwarnings("ignore:The initializer .* is unseeded")]

SHAPES = {"resnet8": ((32, 32, 3), 10), "dscnn": ((49, 10, 1), 12), "small_cnn": ((8, 8, 1), 10)}


@pytest.fixture(scope="module")
def converted():
    """{model: int8 flatbuffer} of untrained fp models (MACs depend on shapes only)."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("tflite_micro")
    from sweeper import deploy, models
    from sweeper.models.quantizers import QUANTIZERS

    built = {}
    for name, (shape, classes) in SHAPES.items():
        model = models.build(name, shape, classes, QUANTIZERS.get("fp"))
        x = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
        built[name] = deploy.convert_int8(deploy.strip(model), x)
    return built


@pytest.mark.parametrize("name", ["resnet8", "dscnn"])
def test_macs_match_the_published_mlperf_tiny_figures(converted, name):
    """silabs/mltk's model docstrings ("mltk summarize --tflite"): ResNet-8 "Total MACs:
    12.502 M", DS-CNN "2.657 M". Their convolutions and dense layer match to the rounding;
    sweeper also counts resnet8's three residual ADDs (MLTK counts an ADD as 0 MACs)."""
    from sweeper.deploy import mac_counts, macs

    counts = mac_counts(converted[name])
    total = macs(converted[name])
    assert total == REFERENCE_MACS[name]
    assert abs(total - PUBLISHED_MACS[name]) <= 0.01 * PUBLISHED_MACS[name]
    layers = sum(counts.get(op, 0) for op in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"))
    assert round(layers, -3) == PUBLISHED_MACS[name]
    assert total - layers == (32 * 32 * 16 + 16 * 16 * 32 + 8 * 8 * 64 if name == "resnet8" else 0)


def test_macs_by_hand_on_small_cnn(converted):
    """8x8x1 -> 3x3 conv 16 (8x8) -> 3x3 conv 32 stride 2 (4x4) -> dense 10 from 512."""
    from sweeper.deploy import mac_counts

    assert mac_counts(converted["small_cnn"]) == {
        "CONV_2D": 8 * 8 * 16 * 9 + 4 * 4 * 32 * 9 * 16, "FULLY_CONNECTED": 512 * 10}


@pytest.mark.parametrize("point", CALIBRATIONS, ids=lambda c: f"{c.runtime}-{c.core}")
def test_latency_reproduces_its_calibration_and_checks_against_the_other_model(point):
    """On its own board the estimate gives the published ResNet-8 latency (by
    construction), and the published DS-CNN latency within a factor of 2 (it runs
    0.64-0.83 of it: depthwise layers do fewer MACs a cycle)."""
    board = dataclasses.replace(MCUS.get("stm32h7"), name=point.board, core=point.core,
                                clock_mhz=point.clock_mhz)
    assert latency_ms(REFERENCE_MACS["resnet8"], board, point.runtime) == pytest.approx(point.ic_ms)
    ratio = latency_ms(REFERENCE_MACS["dscnn"], board, point.runtime) / point.kws_ms
    assert 0.5 <= ratio <= 1.0, ratio
    assert point.source.startswith("mlcommons/tiny_results_v")
    assert point.runtime in RUNTIMES


def test_latency_scales_with_the_clock_and_says_what_it_assumes():
    h7 = estimate(REFERENCE_MACS["resnet8"], "stm32h7", "x-cube-ai")
    assert h7.ms == pytest.approx(1000 / 18.401 * 280 / 480)  # the H7A3's 280 MHz -> 480 MHz
    assert "estimate" in h7.label and "x-cube-ai" in h7.label and "stm32h7" in h7.label
    reference, vendor = (latency_ms(REFERENCE_MACS["resnet8"], "stm32l4", runtime)
                         for runtime in ("tflm-reference", "x-cube-ai"))
    assert reference / vendor == pytest.approx(4.407 / 1.420)  # the runtime alone: 3.1x


def test_no_estimate_without_a_published_calibration():
    with pytest.raises(ValueError, match="no published latency calibration for tflm-reference "
                                         "on a cortex-m7; calibrated there: x-cube-ai"):
        latency_ms(1_000_000, "stm32h7", "tflm-reference")
    with pytest.raises(ValueError, match="cortex-m0\\+; calibrated there: none"):
        latency_ms(1_000_000, "rp2040", "cmsis-nn")
    with pytest.raises(UserError, match="unknown runtime 'tflm'; available: tflm-reference"):
        calibration("cortex-m4", "tflm")


def test_every_mcu_has_a_core_and_a_clock():
    for name in MCUS.names():
        profile = MCUS.get(name)
        assert profile.core and 10 <= profile.clock_mhz <= 1000, name
        assert f"{profile.clock_mhz:g} MHz" in profile.description, name

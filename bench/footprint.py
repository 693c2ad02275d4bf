"""Benchmark: sweeper's footprint figures, estimated and measured, against the published ones.

For resnet8 (32x32x3, 10 classes), dscnn (49x10x1, 12), small_cnn (8x8x1, 10) and stq_net
(32x32x1, 10) under each of the 8 quantizer presets, after one training step on random
data (enough for real biases and batch-norm statistics; sizes do not depend on training):

* ``packed KB``: weights at their quantizer's bit width, densely packed
  (``sweeper.footprint.measure``): what a runtime with sub-byte kernels would store;
* ``tflite KB``, ``arena KB``, ``int8 B``, ``int32 B``: the full-int8 TFLite flatbuffer
  ``sweeper.deploy`` builds, the smallest TFLite Micro arena that allocates it (host
  build, reference kernels), its int8 weight bytes and int32 constant bytes (biases);
* ratios to the references: MLPerf Tiny v1.0's int8 models for resnet8 and dscnn
  (flatbuffer, TFLM arena and int8 weights; the references end in SOFTMAX, which costs
  176 B of arena more than sweeper's logits output), the paper's Table III flash for
  stq_net (Pau, Ayaz, Zakariyya et al., 2025; no sbinary row);
* ``convert s`` (strip + conversion) and ``arena s`` (arena search) per model.

KB means 1024 bytes. Takes a few minutes on 2 busy cores.

    python bench/footprint.py
"""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import deploy, models  # noqa: E402
from sweeper.footprint import measure  # noqa: E402
from sweeper.quantizers import QUANTIZERS  # noqa: E402

# QKeras's QInitializer calls a layer's initializer again after rescaling it for the
# quantizer's range (deliberately the same draw); tf-keras warns about each such layer.
warnings.filterwarnings("ignore", message="The initializer .* is unseeded")

MODELS = {"resnet8": ((32, 32, 3), 10), "dscnn": ((49, 10, 1), 12),
          "small_cnn": ((8, 8, 1), 10), "stq_net": ((32, 32, 1), 10)}
# MLPerf Tiny v1.0 reference int8 models (mlcommons/tiny): flatbuffer bytes, TFLM arena
# bytes (measured with sweeper.deploy.arena_bytes on the reference files), int8 weights.
MLPERF = {"resnet8": dict(tflite=98_496, arena=55_984, weights=77_360),
          "dscnn": dict(tflite=53_936, arena=24_272, weights=22_016)}
# The paper's Table III flash (KB) for its 998,824-parameter model; no sbinary row.
PAPER_FLASH_KB = {"fp": 4496, "int8": 1124, "int4": 527, "ternary": 410, "stq": 410,
                  "int2": 281, "binary": 140}
HEADER = (f"{'preset':<9}{'packed KB':>10}{'tflite KB':>10}{'arena KB':>9}{'int8 B':>9}"
          f"{'int32 B':>8}{'convert s':>10}{'arena s':>8}  ratios")


def one_step_model(name: str, preset: str):
    """The model after one optimizer step on random data, and a representative set."""
    import tensorflow as tf

    shape, classes = MODELS[name]
    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = models.build(name, shape, classes, QUANTIZERS.get(preset))
    rng = np.random.default_rng(0)
    x = rng.random((32, *shape), dtype=np.float32)
    model.compile(optimizer="adam",
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, rng.integers(0, classes, len(x)))
    return model, x


def ratios(name: str, preset: str, deployed: deploy.Deployment, packed_kb: float) -> str:
    if name in MLPERF:
        ref = MLPERF[name]
        return (f"tflite {deployed.flatbuffer_bytes / ref['tflite']:.2f}  "
                f"arena {deployed.arena_bytes / ref['arena']:.3f}  "
                f"int8 {deployed.weight_bytes / ref['weights']:.3f}  (MLPerf)")
    paper = PAPER_FLASH_KB.get(preset)
    if name == "stq_net" and paper:
        return (f"tflite {deployed.flatbuffer_bytes / 1024 / paper:.2f}  "
                f"packed {packed_kb / paper:.2f}  (paper {paper} KB)")
    return ""


def row(name: str, preset: str) -> str:
    model, x = one_step_model(name, preset)
    packed_kb = measure(model).flash_kb
    deployed = deploy.deploy(model, x)
    if not deployed.ok:
        return f"{preset:<9}{packed_kb:>10.1f}  failed: {deployed.error}"
    return (f"{preset:<9}{packed_kb:>10.1f}{deployed.flatbuffer_bytes / 1024:>10.1f}"
            f"{deployed.arena_bytes / 1024:>9.1f}{deployed.weight_bytes:>9,}"
            f"{deployed.bias_bytes:>8,}{deployed.convert_s:>10.1f}{deployed.arena_s:>8.2f}"
            f"  {ratios(name, preset, deployed, packed_kb)}")


def table(name: str) -> None:
    shape, classes = MODELS[name]
    print(f"{name} on {shape}, {classes} classes")
    print(HEADER)
    for preset in QUANTIZERS.names():
        print(row(name, preset), flush=True)
    if name in MLPERF:
        ref = MLPERF[name]
        print(f"{'MLPerf':<9}{'':>10}{ref['tflite'] / 1024:>10.1f}{ref['arena'] / 1024:>9.1f}"
              f"{ref['weights']:>9,}  (reference int8 model, ends in SOFTMAX)")
    print()


if __name__ == "__main__":
    started = time.perf_counter()
    for model_name in MODELS:
        table(model_name)
    print(f"total {time.perf_counter() - started:.0f} s")

"""Benchmark: sweeper's footprint figures, estimated and measured, against the published ones.

For resnet8 (32x32x3, 10 classes), dscnn (49x10x1, 12), small_cnn (8x8x1, 10) and stq_net
(32x32x1, 10) under each of the 8 quantizer presets, after one training step on random
data (enough for real biases and batch-norm statistics; sizes do not depend on training):

* ``packed KB``: weights at their quantizer's bit width, densely packed
  (``sweeper.deploy.footprint.measure``): what a runtime with sub-byte kernels would store;
* ``int8 KB``/``arena``: the full-int8 TFLite flatbuffer ``sweeper.deploy`` builds and
  the smallest TFLite Micro arena (KB) that allocates it (host build, reference kernels);
* ``lut KB``/``arena``, ``int4 KB``/``arena``: the sub-byte builds of that flatbuffer
  (``sweeper.deploy.builds``: TFLM LUT compression, packed INT4 filters), checked with
  TFLM's interpreter on the 32 random samples; a refused build's figures are printed in
  parentheses, a build the tools reject as ``-``, and the reasons follow the table;
* ``MACs`` (``sweeper.deploy.macs``), against the published MLPerf Tiny figures for
  resnet8 and dscnn (silabs/mltk: 12.502 M, 2.657 M; MLTK counts no ADD);
* ``convert s`` (strip + conversion) and ``builds s`` (sub-byte rewrites, their checks and
  arena searches) per model;
* ratios to the references: MLPerf Tiny v1.0's int8 models for resnet8 and dscnn
  (flatbuffer, TFLM arena and int8 weights; the references end in SOFTMAX, which costs
  176 B of arena more than sweeper's logits output), the paper's Table III flash for
  stq_net (Pau, Ayaz, Zakariyya et al., 2025; no sbinary row), for the smallest accepted
  build;
* per model, the int8 build's latency estimates (``sweeper.deploy.latency``) on a few
  MCUs, each labelled with the runtime it assumes.

KB means 1024 bytes. Takes about ten minutes on 2 busy cores.

    python bench/footprint.py [MODEL ...]    (default: all four)
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
from sweeper.deploy.footprint import measure  # noqa: E402
from sweeper.deploy.macs import PUBLISHED_MACS  # noqa: E402
from sweeper.models.quantizers import QUANTIZERS  # noqa: E402

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
HEADER = (f"{'preset':<9}{'packed KB':>10}{'int8 KB':>9}{'arena':>7}{'lut KB':>10}{'arena':>9}"
          f"{'int4 KB':>10}{'arena':>9}{'MACs':>12}{'convert s':>10}{'builds s':>9}  ratios")
# (mcu, runtime) pairs whose latency estimate each table ends with
LATENCY = [("stm32h7", "x-cube-ai"), ("stm32f4", "tflm-reference"), ("stm32f4", "cmsis-nn"),
           ("stm32f4", "x-cube-ai")]


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


def ratios(name: str, preset: str, deployed: deploy.Deployment, flash_bytes: int,
           packed_kb: float) -> str:
    if name in MLPERF:
        ref = MLPERF[name]
        return (f"tflite {deployed.flatbuffer_bytes / ref['tflite']:.2f}  "
                f"arena {deployed.arena_bytes / ref['arena']:.3f}  "
                f"int8 {deployed.weight_bytes / ref['weights']:.3f}  (MLPerf)")
    paper = PAPER_FLASH_KB.get(preset)
    if name == "stq_net" and paper:
        return (f"smallest {flash_bytes / 1024 / paper:.2f}  "
                f"packed {packed_kb / paper:.2f}  (paper {paper} KB)")
    return ""


def sizes(build: deploy.Build) -> str:
    """A build's flash and arena KB: in parentheses if refused, '-' if never built."""
    if build.flatbuffer_bytes is None:
        return f"{'-':>10}{'-':>9}"
    flash = f"{build.flatbuffer_bytes / 1024:.1f}"
    arena = "-" if build.arena_bytes is None else f"{build.arena_bytes / 1024:.1f}"
    return f"{flash:>10}{arena:>9}" if build.ok else f"{'(' + flash + ')':>10}{'(' + arena + ')':>9}"


def row(name: str, preset: str, refusals: list[str]) -> tuple[str, int | None]:
    """One preset's line, its int8 build's MACs; refused builds' reasons go to ``refusals``."""
    model, x = one_step_model(name, preset)
    packed_kb = measure(model).flash_kb
    deployed = deploy.deploy(model, x)
    if not deployed.ok:
        return f"{preset:<9}{packed_kb:>10.1f}  failed: {deployed.error}", None
    started = time.perf_counter()
    int8, *sub_byte = deploy.builds(deployed.flatbuffer, x, int8_arena=deployed.arena_bytes)
    builds_s = time.perf_counter() - started
    refusals += [f"  {preset} {b.format}: {b.error}" for b in sub_byte if not b.ok]
    smallest = min(b.flatbuffer_bytes for b in (int8, *sub_byte) if b.ok)
    macs = deploy.macs(deployed.flatbuffer)
    return (f"{preset:<9}{packed_kb:>10.1f}{int8.flatbuffer_bytes / 1024:>9.1f}"
            f"{int8.arena_bytes / 1024:>7.1f}{''.join(sizes(b) for b in sub_byte)}{macs:>12,}"
            f"{deployed.convert_s:>10.1f}{builds_s:>9.1f}"
            f"  {ratios(name, preset, deployed, smallest, packed_kb)}"), macs


def table(name: str) -> None:
    shape, classes = MODELS[name]
    print(f"{name} on {shape}, {classes} classes")
    print(HEADER)
    refusals: list[str] = []
    int8_macs = None
    for preset in QUANTIZERS.names():
        line, macs = row(name, preset, refusals)
        print(line, flush=True)
        int8_macs = macs if preset == "int8" else int8_macs
    if name in MLPERF:
        ref = MLPERF[name]
        print(f"{'MLPerf':<9}{'':>10}{ref['tflite'] / 1024:>9.1f}{ref['arena'] / 1024:>7.1f}"
              f"{'':>38}{PUBLISHED_MACS[name]:>12,}  (reference int8 model, ends in SOFTMAX; "
              f"MACs: MLTK, no ADD counted)")
        if int8_macs:
            print(f"MACs against MLTK's {PUBLISHED_MACS[name] / 1e6:.3f} M: "
                  f"{int8_macs / PUBLISHED_MACS[name] - 1:+.2%} (int8 preset)")
    if refusals:
        print("refused or rejected builds:")
        print("\n".join(refusals))
    if int8_macs:
        print(f"latency estimates, int8 preset ({int8_macs:,} MACs):")
        for mcu, runtime in LATENCY:
            print(f"  {deploy.estimate(int8_macs, mcu, runtime).label}")
    print()


if __name__ == "__main__":
    started = time.perf_counter()
    for model_name in sys.argv[1:] or MODELS:
        table(model_name)
    print(f"total {time.perf_counter() - started:.0f} s")

"""Benchmark: sweeper's footprint estimates for the registered models against the
published figures.

(a) ``stq_net`` on 32x32x1 with 10 classes under each of the 8 quantizer presets:
    parameters, flash KB and peak RAM KB (``sweeper.footprint.measure``) beside the
    flash column of the paper's Table III (Pau, Ayaz, Zakariyya et al., 2025) and the
    ratio sweeper/paper;
(b) MLPerf Tiny's ResNet-8 (32x32x3, 10 classes) and DS-CNN (49x10x1, 12 classes) at
    fp and int8 beside MLPerf Tiny's int8 model sizes.

The paper's sizes and MLPerf Tiny's are of deployed model files (format overhead,
int32 biases, float batch norm, ...), ours count weights alone at their quantizer's
bit width, so ratios near, not at, 1 are expected.

    python bench/footprint.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import models  # noqa: E402
from sweeper.footprint import measure  # noqa: E402
from sweeper.quantizers import QUANTIZERS  # noqa: E402

# QKeras's QInitializer calls a layer's initializer again after rescaling it for the
# quantizer's range (deliberately the same draw); tf-keras warns about each such layer.
warnings.filterwarnings("ignore", message="The initializer .* is unseeded")

# The paper's Table III flash (KB) for its 998,824-parameter model; no sbinary row.
PAPER_FLASH_KB = {"fp": 4496, "int8": 1124, "int4": 527, "ternary": 410, "stq": 410,
                  "int2": 281, "binary": 140}
PAPER_PARAMS = 998_824
# MLPerf Tiny reference models: (input shape, classes, published int8 model KB).
MLPERF = {"resnet8": ((32, 32, 3), 10, 96), "dscnn": ((49, 10, 1), 12, 53)}


def footprint(name: str, input_shape: tuple, nb_classes: int, preset: str):
    return measure(models.build(name, input_shape, nb_classes, QUANTIZERS.get(preset)))


def stq_table() -> None:
    print(f"stq_net on (32, 32, 1), 10 classes (paper: {PAPER_PARAMS:,} parameters)")
    print(f"{'preset':<9}{'params':>10}{'flash KB':>11}{'RAM KB':>9}{'paper KB':>10}{'ratio':>8}")
    for preset in QUANTIZERS.names():
        fp = footprint("stq_net", (32, 32, 1), 10, preset)
        paper = PAPER_FLASH_KB.get(preset)
        paper_col = f"{paper:>10}" if paper else f"{'-':>10}"
        ratio_col = f"{fp.flash_kb / paper:>8.2f}" if paper else f"{'-':>8}"
        print(f"{preset:<9}{fp.params:>10,}{fp.flash_kb:>11.1f}{fp.ram_kb:>9.1f}"
              f"{paper_col}{ratio_col}")


def mlperf_table() -> None:
    print("MLPerf Tiny references (published: int8 model size)")
    print(f"{'model':<9}{'input':<14}{'preset':<8}{'params':>9}{'flash KB':>10}{'RAM KB':>9}"
          f"{'MLPerf KB':>11}{'ratio':>8}")
    for name, (input_shape, nb_classes, mlperf_kb) in MLPERF.items():
        for preset in ("fp", "int8"):
            fp = footprint(name, input_shape, nb_classes, preset)
            ref = f"{mlperf_kb:>11}{fp.flash_kb / mlperf_kb:>8.2f}" if preset == "int8" else \
                f"{'-':>11}{'-':>8}"
            print(f"{name:<9}{str(input_shape):<14}{preset:<8}{fp.params:>9,}"
                  f"{fp.flash_kb:>10.1f}{fp.ram_kb:>9.1f}{ref}")


if __name__ == "__main__":
    stq_table()
    print()
    mlperf_table()

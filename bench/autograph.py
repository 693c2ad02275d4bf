"""Benchmark: what AutoGraph's conversion of QKeras's layers costs a new process.

Keras rewrites a subclassed layer's ``call`` with AutoGraph the first time a process
traces it; ``sweeper.models.qk`` marks QKeras's layers do_not_convert instead (their graphs
are the same: tests/test_models.py compares them bit for bit). Every Ray worker, and every
test process, is a new process. This bench starts a fresh Python process per way, ``--rounds``
times alternating, each doing what a worker's first jobs do for each model and preset of the
demo (small_cnn x the 8 presets on digits-sized inputs): build the model, compile, fit one
epoch of 64 samples, predict. It prints per way the median seconds of that work (imports
excluded) and of its first model alone, and the ratio.

    python bench/autograph.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(converted: bool) -> None:
    """One process's work; prints "first S total S"."""
    import numpy as np

    from sweeper import models  # first: it selects tf-keras (WORKER_ENV) before TensorFlow is imported

    import tensorflow as tf
    from sweeper.models import qk
    from sweeper.models.quantizers import QUANTIZERS

    rng = np.random.default_rng(0)
    x, y = rng.random((64, 8, 8, 1), dtype=np.float32), tf.keras.utils.to_categorical(rng.integers(0, 10, 64), 10)
    # converted: QKeras's own calls, which Keras converts
    with qk.converted_by_autograph() if converted else contextlib.nullcontext():
        started = time.perf_counter()
        first = None
        for preset in QUANTIZERS.names():
            model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get(preset))
            model.compile(optimizer="adam", loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
            model.fit(x, y, epochs=1, batch_size=32, verbose=0)
            models.predict_logits(model, x)
            first = first if first is not None else time.perf_counter() - started
    print(f"first {first:.3f} total {time.perf_counter() - started:.3f}")


def one_process(converted: bool) -> tuple[float, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--child"] + (["--converted"] if converted else [])
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    return float(out[out.index("first") + 1]), float(out[out.index("total") + 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--converted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.converted)
        return
    runs: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    for _ in range(args.rounds):
        for converted in (True, False):
            runs[converted].append(one_process(converted))
    medians = {way: (statistics.median(r[0] for r in runs[way]), statistics.median(r[1] for r in runs[way]))
               for way in runs}
    for way, label in ((True, "converted by AutoGraph (Keras's default)"), (False, "do_not_convert (sweeper)")):
        print(f"{label:42s}: first model {medians[way][0]:5.2f} s, all 8 presets {medians[way][1]:5.2f} s")
    print(f"saved per process: {medians[True][1] - medians[False][1]:.2f} s "
          f"({medians[True][1] / medians[False][1]:.2f}x faster; median of {args.rounds} fresh processes per way)")


if __name__ == "__main__":
    main()

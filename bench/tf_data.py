"""Benchmark: what tf.data's autotuning costs sweeper's in-memory pipelines.

An autotuned tf.data iterator runs a background thread that its destructor joins. With
the core idle, that join waited up to 1.2 s at the end of a ``fit`` and about 28 ms at
the end of each ``predict`` (one worker's py-spy: ``RootDataset::Iterator::~Iterator``
waiting in ``UnboundedThreadPool``). ``sweeper.models.untuned`` turns autotuning off on
every pipeline sweeper builds (training batches, predictions).

It trains small_cnn on the embedded digits (2/3 of them, as a 3-fold job) with
``sweeper.run.training.train`` for ``--fits`` fits per variant, alternating autotuned
and untuned, at one TensorFlow thread as a trial, and times, per fit, the wait between
Keras's ``on_train_end`` and ``fit`` returning; then ``--predicts`` predictions of 300
samples each way. Prints per variant the fits' total and largest wait, the predictions'
median time, and the ratios; a first check that the two pipelines give the same batches
and the same predictions.

    python bench/tf_data.py [--fits 12] [--predicts 40] [--epochs 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeper import datasets, models  # noqa: E402
from sweeper.models.quantizers import QUANTIZERS  # noqa: E402
from sweeper.plan.entries import Train  # noqa: E402
from sweeper.run import placement, training  # noqa: E402


def _autotuned(dataset):
    return dataset  # tf.data's default: autotuning on


def fit_tail(data, untuned: bool, epochs: int) -> float:
    """One training; returns the seconds from Keras's on_train_end to fit's return."""
    import tensorflow as tf

    training_idx = np.arange(len(data.y))[: len(data.y) * 2 // 3]
    model = models.build("small_cnn", data.input_shape, data.nb_classes, QUANTIZERS.get("int4"))
    ended: list[float] = []
    callback = tf.keras.callbacks.LambdaCallback(on_train_end=lambda logs: ended.append(time.perf_counter()))
    settings = Train(epochs=epochs, batch_size=64, optimizer="adam", learning_rate=0.003, schedule="cosine")
    training.untuned = models.untuned if untuned else _autotuned
    training.train(model, settings, data.x[training_idx], data.y[training_idx], data.nb_classes, 0,
                   callbacks=[callback])
    return time.perf_counter() - ended[0]


def predict_seconds(model, x, untuned: bool) -> float:
    started = time.perf_counter()
    if untuned:
        models.predict_logits(model, x)
    else:
        model.predict(x, batch_size=256, verbose=0)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fits", type=int, default=12, help="fits per variant")
    parser.add_argument("--predicts", type=int, default=40, help="predictions per variant")
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args()
    placement.configure(placement.Assignment(cpus=1))
    import tensorflow as tf

    data = datasets.load("digits")
    x = data.x[:300]
    model = models.build("small_cnn", data.input_shape, data.nb_classes, QUANTIZERS.get("int4"))
    same = np.array_equal(models.predict_logits(model, x), model.predict(x, batch_size=256, verbose=0))
    batches = [training._epoch_batches(x, np.eye(10)[data.y[:300]], 0, 2, 64, 7)]
    training.untuned = _autotuned
    batches.append(training._epoch_batches(x, np.eye(10)[data.y[:300]], 0, 2, 64, 7))
    training.untuned = models.untuned
    same_batches = all(np.array_equal(a[0], b[0]) for a, b in zip(*batches))
    print(f"same predictions: {same}; same training batches: {same_batches}; "
          f"autotuning on the training pipeline: {batches[0].options().autotune.enabled}")
    if not (same and same_batches):
        sys.exit("FAIL: the untuned pipelines must give what the autotuned ones give")

    tails: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.fits):
        for untuned in (False, True):
            tails[untuned].append(fit_tail(data, untuned, args.epochs))
    predicts: dict[bool, list[float]] = {False: [], True: []}
    for untuned in (False, True):
        predict_seconds(model, x, untuned)  # traces
    for _ in range(args.predicts):
        for untuned in (False, True):
            predicts[untuned].append(predict_seconds(model, x, untuned))
    tf.keras.backend.clear_session()
    for untuned, name in ((False, "autotuned (tf.data's default)"), (True, "untuned (sweeper)")):
        waits = tails[untuned]
        print(f"{name:30s}: end of fit waited {sum(waits):6.2f} s in {len(waits)} fits "
              f"(largest {max(waits):.3f} s, {sum(w > 0.05 for w in waits)} over 50 ms); "
              f"predict of {len(x)} samples: median {statistics.median(predicts[untuned]) * 1000:5.1f} ms")
    ratio = statistics.median(predicts[False]) / statistics.median(predicts[True])
    print(f"predict: autotuned / untuned = {ratio:.2f}x (median of {args.predicts})")


if __name__ == "__main__":
    main()

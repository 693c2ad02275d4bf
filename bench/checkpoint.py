"""What a training checkpoint costs, as a share of training: one save (snapshot of the
model and optimizer variables, serialised, written atomically to a local store) against
the epochs between two saves, on the demo's small_cnn (digits, a real training fold)
and on stq_net at 32x32x3 (random data, projected to a CIFAR-10 training fold).

    PYTHONPATH=. python bench/checkpoint.py [--epochs 5] [--stq-samples 2048]

Without Ray: a sweep also reports each checkpoint to Tune, which copies the same file
into RESULTS/_tune; that copy roughly doubles the write, not the snapshot. One
TensorFlow thread, as in a 1-CPU trial.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np

import sweeper  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

CIFAR_TRAIN_FOLD = 40_000  # 60,000 pooled images, K=3


def measure(model_name: str, x: np.ndarray, y: np.ndarray, classes: int, epochs: int) -> tuple[float, float]:
    """(median seconds per epoch, the first left out: it traces the graph; median seconds
    per save) for one model."""
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan.entries import Train
    from sweeper.run.checkpoints import Checkpoints, snapshot
    from sweeper.run.training import train

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(0)
    model = models.build(model_name, x.shape[1:], classes, QUANTIZERS.get("int4"))
    ends = []
    timer = tf.keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: ends.append(time.perf_counter()))
    train(model, Train(epochs=epochs, batch_size=64), x, y, classes, callbacks=[timer])
    with tempfile.TemporaryDirectory() as folder:
        checkpoints, saves = Checkpoints(folder, "bench"), []
        for epoch in range(5):
            started = time.perf_counter()
            checkpoints.save(snapshot(model, model.optimizer, epoch + 1, 0))
            saves.append(time.perf_counter() - started)
    return statistics.median(np.diff(ends)), statistics.median(saves)


def report(label: str, epoch_s: float, save_s: float) -> None:
    from sweeper.run.checkpoints import CHECKPOINT_MIN_S, CHECKPOINT_SHARE, CheckpointSchedule

    # the interval "auto" settles on with these epochs and saves: its schedule, run
    schedule, saves, done = CheckpointSchedule("auto", start=0, epochs=10**9), [], 0
    while len(saves) < 3:
        done += 1
        if schedule.due(done, epoch_s):
            schedule.saved(done, save_s)
            saves.append(done)
    every = saves[2] - saves[1]
    print(f"{label:<34} epoch {epoch_s:8.3f} s  save {save_s * 1000:7.1f} ms  "
          f"save/epoch {save_s / epoch_s:7.2%}  auto every {every:4d} ({every * epoch_s:5.0f} s of training) -> "
          f"{save_s / (every * epoch_s):5.2%} (target < {CHECKPOINT_SHARE:.0%}, at most one save per "
          f"{CHECKPOINT_MIN_S:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="stq_net's; small_cnn trains 4x as many")
    parser.add_argument("--stq-samples", type=int, default=2048)
    args = parser.parse_args()
    import tensorflow as tf

    from sweeper import datasets

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    digits = datasets.load("digits")
    train_idx, _ = datasets.fold_split(digits.y, 3, 0, 0)
    epoch_s, save_s = measure("small_cnn", digits.x[train_idx], digits.y[train_idx], 10, 4 * args.epochs)
    report(f"small_cnn digits ({len(train_idx)} samples)", epoch_s, save_s)
    rng = np.random.default_rng(0)
    x = rng.random((args.stq_samples, 32, 32, 3), dtype=np.float32)
    epoch_s, save_s = measure("stq_net", x, rng.integers(0, 10, len(x)), 10, args.epochs)
    report(f"stq_net 32x32x3 ({args.stq_samples} samples)", epoch_s, save_s)
    projected = epoch_s * CIFAR_TRAIN_FOLD / args.stq_samples  # an epoch's time grows with its samples
    report(f"stq_net 32x32x3 ({CIFAR_TRAIN_FOLD} projected)", projected, save_s)


if __name__ == "__main__":
    main()

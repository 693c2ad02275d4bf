"""Benchmark (issue 24, item 2's control, in sweeper's own training path): what Keras's
``steps_per_execution=N`` (N training steps per call of the compiled train function)
gains in ``sweeper.run.training.train`` itself: its tf.data pipeline of per-epoch
shuffles, its optimizer and schedule, and Keras's fit loop, on the embedded digits.

``bench/stacked_training.py`` measured N steps per call against calling the train function
once per step from a bare loop (1.7-2.5x for small_cnn). A sweep trains through
``model.fit``, whose per-step cost is another; this bench asks the question there. Each
training builds the model afresh (same seed) and compiles it, as a job does, so the trace
of the N-step function is part of what N costs. ``train`` does not take N (sweeper does not
use it): the bench wraps ``Model.compile`` to add it, nothing else.

Per preset, rounds alternate the order of the Ns; a figure is the median wall time of
one training over the rounds, a ratio is N=1's median over N's. It also prints the largest
weight difference between N=1 and each N after the last round (0.0: the same training).
TensorFlow runs on one thread, as in a one-CPU trial.

    python bench/steps_per_call.py [--presets fp ternary] [--ns 4 16] [--epochs 10 120]
                                   [--rounds 3] [--model small_cnn]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeper.run import placement  # noqa: E402

placement.configure(placement.Assignment(cpus=1))  # before TensorFlow runs anything

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sweeper import datasets, models  # noqa: E402
from sweeper.models.quantizers import QUANTIZERS  # noqa: E402
from sweeper.plan.entries import Train  # noqa: E402
from sweeper.run import training  # noqa: E402

_STEPS = [1]  # the N the next compile gets
_compile = tf.keras.Model.compile


def _compile_with_steps(self, *args, **kwargs):
    kwargs["steps_per_execution"] = _STEPS[0]
    return _compile(self, *args, **kwargs)


def one_training(data, model_name: str, preset: str, steps: int, epochs: int) -> tuple[float, list]:
    """Seconds of ``training.train`` (compile and fit) and the trained weights."""
    _STEPS[0] = steps
    tf.keras.utils.set_random_seed(0)
    model = models.build(model_name, data.input_shape, data.nb_classes, QUANTIZERS.get(preset))
    started = time.perf_counter()
    training.train(model, Train(epochs=epochs, batch_size=64), data.x, data.y, data.nb_classes, seed=0)
    return time.perf_counter() - started, model.get_weights()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn")
    parser.add_argument("--presets", nargs="+", default=["fp", "ternary"])
    parser.add_argument("--ns", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--epochs", nargs="+", type=int, default=[10, 120])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tf.keras.Model.compile = _compile_with_steps
    data = datasets.load("digits")
    ns = [1] + [n for n in args.ns if n != 1]
    steps_per_epoch = int(np.ceil(len(data.x) / 64))
    print(f"{args.model} on digits ({len(data.x)} samples, {steps_per_epoch} steps of 64 an epoch), "
          f"1 TensorFlow thread, median of {args.rounds} rounds")
    for preset in args.presets:
        for n in ns:  # warm up: the first training of a process pays one-off costs
            one_training(data, args.model, preset, n, 1)
        for epochs in args.epochs:
            times: dict[int, list[float]] = {n: [] for n in ns}
            for round_ in range(args.rounds):
                weights = {}
                for n in ns if round_ % 2 == 0 else ns[::-1]:
                    seconds, weights[n] = one_training(data, args.model, preset, n, epochs)
                    times[n].append(seconds)
            base = statistics.median(times[1])
            cells = [f"N={n} {statistics.median(times[n]):6.2f} s ({base / statistics.median(times[n]):.2f}x)"
                     for n in ns]
            diffs = [max(float(np.max(np.abs(a - b))) for a, b in zip(weights[1], weights[n])) for n in ns[1:]]
            print(f"{preset:8s} {epochs:4d} epochs: " + "  ".join(cells)
                  + f"  | max weight difference against N=1: {', '.join(f'{d:g}' for d in diffs)}")


if __name__ == "__main__":
    main()

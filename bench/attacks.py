"""Benchmark: ART's stock TensorFlowV2Classifier (and stock attacks) against sweeper's.

Trains a QKeras model on scikit-learn's digits (sweeper's ``stq_net`` under the ``stq``
preset by default: quantizing its weights dominates each call, the expensive case), then
runs each attack through ``sweeper.attacks.run`` on the same samples twice, stock then
sweeper's, and prints seconds, speedup, adversarial accuracy and whether the examples
are identical:

- FGSM, PGD (7 steps), C&W-L2 (max_iter 10): the same ART attack on the stock estimator
  and on the compiled one;
- Square (L-inf, 200 iterations) and Boundary (L2, 100 iterations): ART's stock
  SquareAttack / BoundaryAttack on the stock estimator against sweeper's subclasses
  (Square predicting once per iteration, Boundary drawing each trial's candidates as one
  batch; Boundary with sweeper's seeded starts on both sides) on the compiled one;
- ZOO (max_iter 10, 3 binary search steps): ART's ZooAttack on both estimators.

Then the deployed rows (with Square in the selection): the model converted to its int8
``.tflite`` (``deploy.deploy``, calibrated on training images), and Square with the same
parameters on the same ``--bb-samples`` samples run on the compiled QKeras estimator and on
the deployed build (``attacks.make_deployed_classifier``: the numpy port of the reference
kernels when proven on the build, else the interpreter), on the same build through the
TFLite interpreter (reference kernels, batched) and one sample per invocation,
in ``--rounds`` interleaved rounds; it prints each run's median seconds, the ratios to the
compiled run (issue 22's target for the deployed build: at most 2x), the adversarial
accuracies (each by its own network), whether the port's examples are the interpreter's
and the load average.

    python bench/attacks.py [--samples 100] [--cw-samples N] [--bb-samples N] [--seed 0]
                            [--model stq_net] [--preset stq] [--only square,boundary]
                            [--threads 1] [--rounds 7]

C&W and the black-box attacks on the stock estimator are the slow ones; --cw-samples
and --bb-samples run them, with both, on the first N samples only. TensorFlow runs one
intra-op thread by default, as in a trial holding one CPU (sweeper/run/placement.py); --threads 0
keeps TensorFlow's own default (one per core), for both estimators alike.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks  # noqa: E402
from sweeper.attacks import black_box  # noqa: E402

import numpy as np  # noqa: E402

# (attack, eps, norm, params): eps 0.1 is a visible budget on [0, 1] digits; C&W unbounded
# (eps 0 would be the clean inputs).
RUNS = [
    ("fgsm", 0.1, "inf", {}),
    ("pgd", 0.1, "inf", {"max_iter": 7, "eps_step": "eps/4"}),
    ("cw_l2", math.inf, "2", {"max_iter": 10}),
    ("square", 0.1, "inf", {"max_iter": 200}),
    ("boundary", math.inf, "2", {"max_iter": 100}),
    ("zoo", math.inf, "2", {"max_iter": 10, "binary_search_steps": 3}),
]
BLACK_BOX = ("square", "boundary", "zoo")


def train_digits_model(seed: int, model_name: str, preset: str):
    """A sweeper model (logits) trained on digits' first 1500 images for 5 epochs; returns
    (model, the other images, their labels, the training images)."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from sweeper import models
    from sweeper.models import quantizers

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    tf.keras.utils.set_random_seed(seed)
    model = models.build(model_name, (8, 8, 1), 10, quantizers.QUANTIZERS.get(preset))
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1500], y[:1500], epochs=5, batch_size=32, verbose=0)
    return model, x[1500:], y[1500:], x[:1500]


def timed_run(classifier, name, x, y, eps, norm, params, seed, stock_attack=False):
    stock = black_box.stock_art_classes() if stock_attack else contextlib.nullcontext()
    with stock:
        started = time.perf_counter()
        x_adv = attacks.run(name, classifier, x, y, eps, norm, params, seed)
        return time.perf_counter() - started, x_adv


def trace(classifier, x, y) -> None:
    """First calls trace the compiled functions: time them apart from the attacks."""
    started = time.perf_counter()
    classifier.predict(x[:2])
    classifier.loss_gradient(x[:2], np.eye(10)[y[:2]])
    classifier.class_gradient(x[:2], label=y[:2])
    print(f"{type(classifier).__name__}: first calls (tracing) {time.perf_counter() - started:.2f} s")


def compare(stock, fast, x, y, limits: dict, only: set | None, seed: int) -> None:
    columns = ["attack", "n", "stock s", "fast s", "speedup", "stock adv acc", "fast adv acc",
               "max |diff|", "identical"]
    widths = [8, 4, 9, 9, 8, 14, 13, 11, 9]
    print(" ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                   for i, (c, w) in enumerate(zip(columns, widths))))
    speedups = []
    for name, eps, norm, params in RUNS:
        if only and name not in only:
            continue
        n = min(limits.get(name) or len(x), len(x))
        stock_s, stock_adv = timed_run(stock, name, x[:n], y[:n], eps, norm, params, seed,
                                       stock_attack=name in BLACK_BOX)
        fast_s, fast_adv = timed_run(fast, name, x[:n], y[:n], eps, norm, params, seed)
        # Both judged by the same (fast) predict: they are equal, see the tests.
        stock_acc = np.mean(fast.predict(stock_adv).argmax(1) == y[:n])
        fast_acc = np.mean(fast.predict(fast_adv).argmax(1) == y[:n])
        diff = np.abs(stock_adv - fast_adv).max()
        identical = np.array_equal(stock_adv, fast_adv)
        speedups.append(f"{name} {stock_s / fast_s:.1f}x")
        print(f"{name:<8} {n:>4} {stock_s:>9.2f} {fast_s:>9.3f} {stock_s / fast_s:>7.1f}x "
              f"{stock_acc:>14.3f} {fast_acc:>13.3f} {diff:>11.2g} {str(identical):>9}")
    print("speedups: " + ", ".join(speedups))


def compare_deployed(model, fast, x_train, x, y, rounds: int, seed: int) -> None:
    """Square on the compiled QKeras estimator against Square on the deployed build: the
    same parameters and samples, ``rounds`` interleaved rounds, medians."""
    import os
    import statistics

    from sweeper import deploy

    deployment = deploy.deploy(model, x_train)
    if not deployment.ok:
        print(f"deployed rows: the model does not deploy ({deployment.error})")
        return
    built = time.perf_counter()
    deployed = attacks.make_deployed_classifier(deployment.flatbuffer, 10, (8, 8, 1), (0.0, 1.0), check_inputs=x)
    print(f"deployed build: {deployment.flatbuffer_bytes} B .tflite, estimator built (batching checked, port "
          f"proven) in {1e3 * (time.perf_counter() - built):.1f} ms (batched: {deployed.runner.batched}, "
          f"forward: {deployed.runner.forward}, port_reason: {deployed.runner.port_reason})")
    interpreted = attacks.make_deployed_classifier(deployment.flatbuffer, 10, (8, 8, 1), (0.0, 1.0), port=False)
    one_by_one = attacks.make_deployed_classifier(deployment.flatbuffer, 10, (8, 8, 1), (0.0, 1.0), port=False)
    one_by_one.runner.batched = False
    [(name, eps, norm, params)] = [run for run in RUNS if run[0] == "square"]
    runs = {"compiled QKeras": fast, "deployed build": deployed, "deployed, interpreter": interpreted,
            "deployed, one sample per call": one_by_one}
    examples = {}
    times: dict[str, list[float]] = {label: [] for label in runs}
    accuracy = {}
    for _ in range(rounds):
        for label, classifier in runs.items():
            seconds, x_adv = timed_run(classifier, name, x, y, eps, norm, params, seed)
            times[label].append(seconds)
            accuracy[label] = np.mean(classifier.predict(x_adv).argmax(1) == y)
            examples[label] = x_adv
    medians = {label: statistics.median(values) for label, values in times.items()}
    compiled = medians["compiled QKeras"]
    print(f"square {norm} eps {eps} {params}, {len(x)} samples, {rounds} interleaved rounds (medians), "
          f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}:")
    for label, seconds in medians.items():
        print(f"  {label:<31} {seconds:7.3f} s  {seconds / compiled:5.2f}x compiled  adv acc {accuracy[label]:.3f}")
    same = np.array_equal(examples["deployed build"], examples["deployed, interpreter"])
    print(f"deployed / compiled = {medians['deployed build'] / compiled:.2f}x (target <= 2x; forward: "
          f"{deployed.runner.forward}); the same examples as through the interpreter: {same}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--cw-samples", type=int, default=None,
                        help="run C&W-L2 on the first N samples only (default: all)")
    parser.add_argument("--bb-samples", type=int, default=20,
                        help="run Square, Boundary and ZOO on the first N samples only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="stq_net", help="a sweeper model name")
    parser.add_argument("--preset", default="stq", help="a sweeper quantizer preset")
    parser.add_argument("--only", default=None, help="comma-separated attacks to run")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds of the deployed rows")
    parser.add_argument("--threads", type=int, default=1,
                        help="TensorFlow intra-op threads (default 1: what a one-CPU trial "
                             "gets, sweeper/run/placement.py); 0 leaves TensorFlow's default")
    args = parser.parse_args()
    if args.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)

    model, x_test, y_test, x_train = train_digits_model(args.seed, args.model, args.preset)
    print(f"model: {args.model} under preset {args.preset}, {model.count_params()} params")
    x, y = x_test[: args.samples], y_test[: args.samples]
    stock = attacks.make_stock_classifier(model, 10, (8, 8, 1), (0.0, 1.0))
    fast = attacks.make_classifier(model, 10, (8, 8, 1), (0.0, 1.0))
    trace(stock, x, y)
    trace(fast, x, y)
    print(f"clean accuracy on {len(x)} samples: {np.mean(fast.predict(x).argmax(1) == y):.3f}")
    limits = {"cw_l2": args.cw_samples, **{name: args.bb_samples for name in BLACK_BOX}}
    only = set(args.only.split(",")) if args.only else None
    compare(stock, fast, x, y, limits, only, args.seed)
    if not only or "square" in only:
        n = min(args.bb_samples or len(x), len(x))
        compare_deployed(model, fast, x_train, x[:n], y[:n], args.rounds, args.seed)


if __name__ == "__main__":
    main()

"""Benchmark: ART's stock TensorFlowV2Classifier against sweeper's compiled one.

Trains a tiny QKeras model on scikit-learn's digits, then runs FGSM, PGD (7 steps) and
C&W-L2 (max_iter 10) through ``sweeper.attacks.run`` on the same samples with each
estimator, and prints seconds, speedup and adversarial accuracy.

    python bench/attacks.py [--samples 100] [--cw-samples N] [--seed 0]

C&W on the stock estimator is the slow one (about 1 minute for 100 samples on 2 cores);
--cw-samples runs it, with both estimators, on the first N samples only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks  # noqa: E402

import numpy as np  # noqa: E402

# (attack, eps, norm, params): eps 0.1 is a visible budget on [0, 1] digits; C&W unbounded
# (eps 0 would be the clean inputs).
RUNS = [
    ("fgsm", 0.1, "inf", {}),
    ("pgd", 0.1, "inf", {"max_iter": 7, "eps_step": "eps/4"}),
    ("cw_l2", math.inf, "2", {"max_iter": 10}),
]


def train_digits_model(seed: int):
    """The same kind of tiny model as tests/test_attacks.py: 4-bit QConv2D + QDense logits."""
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, QDense, quantized_bits, quantized_relu
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    tf.keras.utils.set_random_seed(seed)
    bits = quantized_bits(4, 0, 1)
    model = tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        QConv2D(8, 3, kernel_quantizer=bits, bias_quantizer=bits),
        QActivation(quantized_relu(4)),
        tf.keras.layers.Flatten(),
        QDense(10, kernel_quantizer=bits, bias_quantizer=bits),
    ])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1500], y[:1500], epochs=5, batch_size=32, verbose=0)
    return model, x[1500:], y[1500:]


def timed_run(classifier, name, x, y, eps, norm, params, seed):
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


def compare(stock, fast, x, y, cw_samples: int | None, seed: int) -> None:
    columns = ["attack", "n", "stock s", "fast s", "speedup", "stock adv acc", "fast adv acc",
               "max |diff|"]
    widths = [8, 4, 9, 9, 8, 14, 13, 11]
    print(" ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                   for i, (c, w) in enumerate(zip(columns, widths))))
    speedups = []
    for name, eps, norm, params in RUNS:
        n = min(cw_samples or len(x), len(x)) if name == "cw_l2" else len(x)
        stock_s, stock_adv = timed_run(stock, name, x[:n], y[:n], eps, norm, params, seed)
        fast_s, fast_adv = timed_run(fast, name, x[:n], y[:n], eps, norm, params, seed)
        # Both judged by the same (fast) predict: they are equal, see the tests.
        stock_acc = np.mean(fast.predict(stock_adv).argmax(1) == y[:n])
        fast_acc = np.mean(fast.predict(fast_adv).argmax(1) == y[:n])
        diff = np.abs(stock_adv - fast_adv).max()
        speedups.append(f"{name} {stock_s / fast_s:.1f}x")
        print(f"{name:<8} {n:>4} {stock_s:>9.2f} {fast_s:>9.3f} {stock_s / fast_s:>7.1f}x "
              f"{stock_acc:>14.3f} {fast_acc:>13.3f} {diff:>11.2g}")
    print("speedups: " + ", ".join(speedups))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--cw-samples", type=int, default=None,
                        help="run C&W-L2 on the first N samples only (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    model, x_test, y_test = train_digits_model(args.seed)
    x, y = x_test[: args.samples], y_test[: args.samples]
    stock = attacks.make_stock_classifier(model, 10, (8, 8, 1), (0.0, 1.0))
    fast = attacks.make_classifier(model, 10, (8, 8, 1), (0.0, 1.0))
    trace(stock, x, y)
    trace(fast, x, y)
    print(f"clean accuracy on {len(x)} samples: {np.mean(fast.predict(x).argmax(1) == y):.3f}")
    compare(stock, fast, x, y, args.cw_samples, args.seed)


if __name__ == "__main__":
    main()

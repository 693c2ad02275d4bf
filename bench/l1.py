"""Benchmark: how the L1 attacks spend their budget on digits, and how strong they are.

Trains sweeper's ``small_cnn`` on digits' first 1,500 images under each preset, with
grids/paper-mini.yaml's training (Adamax 3e-3, cosine to 1e-6, batch 64, 30 epochs;
``--epochs`` shortens it), then attacks the first ``--samples`` of the other 297 at the
paper's L1 budget (eps 0.6; ``--eps``) through ``sweeper.attacks.run``, as a trial does:

- ``fgsm`` and ``pgd`` under L1: ART's single-coordinate steps, the paper's cells (PGD:
  7 steps of 0.15, one random start), and ``pgd_bim``, PGD without its random start;
- ``apgd_ce`` and ``apgd_dlr`` under L1 (APGD-L1, 100 iterations, one restart);
- ``random``: a random sparse perturbation of the same L1 size (8 elements), the control.

Per preset and attack it prints, over the **attacked samples** (those the model classifies
correctly: only they are attacked, as in a trial), the share left unperturbed (L1 norm of
the perturbation 0), the median number of input elements changed, and the share fooled;
and the accuracy over all samples.

    python bench/l1.py [--presets fp,binary] [--samples 100] [--eps 0.6] [--epochs 30] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks  # noqa: E402
from sweeper.attacks import apgd_l1  # noqa: E402

import numpy as np  # noqa: E402

# (row name, attack, parameters): the paper's L1 cells (grids/paper-mini.yaml), then APGD-L1.
RUNS = [
    ("fgsm", "fgsm", {}),
    ("pgd", "pgd", {"max_iter": 7, "eps_step": 0.15}),
    # The same without its random start (BIM): what its single-coordinate steps alone move.
    ("pgd_bim", "pgd", {"max_iter": 7, "eps_step": 0.15, "num_random_init": 0}),
    ("apgd_ce", "apgd_ce", {"max_iter": 100}),
    ("apgd_dlr", "apgd_dlr", {"max_iter": 100}),
]
CONTROL_ELEMENTS = 8  # the random control moves this many elements per sample


def trained(preset: str, epochs: int, seed: int):
    """(classifier, held-out x, y): small_cnn under preset, paper-mini's training."""
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from sweeper import models
    from sweeper.models import quantizers
    from sweeper.plan import entries
    from sweeper.run import training

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    tf.keras.utils.set_random_seed(seed)
    model = models.build("small_cnn", (8, 8, 1), 10, quantizers.QUANTIZERS.get(preset))
    settings = entries.Train(epochs=epochs, batch_size=64, optimizer="adamax", learning_rate=0.003,
                             schedule="cosine", min_learning_rate=1e-6)
    training.train(model, settings, x[:1500], y[:1500], 10, seed)
    return attacks.make_classifier(model, 10, (8, 8, 1), (0.0, 1.0)), x[1500:], y[1500:]


def row(name: str, x, x_adv, y, attacked, classifier) -> str:
    changed = np.count_nonzero((x_adv - x).reshape(len(x), -1), axis=1)[attacked]
    unperturbed = attacks.perturbation_norms(x, x_adv, "1")[attacked] == 0
    correct = classifier.predict(x_adv).argmax(axis=1) == y
    return (f"{name:<9} {attacked.sum():>8} {unperturbed.mean():>12.3f} {np.median(changed):>16.0f} "
            f"{(~correct[attacked]).mean():>7.3f} {correct.mean():>9.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="fp,binary")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.6)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for preset in args.presets.split(","):
        classifier, x_test, y_test = trained(preset, args.epochs, args.seed)
        x, y = x_test[: args.samples], y_test[: args.samples]
        attacked = classifier.predict(x).argmax(axis=1) == y
        print(f"\nsmall_cnn / {preset}, L1 eps {args.eps}: clean accuracy {attacked.mean():.3f} "
              f"on {len(x)} samples; shares below are of the {attacked.sum()} attacked")
        print(f"{'attack':<9} {'attacked':>8} {'unperturbed':>12} {'median changed':>16} "
              f"{'fooled':>7} {'accuracy':>9}")
        for name, attack, params in RUNS:
            x_adv = x.copy()
            x_adv[attacked] = attacks.run(attack, classifier, x[attacked], y[attacked], args.eps, "1",
                                          params, args.seed)
            print(row(name, x, x_adv, y, attacked, classifier))
        rng = np.random.default_rng(args.seed)
        x_adv = x.copy()
        x_adv[attacked] = apgd_l1.random_sparse_l1(x[attacked], args.eps, CONTROL_ELEMENTS, 0.0, 1.0, rng)
        print(row("random", x, x_adv, y, attacked, classifier))


if __name__ == "__main__":
    main()

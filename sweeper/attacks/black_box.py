"""Boundary and ZOO, the black-box attacks besides Square (square.py, which needs its own
ART subclass): their specs, ART builders, and Boundary's seeded generate.

Both are minimal-perturbation attacks: eps is a post-hoc budget (spec.py).
"""

from __future__ import annotations

import numpy as np

from sweeper.attacks.spec import AttackSpec


def _build_boundary(classifier, eps, norm, params, seed):
    from art.attacks.evasion import BoundaryAttack

    return BoundaryAttack(classifier, **params)


def _build_zoo(classifier, eps, norm, params, seed):
    from art.attacks.evasion import ZooAttack

    # ZOO samples nb_parallel distinct coordinates per step: more than the input has fails.
    n_features = int(np.prod(classifier.input_shape))
    params = {**params, "nb_parallel": min(params["nb_parallel"], n_features)}
    return ZooAttack(classifier, **params)


def _generate_boundary(attack, classifier, x, y, params, seed) -> np.ndarray:
    """Boundary attack with a seeded start, on the samples still classified correctly.

    ART draws its random starting points from an unseeded ``np.random.RandomState()``, so
    we draw them here (same recipe: uniform noise that the model classifies differently).
    Untargeted Boundary in ART moves away from the *predicted* label, so a sample already
    misclassified could be pushed back to its true class: it is left as is (already
    adversarial). Samples with no start found in ``init_size`` draws stay clean, as in ART,
    and so do samples whose ART run overflows (see below).
    """
    rng = np.random.default_rng(seed)
    lo, hi = classifier.clip_values
    preds = classifier.predict(x).argmax(axis=1)
    labels = preds if y is None else _label_indices(y)
    x_adv = x.astype(np.float32, copy=True)
    starts = {}
    for i in np.flatnonzero(preds == labels):
        noise = rng.uniform(lo, hi, size=(params["init_size"], *x.shape[1:])).astype(np.float32)
        found = np.flatnonzero(classifier.predict(noise).argmax(axis=1) != preds[i])
        if found.size:
            starts[i] = noise[found[0]]
    for i, start in starts.items():
        try:
            x_adv[i] = attack.generate(x=x_adv[i:i + 1], x_adv_init=start[None])[0]
        except OverflowError:
            # ART's step adaptation can grow its step until float overflow on the flat
            # decision regions of ternary/binary nets, and what ART had then is lost. The
            # random start is adversarial but arbitrarily far (uniform noise): counting it
            # would make an unbounded run "succeed" on every such sample. A failed attack.
            x_adv[i] = x[i]
    return x_adv


def _label_indices(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(int)


BOUNDARY = AttackSpec(
    name="boundary",
    norms=("inf", "2"),
    # epsilon is ART's step size towards the original, not a budget.
    defaults={"delta": 0.01, "epsilon": 0.01, "max_iter": 1000, "num_trial": 25,
              "init_size": 100},
    fixed={"targeted": False, "step_adapt": 0.667, "sample_size": 20, "min_epsilon": 0.0,
           "batch_size": 64, "verbose": False},
    uses_eps=False,
    black_box=True,
    build=_build_boundary,
    generate=_generate_boundary,
    description="Boundary Attack, decision-based (Brendel et al. 2018); eps is a post-hoc budget",
)
ZOO = AttackSpec(
    name="zoo",
    norms=("2",),
    # nb_parallel is capped at the number of input features.
    defaults={"confidence": 0.0, "max_iter": 10, "binary_search_steps": 10,
              "learning_rate": 0.01, "initial_const": 0.001, "nb_parallel": 128,
              "use_resize": False, "use_importance": False},
    fixed={"targeted": False, "abort_early": True, "batch_size": 1, "variable_h": 1e-4,
           "verbose": False},
    uses_eps=False,
    black_box=True,
    build=_build_zoo,
    description="ZOO, zeroth-order C&W L2 (Chen et al. 2017); eps is a post-hoc L2 budget",
)

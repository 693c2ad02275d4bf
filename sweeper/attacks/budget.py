"""Running an attack: ``run`` seeds the RNGs, builds the attack through its spec, calls
ART, and holds the result to the clip box and to what eps means (spec.py): projected onto
the ball for budget attacks, rejected outside it for minimal ones and for the patch (whose
"patch" budget is a share of pixels, not a ball). ``controls`` makes an attack's controls
(spec.py: the patch's random and solid patches) under the same rules. ``perturbation_norms``
measures the examples.
"""

from __future__ import annotations

import math
import random
from typing import Any, Mapping

import numpy as np

from sweeper.attacks.spec import ATTACKS, PATCH_NORM, AttackSpec, _art_norm, art_params, normalize_norm, validate
from sweeper.errors import UserError

# Budgets are checked with this relative slack: x + delta rounded to float32 can land a
# hair outside the ball (e.g. ||delta||_inf = 0.10000002 for eps = 0.1).
BUDGET_RTOL = 1e-5


def run(name: str, classifier: Any, x: np.ndarray, y: np.ndarray | None, eps: float | None,
        norm: Any, params: Mapping[str, Any], seed: int, *, x_train: np.ndarray | None = None) -> np.ndarray:
    """Adversarial examples for x (labels y: indices or one-hot; None: model predictions).

    ``x_train``: training-fold images, required by the attacks that train on them
    (``needs_training_data``: the patch) and ignored by the others.

    ``eps`` 0: the clean (clipped) inputs, for every attack. ``eps`` math.inf or None:
    unbounded, only for minimal attacks (``is_minimal``). The result always lies within
    the classifier's clip_values and within eps under norm, up to BUDGET_RTOL (see
    spec.py's docstring for eps per attack).
    """
    eps = math.inf if eps is None else eps
    validate(name, norm, params, eps=eps)
    spec = ATTACKS.get(name)
    norm = normalize_norm(norm) or spec.norms[0]
    x = np.asarray(x, dtype=np.float32)
    if eps == 0 or len(x) == 0:
        return _clip(x, classifier)  # zero budget: nothing to perturb (SquareAttack rejects 0)
    if spec.needs_training_data and (x_train is None or len(x_train) == 0):
        raise UserError(f"attack {name!r}: needs training images (x_train)")
    extra = {"x_train": x_train} if spec.needs_training_data else {}
    x_adv = _generate(spec, classifier, x, y, eps, norm, art_params(name, params, eps), seed, extra)
    return _within_budget(x, _clip(x_adv, classifier), eps, norm, project=spec.uses_eps,
                          classifier=classifier)


def build_attack(name: str, classifier: Any, eps: float, norm: str, params: Mapping[str, Any], seed: int):
    """The attack object ``run`` (and ``controls``) uses: the spec's builder with every ART
    keyword (``art_params``), any refusal (ART's own parameter checks, a patch too large
    for the input) one UserError line. Grid validation checks all of these first."""
    spec = ATTACKS.get(name)
    try:  # minimal attacks ignore eps: only budget attacks get here with a finite one
        return spec.build(classifier, float(eps), norm, params, seed)
    except ValueError as error:
        raise UserError(f"attack {spec.name!r}: {error}") from None


def controls(name: str, classifier: Any, x: np.ndarray, eps: float, norm: Any, params: Mapping[str, Any],
             seed: int) -> dict[str, np.ndarray]:
    """The attack's controls for x (``AttackSpec.controls``) as ``run`` with the same seed
    would place its examples: {name: examples}, each held to the clip box and the budget
    like run's. {} for an attack without controls, and at eps 0 (nothing is perturbed)."""
    validate(name, norm, params, eps=eps)
    spec = ATTACKS.get(name)
    x = np.asarray(x, dtype=np.float32)
    if spec.controls is None or eps == 0 or len(x) == 0:
        return {}
    norm = normalize_norm(norm) or spec.norms[0]
    full = art_params(name, params, eps)
    attack = build_attack(name, classifier, eps, norm, full, seed)
    return {control: _within_budget(x, _clip(x_control, classifier), eps, norm, project=spec.uses_eps,
                                    classifier=classifier)
            for control, x_control in spec.controls(attack, classifier, x, full, seed).items()}


def _generate(spec: AttackSpec, classifier, x, y, eps, norm, params, seed, extra) -> np.ndarray:
    _seed_everything(seed)
    attack = build_attack(spec.name, classifier, eps, norm, params, seed)
    if spec.generate is not None:
        x_adv = spec.generate(attack, classifier, x, y, params, seed, **extra)
    else:
        x_adv = attack.generate(x=x, y=y)
    # A non-finite example counts as a failed attack: the clean input. sweeper's own search
    # loops never return one, they keep their last finite iterate (APGD's book-keeping,
    # Square's acceptance), so no finite fooling iterate is lost here. ART's attacks
    # (FGSM and PGD zero NaN steps themselves; C&W, ZOO, Boundary) return only their final
    # examples: a non-finite one has no finite iterate to fall back on.
    finite = np.isfinite(x_adv).reshape(len(x), -1).all(axis=1)
    return np.where(_per_sample(finite, x.ndim), x_adv, x)


def _seed_everything(seed: int) -> None:
    """Seed the RNGs the registered attacks draw from: numpy's and Python's (Square).

    Not tf.random: none of these attacks uses TF random ops, and tf.random.set_seed clears
    TensorFlow's kernel cache, which made the next compiled calls several times slower.
    """
    random.seed(seed)
    np.random.seed(seed)


def _clip(x: np.ndarray, classifier: Any) -> np.ndarray:
    if classifier.clip_values is None:
        return np.array(x, dtype=np.float32)
    lo, hi = classifier.clip_values
    return np.clip(x, lo, hi).astype(np.float32)


def perturbation_norms(x: np.ndarray, x_adv: np.ndarray, norm: str) -> np.ndarray:
    """||x_adv - x|| per sample under norm ("inf", "1", "2"), in float64; for "patch", the
    share of pixels (height x width positions, any channel) that changed."""
    if norm == PATCH_NORM:
        changed = np.any(np.asarray(x_adv) != np.asarray(x), axis=-1).reshape(len(x), -1)
        return changed.mean(axis=1, dtype=np.float64)
    delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    return np.linalg.norm(delta, ord=_art_norm(norm), axis=1)


def within(sizes: np.ndarray, eps: float) -> np.ndarray:
    """Which perturbations of ``sizes`` (``perturbation_norms``) lie within ``eps``, up to
    ``BUDGET_RTOL``: the one rule every budget check uses (here, and the trial's post-hoc
    budget); a size that is not a number is outside."""
    return np.asarray(sizes) <= eps * (1 + BUDGET_RTOL)


def _within_budget(x, x_adv, eps, norm, *, project: bool, classifier) -> np.ndarray:
    """Project onto the eps ball (budgeted attacks) or reject what lies outside it (the
    others, and the patch: a share of pixels has no ball to project onto)."""
    if eps is None or math.isinf(eps):  # unbounded (minimal attacks only)
        return x_adv
    sizes = perturbation_norms(x, x_adv, norm)
    outside = ~within(sizes, eps)
    if not outside.any():
        return x_adv
    x_adv = x_adv.copy()
    if not project or norm == PATCH_NORM:
        x_adv[outside] = _clip(x[outside], classifier)
        return x_adv
    delta = x_adv[outside] - x[outside]
    if norm == "inf":
        delta = np.clip(delta, -eps, eps)
    else:  # shrinking towards x keeps the example inside the clip box
        delta *= _per_sample(eps / sizes[outside], delta.ndim).astype(np.float32)
    x_adv[outside] = _clip(x[outside] + delta, classifier)
    return x_adv


def _per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    """Shape one value per sample to broadcast against a batch of ndim dimensions."""
    return np.asarray(values).reshape(-1, *[1] * (ndim - 1))

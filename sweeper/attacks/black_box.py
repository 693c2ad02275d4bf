"""Boundary and ZOO, the black-box attacks besides Square (square.py): their specs, ART
builders, Boundary's seeded generate, and ``FusedBoundaryAttack``, ART's BoundaryAttack
with half the model calls and the same examples.

Both are minimal-perturbation attacks: eps is a post-hoc budget (spec.py).

The ART subclass is created on first use (``_boundary_attack_class``) so that importing
this module imports neither TensorFlow nor ART.
"""

from __future__ import annotations

import functools

import numpy as np

from sweeper.attacks.spec import AttackSpec


def _build_boundary(classifier, eps, norm, params, seed):
    return _boundary_attack_class()(classifier, **params)


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


@functools.cache
def _boundary_attack_class() -> type:
    from art.attacks.evasion import BoundaryAttack

    class FusedBoundaryAttack(BoundaryAttack):
        """ART 1.20's BoundaryAttack whose orthogonal step and first step towards the
        original share one model call.

        Each of ART's iterations predicts its ``sample_size`` orthogonal candidates, then
        (a second call) the satisfied ones moved by ``curr_epsilon`` towards the original.
        That move is elementwise and draws no random numbers, so here it is applied to
        every candidate and predicted in the same call; the satisfied rows are then the
        rows ART predicts. Later trials of either loop run as in ART. The random draws,
        their order and every float operation are ART's, so on a classifier whose
        predictions do not depend on the other rows of the batch (inference: no batch
        statistics) the examples are ART's exactly (tests check it against ART).

        Samples still run one after another: ART draws each sample's candidates from the
        global numpy stream, a data-dependent number of them, so sample i+1's draws start
        where sample i's ended and cannot be made in lockstep without changing them.
        """

        def _attack(self, initial_sample, original_sample, y_p, target, initial_delta,
                    initial_epsilon, clip_min, clip_max):
            x_adv = initial_sample
            self.curr_delta, self.curr_epsilon = initial_delta, initial_epsilon
            self.curr_adv = x_adv
            clip = (clip_min, clip_max)
            for _ in range(self.max_iter):
                found = self._orthogonal_trials(x_adv, original_sample, y_p, target, clip)
                if found is None:  # ART: "Adversarial example found but not optimal."
                    return x_adv
                x_adv, done = self._epsilon_trials(original_sample, y_p, target, clip, *found)
                if done or self.curr_epsilon < self.min_epsilon:
                    return x_adv
            return x_adv

        def _orthogonal_trials(self, x_adv, original_sample, y_p, target, clip):
            """ART's delta loop; each trial also predicts its candidates' epsilon step.
            Returns the satisfied candidates, their steps and which steps satisfy, or None."""
            for _ in range(self.num_trial):
                candidates = np.array([
                    np.clip(x_adv + self._orthogonal_perturb(self.curr_delta, x_adv,
                                                             original_sample), *clip)
                    for _ in range(self.sample_size)])
                steps = self._towards(original_sample, candidates, clip)
                satisfied = self._satisfied(np.concatenate([candidates, steps]), y_p, target)
                satisfied, steps_satisfied = np.split(satisfied, 2)
                delta_ratio = np.mean(satisfied)
                if delta_ratio < 0.2:
                    self.curr_delta *= self.step_adapt
                elif delta_ratio > 0.5:
                    self.curr_delta /= self.step_adapt
                if delta_ratio > 0:
                    keep = np.where(satisfied)[0]
                    return candidates[keep], steps[keep], steps_satisfied[keep]
            return None

        def _epsilon_trials(self, original_sample, y_p, target, clip, x_advs, steps, satisfied):
            """ART's epsilon loop, its first trial already predicted. Returns (x_adv, done)."""
            for trial in range(self.num_trial):
                if trial:
                    steps = self._towards(original_sample, x_advs, clip)
                    satisfied = self._satisfied(steps, y_p, target)
                epsilon_ratio = np.mean(satisfied)
                if epsilon_ratio < 0.2:
                    self.curr_epsilon *= self.step_adapt
                elif epsilon_ratio > 0.5:
                    self.curr_epsilon /= self.step_adapt
                if epsilon_ratio > 0:
                    self.curr_adv = self._best_adv(original_sample, steps[np.where(satisfied)[0]])
                    return self.curr_adv, False
            return self._best_adv(original_sample, x_advs), True  # ART: "not optimal"

        def _towards(self, original_sample, x_advs, clip):
            """ART's step of x_advs towards the original by curr_epsilon, verbatim."""
            perturb = np.repeat(np.array([original_sample]), len(x_advs), axis=0) - x_advs
            perturb *= self.curr_epsilon
            return np.clip(x_advs + perturb, *clip)

        def _satisfied(self, x, y_p, target):
            preds = np.argmax(self.estimator.predict(x, batch_size=self.batch_size), axis=1)
            return preds == target if self.targeted else preds != y_p

    return FusedBoundaryAttack

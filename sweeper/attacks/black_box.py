"""Boundary, HopSkipJump and ZOO, the black-box attacks besides Square (square.py): their
specs, ART builders, the seeded generates of the two decision-based ones (Boundary,
HopSkipJump), and ``BatchedTrialBoundaryAttack``, ART's BoundaryAttack with each trial's
candidates drawn and scored as one batch.

All three are minimal-perturbation attacks: eps is a post-hoc budget (spec.py).

The ART subclass is created on first use (``_boundary_attack_class``) so that importing
this module imports neither TensorFlow nor ART.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys

import numpy as np

from sweeper.attacks.spec import AttackSpec, _art_norm
from sweeper.plan.limits import FLAG, non_negative, positive, whole

_LOG = logging.getLogger(__name__)


def _build_boundary(classifier, eps, norm, params, seed):
    return _boundary_attack_class()(classifier, **params)


def _build_zoo(classifier, eps, norm, params, seed):
    from sweeper.attacks.art_lib import ZooAttack

    # ZOO samples nb_parallel distinct coordinates per step: more than the input has fails.
    n_features = int(np.prod(classifier.input_shape))
    params = {**params, "nb_parallel": min(params["nb_parallel"], n_features)}
    return ZooAttack(classifier, **params)


def _build_hop_skip_jump(classifier, eps, norm, params, seed):
    from sweeper.attacks.art_lib import HopSkipJump

    return HopSkipJump(classifier, norm=_art_norm(norm), **params)


def _seeded_starts(classifier, x, y, init_size: int, seed: int) -> dict[int, np.ndarray]:
    """Random starting points of the decision-based attacks, seeded: for each sample the
    model classifies correctly, the first of ``init_size`` uniform draws in the clip range
    that it classifies differently (ART's recipe; ART draws them from an unseeded
    ``np.random.RandomState()``). A sample with no such draw gets none. Samples already
    misclassified get none either: untargeted Boundary and HopSkipJump move away from the
    *predicted* label, so they could push such a sample back to its true class (it is
    left as is: already adversarial)."""
    rng = np.random.default_rng(seed)
    lo, hi = classifier.clip_values
    preds = classifier.predict(x).argmax(axis=1)
    labels = preds if y is None else _label_indices(y)
    starts = {}
    for i in np.flatnonzero(preds == labels):
        noise = rng.uniform(lo, hi, size=(init_size, *x.shape[1:])).astype(np.float32)
        found = np.flatnonzero(classifier.predict(noise).argmax(axis=1) != preds[i])
        if found.size:
            starts[i] = noise[found[0]]
    return starts


def _generate_hop_skip_jump(attack, classifier, x, y, params, seed) -> np.ndarray:
    """HopSkipJump from seeded starts (``_seeded_starts``) on the samples that have one;
    the others stay clean. ART's gradient estimates draw from numpy's global stream, which
    ``budget.run`` seeds. The starts go to ART as ``x_adv_init``: ART uses a start as it
    is (its own start gets a binary search towards the input first; every iteration of
    ART's loop begins with one, so the first does it)."""
    starts = _seeded_starts(classifier, x, y, params["init_size"], seed)
    x_adv = x.astype(np.float32, copy=True)
    if starts:
        chosen = np.array(sorted(starts))
        x_adv[chosen] = attack.generate(x=x_adv[chosen], x_adv_init=np.stack([starts[i] for i in chosen]))
    return x_adv


def _generate_boundary(attack, classifier, x, y, params, seed) -> np.ndarray:
    """Boundary attack from seeded starts (``_seeded_starts``), one sample at a time, on
    the samples that have one. Samples with no start stay clean, as in ART, and so do
    samples whose ART run overflows (see below).
    """
    starts = _seeded_starts(classifier, x, y, params["init_size"], seed)
    x_adv = x.astype(np.float32, copy=True)
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


@functools.cache
def _boundary_attack_class() -> type:
    from sweeper.attacks.art_lib import ART_NUMPY_DTYPE, BoundaryAttack

    class BatchedTrialBoundaryAttack(BoundaryAttack):
        """ART 1.20's BoundaryAttack returning ART's examples exactly, with less overhead.

        ART builds a trial's ``sample_size`` candidates one at a time (``_orthogonal_perturb``:
        a randn draw and a dozen numpy calls on one input each) and then predicts them
        together. Here ``_orthogonal_perturbs`` draws them as one ``randn`` call, which
        consumes numpy's global stream exactly as ART's consecutive draws do, and applies
        ART's float operations to the stack: the same dtypes, the per-candidate norms and
        dot products computed by the same calls on the same vectors. The loops
        (``_attack``, ``_orthogonal_step``, ``_towards_step``) are ART's, with its step
        adaptation in the same order.

        Samples still run one after another, as in ART: how many draws a sample takes
        depends on its predictions, and the next sample's draws start where it stopped in
        the one global stream, so batching samples would change every later draw.
        """

        def _attack(self, initial_sample, original_sample, y_p, target, initial_delta,
                    initial_epsilon, clip_min, clip_max):
            """ART's main loop for one sample: a step along the boundary, then one towards
            the original, each with its own trust region; ART's early returns."""
            x_adv = initial_sample
            self.curr_delta, self.curr_epsilon = initial_delta, initial_epsilon
            self.curr_adv = x_adv
            for _ in range(self.max_iter):
                x_advs = self._orthogonal_step(x_adv, original_sample, y_p, target,
                                               clip_min, clip_max)
                if x_advs is None:
                    _LOG.warning("Adversarial example found but not optimal.")
                    return x_adv
                x_adv = self._towards_step(x_advs, original_sample, y_p, target,
                                           clip_min, clip_max)
                if x_adv is None:
                    _LOG.warning("Adversarial example found but not optimal.")
                    return self._best_adv(original_sample, x_advs)
                self.curr_adv = x_adv
                if self.curr_epsilon < self.min_epsilon:
                    return x_adv
            return x_adv

        def _satisfied(self, candidates, y_p, target) -> np.ndarray:
            preds = np.argmax(self.estimator.predict(candidates, batch_size=self.batch_size),
                              axis=1)
            return preds == target if self.targeted else preds != y_p

        def _adapted(self, size: float, ratio: float) -> float:
            """ART's step adaptation: shrink the step below 20% success, grow it above 50%."""
            if ratio < 0.2:
                return size * self.step_adapt
            if ratio > 0.5:
                return size / self.step_adapt
            return size

        def _orthogonal_step(self, x_adv, original, y_p, target, clip_min, clip_max):
            """ART's trust region on delta: the adversarial candidates of the first trial
            with any, or None after num_trial trials without one."""
            for _ in range(self.num_trial):
                candidates = np.clip(
                    x_adv + self._orthogonal_perturbs(self.curr_delta, x_adv, original),
                    clip_min, clip_max)
                satisfied = self._satisfied(candidates, y_p, target)
                ratio = np.mean(satisfied)
                self.curr_delta = self._adapted(self.curr_delta, ratio)
                if ratio > 0:
                    return candidates[np.where(satisfied)[0]]
            return None

        def _towards_step(self, x_advs, original, y_p, target, clip_min, clip_max):
            """ART's trust region on epsilon: the closest adversarial candidate of the first
            trial with any, or None after num_trial trials without one."""
            towards = np.repeat(np.array([original]), len(x_advs), axis=0) - x_advs
            for _ in range(self.num_trial):
                perturb = towards.copy()
                perturb *= self.curr_epsilon
                candidates = np.clip(x_advs + perturb, clip_min, clip_max)
                satisfied = self._satisfied(candidates, y_p, target)
                ratio = np.mean(satisfied)
                self.curr_epsilon = self._adapted(self.curr_epsilon, ratio)
                if ratio > 0:
                    return self._best_adv(original, candidates[np.where(satisfied)[0]])
            return None

        def _orthogonal_perturbs(self, delta, current, original) -> np.ndarray:
            """``sample_size`` of ART's ``_orthogonal_perturb(delta, current, original)``,
            stacked, from the same draws and by the same float operations."""
            shape = self.estimator.input_shape
            perturb = np.random.randn(self.sample_size, *shape).astype(ART_NUMPY_DTYPE)
            # ART divides each candidate by its own norm, a float32 scalar: np.linalg.norm
            # on each, so the BLAS reduction is the same one.
            perturb /= _stacked([np.linalg.norm(p) for p in perturb], perturb.ndim)
            perturb *= delta * np.linalg.norm(original - current)
            direction = (original - current).flatten()
            direction /= np.linalg.norm(direction)
            flat = perturb.reshape(len(perturb), -1)
            # ART projects a flatten()ed copy of each candidate: dot the same vectors.
            along = _stacked([np.dot(p.flatten(), direction.T) for p in perturb], 2)
            flat -= along * direction
            hypotenuse = np.sqrt(1 + delta**2)
            return ((1 - hypotenuse) * (current - original) + flat.reshape(perturb.shape)) / hypotenuse

    return BatchedTrialBoundaryAttack


def _stacked(scalars: list, ndim: int) -> np.ndarray:
    """Per-candidate numpy scalars as one array (their own dtype) broadcasting over ndim."""
    return np.array(scalars).reshape(-1, *[1] * (ndim - 1))


def _label_indices(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(int)


BOUNDARY = AttackSpec(
    name="boundary",
    norms=("inf", "2"),
    # epsilon is ART's step size towards the original, not a budget.
    defaults={"delta": 0.01, "epsilon": 0.01, "max_iter": 1000, "num_trial": 25,
              "init_size": 100},
    limits={"delta": positive(), "epsilon": positive(), "max_iter": whole(1), "num_trial": whole(1),
            "init_size": whole(1)},
    fixed={"targeted": False, "step_adapt": 0.667, "sample_size": 20, "min_epsilon": 0.0,
           "batch_size": 64, "verbose": False},
    uses_eps=False,
    black_box=True,
    build=_build_boundary,
    generate=_generate_boundary,
    description="Boundary Attack, decision-based (Brendel et al. 2018); eps is a post-hoc budget",
)
HOP_SKIP_JUMP = AttackSpec(
    name="hopskipjump",
    norms=("2", "inf"),
    # ART's defaults, which are the paper's (Chen, Jordan and Wainwright 2020: 100 initial
    # evaluations per gradient estimate, growing with sqrt(iteration), capped at 10,000).
    defaults={"max_iter": 50, "max_eval": 10000, "init_eval": 100, "init_size": 100},
    limits={"max_iter": whole(1), "max_eval": whole(1), "init_eval": whole(1), "init_size": whole(1)},
    fixed={"targeted": False, "batch_size": 64, "verbose": False},
    uses_eps=False,
    black_box=True,
    build=_build_hop_skip_jump,
    generate=_generate_hop_skip_jump,
    description="HopSkipJump, decision-based (Chen et al. 2020); eps is a post-hoc budget",
)
# The int8 build's input step: every dataset's inputs lie in [0, 1] (sweeper.datasets), which
# the int8 input tensor covers in 255 steps (its calibrated range is at most that wide).
INPUT_STEP = 1 / 255


def _zoo_on_the_build(params) -> str | None:
    """ZOO estimates each coordinate's gradient by finite differences of size variable_h;
    below the build's input step both probes quantize to the same int8 input, so the
    build's outputs never change and ZOO never moves (measured: 0 of 10 digits samples
    changed at 1e-4, 8 of 10 fooled at 0.01)."""
    if params["variable_h"] < INPUT_STEP:
        return (f"zoo's finite differences (variable_h {params['variable_h']:g}) are smaller than the build's "
                f"input step (1/255 of the input range), so its queries never see the build move; "
                f"set params.variable_h to at least {INPUT_STEP:.4f} (e.g. 0.01)")
    return None


ZOO = AttackSpec(
    name="zoo",
    norms=("2",),
    # nb_parallel is capped at the number of input features. variable_h is ART's finite
    # difference step (settable so that ZOO can attack the int8 build: _zoo_on_the_build).
    defaults={"confidence": 0.0, "max_iter": 10, "binary_search_steps": 10,
              "learning_rate": 0.01, "initial_const": 0.001, "nb_parallel": 128,
              "use_resize": False, "use_importance": False, "variable_h": 1e-4},
    limits={"confidence": non_negative(), "max_iter": whole(1), "binary_search_steps": whole(1),
            "learning_rate": positive(), "initial_const": positive(), "nb_parallel": whole(1),
            "use_resize": FLAG, "use_importance": FLAG, "variable_h": positive()},
    fixed={"targeted": False, "abort_early": True, "batch_size": 1, "verbose": False},
    uses_eps=False,
    black_box=True,
    build=_build_zoo,
    deployed_problem=_zoo_on_the_build,
    description="ZOO, zeroth-order C&W L2 (Chen et al. 2017); eps is a post-hoc L2 budget",
)


@contextlib.contextmanager
def stock_art_classes():
    """While active, sweeper's Square and Boundary builders make ART's own SquareAttack
    and BoundaryAttack: the reference that the equality tests and bench/attacks.py
    compare sweeper's faster subclasses with."""
    from unittest import mock

    from sweeper.attacks.art_lib import BoundaryAttack, SquareAttack

    from sweeper.attacks import square

    with mock.patch.object(square, "_square_attack_class", lambda: SquareAttack), \
            mock.patch.object(sys.modules[__name__], "_boundary_attack_class", lambda: BoundaryAttack):
        yield

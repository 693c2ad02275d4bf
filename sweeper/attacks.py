"""Adversarial attacks: the attacks sweeper runs through ART, and the fast ART estimator.

Each attack is an ``AttackSpec`` in ``ATTACKS``: its accepted norms, the parameters a grid
may set (``defaults``) and the ones sweeper pins (``fixed``: ``targeted=False``,
``verbose=False``, batch sizes); every one of them is passed to ART explicitly, because
ART's defaults differ from the papers (BoundaryAttack is targeted by default, PGD runs
100 steps). Specs and ``validate`` import neither TensorFlow nor ART, so the CLI checks a
grid cheaply; ``run``, ``make_classifier`` and the ART subclasses here (the compiled
estimator, a Square Attack for non-square inputs) import them when first used.

What ``eps`` means (``run`` enforces it, whatever ART returned):

- ``eps == 0`` is the clean evaluation for every attack: the clipped inputs, no ART call.
- fgsm, pgd, square (budget attacks, ``uses_eps``): ART's perturbation budget under
  ``norm``; it must be finite. The result is projected onto the ball again if it lies
  outside beyond float32 rounding (``BUDGET_RTOL``).
- cw_l2, zoo (norm "2") and boundary (norm "inf" or "2"): minimal-perturbation attacks
  (``is_minimal``) with no budget parameter. ``eps == math.inf`` (or None) is unbounded:
  the raw examples, clipped to the classifier's clip_values, a failed sample being its
  clean input; ``perturbation_norms`` of one unbounded run gives every post-hoc budget.
  A finite ``eps`` is such a budget applied here: an example whose ``||x_adv - x||``
  exceeds it is replaced by the clean input, i.e. counts as a failed attack.

A parameter listed in a spec's ``relative`` (PGD's ``eps_step``) may also be written
relative to the budget (``eps/4``, ``eps*0.25``, ``0.25*eps``, ``eps``); ``art_params``
resolves it for a given eps.
"""

from __future__ import annotations

import functools
import math
import numbers
import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sweeper.errors import UserError
from sweeper.registry import Registry

# predict() runs at most this many samples per compiled call, to bound memory.
PREDICT_CHUNK = 4096
# Budgets are checked with this relative slack: x + delta rounded to float32 can land a
# hair outside the ball (e.g. ||delta||_inf = 0.10000002 for eps = 0.1).
BUDGET_RTOL = 1e-5


@dataclass(frozen=True)
class AttackSpec:
    """One attack: what a grid may set for it and how to build and run it through ART."""

    name: str
    norms: tuple[str, ...]  # as written in grid files: "inf", "1", "2"; the first is the default
    defaults: Mapping[str, Any]  # what a grid may set, with sweeper's defaults
    uses_eps: bool  # False: a minimal-perturbation attack, eps is a post-hoc budget (module doc)
    black_box: bool  # uses only the model's outputs, never its gradients
    build: Callable[..., Any]  # (classifier, eps, norm, params, seed) -> ART attack
    description: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # passed to ART, not settable
    # (attack, classifier, x, y, params, seed) -> x_adv; None means attack.generate(x, y)
    generate: Callable[..., np.ndarray] | None = None
    single_step: bool = False  # one gradient step (FGSM): should never beat an iterative attack
    # Parameters a grid may write relative to the budget (eps_step: eps/4), see RELATIVE_FORMS.
    relative: tuple[str, ...] = ()


ATTACKS: Registry[AttackSpec] = Registry("attack")


def _add(spec: AttackSpec) -> None:
    ATTACKS.add(spec.name, spec)


def _art_norm(norm: str) -> float | int:
    return np.inf if norm == "inf" else int(norm)


def _build_fgsm(classifier, eps, norm, params, seed):
    from art.attacks.evasion import FastGradientMethod

    # eps_step only matters with minimal=True, which sweeper does not use.
    return FastGradientMethod(classifier, norm=_art_norm(norm), eps=eps, eps_step=eps, **params)


def _build_pgd(classifier, eps, norm, params, seed):
    from art.attacks.evasion import ProjectedGradientDescentNumpy

    return ProjectedGradientDescentNumpy(classifier, norm=_art_norm(norm), eps=eps, **params)


def _build_square(classifier, eps, norm, params, seed):
    # ART's SquareAttack fails on non-square inputs (49x10 MFCCs): see AnyShapeSquareAttack.
    return _square_attack_class()(classifier, norm=_art_norm(norm), eps=eps, **params)


def _build_cw_l2(classifier, eps, norm, params, seed):
    from art.attacks.evasion import CarliniL2Method

    return CarliniL2Method(classifier, **params)


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


_add(AttackSpec(
    name="fgsm",
    norms=("inf", "1", "2"),
    defaults={"num_random_init": 0},
    fixed={"targeted": False, "minimal": False, "batch_size": 128, "summary_writer": False},
    uses_eps=True,
    black_box=False,
    single_step=True,
    build=_build_fgsm,
    description="Fast Gradient (Sign) Method, one step of size eps (Goodfellow et al. 2015)",
))
_add(AttackSpec(
    name="pgd",
    norms=("inf", "1", "2"),
    # One random start, as in Madry et al.; num_random_init=0 gives BIM (start at x).
    defaults={"max_iter": 7, "eps_step": 2 / 255, "num_random_init": 1},
    fixed={"targeted": False, "decay": None, "random_eps": False, "batch_size": 128,
           "summary_writer": False, "verbose": False},
    uses_eps=True,
    black_box=False,
    relative=("eps_step",),  # eps_step: eps/4 scales the step with each budget of the grid
    build=_build_pgd,
    description="Projected Gradient Descent, numpy variant (Madry et al. 2018)",
))
_add(AttackSpec(
    name="square",
    norms=("inf", "2"),
    defaults={"max_iter": 1000, "p_init": 0.8, "nb_restarts": 1},
    fixed={"adv_criterion": None, "loss": None, "batch_size": 128, "verbose": False},
    uses_eps=True,
    black_box=True,
    build=_build_square,
    description="Square Attack, score-based random search (Andriushchenko et al. 2020)",
))
_add(AttackSpec(
    name="cw_l2",
    norms=("2",),
    defaults={"confidence": 0.0, "max_iter": 10, "binary_search_steps": 10,
              "learning_rate": 0.01, "initial_const": 0.01},
    # ART's C&W keeps its constants and line search per sample, so batch_size only changes
    # speed: 128 gave the same examples as ART's default of 1, about 8x faster.
    fixed={"targeted": False, "max_halving": 5, "max_doubling": 5, "batch_size": 128,
           "verbose": False},
    uses_eps=False,
    black_box=False,
    build=_build_cw_l2,
    description="Carlini & Wagner L2, minimal perturbation; eps is a post-hoc L2 budget",
))
_add(AttackSpec(
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
))
_add(AttackSpec(
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
))


# --------------------------------------------------------------------------- validation


def normalize_norm(norm: Any) -> str | None:
    """Grid files may say 2, 2.0, "2", "inf" or .inf: map them all to "2" / "inf"."""
    if norm is None:
        return None
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm == float("inf"):
            return "inf"
        return str(int(norm)) if float(norm).is_integer() else str(norm)
    return str(norm).strip().lower()


def _type_error(value: Any, default: Any) -> str | None:
    """Why value cannot replace default, judged by the default's type; None if it can."""
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(value, bool):
        return "must be a number"
    if isinstance(default, int):
        return None if isinstance(value, numbers.Integral) else "must be an integer"
    if isinstance(default, float):
        return None if isinstance(value, numbers.Real) else "must be a number"
    return None


def is_minimal(name: str) -> bool:
    """A minimal-perturbation attack (no budget parameter; eps may be unbounded)."""
    return not ATTACKS.get(name).uses_eps


def _minimal_names() -> str:
    return ", ".join(name for name in ATTACKS.names() if is_minimal(name))


# A relative parameter: "eps", "eps/k", "eps*k" or "k*eps", k a plain positive number.
RELATIVE_FORMS = "eps, eps/k, eps*k or k*eps with a number k > 0"
_RELATIVE_ERROR = f"must be a number or relative to eps ({RELATIVE_FORMS})"
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RELATIVE = re.compile(
    rf"(?:(?P<left>{_NUMBER})\s*\*\s*)?eps(?:\s*(?P<op>[*/])\s*(?P<right>{_NUMBER}))?")


def _relative(text: str) -> tuple[str, float] | None:
    """("*" or "/", k) for a relative expression, None if text is not one."""
    match = _RELATIVE.fullmatch(text.strip())
    if not match or (match["left"] and match["op"]):  # one factor at most: no 2*eps/4
        return None
    if match["left"]:
        op, k = "*", float(match["left"])
    else:
        op, k = match["op"] or "*", float(match["right"] or 1)
    return (op, k) if 0 < k < math.inf else None


def _resolve(text: str, eps: float) -> float:
    op, k = _relative(text)
    return eps / k if op == "/" else eps * k  # eps/4 exactly, not eps * 0.25 rounded twice


def _param_error(spec: AttackSpec, param: str, value: Any) -> str | None:
    """Why value is not accepted for param; None if it is."""
    if param in spec.relative and isinstance(value, str):
        return None if _relative(value) else _RELATIVE_ERROR
    return _type_error(value, spec.defaults[param])


def validate(name: str, norm: Any, params: Mapping[str, Any], *, eps: float | None = None) -> None:
    """Check an attack cell without importing ART; raise a one-line UserError if bad.

    ``eps`` None is not checked; ``math.inf`` (unbounded) is only for minimal attacks.
    """
    spec = ATTACKS.get(name)
    key = normalize_norm(norm)
    if key is not None and key not in spec.norms:
        accepted = ", ".join(spec.norms)
        raise UserError(f"attack {name!r}: unsupported norm {norm!r}; accepted: {accepted}")
    for param, value in params.items():
        if param not in spec.defaults:
            accepted = ", ".join(sorted(spec.defaults))
            raise UserError(f"attack {name!r}: unknown parameter {param!r}; accepted: {accepted}")
        problem = _param_error(spec, param, value)
        if problem:
            raise UserError(f"attack {name!r}: parameter {param!r} {problem}, got {value!r}")
    if eps is None:
        return
    real = isinstance(eps, numbers.Real) and not isinstance(eps, bool)
    if not (real and eps >= 0):  # also rejects NaN
        raise UserError(f"attack {name!r}: eps must be a finite number >= 0, got {eps!r}")
    if math.isinf(eps) and spec.uses_eps:
        _unbounded_budget_error(name)


def _unbounded_budget_error(name: str) -> None:
    raise UserError(f"attack {name!r}: needs a finite eps budget; 'unbounded' is only for "
                    f"minimal-perturbation attacks: {_minimal_names()}")


def art_params(name: str, params: Mapping[str, Any], eps: float | None = None) -> dict[str, Any]:
    """Every keyword sweeper passes to ART for this attack besides eps and norm.

    A relative parameter (``eps_step: eps/4``) becomes a number for a finite ``eps``; with
    eps None or unbounded it stays as written (how a grid cell records it).
    """
    spec = ATTACKS.get(name)
    full = {**spec.defaults, **params, **spec.fixed}
    if eps is not None and math.isfinite(eps):
        for param in spec.relative:
            if isinstance(full[param], str):
                full[param] = _resolve(full[param], float(eps))
    return full


# --------------------------------------------------------------------------- running


def run(name: str, classifier: Any, x: np.ndarray, y: np.ndarray | None, eps: float | None,
        norm: Any, params: Mapping[str, Any], seed: int) -> np.ndarray:
    """Adversarial examples for x (labels y: indices or one-hot; None: model predictions).

    ``eps`` 0: the clean (clipped) inputs, for every attack. ``eps`` math.inf or None:
    unbounded, only for minimal attacks (``is_minimal``). The result always lies within
    the classifier's clip_values and within eps under norm, up to BUDGET_RTOL (see the
    module docstring for eps per attack).
    """
    eps = math.inf if eps is None else eps
    validate(name, norm, params, eps=eps)
    spec = ATTACKS.get(name)
    norm = normalize_norm(norm) or spec.norms[0]
    x = np.asarray(x, dtype=np.float32)
    if eps == 0 or len(x) == 0:
        return _clip(x, classifier)  # zero budget: nothing to perturb (SquareAttack rejects 0)
    x_adv = _generate(spec, classifier, x, y, eps, norm, art_params(name, params, eps), seed)
    return _within_budget(x, _clip(x_adv, classifier), eps, norm, project=spec.uses_eps,
                          classifier=classifier)


def _generate(spec: AttackSpec, classifier, x, y, eps, norm, params, seed) -> np.ndarray:
    _seed_everything(seed)
    try:  # minimal attacks ignore eps: only budget attacks get here with a finite one
        attack = spec.build(classifier, float(eps), norm, params, seed)
    except ValueError as error:  # ART's own parameter checks (e.g. max_iter <= 0)
        raise UserError(f"attack {spec.name!r}: {error}") from None
    if spec.generate is not None:
        x_adv = spec.generate(attack, classifier, x, y, params, seed)
    else:
        x_adv = attack.generate(x=x, y=y)
    # ART's Square L2 divides by zero on 1-pixel tiles: a non-finite example is a failure.
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
    """||x_adv - x|| per sample under norm ("inf", "1", "2"), in float64."""
    delta = (np.asarray(x_adv, np.float64) - np.asarray(x, np.float64)).reshape(len(x), -1)
    return np.linalg.norm(delta, ord=_art_norm(norm), axis=1)


def _within_budget(x, x_adv, eps, norm, *, project: bool, classifier) -> np.ndarray:
    """Project onto the eps ball (budgeted attacks) or reject what lies outside it."""
    if eps is None or math.isinf(eps):  # unbounded (minimal attacks only)
        return x_adv
    sizes = perturbation_norms(x, x_adv, norm)
    outside = sizes > eps * (1 + BUDGET_RTOL)
    if not outside.any():
        return x_adv
    x_adv = x_adv.copy()
    if not project:
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


def _label_indices(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(int)


# --------------------------------------------------------------------------- estimators


def make_stock_classifier(model: Any, nb_classes: int, input_shape: tuple,
                          clip_values: tuple[float, float]) -> Any:
    """ART's plain TensorFlowV2Classifier for a logits model (eager gradients: slow)."""
    import tensorflow as tf
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        model=model, nb_classes=nb_classes, input_shape=tuple(input_shape),
        loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=tuple(clip_values),
    )


def make_classifier(model: Any, nb_classes: int, input_shape: tuple,
                    clip_values: tuple[float, float]) -> Any:
    """A TensorFlowV2Classifier for a logits model whose forward and gradients are compiled.

    Same results as ``make_stock_classifier`` (same loss: categorical cross-entropy from
    logits, averaged over the batch), much faster on tiny models where ART's eager
    per-call overhead dominates.
    """
    return _fast_classifier_class()(model, nb_classes, tuple(input_shape), tuple(clip_values))


def __getattr__(name: str) -> Any:
    # The ART subclasses are created on first use so that importing this module stays light.
    if name == "FastTensorFlowV2Classifier":
        return _fast_classifier_class()
    if name == "AnyShapeSquareAttack":
        return _square_attack_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _fast_classifier_class() -> type:
    import tensorflow as tf
    from art.estimators.classification import TensorFlowV2Classifier
    from art.utils import check_and_transform_label_format

    class FastTensorFlowV2Classifier(TensorFlowV2Classifier):
        """TensorFlowV2Classifier with predict / loss_gradient / class_gradient compiled.

        Each compiled function has a None batch dimension in its input signature, so it is
        traced once per classifier, not per batch size. Anything the compiled path does not
        cover (training_mode=True, preprocessing) falls back to ART's eager code.
        """

        def __init__(self, model, nb_classes, input_shape, clip_values):
            super().__init__(
                model=model, nb_classes=nb_classes, input_shape=input_shape,
                loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
                clip_values=clip_values,
                preprocessing=None,  # ART's default is an identity StandardisationMeanStd op
            )
            x_spec = tf.TensorSpec([None, *input_shape], tf.float32)
            y_spec = tf.TensorSpec([None, nb_classes], tf.float32)
            label_spec = tf.TensorSpec([None], tf.int32)
            self._logits_fn = tf.function(self._logits, input_signature=[x_spec])
            self._loss_grad_fn = tf.function(self._loss_grad, input_signature=[x_spec, y_spec])
            self._label_grad_fn = tf.function(self._label_grad, input_signature=[x_spec, label_spec])
            self._jacobian_fn = tf.function(self._jacobian, input_signature=[x_spec])

        # The plain functions below are what gets compiled.
        def _logits(self, x):
            return self._model(x, training=False)

        def _loss_grad(self, x, y):
            with tf.GradientTape() as tape:
                tape.watch(x)
                losses = tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=self._logits(x))
                loss = tf.reduce_mean(losses)  # Keras' default SUM_OVER_BATCH_SIZE, as in ART
            return tape.gradient(loss, x)

        def _label_grad(self, x, labels):
            # Samples are independent at inference, so one backward pass of the summed
            # picked logits gives every sample's own gradient.
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = self._logits(x)
                picked = tf.reduce_sum(logits * tf.one_hot(labels, tf.shape(logits)[1]))
            return tape.gradient(picked, x)

        def _jacobian(self, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                logits = self._logits(x)
            return tape.batch_jacobian(logits, x)

        def _compiled_ok(self, training_mode: bool) -> bool:
            return not training_mode and not self.preprocessing_operations

        def predict(self, x, batch_size: int = 128, training_mode: bool = False, **kwargs):
            if not self._compiled_ok(training_mode):
                return super().predict(x, batch_size=batch_size, training_mode=training_mode, **kwargs)
            x = np.asarray(x, dtype=np.float32)
            chunks = [self._logits_fn(x[i:i + PREDICT_CHUNK]).numpy()
                      for i in range(0, len(x), PREDICT_CHUNK)]
            logits = np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes), np.float32)
            return self._apply_postprocessing(preds=logits, fit=False)

        def loss_gradient(self, x, y, training_mode: bool = False, **kwargs):
            if not self._compiled_ok(training_mode) or not isinstance(x, np.ndarray):
                return super().loss_gradient(x, y, training_mode=training_mode, **kwargs)
            y = check_and_transform_label_format(y, nb_classes=self.nb_classes)
            grads = self._loss_grad_fn(x.astype(np.float32), np.asarray(y, dtype=np.float32))
            return grads.numpy()

        def class_gradient(self, x, label=None, training_mode: bool = False, **kwargs):
            if not self._compiled_ok(training_mode):
                return super().class_gradient(x, label=label, training_mode=training_mode, **kwargs)
            x = np.asarray(x, dtype=np.float32)
            if label is None:
                return self._jacobian_fn(x).numpy()
            labels = np.broadcast_to(np.asarray(label, dtype=np.int32), (len(x),))
            return self._label_grad_fn(x, labels).numpy()[:, None]

    return FastTensorFlowV2Classifier


# --------------------------------------------------------------------------- square attack


def _tile_side(fraction: float, height: int, width: int, *, smallest: int, odd: bool) -> int:
    """ART's square side for a fraction of the image, clamped to the narrow side.

    ART takes sqrt(fraction * height * width), which outgrows the width of a tall narrow
    input (49x10 MFCCs); on square inputs the clamp never binds where ART itself works.
    """
    side = max(int(round(math.sqrt(fraction * height * width))), smallest)
    if odd and side % 2 == 0:
        side += 1
    return min(side, height, width)


def _tile_start(length: int, side: int) -> int:
    # ART draws from [0, length - side): the last position is never used (kept, so that
    # square inputs give ART's examples); a side as long as the axis can only start at 0.
    return np.random.randint(0, max(length - side, 1))


def _square_bump(side: int) -> np.ndarray:
    """ART's pseudo-Gaussian L2 bump (SquareAttack.generate's _get_perturbation), verbatim:
    the same float operations and the same two random.random() draws."""
    delta = np.zeros([side, side])
    gaussian_perturbation = np.zeros([side // 2, side])
    x_c = side // 4
    y_c = side // 2
    for i_y in range(y_c):
        gaussian_perturbation[
            max(x_c, 0): min(x_c + (2 * i_y + 1), side // 2),
            max(0, y_c): min(y_c + (2 * i_y + 1), side),
        ] += 1.0 / ((i_y + 1) ** 2)
        x_c -= 1
        y_c -= 1
    gaussian_perturbation /= np.sqrt(np.sum(gaussian_perturbation**2))
    delta[: side // 2] = gaussian_perturbation
    delta[side // 2: side // 2 + gaussian_perturbation.shape[0]] = -gaussian_perturbation
    delta /= np.sqrt(np.sum(delta**2))
    if random.random() > 0.5:
        delta = np.transpose(delta)
    if random.random() > 0.5:
        delta = -delta
    return delta


@functools.cache
def _square_attack_class() -> type:
    from art.attacks.evasion import SquareAttack
    from art.config import ART_NUMPY_DTYPE
    from art.utils import check_and_transform_label_format, get_labels_np_array

    class AnyShapeSquareAttack(SquareAttack):
        """ART's SquareAttack (L-inf and L2) on any height x width, not only square inputs.

        ART sizes each square from height * width and draws its position in
        ``[0, width - side)``, which is empty once the side exceeds the narrow dimension: a
        49x10 input fails with ``ValueError: high <= 0``. Its L2 start also lays 5x5 bumps
        of side height // 5, which overruns a narrow width. Here the side is clamped to the
        narrow dimension (``_tile_side``) and the L2 start lays bumps of side narrow // 5,
        5 across the narrow dimension and proportionally many along the long one.

        Otherwise this is ART 1.20's ``generate`` restructured: on square inputs it makes
        the same random draws in the same order, so it returns ART's examples exactly
        (tests check it). Channels-first estimators and norm 1 use ART's code unchanged;
        there are no progress bars (sweeper pins verbose=False).
        """

        def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
            linf = self.norm in (np.inf, "inf")
            if self.estimator.channels_first or x.ndim != 4 or not (linf or self.norm == 2):
                return super().generate(x, y, **kwargs)
            x_adv = x.astype(ART_NUMPY_DTYPE)
            if y is None:  # as ART: the model's predictions are the labels
                y = get_labels_np_array(self.estimator.predict(x, batch_size=self.batch_size))
            else:
                y = check_and_transform_label_format(y, nb_classes=self.estimator.nb_classes)
            restart = self._restart_linf if linf else self._restart_l2
            for _ in range(self.nb_restarts):
                robust = self._robust(x_adv, y)
                if not robust.any():
                    break
                restart(x, x_adv, y, robust)
            return x_adv

        def _robust(self, x_adv, y) -> np.ndarray:
            """Samples the model still classifies correctly."""
            y_pred = self.estimator.predict(x_adv, batch_size=self.batch_size)
            return np.logical_not(self.adv_criterion(y_pred, y))

        def _clip(self, x):
            return np.clip(x, self.estimator.clip_values[0], self.estimator.clip_values[1])

        def _keep_improved(self, x_adv, robust, x_robust, x_new, y_robust, loss_before) -> None:
            """Greedy random search: accept x_new where the margin loss went down."""
            improved = (self.loss(x_new, y_robust) - loss_before) < 0.0
            x_robust[improved] = x_new[improved]
            x_adv[robust] = x_robust

        def _restart_linf(self, x, x_adv, y, robust) -> None:
            height, width, channels = x.shape[1:]
            # Start: vertical stripes of +-eps, from the clean input (ART restarts from x).
            x_robust, y_robust = x[robust], y[robust]
            loss = self.loss(x_robust, y_robust)
            stripes = self.eps * np.random.choice([-1, 1], size=(len(x_robust), 1, width, channels))
            x_new = self._clip(x_robust + stripes).astype(ART_NUMPY_DTYPE)
            self._keep_improved(x_adv, robust, x_robust, x_new, y_robust, loss)
            for i_iter in range(self.max_iter):
                robust = self._robust(x_adv, y)
                if not robust.any():
                    break
                x_robust, x_init, y_robust = x_adv[robust], x[robust], y[robust]
                loss = self.loss(x_robust, y_robust)
                side = _tile_side(self._get_percentage_of_elements(i_iter), height, width,
                                  smallest=1, odd=False)
                top, left = _tile_start(height, side), _tile_start(width, side)
                delta = np.zeros(self.estimator.input_shape)
                delta[top:top + side, left:left + side, :] = np.random.choice(
                    [-2 * self.eps, 2 * self.eps], size=[1, 1, channels])
                x_new = np.minimum(np.maximum(x_robust + delta, x_init - self.eps),
                                   x_init + self.eps)
                x_new = self._clip(x_new).astype(ART_NUMPY_DTYPE)
                self._keep_improved(x_adv, robust, x_robust, x_new, y_robust, loss)

        def _restart_l2(self, x, x_adv, y, robust) -> None:
            height, width, channels = x.shape[1:]
            x_robust, y_robust = x[robust], y[robust]
            loss = self.loss(x_robust, y_robust)
            delta_init = self._l2_start(len(x_robust), height, width, channels)
            norms = np.sqrt(np.sum(delta_init**2, axis=(1, 2, 3), keepdims=True))
            x_new = self._clip(x_robust + delta_init / norms * self.eps)
            self._keep_improved(x_adv, robust, x_robust, x_new, y_robust, loss)
            for i_iter in range(self.max_iter):
                robust = self._robust(x_adv, y)
                if not robust.any():
                    break
                x_robust, x_init, y_robust = x_adv[robust], x[robust], y[robust]
                loss = self.loss(x_robust, y_robust)
                delta = x_robust - x_init
                side = _tile_side(self._get_percentage_of_elements(i_iter), height, width,
                                  smallest=3, odd=True)
                self._l2_step(delta, side, channels)
                # ART's expression and float order: (eps * delta) / ||delta||.
                norms = np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True))
                x_new = x_init + self.eps * delta / norms
                self._keep_improved(x_adv, robust, x_robust, self._clip(x_new), y_robust, loss)

        @staticmethod
        def _l2_start(n, height, width, channels) -> np.ndarray:
            """ART's initial L2 perturbation: a grid of bumps with random signs per channel,
            5 of side narrow // 5 across the narrow dimension (ART: 5x5 of height // 5)."""
            n_tiles = 5
            narrow = min(height, width)
            side = narrow // n_tiles
            delta_init = np.zeros((n, height, width, channels), dtype=ART_NUMPY_DTYPE)
            for row in range(n_tiles * height // narrow):
                for col in range(n_tiles * width // narrow):
                    bump = _square_bump(side).reshape(1, side, side, 1) * np.random.choice(
                        [-1, 1], size=(n, 1, 1, channels))
                    top, left = row * side, col * side
                    delta_init[:, top:top + side, left:left + side, :] += bump
            return delta_init

        def _l2_step(self, delta, side, channels) -> None:
            """ART's L2 update of delta, in place: a new bump in one square window, the
            perturbation of a second window folded into it, within the eps budget."""
            height, width = delta.shape[1:3]
            norms = np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True))
            top, left = _tile_start(height, side), _tile_start(width, side)
            window = (slice(None), slice(top, top + side), slice(left, left + side), slice(None))
            mask = np.zeros(delta.shape)
            mask[window] = 1.0
            window_norm = np.sqrt(np.sum(delta[window] ** 2, axis=(1, 2), keepdims=True))
            top_2, left_2 = _tile_start(height, side), _tile_start(width, side)
            window_2 = (slice(None), slice(top_2, top_2 + side), slice(left_2, left_2 + side),
                        slice(None))
            mask_2 = np.zeros(delta.shape)
            mask_2[window_2] = 1.0
            both_norm = np.sqrt(np.sum((delta * np.maximum(mask, mask_2)) ** 2, axis=(1, 2, 3),
                                       keepdims=True))
            new = (np.ones([len(delta), side, side, channels])
                   * _square_bump(side).reshape(1, side, side, 1)
                   * np.random.choice([-1, 1], size=[len(delta), 1, 1, channels]))
            new += delta[window] / np.maximum(1e-9, window_norm)
            room = (self.eps * np.ones(new.shape)) ** 2 - norms**2
            room[room < 0.0] = 0.0
            new /= np.sqrt(np.sum(new**2, axis=(1, 2), keepdims=True)) * np.sqrt(
                room / channels + both_norm**2)
            delta[window_2] = 0.0
            delta[window] = new

    return AnyShapeSquareAttack

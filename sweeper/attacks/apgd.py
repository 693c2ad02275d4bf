"""APGD-CE and APGD-DLR, the parameter-free budget attacks of AutoAttack (Croce & Hein
2020, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks"): their specs, the DLR loss, the step-size checkpoints and the
attack itself, run on the classifier's Keras model with compiled TensorFlow.

Ported from fra31/auto-attack, ``autoattack/autopgd_base.py``, class ``APGDAttack``
(``attack_single_run`` and ``perturb`` with ``best_loss=False``), commit
a39220048b3c9f2cca9a4d3a54604793c68eca7e (2023-01-09): norms Linf and L2 here, and L1
(Croce & Hein 2021), whose start, step and step-size rule are in apgd_l1.py. As there,
for L-inf and L2: a random start on the sphere of radius eps, a first step of 2*eps,
momentum 0.75, the step halved at checkpoints (``checkpoints``) when the loss oscillated
(rho = 0.75) or the best loss did not improve since an unhalved checkpoint, the halved
samples restarting from their best point. For every norm: restarts attack only the
samples still classified correctly; a fooled sample returns its last misclassified
iterate.

Deliberate deviations:

- Clipped to the classifier's ``clip_values`` where the reference clamps to [0, 1].
- The random start is drawn from ``numpy.random.default_rng(seed)`` (same distributions
  as the reference's torch draws, not the same numbers), batch by batch.
- Batches of ``batch_size`` run one after the other; the reference attacks the whole
  input at once. Samples never interact, so only the random draws depend on the batching.
- A sample never fooled returns its highest-loss point (the reference's ``best_loss``
  output), not its clean input: robust accuracy is unchanged (every iterate was
  classified correctly), and the deployed int8 model (``deployed_adv_acc``) is then
  shown an attacked input, as with PGD and Square.
- The DLR denominator is ``max(z_pi1 - z_pi3, 1e-12)``, not ``z_pi1 - z_pi3 + 1e-12``:
  compiled, TensorFlow rewrote the sum away (``dlr_loss``).
- A non-finite iterate (or one with non-finite logits) is never taken for a fooling point
  or a best point, and the run restarts it from its best point (``_record``): a fooled
  sample always returns its last finite misclassified iterate. The reference would carry
  a NaN to the end and could return it.
- Not ported: L1's ``use_largereps`` (apgd_l1.py), EOT (``eot_iter`` is 1),
  ``best_loss=True``, the targeted losses, logging and the zero-gradient warning.

Reproduced on purpose: the first oscillation check of a run compares its first loss
with ``loss_steps[-1]``, a row not yet written (zeros), as the reference's indexing does.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sweeper.attacks import apgd_l1
from sweeper.attacks.spec import AttackSpec
from sweeper.plan.limits import whole

MOMENTUM = 0.75  # the reference's alpha: weight of the new step against the last move
DLR_FLOOR = 1e-12  # the reference's guard on the DLR denominator (dlr_loss)
_COMPILED: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()


def checkpoints(n_iter: int) -> dict[int, int]:
    """{iteration index i (0-based): window length k} of the step-size checks.

    The reference checks after ``k`` more iterations, k starting at 22% of ``n_iter`` and
    shrinking by 3% per check down to 6%: the paper's p_0 = 0, p_1 = 0.22,
    p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06). For 100 iterations the checks come
    after iterations 22, 41, 57, 70, 80, 87, 93 and 99.
    """
    k = max(int(0.22 * n_iter), 1)
    size_decr, k_min = max(int(0.03 * n_iter), 1), max(int(0.06 * n_iter), 1)
    schedule, i = {}, k - 1
    while i < n_iter:
        schedule[i] = k
        k = max(k - size_decr, k_min)
        i += k
    return schedule


def dlr_loss(logits, labels):
    """-(z_y - max_{i != y} z_i) / max(z_pi1 - z_pi3, 1e-12) per sample (TensorFlow).

    z_pi1 >= z_pi2 >= z_pi3 are the three largest logits; the loss is invariant to shifting
    and scaling the logits. top_k has a gradient, so this is differentiable like the
    reference's sort.

    The reference guards the denominator as ``z_pi1 - z_pi3 + 1e-12``. Compiled, that
    guard vanished: TensorFlow's graph optimizer rewrites ``(a - b) + 1e-12`` as
    ``a - (b - 1e-12)``, and ``b - 1e-12`` rounds to ``b`` in float32, so three tied top
    logits (common on ternary and binary networks, whose logits are sums of a few levels)
    gave an infinite loss and a NaN gradient, and the next iterate was NaN. ``max`` is not
    rewritten: the value is the reference's up to float32 rounding, and at an exact tie the
    denominator is 1e-12 as there (it then passes no gradient, where the reference's passes
    N * 1e24, whose squares overflow float32 in an L2 step).
    """
    import tensorflow as tf

    top = tf.math.top_k(logits, k=3).values
    z_y = tf.gather(logits, labels, batch_dims=1)
    y_on_top = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    best_other = tf.where(y_on_top, top[:, 1], top[:, 0])
    return -(z_y - best_other) / tf.maximum(top[:, 0] - top[:, 2], DLR_FLOOR)


def _per_sample_norm(v, norm: str):
    import tensorflow as tf

    flat = tf.reshape(v, [tf.shape(v)[0], -1])
    size = tf.reduce_max(tf.abs(flat), 1) if norm == "inf" else tf.sqrt(tf.reduce_sum(flat ** 2, 1))
    return tf.reshape(size, [-1] + [1] * (len(v.shape) - 1))


def _normalize(v, norm: str):
    return v / (_per_sample_norm(v, norm) + 1e-12)


def _project(x, x_new, eps, lo, hi, norm: str):
    """x_new pulled onto the eps ball around x, then into [lo, hi] (the reference's order)."""
    import tensorflow as tf

    if norm == "inf":
        x_new = tf.minimum(tf.maximum(x_new, x - eps), x + eps)
    else:
        delta = x_new - x
        x_new = x + _normalize(delta, norm) * tf.minimum(eps, _per_sample_norm(delta, norm))
    return tf.clip_by_value(x_new, lo, hi)


def _compiled(classifier, loss: str, norm: str) -> tuple[Callable, Callable]:
    """(evaluate, advance) for this classifier, loss and norm, traced once and cached.

    evaluate(x_adv, y) -> (logits, per-sample loss, gradient of their sum w.r.t. x_adv);
    advance(x, x_adv, x_adv_old, grad, step, a, eps, lo, hi, y) takes one APGD step and
    evaluates there (under L1, ``a`` is the share ``topk`` of elements a step moves, one
    per sample: L1 has no momentum). One compiled call per iteration: eager TF costs more
    than the model.
    """
    cache = _COMPILED.setdefault(classifier, {})
    if (loss, norm) not in cache:
        cache[(loss, norm)] = _trace(classifier.model, tuple(classifier.input_shape), loss, norm)
    return cache[(loss, norm)]


def _trace(model, input_shape: tuple, loss: str, norm: str) -> tuple[Callable, Callable]:
    import tensorflow as tf

    def evaluate(x_adv, y):
        with tf.GradientTape() as tape:
            tape.watch(x_adv)
            logits = model(x_adv, training=False)
            if loss == "dlr":
                losses = dlr_loss(logits, y)
            else:
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
            # Samples are independent at inference: the gradient of the sum is each one's own.
            total = tf.reduce_sum(losses)
        return logits, losses, tape.gradient(total, x_adv)

    def advance(x, x_adv, x_adv_old, grad, step, a, eps, lo, hi, y):
        if norm == "1":  # a is topk here: L1 has no momentum
            x_1 = apgd_l1.sparse_step(x, x_adv, grad, step, a, eps, lo, hi)
            return (x_1, *evaluate(x_1, y))
        step = tf.reshape(step, [-1] + [1] * len(input_shape))
        direction = tf.sign(grad) if norm == "inf" else _normalize(grad, norm)
        x_1 = _project(x, x_adv + step * direction, eps, lo, hi, norm)
        # Momentum: a of the projected step plus 1 - a of the previous move, projected again.
        x_1 = _project(x, x_adv + (x_1 - x_adv) * a + (x_adv - x_adv_old) * (1 - a), eps, lo, hi, norm)
        return (x_1, *evaluate(x_1, y))

    batch = tf.TensorSpec([None, *input_shape], tf.float32)
    labels, scalar = tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)
    per_sample = tf.TensorSpec([None], tf.float32)
    return (tf.function(evaluate, input_signature=[batch, labels]),
            tf.function(advance, input_signature=[batch, batch, batch, batch, per_sample,
                                                  per_sample if norm == "1" else scalar,
                                                  scalar, scalar, scalar, labels]))


def _l1_projection(classifier) -> Callable:
    """apgd_l1.l1_projection compiled for this classifier's input shape (the L1 start)."""
    import tensorflow as tf

    cache = _COMPILED.setdefault(classifier, {})
    if "l1_projection" not in cache:
        batch = tf.TensorSpec([None, *classifier.input_shape], tf.float32)
        scalar = tf.TensorSpec([], tf.float32)
        cache["l1_projection"] = tf.function(apgd_l1.l1_projection,
                                             input_signature=[batch, batch, scalar, scalar, scalar])
    return cache["l1_projection"]


@dataclass
class _Run:
    """The state of one APGD run over a batch (numpy float32; the reference's names)."""

    x_adv: np.ndarray
    x_adv_old: np.ndarray
    grad: np.ndarray
    step: np.ndarray  # per sample
    x_best: np.ndarray  # highest loss so far, where halved samples restart
    grad_best: np.ndarray
    loss_best: np.ndarray
    x_best_adv: np.ndarray  # the last misclassified iterate: what a fooled sample returns
    acc: np.ndarray  # still classified correctly at every iterate
    loss_steps: np.ndarray  # (n_iter, batch)
    loss_best_last_check: np.ndarray
    reduced_last_check: np.ndarray
    topk: np.ndarray | None = None  # L1: share of elements a step moves, per sample
    sp_old: np.ndarray | None = None  # L1: changed elements of the best point at the last check


@dataclass
class APGD:
    """An APGD attack bound to a classifier and budget; ``generate`` runs it."""

    classifier: Any
    loss: str  # "ce" or "dlr"
    norm: str  # "inf", "2" or "1"
    eps: float
    max_iter: int
    restarts: int
    rho: float
    batch_size: int

    def generate(self, x: np.ndarray, y: np.ndarray | None, seed: int) -> np.ndarray:
        """Adversarial examples for x (labels: indices, one-hot, or None for predictions)."""
        x = np.asarray(x, dtype=np.float32)
        pred = self.classifier.predict(x).argmax(axis=1)
        labels = pred if y is None else _label_indices(y)
        rng = np.random.default_rng(seed)
        adv = x.copy()
        for start in range(0, len(x), self.batch_size):
            part = slice(start, start + self.batch_size)
            adv[part] = self._perturb(x[part], labels[part], pred[part] == labels[part], rng)
        return adv

    def _perturb(self, x, y, acc, rng) -> np.ndarray:
        """The reference's ``perturb``: each restart attacks the samples not yet fooled.

        A fooled sample gets its last misclassified iterate, as in the reference; a sample
        never fooled gets its highest-loss point over the restarts (still classified
        correctly: every iterate was), where the reference returns the clean input.
        """
        adv, best_loss = x.copy(), np.full(len(x), -np.inf, np.float32)
        for _ in range(self.restarts):
            todo = np.flatnonzero(acc)
            if todo.size == 0:
                break
            run = self._single_run(x[todo], y[todo].astype(np.int32), rng)
            fooled, robust = todo[~run.acc], run.acc & (run.loss_best > best_loss[todo])
            acc[fooled] = False
            adv[fooled] = run.x_best_adv[~run.acc]
            adv[todo[robust]] = run.x_best[robust]
            best_loss[todo[robust]] = run.loss_best[robust]
        return adv

    def _single_run(self, x, y, rng) -> _Run:
        evaluate, advance = _compiled(self.classifier, self.loss, self.norm)
        lo, hi = _bounds(self.classifier)
        x_adv = self._random_start(x, rng, lo, hi)
        logits, loss, grad = (np.array(t) for t in evaluate(x_adv, y))
        l1 = self.norm == "1"
        first_step = (apgd_l1.STEP_FACTOR if l1 else 2) * self.eps  # the reference's alpha * eps
        run = _Run(x_adv=x_adv, x_adv_old=x_adv, grad=grad, step=np.full(len(x), first_step, np.float32),
                   x_best=x_adv.copy(), grad_best=grad.copy(), loss_best=loss.copy(),
                   x_best_adv=x_adv.copy(), acc=~(_finite(logits) & (logits.argmax(axis=1) != y)),
                   loss_steps=np.zeros((self.max_iter, len(x)), np.float32),
                   loss_best_last_check=loss.copy(), reduced_last_check=np.ones(len(x), bool))
        if l1:
            run.topk = np.full(len(x), apgd_l1.TOPK_START, np.float32)
            run.sp_old = np.full(len(x), x[0].size, np.float32)
        schedule = apgd_l1.checkpoints(self.max_iter) if l1 else checkpoints(self.max_iter)
        for i in range(self.max_iter):
            a = run.topk if l1 else MOMENTUM if i > 0 else 1.0
            x_new, logits, loss, grad = (np.array(t) for t in advance(
                x, run.x_adv, run.x_adv_old, run.grad, run.step, a, self.eps, lo, hi, y))
            run.x_adv_old, run.x_adv, run.grad = run.x_adv, x_new, grad
            _record(run, i, logits, loss, y)
            if i in schedule and l1:
                apgd_l1.adapt_sparsity(run, x, self.eps)
            elif i in schedule:
                _check_step_size(run, i, schedule[i], self.rho)
        return run

    def _random_start(self, x, rng, lo, hi) -> np.ndarray:
        """x plus a random direction scaled to norm eps (uniform for Linf, Gaussian for L2),
        or under L1 a Gaussian draw projected onto the eps ball within the box."""
        if self.norm == "1":
            t = rng.standard_normal(x.shape, dtype=np.float32)
            delta = _l1_projection(self.classifier)(x, t, self.eps, lo, hi)
            return np.clip(x + t + np.array(delta), lo, hi).astype(np.float32)
        if self.norm == "inf":
            t = 2 * rng.random(x.shape, dtype=np.float32) - 1
            size = np.abs(t).reshape(len(x), -1).max(axis=1)
        else:
            t = rng.standard_normal(x.shape, dtype=np.float32)
            size = np.sqrt((t ** 2).reshape(len(x), -1).sum(axis=1))
        t /= size.reshape(-1, *[1] * (x.ndim - 1)) + np.float32(1e-12)
        return np.clip(x + np.float32(self.eps) * t, lo, hi).astype(np.float32)


def _record(run: _Run, i: int, logits, loss, y) -> None:
    """Book-keeping after iteration i: fooled samples, and each sample's best loss.

    Only a finite iterate with finite logits counts: a NaN input can still give finite
    logits (ReLU maps NaN to 0) and NaN logits give argmax 0, so either could pass for a
    fooling point and overwrite the last finite one, which a non-finite example then lost
    for good (budget.run counts it as the clean input). A non-finite iterate restarts from
    the sample's best point and its gradient, as a halved step does; the reference would
    carry the NaN to the end of the run.
    """
    finite = _finite(run.x_adv) & _finite(logits)
    fooled = finite & (logits.argmax(axis=1) != y)
    run.acc &= ~fooled
    run.x_best_adv[fooled] = run.x_adv[fooled]
    run.loss_steps[i] = loss
    better = finite & (loss > run.loss_best)
    run.x_best[better] = run.x_adv[better]
    run.grad_best[better] = run.grad[better]
    run.loss_best[better] = loss[better]
    lost = ~_finite(run.x_adv)
    run.x_adv[lost] = run.x_best[lost]
    run.grad[lost] = run.grad_best[lost]


def _finite(values: np.ndarray) -> np.ndarray:
    """Per sample: every value finite."""
    return np.isfinite(values).reshape(len(values), -1).all(axis=1)


def _check_step_size(run: _Run, i: int, k: int, rho: float) -> None:
    """Halve the step of samples whose loss oscillated or stalled over the last k steps.

    Condition 1: the loss went up in at most rho*k of the window's k steps (index i-k is
    -1 at the first check: the unwritten last row, as in the reference). Condition 2: the
    step was not halved at the last check and the best loss has not improved since.
    Halved samples restart from their best point and its gradient.
    """
    ups = sum(run.loss_steps[i - c] > run.loss_steps[i - c - 1] for c in range(k))
    halve = ups <= k * rho
    halve |= ~run.reduced_last_check & (run.loss_best_last_check >= run.loss_best)
    run.reduced_last_check = halve
    run.loss_best_last_check = run.loss_best.copy()
    run.step[halve] /= 2
    run.x_adv[halve] = run.x_best[halve]
    run.grad[halve] = run.grad_best[halve]


def _bounds(classifier) -> tuple[float, float]:
    if classifier.clip_values is None:
        return -np.inf, np.inf
    lo, hi = classifier.clip_values
    return float(lo), float(hi)


def _label_indices(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y.argmax(axis=1) if y.ndim == 2 else y.astype(int)


def _fits_dlr(params, eps, input_shape, nb_classes: int) -> str | None:
    """The DLR loss divides by the gap between the top and third logits."""
    return None if nb_classes >= 3 else f"the DLR loss needs at least 3 classes; the model has {nb_classes}"


def _builder(loss: str) -> Callable[..., APGD]:
    def build(classifier, eps, norm, params, seed) -> APGD:
        problem = _fits_dlr(params, eps, classifier.input_shape, classifier.nb_classes) if loss == "dlr" else None
        if problem:
            raise ValueError(problem)
        return APGD(classifier, loss, norm, eps, params["max_iter"], params["restarts"],
                    params["rho"], params["batch_size"])

    return build


def _generate(attack: APGD, classifier, x, y, params, seed) -> np.ndarray:
    return attack.generate(x, y, seed)


def _spec(loss: str, description: str) -> AttackSpec:
    return AttackSpec(
        name=f"apgd_{loss}",
        norms=("inf", "2", "1"),
        defaults={"max_iter": 100, "restarts": 1},  # the reference's n_iter and n_restarts
        limits={"max_iter": whole(1), "restarts": whole(1)},
        fits=_fits_dlr if loss == "dlr" else None,
        fixed={"targeted": False, "rho": 0.75, "batch_size": 128},
        uses_eps=True,
        black_box=False,
        build=_builder(loss),
        generate=_generate,
        description=description,
    )


APGD_CE = _spec("ce", "Auto-PGD on cross-entropy, AutoAttack's first attack (Croce & Hein 2020)")
APGD_DLR = _spec("dlr", "Auto-PGD on the Difference of Logits Ratio loss (Croce & Hein 2020)")

"""APGD under the L1 norm (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial
attacks on image classifiers"): the exact projection onto the L1 ball within the clip box,
the sparse sign step, the random start and the sparsity-adapting step size. apgd.py runs
them: the restarts, the DLR and CE losses and the best-point book-keeping are shared with
L-inf and L2.

Ported from fra31/auto-attack, commit a39220048b3c9f2cca9a4d3a54604793c68eca7e,
``autoattack/autopgd_base.py``: ``L1_projection`` and the ``norm == 'L1'`` branches of
``APGDAttack.attack_single_run``. As there:

- the random start is a standard Gaussian draw projected onto the eps ball within the box;
- the first step is ``eps`` (the reference's alpha 1.0 for L1, 2.0 for L-inf and L2);
- a step moves the ``topk`` share of input elements with the largest gradient entries
  (ties included), each by ``step / (their count)`` in the gradient's sign, so the step
  has L1 size ``step``, and projects back; no momentum;
- every ``max(int(0.04 * n_iter), 1)`` iterations (not the L-inf/L2 checkpoints) the
  sparsity of the best point sets ``topk`` (its share of changed elements / 1.5; at first
  0.2); a sample whose best point became sparser (below 0.95 of the last check's count)
  gets back the full step eps and restarts from its best point and gradient, the others
  have their step divided by 1.5, never below eps / 10.

Deliberate deviations (besides apgd.py's: the classifier's clip values, numpy's seeded
draws, batches):

- The projection keeps ``[lo, hi]``, the classifier's clip values, where the reference
  assumes ``[0, 1]``; the iterate is then clipped to them, which only removes float
  rounding (the projection already lies in the box).
- Not ported: ``use_largereps`` (AutoAttack's L1 version runs APGD on 3, 2 and then 1 times
  eps, 30/30/40% of the iterations, with 5 restarts; here eps throughout, and
  ``restarts`` as the grid sets it), ``x_init``.

``random_sparse_l1`` is not part of the attack: it is the control the tests and
``bench/l1.py`` compare APGD-L1 with, a random perturbation of the same budget.
"""

from __future__ import annotations

import math

import numpy as np

STEP_FACTOR = 1.0  # the reference's alpha for L1: the first step is eps
TOPK_START = 0.2  # share of input elements the first steps move
SPARSITY_DROP = 0.95  # a best point this much sparser than at the last check: reset
STEP_DECREASE = 1.5  # the reference's adasp_redstep
MIN_STEP = 10.0  # the reference's adasp_minstep: the step stays >= eps / 10


def checkpoints(n_iter: int) -> dict[int, int]:
    """{iteration index i (0-based): window length k}: every k = 4% of the iterations."""
    k = max(int(0.04 * n_iter), 1)
    return {i: k for i in range(k - 1, n_iter, k)}


def l1_projection(x, y, eps, lo, hi):
    """The reference's ``L1_projection`` (TensorFlow): delta such that ``||y + delta||_1 <=
    eps`` and ``lo <= x + y + delta <= hi``, with x + y + delta the Euclidean projection of
    x + y onto that set (x, y of shape (batch, ...); x within the box).

    First the box: u <= 0 is how far each element of x + y lies outside it. If the
    perturbation, so corrected, still exceeds eps, every element shrinks towards x by a
    common threshold alpha, within [u, |y|] (soft thresholding), alpha found by a binary
    search over the sorted breakpoints of the L1 size as a function of alpha.
    """
    import tensorflow as tf

    shape = tf.shape(x)
    n, dim = shape[0], math.prod(x.shape[1:])
    x, y = tf.reshape(x, [n, dim]), tf.reshape(y, [n, dim])
    sigma = tf.sign(y)
    u = tf.minimum(tf.minimum(hi - x - y, x + y - lo), 0.0)
    l = -tf.abs(y)
    order = tf.argsort(-tf.concat([u, l], 1), axis=1, stable=True)
    bs = tf.gather(-tf.concat([u, l], 1), order, batch_dims=1)
    bs2 = tf.concat([bs[:, 1:], tf.zeros([n, 1])], 1)
    size1 = tf.cumsum(2 * tf.cast(order < dim, tf.float32) - 1, axis=1)
    s1 = -tf.reduce_sum(u, 1)
    c = eps - tf.reduce_sum(tf.abs(y), 1)
    shrink = s1 + c < 0  # the reference's c5: over budget once inside the box
    s = s1[:, None] + tf.cumsum((bs2 - bs) * size1, axis=1)
    lb, ub = tf.zeros([n]), tf.fill([n], float(2 * dim - 1))
    for _ in range(math.ceil(math.log2(2 * dim))):  # the reference's nitermax
        middle = tf.floor((lb + ub) / 2)
        below = tf.gather(s, tf.cast(middle, tf.int32)[:, None], batch_dims=1)[:, 0] + c < 0
        lb, ub = tf.where(below, middle, lb), tf.where(below, ub, middle)
    at = tf.cast(lb, tf.int32)[:, None]
    alpha = ((-tf.gather(s, at, batch_dims=1) - c[:, None]) / tf.gather(size1, at + 1, batch_dims=1)
             + tf.gather(bs2, at, batch_dims=1))
    # Computed for every row; the reference computes it only for the rows that shrink.
    d = tf.where(shrink[:, None], -tf.minimum(tf.maximum(-u, alpha), -l), u)
    return tf.reshape(sigma * d, shape)


def sparse_step(x, x_adv, grad, step, topk, eps, lo, hi):
    """One L1 step from x_adv (TensorFlow): the sign of the gradient's ``topk`` share of
    largest entries, of L1 size ``step`` (per sample), projected onto the ball and box."""
    import tensorflow as tf

    n, dim = tf.shape(x)[0], math.prod(x.shape[1:])
    flat = tf.reshape(grad, [n, dim])
    ranked = tf.sort(tf.abs(flat), axis=1)
    at = tf.cast(tf.clip_by_value((1.0 - topk) * dim, 0.0, dim - 1.0), tf.int32)  # .long()
    threshold = tf.gather(ranked, at[:, None], batch_dims=1)
    signs = tf.sign(flat * tf.cast(tf.abs(flat) >= threshold, tf.float32))
    moved = signs / (tf.reduce_sum(tf.abs(signs), 1, keepdims=True) + 1e-10)
    delta = tf.reshape(x_adv, [n, dim]) + step[:, None] * moved - tf.reshape(x, [n, dim])
    delta = tf.reshape(delta, tf.shape(x))
    return tf.clip_by_value(x + delta + l1_projection(x, delta, eps, lo, hi), lo, hi)


def adapt_sparsity(run, x: np.ndarray, eps: float) -> None:
    """The reference's L1 check (numpy, in place on apgd's ``_Run``): ``topk`` from the
    best point's sparsity; a sample whose best point got sparser resets its step to eps
    and restarts from its best point, the others' steps shrink by 1.5, within
    [eps / 10, eps]."""
    n_features = x[0].size
    changed = np.count_nonzero((run.x_best - x).reshape(len(x), -1), axis=1).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 is NaN: no reset, as in torch
        reset = changed / run.sp_old < SPARSITY_DROP
    run.topk = changed / n_features / STEP_DECREASE
    full = np.float32(STEP_FACTOR * eps)
    run.step = np.where(reset, full, run.step / np.float32(STEP_DECREASE)).astype(np.float32)
    run.step = np.clip(run.step, full / np.float32(MIN_STEP), full)
    run.sp_old = changed
    run.x_adv[reset] = run.x_best[reset]
    run.grad[reset] = run.grad_best[reset]


def random_sparse_l1(x: np.ndarray, eps: float, elements: int, lo: float, hi: float,
                     rng: np.random.Generator) -> np.ndarray:
    """A random perturbation of L1 size eps: ``elements`` input elements per sample, drawn
    uniformly, each moved by eps / elements with a random sign, then clipped to [lo, hi]
    (for a point inside the L1 ball that clip is its projection onto ball and box)."""
    flat = x.reshape(len(x), -1)
    delta = np.zeros_like(flat)
    for row in delta:
        chosen = rng.choice(row.size, size=min(elements, row.size), replace=False)
        row[chosen] = rng.choice([-1.0, 1.0], size=chosen.size) * eps / chosen.size
    return np.clip(flat + delta, lo, hi).reshape(x.shape).astype(np.float32)

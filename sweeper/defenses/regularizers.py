"""Regularizer defenses: the loss gains a penalty, the inputs stay clean.

- ``jr``, Jacobian regularization (Hoffman, Roberts & Yaida 2019, "Robust Learning with
  Jacobian Regularization"; reference code facebookresearch/jacobian_regularizer):

      loss = CE + lambda * R,   R = 1/2 ||J||_F^2 ~ 1/2 * C / (n B) * sum_{i<n} sum_b ||v_ib^T J_b||^2

  J_b is the Jacobian of sample b's C logits with respect to its input, v_ib a random
  unit vector of the C logits (uniform on the sphere), n the number of projections
  (``projections``, default 1 as in the reference), B the batch. The estimate is unbiased:
  E[v v^T] = I/C. The gradient of R with respect to the weights runs through a nested
  tape (double backprop). Reference lambda: 0.01 (README) to 0.1 (MNIST example); the
  default is 0.01. R's scale differs by orders of magnitude between presets (about 60
  for int4 against 2,900 for ternary, resnet8 at initialisation), so one lambda is not
  comparable across presets: the step reports R (metric ``jr``) and the trial stores
  its mean over the last epoch.

- ``jr_layer``, per-block Jacobian regularization: the seed paper (Pau, Ayaz, Zakariyya et
  al. 2025) describes its STQ model as co-optimised with QKeras through a "per-layer JR
  methodology"; its text beyond the abstract was not available to us, so sweeper's reading
  is the issue's: each block's Jacobian penalised with one random projection per step,

      loss = CE + lambda * sum_k R_k,   R_k = 1/2 ||J_k||_F^2 ~ 1/2 * D_k / (n B) * sum_i sum_b ||v_ib^T J_k,b||^2

  J_k,b the Jacobian of block k's output (D_k values) with respect to its input at sample
  b's activations (``sweeper.models.jacobian``: what a block is), v_ib uniform on the unit sphere
  of R^{D_k}, with the same estimator as ``jr`` (``jacobian.projection_estimate``), block
  k's projections from the k-th split of the step's key. The product of the blocks'
  Jacobians is the input-to-logit one, so sum_k R_k bounds ||J||_F through
  ||J||_F <= prod_k ||J_k||_F. The blocks come from a model that shares the trained
  model's layers (``jacobian.block_model``), called once per step in training mode, so
  batch norm and stochastic quantizers behave as in plain training. No published lambda:
  the default 0.001 is sweeper's, chosen because it keeps clean accuracy within 0.02 of
  the undefended twin on digits (grids/theorem.yaml, small_cnn, 30 epochs, 3 folds: fp
  0.976 against 0.987, int8 0.970/0.978, ternary 0.911/0.928, stq 0.948/0.959) while
  cutting the conv blocks' norms to 0.3-0.5x (0.85x for ternary's second block); 0.01
  took a 4-epoch int8 model to 0.45 accuracy. The summed penalty ends those trainings at
  about 300 (fp), 240 (int8), 470 (stq) and 1,400 (ternary), against ``jr``'s R of about
  22 (84 on ternary): the two lambdas are not comparable.
  Cost per step on small_cnn (three blocks), relative to a plain step: 3.0x fp, 1.8x
  int8, 2.5x ternary, 2.9x stq, where jr cost 2.4x, 1.5x, 2.5x and 2.2x in the same run
  (bench/train_step.py --defenses jr jr_layer, 7 interleaved rounds, load average 6.6);
  on stq_net (seven blocks, 32x32x1, 3 rounds) 3.6x fp and 2.0x stq (jr 2.3x, 2.8x).

- ``dq``, Defensive Quantization's Lipschitz penalty (Lin, Gan & Han 2019, "Defensive
  Quantization: When Efficiency Meets Robustness"):

      loss = CE + beta * sum_l ||Q_l^T Q_l - I||_F^2

  Lin et al. keep each layer's Lipschitz constant at most 1 so that a small input
  perturbation is not amplified into other quantization buckets; the penalty pulls each
  layer's weight matrix toward orthonormal. Q_l is the kernel *as the layer multiplies
  with it*: through the layer's QKeras weight quantizer, its scale (alpha) included
  (``kernel_matrices``); for fp, the float kernel. The gradient reaches the latent float
  weights through the quantizer's straight-through estimator, as every loss term of
  quantization-aware training does. Penalising the latent weights instead (sweeper did
  before) bounds a network that is never run: it pulls them to about 1/sqrt(fan-in),
  0.044 for small_cnn's 512-input dense layer, under ternary's fixed threshold 0.33, so
  the quantized layer became all zeros. On the quantized kernel an all-zero layer costs
  min(fan-in, fan-out), so the penalty never rewards emptying a layer.

  Where sweeper chooses (no public code and no published beta found):
  - Kernels: conv, dense, depthwise, pointwise (not biases or batch norm). A conv kernel
    (kh, kw, in, out) is the (kh*kw*in, out) matrix; a depthwise kernel (kh, kw, in, mult)
    is one (kh*kw, mult) matrix per input channel, each its own operator with its own
    Gram term. The Gram matrix is taken on the smaller side (Q^T Q when fan-in >=
    fan-out, else Q Q^T), where orthonormality is reachable.
  - Stochastic presets (stq, sbinary) are penalised at their inference weights (the
    deterministic quantization evaluation and deployment use).
  - Batch norm after a conv rescales its output, so there the penalty bounds the
    kernel, not the conv + batch-norm block; the last dense layer has none after it.
  - With a fixed scale of 1, a ternary column of unit norm has exactly one non-zero, so
    the penalty trades accuracy for sparsity; binary(alpha=1) columns have norm
    sqrt(fan-in) whatever the training, so ``dq`` refuses the ``binary`` preset
    (``check_preset``).
  - beta, default 1e-4: the largest power of ten that keeps ternary and int4 within 0.05
    of their undefended twins' clean accuracy on digits (small_cnn, 4 and 30 epochs),
    while lowering the quantized network's penalty 2-2.5x on fp, int4 and int8 and
    16-37x on ternary. At 1e-3 ternary lost 0.3 of its accuracy (4 epochs), at 1e-2
    it fell to 0.21. The penalty's scale differs by orders of magnitude between presets (about
    900 on int4, 220,000 on ternary for the undefended small_cnn), so one beta is not
    comparable across presets; the step reports the penalty (metric ``dq``).
"""

from __future__ import annotations

import abc

from sweeper.defenses.base import Defense
from sweeper.defenses.spec import DefenseSpec, check_preset
from sweeper.models.jacobian import block_model, projection_estimate
from sweeper.plan.limits import positive, whole


class Regularized(Defense, abc.ABC):
    """The step jr, jr_layer and dq share: cross-entropy on the model's logits plus
    ``weight`` times the defense's penalty of the batch (``penalized``), which is also the
    regularizer a row stores (``defense_reg``)."""

    def __init__(self, weight: float):
        super().__init__()
        self.weight = weight
        self.metric_names = (self.name,)
        self.regularizer = self.name

    @abc.abstractmethod
    def penalized(self, model, x, key):
        """(logits in training mode, the penalty) of one batch: what each regularizer defines."""

    def gradients(self, model, loss_fn, x, y, key, step):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits, penalty = self.penalized(model, x, key)
            loss = loss_fn(y, logits) + self.weight * penalty
        return loss, tape.gradient(loss, model.trainable_variables), {self.name: penalty}


class JacobianRegularization(Regularized):
    name = "jr"

    def __init__(self, lam: float, projections: int):
        super().__init__(lam)
        self.projections = projections

    def penalized(self, model, x, key):
        return jacobian_penalty(model, x, key, self.projections, training=True)


def jacobian_penalty(model, x, key, projections: int = 1, training: bool = False):
    """(logits, R): the random-projection estimate of 1/2 ||J||_F^2 (module docstring),
    its projections drawn from the stateless seed ``key``. Differentiable with respect
    to the weights when called under a tape."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape(persistent=projections > 1) as tape:
        tape.watch(x)
        logits = model(x, training=training)
    return logits, projection_estimate(tape, logits, x, key, projections, half=0.5)


class LayerJacobianRegularization(Regularized):
    name = "jr_layer"

    def __init__(self, lam: float, projections: int):
        super().__init__(lam)
        self.projections = projections
        self.blocks = None

    def setup(self, model) -> None:
        self.blocks = block_model(model)  # shares the model's layers and variables

    def penalized(self, model, x, key):
        return layer_jacobian_penalty(self.blocks, x, key, self.projections, training=True)


def layer_jacobian_penalty(blocks, x, key, projections: int = 1, training: bool = False):
    """(logits, R_layer): sum over the blocks of the random-projection estimate of
    1/2 ||J_k||_F^2 (module docstring), ``blocks`` a ``jacobian.block_model``; block k's
    projections are drawn from the k-th stateless split of ``key``."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = blocks(x, training=training)
    keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), len(outputs))
    total = 0.0
    for k, (output, source) in enumerate(zip(outputs, [x, *outputs[:-1]])):
        total += projection_estimate(tape, output, source, keys[k], projections, half=0.5)
    return outputs[-1], total


class LipschitzPenalty(Regularized):
    name = "dq"

    def penalized(self, model, x, key):
        penalty = lipschitz_penalty(model)
        return model(x, training=True), penalty


def lipschitz_penalty(model):
    """sum_l ||Q_l^T Q_l - I||_F^2 over the model's quantized kernels, each operator of a
    stack its own term (module docstring)."""
    import tensorflow as tf

    total = 0.0
    for stack in kernel_matrices(model):
        _, rows, cols = stack.shape
        gram = tf.matmul(stack, stack, transpose_a=rows >= cols, transpose_b=rows < cols)
        total += tf.reduce_sum(tf.square(gram - tf.eye(min(rows, cols))))
    return total


def kernel_matrices(model) -> list:
    """Every kernel of the model as the layer multiplies with it: through the layer's
    QKeras weight quantizer (scale included) at inference, where it has one; else the
    float kernel. Each as a stack of (fan-in, fan-out) operator matrices, shape
    (operators, fan-in, fan-out): one operator for a conv or dense kernel, one per input
    channel for a depthwise kernel. Differentiable with respect to the float kernels
    (QKeras quantizers are straight-through)."""
    import tensorflow as tf
    from tf_keras.src import backend as keras_backend

    from sweeper.deploy.footprint import WEIGHT_QUANTIZER_ATTR

    stacks = []
    # Inference phase: a stochastic quantizer (stq) gives its deterministic weights, the
    # ones the evaluated and deployed network uses (as deploy.plain.quantized_weights).
    with keras_backend.learning_phase_scope(0):
        for layer in model.layers:
            for attribute in ("kernel", "pointwise_kernel", "depthwise_kernel"):
                kernel = getattr(layer, attribute, None)
                if kernel is None:
                    continue
                quantizer = getattr(layer, WEIGHT_QUANTIZER_ATTR[attribute], None)
                used = quantizer(kernel) if quantizer else tf.convert_to_tensor(kernel)
                if attribute == "depthwise_kernel":  # (kh, kw, in, mult): channel c's (kh*kw, mult)
                    kh, kw, channels, mult = used.shape
                    stacks.append(tf.reshape(tf.transpose(used, (2, 0, 1, 3)), (channels, kh * kw, mult)))
                else:  # (..., fan-out): conv (kh, kw, in, out) or dense (in, out)
                    stacks.append(tf.reshape(used, (1, -1, used.shape[-1])))
    return stacks


def _dq_problem(preset) -> str | None:
    if (preset.kernel or "").startswith("binary("):
        # +-alpha weights with a fixed alpha: every column's norm is alpha * sqrt(fan-in)
        return (f"needs kernels whose norms training can change; {preset.name!r} weights are +-1 whatever "
                f"the training, so each column's norm stays sqrt(fan-in)")
    return None


def _build_dq(p, clip, preset):
    if preset is not None:
        check_preset("dq", preset)
    return LipschitzPenalty(p["beta"])


SPECS = (
    DefenseSpec("jr", {"lambda": 0.01, "projections": 1},
                {"lambda": positive(1e6), "projections": whole(1, 64)},
                "Jacobian regularization: CE + lambda * 1/2 ||J||_F^2 (random projections)",
                lambda p, clip, preset: JacobianRegularization(p["lambda"], p["projections"]),
                "Hoffman, Roberts & Yaida 2019"),
    DefenseSpec("jr_layer", {"lambda": 0.001, "projections": 1},
                {"lambda": positive(1e6), "projections": whole(1, 64)},
                "per-block Jacobian regularization: CE + lambda * sum_k 1/2 ||J_k||_F^2 (random projections)",
                lambda p, clip, preset: LayerJacobianRegularization(p["lambda"], p["projections"]),
                "Pau, Ayaz, Zakariyya et al. 2025 (per-layer JR); estimator of Hoffman et al. 2019"),
    DefenseSpec("dq", {"beta": 1e-4}, {"beta": positive(1e6)},
                "Defensive Quantization: CE + beta * sum ||Q^T Q - I||^2 over the quantized kernels",
                _build_dq,
                "Lin, Gan & Han 2019", preset_problem=_dq_problem),
)

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

from sweeper.defenses import DefenseSpec, check_preset
from sweeper.defenses.base import Defense


class JacobianRegularization(Defense):
    name = "jr"
    metric_names = ("jr",)
    regularizer = "jr"

    def __init__(self, lam: float, projections: int):
        super().__init__()
        self.lam, self.projections = lam, projections

    def gradients(self, model, loss_fn, x, y, key, step):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            logits, reg = jacobian_penalty(model, x, key, self.projections, training=True)
            loss = loss_fn(y, logits) + self.lam * reg
        return loss, tape.gradient(loss, model.trainable_variables), {"jr": reg}


def jacobian_penalty(model, x, key, projections: int = 1, training: bool = False):
    """(logits, R): the random-projection estimate of 1/2 ||J||_F^2 (module docstring),
    its projections drawn from the stateless seed ``key``. Differentiable with respect
    to the weights when called under a tape."""
    import tensorflow as tf

    x = tf.convert_to_tensor(x, tf.float32)
    with tf.GradientTape(persistent=projections > 1) as tape:
        tape.watch(x)
        logits = model(x, training=training)
    classes, batch = logits.shape[-1], tf.cast(tf.shape(logits)[0], tf.float32)
    keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), projections)
    total = 0.0
    for i in range(projections):
        v = tf.random.stateless_normal(tf.shape(logits), seed=keys[i])
        v = v / tf.norm(v, axis=-1, keepdims=True)
        # v^T J per sample, as the gradient of <logits, v> with v held fixed
        vjp = tape.gradient(logits, x, output_gradients=v)
        total += tf.reduce_sum(tf.square(vjp))
    return logits, 0.5 * classes * total / (projections * batch)


class LipschitzPenalty(Defense):
    name = "dq"
    metric_names = ("dq",)
    regularizer = "dq"

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def gradients(self, model, loss_fn, x, y, key, step):
        import tensorflow as tf

        with tf.GradientTape() as tape:
            penalty = lipschitz_penalty(model)
            loss = loss_fn(y, model(x, training=True)) + self.beta * penalty
        return loss, tape.gradient(loss, model.trainable_variables), {"dq": penalty}


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

    from sweeper.footprint import WEIGHT_QUANTIZER_ATTR

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


def _build_dq(p, clip, preset):
    if preset is not None:
        check_preset("dq", preset)
    return LipschitzPenalty(p["beta"])


SPECS = (
    DefenseSpec("jr", {"lambda": 0.01, "projections": 1},
                {"lambda": ("float", 0.0, 1e6), "projections": ("int", 1, 64)},
                "Jacobian regularization: CE + lambda * 1/2 ||J||_F^2 (random projections)",
                lambda p, clip, preset: JacobianRegularization(p["lambda"], p["projections"]),
                "Hoffman, Roberts & Yaida 2019"),
    DefenseSpec("dq", {"beta": 1e-4}, {"beta": ("float", 0.0, 1e6)},
                "Defensive Quantization: CE + beta * sum ||Q^T Q - I||^2 over the quantized kernels",
                _build_dq,
                "Lin, Gan & Han 2019"),
)

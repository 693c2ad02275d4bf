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

      loss = CE + beta * sum_l ||W_l^T W_l - I||_F^2

  over every kernel W_l of the model (conv, dense, depthwise, pointwise; not biases or
  batch norm), reshaped to 2-D as (fan-in, fan-out): a conv kernel (kh, kw, in, out) as
  (kh*kw*in, out), a depthwise kernel (kh, kw, in, mult) as (kh*kw, in*mult) (each
  channel's filter is its own operator). The Gram matrix is taken on the smaller side
  (W^T W when fan-in >= fan-out, else W W^T), the side where orthonormality is
  reachable. No public code and no published beta: the default 0.01 is sweeper's
  choice. The penalty acts on the float shadow weights; on ternary and binary presets
  the quantizer maps them to +-1 (or 0) whatever their scale.
"""

from __future__ import annotations

from sweeper.defenses import DefenseSpec
from sweeper.defenses.base import Defense
from sweeper.limits import positive, whole


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
    """sum_l ||W_l^T W_l - I||_F^2 over the model's kernels (module docstring)."""
    import tensorflow as tf

    total = 0.0
    for matrix in kernel_matrices(model):
        rows, cols = matrix.shape
        gram = tf.matmul(matrix, matrix, transpose_a=rows >= cols, transpose_b=rows < cols)
        total += tf.reduce_sum(tf.square(gram - tf.eye(min(rows, cols))))
    return total


def kernel_matrices(model) -> list:
    """Every kernel of the model as a (fan-in, fan-out) matrix."""
    import tensorflow as tf

    matrices = []
    for layer in model.layers:
        for attribute in ("kernel", "pointwise_kernel", "depthwise_kernel"):
            kernel = getattr(layer, attribute, None)
            if kernel is None:
                continue
            shape = kernel.shape
            if attribute == "depthwise_kernel":  # (kh, kw, in, mult): one filter per channel
                matrices.append(tf.reshape(kernel, (shape[0] * shape[1], -1)))
            else:
                matrices.append(tf.reshape(kernel, (-1, shape[-1])))
    return matrices


SPECS = (
    DefenseSpec("jr", {"lambda": 0.01, "projections": 1},
                {"lambda": positive(1e6), "projections": whole(1, 64)},
                "Jacobian regularization: CE + lambda * 1/2 ||J||_F^2 (random projections)",
                lambda p, clip, preset: JacobianRegularization(p["lambda"], p["projections"]),
                "Hoffman, Roberts & Yaida 2019"),
    DefenseSpec("dq", {"beta": 0.01}, {"beta": positive(1e6)},
                "Defensive Quantization: CE + beta * sum ||W^T W - I||^2 over the kernels",
                lambda p, clip, preset: LipschitzPenalty(p["beta"]),
                "Lin, Gan & Han 2019"),
)

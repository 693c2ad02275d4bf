"""AutoAttack's sanity checks of a trained model (fra31/auto-attack ``autoattack/checks.py``),
computed once per trained model on its attacked samples and stored on each of its rows (the
``zero_grad_share``, ``output_is_simplex`` and ``randomized`` columns). Each is a reason a
gradient attack's number may not mean what it says, found without running any attack:

- **zero gradients** (``check_zero_gradients``): a sample whose input gradient of the loss is
  exactly zero in every element gives a gradient attack nothing to follow; it stays
  "robust" however weak the model. The loss is AutoAttack's and sweeper's attacks'
  (``sweeper.attacks.estimator``): softmax cross-entropy of the logits against the true
  label, in evaluation mode, through QKeras's straight-through estimators. A quantized
  network's logits can be so far apart that float32's softmax is exactly one-hot, and the
  gradient exactly zero: masking that needs no black-box run to see. ``zero_grad_share`` is
  the share of the attacked samples (denominator: all of them, ``n_samples``) whose
  gradient is zero in every element.
- **probabilities instead of logits** (``check_range_output``): every output in
  (-alpha, 1 + alpha) and every sample's outputs summing to 1 within alpha, alpha = 1e-5
  (AutoAttack's rule): a softmax output saturates and masks gradients, and ART's APGD
  refuses it. sweeper's models output logits, so this is a guard.
- **a randomized model** (``check_randomized``): ``REPEATS`` = 5 forward passes of the same
  samples disagree, by the number of samples classified correctly or by more than alpha =
  1e-4 in the L2 distance between any two of a sample's L2-normalised logit vectors
  (AutoAttack's rule). Such a model needs Expectation over Transformation (AutoAttack's
  ``rand`` version); sweeper's attacks do not average, so its numbers are flagged.
  Evaluation mode is what every attack queries: sweeper's stochastic presets (stq,
  sbinary) sample only while training and are not flagged.

The fourth of AutoAttack's checks, Square beating the white-box attacks, is the
diagnostics' ``B`` flag (``sweeper.analysis.checks``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

REPEATS = 5  # forward passes compared by the randomness check (AutoAttack's n)
SIMPLEX_TOLERANCE = 1e-5  # AutoAttack's alpha in check_range_output
RANDOM_TOLERANCE = 1e-4  # AutoAttack's alpha in check_randomized
CHUNK = 512  # samples per forward/backward pass

COLUMNS = ("zero_grad_share", "output_is_simplex", "randomized")


def measure(model, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """The three columns of ``model`` on the samples ``x`` with labels ``y`` (module
    docstring); all null when there are no samples."""
    if len(x) == 0:
        return dict.fromkeys(COLUMNS)
    outputs = [_logits(model, x) for _ in range(REPEATS)]
    return {"zero_grad_share": float(np.mean(zero_gradients(model, x, y))),
            "output_is_simplex": is_simplex(outputs[0]),
            "randomized": is_randomized(outputs, y)}


def zero_gradients(model, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: True where the input gradient of the cross-entropy loss is exactly zero
    in every element."""
    import tensorflow as tf

    zero = []
    for start in range(0, len(x), CHUNK):
        batch = tf.convert_to_tensor(x[start:start + CHUNK], tf.float32)
        labels = tf.convert_to_tensor(y[start:start + CHUNK], tf.int32)
        with tf.GradientTape() as tape:
            tape.watch(batch)
            logits = model(batch, training=False)
            # per-sample losses summed: each sample's gradient is its own loss's (inference)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        gradient = tape.gradient(loss, batch)
        if gradient is None:  # the output does not depend on the input at all
            zero.append(np.ones(len(batch), bool))
            continue
        zero.append(np.abs(gradient.numpy().reshape(len(batch), -1)).sum(axis=1) == 0)
    return np.concatenate(zero)


def is_simplex(output: np.ndarray) -> bool:
    """AutoAttack's ``check_range_output``: every output a probability, every row summing to 1."""
    alpha = SIMPLEX_TOLERANCE
    return bool(output.max() < 1 + alpha and output.min() > -alpha
                and np.all(np.abs(output.sum(axis=-1) - 1) < alpha))


def is_randomized(outputs: list[np.ndarray], y: np.ndarray) -> bool:
    """AutoAttack's ``check_randomized`` over repeated outputs of the same samples."""
    correct = {int(np.sum(np.argmax(output, axis=1) == y)) for output in outputs}
    unit = [o / (np.linalg.norm(o, axis=1, keepdims=True) + 1e-10) for o in outputs]
    largest = max((float(np.linalg.norm(a - b, axis=1).max()) for i, a in enumerate(unit) for b in unit[i + 1:]),
                  default=0.0)
    return len(correct) > 1 or largest > RANDOM_TOLERANCE


def _logits(model, x: np.ndarray) -> np.ndarray:
    """One forward pass in evaluation mode, as the attacks query the model."""
    return np.concatenate([np.asarray(model(x[i:i + CHUNK], training=False), np.float64)
                           for i in range(0, len(x), CHUNK)])

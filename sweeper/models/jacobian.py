"""Jacobians of a model: what a block is, the random-projection estimator of a squared
Frobenius norm that ``jr`` and ``jr_layer`` penalise, and the measurement every trained
model's rows carry (the ``jacobian_*`` columns).

**Blocks.** A block is the part of the network between two consecutive *cut
activations*, the activation layers that every path from the input to the logits runs
through; the first block starts at the input, the last ends at the logits. In a plain
chain (``small_cnn``, ``dscnn``) that is one weight layer with its batch norm and
activation: a "layer" in the paper's sense. Where a shortcut or a second branch bypasses
an activation (``resnet8``'s stacks, ``stq_net``'s gated block) that activation is no cut,
and the whole residual or gated unit is one block: the Jacobian of one layer inside it is
not a factor of the model's. Because every block starts at a cut, the input-to-logit
Jacobian is exactly the product of the block Jacobians (chain rule; a test checks it), so
||J||_F <= prod_k ||J_k||_F per sample. Blocks: ``small_cnn`` 3 (conv, conv, dense),
``resnet8`` 5, ``dscnn`` 10, ``stq_net`` 7.

**Which Jacobian.** Everything here differentiates what Keras differentiates: through
QKeras's straight-through estimators (STE) and with the quantized weights the forward
pass computes with. The true derivative of a quantized activation is zero almost
everywhere; the STE's is what a gradient attack follows, and what the paper's claim
(quantization-aware training regularises the Jacobian) can be about. Note that the STE of
``ternary``/``binary`` activations is the identity: their blocks' Jacobians are those of
the linear map (quantized conv and batch norm).

**The estimator** (Hoffman, Roberts & Yaida 2019): for a block output of D values per
sample, ||J_b||_F^2 = D * E_v ||v^T J_b||^2 with v uniform on the unit sphere of R^D, so

    estimate of mean_b ||J_b||_F^2 = D / (n B) * sum_{i<n} sum_b ||v_ib^T J_b||^2

with n projections per sample; each v^T J is one backward pass (a vector-Jacobian
product). ``projection_estimate`` is the one training uses (``jr``, ``jr_layer``).

**The measurement** (``measure``; the ``jacobian_*`` columns), on a job's attacked
samples in evaluation mode (deterministic: batch-norm statistics, stochastic quantizers
not sampling): per block, and for the whole input-to-logit Jacobian, the root mean
square over the B samples, sqrt(mean_b ||J_b||_F^2), from ``PROJECTIONS`` projections
per sample. Where an output has at most ``PROJECTIONS`` values (the logits: 10 classes)
the projections are the standard basis vectors, which give the exact norm (standard
error 0). Otherwise they are random unit vectors, drawn from the job's seed, and the
standard error stated is the projections' alone (the samples are fixed):
se(mean) = sqrt(sum_b s_b^2 / n) / B, s_b^2 the sample variance of sample b's n values
of D ||v^T J_b||^2, carried to the root by the delta method, se / (2 * RMS).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROJECTIONS = 16  # per sample and block, for the jacobian_* columns
CHUNK = 256  # samples per tape (bounds the activations held at once)
TILED_VALUES = 2**20  # input values per tiled forward pass (see _chunk_terms)
_ACTIVATIONS = ("QActivation", "Activation", "ReLU")


def cuts(model) -> list[int]:
    """Positions in ``model.layers`` of the cut activations (module docstring), in order."""
    from sweeper.models import _as_list

    index = {id(layer): i for i, layer in enumerate(model.layers)}
    edges = [(index[id(parent)], i) for i, layer in enumerate(model.layers)
             for node in layer._inbound_nodes for parent in _as_list(node.inbound_layers)]
    # model.layers is in topological order: no edge jumping over position i means every
    # path from the input to the output passes through layer i.
    return [i for i, layer in enumerate(model.layers)
            if type(layer).__name__ in _ACTIVATIONS and not any(u < i < w for u, w in edges)]


def block_names(model) -> list[str]:
    """Each block named by its weight layers, in order ('conv2d', 'conv2d+conv2d+conv2d',
    'dense'...; 'identity' for a block without weights)."""
    bounds = [0, *cuts(model), len(model.layers) - 1]
    names = []
    for start, end in zip(bounds, bounds[1:]):
        kinds = [type(layer).__name__.removeprefix("Q").lower() for layer in model.layers[start + 1:end + 1]
                 if layer.weights and type(layer).__name__.startswith("Q")]
        names.append("+".join(kinds) or "identity")
    return names


def block_model(model):
    """A model sharing ``model``'s layers (and so its variables) whose outputs are every
    block's output, the logits last. A ``QModel``: stochastic quantizers sample only when
    it is called with training=True, as ``model`` itself."""
    from sweeper.models import qmodel_class

    outputs = [model.layers[i].output for i in cuts(model)] + list(model.outputs)
    return qmodel_class()(model.inputs, outputs, name=f"{model.name}_blocks")


def projection_estimate(tape, output, source, key, projections: int, half: float = 1.0):
    """``half`` * the estimate of mean_b ||d output_b / d source_b||_F^2 (module docstring)
    from ``projections`` random unit vectors per sample, drawn from the stateless seed
    ``key``. ``tape`` must have recorded ``output`` from ``source`` (persistent if it is
    asked for more than one gradient). Differentiable with respect to the weights when an
    outer tape watches."""
    import tensorflow as tf

    dims = int(np.prod(output.shape[1:]))
    batch = tf.cast(tf.shape(output)[0], tf.float32)
    keys = tf.random.experimental.stateless_split(tf.cast(key, tf.int64), projections)
    total = 0.0
    for i in range(projections):
        v = tf.random.stateless_normal(tf.shape(output), seed=keys[i])
        flat = tf.reshape(v, [tf.shape(v)[0], -1])  # a no-op for logits: jr's draws are unchanged
        v = tf.reshape(flat / tf.norm(flat, axis=-1, keepdims=True), tf.shape(v))
        # v^T J per sample, as the gradient of <output, v> with v held fixed
        vjp = tape.gradient(output, source, output_gradients=v)
        total += tf.reduce_sum(tf.square(vjp))
    return half * dims * total / (projections * batch)


# ---------------------------------------------------------------- measurement

def measure(model, x: np.ndarray, seed: int = 0, projections: int = PROJECTIONS) -> dict[str, Any]:
    """The ``jacobian_*`` columns of ``model`` on the samples ``x`` (module docstring);
    all null when there are no samples."""
    if len(x) == 0:
        return {"jacobian_fro": None, "jacobian_fro_se": None, "jacobian_blocks": None,
                "jacobian_block_fro": None, "jacobian_block_se": None, "jacobian_projections": None}
    rng = np.random.default_rng(seed)
    blocks = block_model(model)
    names = block_names(model)
    terms: list[list[np.ndarray]] = [[] for _ in range(len(names) + 1)]  # per block, then the whole
    for start in range(0, len(x), CHUNK):
        for k, values in enumerate(_chunk_terms(blocks, x[start:start + CHUNK], rng, projections)):
            terms[k].append(values)
    stats = [_rms_and_se(np.concatenate(t, axis=1)) for t in terms]
    return {"jacobian_fro": stats[-1][0], "jacobian_fro_se": stats[-1][1], "jacobian_blocks": names,
            "jacobian_block_fro": [s[0] for s in stats[:-1]], "jacobian_block_se": [s[1] for s in stats[:-1]],
            "jacobian_projections": projections}


def _chunk_terms(blocks, x: np.ndarray, rng: np.random.Generator, projections: int) -> list[np.ndarray]:
    """Per block (then the whole model): an (n, B) array of D ||v^T J_b||^2, or a (1, B)
    array of the exact ||J_b||_F^2 where the output has at most ``projections`` values.

    Evaluation is deterministic and samples do not interact (batch norm uses its moving
    statistics), so several projections run in one pass: the samples are tiled ``copies``
    times and copy j's gradient is the j-th projection's, one backward pass per block."""
    import tensorflow as tf

    batch, size = len(x), int(np.prod(x.shape[1:]))
    copies = max(1, min(projections, TILED_VALUES // (batch * size)))
    slots: list[list[np.ndarray]] = []  # per group of copies, per block: (copies, B)
    for first in range(0, projections, copies):
        count = min(copies, projections - first)
        tiled = tf.convert_to_tensor(np.concatenate([x] * count), tf.float32)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(tiled)
            outputs = blocks(tiled, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        pairs = [*zip(outputs, [tiled, *outputs[:-1]]), (outputs[-1], tiled)]
        slots.append([_slot_terms(tape, output, source, rng, range(first, first + count), projections)
                      for output, source in pairs])
        del tape
    result = []
    for k, (output, _) in enumerate(pairs):
        values = np.concatenate([group[k] for group in slots])
        exact = int(np.prod(output.shape[1:])) <= projections
        result.append(values.sum(axis=0, keepdims=True) if exact else values)
    return result


def _slot_terms(tape, output, source, rng: np.random.Generator, slots: range, projections: int) -> np.ndarray:
    """(len(slots), B): per projection slot and sample, ||v^T J_b||^2 scaled to estimate
    ||J_b||_F^2 (D ||v^T J_b||^2 for a random unit v), or, where the output has at most
    ``projections`` values, ||e_j^T J_b||^2 for basis vector j = slot (0 past the last)."""
    total, shape = int(output.shape[0]), tuple(output.shape[1:])
    dims, batch = int(np.prod(shape)), total // len(slots)
    vectors = np.zeros((len(slots), batch, dims), np.float32)
    if dims <= projections:
        for row, j in enumerate(slots):
            if j < dims:
                vectors[row, :, j] = 1.0
        scale = 1.0
    else:
        vectors[:] = rng.standard_normal(vectors.shape)
        vectors /= np.linalg.norm(vectors, axis=2, keepdims=True)
        scale = float(dims)
    vjp = tape.gradient(output, source, output_gradients=vectors.reshape(total, *shape))
    return scale * _squared(vjp).reshape(len(slots), batch)


def _squared(vjp) -> np.ndarray:
    flat = vjp.numpy().reshape(vjp.shape[0], -1).astype(np.float64)
    return np.sum(flat * flat, axis=1)


def _rms_and_se(values: np.ndarray) -> tuple[float, float]:
    """(sqrt(mean_b ||J_b||^2), its standard error from the projections) from an (n, B)
    array of per-projection values (n = 1: exact, error 0)."""
    n, batch = values.shape
    mean = float(values.mean())
    rms = float(np.sqrt(mean))
    if n == 1 or mean == 0:
        return rms, 0.0
    se_mean = float(np.sqrt(values.var(axis=0, ddof=1).sum() / n) / batch)
    return rms, se_mean / (2 * rms)

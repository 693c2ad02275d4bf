"""The ART classifiers sweeper attacks through: ART's stock TensorFlowV2Classifier, and
``FastTensorFlowV2Classifier``, the same estimator with its forward and gradients compiled.

The subclass is created on first use (``_fast_classifier_class``) so that importing this
module imports neither TensorFlow nor ART.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any

import numpy as np

# predict() runs at most this many samples per compiled call, to bound memory.
PREDICT_CHUNK = 4096


def make_stock_classifier(model: Any, nb_classes: int, input_shape: tuple,
                          clip_values: tuple[float, float]) -> Any:
    """ART's plain TensorFlowV2Classifier for a logits model (eager gradients: slow)."""
    import tensorflow as tf
    from sweeper.attacks.art_lib import TensorFlowV2Classifier

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


@functools.cache
def _fast_classifier_class() -> type:
    import tensorflow as tf
    from sweeper.attacks.art_lib import TensorFlowV2Classifier, check_and_transform_label_format

    class FastTensorFlowV2Classifier(TensorFlowV2Classifier):
        """TensorFlowV2Classifier with predict / loss_gradient / class_gradient compiled.

        Each compiled function has a None batch dimension in its input signature, so it is
        traced once per classifier, not per batch size. QKeras weights are quantized once,
        at tracing (``_quantized_weights_once``), not on every call. ``predict``, which the
        black-box attacks call thousands of times on small batches, calls the forward's
        concrete function directly (``_forward``). Anything the compiled path does not
        cover (training_mode=True, preprocessing) falls back to ART's eager code; ``fit``
        retraces.
        """

        def __init__(self, model, nb_classes, input_shape, clip_values):
            super().__init__(
                model=model, nb_classes=nb_classes, input_shape=input_shape,
                loss_object=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
                clip_values=clip_values,
                preprocessing=None,  # ART's default is an identity StandardisationMeanStd op
            )
            self._trace_lazily()

        def _trace_lazily(self):
            """(Re)create the compiled functions; each traces on its first call."""
            x_spec = tf.TensorSpec([None, *self.input_shape], tf.float32)
            y_spec = tf.TensorSpec([None, self.nb_classes], tf.float32)
            label_spec = tf.TensorSpec([None], tf.int32)
            self._quantized = {}  # id(weight variable) -> its quantized value, see _logits
            self._logits_fn = tf.function(self._logits, input_signature=[x_spec])
            self._logits_concrete = None  # traced by the first predict (_forward)
            self._executor = "SINGLE_THREADED_EXECUTOR"  # see _forward
            self._loss_grad_fn = tf.function(self._loss_grad, input_signature=[x_spec, y_spec])
            self._label_grad_fn = tf.function(self._label_grad, input_signature=[x_spec, label_spec])
            self._jacobian_fn = tf.function(self._jacobian, input_signature=[x_spec])

        # The plain functions below are what gets compiled.
        def _logits(self, x):
            with _quantized_weights_once(self._model, self._quantized):
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

        def fit(self, *args, **kwargs):
            super().fit(*args, **kwargs)
            self._trace_lazily()  # the traced functions hold the old weights' quantized values

        def _compiled_ok(self, training_mode: bool) -> bool:
            return not training_mode and not self.preprocessing_operations

        def predict(self, x, batch_size: int = 128, training_mode: bool = False, **kwargs):
            if not self._compiled_ok(training_mode):
                return super().predict(x, batch_size=batch_size, training_mode=training_mode, **kwargs)
            # ART's predict would also run a preprocessing pass and batch_size-sized eager
            # calls; outputs do not depend on the batch (inference), so one call per chunk.
            x = np.asarray(x, dtype=np.float32)
            if len(x) <= PREDICT_CHUNK:  # the black-box attacks' thousands of small calls
                logits = self._forward(x)
            else:
                logits = np.concatenate([self._forward(x[i:i + PREDICT_CHUNK])
                                         for i in range(0, len(x), PREDICT_CHUNK)])
            if self.postprocessing_defences:
                return self._apply_postprocessing(preds=logits, fit=False)
            return logits

        def _forward(self, x: np.ndarray) -> np.ndarray:
            """The compiled forward on one chunk, through its concrete function: calling
            the tf.function would re-bind and look up its signature on every call, which
            costs about as much as running a tiny model."""
            if self._logits_concrete is None:
                self._logits_concrete = self._logits_fn.get_concrete_function()
            try:
                # The default executor hands each of the graph's ~200 small ops to the
                # inter-op pool; this one runs them inline, in order: the same kernels, so
                # the same logits, with less scheduling per call.
                with tf.experimental.function_executor_type(self._executor):
                    return self._logits_concrete(tf.constant(x)).numpy()
            except (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError,
                    tf.errors.InvalidArgumentError):
                if not self._executor:
                    raise
                # A graph it cannot run: tf.cond in a model is lowered to Switch/Merge,
                # which it refuses (FailedPrecondition). The default executor runs it.
                self._executor = ""
                return self._forward(x)

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


@contextlib.contextmanager
def _quantized_weights_once(model: Any, memo: dict):
    """While tracing, a QKeras layer's weight quantizers return a constant: the quantized
    weight, computed once (eagerly, as ART's stock estimator computes it on every call).

    A QKeras layer quantizes its weights inside ``call``, so a compiled forward redoes it on
    every call: for stq_net under ``stq`` (930k stochastic-ternary weights with a per-call
    'auto_po2' scale) that is ~100 ms a call, whatever the batch. In inference the result
    depends only on the weights, so it is the same tensor every call. Only the quantizers'
    inputs that are weight variables are replaced; activations are quantized as before, and
    every other op of the traced graph is unchanged, so outputs stay bitwise ART's.
    """
    from tf_keras.src import backend as keras_backend

    import tensorflow as tf

    def once(quantizer):
        def quantize(value, *args, **kwargs):
            if args or kwargs or not isinstance(value, tf.Variable):
                return quantizer(value, *args, **kwargs)
            if id(value) not in memo:
                with tf.init_scope(), keras_backend.learning_phase_scope(0):
                    memo[id(value)] = tf.constant(quantizer(value))
            return memo[id(value)]
        return quantize

    patched = []
    for layer in model.submodules:
        for name, quantizer in list(vars(layer).items()):
            if name.endswith("_quantizer_internal") and callable(quantizer):
                patched.append((layer, name, quantizer))
                object.__setattr__(layer, name, once(quantizer))
    try:
        yield
    finally:
        for layer, name, quantizer in patched:
            object.__setattr__(layer, name, quantizer)

"""The deployed build as an ART classifier: ``make_deployed_classifier(flatbuffer, ...)``
attacks the int8 ``.tflite`` itself, through the TFLite interpreter, instead of the QKeras
model it was converted from (ART has no TFLite estimator: ART issue 1212).

``Int8Logits`` runs the flatbuffer: float inputs are quantized with the input tensor's
scale and zero point (``deploy.quantize_input``, as every deployed prediction in a row),
the interpreter runs TensorFlow's reference kernels (those TFLite Micro's are ported from,
as ``deploy.evaluate``), and the int8 output is dequantized with the output tensor's scale
and zero point: the logits, one ``scale`` apart, whose argmax is the build's prediction.
One interpreter per estimator, reused across calls; batches of up to ``DEPLOYED_CHUNK``
samples run as one invocation (the input tensor resized to the batch). Batching is checked
when the estimator is built: a probe batch must give, bit for bit, the int8 outputs of
running its samples one at a time (as on an MCU); if it does not, or the resize fails,
every call runs one sample at a time (``batched`` False, and a warning says so).

The build has no gradient: ``loss_gradient`` and ``class_gradient`` raise
``NoGradientError``. Only black-box attacks (``AttackSpec.black_box``) may target it;
the grid's attack entries refuse the others (sweeper.plan.entries). How far gradient attacks crafted on the QKeras model carry
over to the build is what every row's ``deployed_adv_acc`` measures (transfer).

TensorFlow and ART are imported on first use (``_deployed_classifier_class``).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np

_LOG = logging.getLogger(__name__)

# Samples per interpreter invocation, to bound the interpreter's tensors. The reference
# kernels' time is linear in the batch (8x8 digits: small_cnn 0.044 ms a sample, stq_net
# about 0.2 ms, for batches of 16 to 256 in chunks of 16 to 256 alike), so the size
# matters little; what batching saves is the per-invocation overhead of Python calls.
DEPLOYED_CHUNK = 64
# Inputs of the batching probe (drawn uniformly in the clip range, seeded).
PROBE_SAMPLES = 5


class NoGradientError(TypeError):
    """A gradient asked of the deployed build, which has none."""


def make_deployed_classifier(flatbuffer: bytes, nb_classes: int, input_shape: tuple,
                             clip_values: tuple[float, float]) -> Any:
    """An ART classifier (``BlackBoxClassifierNeuralNetwork``: Square, Boundary, ZOO and
    HopSkipJump accept it) whose ``predict`` returns the int8 build's dequantized logits."""
    runner = Int8Logits(flatbuffer, tuple(input_shape), tuple(clip_values))
    if runner.nb_classes != nb_classes:
        raise ValueError(f"the .tflite has {runner.nb_classes} outputs, the dataset {nb_classes} classes")
    return _deployed_classifier_class()(runner, nb_classes, tuple(input_shape), tuple(clip_values))


class Int8Logits:
    """The int8 ``.tflite``'s dequantized logits for float inputs, by TensorFlow's TFLite
    interpreter with reference kernels (module doc). ``batched``: whether batches run as
    one invocation (checked bit for bit against one sample at a time when built)."""

    def __init__(self, flatbuffer: bytes, input_shape: tuple, clip_values: tuple[float, float]):
        import tensorflow as tf

        from sweeper.deploy import DeployError, quiet

        with quiet():  # tf.lite.Interpreter's deprecation warning and delegate banner
            self._interpreter = tf.lite.Interpreter(  # reference kernels, as TFLM's, no XNNPACK
                model_content=flatbuffer, num_threads=1,
                experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
            self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        output = self._interpreter.get_output_details()[0]
        self._output_index = output["index"]
        self.output_scale, self.output_zero_point = output["quantization"]
        if output["dtype"] != np.int8 or not self.output_scale:
            raise DeployError(f"the model's output is {output['dtype'].__name__}, not quantized int8")
        self.nb_classes = int(output["shape"][-1])
        self._input_shape = tuple(input_shape)
        self._batch = 1  # the input tensor's batch size now
        self.batched = self._batching_exact(clip_values)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Dequantized logits, float32, one row per sample."""
        return self.dequantize(self.int8(x))

    def int8(self, x: np.ndarray) -> np.ndarray:
        """The int8 output tensor for each sample of x (floats, quantized on the way in)."""
        from sweeper.deploy import quantize_input

        quantized = quantize_input(np.asarray(x, dtype=np.float32), self._input)
        step = DEPLOYED_CHUNK if self.batched else 1
        out = np.empty((len(quantized), self.nb_classes), dtype=np.int8)
        for start in range(0, len(quantized), step):
            out[start:start + step] = self._invoke(quantized[start:start + step])
        return out

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return ((q.astype(np.float32) - np.float32(self.output_zero_point))
                * np.float32(self.output_scale)).astype(np.float32)

    def _invoke(self, quantized: np.ndarray) -> np.ndarray:
        if len(quantized) != self._batch:  # resized only when the batch size changes
            self._interpreter.resize_tensor_input(self._input["index"], [len(quantized), *self._input_shape])
            self._interpreter.allocate_tensors()
            self._batch = len(quantized)
        self._interpreter.set_tensor(self._input["index"], quantized)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output_index)

    def _batching_exact(self, clip_values: tuple[float, float]) -> bool:
        """Whether a batch gives exactly the int8 outputs of its samples run one at a time."""
        from sweeper.deploy import quantize_input

        probe = np.random.default_rng(0).uniform(*clip_values, (PROBE_SAMPLES, *self._input_shape))
        quantized = quantize_input(probe.astype(np.float32), self._input)
        single = np.concatenate([self._invoke(sample[None]) for sample in quantized])
        try:
            together = self._invoke(quantized)
        except (RuntimeError, ValueError) as error:  # an op that cannot take a batch dimension
            _LOG.warning("the .tflite cannot run batches (%s): one sample per call", error)
            together = None
        if together is None or not np.array_equal(together, single):
            if together is not None:
                _LOG.warning("the .tflite's reference kernels give other int8 outputs on a batch "
                             "than one sample at a time: one sample per call")
            self._invoke(quantized[:1])  # back to a batch of one
            return False
        return True


@functools.cache
def _deployed_classifier_class() -> type:
    from art.estimators.classification.blackbox import BlackBoxClassifierNeuralNetwork

    class DeployedClassifier(BlackBoxClassifierNeuralNetwork):
        """ART's black-box neural-network classifier over ``Int8Logits``: channels last,
        no preprocessing, ``predict`` one interpreter call per chunk whatever
        ``batch_size`` (outputs do not depend on it: checked when built)."""

        def __init__(self, runner: Int8Logits, nb_classes: int, input_shape: tuple, clip_values: tuple):
            super().__init__(predict_fn=runner, input_shape=input_shape, nb_classes=nb_classes,
                             channels_first=False, clip_values=clip_values, preprocessing=None)
            self.runner = runner

        def predict(self, x, batch_size: int = 128, **kwargs):
            logits = self.runner(np.asarray(x, dtype=np.float32))
            if self.postprocessing_defences:
                return self._apply_postprocessing(preds=logits, fit=False)
            return logits

        def loss_gradient(self, x, y, **kwargs):
            raise NoGradientError("the deployed int8 build has no gradient: attack it with a black-box "
                                  "attack; a gradient attack's transfer from the QKeras model is deployed_adv_acc")

        def class_gradient(self, x, label=None, **kwargs):
            self.loss_gradient(x, label)

    return DeployedClassifier

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

The forward (``forward``): a vectorised numpy port of the reference int8 kernels
(``sweeper.deploy.int8_numpy``; a Square run took 1.8-3.1x less time than through the
interpreter, bench/attacks.py), used
only once proven on this build: when the estimator is built, the port and the interpreter
run the check inputs (the attacked samples when the caller passes them, 256 uniform int8
tensors over the whole int8 range, the all -128 and all 127 inputs and 32 of -128/127
noise) and every int8 output must agree bit for bit; an op the port does not cover
(none of sweeper's four models has one) or any disagreement leaves the interpreter on every
call, with the reason logged (``port_reason``). A spot check stays on: every
``SPOT_CHECK_EVERY``-th call one of its samples also runs through the interpreter, and a
disagreement switches the estimator to the interpreter for good (warning), that call
included. The port runs OpenBLAS on one thread (threadpoolctl), as a trial holds one CPU.

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
# Random int8 inputs over the whole int8 range, and -128/127 noise, the port is proven on
# (besides the caller's check inputs and the two constant extremes).
PORT_CHECK_UNIFORM, PORT_CHECK_EXTREMES = 256, 32
# One call in this many checks one of its samples through the interpreter too.
SPOT_CHECK_EVERY = 16


class NoGradientError(TypeError):
    """A gradient asked of the deployed build, which has none."""


def make_deployed_classifier(flatbuffer: bytes, nb_classes: int, input_shape: tuple,
                             clip_values: tuple[float, float], check_inputs: np.ndarray | None = None,
                             port: bool = True) -> Any:
    """An ART classifier (``BlackBoxClassifierNeuralNetwork``: Square, Boundary, ZOO and
    HopSkipJump accept it) whose ``predict`` returns the int8 build's dequantized logits.
    check_inputs: float samples the numpy port is also proven on (the attacked ones);
    port False keeps the interpreter on every call."""
    runner = Int8Logits(flatbuffer, tuple(input_shape), tuple(clip_values), check_inputs, port)
    if runner.nb_classes != nb_classes:
        raise ValueError(f"the .tflite has {runner.nb_classes} outputs, the dataset {nb_classes} classes")
    return _deployed_classifier_class()(runner, nb_classes, tuple(input_shape), tuple(clip_values))


class Int8Logits:
    """The int8 ``.tflite``'s dequantized logits for float inputs, by TensorFlow's TFLite
    interpreter with reference kernels or their proven numpy port (module doc). ``batched``:
    whether batches run as one interpreter invocation (checked bit for bit against one
    sample at a time when built); ``forward``: "numpy port" or "interpreter";
    ``port_reason``: why the port is not used (None when it is)."""

    def __init__(self, flatbuffer: bytes, input_shape: tuple, clip_values: tuple[float, float],
                 check_inputs: np.ndarray | None = None, port: bool = True):
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
        self._calls = 0
        self.port, self.port_reason = None, "not asked for"
        if port:
            self.port, self.port_reason = self._proven_port(flatbuffer, check_inputs)
        self.forward = "numpy port" if self.port is not None else "interpreter"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Dequantized logits, float32, one row per sample."""
        return self.dequantize(self.int8(x))

    def int8(self, x: np.ndarray) -> np.ndarray:
        """The int8 output tensor for each sample of x (floats, quantized on the way in)."""
        from sweeper.deploy import quantize_input

        quantized = quantize_input(np.asarray(x, dtype=np.float32), self._input)
        if self.port is None or not len(quantized):
            return self._interpreted(quantized)
        with _one_blas_thread():
            out = self.port(quantized)
        self._calls += 1
        if self._calls % SPOT_CHECK_EVERY == 0:
            row = self._calls // SPOT_CHECK_EVERY % len(quantized)
            if not np.array_equal(out[row:row + 1], self._interpreted(quantized[row:row + 1])):
                _LOG.warning("the numpy port disagreed with the reference kernels on a sample: "
                             "the interpreter runs every call from now on")
                self.port, self.port_reason, self.forward = None, "disagreed on a spot check", "interpreter"
                return self._interpreted(quantized)
        return out

    def _interpreted(self, quantized: np.ndarray) -> np.ndarray:
        step = DEPLOYED_CHUNK if self.batched else 1
        out = np.empty((len(quantized), self.nb_classes), dtype=np.int8)
        for start in range(0, len(quantized), step):
            out[start:start + step] = self._invoke(quantized[start:start + step])
        return out

    def _proven_port(self, flatbuffer: bytes, check_inputs: np.ndarray | None) -> tuple[Any, str | None]:
        """(the numpy port, None) when it gives the interpreter's int8 outputs bit for bit
        on every check input; (None, why) otherwise."""
        from sweeper.deploy import quantize_input
        from sweeper.deploy.int8_numpy import Int8Program, Unsupported

        try:
            port = Int8Program(flatbuffer)
        except Unsupported as error:
            _LOG.info("the numpy port does not cover this build (%s): the interpreter runs every call", error)
            return None, f"unsupported: {error}"
        rng = np.random.default_rng(0)
        shape = self._input_shape
        checks = [rng.integers(-128, 128, (PORT_CHECK_UNIFORM, *shape)), np.full((1, *shape), -128),
                  np.full((1, *shape), 127), rng.choice([-128, 127], (PORT_CHECK_EXTREMES, *shape))]
        if check_inputs is not None and len(check_inputs):
            checks.append(quantize_input(np.asarray(check_inputs, dtype=np.float32), self._input))
        quantized = np.concatenate(checks).astype(np.int8)
        with _one_blas_thread():
            ported = port(quantized)
        differ = int(np.sum(np.any(ported != self._interpreted(quantized), axis=1)))
        if differ:
            _LOG.warning("the numpy port gives other int8 outputs than the reference kernels on %d of %d "
                         "check inputs: the interpreter runs every call", differ, len(quantized))
            return None, f"differs on {differ} of {len(quantized)} check inputs"
        return port, None

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
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """OpenBLAS on one thread for the port's small products: on shared cores its threads
    made them 10-25x slower (measured: a 64x256 by 256x228 product, 0.4 ms on one thread,
    9 ms on two), and a trial holds one CPU."""
    return _blas_controller().limit(limits=1, user_api="blas")


@functools.cache
def _deployed_classifier_class() -> type:
    from sweeper.attacks.art_lib import BlackBoxClassifierNeuralNetwork

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

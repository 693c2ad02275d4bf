"""Running the deployed network: ``evaluate(flatbuffer, x, y)``, the predictions of the
int8 ``.tflite`` (batch of one, as on an MCU) and their accuracy, for the deployed
network on clean and adversarial inputs; ``quantize_input``, float samples as its int8
input tensor expects them.

TensorFlow is imported inside ``evaluate`` only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sweeper.deploy.common import DeployError, quiet


@dataclass(frozen=True)
class Evaluation:
    """Predicted labels of the deployed network, and their accuracy if labels were given."""

    predictions: np.ndarray
    accuracy: float | None = None


def evaluate(flatbuffer: bytes, x: np.ndarray, y: np.ndarray | None = None) -> Evaluation:
    """Run the int8 ``.tflite`` with TensorFlow's TFLite interpreter and its reference
    kernels (those TFLM's are ported from), one sample at a time (as on an MCU): float
    inputs are quantized with the input tensor's scale and zero point, the label is the
    argmax of the int8 logits. ``accuracy`` is set when labels ``y`` are given."""
    import tensorflow as tf

    with quiet():  # tf.lite.Interpreter's deprecation warning and delegate banner
        interpreter = tf.lite.Interpreter(  # reference kernels, as TFLM's, and no XNNPACK
            model_content=flatbuffer, num_threads=1,
            experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
        interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    quantized = quantize_input(np.asarray(x, dtype=np.float32), source)
    predictions = np.empty(len(quantized), dtype=np.int64)
    for i, sample in enumerate(quantized):
        interpreter.set_tensor(source["index"], sample[None])
        interpreter.invoke()
        predictions[i] = int(np.argmax(interpreter.get_tensor(target["index"])[0]))
    accuracy = None if y is None else float(np.mean(predictions == np.asarray(y)))
    return Evaluation(predictions, accuracy)


def quantize_input(x: np.ndarray, details: dict) -> np.ndarray:
    """Float samples as the int8 input tensor expects them."""
    scale, zero_point = details["quantization"]
    if details["dtype"] != np.int8 or not scale:
        raise DeployError(f"the model's input is {details['dtype'].__name__}, not quantized int8")
    return np.clip(np.round(x / scale) + zero_point, -128, 127).astype(np.int8)

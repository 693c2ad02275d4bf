"""Running a build with TFLite Micro's own interpreter (the ``tflite-micro`` wheel: host
build, reference kernels, DECODE and INT4 filters included): ``tflm_outputs(flatbuffer,
x)``, the int8 output tensor for each float sample, one sample at a time as on an MCU.
TensorFlow's TFLite interpreter (``run.py``) runs neither DECODE ops nor INT4 filters,
so the sub-byte builds are checked against the int8 build here, on one interpreter.

The interpreter runs outside this process, in a forked grandchild of this process's TFLM
server (``server.child``, ``server.py``; the ``outputs`` command of ``__main__.py``): a
malformed build may crash it, and a crash must become a refused build, not a crashed
trial. tflite-micro is imported in the server only.
"""

from __future__ import annotations

import io

import numpy as np

from sweeper.deploy.arena import ARENA_SEARCH_MAX
from sweeper.deploy.common import DeployError
from sweeper.deploy.server import child


def tflm_outputs(flatbuffer: bytes, x: np.ndarray, timeout_s: float = 600.0) -> np.ndarray:
    """The int8 outputs [samples, outputs] TFLM computes for float samples ``x`` (each
    quantized with the build's input scale and zero point)."""
    quantized = quantize(flatbuffer, np.asarray(x, dtype=np.float32))
    payload = io.BytesIO()
    np.savez(payload, flatbuffer=np.frombuffer(flatbuffer, dtype=np.uint8), x=quantized)
    answer = child("outputs", payload.getvalue(), timeout_s, "TFLM interpreter")
    return np.load(io.BytesIO(answer))


def quantize(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """Float samples as the build's int8 input tensor expects them (``run.quantize_input``)."""
    from sweeper.deploy.filters import read
    from sweeper.deploy.run import quantize_input

    source = read(flatbuffer).subgraphs[0].inputs[0]
    if source.quantization is None:
        raise DeployError("the build's input is not quantized")
    scale = float(np.atleast_1d(np.asarray(source.quantization.scales))[0])
    zero_point = int(np.atleast_1d(np.asarray(source.quantization.zero_points))[0])
    dtype = np.int8 if source.numpy_dtype == np.dtype("<i1") else source.numpy_dtype
    return quantize_input(x, {"quantization": (scale, zero_point), "dtype": dtype})


def _run_outputs(payload: bytes) -> bytes:
    """The server's (or one-shot child's) side: run every sample, answer the stacked
    outputs as .npy bytes."""
    from tflite_micro.python.tflite_micro import runtime

    arrays = np.load(io.BytesIO(payload))
    interpreter = runtime.Interpreter.from_bytes(arrays["flatbuffer"].tobytes(),
                                                 arena_size=ARENA_SEARCH_MAX)
    outputs = []
    for sample in arrays["x"]:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        outputs.append(np.array(interpreter.get_output(0)).reshape(-1))
    answer = io.BytesIO()
    np.save(answer, np.stack(outputs) if outputs else np.zeros((0, 0), np.int8))
    return answer.getvalue()

"""QKeras, imported without Keras 3: every module of sweeper takes QKeras from here.

QKeras imports tensorflow_model_optimization, whose pruning registry tries
``from keras.src.engine import base_layer``: that imports all of Keras 3 (about 1 s of CPU
in every process, each Ray worker included) only to fail, since Keras 3 has no such module,
and fall back. sweeper runs on tf-keras (``TF_USE_LEGACY_KERAS=1``), so ``keras`` is
blocked for the duration of the import: the same fallback, at once. The block is lifted
afterwards, so that a later ``import keras`` works as usual (tests/test_models.py checks
both).

QKeras's layers run without AutoGraph. Keras converts a subclassed layer's ``call`` with
AutoGraph (Python source rewritten into graph code, once per process and function); for
QKeras's layers and quantizers that took about 2 s of CPU in each new process (a Ray
worker's first model: ``bench/autograph.py``). Their control flow branches on Python
values only (configuration, ``K.learning_phase()`` under ``QModel``), which a graph
traces identically without conversion; a branch on a tensor would fail loudly at tracing,
not change a result. tests/test_models.py checks every preset's outputs and gradients
against the converted layers."""

from __future__ import annotations

import contextlib
import sys


def _import_qkeras() -> None:
    if "qkeras" in sys.modules:
        return
    blocked = "keras" not in sys.modules
    if blocked:
        sys.modules["keras"] = None  # type: ignore[assignment]  # `import keras` raises ImportError
    try:
        import qkeras  # noqa: F401
    finally:
        if blocked and "keras" in sys.modules and sys.modules["keras"] is None:
            del sys.modules["keras"]


_import_qkeras()

from qkeras import QActivation, QConv2D, QDense, QDepthwiseConv2D, QSeparableConv2D, quantizers  # noqa: E402
from qkeras.quantizers import get_quantizer, quantized_bits, quantized_relu  # noqa: E402

UNCONVERTED_LAYERS = (QActivation, QConv2D, QDense, QDepthwiseConv2D, QSeparableConv2D)


def _without_autograph() -> None:
    import tensorflow as tf

    for layer in UNCONVERTED_LAYERS:
        call = vars(layer)["call"]  # each defines its own
        # make_decorator keeps call's signature visible to Keras (which passes
        # `training` only to a call that declares it)
        layer.call = tf.__internal__.decorator.make_decorator(call, tf.autograph.experimental.do_not_convert(call))


@contextlib.contextmanager
def converted_by_autograph():
    """For the duration, QKeras's layers run their own ``call``, which Keras converts with
    AutoGraph (its default): the twin that tests/test_models.py and bench/autograph.py
    compare sweeper's layers with."""
    wrapped = {layer: vars(layer)["call"] for layer in UNCONVERTED_LAYERS}
    try:
        for layer, call in wrapped.items():
            layer.call = call.__wrapped__
        yield
    finally:
        for layer, call in wrapped.items():
            layer.call = call


_without_autograph()

__all__ = ["QActivation", "QConv2D", "QDense", "QDepthwiseConv2D", "QSeparableConv2D", "get_quantizer",
           "quantized_bits", "quantized_relu", "quantizers"]

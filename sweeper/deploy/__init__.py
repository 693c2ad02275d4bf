"""Deployment: a trained QKeras model as a full-int8 TensorFlow Lite Micro build, measured,
its sub-byte builds, and its MACs and latency estimates.

This package owns the path from a QKeras model to figures a microcontroller build
actually needs, and to the predictions the deployed network makes. One file per step:

- ``plain.py``: ``strip(model)``, the QKeras model as plain Keras layers carrying the
  quantized weight values, every activation quantizer replaced by ops the int8 converter
  fuses into the producing layer (``deployable_activation``, ``activation_grid``,
  ``Grid``). Its docstring says how each activation deploys and what the deployed
  network computes differently from the QKeras one.
- ``convert.py``: ``convert_int8(plain, representative)``, the full-int8 ``.tflite``
  flatbuffer (biases rescaled, ``float_ops`` refused); ``constant_bytes`` /
  ``weight_bytes``, its constant tensors by type (what MLPerf Tiny quotes).
- ``arena.py``: ``arena_bytes(flatbuffer)``, the smallest TFLite Micro tensor arena that
  allocates it (bisection with TFLM's Python interpreter in a child process: the
  ``arena`` command of ``__main__.py``); ``estimate_ram_bytes(model)``, a
  fast fused-int8 liveness estimate for when conversion fails.
- ``run.py``: ``evaluate(flatbuffer, x, y)``, the int8 ``.tflite``'s predictions (batch
  of one, as on an MCU) and accuracy; ``quantize_input``.
- ``int8_numpy.py``: ``Int8Program(flatbuffer)``, a vectorised numpy port of TFLite's
  reference int8 kernels for the ops sweeper's builds use (``int8_arith.py``, their
  fixed-point arithmetic; ``int8_pooling.py``, MEAN and AVERAGE_POOL_2D; ``int8_tables.py``,
  LOGISTIC as the reference kernel's own table), the deployed estimator's forward where it
  is proven bit for bit (``sweeper.attacks.deployed``).
- ``builds.py``: ``builds(int8_flatbuffer, x_check) -> [Build]``, the int8 build and its
  sub-byte variants (``FORMATS``): ``lut.py`` (TFLM's LUT compression, DECODE ops) and
  ``int4.py`` (packed INT4 filters), each measured and refused unless TFLM's interpreter
  (``tflm.py``, a child process) predicts exactly as with the int8 build; ``filters.py``,
  the int8 build's filter tensors and the flatbuffer editing both share.
- ``macs.py``: ``macs(flatbuffer)``, multiply-accumulates counted from the graph;
  ``latency.py``: ``latency_ms(macs, mcu, runtime)``, an estimate calibrated on cited
  MLPerf Tiny results per core and runtime.
- ``footprint.py``: the footprint counted from the QKeras model's layers (packed flash and
  RAM at the quantized widths, the int8 estimates when conversion fails, the runtime
  allowance and arena margin); ``mcus.py``: the MCU profiles fit is judged against
  (``mcus.yaml``).
- ``common.py``: ``DeployError``, ``one_line``, ``quiet``; ``server.py``: ``child``, a
  request to this process's TFLM child process, one long-lived ``python -m
  sweeper.deploy serve`` that imports tflite-micro once and runs each request in a
  forked grandchild, so that a TFLM crash refuses a build without crashing the trial.
- here: ``deploy(model, representative) -> Deployment``, all of the above for a trial,
  never raising (a failure is a one-line ``error``), and ``measure(flatbuffer)``, the
  same figures for a flatbuffer already built (a cached one). They live here, not in a
  file of their own, because they reach the steps through this namespace: patching
  ``sweeper.deploy.convert_int8`` (as tests/test_trial.py does) changes what they call.

TensorFlow, QKeras and tflite-micro are imported inside functions only, so ``import
sweeper.deploy`` stays light. This module re-exports the API (and the private helper the
tests may reach).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from sweeper.deploy.arena import ARENA_SEARCH_MAX, arena_bytes, estimate_ram_bytes  # noqa: F401
from sweeper.deploy.builds import FORMATS, Build, builds  # noqa: F401
from sweeper.deploy.common import DeployError, one_line, quiet  # noqa: F401
from sweeper.deploy.convert import (  # noqa: F401
    _rescale_biases,
    constant_bytes,
    convert_int8,
    float_ops,
    weight_bytes,
)
from sweeper.deploy.plain import (  # noqa: F401
    BINARY_DEAD_ZONE,
    PLAIN_LAYERS,
    TERNARY_DEFAULT_THRESHOLD,
    Grid,
    activation_grid,
    deployable_activation,
    quantized_weights,
    strip,
)
from sweeper.deploy.latency import RUNTIMES, estimate, latency_ms  # noqa: F401
from sweeper.deploy.macs import mac_counts, macs  # noqa: F401
from sweeper.deploy.run import Evaluation, evaluate, quantize_input  # noqa: F401

REPRESENTATIVE_SAMPLES = 200  # calibration samples deploy() uses (conversion time grows with them)


@dataclass(frozen=True)
class Deployment:
    """A model converted to full-int8 TFLite and allocated by TFLite Micro, or why not.

    On failure ``error`` is one line and every figure is None."""

    flatbuffer: bytes | None = None  # the .tflite file
    flatbuffer_bytes: int | None = None  # its size: what goes to flash, besides the runtime
    arena_bytes: int | None = None  # the smallest TFLM tensor arena (host build)
    weight_bytes: int | None = None  # int8 constant tensors (weights)
    bias_bytes: int | None = None  # int32 constant tensors (biases, and a few shape vectors)
    convert_s: float = 0.0  # strip + conversion seconds
    arena_s: float = 0.0  # arena search seconds
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def deploy(model, representative: np.ndarray) -> Deployment:
    """Strip, convert to full int8 and measure ``model``, calibrating on the first
    ``REPRESENTATIVE_SAMPLES`` of ``representative`` (training-fold samples). Never
    raises: a model that cannot be deployed gives a one-line ``error`` and no figures."""
    started = time.perf_counter()
    try:
        flatbuffer = convert_int8(strip(model), representative[:REPRESENTATIVE_SAMPLES])
    except Exception as exc:  # the converter raises many types; the trial must go on
        return Deployment(convert_s=time.perf_counter() - started, error=one_line(exc))
    return measure(flatbuffer, convert_s=time.perf_counter() - started)


def measure(flatbuffer: bytes, convert_s: float = 0.0) -> Deployment:
    """The figures of an int8 flatbuffer already built (e.g. one kept in a cache): its
    size, constants and TFLM arena. Never raises (a failed arena search is ``error``)."""
    started = time.perf_counter()
    try:
        arena = arena_bytes(flatbuffer)
        constants = constant_bytes(flatbuffer)
    except Exception as exc:
        return Deployment(convert_s=convert_s, arena_s=time.perf_counter() - started,
                          error=one_line(exc))
    return Deployment(flatbuffer=flatbuffer, flatbuffer_bytes=len(flatbuffer), arena_bytes=arena,
                      weight_bytes=constants.get("INT8", 0), bias_bytes=constants.get("INT32", 0),
                      convert_s=convert_s, arena_s=time.perf_counter() - started)

"""Builds of one network below 8 bits: ``builds(int8_flatbuffer, x_check)``, the int8
build and its sub-byte variants (``FORMATS``: ``lut``, ``int4``), each measured (flash,
TFLM arena) and checked against the int8 build, never raising (``Build``).

The control is exactness. A sub-byte build stores the int8 build's network in fewer
bits, so it counts only if TFLM's interpreter makes exactly the int8 build's predictions
on every check sample (the cell's attacked samples, clean and adversarial, when a trial
calls it). One that does not is refused: ``error`` gives the reason and how many
samples differ, and its figures stay for the record, but its flatbuffer is not kept
and an MCU fit must not use it. ``outputs_identical`` says whether the int8 logits
agreed too (a LUT build must: it decodes the very int8 values).

Why the sub-byte builds need only the int8 flatbuffer: what they store is the int8
build's filters (batch norm folded, requantized per channel), not the QKeras weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from sweeper.deploy.arena import arena_bytes
from sweeper.deploy.common import DeployError, one_line
from sweeper.deploy.int4 import int4_flatbuffer
from sweeper.deploy.lut import lut_flatbuffer
from sweeper.deploy.tflm import tflm_outputs
from sweeper.keys import INT8  # the converter's build, the reference the others are checked against
from sweeper.registry import Registry

# format -> int8 flatbuffer -> (sub-byte flatbuffer, one-line summary); raises DeployError
FORMATS: Registry[Callable[[bytes], tuple[bytes, str]]] = Registry("deploy format")
FORMATS.add("lut", lut_flatbuffer)
FORMATS.add("int4", int4_flatbuffer)


@dataclass(frozen=True)
class Build:
    """One build of a network, measured and checked, or why it was refused.

    ``check_samples`` is the denominator of ``agreement``: the share of the check
    samples on which this build predicts the int8 build's label."""

    format: str  # int8, lut or int4
    flatbuffer: bytes | None = None  # the .tflite, kept only for an accepted build
    flatbuffer_bytes: int | None = None  # its size: what goes to flash, besides the runtime
    arena_bytes: int | None = None  # the smallest TFLM arena (host build, reference kernels)
    identical: bool | None = None  # same predictions as the int8 build on every check sample
    outputs_identical: bool | None = None  # same int8 outputs, too
    agreement: float | None = None  # share of check samples predicted as the int8 build does
    check_samples: int = 0
    summary: str = ""  # what the build stores below 8 bits
    build_s: float = 0.0  # rewrite + check + arena search seconds
    error: str | None = None  # one line: why the tools rejected it or why it was refused

    @property
    def ok(self) -> bool:
        return self.error is None


def builds(int8_flatbuffer: bytes, x_check: np.ndarray, formats=tuple(FORMATS.names()),
           int8_arena: int | None = None) -> list[Build]:
    """The int8 build (``int8_arena`` if already measured) and each sub-byte ``formats``
    build of it, checked on float samples ``x_check`` with TFLM's interpreter. Never
    raises: a build that fails gets a one-line ``error``."""
    x_check = np.asarray(x_check, dtype=np.float32)
    started = time.perf_counter()
    try:
        reference = tflm_outputs(int8_flatbuffer, x_check)
        reason = None if len(x_check) else "no check samples to compare the builds on"
    except Exception as exc:  # the child reports any failure as DeployError; be safe
        reference, reason = None, f"the int8 build does not run on TFLM: {one_line(exc)}"
    try:
        arena = int8_arena if int8_arena is not None else arena_bytes(int8_flatbuffer)
        int8 = Build(INT8, int8_flatbuffer, len(int8_flatbuffer), arena,
                     identical=reference is not None, outputs_identical=reference is not None,
                     agreement=1.0 if reference is not None else None,
                     check_samples=len(x_check), summary="every filter int8",
                     build_s=time.perf_counter() - started)
    except Exception as exc:
        int8 = Build(INT8, flatbuffer_bytes=len(int8_flatbuffer), error=one_line(exc))
    return [int8, *(_sub_byte(name, int8_flatbuffer, x_check, reference, reason)
                    for name in formats)]


def _sub_byte(name: str, int8_flatbuffer: bytes, x_check: np.ndarray,
              reference: np.ndarray | None, reason: str | None) -> Build:
    """One sub-byte build: rewrite, run on the check samples, compare, measure."""
    started = time.perf_counter()
    try:
        flatbuffer, summary = FORMATS.get(name)(int8_flatbuffer)
    except Exception as exc:  # the wheel's compressor raises its own error types
        return Build(name, error=one_line(exc), build_s=time.perf_counter() - started)
    size = len(flatbuffer)
    if reason is not None:
        return Build(name, flatbuffer_bytes=size, summary=summary, error=f"unchecked: {reason}",
                     build_s=time.perf_counter() - started)
    try:
        outputs = tflm_outputs(flatbuffer, x_check)
        if outputs.shape != reference.shape:
            raise DeployError(f"TFLM gives outputs of shape {outputs.shape}, the int8 build "
                              f"{reference.shape}")
        arena = arena_bytes(flatbuffer)
    except Exception as exc:
        return Build(name, flatbuffer_bytes=size, summary=summary, error=one_line(exc),
                     build_s=time.perf_counter() - started)
    same = np.argmax(outputs, axis=1) == np.argmax(reference, axis=1)
    build = Build(name, flatbuffer, size, arena, identical=bool(same.all()),
                  outputs_identical=bool(np.array_equal(outputs, reference)),
                  agreement=float(same.mean()), check_samples=len(same), summary=summary,
                  build_s=time.perf_counter() - started)
    if build.identical:
        return build
    return replace(build, flatbuffer=None, error=(
        f"refused: predicts differently from the int8 build on {int((~same).sum())} of "
        f"{len(same)} check samples ({summary})"))

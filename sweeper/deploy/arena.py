"""The TFLite Micro tensor arena: ``arena_bytes(flatbuffer)``, the smallest arena that
allocates a flatbuffer (bisection with TFLM's own Python interpreter, in this process's
TFLM server, ``server.py``, whose entry point is ``sweeper/deploy/__main__.py``: a host
build, reference kernels), and
``estimate_ram_bytes(model)``, a fast fused-int8 liveness estimate for when conversion
fails.

tflite-micro is imported in the server (``python -m sweeper.deploy serve``) only.
"""

from __future__ import annotations

import os
import sys

from sweeper.deploy.common import DeployError, one_line
from sweeper.deploy.server import child

ARENA_SEARCH_MAX = 64 * 1024 * 1024  # bytes; a model needing more is reported as failing


def arena_bytes(flatbuffer: bytes, timeout_s: float = 300.0) -> int:
    """The smallest TFLite Micro tensor arena (bytes) that allocates ``flatbuffer``, by
    bisection: the figure ``print_allocations`` reports as "Arena allocation total".
    Host build: 64-bit structs and reference kernels (no CMSIS-NN scratch buffers).

    TFLM's Python interpreter crashes the process (segmentation fault) on some arena
    sizes that are too small, so the search runs as a request to this process's TFLM
    server (``server.child``: a forked grandchild of a long-lived ``python -m
    sweeper.deploy serve``, with this process's sweeper checkout first on its
    PYTHONPATH) and tries each size in a further fork (POSIX only)."""
    answer = child("arena", flatbuffer, timeout_s, "TFLM arena search").decode().strip()
    if not answer.isdigit():
        raise DeployError(f"TFLM arena search failed: {answer or 'no answer'}")
    return int(answer)


def _search_arena(flatbuffer: bytes) -> int:
    """Bisection over arena sizes (runs in the server's grandchild, or in ``python -m
    sweeper.deploy arena``)."""
    high = 4096
    while not _allocates(flatbuffer, high):
        if high >= ARENA_SEARCH_MAX:
            raise DeployError(f"TFLM cannot allocate the model in {ARENA_SEARCH_MAX} bytes: "
                              f"{_allocation_failure(flatbuffer)}")
        high *= 2
    low = 0  # the largest size known to fail (0 always does)
    while high - low > 1:
        middle = (low + high) // 2
        if _allocates(flatbuffer, middle):
            high = middle
        else:
            low = middle
    return high


def _allocates(flatbuffer: bytes, size: int, log: int | None = None) -> bool:
    """Whether TFLM allocates the model in ``size`` bytes, tried in a forked process (a
    crash counts as no) with its output (e.g. "Failed to resize buffer") sent to the
    file descriptor ``log``, or silenced."""
    pid = os.fork()
    if pid == 0:  # the child: try, and report through the exit status only
        status = 1
        try:
            target = os.open(os.devnull, os.O_WRONLY) if log is None else log
            os.dup2(target, 1)
            os.dup2(target, 2)
            from tflite_micro.python.tflite_micro import runtime

            runtime.Interpreter.from_bytes(flatbuffer, arena_size=size)
            status = 0
        except BaseException as exc:
            print(one_line(exc), file=sys.stderr, flush=True)
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _allocation_failure(flatbuffer: bytes) -> str:
    """What TFLM says when even the largest arena fails (typically an op it lacks)."""
    import tempfile

    with tempfile.TemporaryFile() as log:
        _allocates(flatbuffer, ARENA_SEARCH_MAX, log.fileno())
        log.seek(0)
        lines = [line.strip() for line in log.read().decode(errors="replace").splitlines()]
    found = [line for line in lines if "find op" in line or "not supported" in line.lower()]
    return (found or [line for line in lines if line] or ["TFLM gave no reason (it crashed)"])[0]


def estimate_ram_bytes(model) -> int:
    """Peak bytes of live int8 activation tensors for one batch-1 inference, with batch
    norm, activations and dropout fused into the op that produced their input (as the
    converter does) and 1 byte per element: an estimate of the arena's activation part,
    for when conversion fails. It leaves out the arena's persistent part (tensor and op
    structs, quantization parameters: a few KB) and any unfused op a deployment adds."""
    from sweeper.deploy.footprint import peak_activation_bits

    return peak_activation_bits(model, fused=True, bits=8) // 8

"""Worker-side placement: make TensorFlow in a trial use what Ray assigned it, and no more.

This module owns the setup a trial does before TensorFlow runs anything:

- **GPUs.** TensorFlow sees exactly the GPU(s) Ray assigned the trial, with memory growth
  on, so that several fractional trials (``resources.gpus: 0.25``) can share one GPU
  instead of the first one allocating all of its memory. A trial with no GPU assigned
  sees no GPU at all: Ray leaves ``CUDA_VISIBLE_DEVICES`` untouched for a worker without
  GPUs, so a CPU trial on a GPU node would otherwise claim every GPU's memory.
- **Threads.** One intra-op thread per CPU the trial holds, one inter-op thread: trials
  share a node's cores.

``configure(assignment, tf)`` is a pure function of the assignment and of the ``tf``
namespace it is given (the real TensorFlow by default), so tests/test_placement.py can
check the GPU path on a machine without a GPU with a recording ``tf.config`` of its own. ``current()`` reads
the assignment of the running Ray worker.

Reused actors. Tune reuses a trial actor only for a trial with the same resource
request, and an actor keeps the GPU ids Ray gave it, so a reused actor (TensorFlow
already initialised) normally asks for the settings it already has, which TensorFlow
accepts as a no-op. If the GPU settings differ, TensorFlow refuses to change them once
initialised; ``configure`` then raises ``PlacementError`` rather than let a trial run
on a GPU it was not given. Thread counts that cannot change are left as they are: that
costs speed, not correctness.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


class PlacementError(RuntimeError):
    """TensorFlow cannot be made to use exactly what Ray assigned."""


@dataclass(frozen=True)
class Assignment:
    """What Ray gave one trial's worker."""

    cpus: float
    gpu_ids: tuple[str, ...] = ()  # Ray's GPU ids for this worker (CUDA ids)
    # CUDA_VISIBLE_DEVICES as the worker process sees it; None when unset. TensorFlow
    # numbers the GPUs it lists in this order.
    cuda_visible: str | None = None


@dataclass(frozen=True)
class Placement:
    """What ``configure`` set up: the GPUs TensorFlow may use, and its thread count."""

    gpus: tuple[str, ...]  # TensorFlow's names of the visible physical GPUs
    intra_op_threads: int


def current() -> Assignment:
    """The running Ray worker's assignment (call it inside a trial)."""
    import ray

    context = ray.get_runtime_context()
    return Assignment(
        cpus=context.get_assigned_resources().get("CPU", 1),
        gpu_ids=tuple(str(i) for i in context.get_accelerator_ids().get("GPU", ())),
        cuda_visible=os.environ.get("CUDA_VISIBLE_DEVICES"))


def configure(assignment: Assignment, tf: Any = None) -> Placement:
    """Make TensorFlow (``tf``, default the real module) see exactly the assigned GPUs
    with memory growth on, and use one intra-op thread per assigned CPU."""
    if tf is None:
        import tensorflow as tf
    gpus = _assigned_gpus(assignment, tf.config.list_physical_devices("GPU"))
    _apply(lambda: tf.config.set_visible_devices(gpus, "GPU"),
           lambda: list(tf.config.get_visible_devices("GPU")) == gpus, "visible GPUs", gpus)
    for gpu in gpus:
        _apply(lambda: tf.config.experimental.set_memory_growth(gpu, True),
               lambda: tf.config.experimental.get_memory_growth(gpu), "memory growth", gpu)
    threads = int(max(1, assignment.cpus))
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # initialised already with other counts: only speed suffers, unlike a wrong GPU
    return Placement(tuple(gpu.name for gpu in gpus), threads)


def _assigned_gpus(assignment: Assignment, physical: list) -> list:
    """TensorFlow's physical GPUs that are the assigned ones. TensorFlow numbers the GPUs
    of CUDA_VISIBLE_DEVICES from 0 (Ray sets it to the assigned ids for a GPU worker);
    with it unset, TensorFlow's index is the CUDA id."""
    if not assignment.gpu_ids:
        return []
    order = (assignment.cuda_visible.split(",") if assignment.cuda_visible is not None
             else [str(i) for i in range(len(physical))])
    chosen = [gpu for index, gpu in enumerate(physical)
              if index < len(order) and order[index].strip() in assignment.gpu_ids]
    if len(chosen) != len(assignment.gpu_ids):
        raise PlacementError(
            f"Ray assigned GPU(s) {', '.join(assignment.gpu_ids)} but TensorFlow finds "
            f"{len(chosen)} of them (physical GPUs: {len(physical)}, CUDA_VISIBLE_DEVICES="
            f"{assignment.cuda_visible!r}); is TensorFlow built with CUDA on this node?")
    return chosen


def _apply(change, holds, what: str, value: Any) -> None:
    # TensorFlow accepts a setting it already has even once initialised (a reused actor);
    # it refuses a different one then.
    try:
        change()
    except RuntimeError as error:
        if not holds():
            raise PlacementError(f"TensorFlow is already initialised in this worker and "
                                 f"cannot switch {what} to {value!r}: {error}") from error

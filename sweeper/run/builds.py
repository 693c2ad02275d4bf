"""A job's builds in a trial: the int8 build and its sub-byte variants (``deploy.builds``:
lut, int4), each checked against the int8 build on the inputs the job's cells evaluated
(``CheckInputs``), measured, and recorded, once per trained model (``record_builds``).

- **What a build is checked on.** The job's attacked samples, clean, and every distinct
  example its own attacks produced as the rows count them (within the budget; on the
  model and on the build), so an accepted build predicts exactly what the int8 build
  predicted on every input behind the job's robust accuracies: those accuracies are its
  own too. At most ``MAX_CHECK_INPUTS`` (the clean samples, then a seeded draw of the
  examples): the TFLM interpreter runs one input at a time.
- **One record per format, always** (``store.builds``): a build the tools reject, or one
  refused because it predicts otherwise, gets its reason in ``error``; a model whose int8
  conversion failed gets records saying so. Nothing here fails the trial but a store that
  refuses the write.
- **Kept.** Each accepted sub-byte build's .tflite goes to the model cache beside the int8
  one (``cache.tflite_name``).
- **Once.** A job whose records are in the store (an earlier launch, or the first wave of
  this one) is not built again: a relaunch's new cells reuse them. Their check covered the
  examples of the cells computed when they were built.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from sweeper import store
from sweeper.deploy.common import one_line
from sweeper.plan.expand import TrainingJob
from sweeper.keys import INT8
from sweeper.run.cache import ModelCache, tflite_name

MAX_CHECK_INPUTS = 1024  # TFLM runs one input at a time: stq_net's reference kernels take ~20 ms each
# The configuration columns a build record repeats from its job's rows (store.BUILD_COLUMNS).
_FROM_ROWS = ("config_id", "dataset", "dataset_options", "model", "quantizer", "train", "k", "seed",
              "defense", "defense_label", "defense_params", "fold", "launch_id")


class CheckInputs:
    """The inputs a job's builds are checked on (module docstring): the attacked samples,
    and the examples ``collect`` sees."""

    def __init__(self, x: np.ndarray):
        self.clean = x
        self.examples: list[np.ndarray] = []

    def wrap(self, keep: Callable | None) -> Callable:
        """An ``evaluate`` keeper that collects every cell's examples, then hands them to
        ``keep`` (transfer's keeper, which stores source cells'), if any."""

        def collect(cell, x_used: np.ndarray, pred: np.ndarray, clean_ok: np.ndarray) -> None:
            moved = np.any((x_used != self.clean).reshape(len(x_used), -1), axis=1)
            if moved.any():
                self.examples.append(x_used[moved])
            if keep is not None:
                keep(cell, x_used, pred, clean_ok)

        return collect

    def inputs(self, seed: int) -> np.ndarray:
        """The clean samples, then the distinct examples (a seeded draw beyond the cap)."""
        if not self.examples:
            return self.clean
        examples = np.unique(np.concatenate(self.examples), axis=0)
        room = max(0, MAX_CHECK_INPUTS - len(self.clean))
        if len(examples) > room:
            examples = examples[np.sort(np.random.default_rng(seed).permutation(len(examples))[:room])]
        return np.concatenate([self.clean, examples])


def record_builds(job: TrainingJob, row: dict[str, Any], deployed, check: CheckInputs, cache: ModelCache,
                  results: str, built: frozenset[str] = frozenset()) -> list[dict] | None:
    """Build, check, keep and record the job's builds in the store at ``results``
    (``row``: any of the job's rows, for the configuration columns); None when the store
    already holds them (``built``: the jobs with records when the launch began)."""
    location = store.locate(results)
    if job.job_id in built or store.get_bytes(location, store.job_file(job.job_id)) is not None:
        return None
    records = [{**{name: row.get(name) for name in _FROM_ROWS}, "job_id": job.job_id, "eval_bits": None, **fields}
               for fields in _built(job, deployed, check, cache)]
    store.write_builds(location, job.job_id, records)
    return records


def _built(job: TrainingJob, deployed, check: CheckInputs, cache: ModelCache) -> list[dict]:
    """Each format's record fields (never raises but for the model cache's writes)."""
    from sweeper import deploy
    from sweeper.deploy.builds import Build

    if deployed is None or deployed.flatbuffer is None:
        reason = (deployed.error if deployed is not None else None) or "no int8 build"
        return [_failed(INT8, reason), *(_failed(name, f"no int8 build to rewrite: {reason}")
                                         for name in deploy.FORMATS.names())]
    started = time.perf_counter()
    try:
        found = deploy.builds(deployed.flatbuffer, check.inputs(job.draw_seed), int8_arena=deployed.arena_bytes)
    except Exception as exc:  # builds() never raises; if it ever does, the trial still must not fail
        reason, seconds = f"builds failed: {one_line(exc)}", time.perf_counter() - started
        found = [Build(INT8, deployed.flatbuffer, deployed.flatbuffer_bytes, deployed.arena_bytes),
                 *(Build(name, error=reason, build_s=seconds) for name in deploy.FORMATS.names())]
    try:
        macs = deploy.macs(deployed.flatbuffer)
    except Exception:  # an op the counter cannot read: no count rather than a wrong one
        macs = None
    return [_fields(build, macs, _kept(job, build, cache)) for build in found]


def _kept(job: TrainingJob, build, cache: ModelCache) -> str | None:
    """The accepted build's file in the model cache (the int8 one is there already)."""
    if not build.ok or build.flatbuffer is None or cache.location is None:
        return None
    return tflite_name(job.job_id) if build.format == INT8 else cache.save_tflite(job.job_id, build.flatbuffer,
                                                                                  build.format)


def _fields(build, macs: int | None, tflite_file: str | None) -> dict[str, Any]:
    from sweeper.deploy.footprint import deployed_kb

    measured = build.flatbuffer_bytes is not None and build.arena_bytes is not None
    flash, ram = deployed_kb(build.flatbuffer_bytes, build.arena_bytes) if measured else (None, None)
    return {"deploy_format": build.format, "accepted": build.ok,
            "flatbuffer_kb": None if build.flatbuffer_bytes is None else build.flatbuffer_bytes / 1024,
            "arena_kb": None if build.arena_bytes is None else build.arena_bytes / 1024,
            "flash_kb": flash, "ram_kb": ram, "identical": build.identical,
            "outputs_identical": build.outputs_identical, "agreement": build.agreement,
            "check_samples": build.check_samples, "macs": macs, "summary": build.summary or None,
            "error": build.error, "build_s": build.build_s, "tflite_file": tflite_file}


def _failed(name: str, reason: str, seconds: float = 0.0) -> dict[str, Any]:
    """The record of a build that never was (no int8 build, or the builder failed)."""
    from sweeper.deploy.builds import Build

    return _fields(Build(name, error=reason, build_s=seconds), None, None)

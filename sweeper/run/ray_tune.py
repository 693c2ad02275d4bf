"""The Ray Tune runner's Tune side (``runners.RayTuneRunner`` imports it in the background
while ``ray_cluster.py`` starts Ray): run a wave of jobs as Tune trials, one trial per
training job, with actor reuse (a reused actor keeps TensorFlow imported),
up to two retries per trial, training checkpoints through Tune, and each trial's rows
reported to the driver's ``RowSink`` (``_TuneRows``) as it computes them.
"""

from __future__ import annotations

import importlib
import json
import os
import tempfile
import time
from typing import Any

from ray import tune

from sweeper.errors import storage_error
from sweeper.run import imports, placement, profile
from sweeper.run.checkpoints import CHECKPOINT_FILE
from sweeper.run.rows import RowSink, failure_line
from sweeper.run.trial import run_job

# A trial's report that the store refused a write: [errno, file]
STORAGE_FAULT = "storage_fault"
# A trial's last report: its spans (``sweeper.run.profile.trial_payload``)
PROFILE = "profile"


def run_wave(plan, work, data, context, rows: RowSink, verbose: bool, wave: int) -> list[str]:
    """Run ``work`` as Tune trials (``data``: ``put_each``'s references); one line per job
    that failed every try."""
    # Tune reads both when it runs (not when imported), in this process.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rows go to Parquet only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    results = _tuner(plan, work, data, context, rows, verbose, wave).fit()
    return [failure_line(work[result.config["job_index"]][0], result.error) for result in results if result.error]


# What Tuner.fit imports before its first trial starts: Tune's usage tagging
# (ray.air._internal.usage.tag_callbacks) imports these integrations, and through them
# MLflow and W&B where installed: about 1.5 s of the driver's CPU on the critical path.
_TAGGED_INTEGRATIONS = ("ray.air.integrations.comet", "ray.air.integrations.mlflow",
                        "ray.air.integrations.wandb", "ray.tune.logger.aim")


def warm_imports() -> None:
    """Import now what ``run_wave`` would import before its first trial (the runner calls
    this in the background while Ray starts, when the driver's core is mostly idle)."""
    for name in _TAGGED_INTEGRATIONS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (one that fails here fails, unseen, in Tune's tagging too)
            pass


def _tuner(plan, work, data, context, rows: RowSink, verbose: bool, wave: int = 1):
    # Training checkpoints go through Tune too (a retried trial resumes from them), Tune
    # keeping the last; the store's copy (context.checkpoints) serves a new launch.
    location = rows.location
    trainable = tune.with_parameters(_trainable, work=work, data=data, context=context)
    resources = plan.grid.resources
    trainable = tune.with_resources(trainable, {"cpu": resources.cpus, "gpu": resources.gpus})
    return tune.Tuner(
        trainable,
        param_space={"job_index": tune.grid_search(list(range(len(work))))},
        tune_config=tune.TuneConfig(reuse_actors=True,
                                    trial_dirname_creator=lambda trial: trial.trial_id),
        run_config=tune.RunConfig(
            name=f"{plan.grid.name}-{time.strftime('%Y%m%d-%H%M%S')}" + (f"-wave{wave}" if wave > 1 else ""),
            storage_path=f"{location.path}/_tune", storage_filesystem=location.fs,
            failure_config=tune.FailureConfig(max_failures=2),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[_TuneRows(rows)], stop=_StopOnFault(rows), verbose=2 if verbose else 0),
    )


def _trainable(config: dict[str, Any], work, data, context) -> None:
    """One Tune trial: a training job. Runs on a Ray worker."""
    import ray

    entered = time.time()
    with profile.span("imports"):  # a new worker's first trial pays them (run_job: the rest)
        imports.load(("tensorflow",))  # placement configures it before anything runs
    with profile.span("placement"):
        placement.configure(placement.current())
    job, cells = work[config["job_index"]]
    node = ray.get_runtime_context().get_node_id()
    try:
        with profile.span("data"):
            dataset = ray.get(data[job.dataset_key])
        run_job(job, cells, dataset, context, report=lambda row: _report_row(row, node), hooks=_TuneCheckpoints())
    except OSError as error:
        fault = storage_error(error)
        if fault is None:
            raise
        # A full or read-only store fails every retry the same way: instead of failing the
        # trial (Tune would train it again), tell the driver, which stops the sweep.
        tune.report({STORAGE_FAULT: json.dumps([fault.errno, fault.filename])})
        return
    tune.report({PROFILE: json.dumps(profile.trial_payload(f"{node[:8]}:{os.getpid()}", entered, profile.take(),
                                                           _first_trial_of_this_worker()))})


def _report_row(row: dict, node: str) -> None:
    with profile.span("reporting rows to the driver"):  # a round trip through Tune's driver loop
        tune.report({"row": json.dumps({**row, "node": node})})


_STARTED: list[float | None] = []  # this worker process's start, once its first trial took it


def _first_trial_of_this_worker() -> float | None:
    """The worker process's start time for its first trial (its start-up), None after."""
    if _STARTED:
        return None
    _STARTED.append(profile.process_started())
    return _STARTED[0]


class _TuneCheckpoints:
    """A trial's training checkpoints through Tune's API: each is reported as a directory
    holding the state file, and a retried trial gets the last one back."""

    def __init__(self):
        self.saved = False

    def latest(self) -> bytes | None:
        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            path = os.path.join(folder, CHECKPOINT_FILE)
            if not os.path.exists(path):
                return None  # the "finished" marker below
            with open(path, "rb") as file:
                return file.read()

    def save(self, data: bytes, epoch: int) -> None:
        with profile.span("checkpoints through Tune"), tempfile.TemporaryDirectory() as folder:
            with open(os.path.join(folder, CHECKPOINT_FILE), "wb") as file:
                file.write(data)
            # Tune copies the directory to its storage before report returns.
            tune.report({"checkpoint_epoch": epoch}, checkpoint=tune.Checkpoint.from_directory(folder))
        self.saved = True

    def finished(self) -> None:
        # An empty checkpoint replaces the last state in Tune's storage (num_to_keep=1),
        # so a finished job leaves no weights-sized file under _tune/.
        if not self.saved and tune.get_checkpoint() is None:
            return
        with tempfile.TemporaryDirectory() as folder:
            tune.report({"checkpoint_epoch": -1}, checkpoint=tune.Checkpoint.from_directory(folder))


class _StopOnFault(tune.Stopper):
    """Ends the sweep once the store refused a write (``RowSink.fault``)."""

    def __init__(self, rows: RowSink):
        self.rows = rows

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.rows.fault is not None

    def stop_all(self) -> bool:
        return self.rows.fault is not None


class _TuneRows(tune.Callback):
    """Driver side: each trial's rows into the ``RowSink`` as they come, written when the
    trial ends, fails or is about to be retried (its worker died: what it reported is real
    and stored now, so a driver crash before the retry ends loses none of it)."""

    def __init__(self, rows: RowSink):
        self.rows = rows

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if STORAGE_FAULT in result:  # a worker's write to the store failed (_trainable)
            self.rows.refused(*json.loads(result[STORAGE_FAULT]))
        elif PROFILE in result:
            self.rows.timeline.trial(json.loads(result[PROFILE]))
        elif "row" in result:  # else a training checkpoint, not a result row
            self.rows.add(trial.trial_id, json.loads(result["row"]))

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.rows.flush(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.rows.flush(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info):
        self.rows.flush(trial.trial_id)

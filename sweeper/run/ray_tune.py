"""The Ray Tune runner's Ray side (``runners.RayTuneRunner`` imports it when a launch
starts): connect to Ray or start a local instance, check that some node can hold one
trial, put each dataset once in the object store, and run a wave of jobs as Tune trials,
one trial per training job, with actor reuse (a reused actor keeps TensorFlow imported),
up to two retries per trial, training checkpoints through Tune, and each trial's rows
reported to the driver's ``RowSink`` (``_TuneRows``) as it computes them.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Any

from ray import tune
from rich.console import Console

from sweeper import WORKER_ENV
from sweeper.console import styled
from sweeper.errors import UserError, storage_error
from sweeper.run import placement, profile
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
    results = _tuner(plan, work, data, context, rows, verbose, wave).fit()
    return [failure_line(work[result.config["job_index"]][0], result.error) for result in results if result.error]


def init_ray(address: str | None, verbose: bool) -> bool:
    """Connect to Ray, or start a local instance; True when that local instance is
    sweeper's own (a cluster of this machine alone, which never grows)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # rows go to Parquet only
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(address=address, runtime_env={"env_vars": dict(WORKER_ENV)},
             log_to_driver=verbose, include_dashboard=False,
             logging_level=logging.INFO if verbose else logging.ERROR)
    if not verbose:  # failed trials are summarised in one line each by the CLI
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    return address is None and not os.environ.get("RAY_ADDRESS")


def check_resources(resources, *, local: bool, console: Console | None = None) -> None:
    """Fail fast, in one line, when no node of the Ray cluster can hold one trial
    (``resources.cpus`` CPUs and ``resources.gpus`` GPUs on one node): Tune would wait for
    it forever at "cells 0/N (starting)". A cluster that may add nodes is given the
    benefit of the doubt: one whose autoscaler published its node types is checked against
    them; on another cluster (``--address``) that may autoscale unseen, a warning says
    what is missing and the sweep waits. Sweeper's own local cluster never grows."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    missing = missing_resource(nodes, resources.cpus, resources.gpus)
    if missing is None:
        return
    node_types = _autoscaler_node_types()
    if node_types is not None and not local:
        if missing_resource(node_types, resources.cpus, resources.gpus) is None:
            return  # the autoscaler can add a node that fits
        raise UserError(f"{missing}, nor can the cluster's autoscaler add one "
                        f"({_most(node_types)} on its largest node type)")
    if local:
        raise UserError(missing + " (sweeper's local Ray cluster; use --address for a cluster that has them)")
    if console is not None:
        console.print(styled("warning:", "yellow", f"{missing}; the sweep waits for one to join (Ctrl-C to stop)"))


def slots(resources) -> int:
    """How many trials of ``resources`` the cluster's live nodes hold at once (at least 1:
    a cluster that may grow holds one once it has)."""
    import ray

    held = 0
    for node in (node["Resources"] for node in ray.nodes() if node.get("Alive")):
        fits = node.get("CPU", 0) // resources.cpus  # cpus > 0 (grid.py)
        if resources.gpus:
            fits = min(fits, node.get("GPU", 0) // resources.gpus)
        held += int(fits)
    return max(1, held)


def missing_resource(nodes: list[dict], cpus: float, gpus: float) -> str | None:
    """None if some node (Ray's resource mapping) holds ``cpus`` CPUs and ``gpus`` GPUs;
    else one line naming the missing resource and what the nodes have."""
    if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
        return None
    if gpus > 0 and not any(node.get("GPU", 0) >= gpus for node in nodes):
        field, asked = "resources.gpus", f"{gpus:g} GPUs"
    elif not any(node.get("CPU", 0) >= cpus for node in nodes):
        field, asked = "resources.cpus", f"{cpus:g} CPUs"
    else:  # enough of each, never on one node
        field, asked = "resources", f"{cpus:g} CPUs and {gpus:g} GPUs on one node"
    return f"{field}: each trial asks for {asked}, but no node of the Ray cluster has them ({_most(nodes)})"


def _most(nodes: list[dict]) -> str:
    if not nodes:
        return "it has no node"
    cpus = max(node.get("CPU", 0) for node in nodes)
    gpus = max(node.get("GPU", 0) for node in nodes)
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}, at most {cpus:g} CPUs and {gpus:g} GPUs each"


def _autoscaler_node_types() -> list[dict] | None:
    """The resources of each node type an autoscaler may launch, when it published them
    (Ray's autoscaler v2 and KubeRay do, in the GCS); None when unknown."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: unknown, never an error
        return None
    if config is None or not config.node_group_configs:
        return None
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


def put_each(data: dict) -> dict:
    """One object per dataset (key -> ObjectRef): a trial gets only its job's dataset, so
    a node never pulls one that none of its trials uses (one object of all of them would
    be pulled whole by every node)."""
    import ray

    return {key: ray.put(dataset) for key, dataset in data.items()}


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
        import tensorflow  # noqa: F401  (placement configures it)
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

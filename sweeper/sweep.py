"""The sweep: run a plan's pending training jobs as Ray Tune trials, storing rows as they come.

One Tune trial per training job, with actor reuse (a reused actor keeps TensorFlow
imported). Datasets are loaded once on the driver and put in Ray's object store, one
object per dataset, so a node pulls only the datasets its trials train on. Every row a
trial reports reaches the driver; a finished trial's rows are written to the result
store at once, so a crash loses at most the trials in flight.
Cells already in the store are never recomputed.

Transfer attacks run in two waves of trials within one launch: first every pending cell
that is not a transfer cell (so each source cell stores its adversarial examples), then
the pending transfer cells, whose models come from the cache and whose examples from the
store: a forward pass each. A source cell whose row is stored but whose examples are not
(a store from before transfer cells, or one whose files were removed) is recomputed in
the first wave for its examples; its row is not written again.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from ray import tune
from rich.console import Console

from sweeper import WORKER_ENV, placement, store
from sweeper.plan import cost
from sweeper.datasets import load_all
from sweeper.errors import UserError, storage_error
from sweeper.plan.expand import Cell, Plan, TrainingJob
from sweeper.lease import Lease
from sweeper.progress import CellProgress, styled
from sweeper.progress import console as literal_console
from sweeper.trial import CHECKPOINT_FILE, JobContext, run_job


@dataclass
class LaunchReport:
    total_cells: int
    already_done: int
    computed: int = 0
    trainings: int = 0  # models trained (not loaded from the cache) in this launch
    failed_jobs: list[str] = field(default_factory=list)  # one line per failed job
    damaged_fragments: tuple[str, ...] = ()
    why: dict[str, str] = field(default_factory=dict)  # damaged fragment -> what is wrong with it

    @property
    def complete(self) -> bool:
        return self.already_done + self.computed == self.total_cells


def pending_work(plan: Plan, done: set[str]) -> list[tuple[TrainingJob, list[Cell]]]:
    """Training jobs with at least one cell not yet in the store, with those cells, the
    longest first by ``sweeper.plan.cost``'s estimate, so that no long job starts last while
    other workers sit idle. Jobs of equal estimate keep the plan's order."""
    return _by_job(plan, [cell for cell in plan.cells if cell.cell_id not in done])


def waves(plan: Plan, done: set[str], stored_arrays: set[str]) -> tuple[list, list, set[str]]:
    """The pending work in two waves, each as ``pending_work`` orders it: (1) every pending
    cell but the transfer cells, plus the stored source cells whose examples are missing
    (``stored_arrays``: file names in the store's adversarial folder) that a pending
    transfer cell needs; (2) the pending transfer cells. Also returns the ids of those
    recomputed source cells, whose rows are already stored."""
    pending = [cell for cell in plan.cells if cell.cell_id not in done]
    needed = {cell.source.cell_id for cell in pending if cell.source is not None}
    rerun = {cell_id for cell_id in needed & done if f"{cell_id}.npz" not in stored_arrays}
    first = [c for c in plan.cells if (c.cell_id not in done and c.source is None) or c.cell_id in rerun]
    second = [c for c in pending if c.source is not None]
    return _by_job(plan, first), _by_job(plan, second), rerun


def _by_job(plan: Plan, cells: list[Cell]) -> list[tuple[TrainingJob, list[Cell]]]:
    by_job: dict[str, list[Cell]] = defaultdict(list)
    for cell in cells:
        by_job[cell.job_id].append(cell)
    work = [(job, by_job[job.job_id]) for job in plan.jobs if job.job_id in by_job]
    return sorted(work, key=_expected_cost, reverse=True)


def _expected_cost(item: tuple[TrainingJob, list[Cell]]) -> float:
    job, cells = item
    return cost.job_seconds(job, cells)


def launch(plan: Plan, results: str, *, address: str | None = None, verbose: bool = False,
           console: Console | None = None, provenance: store.Launch | None = None,
           held: bool = False) -> LaunchReport:
    """Run the plan's pending cells; ``provenance`` (the grid file and overrides) is kept in
    the metadata of every file written. Ends by compacting the store. Holds the store's
    lease (``sweeper.lease``) throughout, raising ``LeaseHeld`` if another launch has it,
    unless ``held``: the caller holds it already."""
    if not plan.fingerprinted:
        raise ValueError("launch needs a plan expanded with model fingerprints")
    provenance = provenance or store.new_launch(plan.grid)
    if held:
        return _launch(plan, results, address, verbose, console, provenance)
    with Lease(store.locate(results), provenance.launch_id, plan.grid.name):
        return _launch(plan, results, address, verbose, console, provenance)


def _launch(plan, results, address, verbose, console, provenance) -> LaunchReport:
    console = console or literal_console(stderr=True)
    location = store.locate(results)
    existing = store.read(location, ["cell_id"])
    done = set(existing.table.column("cell_id").to_pylist()) & {c.cell_id for c in plan.cells}
    # Damaged fragments are set aside so their cells are recomputed, and reported.
    store.set_aside(location, existing.damaged)
    report = LaunchReport(len(plan.cells), len(done), damaged_fragments=existing.damaged, why=existing.why)
    first, second, rerun = waves(plan, done, store.file_names(location, store.ADVERSARIAL_DIR))
    if not first and not second:
        if done:
            finish(location)  # e.g. a crashed launch left fragments uncompacted
        return report
    local = _init_ray(address, verbose)
    check_resources(plan.grid.resources, local=local, console=console)  # before loading any data
    data = load_all(plan.grid.data_dir, [job.dataset_key for job, _ in first + second])
    context = JobContext(plan.grid.name, plan.grid.mcus, model_cache=location.uri("models"),
                         launch_id=provenance.launch_id, adversarial=location.uri(store.ADVERSARIAL_DIR))
    data = _put_each(data)
    with CellProgress(console, total=report.total_cells, done=report.already_done) as progress:
        rows = _StoreRows(location, progress, provenance, skip=rerun)
        for wave, work in enumerate([first, second], start=1):
            if wave == 2:  # only transfer cells whose source stored its examples can run
                work, orphans = _with_sources(work, store.file_names(location, store.ADVERSARIAL_DIR))
                report.failed_jobs += orphans
            if work:
                results = _tuner(plan, work, data, context, location, rows, verbose, wave).fit()
                report.failed_jobs += [_failure_line(result, work) for result in results if result.error]
            if rows.fault is not None:  # the store took no more rows: stop, and say where (cli)
                raise rows.fault
    report.computed, report.trainings = rows.written, rows.trainings
    finish(location)
    return report


def _with_sources(work, stored_arrays: set[str]) -> tuple[list, list[str]]:
    """The transfer work whose source examples are stored, and one line per job whose
    transfer cells cannot run (their source job failed in the first wave)."""
    ready, orphans = [], []
    for job, cells in work:
        runnable = [cell for cell in cells if f"{cell.source.cell_id}.npz" in stored_arrays]
        if runnable:
            ready.append((job, runnable))
        if len(runnable) < len(cells):
            missing = sorted({cell.source.job_id for cell in cells if cell not in runnable})
            orphans.append(f"{job.dataset}/{job.model}/{job.quantizer}/fold {job.fold}: "
                           f"{len(cells) - len(runnable)} transfer cells not run: no examples from "
                           f"source job {', '.join(missing)} (it failed)")
    return ready, orphans


def finish(location: store.Location) -> store.CompactReport:
    """End of a sweep: one compacted file of rows, and what is derived from them (the
    diagnostics, the worst case over attacks)."""
    from sweeper.analysis import diagnostics, query

    compacted = store.compact(location)
    diagnostics.write(location, compacted.table)
    query.write_worst_case(location)
    return compacted



def _init_ray(address: str | None, verbose: bool) -> bool:
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


def _put_each(data: dict) -> dict:
    """One object per dataset (key -> ObjectRef): a trial gets only its job's dataset, so
    a node never pulls one that none of its trials uses (one object of all of them would
    be pulled whole by every node)."""
    import ray

    return {key: ray.put(dataset) for key, dataset in data.items()}


def _tuner(plan, work, data, context, location, rows, verbose, wave: int = 1):
    # Training checkpoints: in the store under checkpoints/<job_id>.npz (a new launch
    # resumes from them) and through Tune (a retried trial does), Tune keeping the last.
    context = replace(context, checkpoints=location.uri("checkpoints"),
                      checkpoint_every=plan.grid.train.checkpoint_every)
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
            callbacks=[rows], stop=_StopOnFault(rows), verbose=2 if verbose else 0),
    )


def _trainable(config: dict[str, Any], work, data, context) -> None:
    """One Tune trial: a training job. Runs on a Ray worker."""
    import ray

    placement.configure(placement.current())
    job, cells = work[config["job_index"]]
    node = ray.get_runtime_context().get_node_id()
    try:
        run_job(job, cells, ray.get(data[job.dataset_key]), context,
                report=lambda row: tune.report({"row": json.dumps({**row, "node": node})}),
                hooks=_TuneCheckpoints())
    except OSError as error:
        fault = storage_error(error)
        if fault is None:
            raise
        # A full or read-only store fails every retry the same way: instead of failing the
        # trial (Tune would train it again), tell the driver, which stops the sweep.
        tune.report({STORAGE_FAULT: json.dumps([fault.errno, fault.filename])})


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
        with tempfile.TemporaryDirectory() as folder:
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
    """Ends the sweep once the store refused a write (``_StoreRows.fault``)."""

    def __init__(self, rows: _StoreRows):
        self.rows = rows

    def __call__(self, trial_id: str, result: dict) -> bool:
        return self.rows.fault is not None

    def stop_all(self) -> bool:
        return self.rows.fault is not None


def _failure_line(result, work) -> str:
    job, _ = work[result.config["job_index"]]
    return f"{job.dataset}/{job.model}/{job.quantizer}/fold {job.fold}: {error_summary(result.error)}"


def error_summary(error: BaseException) -> str:
    """The most telling line of a (possibly nested, TensorFlow-wrapped) error message: the
    last 'SomeError: text' line that has text, else the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b:", line)]
    with_text = [line for line in raised if line.split(":", 1)[1].strip()]
    if with_text or raised:
        return (with_text or raised)[-1]
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__


STORAGE_FAULT = "storage_fault"  # a trial's report that the store refused a write: [errno, file]


class _StoreRows(tune.Callback):
    """Driver side: collect each trial's rows, write them when the trial ends. A write the
    store refuses (a full disk, a read-only store), here or in a worker, is kept as
    ``fault``: ``_StopOnFault`` stops the sweep, and the launch raises it."""

    def __init__(self, location: store.Location, progress: CellProgress, provenance: store.Launch,
                 skip: set[str] = frozenset()):
        self.location, self.progress, self.provenance = location, progress, provenance
        self.pending: dict[str, dict[str, dict]] = defaultdict(dict)  # trial -> cell -> row
        # cell ids written in this launch, and those stored before (``skip``: source
        # cells recomputed only for their examples), whose rows are never written again
        self.stored: set[str] = set(skip)
        self.written = self.trainings = 0
        self.fault: OSError | None = None

    def __getstate__(self):
        # Tune pickles its callbacks into the experiment state; a live progress display
        # (locks, a terminal) cannot and need not travel.
        return {**self.__dict__, "progress": None}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if STORAGE_FAULT in result:  # a worker's write to the store failed (_trainable)
            code, filename = json.loads(result[STORAGE_FAULT])
            self.fault = self.fault or OSError(code, os.strerror(code), filename)
            return
        if "row" not in result:
            return  # a training checkpoint, not a result row
        row = json.loads(result["row"])
        if row["cell_id"] in self.stored or row["cell_id"] in self.pending[trial.trial_id]:
            return  # a retried trial reports its cells again
        self.pending[trial.trial_id][row["cell_id"]] = row
        self.progress.advance(f"{row['dataset']}/{row['model']}/{row['quantizer']} "
                              f"fold {row['fold']}: {row['attack_label']} eps {row['eps_label']}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._flush(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._flush(trial)  # the rows it finished are real results: keep them

    def on_trial_recover(self, iteration, trials, trial, **info):
        # A trial about to be retried (its worker died): what it reported is real and
        # stored now, so a driver crash before the retry ends loses none of it.
        self._flush(trial)

    def _flush(self, trial) -> None:
        rows = list(self.pending.get(trial.trial_id, {}).values())
        if not rows:
            return
        try:  # also after a fault: rows computed are kept if the store still takes them
            store.write_rows(self.location, rows, tag=rows[0]["job_id"], launch=self.provenance)
        except OSError as error:
            if storage_error(error) is None:
                raise
            # Raised here, Tune would count it against the trial and retry it: the model
            # trained again, to fail at the same write. Stop instead; a rerun resumes.
            self.fault = self.fault or error
            return
        self.pending.pop(trial.trial_id)
        self.stored.update(row["cell_id"] for row in rows)
        self.written += len(rows)
        self.trainings += int(not rows[0]["model_cached"])

"""The sweep: run a plan's pending cells through a runner (``runners.py``), storing rows
as jobs finish.

Cells already in the store are never recomputed. Pending jobs go longest first by
``sweeper.plan.cost``'s estimate, so that no long job starts last while other workers sit
idle. Datasets are loaded once on the driver and handed to the runner (Ray's object store:
one object per dataset, so a node pulls only the datasets its trials train on). Every row
a job reports reaches the driver (``rows.RowSink``); a finished job's rows are written to
the result store at once, so a crash loses at most the jobs in flight. The launch holds
the store's lease throughout, records its provenance in every file, and ends by
compacting the store and deriving what is read from it (``finish``).

Transfer attacks run in two waves within one launch: first every pending cell that is
not a transfer cell (so each source cell stores its adversarial examples), then the
pending transfer cells, whose models come from the cache and whose examples from the
store: a forward pass each. A source cell whose row is stored but whose examples are not
(a store from before transfer cells, or one whose files were removed) is recomputed in
the first wave for its examples; its row is not written again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from rich.console import Console

from sweeper import store
from sweeper.analysis import diagnostics, query
from sweeper.console import console as literal_console
from sweeper.datasets import load_all
from sweeper.plan import cost
from sweeper.plan.expand import Cell, Plan, TrainingJob
from sweeper.run.background import collection_paused, in_background
from sweeper.run.lease import Lease
from sweeper.run.profile import Timeline
from sweeper.run.progress import CellProgress, Estimate
from sweeper.run.rows import RowSink
from sweeper.run.runners import RayTuneRunner, Runner
from sweeper.run.trial import JobContext


@dataclass
class LaunchReport:
    total_cells: int
    already_done: int
    computed: int = 0
    trainings: int = 0  # models trained (not loaded from the cache) in this launch
    failed_jobs: list[str] = field(default_factory=list)  # one line per failed job
    tracker_failed: str | None = None  # why --log's tracker was switched off (sweeper.run.tracking)
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


def launch(plan: Plan, results: str, *, runner: Runner | None = None, console: Console | None = None,
           provenance: store.Launch | None = None, held: bool = False, tracker=None,
           timeline: Timeline | None = None) -> LaunchReport:
    """Run the plan's pending cells with ``runner`` (default: ``RayTuneRunner()``, a local
    Ray instance); ``provenance`` (the grid file and overrides) is kept in the metadata of
    every file written. Ends by compacting the store. Holds the store's lease
    (``sweeper.run.lease``) throughout, raising ``LeaseHeld`` if another launch has it,
    unless ``held``: the caller holds it already. ``tracker``: where stored rows are also
    logged (``sweeper.run.tracking``; closed when the sweep ends). ``timeline``: where the
    launch's phases and its trials' spans are recorded (``sweeper.run.profile``)."""
    if not plan.fingerprinted:
        raise ValueError("launch needs a plan expanded with model fingerprints")
    provenance = provenance or store.new_launch(plan.grid)
    runner = runner or RayTuneRunner()
    timeline = timeline or Timeline()
    if held:
        return _launch(plan, results, runner, console, provenance, tracker, timeline)
    with Lease(store.locate(results), provenance.launch_id, plan.grid.name):
        return _launch(plan, results, runner, console, provenance, tracker, timeline)


def _launch(plan: Plan, results: str, runner: Runner, console, provenance, tracker, timeline) -> LaunchReport:
    console = console or literal_console(stderr=True)
    location = store.locate(results)
    with timeline.phase("reading the store"):
        existing = store.read(location, ["cell_id"])
        done = set(existing.table.column("cell_id").to_pylist()) & {c.cell_id for c in plan.cells}
        # Damaged fragments are set aside so their cells are recomputed, and reported.
        store.set_aside(location, existing.damaged)
        report = LaunchReport(len(plan.cells), len(done), damaged_fragments=existing.damaged, why=existing.why)
        first, second, rerun = waves(plan, done, store.file_names(location, store.ADVERSARIAL_DIR))
    if not first and not second:
        if done:
            with timeline.phase("end of launch: compaction, diagnostics, worst case"):
                finish(location)  # e.g. a crashed launch left fragments uncompacted
        return report
    # The data loads while the runner starts (Ray takes seconds to come up); a runner that
    # refuses the sweep (no node can hold a trial) is reported at once, not after the load.
    loading = in_background(load_all, plan.grid.data_dir, [job.dataset_key for job, _ in first + second],
                            name="sweeper-load")
    with timeline.phase("starting the runner (Ray), loading the data meanwhile"):
        runner.start(plan, console)
    with timeline.phase("loading (what is left) and sharing the data"):
        data = runner.share(loading())
    context = job_context(plan, location, provenance.launch_id)
    estimate = estimated(first, second, runner.slots(plan))
    with CellProgress(console, total=report.total_cells, done=report.already_done, estimate=estimate) as progress:
        rows = RowSink(location, progress, provenance, skip=rerun, tracker=tracker, timeline=timeline)
        try:
            for wave, work in enumerate([first, second], start=1):
                if wave == 2:  # only transfer cells whose source stored its examples can run
                    work, orphans = _with_sources(work, store.file_names(location, store.ADVERSARIAL_DIR))
                    report.failed_jobs += orphans
                if work:
                    began = time.time()
                    with timeline.phase(f"wave {wave}: {len(work)} jobs"):
                        report.failed_jobs += runner.run(plan, work, data, context, rows, wave)
                    timeline.waves.append((wave, began, time.time()))
                if rows.fault is not None:  # the store took no more rows: stop, and say where (cli)
                    raise rows.fault
        finally:  # interrupted too: the tracker's runs end with what was stored
            report.tracker_failed = rows.close_tracker()
    report.computed, report.trainings = rows.written, rows.trainings
    timeline.note_processes()
    with collection_paused():  # a Ray reference freed by this thread while Ray stops ends the process
        stopping = in_background(runner.stop, name="sweeper-stop")  # Ray's shutdown waits on processes: meanwhile, finish
        with timeline.phase("end of launch: compaction, diagnostics, worst case"):
            finish(location)
        with timeline.phase("stopping the runner (what is left of Ray's shutdown)"):
            stopping()
    return report


def job_context(plan: Plan, location: store.Location, launch_id: str) -> JobContext:
    """What every job of a launch into ``location`` is given: the store's model cache,
    checkpoints, adversarial examples and builds (``bench/overhead.py``'s loop gets the
    same, so that both do the same work)."""
    # Training checkpoints live in the store under checkpoints/<job_id>.npz: a new launch
    # resumes from them (a runner may keep its own too: Tune's, for a retried trial).
    return JobContext(plan.grid.name, plan.grid.mcus, model_cache=location.uri("models"),
                      launch_id=launch_id, checkpoints=location.uri("checkpoints"),
                      checkpoint_every=plan.grid.train.checkpoint_every,
                      adversarial=location.uri(store.ADVERSARIAL_DIR), results=location.uri(),
                      built=store.build_jobs(location))


def estimated(first: list, second: list, slots: int) -> Estimate:
    """The cost model's wall-clock time for both waves on ``slots`` workers (each wave in
    its order, the second after the first), and the cells of the first round of jobs."""
    seconds = sum(cost.makespan([_expected_cost(item) for item in wave], slots) for wave in (first, second) if wave)
    first_round = sum(len(cells) for _, cells in (first + second)[:slots])
    return Estimate(seconds, first_round)


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
    """End of a sweep: one compacted file of rows (and one of build records), and what is
    derived from them (the diagnostics, the worst case over attacks)."""
    compacted = store.compact(location)
    store.compact_builds(location)
    diagnostics.write(location, compacted.table)
    query.write_worst_case(location)
    return compacted

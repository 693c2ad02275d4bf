"""What a sweep's jobs give back, on the driver's side, whatever runs them: ``RowSink``
collects each job's rows as they are reported and writes them to the store as one fragment
when the job ends, so a crash loses at most the jobs in flight; a write the store refuses
(a full disk, a read-only store), the driver's own or a worker's, is kept as ``fault`` and
stops the sweep instead of failing the job (which a retry would train again, to fail at the
same write). Each finished trial's spans go to ``timeline`` (``sweeper.run.profile``).
``failure_line`` says in one line why a job failed."""

from __future__ import annotations

import os
import re
from collections import defaultdict

from sweeper import store
from sweeper.errors import storage_error
from sweeper.plan.expand import TrainingJob
from sweeper.run.profile import Timeline
from sweeper.run.progress import CellProgress


class RowSink:
    """The rows of the jobs in flight, by the runner's key for one attempt of a job (a Tune
    trial, or the job itself), written when it ends; ``skip``: cells stored before (source
    cells recomputed only for their examples), whose rows are never written again."""

    def __init__(self, location: store.Location, progress: CellProgress, provenance: store.Launch,
                 skip: set[str] = frozenset(), tracker=None, timeline: Timeline | None = None):
        self.location, self.progress, self.provenance = location, progress, provenance
        self.timeline = timeline or Timeline()  # each finished trial's spans (sweeper.run.profile)
        self.tracker, self.tracker_failed = tracker, None  # --log (sweeper.run.tracking)
        self.pending: dict[str, dict[str, dict]] = defaultdict(dict)  # attempt -> cell -> row
        # cell ids written in this launch, and those stored before, never written again
        self.stored: set[str] = set(skip)
        self.written = self.trainings = 0
        self.fault: OSError | None = None

    def __getstate__(self):
        # Ray Tune pickles its callbacks, this with them, into the experiment state; a live
        # progress display (locks, a terminal) cannot and need not travel.
        return {**self.__dict__, "progress": None, "tracker": None}

    def add(self, key: str, row: dict) -> None:
        """One row, as it comes; a retried attempt reports its cells again: kept once."""
        if row["cell_id"] in self.stored or row["cell_id"] in self.pending[key]:
            return
        self.pending[key][row["cell_id"]] = row
        self.progress.advance(f"{row['dataset']}/{row['model']}/{row['quantizer']} "
                              f"fold {row['fold']}: {row['attack_label']} eps {row['eps_label']}")

    def refused(self, code: int, filename: str) -> None:
        """A worker's write to the store was refused (errno ``code``): stop the sweep."""
        self.fault = self.fault or OSError(code, os.strerror(code), filename)

    def flush(self, key: str) -> None:
        """Write the attempt's rows as one fragment: when it ends, fails (the rows it
        finished are real results) or is about to be retried."""
        rows = list(self.pending.get(key, {}).values())
        if not rows:
            return
        try:  # also after a fault: rows computed are kept if the store still takes them
            store.write_rows(self.location, rows, tag=rows[0]["job_id"], launch=self.provenance)
        except OSError as error:
            if storage_error(error) is None:
                raise
            # Raised here, the runner would count it against the job and retry it: the model
            # trained again, to fail at the same write. Stop instead; a rerun resumes.
            self.fault = self.fault or error
            return
        self.pending.pop(key)
        self.stored.update(row["cell_id"] for row in rows)
        self.written += len(rows)
        self.trainings += int(not rows[0]["model_cached"])
        self.track(rows)

    def track(self, rows: list[dict]) -> None:
        """Stored rows to the tracker, if any; the store is the source of truth, so a
        tracker that fails is switched off (``tracker_failed`` says why), the sweep goes on."""
        if self.tracker is None:
            return
        try:
            self.tracker.log(rows)
        except Exception as error:  # any library's error: tracking is optional
            self.tracker, self.tracker_failed = None, error_summary(error)

    def close_tracker(self) -> str | None:
        """Finish the tracker's runs; why it was switched off, if it was."""
        if self.tracker is not None:
            try:
                self.tracker.close()
            except Exception as error:
                self.tracker_failed = error_summary(error)
            self.tracker = None
        return self.tracker_failed


def failure_line(job: TrainingJob, error: BaseException) -> str:
    """A failed job in one line: where, and ``error_summary`` of why."""
    return f"{job.dataset}/{job.model}/{job.quantizer}/fold {job.fold}: {error_summary(error)}"


def error_summary(error: BaseException) -> str:
    """The most telling line of a (possibly nested, TensorFlow-wrapped) error message: the
    last 'SomeError: text' line that has text, else the last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    raised = [line for line in lines if re.match(r"^[\w.]*(Error|Exception)\b:", line)]
    with_text = [line for line in raised if line.split(":", 1)[1].strip()]
    if with_text or raised:
        return (with_text or raised)[-1]
    return f"{type(error).__name__}: {lines[-1]}" if lines else type(error).__name__

"""How a sweep's jobs run. ``sweep.launch`` decides what runs, in which waves and order,
and keeps the store (lease, provenance, rows, compaction); a ``Runner`` runs each wave's
(job, cells) work and reports every row to the driver's ``RowSink``. Two runners:

- ``RayTuneRunner``: Ray Tune trials, one per job, on a local Ray instance or a cluster
  (``--address``), each retried up to twice; real sweeps. Its Ray side is
  ``ray_cluster.py`` (starting Ray, resources, the data) and ``ray_tune.py`` (the trials),
  imported when a launch starts, so the CLI and this module stay free of Ray.
- ``InProcessRunner``: ``run_job`` in this process, one job after another in the wave's
  order, no retries: tests, and ``sweeper launch --local`` for debugging (a breakpoint or
  a traceback in a trial is the launch's own).

Both see the same work in the same order and write the same rows (but ``node``, Ray's
node id, empty in process).
"""

from __future__ import annotations

import json
import os
import time
from typing import Protocol

from sweeper.errors import storage_error
from sweeper.run import profile
from sweeper.run.background import in_background
from sweeper.run.rows import RowSink, failure_line
from sweeper.run.trial import JobContext, run_job


class Runner(Protocol):
    def start(self, plan, console) -> None:
        """Before any data is loaded: connect, and refuse in one line (``UserError``) what
        can never run (a trial no node can hold)."""

    def share(self, data: dict) -> dict:
        """The loaded datasets (dataset key -> ``Dataset``) as the jobs will receive them."""

    def run(self, plan, work: list, data: dict, context: JobContext, rows: RowSink, wave: int) -> list[str]:
        """Run a wave's (job, cells) ``work`` in its order, every row to ``rows`` (``add``
        as it comes, ``flush`` when its job ends); one line per failed job. Stops starting
        jobs once ``rows.fault`` is set (the store refused a write)."""

    def slots(self, plan) -> int:
        """After ``start``: how many jobs run at once (the progress's first estimate)."""

    def stop(self) -> None:
        """After the last wave: release what ``start`` set up for this launch alone."""


class InProcessRunner:
    """Every job in this process, in order (module docstring)."""

    def start(self, plan, console) -> None:
        pass  # this process is the only worker: it holds whatever a trial asks for

    def slots(self, plan) -> int:
        return 1

    def stop(self) -> None:
        pass

    def share(self, data: dict) -> dict:
        return data

    def run(self, plan, work: list, data: dict, context: JobContext, rows: RowSink, wave: int) -> list[str]:
        failures = []
        for job, cells in work:
            if rows.fault is not None:
                break
            entered = time.time()
            try:
                # rows travel as Ray's do, through JSON: the same values reach the store
                run_job(job, cells, data[job.dataset_key], context,
                        report=lambda row, key=job.job_id: rows.add(key, json.loads(json.dumps(row))))
            except Exception as error:  # a failed job is one line, as a failed trial is
                fault = storage_error(error)
                if fault is None:
                    failures.append(failure_line(job, error))
                else:  # a full or read-only store fails every job the same way: stop
                    rows.fault = rows.fault or fault
            finally:
                rows.flush(job.job_id)  # the rows it finished are real results: keep them
                rows.timeline.trial(profile.trial_payload(f"local:{os.getpid()}", entered, profile.take()))
        return failures


class RayTuneRunner:
    """Ray Tune trials (``ray_cluster.py``, ``ray_tune.py``); ``address``: a cluster (``auto``, ``HOST:PORT``,
    ``ray://HOST:10001``), None to start a local instance; ``verbose``: Ray's and
    TensorFlow's logs on the terminal."""

    def __init__(self, address: str | None = None, verbose: bool = False):
        self.address, self.verbose = address, verbose
        self.owned = False  # the Ray instance is this launch's own (started by ``start``)

    def start(self, plan, console) -> None:
        from sweeper.run import ray_cluster  # Ray, only now that a launch runs

        # Tune and what its first wave imports load meanwhile: Ray's start mostly waits
        # on the processes it spawns, and the first trials wait on both.
        importing = in_background(_import_tune, name="sweeper-import")
        self.owned = ray_cluster.init_ray(self.address, self.verbose)
        ray_cluster.check_resources(plan.grid.resources, local=self.owned, console=console)
        importing()

    def stop(self) -> None:
        # The launch's own local instance ends now (while the store is compacted), rather
        # than in Ray's exit hook, which first sleeps half a second for logs; a cluster
        # (or a Ray that was running before the launch) is left as it was.
        if self.owned:
            from sweeper.run import ray_cluster

            ray_cluster.shutdown_own()
            self.owned = False

    def slots(self, plan) -> int:
        from sweeper.run import ray_cluster

        return ray_cluster.slots(plan.grid.resources)

    def share(self, data: dict) -> dict:
        from sweeper.run import ray_cluster

        return ray_cluster.put_each(data)

    def run(self, plan, work: list, data: dict, context: JobContext, rows: RowSink, wave: int) -> list[str]:
        from sweeper.run import ray_tune

        return ray_tune.run_wave(plan, work, data, context, rows, self.verbose, wave)


def _import_tune() -> None:
    from sweeper.run import ray_tune

    ray_tune.warm_imports()

"""Experiment tracking, optional: ``sweeper launch --log mlflow|tensorboard`` logs each
training job's parameters and each of its cells' metrics as the driver stores its rows
(``rows.RowSink.flush``, after the fragment is written), so Ray trials and the in-process
runner (``--local``) log the same. The Parquet store stays the source of truth: a tracker
gets a copy of what was stored, and a tracker that fails is switched off with a warning,
never failing the launch.

What is logged, per training job (one run, named by its ``job_id``):

- parameters: the configuration (dataset, model, quantizer, defense, fold, k, seed,
  ``config_id``, ``job_id``, ``n_samples``, ``train.<field>`` per training setting);
- per cell, one metric ``adv_acc/<attack_label>/<norm>/<eps_label>`` (the clean cell is
  ``adv_acc/none/none/0``), the share of the cell's attacked samples still classified
  correctly; a label run with two parameter sets in one job gets ``/<cell id>`` appended;
  characters a tracker refuses (``<``, ``(``, ``+``...) become ``_``;
- per job, once: ``test_acc``, ``flash_kb``, ``ram_kb``, ``params``, ``train_s`` and
  ``zero_grad_share`` where the row has them.

The trackers: ``mlflow`` (``MlflowClient``; where to is MLflow's own ``MLFLOW_TRACKING_URI``,
its default ``./mlruns`` otherwise; the experiment is the grid's name), ``tensorboard``
(tensorboardX event files, one folder per job under ``--log-dir``, default
``runs/<grid name>``) and ``wandb`` (Weights & Biases, one run per job in the project named
after the grid, its files under ``--log-dir``, default ``runs/<grid name>``; offline unless
``WANDB_MODE`` says otherwise, so a launch never waits on a login or a network: ``wandb
sync`` uploads the runs later). Each library is an extra (``pip install 'sweeper[mlflow]'``);
a missing one is one line before anything runs.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Protocol

from sweeper.errors import UserError
from sweeper.keys import NONE
from sweeper.run.rows import error_summary

PARAMS = ("dataset", "model", "quantizer", "defense_label", "fold", "k", "seed", "config_id", "job_id", "n_samples")
JOB_METRICS = ("test_acc", "flash_kb", "ram_kb", "params", "train_s", "zero_grad_share")
_UNSAFE = re.compile(r"[^\w.\- /]")  # MLflow's metric-name alphabet (and TensorBoard's tags)


class Tracker(Protocol):
    def log(self, rows: list[dict]) -> None:
        """One job's stored rows (a fragment): its parameters and its cells' metrics."""

    def close(self) -> None:
        """End of the launch: every run finished, files flushed."""


def params(row: dict) -> dict[str, str]:
    """A job's parameters, as text, from any of its rows."""
    found = {name: str(row[name]) for name in PARAMS if row.get(name) is not None}
    found.update({f"train.{k}": str(v) for k, v in json.loads(row.get("train") or "{}").items()})
    return found


def metrics(rows: list[dict]) -> dict[str, float]:
    """The job's metrics: one per cell and the job's own (module docstring)."""
    names = [metric_name(row) for row in rows]
    found = {}
    for name, row in zip(names, rows):
        if names.count(name) > 1:  # one label, two parameter sets: the cell id tells them apart
            name = f"{name}/{row['cell_id']}"
        found[name] = float(row["adv_acc"])
    first = rows[0]
    found.update({name: float(first[name]) for name in JOB_METRICS if first.get(name) is not None})
    return found


def metric_name(row: dict) -> str:
    if row["attack"] == NONE:
        return "adv_acc/none/none/0"
    return "adv_acc/" + "/".join(_UNSAFE.sub("_", str(row[c])) for c in ("attack_label", "norm", "eps_label"))


class MLflowTracker:
    """One MLflow run per training job, in the experiment named after the grid."""

    def __init__(self, experiment: str):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("--log mlflow: MLflow is not installed; pip install 'sweeper[mlflow]'") from None
        try:  # the tracking store answers now, or the launch does not start
            self.client = MlflowClient()
            found = self.client.get_experiment_by_name(experiment)
            self.experiment = found.experiment_id if found else self.client.create_experiment(experiment)
        except Exception as error:  # MLflow's own errors (a server down, a file store refused)
            raise UserError(f"--log mlflow: the tracking store refused ({error_summary(error)}); "
                            "set MLFLOW_TRACKING_URI") from None
        self.runs: dict[str, str] = {}  # job_id -> run id: a retried job's later rows join its run

    def log(self, rows: list[dict]) -> None:
        from mlflow.entities import Metric, Param

        job = rows[0]["job_id"]
        first = job not in self.runs
        if first:
            self.runs[job] = self.client.create_run(self.experiment, run_name=job, tags={
                "sweeper.job_id": job, "sweeper.launch_id": str(rows[0].get("launch_id") or "")}).info.run_id
        now = int(time.time() * 1000)
        found = [Metric(k, v, now, 0) for k, v in metrics(rows).items()]
        given = [Param(k, v[:6000]) for k, v in params(rows[0]).items()] if first else []
        for start in range(0, max(len(found), len(given), 1), 100):  # MLflow's batch limits
            self.client.log_batch(self.runs[job], metrics=found[start:start + 100], params=given[start:start + 100])

    def close(self) -> None:
        for run in self.runs.values():
            self.client.set_terminated(run)


class TensorBoardTracker:
    """Event files, one folder per training job, each cell's metric a scalar at step 0 and
    the parameters as text."""

    def __init__(self, folder: str):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError("--log tensorboard: tensorboardX is not installed; "
                            "pip install 'sweeper[tensorboard]'") from None
        self.writer_class, self.folder, self.writers = SummaryWriter, Path(folder), {}

    def log(self, rows: list[dict]) -> None:
        job = rows[0]["job_id"]
        if job not in self.writers:
            self.writers[job] = self.writer_class(str(self.folder / job))
            text = "\n".join(f"    {k}: {v}" for k, v in params(rows[0]).items())
            self.writers[job].add_text("params", text, 0)
        for name, value in metrics(rows).items():
            self.writers[job].add_scalar(name, value, 0)
        self.writers[job].flush()

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


class WandbTracker:
    """One W&B run per training job (named by its ``job_id``, the parameters as its config),
    open until the launch ends so that a retried job's later rows join its run; the
    metrics are logged at step 0 and kept in the run's summary."""

    def __init__(self, project: str, folder: str):
        try:
            import wandb
        except ImportError:
            raise UserError("--log wandb: Weights & Biases is not installed; pip install 'sweeper[wandb]'") from None
        self.wandb, self.project, self.folder, self.runs = wandb, project, Path(folder), {}
        self.mode = os.environ.get("WANDB_MODE", "offline")

    def log(self, rows: list[dict]) -> None:
        job = rows[0]["job_id"]
        if job not in self.runs:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.runs[job] = self.wandb.init(
                project=self.project, name=job, dir=str(self.folder), mode=self.mode, config=params(rows[0]),
                reinit="create_new", settings=self.wandb.Settings(silent=True, console="off"))
        self.runs[job].log(metrics(rows), step=0)

    def close(self) -> None:
        for run in self.runs.values():
            run.finish()


TRACKERS = ("mlflow", "tensorboard", "wandb")


def make(name: str, grid_name: str, log_dir: str | None) -> Tracker:
    """The tracker ``--log name`` asks for (a one-line UserError for an unknown name or a
    library not installed)."""
    if name == "mlflow":
        return MLflowTracker(grid_name)
    if name == "tensorboard":
        return TensorBoardTracker(log_dir or str(Path("runs") / grid_name))
    if name == "wandb":
        return WandbTracker(grid_name, log_dir or str(Path("runs") / grid_name))
    raise UserError(f"--log: unknown tracker '{name}'; available: {', '.join(TRACKERS)}")

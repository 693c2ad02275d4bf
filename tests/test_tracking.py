"""Experiment tracking (sweeper.run.tracking): a launch with a tracker logs one run per
training job whose metrics are its stored cells, read back with the libraries' own readers
(MlflowClient on a local file store; TensorFlow's event-file reader for TensorBoard); a
failing tracker stops logging without failing the sweep; `--log` input errors are one line
before anything runs. The driver tests use test_sweep's jobs that report rows without
training; one slow test runs a real `sweeper launch --local --log mlflow` in its own process."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from sweeper import store
from sweeper.cli import app
from sweeper.run import sweep, tracking
from sweeper.run.runners import InProcessRunner
from tests.conftest import write_grid
from tests.test_cli import sweeper
from tests.test_sweep import _Jobs, _plan


def _stored(results: str) -> dict[str, dict[str, float]]:
    """Per job, the metrics its stored rows should give (tracking.metrics of them)."""
    rows = store.read(store.locate(results)).table.to_pylist()
    jobs = {row["job_id"] for row in rows}
    return {job: tracking.metrics([r for r in rows if r["job_id"] == job]) for job in jobs}


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 keeps the file store behind this
    return mlflow.tracking.MlflowClient()


def _runs(client, experiment: str) -> dict[str, object]:
    found = client.get_experiment_by_name(experiment)
    return {run.info.run_name: run for run in client.search_runs([found.experiment_id])}


def test_mlflow_gets_a_run_per_job_with_a_metric_per_cell(tmp_path, tiny_grid, monkeypatch, mlflow_store):
    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    broken = plan.jobs[1]
    monkeypatch.setattr("sweeper.run.runners.run_job", _Jobs(failing={broken.job_id}))
    report = sweep.launch(plan, results, runner=InProcessRunner(), tracker=tracking.MLflowTracker("tiny"))
    assert report.tracker_failed is None and len(report.failed_jobs) == 1
    runs, stored = _runs(mlflow_store, "tiny"), _stored(results)
    assert set(runs) == set(stored) == {job.job_id for job in plan.jobs}  # the failed job's stored row too
    for job in plan.jobs:
        run = runs[job.job_id]
        assert run.data.metrics == pytest.approx(stored[job.job_id])
        assert run.data.params["quantizer"] == job.quantizer and run.data.params["config_id"] == job.config_id
        assert run.info.status == "FINISHED"
    cells = sum(1 for metrics in stored.values() for name in metrics if name.startswith("adv_acc/"))
    assert cells == report.computed == len(plan.cells) - len(plan.cells_of(broken.job_id)) + 1


def test_tensorboard_event_files_hold_each_jobs_cells(tmp_path, tiny_grid, monkeypatch):
    pytest.importorskip("tensorboardX")
    import tensorflow as tf

    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    monkeypatch.setattr("sweeper.run.runners.run_job", _Jobs())
    sweep.launch(plan, results, runner=InProcessRunner(), tracker=tracking.TensorBoardTracker(str(tmp_path / "tb")))
    stored = _stored(results)
    assert {p.name for p in (tmp_path / "tb").iterdir()} == set(stored)
    for job, metrics in stored.items():
        read = {}
        for path in (tmp_path / "tb" / job).glob("events.out.tfevents.*"):
            for event in tf.compat.v1.train.summary_iterator(str(path)):
                read.update({v.tag: v.simple_value for v in event.summary.value if v.HasField("simple_value")})
        assert read == pytest.approx(metrics), job


def _wandb_records(path):
    """The records of an offline W&B run file (``run-<id>.wandb``): W&B's LevelDB-style log
    (a 7-byte header ``:W&B``, 0xBEE1, version 0; 32 KiB blocks of chunks, each a 4-byte
    CRC-32, a 2-byte length and a type: full, first, middle, last) of protobuf ``Record``s.
    wandb 0.31 writes it from Go and ships no Python reader, so the test reads it."""
    import struct
    import zlib

    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:7] == b":W&B" + struct.pack("<HB", 0xBEE1, 0), "not a W&B run file"
    offset, pending = 7, b""
    while offset + 7 <= len(data):
        if block - offset % block < 7:  # a block's tail too short for a chunk header is padding
            offset += block - offset % block
            continue
        checksum, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        if (checksum, length, kind) == (0, 0, 0):
            break
        chunk = data[offset + 7:offset + 7 + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == checksum, "damaged chunk"
        offset += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # full, or the last of a split record
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def _wandb_runs(folder) -> dict[str, dict]:
    """Per run name: its config and the metrics of its history, from the offline files."""
    import json

    runs = {}
    for path in folder.glob("wandb/offline-run-*/run-*.wandb"):
        name, config, metrics = None, {}, {}
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name = record.run.display_name
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
                metrics.update({k: v for k, v in items.items() if not k.startswith("_")})  # W&B's own
        runs[name] = {"config": config, "metrics": metrics}
    return runs


def test_wandb_offline_runs_hold_each_jobs_params_and_cells(tmp_path, tiny_grid, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default
    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    monkeypatch.setattr("sweeper.run.runners.run_job", _Jobs())
    report = sweep.launch(plan, results, runner=InProcessRunner(),
                          tracker=tracking.WandbTracker("tiny", str(tmp_path / "wb")))
    assert report.tracker_failed is None
    runs, stored = _wandb_runs(tmp_path / "wb"), _stored(results)
    assert set(runs) == set(stored) == {job.job_id for job in plan.jobs}
    for job in plan.jobs:
        run = runs[job.job_id]
        assert run["metrics"] == pytest.approx(stored[job.job_id]), job.job_id
        assert run["config"]["quantizer"] == job.quantizer and run["config"]["config_id"] == job.config_id


def test_metric_names_are_safe_and_one_per_cell():
    rows = [{"cell_id": c, "attack": "fgsm", "attack_label": "fgsm<-fp+none", "norm": "inf", "eps_label": "8/255",
             "adv_acc": a} for c, a in (("c1", 0.5), ("c2", 0.25))]
    rows[1]["attack_params"] = "{}"  # the same label with other parameters: another cell
    names = tracking.metrics(rows)
    assert names == {"adv_acc/fgsm_-fp_none/inf/8/255/c1": 0.5, "adv_acc/fgsm_-fp_none/inf/8/255/c2": 0.25}


def test_a_failing_tracker_stops_logging_and_the_sweep_goes_on(tmp_path, tiny_grid, monkeypatch):
    class Broken:
        closed = False

        def log(self, rows):
            raise ConnectionError("tracking server unreachable")

        def close(self):
            Broken.closed = True

    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    monkeypatch.setattr("sweeper.run.runners.run_job", _Jobs())
    report = sweep.launch(plan, results, runner=InProcessRunner(), tracker=Broken())
    assert report.tracker_failed == "ConnectionError: tracking server unreachable"
    assert report.complete and report.computed == len(plan.cells) and not Broken.closed  # switched off at once


@pytest.mark.parametrize("args, message", [
    (["--log", "neptune"], "--log: unknown tracker 'neptune'; available: mlflow, tensorboard, wandb"),
    (["--log-dir", "tb"], "--log-dir: only with --log tensorboard or wandb"),
    (["--log", "mlflow", "--log-dir", "tb"], "--log-dir: only with --log tensorboard or wandb"),
])
def test_log_input_errors_are_one_line_and_write_nothing(tmp_path, tiny_grid, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["launch", str(write_grid(tmp_path, tiny_grid)), "--local", *args])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {message}"), result.output
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists()


def test_a_missing_library_is_one_line_naming_the_extra(tmp_path, tiny_grid, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "mlflow.tracking", None)  # as if not installed
    result = CliRunner().invoke(app, ["launch", str(write_grid(tmp_path, tiny_grid)), "--local", "--log", "mlflow"])
    assert result.exit_code == 2
    assert "--log mlflow: MLflow is not installed; pip install 'sweeper[mlflow]'" in result.output
    assert not (tmp_path / "results").exists()


def test_a_refusing_tracking_store_is_one_line_before_anything_runs(tmp_path, tiny_grid, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://tracking")  # no tracking store of that kind
    result = CliRunner().invoke(app, ["launch", str(write_grid(tmp_path, tiny_grid)), "--local", "--log", "mlflow"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert lines[0].startswith("error: --log mlflow: the tracking store refused (") and "MLFLOW_TRACKING_URI" in lines[0]
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_a_real_local_launch_logs_its_jobs_and_cells_to_mlflow(tmp_path, tiny_grid, monkeypatch, mlflow_store):
    # its own process, as a user runs it (the tracking URI from the environment)
    result = sweeper("launch", str(write_grid(tmp_path, tiny_grid)), "--local", "--log", "mlflow",
                     "--results", "results", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    runs, stored = _runs(mlflow_store, "tiny"), _stored(str(tmp_path / "results"))
    assert set(runs) == set(stored) and len(runs) == 2  # fp and int4, fold 0
    for job, metrics in stored.items():
        assert runs[job].data.metrics == pytest.approx(metrics)
        assert sum(name.startswith("adv_acc/") for name in metrics) == 4  # clean, fgsm x 2, pgd

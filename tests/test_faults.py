"""Faults, as users meet them: a torn fragment, Ctrl-C, and a killed driver. Results
already stored are never lost or recomputed, and rerunning the same command finishes the
grid with exactly one row per cell. A training killed mid-way (its worker, or the whole
launch) continues from its last checkpoint and ends with the model an uninterrupted
training makes."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sweeper import store
from sweeper.plan import expand, grid
from sweeper.run.checkpoints import CHECKPOINT_FILE, TrainState
from sweeper.store.rows import read_fragment
from tests.conftest import TINY_GRID, cli, launch_until_first_fragment, write_grid
from tests.test_cluster import _trial_actor_pids

pytestmark = pytest.mark.slow


def _three_jobs(tmp_path: Path, tiny_grid: dict) -> tuple[Path, Path, int]:
    """One job more than a local Ray's two slots run at once: when the first fragment is
    stored, a job is still to come."""
    tiny_grid.update(folds={"k": 3}, quantizers=["fp"])
    path = write_grid(tmp_path, tiny_grid)
    return path, tmp_path / "results", len(expand.expand(grid.load(path)).cells)


def _rows(results: Path) -> list[str]:
    return store.read(store.locate(str(results)), ["cell_id"]).table.column("cell_id").to_pylist()


def _launch_and_signal(path: Path, results: Path, signum: int, *options: str) -> subprocess.CompletedProcess:
    """Start a launch (with ``options``), wait for its first stored fragment, then send it a signal."""
    process = launch_until_first_fragment(path, results, *options)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_torn_fragment_is_reported_and_its_cells_recomputed(tmp_path, tiny_grid, tiny_store):
    # the store's side of a launch: in process (no Ray, no new interpreter needed), from a
    # copy of the session's finished tiny store
    sweeper = cli
    path = write_grid(tmp_path, tiny_grid)
    results = tiny_store
    victim = sorted(results.glob("rows/part-*.parquet"))[0]
    lost = len(read_fragment(store.locate(str(results)), str(victim), ["cell_id"]))
    victim.write_bytes(victim.read_bytes()[:300])  # a crash mid-write

    checked = sweeper("check", str(results))
    assert checked.returncode == 1 and f"damaged: {victim}" in checked.stdout
    assert len(_rows(results)) == 8 - lost  # reading still works

    again = sweeper("launch", str(path), "--results", str(results), "--local")
    assert again.returncode == 0, again.stderr
    assert f"computed {lost} cells with 0 trainings" in again.stdout  # the model was cached
    assert "set aside" in again.stderr
    assert sorted(_rows(results)) == sorted(c.cell_id for c in expand.expand(grid.load(path)).cells)
    assert sweeper("check", str(results)).returncode == 0


# Ctrl-C on Ray (Tune has a SIGINT handler of its own); a killed driver in process
# (--local): what it stored is the store's either way, and no orphaned local Ray is left.
@pytest.mark.e2e
@pytest.mark.parametrize("signum, code, options", [(signal.SIGINT, 130, ()),
                                                   (signal.SIGKILL, -signal.SIGKILL, ("--local",))])
def test_interrupted_launch_resumes_without_recomputing(tmp_path, tiny_grid, signum, code, options):
    path, results, total = _three_jobs(tmp_path, tiny_grid)
    stopped = _launch_and_signal(path, results, signum, *options)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    if signum == signal.SIGINT:
        assert "rerun the same command to resume" in stopped.stderr
    kept = _rows(results)
    assert 0 < len(kept) < total and len(set(kept)) == len(kept)

    # the resume is the store's (what is done is not run again), not Ray's: in process
    resumed = cli("launch", str(path), "--results", str(results), "--local")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"computed {total - len(kept)} cells" in resumed.stdout
    final = _rows(results)
    assert len(final) == total == len(set(final)) and set(kept) <= set(final)
    assert store.check(store.locate(str(results))).healthy


# ---------------------------------------------------------------- checkpointed training

EPOCHS = 25  # about 0.3 s each here: a kill lands well before the end (at 1-4), the test stays short


def _long_training(directory: Path, **train) -> tuple[Path, str]:
    """A one-job grid (fp: deterministic training) whose training takes many epochs."""
    directory.mkdir(exist_ok=True)
    spec = {**copy.deepcopy(TINY_GRID), "quantizers": ["fp"], "attacks": [{"name": "fgsm", "eps": [0.1]}],
            "train": {"epochs": EPOCHS, "batch_size": 64, **train}}
    path = write_grid(directory, spec)
    [job] = expand.expand(grid.load(path)).jobs  # checkpoint_every is not part of the id
    return path, job.job_id


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    """The weights hash of the job trained in one go, in process (``--local``). A Ray trial
    trains the same weights bit for bit: it computes on one thread, as this test process
    does (tests/conftest.py), so both tests below compare with this one training."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    path, _ = _long_training(directory)
    run = cli("launch", str(path), "--results", str(directory / "results"), "--local")
    assert run.returncode == 0, run.stderr[-2000:]
    [weights] = set(store.read(store.locate(str(directory / "results")), ["weights_sha256"])
                    .table.column("weights_sha256").to_pylist())
    return weights


def _launch(path: Path, results: Path, *where: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sweeper", "launch", str(path), "--results", str(results),
                             *where],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _await_epoch(process: subprocess.Popen, files, after: int = -1) -> int:
    """Poll until one of ``files()`` holds a complete checkpoint of an epoch past ``after``;
    its epoch."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        for file in files():
            try:
                epoch = TrainState.from_bytes(file.read_bytes()).epoch
            except (OSError, ValueError, KeyError):
                continue  # being copied or deleted by Tune: look again
            if epoch > after:
                return epoch
        time.sleep(0.05)
    raise AssertionError(f"no checkpoint past epoch {after} within 300 s")


def _assert_resumed_and_complete(results: Path, path: Path, since: int, weights: str) -> None:
    rows = store.read(store.locate(str(results))).table.to_pylist()
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in expand.expand(grid.load(path)).cells)
    assert store.check(store.locate(str(results))).healthy  # every cell stored once
    assert {r["model_cached"] for r in rows} == {False}
    resumed = {r["resumed_from_epoch"] for r in rows}
    assert len(resumed) == 1 and since <= resumed.pop() < EPOCHS  # mid-training, not from 0
    # the same weights as one uninterrupted training: all EPOCHS epochs ran, once each,
    # with the learning-rate schedule and the shuffles an uninterrupted run has
    assert {r["weights_sha256"] for r in rows} == {weights}
    assert not list(results.glob("checkpoints/*.npz"))  # weights cached: checkpoints removed


@pytest.mark.e2e
def test_a_worker_killed_mid_training_resumes_from_its_tune_checkpoint(tmp_path, uninterrupted):
    # a checkpoint each epoch: "auto" saves rarely when epochs are quick, and the training
    # could end before a second checkpoint (below) is written
    path, job_id = _long_training(tmp_path, checkpoint_every=1)
    results = tmp_path / "results"
    process = _launch(path, results)

    def tune_checkpoints():
        return sorted(results.glob(f"_tune/*/*/checkpoint_*/{CHECKPOINT_FILE}"))

    # A checkpoint on disk is Tune's to restore only once its driver has taken the report:
    # the trial goes past one report only after that, so the next checkpoint proves it
    # (killed at the first, a loaded machine once restarted the training from epoch 0).
    k = _await_epoch(process, tune_checkpoints)
    _await_epoch(process, tune_checkpoints, after=k)
    victims = _trial_actor_pids()
    assert victims, "no trial actor process found"
    os.kill(victims[0], signal.SIGKILL)  # the spot worker is reclaimed
    # Without the store's copy, only Tune's checkpoint (tune.get_checkpoint) can resume it.
    (results / "checkpoints" / f"{job_id}.npz").unlink()
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr[-3000:]
    assert k >= 1 and "computed 2 cells with 1 trainings" in stdout
    _assert_resumed_and_complete(results, path, k, uninterrupted)


@pytest.mark.e2e
def test_a_relaunch_after_the_driver_dies_resumes_from_the_stored_checkpoint(tmp_path, uninterrupted):
    # The store's checkpoint is the trial's own (run_job writes and reads it, under either
    # runner): an in-process launch (--local), whose training dies with its driver, shows
    # it without a local Ray that would live on and need a `ray stop`.
    path, job_id = _long_training(tmp_path, checkpoint_every=3)
    results = tmp_path / "results"
    process = _launch(path, results, "--local")
    k = _await_epoch(process, lambda: [results / "checkpoints" / f"{job_id}.npz"])
    process.kill()
    process.communicate(timeout=60)
    assert k >= 3 and not list(results.glob("rows/*.parquet"))

    again = cli("launch", str(path), "--results", str(results), "--local")  # a new driver: nothing but the store
    assert again.returncode == 0, again.stderr[-3000:]
    assert "computed 2 cells with 1 trainings" in again.stdout
    _assert_resumed_and_complete(results, path, k, uninterrupted)

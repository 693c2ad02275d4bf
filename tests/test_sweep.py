"""The sweep. End to end, as a user runs it: a tiny grid through `sweeper launch` (real Ray
Tune trials, real QKeras training, real ART attacks, real Parquet), then a relaunch that
computes nothing, then an extended grid that computes only its new cells, in process
(`--local`). And the driver itself (order, resume, failures, refused writes) through the
in-process runner with jobs that report rows without training anything: no Ray, no
TensorFlow."""

from __future__ import annotations

import re
import shlex

import pytest

from sweeper import store
from sweeper.plan import expand, grid
from sweeper.run import sweep
from sweeper.run.runners import InProcessRunner
from tests.conftest import cli, write_grid
from tests.test_cli import sweeper
from tests.test_store import make_row


@pytest.mark.e2e
@pytest.mark.slow
def test_launch_relaunch_and_extend(tmp_path, tiny_grid, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, tiny_grid)
    results = "results"  # relative, as the default results/<grid> is: trials run elsewhere
    plan = expand.expand(grid.load(path))

    first = sweeper("launch", str(path), "--results", results, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"computed {len(plan.cells)} cells with {len(plan.jobs)} trainings" in first.stdout
    table = store.read(store.locate(results)).table
    assert sorted(table.column("cell_id").to_pylist()) == sorted(c.cell_id for c in plan.cells)
    rows = table.to_pylist()
    for row in rows:
        assert 0.0 <= row["adv_acc"] <= 1.0 and 0.0 <= row["clean_acc"] <= 1.0
        assert row["n_samples"] == 20 and row["params"] > 0 and row["flash_kb"] > 0
        assert row["model_cached"] is False and row["tensorflow_version"]
        assert len(row["node"]) == 56  # a Ray node id: the trial ran on a Ray worker
    clean = [r for r in rows if r["attack"] == "none"]
    assert all(r["adv_acc"] == r["clean_acc"] for r in clean)
    assert any(r["adv_acc"] < r["clean_acc"] for r in rows if r["attack"] == "fgsm")
    # int4 packs weights in 4 bits, about an eighth of fp's; the int8 .tflite does not
    packed = {r["quantizer"]: r["flash_packed_kb"] for r in rows}
    assert packed["int4"] < packed["fp"] / 4
    deployed = {r["quantizer"]: r["tflite_kb"] for r in rows}
    assert deployed["int4"] == pytest.approx(deployed["fp"], rel=0.1)
    assert all(r["deployed_clean_acc"] is not None for r in rows)
    assert {(r["n_classes"], r["n_features"]) for r in rows} == {(10, 64)}
    # One fragment per finished training job, compacted into one file when the launch ends,
    # which records the launch's grid file; the diagnostics sit beside the rows.
    location = store.locate(results)
    fragments = store.fragments(location)
    assert len(fragments) == 1 and "-compacted-" in fragments[0]
    [launch] = store.launches(location)
    assert launch["grid_text"] == path.read_text() and {r["launch_id"] for r in rows} == {launch["launch_id"]}
    assert (tmp_path / "results" / store.DIAGNOSTICS_FILE).exists()
    # the trained models are cached in the store, not in the trials' working directories
    assert len(list((tmp_path / "results" / "models").glob("*.weights.h5"))) == len(plan.jobs)
    rendered = cli("report", results, "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| small_cnn / fp |" in text and "| small_cnn / int4 |" in text
    assert f"| {launch['started_at']} | tiny | {path} |" in text  # provenance of the launch

    again = cli("launch", str(path), "--results", results, cwd=tmp_path)  # nothing to run: no Ray
    assert again.returncode == 0, again.stderr
    assert f"{len(plan.cells)}/{len(plan.cells)} cells already done" in again.stdout
    assert store.fragments(store.locate(results)) == fragments

    extended = cli("launch", str(path), "--results", results, "--set",
                       "attacks.fgsm.eps=[0.1, 0.2, 0.3]", "--local", cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr
    # one new epsilon x two models; the models come from the cache, so no training
    assert re.search(r"computed 2 cells with 0 trainings; 10/10 cells done", extended.stdout)
    table = store.read(store.locate(results)).table
    assert table.num_rows == 10 == len(set(table.column("cell_id").to_pylist()))
    new = [r for r in table.to_pylist() if r["eps_label"] == "0.3"]
    assert len(new) == 2 and all(r["model_cached"] for r in new)
    assert all(r["node"] == "" for r in new)  # computed in the launch's own process, not on a Ray node
    # the cached model is the same model: same clean accuracy on the same samples
    old_clean = {r["job_id"]: r["clean_acc"] for r in rows}
    assert all(r["clean_acc"] == old_clean[r["job_id"]] for r in new)
    _next_steps_run(extended.stdout, results, tmp_path)


def _next_steps_run(stdout: str, results: str, tmp_path) -> None:
    """The line after a launch names the store, and the commands it suggests run as pasted
    (their argv, through the CLI in process: a new interpreter each adds nothing here)."""
    [line] = [line for line in stdout.splitlines() if line.startswith("results in ")]
    where, commands = line.removeprefix("results in ").split("; next: ")
    assert where == results
    commands = [shlex.split(command) for command in commands.split("  |  ")]
    assert [command[:3] for command in commands] == [["sweeper", verb, results] for verb in ("report", "query", "card")]
    for command in commands:
        done = cli(*command[1:], cwd=tmp_path)
        assert done.returncode == 0, (command, done.stderr)
    assert (tmp_path / "reports" / "tiny" / "report.md").exists()


# ---------------------------------------------------------------- the driver, in process

def _plan(tmp_path, tiny_grid, overrides=()):
    """The tiny grid's plan, taken as fingerprinted (its jobs never build a model here)."""
    import dataclasses

    tiny_grid["quantizers"] = ["fp", "int4", "int8"]
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid), list(overrides)), fingerprints=False)
    return dataclasses.replace(plan, fingerprinted=True)


class _Jobs:
    """Stands in for ``run_job``: reports a row per cell without training, records the
    order jobs ran in, and fails the jobs it is told to fail after their first row."""

    def __init__(self, failing=(), raising=None):
        self.ran, self.failing, self.raising = [], set(failing), raising

    def __call__(self, job, cells, data, context, report, hooks=None):
        self.ran.append(job.job_id)
        for index, cell in enumerate(cells):
            if index == 1 and job.job_id in self.failing:
                raise self.raising or RuntimeError("Traceback...\nValueError: the job broke")
            report(make_row(cell.cell_id, job_id=job.job_id, config_id=job.config_id, quantizer=job.quantizer,
                            fold=job.fold, attack=cell.attack, attack_label=cell.attack_label, norm=cell.norm,
                            eps=cell.eps, eps_label=cell.eps_label, launch_id=context.launch_id))


def test_the_in_process_runner_runs_pending_jobs_longest_first_and_resumes(tmp_path, tiny_grid, monkeypatch):
    jobs = _Jobs()
    monkeypatch.setattr("sweeper.run.runners.run_job", jobs)
    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    report = sweep.launch(plan, results, runner=InProcessRunner())
    # the order sweep.pending_work gives (longest first by the cost model), each job once
    assert jobs.ran == [job.job_id for job, _ in sweep.pending_work(plan, set())]
    assert len(set(jobs.ran)) == len(plan.jobs) == 3 and jobs.ran != [job.job_id for job in plan.jobs]
    assert (report.computed, report.complete, report.failed_jobs) == (len(plan.cells), True, [])
    location = store.locate(results)
    assert store.done_cell_ids(location) == {cell.cell_id for cell in plan.cells}
    [fragment] = store.fragments(location)  # one per job, compacted when the launch ended
    assert "-compacted-" in fragment and (tmp_path / "r" / store.DIAGNOSTICS_FILE).exists()
    [launch] = store.launches(location)
    assert set(store.read(location, ["launch_id"]).table.column("launch_id").to_pylist()) == {launch["launch_id"]}

    jobs.ran.clear()
    again = sweep.launch(plan, results, runner=InProcessRunner())
    assert (jobs.ran, again.computed, again.already_done) == ([], 0, len(plan.cells))
    extended = _plan(tmp_path, tiny_grid, ["attacks.fgsm.eps=[0.1, 0.2, 0.3]"])
    more = sweep.launch(extended, results, runner=InProcessRunner())
    new = {cell.cell_id for cell in extended.cells} - {cell.cell_id for cell in plan.cells}
    assert (more.computed, len(new), sorted(jobs.ran)) == (3, 3, sorted(job.job_id for job in plan.jobs))
    assert store.done_cell_ids(location) == {cell.cell_id for cell in extended.cells}


def test_the_runner_stops_after_the_waves_garbage_is_freed_and_with_the_collector_paused(tmp_path, tiny_grid,
                                                                                          monkeypatch):
    # Ray's shutdown runs in the background while the store is compacted. A Ray reference
    # the collector frees meanwhile (Tune's leftovers are cycles) makes Ray exit the process
    # with code 1 after every row was computed; freed before, it is released normally.
    import gc

    from tests.test_background import tracked_cycle

    monkeypatch.setattr("sweeper.run.runners.run_job", _Jobs())
    seen: dict = {}

    class Runner(InProcessRunner):
        def run(self, *args):
            leftover, seen["freed"] = tracked_cycle()  # noqa: F841  (garbage once the wave returns, as its leftovers are)
            return super().run(*args)

        def stop(self):
            seen["at stop"] = (seen["freed"][0], gc.isenabled())

    report = sweep.launch(_plan(tmp_path, tiny_grid), str(tmp_path / "r"), runner=Runner())
    assert report.complete
    assert seen["at stop"] == (True, False)  # freed before the stop; no collection during it
    assert gc.isenabled()


def test_a_failed_job_is_one_line_its_finished_rows_are_kept_and_the_others_run(tmp_path, tiny_grid, monkeypatch):
    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    broken = plan.jobs[1]
    jobs = _Jobs(failing={broken.job_id})
    monkeypatch.setattr("sweeper.run.runners.run_job", jobs)
    report = sweep.launch(plan, results, runner=InProcessRunner())
    assert report.failed_jobs == [f"digits/small_cnn/{broken.quantizer}/fold 0: ValueError: the job broke"]
    assert len(jobs.ran) == 3 and not report.complete
    per_job = len(plan.cells_of(broken.job_id))
    assert report.computed == len(plan.cells) - per_job + 1  # the broken job's first row is a real result
    assert len(store.done_cell_ids(store.locate(results))) == report.computed


def test_a_refused_write_stops_the_in_process_sweep(tmp_path, tiny_grid, monkeypatch):
    """A job whose write the store refuses (a full disk) stops the sweep: the next jobs
    would fail at the same write. The launch raises it, for the CLI's one line."""
    import errno

    plan, results = _plan(tmp_path, tiny_grid), str(tmp_path / "r")
    first = sweep.pending_work(plan, set())[0][0]
    full = OSError(errno.ENOSPC, "No space left on device", f"{results}/models/{first.job_id}.weights.h5")
    jobs = _Jobs(failing={first.job_id}, raising=full)
    monkeypatch.setattr("sweeper.run.runners.run_job", jobs)
    with pytest.raises(OSError) as raised:
        sweep.launch(plan, results, runner=InProcessRunner())
    assert raised.value is full and jobs.ran == [first.job_id]
    assert len(store.done_cell_ids(store.locate(results))) == 1  # what it finished before is kept


def test_a_failed_job_is_summarised_by_its_telling_line():
    from sweeper.run.rows import error_summary

    wrapped = ("Failure # 1\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
               "AssertionError: Exception encountered when calling layer 'q_activation'.\n"
               "    AssertionError: \n  Call arguments received:\n  \u2022 mask=None")
    assert error_summary(RuntimeError(wrapped)) == \
        "AssertionError: Exception encountered when calling layer 'q_activation'."
    assert error_summary(ValueError("boom")) == "ValueError: boom"
    assert error_summary(KeyError()) == "KeyError"

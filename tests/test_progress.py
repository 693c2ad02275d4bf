"""The sweep's progress (sweeper/run/progress.py): its first time left is the cost model's
estimate of the pending work, not one cold cell's rate, and it blends toward the measured
rate as cells finish. No TensorFlow, no Ray."""

from __future__ import annotations

import dataclasses
import io

import pytest
from rich.console import Console

from conftest import write_grid


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    from sweeper.run import progress

    fake = _Clock()
    monkeypatch.setattr(progress.time, "monotonic", fake)
    return fake


def test_the_first_estimate_comes_from_the_cost_model_then_blends_to_the_measured_rate(clock):
    from sweeper.run.progress import CellProgress, Estimate

    out = io.StringIO()
    with CellProgress(Console(file=out), total=110, done=10, estimate=Estimate(500.0, settle_cells=10)) as bar:
        assert bar.seconds_left() == (500.0, "estimated")
        assert "cells 10/110 (starting, about 500s left (estimated))" in out.getvalue()
        clock.now += 100.0  # one cold cell (a training): 100 s
        bar.advance()
        seconds, source = bar.seconds_left()
        # measured alone: 99 cells x 100 s = 9900 s; the model: 500 x 99/100; weight 1/11
        assert source == "blended"
        assert seconds == pytest.approx(10 / 11 * 495.0 + 1 / 11 * 9900.0)
        for _ in range(89):
            clock.now += 2.0
            bar.advance()
        seconds, _ = bar.seconds_left()
        measured = (100.0 + 89 * 2.0) / 90 * 10
        assert abs(seconds - measured) < abs(seconds - 500.0 * 10 / 100)  # the measured rate dominates


def test_without_an_estimate_the_time_left_is_measured(clock):
    from sweeper.run.progress import CellProgress

    with CellProgress(Console(file=io.StringIO()), total=4, done=0) as bar:
        assert bar.seconds_left() == (None, "unknown")
        clock.now += 10.0
        bar.advance()
        assert bar.seconds_left() == (pytest.approx(30.0), "measured")


def test_a_launch_starts_with_the_cost_models_time_for_its_pending_work(tmp_path, tiny_grid):
    """The estimate the driver gives the progress: both waves' makespan by the cost model on
    the runner's workers (one in process), seen before any cell is done."""
    from sweeper.plan import cost, expand, grid
    from sweeper.run import sweep
    from sweeper.run.runners import InProcessRunner

    class Idle(InProcessRunner):  # runs nothing: only the estimate before the first cell matters
        def run(self, plan, work, data, context, rows, wave):
            return [f"not run: {len(work)} jobs"]

    tiny_grid["folds"] = {"k": 3}
    counted = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)), fingerprints=False)
    plan = dataclasses.replace(counted, fingerprinted=True)  # ids need no fingerprint here: nothing trains
    out = io.StringIO()
    report = sweep.launch(plan, str(tmp_path / "store"), runner=Idle(), console=Console(file=out))
    assert report.computed == 0 and len(report.failed_jobs) == 1
    expected = sum(cost.job_seconds(job, plan.cells_of(job.job_id)) for job in plan.jobs)  # one worker
    first = out.getvalue().splitlines()[0]
    assert first == f"cells 0/{len(plan.cells)} (starting, about {expected:.0f}s left (estimated))"
    assert expected > 0  # an estimate, not a placeholder

    first_wave = sweep.pending_work(plan, set())
    two_workers = sweep.estimated(first_wave, [], slots=2)
    assert two_workers.seconds == pytest.approx(cost.makespan([cost.job_seconds(j, c) for j, c in first_wave], 2))
    assert two_workers.seconds < expected and two_workers.settle_cells == sum(len(c) for _, c in first_wave[:2])

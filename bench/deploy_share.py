"""Benchmark: what deployment (int8 conversion, arena search, running the .tflite on
every cell) adds to a sweep's work.

Runs every job of a grid twice in this process, alternating job by job so that the
machine's noise falls on both: once as the trial runs them, and once with the
deployment step replaced by "not deployable" (no conversion, no arena search, no .tflite
predictions). Prints both totals and the share deployment adds. The issue's target for
the demo grid is under 10%.

    python bench/deploy_share.py [GRID] [--set key=value ...]     (default grid: grids/demo.yaml)
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sweeper import datasets, deploy  # noqa: E402
from sweeper.plan import expand, grid  # noqa: E402
from sweeper.run import trial  # noqa: E402


def _undeployed(job, model, x_train, cache):
    return deploy.Deployment(error="skipped by bench/deploy_share.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default=str(ROOT / "grids" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    plan = expand.expand(grid.load(args.grid, args.set))
    data = datasets.load_all(plan.grid.data_dir, [job.dataset_key for job in plan.jobs])
    context = trial.JobContext(plan.grid.name, plan.grid.mcus, model_cache=None)
    real = trial.deploy_once
    seconds = {"with deployment": 0.0, "without": 0.0}
    deploy_s = 0.0
    for job in plan.jobs:
        for label, step in (("with deployment", real), ("without", _undeployed)):
            trial.deploy_once = step
            rows: list[dict] = []
            started = time.perf_counter()
            trial.run_job(job, plan.cells_of(job.job_id), data[job.dataset_key], context, rows.append)
            seconds[label] += time.perf_counter() - started
            if label == "with deployment":
                deploy_s += rows[0]["deploy_s"]
    trial.deploy_once = real
    with_s, without_s = seconds["with deployment"], seconds["without"]
    print(f"{len(plan.jobs)} jobs, {len(plan.cells)} cells of {plan.grid.name}")
    print(f"  with deployment     {with_s:8.1f} s")
    print(f"  without             {without_s:8.1f} s")
    print(f"  of which conversion + arena search (deploy_s)  {deploy_s:.1f} s")
    print(f"deployment adds {with_s / without_s - 1:.1%} to the trials' work "
          f"(conversion + arena search alone: {deploy_s / without_s:.1%})")


if __name__ == "__main__":
    main()

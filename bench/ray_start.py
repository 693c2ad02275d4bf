"""Benchmark: what a job runtime_env costs a local Ray instance's start and first trials.

``sweeper launch`` without ``--address`` starts its own Ray. Its workers inherit the
driver's environment, which already holds ``sweeper.WORKER_ENV``; passing the same
variables as the job's ``runtime_env`` (what a cluster needs) makes the raylet start the
job's workers through its runtime-env agent. This bench starts a local instance (2 CPUs)
each way, ``--rounds`` times alternating, with the trials' shape (one placement group of
one CPU per actor, as Tune's), and prints per way the median of: ``ray.init``'s seconds,
and the seconds from asking for two actors to both answering, with the age of their
worker processes then (a prestarted worker is older than the request), and whether the
actors saw ``TF_USE_LEGACY_KERAS``. Between ``ray.init`` and the actors it waits
``--gap`` seconds, the driver's own work before its first wave (default 0.5).

    python bench/ray_start.py [--rounds 3] [--gap 0.5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sweeper  # noqa: E402,F401  (sets WORKER_ENV in this process's environment)
from sweeper import WORKER_ENV  # noqa: E402


def one_start(runtime_env: dict | None, gap: float) -> tuple[float, float, float, bool]:
    import ray
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    init_s = time.perf_counter() - started
    time.sleep(gap)

    @ray.remote
    class Probe:
        def info(self):
            import psutil

            return psutil.Process().create_time(), os.environ.get("TF_USE_LEGACY_KERAS")

    asked, asked_wall = time.perf_counter(), time.time()
    groups = [placement_group([{"CPU": 1}]) for _ in range(2)]
    ray.get([group.ready() for group in groups])
    actors = [Probe.options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0)).remote() for group in groups]
    infos = ray.get([actor.info.remote() for actor in actors])
    ready_s = time.perf_counter() - asked
    ray.shutdown()
    age = min(asked_wall - created for created, _ in infos)  # > 0: the worker was there before
    return init_s, ready_s, age, all(env == WORKER_ENV["TF_USE_LEGACY_KERAS"] for _, env in infos)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.5)
    args = parser.parse_args()
    ways = {"runtime_env (before)": {"env_vars": dict(WORKER_ENV)}, "inherited (sweeper's local Ray)": None}
    figures: dict[str, list[tuple]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, runtime_env in ways.items():
            figures[name].append(one_start(runtime_env, args.gap))
    for name, rows in figures.items():
        init_s, ready_s, age = (statistics.median(row[i] for row in rows) for i in range(3))
        print(f"{name:32s}: ray.init {init_s:5.2f} s; two actors ready {ready_s:5.2f} s after asking, "
              f"their workers started {age:+.2f} s before the request; "
              f"WORKER_ENV seen: {all(row[3] for row in rows)}")
    before, after = ([statistics.median(row[i] for row in rows) for i in (0, 1)] for rows in figures.values())
    (b_init, b_ready), (a_init, a_ready) = before, after
    print(f"start to first trials: {b_init + args.gap + b_ready:.2f} s -> {a_init + args.gap + a_ready:.2f} s "
          f"({(b_init + b_ready) - (a_init + a_ready):+.2f} s; median of {args.rounds})")


if __name__ == "__main__":
    main()

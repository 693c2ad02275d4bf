"""Benchmark: how a local Ray instance starts its first trials' workers.

``sweeper launch`` without ``--address`` starts its own Ray. Its workers inherit the
driver's environment, which already holds ``sweeper.WORKER_ENV``; a cluster needs the same
variables as the job's ``runtime_env``. Tune gives its trial actors a ``runtime_env`` of
their own (``PL_DISABLE_FORK``: ``ray.tune.execution.class_cache``), so a worker Ray
prestarts without one (for the first driver, one per CPU) can never take a trial. This
bench starts a local instance (2 CPUs) each way, ``--rounds`` times alternating: the job
``runtime_env`` with Ray's prestart; inherited, with Ray's prestart; inherited without it;
sweeper's local Ray (``ray_cluster.OWN_SYSTEM_CONFIG``: no prestart, and the raylet retries
its connection to the object store every 0.1 s instead of every second). With the trials'
shape (one placement group of one CPU per actor, the actor class registered by Tune's own
class cache) it prints per way the median of: ``ray.init``'s seconds (with their mean and
range: Ray's one-second retries show as steps), the seconds from asking for two actors to
both answering, how many of them run on a worker Ray had started before the request
(prestarted), the worker processes Ray started in all (two took the trials: the others
booted for nothing), and whether the actors saw ``TF_USE_LEGACY_KERAS``. Between
``ray.init`` and the actors it waits ``--gap`` seconds, the driver's own work before its
first wave (default 0.5).

    python bench/ray_start.py [--rounds 3] [--gap 0.5]
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sweeper  # noqa: E402,F401  (sets WORKER_ENV in this process's environment)
from sweeper import WORKER_ENV  # noqa: E402
from sweeper.run.ray_cluster import OWN_SYSTEM_CONFIG  # noqa: E402


class Probe:
    """A trial actor's stand-in."""

    def info(self):
        return os.getpid(), os.environ.get("TF_USE_LEGACY_KERAS")


def one_start(runtime_env: dict | None, system_config: dict, gap: float) -> tuple[float, float, float, int, bool]:
    import ray
    from ray.tune.execution.class_cache import _ActorClassCache
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    started = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=runtime_env,
             _system_config=system_config or None)
    init_s = time.perf_counter() - started
    time.sleep(gap)
    trial_actor = _ActorClassCache().get(Probe)  # as Tune registers a trainable: with its runtime_env

    logs = ray._private.worker._global_node.get_logs_dir_path()
    before = _worker_pids(logs)  # the workers Ray started before the request (prestarted)
    asked = time.perf_counter()
    groups = [placement_group([{"CPU": 1}]) for _ in range(2)]
    ray.get([group.ready() for group in groups])
    actors = [trial_actor.options(num_cpus=1, scheduling_strategy=PlacementGroupSchedulingStrategy(
        placement_group=group, placement_group_bundle_index=0)).remote() for group in groups]
    infos = ray.get([actor.info.remote() for actor in actors])
    ready_s = time.perf_counter() - asked
    started_workers = len(_worker_pids(logs))
    ray.shutdown()
    prestarted_took = sum(pid in before for pid, _ in infos)
    return init_s, ready_s, prestarted_took, started_workers, all(env == WORKER_ENV["TF_USE_LEGACY_KERAS"] for _, env in infos)


def _worker_pids(logs: str) -> set[int]:
    """The pids of the worker processes Ray started so far (one log file each:
    worker-<id>-<job>-<pid>.err)."""
    return {int(os.path.basename(path)[:-4].rsplit("-", 1)[1]) for path in glob.glob(os.path.join(logs, "worker-*.err"))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gap", type=float, default=0.5)
    args = parser.parse_args()
    ways = {"job runtime_env, prestart": ({"env_vars": dict(WORKER_ENV)}, {}),
            "inherited, prestart": (None, {}),
            "inherited, no prestart": (None, {"prestart_worker_first_driver": False}),
            "sweeper's local Ray": (None, dict(OWN_SYSTEM_CONFIG))}
    figures: dict[str, list[tuple]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, (runtime_env, system_config) in ways.items():
            figures[name].append(one_start(runtime_env, system_config, args.gap))
    for name, rows in figures.items():
        init_s, ready_s, prestarted, workers = (statistics.median(row[i] for row in rows) for i in range(4))
        inits = [row[0] for row in rows]
        spread = f"mean {statistics.mean(inits):.2f}, {min(inits):.2f}-{max(inits):.2f}"
        print(f"{name:24s}: ray.init {init_s:5.2f} s ({spread}); two actors ready {ready_s:5.2f} s after asking, "
              f"on {prestarted:g} prestarted workers; worker processes started {workers:g}; "
              f"WORKER_ENV seen: {all(row[4] for row in rows)}")
    print(f"start to first trials (ray.init + gap + actors ready), median of {args.rounds}: " + ", ".join(
        f"{name} {statistics.median(row[0] + args.gap + row[1] for row in rows):.2f} s" for name, rows in figures.items()))


if __name__ == "__main__":
    main()

"""Benchmark: how long sweeper's own local Ray takes to stop at the end of a launch.

``ray.shutdown`` stops the raylet, then the GCS, then the other processes it started, one
at a time, each given a second after SIGTERM. Ray's autoscaler monitor answers SIGTERM by
reporting to the GCS, which is already gone, so it holds the shutdown until Ray kills it.
``sweeper.run.ray_cluster.shutdown_own`` kills the monitor first (a local instance never
scales). Each round starts sweeper's local Ray (``init_ray``), runs two trial actors
registered as Tune registers trainables, each with TensorFlow imported and a model built
(a trial's worker at the end of a wave), then stops it one way, alternating ways. It prints
the seconds per round, the median per way and their ratio, and how many of the processes
Ray started were still running afterwards (must be 0 both ways).

    python bench/ray_stop.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import sweeper  # noqa: E402,F401  (WORKER_ENV for the workers)
from sweeper.run import processes  # noqa: E402


class Trial:
    """A trial's worker at the end of a wave: TensorFlow imported, a model built."""

    def ready(self):
        from sweeper import models
        from sweeper.models.quantizers import QUANTIZERS

        self.model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get("int8"))
        return os.getpid()


def one_stop(own_way: bool) -> tuple[float, int]:
    """Seconds to stop, and how many of this process's children still run afterwards."""
    import ray
    from ray.tune.execution.class_cache import _ActorClassCache

    from sweeper.run import ray_cluster

    assert ray_cluster.init_ray(None, verbose=False)
    actors = [_ActorClassCache().get(Trial).options(num_cpus=1).remote() for _ in range(2)]
    ray.get([actor.ready.remote() for actor in actors])
    started = time.perf_counter()
    if own_way:
        ray_cluster.shutdown_own()
    else:
        ray.shutdown()
    return time.perf_counter() - started, len(processes.children())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    rounds = parser.parse_args().rounds
    seconds = {False: [], True: []}
    left = {False: 0, True: 0}
    for index in range(rounds):
        for own_way in (False, True) if index % 2 == 0 else (True, False):
            took, still = one_stop(own_way)
            seconds[own_way].append(took)
            left[own_way] += still
            print(f"round {index + 1}: {'shutdown_own' if own_way else 'ray.shutdown'} {took:.2f} s, "
                  f"{still} of its processes left running", flush=True)
    plain, own = statistics.median(seconds[False]), statistics.median(seconds[True])
    print(f"median ray.shutdown() {plain:.2f} s, shutdown_own() {own:.2f} s: {plain / own:.1f}x "
          f"({plain - own:.2f} s less per launch)")
    print(f"processes left running after the stop, all rounds: ray.shutdown {left[False]}, shutdown_own {left[True]}")
    if left[True] or left[False]:
        sys.exit("FAIL: a stop left processes running")


if __name__ == "__main__":
    main()

"""Sweeper's own local Ray (``sweeper.run.ray_cluster.init_ray``), started for real in a
child process: every worker process it starts is one a trial runs on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Start sweeper's local Ray, wait as the driver does before its first wave, ask for two
# trial actors registered as Tune registers trainables (its class cache gives them Tune's
# runtime_env), and compare the worker processes Ray started (a log file each,
# worker-<id>-<job>-<pid>.err) with the ones the actors run in.
CHILD = """
import glob, json, os, time
import ray
from ray.tune.execution.class_cache import _ActorClassCache
from sweeper.run import ray_cluster

assert ray_cluster.init_ray(None, verbose=False)
time.sleep(1.5)  # a prestarted worker would be up by now


class Trial:
    def pid(self):
        return os.getpid()


actors = [_ActorClassCache().get(Trial).options(num_cpus=1).remote() for _ in range(2)]
trial_pids = ray.get([actor.pid.remote() for actor in actors])
logs = ray._private.worker._global_node.get_logs_dir_path()
started = [int(os.path.basename(path)[:-4].rsplit("-", 1)[1]) for path in glob.glob(os.path.join(logs, "worker-*.err"))]
ray.shutdown()
print(json.dumps({"trials": sorted(trial_pids), "started": sorted(started)}))
"""


@pytest.mark.slow
@pytest.mark.e2e
def test_the_local_ray_starts_no_worker_that_a_trial_cannot_use():
    # Ray prestarts one worker per CPU for the first driver, without a runtime_env; Tune's
    # trials have one, so those workers only booted beside the trials' own (bench/ray_start.py).
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(seen["trials"]) == 2 and seen["started"] == seen["trials"], seen

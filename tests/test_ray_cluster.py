"""Sweeper's own local Ray (``sweeper.run.ray_cluster``), started and stopped for real in a
child process: every worker process it starts is one a trial runs on, and its stop kills
Ray's autoscaler monitor first and leaves nothing running."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Start sweeper's local Ray, wait as the driver does before its first wave, ask for two
# trial actors registered as Tune registers trainables (its class cache gives them Tune's
# runtime_env), and compare the worker processes Ray started (a log file each,
# worker-<id>-<job>-<pid>.err) with the ones the actors run in. Then stop it as a launch
# does, the monitor first, and list this process's children still running.
CHILD = """
import glob, json, os, time
import ray
from ray.tune.execution.class_cache import _ActorClassCache
from sweeper.run import processes, ray_cluster

assert ray_cluster.init_ray(None, verbose=False)
system_config = ray._private.state.state.get_system_config()  # as the GCS gives it to every process
own_config = {key: system_config.get(key) for key in ray_cluster.OWN_SYSTEM_CONFIG}
time.sleep(1.5)  # a prestarted worker would be up by now


class Trial:
    def pid(self):
        return os.getpid()


actors = [_ActorClassCache().get(Trial).options(num_cpus=1).remote() for _ in range(2)]
trial_pids = ray.get([actor.pid.remote() for actor in actors])
logs = ray._private.worker._global_node.get_logs_dir_path()
started = [int(os.path.basename(path)[:-4].rsplit("-", 1)[1]) for path in glob.glob(os.path.join(logs, "worker-*.err"))]

monitors = ray_cluster.stop_monitor()
deadline = time.monotonic() + 5  # SIGKILL lands within milliseconds; bounded, not timed
while set(monitors) & set(processes.children()) and time.monotonic() < deadline:
    time.sleep(0.01)
monitors_running = sorted(set(monitors) & set(processes.children()))
ray_cluster.shutdown_own()
left = sorted(processes.children())
print(json.dumps({"trials": sorted(trial_pids), "started": sorted(started), "monitors": monitors,
                  "monitors_running": monitors_running, "left": left, "own_config": own_config}))
"""


@pytest.fixture(scope="module")
def local_ray() -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.e2e
def test_the_local_ray_starts_no_worker_that_a_trial_cannot_use(local_ray):
    # Ray prestarts one worker per CPU for the first driver, without a runtime_env; Tune's
    # trials have one, so those workers only booted beside the trials' own (bench/ray_start.py).
    assert len(local_ray["trials"]) == 2 and local_ray["started"] == local_ray["trials"], local_ray


@pytest.mark.slow
@pytest.mark.e2e
def test_the_local_ray_runs_with_sweepers_configuration(local_ray):
    # Among them the raylet's connection to its object store retried every 0.1 s, not every
    # second: with Ray's default, about half of the starts took a second longer
    # (bench/ray_start.py). Ray refuses a key it does not know, so a renamed one fails here.
    assert local_ray["own_config"] == {"prestart_worker_first_driver": False,
                                       "raylet_client_connect_timeout_milliseconds": 100,
                                       "raylet_client_num_connect_attempts": 100}, local_ray


@pytest.mark.slow
@pytest.mark.e2e
def test_the_local_ray_stops_its_monitor_first_and_leaves_nothing_running(local_ray):
    # ray.shutdown stops the GCS before the monitor, whose SIGTERM handler then holds the
    # shutdown a second (bench/ray_stop.py). Exactly one monitor must be found among the
    # driver's children: none found (a Ray that names or starts it otherwise) would bring
    # the wait back unseen. Killing it must not keep Ray's shutdown from ending the rest.
    assert len(local_ray["monitors"]) == 1, local_ray
    assert local_ray["monitors_running"] == [], local_ray
    assert local_ray["left"] == [], local_ray

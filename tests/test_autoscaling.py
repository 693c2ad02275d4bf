"""Autoscaling on one machine: Ray's fake multi-node autoscaler with a head that cannot
run trials (0 CPUs). The sweep must complete, worker nodes must be added while trials are
pending, and removed once idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sweeper import store
from sweeper.plan import expand, grid
from tests.conftest import write_grid

pytestmark = pytest.mark.slow

MAX_WORKERS = 2


def _fake_cluster_config(head_resources: dict, worker_node_types: dict) -> dict:
    """What ray/autoscaler/_private/fake_multi_node/example.yaml would hold: the wheel
    lacks that file, so AutoscalingCluster cannot build its config without this."""
    return {
        "cluster_name": "sweeper-fake",
        "max_workers": MAX_WORKERS,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.05,  # 3 s: idle workers go quickly
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": {
            **worker_node_types,
            "ray.head.default": {"resources": head_resources, "node_config": {}, "max_workers": 0},
        },
        "head_node_type": "ray.head.default",
        "docker": {}, "auth": {}, "file_mounts": {}, "cluster_synced_files": [],
        "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
        "initialization_commands": [], "setup_commands": [], "head_setup_commands": [],
        "worker_setup_commands": [], "head_start_ray_commands": [], "worker_start_ray_commands": [],
    }


@pytest.fixture
def autoscaling_cluster(monkeypatch):
    from ray.cluster_utils import AutoscalingCluster

    class Cluster(AutoscalingCluster):
        def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **kw):
            return _fake_cluster_config(head_resources, worker_node_types)

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    monkeypatch.setenv("AUTOSCALER_UPDATE_INTERVAL_S", "1")  # Ray's 5 s: nodes come and go sooner
    cluster = Cluster(head_resources={"CPU": 0},
                      worker_node_types={"cpu_worker": {
                          "resources": {"CPU": 1, "object_store_memory": 200_000_000},
                          "node_config": {}, "min_workers": 0, "max_workers": MAX_WORKERS}})
    cluster.start()
    try:
        yield
    finally:
        cluster.shutdown()


def _alive_workers() -> int:
    import ray

    return sum(1 for node in ray.nodes() if node["Alive"]) - 1  # minus the head


@pytest.mark.e2e
@pytest.mark.serial
def test_workers_are_added_for_pending_trials_and_removed_when_idle(tmp_path, tiny_grid,
                                                                   autoscaling_cluster):
    import ray

    path = write_grid(tmp_path, tiny_grid)
    plan = expand.expand(grid.load(path))
    results = tmp_path / "results"
    ray.init(address="auto", logging_level="ERROR")
    try:
        assert _alive_workers() == 0
        process = subprocess.Popen([sys.executable, "-m", "sweeper", "launch", str(path), "--results",
                                    str(results), "--address", "auto"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=os.environ.copy())
        most = 0
        while process.poll() is None:
            most = max(most, _alive_workers())
            time.sleep(0.5)
        stdout, stderr = process.communicate()
        assert process.returncode == 0, stderr[-3000:]
        assert most >= 1, "no worker node was ever added"
        deadline = time.monotonic() + 120
        while _alive_workers() > 0 and time.monotonic() < deadline:
            time.sleep(1)
        assert _alive_workers() == 0, "idle worker nodes were not removed"
    finally:
        ray.shutdown()
    rows = store.read(store.locate(str(results))).table.to_pylist()
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in plan.cells)
    assert len({r["node"] for r in rows}) >= 1

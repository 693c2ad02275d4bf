"""Beyond one Ray node, on this machine: a head and a second node started as separate
`ray start` processes (started once for the module's tests), sweeps launched on them with
--address, the bytes of datasets each node pulled, and a worker killed mid-trial. Real Ray
processes throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from sweeper import datasets, store
from sweeper.plan import expand, grid
from tests.conftest import launch_until_first_fragment, write_grid
from tests.data_formats import write_cifar10

pytestmark = pytest.mark.slow

# Nodes sharing one machine must agree on auth and must not each claim all its memory.
RAY_ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
NODE_LIMITS = ["--num-cpus=1", "--memory=3000000000", "--object-store-memory=300000000"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray(*args: str) -> None:
    subprocess.run(["ray", *args], env=RAY_ENV, check=True, capture_output=True, timeout=180)


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node, one CPU each, shared by this module's tests (each test's
    sweep has ended before the next starts)."""
    port = _free_port()
    _ray("start", "--head", f"--port={port}", "--include-dashboard=false", *NODE_LIMITS)
    try:
        _ray("start", f"--address=127.0.0.1:{port}", *NODE_LIMITS)
        yield f"127.0.0.1:{port}"
    finally:
        _ray("stop")


def _launch(path, results, address) -> None:
    run = subprocess.run([sys.executable, "-m", "sweeper", "launch", str(path), "--results",
                          str(results), "--address", address], env=RAY_ENV, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


def created_bytes_per_node(address: str) -> tuple[str, dict[str, int]]:
    """(the node a driver on this machine connects to, {node id: bytes created in its
    object store since it started}); a test takes the difference across its sweep. A node creates an object when a driver on it puts
    one, and when it pulls a copy of one from another node: on a node without a driver,
    these are the bytes it pulled. Ray connects a driver to the head when several nodes
    share the host, so the sweep's driver put its datasets there."""
    import ray
    from ray._private.internal_api import node_stats

    ray.init(address=address, include_dashboard=False, logging_level="ERROR")
    try:
        nodes = [node for node in ray.nodes() if node["Alive"]]
        return ray.get_runtime_context().get_node_id(), {
            node["NodeID"]: node_stats(node["NodeManagerAddress"], node["NodeManagerPort"],
                                       include_memory_info=False).store_stats.cumulative_created_bytes
            for node in nodes}
    finally:
        ray.shutdown()


# Serialisation headers and the trial's small parameters (jobs, cells): well under the
# smallest dataset here, so a dataset pulled that should not be cannot hide in it.
SLACK = 200_000


def _nbytes(data) -> int:
    return sum(a.nbytes for a in (data.x, data.y, data.groups) if a is not None)


@pytest.mark.e2e
@pytest.mark.serial
def test_a_sweep_uses_both_nodes_and_each_pulls_only_the_datasets_its_trials_train_on(
        tmp_path, tiny_grid, two_nodes, monkeypatch):
    # Two datasets of very different sizes (digits ~0.46 MB, a generated CIFAR-10 ~2.9 MB),
    # one training job each: with one CPU per node, each node trains one of them.
    write_cifar10(tmp_path / "data", per_batch=40, learnable=True)
    tiny_grid.update(datasets=["digits", "cifar10"], quantizers=["fp"], data_dir=str(tmp_path / "data"),
                     attacks=[{"name": "fgsm", "norm": "inf", "eps": [0.1]}])
    path = write_grid(tmp_path, tiny_grid)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    _, before = created_bytes_per_node(two_nodes)  # the module's earlier sweeps created some
    _launch(path, tmp_path / "results", two_nodes)
    rows = store.read(store.locate(str(tmp_path / "results"))).table.to_pylist()
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in expand.expand(grid.load(path)).cells)
    used: dict[str, set[str]] = {}
    for row in rows:
        used.setdefault(row["node"], set()).add(row["dataset"])
    size = {name: _nbytes(datasets.load(name, tmp_path / "data")) for name in ("digits", "cifar10")}

    driver_node, after = created_bytes_per_node(two_nodes)
    created = {node: after[node] - before.get(node, 0) for node in after}
    for node, bytes_created in created.items():  # the figures, for `pytest -s`
        print(f"\nnode {node[:8]}{' (driver)' * (node == driver_node)}: trained "
              f"{sorted(used.get(node, ()))}, {bytes_created:,} bytes created; datasets {size}")
    assert len(used) == 2  # both nodes trained and attacked models, so each pulled for itself
    # The driver's node holds each dataset once, put there as one object each.
    assert sum(size.values()) <= created[driver_node] < sum(size.values()) + SLACK
    for node, bytes_created in created.items():
        if node != driver_node:  # what this node pulled: its own datasets, nothing else
            expected = sum(size[name] for name in used.get(node, ()))
            assert expected <= bytes_created < expected + SLACK, (node, used.get(node))


def _trial_actor_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


@pytest.mark.e2e
@pytest.mark.serial
def test_a_killed_worker_is_retried_and_every_cell_stored_once(tmp_path, tiny_grid, two_nodes):
    # two folds of fp and int4: 4 jobs, twice the two nodes' slots, so that trials are still
    # running when the first is stored, for the test to hurt
    tiny_grid.update(folds={"k": 2})
    path = write_grid(tmp_path, tiny_grid)
    plan = expand.expand(grid.load(path))
    results = tmp_path / "results"
    process = launch_until_first_fragment(path, results, "--address", two_nodes, env=RAY_ENV)
    victims = _trial_actor_pids()
    assert victims, "no trial actor process found"
    os.kill(victims[0], signal.SIGKILL)  # a worker dies mid-trial
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    cells = store.read(store.locate(str(results)), ["cell_id"]).table.column("cell_id").to_pylist()
    assert sorted(cells) == sorted(c.cell_id for c in plan.cells)
    assert store.check(store.locate(str(results))).healthy  # no cell stored twice

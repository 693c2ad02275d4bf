"""Beyond one Ray node, on this machine: a head and a second node started as separate
`ray start` processes, a sweep launched on them with --address, and a worker killed
mid-trial. Real Ray processes throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from sweeper import expand, grid, store
from tests.conftest import launch_until_first_fragment, write_grid

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


@pytest.fixture
def two_nodes():
    port = _free_port()
    _ray("start", "--head", f"--port={port}", "--include-dashboard=false", *NODE_LIMITS)
    try:
        _ray("start", f"--address=127.0.0.1:{port}", *NODE_LIMITS)
        yield f"127.0.0.1:{port}"
    finally:
        _ray("stop")


def _six_job_grid(tmp_path, tiny_grid):
    tiny_grid["folds"] = {"k": 3}
    path = write_grid(tmp_path, tiny_grid)
    return path, expand.expand(grid.load(path))


def test_sweep_on_two_nodes_uses_both(tmp_path, tiny_grid, two_nodes):
    path, plan = _six_job_grid(tmp_path, tiny_grid)
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "sweeper", "launch", str(path), "--results",
                          str(results), "--address", two_nodes], env=RAY_ENV, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    rows = store.read(store.locate(str(results))).table.to_pylist()
    assert sorted(r["cell_id"] for r in rows) == sorted(c.cell_id for c in plan.cells)
    assert len({r["node"] for r in rows}) == 2  # both nodes trained and attacked models


def _trial_actor_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_killed_worker_is_retried_and_every_cell_stored_once(tmp_path, tiny_grid):
    path, plan = _six_job_grid(tmp_path, tiny_grid)
    results = tmp_path / "results"
    process = launch_until_first_fragment(path, results)
    victims = _trial_actor_pids()
    assert victims, "no trial actor process found"
    os.kill(victims[0], signal.SIGKILL)  # a worker dies mid-trial
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
    cells = store.read(store.locate(str(results)), ["cell_id"]).table.column("cell_id").to_pylist()
    assert sorted(cells) == sorted(c.cell_id for c in plan.cells)
    assert store.check(store.locate(str(results))).healthy  # no cell stored twice

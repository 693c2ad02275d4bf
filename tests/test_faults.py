"""Faults, as users meet them: a torn fragment, Ctrl-C, and a killed driver. Results
already stored are never lost or recomputed, and rerunning the same command finishes the
grid with exactly one row per cell."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from sweeper import expand, grid, store
from tests.conftest import launch_until_first_fragment, write_grid
from tests.test_cli import sweeper

pytestmark = pytest.mark.slow


def _six_jobs(tmp_path: Path, tiny_grid: dict) -> tuple[Path, Path, int]:
    tiny_grid["folds"] = {"k": 3}
    path = write_grid(tmp_path, tiny_grid)
    return path, tmp_path / "results", len(expand.expand(grid.load(path)).cells)


def _rows(results: Path) -> list[str]:
    return store.read(store.locate(str(results)), ["cell_id"]).table.column("cell_id").to_pylist()


def _launch_and_signal(path: Path, results: Path, signum: int) -> subprocess.CompletedProcess:
    """Start a launch, wait for its first stored fragment, then send it a signal."""
    process = launch_until_first_fragment(path, results)
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_torn_fragment_is_reported_and_its_cells_recomputed(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    results = tmp_path / "results"
    assert sweeper("launch", str(path), "--results", str(results)).returncode == 0
    victim = sorted(results.glob("rows/part-*.parquet"))[0]
    lost = len(store._read_fragment(store.locate(str(results)), str(victim), ["cell_id"]))
    victim.write_bytes(victim.read_bytes()[:300])  # a crash mid-write

    checked = sweeper("check", str(results))
    assert checked.returncode == 1 and f"damaged: {victim}" in checked.stdout
    assert len(_rows(results)) == 8 - lost  # reading still works

    again = sweeper("launch", str(path), "--results", str(results))
    assert again.returncode == 0, again.stderr
    assert f"computed {lost} cells with 0 trainings" in again.stdout  # the model was cached
    assert "set aside" in again.stderr
    assert sorted(_rows(results)) == sorted(c.cell_id for c in expand.expand(grid.load(path)).cells)
    assert sweeper("check", str(results)).returncode == 0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGKILL, -signal.SIGKILL)])
def test_interrupted_launch_resumes_without_recomputing(tmp_path, tiny_grid, signum, code):
    path, results, total = _six_jobs(tmp_path, tiny_grid)
    stopped = _launch_and_signal(path, results, signum)
    assert stopped.returncode == code, stopped.stderr[-2000:]
    if signum == signal.SIGINT:
        assert "rerun the same command to resume" in stopped.stderr
    kept = _rows(results)
    assert 0 < len(kept) < total and len(set(kept)) == len(kept)

    resumed = sweeper("launch", str(path), "--results", str(results))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"computed {total - len(kept)} cells" in resumed.stdout
    final = _rows(results)
    assert len(final) == total == len(set(final)) and set(kept) <= set(final)
    assert store.check(store.locate(str(results))).healthy

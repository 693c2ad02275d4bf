"""One store, one writer: a launch holds the store's lease; a second one exits 2 naming it
(and writes nothing) or waits; a dead holder's lease is taken over; reading commands
ignore it. The fast tests start no Ray; the last one runs real launches."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from sweeper import store
from sweeper.run import lease
from tests.conftest import write_grid
from tests.test_cli import sweeper
from tests.test_store import make_row


def taken(path: Path, launch_id: str = "first", grid: str = "g", **options) -> lease.Lease:
    return lease.Lease(store.locate(str(path)), launch_id, grid, **options).acquire()


def write_lease(path: Path, **fields) -> None:
    record = {"launch_id": "old", "host": socket.gethostname(), "pid": os.getpid(), "grid": "g",
              "started": "2025-01-01T00:00:00+00:00", "heartbeat": time.time(), **fields}
    path.mkdir(parents=True, exist_ok=True)
    (path / lease.LEASE_FILE).write_text(json.dumps(record))


def files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_a_held_lease_refuses_a_second_launch_until_released(tmp_path):
    first = taken(tmp_path / "r", "first", "paper")
    on_disk = json.loads((tmp_path / "r" / lease.LEASE_FILE).read_text())
    assert on_disk["launch_id"] == "first" and on_disk["pid"] == os.getpid() and on_disk["grid"] == "paper"
    with pytest.raises(lease.LeaseHeld) as refused:
        taken(tmp_path / "r", "second")
    message = str(refused.value)
    assert "\n" not in message and "launch first of grid 'paper'" in message
    assert f"host {socket.gethostname()}, pid {os.getpid()}, since {first.mine.started}" in message
    first.release()
    assert not (tmp_path / "r" / lease.LEASE_FILE).exists()
    second = taken(tmp_path / "r", "second")
    assert lease.read(store.locate(str(tmp_path / "r"))).launch_id == "second"
    second.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid now names no process
    write_lease(tmp_path, pid=finished.pid)
    with taken(tmp_path, "new"):
        assert lease.read(store.locate(str(tmp_path))).launch_id == "new"


def test_an_old_heartbeat_is_stale_a_fresh_one_elsewhere_is_not(tmp_path):
    write_lease(tmp_path, host="elsewhere", pid=1, heartbeat=time.time() - 2 * lease.TTL_S)
    with taken(tmp_path, "new"):
        pass
    write_lease(tmp_path, host="elsewhere", pid=1, heartbeat=time.time())  # cannot tell if it lives
    with pytest.raises(lease.LeaseHeld):
        taken(tmp_path, "new")
    (tmp_path / lease.LEASE_FILE).write_text("{not json")  # never written by sweeper: stale
    with taken(tmp_path, "new"):
        pass


def test_the_heartbeat_refreshes_and_notices_a_takeover(tmp_path):
    held = taken(tmp_path, heartbeat=0.01)
    started = lease.read(store.locate(str(tmp_path))).heartbeat
    deadline = time.monotonic() + 30
    while lease.read(store.locate(str(tmp_path))).heartbeat == started and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lease.read(store.locate(str(tmp_path))).heartbeat > started
    # A launch that judges the lease stale (as if the holder had stalled past the TTL) takes
    # it over the way every launch does, under the store's lock. (Writing the file behind
    # the lock's back raced with a refresh already between its read and its write.)
    usurper = taken(tmp_path, "usurper", ttl=0.0, heartbeat=3600)
    while not held.lost and time.monotonic() < deadline:
        time.sleep(0.01)
    assert held.lost
    held.release()
    assert lease.read(store.locate(str(tmp_path))).launch_id == "usurper"  # not ours to delete
    usurper.release()


def test_wait_proceeds_when_the_holder_releases(tmp_path):
    first = taken(tmp_path, "first")
    seen, got = [], []
    waiter = lease.Lease(store.locate(str(tmp_path)), "second", "g")
    thread = threading.Thread(target=lambda: got.append(waiter.acquire(wait=True, on_wait=seen.append,
                                                                        poll=0.01)))
    thread.start()
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [holder.launch_id for holder in seen] == ["first"] and not got  # told once, still waiting
    first.release()
    thread.join(30)
    assert got == [waiter] and lease.read(store.locate(str(tmp_path))).launch_id == "second"
    waiter.release()


def test_object_stores_take_the_lease_by_writing_and_reading_back(tmp_path):
    # Any filesystem but the local one goes the object-store way (no flock, no link).
    remote = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    location = store.Location(remote, "bucket/results", "mock://bucket/results")
    first = lease.Lease(location, "first", "g", settle=0).acquire()
    assert json.loads((tmp_path / "bucket/results" / lease.LEASE_FILE).read_text())["launch_id"] == "first"
    with pytest.raises(lease.LeaseHeld):
        lease.Lease(location, "second", "g", settle=0).acquire()
    first.release()
    with lease.Lease(location, "second", "g", settle=0):
        assert lease.read(location).launch_id == "second"
    assert lease.read(location) is None


@pytest.mark.e2e
def test_a_second_launch_exits_2_naming_the_holder_and_writes_nothing(tmp_path, tiny_grid):
    results = tmp_path / "results"
    store.write_rows(store.locate(str(results)), [make_row("a")])
    path = write_grid(tmp_path, tiny_grid)
    with taken(results, "abc123", "tiny") as held:
        before = files(results)
        second = sweeper("launch", str(path), "--results", str(results), cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        line = second.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert (f"is in use by launch abc123 of grid 'tiny' (host {socket.gethostname()}, "
                f"pid {os.getpid()}, since {held.mine.started}") in line
        assert files(results) == before
        checked = sweeper("check", str(results))  # reading commands never need the lease
        assert checked.returncode == 0 and checked.stdout.strip().endswith("ok")
    assert not (results / lease.LEASE_FILE).exists()


def test_a_launch_that_stops_early_leaves_no_store_behind(tmp_path):
    with taken(tmp_path / "fresh"):
        assert (tmp_path / "fresh" / lease.LEASE_FILE).exists()
    assert not (tmp_path / "fresh").exists()


@pytest.mark.e2e
@pytest.mark.slow
def test_real_launches_one_runs_one_is_refused_one_waits(tmp_path, tiny_grid):
    # real processes, each a launch in process (--local): the lease is the store's, the
    # same with or without Ray
    path = write_grid(tmp_path, tiny_grid)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "sweeper", "launch", str(path), "--results", str(results), "--local"]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (results / lease.LEASE_FILE).exists() and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.1)
    refused = sweeper(*command[3:])
    assert refused.returncode == 2 and f"pid {first.pid}" in refused.stderr, refused.stderr
    waiting = subprocess.Popen([*command, "--wait"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err
    assert "computed 8 cells with 2 trainings" in out
    out, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 0, err
    assert f"waiting: {results} is in use by launch" in err and f"pid {first.pid}" in err
    assert "8/8 cells already done; nothing to compute" in out  # it ran after, and trained nothing
    assert not (results / lease.LEASE_FILE).exists()

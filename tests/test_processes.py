"""``sweeper.run.processes``: this machine's processes and CPU time, read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from sweeper.run import processes

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc on this system")


def test_one_reads_a_process_and_none_once_it_has_ended():
    me = processes.one(os.getpid())
    assert me is not None and me.parent == os.getppid() and me.cpu_s > 0
    assert processes.table()[os.getpid()].argv == me.argv
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert processes.one(child.pid) is None  # reaped: gone from /proc


def test_machine_cpu_counts_a_busy_second_as_busy():
    busy, idle = processes.machine_cpu()
    deadline = time.process_time() + 0.5
    while time.process_time() < deadline:  # half a CPU-second of this process alone
        pass
    busy_after, idle_after = processes.machine_cpu()
    assert busy_after - busy >= 0.4 and idle_after >= idle

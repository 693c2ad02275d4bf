"""Benchmark: where a command's CPU goes over time, on this machine (Linux: reads /proc).

Runs the command (default: the demo launch at 120 epochs into a temporary store), samples
every 0.5 s the CPU of the process it started (for ``sweeper launch``: the driver) and the
whole machine's busy and idle time (``/proc/stat``; idle includes iowait), and prints them
per 5 s bucket, then the totals. Issue 24 asks where a launch's time goes: this shows
whether the driver's CPU is start-up or a steady cost during the wave, and whether the
cores ever sit idle while trials run.

    python bench/cpu_timeline.py [-- COMMAND ...]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKET_S = 5.0
sys.path.insert(0, str(ROOT))

from sweeper.run import processes  # noqa: E402


def main() -> None:
    command = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else None
    with tempfile.TemporaryDirectory() as folder:
        if not command:
            command = [sys.executable, "-m", "sweeper", "launch", str(ROOT / "grids" / "demo.yaml"),
                       "--results", str(Path(folder) / "store"), "--set", "train.epochs=120"]
        started = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
        own, (busy, idle) = 0.0, processes.machine_cpu()
        buckets: dict[int, list[float]] = {}
        while child.poll() is None:
            time.sleep(0.5)
            process, (now_busy, now_idle) = processes.one(child.pid), processes.machine_cpu()
            if process is None:
                break
            now_own = process.cpu_s
            bucket = buckets.setdefault(int((time.perf_counter() - started) // BUCKET_S), [0.0, 0.0, 0.0])
            bucket[0] += now_own - own
            bucket[1] += now_busy - busy
            bucket[2] += now_idle - idle
            own, busy, idle = now_own, now_busy, now_idle
        child.wait()
        wall = time.perf_counter() - started
    if child.returncode:
        sys.exit(f"the command failed ({child.returncode}): {' '.join(command)}")
    print(f"{' '.join(command[:4])} ...: {wall:.1f} s wall on {os.cpu_count()} cores")
    print("from s | its process's CPU s | machine busy core-s | machine idle core-s")
    for index, (own_s, busy_s, idle_s) in sorted(buckets.items()):
        print(f"{index * BUCKET_S:6.0f} | {own_s:19.2f} | {busy_s:19.1f} | {idle_s:19.1f}")
    totals = [sum(bucket[column] for bucket in buckets.values()) for column in range(3)]
    print(f" total | {totals[0]:19.2f} | {totals[1]:19.1f} | {totals[2]:19.1f}")


if __name__ == "__main__":
    main()

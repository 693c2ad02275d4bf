"""This machine's process table, read from Linux's /proc (empty elsewhere): what the
launch profile counts CPU seconds by (``profile.children_cpu``) and how the local Ray's
autoscaler monitor is found to be stopped first (``ray_cluster.shutdown_own``)."""

from __future__ import annotations

import os
from dataclasses import dataclass


_TICK_S = 1 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01  # /proc counts CPU in clock ticks


@dataclass(frozen=True)
class Process:
    parent: int
    state: str  # "R", "S", ... "Z" for a zombie: ended, not yet reaped
    argv: tuple[str, ...]  # the command line (a NUL-terminated one ends with "")
    cpu_s: float  # user + system CPU so far, in seconds


def table() -> dict[int, Process]:
    """Every process now in /proc, by pid; one that ends while it is read is left out."""
    try:
        entries = [entry for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return {}
    return {int(entry): process for entry in entries if (process := one(int(entry))) is not None}


def one(pid: int) -> Process | None:
    """The process ``pid`` now; None once it has ended (or where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            fields = file.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            argv = tuple(file.read().decode(errors="replace").split("\0"))
        return Process(int(fields[1]), fields[0].decode(), argv, (int(fields[11]) + int(fields[12])) * _TICK_S)
    except (OSError, ValueError, IndexError):
        return None  # it ended meanwhile


def machine_cpu() -> tuple[float, float]:
    """(busy, idle) core-seconds of the whole machine since boot, idle including iowait
    (``bench/cpu_timeline.py``); (0, 0) where there is no /proc."""
    try:
        with open("/proc/stat", "rb") as file:
            ticks = [int(value) for value in file.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = ticks[3] + ticks[4]
    return (sum(ticks) - idle) * _TICK_S, idle * _TICK_S


def children() -> dict[int, Process]:
    """This process's children still running (zombies, ended but not yet reaped, left out)."""
    return {pid: process for pid, process in table().items() if process.parent == os.getpid() and process.state != "Z"}


def descendants(table: dict[int, Process], roots: set[int]) -> set[int]:
    """``roots`` and every process of ``table`` below them."""
    found, grown = set(roots), True
    while grown:
        more = {pid for pid, process in table.items() if process.parent in found} - found
        found |= more
        grown = bool(more)
    return found

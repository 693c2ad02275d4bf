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
    found = {}
    for entry in entries:
        try:
            with open(f"/proc/{entry}/stat", "rb") as file:
                fields = file.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as file:
                argv = tuple(file.read().decode(errors="replace").split("\0"))
            cpu_s = (int(fields[11]) + int(fields[12])) * _TICK_S
            found[int(entry)] = Process(int(fields[1]), fields[0].decode(), argv, cpu_s)
        except (OSError, ValueError, IndexError):
            continue  # the process ended meanwhile
    return found


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

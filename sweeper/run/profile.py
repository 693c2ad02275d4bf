"""Where a launch spends its time (``sweeper launch --profile``): a timeline of spans.

The driver records its own phases (start-up, grid and fingerprints, the store, Ray, the
data, each wave, the end-of-launch work); each job records its own (``span``: training,
deployment, attacks, ...) in the process that runs it, and the runner hands them to the
driver with the job's trial bounds (``take``). ``Timeline.breakdown`` turns them into the
account printed after a launch: the driver's phases in wall seconds, and the trials' in
slot-seconds (a slot is one worker process: Tune's reused actor, or the launch itself with
``--local``), where every slot-second of a wave is a worker starting, a job phase, a gap
between two trials of one worker (scheduling), or idle (no trial yet, or none left). The
timeline is also written as a Chrome trace (``trace``; open it in Perfetto or
chrome://tracing). Times are wall-clock (``time.time``), so a worker's spans and the
driver's line up on one machine; across nodes they are as good as the clocks.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

from sweeper.run import processes

# This process's spans not yet taken: (name, start, end), wall-clock seconds.
_SPANS: list[tuple[str, float, float]] = []


@contextmanager
def span(name: str):
    """Record how long the block takes, as a span of the job running in this process."""
    started = time.time()
    try:
        yield
    finally:
        _SPANS.append((name, started, time.time()))


def take() -> list[tuple[str, float, float]]:
    """The spans recorded in this process since the last call."""
    spans = list(_SPANS)
    _SPANS.clear()
    return spans


def process_started(pid: int | None = None) -> float | None:
    """When the process started (wall-clock seconds), from its age on Linux's boot clock
    (/proc: the start in ticks since boot); None elsewhere."""
    try:
        with open(f"/proc/{pid or os.getpid()}/stat") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: starttime
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return time.time() - age


@dataclass
class Trial:
    """One job as it ran: its worker (pid on a node), its bounds and its spans."""

    worker: str
    entered: float
    left: float
    spans: list[tuple[str, float, float]]
    worker_started: float | None = None  # the worker process's start, for its first trial
    cpu: float | None = None  # the worker process's CPU seconds when the trial ended


@dataclass
class Timeline:
    """A launch's spans: the driver's (``phase``) and each trial's (``trial``)."""

    started: float = field(default_factory=lambda: process_started() or time.time())
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    trials: list[Trial] = field(default_factory=list)
    waves: list[tuple[int, float, float]] = field(default_factory=list)
    others_cpu: dict[str, float] = field(default_factory=dict)  # ``children_cpu`` before the runner stopped

    @contextmanager
    def phase(self, name: str):
        began = time.time()
        try:
            yield
        finally:
            self.phases.append((name, began, time.time()))

    def trial(self, payload: dict) -> None:
        """A trial's account, as ``trial_payload`` made it (possibly after JSON)."""
        self.trials.append(Trial(payload["worker"], payload["entered"], payload["left"],
                                 [tuple(s) for s in payload["spans"]], payload.get("worker_started"),
                                 payload.get("cpu")))

    def note_processes(self) -> None:
        """Keep the CPU seconds of the launch's other processes (Ray's) before they end."""
        self.others_cpu = children_cpu(self.worker_pids())

    def worker_pids(self) -> set[int]:
        """The pids of the worker processes that ran trials (on this node or another)."""
        return {int(trial.worker.rsplit(":", 1)[1]) for trial in self.trials}

    def workers_cpu(self) -> float:
        """The CPU seconds of the worker processes that ran trials, as their last trial
        found them (``--local``: this process's, counted as the driver's instead)."""
        last: dict[str, float] = {}
        for trial in self.trials:
            if trial.cpu is not None and not trial.worker.startswith("local:"):
                last[trial.worker] = max(last.get(trial.worker, 0.0), trial.cpu)
        return sum(last.values())

    def breakdown(self, ended: float | None = None) -> list[tuple[str, float, str]]:
        """(what, seconds, unit) rows: the driver's wall seconds from the process start,
        then each wave's slot-seconds by phase (``slot_seconds``)."""
        ended = ended or time.time()
        rows = [("whole launch", ended - self.started, "wall s")]
        first = min((began for _, began, _ in self.phases), default=self.started)
        rows.append(("python start-up and imports", first - self.started, "wall s"))
        for name, began, end in self.phases:
            rows.append((name, end - began, "wall s"))
        for wave, began, end in self.waves:
            trials = [t for t in self.trials if began <= t.entered <= end]
            for name, seconds in slot_seconds(trials, began, end).items():
                rows.append((f"wave {wave}: {name}", seconds, "slot s"))
        return rows

    def trace(self) -> dict:
        """The timeline in Chrome's trace-event format (one row per process)."""
        events = [_event(name, began, end, "driver") for name, began, end in self.phases]
        for trial in self.trials:
            if trial.worker_started is not None:
                events.append(_event("worker start-up", trial.worker_started, trial.entered, trial.worker))
            events.append(_event("trial", trial.entered, trial.left, trial.worker))
            events += [_event(name, began, end, trial.worker) for name, began, end in trial.spans]
        return {"traceEvents": events, "displayTimeUnit": "ms"}


def trial_payload(worker: str, entered: float, spans, worker_started: float | None = None) -> dict:
    """What a runner sends the driver when a trial ends (JSON-safe); ``cpu``: the worker
    process's CPU seconds so far."""
    return {"worker": worker, "entered": entered, "left": time.time(), "spans": [list(s) for s in spans],
            "worker_started": worker_started, "cpu": cpu_seconds()}


def slot_seconds(trials: list[Trial], began: float, ended: float) -> dict[str, float]:
    """A wave's slot-seconds (one slot per worker that ran a trial, from ``began`` to
    ``ended``) by what the slot was doing: "worker start-up" (a worker's process start,
    or the wave's start if later, to its first trial), each job phase, "in trial, outside
    any phase", "between trials (scheduling)", and "idle" (before its first trial or after
    its last, while the wave ran). These partition the slots' time; nested spans (inside a
    phase) come as ``OF_WHICH`` keys besides, outside the account."""
    totals: dict[str, float] = defaultdict(float)
    by_worker: dict[str, list[Trial]] = defaultdict(list)
    for trial in trials:
        by_worker[trial.worker].append(trial)
    for runs in by_worker.values():
        runs.sort(key=lambda t: t.entered)
        start = runs[0].entered
        if runs[0].worker_started is not None and runs[0].worker_started < start:
            booted = max(runs[0].worker_started, began)
            totals["worker start-up"] += start - booted
            start = booted
        totals["idle (no trial yet, or none left)"] += (start - began) + max(0.0, ended - runs[-1].left)
        for before, after in zip(runs, runs[1:]):
            totals["between trials (scheduling)"] += max(0.0, after.entered - before.left)
        for trial in runs:
            inside = 0.0
            for name, s, e in trial.spans:
                if name in JOB_PHASES:
                    totals[name] += e - s
                    inside += e - s
                else:  # nested in a phase: shown as "of which", never added to the account
                    totals[f"{OF_WHICH}{name}"] += e - s
            totals["in trial, outside any phase"] += max(0.0, trial.left - trial.entered - inside)
    return dict(totals)


OF_WHICH = "of which: "  # the key prefix of nested spans' totals
# The spans that partition a trial (nested ones, e.g. within training, are not summed twice).
JOB_PHASES = ("imports", "placement", "data", "setup", "train", "deploy", "measure", "attack", "builds",
              "transfer", "other widths")


def _event(name: str, began: float, ended: float, process: str) -> dict:
    return {"name": name, "ph": "X", "ts": began * 1e6, "dur": max(0.0, ended - began) * 1e6,
            "pid": process, "tid": 0}


PROFILES_DIR = "profiles"  # RESULTS/profiles/<launch id>.trace.json, one per profiled launch


def save(timeline: Timeline, location, launch_id: str) -> str:
    """Write the timeline's Chrome trace into the store (``location``); returns its path."""
    from sweeper import store

    return store.put_bytes(location, f"{PROFILES_DIR}/{launch_id}.trace.json",
                           json.dumps(timeline.trace()).encode())


def lines(timeline: Timeline, ended: float | None = None) -> list[str]:
    """The breakdown as printed after ``sweeper launch --profile``: wall seconds of the
    driver's phases, then each wave's slot-seconds by phase with their share of the wave."""
    rows = timeline.breakdown(ended)
    out = [f"profile: {rows[0][0]} {rows[0][1]:.1f} s wall, from the process start"]
    wave_totals: dict[str, float] = defaultdict(float)
    for name, seconds, unit in rows[1:]:
        if unit == "slot s" and OF_WHICH not in name:
            wave_totals[name.split(":", 1)[0]] += seconds
    for name, seconds, unit in rows[1:]:
        if unit == "wall s":
            out.append(f"  {name:<58} {seconds:8.1f} s")
        else:
            total = wave_totals[name.split(":", 1)[0]]
            indent = "      " if OF_WHICH in name else "    "
            out.append(f"{indent}{name:<{60 - len(indent)}} {seconds:8.1f} slot-s ({seconds / total:6.1%} of the wave's)")
    others = timeline.others_cpu or children_cpu(timeline.worker_pids())
    out.append(f"  CPU seconds (user + system): this driver {cpu_seconds():.1f}, the trials' worker "
               f"processes {timeline.workers_cpu():.1f}, the launch's other processes {sum(others.values()):.1f}" +
               (" (" + ", ".join(f"{name} {seconds:.1f}" for name, seconds in others.items() if seconds >= 0.1) + ")"
                if others else ""))
    return out


def cpu_seconds() -> float:
    """This process's CPU time so far (user + system): the driver's share of the cores."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def children_cpu(skip: set[int] = frozenset()) -> dict[str, float]:
    """CPU seconds (user + system) of this process's live descendants but ``skip`` (the
    trials' workers, counted from their own reports), by name (Ray's GCS, raylet, agents,
    idle workers, ...); from Linux's /proc, empty elsewhere. Said beside the driver's and
    the trials' to show who holds the cores."""
    table = processes.table()
    mine = processes.descendants(table, {os.getpid()})
    trials = processes.descendants(table, set(skip))  # the trials' workers and what they started
    totals: dict[str, float] = defaultdict(float)
    for pid in mine - {os.getpid()} - set(skip):
        name = _short_name(table[pid].argv)
        totals[f"the trials' own {name or 'children'}" if pid in trials else name] += table[pid].cpu_s
    return dict(sorted(totals.items(), key=lambda item: -item[1]))


def _short_name(argv: tuple[str, ...]) -> str:
    """A process's name from its command line: Ray's process title (``ray::IDLE``), or
    the program or Python script it runs."""
    first = argv[0]
    if first.startswith("ray::"):
        return first.split()[0]
    script = next((part for part in argv[1:] if part.endswith(".py")), None)
    if script is None and "-m" in argv[1:-1]:  # python -m package.module
        script = argv[argv.index("-m") + 1]
    return os.path.basename(script or first)

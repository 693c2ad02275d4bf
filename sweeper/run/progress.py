"""The progress of a sweep on the terminal (cells done / total, elapsed, time left): a
live bar on a terminal; on a pipe or in CI, a plain line every 5% of the cells so logs
stay short but show the sweep is alive. Labels are printed literally (``sweeper.console``).

Time left: before the measured rate means anything (the first cells of a job carry its
training; the first jobs start cold), it comes from the cost model's estimate of the
pending work (``Estimate``, from ``sweeper.plan.cost``); as cells finish it blends toward
the measured rate (elapsed per computed cell), which has the larger weight once the first
round of jobs (one per worker) has finished.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@dataclass(frozen=True)
class Estimate:
    """The cost model's wall-clock estimate of a launch's pending work."""
    seconds: float  # the pending work's makespan on the runner's workers, by the cost model
    settle_cells: int  # cells in the first round of jobs: the measured rate's weight is 1/2 there


class CellProgress:
    def __init__(self, console: Console, total: int, done: int, estimate: Estimate | None = None):
        self.console, self.total, self.done = console, total, done
        self.started_done, self.started = done, time.monotonic()
        self.estimate = estimate
        self._bar: Progress | None = None
        self._task = None
        self._next_line = done

    def __enter__(self) -> "CellProgress":
        if self.console.is_terminal:
            self._bar = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.fields[left]}", markup=False),
                                 TextColumn("{task.description}", markup=False),  # grid labels: literal
                                 console=self.console,
                                 transient=False)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total, completed=self.done, left=self.time_left())
        else:
            self.console.print(f"cells {self.done}/{self.total} (starting, {self.time_left()})")
        return self

    def advance(self, description: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=description, left=self.time_left())
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 20)
            self.console.print(f"cells {self.done}/{self.total}, {self.time_left()}")

    def seconds_left(self) -> tuple[float | None, str]:
        """(seconds left or None, where they come from: "estimated", "blended", "measured"
        or "unknown")."""
        computed = self.done - self.started_done
        elapsed = time.monotonic() - self.started
        remaining = self.total - self.done
        measured = elapsed / computed * remaining if computed else None
        if self.estimate is None:
            return measured, "measured" if computed else "unknown"
        pending = max(1, self.total - self.started_done)
        modelled = self.estimate.seconds * remaining / pending  # the pending work's share still left
        if not computed:
            return modelled, "estimated"
        weight = computed / (computed + max(1, self.estimate.settle_cells))
        return (1 - weight) * modelled + weight * measured, "blended"

    def time_left(self) -> str:
        seconds, source = self.seconds_left()
        elapsed = time.monotonic() - self.started
        if seconds is None:
            return "time left unknown"
        if source == "estimated":
            return f"about {seconds:.0f}s left (estimated)"
        return f"elapsed {elapsed:.0f}s, about {seconds:.0f}s left"

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

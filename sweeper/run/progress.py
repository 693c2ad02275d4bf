"""The progress of a sweep on the terminal (cells done / total, elapsed, time left): a
live bar on a terminal; on a pipe or in CI, a plain line every 5% of the cells so logs
stay short but show the sweep is alive. Labels are printed literally (``sweeper.console``).
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


class CellProgress:
    def __init__(self, console: Console, total: int, done: int):
        self.console, self.total, self.done = console, total, done
        self.started_done, self.started = done, time.monotonic()
        self._bar: Progress | None = None
        self._task = None
        self._next_line = done

    def __enter__(self) -> "CellProgress":
        if self.console.is_terminal:
            self._bar = Progress(TextColumn("[bold]cells"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
                                 TextColumn("{task.description}", markup=False),  # grid labels: literal
                                 console=self.console,
                                 transient=False)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total, completed=self.done)
        else:
            self.console.print(f"cells {self.done}/{self.total} (starting)")
        return self

    def advance(self, description: str = "") -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=description)
        elif self.done >= self._next_line or self.done == self.total:
            self._next_line = self.done + max(1, self.total // 20)
            self.console.print(f"cells {self.done}/{self.total}, {self._time_left()}")

    def _time_left(self) -> str:
        computed = self.done - self.started_done
        elapsed = time.monotonic() - self.started
        if computed == 0:
            return "time left unknown"
        left = elapsed / computed * (self.total - self.done)
        return f"elapsed {elapsed:.0f}s, about {left:.0f}s left"

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()

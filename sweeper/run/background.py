"""``in_background``: one call in a daemon thread, its result (or error) collected later.
The launch loads its data and imports Tune while Ray starts, and stops Ray while the
store is compacted (``collection_paused`` around that overlap).
"""

from __future__ import annotations

import gc
import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def in_background(function: Callable[..., Any], *args, name: str) -> Callable[[], Any]:
    """Start ``function(*args)`` in a daemon thread named ``name`` (an error elsewhere never waits for it);
    returns a call that waits for its result, or raises its error."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the waiting caller
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True, name=name)
    thread.start()

    def result():
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]

    return result


@contextmanager
def collection_paused(collect_first: bool = True) -> Iterator[None]:
    """Collect cyclic garbage now (unless ``collect_first`` is false), then none until the
    block ends; a collector the caller had paused stays paused. While Ray shuts down in
    another thread, a Ray object reference that this thread frees makes Ray end the whole
    process (``The core worker has already been shutdown``, exit code 1), rows written or
    not; Tune's leftovers from a wave are such garbage. Freed before the shutdown starts,
    they are released; after it ends, Ray ignores them (``tests/test_background.py``).
    ``sweeper.run.imports`` pauses it, without the first collection, around heavy imports."""
    if collect_first:
        gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

"""``in_background``: one call in a daemon thread, its result (or error) collected later.
The launch loads its data and imports Tune while Ray starts, and stops Ray while the
store is compacted."""

from __future__ import annotations

import threading
from typing import Any, Callable


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

"""A job's heavy imports (TensorFlow, ART, QKeras), once per process, with Python's cyclic
garbage collector paused while they run and what they built frozen out of later collections.

Why: importing them builds about half a million long-lived objects. With the collector on,
each full collection during the imports scans all of them again: the imports took 4.92 s
with it on and 3.98 s with it paused (``python bench/imports.py``, medians of 3). After them,
every full collection during a job would scan them too (about 0.5 s each here, more in a Ray
worker, which also holds Ray's and Tune's) though they live as long as the process. ``gc.freeze``
moves them to the permanent generation, which collections skip; objects are still freed by
their reference counts as usual, and the jobs' own cyclic garbage (models, graphs) is
collected as before. Only cycles that the imports themselves left behind are never collected:
a one-time, bounded amount.
"""

from __future__ import annotations

import gc
import importlib
import sys

from sweeper.run.background import collection_paused

# What a job needs, heaviest first: TensorFlow (through QKeras and ART too), ART, QKeras.
HEAVY = ("tensorflow", "sweeper.attacks.art_lib", "sweeper.models.qk")


def load(modules: tuple[str, ...] = HEAVY) -> None:
    """Import ``modules`` with the collector paused, then freeze what exists; nothing when
    all of them are imported already (a worker's later jobs, a process that imported them)."""
    if all(name in sys.modules for name in modules):
        return
    # Frozen before the collector is back: else its first young collection scans it all.
    with collection_paused(collect_first=False):
        for name in modules:
            importlib.import_module(name)
        gc.freeze()

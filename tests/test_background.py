"""``sweeper.run.background``: a call in the background, and the pause of cyclic garbage
collection a launch holds while Ray stops in the background (a Ray reference freed by the
collector meanwhile makes Ray end the process with exit code 1)."""

from __future__ import annotations

import gc
import weakref

import pytest

from sweeper.run.background import collection_paused, in_background


class _Cycle:
    """Cyclic garbage once dropped: only the collector frees it."""

    def __init__(self):
        self.itself = self


def tracked_cycle() -> tuple[_Cycle, list[bool]]:
    """A cycle and a flag that turns true once it is freed (garbage when the caller drops
    it; ``tests/test_sweep.py`` uses it too)."""
    freed = [False]
    cycle = _Cycle()
    weakref.finalize(cycle, freed.__setitem__, 0, True)
    return cycle, freed


def test_collection_paused_frees_earlier_garbage_first_then_none_until_the_block_ends():
    assert gc.isenabled()
    before = tracked_cycle()[1]  # garbage at once
    with collection_paused():
        assert before[0]  # the wave's leftovers go while Ray still runs
        during = tracked_cycle()[1]
        for _ in range(200_000):  # far past the collector's thresholds: it would have run
            _Cycle()
        assert not during[0] and not gc.isenabled()
    assert gc.isenabled()
    gc.collect()
    assert during[0]


def test_collection_paused_restores_the_collector_even_on_error_and_leaves_a_disabled_one_off():
    with pytest.raises(ValueError), collection_paused():
        raise ValueError("finish failed")
    assert gc.isenabled()
    gc.disable()
    try:
        with collection_paused():
            pass
        assert not gc.isenabled()  # the caller had it off: it stays off
    finally:
        gc.enable()


def test_in_background_returns_the_result_or_raises_the_error_when_waited_for():
    assert in_background(sum, [1, 2, 3], name="t")() == 6
    waiting = in_background(int, "x", name="t")
    with pytest.raises(ValueError):
        waiting()

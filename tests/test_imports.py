"""sweeper.run.imports: a job's heavy imports run with the cyclic collector paused, and what
they built is frozen out of later collections; the collector's state is left as it was."""

from __future__ import annotations

import gc
import sys

import pytest

from sweeper.run import imports

# A module whose import builds enough container objects to trigger collections.
_BUILDER = "CYCLES = []\nfor i in range(60_000):\n    node = [i]\n    node.append(node)\n    CYCLES.append(node)\n"


@pytest.fixture
def builders(tmp_path, monkeypatch):
    """Importable modules that each build 60,000 self-referencing lists; removed after."""
    names = [f"_sweeper_cycles_{index}" for index in range(3)]
    for name in names:
        (tmp_path / f"{name}.py").write_text(_BUILDER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield names
    for name in names:
        sys.modules.pop(name, None)
    gc.unfreeze()  # give this test process's objects back to the collector


@pytest.fixture
def collections():
    """The generations of the collections that run while the test does."""
    seen: list[int] = []

    def record(phase, info):
        if phase == "start":
            seen.append(info["generation"])

    gc.callbacks.append(record)
    yield seen
    gc.callbacks.remove(record)


def test_the_imports_run_with_no_collection_and_are_frozen_after(builders, collections):
    assert gc.isenabled()
    __import__(builders[0])  # the control: a plain import of the same work triggers collections
    assert collections, "the control import triggered no collection: the test cannot tell"
    collections.clear()
    frozen = gc.get_freeze_count()
    imports.load((builders[1],))
    assert collections == []
    assert builders[1] in sys.modules
    assert gc.isenabled()
    assert gc.get_freeze_count() >= frozen + 60_000  # the module's lists are in the permanent generation


def test_a_second_call_does_nothing(builders):
    imports.load((builders[1],))
    frozen = gc.get_freeze_count()
    imports.load((builders[1],))
    assert gc.get_freeze_count() == frozen


def test_a_paused_collector_stays_paused(builders):
    gc.disable()
    try:
        imports.load((builders[2],))
        assert not gc.isenabled()
    finally:
        gc.enable()


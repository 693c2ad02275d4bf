"""A launch's timeline (sweeper/run/profile.py): every slot-second of a wave is accounted
for once, as a worker starting, a job phase, a gap between trials, or idle; nested spans
are not counted twice; a real in-process launch records its phases. No Ray."""

from __future__ import annotations

import json

import pytest

from sweeper.run import profile
from sweeper.run.profile import Timeline, Trial, slot_seconds


def test_every_slot_second_of_a_wave_is_counted_once():
    # Two workers over the wave [0, 100]. Worker a starts at -5 (before the wave), enters
    # its first trial at 10, runs two trials with a 3 s gap, and ends at 90 (10 s idle).
    # Worker b starts at 2, runs one trial 20..100.
    trials = [
        Trial("a", 10.0, 50.0, [("train", 12.0, 40.0), ("fit", 13.0, 39.0), ("attack", 40.0, 49.0)], -5.0),
        Trial("a", 53.0, 90.0, [("train", 53.0, 80.0)]),
        Trial("b", 20.0, 100.0, [("train", 20.0, 70.0), ("deploy", 70.0, 75.0), ("attack", 75.0, 100.0)], 2.0),
    ]
    totals = slot_seconds(trials, 0.0, 100.0)
    assert totals["worker start-up"] == pytest.approx(10.0 + 18.0)  # a: 0..10 (the wave began at 0); b: 2..20
    assert totals["idle (no trial yet, or none left)"] == pytest.approx(10.0 + 2.0)  # a after 90; b before 2
    assert totals["between trials (scheduling)"] == pytest.approx(3.0)
    assert totals["train"] == pytest.approx(28.0 + 27.0 + 50.0)
    assert "fit" not in totals and totals["of which: fit"] == pytest.approx(26.0)  # nested: not counted twice
    assert totals["in trial, outside any phase"] == pytest.approx((40 - 37) + (37 - 27) + 0.0)
    account = {k: v for k, v in totals.items() if not k.startswith(profile.OF_WHICH)}
    assert sum(account.values()) == pytest.approx(2 * 100.0)  # two slots, the whole wave


def test_the_trace_is_chrome_trace_json_with_the_driver_and_each_worker():
    timeline = Timeline(started=0.0)
    timeline.phases.append(("starting the runner (Ray)", 1.0, 4.0))
    timeline.trial(json.loads(json.dumps(profile.trial_payload("n:1", 5.0, [("train", 5.5, 9.0)], 4.5))))
    events = timeline.trace()["traceEvents"]
    assert {e["pid"] for e in events} == {"driver", "n:1"}
    start_up = next(e for e in events if e["name"] == "worker start-up")
    assert (start_up["ts"], start_up["dur"]) == (4.5e6, pytest.approx(0.5e6))
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in events)


def test_spans_are_taken_once():
    profile.take()  # what earlier tests' in-process jobs left
    with profile.span("train"):
        pass
    taken = profile.take()
    assert [name for name, _, _ in taken] == ["train"]
    assert profile.take() == []


@pytest.mark.slow
def test_an_in_process_launch_records_its_phases_and_every_job(tmp_path, tiny_grid):
    from sweeper.plan import expand, grid
    from sweeper.run import sweep
    from sweeper.run.runners import InProcessRunner
    from conftest import write_grid

    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid), []))
    timeline = Timeline()
    report = sweep.launch(plan, str(tmp_path / "results"), runner=InProcessRunner(), timeline=timeline)
    assert report.complete
    names = [name for name, _, _ in timeline.phases]
    assert names[0] == "reading the store" and names[-2].startswith("end of launch")
    assert names[-1].startswith("stopping the runner")
    assert len(timeline.trials) == len(plan.jobs)
    lines = profile.lines(timeline)
    wave = [line for line in lines if "wave 1:" in line and "slot-s" in line and profile.OF_WHICH not in line]
    assert any("train" in line for line in wave) and any("attack" in line for line in wave)
    shares = [float(line.rsplit("(", 1)[1].split("%")[0]) for line in wave]
    assert sum(shares) == pytest.approx(100.0, abs=0.5)  # the wave's slot-seconds, all accounted for


@pytest.mark.parametrize("owned", [True, False])
def test_the_ray_runner_shuts_down_only_a_ray_it_started(monkeypatch, owned):
    """A launch ends its own local Ray itself (overlapping the store's compaction) and
    leaves a cluster, or a Ray that ran before it, as it was."""
    import sys
    import types

    from sweeper.run.runners import RayTuneRunner

    calls = []
    fake_cluster = types.SimpleNamespace(init_ray=lambda address, verbose: owned,
                                         check_resources=lambda *args, **kwargs: None,
                                         shutdown_own=lambda: calls.append("shutdown"))
    fake_tune_side = types.SimpleNamespace(warm_imports=lambda: calls.append("tune imported"))
    for name, fake in (("ray_cluster", fake_cluster), ("ray_tune", fake_tune_side)):
        monkeypatch.setitem(sys.modules, f"sweeper.run.{name}", fake)
        monkeypatch.setattr(f"sweeper.run.{name}", fake, raising=False)
    runner = RayTuneRunner()
    runner.start(types.SimpleNamespace(grid=types.SimpleNamespace(resources=None)), console=None)
    runner.stop()
    runner.stop()  # twice: still once
    assert calls == ["tune imported"] + (["shutdown"] if owned else [])

"""End to end, as a user runs it: a tiny grid through `sweeper launch` (real Ray Tune
trials, real QKeras training, real ART attacks, real Parquet), then a relaunch that
computes nothing, then an extended grid that computes only its new cells."""

from __future__ import annotations

import re

import pytest

from sweeper.plan import expand, grid
from sweeper import store
from tests.conftest import write_grid
from tests.test_cli import sweeper

pytestmark = pytest.mark.slow


def test_launch_relaunch_and_extend(tmp_path, tiny_grid, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_grid(tmp_path, tiny_grid)
    results = "results"  # relative, as the default results/<grid> is: trials run elsewhere
    plan = expand.expand(grid.load(path))

    first = sweeper("launch", str(path), "--results", results, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"computed {len(plan.cells)} cells with {len(plan.jobs)} trainings" in first.stdout
    table = store.read(store.locate(results)).table
    assert sorted(table.column("cell_id").to_pylist()) == sorted(c.cell_id for c in plan.cells)
    rows = table.to_pylist()
    for row in rows:
        assert 0.0 <= row["adv_acc"] <= 1.0 and 0.0 <= row["clean_acc"] <= 1.0
        assert row["n_samples"] == 20 and row["params"] > 0 and row["flash_kb"] > 0
        assert row["model_cached"] is False and row["tensorflow_version"]
        assert len(row["node"]) == 56  # a Ray node id: the trial ran on a Ray worker
    clean = [r for r in rows if r["attack"] == "none"]
    assert all(r["adv_acc"] == r["clean_acc"] for r in clean)
    assert any(r["adv_acc"] < r["clean_acc"] for r in rows if r["attack"] == "fgsm")
    # int4 packs weights in 4 bits, about an eighth of fp's; the int8 .tflite does not
    packed = {r["quantizer"]: r["flash_packed_kb"] for r in rows}
    assert packed["int4"] < packed["fp"] / 4
    deployed = {r["quantizer"]: r["tflite_kb"] for r in rows}
    assert deployed["int4"] == pytest.approx(deployed["fp"], rel=0.1)
    assert all(r["deployed_clean_acc"] is not None for r in rows)
    assert {(r["n_classes"], r["n_features"]) for r in rows} == {(10, 64)}
    # One fragment per finished training job, compacted into one file when the launch ends,
    # which records the launch's grid file; the diagnostics sit beside the rows.
    location = store.locate(results)
    fragments = store.fragments(location)
    assert len(fragments) == 1 and "-compacted-" in fragments[0]
    [launch] = store.launches(location)
    assert launch["grid_text"] == path.read_text() and {r["launch_id"] for r in rows} == {launch["launch_id"]}
    assert (tmp_path / "results" / store.DIAGNOSTICS_FILE).exists()
    # the trained models are cached in the store, not in the trials' working directories
    assert len(list((tmp_path / "results" / "models").glob("*.weights.h5"))) == len(plan.jobs)
    rendered = sweeper("report", results, "--out", str(tmp_path / "report"), cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| small_cnn / fp |" in text and "| small_cnn / int4 |" in text
    assert f"| {launch['started_at']} | tiny | {path} |" in text  # provenance of the launch

    again = sweeper("launch", str(path), "--results", results, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{len(plan.cells)}/{len(plan.cells)} cells already done" in again.stdout
    assert store.fragments(store.locate(results)) == fragments

    extended = sweeper("launch", str(path), "--results", results, "--set",
                       "attacks.fgsm.eps=[0.1, 0.2, 0.3]", cwd=tmp_path)
    assert extended.returncode == 0, extended.stderr
    # one new epsilon x two models; the models come from the cache, so no training
    assert re.search(r"computed 2 cells with 0 trainings; 10/10 cells done", extended.stdout)
    table = store.read(store.locate(results)).table
    assert table.num_rows == 10 == len(set(table.column("cell_id").to_pylist()))
    new = [r for r in table.to_pylist() if r["eps_label"] == "0.3"]
    assert len(new) == 2 and all(r["model_cached"] for r in new)
    # the cached model is the same model: same clean accuracy on the same samples
    old_clean = {r["job_id"]: r["clean_acc"] for r in rows}
    assert all(r["clean_acc"] == old_clean[r["job_id"]] for r in new)


def test_a_failed_job_is_summarised_by_its_telling_line():
    from sweeper.run.rows import error_summary

    wrapped = ("Failure # 1\nTraceback (most recent call last):\n  File \"x.py\", line 1\n"
               "AssertionError: Exception encountered when calling layer 'q_activation'.\n"
               "    AssertionError: \n  Call arguments received:\n  \u2022 mask=None")
    assert error_summary(RuntimeError(wrapped)) == \
        "AssertionError: Exception encountered when calling layer 'q_activation'."
    assert error_summary(ValueError("boom")) == "ValueError: boom"
    assert error_summary(KeyError()) == "KeyError"

"""The trial, without Ray: per-sample outcomes that agree with the row's accuracies,
minimal-perturbation attacks run once per job with every budget derived from their
norms, and the provenance columns a row carries. Also the sweep callback that stores a
retried trial's rows."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from sweeper import attacks, datasets, expand, grid, store
from sweeper.trial import JobContext, run_job

pytestmark = pytest.mark.slow

GRID = {
    "name": "trial", "datasets": ["digits"], "models": ["small_cnn"], "quantizers": ["int8"],
    "attacks": [
        {"name": "fgsm", "eps": [0.1]},
        {"name": "pgd", "eps": [0.1], "params": {"max_iter": 3, "eps_step": "eps/4"}},
        {"name": "cw_l2", "eps": [0, 0.5, 1.0, "unbounded"],
         "params": {"max_iter": 5, "binary_search_steps": 3, "learning_rate": 0.1}},
    ],
    "folds": {"k": 3, "only": [0]}, "train": {"epochs": 3, "learning_rate": 0.01}, "samples": 30,
}


@pytest.fixture(scope="module")
def job_rows():
    plan = expand.expand(grid.validate(GRID))
    [job] = plan.jobs
    calls = []
    original = attacks.run

    def counting(name, *args, **kwargs):
        calls.append((name, args[3]))  # (attack, eps)
        return original(name, *args, **kwargs)

    attacks.run = counting
    try:
        rows = []
        run_job(job, plan.cells_of(job.job_id), datasets.load("digits"), JobContext("trial", ("stm32h7",)),
                rows.append)
    finally:
        attacks.run = original
    return plan, {(r["attack_label"], r["eps_label"]): r for r in rows}, calls


def test_minimal_attacks_run_once_and_budgets_are_derived_from_their_norms(job_rows):
    _, rows, calls = job_rows
    assert [c for c in calls if c[0] == "cw_l2"] == [("cw_l2", math.inf)]  # once, unbounded, for 4 cells
    unbounded = rows["cw_l2", "unbounded"]
    norms = np.array(unbounded["pert_l2"])
    fooled = np.array(unbounded["clean_correct"]) & ~np.array(unbounded["adv_correct"])
    assert fooled.any(), "C&W should fool some samples of a 3-epoch int8 model"
    for label, eps in (("0", 0.0), ("0.5", 0.5), ("1.0", 1.0)):
        row = rows["cw_l2", label]
        within = norms <= eps * (1 + attacks.BUDGET_RTOL)
        # a sample is fooled at eps exactly when the unbounded run fooled it within eps
        assert list(np.array(row["clean_correct"]) & ~np.array(row["adv_correct"])) == list(fooled & within)
        assert max(row["pert_l2"]) <= eps * (1 + attacks.BUDGET_RTOL) + 1e-6
    assert rows["cw_l2", "0"]["adv_acc"] == rows["cw_l2", "0"]["clean_acc"]  # eps 0 is clean
    accuracies = [rows["cw_l2", label]["adv_acc"] for label in ("0", "0.5", "1.0", "unbounded")]
    assert accuracies == sorted(accuracies, reverse=True)
    assert len({rows["cw_l2", label]["attack_s"] for label in ("0", "0.5", "unbounded")}) == 1  # one shared run


def test_outcomes_agree_with_the_row(job_rows):
    plan, rows, _ = job_rows
    [job] = plan.jobs
    for row in rows.values():
        n = row["n_samples"]
        assert all(len(row[c]) == n for c in store.OUTCOME_COLUMNS)
        assert row["adv_acc"] == pytest.approx(np.mean(row["adv_correct"]))
        assert row["clean_acc"] == pytest.approx(np.mean(row["clean_correct"]))
        y = datasets.load("digits").y[row["sample_index"]]
        assert list(np.array(row["adv_pred"]) == y) == row["adv_correct"]
        # only samples the model got right are attacked
        assert not (np.array(row["adv_correct"]) & ~np.array(row["clean_correct"])).any()
        if row["attack"] in ("fgsm", "pgd"):
            assert max(row["pert_linf"]) <= row["eps"] * (1 + attacks.BUDGET_RTOL) + 1e-6
        assert (row["config_id"], row["job_id"], row["model_fingerprint"]) == \
            (job.config_id, job.job_id, job.model_fingerprint)
    assert rows["pgd", "0.1"]["attack_params"].count('"eps_step": 0.025') == 1  # eps/4, resolved
    assert len({r["weights_sha256"] for r in rows.values()}) == 1
    first = next(iter(rows.values()))
    assert (first["clip_min"], first["clip_max"], first["feature_scaling"], first["fold_grouping"]) == \
        (0.0, 1.0, "digits/16", "none")
    store.to_table(list(rows.values()))  # the rows fit the store's schema


def test_a_plan_without_fingerprints_cannot_launch(tmp_path):
    from sweeper import sweep

    with pytest.raises(ValueError, match="fingerprints"):
        sweep.launch(expand.expand(grid.validate(GRID), fingerprints=False), str(tmp_path))


def test_a_retried_trial_has_its_rows_stored_before_the_retry(tmp_path, job_rows):
    """on_trial_recover: Tune is about to rerun a trial whose worker died; what it had
    reported is stored then, not lost if the driver dies before the retry ends."""
    from types import SimpleNamespace

    from rich.console import Console

    from sweeper.progress import CellProgress
    from sweeper.sweep import _StoreRows

    import json

    location = store.locate(str(tmp_path))
    _, rows, _ = job_rows
    trial = SimpleNamespace(trial_id="t1")
    with CellProgress(Console(file=io.StringIO()), total=len(rows), done=0) as progress:
        callback = _StoreRows(location, progress, store.new_launch(grid.validate(GRID)))
        for row in list(rows.values())[:3]:
            callback.on_trial_result(0, [], trial, {"row": json.dumps(row)})
        callback.on_trial_recover(0, [], trial)
        assert store.done_cell_ids(location) == {r["cell_id"] for r in list(rows.values())[:3]}
        # the retry reports the same cells again and then more: each is stored once
        for row in rows.values():
            callback.on_trial_result(0, [], trial, {"row": json.dumps(row)})
        callback.on_trial_complete(0, [], trial)
    assert store.check(location).healthy and store.read(location).table.num_rows == len(rows)

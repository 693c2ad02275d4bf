"""The trial, without Ray: per-sample outcomes that agree with the row's accuracies,
minimal-perturbation attacks run once per job with every budget derived from their
norms, and the provenance columns a row carries. Also the sweep callback that stores a
retried trial's rows."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest

from sweeper import attacks, datasets, keys, store
from sweeper.plan import expand, grid
from sweeper.run.trial import JobContext, run_job

pytestmark = pytest.mark.slow

GRID = {
    "name": "trial", "datasets": ["digits"], "models": ["small_cnn"], "quantizers": ["int8"],
    "attacks": [
        {"name": "fgsm", "eps": [0.1]},
        {"name": "pgd", "eps": [0.1], "params": {"max_iter": 3, "eps_step": "eps/4"}},
        {"name": "cw_l2", "eps": [0, 0.5, 1.0, "unbounded"],
         "params": {"max_iter": 5, "binary_search_steps": 3, "learning_rate": 0.1, "initial_const": 1.0}},
    ],
    "folds": {"k": 3, "only": [0]}, "train": {"epochs": 3, "learning_rate": 0.01}, "samples": 30,
}


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def job_rows(model_cache):
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
        run_job(job, plan.cells_of(job.job_id), datasets.load("digits"),
                JobContext("trial", ("stm32h7",), model_cache=model_cache), rows.append)
    finally:
        attacks.run = original
    return plan, {(r["attack_label"], r["eps_label"]): r for r in rows}, calls


def test_rows_carry_the_jacobian_norms_of_their_model_on_the_attacked_samples(job_rows, model_cache):
    """One measurement per job, on its attacked samples with its seed: the cached model
    measured again gives the same columns; small_cnn has three blocks, the last (dense,
    10 outputs) and the logits measured exactly, the conv blocks estimated."""
    from sweeper import models
    from sweeper.models import jacobian
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.run.cache import ModelCache

    plan, rows, _ = job_rows
    [job] = plan.jobs
    names = [c for c in store.SCHEMA.names if c.startswith("jacobian_")]
    first = next(iter(rows.values()))
    assert all({c: r[c] for c in names} == {c: first[c] for c in names} for r in rows.values())
    assert first["jacobian_blocks"] == ["conv2d", "conv2d", "dense"]
    assert len(first["jacobian_block_fro"]) == len(first["jacobian_block_se"]) == 3
    assert first["jacobian_fro_se"] == 0 and first["jacobian_block_se"][2] == 0
    assert all(0 < se < 0.05 * value for se, value in zip(first["jacobian_block_se"][:2],
                                                            first["jacobian_block_fro"][:2]))
    data = datasets.load("digits")
    model = models.build("small_cnn", data.input_shape, data.nb_classes, QUANTIZERS.get("int8"))
    assert ModelCache(model_cache).load_weights(model, job.job_id)
    again = jacobian.measure(model, data.x[first["sample_index"]], job.draw_seed)
    assert {c: first[c] for c in names} == again
    table = store.to_table([first])
    assert table.column("jacobian_block_fro").type == store.SCHEMA.field("jacobian_block_fro").type


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
        assert all(len(row[c]) == n for c in keys.OUTCOME_COLUMNS)
        assert row["adv_acc"] == pytest.approx(np.mean(row["adv_correct"]))
        assert row["clean_acc"] == pytest.approx(np.mean(row["clean_correct"]))
        y = datasets.load("digits").y[row["sample_index"]]
        # robust: right unperturbed and on the example (trial.robust)
        assert list(np.array(row["clean_correct"]) & (np.array(row["adv_pred"]) == y)) == row["adv_correct"]
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
    from sweeper.run import sweep

    with pytest.raises(ValueError, match="fingerprints"):
        sweep.launch(expand.expand(grid.validate(GRID), fingerprints=False), str(tmp_path))


def test_a_retried_trial_has_its_rows_stored_before_the_retry(tmp_path, job_rows):
    """on_trial_recover: Tune is about to rerun a trial whose worker died; what it had
    reported is stored then, not lost if the driver dies before the retry ends."""
    from types import SimpleNamespace

    from rich.console import Console

    from sweeper.run.progress import CellProgress
    from sweeper.run.ray_tune import _TuneRows
    from sweeper.run.rows import RowSink

    import json

    location = store.locate(str(tmp_path))
    _, rows, _ = job_rows
    trial = SimpleNamespace(trial_id="t1")
    with CellProgress(Console(file=io.StringIO()), total=len(rows), done=0) as progress:
        callback = _TuneRows(RowSink(location, progress, store.new_launch(grid.validate(GRID))))
        for row in list(rows.values())[:3]:
            callback.on_trial_result(0, [], trial, {"row": json.dumps(row)})
        callback.on_trial_recover(0, [], trial)
        assert store.done_cell_ids(location) == {r["cell_id"] for r in list(rows.values())[:3]}
        # the retry reports the same cells again and then more: each is stored once
        for row in rows.values():
            callback.on_trial_result(0, [], trial, {"row": json.dumps(row)})
        callback.on_trial_complete(0, [], trial)
    assert store.check(location).healthy and store.read(location).table.num_rows == len(rows)


# ---------------------------------------------------------------- deployment

def test_rows_carry_the_deployed_footprint_and_accuracy(job_rows):
    from sweeper.deploy import footprint

    _, rows, _ = job_rows
    clean = rows["none", "0"]
    assert clean["footprint_source"] == "measured" and clean["deploy_error"] is None
    assert clean["flash_kb"] == pytest.approx(clean["tflite_kb"] + footprint.RUNTIME_FLASH_KB)
    assert clean["ram_kb"] == pytest.approx(clean["arena_kb"] * (1 + footprint.ARENA_MARGIN))
    # int8 TFLite adds int32 biases, scales and the graph to the packed int8 weights
    assert clean["tflite_kb"] > clean["flash_packed_kb"]
    # an int8 model deploys faithfully: the .tflite agrees with QKeras on clean samples
    assert abs(clean["deployed_clean_acc"] - clean["clean_acc"]) <= 0.1
    for row in rows.values():
        assert len(row["deployed_adv_correct"]) == row["n_samples"]
        assert row["deployed_adv_acc"] == pytest.approx(np.mean(row["deployed_adv_correct"]))
    # eps 0 of a minimal attack is clean for the deployed model too
    assert rows["cw_l2", "0"]["deployed_adv_acc"] == clean["deployed_clean_acc"]


def test_the_tflite_is_kept_beside_the_weights_and_reused(tmp_path):
    plan = expand.expand(grid.validate({**GRID, "attacks": [{"name": "fgsm", "eps": [0.1]}]}))
    [job] = plan.jobs
    context = JobContext("trial", ("stm32h7",), model_cache=str(tmp_path))
    first, again = [], []
    run_job(job, plan.cells_of(job.job_id), datasets.load("digits"), context, first.append)
    flatbuffer = (tmp_path / f"{job.job_id}.tflite").read_bytes()
    assert flatbuffer[4:8] == b"TFL3"  # a TFLite flatbuffer, ready to flash
    assert len(flatbuffer) == round(first[0]["tflite_kb"] * 1024)
    run_job(job, plan.cells_of(job.job_id), datasets.load("digits"), context, again.append)
    assert again[0]["model_cached"] and again[0]["weights_sha256"] == first[0]["weights_sha256"]
    assert [r["deployed_adv_acc"] for r in again] == [r["deployed_adv_acc"] for r in first]
    assert again[0]["arena_kb"] == first[0]["arena_kb"]


def test_a_model_the_converter_rejects_gets_an_estimate_and_a_reason(monkeypatch):
    from sweeper import deploy

    def refuse(*args, **kwargs):
        raise RuntimeError("converter says no\nwith a long second line")

    monkeypatch.setattr(deploy, "convert_int8", refuse)
    plan = expand.expand(grid.validate({**GRID, "attacks": [{"name": "fgsm", "eps": [0.1]}]}))
    [job] = plan.jobs
    rows = []
    run_job(job, plan.cells_of(job.job_id), datasets.load("digits"), JobContext("trial", ("stm32h7",)),
            rows.append)
    assert len(rows) == 2  # the trial went on
    row = rows[0]
    assert row["footprint_source"] == "estimate"
    assert row["deploy_error"] == "RuntimeError: converter says no"
    assert row["tflite_kb"] is None and row["deployed_adv_acc"] is None
    assert row["flash_kb"] > 0 and row["ram_kb"] > 0
    store.to_table(rows)


# ---------------------------------------------------------------- checkpoints

def test_the_auto_interval_keeps_a_save_under_two_percent_of_the_epochs_between():
    from sweeper.run.checkpoints import CHECKPOINT_SHARE, auto_interval

    for save_s, epoch_s in [(0.05, 1.0), (0.5, 0.1), (2.0, 0.01), (0.001, 30.0), (0.2, 0.5)]:
        every = auto_interval(save_s, epoch_s)
        assert save_s / (every * epoch_s) < CHECKPOINT_SHARE  # cheap enough...
        assert every == 1 or save_s / ((every - 1) * epoch_s) >= CHECKPOINT_SHARE  # ...and no rarer
    assert auto_interval(0.5, 0.1) == 251  # 0.5 / (251 * 0.1) = 1.99%


def _saves(schedule, epochs: range, epoch_s: float, save_s: float) -> list[int]:
    """The epochs after which ``schedule`` saves, each epoch and save taking that long."""
    saved = []
    for done in epochs:
        if schedule.due(done, epoch_s):
            schedule.saved(done, save_s)
            saved.append(done)
    return saved


def test_auto_saves_after_a_minute_of_training_then_at_the_measured_interval():
    from sweeper.run.checkpoints import CHECKPOINT_MIN_S, CheckpointSchedule

    assert CHECKPOINT_MIN_S == 60.0
    auto = CheckpointSchedule("auto", start=0, epochs=1000)
    # 2 s epochs: the first save once 60 s of training have passed; it measures one save
    assert _saves(auto, range(1, 31), epoch_s=2.0, save_s=0.1) == [30]
    # then 0.1 s per save against the fastest epoch, 0.5 s: 11 epochs would keep it under
    # 2%, but 11 epochs are 5.5 s of training; a minute is 120 epochs
    assert _saves(auto, range(31, 300), epoch_s=0.5, save_s=0.1) == [150, 270]
    # long epochs: the first after one epoch, then the share rule binds (3 s per save
    # against 100 s epochs: every 2)
    long = CheckpointSchedule("auto", start=0, epochs=8)
    assert _saves(long, range(1, 9), epoch_s=100.0, save_s=3.0) == [1, 3, 5, 7]
    # a training shorter than a minute never saves
    assert _saves(CheckpointSchedule("auto", start=0, epochs=120), range(1, 121), 0.05, 0.01) == []
    # an integer overrides, with no floor; a run resumed at epoch 7 counts from 7
    assert _saves(CheckpointSchedule(5, start=7, epochs=20), range(8, 21), 1.0, 9.0) == [12, 17]
    assert _saves(CheckpointSchedule(1, start=0, epochs=3), range(1, 4), 1.0, 0.1) == [1, 2]  # not after the last


def _small_model(preset: str = "int4"):
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(7)
    return models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get(preset))


class _Interrupt(Exception):
    pass


class _DiesAfter:
    """Checkpoint hooks whose process 'dies' right after checkpointing epoch ``k``."""

    def __init__(self, k: int):
        self.k, self.saved = k, []

    def latest(self):
        return None

    def save(self, data: bytes, epoch: int) -> None:
        self.saved.append(epoch)
        if epoch == self.k:
            raise _Interrupt

    def finished(self) -> None:
        pass


def test_a_checkpoint_round_trips_weights_optimizer_and_epoch(tmp_path):
    from sweeper.plan.entries import Train
    from sweeper.run.checkpoints import Checkpoints, TrainState, restore, snapshot
    from sweeper.run.training import train

    digits = datasets.load("digits")
    trained = _small_model()
    train(trained, Train(epochs=2, learning_rate=0.01), digits.x[:300], digits.y[:300], 10, seed=3)
    state = TrainState.from_bytes(snapshot(trained, trained.optimizer, 2, 3).to_bytes())
    Checkpoints(str(tmp_path), "job").save(state)
    loaded = Checkpoints(str(tmp_path), "job").latest(seed=3)
    assert Checkpoints(str(tmp_path), "job").latest(seed=4) is None  # another job's shuffle

    fresh = _small_model()
    fresh.compile(optimizer=_fresh_adam(), loss="mse")
    assert restore(fresh, fresh.optimizer, loaded) == 2
    for restored, original in zip(fresh.get_weights(), trained.get_weights()):
        np.testing.assert_array_equal(restored, original)
    assert int(fresh.optimizer.iterations.numpy()) == int(trained.optimizer.iterations.numpy()) == 10
    for restored, original in zip(fresh.optimizer.variables, trained.optimizer.variables):
        np.testing.assert_array_equal(restored.numpy(), original.numpy())  # Adam's moments too

    other = _small_model("int8")
    other.compile(optimizer=_fresh_adam(), loss="mse")
    before = other.get_weights()
    foreign = TrainState(2, 3, loaded.model[:-1], loaded.optimizer)  # a layer short
    assert restore(other, other.optimizer, foreign) == 0  # ignored: train from scratch
    assert all(np.array_equal(a, b) for a, b in zip(other.get_weights(), before))


def _fresh_adam():
    import tensorflow as tf

    return tf.keras.optimizers.Adam()


def test_training_interrupted_at_epoch_k_and_resumed_ends_with_identical_weights(tmp_path):
    """Bitwise, not approximately: the resumed run restores every variable exactly and
    replays the same batches in the same order on the same single-threaded CPU kernels.
    (Stochastic presets and dropout draw from TensorFlow's stateful random ops, which
    a checkpoint cannot capture: they resume with fresh draws, not tested here.)"""
    from sweeper.plan.entries import Train
    from sweeper.run.checkpoints import Checkpoints
    from sweeper.run.training import train

    digits = datasets.load("digits")
    x, y = digits.x[:400], digits.y[:400]
    settings = Train(epochs=5, learning_rate=0.01, schedule="cosine")
    uninterrupted = _small_model()
    assert train(uninterrupted, settings, x, y, 10, seed=3) == 0

    dies = _DiesAfter(k=3)
    with pytest.raises(_Interrupt):
        train(_small_model(), settings, x, y, 10, seed=3, checkpoints=Checkpoints(str(tmp_path), "job", 1, dies))
    assert dies.saved == [1, 2, 3]
    resumed = _small_model()  # a new process: the model is built (initialised) afresh
    assert train(resumed, settings, x, y, 10, seed=3, checkpoints=Checkpoints(str(tmp_path), "job", 1)) == 3
    assert int(resumed.optimizer.iterations.numpy()) == 5 * 7  # the cosine schedule went on
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_job_resumes_from_the_stored_checkpoint_says_so_and_removes_it(tmp_path):
    plan = expand.expand(grid.validate({**GRID, "attacks": [], "train": {"epochs": 4}}))
    [job] = plan.jobs
    context = JobContext("trial", ("stm32h7",), model_cache=str(tmp_path / "models"),
                         checkpoints=str(tmp_path / "checkpoints"), checkpoint_every=1)
    digits, rows = datasets.load("digits"), []
    with pytest.raises(_Interrupt):
        run_job(job, plan.cells_of(job.job_id), digits, context, rows.append, hooks=_DiesAfter(k=2))
    assert (tmp_path / "checkpoints" / f"{job.job_id}.npz").exists() and not rows
    run_job(job, plan.cells_of(job.job_id), digits, context, rows.append)
    assert [row["resumed_from_epoch"] for row in rows] == [2]
    assert (tmp_path / "models" / f"{job.job_id}.weights.h5").exists()
    assert not (tmp_path / "checkpoints" / f"{job.job_id}.npz").exists()  # weights cached: gone

    fresh = []  # the same job uninterrupted, in another store: the same trained weights
    run_job(job, plan.cells_of(job.job_id), digits, JobContext("trial", ("stm32h7",)), fresh.append)
    assert fresh[0]["resumed_from_epoch"] is None
    assert fresh[0]["weights_sha256"] == rows[0]["weights_sha256"]
    store.to_table(rows + fresh)  # the column fits the schema

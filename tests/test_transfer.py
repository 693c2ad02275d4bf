"""Transfer attacks: the grid's ``source`` key is checked, expansion adds the source cells
a transfer needs without changing any existing id, the launch runs sources before their
targets, and on real trained models the transfer rows line up with their source's samples
and examples, store them once, and a relaunch computes nothing."""

from __future__ import annotations

import copy
import math
import re

import numpy as np
import pytest

from sweeper import store
from sweeper.analysis import query
from sweeper.errors import UserError
from sweeper.plan import entries, expand, grid
from sweeper.run import sweep
from sweeper.run.transfer import transfer_rate
from tests.conftest import TINY_GRID, write_grid

TRANSFER = {"name": "fgsm", "eps": [0.1, 0.2], "source": {"quantizer": "fp"}}


def transfer_grid(**source) -> dict:
    raw = copy.deepcopy(TINY_GRID)
    raw["attacks"] = [{"name": "fgsm", "norm": "inf", "eps": [0.1]},
                      {**TRANSFER, "source": source or TRANSFER["source"]}]
    return raw


# ---------------------------------------------------------------- grid

@pytest.mark.parametrize("source, message", [
    ({"quantizer": "fp", "preset": "x"}, "attacks.1.source.preset: unknown key; accepted: model, quantizer, defense"),
    ({}, "attacks.1.source: name the source's model, quantizer and/or defense"),
    ({"quantizer": "fp", "defense": "jr"}, "attacks.1.source: small_cnn/fp with defense 'jr' (the source of "
                                           "small_cnn/fp with 'none') is not trained for dataset 'digits'; "
                                           "name the source's defense, one of: none"),
    ({"quantizer": "int8"}, "attacks.1.source: small_cnn/int8 (the source of small_cnn/fp) is not trained "
                            "for dataset 'digits'"),
    ({"model": "resnet8"}, "attacks.1.source: resnet8/fp (the source of small_cnn/fp) is not trained"),
    ({"quantizer": "int3"}, "attacks.1.source: unknown quantizer 'int3'; available: fp"),
])
def test_a_bad_source_is_one_line_naming_the_field(source, message):
    raw = transfer_grid()
    raw["attacks"][1]["source"] = source
    with pytest.raises(UserError) as error:
        grid.validate(raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_transfer_entry_is_labelled_by_its_source():
    loaded = grid.validate(transfer_grid(model="small_cnn", quantizer="fp"))
    assert [entry.key for entry in loaded.attacks] == ["fgsm", "fgsm<-small_cnn/fp"]
    assert grid.validate(transfer_grid()).attacks[1].key == "fgsm<-fp"


# ---------------------------------------------------------------- expansion

def defended_transfer_grid(**source) -> dict:
    """fp and int4, each undefended and with jr."""
    raw = transfer_grid(**source)
    raw["defenses"] = ["none", "jr"]
    return raw


def test_a_defended_targets_source_has_its_defense_unless_the_entry_names_one():
    plan = expand.expand(grid.validate(defended_transfer_grid()), fingerprints=False)
    jobs = {(j.quantizer, j.defense_label): j for j in plan.jobs}
    by_id = {c.cell_id: c for c in plan.cells}
    sources = {(jobs_key, by_id[c.source.cell_id].job_id) for jobs_key, j in jobs.items()
               for c in plan.cells_of(j.job_id) if c.source is not None}
    # what the entry does not name is the target's: int4+jr learns from fp+jr
    assert sources == {(("int4", "none"), jobs["fp", "none"].job_id), (("int4", "jr"), jobs["fp", "jr"].job_id)}
    named = expand.expand(grid.validate(defended_transfer_grid(quantizer="fp", defense="none")),
                          fingerprints=False)
    jobs = {(j.quantizer, j.defense_label): j for j in named.jobs}
    transfers = [c for c in named.cells if c.source is not None]
    assert {c.attack_label for c in transfers} == {"fgsm<-fp+none"}
    # every target but fp+none itself gets the undefended fp model's examples: a defended
    # model and its undefended twin face the same examples
    assert {c.source.job_id for c in transfers} == {jobs["fp", "none"].job_id}
    assert {c.job_id for c in transfers} == {jobs[k].job_id for k in [("fp", "jr"), ("int4", "none"), ("int4", "jr")]}


def test_a_source_defense_must_be_trained_for_the_source():
    raw = defended_transfer_grid()
    raw["defenses"] = ["none", {"name": "jr", "quantizers": ["int4"]}]  # fp is never trained with jr
    with pytest.raises(UserError, match=re.escape("attacks.1.source: small_cnn/fp with defense 'jr' (the source "
                                                  "of small_cnn/int4 with 'jr') is not trained")):
        grid.validate(raw)
    raw["attacks"][1]["source"] = {"quantizer": "fp", "defense": "none"}
    assert grid.validate(raw).attacks[1].key == "fgsm<-fp+none"


def test_expansion_implies_the_source_cells_and_skips_a_model_that_is_its_own_source():
    plan = expand.expand(grid.validate(transfer_grid()), fingerprints=False)
    fp, int4 = plan.jobs
    assert (fp.quantizer, int4.quantizer) == ("fp", "int4")
    transfers = [c for c in plan.cells if c.source is not None]
    # fp is its own source: only int4 gets transfer cells, one per eps
    assert [(c.job_id, c.attack_label, c.eps_label) for c in transfers] == \
        [(int4.job_id, "fgsm<-fp", "0.1"), (int4.job_id, "fgsm<-fp", "0.2")]
    by_id = {c.cell_id: c for c in plan.cells}
    for cell in transfers:
        source = by_id[cell.source.cell_id]  # the source cell is in the plan, on the fp job
        assert source.job_id == fp.job_id == cell.source.job_id and source.keeps_arrays
        assert (source.attack, source.norm, source.eps, source.params) == (cell.attack, cell.norm, cell.eps, cell.params)
        assert source.source is None and source.attack_label == "fgsm"
        assert cell.cell_id != source.cell_id
    # eps 0.1 is the grid's own white-box fgsm cell, 0.2 was added for the transfer
    fp_cells = [(c.attack_label, c.eps_label, c.keeps_arrays) for c in plan.cells_of(fp.job_id)]
    assert fp_cells == [("none", "0", False), ("fgsm", "0.1", True), ("fgsm", "0.2", True)]
    assert [c.keeps_arrays for c in plan.cells_of(int4.job_id)] == [False] * 4


def test_existing_ids_do_not_change():
    # Literal ids from the code before transfer attacks: a white-box cell's identity
    # must not change, or every stored result would be recomputed.
    entry = entries.AttackEntry(name="pgd", eps=["8/255"], params={"max_iter": 3, "eps_step": "eps/4"})
    cell = expand.Cell("0123456789abcdef", "pgd", "pgd", "inf", 8 / 255, "8/255",
                       tuple(sorted(entry.resolved_params().items())), 20)
    assert expand.stable_id(cell.identity()) == "80b8f2a0b2fbc14e"
    # adding a transfer entry adds cells and changes none of the others, nor any job
    without = expand.expand(grid.validate(copy.deepcopy(TINY_GRID)), fingerprints=False)
    raw = copy.deepcopy(TINY_GRID)
    raw["attacks"].append(TRANSFER)
    with_transfer = expand.expand(grid.validate(raw), fingerprints=False)
    assert [j.job_id for j in with_transfer.jobs] == [j.job_id for j in without.jobs]
    assert {c.cell_id for c in without.cells} < {c.cell_id for c in with_transfer.cells}
    demo = expand.expand(grid.load("grids/demo.yaml"), fingerprints=False)
    assert not any(c.source or c.keeps_arrays for c in demo.cells) and len(demo.cells) == 216


def test_a_transfer_cell_id_names_its_source():
    plan = expand.expand(grid.validate(transfer_grid()), fingerprints=False)
    other = expand.expand(grid.validate(transfer_grid(model="small_cnn", quantizer="fp")), fingerprints=False)
    # the same source named two ways is the same cell; another source is another cell
    assert {c.cell_id for c in plan.cells} == {c.cell_id for c in other.cells}
    raw = transfer_grid()
    raw["quantizers"] = ["fp", "int4", "int8"]
    raw["attacks"].append({**TRANSFER, "source": {"quantizer": "int8"}})
    both = expand.expand(grid.validate(raw), fingerprints=False)
    int4 = [c for c in both.cells_of(both.jobs[1].job_id) if c.source is not None]
    assert len({c.cell_id for c in int4}) == 4 and {c.source.quantizer for c in int4} == {"fp", "int8"}


# ---------------------------------------------------------------- ordering

def test_waves_run_sources_first_and_recompute_only_missing_examples():
    plan = expand.expand(grid.validate(transfer_grid()), fingerprints=False)
    transfers = {c.cell_id for c in plan.cells if c.source is not None}
    sources = {c.cell_id for c in plan.cells if c.keeps_arrays}
    first, second, rerun = sweep.waves(plan, set(), set())
    assert {c.cell_id for _, cells in first for c in cells} == {c.cell_id for c in plan.cells} - transfers
    assert {c.cell_id for _, cells in second for c in cells} == transfers and not rerun
    # everything but the transfer cells stored, one source's examples missing: only that
    # source cell is recomputed, then the transfer cells run
    done = {c.cell_id for c in plan.cells} - transfers
    kept = sorted(sources)[0]
    first, second, rerun = sweep.waves(plan, done, {f"{kept}.npz"})
    assert [c.cell_id for _, cells in first for c in cells] == sorted(sources - {kept}) == sorted(rerun)
    assert {c.cell_id for _, cells in second for c in cells} == transfers
    # all stored: nothing in either wave
    assert sweep.waves(plan, done | transfers, set()) == ([], [], set())


def test_a_recomputed_source_cell_is_not_stored_again(tmp_path):
    import io
    import json
    from types import SimpleNamespace

    from rich.console import Console

    from sweeper.run.progress import CellProgress
    from sweeper.run.rows import RowSink

    def row(cell_id):
        return {**{name: None for name, _, _ in store.COLUMNS}, "cell_id": cell_id, "job_id": "j", "dataset": "digits",
                "model": "small_cnn", "quantizer": "fp", "fold": 0, "attack_label": "fgsm", "eps_label": "0.1",
                "model_cached": True}

    location = store.locate(str(tmp_path))
    progress = CellProgress(Console(file=io.StringIO()), total=2, done=1)
    rows = RowSink(location, progress, store.new_launch(grid.validate(copy.deepcopy(TINY_GRID))),
                   skip={"stored-source"})
    for cell_id in ("stored-source", "new-cell"):
        rows.add("t", row(cell_id))
    rows.flush("t")
    assert store.read(location, ["cell_id"]).table.column("cell_id").to_pylist() == ["new-cell"]
    assert rows.written == 1 and progress.done == 2


def test_transfer_rate_counts_samples_both_get_right_and_the_source_loses():
    source_clean = np.array([1, 1, 1, 1, 0, 1], bool)
    source_adv = np.array([0, 0, 0, 1, 0, 0], bool)
    target_clean = np.array([1, 1, 1, 1, 1, 0], bool)
    target_adv = np.array([0, 1, 1, 0, 0, 0], bool)
    # samples 0-2 qualify (both right, source fooled); the target is fooled on sample 0
    assert transfer_rate(source_clean, source_adv, target_clean, target_adv) == pytest.approx(1 / 3)
    assert math.isnan(transfer_rate(source_clean, np.ones(6, bool), target_clean, target_adv))


class _ReadsItsLabel:
    """A classifier whose prediction is written in its input: class round(10 * first pixel).
    So a constructed input says exactly what the target predicts on it."""

    def predict(self, x, **_):
        if not isinstance(x, np.ndarray):  # the batches of a tf.data pipeline, as sweeper predicts
            x = np.concatenate([np.asarray(batch) for batch in x])
        return np.eye(10)[np.rint(10 * x[:, 0, 0, 0]).astype(int)]


def _written(classes) -> np.ndarray:
    x = np.full((len(classes), 2, 2, 1), 0.5, np.float32)
    x[:, 0, 0, 0] = np.asarray(classes) / 10
    return x


def test_a_sample_the_target_gets_wrong_unperturbed_is_not_robust_to_a_transfer(tmp_path, monkeypatch):
    from sweeper.run import evaluate, transfer

    y = np.array([0, 1, 2, 3])
    # the target: right on samples 0 and 2 unperturbed, wrong on 1 and 3; its int8 build
    # is also wrong on sample 2
    samples = evaluate.Samples(np.arange(4), _written([0, 5, 2, 7]), y, np.array([0, 5, 2, 7]),
                               np.array([0, 5, 9, 7]))
    # the source's examples: sample 0 fooled, sample 1 lands on its label (the case at
    # issue), 2 and 3 keep their classes
    x_adv = _written([4, 1, 2, 7])
    store.put_arrays(store.locate(str(tmp_path)), "source-cell.npz", sample_index=samples.index, x_adv=x_adv,
                     clean_correct=np.ones(4, bool), adv_correct=np.array([0, 0, 1, 1], bool))
    source = expand.Source("source-cell", "source-job", "source-config", "small_cnn", "fp")
    cell = expand.Cell("job", "fgsm", "fgsm<-fp", "inf", 1.0, "1.0", (), 4, "cell", source=source)
    deployed = object()  # its predictions come from the same reader
    monkeypatch.setattr(transfer, "deployed_predict", lambda d, x: np.argmax(_ReadsItsLabel().predict(x), 1)
                        if d is deployed else None)
    row = transfer.transfer(cell, _ReadsItsLabel(), deployed, samples, str(tmp_path))
    assert row["adv_pred"] == [4, 1, 2, 7]  # right on sample 1's example...
    assert row["adv_correct"] == [False, False, True, False]  # ...yet not robust: wrong unperturbed
    assert row["adv_acc"] == 0.25 and row["clean_acc"] == 0.5
    assert row["attack_success_rate"] == 0.5  # of the 2 clean-correct samples, 1 fooled
    # the .tflite by its own clean predictions: wrong on sample 2 unperturbed, so not robust there
    assert row["deployed_adv_correct"] == [False, False, False, False] and row["deployed_adv_acc"] == 0.0
    # of the samples both get right unperturbed and whose example fools the source (sample 0)
    assert row["transfer_rate"] == 1.0
    # adv_acc never exceeds clean_acc in any cell
    assert not (np.array(row["adv_correct"]) & ~np.array(row["clean_correct"])).any()


# ---------------------------------------------------------------- end to end

@pytest.mark.slow
def test_transfer_rows_line_up_source_and_target_samples(tmp_path, monkeypatch):
    from tests.conftest import cli as sweeper  # in process: the waves need no Ray, the CLI no new interpreter

    monkeypatch.chdir(tmp_path)
    raw = transfer_grid()
    raw["train"] = {"epochs": 2, "batch_size": 64}
    path = write_grid(tmp_path, raw)
    plan = expand.expand(grid.load(path))
    launched = sweeper("launch", str(path), "--results", "results", "--local", cwd=tmp_path)  # the waves need no Ray
    assert launched.returncode == 0, launched.stderr
    assert f"computed {len(plan.cells)} cells with 2 trainings" in launched.stdout
    location = store.locate("results")
    rows = {r["cell_id"]: r for r in store.read(location).table.to_pylist()}
    assert set(rows) == {c.cell_id for c in plan.cells}
    transfers = [c for c in plan.cells if c.source is not None]
    arrays_dir = tmp_path / "results" / store.ADVERSARIAL_DIR
    assert sorted(p.name for p in arrays_dir.glob("*.npz")) == sorted(f"{c.source.cell_id}.npz" for c in transfers)
    model = _cached_model(plan.jobs[1], tmp_path / "results")
    for cell in transfers:
        _check_transfer_row(rows[cell.cell_id], rows[cell.source.cell_id], cell, plan, model, location)
    _check_robust_and_worst_case(transfers, rows)
    written = {p.name: p.stat().st_mtime_ns for p in arrays_dir.glob("*.npz")}

    again = sweeper("launch", str(path), "--results", "results", "--local", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{len(plan.cells)}/{len(plan.cells)} cells already done" in again.stdout
    assert {p.name: p.stat().st_mtime_ns for p in arrays_dir.glob("*.npz")} == written  # written once

    report = sweeper("report", "results", "--out", "report", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Transfer attacks" in text and "fgsm Linf @ 0.2" in text and "(white-box)" in text
    _check_missing_examples_are_recomputed(path, plan, location, arrays_dir)


def _check_missing_examples_are_recomputed(path, plan, location, arrays_dir):
    """An older store: a source cell's row is stored, its examples are not, and a new target
    (int2) needs them. The first wave recomputes that source cell (in-process here: the
    launch machinery is tested above), and its examples come out as they were."""
    from sweeper import datasets
    from sweeper.run import trial

    source = next(c for c in plan.cells if c.keeps_arrays)
    saved = store.get_arrays(store.locate(location.uri(store.ADVERSARIAL_DIR)), f"{source.cell_id}.npz")
    (arrays_dir / f"{source.cell_id}.npz").unlink()
    extended = expand.expand(grid.load(path, ["quantizers=[fp,int4,int2]"]))
    int2 = extended.jobs[2]
    first, second, rerun = sweep.waves(extended, store.done_cell_ids(location),
                                       store.file_names(location, store.ADVERSARIAL_DIR))
    assert rerun == {source.cell_id}
    assert {job.job_id: [c.cell_id for c in cells] for job, cells in first} == \
        {int2.job_id: [c.cell_id for c in extended.cells_of(int2.job_id) if c.source is None],
         plan.jobs[0].job_id: [source.cell_id]}
    assert [c.cell_id for _, cells in second for c in cells] == \
        [c.cell_id for c in extended.cells_of(int2.job_id) if c.source is not None]
    job = plan.jobs[0]
    context = trial.JobContext("tiny", ("stm32h7",), model_cache=location.uri("models"),
                               adversarial=location.uri(store.ADVERSARIAL_DIR))
    rows = []
    outcome = trial.run_job(job, [source], datasets.load_all(None, [job.dataset_key])[job.dataset_key], context,
                            report=rows.append)
    assert not outcome.trained and len(rows) == 1
    again = store.get_arrays(store.locate(location.uri(store.ADVERSARIAL_DIR)), f"{source.cell_id}.npz")
    assert set(again) == set(saved) and all(np.array_equal(again[k], saved[k]) for k in saved)


def _cached_model(job, results):
    from sweeper import datasets, models
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.run.cache import ModelCache

    shape, classes = datasets.shape(job.dataset, dict(job.dataset_options))
    model = models.build(job.model, shape, classes, QUANTIZERS.get(job.quantizer))
    assert ModelCache(str(results / "models")).load_weights(model, job.job_id)
    return model


def _check_transfer_row(row, source_row, cell, plan, model, location):
    fp, int4 = plan.jobs
    assert (row["job_id"], row["quantizer"], row["attack_label"]) == (int4.job_id, "int4", "fgsm<-fp")
    assert (row["source_job_id"], row["source_config_id"]) == (fp.job_id, fp.config_id)
    assert (row["source_model"], row["source_quantizer"]) == ("small_cnn", "fp")
    assert source_row["source_job_id"] is None and source_row["transfer_rate"] is None
    # the same samples, in the same order, as the source cell and its stored examples
    assert row["sample_index"] == source_row["sample_index"]
    arrays = store.get_arrays(store.locate(location.uri(store.ADVERSARIAL_DIR)), f"{cell.source.cell_id}.npz")
    assert arrays["sample_index"].tolist() == row["sample_index"]
    assert arrays["adv_correct"].tolist() == source_row["adv_correct"]
    # the target's predictions are the cached int4 model's on the stored examples
    predicted = np.argmax(model.predict(arrays["x_adv"], verbose=0), axis=1)
    assert row["adv_pred"] == predicted.tolist()
    assert np.max(row["pert_linf"]) <= cell.eps * (1 + 1e-5) and np.max(row["pert_linf"]) > 0
    # the transfer rate, recomputed from the two rows' per-sample columns
    both = np.array(source_row["clean_correct"]) & np.array(row["clean_correct"]) & ~np.array(source_row["adv_correct"])
    fooled = both & ~np.array(row["adv_correct"])
    expected = fooled.sum() / both.sum() if both.any() else float("nan")
    assert row["transfer_rate"] == pytest.approx(expected, nan_ok=True)
    assert both.sum() > 0  # fgsm at 0.1 fools the fp model on some samples: the rate is a number


def _check_robust_and_worst_case(transfers, rows):
    robust = query.run("results", "SELECT * FROM robust WHERE quantizer = 'int4'").to_pylist()
    points = {(r["attack_label"], r["eps_label"]): r for r in robust}
    for cell in transfers:  # one fold: the transfer point is its row, never blended with fgsm's
        point, row = points["fgsm<-fp", cell.eps_label], rows[cell.cell_id]
        assert point["adv_acc_mean"] == row["adv_acc"] and point["source_quantizer"] == "fp"
        assert point["transfer_rate_mean"] == pytest.approx(row["transfer_rate"])
    white = next(r for r in rows.values() if r["quantizer"] == "int4" and r["attack_label"] == "fgsm")
    transfer = rows[transfers[0].cell_id]
    assert points["fgsm", "0.1"]["source_config_id"] is None
    # the worst case at (inf, 0.1) covers the transfer attack: per sample, robust to both
    worst = points["worst(fgsm+fgsm<-fp)", "0.1"]
    assert worst["adv_acc_mean"] == pytest.approx(np.mean(np.array(white["adv_correct"]) & transfer["adv_correct"]))

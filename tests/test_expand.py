"""Expansion: counts per grid shape, one training per job, stable ids."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from sweeper.errors import UserError
from sweeper.plan import expand, grid
from tests.conftest import write_grid

# (overrides, expected cells, expected training jobs)
SHAPES = [
    ([], 2 * 1 * (1 + 2 + 1), 2),  # 2 quantizers x 1 fold; none + 2 fgsm + 1 pgd
    (["folds.only=null"], 2 * 3 * 4, 6),
    (["folds.k=5", "folds.only=[0,2,4]"], 2 * 3 * 4, 6),
    (["attacks=[]"], 2 * 1 * 1, 2),  # the clean evaluation is always there
    (["quantizers=[fp,int8,int4,int2,ternary,stq,binary,sbinary]"], 8 * 4, 8),
    (["attacks.fgsm.eps=[0.1,0.2,0.3]"], 2 * 5, 2),
]


@pytest.mark.parametrize("overrides, cells, jobs", SHAPES)
def test_cell_and_job_counts(tmp_path, tiny_grid, overrides, cells, jobs):
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid), overrides))
    assert len(plan.cells) == cells
    assert len(plan.jobs) == jobs
    assert len({c.cell_id for c in plan.cells}) == cells
    assert len({j.job_id for j in plan.jobs}) == jobs
    # every cell belongs to exactly one job, and every job has its clean cell
    assert {c.job_id for c in plan.cells} == {j.job_id for j in plan.jobs}
    for job in plan.jobs:
        assert sum(c.attack == "none" for c in plan.cells_of(job.job_id)) == 1


def test_axis_counts(tmp_path, tiny_grid):
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid), ["folds.only=null"]))
    assert plan.axis_counts() == {"datasets": 1, "models": 1, "quantizers": 2, "defenses": 1, "folds": 3,
                                  "attacks (with none)": 3, "attack x epsilon points": 4}


def test_cells_carry_resolved_parameters_and_labels(tmp_path, tiny_grid):
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    pgd = [c for c in plan.cells if c.attack == "pgd"][0]
    params = dict(pgd.params)
    assert params["max_iter"] == 3
    assert params["eps_step"] == pytest.approx(2 / 255)
    assert "num_random_init" in params  # sweeper's default made explicit
    assert pgd.eps_label == "8/255" and pgd.eps == pytest.approx(8 / 255)


def test_ids_change_with_what_determines_the_result(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    base = expand.expand(grid.load(path))
    same = expand.expand(grid.load(path))
    assert [c.cell_id for c in base.cells] == [c.cell_id for c in same.cells]
    for override in ["seed=1", "train.epochs=2", "samples=21", "attacks.pgd.params.max_iter=4"]:
        changed = expand.expand(grid.load(path, [override]))
        assert not set(c.cell_id for c in changed.cells) >= set(c.cell_id for c in base.cells), override


def test_ids_ignore_what_does_not_matter(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    base = {c.cell_id for c in expand.expand(grid.load(path)).cells}
    # a new name, a relabelled epsilon of equal value, other MCU targets, more quantizers
    renamed = expand.expand(grid.load(path, ["name=other", "attacks.pgd.eps=[0.03137254901960784]",
                                             "mcus=[stm32h7,stm32f4]",
                                             "quantizers=[fp,int4,int8]"]))
    assert base <= {c.cell_id for c in renamed.cells}


def test_ids_are_stable_across_processes(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    script = ("import sys; from sweeper.plan import expand, grid; "
              f"print(','.join(c.cell_id for c in expand.expand(grid.load({str(path)!r})).cells))")
    outputs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={"PYTHONHASHSEED": seed, "PATH": ""}, check=True).stdout
               for seed in ("1", "2")}
    assert len(outputs) == 1
    assert outputs.pop().strip() == ",".join(c.cell_id for c in expand.expand(grid.load(path)).cells)


def test_identical_attack_entries_are_rejected(tmp_path, tiny_grid):
    tiny_grid["attacks"].append({"name": "fgsm", "label": "fgsm_again", "norm": "inf", "eps": [0.1]})
    with pytest.raises(UserError, match="'fgsm' and 'fgsm_again' define the same cells"):
        expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))


def test_same_attack_twice_with_labels_and_other_norms(tmp_path, tiny_grid):
    tiny_grid["attacks"].append({"name": "fgsm", "label": "fgsm_l2", "norm": 2, "eps": [0.1]})
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    labels = {c.attack_label for c in plan.cells if c.attack == "fgsm"}
    assert labels == {"fgsm", "fgsm_l2"}
    assert {c.norm for c in plan.cells if c.attack_label == "fgsm_l2"} == {"2"}


def test_a_dataset_listed_twice_is_rejected(tmp_path, tiny_grid):
    with pytest.raises(UserError, match="dataset is listed twice"):
        expand.expand(grid.load(write_grid(tmp_path, tiny_grid), ["datasets=[digits, {name: digits}]"]))


def test_models_limited_to_some_quantizers_and_datasets(tmp_path, tiny_grid):
    tiny_grid["models"] = ["small_cnn", {"name": "small_cnn_fp_only", "quantizers": ["fp"]}]
    with pytest.raises(UserError, match="unknown model 'small_cnn_fp_only'"):
        grid.load(write_grid(tmp_path, tiny_grid))
    tiny_grid["models"] = [{"name": "small_cnn", "quantizers": ["fp"], "datasets": ["digits"]}]
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    assert {job.quantizer for job in plan.jobs} == {"fp"}  # not the grid's [fp, int4]
    tiny_grid["models"] = [{"name": "small_cnn", "datasets": ["digits"]}]
    assert len(expand.expand(grid.load(write_grid(tmp_path, tiny_grid))).jobs) == 2


@pytest.mark.parametrize("samples, expected", [(7, 7), ({"digits": 9}, 9), ({"default": 11}, 11),
                                               ({"default": 11, "digits": 5}, 5)])
def test_samples_per_dataset(tmp_path, tiny_grid, samples, expected):
    tiny_grid["samples"] = samples
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    assert {cell.samples for cell in plan.cells} == {expected}


@pytest.mark.parametrize("samples, message", [
    ({"cifar": 3}, "unknown dataset 'cifar'"),
    ({"default": 0}, "must be >= 1"),
])
def test_bad_sample_counts(tmp_path, tiny_grid, samples, message):
    tiny_grid["samples"] = samples
    with pytest.raises(UserError, match=message):
        grid.load(write_grid(tmp_path, tiny_grid))


def test_attacks_limited_to_some_datasets(tmp_path, tiny_grid):
    tiny_grid["attacks"][1]["datasets"] = ["svhn"]  # pgd only where the grid has no svhn
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    assert not [cell for cell in plan.cells if cell.attack == "pgd"]
    assert len([cell for cell in plan.cells if cell.attack == "fgsm"]) == 4


def test_ids_carry_the_model_fingerprint_and_library_versions(tmp_path, tiny_grid, monkeypatch):
    """A changed architecture or library reuses no old row and no cached weights."""
    from sweeper import models

    path = write_grid(tmp_path, tiny_grid)
    base = expand.expand(grid.load(path))
    assert all(job.model_fingerprint for job in base.jobs)
    # Folds of one configuration share config_id; configurations do not.
    plan = expand.expand(grid.load(path, ["folds.only=null"]))
    by_config = {}
    for job in plan.jobs:
        by_config.setdefault(job.config_id, set()).add(job.fold)
    assert sorted(map(len, by_config.values())) == [3, 3]

    monkeypatch.setattr(expand, "library_minor_versions", lambda: {"tensorflow": "9.9"})
    other_libraries = expand.expand(grid.load(path))
    assert not {j.job_id for j in other_libraries.jobs} & {j.job_id for j in base.jobs}
    monkeypatch.undo()

    # Another architecture under the same name: one more filter in the first conv.
    original = models.MODELS.get("small_cnn")
    monkeypatch.setitem(models.MODELS._entries, "small_cnn", _wider(original))
    models._fingerprint_cached.cache_clear()
    try:
        wider = expand.expand(grid.load(path))
    finally:
        monkeypatch.undo()
        models._fingerprint_cached.cache_clear()
    assert not {j.job_id for j in wider.jobs} & {j.job_id for j in base.jobs}
    assert {c.cell_id for c in expand.expand(grid.load(path)).cells} == {c.cell_id for c in base.cells}


def _wider(builder):
    def build(input_shape, nb_classes, preset):
        import tensorflow as tf

        from sweeper.models import _qconv, _qdense, qmodel_class
        from sweeper.models.quantizers import activation

        inputs = tf.keras.Input(shape=input_shape)
        x = activation(preset)(_qconv(preset, 17, 3)(inputs))
        logits = _qdense(preset, nb_classes)(tf.keras.layers.Flatten()(x))
        return qmodel_class()(inputs, logits)
    return build


def test_fingerprint_ignores_keras_layer_names():
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    preset = QUANTIZERS.get("int4")
    first = models.model_fingerprint(models.build("small_cnn", (8, 8, 1), 10, preset))
    second = models.model_fingerprint(models.build("small_cnn", (8, 8, 1), 10, preset))  # q_conv2d_2...
    assert first == second
    assert first != models.model_fingerprint(models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get("int8")))
    assert first != models.model_fingerprint(models.build("small_cnn", (8, 8, 1), 7, preset))


def test_validate_counts_without_fingerprints(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    quick = expand.expand(grid.load(path), fingerprints=False)
    full = expand.expand(grid.load(path))
    assert (len(quick.cells), len(quick.jobs)) == (len(full.cells), len(full.jobs))
    assert not quick.fingerprinted and full.fingerprinted


def test_unbounded_and_zero_are_distinct_cells(tmp_path, tiny_grid):
    tiny_grid["attacks"] = [{"name": "boundary", "eps": [0, "unbounded"]}]
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    boundary = [c for c in plan.cells if c.attack == "boundary"]
    assert sorted(c.eps_label for c in boundary) == ["0", "0", "unbounded", "unbounded"]  # 2 jobs
    assert {c.eps for c in boundary} == {0.0, float("inf")}


def test_defenses_are_an_axis_and_none_keeps_the_ids_of_grids_without_defenses(tmp_path, tiny_grid):
    before = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))  # no defenses: key
    tiny_grid["defenses"] = ["none", "jr", {"name": "dbwt", "label": "cycled", "quantizers": ["int4"],
                                            "params": {"bits": [4, 2]}}]
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid, "defended.yaml")))
    assert sorted((j.quantizer, j.defense_label) for j in plan.jobs) == [
        ("fp", "jr"), ("fp", "none"), ("int4", "cycled"), ("int4", "jr"), ("int4", "none")]
    assert plan.axis_counts()["defenses"] == 3 and before.axis_counts()["defenses"] == 1
    plain = {j.job_id for j in plan.jobs if j.defense == "none"}
    assert plain == {j.job_id for j in before.jobs}  # stored rows of such grids stay valid
    assert {c.cell_id for c in before.cells} <= {c.cell_id for c in plan.cells}
    assert all("defense" not in j.identity() for j in before.jobs)
    [cycled] = [j for j in plan.jobs if j.defense == "dbwt"]
    assert cycled.identity()["defense"] == {"name": "dbwt", "params": {"bits": (4, 2), "period": 1}}


def test_defense_parameters_change_ids_and_labels_do_not(tmp_path, tiny_grid):
    def ids(defense):
        tiny_grid["defenses"] = [defense]
        return {j.job_id for j in expand.expand(grid.load(write_grid(tmp_path, tiny_grid))).jobs}

    jr = ids("jr")
    assert ids({"name": "jr", "label": "jacobian"}) == jr
    assert ids({"name": "jr", "params": {"lambda": 0.01}}) == jr  # the default, written out
    assert ids({"name": "jr", "params": {"lambda": 0.1}}).isdisjoint(jr)


@pytest.mark.parametrize("defenses, message", [
    (["jrr"], "defenses.0: unknown defense 'jrr'; available: none, jr, jr_layer, dq, fgsm_at, pgd_at, dbwt"),
    ([{"name": "fgsm_at", "params": {"eps": 2}}], "defenses.0: defense 'fgsm_at': eps must be a number in"),
    (["dbwt"], "defenses: defense 'dbwt' switches bit widths, so it needs a fixed-point preset"),
    (["jr", "jr"], "defenses: 'jr' appears twice"),
    (["jr", {"name": "jr", "label": "again"}], "defenses: 'jr' and 'again' are the same defense"),
    ([], "defenses: Tuple should have at least 1 item"),
])
def test_bad_defense_entries_are_one_line_errors(tmp_path, tiny_grid, defenses, message):
    tiny_grid["defenses"] = defenses
    with pytest.raises(UserError, match=re.escape(message)):
        grid.load(write_grid(tmp_path, tiny_grid))


def test_a_dbwt_job_is_evaluated_again_at_each_of_its_other_bit_widths(tmp_path, tiny_grid):
    tiny_grid["defenses"] = ["none", {"name": "dbwt", "quantizers": ["int4"], "params": {"bits": [8, 4, 2]}}]
    tiny_grid["attacks"].append({"name": "fgsm", "label": "fgsm_tr", "eps": [0.1], "source": {"quantizer": "fp", "defense": "none"}})
    plan = expand.expand(grid.load(write_grid(tmp_path, tiny_grid)))
    [cycled] = [j for j in plan.jobs if j.defense == "dbwt"]
    cells = plan.cells_of(cycled.job_id)
    assert {c.eval_bits for c in cells} == {None, 8, 2}  # int4's own width is what its own cells are
    white_box = [(c.attack_label, c.eps, c.params) for c in cells if c.eval_bits is None and c.source is None]
    assert any(c.source is not None for c in cells if c.eval_bits is None)  # transfer: own width only
    for width in (8, 2):
        at = [c for c in cells if c.eval_bits == width]
        assert [(c.attack_label, c.eps, c.params) for c in at] == white_box and all(c.source is None for c in at)
    assert len({c.cell_id for c in cells}) == len(cells)
    assert cycled.config_id_at(None) == cycled.config_id
    assert len({cycled.config_id, cycled.config_id_at(8), cycled.config_id_at(2)}) == 3
    assert all(c.eval_bits is None for job in plan.jobs if job.defense == "none" for c in plan.cells_of(job.job_id))

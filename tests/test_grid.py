"""Grid files: loading, overrides and one-line validation errors naming the field."""

from __future__ import annotations

import re

import pytest

from sweeper import grid
from sweeper.errors import UserError
from tests.conftest import ROOT, write_grid


def test_demo_grid_is_valid():
    loaded = grid.load(ROOT / "grids" / "demo.yaml")
    assert loaded.name == "demo"
    assert loaded.quantizers == ("fp", "int8", "int4", "int2", "ternary", "stq", "binary", "sbinary")
    assert {entry.name for entry in loaded.attacks} == {"fgsm", "pgd", "square"}


@pytest.mark.parametrize("raw, value, label", [
    (0.1, 0.1, "0.1"),
    (0, 0.0, "0"),
    ("8/255", 8 / 255, "8/255"),
    (" 16/255 ", 16 / 255, "16/255"),
    ("1e-3", 0.001, "1e-3"),
    ("unbounded", float("inf"), "unbounded"),
])
def test_epsilon_parsing_keeps_the_label_as_written(raw, value, label):
    eps = grid.parse_epsilon(raw)
    assert eps.value == pytest.approx(value)
    assert eps.label == label


@pytest.mark.parametrize("raw", [-0.1, "-8/255", "8/0", "abc", True, None, float("inf")])
def test_bad_epsilons_are_rejected(raw):
    with pytest.raises(ValueError):
        grid.parse_epsilon(raw)


# (override, text the one-line error must contain)
BAD_GRIDS = [
    ("folds.k=1", "folds.k: Input should be greater than or equal to 2"),
    ("folds.only=[3]", "fold index 3 out of range; accepted: 0..2"),
    ("attacks.fgsm.eps=[-0.1]", "attacks.0.eps"),
    ("quantizers=[int3]", "unknown quantizer 'int3'; available: fp, int8, int4, int2, ternary, stq, binary, sbinary"),
    ("models=[resnet99]", "unknown model 'resnet99'; available: small_cnn"),
    ("datasets=[mnist]", "unknown dataset 'mnist'; available: digits"),
    ("attacks.0.name=pgdd", "unknown attack 'pgdd'; available: fgsm, pgd, square"),
    ("mcus=[stm32x]", "unknown mcu 'stm32x'; available: stm32h7"),
    ("train.epoch=3", "train.epoch: unknown key; accepted: epochs, batch_size"),
    ("colour=blue", "colour: unknown key; accepted: name, seed, datasets"),
    ("attacks.pgd.params.max_iters=3", "unknown parameter 'max_iters'"),
    ("attacks.fgsm.norm=7", "unsupported norm '7'"),
    ("train.optimizer=rmsprop", "train.optimizer"),
    ("train.checkpoint_every=0", "train.checkpoint_every: use 'auto' or a whole number of epochs >= 1, "
                                 "not 0"),
    ("train.checkpoint_every=often", "train.checkpoint_every: use 'auto' or a whole number of epochs >= 1"),
    ("samples=0", "samples: attacked sample counts must be >= 1"),
    ("attacks.1.label=fgsm", "attack 'fgsm' appears twice"),
    ("attacks.fgsm.eps=[0.1,0.1]", "an epsilon is listed twice"),
    # 'unbounded' is a budget only minimal-perturbation attacks can have
    ("attacks.fgsm.eps=[unbounded]", "attack 'fgsm' needs finite budgets; 'unbounded' is only for"),
    # the name is the default store's folder: results/. or results/.. is the wrong place
    ("name=.", "name: '.' is not usable as a folder name"),
    ("name=..", "name: '..' is not usable as a folder name"),
    ("name=.hidden", "not usable as a folder name"),
    ("name=a/b", "not usable as a folder name"),
]


@pytest.mark.parametrize("override, expected", BAD_GRIDS)
def test_bad_fields_fail_with_one_line_naming_the_field(tmp_path, tiny_grid, override, expected):
    path = write_grid(tmp_path, tiny_grid)
    with pytest.raises(UserError) as caught:
        grid.load(path, [override])
    message = str(caught.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_missing_file_and_yaml_syntax_errors(tmp_path):
    with pytest.raises(UserError, match="grid file not found"):
        grid.load(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nquantizers: [fp\n")
    with pytest.raises(UserError, match=r"YAML syntax error at line \d+"):
        grid.load(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must be a YAML mapping"):
        grid.load(listing)


def test_required_fields(tmp_path, tiny_grid):
    del tiny_grid["models"]
    with pytest.raises(UserError, match="models: required field is missing"):
        grid.load(write_grid(tmp_path, tiny_grid))


def test_overrides_apply_before_validation(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    loaded = grid.load(path, ["train.epochs=2", "folds.k=5", "folds.only=[1, 4]",
                              "attacks.pgd.eps=[8/255, 16/255]", "attacks.0.params.num_random_init=1",
                              "resources.gpus=0.5"])
    assert loaded.train.epochs == 2
    assert loaded.folds.indices() == (1, 4)
    assert [e.label for e in loaded.attacks[1].eps] == ["8/255", "16/255"]
    assert loaded.attacks[0].params == {"num_random_init": 1}
    assert loaded.resources.gpus == 0.5


@pytest.mark.parametrize("override, expected", [
    ("train.epochs", "expected key=value"),
    ("attacks.9.eps=[1]", "index 9 out of range"),
    ("attacks.cw.eps=[1]", "no entry named 'cw'"),
    ("seed.x=1", "cannot set a field inside a value of type int"),
])
def test_bad_overrides(tmp_path, tiny_grid, override, expected):
    with pytest.raises(UserError, match=expected):
        grid.load(write_grid(tmp_path, tiny_grid), [override])


def test_name_defaults_to_file_stem(tmp_path, tiny_grid):
    del tiny_grid["name"]
    assert grid.load(write_grid(tmp_path, tiny_grid, "my-sweep.yaml")).name == "my-sweep"


def test_grid_objects_are_frozen(tmp_path, tiny_grid):
    loaded = grid.load(write_grid(tmp_path, tiny_grid))
    with pytest.raises(Exception):
        loaded.seed = 3


@pytest.mark.parametrize("dataset, expected", [
    ({"name": "gsc", "labels": "both"}, "option 'labels' is 'both'; accepted: paper, mlperf"),
    ({"name": "cifar10", "grayscale": "yes"}, "option 'grayscale' is 'yes'; accepted: False, True"),
    ({"name": "svhn", "colour": True}, "unknown option 'colour'; accepted: grayscale"),
])
def test_dataset_options_are_checked_before_anything_runs(tmp_path, tiny_grid, dataset, expected):
    tiny_grid["datasets"] = [dataset]
    with pytest.raises(UserError, match=re.escape(expected)):
        grid.load(write_grid(tmp_path, tiny_grid))


def test_dataset_options_with_accepted_values(tmp_path, tiny_grid):
    tiny_grid["datasets"] = [{"name": "gsc", "labels": "mlperf"}, {"name": "cifar10", "grayscale": True}]
    loaded = grid.load(write_grid(tmp_path, tiny_grid))
    assert loaded.datasets[0].resolved_options() == {"labels": "mlperf"}
    assert loaded.datasets[1].resolved_options() == {"grayscale": True}


def test_a_grid_file_named_dot_dot_is_rejected(tmp_path, tiny_grid):
    del tiny_grid["name"]
    path = write_grid(tmp_path, tiny_grid, name="..yaml")  # the name defaults to the stem, "."
    with pytest.raises(UserError, match="not usable as a folder name"):
        grid.load(path)


def test_minimal_attacks_take_unbounded_and_relative_steps(tmp_path, tiny_grid):
    tiny_grid["attacks"] = [{"name": "cw_l2", "eps": [0, 0.5, "unbounded"]},
                            {"name": "pgd", "eps": ["8/255"], "params": {"eps_step": "eps/4"}}]
    loaded = grid.load(write_grid(tmp_path, tiny_grid))
    assert [e.label for e in loaded.attacks[0].eps] == ["0", "0.5", "unbounded"]
    assert loaded.attacks[0].eps[2].unbounded and not loaded.attacks[0].eps[0].unbounded
    assert loaded.attacks[1].params["eps_step"] == "eps/4"


def test_the_checkpoint_interval_is_validated_but_not_part_of_job_ids(tmp_path, tiny_grid):
    from sweeper import expand

    path = write_grid(tmp_path, tiny_grid)
    assert grid.load(path).train.checkpoint_every == "auto"
    every_5 = grid.load(path, ["train.checkpoint_every=5"])
    assert every_5.train.checkpoint_every == 5
    # a resumed training ends with the same model whatever the interval: same jobs, same cells
    assert [j.job_id for j in expand.expand(every_5).jobs] == \
        [j.job_id for j in expand.expand(grid.load(path)).jobs]
    assert [j.job_id for j in expand.expand(grid.load(path, ["train.epochs=2"])).jobs] != \
        [j.job_id for j in expand.expand(every_5).jobs]  # epochs still are


@pytest.mark.parametrize("path", sorted((ROOT / "grids").glob("*.yaml")), ids=lambda path: path.name)
def test_every_shipped_grid_validates_and_expands(path):
    from sweeper import expand

    plan = expand.expand(grid.load(path), fingerprints=False)
    assert plan.jobs and all(plan.cells_of(job.job_id) for job in plan.jobs)

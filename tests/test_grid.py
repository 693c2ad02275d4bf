"""Grid files: loading, overrides and one-line validation errors naming the field."""

from __future__ import annotations

import re

import pytest

from sweeper.errors import UserError
from sweeper.plan import entries, grid
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
    eps = entries.parse_epsilon(raw)
    assert eps.value == pytest.approx(value)
    assert eps.label == label


@pytest.mark.parametrize("raw", [-0.1, "-8/255", "8/0", "abc", True, None, float("inf")])
def test_bad_epsilons_are_rejected(raw):
    with pytest.raises(ValueError):
        entries.parse_epsilon(raw)


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
    from sweeper.plan import expand

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
    from sweeper.plan import expand

    plan = expand.expand(grid.load(path), fingerprints=False)
    assert plan.jobs and all(plan.cells_of(job.job_id) for job in plan.jobs)


# ---------------------------------------------------------------- hostile and careless input
# Issue 20, items 3 and 4: each case with its whole one-line message. Before the fix the
# files hung validate (alias bombs, /dev/zero, a large file), raised tracebacks (encodings,
# deep nesting, odd --set paths) or were accepted (a repeated key, and every item-4 value,
# which then failed in a trial or trained nothing).

def _bomb(anchor: str, levels: int = 9) -> str:
    """A billion-laughs YAML flow list: 9**levels values once its aliases are expanded."""
    return (f"[&{anchor}0 [1,1,1,1,1,1,1,1,1], "
            + ", ".join(f"&{anchor}{i + 1} [" + ",".join([f"*{anchor}{i}"] * 9) + "]" for i in range(levels))
            + "]")


def _tiny_text(tiny_grid) -> str:
    import yaml

    tiny_grid["attacks"][1]["params"] = {"max_iter": 3}  # the line the alias bomb extends
    return yaml.safe_dump(tiny_grid, sort_keys=False, default_flow_style=None, width=10_000)


HOSTILE_FILES = [  # (id, bytes of the file from the tiny grid's YAML text, message after "<path>: ")
    ("alias bomb in attack params",
     lambda t: t.replace("{max_iter: 3}", "{max_iter: 3, x: " + _bomb("a") + "}").encode(),
     r"holds more than 10000 values with its aliases expanded at line \d+, column \d+"),
    ("alias bomb in a dataset option",
     lambda t: t.replace("datasets: [digits]", "datasets: [{name: digits, x: " + _bomb("b") + "}]").encode(),
     r"holds more than 10000 values with its aliases expanded at line 3, column \d+"),
    ("a grid over 1 MiB", lambda t: t.encode() + b"#" * (1 << 20),
     r"larger than 1 MiB, the most a grid file may be"),
    ("latin-1", lambda t: ("# Thé grid\n" + t).encode("latin-1"),
     r"not UTF-8 text: byte 0xe9 at offset 4 \(line 1\); save it as UTF-8"),
    ("invalid UTF-8 further down", lambda t: t.encode().replace(b"tiny", b"ti\xffny"),
     r"not UTF-8 text: byte 0xff at offset 8 \(line 1\); save it as UTF-8"),
    ("UTF-16 with a byte-order mark", lambda t: t.encode("utf-16"),
     r"is UTF-16 text \(it starts with a UTF-16 byte-order mark\); save it as UTF-8"),
    ("UTF-16 without one", lambda t: t.encode("utf-16-le"),
     r"NUL byte at offset 1 \(line 1\); UTF-16 text\? save it as UTF-8"),
    ("900-deep nesting", lambda t: (t + "x: " + "[" * 900 + "]" * 900 + "\n").encode(),
     r"nested deeper than 32 levels at line \d+, column 35"),
    ("seed twice", lambda t: t.replace("seed: 0", "seed: 0\nseed: 1").encode(),
     r"key 'seed' appears twice in one mapping at line 3, column 1"),
    ("a key that repeats after quoting", lambda t: t.replace("seed: 0", "seed: 0\n'seed': 1").encode(),
     r"key 'seed' appears twice in one mapping at line 3, column 1"),
    ("an alias to its own node", lambda t: (t + "x: &r [1, *r]\n").encode(),
     r"an alias refers to a node that contains it at line \d+, column \d+"),
    ("an integer of 5000 digits", lambda t: t.replace("seed: 0", "seed: " + "9" * 5000).encode(),
     r"cannot read the value '9+\.\.\. \(Exceeds the limit \(4300 digits\) for integer string "
     r"conversion\) at line 2, column 7"),
    ("a control character", lambda t: t.replace("seed: 0", "seed: \x01").encode(),
     r"character '\\x01' at line 2, column 7 is not allowed in YAML"),
    ("a 900 KB value quoted short",
     lambda t: t.replace("{max_iter: 3}", "{max_iter: " + "k" * 900_000 + "}").encode(),
     r"attacks.1: attack 'pgd': parameter 'max_iter' must be a whole number >= 1, got 'k{36}\.\.\."),
]


@pytest.mark.parametrize("make, message", [case[1:] for case in HOSTILE_FILES], ids=[c[0] for c in HOSTILE_FILES])
def test_hostile_files_are_refused_quickly_in_one_line(tmp_path, tiny_grid, make, message):
    import time

    path = tmp_path / "grid.yaml"
    path.write_bytes(make(_tiny_text(tiny_grid)))
    started = time.perf_counter()
    with pytest.raises(UserError) as caught:
        grid.load(path)
    assert time.perf_counter() - started < 10  # the bounds hold before any expansion
    assert re.fullmatch(re.escape(f"{path}: ") + message, str(caught.value)), str(caught.value)[:500]


def test_a_device_or_a_folder_is_refused_without_reading_it(tmp_path):
    with pytest.raises(UserError, match=r"^/dev/zero: not a regular file \(a character device\); "
                                        r"give the path of a grid file$"):
        grid.load("/dev/zero")
    with pytest.raises(UserError, match=r": is a folder, not a grid file$"):
        grid.load(tmp_path)


def test_a_utf8_byte_order_mark_is_fine(tmp_path, tiny_grid):
    path = tmp_path / "grid.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + _tiny_text(tiny_grid).encode())
    assert grid.load(path).name == "tiny"


def test_yaml_merge_keys_may_still_override_merged_keys(tmp_path, tiny_grid):
    text = _tiny_text(tiny_grid) + "train: {<<: {epochs: 5, batch_size: 8}, epochs: 2}\n"
    path = tmp_path / "grid.yaml"
    path.write_text(text.replace("train: {epochs: 1, batch_size: 64}\n", ""))
    loaded = grid.load(path)
    assert (loaded.train.epochs, loaded.train.batch_size) == (2, 8)


HOSTILE_OVERRIDES = [  # (--set, message after "<path>: " or from "--set")
    ("attacks.--1.eps=[0.1]", r"--set attacks.--1: no entry named '--1'"),
    ("attacks..eps=[0.1]", r"--set attacks..eps: a field name in the path is empty"),
    ("attacks.0.params=" + _bomb("c"),
     r"--set 'attacks.0.params=\[&c0 \[1,1,1,1,1,1,1,1,1\], &c1 \[\*c0,\*c0,\.\.\.: holds more than 10000 values "
     r"with its aliases expanded at line 1, column \d+"),
    ("attacks.0.eps=" + "[" * 100 + "]" * 100,
     r"--set 'attacks.0.eps=\[{42}\.\.\.: nested deeper than 32 levels at line 1, column 33"),
    ("attacks.0.params.x=" + "y" * 100_000, r"--set 'attacks.0.params.x=y{37}\.\.\.: value larger than 64 KiB"),
    ("seed={a: 1, a: 2}", r"--set 'seed={a: 1, a: 2}': key 'a' appears twice in one mapping at line 1, column 8"),
    ("name=[bold]x :x:", r"--set 'name=\[bold\]x :x:': YAML syntax error at line 1, column 7: expected <block end>, "
                         r"but found '<scalar>'"),
]


@pytest.mark.parametrize("override, message", HOSTILE_OVERRIDES, ids=[o[:40] for o, _ in HOSTILE_OVERRIDES])
def test_hostile_overrides_are_refused_in_one_line(tmp_path, tiny_grid, override, message):
    with pytest.raises(UserError) as caught:
        grid.load(write_grid(tmp_path, tiny_grid), [override])
    assert re.fullmatch(message, str(caught.value)), str(caught.value)[:500]


PATCH = "attacks=[{name: patch, eps: [0.25], params: {%s}}]"
RUN_TIME_REFUSALS = [  # issue 20, item 4: accepted by validate, refused by a trial (or training nothing)
    ("attacks=[{name: patch, eps: [1.0], params: {shape: [1, 4]}}]",
     "attacks.0: attack 'patch': parameter 'shape' [1, 4] gives a 4x16 patch at eps 1.0, larger than the "
     "8x8 input (dataset 'digits': 8x8x1 inputs, 10 classes)"),
    ("attacks=[{name: patch, eps: [0.01]}]",
     "attacks.0: attack 'patch': eps 0.01 covers less than one pixel of the 8x8 input (dataset 'digits': "
     "8x8x1 inputs, 10 classes)"),
    ("attacks.pgd.params.eps_step=0", "attacks.1: attack 'pgd': parameter 'eps_step' must be a number > 0 or "
     "relative to eps (eps, eps/k, eps*k or k*eps with a number k > 0), got 0"),
    ("attacks.pgd.params.eps_step=-1", "attacks.1: attack 'pgd': parameter 'eps_step' must be a number > 0 or "
     "relative to eps (eps, eps/k, eps*k or k*eps with a number k > 0), got -1"),
    ("attacks.pgd.params.eps_step=.nan", "attacks.1: attack 'pgd': parameter 'eps_step' must be a number > 0 or "
     "relative to eps (eps, eps/k, eps*k or k*eps with a number k > 0), got nan"),
    ("attacks.pgd.params.max_iter=-5", "attacks.1: attack 'pgd': parameter 'max_iter' must be a whole number "
     ">= 1, got -5"),
    (PATCH % "steps: 0", "attacks.0: attack 'patch': parameter 'steps' must be a whole number >= 1, got 0"),
    (PATCH % "learning_rate: -1", "attacks.0: attack 'patch': parameter 'learning_rate' must be a finite "
     "number > 0, got -1"),
    (PATCH % "target: 99", "attacks.0: attack 'patch': parameter 'target' 99 is not a class of the 10-class "
     "model (dataset 'digits': 8x8x1 inputs, 10 classes)"),
    (PATCH % "placement: fixed, position: [7, 7]",
     "attacks.0: attack 'patch': parameter 'position' [7, 7] puts the 4x4 patch outside the 8x8 input (top at "
     "most 4, left at most 4) (dataset 'digits': 8x8x1 inputs, 10 classes)"),
    ("attacks=[{name: square, eps: [0.1], params: {p_init: 1}}]",
     "attacks.0: attack 'square': parameter 'p_init' must be a number in (0, 1), got 1"),
    ("attacks=[{name: boundary, eps: [unbounded], params: {num_trial: 0}}]",
     "attacks.0: attack 'boundary': parameter 'num_trial' must be a whole number >= 1, got 0"),
    ("seed=-1", "seed: Input should be greater than or equal to 0"),
    ("seed=4294967296", "seed: Input should be less than or equal to 4294967295"),
    ("folds.k=1000", "folds.k: 1000 folds are more than dataset 'digits' allows: its smallest class (digit 8) "
     "has 174 images, so at most 174 folds can each test every class"),
    ("defenses=[none, {name: jr, quantizers: [int2]}]",
     "defenses.1: 'jr' is limited to quantizers int2, which no model of the grid is trained with: it would "
     "train nothing"),
    ("train.learning_rate=.inf", "train.learning_rate: Input should be a finite number"),
    ("train.epochs=10000000", "train.epochs: Input should be less than or equal to 1000000"),
    ("data_dir=\"a\\0b\"", "data_dir: 'a\\x00b' is not usable as a folder path (control characters)"),
]


@pytest.mark.parametrize("override, message", RUN_TIME_REFUSALS, ids=[o[:50] for o, _ in RUN_TIME_REFUSALS])
def test_what_a_trial_would_refuse_is_refused_by_validation(tmp_path, tiny_grid, override, message):
    path = write_grid(tmp_path, tiny_grid)
    with pytest.raises(UserError) as caught:
        grid.load(path, [override])
    assert str(caught.value) == f"{path}: {message}"


def test_a_plan_too_large_is_refused_before_it_is_expanded(tmp_path, tiny_grid):
    path = write_grid(tmp_path, tiny_grid)
    overrides = ["folds.k=174", "folds.only=null", "models=[small_cnn, resnet8, dscnn, stq_net]",
                 "quantizers=[fp, int8, int4]", "defenses=[none, jr, dq, fgsm_at, pgd_at]"]
    with pytest.raises(UserError) as caught:
        grid.load(path, overrides)
    # 4 models x 3 quantizers x 5 defenses x 174 folds; 4 cells each (clean, 2 fgsm, 1 pgd)
    assert str(caught.value) == (f"{path}: the grid makes 10440 trainings and at least 41760 cells; one grid "
                                 f"makes at most 10000 trainings and 1000000 cells: split it, or run some folds "
                                 f"(folds.only)")
    assert len(grid.load(path, overrides[:-1]).folds.indices()) == 174  # 2088 trainings are fine


def test_a_set_path_names_an_entry_by_its_label_and_refuses_to_guess_between_names():
    """The paper grid has three Square entries: labelled square_t4, unlabelled (label
    'square'), labelled square_l2. `attacks.square` is the one labelled square; it once
    set the first entry called square (square_t4), silently."""
    paper = grid.load(ROOT / "grids" / "paper.yaml", ["attacks.square.params.max_iter=7"])
    iterations = {a.label or a.name: dict(a.params).get("max_iter") for a in paper.attacks if a.name == "square"}
    assert iterations == {"square_t4": 100, "square": 7, "square_l2": 10000}
    raw = {"attacks": [{"name": "square", "label": "a"}, {"name": "square", "label": "b"}]}
    with pytest.raises(UserError, match=r"--set attacks.square: 2 entries are called 'square' \(indices and "
                                        r"labels: 0 \('a'\), 1 \('b'\)\); name one by its label or its index"):
        grid.apply_override(raw, "attacks.square.eps=[0.1]")
    grid.apply_override(raw, "attacks.b.eps=[0.1]")
    assert raw["attacks"][1]["eps"] == [0.1] and "eps" not in raw["attacks"][0]

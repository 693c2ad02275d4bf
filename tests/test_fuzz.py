"""Fuzzing grid input: the shipped grids, mutated one field at a time, through `sweeper
validate` in process (issue 20, item 6).

Each example takes a shipped grid (grids/*.yaml) and changes one or two things: a field replaced
by a bad or odd value, a field deleted, an unknown key added, a ``--set`` override, or the
file's bytes (another encoding, a stray byte, cut short, a repeated line). The property:

- refused: exit 2, exactly one line on stderr and nothing on stdout, no traceback,
  nothing written in the working folder;
- accepted: exit 0, and what ``launch`` builds from it on input grounds builds
  (``_assert_launchable``): every attack cell through ``attacks.build_attack`` (what a
  trial's ``attacks.run`` calls) on a real classifier of the dataset's declared shape,
  every defense through ``defenses.build`` and its ``setup`` on a model of its preset, the
  optimizer and schedule, the folds and attacked samples (on digits, the data at hand),
  the data folder, the launch record, each job's estimated cost (launch orders jobs by
  it). ``test_accepted_extremes_really_run`` trains and
  attacks for real (1 epoch) at the extreme values validation accepts.

Where the values come from, and how a new grid key adds its cases:

- ``HOSTILE``: wrong types, NaN and infinities, huge numbers and strings, deep nesting,
  alias bombs, rich markup and emoji codes, control characters: tried on every field.
- ``FIELD_VALUES``: per schema key (``folds.k``, ``train.epochs``, ...), the edge values
  that matter to it. ``test_every_schema_key_has_fuzz_values`` fails for a key of the
  ``Grid`` schema without an entry: **a new grid key adds its values there**.
- The registries: each attack and defense parameter's ``Limit`` (sweeper.plan.limits) gives
  its edges, inside and out (``_limit_values``), and each dataset option its accepted
  values. ``test_every_parameter_declares_its_limit`` fails for a parameter without one:
  **a new attack or defense parameter declares its Limit and is fuzzed from then on**.
- The issue's own cases, with their exact messages, are tables in tests/test_grid.py and
  tests/test_cli.py.

The example count is bounded (``SWEEPER_FUZZ_EXAMPLES``, default 100) and derandomized, so
the suite sees the same examples each run; set ``SWEEPER_FUZZ_RANDOM=1`` to draw new ones.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sweeper.plan import grid
from tests.conftest import ROOT

SHIPPED = sorted((ROOT / "grids").glob("*.yaml"))
EXAMPLES = int(os.environ.get("SWEEPER_FUZZ_EXAMPLES", "100"))
RAW = "__raw_yaml_{}__"  # a placeholder swapped for raw YAML text after dumping


class Raw:
    """YAML text to splice in as a value (aliases cannot be made by dumping)."""

    def __init__(self, text: str):
        self.text = text


def _bomb(levels: int) -> Raw:
    return Raw("[&l0 [1,1,1,1,1,1,1,1,1], " + ", ".join(
        f"&l{i + 1} [" + ",".join([f"*l{i}"] * 9) + "]" for i in range(levels)) + "]")


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


HOSTILE = [None, True, False, 0, -1, 1.5, 2**63, 10**400, -(10**30), float("nan"), float("inf"),
           float("-inf"), 1e308, "", " ", "x" * 100_000, "[/x]", "[bold red]x[/]", ":x:", "a\nb", "\x00",
           "\u202e", "../..", "8/0", "eps/0", "unbounded", [], {}, [1, "a", None], {"[/x]": ":x:"},
           _nested(20), _nested(40), _bomb(3), _bomb(8), Raw("&r [1, *r]")]

NAMES = ["fgsm", "pgd", "square", "cw_l2", "boundary", "zoo", "apgd_ce", "apgd_dlr", "patch",  # registries'
         "digits", "cifar10", "svhn", "gsc", "small_cnn", "resnet8", "dscnn", "stq_net", "fp", "int2", "ternary",
         "stq", "none", "jr", "dq", "fgsm_at", "pgd_at", "dbwt", "stm32h7", "nrf52840", "pgdd", "int3"]

FIELD_VALUES: dict[str, list] = {  # per schema key: its edges, good and bad (module docstring)
    "name": ["tiny", "a" * 100, "a" * 101, ".", "..", ".hidden", "a/b", "a b"],
    "seed": [0, 2**32 - 1, 2**32, -1, 1.0, "1"],
    "datasets": [[], ["digits", "digits"], ["digits", {"name": "digits"}], ["mnist"]],
    "datasets.*.name": NAMES,
    "datasets.*.options": [{"grayscale": True}, {"labels": "mlperf"}, {"colour": 1}, []],
    "models": [[], ["small_cnn", "small_cnn"], ["resnet99"]],
    "models.*.name": NAMES,
    "models.*.quantizers": [["fp"], ["int3"], [], ["fp", "fp"]],
    "models.*.datasets": [["digits"], ["cifar10"], [], ["digits", "digits"]],
    "quantizers": [["fp"], ["int3"], [], ["fp", "fp"], NAMES],
    "attacks": [[], [{"name": "fgsm", "eps": [0.1]}] * 2, [{"name": "patch", "eps": [1.0]}]],
    "attacks.*.name": NAMES,
    "attacks.*.label": ["x", "none", "fgsm", "[/x]", "a" * 1000],
    "attacks.*.norm": ["inf", "1", "2", 2.0, "patch", "l2", 7],
    "attacks.*.eps": [[0], [0, 0.0], [1.0], [1.5], [1 / 64], [0.01], ["unbounded"], ["8/255"], [-0.1], [],
                      [i / 1000 for i in range(300)]],
    "attacks.*.params": [{}, {"max_iter": 1}, {"targeted": True}],
    "attacks.*.datasets": [["digits"], ["cifar10"], ["mnist"], []],
    "attacks.*.source": [{}, {"quantizer": "fp"}, {"model": "resnet8"}, {"defense": "none"}, {"defense": "x"}],
    "attacks.*.source.model": NAMES,
    "attacks.*.source.quantizer": NAMES,
    "attacks.*.source.defense": ["none", "jr", "x"],
    "attacks.*.target": ["model", "deployed", "Deployed", "tflite", "", None, 1, ["deployed"]],
    "folds": [{}, {"k": 2}, {"k": 174}, {"k": 175}, {"k": 6000}],
    "folds.k": [1, 2, 3, 174, 175, 6000, 6254, 10**6],
    "folds.only": [[0], [2], [0, 0], [-1], [], [1.0]],
    "train": [{}, {"epochs": 1}],
    "train.epochs": [1, 10**6, 10**6 + 1, 0],
    "train.batch_size": [1, 2**31 - 1, 2**31, 0],
    "train.optimizer": ["adam", "adamax", "sgd", "rmsprop"],
    "train.learning_rate": [1e-300, 1.2e-38, 3.4e38, 1e300, 0, -1],
    "train.schedule": ["constant", "cosine", "linear"],
    "train.min_learning_rate": [0, 1.0, 1e-3, 1e300, -1],
    "train.checkpoint_every": ["auto", 1, 2**31 - 1, 2**31, 0, "often"],
    "samples": [1, 2**31 - 1, 2**31, 0, {"default": 1}, {"digits": 1}, {"cifar10": 1}, {"mnist": 1}],
    "resources": [{}, {"cpus": 1}],
    "resources.cpus": [0.5, 1, 1e9, 0, -1],
    "resources.gpus": [0, 0.25, 1, 2, 1.5, -1],
    "mcus": [["stm32h7"], ["stm32x"], [], ["stm32h7", "stm32h7"]],
    "data_dir": ["data", "~/x", "/nonexistent", "a\x00b", "a" * 5000],
    "defenses": [[], ["none"], ["jr", "jr"], ["dbwt"], [{"name": "jr", "quantizers": ["int3"]}]],
    "defenses.*.name": NAMES,
    "defenses.*.label": ["x", "none", "a" * 1000],
    "defenses.*.params": [{}, {"eps": 1}, {"lamda": 1}],
    "defenses.*.quantizers": [["fp"], ["int2"], ["int3"], []],
    "defenses.*.datasets": [["digits"], ["cifar10"], []],
}


# ---------------------------------------------------------------- the schema and the registries

def _schema_keys(model=None, prefix: str = "") -> set[str]:
    """Every key of the grid schema, lists written ``*`` (``attacks.*.eps``)."""
    from pydantic import BaseModel

    from sweeper.plan.grid import Grid, _model_in

    keys = set()
    for name, field in (model or Grid).model_fields.items():
        key = f"{prefix}{name}"
        keys.add(key)
        inner = _model_in(field.annotation)
        if inner is not None and issubclass(inner, BaseModel) and inner.__name__ != "Epsilon":
            listed = "tuple" in str(field.annotation)
            keys |= _schema_keys(inner, f"{key}.*." if listed else f"{key}.")
    return keys


def _limit_values(limit) -> list:
    """Values at and beyond a Limit's edges, and of the wrong kinds."""
    if limit.kind == "bool":
        return [True, False, 0, "yes"]
    low, high = limit.bounds()
    if limit.kind == "widths":
        return [[low, high], [int(low), int(low)], [low - 1, 4], [4], [high, high + 1], "8"]
    values = [low, low - 1, True, "1", None, [low], float("nan"), float("inf")]
    if limit.kind == "int":
        values += [low + 1, 2.5] + ([high, high + 1] if high is not None else [2**31 - 1, 2**31])
    else:
        values += [low + 1e-9, low + 1e-300, 10**400] + ([high, high * (1 + 1e-9) + 1e-9] if high else [1e308])
    return values


def _parameter_cases(raw: dict) -> list[tuple[tuple, Any]]:
    """(path, value) for every parameter of each attack and defense entry of a grid, present
    or not, and every option of each dataset, from the registries."""
    from sweeper.attacks import ATTACKS
    from sweeper.datasets import DATASETS
    from sweeper.defenses import DEFENSES

    def entries(key: str) -> list[tuple[int, str, Any]]:  # (index, registered name, entry)
        listed = raw.get(key) if isinstance(raw.get(key), list) else []
        named = [(i, e if isinstance(e, str) else e.get("name") if isinstance(e, dict) else None, e)
                 for i, e in enumerate(listed)]
        registry = {"attacks": ATTACKS, "defenses": DEFENSES, "datasets": DATASETS}[key]
        return [(i, name, e) for i, name, e in named if isinstance(name, str) and name in registry]

    cases: list[tuple[tuple, Any]] = []
    for index, name, entry in entries("attacks"):
        if not isinstance(entry, dict):
            continue
        spec = ATTACKS.get(name)
        for param in spec.defaults:
            values = _limit_values(spec.limits[param]) if param in spec.limits else \
                [None, [1, 1], [1, 4], [8, 1], [1e300, 1e-300], [0, 1], "square"]
            cases += [(("attacks", index, "params", param), value) for value in values]
    for index, name, _ in entries("defenses"):
        for param, limit in DEFENSES.get(name).limits.items():
            cases += [(("defenses", index), {"name": name, "params": {param: value}})
                      for value in _limit_values(limit)]
    for index, name, _ in entries("datasets"):
        spec = DATASETS.get(name)
        for option in spec.options:
            values = [*spec.choices.get(option, ()), None, "yes", 1, [True]]
            cases += [(("datasets", index), {"name": name, option: value}) for value in values]
    return cases


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into a parsed grid (dict keys and list indices)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*prefix, index))
    return found


def _schema_key(path: tuple) -> str:
    return ".".join("*" if isinstance(part, int) else str(part) for part in path)


@functools.cache
def _shipped(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- mutations

@st.composite
def mutations(draw) -> tuple[bytes, list[str]]:
    """A shipped grid with one or two things changed (two let changes meet, e.g. another
    dataset and a patch parameter): (file bytes, --set overrides)."""
    raw = copy.deepcopy(_shipped(draw(st.sampled_from(SHIPPED))))
    kinds = draw(st.lists(st.sampled_from(["field", "field", "parameter", "delete", "add", "override", "bytes"]),
                          min_size=1, max_size=2))
    overrides: list[str] = []
    for kind in kinds:
        _change(draw, raw, kind, overrides)
    text = _dump(raw)
    data = text.encode()
    if "bytes" in kinds:
        data = _mangle(text, draw(st.sampled_from(["latin1", "utf16", "utf16le", "byte", "truncate", "line",
                                                   "bom", "tab"])), draw(st.integers(0, len(data))),
                       draw(st.sampled_from([b"\x00", b"\x01", b"\x7f", b"\x80", b"\xff", b"\xc3", b"{", b"&"])))
    return data, overrides


def _change(draw, raw: dict, kind: str, overrides: list[str]) -> None:
    """One change of ``kind`` to the parsed grid, or one more --set override."""
    if kind in ("field", "delete") and _paths(raw):
        path = draw(st.sampled_from(_paths(raw)))
        if kind == "delete":
            _delete(raw, path)
        else:
            _set(raw, path, _fresh(draw, HOSTILE + FIELD_VALUES.get(_schema_key(path), [])))
    elif kind == "parameter" and _parameter_cases(raw):
        path, value = draw(st.sampled_from(_parameter_cases(raw)))
        _set(raw, path, copy.deepcopy(value))
    elif kind == "add":
        mappings = [path for path in [()] + _paths(raw) if isinstance(_get(raw, path), dict)]
        where = draw(st.sampled_from(mappings))
        _get(raw, where)[draw(st.sampled_from(["colour", "[/x]", "seed", "params", "k" * 2000]))] = \
            _fresh(draw, HOSTILE)
    elif kind == "override":
        path = draw(st.sampled_from([".".join(map(str, p)) for p in _paths(raw)] + [
            "attacks.--1.eps", "attacks..x", "attacks.-1.eps", "attacks.99.eps", "seed.x", "a.b.c", "attacks.pgd",
            "=", "", "train.epochs", "folds.k"]))
        parts = tuple(int(part) if part.isdigit() else part for part in path.split("."))
        value = draw(st.sampled_from(HOSTILE + FIELD_VALUES.get(_schema_key(parts), [])))
        overrides.append(f"{path}={_flow(value)}")


def _fresh(draw, values: list) -> Any:
    """One of ``values``, copied: a later change must not edit the shared tables."""
    return copy.deepcopy(draw(st.sampled_from(values)))


def _get(raw: Any, path: tuple) -> Any:
    for part in path:
        raw = raw[part]
    return raw


def _set(raw: Any, path: tuple, value: Any) -> None:
    for part in path[:-1]:  # a parameter not in the grid yet: its params mapping is made
        if isinstance(raw, dict) and not isinstance(raw.get(part), (dict, list)):
            raw[part] = {}
        raw = raw[part]
    raw[path[-1]] = value


def _delete(raw: Any, path: tuple) -> None:
    del _get(raw, path[:-1])[path[-1]]


def _dump(raw: dict) -> str:
    """YAML text of a mutated grid, each Raw value spliced in as written."""
    spliced: list[str] = []

    def swap(node: Any) -> Any:
        if isinstance(node, Raw):
            spliced.append(node.text)
            return RAW.format(len(spliced) - 1)
        if isinstance(node, dict):
            return {key: swap(value) for key, value in node.items()}
        if isinstance(node, list):
            return [swap(value) for value in node]
        return node

    text = yaml.safe_dump(swap(raw), sort_keys=False, width=10_000)
    for index, raw_text in enumerate(spliced):
        text = text.replace(RAW.format(index), raw_text)
    return text


def _flow(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000)
    return text.removesuffix("\n...\n").strip()


def _mangle(text: str, how: str, offset: int, byte: bytes) -> bytes:
    data = text.encode()
    if how == "latin1":
        return ("# Thé grid\n" + text).encode("latin-1", "replace")
    if how in ("utf16", "utf16le"):
        return text.encode("utf-16" if how == "utf16" else "utf-16-le")
    if how == "byte":
        return data[:offset] + byte + data[offset:]
    if how == "truncate":
        return data[:offset]
    if how == "line":
        lines = text.splitlines(keepends=True)
        at = offset % len(lines)
        return "".join(lines[:at + 1] + lines[at:]).encode()
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    return text.replace("  ", "\t", 1).encode()


# ---------------------------------------------------------------- the property

def _validate(directory: Path, overrides: list[str]):
    from typer.testing import CliRunner

    from sweeper.cli import app

    args = ["validate", "grid.yaml"] + [arg for override in overrides for arg in ("--set", override)]
    here = os.getcwd()
    os.chdir(directory)
    try:
        return CliRunner().invoke(app, args)
    finally:
        os.chdir(here)


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          derandomize=os.environ.get("SWEEPER_FUZZ_RANDOM", "") in ("", "0"),
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mutations())
def test_mutated_grids_are_refused_in_one_line_or_can_launch(mutation):
    data, overrides = mutation
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        (directory / "grid.yaml").write_bytes(data)
        result = _validate(directory, overrides)
        written = sorted(p.name for p in directory.iterdir())
        assert result.exit_code in (0, 2), (result.output[-3000:], result.exception)
        assert "Traceback" not in result.output
        assert written == ["grid.yaml"], written
        event("refused" if result.exit_code == 2 else "accepted")
        if result.exit_code == 2:
            assert result.stdout == "", result.stdout
            assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr[:3000]
            assert len(result.stderr) < 1200
        else:
            assert result.stdout.startswith("grid.yaml: ok (") and result.stderr == ""
            _assert_launchable(directory / "grid.yaml", overrides)


# ---------------------------------------------------------------- what launch builds on input grounds

def _assert_launchable(path: Path, overrides: list[str]) -> None:
    """What launch and its trials build from the grid's input, built here the same way
    (module docstring); any refusal fails the test."""
    from sweeper import attacks, datasets, defenses, store
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan import cost, expand
    from sweeper.plan.entries import Train
    from sweeper.run import training

    loaded = grid.load(path, overrides)
    plan = expand.expand(loaded, fingerprints=False)
    store.new_launch(loaded, str(path), grid.read_bytes(path), overrides)
    for job in plan.jobs:  # launch orders the jobs by their estimated cost
        assert math.isfinite(cost.job_seconds(job, plan.cells_of(job.job_id)))
    datasets.resolve_data_dir(loaded.data_dir)
    shapes = {job.dataset_key: datasets.shape(job.dataset, dict(job.dataset_options)) for job in plan.jobs}
    by_job = {job.job_id: job for job in plan.jobs}
    built = set()
    for cell in plan.cells:
        job = by_job[cell.job_id]
        minimal = cell.attack != "none" and attacks.is_minimal(cell.attack)
        eps = math.inf if minimal else cell.eps  # as run.evaluate.evaluate runs it
        key = repr((cell.attack, cell.norm, eps, cell.params, shapes[job.dataset_key]))  # params may hold lists
        if cell.attack == "none" or eps == 0 or key in built:
            continue  # eps 0 is the clean evaluation: no attack is built
        built.add(key)
        classifier = _classifier(*shapes[job.dataset_key])
        attacks.build_attack(cell.attack, classifier, eps, cell.norm,
                             attacks.art_params(cell.attack, dict(cell.params), eps), seed=0)
    for job in {(j.defense, j.defense_params, j.quantizer, j.dataset_key): j for j in plan.jobs}.values():
        defense = defenses.build(job.defense, dict(job.defense_params), clip_values=(0.0, 1.0),
                                 preset=QUANTIZERS.get(job.quantizer))
        if defense is not None:
            defense.setup(_model(*shapes[job.dataset_key], job.quantizer))
    for settings_ in {job.train for job in plan.jobs}:
        train = Train(**dict(settings_))
        training._optimizer(train, train.epochs * max(1, math.ceil(1000 / train.batch_size)))
    digits = [job for job in plan.jobs if job.dataset == "digits"]
    if digits:
        y = _digits().y
        ends = {(j.k, j.seed, f) for j in digits for f in (min(loaded.folds.indices()), max(loaded.folds.indices()))}
        for k, seed, fold in ends:  # the first and last fold: every fold would cost O(k^2) splits
            _, test = datasets.fold_split(y, k, fold, seed)
            assert len(np.unique(y[test])) == 10  # every test fold tests every class
            datasets.attack_subset(test, loaded.samples_for("digits"), seed)


@functools.cache
def _digits():
    from sweeper import datasets

    return datasets.load("digits")


@functools.cache
def _model(input_shape: tuple, nb_classes: int, quantizer: str = "fp"):
    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    return models.build("small_cnn", input_shape, nb_classes, QUANTIZERS.get(quantizer))


@functools.cache
def _classifier(input_shape: tuple, nb_classes: int):
    from sweeper import attacks

    return attacks.make_classifier(_model(input_shape, nb_classes), nb_classes, input_shape, (0.0, 1.0))


# ---------------------------------------------------------------- every key has its cases

def test_every_schema_key_has_fuzz_values():
    missing = sorted(_schema_keys() - set(FIELD_VALUES))
    assert not missing, f"add fuzz values to FIELD_VALUES for the new grid keys: {missing}"
    assert not sorted(set(FIELD_VALUES) - _schema_keys()), "FIELD_VALUES names keys the schema lacks"


def test_every_parameter_declares_its_limit():
    from sweeper.attacks import ATTACKS
    from sweeper.defenses import DEFENSES

    for name in ATTACKS:
        spec = ATTACKS.get(name)
        assert set(spec.defaults) == set(spec.limits) | set(spec.param_checks), name
        for param, limit in spec.limits.items():
            assert limit.accepts(spec.defaults[param]) or param in spec.relative, (name, param)
    for name in DEFENSES:
        spec = DEFENSES.get(name)
        assert set(spec.defaults) == set(spec.limits), name
        assert all(limit.accepts(spec.defaults[param]) for param, limit in spec.limits.items()), name


def test_the_mutations_reach_every_kind_and_every_shipped_grid():
    """The strategy is not stuck on one kind of change (hypothesis's own find)."""
    from hypothesis import find

    for grid_path in SHIPPED:
        assert _parameter_cases(_shipped(grid_path)), grid_path
    found = find(mutations(), lambda m: bool(m[1]), settings=settings(database=None, max_examples=200))
    assert found[1]
    found = find(mutations(), lambda m: not m[0].isascii(), settings=settings(database=None, max_examples=200))
    assert found


# ---------------------------------------------------------------- the extremes, trained and attacked

EXTREMES = {  # each accepted parameter at the edge validation allows, on digits
    "name": "extremes", "seed": 2**32 - 1, "datasets": ["digits"], "models": ["small_cnn"],
    "quantizers": ["int4"], "defenses": ["none", {"name": "dbwt", "params": {"bits": [2, 16], "period": 1_000_000}}],
    "folds": {"k": 174, "only": [173]},
    # enough training that some samples are classified correctly: only those are attacked
    "train": {"epochs": 1, "batch_size": 32, "learning_rate": 3e-3, "schedule": "cosine",
              "min_learning_rate": 3e-3, "checkpoint_every": 2**31 - 1},
    "samples": 10,
    "attacks": [
        {"name": "fgsm", "eps": [1e-9], "params": {"num_random_init": 1}},
        {"name": "pgd", "eps": [1.0], "params": {"max_iter": 1, "eps_step": 1e-300, "num_random_init": 0}},
        {"name": "square", "eps": [1.0], "params": {"max_iter": 1, "p_init": 1e-300, "nb_restarts": 1}},
        {"name": "square", "label": "square_l2", "norm": 2, "eps": [1e-9],
         "params": {"max_iter": 1, "p_init": 0.999}},
        {"name": "cw_l2", "eps": ["unbounded"], "params": {"max_iter": 1, "binary_search_steps": 1, "confidence": 0,
                                                          "learning_rate": 1e-300, "initial_const": 1e300}},
        {"name": "boundary", "eps": ["unbounded"], "params": {"max_iter": 1, "num_trial": 1, "init_size": 1,
                                                             "delta": 1e-300, "epsilon": 1e300}},
        {"name": "zoo", "eps": ["unbounded"], "params": {"max_iter": 1, "binary_search_steps": 1, "nb_parallel": 1,
                                                        "use_resize": True, "use_importance": True}},
        {"name": "apgd_ce", "eps": [1.0], "params": {"max_iter": 1, "restarts": 1}},
        {"name": "apgd_dlr", "eps": [1e-9], "params": {"max_iter": 1, "restarts": 1}},
        {"name": "patch", "eps": [1 / 64, 1.0], "params": {"target": 9, "steps": 1, "learning_rate": 1e-300,
                                                          "batch_size": 4096, "max_train": 1, "shape": [1, 1]}},
        {"name": "patch", "label": "patch_wide", "eps": [0.5], "params": {"shape": [1, 2], "steps": 1}},
    ],
}


@pytest.mark.slow
def test_accepted_extremes_really_run(tmp_path):
    """A 1-epoch trial of each job of a grid holding every attack at the extreme
    parameters validation accepts: no refusal reaches a trial. The training batch at its
    extreme (2**31 - 1) is left to the fuzz (its optimizer is built there): one batch a
    epoch trains too little for any sample to be classified right, and attacked."""
    from sweeper.plan import expand
    from sweeper.run.trial import JobContext, run_job

    plan = expand.expand(grid.validate(copy.deepcopy(EXTREMES)))
    data = _digits()
    for job in plan.jobs:
        rows: list[dict] = []
        run_job(job, plan.cells_of(job.job_id), data, JobContext("extremes", ("stm32h7",)), rows.append)
        assert len(rows) == len(plan.cells_of(job.job_id))
        own = [row for row in rows if row["eval_bits"] is None]
        labels = {entry.get("label", entry["name"]) for entry in EXTREMES["attacks"]}
        assert {row["attack_label"] for row in own} == {"none"} | labels
        # each attack ran on samples the model got right (a misclassified one is not attacked)
        assert all(row["clean_acc"] > 0 and 0 <= row["adv_acc"] <= row["clean_acc"] for row in own), \
            [(row["attack_label"], row["clean_acc"], row["adv_acc"]) for row in own]
    assert {row["eval_bits"] for row in rows} == {None, 2, 16}  # dbwt's other widths ran too

"""Grid files: the whole grid (``Grid``: its entries together, the product of what it
trains, the checks across entries), loading with ``--set`` overrides, and how a
validation error becomes one line.

This is the one place user input is checked. A grid file and each ``--set`` value are
read by ``safe_yaml`` (bounded size, strict UTF-8, bounded nesting and alias expansion,
no repeated keys), overrides are applied to the raw mapping, and pydantic validates the
result into a frozen ``Grid``: each entry (``entries.py``), each attack and defense
parameter against its declared ``Limit``, and last, ``feasibility.check``, the grid
against what will run it (each dataset's declared shape, classes and fold limit; the
plan's size), so that a trial never refuses what validation accepted. Every later stage
trusts the ``Grid``. Every failure is one ``UserError`` line; user values in it are
quoted with ``errors.preview``. Nothing here imports TensorFlow, ART or Ray. Expansion
into cells lives in ``expand.py``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from sweeper.errors import UserError, one_line, preview
from sweeper.keys import NONE
from sweeper.plan import safe_yaml
from sweeper.plan.entries import (AttackEntry, DatasetChoice, DefenseEntry, Folds, ModelChoice, Resources, Source,
                                  Train, _Frozen, known_names)
from sweeper.plan.limits import INT_MAX


class Grid(_Frozen):
    name: str = Field(max_length=100)  # a folder name
    seed: int = Field(0, ge=0, le=2**32 - 1)  # what numpy and scikit-learn accept
    datasets: tuple[DatasetChoice, ...] = Field(min_length=1)
    models: tuple[ModelChoice, ...] = Field(min_length=1)
    quantizers: tuple[str, ...] = Field(min_length=1)
    attacks: tuple[AttackEntry, ...] = ()
    folds: Folds = Folds()
    train: Train = Train()
    # attacked samples per training job: one count, or per dataset with an optional default
    samples: int | dict[str, int] = 100  # each at most INT_MAX
    resources: Resources = Resources()
    mcus: tuple[str, ...] = ("stm32h7",)
    data_dir: str | None = Field(None, max_length=4096)
    # Training-time defenses: each trains every job it applies to once more. Default:
    # plain training only; list `none` beside others to keep the undefended baseline.
    defenses: tuple[DefenseEntry, ...] = Field(default_factory=lambda: (DefenseEntry(name=NONE),), min_length=1)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        # The name is a folder under results/: '.', '..' or a hidden name would put the
        # default store in the working directory, its parent, or out of sight.
        if not re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*", name):
            raise ValueError(f"{preview(name)} is not usable as a folder name: use letters, digits, "
                             f"'_', '-' and '.', not starting with '.'")
        return name

    @field_validator("models")
    @classmethod
    def _unique_models(cls, models: tuple[ModelChoice, ...]) -> tuple[ModelChoice, ...]:
        names = [model.name for model in models]
        if len(set(names)) != len(names):
            raise ValueError("a model is listed twice")
        return models

    @field_validator("samples")
    @classmethod
    def _samples(cls, samples: int | dict[str, int]) -> int | dict[str, int]:
        from sweeper.datasets import DATASETS

        counts = samples.values() if isinstance(samples, dict) else [samples]
        if any(count < 1 for count in counts):
            raise ValueError("attacked sample counts must be >= 1")
        if any(count > INT_MAX for count in counts):
            raise ValueError(f"attacked sample counts must be at most {INT_MAX}")
        if isinstance(samples, dict):
            known_names(DATASETS, tuple(key for key in samples if key != "default"))
        return samples

    @model_validator(mode="after")
    def _samples_cover_datasets(self) -> "Grid":
        for choice in self.datasets:
            self.samples_for(choice.name)
        return self

    @model_validator(mode="after")
    def _sources_trained(self) -> "Grid":
        # A transfer entry's source must be a model the grid trains, for every target the
        # entry reaches: otherwise there is nothing to craft the examples on.
        for index, entry in enumerate(self.attacks):
            if entry.source is None:
                continue
            for dataset, model, quantizer, defense in self.setups():
                if entry.datasets is None or dataset.name in entry.datasets:
                    self._check_source(index, entry.source, dataset.name, model, quantizer, defense.key)
        return self

    def _check_source(self, index: int, source: "Source", dataset: str, model: str, quantizer: str,
                      defense: str) -> None:
        where = f"attacks.{index}.source"
        wanted = source.of(model, quantizer)
        if wanted not in self.trained(dataset):
            raise ValueError(f"{where}: {wanted[0]}/{wanted[1]} (the source of {model}/{quantizer}) is not "
                             f"trained for dataset {dataset!r}; name a model and quantizer the grid trains")
        wanted_defense = source.defense_of(defense)
        if wanted_defense not in self.defenses_of(dataset, wanted[1]):
            known = ", ".join(entry.key for entry in self.defenses)
            raise ValueError(f"{where}: {wanted[0]}/{wanted[1]} with defense {preview(wanted_defense)} (the source "
                             f"of {model}/{quantizer} with {preview(defense)}) is not trained for dataset {dataset!r}; "
                             f"name the source's defense, one of: {known}")

    def defenses_of(self, dataset: str, quantizer: str) -> list[str]:
        """The labels of the defenses the grid trains a (dataset, quantizer) with."""
        return [entry.key for entry in self.defenses if entry.applies(dataset, quantizer)]

    def setups(self) -> Iterator[tuple[DatasetChoice, str, str, DefenseEntry]]:
        """Every (dataset, model, quantizer, defense entry) the grid trains, in the plan's
        order: the one walk of the grid's product (expansion, the checks across entries
        and the plan's size all use it)."""
        for dataset in self.datasets:
            for model, quantizer in self.trained(dataset.name):
                for entry in self.defenses:
                    if entry.applies(dataset.name, quantizer):
                        yield dataset, model, quantizer, entry

    def trained(self, dataset: str) -> list[tuple[str, str]]:
        """The (model, quantizer) pairs the grid trains on ``dataset``."""
        return [(model.name, quantizer) for model in self.models
                if model.datasets is None or dataset in model.datasets
                for quantizer in model.quantizers or self.quantizers]

    def samples_for(self, dataset: str) -> int:
        if isinstance(self.samples, int):
            return self.samples
        if dataset in self.samples:
            return self.samples[dataset]
        if "default" in self.samples:
            return self.samples["default"]
        raise ValueError(f"samples: no count for dataset {dataset!r} and no 'default'")

    @field_validator("quantizers")
    @classmethod
    def _quantizers(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from sweeper.models.quantizers import QUANTIZERS

        return known_names(QUANTIZERS, names)

    @field_validator("mcus")
    @classmethod
    def _mcus(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from sweeper.deploy.mcus import MCUS

        return known_names(MCUS, names)

    @field_validator("attacks")
    @classmethod
    def _unique_attack_labels(cls, entries: tuple[AttackEntry, ...]) -> tuple[AttackEntry, ...]:
        keys = [entry.key for entry in entries]
        for key in keys:
            if key == NONE:
                raise ValueError(f"'{NONE}' (the clean evaluation) is always included; do not list it")
            if keys.count(key) > 1:
                raise ValueError(f"attack {preview(key)} appears twice; give each a distinct 'label'")
        return entries

    @model_validator(mode="after")
    def _defenses(self) -> "Grid":
        return _defenses_fit(self)

    @field_validator("data_dir")
    @classmethod
    def _path(cls, path: str | None) -> str | None:
        if path is not None and not path.isprintable():  # a NUL byte makes every file call fail
            raise ValueError(f"{preview(path)} is not usable as a folder path (control characters)")
        return path

    @model_validator(mode="after")
    def _feasible(self) -> "Grid":
        from sweeper.plan import feasibility

        feasibility.check(self)  # last: it relies on every check above
        return self


def _defenses_fit(grid: Grid) -> Grid:
    """Defense labels are unique, and each defense suits every preset it applies to."""
    from sweeper.defenses import check_preset
    from sweeper.models.quantizers import QUANTIZERS

    keys = [entry.key for entry in grid.defenses]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"defenses: {preview(key)} appears twice; give each a distinct 'label'")
    seen: dict[str, str] = {}
    for entry in grid.defenses:  # the same training twice under two labels
        same = seen.setdefault(repr((entry.name, sorted(entry.resolved_params().items()))), entry.key)
        if same != entry.key:
            raise ValueError(f"defenses: {preview(same)} and {preview(entry.key)} are the same defense with the "
                             f"same parameters")
    quantizers = {q for m in grid.models for q in (m.quantizers or grid.quantizers)}
    for entry in grid.defenses:
        for quantizer in sorted(set(entry.quantizers or quantizers) & quantizers):
            try:
                check_preset(entry.name, QUANTIZERS.get(quantizer))
            except UserError as error:
                raise ValueError(f"defenses: {error}; limit it with quantizers: [...]") from None
    return grid


# ---------------------------------------------------------------- loading and overrides

def load(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Grid:
    """Read, override and validate a grid file; every failure is one UserError line."""
    path = Path(path)
    raw = _read_yaml(path)
    for override in overrides:
        apply_override(raw, override)
    raw.setdefault("name", path.stem)
    return validate(raw, source=str(path))


def read_bytes(path: str | Path) -> bytes:
    """The grid file's bytes, read within safe_yaml's bounds (a launch records them)."""
    return safe_yaml.read_file(Path(path))


def _read_yaml(path: Path) -> dict[str, Any]:
    raw = safe_yaml.load_file(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a grid file must be a YAML mapping (key: value lines)")
    return raw


def validate(raw: dict[str, Any], source: str = "grid") -> Grid:
    try:
        return Grid.model_validate(raw)
    except ValidationError as error:
        raise UserError(f"{source}: {_first_problem(error)}") from None
    except UserError as error:  # raised by a registry's own validator
        raise UserError(f"{source}: {error}") from None


def _first_problem(error: ValidationError) -> str:
    problem = error.errors(include_url=False)[0]
    where = ".".join(_loc_part(part) for part in problem["loc"] if not str(part).startswith("function-"))
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] == "extra_forbidden":
        message = "unknown key"
        where = where or "grid"
        parent = _parent_model(problem["loc"])
        if parent is not None:
            message += f"; accepted: {', '.join(parent.model_fields)}"
    elif problem["type"] == "missing":
        message = "required field is missing"
    return f"{where}: {message}" if where else message


def _loc_part(part: Any) -> str:
    """A step of an error's location: a user's key (samples.<dataset>, an unknown key)
    may be long or hold line breaks, so it is quoted short."""
    text = str(part)
    return text if len(text) <= 40 and text.isprintable() and text.strip() == text and text else preview(part)


def _parent_model(loc: tuple) -> type[BaseModel] | None:
    """The schema class that owns the field at ``loc`` (to list its accepted keys)."""
    model: Any = Grid
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part)) if hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Apply ``key.path=value`` (value in YAML syntax) to a raw grid mapping in place.

    A path step into a list is an index (``attacks.0.eps``, ``attacks.-1.eps``) or the
    label/name of an entry (``attacks.pgd.eps``). The value is read within the bounds of a
    grid file (safe_yaml)."""
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {preview(override)}: expected key=value, e.g. train.epochs=2")
    parts = key.strip().split(".")
    shown = _shown(key.strip())
    if not all(part.strip() for part in parts):
        raise UserError(f"--set {shown}: a field name in the path is empty")
    if not key.isprintable():  # control characters, or bytes the terminal's encoding could not decode
        raise UserError(f"--set {shown}: the field path holds characters no field name has")
    # A value's error quotes the whole override (short): the value is what it is about.
    where = f"--set {preview(key.strip() + '=' + text, 60)}"
    value = safe_yaml.loads(text, where, limit=safe_yaml.MAX_VALUE_BYTES) if text.strip() else None
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _step(node, part, _shown(".".join(parts[: depth + 1])), create=True)
    _assign(node, parts[-1], value, shown)


def _shown(path: str) -> str:
    """A --set path as errors quote it: one line, bounded."""
    return one_line(path, 80)


def _step(node: Any, part: str, path: str, create: bool) -> Any:
    if isinstance(node, dict):
        if part not in node or node[part] is None:
            if not create:
                raise UserError(f"--set {path}: no such field")
            node[part] = {}
        return node[part]
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    raise UserError(f"--set {path}: cannot set a field inside a value of type {type(node).__name__}")


def _assign(node: Any, part: str, value: Any, path: str) -> None:
    if isinstance(node, dict):
        node[part] = value
    elif isinstance(node, list):
        node[_list_index(node, part, path)] = value
    else:
        raise UserError(f"--set {path}: cannot set a field inside a value of type {type(node).__name__}")


def _list_index(items: list, part: str, path: str) -> int:
    if re.fullmatch(r"-?[0-9]{1,18}", part):  # ASCII digits only: int() takes others too
        index = int(part)
        if not -len(items) <= index < len(items):
            raise UserError(f"--set {path}: index {index} out of range (list has {len(items)})")
        return index
    # An entry's label, which defaults to its name, names it; a name alone only when no
    # label matches and one entry has it: the first of several would be a silent guess
    # (`attacks.square` once set the labelled square_t4 entry, not the one labelled square).
    for matches in ([i for i, item in enumerate(items) if _entry_label(item) == part],
                    [i for i, item in enumerate(items) if isinstance(item, dict) and item.get("name") == part]):
        if len(matches) == 1:
            return matches[0]
        if matches:
            labels = ", ".join(f"{i} ({preview(str(_entry_label(items[i])), 20)})" for i in matches[:6])
            raise UserError(f"--set {path}: {len(matches)} entries are called {preview(part)} (indices and "
                            f"labels: {labels}); name one by its label or its index")
    raise UserError(f"--set {path}: no entry named {preview(part)}")


def _entry_label(item: Any) -> Any:
    """What names a list entry in a --set path: a mapping's label (its name by default), or
    the item itself (``quantizers.int8``)."""
    if isinstance(item, dict):
        return item.get("label") or item.get("name")
    return item

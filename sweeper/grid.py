"""Grid files: the YAML schema, loading with ``--set`` overrides, and validation.

This is the one place user input is checked. A grid file and each ``--set`` value are
read by ``safe_yaml`` (bounded size, strict UTF-8, bounded nesting and alias expansion,
no repeated keys), overrides are applied to the raw mapping, and pydantic validates the
result into a frozen ``Grid``: each field here, each attack and defense parameter against
its declared ``Limit``, and last, ``feasibility.check``, the grid against what will run
it (each dataset's declared shape, classes and fold limit; the plan's size), so that a
trial never refuses what validation accepted. Every later stage trusts the ``Grid``.
Every failure is one ``UserError`` line; user values in it are quoted with
``errors.preview``. Nothing here imports TensorFlow, ART or Ray. Expansion into cells
lives in ``expand.py``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from sweeper import safe_yaml
from sweeper.errors import UserError, one_line, preview
from sweeper.limits import INT_MAX, whole


class _Frozen(BaseModel):
    # NaN and infinity are refused in every float field (a learning rate of .inf trains NaNs).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


UNBOUNDED = "unbounded"
# What an attack entry attacks (its ``target``): the QKeras model (default), or the int8
# .tflite built from it, queried through the TFLite interpreter (black-box attacks only).
MODEL_TARGET, DEPLOYED_TARGET = "model", "deployed"
MAX_EPOCHS = 1_000_000
FLOAT32_TINY, FLOAT32_MAX = 1.1754943508222875e-38, 3.4028234663852886e38  # numpy.finfo(float32)


class Epsilon(_Frozen):
    """An attack budget: its value, and its label as written (``8/255`` stays ``8/255``).
    ``unbounded`` (value +inf) is for minimal-perturbation attacks; 0 is always clean."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=True)  # parse_epsilon checks

    value: float
    label: str

    @property
    def unbounded(self) -> bool:
        return math.isinf(self.value)


def parse_epsilon(raw: Any) -> Epsilon:
    if isinstance(raw, Epsilon):
        return raw
    if isinstance(raw, str) and raw.strip().lower() == UNBOUNDED:
        return Epsilon(value=math.inf, label=UNBOUNDED)
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise ValueError(f"epsilon must be a number, a fraction like 8/255 or 'unbounded', got {preview(raw)}")
    try:
        value = float(Fraction(raw.strip()) if isinstance(raw, str) else raw)
    except (ValueError, ZeroDivisionError, OverflowError):  # OverflowError: beyond 1.8e308
        raise ValueError(f"epsilon must be a number, a fraction like 8/255 or 'unbounded', "
                         f"got {preview(raw)}") from None
    if not value >= 0 or value == float("inf"):
        raise ValueError(f"epsilon must be a finite number >= 0, got {preview(raw)}")
    return Epsilon(value=value, label=raw.strip() if isinstance(raw, str) else str(raw))


def _fraction(value: Any) -> float | None:
    """A fraction written like a budget (``2/255``) as a float; None for anything else."""
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    try:
        return float(Fraction(value.strip()))
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


class DatasetChoice(_Frozen):
    """A dataset and its options; ``digits`` in a grid is short for ``{name: digits}``."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_short_form(cls, raw: Any) -> Any:
        if isinstance(raw, str):
            return {"name": raw}
        if isinstance(raw, dict) and "name" in raw and "options" not in raw:
            return {"name": raw["name"], "options": {k: v for k, v in raw.items() if k != "name"}}
        return raw

    @model_validator(mode="after")
    def _known(self) -> "DatasetChoice":
        from sweeper.datasets import DATASETS

        if self.name not in DATASETS:
            raise ValueError(DATASETS.unknown_message(self.name))
        spec = DATASETS.get(self.name)
        for key, value in self.options.items():
            if key not in spec.options:
                raise ValueError(f"dataset {self.name!r}: unknown option {preview(key)}; "
                                 f"accepted: {', '.join(spec.options) or 'none'}")
            accepted = spec.choices.get(key)
            if accepted is not None and not any(value is a or (value == a and type(value) is type(a))
                                                for a in accepted):
                raise ValueError(f"dataset {self.name!r}: option {preview(key)} is {preview(value)}; "
                                 f"accepted: {', '.join(map(str, accepted))}")
        return self

    def resolved_options(self) -> dict[str, Any]:
        """Every option with defaults filled in: part of a training job's identity."""
        from sweeper.datasets import DATASETS

        return {**DATASETS.get(self.name).options, **self.options}

    @property
    def label(self) -> str:
        return self.name


class Source(_Frozen):
    """Where a transfer attack crafts its examples: another model, quantizer and/or
    defense of the same dataset, fold, seed and training settings (what is not named is
    the target's). ``defense`` names a defense entry by its label: ``{quantizer: fp,
    defense: none}`` gives every target, defended or not, the examples of the undefended
    fp model, so a defended model and its undefended twin face the same examples."""

    model: str | None = None
    quantizer: str | None = None
    defense: str | None = None

    @model_validator(mode="after")
    def _known(self) -> "Source":
        from sweeper.models import MODELS
        from sweeper.quantizers import QUANTIZERS

        if self.model is None and self.quantizer is None and self.defense is None:
            raise ValueError("name the source's model, quantizer and/or defense, e.g. {quantizer: fp}")
        _known_names(MODELS, (self.model,) if self.model else ())
        _known_names(QUANTIZERS, (self.quantizer,) if self.quantizer else ())
        return self

    @property
    def label(self) -> str:
        """``fp``, ``resnet8``, ``resnet8/fp`` or ``fp+none``: what a transfer attack's label
        appends."""
        base = "/".join(name for name in (self.model, self.quantizer) if name)
        return f"{base}+{self.defense}" if self.defense else base

    def defense_of(self, defense: str) -> str:
        """The defense label of the model that crafts the examples a target trained with
        ``defense`` (a label) gets."""
        return self.defense or defense

    def of(self, model: str, quantizer: str) -> tuple[str, str]:
        """The (model, quantizer) that crafts the examples a target (model, quantizer) gets."""
        return self.model or model, self.quantizer or quantizer


class AttackEntry(_Frozen):
    name: str
    label: str | None = None  # defaults to name; needed when one attack appears twice
    norm: str | None = None  # "inf", "1" or "2"; defaults to the attack's first norm
    eps: tuple[Epsilon, ...]
    params: dict[str, Any] = Field(default_factory=dict)
    datasets: tuple[str, ...] | None = None  # default: every dataset of the grid
    # A transfer attack: examples crafted on the source, evaluated on each target.
    source: Source | None = None
    # "deployed": the attack queries the int8 .tflite (sweeper.attacks.deployed), not the
    # QKeras model; its rows' outcomes are the build's.
    target: Literal["model", "deployed"] = MODEL_TARGET

    @field_validator("target")
    @classmethod
    def _deployable(cls, target: str, info) -> str:
        # Checked here, not in _known, so that the error names attacks.<i>.target.
        from sweeper.attacks import ATTACKS

        name = info.data.get("name")
        if target != DEPLOYED_TARGET or name not in ATTACKS:
            return target
        if not ATTACKS.get(name).black_box:
            black_box = ", ".join(n for n in ATTACKS.names() if ATTACKS.get(n).black_box)
            raise ValueError(f"attack {name!r} needs gradients and the deployed build has none; "
                             f"target: deployed takes a black-box attack ({black_box}); the transfer of "
                             f"{name} from the QKeras model to the build is every row's deployed_adv_acc")
        if info.data.get("source") is not None:
            raise ValueError("target: deployed attacks the build itself; a transfer attack (source) "
                             "already reaches the build: its rows' deployed_adv_acc")
        spec, params = ATTACKS.get(name), info.data.get("params")
        if spec.deployed_problem is None or not isinstance(params, dict) or _bad_params(name, params):
            return target  # bad parameters: _known names them
        problem = spec.deployed_problem({**spec.defaults, **params})
        if problem:
            raise ValueError(problem)
        return target

    @field_validator("norm", mode="before")
    @classmethod
    def _norm_text(cls, raw: Any) -> Any:
        return str(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else raw

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, raw: Any) -> Any:
        values = raw if isinstance(raw, (list, tuple)) else [raw]
        if not values:
            raise ValueError("needs at least one epsilon")
        parsed = tuple(parse_epsilon(v) for v in values)
        if len({eps.value for eps in parsed}) != len(parsed):
            raise ValueError("an epsilon is listed twice")
        return parsed

    @field_validator("params", mode="before")
    @classmethod
    def _fraction_params(cls, raw: Any) -> Any:
        # Lets step sizes be written like budgets: eps_step: 2/255.
        if not isinstance(raw, dict):
            return raw
        return {key: value if _fraction(value) is None else _fraction(value) for key, value in raw.items()}

    @model_validator(mode="after")
    def _known(self) -> "AttackEntry":
        from sweeper.attacks import ATTACKS, validate

        from sweeper.datasets import DATASETS

        if self.name not in ATTACKS:
            raise ValueError(ATTACKS.unknown_message(self.name))
        _known_names(DATASETS, self.datasets or ())
        if ATTACKS.get(self.name).uses_eps and any(eps.unbounded for eps in self.eps):
            minimal = ", ".join(n for n in ATTACKS.names() if not ATTACKS.get(n).uses_eps)
            raise ValueError(f"attack {self.name!r} needs finite budgets; 'unbounded' is only for "
                             f"minimal-perturbation attacks: {minimal}")
        try:
            for eps in self.eps:  # each budget too (the patch's eps is a share: at most 1)
                validate(self.name, self.norm, self.params, eps=eps.value)
        except UserError as error:  # re-raised as ValueError so the message names the field
            raise ValueError(str(error)) from None
        return self

    @property
    def key(self) -> str:
        """The attack_label of its cells: a transfer entry's says where its examples come
        from (``fgsm<-fp``), a deployed one what it attacks (``square@deployed``), so
        neither shares a label with a white-box entry."""
        if self.target == DEPLOYED_TARGET:
            return f"{self.white_box_key}@{DEPLOYED_TARGET}"
        return f"{self.white_box_key}<-{self.source.label}" if self.source else self.white_box_key

    @property
    def white_box_key(self) -> str:
        """The label of the white-box cells a transfer entry implies on its source: the
        label, or the name and what the attack's parameters add to it (a patch at a fixed
        place: ``patch-fixed``)."""
        from sweeper.attacks import default_label

        return self.label or default_label(self.name, self.params)

    def resolved_norm(self) -> str:
        from sweeper.attacks import ATTACKS

        return self.norm or ATTACKS.get(self.name).norms[0]

    def resolved_params(self) -> dict[str, Any]:
        """Every parameter passed to ART, sweeper's defaults filled in."""
        from sweeper.attacks import ATTACKS

        return {**ATTACKS.get(self.name).defaults, **self.params}


class _Limited(_Frozen):
    """A named grid entry, optionally limited to some quantizers and datasets; a bare name
    in a grid is short for ``{name: ...}``."""

    name: str
    quantizers: tuple[str, ...] | None = None  # default: every quantizer of the grid
    datasets: tuple[str, ...] | None = None  # default: every dataset of the grid

    @model_validator(mode="before")
    @classmethod
    def _from_short_form(cls, raw: Any) -> Any:
        return {"name": raw} if isinstance(raw, str) else raw

    def _known_limits(self) -> None:
        from sweeper.datasets import DATASETS
        from sweeper.quantizers import QUANTIZERS

        _known_names(QUANTIZERS, self.quantizers or ())
        _known_names(DATASETS, self.datasets or ())


class ModelChoice(_Limited):
    """A model, optionally limited to some quantizers and datasets (e.g. a baseline run
    only at full precision); ``small_cnn`` in a grid is short for ``{name: small_cnn}``."""

    @model_validator(mode="after")
    def _known(self) -> "ModelChoice":
        from sweeper.models import MODELS

        _known_names(MODELS, (self.name,))
        self._known_limits()
        return self


class Folds(_Frozen):
    # At most what each dataset of the grid allows (feasibility.py).
    k: int = Field(5, ge=2, le=INT_MAX, description="K of K-fold cross-validation")
    only: tuple[int, ...] | None = None  # fold indices to run; all K when absent

    @model_validator(mode="after")
    def _in_range(self) -> "Folds":
        for index in self.only or ():
            if not 0 <= index < self.k:
                raise ValueError(f"only: fold index {index} out of range; accepted: 0..{self.k - 1}")
        if self.only is not None and len(set(self.only)) != len(self.only):
            raise ValueError("fold indices repeat")
        return self

    def indices(self) -> tuple[int, ...]:
        return self.only if self.only is not None else tuple(range(self.k))


class Train(_Frozen):
    epochs: int = Field(10, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(64, ge=1, le=INT_MAX)
    optimizer: Literal["adam", "adamax", "sgd"] = "adam"
    # TensorFlow holds the rates as float32: a rate beyond its range is refused there (or,
    # below its smallest normal number, rounds to a rate that trains nothing).
    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine"] = "constant"
    min_learning_rate: float = 1e-6  # floor of the cosine schedule
    # Epochs between checkpoints (weights, optimizer, epoch) of a training job, or "auto":
    # an interval that keeps saving under 2% of training time (sweeper.trial). Excluded
    # from dumps, so from job ids: resumed training ends with the same model, whatever
    # the interval, so changing it must not recompute stored cells.
    checkpoint_every: int | str = Field("auto", exclude=True)

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> int | str:
        if value == "auto" or whole(1).accepts(value):
            return value
        raise ValueError(f"use 'auto' or a whole number of epochs >= 1, not {preview(value)}")

    @field_validator("learning_rate", "min_learning_rate")
    @classmethod
    def _float32(cls, rate: float, info) -> float:
        low = FLOAT32_TINY if info.field_name == "learning_rate" else 0
        if not low <= rate <= FLOAT32_MAX:
            raise ValueError(f"must be {'0 or ' if low == 0 else ''}a number TensorFlow's float32 holds, "
                             f"{FLOAT32_TINY:.2g} to {FLOAT32_MAX:.2g}; got {rate:g}")
        return rate

    @model_validator(mode="after")
    def _floor_below_start(self) -> "Train":
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(f"min_learning_rate {self.min_learning_rate:g} is above learning_rate "
                             f"{self.learning_rate:g}: the cosine schedule decays from learning_rate down to it")
        return self


class Resources(_Frozen):
    """What one trial holds. ``gpus``: 0 (none), a share of one GPU in (0, 1] (several
    trials per GPU; placement.py turns memory growth on so they can share it), or a whole
    number of GPUs, as Ray accepts them."""

    cpus: float = Field(1, gt=0)
    gpus: float = 0

    @field_validator("gpus", mode="before")
    @classmethod
    def _gpus(cls, raw: Any) -> Any:
        # Ray refuses a fraction above one GPU (1.5) only when the trial is scheduled;
        # say so while the grid is read.
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 0 <= raw < math.inf:
            raise ValueError(f"must be 0, a share of one GPU in (0, 1], or a whole number "
                             f"of GPUs; got {preview(raw)}")
        if raw > 1 and raw != int(raw):
            raise ValueError(f"a fraction of a GPU must be at most 1; above 1, ask for whole "
                             f"GPUs (got {preview(raw)})")
        return raw


class DefenseEntry(_Limited):
    """A training-time defense (``sweeper.defenses``), optionally limited to some
    quantizers and datasets; ``jr`` in a grid is short for ``{name: jr}``. Budgets in
    ``params`` may be fractions (``eps: 8/255``), as attack budgets."""

    label: str | None = None  # defaults to name; needed when one defense appears twice
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known(self) -> "DefenseEntry":
        from sweeper.defenses import DEFENSES, resolve

        _known_names(DEFENSES, (self.name,))
        self._known_limits()
        try:
            resolve(self.name, self.params)
        except UserError as error:  # re-raised as ValueError so the message names the field
            raise ValueError(str(error)) from None
        return self

    @property
    def key(self) -> str:
        return self.label or self.name

    def resolved_params(self) -> dict[str, Any]:
        """Every parameter of the defense, sweeper's defaults filled in."""
        from sweeper.defenses import resolve

        return resolve(self.name, self.params)


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
    defenses: tuple[DefenseEntry, ...] = Field(default_factory=lambda: (DefenseEntry(name="none"),), min_length=1)

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
            _known_names(DATASETS, tuple(key for key in samples if key != "default"))
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
            for dataset in self.datasets:
                if entry.datasets is not None and dataset.name not in entry.datasets:
                    continue
                for model, quantizer in self.trained(dataset.name):
                    for defense in self.defenses_of(dataset.name, quantizer):
                        self._check_source(index, entry.source, dataset.name, model, quantizer, defense)
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
        return [entry.key for entry in self.defenses
                if (entry.quantizers is None or quantizer in entry.quantizers)
                and (entry.datasets is None or dataset in entry.datasets)]

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
        from sweeper.quantizers import QUANTIZERS

        return _known_names(QUANTIZERS, names)

    @field_validator("mcus")
    @classmethod
    def _mcus(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        from sweeper.footprint import MCUS

        return _known_names(MCUS, names)

    @field_validator("attacks")
    @classmethod
    def _unique_attack_labels(cls, entries: tuple[AttackEntry, ...]) -> tuple[AttackEntry, ...]:
        keys = [entry.key for entry in entries]
        for key in keys:
            if key == "none":
                raise ValueError("'none' (the clean evaluation) is always included; do not list it")
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
        from sweeper import feasibility

        feasibility.check(self)  # last: it relies on every check above
        return self


def _defenses_fit(grid: Grid) -> Grid:
    """Defense labels are unique, and each defense suits every preset it applies to."""
    from sweeper.defenses import check_preset
    from sweeper.quantizers import QUANTIZERS

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


def _bad_params(attack: str, params: dict[str, Any]) -> bool:
    from sweeper.attacks import validate

    try:
        validate(attack, None, params)
    except UserError:
        return True
    return False


def _known_names(registry, names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in registry:
            raise ValueError(registry.unknown_message(name))
    if len(set(names)) != len(names):
        raise ValueError(f"a {registry.kind} is listed twice")
    return names


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
    for index, item in enumerate(items):
        if isinstance(item, dict) and part in (item.get("label"), item.get("name")):
            return index
        if item == part:
            return index
    raise UserError(f"--set {path}: no entry named {preview(part)}")

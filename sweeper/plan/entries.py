"""The entries of a grid file: each field's schema and its own validation (pydantic,
frozen), from an epsilon to an attack, model, dataset or defense entry, the folds, the
training settings and the resources. ``grid.py`` assembles them into a ``Grid``.

Every parameter is checked against its declared ``Limit`` (``limits.py``, in the attack
and defense specs); errors are ``ValueError`` messages pydantic turns into one line naming
the field, user values quoted with ``errors.preview``. Registries are imported inside the
validators: nothing here imports TensorFlow, ART or Ray.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sweeper.errors import UserError, preview
from sweeper.keys import DEPLOYED_TARGET, MODEL_TARGET
from sweeper.plan.limits import INT_MAX, whole


class _Frozen(BaseModel):
    # NaN and infinity are refused in every float field (a learning rate of .inf trains NaNs).
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


UNBOUNDED = "unbounded"
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
        from sweeper.models.quantizers import QUANTIZERS

        if self.model is None and self.quantizer is None and self.defense is None:
            raise ValueError("name the source's model, quantizer and/or defense, e.g. {quantizer: fp}")
        known_names(MODELS, (self.model,) if self.model else ())
        known_names(QUANTIZERS, (self.quantizer,) if self.quantizer else ())
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
        known_names(DATASETS, self.datasets or ())
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

    def applies(self, dataset: str, quantizer: str) -> bool:
        """Whether the entry covers a (dataset, quantizer) the grid trains."""
        return ((self.quantizers is None or quantizer in self.quantizers)
                and (self.datasets is None or dataset in self.datasets))

    def _known_limits(self) -> None:
        from sweeper.datasets import DATASETS
        from sweeper.models.quantizers import QUANTIZERS

        known_names(QUANTIZERS, self.quantizers or ())
        known_names(DATASETS, self.datasets or ())


class ModelChoice(_Limited):
    """A model, optionally limited to some quantizers and datasets (e.g. a baseline run
    only at full precision); ``small_cnn`` in a grid is short for ``{name: small_cnn}``."""

    @model_validator(mode="after")
    def _known(self) -> "ModelChoice":
        from sweeper.models import MODELS

        known_names(MODELS, (self.name,))
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
    # at most one save a minute, under 2% of training time (sweeper.run.checkpoints). Excluded
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
    trials per GPU; sweeper.run.placement turns memory growth on so they can share it), or a whole
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

        known_names(DEFENSES, (self.name,))
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


def _bad_params(attack: str, params: dict[str, Any]) -> bool:
    from sweeper.attacks import validate

    try:
        validate(attack, None, params)
    except UserError:
        return True
    return False


def known_names(registry, names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if name not in registry:
            raise ValueError(registry.unknown_message(name))
    if len(set(names)) != len(names):
        raise ValueError(f"a {registry.kind} is listed twice")
    return names

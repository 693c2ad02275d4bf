"""Training-time defenses: the ``DEFENSES`` registry, checking a defense's parameters,
and building the compiled training step that ``sweeper.trial.train`` runs.

A defense changes how a model is trained, never the model: each one is a custom
``train_step`` (base.py's ``DefendedModel``) compiled by Keras's ``fit`` on sweeper's own
QKeras model, so checkpoints, the seeded shuffles and the cosine schedule work as in
plain training. Why not ART's adversarial trainers: they call ``fit`` once per batch
and retrace, 7-8x slower than a compiled step (DEPLOY_AND_ATTACK_NOTES.md).

| defense | family module | what the step does |
|---|---|---|
| ``none`` | | plain training (``train`` skips the wrapper: bit-identical to no defense) |
| ``jr`` | regularizers.py | CE + lambda * 1/2 ||J||_F^2, random-projection estimate |
| ``jr_layer`` | regularizers.py | CE + lambda * sum_k 1/2 ||J_k||_F^2 over the blocks (sweeper.models.jacobian) |
| ``dq`` | regularizers.py | CE + beta * sum ||Q^T Q - I||^2 over the quantized kernels |
| ``fgsm_at`` | adversarial.py | CE on FGSM examples from a random start (fast AT) |
| ``pgd_at`` | adversarial.py | CE on PGD examples (Madry AT) |
| ``dbwt`` | bit_width.py | CE at a bit width that cycles over shared weights |

Every budget (``eps``) is a fraction of the dataset's clip range (``clip_values``):
eps 8/255 is 8/255 * (clip_max - clip_min) in input units. All sweeper datasets lie in
[0, 1], so it is also the input value, as attack budgets are.

This module imports neither TensorFlow nor QKeras: grids validate defenses without them.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping

from sweeper.errors import UserError, preview
from sweeper.plan.limits import Limit
from sweeper.registry import Registry

NONE = "none"


@dataclass(frozen=True)
class DefenseSpec:
    """One defense: the parameters a grid may set (with sweeper's defaults), the range
    each accepts, and how to build its training step."""

    name: str
    defaults: Mapping[str, Any]
    limits: Mapping[str, Limit]  # what each parameter accepts (sweeper.plan.limits)
    description: str
    # (params, clip_values, preset) -> base.Defense; None: plain training
    build: Callable[..., Any] | None = None
    reference: str = ""


DEFENSES: Registry[DefenseSpec] = Registry("defense")


def _add(spec: DefenseSpec) -> None:
    DEFENSES.add(spec.name, spec)


def resolve(name: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every parameter of a defense, sweeper's defaults filled in, each checked; bad
    input raises a one-line ``UserError`` naming the defense and the parameter."""
    spec = DEFENSES.get(name)
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        accepted = ", ".join(spec.defaults) or "none"
        raise UserError(f"defense {name!r}: unknown parameter {preview(unknown[0])}; accepted: {accepted}")
    return {key: _checked(name, key, params.get(key, default), spec.limits[key])
            for key, default in spec.defaults.items()}


def _checked(defense: str, key: str, value: Any, limit: Limit) -> Any:
    if limit.kind == "number":  # budgets may be fractions, as attack budgets
        number = _number(value)
        if number is None or limit.problem(number):
            raise UserError(f"defense {defense!r}: {key} must be {limit.text()} (a fraction such as "
                            f"8/255 is fine), got {preview(value)}")
        return number
    problem = limit.problem(value)
    if problem:
        raise UserError(f"defense {defense!r}: {key} {problem}, got {preview(value)}")
    return [int(b) for b in value] if limit.kind == "widths" else value


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        try:
            return float(value)
        except OverflowError:  # an int beyond float range
            return None
    if isinstance(value, str) and len(value) < 100:
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError, OverflowError):
            return None
    return None


def build(name: str, params: Mapping[str, Any] | None = None, *,
          clip_values: tuple[float, float] = (0.0, 1.0), preset: Any = None):
    """The defense's training step for ``train(..., defense=...)``: a ``base.Defense``,
    or None for ``none`` (plain training). ``preset``: the model's quantizer preset
    (``sweeper.models.quantizers.Preset``), which ``dbwt`` needs."""
    spec = DEFENSES.get(name)
    resolved = resolve(name, params)
    return None if spec.build is None else spec.build(resolved, tuple(clip_values), preset)


def check_preset(name: str, preset: Any) -> None:
    """Raise a one-line ``UserError`` when a defense cannot train a preset (``dbwt``
    needs bit widths to switch, ``dq`` kernels whose norms can change); cheap, no
    TensorFlow: grids call it when validating."""
    if name == "dbwt" and not (preset.kernel or "").startswith("quantized_bits"):
        raise UserError(f"defense 'dbwt' switches bit widths, so it needs a fixed-point preset "
                        f"(int8, int4, int2), not {preset.name!r}")
    if name == "dq" and (preset.kernel or "").startswith("binary("):
        # +-alpha weights with a fixed alpha: every column's norm is alpha * sqrt(fan-in)
        raise UserError(f"defense 'dq' needs kernels whose norms training can change; {preset.name!r} "
                        f"weights are +-1 whatever the training, so each column's norm stays sqrt(fan-in)")


_add(DefenseSpec(NONE, {}, {}, "plain training (no defense)"))

from sweeper.defenses import adversarial, bit_width, regularizers  # noqa: E402  (registers the rest)

for _spec in (*regularizers.SPECS, *adversarial.SPECS, *bit_width.SPECS):
    _add(_spec)

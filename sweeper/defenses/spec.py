"""What a defense is to sweeper: ``DefenseSpec`` (its parameters with sweeper's defaults,
the range each accepts, how to build its training step, which presets it can train, and
the other bit widths a model trained with it is evaluated at), the ``DEFENSES`` registry
the package fills, and checking a defense's parameters (``resolve``) and presets
(``check_preset``) without TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Mapping

from sweeper.errors import UserError, preview
from sweeper.plan.limits import Limit
from sweeper.registry import Registry


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
    # preset -> why the defense cannot train it (one line), or None; no TensorFlow
    preset_problem: Callable[[Any], str | None] | None = None
    # (params, preset) -> the bit widths, besides the preset's own, at which a model trained
    # with the defense is evaluated too (dbwt's); None: the preset's width only
    widths: Callable[[Mapping[str, Any], Any], list[int]] | None = None
    # (model, width) -> a context in which the model computes at that width
    at_width: Callable[[Any, int], Any] | None = None


DEFENSES: Registry[DefenseSpec] = Registry("defense")


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


def check_preset(name: str, preset: Any) -> None:
    """Raise a one-line ``UserError`` when a defense cannot train a preset (its spec's
    ``preset_problem``: ``dbwt`` needs bit widths to switch, ``dq`` kernels whose norms can
    change); cheap, no TensorFlow: grids call it when validating."""
    spec = DEFENSES.get(name)
    problem = spec.preset_problem(preset) if spec.preset_problem else None
    if problem:
        raise UserError(f"defense {name!r} {problem}")

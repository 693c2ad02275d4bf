"""What an attack is to sweeper: ``AttackSpec``, the ``ATTACKS`` registry, what ``eps``
means, and checking a grid's attack cell without TensorFlow or ART.

Each attack is an ``AttackSpec``: its accepted norms, the parameters a grid may set
(``defaults``) and the ones sweeper pins (``fixed``: ``targeted=False``,
``verbose=False``, batch sizes); every one of them is passed to ART explicitly, because
ART's defaults differ from the papers (BoundaryAttack is targeted by default, PGD runs
100 steps). The family modules define the specs; the package registers them.

What a grid may set is checked here, before anything trains, so that a trial never
refuses it: each parameter against its ``limits`` entry (``sweeper.plan.limits.Limit``: ranges
that match what ART and the builders accept, e.g. at least one iteration, Square's
``p_init`` in (0, 1)), or a ``param_checks`` function; and with ``check_fit`` the attack
against each dataset's declared input shape and class count (the spec's ``fits``: the
patch's size and target, the DLR loss's three classes), the same function the builder
calls.

What ``eps`` means (``run`` in budget.py enforces it, whatever ART returned):

- ``eps == 0`` is the clean evaluation for every attack: the clipped inputs, no ART call.
- fgsm, pgd, apgd_ce, apgd_dlr, square (budget attacks, ``uses_eps``): the perturbation budget under
  ``norm``; it must be finite. The result is projected onto the ball again if it lies
  outside beyond float32 rounding (``BUDGET_RTOL``).
- patch (norm "patch", ``needs_training_data``): the share of the input's area the patch
  covers, in (0, 1] (patch.py). Not an L-p budget: "patch" rows never meet L-p rows in a
  comparison, and the result is never projected, only checked (``perturbation_norms``
  "patch" is the share of pixels changed).
- cw_l2, zoo (norm "2"), boundary and hopskipjump (norm "inf" or "2"): minimal-perturbation attacks
  (``is_minimal``) with no budget parameter. ``eps == math.inf`` (or None) is unbounded:
  the raw examples, clipped to the classifier's clip_values, a failed sample being its
  clean input; ``perturbation_norms`` of one unbounded run gives every post-hoc budget.
  A finite ``eps`` is such a budget applied here: an example whose ``||x_adv - x||``
  exceeds it is replaced by the clean input, i.e. counts as a failed attack.

Parameters a spec adds after its cells' ids were fixed (``late_params``: the patch's
``placement`` and ``position``) stay out of a cell's identity and its ``attack_params``
while at their default (``recorded_params``), so grids that do not set them keep their ids.

A parameter listed in a spec's ``relative`` (PGD's ``eps_step``) may also be written
relative to the budget (``eps/4``, ``eps*0.25``, ``0.25*eps``, ``eps``); ``art_params``
resolves it for a given eps.
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from sweeper.errors import UserError, preview
from sweeper.plan.limits import Limit
from sweeper.registry import Registry


@dataclass(frozen=True)
class AttackSpec:
    """One attack: what a grid may set for it and how to build and run it through ART."""

    name: str
    norms: tuple[str, ...]  # as written in grid files: "inf", "1", "2"; the first is the default
    defaults: Mapping[str, Any]  # what a grid may set, with sweeper's defaults
    uses_eps: bool  # False: a minimal-perturbation attack, eps is a post-hoc budget (module doc)
    black_box: bool  # uses only the model's outputs, never its gradients
    build: Callable[..., Any]  # (classifier, eps, norm, params, seed) -> ART attack
    description: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # passed to ART, not settable
    # (attack, classifier, x, y, params, seed) -> x_adv; None means attack.generate(x, y)
    generate: Callable[..., np.ndarray] | None = None
    single_step: bool = False  # one gradient step (FGSM): should never beat an iterative attack
    # Parameters a grid may write relative to the budget (eps_step: eps/4), see RELATIVE_FORMS.
    relative: tuple[str, ...] = ()
    # What each parameter of ``defaults`` accepts (sweeper.plan.limits), unless param_checks judges it.
    limits: Mapping[str, Limit] = field(default_factory=dict)
    # param -> why a value is bad (None: good), for parameters no Limit describes (a shape).
    param_checks: Mapping[str, Callable[[Any], str | None]] = field(default_factory=dict)
    # (resolved params, eps, input_shape, nb_classes) -> why the attack cannot run on such
    # inputs (None: it can). Grids call it for every dataset an entry covers, before
    # anything trains; the builder raises the same message.
    fits: Callable[[Mapping[str, Any], float, tuple[int, ...], int], str | None] | None = None
    # Trained on training-fold images (the patch): run() passes them to generate as x_train.
    needs_training_data: bool = False
    max_eps: float = math.inf  # the patch's eps is a share of the input: at most 1
    # Parameters added after cell ids were fixed: at their default they are left out of a
    # cell's identity and its attack_params (``recorded_params``), so the cells of grids
    # that do not set them keep their ids.
    late_params: tuple[str, ...] = ()
    # The full parameters -> (parameter, why they do not go together) or None: checks
    # across parameters (the patch's position only with placement: fixed).
    check_params: Callable[[Mapping[str, Any]], tuple[str, str] | None] | None = None
    # The full parameters -> what a grid entry's default label appends to the name
    # (the patch at a fixed place: "-fixed"), so two entries need no hand-written labels.
    label_suffix: Callable[[Mapping[str, Any]], str] | None = None
    # (attack, classifier, x, params, seed) -> {name: examples}: controls of the same
    # budget that the attack must beat, made without gradients or training (the patch: a
    # uniform-random and two solid patches at its own placements). None: no controls.
    controls: Callable[..., dict[str, np.ndarray]] | None = None
    # Norms under which each step moves a single input element (ART's FGSM and PGD under L1:
    # the whole step on the largest gradient entry, nothing if that element is at its bound).
    single_coordinate_norms: tuple[str, ...] = ()
    # Why these (resolved) parameters cannot attack the int8 build (target: deployed), or
    # None; checked by the grid's attack entries (sweeper.plan.entries) for black-box attacks on the build.
    deployed_problem: Callable[[Mapping[str, Any]], str | None] | None = None


# The patch's "norm": eps is a share of the input's area, not an L-p radius (patch.py).
PATCH_NORM = "patch"

# Filled by the package's __init__, in the order error messages list the attacks.
ATTACKS: Registry[AttackSpec] = Registry("attack")


def _art_norm(norm: str) -> float | int:
    return np.inf if norm == "inf" else int(norm)


def normalize_norm(norm: Any) -> str | None:
    """Grid files may say 2, 2.0, "2", "inf" or .inf: map them all to "2" / "inf"."""
    if norm is None:
        return None
    if isinstance(norm, (int, float)) and not isinstance(norm, bool):
        if norm == float("inf"):
            return "inf"
        return str(int(norm)) if float(norm).is_integer() else str(norm)
    return str(norm).strip().lower()


def single_coordinate(name: str, norm: str | None) -> bool:
    """Each step of this attack under this norm moves one input element (False for names
    outside the registry: the clean evaluation, worst-case rows)."""
    return name in ATTACKS and normalize_norm(norm) in ATTACKS.get(name).single_coordinate_norms


def is_minimal(name: str) -> bool:
    """A minimal-perturbation attack (no budget parameter; eps may be unbounded)."""
    return not ATTACKS.get(name).uses_eps


def _minimal_names() -> str:
    return ", ".join(name for name in ATTACKS.names() if is_minimal(name))


# A relative parameter: "eps", "eps/k", "eps*k" or "k*eps", k a plain positive number.
RELATIVE_FORMS = "eps, eps/k, eps*k or k*eps with a number k > 0"
_RELATIVE_ERROR = f"must be a number > 0 or relative to eps ({RELATIVE_FORMS})"
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RELATIVE = re.compile(
    rf"(?:(?P<left>{_NUMBER})\s*\*\s*)?eps(?:\s*(?P<op>[*/])\s*(?P<right>{_NUMBER}))?")


def _relative(text: str) -> tuple[str, float] | None:
    """("*" or "/", k) for a relative expression, None if text is not one."""
    match = _RELATIVE.fullmatch(text.strip())
    if not match or (match["left"] and match["op"]):  # one factor at most: no 2*eps/4
        return None
    if match["left"]:
        op, k = "*", float(match["left"])
    else:
        op, k = match["op"] or "*", float(match["right"] or 1)
    return (op, k) if 0 < k < math.inf else None


def _resolve(text: str, eps: float) -> float:
    op, k = _relative(text)
    return eps / k if op == "/" else eps * k  # eps/4 exactly, not eps * 0.25 rounded twice


def _param_error(spec: AttackSpec, param: str, value: Any) -> str | None:
    """Why value is not accepted for param; None if it is."""
    if param in spec.relative and isinstance(value, str):
        return None if _relative(value) else _RELATIVE_ERROR
    if param in spec.param_checks:
        return spec.param_checks[param](value)
    problem = spec.limits[param].problem(value)
    return _RELATIVE_ERROR if problem and param in spec.relative else problem


def validate(name: str, norm: Any, params: Mapping[str, Any], *, eps: float | None = None) -> None:
    """Check an attack cell without importing ART; raise a one-line UserError if bad.

    ``eps`` None is not checked; ``math.inf`` (unbounded) is only for minimal attacks.
    """
    spec = ATTACKS.get(name)
    key = normalize_norm(norm)
    if key is not None and key not in spec.norms:
        accepted = ", ".join(spec.norms)
        raise UserError(f"attack {name!r}: unsupported norm {preview(norm)}; accepted: {accepted}")
    for param, value in params.items():
        if param not in spec.defaults:
            accepted = ", ".join(sorted(spec.defaults))
            raise UserError(f"attack {name!r}: unknown parameter {preview(param)}; accepted: {accepted}")
        problem = _param_error(spec, param, value)
        if problem:
            raise UserError(f"attack {name!r}: parameter {param!r} {problem}, got {preview(value)}")
    full = {**spec.defaults, **params}
    clash = spec.check_params(full) if spec.check_params else None
    if clash:
        param, problem = clash
        raise UserError(f"attack {name!r}: parameter {param!r} {problem}, got {preview(full[param])}")
    if eps is None:
        return
    real = isinstance(eps, numbers.Real) and not isinstance(eps, bool)
    if not (real and eps >= 0):  # also rejects NaN
        raise UserError(f"attack {name!r}: eps must be a finite number >= 0, got {preview(eps)}")
    if math.isinf(eps) and spec.uses_eps:
        _unbounded_budget_error(name)
    if eps > spec.max_eps:
        raise UserError(f"attack {name!r}: eps must be at most {spec.max_eps:g}, got {preview(eps)}")


def check_fit(name: str, params: Mapping[str, Any], eps: float, input_shape: tuple[int, ...],
              nb_classes: int) -> None:
    """Raise a one-line UserError when the attack, with ``params`` (a grid's, defaults
    filled in by this function) and ``eps``, cannot run on inputs of ``input_shape`` with
    ``nb_classes`` classes: what its builder would refuse in a trial, said before any
    training. Needs no TensorFlow (a dataset's declared shape is enough)."""
    spec = ATTACKS.get(name)
    problem = spec.fits({**spec.defaults, **params}, eps, tuple(input_shape), nb_classes) if spec.fits else None
    if problem:
        raise UserError(f"attack {name!r}: {problem}")


def recorded_params(name: str, params: Mapping[str, Any], eps: float | None = None) -> dict[str, Any]:
    """``art_params`` without the spec's ``late_params`` that are at their default: what a
    cell's identity and its row's ``attack_params`` record (module doc of sweeper.plan.expand)."""
    spec = ATTACKS.get(name)
    full = art_params(name, params, eps)
    return {k: v for k, v in full.items() if not (k in spec.late_params and v == spec.defaults[k])}


def default_label(name: str, params: Mapping[str, Any]) -> str:
    """The label of a grid entry that sets none: the name, plus what the spec's
    ``label_suffix`` says about its parameters."""
    spec = ATTACKS.get(name)
    return name + (spec.label_suffix({**spec.defaults, **params}) if spec.label_suffix else "")


def _unbounded_budget_error(name: str) -> None:
    raise UserError(f"attack {name!r}: needs a finite eps budget; 'unbounded' is only for "
                    f"minimal-perturbation attacks: {_minimal_names()}")


def art_params(name: str, params: Mapping[str, Any], eps: float | None = None) -> dict[str, Any]:
    """Every keyword sweeper passes to ART for this attack besides eps and norm.

    A relative parameter (``eps_step: eps/4``) becomes a number for a finite ``eps``; with
    eps None or unbounded it stays as written (how a grid cell records it).
    """
    spec = ATTACKS.get(name)
    full = {**spec.defaults, **params, **spec.fixed}
    if eps is not None and math.isfinite(eps):
        for param in spec.relative:
            if isinstance(full[param], str):
                full[param] = _resolve(full[param], float(eps))
    return full

"""Adversarial attacks: the attacks sweeper runs through ART, what their eps means, and
the fast ART estimator they run on.

One file per concern:

- ``spec.py``: ``AttackSpec``, the ``ATTACKS`` registry, what eps means per attack,
  ``validate`` (each parameter against its ``sweeper.plan.limits.Limit``), ``check_fit`` (an
  attack against a dataset's declared shape and classes), ``art_params`` and
  budget-relative parameters (``eps_step: eps/4``).
- ``gradient.py``: the white-box attacks, fgsm, pgd and cw_l2.
- ``apgd.py``: apgd_ce and apgd_dlr, AutoAttack's APGD ported from the reference code and
  compiled on the classifier's model (no ART attack class); ``apgd_l1.py``: its L1 parts
  (the projection onto the L1 ball within the box, the sparse step, the step-size rule).
- ``square.py``: square, and ``AnyShapeSquareAttack`` (ART's Square on non-square inputs).
- ``black_box.py``: boundary and hopskipjump (with their seeded starts) and zoo.
- ``patch.py``: patch, a universal targeted adversarial patch trained on training-fold
  images and pasted with a hard mask at random or fixed places (``Patch``,
  ``patch_shape``), its controls, and ``target_rate``, what it is scored by.
- ``budget.py``: ``run`` (seed, call ART, hold the result to eps), ``build_attack`` (the
  attack object a run uses), ``controls`` (an attack's same-budget controls),
  ``perturbation_norms`` and ``within`` (the one budget rule).
- ``estimator.py``: ``make_classifier`` (the compiled ``FastTensorFlowV2Classifier``) and
  ``make_stock_classifier``.
- ``deployed.py``: ``make_deployed_classifier``, the int8 ``.tflite`` itself as an ART
  classifier (TFLite interpreter, reference kernels, batched): what black-box attacks
  with ``target: deployed`` query.

Importing the package imports neither TensorFlow nor ART, so the CLI lists and validates
attacks cheaply: builders and estimators import them when first called, and the two ART
subclasses are created on first access (module ``__getattr__``). This module registers the
attacks, in the order error messages list them, and re-exports the API (and the private
helpers the tests reach).
"""

from __future__ import annotations

from typing import Any

from sweeper.attacks.apgd import APGD_CE, APGD_DLR
from sweeper.attacks.black_box import BOUNDARY, HOP_SKIP_JUMP, ZOO, _generate_boundary  # noqa: F401
from sweeper.attacks.budget import (  # noqa: F401
    BUDGET_RTOL,
    _within_budget,
    build_attack,
    controls,
    perturbation_norms,
    run,
    within,
)
from sweeper.attacks.deployed import NoGradientError, make_deployed_classifier  # noqa: F401
from sweeper.attacks.estimator import (  # noqa: F401
    PREDICT_CHUNK,
    _fast_classifier_class,
    make_classifier,
    make_stock_classifier,
)
from sweeper.attacks.gradient import CW_L2, FGSM, PGD
from sweeper.attacks.patch import PATCH, Patch, patch_shape, target_rate  # noqa: F401
from sweeper.attacks.spec import (  # noqa: F401
    ATTACKS,
    PATCH_NORM,
    RELATIVE_FORMS,
    AttackSpec,
    art_params,
    check_fit,
    default_label,
    is_minimal,
    normalize_norm,
    recorded_params,
    single_coordinate,
    validate,
)
from sweeper.attacks.square import SQUARE, _square_attack_class, _tile_side, _tile_start  # noqa: F401

for _attack in (FGSM, PGD, SQUARE, CW_L2, BOUNDARY, ZOO, APGD_CE, APGD_DLR, PATCH, HOP_SKIP_JUMP):
    ATTACKS.add(_attack.name, _attack)
del _attack


def __getattr__(name: str) -> Any:
    # The ART subclasses are created on first use so that importing this package stays light.
    if name == "FastTensorFlowV2Classifier":
        return _fast_classifier_class()
    if name == "AnyShapeSquareAttack":
        return _square_attack_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

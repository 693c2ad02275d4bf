"""The white-box attacks, which follow the model's gradients: FGSM and PGD (budget
attacks) and Carlini & Wagner L2 (minimal perturbation). Their specs and ART builders.

Under L1, ART's FGSM and PGD steps are single-coordinate (``single_coordinate_norms``):
each puts its whole size on the one input element with the largest gradient entry, and
changes nothing when that element already sits at its clip bound. The grids keep them as
the paper ran them; the report labels their columns, and ``apgd_ce`` / ``apgd_dlr`` with
norm 1 are the L1 attack proper.
"""

from __future__ import annotations

from sweeper.attacks.spec import AttackSpec, _art_norm
from sweeper.plan.limits import non_negative, positive, whole


def _build_fgsm(classifier, eps, norm, params, seed):
    from sweeper.attacks.art_lib import FastGradientMethod

    # eps_step only matters with minimal=True, which sweeper does not use.
    return FastGradientMethod(classifier, norm=_art_norm(norm), eps=eps, eps_step=eps, **params)


def _build_pgd(classifier, eps, norm, params, seed):
    from sweeper.attacks.art_lib import ProjectedGradientDescentNumpy

    return ProjectedGradientDescentNumpy(classifier, norm=_art_norm(norm), eps=eps, **params)


def _build_cw_l2(classifier, eps, norm, params, seed):
    from sweeper.attacks.art_lib import CarliniL2Method

    return CarliniL2Method(classifier, **params)


FGSM = AttackSpec(
    name="fgsm",
    norms=("inf", "1", "2"),
    defaults={"num_random_init": 0},
    limits={"num_random_init": whole(0)},
    fixed={"targeted": False, "minimal": False, "batch_size": 128, "summary_writer": False},
    uses_eps=True,
    black_box=False,
    single_step=True,
    single_coordinate_norms=("1",),  # ART's L1 step: one element (FastGradientMethod._apply_norm)
    build=_build_fgsm,
    description="Fast Gradient (Sign) Method, one step of size eps (Goodfellow et al. 2015)",
)
PGD = AttackSpec(
    name="pgd",
    norms=("inf", "1", "2"),
    # One random start, as in Madry et al.; num_random_init=0 gives BIM (start at x).
    defaults={"max_iter": 7, "eps_step": 2 / 255, "num_random_init": 1},
    # At least one step: zero steps would be the clean evaluation, which eps 0 already is.
    limits={"max_iter": whole(1), "eps_step": positive(), "num_random_init": whole(0)},
    fixed={"targeted": False, "decay": None, "random_eps": False, "batch_size": 128,
           "summary_writer": False, "verbose": False},
    uses_eps=True,
    black_box=False,
    relative=("eps_step",),  # eps_step: eps/4 scales the step with each budget of the grid
    single_coordinate_norms=("1",),  # FGSM's L1 step, repeated (APGD-L1 is the L1 attack)
    build=_build_pgd,
    description="Projected Gradient Descent, numpy variant (Madry et al. 2018)",
)
CW_L2 = AttackSpec(
    name="cw_l2",
    norms=("2",),
    defaults={"confidence": 0.0, "max_iter": 10, "binary_search_steps": 10,
              "learning_rate": 0.01, "initial_const": 0.01},
    limits={"confidence": non_negative(), "max_iter": whole(1), "binary_search_steps": whole(1),
            "learning_rate": positive(), "initial_const": positive()},
    # ART's C&W keeps its constants and line search per sample, so batch_size only changes
    # speed: 128 gave the same examples as ART's default of 1, about 8x faster.
    fixed={"targeted": False, "max_halving": 5, "max_doubling": 5, "batch_size": 128,
           "verbose": False},
    uses_eps=False,
    black_box=False,
    build=_build_cw_l2,
    description="Carlini & Wagner L2, minimal perturbation; eps is a post-hoc L2 budget",
)

"""Gradient-masking checks, defined: warning signs that a model only looks robust.

Quantized networks often resist gradient attacks because their gradients are useless
(step functions, saturated activations), not because they are robust (Athalye, Carlini
and Wagner, 2018; Carlini et al., "On Evaluating Adversarial Robustness", 2019). For each
trained configuration (``CONFIG_COLUMNS``: every fold of one trained setup), five
checks compare numbers the grid already has, and a sixth asks whether a targeted patch
is an attack at all:

- ``single_step_beats_iterative``: an iterative white-box attack (PGD, C&W) with at least
  FGSM's budget (same norm, eps' >= eps; unbounded is above every budget) leaves more
  accuracy than FGSM at eps. Iterating with at least the budget should never help the model.
- ``black_box_beats_white_box``: a black-box attack (Square, Boundary, ZOO) leaves less
  accuracy than the best white-box attack at the same norm and budget. A transfer attack
  (examples crafted on another model, ``source_config_id`` set) is black-box from the
  target's view, so it is judged here too: a white-box attack that does worse than
  examples crafted without the target's gradients is the classic sign of masking.
- ``accuracy_rises_with_eps``: one attack (same label and parameters) leaves more accuracy
  at a larger epsilon than at a smaller one. A bigger ball contains the smaller one.
- ``adversarial_above_clean``: accuracy after the attack is above the clean accuracy of the
  same samples. Rows sweeper writes count a sample robust only if it is right unperturbed
  too (``run.evaluate.robust``), so this fires only on rows of stores written before that rule.
- ``large_eps_above_chance``: at a large budget (an L-inf-equivalent radius of at least
  ``LARGE_EPS`` of the row's own input range ``clip_max - clip_min`` per input value, or an
  unbounded minimal-perturbation attack) accuracy stays more than ``FAR_ABOVE_CHANCE``
  above chance. Every input can be changed at such a budget; a correct, strong enough
  attack should get near chance or below. Transfer attacks are not judged here: they do
  not adapt to the target, so failing at a large budget says nothing about its gradients.
- ``patch_not_above_control``: a targeted patch (a row with ``target_n``) is not shown to
  take more samples to its target than its best control, a random or solid patch of the
  same size at the same places. Pooled over folds (each fold's earliest row): hits =
  sum(round(target_rate * target_n)), control hits likewise from ``control_target_rate``,
  n = sum(target_n). It *fires unless* the exact one-sided binomial test of the hits
  against the controls' pooled rate (taken as known), p = P(X >= hits) for
  X ~ Binomial(n, control hits / n), gives p < ``ALPHA`` and the patch's rate exceeds the
  controls' by at least ``MIN_MARGIN``. No Holm adjustment (``p_adjusted`` is ``p_value``):
  each patch is its own question, and the flag marks a patch that has not earned the
  name; adjusting would only make it fire more often.

Rows of attacks on the deployed build (``target`` 'deployed') are not judged: the checks
are about the QKeras model's gradients, and the int8 build is another network (its own
worst case is query's ``worst@deployed``).

A *point* is one configuration at one ``POINT_COLUMNS`` value (attack, label, norm,
eps, parameters, sample count): points that differ in any of them are never merged. A
point pools the per-sample outcomes of all its folds, each sample keyed by
``(fold, sample_index)``. Points at eps 0 are clean evaluations and are not judged.

Statistics. Two accuracies measured on the same samples are not independent, so a
comparison of points A and B is *paired*: their samples are aligned on
``(fold, sample_index)`` (only samples both have), and the exact one-sided McNemar test
asks whether B is correct more often than A: with b = #(A right, B wrong) and
c = #(A wrong, B right), p = P(X >= c) for X ~ Binomial(b + c, 1/2). Clean against
adversarial (``C``) pairs each sample's ``clean_correct`` with its ``adv_correct``; ``L`` is
an exact one-sided binomial test of the pooled ``adv_correct`` against
p0 = 1/n_classes + FAR_ABOVE_CHANCE. Within each configuration and check, the p-values of
all judged comparisons are adjusted with Holm's step-down method, so each check has a
family-wise false-alarm rate of at most ``ALPHA`` per configuration. A comparison fires
when its Holm-adjusted p is below ``ALPHA`` and its effect (the accuracy difference on the
aligned samples) is at least ``MIN_MARGIN`` (for ``L``: at least ``FAR_ABOVE_CHANCE`` above
chance, which the test itself already demands).

A check is *judged* only where the grid has the numbers it compares; each judged
comparison is one row, with ``fired`` true or false, so a flag's absence can be told from
a check that could not run. Rows without per-sample outcomes (schema-2 stores) cannot be
judged at all, and ``L`` needs the row's clip range. Flags are warning signs to
investigate, not verdicts.
This module holds the definitions (the checks, their thresholds, ``Point``, how points are
named and what each flag's sentence says); ``diagnostics.py`` computes them in DuckDB at
the size of a paper grid and ``flags.py`` assembles the flags; the statistics are
``stats.py``'s. ``tests/diagnostics_reference.py`` computes them point by point from
these same definitions, the oracle the DuckDB path must match.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from sweeper.attacks import ATTACKS
from sweeper.keys import CONFIG_COLUMNS, POINT_COLUMNS

ALPHA = 0.05  # family-wise error rate per configuration and check (Holm)
MIN_MARGIN = 0.02  # an accuracy difference smaller than this is never a flag
LARGE_EPS = 0.3  # L-inf-equivalent radius, share of the row's input range, that counts as large
FAR_ABOVE_CHANCE = 0.10  # "far above chance" at a large budget: at least this much

CHECKS = {
    "single_step_beats_iterative": "an iterative white-box attack with at least FGSM's budget leaves more "
                                   "accuracy than FGSM",
    "black_box_beats_white_box": "a black-box attack beats the best white-box attack at the same budget",
    "accuracy_rises_with_eps": "accuracy rises as epsilon grows",
    "adversarial_above_clean": "accuracy under attack is above clean accuracy",
    "large_eps_above_chance": "accuracy stays far above chance at a large budget",
    "patch_not_above_control": "a targeted patch takes no more samples to its target than a random or solid "
                               "patch at the same places",
}
PATCH = len(CHECKS) - 1  # its family: judged per point, never Holm-adjusted (module doc)
# The paired families (S, B, E), in CHECKS' order; C, L and P are judged per point.
FAMILIES = ["single_step_beats_iterative", "black_box_beats_white_box", "accuracy_rises_with_eps"]

# fold and sample_index packed into one sortable int64 key: sample_index < 2**40 (twins.py
# and the tests' reference key samples the same way).
FOLD_SHIFT = 40
SCALARS = [*CONFIG_COLUMNS, *POINT_COLUMNS, "fold", "n_classes", "n_features", "clip_min", "clip_max",
            "target_rate", "target_n", "control_target_rate"]
OUTCOMES = ["sample_index", "clean_correct", "adv_correct"]


@dataclass(eq=False)
class Point:
    """One configuration at one POINT_COLUMNS value, its folds' samples pooled."""

    config: tuple
    attack: str
    attack_label: str
    norm: str
    eps: float
    eps_label: str
    attack_params: str
    n_samples: int | None
    source_config_id: str | None  # a transfer attack's source configuration; None: white-box
    target: str | None  # "model" (deployed points, attacks on the .tflite, are not judged)
    n_classes: int | None
    n_features: int | None
    input_range: float | None  # the widest clip_max - clip_min of its rows; None if unknown
    keys: np.ndarray  # sorted, unique (fold, sample_index) keys
    clean: np.ndarray  # clean_correct, aligned with keys
    adv: np.ndarray  # adv_correct, aligned with keys
    name: str = field(default="")  # label@eps, plus what tells it apart from a namesake
    # A targeted patch's counts pooled over folds (P, module doc); 0 where it has none.
    target_n: int = 0
    target_hits: int = 0
    control_hits: int = 0

    @property
    def spec(self):
        return ATTACKS.get(self.attack)

    @property
    def unbounded(self) -> bool:
        return math.isinf(self.eps)

    @property
    def transfer(self) -> bool:
        return self.source_config_id is not None

    @property
    def black_box(self) -> bool:
        """No gradient of the target: a black-box attack, or a transfer attack."""
        return self.spec.black_box or self.transfer

    @property
    def judged_large(self) -> bool:
        """Judged by ``large_eps_above_chance``: a large budget, known classes, no transfer."""
        return bool(self.large and self.n_classes and not self.transfer)

    @property
    def radius(self) -> float | None:
        """L-inf-equivalent radius per input value, as a share of the input range."""
        if self.unbounded:
            return math.inf
        if not self.input_range or self.input_range <= 0:
            return None  # no scale to judge the budget on
        if self.norm == "inf":
            return self.eps / self.input_range
        if self.norm in ("1", "2") and self.n_features:
            return self.eps / (self.input_range * self.n_features ** (1 / int(self.norm)))
        return None

    @property
    def large(self) -> bool:
        radius = self.radius
        return radius is not None and radius >= LARGE_EPS - 1e-12



# ---------------------------------------------------------------- names and sentences

def name_points(points: list[Point]) -> None:
    """label@eps, and where two points of a configuration share that, what differs."""
    namesakes: dict[tuple, list[Point]] = defaultdict(list)
    for point in points:
        namesakes[point.attack_label, point.eps_label].append(point)
    for same in namesakes.values():
        for point in same:
            suffix = _difference(point, same) if len(same) > 1 else ""
            point.name = f"{point.attack_label}@{point.eps_label}{suffix}"


def _difference(point: Point, same: list[Point]) -> str:
    def params(p: Point) -> dict:
        try:
            return {**json.loads(p.attack_params or "{}"), "attack": p.attack, "n_samples": p.n_samples}
        except (ValueError, TypeError):
            return {"attack_params": p.attack_params, "attack": p.attack, "n_samples": p.n_samples}

    mine, all_params = params(point), [params(p) for p in same]
    differing = [k for k in mine if any(other.get(k) != mine[k] for other in all_params)]
    return " [" + ", ".join(f"{k}={mine[k]}" for k in differing) + "]"


TEXTS = {  # the sentence of a paired comparison
    "single_step_beats_iterative": "iterative {point} leaves {value:.3f} accuracy, "
                                   "single-step {reference} with no more budget {ref:.3f},",
    "black_box_beats_white_box": "black-box {reference} leaves {ref:.3f} accuracy, "
                                 "the best white-box {point} {value:.3f},",
    "accuracy_rises_with_eps": "{point} leaves {value:.3f} accuracy, the smaller budget {reference} {ref:.3f},",
}


TAIL = " (p = {p:.2g}, Holm {p_adjusted:.2g})"
# P's sentence (no Holm): the reference writes the same.
PATCH_SENTENCE = ("{point} takes {value:.3f} of {n} clean-correct non-target samples to its target, "
                  "its best control {ref:.3f} (p = {p:.2g})")
SENTENCES = [  # the sentence of each family, in str.format syntax (the reference writes the same)
    *[TEXTS[family] + " on {n} shared samples" + TAIL for family in FAMILIES],
    "{point} leaves {value:.3f} accuracy, clean {ref:.3f}, on {n} samples" + TAIL,
    "{point}{budget} leaves {value:.3f} accuracy on {n} samples; chance is {ref:.3f}, tested against {null:.3f}"
    + TAIL,
    PATCH_SENTENCE,
]
BUDGET = " (radius {radius:.2f} of the input range)"  # L's, where the budget is bounded

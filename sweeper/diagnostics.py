"""Gradient-masking diagnostics: warning signs that a model only looks robust.

Quantized networks often resist gradient attacks because their gradients are useless
(step functions, saturated activations), not because they are robust (Athalye, Carlini
and Wagner, 2018; Carlini et al., "On Evaluating Adversarial Robustness", 2019). For each
trained configuration (dataset, model, quantizer and training setup), averaged across
folds, five checks compare numbers the grid already has:

- ``single_step_beats_iterative``: FGSM leaves lower accuracy than an iterative white-box
  attack (PGD, C&W) at the same norm and budget. Iterating should only help.
- ``black_box_beats_white_box``: a black-box attack (Square, Boundary, ZOO) leaves lower
  accuracy than the best white-box attack at the same norm and budget.
- ``accuracy_rises_with_eps``: an attack's accuracy at a larger epsilon is higher than at
  a smaller one. A bigger ball contains the smaller one.
- ``adversarial_above_clean``: accuracy after the attack is above the clean accuracy of the
  same samples. (sweeper attacks only the samples the model gets right, so with a
  deterministic model this cannot fire; it guards against randomized inference.)
- ``large_eps_above_chance``: at a large budget (an L-inf-equivalent radius of at least
  ``LARGE_EPS`` of the [0, 1] range per input value, or an unbounded minimal-perturbation
  attack) accuracy stays far above chance. Every input can be changed at such a budget;
  a correct, strong enough attack should get near chance or below.

A check is *judged* only where the grid has the numbers it compares; each judged
comparison is one row, with ``fired`` true or false, so a flag's absence can be told from
a check that could not run. A difference counts only when it exceeds the sampling noise:
twice its binomial standard error over all attacked samples, and at least ``MIN_MARGIN``.
Flags are warning signs to investigate, not verdicts.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa

from sweeper import store
from sweeper.attacks import ATTACKS
from sweeper.expand import CLEAN

MIN_MARGIN = 0.02  # an accuracy difference smaller than this is never a flag
LARGE_EPS = 0.3  # L-inf-equivalent radius, share of the [0, 1] range, that counts as large
FAR_ABOVE_CHANCE = 0.10  # "far above chance" at a large budget: at least this much

CHECKS = {
    "single_step_beats_iterative": "FGSM beats an iterative white-box attack at the same budget",
    "black_box_beats_white_box": "a black-box attack beats the best white-box attack at the same budget",
    "accuracy_rises_with_eps": "accuracy rises as epsilon grows",
    "adversarial_above_clean": "accuracy under attack is above clean accuracy",
    "large_eps_above_chance": "accuracy stays far above chance at a large budget",
}

# One trained configuration: folds of it are averaged together.
CONFIG_COLUMNS = ["dataset", "dataset_options", "model", "quantizer", "train", "k", "seed"]

SCHEMA = pa.schema([
    *[store.SCHEMA.field(name) for name in CONFIG_COLUMNS],
    pa.field("flag", pa.string()),  # which check (a column named "check" would need quoting in SQL)
    pa.field("attack_label", pa.string()),  # the attack whose number the flag qualifies
    pa.field("norm", pa.string()),
    pa.field("eps", pa.float64()),
    pa.field("eps_label", pa.string()),
    pa.field("value", pa.float64()),  # that number: its accuracy, mean over folds
    pa.field("reference", pa.float64()),  # what it is compared with
    pa.field("reference_label", pa.string()),  # where the reference comes from
    pa.field("margin", pa.float64()),  # the difference needed to fire
    pa.field("fired", pa.bool_()),
    pa.field("detail", pa.string()),  # one sentence, for people
])


@dataclass(frozen=True)
class Point:
    """One attack at one epsilon on one configuration, averaged across folds."""

    attack: str
    attack_label: str
    norm: str
    eps: float
    eps_label: str
    adv_acc: float
    clean_acc: float
    samples: int  # attacked samples, all folds together
    n_classes: int
    n_features: int

    @property
    def name(self) -> str:
        return f"{self.attack_label}@{self.eps_label}"

    @property
    def unbounded(self) -> bool:  # a minimal-perturbation attack with no post-hoc budget
        return self.eps == 0 and not ATTACKS.get(self.attack).uses_eps

    @property
    def budget(self) -> tuple | None:
        """What makes two points comparable; None for an eps-0 budgeted attack (clean)."""
        if self.unbounded:
            return (self.norm, "unbounded")
        return (self.norm, self.eps) if self.eps > 0 else None

    @property
    def large(self) -> bool:
        if self.unbounded:
            return True
        if self.eps <= 0:
            return False
        per_value = self.eps if self.norm == "inf" else self.eps / self.n_features ** (1 / int(self.norm))
        return per_value >= LARGE_EPS - 1e-12


def diagnose(rows: pa.Table) -> pa.Table:
    """Every judged check of every configuration in ``rows`` (the store's schema)."""
    flags = []
    for config, points in _points_by_config(rows).items():
        for flag in _checks(points):
            flags.append({**dict(zip(CONFIG_COLUMNS, config)), **flag})
    return pa.Table.from_pylist(flags, schema=SCHEMA)


def _points_by_config(rows: pa.Table) -> dict[tuple, list[Point]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    needed = [*CONFIG_COLUMNS, "attack", "attack_label", "norm", "eps", "eps_label", "adv_acc", "clean_acc",
              "n_samples", "n_classes", "n_features"]
    for row in rows.select(needed).to_pylist():
        if row["attack"] != CLEAN and row["attack"] in ATTACKS.names():
            groups[tuple(row[c] for c in CONFIG_COLUMNS), row["attack_label"], row["eps"]].append(row)
    by_config: dict[tuple, list[Point]] = defaultdict(list)
    for (config, _, _), folds in groups.items():
        by_config[config].append(_average(folds))
    return by_config


def _average(folds: list[dict]) -> Point:
    first = folds[0]
    return Point(first["attack"], first["attack_label"], first["norm"], first["eps"], first["eps_label"],
                 adv_acc=_mean(f["adv_acc"] for f in folds), clean_acc=_mean(f["clean_acc"] for f in folds),
                 samples=sum(f["n_samples"] or 0 for f in folds),
                 n_classes=first["n_classes"] or 0, n_features=first["n_features"] or 0)


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)


def margin(a: float, n_a: int, b: float | None = None, n_b: int = 0) -> float:
    """The difference ``a - b`` must exceed to count: twice its standard error (binomial,
    over all attacked samples), and at least MIN_MARGIN. ``b`` None: a constant."""
    variance = a * (1 - a) / max(n_a, 1)
    if b is not None:
        variance += b * (1 - b) / max(n_b, 1)
    return max(MIN_MARGIN, 2 * math.sqrt(variance))


def _checks(points: list[Point]) -> list[dict]:
    return [*_single_step(points), *_black_box(points), *_rising(points), *_above_clean(points),
            *_large_eps(points)]


def _flag(check: str, point: Point, reference: float, reference_label: str, needed: float,
          fired: bool, detail: str) -> dict:
    return {"flag": check, "attack_label": point.attack_label, "norm": point.norm, "eps": point.eps,
            "eps_label": point.eps_label, "value": point.adv_acc, "reference": reference,
            "reference_label": reference_label, "margin": needed, "fired": fired, "detail": detail}


def _single_step(points: list[Point]) -> list[dict]:
    flags = []
    for one in (p for p in points if ATTACKS.get(p.attack).single_step and p.budget):
        for many in points:
            spec = ATTACKS.get(many.attack)
            if spec.black_box or spec.single_step or many.budget != one.budget:
                continue
            needed = margin(many.adv_acc, many.samples, one.adv_acc, one.samples)
            fired = many.adv_acc - one.adv_acc > needed
            flags.append(_flag("single_step_beats_iterative", many, one.adv_acc, one.name, needed, fired,
                               f"{one.name} leaves {one.adv_acc:.3f} accuracy, {many.name} {many.adv_acc:.3f}"))
    return flags


def _black_box(points: list[Point]) -> list[dict]:
    flags = []
    for black in (p for p in points if ATTACKS.get(p.attack).black_box and p.budget):
        white = [p for p in points if not ATTACKS.get(p.attack).black_box and p.budget == black.budget]
        if not white:
            continue
        best = min(white, key=lambda p: p.adv_acc)
        needed = margin(best.adv_acc, best.samples, black.adv_acc, black.samples)
        fired = best.adv_acc - black.adv_acc > needed
        flags.append(_flag("black_box_beats_white_box", best, black.adv_acc, black.name, needed, fired,
                           f"black-box {black.name} leaves {black.adv_acc:.3f} accuracy, "
                           f"the best white-box {best.name} {best.adv_acc:.3f}"))
    return flags


def _rising(points: list[Point]) -> list[dict]:
    by_attack: dict[str, list[Point]] = defaultdict(list)
    for point in points:
        if point.eps > 0:
            by_attack[point.attack_label].append(point)
    flags = []
    for curve in by_attack.values():
        if len(curve) < 2:
            continue
        curve.sort(key=lambda p: p.eps)
        # The largest rise from any smaller epsilon to a larger one.
        pairs = [(high, low) for j, high in enumerate(curve) for low in curve[:j]]
        high, low = max(pairs, key=lambda pair: pair[0].adv_acc - pair[1].adv_acc)
        needed = margin(high.adv_acc, high.samples, low.adv_acc, low.samples)
        fired = high.adv_acc - low.adv_acc > needed
        flags.append(_flag("accuracy_rises_with_eps", high, low.adv_acc, low.name, needed, fired,
                           f"accuracy {high.adv_acc:.3f} at eps {high.eps_label}, "
                           f"{low.adv_acc:.3f} at the smaller eps {low.eps_label}"))
    return flags


def _above_clean(points: list[Point]) -> list[dict]:
    flags = []
    for point in points:
        needed = margin(point.adv_acc, point.samples, point.clean_acc, point.samples)
        fired = point.adv_acc - point.clean_acc > needed
        flags.append(_flag("adversarial_above_clean", point, point.clean_acc, "clean", needed, fired,
                           f"{point.name} leaves {point.adv_acc:.3f} accuracy, clean {point.clean_acc:.3f}"))
    return flags


def _large_eps(points: list[Point]) -> list[dict]:
    flags = []
    for point in (p for p in points if p.large and p.n_classes):
        chance = 1 / point.n_classes
        needed = max(FAR_ABOVE_CHANCE, margin(point.adv_acc, point.samples))
        fired = point.adv_acc - chance > needed
        budget = "unbounded" if point.unbounded else f"eps {point.eps_label}"
        flags.append(_flag("large_eps_above_chance", point, chance, "chance", needed, fired,
                           f"{point.name} ({budget}) leaves {point.adv_acc:.3f} accuracy; "
                           f"chance is {chance:.3f}"))
    return flags


# ---------------------------------------------------------------- in the store

def write(location: store.Location, rows: pa.Table | None = None) -> pa.Table:
    """(Re)write RESULTS/diagnostics.parquet from the rows now in the store (``rows``, when
    the caller has just read them all)."""
    flags = diagnose(store.read(location).table if rows is None else rows)
    store.write_file(location, store.DIAGNOSTICS_FILE, flags)
    return flags


def summary(flags: list[dict]) -> list[dict]:
    """Per configuration and check: how many comparisons were judged and how many fired."""
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for flag in flags:
        key = (*[flag[c] for c in CONFIG_COLUMNS], flag["flag"])
        counts[key][0] += 1
        counts[key][1] += int(flag["fired"])
    return [{**dict(zip([*CONFIG_COLUMNS, "flag"], key)), "judged": judged, "fired": fired}
            for key, (judged, fired) in counts.items()]


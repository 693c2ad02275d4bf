"""The diagnostics computed point by point in Python: ``diagnose_reference(rows)``, the
definition that ``sweeper.analysis.diagnostics.diagnose`` (DuckDB, column-wise) must match exactly.
It holds every sample in memory, so it lives with the tests that use it as their oracle
(tests/test_diagnostics.py), not in the package."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sweeper import keys, store
from sweeper.analysis.checks import (ALPHA, FAR_ABOVE_CHANCE, FOLD_SHIFT, MIN_MARGIN, OUTCOMES, PATCH_SENTENCE, SCALARS,
                                     TEXTS, Point, name_points)
from sweeper.analysis.flags import SCHEMA
from sweeper.analysis.stats import binomial_p, holm, mcnemar_p
from sweeper.attacks import ATTACKS
from sweeper.keys import CONFIG_COLUMNS


@dataclass(frozen=True)
class Paired:
    """Two outcome vectors on the same samples: does ``second`` beat ``first``?"""

    first: np.ndarray
    second: np.ndarray

    @property
    def n(self) -> int:
        return len(self.first)

    @property
    def effect(self) -> float:  # accuracy(second) - accuracy(first)
        return float(self.second.mean() - self.first.mean())

    @property
    def p_value(self) -> float:
        b = int(np.count_nonzero(self.first & ~self.second))
        c = int(np.count_nonzero(~self.first & self.second))
        return mcnemar_p(b, c)


def aligned(a: Point, b: Point) -> Paired | None:
    """a's and b's adversarial outcomes on the samples both attacked; None if none."""
    if len(a.keys) == len(b.keys) and np.array_equal(a.keys, b.keys):  # the usual case
        return Paired(a.adv, b.adv)
    where = np.minimum(np.searchsorted(b.keys, a.keys), max(len(b.keys) - 1, 0))
    shared = (b.keys[where] == a.keys) if len(b.keys) else np.zeros(len(a.keys), bool)
    if not shared.any():
        return None
    return Paired(a.adv[shared], b.adv[where[shared]])


def diagnose_reference(rows: pa.Table) -> pa.Table:
    """Every judged check of every configuration in ``rows`` (the store's schema),
    computed point by point in Python: the reference that ``diagnose`` (DuckDB) must match
    exactly. It holds every sample in memory; use it on small tables only."""
    flags = []
    for config, points in _points_by_config(rows).items():
        for flag in _checks(points):
            flags.append({**dict(zip(CONFIG_COLUMNS, config)), **flag})
    return pa.Table.from_pylist(flags, schema=SCHEMA)


def _usable(rows: pa.Table) -> pa.Table:
    """The attack rows that can be judged: a known attack on the model (not its deployed
    build) at eps > 0 (eps 0 is clean) with per-sample outcomes of equal length. Missing
    columns read as null, so tables of older schemas give no points rather than an error."""
    columns = {name: rows.column(name) if name in rows.column_names
               else pa.nulls(rows.num_rows, store.SCHEMA.field(name).type)
               for name in [*dict.fromkeys(SCALARS), *OUTCOMES]}
    table = pa.table(columns)
    lengths = [pc.list_value_length(table.column(name)) for name in OUTCOMES]
    keep = pc.and_(pc.is_in(table.column("attack"), pa.array(ATTACKS.names())),
                   pc.fill_null(pc.greater(table.column("eps"), 0.0), False))
    keep = pc.and_(keep, pc.fill_null(pc.equal(table.column("target"), "model"), True))
    keep = pc.and_(keep, pc.fill_null(pc.and_(pc.equal(lengths[0], lengths[1]),
                                              pc.equal(lengths[0], lengths[2])), False))
    return table.filter(keep).combine_chunks()


def _points_by_config(rows: pa.Table) -> dict[tuple, list[Point]]:
    table = _usable(rows)
    if not table.num_rows:
        return {}
    samples = _flat_samples(table)
    scalars = {name: table.column(name).to_pylist() for name in SCALARS}
    point_of = [*CONFIG_COLUMNS, *keys.POINT_COLUMNS]
    row_groups: dict[tuple, list[int]] = defaultdict(list)
    for index, key in enumerate(zip(*(scalars[name] for name in point_of))):
        row_groups[key].append(index)
    by_config: dict[tuple, list[Point]] = defaultdict(list)
    for key, indices in row_groups.items():
        point = _pool(key[:len(CONFIG_COLUMNS)], key[len(CONFIG_COLUMNS):], indices, scalars, samples)
        if len(point.keys):
            by_config[point.config].append(point)
    for points in by_config.values():
        name_points(points)
    return by_config


def _flat_samples(table: pa.Table) -> dict[str, np.ndarray]:
    """The outcome lists flattened to numpy once (no per-row Python lists), with each
    row's slice given by ``offsets`` and each sample's (fold, sample_index) key."""
    flat = {name: pc.list_flatten(table.column(name)) for name in OUTCOMES}
    valid = np.ones(len(flat["sample_index"]), dtype=bool)
    for values in flat.values():  # a null inside a list is an unknown outcome: left out
        valid &= pc.is_valid(values).to_numpy(zero_copy_only=False)
    lengths = pc.list_value_length(table.column("sample_index")).to_numpy(zero_copy_only=False)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    folds = pc.fill_null(table.column("fold"), -1).to_numpy().astype(np.int64)
    index = pc.fill_null(flat["sample_index"], -1).to_numpy().astype(np.int64)
    keys = (np.repeat(folds, lengths) << FOLD_SHIFT) + index
    return {"offsets": offsets, "valid": valid, "keys": keys,
            **{name: pc.fill_null(flat[name], False).to_numpy(zero_copy_only=False).astype(bool)
               for name in ("clean_correct", "adv_correct")}}


def _pool(config: tuple, point: tuple, rows: list[int], scalars: dict, samples: dict) -> Point:
    """One point from its rows (its folds): samples concatenated, sorted by key, each
    (fold, sample_index) once (a cell stored twice would otherwise count double)."""
    parts = np.concatenate([np.arange(samples["offsets"][r], samples["offsets"][r + 1]) for r in rows])
    parts = parts[samples["valid"][parts]]
    keys, first = np.unique(samples["keys"][parts], return_index=True)
    chosen = parts[first]
    first_row = rows[0]
    ranges = [hi - lo for lo, hi in ((scalars["clip_min"][r], scalars["clip_max"][r]) for r in rows)
              if lo is not None and hi is not None]
    # The widest range of its folds: a budget counts as large only if it is large on every fold.
    return Point(config, *point, n_classes=scalars["n_classes"][first_row],
                 n_features=scalars["n_features"][first_row],
                 input_range=max(ranges) if len(ranges) == len(rows) else None,
                 keys=keys, clean=samples["clean_correct"][chosen], adv=samples["adv_correct"][chosen],
                 **_targets(point[0], rows, scalars))


def _targets(attack: str, rows: list[int], scalars: dict) -> dict[str, int]:
    """P's counts: per fold, its earliest row with a defined target rate; summed."""
    if ATTACKS.get(attack).controls is None:
        return {}
    per_fold: dict = {}
    for r in rows:  # in table order: the first of a fold is its earliest
        n, rate, control = (scalars[c][r] for c in ("target_n", "target_rate", "control_target_rate"))
        if n is not None and n > 0 and rate is not None and control is not None and rate == rate \
                and control == control:
            per_fold.setdefault(scalars["fold"][r], (n, round(rate * n), round(control * n)))
    return {"target_n": sum(v[0] for v in per_fold.values()), "target_hits": sum(v[1] for v in per_fold.values()),
            "control_hits": sum(v[2] for v in per_fold.values())}


# ---------------------------------------------------------------- checks

def _checks(points: list[Point]) -> list[dict]:
    # Each check is its own family: its p-values are Holm-adjusted together.
    families = [_single_step(points), _black_box(points), _rising(points), _above_clean(points),
                _large_eps(points)]
    return [flag for family in families for flag in _decide(family)] + _patches(points)


def _decide(family: list[dict]) -> list[dict]:
    if not family:
        return []
    adjusted = holm([flag["p_value"] for flag in family])
    out = []
    for flag, p_adjusted in zip(family, adjusted):
        effect, minimum = flag.pop("effect"), flag.pop("minimum")
        fired = bool(p_adjusted < ALPHA and effect >= minimum - 1e-12)
        out.append({**flag, "p_adjusted": float(p_adjusted), "fired": fired,
                    "detail": f"{flag['detail']} (p = {flag['p_value']:.2g}, Holm {p_adjusted:.2g})"})
    return out


def _patches(points: list[Point]) -> list[dict]:
    """P: fires unless the patch is shown to beat its controls; judged alone, no Holm."""
    flags = []
    for point in (p for p in points if p.target_n > 0):
        n = point.target_n
        value, reference = point.target_hits / n, point.control_hits / n
        p_value = binomial_p(point.target_hits, n, reference)
        shown = p_value < ALPHA and value - reference >= MIN_MARGIN - 1e-12
        flag = _flag("patch_not_above_control", point, value, reference, "control", p_value, n, 0.0,
                     PATCH_SENTENCE.format(point=point.name, value=value, n=n, ref=reference, p=p_value))
        del flag["effect"], flag["minimum"]
        flags.append({**flag, "p_adjusted": p_value, "fired": not shown})
    return flags


def _flag(check: str, point: Point, value: float, reference: float, reference_label: str, p_value: float,
          n: int, effect: float, detail: str, minimum: float = MIN_MARGIN) -> dict:
    return {"flag": check, "attack_label": point.attack_label, "norm": point.norm, "eps": point.eps,
            "eps_label": point.eps_label, "attack_params": point.attack_params, "n_samples": point.n_samples,
            "value": value, "reference": reference, "reference_label": reference_label, "p_value": p_value,
            "n_pairs": n, "effect": effect, "minimum": minimum, "detail": detail}


def _compare(check: str, reference: Point, point: Point, detail: str) -> dict | None:
    """Paired: does ``point`` leave more accuracy than ``reference`` on their shared samples?"""
    pair = aligned(reference, point)
    if pair is None:
        return None
    value, ref = float(pair.second.mean()), float(pair.first.mean())
    return _flag(check, point, value, ref, reference.name, pair.p_value, pair.n, pair.effect,
                 f"{detail.format(point=point.name, reference=reference.name, value=value, ref=ref)} "
                 f"on {pair.n} shared samples")


def _white(point: Point) -> bool:
    return not point.black_box  # a transfer attack is black-box from the target's view


def _single_step(points: list[Point]) -> list[dict]:
    flags = []
    for one in (p for p in points if p.spec.single_step and _white(p) and not p.unbounded):
        for many in points:
            if not (_white(many) and not many.spec.single_step and many.norm == one.norm and many.eps >= one.eps):
                continue
            flags.append(_compare("single_step_beats_iterative", one, many, TEXTS["single_step_beats_iterative"]))
    return [f for f in flags if f]


def _black_box(points: list[Point]) -> list[dict]:
    flags = []
    for black in (p for p in points if p.black_box):
        white = [p for p in points if _white(p) and p.norm == black.norm and p.eps == black.eps]
        pairs = [(aligned(black, p), p) for p in white]
        pairs = [(pair, p) for pair, p in pairs if pair is not None]
        if not pairs:
            continue
        # The best white-box attack on these samples: the one leaving the least accuracy.
        _, best = min(pairs, key=lambda pair_point: pair_point[0].second.mean())
        flags.append(_compare("black_box_beats_white_box", black, best, TEXTS["black_box_beats_white_box"]))
    return flags


def _rising(points: list[Point]) -> list[dict]:
    # A curve: one attack with one set of parameters, at several budgets.
    curves: dict[tuple, list[Point]] = defaultdict(list)
    for point in points:
        curves[point.attack, point.attack_label, point.norm, point.attack_params].append(point)
    flags = []
    for curve in curves.values():
        for high in curve:
            for low in (p for p in curve if p.eps < high.eps):
                flags.append(_compare("accuracy_rises_with_eps", low, high, TEXTS["accuracy_rises_with_eps"]))
    return [f for f in flags if f]


def _above_clean(points: list[Point]) -> list[dict]:
    flags = []
    for point in points:
        pair = Paired(point.clean, point.adv)
        clean, adv = float(point.clean.mean()), float(point.adv.mean())
        flags.append(_flag("adversarial_above_clean", point, adv, clean, "clean", pair.p_value, pair.n,
                           pair.effect, f"{point.name} leaves {adv:.3f} accuracy, clean {clean:.3f}, "
                                        f"on {pair.n} samples"))
    return flags


def _large_eps(points: list[Point]) -> list[dict]:
    flags = []
    for point in (p for p in points if p.judged_large):
        chance = 1 / point.n_classes
        null = min(1.0, chance + FAR_ABOVE_CHANCE)
        correct, n = int(np.count_nonzero(point.adv)), len(point.adv)
        accuracy = correct / n
        budget = "" if point.unbounded else f" (radius {point.radius:.2f} of the input range)"
        flags.append(_flag("large_eps_above_chance", point, accuracy, chance, "chance",
                           binomial_p(correct, n, null), n, accuracy - chance,
                           f"{point.name}{budget} leaves {accuracy:.3f} accuracy on {n} samples; "
                           f"chance is {chance:.3f}, tested against {null:.3f}",
                           minimum=FAR_ABOVE_CHANCE))
    return flags

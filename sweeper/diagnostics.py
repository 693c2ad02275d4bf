"""Gradient-masking diagnostics: warning signs that a model only looks robust.

Quantized networks often resist gradient attacks because their gradients are useless
(step functions, saturated activations), not because they are robust (Athalye, Carlini
and Wagner, 2018; Carlini et al., "On Evaluating Adversarial Robustness", 2019). For each
trained configuration (``store.CONFIG_COLUMNS``: every fold of one trained setup), five
checks compare numbers the grid already has:

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
  same samples.
- ``large_eps_above_chance``: at a large budget (an L-inf-equivalent radius of at least
  ``LARGE_EPS`` of the row's own input range ``clip_max - clip_min`` per input value, or an
  unbounded minimal-perturbation attack) accuracy stays more than ``FAR_ABOVE_CHANCE``
  above chance. Every input can be changed at such a budget; a correct, strong enough
  attack should get near chance or below. Transfer attacks are not judged here: they do
  not adapt to the target, so failing at a large budget says nothing about its gradients.

A *point* is one configuration at one ``store.POINT_COLUMNS`` value (attack, label, norm,
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
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sweeper import store
from sweeper.attacks import ATTACKS

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
}

# One trained configuration: the folds of it are pooled together. Kept under this name
# for importers (the report); the store owns the definition.
CONFIG_COLUMNS = store.CONFIG_COLUMNS

SCHEMA = pa.schema([
    *[store.SCHEMA.field(name) for name in CONFIG_COLUMNS],
    pa.field("flag", pa.string()),  # which check (a column named "check" would need quoting in SQL)
    pa.field("attack_label", pa.string()),  # the attack whose number the flag qualifies
    pa.field("norm", pa.string()),
    pa.field("eps", pa.float64()),  # +inf: unbounded
    pa.field("eps_label", pa.string()),
    # With the columns above these tell apart points that differ only in parameters or size.
    pa.field("attack_params", pa.string()),
    pa.field("n_samples", pa.int32()),
    pa.field("value", pa.float64()),  # that attack's accuracy on the n_pairs samples compared
    pa.field("reference", pa.float64()),  # what it is compared with, on the same samples
    pa.field("reference_label", pa.string()),  # where the reference comes from
    pa.field("p_value", pa.float64()),  # exact one-sided test, before adjustment
    pa.field("p_adjusted", pa.float64()),  # Holm-adjusted within the configuration and check
    pa.field("n_pairs", pa.int64()),  # samples compared (aligned pairs; for L, samples tested)
    pa.field("fired", pa.bool_()),
    pa.field("detail", pa.string()),  # one sentence, for people
])

# fold and sample_index packed into one sortable int64 key: sample_index < 2**40.
_FOLD_SHIFT = 40
_SCALARS = [*CONFIG_COLUMNS, *store.POINT_COLUMNS, "fold", "n_classes", "n_features", "clip_min", "clip_max"]
_OUTCOMES = ["sample_index", "clean_correct", "adv_correct"]


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
    n_classes: int | None
    n_features: int | None
    input_range: float | None  # the widest clip_max - clip_min of its rows; None if unknown
    keys: np.ndarray  # sorted, unique (fold, sample_index) keys
    clean: np.ndarray  # clean_correct, aligned with keys
    adv: np.ndarray  # adv_correct, aligned with keys
    name: str = field(default="")  # label@eps, plus what tells it apart from a namesake

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


# ---------------------------------------------------------------- statistics

def binomial_p(successes: int, trials: int, p0: float) -> float:
    """Exact one-sided P(X >= successes) for X ~ Binomial(trials, p0)."""
    if trials <= 0 or successes <= 0:
        return 1.0
    # bdtrc(k, n, p) = P(X > k): the same number as scipy.stats.binomtest(..., "greater"),
    # without its per-call overhead (a store can hold thousands of comparisons).
    from scipy.special import bdtrc  # imported here: the CLI should not pay for scipy at start

    return float(min(1.0, bdtrc(successes - 1, trials, p0)))


def mcnemar_p(b: int, c: int) -> float:
    """Exact one-sided McNemar: evidence that the second of two paired classifiers is right
    more often. b = #(first right, second wrong), c = #(first wrong, second right); under
    the null each of the b + c discordant pairs goes either way with probability 1/2."""
    return binomial_p(c, b + c, 0.5)


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values: rejecting where adjusted < alpha keeps the
    family-wise error rate at most alpha under any dependence between the tests."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)  # monotone: a smaller p never adjusts higher
    return adjusted


# ---------------------------------------------------------------- points

def _name(points: list[Point]) -> None:
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


_TEXTS = {  # the sentence of a paired comparison
    "single_step_beats_iterative": "iterative {point} leaves {value:.3f} accuracy, "
                                   "single-step {reference} with no more budget {ref:.3f},",
    "black_box_beats_white_box": "black-box {reference} leaves {ref:.3f} accuracy, "
                                 "the best white-box {point} {value:.3f},",
    "accuracy_rises_with_eps": "{point} leaves {value:.3f} accuracy, the smaller budget {reference} {ref:.3f},",
}


# ---------------------------------------------------------------- in DuckDB
#
# The same checks at the size of the paper grid: DuckDB unnests the outcome lists, pools
# each point's samples and counts the paired outcomes of every comparison, so no sample
# reaches Python; Python gets one row per point and one per comparison, and computes the
# exact p-values, Holm's adjustment and the sentences. ``diagnose_reference``
# (tests/diagnostics_reference.py) is the definition, point by point in Python:
# tests/test_diagnostics.py checks that both give the same table.

_POINT_KEY = [*CONFIG_COLUMNS, *store.POINT_COLUMNS]
_KEY_FOLD = 1 << _FOLD_SHIFT  # (fold, sample_index) -> fold * 2**40 + sample_index, as _flat_samples


def diagnose(rows: pa.Table) -> pa.Table:
    """Every judged check of every configuration in ``rows`` (the store's schema; columns
    it lacks read as null): the same table as ``diagnose_reference``, computed in DuckDB."""
    from sweeper import query

    columns = {name: rows.column(name) if name in rows.column_names
               else pa.nulls(rows.num_rows, store.SCHEMA.field(name).type)
               for name in [*dict.fromkeys(_SCALARS), *_OUTCOMES]}
    columns["_order"] = pa.array(np.arange(rows.num_rows, dtype=np.int64))
    connection = query.new_connection()
    try:
        connection.register("_diagnosed_rows", pa.table(columns))
        return diagnose_relation(connection, "_diagnosed_rows")
    finally:
        connection.close()


def diagnose_store(location: store.Location, memory_limit: str = "1GB") -> pa.Table:
    """The diagnostics of the rows now in the store, DuckDB scanning its fragments."""
    from sweeper import query

    connection = query.new_connection(memory_limit)
    try:
        connection.execute(f"CREATE VIEW _store AS {query.ordered_rows_sql(connection, store.survey(location))}")
        return diagnose_relation(connection, "_store")
    finally:
        connection.close()


def diagnose_relation(connection, relation: str) -> pa.Table:
    """The diagnostics of ``relation`` in ``connection``: the store's columns plus a unique
    ``_order`` giving the rows' order (which copy of a sample counts, and the order of the
    points and of the output, as in ``diagnose_reference``). Leaves no table behind."""
    try:
        points = _sql_points(connection, relation)
        if not points:
            return SCHEMA.empty_table()
        comparisons = _sql_comparisons(connection, points)
        return _assemble(points, comparisons)
    finally:
        for name in ("_dg_points", "_dg_samples", "_dg_info", "_dg_pairs"):
            connection.execute(f"DROP TABLE IF EXISTS {name}")


def _quoted(values) -> str:
    return ", ".join("'" + str(v).replace("'", "''") + "'" for v in values)


def _sql_points(connection, relation: str) -> list[Point]:
    """Pool each point's samples in DuckDB and return the points that have samples, in
    the order of their first row, as ``Point``s without samples. A point of a *uniform*
    configuration keeps its outcomes as two bit strings (``_dg_points``); the others' samples
    are unnested into ``_dg_samples`` (point, key, clean, adv; a (fold, sample_index) taken
    once, from the earliest row)."""
    usable = (f"attack IN ({_quoted(ATTACKS.names())}) AND eps > 0 AND NOT isnan(eps) "
              "AND len(sample_index) = len(clean_correct) AND len(sample_index) = len(adv_correct)")
    _create_points(connection, relation, usable)
    _mark_uniform(connection, relation, usable)
    _create_samples(connection, relation)
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_info AS
        SELECT pid, length(adv_bits)::BIGINT AS n, bit_count(clean_bits)::BIGINT AS clean_right,
               bit_count(adv_bits)::BIGINT AS adv_right, {_DISAGREE.format('clean_bits', 'adv_bits')} AS b,
               {_DISAGREE.format('adv_bits', 'clean_bits')} AS c
        FROM _dg_points WHERE uniform
        UNION ALL
        SELECT pid, count(*) AS n, sum(clean::INTEGER)::BIGINT AS clean_right, sum(adv::INTEGER)::BIGINT AS adv_right,
               sum((clean AND NOT adv)::INTEGER)::BIGINT AS b, sum((adv AND NOT clean)::INTEGER)::BIGINT AS c
        FROM _dg_samples GROUP BY pid""")
    relation_ = connection.sql(f"""
        SELECT p.pid, {', '.join('p."' + c + '"' for c in _POINT_KEY)}, p.n_classes, p.n_features,
               p.input_range, i.n, i.clean_right, i.adv_right, i.b, i.c
        FROM _dg_points AS p JOIN _dg_info AS i USING (pid) ORDER BY p.pid""")
    return _point_records((getattr(relation_, "to_arrow_table", None) or relation_.arrow)())


# A row's outcome list as a string of 0s and 1s, and the samples right in the first bit
# string and wrong in the second.
_BITS = "array_to_string(list_transform({0}, lambda x: CASE WHEN x THEN '1' ELSE '0' END), '')"
_DISAGREE = "bit_count({0} & ~{1})::BIGINT"
# A row's sample indices are regular when distinct and in [0, 2**40): with distinct folds,
# every (fold, sample_index) key of the point once, no deduplication needed.
_REGULAR = ("(len(list_distinct({0})) = len({0}) "
            f"AND coalesce(list_min({{0}}) >= 0 AND list_max({{0}}) < {_KEY_FOLD}, true))")


def _create_points(connection, relation: str, usable: str) -> None:
    """_dg_points: one row per point with its scalars, its rows (``members``), whether its
    folds are distinct, whether it is complete (no unknown outcome, no empty row), its folds
    and its outcomes concatenated in fold order as bit strings."""
    complete = ("len(sample_index) > 0 AND list_count(clean_correct) = len(sample_index) "
                "AND list_count(adv_correct) = len(sample_index)")
    keys = ", ".join(f'"{c}"' for c in _POINT_KEY)
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_points AS
        SELECT row_number() OVER (ORDER BY first_order) - 1 AS pid, * EXCLUDE (rows),
               len(list_distinct(folds)) = len(folds) AS distinct_folds,
               nullif(array_to_string(list_transform(rows, lambda r: r.clean), ''), '')::BIT AS clean_bits,
               nullif(array_to_string(list_transform(rows, lambda r: r.adv), ''), '')::BIT AS adv_bits
        FROM (SELECT *, list_transform(rows, lambda r: r.fold) AS folds FROM (
            SELECT {keys}, min(_order) AS first_order,
                   arg_min_null(n_classes, _order) AS n_classes, arg_min_null(n_features, _order) AS n_features,
                   CASE WHEN count(*) = count(clip_max - clip_min) THEN max(clip_max - clip_min) END AS input_range,
                   bool_and({complete}) AS complete,
                   list_sort(list({{'fold': coalesce(fold, -1), 'clean': {_BITS.format('clean_correct')},
                                   'adv': {_BITS.format('adv_correct')}}})) AS rows,
                   list(_order) AS members
            FROM {relation} WHERE {usable} GROUP BY {keys}))""")


def _mark_uniform(connection, relation: str, usable: str) -> None:
    """Add ``uniform`` to _dg_points: true for every point of a configuration whose points
    are all complete and hold the same distinct folds, and whose rows of one fold all hold
    the same regular sample indices in the same order. Any two of its points then have the same
    samples at the same places of their bit strings, so a paired count is a ``bit_count``."""
    config = ", ".join(f'"{c}"' for c in CONFIG_COLUMNS)
    same = " AND ".join(f'p."{c}" IS NOT DISTINCT FROM u."{c}"' for c in CONFIG_COLUMNS)
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_points AS
        WITH u AS (
            SELECT {config}, bool_and(ok) AS uniform FROM (
                SELECT {config}, lo = hi AND {_REGULAR.format('lo')} AS ok FROM (
                    SELECT {config}, min(sample_index) AS lo, max(sample_index) AS hi
                    FROM {relation} WHERE {usable} GROUP BY {config}, coalesce(fold, -1))
                UNION ALL
                SELECT {config}, bool_and(distinct_folds AND complete) AND min(folds) = max(folds)
                FROM _dg_points GROUP BY {config})
            GROUP BY {config})
        SELECT p.*, u.uniform FROM _dg_points AS p JOIN u ON {same}""")


def _create_samples(connection, relation: str) -> None:
    """_dg_samples: the pooled samples of the points that are not uniform."""
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_samples AS
        WITH pooled AS (
            SELECT pid, regular, _order, coalesce(fold, -1)::BIGINT * {_KEY_FOLD} + idx AS key, clean, adv, pos
            FROM (SELECT pid, regular, _order, fold, unnest(sample_index) AS idx, unnest(clean_correct) AS clean,
                         unnest(adv_correct) AS adv, unnest(range(len(sample_index))) AS pos
                  FROM (SELECT *, distinct_folds AND bool_and({_REGULAR.format('sample_index')})
                                      OVER (PARTITION BY pid) AS regular
                        FROM (SELECT pid, distinct_folds, unnest(members) AS _order FROM _dg_points
                              WHERE NOT uniform) AS m
                        JOIN (SELECT _order, fold, sample_index, clean_correct, adv_correct FROM {relation}) AS r
                        USING (_order)))
            WHERE idx IS NOT NULL AND clean IS NOT NULL AND adv IS NOT NULL)
        SELECT pid, key, clean, adv FROM pooled WHERE regular
        UNION ALL
        SELECT pid, key, clean, adv FROM (
            SELECT * FROM pooled WHERE NOT regular
            QUALIFY row_number() OVER (PARTITION BY pid, key ORDER BY _order, pos) = 1)""")


@dataclass(eq=False)
class _Counted(Point):
    """A point as DuckDB pooled it: its counts instead of its samples."""

    pid: int = 0
    n: int = 0  # samples
    clean_right: int = 0
    adv_right: int = 0
    b: int = 0  # clean right, adversarial wrong
    c: int = 0  # clean wrong, adversarial right


def _point_records(table: pa.Table) -> list[_Counted]:
    """The points in order, each named as ``_name`` names them within its configuration."""
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    points, by_config = [], defaultdict(list)
    for i in range(table.num_rows):
        config = tuple(columns[c][i] for c in CONFIG_COLUMNS)
        point = _Counted(config, *(columns[c][i] for c in store.POINT_COLUMNS), n_classes=columns["n_classes"][i],
                         n_features=columns["n_features"][i], input_range=columns["input_range"][i], keys=None,
                         clean=None, adv=None, pid=columns["pid"][i],
                         **{k: columns[k][i] for k in ("n", "clean_right", "adv_right", "b", "c")})
        points.append(point)
        by_config[config].append(point)
    for same in by_config.values():
        _name(same)
    return points


_FAMILIES = ["single_step_beats_iterative", "black_box_beats_white_box", "accuracy_rises_with_eps"]


def _sql_comparisons(connection, points: list[_Counted]) -> dict[str, np.ndarray]:
    """The paired comparisons of S, B and E, counted on their shared samples: columns
    family (0 S, 1 B, 2 E), cfg, first and second pid, n, first_right, second_right, b, c,
    in ``diagnose_reference``'s order."""
    configs: dict[tuple, int] = {}
    positions: dict[int, int] = defaultdict(int)
    curves: dict[tuple, int] = {}  # E: a curve's place is that of its first point
    placed = {name: [] for name in ("cfg", "pos", "curve")}
    for point in points:
        cfg = configs.setdefault(point.config, len(configs))
        placed["curve"].append(curves.setdefault((cfg, point.attack, point.attack_label, point.norm,
                                                  point.attack_params), positions[cfg]))
        placed["cfg"].append(cfg)
        placed["pos"].append(positions[cfg])
        positions[cfg] += 1
    specs = {name: ATTACKS.get(name) for name in {point.attack for point in points}}
    flags = {"pid": [p.pid for p in points], **placed,
             **{name: [getattr(p, name) for p in points] for name in ("attack", "attack_label", "norm", "eps",
                                                                       "attack_params")},
             "single_step": [specs[p.attack].single_step for p in points],
             "black_box": [p.black_box for p in points],
             "unbounded": [math.isinf(p.eps) for p in points]}
    connection.register("_dg_flags", pa.table(flags))
    same = lambda *cs: " AND ".join(f"x.{c} IS NOT DISTINCT FROM y.{c}" for c in cs)  # noqa: E731
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_pairs AS
        SELECT 0 AS family, x.cfg, x.pos AS k1, y.pos AS k2, 0 AS k3, x.pid AS first, y.pid AS second
        FROM _dg_flags x JOIN _dg_flags y ON x.cfg = y.cfg
        WHERE x.single_step AND NOT x.black_box AND NOT x.unbounded AND NOT y.black_box AND NOT y.single_step
              AND {same('norm')} AND y.eps >= x.eps
        UNION ALL
        SELECT 1, x.cfg, x.pos, y.pos, 0, x.pid, y.pid
        FROM _dg_flags x JOIN _dg_flags y ON x.cfg = y.cfg
        WHERE x.black_box AND NOT y.black_box AND {same('norm')} AND y.eps = x.eps
        UNION ALL
        SELECT 2, y.cfg, y.curve, y.pos, x.pos, x.pid, y.pid
        FROM _dg_flags x JOIN _dg_flags y ON x.cfg = y.cfg AND {same('attack', 'attack_label', 'norm', 'attack_params')}
        WHERE x.eps < y.eps""")
    relation = connection.sql(f"""
        SELECT p.family, p.cfg, p.k1, p.k2, p.k3, p.first, p.second, length(a.adv_bits)::BIGINT AS n,
               bit_count(a.adv_bits)::BIGINT AS first_right, bit_count(b.adv_bits)::BIGINT AS second_right,
               {_DISAGREE.format('a.adv_bits', 'b.adv_bits')} AS b, {_DISAGREE.format('b.adv_bits', 'a.adv_bits')} AS c
        FROM _dg_pairs AS p JOIN _dg_points AS a ON a.pid = p.first AND a.uniform
        JOIN _dg_points AS b ON b.pid = p.second
        UNION ALL
        SELECT p.family, p.cfg, p.k1, p.k2, p.k3, p.first, p.second, count(*) AS n,
               sum(a.adv::INTEGER)::BIGINT AS first_right, sum(b.adv::INTEGER)::BIGINT AS second_right,
               sum((a.adv AND NOT b.adv)::INTEGER)::BIGINT AS b, sum((b.adv AND NOT a.adv)::INTEGER)::BIGINT AS c
        FROM _dg_pairs AS p JOIN _dg_samples AS a ON a.pid = p.first
        JOIN _dg_samples AS b ON b.pid = p.second AND b.key = a.key
        GROUP BY ALL ORDER BY cfg, family, k1, k2, k3""")
    counted = {name: np.asarray(values) for name, values in relation.fetchnumpy().items()}
    connection.unregister("_dg_flags")
    return _keep_best_white(counted)


def _keep_best_white(counted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """B compares each black-box point with one white-box point: the one leaving the least
    accuracy on their shared samples (the first such, in point order); the others go."""
    keep = counted["family"] != 1
    best: dict[int, int] = {}
    for row in np.flatnonzero(~keep):
        first, accuracy = counted["first"][row], counted["second_right"][row] / counted["n"][row]
        if first not in best or accuracy < counted["second_right"][best[first]] / counted["n"][best[first]]:
            best[first] = row
    keep[list(best.values())] = True
    return {name: values[keep] for name, values in counted.items()}


def _assemble(points: list[_Counted], counted: dict[str, np.ndarray]) -> pa.Table:
    """The flags as the reference's ``_checks`` and ``_decide`` make them, computed
    column-wise: ordered by configuration, check and place in the check's loops; Holm within configuration and check."""
    index = {point.pid: i for i, point in enumerate(points)}
    configs: dict[tuple, int] = {}
    cfg_of = np.array([configs.setdefault(point.config, len(configs)) for point in points], dtype=np.int64)
    position = np.arange(len(points))
    n = np.array([point.n for point in points], dtype=np.int64)
    adv = np.array([point.adv_right for point in points], dtype=np.int64)
    clean = np.array([point.clean_right for point in points], dtype=np.int64)
    large = np.array([point.judged_large for point in points])
    classes = np.array([point.n_classes if large[i] else 1 for i, point in enumerate(points)], dtype=np.int64)
    first = np.array([index[pid] for pid in counted["first"].tolist()], dtype=np.int64)
    second = np.array([index[pid] for pid in counted["second"].tolist()], dtype=np.int64)
    chance = 1 / classes[large]
    null = np.minimum(1.0, chance + FAR_ABOVE_CHANCE)
    columns = {  # S, B, E (paired), then C (per point), then L (large points)
        "family": np.concatenate([counted["family"], np.full(len(points), 3), np.full(int(large.sum()), 4)]),
        "cfg": np.concatenate([counted["cfg"], cfg_of, cfg_of[large]]),
        "point": np.concatenate([second, position, position[large]]),
        "reference_point": np.concatenate([first, np.full(len(points) + int(large.sum()), -1)]),
        "n": np.concatenate([counted["n"], n, n[large]]),
        "value": np.concatenate([counted["second_right"] / counted["n"], adv / n, adv[large] / n[large]]),
        "reference": np.concatenate([counted["first_right"] / counted["n"], clean / n, chance]),
        "p_value": np.concatenate([_mcnemar_p(counted["b"], counted["c"]), _mcnemar_p(
            np.array([p.b for p in points], np.int64), np.array([p.c for p in points], np.int64)),
            _binomial_p(adv[large], n[large], null)]),
        "null": np.concatenate([np.full(len(counted["n"]) + len(points), np.nan), null]),
    }
    order = np.lexsort((np.arange(len(columns["cfg"])), columns["family"], columns["cfg"]))  # stable
    columns = {name: values[order] for name, values in columns.items()}
    columns["p_adjusted"] = _holm_grouped(columns["p_value"], columns["cfg"] * 5 + columns["family"])
    minimum = np.where(columns["family"] == 4, FAR_ABOVE_CHANCE, MIN_MARGIN)
    effect = columns["value"] - columns["reference"]
    columns["fired"] = (columns["p_adjusted"] < ALPHA) & (effect >= minimum - 1e-12)
    return _flag_table(points, list(configs), columns)


def _mcnemar_p(b: np.ndarray, c: np.ndarray) -> np.ndarray:
    return _binomial_p(c, b + c, np.full(len(b), 0.5))


def _binomial_p(successes: np.ndarray, trials: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """``binomial_p`` element-wise (the same scipy function on the same types)."""
    from scipy.special import bdtrc

    out = np.ones(len(successes))
    judged = (trials > 0) & (successes > 0)
    if judged.any():
        out[judged] = np.minimum(1.0, bdtrc(successes[judged] - 1, trials[judged], p0[judged]))
    return out


def _holm_grouped(p: np.ndarray, group: np.ndarray) -> np.ndarray:
    """``holm`` within each group (groups contiguous and ascending, members in order). The
    running maximum restarts per group by ranking the scaled values as integer codes and
    offsetting each group past the last: exact, no arithmetic on the p-values."""
    if not len(p):
        return np.empty(0)
    order = np.lexsort((np.arange(len(p)), p, group))  # stable argsort of p within each group
    starts = np.flatnonzero(np.r_[True, group[order][1:] != group[order][:-1]])
    sizes = np.diff(np.r_[starts, len(p)])
    rank = np.arange(len(p)) - np.repeat(starts, sizes)
    scaled = np.minimum(1.0, (np.repeat(sizes, sizes) - rank) * p[order])
    values, codes = np.unique(scaled, return_inverse=True)
    segment = np.repeat(np.arange(len(starts)), sizes) * len(values)
    adjusted = np.empty(len(p))
    adjusted[order] = values[np.maximum.accumulate(codes + segment) - segment]
    return adjusted


_REFERENCE_LABEL = {3: "clean", 4: "chance"}


def _flag_table(points: list[_Counted], configs: list[tuple], columns: dict[str, np.ndarray]) -> pa.Table:
    """The output table: configuration columns, the qualified point's columns, numbers, sentences."""
    at = pa.array(columns["point"])
    names = pa.array([point.name for point in points], pa.string())
    labels = pa.array([_REFERENCE_LABEL.get(f, "") for f in range(5)]).take(pa.array(columns["family"]))
    own = columns["reference_point"] >= 0
    references = pc.if_else(pa.array(own), names.take(pa.array(np.where(own, columns["reference_point"], 0))),
                            labels)
    cfg = pa.array(columns["cfg"])
    data = {name: pa.array([config[k] for config in configs], SCHEMA.field(name).type).take(cfg)
            for k, name in enumerate(CONFIG_COLUMNS)}
    data["flag"] = pa.array(list(CHECKS)).take(pa.array(columns["family"]))
    for name in ("attack_label", "norm", "eps", "eps_label", "attack_params", "n_samples"):
        data[name] = pa.array([getattr(point, name) for point in points], SCHEMA.field(name).type).take(at)
    data.update(value=columns["value"], reference=columns["reference"], reference_label=references,
                p_value=columns["p_value"], p_adjusted=columns["p_adjusted"], n_pairs=columns["n"],
                fired=columns["fired"], detail=_details(points, references, columns))
    return pa.Table.from_arrays([data[f.name].cast(f.type) if isinstance(data[f.name], (pa.Array, pa.ChunkedArray))
                                 else pa.array(data[f.name], f.type) for f in SCHEMA], schema=SCHEMA)


_DETAIL_BATCH = 50_000  # sentences written at a time: Python strings for a batch only, then Arrow


def _details(points: list[_Counted], references: pa.Array, columns: dict[str, np.ndarray]) -> pa.ChunkedArray:
    """The sentences, one per flag, in batches (a store's 300,000 flags as Python strings
    and floats at once would cost hundreds of MB)."""
    names = ("point", "family", "value", "reference", "n", "null", "p_value", "p_adjusted")
    chunks = []
    for start in range(0, len(columns["point"]), _DETAIL_BATCH):
        part = [columns[name][start:start + _DETAIL_BATCH].tolist() for name in names]
        refs = references.slice(start, _DETAIL_BATCH).to_pylist()
        chunks.append(pa.array([_detail(points[i], ref, f, v, r, n, null, p, q) for ref, i, f, v, r, n, null, p, q
                                in zip(refs, *part)], pa.string()))
    return pa.chunked_array(chunks, pa.string())


def _detail(point: _Counted, reference: str, family: int, value: float, ref: float, n: int, null: float,
            p: float, p_adjusted: float) -> str:
    """The sentence ``diagnose_reference`` writes for this flag."""
    if family < 3:
        text = _TEXTS[_FAMILIES[family]].format(point=point.name, reference=reference, value=value, ref=ref)
        text = f"{text} on {n} shared samples"
    elif family == 3:
        text = f"{point.name} leaves {value:.3f} accuracy, clean {ref:.3f}, on {n} samples"
    else:
        budget = "" if point.unbounded else f" (radius {point.radius:.2f} of the input range)"
        text = (f"{point.name}{budget} leaves {value:.3f} accuracy on {n} samples; "
                f"chance is {ref:.3f}, tested against {null:.3f}")
    return f"{text} (p = {p:.2g}, Holm {p_adjusted:.2g})"

# ---------------------------------------------------------------- in the store

def write(location: store.Location, rows: pa.Table | None = None) -> pa.Table:
    """(Re)write RESULTS/diagnostics.parquet from the rows now in the store (``rows``, when
    the caller has just read them all)."""
    flags = diagnose_store(location) if rows is None else diagnose(rows)
    store.write_file(location, store.DIAGNOSTICS_FILE, flags)
    return flags


def summary(flags: Iterable[dict]) -> list[dict]:
    """Per configuration and check: how many comparisons were judged and how many fired."""
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for flag in flags:
        key = (*[flag.get(c) for c in CONFIG_COLUMNS], flag["flag"])
        counts[key][0] += 1
        counts[key][1] += int(flag["fired"])
    return [{**dict(zip([*CONFIG_COLUMNS, "flag"], key)), "judged": judged, "fired": fired}
            for key, (judged, fired) in counts.items()]

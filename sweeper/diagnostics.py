"""Gradient-masking diagnostics: warning signs that a model only looks robust.

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
  too (``trial.robust``), so this fires only on rows of stores written before that rule.
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
"""

from __future__ import annotations

import json
import math
import string
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sweeper import store
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
_PATCH = len(CHECKS) - 1  # its family: judged per point, never Holm-adjusted (module doc)


# The flags repeat few strings (a configuration's columns, the check, the attack) across
# many rows: those are dictionary-encoded, which keeps the flags of a 1 M-row store about
# 20 MB smaller in memory. Parquet stores them so anyway; DuckDB reads them as VARCHAR,
# and ``plain`` gives them as strings (to compare with a table of plain strings).
_REPEATED = pa.dictionary(pa.int32(), pa.string())


def _repeated(field: pa.Field) -> pa.Field:
    return field.with_type(_REPEATED) if field.type == pa.string() else field


SCHEMA = pa.schema([
    *[_repeated(store.SCHEMA.field(name)) for name in CONFIG_COLUMNS],
    pa.field("flag", _REPEATED),  # which check (a column named "check" would need quoting in SQL)
    pa.field("attack_label", _REPEATED),  # the attack whose number the flag qualifies
    pa.field("norm", _REPEATED),
    pa.field("eps", pa.float64()),  # +inf: unbounded
    pa.field("eps_label", _REPEATED),
    # With the columns above these tell apart points that differ only in parameters or size.
    pa.field("attack_params", _REPEATED),
    pa.field("n_samples", pa.int32()),
    pa.field("value", pa.float64()),  # that attack's accuracy on the n_pairs samples (P: its target rate)
    pa.field("reference", pa.float64()),  # what it is compared with, on the same samples (P: the controls')
    pa.field("reference_label", pa.string()),  # where the reference comes from
    pa.field("p_value", pa.float64()),  # exact one-sided test, before adjustment
    pa.field("p_adjusted", pa.float64()),  # Holm-adjusted within the configuration and check
    pa.field("n_pairs", pa.int64()),  # samples compared (aligned pairs; for L, samples tested)
    pa.field("fired", pa.bool_()),
    pa.field("detail", pa.string()),  # one sentence, for people
])


def plain(flags: pa.Table) -> pa.Table:
    """``flags`` with its dictionary-encoded columns as plain strings: two tables of the
    same flags compare equal this way whatever order their dictionaries hold."""
    return flags.cast(pa.schema([f.with_type(pa.string()) if f.type == _REPEATED else f for f in flags.schema]))


# fold and sample_index packed into one sortable int64 key: sample_index < 2**40 (twins.py
# and the tests' reference key samples the same way).
FOLD_SHIFT = 40
_SCALARS = [*CONFIG_COLUMNS, *POINT_COLUMNS, "fold", "n_classes", "n_features", "clip_min", "clip_max",
            "target_rate", "target_n", "control_target_rate"]
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
# exact p-values, Holm's adjustment and the sentences, a few whole configurations at a
# time (``_CHUNK_POINTS``), after the store's connection is closed: at 1 M rows the peak
# is DuckDB's pooling or the flags themselves, never both. ``diagnose_reference``
# (tests/diagnostics_reference.py) is the definition, point by point in Python:
# tests/test_diagnostics.py checks that both give the same table.

_POINT_KEY = [*CONFIG_COLUMNS, *POINT_COLUMNS]
_KEY_FOLD = 1 << FOLD_SHIFT  # (fold, sample_index) -> fold * 2**40 + sample_index, as _flat_samples


def diagnose(rows: pa.Table) -> pa.Table:
    """Every judged check of every configuration in ``rows`` (the store's schema; columns
    it lacks read as null): the same table as ``diagnose_reference``, computed in DuckDB."""
    from sweeper import query

    columns = {name: rows.column(name) if name in rows.column_names
               else pa.nulls(rows.num_rows, store.SCHEMA.field(name).type)
               for name in [*dict.fromkeys(_SCALARS), *_OUTCOMES]}
    columns["_order"] = _arrow(np.arange(rows.num_rows, dtype=np.int64))
    connection = query.new_connection()
    try:
        connection.register("_diagnosed_rows", pa.table(columns))
        counts = _counts(connection, "_diagnosed_rows")
    finally:
        connection.close()
    return _assemble(*counts) if counts else SCHEMA.empty_table()


# DuckDB's share of the peak memory: a tight limit makes the pooling spill rather than
# grow (1 M rows: ~110 MB over the connection's own instead of ~260 MB), and each thread
# holds its own hash tables: two give most of the speed. DuckDB cannot split one value,
# though: long outcome lists (2,400 samples a row) need single allocations of 128 MB, so
# a store that runs out of memory under the tight limit is diagnosed again under the
# caller's.
_TIGHT_LIMIT = "100MB"
_STORE_SETTINGS = ("SET threads = 2",)


def diagnose_store(location: store.Location, memory_limit: str = "1GB") -> pa.Table:
    """The diagnostics of the rows now in the store, DuckDB scanning its fragments. The
    connection is closed before the flags are written, so DuckDB's memory and the flags'
    are never held at once."""
    import duckdb

    from sweeper import query

    if not query.scannable(store.fragments(location)):  # a path DuckDB cannot name exactly: read it here
        return diagnose(store.read(location).table)
    try:
        counts = _store_counts(location, _TIGHT_LIMIT)
    except duckdb.OutOfMemoryException:
        counts = _store_counts(location, memory_limit)
    return _assemble(*counts) if counts else SCHEMA.empty_table()


def _store_counts(location: store.Location, memory_limit: str) -> tuple | None:
    from sweeper import query

    connection = query.new_connection(memory_limit)
    try:
        for setting in _STORE_SETTINGS:
            connection.execute(setting)
        connection.execute(f"CREATE VIEW _store AS {query.ordered_rows_sql(connection, store.survey(location))}")
        return _counts(connection, "_store")
    finally:
        connection.close()


def diagnose_relation(connection, relation: str) -> pa.Table:
    """The diagnostics of ``relation`` in ``connection``: the store's columns plus a unique
    ``_order`` giving the rows' order (which copy of a sample counts, and the order of the
    points and of the output, as in ``diagnose_reference``). Leaves no table behind."""
    counts = _counts(connection, relation)
    return _assemble(*counts) if counts else SCHEMA.empty_table()


_TABLES = ("_dg_points", "_dg_samples", "_dg_info", "_dg_flags", "_dg_pairs", "_dg_targets")


def _counts(connection, relation: str) -> tuple | None:
    """What Python needs from DuckDB, all small (one row per point, one per comparison):
    the points (``_fetch_points``) and the comparisons' counts; None when no point has
    samples."""
    try:
        _sql_points(connection, relation)
        counted = _sql_comparisons(connection)
        for name in ("_dg_pairs", "_dg_samples"):  # not needed any more: freed before the points come
            connection.execute(f"DROP TABLE {name}")
        points, info = _fetch_points(connection)
        return (points, info, counted) if points.num_rows else None
    finally:
        for name in _TABLES:
            connection.execute(f"DROP TABLE IF EXISTS {name}")


def _quoted(values) -> str:
    from sweeper.query import sql_string

    return ", ".join(sql_string(str(v)) for v in values)


def _sql_points(connection, relation: str) -> None:
    """Pool each point's samples in DuckDB: ``_dg_info`` counts those of each point that
    has samples, ``_dg_flags`` places it in its configuration. A point of a *uniform* configuration keeps its outcomes as two bit strings
    (``_dg_points``); the others' samples are unnested into ``_dg_samples`` (point, key,
    clean, adv; a (fold, sample_index) taken once, from the earliest row)."""
    usable = (f"attack IN ({_quoted(ATTACKS.names())}) AND eps > 0 AND NOT isnan(eps) "
              "AND coalesce(target, 'model') = 'model' "  # attacks on the .tflite: not judged (module doc)
              "AND len(sample_index) = len(clean_correct) AND len(sample_index) = len(adv_correct)")
    _create_points(connection, relation, usable)
    _mark_uniform(connection, relation)
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
    _create_flags(connection)
    _create_targets(connection, relation)


def _create_targets(connection, relation: str) -> None:
    """_dg_targets: P's counts per point of an attack with controls (module doc): each
    fold's earliest row with a defined target rate, summed over folds."""
    controlled = _quoted(name for name in ATTACKS.names() if ATTACKS.get(name).controls is not None) or "NULL"
    patches = f"SELECT pid, members FROM _dg_points WHERE attack IN ({controlled})"
    if not connection.execute(f"SELECT count(*) FROM ({patches})").fetchone()[0]:  # no patch: no second scan
        connection.execute("CREATE OR REPLACE TEMP TABLE _dg_targets "
                           "(pid BIGINT, target_n BIGINT, target_hits BIGINT, control_hits BIGINT)")
        return
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_targets AS
        SELECT pid, sum(n)::BIGINT AS target_n, sum(hits)::BIGINT AS target_hits,
               sum(control)::BIGINT AS control_hits
        FROM (SELECT m.pid, arg_min(r.target_n, r._order) AS n,
                     arg_min(round(r.target_rate * r.target_n), r._order) AS hits,
                     arg_min(round(r.control_target_rate * r.target_n), r._order) AS control
              FROM (SELECT pid, unnest(members) AS _order FROM ({patches})) AS m
              JOIN (SELECT _order, fold, target_n, target_rate, control_target_rate FROM {relation}
                    WHERE target_n > 0 AND NOT isnan(target_rate) AND NOT isnan(control_target_rate)) AS r
              USING (_order)
              GROUP BY m.pid, r.fold)
        GROUP BY pid""")


def _fetch_points(connection) -> tuple[pa.Table, dict[str, np.ndarray]]:
    """The points with samples, ordered by configuration (numbered in the order of its
    first point) and place in it (a point's place is the order of its first row): the
    columns the flags repeat as an Arrow table, and the numbers as numpy arrays (fetched
    without Arrow: see ``_arrow``), nulls as 0 (NaN for ``input_range``), with P's counts."""
    joined = ("FROM _dg_points AS p JOIN _dg_info AS i USING (pid) JOIN _dg_flags AS f USING (pid) "
              "LEFT JOIN _dg_targets AS t USING (pid) ORDER BY f.cfg, f.pos")
    relation_ = connection.sql(f"SELECT {_POINT_SELECT} {joined}")
    points = (getattr(relation_, "to_arrow_table", None) or relation_.arrow)()
    norms = " ".join(f"WHEN '{norm}' THEN {code}" for norm, code in _NORM_CODES.items())
    info = connection.sql(f"""
        SELECT f.cfg, p.pid, p.eps, i.n, i.clean_right, i.adv_right, i.b, i.c,
               coalesce(p.n_classes, 0)::BIGINT AS n_classes, coalesce(p.n_features, 0)::BIGINT AS n_features,
               coalesce(p.input_range, 'nan'::DOUBLE) AS input_range, CASE p.norm {norms} ELSE 0 END AS norm,
               count(*) OVER (PARTITION BY f.cfg, p.attack_label, p.eps_label) AS namesakes,
               p.source_config_id IS NOT NULL AS transfer, coalesce(t.target_n, 0) AS target_n,
               coalesce(t.target_hits, 0) AS target_hits, coalesce(t.control_hits, 0) AS control_hits
        {joined}""").fetchnumpy()
    return points, {name: np.asarray(values) for name, values in info.items()}


_POINT_SELECT = ", ".join(f'p."{c}"' for c in _POINT_KEY)
_NORM_CODES = {"inf": -1, "1": 1, "2": 2}  # the norms a radius is known for: -1 L-inf, p for L-p


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
    folds are distinct, whether it is complete (no unknown outcome, no empty row), the
    fingerprint of its rows' sample indices (``indices``: the XOR of each row's hash of its
    fold and sample indices; one number, so the grouping stays small), its folds and its
    outcomes concatenated in fold order as bit strings."""
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
                   bit_xor(hash(coalesce(fold, -1), sample_index)) AS indices,
                   list_sort(list({{'fold': coalesce(fold, -1), 'clean': {_BITS.format('clean_correct')},
                                   'adv': {_BITS.format('adv_correct')}}})) AS rows,
                   list(_order) AS members
            FROM {relation} WHERE {usable} GROUP BY {keys}))""")


def _mark_uniform(connection, relation: str) -> None:
    """Add ``uniform`` to _dg_points: true for every point of a configuration whose points
    are all complete and hold the same distinct folds, each fold with the same regular
    sample indices in the same order. Any two of its points then have the same samples at
    the same places of their bit strings, so a paired count is a ``bit_count``.

    "The same sample indices" is decided by the points' 64-bit fingerprints: two points of
    one configuration with different lists would have to share one (odds about k^2 / 2^64
    for k distinct fingerprints in it) to pair wrongly. Regularity is then checked on one
    point's rows per configuration, not on every row: checking that a list is distinct
    costs more than the rest of the first pass."""
    config = ", ".join(f'"{c}"' for c in CONFIG_COLUMNS)
    same = " AND ".join(f'p."{c}" IS NOT DISTINCT FROM u."{c}"' for c in CONFIG_COLUMNS)
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_points AS
        WITH u AS (
            SELECT {config}, bool_and(distinct_folds AND complete) AND min(folds) = max(folds)
                             AND min(indices) = max(indices) AS candidate, min(pid) AS first
            FROM _dg_points GROUP BY {config}),
        shown AS (  -- the rows of each candidate configuration's first point
            SELECT u.first AS pid, unnest(p.members) AS _order
            FROM u JOIN _dg_points AS p ON p.pid = u.first WHERE u.candidate),
        regular AS (
            SELECT s.pid, bool_and({_REGULAR.format('r.sample_index')}) AS regular
            FROM shown AS s JOIN (SELECT _order, sample_index FROM {relation}) AS r USING (_order)
            GROUP BY s.pid)
        SELECT p.*, coalesce(u.candidate AND g.regular, false) AS uniform
        FROM _dg_points AS p JOIN u ON {same} LEFT JOIN regular AS g ON g.pid = u.first""")


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


def _create_flags(connection) -> None:
    """_dg_flags: each point with samples placed in its configuration (``cfg``: the
    configurations numbered in the order of their first point; ``pos``: the point's place
    in it; ``curve``: for E, the place of the first point of its attack's curve) and the
    kind of its attack."""
    config = ", ".join(f'"{c}"' for c in CONFIG_COLUMNS)

    def kind(test) -> str:
        names = [name for name in ATTACKS.names() if test(ATTACKS.get(name))]
        return f"attack IN ({_quoted(names)})" if names else "false"

    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE _dg_flags AS
        SELECT pid, dense_rank() OVER (ORDER BY first) - 1 AS cfg, pos,
               min(pos) OVER (PARTITION BY first, attack, attack_label, norm, attack_params) AS curve,
               attack, attack_label, norm, eps, attack_params, {kind(lambda s: s.single_step)} AS single_step,
               ({kind(lambda s: s.black_box)} OR transfer) AS black_box, isinf(eps) AS unbounded
        FROM (SELECT *, row_number() OVER (PARTITION BY first ORDER BY pid) - 1 AS pos
              FROM (SELECT pid, attack, attack_label, norm, eps, attack_params,
                           source_config_id IS NOT NULL AS transfer,  -- black-box from the target's view
                           min(pid) OVER (PARTITION BY {config}) AS first
                    FROM _dg_points WHERE pid IN (SELECT pid FROM _dg_info)))""")


_FAMILIES = ["single_step_beats_iterative", "black_box_beats_white_box", "accuracy_rises_with_eps"]


def _sql_comparisons(connection) -> dict[str, np.ndarray]:
    """The paired comparisons of S, B and E, counted on their shared samples: columns
    family (0 S, 1 B, 2 E), cfg, first and second pid, n, first_right, second_right, b, c,
    in ``diagnose_reference``'s order (by configuration, family and places: k1, k2, k3)."""
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
        SELECT * EXCLUDE (k1, k2, k3) FROM (  -- the places order the comparisons; Python needs none
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
        GROUP BY ALL) ORDER BY cfg, family, k1, k2, k3""")
    counted = {name: np.asarray(values) for name, values in relation.fetchnumpy().items()}
    return _keep_best_white(counted)


def _keep_best_white(counted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """B compares each black-box point with one white-box point: the one leaving the least
    accuracy on their shared samples (the first such, in point order); the others go."""
    rows = np.flatnonzero(counted["family"] == 1)
    accuracy = counted["second_right"][rows] / counted["n"][rows]
    best = rows[np.lexsort((rows, accuracy, counted["first"][rows]))]  # per black-box point: least, then first
    firsts = counted["first"][best]
    keep = counted["family"] != 1
    keep[best[np.r_[True, firsts[1:] != firsts[:-1]][:len(best)]]] = True  # each group's first
    return {name: values[keep] for name, values in counted.items()}


# Configurations are written a few at a time (at least this many points each time, whole
# configurations): every check, Holm and the best white-box point stay within one, and
# the output is ordered by configuration, so chunks concatenated are the whole table,
# while the working columns and sentences of only one chunk are in memory at once.
_CHUNK_POINTS = 5_000


def _assemble(points: pa.Table, info: dict[str, np.ndarray], counted: dict[str, np.ndarray]) -> pa.Table:
    """The flags as the reference's ``_checks`` and ``_decide`` make them, computed
    column-wise, chunk by chunk of whole configurations (``points`` in configuration order).
    Arrow allocates from the system allocator meanwhile: it hands a chunk's freed buffers
    back to the OS, where Arrow's default (mimalloc) keeps them (~60 MB more at 1 M rows)."""
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pa.system_memory_pool())
    try:
        info = _point_info(points, info)
        encoded = pa.table({name: column.combine_chunks().dictionary_encode() if SCHEMA.field(name).type == _REPEATED else column
                            for name, column in zip(points.column_names, points.columns)
                            if name in SCHEMA.names})  # taken per flag: the indices, not the strings
        return _chunks(encoded, info, counted)
    finally:
        pa.set_memory_pool(previous)


def _chunks(points: pa.Table, info: dict[str, np.ndarray], counted: dict[str, np.ndarray]) -> pa.Table:
    """The flags of each run of whole configurations holding at least _CHUNK_POINTS points
    (the last: what is left), with its comparisons (``counted`` is ordered by cfg too)."""
    row_of = np.empty(int(info["pid"].max()) + 1, dtype=np.int64)
    row_of[info["pid"]] = np.arange(points.num_rows)
    counted = {**counted, "first": row_of[counted["first"]], "second": row_of[counted["second"]]}
    cfg = info["cfg"]
    ends = np.flatnonzero(np.r_[cfg[1:] != cfg[:-1], True]) + 1  # where each configuration's rows end
    tables, start = [], 0
    while start < len(cfg):
        stop = int(ends[min(np.searchsorted(ends, start + _CHUNK_POINTS), len(ends) - 1)])
        lo, hi = np.searchsorted(counted["cfg"], cfg[start]), np.searchsorted(counted["cfg"], cfg[stop - 1], "right")
        tables.append(_chunk(points, info, np.arange(start, stop), {k: v[lo:hi] for k, v in counted.items()}))
        start = stop
    return pa.concat_tables(tables)


def _point_info(points: pa.Table, info: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``info`` with each point's name, its radius (``Point.radius``; NaN where unknown) and
    whether L judges it."""
    norm, features, spread = info["norm"], info["n_features"], info["input_range"]
    per_value = np.where(norm == _NORM_CODES["inf"], 1.0, 0.0)  # the radius' unit over input_range; 0: none
    for p in (1, 2):
        rows = (norm == p) & (features != 0)
        for count in np.unique(features[rows]).tolist():  # Python's int ** float, as Point.radius
            per_value[rows & (features == count)] = count ** (1 / p)
    with np.errstate(divide="ignore", invalid="ignore"):
        radius = np.where((spread > 0) & (per_value > 0), info["eps"] / (spread * per_value), np.nan)
    radius = np.where(np.isinf(info["eps"]), np.inf, radius)
    large = (radius >= LARGE_EPS - 1e-12) & (info["n_classes"] != 0) & ~info["transfer"].astype(bool)
    return {**info, "name": _names(points, info), "radius": radius, "large": large,
            "classes": np.where(large, info["n_classes"], 1)}


def _names(points: pa.Table, info: dict[str, np.ndarray]) -> pa.Array:
    """``_name``'s names: label@eps, and for namesakes within a configuration what differs."""
    text = [_literal("None"), _literal("@"), _literal("")]
    names = pc.binary_join_element_wise(points.column("attack_label").fill_null(text[0]), text[1],
                                        points.column("eps_label").fill_null(text[0]), text[2]).combine_chunks()
    rows = np.flatnonzero(info["namesakes"] > 1)
    if not len(rows):
        return names
    by_config = defaultdict(list)  # rows are in configuration order: so are the groups
    for row, cfg in zip(points.take(_arrow(rows)).to_pylist(), info["cfg"][rows].tolist()):
        by_config[cfg].append(Point(config=(), **{c: row[c] for c in POINT_COLUMNS}, n_classes=None,
                                    n_features=None, input_range=None, keys=None, clean=None, adv=None))
    for group in by_config.values():
        _name(group)
    renamed = _strings([point.name for group in by_config.values() for point in group])
    index = np.arange(len(names))
    index[rows] = len(names) + np.arange(len(rows))
    return pa.concat_arrays([names, renamed]).take(_arrow(index))


# pyarrow imports pandas (~33 MB resident) on its first conversion of numpy arrays,
# Python objects or scalars; nothing here needs pandas, so the flags' arrays are built
# from their buffers and numbers come from DuckDB as numpy (fetchnumpy).

def _arrow(values: np.ndarray) -> pa.Array:
    """A numpy array of numbers or booleans as an Arrow array, without pandas."""
    if values.dtype == np.bool_:
        bits = np.packbits(values, bitorder="little")
        return pa.Array.from_buffers(pa.bool_(), len(values), [None, pa.py_buffer(bits)])
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(pa.from_numpy_dtype(values.dtype), len(values), [None, pa.py_buffer(values)])


def _strings(texts: list[str]) -> pa.Array:
    """Python strings as an Arrow string array, without pandas."""
    encoded = [text.encode() for text in texts]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int32)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return pa.Array.from_buffers(pa.string(), len(encoded), [None, pa.py_buffer(offsets),
                                                             pa.py_buffer(b"".join(encoded))])


def _literal(text: str) -> pa.Scalar:
    return _strings([text])[0]


def _chunk(points: pa.Table, info: dict[str, np.ndarray], rows: np.ndarray, counted: dict[str, np.ndarray]):
    """The flags of the whole configurations at point rows ``rows``, with their comparisons."""
    n, adv, clean = info["n"][rows], info["adv_right"][rows], info["clean_right"][rows]
    large, cfg_of = info["large"][rows], info["cfg"][rows]
    chance = 1 / info["classes"][rows][large]
    null = np.minimum(1.0, chance + FAR_ABOVE_CHANCE)
    patch = info["target_n"][rows] > 0
    target_n, hits, control = (info[k][rows][patch] for k in ("target_n", "target_hits", "control_hits"))
    others = len(rows) + int(large.sum()) + int(patch.sum())  # the points judged alone: C, L, P
    columns = {  # S, B, E (paired), then C (per point), L (large points), P (patches)
        "family": np.concatenate([counted["family"], np.full(len(rows), 3), np.full(int(large.sum()), 4),
                                  np.full(int(patch.sum()), _PATCH)]),
        "cfg": np.concatenate([counted["cfg"], cfg_of, cfg_of[large], cfg_of[patch]]),
        "point": np.concatenate([counted["second"], rows, rows[large], rows[patch]]),
        "reference_point": np.concatenate([counted["first"], np.full(others, -1)]),
        "n": np.concatenate([counted["n"], n, n[large], target_n]),
        "value": np.concatenate([counted["second_right"] / counted["n"], adv / n, adv[large] / n[large],
                                 hits / target_n]),
        "reference": np.concatenate([counted["first_right"] / counted["n"], clean / n, chance, control / target_n]),
        "p_value": np.concatenate([_mcnemar_p(counted["b"], counted["c"]),
                                   _mcnemar_p(info["b"][rows], info["c"][rows]),
                                   _binomial_p(adv[large], n[large], null),
                                   _binomial_p(hits, target_n, control / target_n)]),
        "null": np.concatenate([np.full(len(counted["n"]) + len(rows), np.nan), null,
                                np.full(int(patch.sum()), np.nan)]),
    }
    order = np.lexsort((np.arange(len(columns["cfg"])), columns["family"], columns["cfg"]))  # stable
    columns = {name: values[order] for name, values in columns.items()}
    alone = columns["family"] == _PATCH
    columns["p_adjusted"] = np.where(alone, columns["p_value"],
                                     _holm_grouped(columns["p_value"], columns["cfg"] * len(CHECKS) + columns["family"]))
    minimum = np.where(columns["family"] == 4, FAR_ABOVE_CHANCE, MIN_MARGIN)
    shown = (columns["p_adjusted"] < ALPHA) & (columns["value"] - columns["reference"] >= minimum - 1e-12)
    columns["fired"] = np.where(alone, ~shown, shown)  # P fires where the patch is *not* shown to beat
    return _flag_table(points, info, columns)


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


_REFERENCE_LABEL = {3: "clean", 4: "chance", _PATCH: "control"}


def _flag_table(points: pa.Table, info: dict[str, np.ndarray], columns: dict[str, np.ndarray]) -> pa.Table:
    """The output table: configuration columns, the qualified point's columns, numbers, sentences."""
    at, family = _arrow(columns["point"]), _arrow(columns["family"])
    labels = _strings([_REFERENCE_LABEL.get(f, "") for f in range(len(CHECKS))]).take(family)
    own = columns["reference_point"] >= 0
    references = pc.if_else(_arrow(own), info["name"].take(_arrow(np.where(own, columns["reference_point"], 0))),
                            labels)
    data = {name: points.column(name).take(at) for name in (*CONFIG_COLUMNS, "attack_label", "norm", "eps",
                                                              "eps_label", "attack_params", "n_samples")}
    data["flag"] = pa.DictionaryArray.from_arrays(family.cast(pa.int32()), _strings(list(CHECKS)))
    data.update(value=columns["value"], reference=columns["reference"], reference_label=references,
                p_value=columns["p_value"], p_adjusted=columns["p_adjusted"], n_pairs=columns["n"],
                fired=columns["fired"], detail=_details(info, at, references, columns))
    return pa.Table.from_arrays([(data[f.name] if isinstance(data[f.name], (pa.Array, pa.ChunkedArray))
                                  else _arrow(data[f.name])).cast(f.type) for f in SCHEMA], schema=SCHEMA)


_TAIL = " (p = {p:.2g}, Holm {p_adjusted:.2g})"
# P's sentence (no Holm): the reference writes the same.
PATCH_SENTENCE = ("{point} takes {value:.3f} of {n} clean-correct non-target samples to its target, "
                  "its best control {ref:.3f} (p = {p:.2g})")
_SENTENCES = [  # the sentence of each family, in str.format syntax (the reference writes the same)
    *[_TEXTS[family] + " on {n} shared samples" + _TAIL for family in _FAMILIES],
    "{point} leaves {value:.3f} accuracy, clean {ref:.3f}, on {n} samples" + _TAIL,
    "{point}{budget} leaves {value:.3f} accuracy on {n} samples; chance is {ref:.3f}, tested against {null:.3f}"
    + _TAIL,
    PATCH_SENTENCE,
]
_BUDGET = " (radius {radius:.2f} of the input range)"  # L's, where the budget is bounded


def _details(info: dict[str, np.ndarray], at: pa.Array, references: pa.Array,
             columns: dict[str, np.ndarray]) -> pa.Array:
    """The sentences, one per flag, family by family, put back in the flags' order. Numbers
    are formatted once per distinct value (a store's flags repeat few of them) and the
    pieces joined by Arrow, so no flag becomes a Python string."""
    fields = {"point": info["name"].take(at), "reference": references, "value": columns["value"],
              "ref": columns["reference"], "n": columns["n"], "null": columns["null"], "p": columns["p_value"],
              "p_adjusted": columns["p_adjusted"], "radius": info["radius"][columns["point"]],
              "unbounded": np.isinf(info["eps"][columns["point"]])}
    parts, where = [], []
    for family, template in enumerate(_SENTENCES):
        rows = np.flatnonzero(columns["family"] == family)
        if not len(rows):
            continue
        taken = _arrow(rows)
        values = {name: v[rows] if isinstance(v, np.ndarray) else v.take(taken) for name, v in fields.items()}
        if family == 4:
            values["budget"] = pc.if_else(_arrow(values["unbounded"]), _literal(""), _render(_BUDGET, values))
        parts.append(_render(template, values))
        where.append(rows)
    if not parts:
        return _strings([])
    return pa.concat_arrays(parts).take(_arrow(np.argsort(np.concatenate(where))))


def _render(template: str, values: dict) -> pa.Array:
    """``template.format(**row)`` for every row of ``values`` (Arrow strings, or numpy numbers
    formatted with the field's format spec)."""
    pieces = []
    for literal, name, spec, _ in string.Formatter().parse(template):
        if literal:
            pieces.append(_literal(literal))
        if name is not None:
            value = values[name]
            pieces.append(_formatted(value, spec) if isinstance(value, np.ndarray) else value)
    return pc.binary_join_element_wise(*pieces, _literal(""))


def _formatted(values: np.ndarray, spec: str) -> pa.Array:
    """``format(v, spec)`` of each value, computed once per distinct value (floats told apart
    by their bits, so -0.0 and NaN keep their own text)."""
    floating = values.dtype.kind == "f"
    keys = np.ascontiguousarray(values, dtype=np.float64).view(np.int64) if floating else values.astype(np.int64)
    distinct, inverse = np.unique(keys, return_inverse=True)
    texts = [format(v, spec) for v in (distinct.view(np.float64) if floating else distinct).tolist()]
    return _strings(texts).take(_arrow(inverse.ravel()))


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

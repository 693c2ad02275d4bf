"""Gradient-masking diagnostics, computed (the checks themselves are defined in
``checks.py``): at the size of the paper grid, DuckDB unnests the outcome lists, pools
each point's samples and counts the paired outcomes of every comparison, so no sample
reaches Python; Python gets one row per point and one per comparison, and ``flags.py``
computes the exact p-values, Holm's adjustment and the sentences, a few whole
configurations at a time, after the store's connection is closed: at 1 M rows the peak is
DuckDB's pooling or the flags themselves, never both. ``diagnose_reference``
(tests/diagnostics_reference.py) is the definition, point by point in Python:
tests/test_diagnostics.py checks that both give the same table.

``diagnose`` (rows in memory), ``diagnose_store`` (DuckDB scanning a store),
``diagnose_relation`` (a relation of an open connection: the query's ``diagnostics``) and
``write`` (RESULTS/diagnostics.parquet) are the entry points.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sweeper import store
from sweeper.analysis import duck
from sweeper.analysis.checks import FOLD_SHIFT, OUTCOMES, SCALARS
from sweeper.analysis.flags import NORM_CODES, SCHEMA, arrow, assemble
from sweeper.attacks import ATTACKS
from sweeper.keys import CONFIG_COLUMNS, POINT_COLUMNS

_POINT_KEY = [*CONFIG_COLUMNS, *POINT_COLUMNS]
_KEY_FOLD = 1 << FOLD_SHIFT  # (fold, sample_index) -> fold * 2**40 + sample_index, as _flat_samples


def diagnose(rows: pa.Table) -> pa.Table:
    """Every judged check of every configuration in ``rows`` (the store's schema; columns
    it lacks read as null): the same table as ``diagnose_reference``, computed in DuckDB."""
    columns = {name: store.column_or_null(rows, store.SCHEMA.field(name))
               for name in [*dict.fromkeys(SCALARS), *OUTCOMES]}
    columns["_order"] = arrow(np.arange(rows.num_rows, dtype=np.int64))
    connection = duck.new_connection()
    try:
        connection.register("_diagnosed_rows", pa.table(columns))
        counts = _counts(connection, "_diagnosed_rows")
    finally:
        connection.close()
    return assemble(*counts) if counts else SCHEMA.empty_table()


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

    if not duck.scannable(store.fragments(location)):  # a path DuckDB cannot name exactly: read it here
        return diagnose(store.read(location).table)
    try:
        counts = _store_counts(location, _TIGHT_LIMIT)
    except duckdb.OutOfMemoryException:
        counts = _store_counts(location, memory_limit)
    return assemble(*counts) if counts else SCHEMA.empty_table()


def _store_counts(location: store.Location, memory_limit: str) -> tuple | None:
    connection = duck.new_connection(memory_limit)
    try:
        for setting in _STORE_SETTINGS:
            connection.execute(setting)
        connection.execute(f"CREATE VIEW _store AS {duck.ordered_rows_sql(connection, store.survey(location))}")
        return _counts(connection, "_store")
    finally:
        connection.close()


def diagnose_relation(connection, relation: str) -> pa.Table:
    """The diagnostics of ``relation`` in ``connection``: the store's columns plus a unique
    ``_order`` giving the rows' order (which copy of a sample counts, and the order of the
    points and of the output, as in ``diagnose_reference``). Leaves no table behind."""
    counts = _counts(connection, relation)
    return assemble(*counts) if counts else SCHEMA.empty_table()


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
    return ", ".join(duck.sql_string(str(v)) for v in values)


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
    points = duck.to_arrow(connection.sql(f"SELECT {_POINT_SELECT} {joined}"))
    norms = " ".join(f"WHEN '{norm}' THEN {code}" for norm, code in NORM_CODES.items())
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


# ---------------------------------------------------------------- in the store

def write(location: store.Location, rows: pa.Table | None = None) -> pa.Table:
    """(Re)write RESULTS/diagnostics.parquet from the rows now in the store (``rows``, when
    the caller has just read them all)."""
    flags = diagnose_store(location) if rows is None else diagnose(rows)
    store.write_file(location, store.DIAGNOSTICS_FILE, flags)
    return flags


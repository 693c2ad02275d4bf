"""Query: read-only SQL over a result store.

DuckDB scans the store's Parquet files itself (``read_parquet`` over the explicit list of
fragments whose footers carry sweeper's schema version; damaged and foreign files are
left out), so a query reads only the columns and row groups it needs and nothing is
loaded whole. Older schemas are read through the same renames as ``store.read``, and a
cell stored twice counts once (the earliest fragment's row). Stores on other
filesystems (S3, GCS...) are read with pyarrow into memory first. The names:

- ``results``: the rows, one per cell (the store's schema);
- ``robust``: mean, standard deviation and variance across folds of every cell, plus the
  worst case over attacks at each budget (per sample: robust only if every attack failed),
  of the QKeras model (``worst(...)``) and of its deployed build (``worst@deployed(...)``:
  transfer from the model's examples plus the attacks on the build itself, ``WorstCase``);
  a transfer attack's rows are their own points (``source_config_id`` is part of the key),
  with ``source_model``, ``source_quantizer`` and the transfer rate's mean over the folds
  where it is defined; they count in the worst case at their budget like any other attack
  on the target (their examples are within the budget of the target's own inputs); a
  targeted patch's point has its target rate's mean and spread, its controls' means and
  the summed denominator ``target_n``;
- ``fits``: each configuration that fits each MCU profile (computed from the footprint
  and the profiles, ``targeted`` when the grid named it), with its flash, RAM and accuracy;
- ``diagnostics``: the gradient-masking checks (sweeper.diagnostics), one row per judgement;
- ``launches``: the provenance of every launch (grid file and hash, versions, start time);
- ``mcus``: the MCU profiles sweeper knows.

External access is switched off and the configuration locked before the user's SQL runs,
so a query reads these and nothing else, writes nowhere, and stays under its memory limit.
No user string is spliced into SQL as text: the memory limit is parsed as a size and
passed as a value, and every path reaches DuckDB through ``sql_string`` (quotes doubled)
and ``scan_pattern`` (glob characters escaped), so a store under ``runs[old]/`` or
``it's/`` reads exactly its own files.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from sweeper import store
from sweeper.errors import UserError
from sweeper.keys import CONFIG_COLUMNS, POINT_COLUMNS

FORMATS = ("table", "csv", "json", "parquet")
DEFAULT_MEMORY_LIMIT = "2GB"
# DuckDB's units: KB, MB... are powers of 1000, KiB, MiB... of 1024.
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE | re.ASCII)
# Below this DuckDB cannot even set up the views (it fails to allocate its first blocks).
MIN_MEMORY_LIMIT = 16 * 1024**2

# The fold axis is averaged away; everything else that determines a result stays a key
# (CONFIG_COLUMNS and POINT_COLUMNS), so rows that differ in parameters,
# sample count or code version are never averaged together.
_CONFIG = ", ".join(CONFIG_COLUMNS)
_POINT = ", ".join(POINT_COLUMNS)
_ACCURACIES = """
               len(list_distinct(list(fold)))::INTEGER AS folds, count(*)::INTEGER AS rows,
               CAST(sum(n_samples) AS BIGINT) AS samples,
               avg(clean_acc) AS clean_acc_mean, stddev_samp(clean_acc) AS clean_acc_std,
               avg(adv_acc) AS adv_acc_mean, stddev_samp(adv_acc) AS adv_acc_std,
               var_samp(adv_acc) AS adv_acc_var,
               avg(attack_success_rate) AS success_rate_mean,
               stddev_samp(attack_success_rate) AS success_rate_std,
               avg(test_acc) AS test_acc_mean, stddev_samp(test_acc) AS test_acc_std,
               avg(deployed_clean_acc) AS deployed_clean_acc_mean,
               avg(deployed_adv_acc) AS deployed_adv_acc_mean,
               stddev_samp(deployed_adv_acc) AS deployed_adv_acc_std,
               max(params) AS params, max(flash_kb) AS flash_kb, max(ram_kb) AS ram_kb,
               max(tflite_kb) AS tflite_kb, max(arena_kb) AS arena_kb,
               max(flash_packed_kb) AS flash_packed_kb, max(ram_packed_kb) AS ram_packed_kb,
               nullif(array_to_string(list_sort(list_distinct(list(footprint_source))), '+'), '')
                   AS footprint_source"""
# Worst case over attacks at each budget, the robustness-leaderboard convention: a sample
# counts as robust only if every attack run at that (norm, eps) on it failed. Built from
# the per-sample outcomes of one fold's rows with the same samples, then averaged over
# folds like any other point; its label names the attacks it covers. Two groups, one per
# network the outcomes are of (``WorstCase``): the QKeras model (``worst(...)``: rows that
# attacked the model), and the deployed int8 build (``worst@deployed(...)``: every row's
# deployed_adv_correct, i.e. the build under transfer from the QKeras model's examples,
# and the rows that attacked the build itself, whose outcomes are the build's).
_KEY = [*CONFIG_COLUMNS, "fold", "norm", "eps", "n_samples"]
_SAME = " AND ".join(f"a.{c} IS NOT DISTINCT FROM covered.{c}" for c in _KEY)  # NULL-safe: schema-2 keys
# Only (configuration, fold, norm, eps) groups with at least two attacks make a worst
# case: a cheap first pass on one hash of few columns (config_id, fold, norm, eps,
# n_samples: coarser than the group, and a hash collision only merges groups, so no such
# group is lost; grouping ~1 M rows by one integer is ~5x faster than by the five columns)
# finds where two attack labels meet, and only those rows are grouped exactly and unnested. (DISTINCT aggregates are written with
# list_distinct: the same values, far cheaper in DuckDB.)
_ATTACKED = "FROM results WHERE attack <> 'none' AND eps > 0"
_COARSE = ["config_id", "fold", "norm", "eps", "n_samples"]
_COARSE_HASH = f"hash({', '.join(_COARSE)})"  # one integer to group on; a collision only widens a group


@dataclass(frozen=True)
class WorstCase:
    """One group of the worst case: whose outcomes it pools, as SQL over ``results``."""

    target: str  # the network the outcomes are of: store's ``target`` values
    label: str  # what the attack_label starts with: worst(a+b)
    rows: str  # which attack rows take part
    ok: str  # a row's per-sample robust outcomes
    clean: str  # a row's per-sample clean outcomes (null entries: unknown, left out)
    clean_acc: str  # a row's clean accuracy
    needs: str  # besides two attack labels, what a group must have (a boolean aggregate)
    deployed: bool  # the deployed_* accuracies are the group's own (else null)


WORST_CASES = (
    WorstCase("model", "worst(", "coalesce(target, 'model') = 'model' AND adv_correct IS NOT NULL",
              "adv_correct", "clean_correct", "clean_acc", "true", deployed=False),
    # A model row knows the build's per-sample outcome on its example (deployed_adv_correct)
    # but not its clean one: only the build's own rows say it, and a group needs one.
    WorstCase("deployed", "worst@deployed(", "deployed_adv_correct IS NOT NULL", "deployed_adv_correct",
              "CASE WHEN target = 'deployed' THEN clean_correct "
              "ELSE list_transform(deployed_adv_correct, lambda x: NULL::BOOLEAN) END",
              "deployed_clean_acc", "bool_or(target = 'deployed')", deployed=True),
)


def _worst_case_sql(group: WorstCase) -> str:
    """The worst case of one group (module doc, ``robust``)."""
    deployed = ("any_value(clean_acc) AS deployed_clean_acc, NULL::DOUBLE AS deployed_adv_acc" if group.deployed
                else "NULL::DOUBLE AS deployed_clean_acc, NULL::DOUBLE AS deployed_adv_acc")
    accuracies = _ACCURACIES.replace("fold)", "covered.fold)").replace("(n_samples)", "(covered.n_samples)")
    return f"""
        WITH coarse AS MATERIALIZED (
            SELECT {_COARSE_HASH} AS h {_ATTACKED} AND {group.rows} GROUP BY h
            HAVING min(attack_label) <> max(attack_label) AND {group.needs}),
        candidates AS (
            SELECT a.* FROM (SELECT {', '.join(_KEY)}, attack_label, eps_label, target,
                                    {group.clean_acc} AS clean_acc, test_acc, params,
                                    flash_kb, ram_kb, tflite_kb, arena_kb, flash_packed_kb, ram_packed_kb,
                                    footprint_source, sample_index, {group.ok} AS ok_list,
                                    {group.clean} AS clean_list {_ATTACKED} AND {group.rows}) AS a
            WHERE {_COARSE_HASH} IN (SELECT h FROM coarse)),
        covered AS MATERIALIZED (
            SELECT row_number() OVER () AS gid, * FROM (
                SELECT {_CONFIG}, fold, norm, eps, n_samples, min(eps_label) AS eps_label,
                       array_to_string(list_sort(list_distinct(list(attack_label))), '+') AS covers,
                       len(list_distinct(list(attack_label))) AS attacks, {group.needs} AS needed,
                       any_value(clean_acc) AS clean_acc,
                       any_value(test_acc) AS test_acc, max(params) AS params,
                       max(flash_kb) AS flash_kb, max(ram_kb) AS ram_kb, max(tflite_kb) AS tflite_kb,
                       max(arena_kb) AS arena_kb, max(flash_packed_kb) AS flash_packed_kb,
                       max(ram_packed_kb) AS ram_packed_kb, any_value(footprint_source) AS footprint_source,
                       {deployed}
                FROM candidates GROUP BY {_CONFIG}, fold, norm, eps, n_samples)
            WHERE attacks >= 2 AND needed),
        per_sample AS (
            SELECT gid, sample, bool_and(ok) AS ok, bool_and(clean) AS clean
            FROM (SELECT covered.gid, unnest(a.sample_index) AS sample, unnest(a.ok_list) AS ok,
                         unnest(a.clean_list) AS clean
                  FROM candidates AS a JOIN covered ON {_SAME})
            GROUP BY gid, sample),
        per_fold AS (
            SELECT gid, avg(ok::DOUBLE) AS adv_acc,
                   sum((clean AND NOT ok)::INTEGER) / nullif(sum(clean::INTEGER), 0) AS attack_success_rate
            FROM per_sample GROUP BY gid),
        folds AS (SELECT covered.* EXCLUDE (deployed_adv_acc), per_fold.adv_acc AS adv_acc,
                         per_fold.attack_success_rate,
                         {"per_fold.adv_acc" if group.deployed else "NULL::DOUBLE"} AS deployed_adv_acc
                  FROM covered JOIN per_fold USING (gid))
        SELECT {', '.join('covered.' + c for c in CONFIG_COLUMNS)}, 'worst_case' AS attack,
               '{group.label}' || covers || ')' AS attack_label, covered.norm AS norm, covered.eps AS eps,
               eps_label, '{{"covers": "' || covers || '"}}' AS attack_params,
               covered.n_samples AS n_samples, '{group.target}' AS target, {accuracies}
        FROM folds AS covered
        GROUP BY ALL"""


_WORST_CASE = "\n        UNION ALL BY NAME\n".join(f"SELECT * FROM ({_worst_case_sql(group)})" for group in WORST_CASES)
# Transfer rows: which model crafted the examples (fixed by source_config_id, a key), and
# the transfer rate over the folds where it is defined (NaN: no sample to transfer).
_TRANSFER = """
               any_value(source_model) AS source_model, any_value(source_quantizer) AS source_quantizer,
               avg(CASE WHEN isnan(transfer_rate) THEN NULL ELSE transfer_rate END) AS transfer_rate_mean,
               stddev_samp(CASE WHEN isnan(transfer_rate) THEN NULL ELSE transfer_rate END) AS transfer_rate_std"""
# A targeted patch's score beside its controls' (null on every other point); NaN rates (no
# clean-correct non-target sample in a fold) are left out of the means.
_TARGETS = """
               avg(CASE WHEN isnan(target_rate) THEN NULL ELSE target_rate END) AS target_rate_mean,
               stddev_samp(CASE WHEN isnan(target_rate) THEN NULL ELSE target_rate END) AS target_rate_std,
               avg(CASE WHEN isnan(control_target_rate) THEN NULL ELSE control_target_rate END)
                   AS control_target_rate_mean,
               avg(control_adv_acc) AS control_adv_acc_mean, CAST(sum(target_n) AS BIGINT) AS target_n"""
VIEWS = {  # in creation order: robust reads worst_case
    "worst_case": _WORST_CASE,
    "robust": f"""
        SELECT {_CONFIG}, {_POINT}, {_ACCURACIES}, {_TRANSFER}, {_TARGETS}
        FROM results GROUP BY ALL
        UNION ALL BY NAME
        SELECT * FROM worst_case""",
    # Fit is computed here from the footprint and the MCU profiles, never frozen in a row:
    # a corrected profile changes the answer for every stored model.
    "fits": f"""
        SELECT m.name AS mcu, list_contains(r.mcu_targets, m.name) AS targeted,
               {', '.join('r.' + c for c in CONFIG_COLUMNS)}, r.footprint_source,
               max(r.flash_kb) AS flash_kb, max(r.ram_kb) AS ram_kb,
               any_value(m.flash_kb) AS mcu_flash_kb, any_value(m.ram_block_kb) AS mcu_ram_block_kb,
               count(DISTINCT r.fold)::INTEGER AS folds, avg(r.test_acc) AS test_acc_mean,
               stddev_samp(r.test_acc) AS test_acc_std
        FROM (SELECT DISTINCT {_CONFIG}, fold, job_id, test_acc, flash_kb, ram_kb, footprint_source,
                              mcu_targets FROM results) AS r
        JOIN mcus AS m ON r.flash_kb <= m.flash_kb AND r.ram_kb <= m.ram_block_kb
        GROUP BY ALL""",
}


def parse_memory_limit(text: str, minimum: int = MIN_MEMORY_LIMIT) -> int:
    """``--memory-limit`` as bytes: a number and one of DuckDB's units (B, KB, MB, GB,
    TB, KiB, MiB, GiB, TiB; any case), at least ``minimum``; else a one-line error."""
    match = _SIZE.fullmatch(text.strip())
    if match is None or match.group(2).lower() not in _UNITS:
        raise UserError(f"--memory-limit: {text!r} is not a size; write a number and a unit, e.g. 512MB or 2GiB "
                        f"(units: {', '.join(u.upper().replace('I', 'i') for u in _UNITS)})")
    size = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if size < minimum:
        raise UserError(f"--memory-limit: {text!r} is below the {minimum // 1024**2}MiB a query needs")
    return size


def connect(rows, launches: list[dict] | None = None, memory_limit: str | int = DEFAULT_MEMORY_LIMIT,
            with_diagnostics: bool = True):
    """An in-memory DuckDB holding ``rows`` (a pyarrow Table) and every derived view,
    locked read-only. ``with_diagnostics`` False leaves out the one table that costs time
    to build."""
    from sweeper import diagnostics

    connection = new_connection(memory_limit)
    connection.register("results", rows)
    if with_diagnostics:
        connection.register("diagnostics", diagnostics.diagnose(rows))
    return _finish(connection, launches, [])


def connect_store(location: store.Location, launches: list[dict] | None = None,
                  memory_limit: str | int = DEFAULT_MEMORY_LIMIT, with_diagnostics: bool = True,
                  found: store.Survey | None = None):
    """As ``connect``, with ``results`` a view that scans the store's local fragments in
    place (``found``: the caller's survey of them, if it has one); the diagnostics are
    computed in DuckDB from the same view."""
    from sweeper import diagnostics

    found = store.survey(location) if found is None else found
    connection = new_connection(memory_limit)
    paths = [fragment.path for fragment in found.fragments]
    connection.execute(f"CREATE VIEW {ORDERED} AS {ordered_rows_sql(connection, found)}")
    connection.execute(f"CREATE VIEW results AS SELECT * EXCLUDE (_order) FROM {ORDERED}")
    if with_diagnostics:
        connection.register("diagnostics", diagnostics.diagnose_relation(connection, ORDERED))
    stored = _current_worst_case(location, found)
    views = {"worst_case": f"SELECT * FROM read_parquet({_sql_list([scan_pattern(stored)])})"} if stored else {}
    return _finish(connection, launches, paths + ([stored] if stored else []), views)


def _current_worst_case(location: store.Location, found: store.Survey) -> str | None:
    """The stored worst case's path if it was computed from exactly these row files, by
    code with today's configuration columns and groups (an older one lacks e.g.
    ``defense``, or ``target``: it had no deployed group)."""
    import pyarrow.parquet as pq

    path = location.sub(store.WORST_CASE_FILE)
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError):  # absent, or unreadable: computed instead
        return None
    current = (schema.metadata or {}).get(store.META_ROWS) == found.fingerprint.encode()
    return path if current and {*CONFIG_COLUMNS, "target"} <= set(schema.names) else None


def write_worst_case(location: store.Location) -> int:
    """Compute the worst case over attacks from the store's rows now and keep it beside
    them (RESULTS/worst_case.parquet), tagged with the row files it came from: a query
    reads it while they are unchanged, and computes the view itself otherwise. Returns
    its rows. (A store on another filesystem keeps none: its queries read it into
    memory and compute every view.)"""
    import pyarrow.fs as pafs

    if not isinstance(location.fs, pafs.LocalFileSystem):
        return 0
    import pyarrow.parquet as pq

    found = store.survey(location)
    if not scannable([fragment.path for fragment in found.fragments] + [location.sub(store.WORST_CASE_FILE)]):
        return 0
    stored = _current_worst_case(location, found)
    if stored:  # already computed from exactly these rows
        return pq.read_metadata(stored).num_rows
    connection = connect_store(location, with_diagnostics=False, found=found)
    try:
        table = fetch(connection, "SELECT * FROM worst_case")
    finally:
        connection.close()
    metadata = {**(table.schema.metadata or {}), store.META_ROWS: found.fingerprint.encode()}
    store.write_file(location, store.WORST_CASE_FILE, table.replace_schema_metadata(metadata))
    return table.num_rows


def new_connection(memory_limit: str | int = DEFAULT_MEMORY_LIMIT):
    """An in-memory DuckDB connection as every sweeper query uses: no progress bar, the
    memory limit (bytes, or a size ``parse_memory_limit`` reads), and spills to the
    system's temporary folder (DuckDB's default for an in-memory database is ``.tmp`` in
    the working directory: the user's checkout). Both are passed as configuration
    values, never as SQL text."""
    import tempfile

    import duckdb

    # The floor is the CLI's (parse_memory_limit); code may ask for less, e.g. to probe a tight limit.
    limit = memory_limit if isinstance(memory_limit, int) else parse_memory_limit(memory_limit, minimum=1)
    spill = os.path.join(tempfile.gettempdir(), "sweeper-duckdb")
    try:
        connection = duckdb.connect(":memory:", config={"memory_limit": f"{limit}B", "temp_directory": spill})
    except duckdb.Error as error:
        raise UserError(f"--memory-limit: {str(error).splitlines()[0]}") from None
    connection.execute("SET enable_progress_bar = false")  # output is the result alone
    return connection


def _finish(connection, launches: list[dict] | None, paths: list[str], views: dict[str, str] | None = None):
    """Add the launches, the MCU profiles and the views, then lock the connection: no file
    but the store's fragments (``paths``) can be read, nothing written, nothing reset."""
    import pyarrow as pa

    from sweeper.deploy.mcus import MCUS

    connection.register("launches", _launch_table(launches or []))
    mcus = [{"name": name, "flash_kb": float(MCUS.get(name).flash_kb), "ram_kb": float(MCUS.get(name).ram_kb),
             "ram_block_kb": float(MCUS.get(name).ram_block_kb), "description": MCUS.get(name).description,
             "source": MCUS.get(name).source} for name in MCUS.names()]
    connection.register("mcus", pa.Table.from_pylist(mcus))
    for name, sql in {**VIEWS, **(views or {})}.items():  # ``views`` replace some (dict order kept)
        connection.execute(f"CREATE VIEW {name} AS {sql}")
    if paths:  # each file as DuckDB opens it, and as the pattern that names it
        connection.execute(f"SET allowed_paths = {_sql_list(sorted({*paths, *map(scan_pattern, paths)}))}")
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


# The store's rows with ``_order``: the earliest fragment's row of a cell comes first.
ORDERED = "_ordered_results"


def ordered_rows_sql(connection, found: store.Survey) -> str:
    """SQL for every readable row of ``found``'s fragments in the current schema, one per
    cell (store.read's rule: the earliest fragment, then the earliest row in it, wins),
    with an ``_order`` column in that order. Files of schema <= 2 are read through their
    older meanings (store.projection)."""
    groups: dict[bool, list[tuple[int, store.Fragment]]] = {}
    for ordinal, fragment in enumerate(found.fragments):
        groups.setdefault(fragment.version < 3, []).append((ordinal, fragment))
    parts = [f"SELECT {', '.join(store.projection(set().union(*(f.columns for _, f in members)), 2 if older else 3))}, "
             f"{_sql_list([o for o, _ in members])}[file_index::BIGINT + 1]::BIGINT * {1 << 40} + file_row_number "
             "AS _order "
             f"FROM read_parquet({_sql_list([scan_pattern(f.path) for _, f in members])}, union_by_name = true)"
             for older, members in groups.items()]
    if not parts:
        return f"SELECT {', '.join(store.projection([], 3))}, 0::BIGINT AS _order WHERE false"
    rows = " UNION ALL ".join(parts)
    if found.one_compaction or not _has_duplicates(connection, rows):
        return rows
    return f"SELECT * FROM ({rows}) QUALIFY row_number() OVER (PARTITION BY cell_id ORDER BY _order) = 1"


def _has_duplicates(connection, rows: str) -> bool:
    [(dropped,)] = connection.execute(f"SELECT count(*) - count(DISTINCT cell_id) FROM ({rows})").fetchall()
    return dropped > 0


def sql_string(value: str) -> str:
    """``value`` as a SQL string literal: the one quoting function for every string
    sweeper writes into SQL (standard SQL: a quote is doubled, nothing else is special)."""
    if "\x00" in value:
        raise ValueError("a SQL string cannot hold NUL")
    return "'" + value.replace("'", "''") + "'"


def _sql_list(values: list) -> str:
    return "[" + ", ".join(sql_string(v) if isinstance(v, str) else str(int(v)) for v in values) + "]"


_GLOB = "*?["  # what DuckDB reads as a pattern in a file name


def scan_pattern(path: str) -> str:
    """The pattern DuckDB's ``read_parquet`` reads as exactly ``path``: each glob character
    in brackets (``[*]``), so ``runs[old]/`` is not read as ``runso/``, ``runsl/``...
    A path with both a backslash and a glob character has no such pattern (``scannable``)."""
    if not scannable([path]):
        raise ValueError(f"DuckDB cannot scan {path!r} exactly")
    return "".join(f"[{c}]" if c in _GLOB else c for c in path)


def scannable(paths: list[str]) -> bool:
    """DuckDB can read each of ``paths`` by a pattern that matches it alone (a backslash
    is a separator inside DuckDB's globs, so it cannot sit beside an escaped character)."""
    return not any("\\" in path and any(c in path for c in _GLOB) for path in paths)


def _launch_table(launches: list[dict]):
    import pyarrow as pa

    records = [{**record, "overrides": list(record.get("overrides", [])),
                "versions": json.dumps(record.get("versions", {}), sort_keys=True)} for record in launches]
    schema = pa.schema([("launch_id", pa.string()), ("started_at", pa.string()), ("grid_name", pa.string()),
                        ("grid_file", pa.string()), ("grid_sha256", pa.string()), ("grid_text", pa.string()),
                        ("overrides", pa.list_(pa.string())), ("grid_resolved", pa.string()),
                        ("versions", pa.string())])
    return pa.Table.from_pylist(records, schema=schema)


def fetch(connection, sql: str):
    """Run one statement; its result as a pyarrow Table, or a one-line UserError."""
    import duckdb

    try:
        relation = connection.sql(sql)
        if relation is None:  # a statement that returns nothing (e.g. SET)
            raise UserError("query returned no result set; write a SELECT")
        # DuckDB 2 renamed arrow() to to_arrow_table().
        return (getattr(relation, "to_arrow_table", None) or relation.arrow)()
    except duckdb.Error as error:
        raise UserError(f"query failed: {_first_line(error)}") from None


def _first_line(error: Exception) -> str:
    import duckdb

    line = str(error).splitlines()[0]
    return line + " (raise --memory-limit)" if isinstance(error, duckdb.OutOfMemoryException) else line


def open_store(results: str, memory_limit: str | int = DEFAULT_MEMORY_LIMIT, with_diagnostics: bool = True):
    """A locked connection over the store at ``results`` (``connect_store``); one that
    DuckDB cannot scan in place (another filesystem, a path it cannot name exactly) is
    read into memory first. Any DuckDB failure while setting up is one line."""
    import duckdb
    import pyarrow.fs as pafs

    location = store.locate(results)
    store.require_results(location)
    found = store.survey(location)
    try:
        # DuckDB reads local files without extensions
        if not isinstance(location.fs, pafs.LocalFileSystem) or not scannable([f.path for f in found.fragments]):
            return connect(store.read(location).table, store.launches(location, found), memory_limit,
                           with_diagnostics)
        return connect_store(location, store.launches(location, found), memory_limit, with_diagnostics, found)
    except duckdb.Error as error:
        raise UserError(f"reading {results} failed: {_first_line(error)}") from None


def run(results: str, sql: str, memory_limit: str | int = DEFAULT_MEMORY_LIMIT):
    """Run ``sql`` against the store at ``results``; returns a pyarrow Table. The
    diagnostics are computed only for a query that names them."""
    connection = open_store(results, memory_limit, with_diagnostics="diagnostics" in sql.lower())
    try:
        return fetch(connection, sql)
    finally:
        connection.close()


def render(table, fmt: str) -> str:
    if fmt == "csv":
        return _csv(table)
    if fmt == "json":
        return json.dumps(_records(table), indent=2, default=str)
    raise ValueError(f"render: unknown format {fmt!r}")


def _records(table) -> list[dict[str, Any]]:
    records = table.to_pylist()
    for record in records:  # JSON has no NaN: write null
        for key, value in record.items():
            if isinstance(value, float) and math.isnan(value):
                record[key] = None
    return records


def _csv(table) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    for record in table.to_pylist():
        writer.writerow([_cell_text(v) for v in record.values()])
    return buffer.getvalue()


def _cell_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return ";".join(str(v) for v in value)
    return str(value)


def rich_table(table):
    """A rich Table for the terminal. Column names and values are the user's (an alias, a
    label): Text objects, so rich never reads them as markup or emoji codes."""
    from rich.table import Table
    from rich.text import Text

    out = Table(show_edge=False, header_style="bold")
    for name in table.column_names:
        out.add_column(Text(name), justify="right" if _numeric(table, name) else "left")
    for record in table.to_pylist():
        out.add_row(*[Text(_cell_text(v)) for v in record.values()])
    return out


def _numeric(table, name: str) -> bool:
    import pyarrow.types as t

    dtype = table.schema.field(name).type
    return t.is_integer(dtype) or t.is_floating(dtype) or t.is_decimal(dtype)

"""Query: read-only SQL over a result store.

The store is read with pyarrow (so any filesystem the store supports works, and damaged
fragments are skipped) and handed to an in-memory DuckDB, with these names:

- ``results``: the rows, one per cell (the store's schema);
- ``robust``: mean, standard deviation and variance across folds of every cell, plus the
  worst case over attacks at each budget (per sample: robust only if every attack failed);
- ``fits``: each configuration that fits each MCU profile (computed from the footprint
  and the profiles, ``targeted`` when the grid named it), with its flash, RAM and accuracy;
- ``diagnostics``: the gradient-masking checks (sweeper.diagnostics), one row per judgement;
- ``launches``: the provenance of every launch (grid file and hash, versions, start time);
- ``mcus``: the MCU profiles sweeper knows.

External access is switched off and the configuration locked before the user's SQL runs,
so a query reads these and nothing else, writes nowhere, and stays under its memory limit.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from sweeper import store
from sweeper.errors import UserError

FORMATS = ("table", "csv", "json", "parquet")
DEFAULT_MEMORY_LIMIT = "2GB"

# The fold axis is averaged away; everything else that determines a result stays a key
# (store.CONFIG_COLUMNS and store.POINT_COLUMNS), so rows that differ in parameters,
# sample count or code version are never averaged together.
_CONFIG = ", ".join(store.CONFIG_COLUMNS)
_POINT = ", ".join(store.POINT_COLUMNS)
_ACCURACIES = """
               count(DISTINCT fold)::INTEGER AS folds, count(*)::INTEGER AS rows,
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
               string_agg(DISTINCT footprint_source, '+') AS footprint_source"""
# Worst case over attacks at each budget, the robustness-leaderboard convention: a sample
# counts as robust only if every attack run at that (norm, eps) on it failed. Built from
# the per-sample outcomes of one fold's rows with the same samples, then averaged over
# folds like any other point; its label names the attacks it covers.
_SAME = " AND ".join(f"covered.{c} IS NOT DISTINCT FROM per_fold.{c}"  # NULL-safe: schema-2 keys
                     for c in [*store.CONFIG_COLUMNS, "fold", "norm", "eps", "n_samples"])
_WORST_CASE = f"""
        WITH attacked AS (
            SELECT * FROM results
            WHERE attack <> 'none' AND eps > 0 AND adv_correct IS NOT NULL),
        per_sample AS (
            SELECT {_CONFIG}, fold, norm, eps, n_samples, sample,
                   bool_and(ok) AS ok, bool_and(clean) AS clean
            FROM (SELECT {_CONFIG}, fold, norm, eps, n_samples, unnest(sample_index) AS sample,
                         unnest(adv_correct) AS ok, unnest(clean_correct) AS clean FROM attacked)
            GROUP BY ALL),
        per_fold AS (
            SELECT {_CONFIG}, fold, norm, eps, n_samples, avg(ok::DOUBLE) AS adv_acc,
                   sum((clean AND NOT ok)::INTEGER) / nullif(sum(clean::INTEGER), 0) AS attack_success_rate
            FROM per_sample GROUP BY ALL),
        covered AS (
            SELECT {_CONFIG}, fold, norm, eps, n_samples, min(eps_label) AS eps_label,
                   string_agg(DISTINCT attack_label, '+' ORDER BY attack_label) AS covers,
                   count(DISTINCT attack_label) AS attacks, any_value(clean_acc) AS clean_acc,
                   any_value(test_acc) AS test_acc, max(params) AS params,
                   max(flash_kb) AS flash_kb, max(ram_kb) AS ram_kb, max(tflite_kb) AS tflite_kb,
                   max(arena_kb) AS arena_kb, max(flash_packed_kb) AS flash_packed_kb,
                   max(ram_packed_kb) AS ram_packed_kb, any_value(footprint_source) AS footprint_source,
                   NULL::DOUBLE AS deployed_clean_acc, NULL::DOUBLE AS deployed_adv_acc
            FROM attacked GROUP BY {_CONFIG}, fold, norm, eps, n_samples)
        SELECT {', '.join('covered.' + c for c in store.CONFIG_COLUMNS)}, 'worst_case' AS attack,
               'worst(' || covers || ')' AS attack_label, covered.norm AS norm, covered.eps AS eps,
               eps_label, '{{"covers": "' || covers || '"}}' AS attack_params,
               covered.n_samples AS n_samples, {_ACCURACIES.replace("fold)", "covered.fold)").replace(
                   "(n_samples)", "(covered.n_samples)")}
        FROM covered JOIN per_fold ON {_SAME}
        WHERE attacks >= 2
        GROUP BY ALL"""
VIEWS = {  # in creation order: robust reads worst_case
    "worst_case": _WORST_CASE,
    "robust": f"""
        SELECT {_CONFIG}, {_POINT}, {_ACCURACIES}
        FROM results GROUP BY ALL
        UNION ALL BY NAME
        SELECT * FROM worst_case""",
    # Fit is computed here from the footprint and the MCU profiles, never frozen in a row:
    # a corrected profile changes the answer for every stored model.
    "fits": f"""
        SELECT m.name AS mcu, list_contains(r.mcu_targets, m.name) AS targeted,
               {', '.join('r.' + c for c in store.CONFIG_COLUMNS)}, r.footprint_source,
               max(r.flash_kb) AS flash_kb, max(r.ram_kb) AS ram_kb,
               any_value(m.flash_kb) AS mcu_flash_kb, any_value(m.ram_block_kb) AS mcu_ram_block_kb,
               count(DISTINCT r.fold)::INTEGER AS folds, avg(r.test_acc) AS test_acc_mean,
               stddev_samp(r.test_acc) AS test_acc_std
        FROM (SELECT DISTINCT {_CONFIG}, fold, job_id, test_acc, flash_kb, ram_kb, footprint_source,
                              mcu_targets FROM results) AS r
        JOIN mcus AS m ON r.flash_kb <= m.flash_kb AND r.ram_kb <= m.ram_block_kb
        GROUP BY ALL""",
}


def connect(rows, launches: list[dict] | None = None, memory_limit: str = DEFAULT_MEMORY_LIMIT,
            with_diagnostics: bool = True):
    """An in-memory DuckDB holding ``rows`` and every derived view, locked read-only.
    ``with_diagnostics`` False leaves out the one table that costs time to build."""
    import duckdb
    import pyarrow as pa

    from sweeper import diagnostics
    from sweeper.footprint import MCUS

    connection = duckdb.connect(":memory:")
    connection.register("results", rows)
    if with_diagnostics:
        connection.register("diagnostics", diagnostics.diagnose(rows))
    connection.register("launches", _launch_table(launches or []))
    mcus = [{"name": name, "flash_kb": float(MCUS.get(name).flash_kb), "ram_kb": float(MCUS.get(name).ram_kb),
             "ram_block_kb": float(MCUS.get(name).ram_block_kb), "description": MCUS.get(name).description,
             "source": MCUS.get(name).source} for name in MCUS.names()]
    connection.register("mcus", pa.Table.from_pylist(mcus))
    for name, sql in VIEWS.items():
        connection.execute(f"CREATE VIEW {name} AS {sql}")
    try:
        connection.execute(f"SET memory_limit = '{memory_limit}'")
    except duckdb.Error as error:
        connection.close()
        raise UserError(f"--memory-limit: {str(error).splitlines()[0]}") from None
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection


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
        raise UserError(f"query failed: {str(error).splitlines()[0]}") from None


def open_store(results: str, memory_limit: str = DEFAULT_MEMORY_LIMIT, with_diagnostics: bool = True):
    location = store.locate(results)
    store.require_results(location)
    return connect(store.read(location).table, store.launches(location), memory_limit, with_diagnostics)


def run(results: str, sql: str, memory_limit: str = DEFAULT_MEMORY_LIMIT):
    """Run ``sql`` against the store at ``results``; returns a pyarrow Table. The
    diagnostics are computed only for a query that names them."""
    connection = open_store(results, memory_limit, with_diagnostics="diagnostics" in sql.lower())
    try:
        return fetch(connection, sql)
    finally:
        connection.close()


def write_parquet(table, path: str) -> None:
    """Write a query result as one Parquet file, atomically."""
    import pyarrow.parquet as pq

    _write_atomically(path, lambda temporary: pq.write_table(table, temporary))


def write_text(text: str, path: str) -> None:
    from pathlib import Path

    _write_atomically(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


def _write_atomically(path: str, write) -> None:
    """Write to a temporary file beside ``path``, then rename: never a half-written file."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError(f"--output: folder {folder} does not exist")
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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
    """A rich Table for the terminal."""
    from rich.table import Table

    out = Table(show_edge=False, header_style="bold")
    for name in table.column_names:
        out.add_column(name, justify="right" if _numeric(table, name) else "left")
    for record in table.to_pylist():
        out.add_row(*[_cell_text(v) for v in record.values()])
    return out


def _numeric(table, name: str) -> bool:
    import pyarrow.types as t

    dtype = table.schema.field(name).type
    return t.is_integer(dtype) or t.is_floating(dtype) or t.is_decimal(dtype)

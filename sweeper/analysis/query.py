"""Query: read-only SQL over a result store.

DuckDB scans the store's Parquet files itself (``read_parquet`` over the explicit list of
fragments whose footers carry sweeper's schema version; damaged and foreign files are
left out), so a query reads only the columns and row groups it needs and nothing is
loaded whole. Older schemas are read through the same rule as ``store.read`` (``store.schema.sources``), and a
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
- ``builds``: the store's build records (``store.builds``), one per training job and
  build format (int8, lut, int4), accepted or not;
- ``config_builds``: per configuration and build format, what it can ship over its folds
  (the int8 build's figures from the rows, the sub-byte builds' from the records);
- ``fits``: each accepted build of each configuration that fits each MCU profile
  (computed from the footprints and the profiles, ``targeted`` when the grid named it),
  with its format, flash, RAM and accuracy;
- ``latency``: each configuration's estimated latency on each MCU profile with each
  runtime calibrated for its core (``latency_calibrations``), labelled an estimate;
- ``diagnostics``: the gradient-masking checks (sweeper.analysis.diagnostics), one row per judgement;
- ``launches``: the provenance of every launch (grid file and hash, versions, start time);
- ``mcus``: the MCU profiles sweeper knows (with core and clock);
  ``latency_calibrations``: the published MLPerf Tiny results latency is estimated from.

External access is switched off and the configuration locked (``_seal``) before the
user's SQL runs, so a query reads these and nothing else, writes nowhere, and stays under
its memory limit. The views' SQL is ``views.py``'s; connecting, quoting and naming files
in SQL is ``duck.py``'s. Results render as a terminal table, CSV or JSON here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from sweeper import store
from sweeper.analysis import diagnostics
from sweeper.analysis.duck import (DEFAULT_MEMORY_LIMIT, ORDERED, fetch, first_line, new_connection, ordered_rows_sql,
                                   scan_pattern, scannable, sql_list)
from sweeper.analysis.views import VIEWS
from sweeper.errors import UserError
from sweeper.keys import CONFIG_COLUMNS

FORMATS = ("table", "csv", "json", "parquet")


def connect(rows, launches: list[dict] | None = None, memory_limit: str | int = DEFAULT_MEMORY_LIMIT,
            with_diagnostics: bool = True, builds=None):
    """An in-memory DuckDB holding ``rows`` (a pyarrow Table), the build records
    ``builds`` (a Table in ``store.BUILD_SCHEMA``; None: none) and every derived view,
    locked read-only. ``with_diagnostics`` False leaves out the one table that costs time
    to build."""
    connection = new_connection(memory_limit)
    connection.register("results", rows)
    if with_diagnostics:
        connection.register("diagnostics", diagnostics.diagnose(rows))
    return _seal(connection, launches, [], builds=builds)


def connect_store(location: store.Location, launches: list[dict] | None = None,
                  memory_limit: str | int = DEFAULT_MEMORY_LIMIT, with_diagnostics: bool = True,
                  found: store.Survey | None = None):
    """As ``connect``, with ``results`` a view that scans the store's local fragments in
    place (``found``: the caller's survey of them, if it has one); the diagnostics are
    computed in DuckDB from the same view."""
    found = store.survey(location) if found is None else found
    connection = new_connection(memory_limit)
    paths = [fragment.path for fragment in found.fragments]
    connection.execute(f"CREATE VIEW {ORDERED} AS {ordered_rows_sql(connection, found)}")
    connection.execute(f"CREATE VIEW results AS SELECT * EXCLUDE (_order) FROM {ORDERED}")
    if with_diagnostics:
        connection.register("diagnostics", diagnostics.diagnose_relation(connection, ORDERED))
    stored = _current_worst_case(location, found)
    views = {"worst_case": f"SELECT * FROM read_parquet({sql_list([scan_pattern(stored)])})"} if stored else {}
    return _seal(connection, launches, paths + ([stored] if stored else []), views,
                 store.read_builds(location).table)


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



def _seal(connection, launches: list[dict] | None, paths: list[str], views: dict[str, str] | None = None,
          builds=None):
    """Add the launches, the build records, the MCU profiles, the latency calibrations and
    the views, then lock the connection: no file but the store's fragments (``paths``) can
    be read, nothing written, nothing reset."""
    connection.register("launches", _launch_table(launches or []))
    connection.register("builds", store.BUILD_SCHEMA.empty_table() if builds is None else builds)
    for name, table in _profiles().items():
        connection.register(name, table)
    for name, sql in {**VIEWS, **(views or {})}.items():  # ``views`` replace some (dict order kept)
        connection.execute(f"CREATE VIEW {name} AS {sql}")
    if paths:  # each file as DuckDB opens it, and as the pattern that names it
        connection.execute(f"SET allowed_paths = {sql_list(sorted({*paths, *map(scan_pattern, paths)}))}")
    connection.execute("SET enable_external_access = false")
    connection.execute("SET lock_configuration = true")
    return connection



def _profiles() -> dict:
    """The MCU profiles (``mcus``) and the published latency calibrations
    (``latency_calibrations``, ``deploy.latency.CALIBRATIONS``) as tables."""
    import pyarrow as pa

    from sweeper.deploy.latency import CALIBRATIONS
    from sweeper.deploy.mcus import MCUS

    mcus = [{"name": name, "flash_kb": float(MCUS.get(name).flash_kb), "ram_kb": float(MCUS.get(name).ram_kb),
             "ram_block_kb": float(MCUS.get(name).ram_block_kb), "description": MCUS.get(name).description,
             "source": MCUS.get(name).source, "core": MCUS.get(name).core,
             "clock_mhz": float(MCUS.get(name).clock_mhz)} for name in MCUS.names()]
    calibrations = [{"runtime": c.runtime, "core": c.core, "board": c.board, "clock_mhz": float(c.clock_mhz),
                     "cycles_per_mac": c.cycles_per_mac, "source": c.source} for c in CALIBRATIONS]
    return {"mcus": pa.Table.from_pylist(mcus), "latency_calibrations": pa.Table.from_pylist(calibrations)}


def _launch_table(launches: list[dict]):
    import pyarrow as pa

    records = [{**record, "overrides": list(record.get("overrides", [])),
                "versions": json.dumps(record.get("versions", {}), sort_keys=True)} for record in launches]
    schema = pa.schema([("launch_id", pa.string()), ("started_at", pa.string()), ("grid_name", pa.string()),
                        ("grid_file", pa.string()), ("grid_sha256", pa.string()), ("grid_text", pa.string()),
                        ("overrides", pa.list_(pa.string())), ("grid_resolved", pa.string()),
                        ("versions", pa.string())])
    return pa.Table.from_pylist(records, schema=schema)



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
                           with_diagnostics, store.read_builds(location).table)
        return connect_store(location, store.launches(location, found), memory_limit, with_diagnostics, found)
    except duckdb.Error as error:
        raise UserError(f"reading {results} failed: {first_line(error)}") from None


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

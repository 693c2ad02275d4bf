"""Query: read-only SQL over a result store, with the rows exposed as table ``results``.

The store is read with pyarrow (so any filesystem the store supports works, and damaged
fragments are skipped) and handed to an in-memory DuckDB. External access is switched
off before the user's SQL runs, so a query can read the results and nothing else, and
write nowhere.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from sweeper import store
from sweeper.errors import UserError

FORMATS = ("table", "csv", "json")


def run(results: str, sql: str, memory_limit: str = "2GB"):
    """Run ``sql`` against the store at ``results``; returns a pyarrow Table."""
    import duckdb

    location = store.locate(results)
    store.require_results(location)
    rows = store.read(location).table
    connection = duckdb.connect(":memory:")
    try:
        connection.register("results", rows)
        connection.execute(f"SET memory_limit = '{memory_limit}'")
        connection.execute("SET enable_external_access = false")
        connection.execute("SET lock_configuration = true")
        relation = connection.sql(sql)
        if relation is None:  # a statement that returns nothing (e.g. SET)
            raise UserError("query returned no result set; write a SELECT")
        # DuckDB 2 renamed arrow() to to_arrow_table().
        fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
        return fetch()
    except duckdb.Error as error:
        raise UserError(f"query failed: {str(error).splitlines()[0]}") from None
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

"""The one DuckDB connection module: how every sweeper query connects (memory limit,
spills outside the checkout), runs a statement into Arrow, quotes a string and names a
file exactly in SQL, and reads a store's fragments in the current schema, one row per
cell (``ordered_rows_sql``).

No user string is spliced into SQL as text: the memory limit is parsed as a size and
passed as a configuration value, and every path reaches DuckDB through ``sql_string``
(quotes doubled) and ``scan_pattern`` (glob characters escaped), so a store under
``runs[old]/`` or ``it's/`` reads exactly its own files. DuckDB is imported when a
connection is made, never at import.
"""

from __future__ import annotations

import os
import re

from sweeper import store
from sweeper.errors import UserError

DEFAULT_MEMORY_LIMIT = "2GB"
# DuckDB's units: KB, MB... are powers of 1000, KiB, MiB... of 1024.
_UNITS = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
          "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)", re.IGNORECASE | re.ASCII)
# Below this DuckDB cannot even set up the views (it fails to allocate its first blocks).
MIN_MEMORY_LIMIT = 16 * 1024**2


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



def to_arrow(relation):
    """A DuckDB relation's result as a pyarrow Table (DuckDB 2 renamed ``arrow()`` to
    ``to_arrow_table()``)."""
    return (getattr(relation, "to_arrow_table", None) or relation.arrow)()


def fetch(connection, sql: str):
    """Run one statement; its result as a pyarrow Table, or a one-line UserError."""
    import duckdb

    try:
        relation = connection.sql(sql)
        if relation is None:  # a statement that returns nothing (e.g. SET)
            raise UserError("query returned no result set; write a SELECT")
        return to_arrow(relation)
    except duckdb.Error as error:
        raise UserError(f"query failed: {first_line(error)}") from None


def first_line(error: Exception) -> str:
    import duckdb

    line = str(error).splitlines()[0]
    return line + " (raise --memory-limit)" if isinstance(error, duckdb.OutOfMemoryException) else line



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
             f"{sql_list([o for o, _ in members])}[file_index::BIGINT + 1]::BIGINT * {1 << 40} + file_row_number "
             "AS _order "
             f"FROM read_parquet({sql_list([scan_pattern(f.path) for _, f in members])}, union_by_name = true)"
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


def sql_list(values: list) -> str:
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


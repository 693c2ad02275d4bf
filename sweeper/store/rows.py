"""Reading the rows: every readable fragment in the current schema (``schema.conform``:
an older fragment's columns under their current names, nulls for what it lacks), one row
per cell (the earliest fragment's row wins), damaged and foreign files reported, never
read."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from sweeper.errors import UserError
from sweeper.store.files import Location
from sweeper.store.fragments import DamagedFile, fragments, inspect, sort_out
from sweeper.store.schema import FRAGMENT_PREFIX, ROWS_DIR, SCHEMA, conform, sources


@dataclass(frozen=True)
class ReadResult:
    table: pa.Table
    damaged: tuple[str, ...]  # fragments that could not be read
    duplicates: int = 0  # rows dropped: their cell was already in an earlier fragment
    foreign: tuple[str, ...] = ()  # files that are not sweeper's: never read, never touched
    read: tuple[str, ...] = ()  # the sweeper fragments the table holds
    why: dict[str, str] = field(default_factory=dict, compare=False)  # damaged path -> what is wrong




def read_fragment(location: Location, path: str, columns: list[str] | None) -> pa.Table:
    """One fragment's rows as the current schema's ``columns`` (default: all). Only files
    whose footer carries sweeper's schema version are fragments (``inspect``): anything
    else (a part-0.parquet some other tool dropped here) would read as all-null rows."""
    columns = columns or SCHEMA.names
    with location.fs.open_input_file(path) as handle:
        file, fragment = inspect(path, handle)
        wanted = [source for _, source, _ in sources(fragment.columns, fragment.version, columns) if source]
        try:
            table = file.read(columns=list(dict.fromkeys(wanted)))
        except (pa.ArrowException, OSError):
            raise DamagedFile("unreadable data (cut short?)") from None
    if "cell_id" in table.column_names and table.column("cell_id").null_count:
        raise DamagedFile("null cell_id")
    try:
        return conform(table, fragment.version, columns)
    except pa.ArrowException as error:  # e.g. an integer that does not fit the schema's type
        raise DamagedFile(f"values that do not fit the schema: {str(error).splitlines()[0]}") from None


def read(location: Location, columns: list[str] | None = None) -> ReadResult:
    """Every readable row, one per cell (the earliest fragment wins)."""
    return read_fragments(location, fragments(location), columns)


def read_fragments(location: Location, paths: list[str], columns: list[str] | None = None) -> ReadResult:
    wanted = None if columns is None else list(dict.fromkeys(["cell_id", *columns]))
    found, why, foreign = sort_out(paths, lambda path: read_fragment(location, path, wanted))
    tables, read_paths = [table for _, table in found], [path for path, _ in found]
    schema = SCHEMA if wanted is None else pa.schema([SCHEMA.field(c) for c in wanted])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table, dropped = _first_row_per_cell(table)
    if columns is not None:
        table = table.select(columns)
    return ReadResult(table, tuple(why), dropped, tuple(foreign), tuple(read_paths), why)


def _first_row_per_cell(table: pa.Table) -> tuple[pa.Table, int]:
    seen: set[str] = set()
    keep = []
    for index, cell in enumerate(table.column("cell_id").to_pylist()):
        if cell not in seen:
            seen.add(cell)
            keep.append(index)
    return (table, 0) if len(keep) == table.num_rows else (table.take(keep), table.num_rows - len(keep))



def done_cell_ids(location: Location) -> set[str]:
    return set(read(location, ["cell_id"]).table.column("cell_id").to_pylist())


def require_results(location: Location) -> list[str]:
    """Fragments of an existing store, or a clear error when there is none."""
    found = fragments(location)
    if not found:
        raise UserError(f"{location.text}: no sweeper results here "
                        f"(no {ROWS_DIR}/{FRAGMENT_PREFIX}*.parquet files)")
    return found


"""What a fragment is, decided in one place (``inspect``) from a file's first bytes and
footer alone: a file that is not Parquet, or Parquet without sweeper's schema version, is
*foreign* (never read, moved or deleted); a Parquet file cut short, or whose footer is not
one sweeper writes (version, provenance, column types, cell ids), is *damaged* (skipped,
reported, set aside). ``survey`` sorts a store's row files so; ``write_rows`` adds one.

Each finished training job's rows are written as one new fragment, under a staging name
then renamed (``files.put_bytes``), so readers never see half a file and a crash loses at
most the jobs in flight.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from sweeper.store.files import Location, list_files, write_file
from sweeper.store.provenance import Launch, schema_with
from sweeper.store.schema import (COLUMNS, FRAGMENT_PREFIX, META_COMPACTION, META_LAUNCHES, META_VERSION, ROWS_DIR,
                                  SCHEMA, sources)

T = TypeVar("T")


def fragments(location: Location) -> list[str]:
    """The row files, oldest first (their names start with the UTC time of writing).
    Schema-1 stores kept them at the top level; they are read too, and compaction moves
    them into rows/."""
    found = list_files(location, ROWS_DIR, FRAGMENT_PREFIX, ".parquet")
    legacy = list_files(location, None, FRAGMENT_PREFIX, ".parquet")
    return sorted(found + legacy, key=lambda path: path.rpartition("/")[2])



class ForeignFile(Exception):
    """A file among the fragments that is not sweeper's: not Parquet at all (its first
    bytes are not Parquet's magic), or Parquet without sweeper's schema version in its
    footer. Never read, moved or deleted; ``check`` lists it."""


class DamagedFile(Exception):
    """A Parquet file among the fragments that cannot be read as sweeper's rows: cut
    short, or a footer sweeper never writes (a schema version that is not a number,
    provenance that is not launch records, a column of the wrong type, no cell ids). The
    message says why. Readers skip it, ``check`` reports it, compact and launch set it
    aside (``set_aside``)."""


PARQUET_MAGIC = b"PAR1"  # the first (and last) bytes of every Parquet file


def inspect(path: str, handle) -> tuple[pq.ParquetFile, "Fragment"]:
    """Sort one open file out from its first bytes and its footer alone: the Fragment it
    is (with the ParquetFile to read it from), or ForeignFile, or DamagedFile. The one
    place that decides what a fragment is: every reader, ``check`` and compaction use it."""
    if handle.read(len(PARQUET_MAGIC)) != PARQUET_MAGIC:
        raise ForeignFile(path)  # e.g. notes saved as part-notes.parquet: not ours to move
    handle.seek(0)
    try:
        file = pq.ParquetFile(handle)
        schema = file.schema_arrow
    except (pa.ArrowException, OSError):
        raise DamagedFile("unreadable Parquet footer (cut short?)") from None
    metadata = schema.metadata or {}
    if META_VERSION not in metadata:
        raise ForeignFile(path)
    version = _schema_version(metadata[META_VERSION])
    launches = _parse_launches(metadata.get(META_LAUNCHES, b"[]"))
    _check_columns(schema, version)
    _check_cell_ids(file)
    compaction = metadata.get(META_COMPACTION)
    return file, Fragment(path, version, tuple(schema.names), file.metadata.num_rows,
                          compaction.decode("utf-8", "replace") if compaction else None, launches)


def _schema_version(raw: bytes) -> int:
    text = raw.decode("utf-8", "replace")
    if not (text.isascii() and text.isdigit() and int(text) >= 1):
        raise DamagedFile(f"schema version {text!r} is not a positive integer")
    return int(text)


def _parse_launches(raw: bytes) -> tuple[dict[str, Any], ...]:
    """The provenance records of a footer, checked field by field (``Launch``'s types):
    a record the query's ``launches`` table cannot hold makes the file damaged."""
    try:
        records = json.loads(raw)
    except ValueError:  # UnicodeDecodeError included
        raise DamagedFile("provenance (sweeper_launches) is not JSON") from None
    if not isinstance(records, list) or not all(_is_launch(record) for record in records):
        raise DamagedFile("provenance (sweeper_launches) is not a list of launch records")
    return tuple(records)


def _is_launch(record: Any) -> bool:
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("launch_id", "started_at")):
        return False
    texts = ("grid_name", "grid_file", "grid_sha256", "grid_text", "grid_resolved")
    overrides, versions = record.get("overrides", []), record.get("versions", {})
    return (all(isinstance(record.get(k, ""), str) for k in texts)
            and isinstance(overrides, list) and all(isinstance(o, str) for o in overrides)
            and isinstance(versions, dict))




def _check_columns(schema: pa.Schema, version: int) -> None:
    """Every column the current schema reads from this file has a type it casts to
    losslessly in pyarrow and DuckDB alike; a fragment without string cell ids is no
    fragment (compaction would fold its rows in as all-null cells)."""
    present = {field.name: field.type for field in schema}
    if "cell_id" not in present or not (pa.types.is_string(present["cell_id"])
                                        or pa.types.is_large_string(present["cell_id"])):
        raise DamagedFile("no cell_id column of strings")
    for name, source, _ in sources(present, version):
        if source is not None and not _compatible(present[source], SCHEMA.field(name).type):
            raise DamagedFile(f"column {source} is {present[source]}, not {SCHEMA.field(name).type}")


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    """``actual`` reads as ``expected`` without losing meaning: the same kind of value
    (a narrower or wider integer, an integer as a float, any timestamp), or all nulls."""
    types = pa.types
    if actual == expected or types.is_null(actual):
        return True
    if types.is_dictionary(actual):
        return _compatible(actual.value_type, expected)
    if types.is_list(expected):
        return (types.is_list(actual) or types.is_large_list(actual)) and _compatible(actual.value_type,
                                                                                   expected.value_type)
    kinds = [(types.is_string, lambda t: types.is_string(t) or types.is_large_string(t)),
             (types.is_floating, lambda t: types.is_floating(t) or types.is_integer(t)),
             (types.is_integer, types.is_integer), (types.is_timestamp, types.is_timestamp),
             (types.is_boolean, types.is_boolean)]
    return any(is_kind(expected) and accepts(actual) for is_kind, accepts in kinds)


def _check_cell_ids(file: pq.ParquetFile) -> None:
    """No null cell id, from the row groups' statistics (where the writer kept them; the
    data is checked again when it is read)."""
    metadata = file.metadata
    columns = [j for j in range(metadata.num_columns) if metadata.schema.column(j).path == "cell_id"]
    for group in range(metadata.num_row_groups):
        for j in columns:
            statistics = metadata.row_group(group).column(j).statistics
            if statistics is not None and statistics.has_null_count and statistics.null_count:
                raise DamagedFile("null cell_id")



@dataclass(frozen=True)
class Fragment:
    """A sweeper fragment as its footer describes it (nothing of its data read)."""

    path: str
    version: int  # its SCHEMA_VERSION
    columns: tuple[str, ...]  # the columns it holds
    rows: int
    compaction: str | None = None  # the compaction that wrote it (META_COMPACTION), if one did
    launches: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)  # its provenance


@dataclass(frozen=True)
class Survey:
    """The row files of a store, sorted out from their footers alone: what a reader that
    scans them itself (DuckDB) may read, in the order that decides which copy of a cell
    stored twice counts (the earliest fragment, then the earliest row in it)."""

    fragments: tuple[Fragment, ...]
    damaged: tuple[str, ...]  # the footer cannot be read (e.g. a torn file) or is not one sweeper writes
    foreign: tuple[str, ...]  # not Parquet, or no sweeper schema version in the footer: never read
    why: dict[str, str] = field(default_factory=dict, compare=False)  # damaged path -> what is wrong

    @property
    def fingerprint(self) -> str:
        """Names and row counts of the readable files: a file derived from the rows is
        current while this is unchanged (files are never rewritten in place, only added
        under new names or deleted)."""
        digest = hashlib.sha256()
        for fragment in sorted(self.fragments, key=lambda f: f.path):
            digest.update(f"{fragment.path.rpartition('/')[2]}:{fragment.rows}\n".encode())
        return digest.hexdigest()[:32]

    @property
    def one_compaction(self) -> bool:
        """The files are exactly what one compaction wrote, so they hold each cell once
        between them (compact wrote them from one de-duplicated table). A crash between
        writing them and deleting the old fragments leaves files without that id, or
        with another."""
        ids = {fragment.compaction for fragment in self.fragments}
        return len(ids) == 1 and None not in ids


def survey(location: Location, paths: list[str] | None = None) -> Survey:
    """Sort ``paths`` (default: every fragment) into readable, damaged and foreign by
    reading their first bytes and Parquet footers only (``inspect``)."""
    def footer(path: str) -> Fragment:
        with location.fs.open_input_file(path) as handle:
            return inspect(path, handle)[1]

    found, why, foreign = sort_out(fragments(location) if paths is None else paths, footer)
    return Survey(tuple(fragment for _, fragment in found), tuple(why), tuple(foreign), why)


def sort_out(paths: Iterable[str], read: Callable[[str], T]) -> tuple[list[tuple[str, T]], dict[str, str], list[str]]:
    """``read`` each of ``paths``, sorting them as ``inspect`` decides: (path, what ``read``
    gave) for each fragment read, why each damaged one is damaged (an unreadable file is
    damaged too), and the foreign files, never read."""
    found, why, foreign = [], {}, []
    for path in paths:
        try:
            found.append((path, read(path)))
        except ForeignFile:
            foreign.append(path)
        except DamagedFile as error:
            why[path] = str(error)
        except (pa.ArrowException, OSError):
            why[path] = "unreadable"
    return found, why, foreign



def launches(location: Location, found: Survey | None = None) -> list[dict[str, Any]]:
    """The provenance records of every readable fragment (of ``found``, the caller's
    survey, if it has one), oldest launch first."""
    records: dict[str, dict[str, Any]] = {}
    for fragment in (survey(location) if found is None else found).fragments:
        for record in fragment.launches:
            records.setdefault(record["launch_id"], record)
    return sorted(records.values(), key=lambda record: record["started_at"])




# ---------------------------------------------------------------- writing

def to_table(rows: Iterable[dict[str, Any]], launches: Iterable[Launch | dict] = ()) -> pa.Table:
    rows = [_coerce(row) for row in rows]
    missing = [name for name, _, _ in COLUMNS if rows and name not in rows[0]]
    if missing:
        raise ValueError(f"result rows lack columns: {', '.join(missing)}")
    return pa.Table.from_pylist(rows, schema=schema_with(launches))


def _coerce(row: dict[str, Any]) -> dict[str, Any]:
    finished = row.get("finished_at")
    if isinstance(finished, str):  # rows travel from workers as JSON
        row = {**row, "finished_at": datetime.fromisoformat(finished)}
    return row


def write_rows(location: Location, rows: list[dict[str, Any]], tag: str = "",
               launch: Launch | None = None) -> str | None:
    """Write rows as one new fragment (atomically); returns its path, or None if no rows."""
    if not rows:
        return None
    return write_table(location, to_table(rows, [launch] if launch else []), tag or "rows")


def write_table(location: Location, table: pa.Table, tag: str) -> str:
    name = f"{FRAGMENT_PREFIX}{_now_tag()}-{tag}-{uuid.uuid4().hex[:8]}.parquet"
    return write_file(location, f"{ROWS_DIR}/{name}", table)



def _now_tag() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


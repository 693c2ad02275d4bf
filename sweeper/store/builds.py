"""The store's build records: for every training job, one record per build format
``sweeper.deploy.builds`` makes (int8, lut, int4), accepted or not, with what it
measured and why it was refused, in a small Parquet dataset of its own::

    RESULTS/builds/job-<job_id>.parquet       one job's records, written by its trial
    RESULTS/builds/compacted-<id>.parquet     many jobs' records, merged when a launch ends

Why apart from the rows: a build is per trained model, not per cell, so its figures would
otherwise repeat on every row of the job, and a row's ``flash_kb`` keeps meaning the int8
build's. The columns are ``BUILD_COLUMNS`` (``build_columns.yaml``, the README's builds
table). ``write_builds`` adds a job's file atomically; ``read_builds`` reads every record
once per (job, format) (the first file in name order: a compacted one before a job's
own, which a crash between compaction's write and its deletions can leave behind), and
skips files that cannot be read as records (named in ``BuildsRead.damaged``, never
deleted); ``build_jobs`` says which jobs have records; ``compact_builds`` merges the
files. Stores from before builds have none: every reader then gets no record.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from sweeper.store.files import Location, list_files, naming, write_file
from sweeper.store.schema import column_or_null, read_columns

BUILDS_DIR = "builds"
BUILD_COLUMNS: list[tuple[str, pa.DataType, str]] = read_columns("build_columns.yaml")
BUILD_SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in BUILD_COLUMNS])
JOB_PREFIX, COMPACTED_PREFIX = "job-", "compacted-"


@dataclass(frozen=True)
class BuildsRead:
    table: pa.Table  # every record once, in BUILD_SCHEMA
    files: tuple[str, ...] = ()  # the files read
    damaged: tuple[str, ...] = ()  # files that could not be read as build records
    why: dict[str, str] = field(default_factory=dict, compare=False)  # damaged path -> what is wrong


def job_file(job_id: str) -> str:
    """A job's own file, relative to the store."""
    return f"{BUILDS_DIR}/{JOB_PREFIX}{job_id}.parquet"


def write_builds(location: Location, job_id: str, records: list[dict]) -> str:
    """A job's records as ``builds/job-<job_id>.parquet``, atomically (whole or absent)."""
    return write_file(location, job_file(job_id), pa.Table.from_pylist(records, schema=BUILD_SCHEMA))


def build_files(location: Location) -> list[str]:
    """The record files, compacted ones first (then by name)."""
    return list_files(location, BUILDS_DIR, COMPACTED_PREFIX, ".parquet") + \
        list_files(location, BUILDS_DIR, JOB_PREFIX, ".parquet")


def read_builds(location: Location, columns: list[str] | None = None) -> BuildsRead:
    """Every record once per (job, format), in ``BUILD_SCHEMA`` (``columns``: only those);
    a column a file lacks reads as null."""
    wanted = [name for name, _, _ in BUILD_COLUMNS] if columns is None else list(columns)
    keys = [name for name in ("job_id", "deploy_format") if name not in wanted]
    tables, read, damaged, why = [], [], [], {}
    for path in build_files(location):
        try:
            tables.append(_conform(_read(location, path), [*wanted, *keys]))
            read.append(path)
        except (pa.ArrowException, OSError, ValueError, KeyError) as error:
            damaged.append(path)
            why[path] = str(error).splitlines()[0] if str(error) else type(error).__name__
    schema = pa.schema([BUILD_SCHEMA.field(name) for name in [*wanted, *keys]])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return BuildsRead(_first_of_each(table).select(wanted), tuple(read), tuple(damaged), why)


def _read(location: Location, path: str) -> pa.Table:
    with naming(path), location.fs.open_input_file(path) as handle:
        return pq.read_table(handle)


def _conform(table: pa.Table, columns: list[str]) -> pa.Table:
    """``table`` with exactly ``columns`` in ``BUILD_SCHEMA``'s types (absent: null);
    a file without job ids or formats is not one of sweeper's."""
    if "job_id" not in table.column_names or "deploy_format" not in table.column_names:
        raise ValueError("no job_id and deploy_format columns: not build records")
    arrays = [column_or_null(table, BUILD_SCHEMA.field(name)) for name in columns]
    return pa.Table.from_arrays(arrays, schema=pa.schema([BUILD_SCHEMA.field(name) for name in columns]))


def _first_of_each(table: pa.Table) -> pa.Table:
    """The first record of each (job_id, deploy_format), in file order."""
    seen, keep = set(), []
    for index, key in enumerate(zip(table.column("job_id").to_pylist(), table.column("deploy_format").to_pylist())):
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return table.take(pa.array(keep, pa.int64())) if len(keep) < table.num_rows else table


def build_jobs(location: Location) -> frozenset[str]:
    """The jobs with records in the store: their builds are never made again."""
    return frozenset(read_builds(location, ["job_id"]).table.column("job_id").to_pylist())


def compact_builds(location: Location) -> int:
    """Merge every readable record file into one (complete before the others are
    deleted, so a crash leaves duplicates, which readers drop, never a lost record).
    Returns the records kept; damaged files stay where they are."""
    found = read_builds(location)
    if len(found.files) <= 1:
        return found.table.num_rows
    write_file(location, f"{BUILDS_DIR}/{COMPACTED_PREFIX}{uuid.uuid4().hex[:12]}.parquet", found.table)
    for path in found.files:
        with naming(path):
            location.fs.delete_file(path)
    return found.table.num_rows

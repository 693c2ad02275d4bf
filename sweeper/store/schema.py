"""The store's schema: ``SCHEMA_VERSION`` and its history, the names of the store's
files and folders and of its footer metadata, every column with its type and meaning
(``COLUMNS``, read from ``columns.yaml``: the README's schema table is generated from it), and how a fragment of an
older schema reads as the current one, once (``sources``), rendered for Arrow (``conform``)
and for SQL (``projection``).

The keys of a configuration and of a point, the outcome columns and what an absent column
means are ``sweeper.keys``'s: this module gives every column its type and meaning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from sweeper.keys import ABSENT_MEANS

# 2: rows/ folder, launch_id, n_classes and n_features, provenance metadata.
# 3: config_id, id_version, model fingerprint and weights hash, clip range, fold grouping
#    and feature scaling, per-sample outcomes (list columns); fits_mcus dropped (fit is
#    computed in SQL from flash_kb/ram_kb and the mcus table); flash_kb/ram_kb became the
#    deployed (TFLite int8) figures, the packed ones moved to flash_packed_kb/ram_packed_kb.
# 4: transfer attacks: source_job_id, source_config_id, source_model, source_quantizer,
#    transfer_rate (null on white-box rows; older fragments read them as null).
# 5: target_rate, target_n, control_target_rate, control_adv_acc: the patch scored as a
#    targeted attack against its controls; Jacobian norms; robust = right clean and attacked
#    (null on other rows; older fragments read them as null).
# 6: AutoAttack's sanity checks per trained model (zero_grad_share, output_is_simplex,
#    randomized); older fragments read them as null. Build records live in builds/, apart.
SCHEMA_VERSION = 6
ROWS_DIR = "rows"
STAGING_DIR = ".staging"
DAMAGED_DIR = "damaged"
DIAGNOSTICS_FILE = "diagnostics.parquet"
# The worst case over attacks (query's worst_case view), computed when a launch ends or the
# store is compacted; its footer names the row files it was computed from (META_ROWS).
WORST_CASE_FILE = "worst_case.parquet"
META_ROWS = b"sweeper_rows_fingerprint"
ADVERSARIAL_DIR = "adversarial"
LEASE_FILE = ".lease.json"  # the running launch's lease (sweeper.run.lease)
FRAGMENT_PREFIX = "part-"
META_VERSION = b"sweeper_schema_version"
META_LAUNCHES = b"sweeper_launches"  # JSON list of Launch records
# The id of the compaction that wrote a file: files that all carry one id hold every cell
# once between them (compact wrote them from one de-duplicated table).
META_COMPACTION = b"sweeper_compaction"

_TYPES = {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
          "float64": pa.float64(), "bool": pa.bool_(), "timestamp": pa.timestamp("us", tz="UTC")}


def _type(name: str) -> pa.DataType:
    return pa.list_(_type(name[5:-1])) if name.startswith("list<") else _TYPES[name]


def read_columns(file_name: str) -> list[tuple[str, pa.DataType, str]]:
    """(name, type, meaning) of each column, as a table of data beside this module lists
    them (``columns.yaml``: the rows; ``build_columns.yaml``: the build records), read once
    at import."""
    import yaml

    listed = yaml.safe_load((Path(__file__).with_name(file_name)).read_text(encoding="utf-8"))
    return [(name, _type(column["type"]), column["meaning"]) for name, column in listed.items()]


# (name, type, description), in order: the README's schema table is generated from it.
COLUMNS: list[tuple[str, pa.DataType, str]] = read_columns("columns.yaml")
SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in COLUMNS],
                   metadata={META_VERSION: str(SCHEMA_VERSION)})


# ---------------------------------------------------------------- older schemas

# Columns whose meaning changed in schema 3: read from older files under their new names
# ({new name: old name}), and never as the new columns of the same old name.
_RENAMED = {"flash_packed_kb": "flash_kb"}
_CHANGED_MEANING = ("flash_kb", "ram_kb")  # schema <= 2: packed weights and unfused liveness


def sources(present: Iterable[str], version: int, columns: Iterable[str] | None = None
            ) -> list[tuple[str, str | None, str | None]]:
    """How each of ``columns`` (default: all) of the current schema reads from a file of
    schema ``version`` holding the columns ``present``: (column, the file's column it is
    read from or None, what it reads where that is absent or null, or None). The one rule
    of the schema's history: a schema-1/2 file's packed flash figure is flash_packed_kb,
    its flash_kb/ram_kb (now the deployed figures, which older sweepers never measured)
    read as null; a column a file lacks reads as ``ABSENT_MEANS`` or null."""
    present = set(present)
    renamed = _RENAMED if version < 3 else {}
    gone = _CHANGED_MEANING if version < 3 else ()
    found = []
    for name in SCHEMA.names if columns is None else columns:
        source = renamed.get(name, name)
        found.append((name, source if source in present and name not in gone else None, ABSENT_MEANS.get(name)))
    return found


def column_or_null(table: pa.Table, field: pa.Field) -> pa.ChunkedArray | pa.Array:
    """``table``'s column ``field.name`` cast to ``field.type``, or nulls of that type where
    the table lacks it (rows of an older store, build records of an older launch)."""
    if field.name in table.column_names:
        return table.column(field.name).cast(field.type)
    return pa.nulls(table.num_rows, field.type)


def conform(table: pa.Table, version: int, columns: list[str]) -> pa.Table:
    """``table`` (read from a fragment of schema ``version``) with exactly ``columns``, in
    the current schema's types (``sources``)."""
    arrays = []
    for name, source, absent in sources(table.column_names, version, columns):
        field = SCHEMA.field(name)
        if source is not None:
            column = table.column(source).cast(field.type)
            arrays.append(column if absent is None else pc.fill_null(column, absent))
        elif absent is not None:
            arrays.append(pa.array([absent] * table.num_rows, field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([SCHEMA.field(c) for c in columns]))


def projection(fragment_columns: Iterable[str], version: int, columns: list[str] | None = None) -> list[str]:
    """SQL expressions that read files of one schema ``version`` holding
    ``fragment_columns`` as the current schema's ``columns`` (``sources``, as ``conform``)."""
    out = []
    for name, source, absent in sources(fragment_columns, version, columns):
        sql_type = sql_type_of(SCHEMA.field(name).type)
        if source is not None and absent is not None:
            out.append(f"COALESCE(CAST(\"{source}\" AS {sql_type}), '{absent}') AS \"{name}\"")
        elif source is not None:
            out.append(f'CAST("{source}" AS {sql_type}) AS "{name}"')
        elif absent is not None:
            out.append(f"CAST('{absent}' AS {sql_type}) AS \"{name}\"")
        else:
            out.append(f'CAST(NULL AS {sql_type}) AS "{name}"')
    return out


_SQL_TYPES = {pa.string(): "VARCHAR", pa.int32(): "INTEGER", pa.int64(): "BIGINT", pa.float32(): "FLOAT",
              pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.timestamp("us", tz="UTC"): "TIMESTAMPTZ"}


def sql_type_of(dtype: pa.DataType) -> str:
    """The DuckDB type of a column of the store's schema."""
    if pa.types.is_list(dtype):
        return sql_type_of(dtype.value_type) + "[]"
    return _SQL_TYPES[dtype]


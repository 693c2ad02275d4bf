"""The result store: a folder (local path or any URI pyarrow understands) of Parquet
fragments with one fixed schema, one row per cell.

Each finished training job's rows are written as one new fragment: written under a
temporary name, then renamed, so readers never see half a file and a crash loses at most
the jobs in flight. Existing fragments are never modified. Reading skips (and reports)
fragments that cannot be read, so one damaged file never hides the others.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper.errors import UserError

SCHEMA_VERSION = 1
FRAGMENT_PREFIX = "part-"
DAMAGED_PREFIX = "damaged-"  # a fragment that could not be read, set aside by a launch

# (name, type, description): the README's schema table is generated from this list.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("cell_id", pa.string(), "stable hash of everything that determines this row"),
    ("job_id", pa.string(), "stable hash of the training job (the trained model)"),
    ("grid", pa.string(), "grid name"),
    ("dataset", pa.string(), "dataset name"),
    ("dataset_options", pa.string(), "dataset options as JSON"),
    ("model", pa.string(), "model name"),
    ("quantizer", pa.string(), "quantizer preset"),
    ("fold", pa.int32(), "held-out fold index"),
    ("k", pa.int32(), "K of K-fold"),
    ("seed", pa.int64(), "grid seed (splits, initialisation, sample choice, attacks)"),
    ("train", pa.string(), "training settings as JSON"),
    ("attack", pa.string(), "attack name; 'none' is the clean evaluation"),
    ("attack_label", pa.string(), "attack entry label (the name unless the grid set one)"),
    ("norm", pa.string(), "attack norm: inf, 1, 2 ('none' for the clean row)"),
    ("eps", pa.float64(), "epsilon as a number"),
    ("eps_label", pa.string(), "epsilon as written in the grid, e.g. 8/255"),
    ("attack_params", pa.string(), "every parameter passed to ART, as JSON"),
    ("n_samples", pa.int32(), "number of attacked test samples"),
    ("clean_acc", pa.float64(), "accuracy on the attacked samples, unperturbed"),
    ("adv_acc", pa.float64(), "accuracy on the same samples after the attack"),
    ("attack_success_rate", pa.float64(),
     "share of clean-correct samples the attack made wrong (NaN if none were correct)"),
    ("test_acc", pa.float64(), "clean accuracy on the whole held-out fold"),
    ("params", pa.int64(), "model parameter count"),
    ("flash_kb", pa.float64(), "weights at their quantized bit widths, KB (1024 bytes)"),
    ("ram_kb", pa.float64(), "peak live activations at their quantized widths, KB"),
    ("mcu_targets", pa.list_(pa.string()), "MCU profiles the grid checks"),
    ("fits_mcus", pa.list_(pa.string()), "those of mcu_targets the model fits (flash and RAM)"),
    ("model_cached", pa.bool_(), "the trained model was loaded from the cache, not trained"),
    ("train_s", pa.float64(), "seconds spent training this row's model (0 if cached)"),
    ("attack_s", pa.float64(), "seconds spent generating this row's adversarial examples"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "when the row was computed"),
    ("host", pa.string(), "hostname of the machine that computed the row"),
    ("node", pa.string(), "Ray node id that computed the row (empty outside Ray)"),
    ("sweeper_version", pa.string(), "sweeper version that computed the row"),
    ("tensorflow_version", pa.string(), "TensorFlow version"),
    ("qkeras_version", pa.string(), "QKeras version"),
    ("art_version", pa.string(), "adversarial-robustness-toolbox version"),
    ("ray_version", pa.string(), "Ray version"),
]
SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in COLUMNS],
                   metadata={"sweeper_schema_version": str(SCHEMA_VERSION)})


@dataclass(frozen=True)
class Location:
    """A results folder on some filesystem (local disk, S3, GCS, NFS...)."""

    fs: pafs.FileSystem
    path: str
    text: str  # as the user wrote it, for messages


def locate(results: str) -> Location:
    try:
        fs, path = pafs.FileSystem.from_uri(results)
    except (pa.ArrowInvalid, ValueError):
        import os

        fs, path = pafs.LocalFileSystem(), os.path.abspath(results)
    return Location(fs, path.rstrip("/"), results)


def to_table(rows: Iterable[dict[str, Any]]) -> pa.Table:
    rows = [_coerce(row) for row in rows]
    missing = [name for name, _, _ in COLUMNS if rows and name not in rows[0]]
    if missing:
        raise ValueError(f"result rows lack columns: {', '.join(missing)}")
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _coerce(row: dict[str, Any]) -> dict[str, Any]:
    finished = row.get("finished_at")
    if isinstance(finished, str):  # rows travel from workers as JSON
        row = {**row, "finished_at": datetime.fromisoformat(finished)}
    return row


def write_rows(location: Location, rows: list[dict[str, Any]], tag: str = "") -> str | None:
    """Write rows as one new fragment (atomically); returns its path, or None if no rows."""
    if not rows:
        return None
    table = to_table(rows)
    location.fs.create_dir(location.path, recursive=True)
    name = f"{FRAGMENT_PREFIX}{_now_tag()}-{tag or 'rows'}-{uuid.uuid4().hex[:8]}.parquet"
    final = f"{location.path}/{name}"
    temporary = f"{location.path}/.tmp-{name}"
    with location.fs.open_output_stream(temporary) as stream:
        pq.write_table(table, stream)
    location.fs.move(temporary, final)
    return final


def _now_tag() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


def fragments(location: Location) -> list[str]:
    selector = pafs.FileSelector(location.path, allow_not_found=True)
    infos = location.fs.get_file_info(selector)
    return sorted(info.path for info in infos
                  if info.type == pafs.FileType.File
                  and info.base_name.startswith(FRAGMENT_PREFIX) and info.base_name.endswith(".parquet"))


@dataclass(frozen=True)
class ReadResult:
    table: pa.Table
    damaged: tuple[str, ...]  # fragments that could not be read
    duplicates: int = 0  # rows dropped: their cell was already in an earlier fragment


def _read_fragment(location: Location, path: str, columns: list[str] | None) -> pa.Table:
    with location.fs.open_input_file(path) as handle:
        return pq.read_table(handle, columns=columns, schema=SCHEMA)


def read(location: Location, columns: list[str] | None = None) -> ReadResult:
    """Every readable row, one per cell (the earliest fragment wins)."""
    wanted = None if columns is None else list(dict.fromkeys(["cell_id", *columns]))
    tables, damaged = [], []
    for path in fragments(location):
        try:
            tables.append(_read_fragment(location, path, wanted))
        except (pa.ArrowException, OSError):
            damaged.append(path)
    schema = SCHEMA if wanted is None else pa.schema([SCHEMA.field(c) for c in wanted])
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    table, dropped = _first_row_per_cell(table)
    if columns is not None:
        table = table.select(columns)
    return ReadResult(table, tuple(damaged), dropped)


def _first_row_per_cell(table: pa.Table) -> tuple[pa.Table, int]:
    seen: set[str] = set()
    keep = []
    for index, cell in enumerate(table.column("cell_id").to_pylist()):
        if cell not in seen:
            seen.add(cell)
            keep.append(index)
    return (table, 0) if len(keep) == table.num_rows else (table.take(keep), table.num_rows - len(keep))


@dataclass(frozen=True)
class CheckReport:
    fragments: int
    rows: int
    damaged: tuple[str, ...]
    duplicates: dict[str, tuple[str, ...]]  # cell id -> the fragments holding it
    temporaries: tuple[str, ...]  # leftovers of writes that never finished (harmless)
    set_aside: tuple[str, ...]  # damaged fragments an earlier launch moved out of the way

    @property
    def healthy(self) -> bool:
        return not self.damaged and not self.duplicates


def check(location: Location) -> CheckReport:
    """Look at every fragment: which cannot be read, which cells are stored twice."""
    holders: dict[str, list[str]] = {}
    damaged, rows = [], 0
    paths = fragments(location)
    for path in paths:
        try:
            cells = _read_fragment(location, path, ["cell_id"]).column("cell_id").to_pylist()
        except (pa.ArrowException, OSError):
            damaged.append(path)
            continue
        rows += len(cells)
        for cell in cells:
            holders.setdefault(cell, []).append(path)
    duplicates = {cell: tuple(where) for cell, where in holders.items() if len(where) > 1}
    return CheckReport(len(paths), rows, tuple(damaged), duplicates,
                       tuple(_files_named(location, ".tmp-")), tuple(_files_named(location, DAMAGED_PREFIX)))


def _files_named(location: Location, prefix: str) -> list[str]:
    infos = location.fs.get_file_info(pafs.FileSelector(location.path, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.startswith(prefix))


def set_aside(location: Location, damaged: Iterable[str]) -> list[str]:
    """Rename damaged fragments so they are no longer read (their cells get recomputed);
    the bytes are kept for inspection, never deleted."""
    moved = []
    for path in damaged:
        folder, _, name = path.rpartition("/")
        target = f"{folder}/{DAMAGED_PREFIX}{name}"
        location.fs.move(path, target)
        moved.append(target)
    return moved


def done_cell_ids(location: Location) -> set[str]:
    return set(read(location, ["cell_id"]).table.column("cell_id").to_pylist())


def require_results(location: Location) -> list[str]:
    """Fragments of an existing store, or a clear error when there is none."""
    found = fragments(location)
    if not found:
        raise UserError(f"{location.text}: no sweeper results here (no {FRAGMENT_PREFIX}*.parquet files)")
    return found

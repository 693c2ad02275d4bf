"""A store's health and upkeep: ``check`` (damaged fragments, cells stored twice,
leftovers of unfinished writes, configuration points with more rows than folds, jobs
whose rows come from different weights), ``set_aside`` (damaged fragments out of the way,
never deleted) and ``compact`` (every fragment rewritten as one sorted file)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from sweeper.keys import CONFIG_COLUMNS, POINT_COLUMNS
from sweeper.store.files import Location, list_files, naming
from sweeper.store.fragments import fragments, launches, sort_out, survey, write_table
from sweeper.store.provenance import schema_with
from sweeper.store.rows import read_fragment, read_fragments
from sweeper.store.schema import DAMAGED_DIR, LEASE_FILE, META_COMPACTION, STAGING_DIR


@dataclass(frozen=True)
class CheckReport:
    fragments: int
    rows: int
    damaged: tuple[str, ...]
    duplicates: dict[str, tuple[str, ...]]  # cell id -> the fragments holding it
    temporaries: tuple[str, ...]  # leftovers of writes that never finished (harmless; ``leftovers``)
    set_aside: tuple[str, ...]  # damaged fragments an earlier launch moved out of the way
    foreign: tuple[str, ...] = ()  # files named like fragments that are not sweeper's (ignored)
    overfull: tuple[str, ...] = ()  # configuration points with more rows than folds
    mixed_models: tuple[str, ...] = ()  # jobs whose rows come from different trained weights
    why: dict[str, str] = field(default_factory=dict, compare=False)  # damaged path -> what is wrong

    @property
    def healthy(self) -> bool:
        return not (self.damaged or self.duplicates or self.overfull or self.mixed_models)


def check(location: Location) -> CheckReport:
    """Look at every fragment: which cannot be read, which cells are stored twice, and
    whether the rows still mean one thing each (a configuration point with more rows than
    folds, a job whose rows come from two different trained models)."""
    holders: dict[str, list[str]] = {}
    paths = fragments(location)
    found = survey(location, paths)
    read, damaged, replaced = sort_out((f.path for f in found.fragments),
                                       lambda path: read_fragment(location, path, ["cell_id"]).column("cell_id"))
    why = {**found.why, **damaged, **dict.fromkeys(replaced, "no longer a sweeper file")}  # replaced since the survey
    rows = 0
    for path, cells in read:
        rows += len(cells)
        for cell in cells.to_pylist():
            holders.setdefault(cell, []).append(path)
    duplicates = {cell: tuple(where) for cell, where in holders.items() if len(where) > 1}
    table = read_fragments(location, [f.path for f in found.fragments if f.path not in why],
                           [*CONFIG_COLUMNS, *POINT_COLUMNS, "fold", "job_id", "weights_sha256"]).table
    return CheckReport(len(paths), rows, tuple(p for p in paths if p in why), duplicates, leftovers(location),
                       tuple(list_files(location, DAMAGED_DIR, "")), found.foreign, _overfull(table),
                       _mixed_models(table), why)


def leftovers(location: Location) -> tuple[str, ...]:
    """Files of writes that never finished (a crash, a full disk): staging files, under
    RESULTS/.staging/ and the .staging/ of each folder (models/, adversarial/...), and
    the lease's temporaries (.lease.json.*). Never read; safe to delete."""
    found = list_files(location, STAGING_DIR, "") + list_files(location, None, f"{LEASE_FILE}.")
    for info in location.fs.get_file_info(pafs.FileSelector(location.path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name != STAGING_DIR:
            found += list_files(location, f"{info.base_name}/{STAGING_DIR}", "")
    return tuple(sorted(found))


def _overfull(table: pa.Table) -> tuple[str, ...]:
    keys = [*CONFIG_COLUMNS, *POINT_COLUMNS]
    counts = table.group_by(keys, use_threads=False).aggregate([("fold", "count"), ("fold", "count_distinct")])
    over = counts.filter(pc.greater(counts["fold_count"], counts["fold_count_distinct"]))
    return tuple(f"{r['dataset']}/{r['model']}/{r['quantizer']} {r['attack_label']}@{r['eps_label']}: "
                 f"{r['fold_count']} rows for {r['fold_count_distinct']} folds" for r in over.to_pylist())


def _mixed_models(table: pa.Table) -> tuple[str, ...]:
    hashes = table.filter(pc.is_valid(table["weights_sha256"]))
    counts = hashes.group_by(["job_id"]).aggregate([("weights_sha256", "count_distinct")])
    mixed = counts.filter(pc.greater(counts["weights_sha256_count_distinct"], 1))
    return tuple(f"job {r['job_id']}: rows from {r['weights_sha256_count_distinct']} different trained models"
                 for r in mixed.to_pylist())


def set_aside(location: Location, damaged: Iterable[str]) -> list[str]:
    """Move damaged fragments out of rows/ so they are no longer read (their cells get
    recomputed); the bytes are kept for inspection, never deleted."""
    moved = []
    for path in damaged:
        target = location.sub(DAMAGED_DIR, path.rpartition("/")[2])
        with naming(target):
            location.fs.create_dir(location.sub(DAMAGED_DIR), recursive=True)
            location.fs.move(path, target)
        moved.append(target)
    return moved


# ---------------------------------------------------------------- compaction

@dataclass(frozen=True)
class CompactReport:
    before: int  # fragments read
    after: int  # files written
    table: pa.Table = field(repr=False)  # every row now in the store, one per cell
    duplicates: int = 0  # rows dropped: their cell was stored twice
    damaged: tuple[str, ...] = ()  # set aside, as a launch would
    why: dict[str, str] = field(default_factory=dict, compare=False)  # damaged path -> what is wrong

    @property
    def rows(self) -> int:
        return self.table.num_rows


SORT_KEYS = [("dataset", "ascending"), ("model", "ascending"), ("quantizer", "ascending"),
             ("fold", "ascending"), ("attack_label", "ascending"), ("eps", "ascending")]


def compact(location: Location, max_rows_per_file: int = 1_000_000) -> CompactReport:
    """Rewrite every fragment as one sorted file per ``max_rows_per_file`` rows, one row
    per cell, with the union of the fragments' provenance.

    Safe at any moment: the new files are complete before the old ones are deleted, so a
    crash in between leaves duplicates (which readers drop), never a lost row; fragments
    that a running launch writes meanwhile are not touched.
    """
    paths = fragments(location)
    merged = read_fragments(location, paths)
    if not merged.read or (not merged.damaged and _one_compaction(location, merged.read)):
        return CompactReport(len(paths), len(merged.read), merged.table)
    set_aside(location, merged.damaged)
    table = merged.table.sort_by(SORT_KEYS)
    records = launches(location, survey(location, list(merged.read)))
    metadata = {**schema_with(records).metadata, META_COMPACTION: uuid.uuid4().hex.encode()}
    table = table.replace_schema_metadata(metadata)
    written = [write_table(location, table.slice(start, max_rows_per_file), "compacted")
               for start in range(0, table.num_rows, max_rows_per_file)]
    for path in merged.read:  # foreign files are not ours to delete
        with naming(path):
            location.fs.delete_file(path)
    return CompactReport(len(paths), len(written), table, merged.duplicates, merged.damaged, merged.why)


def _one_compaction(location: Location, paths: list[str]) -> bool:
    """The files are exactly what one compaction wrote (or one file an older compaction
    wrote, before files carried the id): compacting again would change nothing."""
    if len(paths) == 1 and "-compacted-" in paths[0].rpartition("/")[2]:
        return True
    return survey(location, paths).one_compaction


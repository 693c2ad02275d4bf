"""The result store: a folder (local path or any URI pyarrow understands) holding a
Parquet dataset with one fixed schema, one row per cell, plus what a sweep keeps beside it::

    RESULTS/rows/part-*.parquet     the rows: point pandas, polars, DuckDB or Spark here
    RESULTS/diagnostics.parquet     gradient-masking flags (sweeper.diagnostics), derived
    RESULTS/models/                 trained weights and .tflite files, so new cells of a model train nothing
    RESULTS/checkpoints/            mid-training state of jobs in flight (sweeper.trial), removed when done
    RESULTS/adversarial/            source cells' adversarial examples, one compressed .npz per cell, for transfer attacks
    RESULTS/.lease.json             the running launch's lease (sweeper.lease)
    RESULTS/damaged/                damaged fragments (and a damaged lease), set aside, never deleted
    RESULTS/.staging/, _tune/       in-progress writes (each folder's .staging/); Ray Tune's own state

Each finished training job's rows are written as one new fragment: written under a
staging name, then renamed, so readers never see half a file and a crash loses at most
the jobs in flight. Every file records its provenance (the grid file's text and hash, the
library versions, the launch's start time) in its Parquet metadata. At the end of a sweep
the fragments are compacted into one file (``compact``); until then reading skips (and
reports) fragments that cannot be read and keeps the first row of a cell stored twice.

What a fragment is, is decided in one place (``_inspect``), from a file's first bytes and
footer alone: a file that is not Parquet, or Parquet without sweeper's schema version, is
*foreign* (never read, moved or deleted); a Parquet file cut short, or whose footer is not
one sweeper writes (version, provenance, column types, cell ids), is *damaged* (skipped,
reported, set aside). A write that fails names its file (``naming``), so a full disk or a
read-only store is one line; ``leftovers`` lists what unfinished writes left behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper.errors import UserError

# 2: rows/ folder, launch_id, n_classes and n_features, provenance metadata.
# 3: config_id, id_version, model fingerprint and weights hash, clip range, fold grouping
#    and feature scaling, per-sample outcomes (list columns); fits_mcus dropped (fit is
#    computed in SQL from flash_kb/ram_kb and the mcus table); flash_kb/ram_kb became the
#    deployed (TFLite int8) figures, the packed ones moved to flash_packed_kb/ram_packed_kb.
# 4: transfer attacks: source_job_id, source_config_id, source_model, source_quantizer,
#    transfer_rate (null on white-box rows; older fragments read them as null).
# (unbumped, the coordinator bumps once per merge) target_rate, target_n, control_target_rate,
#    control_adv_acc: the patch scored as a targeted attack against its controls (null on
#    other rows; older fragments read them as null).
SCHEMA_VERSION = 5
ROWS_DIR = "rows"
STAGING_DIR = ".staging"
DAMAGED_DIR = "damaged"
DIAGNOSTICS_FILE = "diagnostics.parquet"
# The worst case over attacks (query's worst_case view), computed when a launch ends or the
# store is compacted; its footer names the row files it was computed from (META_ROWS).
WORST_CASE_FILE = "worst_case.parquet"
META_ROWS = b"sweeper_rows_fingerprint"
ADVERSARIAL_DIR = "adversarial"
LEASE_FILE = ".lease.json"  # the running launch's lease (sweeper.lease)
FRAGMENT_PREFIX = "part-"
META_VERSION = b"sweeper_schema_version"
META_LAUNCHES = b"sweeper_launches"  # JSON list of Launch records
# The id of the compaction that wrote a file: files that all carry one id hold every cell
# once between them (compact wrote them from one de-duplicated table).
META_COMPACTION = b"sweeper_compaction"

# (name, type, description): the README's schema table is generated from this list.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("cell_id", pa.string(), "stable hash of everything that determines this row"),
    ("job_id", pa.string(), "stable hash of the training job (the trained model)"),
    ("config_id", pa.string(),
     "stable hash of the training job without its fold: rows of one configuration share it"),
    ("id_version", pa.int32(), "sweeper's ID_VERSION when the row was computed"),
    ("launch_id", pa.string(), "the launch that computed the row (its provenance is in the file metadata)"),
    ("grid", pa.string(), "grid name"),
    ("dataset", pa.string(), "dataset name"),
    ("dataset_options", pa.string(), "dataset options as JSON"),
    ("n_classes", pa.int32(), "number of classes of the dataset"),
    ("n_features", pa.int64(), "input values per sample (e.g. 64 for 8x8 digits)"),
    ("clip_min", pa.float64(), "lower end of the input range attacks clip to (the row's scale)"),
    ("clip_max", pa.float64(), "upper end of the input range attacks clip to"),
    ("feature_scaling", pa.string(), "how inputs were scaled to [clip_min, clip_max]"),
    ("fold_grouping", pa.string(), "what K-fold keeps on one side of a split (e.g. speaker), or none"),
    ("model", pa.string(), "model name"),
    ("quantizer", pa.string(), "quantizer preset"),
    ("model_fingerprint", pa.string(), "hash of the built model's layer configuration (part of job_id)"),
    ("weights_sha256", pa.string(), "hash of the trained weights this row was computed with"),
    ("fold", pa.int32(), "held-out fold index"),
    ("k", pa.int32(), "K of K-fold"),
    ("seed", pa.int64(), "grid seed (splits, initialisation, sample choice, attacks)"),
    ("train", pa.string(), "training settings as JSON"),
    ("defense", pa.string(), "training-time defense name (sweeper.defenses); 'none': plain training"),
    ("defense_label", pa.string(), "defense entry label (the name unless the grid set one)"),
    ("defense_params", pa.string(), "every parameter of the defense, as JSON"),
    ("defense_reg", pa.float64(),
     "the defense's regularizer, mean over the last training epoch (jr: 1/2 ||J||_F^2 "
     "estimate, jr_layer: sum over blocks of 1/2 ||J_k||_F^2, dq: sum ||Q^T Q - I||^2 over the quantized "
     "kernels Q); null for other defenses"),
    ("eval_bits", pa.int32(),
     "dbwt: the bit width the shared weights were quantized at for this row (a configuration of its "
     "own); null: the preset's own width. flash_kb/ram_kb are the int8 .tflite's (the same at every "
     "width), the packed figures are at this width, deployed_* are null (the .tflite is the preset's)"),
    ("attack", pa.string(), "attack name; 'none' is the clean evaluation"),
    ("attack_label", pa.string(), "attack entry label (the name unless the grid set one)"),
    ("norm", pa.string(), "attack norm: inf, 1, 2 ('none' for the clean row)"),
    ("eps", pa.float64(), "budget under norm, on the row's scale; +inf means unbounded"),
    ("eps_label", pa.string(), "epsilon as written in the grid, e.g. 8/255 or unbounded"),
    ("attack_params", pa.string(),
     "every parameter passed to ART, as JSON (a parameter added later is left out at its default: "
     "the patch's placement random)"),
    ("target", pa.string(),
     "what the attack queried (not the patch's target class): 'model' (the QKeras model) or 'deployed' "
     "(the int8 .tflite through the TFLite interpreter; the row's clean_correct, adv_correct, adv_pred and "
     "accuracies are the build's, equal to its deployed_* columns); rows written before the column read 'model'"),
    ("source_job_id", pa.string(),
     "transfer attack: the job whose model crafted the examples (same dataset, fold, seed); null: white-box"),
    ("source_config_id", pa.string(), "transfer attack: the source's config_id (part of the point's key)"),
    ("source_model", pa.string(), "transfer attack: the source's model"),
    ("source_quantizer", pa.string(), "transfer attack: the source's quantizer preset"),
    ("n_samples", pa.int32(), "number of attacked test samples"),
    ("clean_acc", pa.float64(), "accuracy on the attacked samples, unperturbed"),
    ("adv_acc", pa.float64(),
     "robust accuracy: share of the attacked samples classified correctly both unperturbed and after "
     "the attack (the mean of adv_correct; denominator n_samples)"),
    ("attack_success_rate", pa.float64(),
     "share of clean-correct samples the attack made wrong (denominator: the clean-correct samples; "
     "NaN if none were); for the targeted patch any wrong class counts, its own score is target_rate"),
    ("transfer_rate", pa.float64(),
     "transfer attack: of the samples both models classify correctly unperturbed and whose example fools "
     "the source (the denominator), the share whose example also fools this model (NaN if none)"),
    ("target_rate", pa.float64(),
     "targeted patch: of the target_n attacked samples classified correctly clean whose true class is not "
     "the target, the share classified as the target with the patch on (NaN if target_n is 0); null: "
     "not a patch, or eps 0"),
    ("target_n", pa.int32(),
     "targeted patch: target_rate's denominator, the attacked samples classified correctly clean whose "
     "true class is not the target"),
    ("control_target_rate", pa.float64(),
     "targeted patch: the highest target rate (same denominator) of its controls, a uniform-random patch "
     "and solid patches at the clip range's low and high ends, of the same size at the same places"),
    ("control_adv_acc", pa.float64(),
     "targeted patch: the lowest robust accuracy (as adv_acc: right unperturbed and with the control; "
     "denominator n_samples) of the same controls"),
    ("test_acc", pa.float64(), "clean accuracy on the whole held-out fold"),
    ("jacobian_fro", pa.float64(),
     "per trained model, on its attacked samples in evaluation mode: root mean square over the samples of "
     "the Frobenius norm of the input-to-logit Jacobian, sqrt(mean ||d logits / d x||_F^2), through the "
     "straight-through estimators (the gradient attacks see), with the quantized weights (sweeper.models.jacobian)"),
    ("jacobian_fro_se", pa.float64(),
     "standard error of jacobian_fro from its random projections (0: exact, the logits' basis vectors)"),
    ("jacobian_blocks", pa.list_(pa.string()),
     "the model's blocks in order, named by their weight layers (a block runs from one activation every "
     "path passes through to the next; the last ends at the logits)"),
    ("jacobian_block_fro", pa.list_(pa.float64()),
     "per block, as jacobian_fro: sqrt(mean ||d block output / d block input||_F^2) over the attacked samples"),
    ("jacobian_block_se", pa.list_(pa.float64()),
     "per block: standard error of jacobian_block_fro from its random projections (0: exact)"),
    ("jacobian_projections", pa.int32(),
     "projections per sample behind each jacobian_* estimate (random unit vectors, or the basis vectors "
     "where an output has at most this many values)"),
    ("sample_index", pa.list_(pa.int64()), "per attacked sample: its index in the pooled dataset"),
    ("clean_correct", pa.list_(pa.bool_()), "per attacked sample: classified correctly, unperturbed"),
    ("adv_correct", pa.list_(pa.bool_()),
     "per attacked sample: robust, i.e. classified correctly both unperturbed and after the attack "
     "(false wherever clean_correct is false, even if the example lands on the label)"),
    ("adv_pred", pa.list_(pa.int32()), "per attacked sample: the predicted class after the attack"),
    ("pert_linf", pa.list_(pa.float32()), "per attacked sample: L-inf norm of the perturbation used"),
    ("pert_l2", pa.list_(pa.float32()), "per attacked sample: L2 norm of the perturbation used"),
    ("pert_l1", pa.list_(pa.float32()), "per attacked sample: L1 norm of the perturbation used"),
    ("params", pa.int64(), "model parameter count"),
    ("flash_kb", pa.float64(),
     "flash the MCU fit uses, KB (1024 bytes): the int8 .tflite + the TFLM runtime allowance, "
     "or an estimate (footprint_source)"),
    ("ram_kb", pa.float64(),
     "RAM the MCU fit uses, KB: the minimal TFLM arena + margin, or an estimate (footprint_source)"),
    ("footprint_source", pa.string(),
     "'measured' (converted and allocated) or 'estimate' (conversion failed: fused-int8 liveness)"),
    ("tflite_kb", pa.float64(), "size of the deployable full-int8 .tflite flatbuffer, KB"),
    ("arena_kb", pa.float64(), "smallest TFLite Micro arena that allocates the .tflite, KB (host build)"),
    ("flash_packed_kb", pa.float64(),
     "weights at their quantized bit widths, densely packed, KB (a runtime with sub-byte kernels)"),
    ("ram_packed_kb", pa.float64(),
     "peak live activations at their quantized widths, batch norm and activations fused, KB"),
    ("deploy_error", pa.string(), "why the model could not be converted to int8 TFLite (null if it was)"),
    ("deploy_s", pa.float64(),
     "seconds spent converting to TFLite (not when the .tflite came from the cache) and measuring the arena"),
    ("deployed_clean_acc", pa.float64(), "accuracy of the int8 .tflite on the attacked samples, unperturbed"),
    ("deployed_adv_acc", pa.float64(),
     "robust accuracy of the int8 .tflite: share of the attacked samples it classifies correctly both "
     "unperturbed and on this cell's adversarial example (crafted on the QKeras model; on a target "
     "'deployed' row, on the build itself); the mean of deployed_adv_correct, denominator n_samples"),
    ("deployed_adv_correct", pa.list_(pa.bool_()),
     "per attacked sample: the .tflite classifies both the clean input and this cell's adversarial "
     "example correctly (its own clean predictions, not the QKeras model's)"),
    ("mcu_targets", pa.list_(pa.string()), "MCU profiles the grid checks (fit is computed in SQL)"),
    ("model_cached", pa.bool_(), "the trained model was loaded from the cache, not trained"),
    ("train_s", pa.float64(), "seconds spent training this row's model (0 if cached)"),
    ("resumed_from_epoch", pa.int32(), "the epoch its training resumed from a checkpoint (null: not resumed)"),
    ("attack_s", pa.float64(), "seconds spent generating this row's adversarial examples"),
    ("finished_at", pa.timestamp("us", tz="UTC"), "when the row was computed"),
    ("host", pa.string(), "hostname of the machine that computed the row"),
    ("node", pa.string(), "Ray node id that computed the row (empty outside Ray)"),
    ("sweeper_version", pa.string(), "sweeper version that computed the row"),
    ("tensorflow_version", pa.string(), "TensorFlow version"),
    ("qkeras_version", pa.string(), "QKeras version"),
    ("art_version", pa.string(), "adversarial-robustness-toolbox version"),
    ("sklearn_version", pa.string(), "scikit-learn version (it decides the folds)"),
    ("ray_version", pa.string(), "Ray version"),
]
# What a "configuration" is: one trained setup, every fold of it. config_id hashes
# everything that determines the trained model except the fold (code fingerprint and
# library versions included); the named columns are kept for reading, and for rows of
# schema-2 stores, which have no config_id. Every aggregate over folds groups by these
# plus POINT_COLUMNS, so rows that differ in anything that changes a result are never
# averaged together.
CONFIG_COLUMNS = ["config_id", "dataset", "dataset_options", "model", "quantizer", "train", "k", "seed",
                  "defense", "defense_label", "defense_params", "eval_bits"]
# What a column reads where a fragment lacks it or holds null, where null would be wrong:
# rows from before defenses were trained without one, rows from before deployed attacks
# attacked the model. (Null too: a query reads the
# fragments of one schema version together, so a missing column arrives as null.)
ABSENT_MEANS = {"defense": "none", "defense_label": "none", "defense_params": "{}", "target": "model"}
# One evaluation of a configuration: an attack with its parameters at one budget, on a
# fixed number of samples, what it queried (the model or its deployed build), and for a
# transfer attack the configuration that crafted the examples (null: white-box), so
# transfer, white-box and deployed rows are never averaged together.
POINT_COLUMNS = ["attack", "attack_label", "norm", "eps", "eps_label", "attack_params", "n_samples",
                 "source_config_id", "target"]
# The per-sample outcome columns (equal-length lists, one entry per attacked sample).
OUTCOME_COLUMNS = ["sample_index", "clean_correct", "adv_correct", "adv_pred", "pert_linf", "pert_l2",
                   "pert_l1"]
SCHEMA = pa.schema([pa.field(name, dtype) for name, dtype, _ in COLUMNS],
                   metadata={META_VERSION: str(SCHEMA_VERSION)})


# ---------------------------------------------------------------- provenance

@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine a result, keyed by their row column."""
    from importlib.metadata import PackageNotFoundError, version

    packages = {"sweeper_version": "sweeper", "tensorflow_version": "tensorflow",
                "qkeras_version": "qkeras", "art_version": "adversarial-robustness-toolbox",
                "sklearn_version": "scikit-learn", "ray_version": "ray"}
    found = {}
    for column, package in packages.items():
        try:
            found[column] = version(package)
        except PackageNotFoundError:
            found[column] = "not installed"
    return found


@dataclass(frozen=True)
class Launch:
    """Where a launch's rows came from; kept in the metadata of every file holding them."""

    launch_id: str
    started_at: str  # ISO 8601, UTC
    grid_name: str
    grid_file: str  # as given on the command line ("" when the plan was built in code)
    grid_sha256: str  # of the file's bytes ("" without a file)
    grid_text: str  # the file as it was when the launch started
    overrides: tuple[str, ...]  # --set KEY=VALUE, in order
    grid_resolved: str  # the validated grid after overrides, as JSON: what actually ran
    versions: dict[str, str] = field(default_factory=dict)  # library -> version, plus python


def new_launch(grid, grid_file: str = "", grid_bytes: bytes | None = None,
               overrides: Iterable[str] = ()) -> Launch:
    versions = {column.removesuffix("_version"): v for column, v in library_versions().items()}
    versions.update(python=platform.python_version(), pyarrow=pa.__version__, sweeper_commit=_source_commit())
    return Launch(launch_id=uuid.uuid4().hex[:16],
                  started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  grid_name=grid.name, grid_file=grid_file,
                  grid_sha256=hashlib.sha256(grid_bytes).hexdigest() if grid_bytes is not None else "",
                  grid_text=grid_bytes.decode("utf-8", "replace") if grid_bytes is not None else "",
                  overrides=tuple(overrides), grid_resolved=grid.model_dump_json(), versions=versions)


def _source_commit() -> str:
    """The git commit of the sweeper checkout that runs ("+dirty" with local edits), or ""
    when sweeper is not run from a git checkout: the version number alone cannot tell two
    development launches apart."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        edits = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+dirty" if edits.stdout.strip() else "")


def _schema_with(launches: Iterable[Launch | dict]) -> pa.Schema:
    records = [asdict(launch) if isinstance(launch, Launch) else launch for launch in launches]
    return SCHEMA.with_metadata({META_VERSION: str(SCHEMA_VERSION).encode(),
                                 META_LAUNCHES: json.dumps(records, sort_keys=True).encode()})


# ---------------------------------------------------------------- location

@dataclass(frozen=True)
class Location:
    """A results folder on some filesystem (local disk, S3, GCS, NFS...)."""

    fs: pafs.FileSystem
    path: str
    text: str  # as the user wrote it, for messages

    def sub(self, *names: str) -> str:
        """A path inside the folder, for this location's ``fs``."""
        return "/".join([self.path, *names])

    def uri(self, *names: str) -> str:
        """A path inside the folder that ``locate`` resolves the same way from any process:
        absolute on local disk (Ray Tune runs trials in their own working directories),
        the URI as given elsewhere."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return self.sub(*names)
        return "/".join([self.text.rstrip("/"), *names])


def locate(results: str) -> Location:
    if not results.strip():  # abspath("") is the working directory: never a store by accident
        raise UserError("RESULTS: empty path; name the result store's folder")
    try:
        fs, path = pafs.FileSystem.from_uri(results)
    except (pa.ArrowInvalid, ValueError):
        fs, path = pafs.LocalFileSystem(), os.path.abspath(results)
    return Location(fs, path.rstrip("/"), results)


# ---------------------------------------------------------------- writing

def to_table(rows: Iterable[dict[str, Any]], launches: Iterable[Launch | dict] = ()) -> pa.Table:
    rows = [_coerce(row) for row in rows]
    missing = [name for name, _, _ in COLUMNS if rows and name not in rows[0]]
    if missing:
        raise ValueError(f"result rows lack columns: {', '.join(missing)}")
    return pa.Table.from_pylist(rows, schema=_schema_with(launches))


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
    return _write_table(location, to_table(rows, [launch] if launch else []), tag or "rows")


def _write_table(location: Location, table: pa.Table, tag: str) -> str:
    name = f"{FRAGMENT_PREFIX}{_now_tag()}-{tag}-{uuid.uuid4().hex[:8]}.parquet"
    return write_file(location, f"{ROWS_DIR}/{name}", table)


def write_file(location: Location, relative: str, table: pa.Table) -> str:
    """Write ``table`` to ``RESULTS/relative`` atomically: under .staging/, then renamed,
    so a reader sees the old file or the new one, never half of one."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return put_bytes(location, relative, buffer.getvalue().to_pybytes())


def put_bytes(location: Location, relative: str, data: bytes) -> str:
    """Write bytes to ``RESULTS/relative`` atomically (a unique staging name, then a
    rename): two writers of one file never tear it, and a reader sees all of it or none.
    A write that fails (a full disk) removes its staging file, and its error names the
    file it was writing."""
    final = location.sub(relative)
    staging = location.sub(STAGING_DIR, f"{uuid.uuid4().hex[:8]}-{relative.rpartition('/')[2]}")
    with naming(final):
        location.fs.create_dir(final.rpartition("/")[0], recursive=True)
        location.fs.create_dir(location.sub(STAGING_DIR), recursive=True)
        try:
            with location.fs.open_output_stream(staging) as stream:
                stream.write(data)
            location.fs.move(staging, final)
        except BaseException:
            _discard(location, staging)
            raise
    return final


def _discard(location: Location, path: str) -> None:
    """Remove a staging file of ours that will never be renamed (it frees a full disk);
    if even that fails, ``check`` lists it as a leftover."""
    try:
        if location.fs.get_file_info(path).type == pafs.FileType.File:
            location.fs.delete_file(path)
    except OSError:
        pass


@contextmanager
def naming(path: str):
    """An OSError raised inside names ``path``: pyarrow's errors name no file and a
    temporary's name means nothing to the user, so a full disk or a read-only store is
    reported with the file sweeper was writing."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, os.strerror(error.errno), path) from error


def get_bytes(location: Location, relative: str) -> bytes | None:
    """The bytes of ``RESULTS/relative``, or None when there is no such file."""
    path = location.sub(relative)
    if location.fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with location.fs.open_input_stream(path) as stream:
        return stream.read()


def put_arrays(location: Location, relative: str, **arrays) -> str:
    """Numpy arrays as one compressed .npz at ``RESULTS/relative``, atomically (put_bytes)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return put_bytes(location, relative, buffer.getvalue())


def get_arrays(location: Location, relative: str) -> dict[str, Any] | None:
    """The arrays put_arrays stored at ``RESULTS/relative``, or None when there is none."""
    import io

    import numpy as np

    data = get_bytes(location, relative)
    if data is None:
        return None
    with np.load(io.BytesIO(data)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def file_names(location: Location, folder: str) -> set[str]:
    """The names of the files in ``RESULTS/folder`` (empty when there is no such folder)."""
    return {path.rpartition("/")[2] for path in _list(location, folder, "")}


def delete_bytes(location: Location, relative: str) -> None:
    """Remove ``RESULTS/relative`` if it exists (put_bytes's counterpart)."""
    path = location.sub(relative)
    if location.fs.get_file_info(path).type == pafs.FileType.File:
        location.fs.delete_file(path)


def _now_tag() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%f")


# ---------------------------------------------------------------- reading

def _list(location: Location, folder: str | None, prefix: str, suffix: str = "") -> list[str]:
    where = location.sub(folder) if folder else location.path
    infos = location.fs.get_file_info(pafs.FileSelector(where, allow_not_found=True))
    return sorted(info.path for info in infos if info.type == pafs.FileType.File
                  and info.base_name.startswith(prefix) and info.base_name.endswith(suffix))


def fragments(location: Location) -> list[str]:
    """The row files, oldest first (their names start with the UTC time of writing).
    Schema-1 stores kept them at the top level; they are read too, and compaction moves
    them into rows/."""
    found = _list(location, ROWS_DIR, FRAGMENT_PREFIX, ".parquet")
    legacy = _list(location, None, FRAGMENT_PREFIX, ".parquet")
    return sorted(found + legacy, key=lambda path: path.rpartition("/")[2])


@dataclass(frozen=True)
class ReadResult:
    table: pa.Table
    damaged: tuple[str, ...]  # fragments that could not be read
    duplicates: int = 0  # rows dropped: their cell was already in an earlier fragment
    foreign: tuple[str, ...] = ()  # files that are not sweeper's: never read, never touched
    read: tuple[str, ...] = ()  # the sweeper fragments the table holds
    why: dict[str, str] = field(default_factory=dict, compare=False)  # damaged path -> what is wrong


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


def _inspect(path: str, handle) -> tuple[pq.ParquetFile, "Fragment"]:
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
    renamed = _RENAMED if version < 3 else {}
    gone = set(_CHANGED_MEANING) if version < 3 else set()
    for field in SCHEMA:
        source = renamed.get(field.name, field.name)
        if field.name not in gone and source in present and not _compatible(present[source], field.type):
            raise DamagedFile(f"column {source} is {present[source]}, not {field.type}")


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


def _read_fragment(location: Location, path: str, columns: list[str] | None) -> pa.Table:
    # Only files whose footer carries sweeper's schema version are fragments: anything
    # else (a part-0.parquet some other tool dropped here) would read as all-null rows.
    # Reading with the current schema fills columns an older fragment lacks with nulls
    # and leaves out the ones it no longer has.
    with location.fs.open_input_file(path) as handle:
        file, fragment = _inspect(path, handle)
        present = set(fragment.columns)
        renamed = _RENAMED if fragment.version < 3 else {}
        wanted = [renamed.get(c, c) for c in (columns or SCHEMA.names)]
        try:
            table = file.read(columns=[c for c in dict.fromkeys(wanted) if c in present])
        except (pa.ArrowException, OSError):
            raise DamagedFile("unreadable data (cut short?)") from None
    if "cell_id" in table.column_names and table.column("cell_id").null_count:
        raise DamagedFile("null cell_id")
    if renamed:
        table = _older_meanings(table, columns or SCHEMA.names)
    try:
        return _conform(table, columns or SCHEMA.names)
    except pa.ArrowException as error:  # e.g. an integer that does not fit the schema's type
        raise DamagedFile(f"values that do not fit the schema: {str(error).splitlines()[0]}") from None


# Columns whose meaning changed in schema 3: read from older files under their new names
# ({new name: old name}), and never as the new columns of the same old name.
_RENAMED = {"flash_packed_kb": "flash_kb"}
_CHANGED_MEANING = ("flash_kb", "ram_kb")  # schema <= 2: packed weights and unfused liveness


def _older_meanings(table: pa.Table, columns: list[str]) -> pa.Table:
    """A schema-1/2 table with its columns under their schema-3 names: the packed flash
    figure moves to flash_packed_kb, and flash_kb/ram_kb (now the deployed figures, which
    older sweepers never measured) are left out, to read as null."""
    packed = table.column("flash_kb") if "flash_kb" in table.column_names else None
    table = table.drop_columns([c for c in _CHANGED_MEANING if c in table.column_names])
    if packed is not None and "flash_packed_kb" in columns:
        table = table.append_column("flash_packed_kb", packed)
    return table


def _conform(table: pa.Table, columns: list[str]) -> pa.Table:
    """``table`` with exactly ``columns``, in the current schema's types (nulls for the
    ones an older fragment lacks)."""
    arrays = []
    for name in columns:
        field = SCHEMA.field(name)
        if name in table.column_names and name in ABSENT_MEANS:
            arrays.append(pa.compute.fill_null(table.column(name).cast(field.type), ABSENT_MEANS[name]))
        elif name in table.column_names:
            arrays.append(table.column(name).cast(field.type))
        elif name in ABSENT_MEANS:
            arrays.append(pa.array([ABSENT_MEANS[name]] * table.num_rows, field.type))
        else:
            arrays.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema([SCHEMA.field(c) for c in columns]))


def read(location: Location, columns: list[str] | None = None) -> ReadResult:
    """Every readable row, one per cell (the earliest fragment wins)."""
    return read_fragments(location, fragments(location), columns)


def read_fragments(location: Location, paths: list[str], columns: list[str] | None = None) -> ReadResult:
    wanted = None if columns is None else list(dict.fromkeys(["cell_id", *columns]))
    tables, why, foreign, read_paths = [], {}, [], []
    for path in paths:
        try:
            tables.append(_read_fragment(location, path, wanted))
            read_paths.append(path)
        except ForeignFile:
            foreign.append(path)
        except DamagedFile as error:
            why[path] = str(error)
        except (pa.ArrowException, OSError):
            why[path] = "unreadable"
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
    reading their first bytes and Parquet footers only (``_inspect``)."""
    found, why, foreign = [], {}, []
    for path in fragments(location) if paths is None else paths:
        try:
            with location.fs.open_input_file(path) as handle:
                found.append(_inspect(path, handle)[1])
        except ForeignFile:
            foreign.append(path)
        except DamagedFile as error:
            why[path] = str(error)
        except (pa.ArrowException, OSError):
            why[path] = "unreadable"
    return Survey(tuple(found), tuple(why), tuple(foreign), why)


def projection(fragment_columns: Iterable[str], version: int, columns: list[str] | None = None) -> list[str]:
    """SQL expressions that read files of one schema ``version`` holding
    ``fragment_columns`` as the current schema's ``columns``: the same renames, changed
    meanings and nulls as ``_read_fragment`` (older_meanings, conform)."""
    present = set(fragment_columns)
    renamed = _RENAMED if version < 3 else {}
    gone = set(_CHANGED_MEANING) if version < 3 else set()
    out = []
    for name in columns or SCHEMA.names:
        source = renamed.get(name, name)
        sql_type = sql_type_of(SCHEMA.field(name).type)
        if source in present and name in ABSENT_MEANS:
            out.append(f"COALESCE(CAST(\"{source}\" AS {sql_type}), '{ABSENT_MEANS[name]}') AS \"{name}\"")
        elif source in present and name not in gone:
            out.append(f'CAST("{source}" AS {sql_type}) AS "{name}"')
        elif name in ABSENT_MEANS:
            out.append(f"CAST('{ABSENT_MEANS[name]}' AS {sql_type}) AS \"{name}\"")
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


def launches(location: Location, found: Survey | None = None) -> list[dict[str, Any]]:
    """The provenance records of every readable fragment (of ``found``, the caller's
    survey, if it has one), oldest launch first."""
    records: dict[str, dict[str, Any]] = {}
    for fragment in (survey(location) if found is None else found).fragments:
        for record in fragment.launches:
            records.setdefault(record["launch_id"], record)
    return sorted(records.values(), key=lambda record: record["started_at"])


def done_cell_ids(location: Location) -> set[str]:
    return set(read(location, ["cell_id"]).table.column("cell_id").to_pylist())


def require_results(location: Location) -> list[str]:
    """Fragments of an existing store, or a clear error when there is none."""
    found = fragments(location)
    if not found:
        raise UserError(f"{location.text}: no sweeper results here "
                        f"(no {ROWS_DIR}/{FRAGMENT_PREFIX}*.parquet files)")
    return found


# ---------------------------------------------------------------- health

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
    why, rows = dict(found.why), 0
    for fragment in found.fragments:
        try:
            cells = _read_fragment(location, fragment.path, ["cell_id"]).column("cell_id").to_pylist()
        except (ForeignFile, DamagedFile) as error:  # (foreign: replaced since the survey)
            why[fragment.path] = str(error) if isinstance(error, DamagedFile) else "no longer a sweeper file"
            continue
        except (pa.ArrowException, OSError):
            why[fragment.path] = "unreadable"
            continue
        rows += len(cells)
        for cell in cells:
            holders.setdefault(cell, []).append(fragment.path)
    duplicates = {cell: tuple(where) for cell, where in holders.items() if len(where) > 1}
    table = read_fragments(location, [f.path for f in found.fragments if f.path not in why],
                           [*CONFIG_COLUMNS, *POINT_COLUMNS, "fold", "job_id", "weights_sha256"]).table
    return CheckReport(len(paths), rows, tuple(p for p in paths if p in why), duplicates, leftovers(location),
                       tuple(_list(location, DAMAGED_DIR, "")), found.foreign, _overfull(table),
                       _mixed_models(table), why)


def leftovers(location: Location) -> tuple[str, ...]:
    """Files of writes that never finished (a crash, a full disk): staging files, under
    RESULTS/.staging/ and the .staging/ of each folder (models/, adversarial/...), and
    the lease's temporaries (.lease.json.*). Never read; safe to delete."""
    found = _list(location, STAGING_DIR, "") + _list(location, None, f"{LEASE_FILE}.")
    for info in location.fs.get_file_info(pafs.FileSelector(location.path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name != STAGING_DIR:
            found += _list(location, f"{info.base_name}/{STAGING_DIR}", "")
    return tuple(sorted(found))


def _overfull(table: pa.Table) -> tuple[str, ...]:
    keys = [*CONFIG_COLUMNS, *POINT_COLUMNS]
    counts = table.group_by(keys, use_threads=False).aggregate([("fold", "count"), ("fold", "count_distinct")])
    over = counts.filter(pa.compute.greater(counts["fold_count"], counts["fold_count_distinct"]))
    return tuple(f"{r['dataset']}/{r['model']}/{r['quantizer']} {r['attack_label']}@{r['eps_label']}: "
                 f"{r['fold_count']} rows for {r['fold_count_distinct']} folds" for r in over.to_pylist())


def _mixed_models(table: pa.Table) -> tuple[str, ...]:
    hashes = table.filter(pa.compute.is_valid(table["weights_sha256"]))
    counts = hashes.group_by(["job_id"]).aggregate([("weights_sha256", "count_distinct")])
    mixed = counts.filter(pa.compute.greater(counts["weights_sha256_count_distinct"], 1))
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
    metadata = {**_schema_with(records).metadata, META_COMPACTION: uuid.uuid4().hex.encode()}
    table = table.replace_schema_metadata(metadata)
    written = [_write_table(location, table.slice(start, max_rows_per_file), "compacted")
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

"""The store's schema: ``SCHEMA_VERSION`` and its history, the names of the store's
files and folders and of its footer metadata, every column with its type and meaning
(``COLUMNS``: the README's schema table is generated from it), and how a fragment of an
older schema reads as the current one, once (``sources``), rendered for Arrow (``conform``)
and for SQL (``projection``).

The keys of a configuration and of a point, the outcome columns and what an absent column
means are ``sweeper.keys``'s: this module gives every column its type and meaning.
"""

from __future__ import annotations

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
LEASE_FILE = ".lease.json"  # the running launch's lease (sweeper.run.lease)
FRAGMENT_PREFIX = "part-"
META_VERSION = b"sweeper_schema_version"
META_LAUNCHES = b"sweeper_launches"  # JSON list of Launch records
# The id of the compaction that wrote a file: files that all carry one id hold every cell
# once between them (compact wrote them from one de-duplicated table).
META_COMPACTION = b"sweeper_compaction"

# (name, type, description): the README's schema table is generated from this list.
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


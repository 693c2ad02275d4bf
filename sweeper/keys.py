"""Names every layer shares, each defined once: what ``none`` stands for, what an attack
targets, the int8 build's format, the keys of a configuration and of a point of the
results, the per-sample outcome columns, and the libraries whose versions a result
records.

Plain Python: the grid schema, the store, the trial and the SQL all import from here, so
nothing here may import more than the standard library.
"""

from __future__ import annotations

import functools

# The clean evaluation's attack (and its norm), plain training's defense: one word.
NONE = "none"

# What an attack entry attacks (its ``target``): the QKeras model (default), or the int8
# .tflite built from it, queried through the TFLite interpreter (black-box attacks only).
MODEL_TARGET, DEPLOYED_TARGET = "model", "deployed"
# The converter's full-int8 build of a model: the deploy format the sub-byte builds
# (sweeper.deploy.builds: lut, int4) are checked against, and the one the rows measure.
INT8 = "int8"

# What a "configuration" is: one trained setup, every fold of it. config_id hashes
# everything that determines the trained model except the fold (code fingerprint and
# library versions included); the named columns are kept for reading, and for rows of
# schema-2 stores, which have no config_id. Every aggregate over folds groups by these
# plus POINT_COLUMNS, so rows that differ in anything that changes a result are never
# averaged together.
CONFIG_COLUMNS = ("config_id", "dataset", "dataset_options", "model", "quantizer", "train", "k", "seed",
                  "defense", "defense_label", "defense_params", "eval_bits")
# One evaluation of a configuration: an attack with its parameters at one budget, on a
# fixed number of samples, what it queried (the model or its deployed build), and for a
# transfer attack the configuration that crafted the examples (null: white-box), so
# transfer, white-box and deployed rows are never averaged together.
POINT_COLUMNS = ("attack", "attack_label", "norm", "eps", "eps_label", "attack_params", "n_samples",
                 "source_config_id", "target")
# The per-sample outcome columns (equal-length lists, one entry per attacked sample).
OUTCOME_COLUMNS = ("sample_index", "clean_correct", "adv_correct", "adv_pred", "pert_linf", "pert_l2",
                   "pert_l1")
# What a column reads where a fragment lacks it or holds null, where null would be wrong:
# rows from before defenses were trained without one, rows from before deployed attacks
# attacked the model.
ABSENT_MEANS = {"defense": NONE, "defense_label": NONE, "defense_params": "{}", "target": MODEL_TARGET}

# The libraries a row records the version of, by their row column (the store's provenance).
LIBRARIES = {"sweeper_version": "sweeper", "tensorflow_version": "tensorflow", "qkeras_version": "qkeras",
             "art_version": "adversarial-robustness-toolbox", "sklearn_version": "scikit-learn",
             "ray_version": "ray"}
# Those whose major.minor version is part of a job's identity: they train the model
# (TensorFlow, QKeras), attack it (ART), and decide the folds (scikit-learn).
ID_LIBRARIES = ("tensorflow", "qkeras", "adversarial-robustness-toolbox", "scikit-learn")


@functools.lru_cache(maxsize=None)
def version_of(package: str) -> str:
    """The installed version of ``package``, or "not installed"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"

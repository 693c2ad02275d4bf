"""The columns of a result row (``store.schema.COLUMNS``) as a trial fills them: the job's
(identity, data, test accuracy, provenance), its model's footprints (deployed, measured,
packed), its defense's, and each cell's (attack, budget, source, target). The outcome
columns are ``evaluate.py``'s."""

from __future__ import annotations

import hashlib
import json
import socket
from datetime import datetime, timezone
from typing import Any

import numpy as np

from sweeper import store
from sweeper.deploy import footprint
from sweeper.plan.expand import ID_VERSION, Cell, TrainingJob
from sweeper.run.evaluate import accuracy


def job_columns(job: TrainingJob, context, data, model, test_idx, trained: bool, train_s: float) -> dict[str, Any]:
    """The columns every row of a job shares, but for the footprints and the defense's."""
    return {
        "job_id": job.job_id, "config_id": job.config_id, "id_version": ID_VERSION,
        "grid": context.grid_name, "dataset": job.dataset,
        "dataset_options": json.dumps(dict(job.dataset_options), sort_keys=True),
        "model": job.model, "quantizer": job.quantizer, "model_fingerprint": job.model_fingerprint,
        "weights_sha256": weights_sha256(model), "fold": job.fold, "k": job.k,
        "seed": job.seed, "train": json.dumps(dict(job.train), sort_keys=True),
        "test_acc": accuracy(model, data.x[test_idx], data.y[test_idx]),
        "mcu_targets": list(context.mcus), "model_cached": not trained, "train_s": train_s,
        "host": socket.gethostname(), "node": "",
        "n_classes": data.nb_classes, "n_features": int(np.prod(data.input_shape)),
        "clip_min": float(data.clip_values[0]), "clip_max": float(data.clip_values[1]),
        "feature_scaling": data.scaling, "fold_grouping": data.grouping,
        "launch_id": context.launch_id, **store.library_versions(),
    }


def weights_sha256(model) -> str:
    """A hash of the trained weights (values, shapes and order): two rows of one job
    computed with different models can be told apart."""
    digest = hashlib.sha256()
    for weights in model.get_weights():
        digest.update(str(weights.shape).encode())
        digest.update(np.ascontiguousarray(weights).tobytes())
    return digest.hexdigest()[:16]


def footprint_columns(model, deployment) -> dict[str, Any]:
    """The three footprints: deployed (what the MCU fit uses), measured, packed."""
    kb = footprint.BITS_PER_KB
    measured = deployment.error is None
    if measured:
        flash, ram = footprint.deployed_kb(deployment.flatbuffer_bytes, deployment.arena_bytes)
    else:  # the converter refused: int8 estimates of the same quantities
        flash = footprint.int8_weight_bits(model) / kb + footprint.RUNTIME_FLASH_KB
        ram = footprint.peak_activation_bits(model, fused=True, bits=8) / kb * (1 + footprint.ARENA_MARGIN)
    return {
        "params": int(model.count_params()), "flash_kb": flash, "ram_kb": ram,
        "footprint_source": "measured" if measured else "estimate",
        "tflite_kb": deployment.flatbuffer_bytes / 1024 if measured else None,
        "arena_kb": deployment.arena_bytes / 1024 if measured else None,
        **footprint.packed_kb(model),
        "deploy_error": deployment.error, "deploy_s": deployment.convert_s + deployment.arena_s,
    }


def defense_columns(job: TrainingJob, reg: float | None) -> dict[str, Any]:
    return {"defense": job.defense, "defense_label": job.defense_label,
            "defense_params": json.dumps(dict(job.defense_params), sort_keys=True), "defense_reg": reg}


def cell_columns(cell: Cell) -> dict[str, Any]:
    source = cell.source
    return {"cell_id": cell.cell_id, "attack": cell.attack, "attack_label": cell.attack_label,
            "norm": cell.norm, "eps": cell.eps, "eps_label": cell.eps_label,
            "attack_params": json.dumps(cell.art_params(), sort_keys=True, default=str),
            "finished_at": datetime.now(timezone.utc).isoformat(),
            "source_job_id": source and source.job_id, "source_config_id": source and source.config_id,
            "source_model": source and source.model, "source_quantizer": source and source.quantizer,
            "transfer_rate": None, "eval_bits": cell.eval_bits, "target": cell.target}

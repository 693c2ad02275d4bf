"""Transfer attacks in a trial: a source cell (``Cell.keeps_arrays``) stores its
adversarial examples, the job's attacked samples with their indices and the source's
outcomes, once, as ``<adversarial folder>/<cell_id>.npz`` (``keeper``); a transfer cell
loads its source cell's file, checks that it holds this job's samples, and costs a forward
pass of the target (``transfer``). A transfer cell's controls are its source's: placed with
the source job's seed on the samples the source attacked."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from sweeper import store
from sweeper.plan.expand import Cell, seed_of
from sweeper.run.evaluate import (Samples, control_predictions, deployed_predict, has_controls, held_to_budget,
                                  perturbation_norms, predict, robust, target_columns)


def keeper(folder: str, samples: Samples):
    """Stores a source cell's examples (as its row counts them: an example outside the
    budget is the clean input) with the samples' indices and the source's outcomes
    (``clean_ok``: the attacked network's clean outcomes)."""
    location = store.locate(folder)

    def keep(cell: Cell, x_used: np.ndarray, pred: np.ndarray, clean_ok: np.ndarray) -> None:
        if not cell.keeps_arrays:  # only source cells: a transfer cell needs their examples
            return
        store.put_arrays(location, f"{cell.cell_id}.npz", sample_index=samples.index, x_adv=x_used,
                         clean_correct=clean_ok, adv_correct=robust(clean_ok, pred, samples.y))

    return keep


def transfer(cell: Cell, model, deployed, samples: Samples, folder: str | None, classifier=None) -> dict[str, Any]:
    """A transfer cell's columns: the target (this job's model and its .tflite) on its
    source cell's stored examples, a forward pass each, and the transfer rate; for an
    attack with controls, the target on the source's controls (same samples and places)."""
    started = time.perf_counter()
    source = _source_arrays(cell, samples, folder)
    x_adv = source["x_adv"]
    adv_pred = predict(model, x_adv)
    attack_s = time.perf_counter() - started
    # The source kept only examples within the budget; the same rule as evaluate, so a
    # row never counts an example outside eps.
    _, pred, columns = held_to_budget(cell, samples, perturbation_norms(samples.x, x_adv), adv_pred,
                                      deployed_predict(deployed, x_adv))
    rate = transfer_rate(source["clean_correct"], source["adv_correct"], samples.clean_ok,
                         robust(samples.clean_ok, pred, samples.y))
    controls = control_predictions(cell, model, classifier, samples, source["clean_correct"].astype(bool),
                                    seed_of(cell.source.job_id)) if has_controls(cell) else None
    return {**columns, **target_columns(cell, samples, pred, controls), "attack_s": attack_s,
            "transfer_rate": rate}


def transfer_rate(source_clean: np.ndarray, source_adv: np.ndarray, target_clean: np.ndarray,
                  target_adv: np.ndarray) -> float:
    """Share of the samples both models classify correctly, and whose example fools the
    source, that also fool the target (NaN when there are none)."""
    base = source_clean & target_clean & ~source_adv
    return float(np.sum(base & ~target_adv) / base.sum()) if base.any() else float("nan")


def _source_arrays(cell: Cell, samples: Samples, folder: str | None) -> dict[str, np.ndarray]:
    """The source cell's stored examples, checked to be of this job's samples: a mismatch
    would silently pair one sample's example with another's label."""
    source = cell.source
    arrays = store.get_arrays(store.locate(folder), f"{source.cell_id}.npz") if folder else None
    if arrays is None:
        raise RuntimeError(f"transfer cell {cell.cell_id}: the examples of source cell {source.cell_id} "
                           f"(job {source.job_id}, {source.model}/{source.quantizer}) are not in the store; "
                           f"its job must finish first (did it fail?)")
    if not np.array_equal(arrays["sample_index"], samples.index) or arrays["x_adv"].shape != samples.x.shape:
        raise RuntimeError(f"transfer cell {cell.cell_id}: source cell {source.cell_id} holds examples of other "
                           f"samples ({len(arrays['sample_index'])} stored, {len(samples.index)} here, "
                           f"indices differ); source and target must share dataset, fold, seed and sample count")
    return arrays

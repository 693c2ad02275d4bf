"""Evaluating a trained model at its cells: the attacked samples and the clean predictions
(``Samples``), which cells share one attack run (``attack_groups``: a minimal-perturbation
attack runs once and every budget is derived from its norms), the attack itself on the
samples the model gets right, the post-hoc budget, the controls, and the columns of the
outcome: per-sample outcomes of the QKeras model and of its int8 .tflite on the same
examples, or of the build itself on a deployed cell (``evaluate_deployed``).

``robust`` is the one definition of a robust sample every row's ``adv_correct`` uses.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from sweeper.keys import DEPLOYED_TARGET, NONE, OUTCOME_COLUMNS
from sweeper.models import predict_logits
from sweeper.plan.expand import Cell

@dataclass(frozen=True)
class Samples:
    """The attacked test samples of a job, and the model's clean predictions of them."""

    index: np.ndarray  # positions in the pooled dataset
    x: np.ndarray
    y: np.ndarray
    clean_pred: np.ndarray
    deployed_clean_pred: np.ndarray | None  # the int8 .tflite's (None: not deployable)

    @property
    def clean_ok(self) -> np.ndarray:
        return self.clean_pred == self.y


def robust(clean_ok: np.ndarray, adv_pred: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per sample: robust in a cell, i.e. the model classifies both the clean input and
    the cell's example correctly. The one definition every row's ``adv_correct`` (and the
    deployed build's, with its own clean predictions) uses: a sample the model gets wrong
    unperturbed is never robust, even where an example not crafted against it (transfer,
    another model's patch) happens to land on its label."""
    return clean_ok & (adv_pred == y)


def predict(model, x: np.ndarray) -> np.ndarray:
    return np.argmax(predict_logits(model, x), axis=1)


def accuracy(model, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(model, x) == y))


def model_classifier(model, data):
    """The model as the compiled ART classifier attacks query."""
    from sweeper import attacks

    return attacks.make_classifier(model, data.nb_classes, data.input_shape, data.clip_values)


def deployed_predict(deployment, x: np.ndarray) -> np.ndarray | None:
    """The .tflite's predictions, or None where there is none (not deployable, or cells
    at another bit width than the one deployed)."""
    from sweeper import deploy

    if deployment is None or deployment.flatbuffer is None:
        return None
    return deploy.evaluate(deployment.flatbuffer, x).predictions


def attack_groups(cells: Sequence[Cell]) -> list[list[Cell]]:
    """Cells that share one attack run. A minimal-perturbation attack (C&W, Boundary,
    HopSkipJump, ZOO) has no budget: it runs once, unbounded, per (attack, norm,
    parameters, target), and every eps of it is derived from the perturbation norms it
    found (as Foolbox 3's minimization attacks do). Every other cell is its own group."""
    from sweeper.attacks import is_minimal

    groups: dict[tuple, list[Cell]] = {}
    for cell in cells:
        minimal = cell.attack != NONE and is_minimal(cell.attack)
        key = (cell.attack, cell.norm, cell.params, cell.target) if minimal else (cell.cell_id,)
        groups.setdefault(key, []).append(cell)
    return list(groups.values())


def evaluate(group: list[Cell], model, deployed, classifier, samples: Samples, seed: int, keep=None,
              training_images: Callable[[], np.ndarray] | None = None):
    """(cell, columns) for each cell of one group: the accuracies and per-sample outcomes
    of the attacked network (the QKeras model; the build on a deployed cell, whose
    ``samples`` are then the build's: ``_evaluate_deployed``) and of its deployed .tflite
    on the same adversarial examples. ``keep(cell, x_used, pred, clean_ok)`` gets every
    cell's examples as its row counts them (a source cell's are stored, every cell's
    check the builds)."""
    from sweeper.attacks import is_minimal

    first = group[0]
    started = time.perf_counter()
    x_adv = adversarial(first, classifier, samples, math.inf if first.attack != NONE
                         and is_minimal(first.attack) else first.eps, seed, training_images)
    adv_pred, deployed_adv = predictions(first, model, deployed, classifier, samples, x_adv)
    attack_s = time.perf_counter() - started  # shared by every eps of a minimal attack
    norms = perturbation_norms(samples.x, x_adv)
    controls = control_predictions(first, model, classifier, samples, samples.clean_ok, seed)
    for cell in group:
        within, pred, columns = held_to_budget(cell, samples, norms, adv_pred, deployed_adv)
        if keep is not None:  # each keeper picks its cells (transfer's: source cells)
            keep(cell, np.where(within.reshape(-1, *[1] * (x_adv.ndim - 1)), x_adv, samples.x), pred,
                 samples.clean_ok)
        yield cell, {**columns, **target_columns(cell, samples, pred, controls), "attack_s": attack_s}


def predictions(cell: Cell, model, deployed, classifier, samples: Samples, x_adv: np.ndarray):
    """(the attacked network's predictions on x_adv, the deployed build's). On a deployed
    cell both are the build's, from the attack's own estimator (batched: checked bit for
    bit against one sample at a time when it was built)."""
    if cell.attack == NONE:
        return samples.clean_pred, samples.deployed_clean_pred
    if cell.target == DEPLOYED_TARGET:
        pred = np.argmax(classifier.predict(x_adv), axis=1)
        return pred, pred
    return predict(model, x_adv), deployed_predict(deployed, x_adv)


def evaluate_deployed(group: list[Cell], deployed, build_classifier: Callable[[], Any], samples: Samples,
                       seed: int, keep=None):
    """(cell, columns) for each cell of one group that attacks the deployed build
    (``target`` deployed) through ``build_classifier()`` (the .tflite as an ART
    classifier). Every outcome is the build's: its own clean predictions decide which
    samples are attacked and which count as robust (``robust``), and its predictions on
    the examples are ``adv_pred``; the deployed_* columns say the same. A model without
    a .tflite (conversion failed: the row's deploy_error says why) gets rows without
    outcomes."""
    if samples.deployed_clean_pred is None:
        for cell in group:
            yield cell, no_build_columns(samples)
        return
    build = Samples(samples.index, samples.x, samples.y, samples.deployed_clean_pred, samples.deployed_clean_pred)
    yield from evaluate(group, None, deployed, build_classifier(), build, seed, keep)


def no_build_columns(samples: Samples) -> dict[str, Any]:
    """A deployed cell's columns when there is no build to attack: the sample count, no
    outcome (null, never zero: nothing was measured)."""
    empty = dict.fromkeys(("clean_acc", "adv_acc", "attack_success_rate", *OUTCOME_COLUMNS, *TARGET_COLUMNS))
    return {**empty, **deployed_columns(samples, None), "n_samples": int(len(samples.y)), "attack_s": 0.0}


def deployed_classifier(deployed, data, check_inputs=None):
    """The build as an ART classifier; its numpy forward is proven on check_inputs (the
    attacked samples) besides random and extreme inputs (attacks.deployed)."""
    from sweeper import attacks

    return attacks.make_deployed_classifier(deployed.flatbuffer, data.nb_classes, data.input_shape,
                                            data.clip_values, check_inputs=check_inputs)


def held_to_budget(cell: Cell, samples: Samples, norms: dict[str, np.ndarray], adv_pred: np.ndarray,
                   deployed_adv: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Post-hoc budget: an example outside the cell's eps (``attacks.within``, the rule
    every budget check uses) counts as a failed attack (the clean input). (which examples
    are within, the predictions counted, the outcome and deployed columns)."""
    from sweeper.attacks import within

    inside = within(norms[cell.norm], cell.eps) if cell.norm in norms else np.ones(len(samples.y), bool)
    pred = np.where(inside, adv_pred, samples.clean_pred)
    used = {name: np.where(inside, values, 0.0) for name, values in norms.items()}
    deployed_pred = None if deployed_adv is None else np.where(inside, deployed_adv, samples.deployed_clean_pred)
    return inside, pred, {**outcome_columns(samples, pred, used), **deployed_columns(samples, deployed_pred)}


def adversarial(cell: Cell, classifier, samples: Samples, eps: float, seed: int,
                 training_images: Callable[[], np.ndarray] | None = None) -> np.ndarray:
    """Adversarial versions of the samples. Only the samples the model gets right are
    attacked: a misclassified one is already adversarial, and the query-hungry attacks
    (ZOO, Boundary, Square) would spend most of their budget on it for nothing. An attack
    that trains on the training fold (the patch) gets its images, never the test samples."""
    from sweeper import attacks

    ok = samples.clean_ok
    if cell.attack == NONE or not ok.any():
        return samples.x
    needs = attacks.ATTACKS.get(cell.attack).needs_training_data and training_images is not None
    x_adv = samples.x.copy()
    x_adv[ok] = attacks.run(cell.attack, classifier, samples.x[ok], samples.y[ok], eps, cell.norm,
                            dict(cell.params), seed, x_train=training_images() if needs else None)
    return x_adv


def has_controls(cell: Cell) -> bool:
    from sweeper import attacks

    return cell.attack != NONE and attacks.ATTACKS.get(cell.attack).controls is not None


def control_predictions(cell: Cell, model, classifier, samples: Samples, attacked: np.ndarray,
                         seed: int) -> list[np.ndarray] | None:
    """The model's predictions on each of the cell's controls (``attacks.controls``: the
    patch's random and solid patches), pasted where the attack pasted, on the samples it
    perturbed (``attacked``; the others stay clean, as in its examples) with its seed.
    Forward passes only. None for an attack without controls and at eps 0."""
    from sweeper import attacks

    if not has_controls(cell) or cell.eps == 0:
        return None
    if not attacked.any():  # nothing was perturbed: each control is the clean input
        return [samples.clean_pred]
    made = attacks.controls(cell.attack, classifier, samples.x[attacked], cell.eps, cell.norm, dict(cell.params),
                            seed)
    predictions = []
    for x_control in made.values():
        x_all = samples.x.copy()
        x_all[attacked] = x_control
        predictions.append(predict(model, x_all))
    return predictions


TARGET_COLUMNS = ("target_rate", "target_n", "control_target_rate", "control_adv_acc")


def target_columns(cell: Cell, samples: Samples, pred: np.ndarray,
                    controls: list[np.ndarray] | None) -> dict[str, Any]:
    """A targeted attack with controls (the patch) scored against them (store.COLUMNS):
    its target rate and denominator, the highest target rate and the lowest (robust, as
    adv_acc's) accuracy of its controls. Null for every other row."""
    if controls is None:
        return dict.fromkeys(TARGET_COLUMNS)
    from sweeper.attacks import target_rate

    target = dict(cell.params)["target"]
    rate, n = target_rate(samples.y, samples.clean_pred, pred, target)
    rates = [target_rate(samples.y, samples.clean_pred, p, target)[0] for p in controls]
    return {"target_rate": rate, "target_n": n,
            "control_target_rate": float("nan") if n == 0 else max(rates),
            "control_adv_acc": min(float(np.mean(robust(samples.clean_ok, p, samples.y))) for p in controls)}


def deployed_columns(samples: Samples, deployed_pred: np.ndarray | None) -> dict[str, Any]:
    if deployed_pred is None:
        return {"deployed_clean_acc": None, "deployed_adv_acc": None, "deployed_adv_correct": None}
    clean_ok = samples.deployed_clean_pred == samples.y  # the .tflite's own, not the QKeras model's
    ok = robust(clean_ok, deployed_pred, samples.y)
    return {"deployed_clean_acc": float(clean_ok.mean()),
            "deployed_adv_acc": float(ok.mean()), "deployed_adv_correct": ok.tolist()}


def perturbation_norms(x: np.ndarray, x_adv: np.ndarray) -> dict[str, np.ndarray]:
    from sweeper.attacks import perturbation_norms

    return {norm: perturbation_norms(x, x_adv, norm) for norm in ("inf", "2", "1")}


def outcome_columns(samples: Samples, adv_pred: np.ndarray, norms: dict[str, np.ndarray]) -> dict[str, Any]:
    clean_ok = samples.clean_ok
    adv_ok = robust(clean_ok, adv_pred, samples.y)
    broken = np.sum(clean_ok & ~adv_ok)
    return {
        "n_samples": int(len(samples.y)), "clean_acc": float(clean_ok.mean()),
        "adv_acc": float(adv_ok.mean()),
        "attack_success_rate": float(broken / clean_ok.sum()) if clean_ok.any() else float("nan"),
        "sample_index": samples.index.tolist(), "clean_correct": clean_ok.tolist(),
        "adv_correct": adv_ok.tolist(), "adv_pred": adv_pred.astype(int).tolist(),
        "pert_linf": norms["inf"].astype(np.float32).tolist(),
        "pert_l2": norms["2"].astype(np.float32).tolist(),
        "pert_l1": norms["1"].astype(np.float32).tolist(),
    }

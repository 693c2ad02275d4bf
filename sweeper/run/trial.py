"""The trial: train one model (or load it from the cache), deploy it once (or measure the
cached .tflite), then attack it at every cell of its training job, producing one result
row per cell, and record its builds (``builds.py``: the int8 build and its sub-byte
variants, checked on the inputs its cells evaluated, in the store's builds/). Rows are
handed to ``report`` one at a time as they are computed.

Plain Python and TensorFlow, no Ray: a runner (``runners.py``) calls ``run_job`` for each
job, in a Ray Tune trial or in this process, and ``bench/overhead.py`` calls it directly.
What it composes lives beside it: training, the model cache and checkpoints
(``training.py``, ``cache.py``, ``checkpoints.py``), evaluating cells (``evaluate.py``:
deployed cells attack the int8 .tflite, cells of attacks with controls classify them too),
transfer cells (``transfer.py``) and the row's columns (``columns.py``).

Cells at other bit widths (``eval_bits``, a defense's ``widths``: dbwt) run last, per
width, with the same weights quantized at that width (``defenses.at_width``). Every row of
a job carries the model's input-to-logit and per-block Jacobian norms on the job's attacked
samples (``sweeper.models.jacobian.measure``), projections drawn from the job's seed, so a
cached model gives the same ones, and AutoAttack's sanity checks of the model on the same
samples (``sweeper.models.sanity.measure``: zero gradients, probabilities, randomness).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from sweeper import datasets
from sweeper.keys import DEPLOYED_TARGET, MODEL_TARGET, NONE
from sweeper.models import jacobian, sanity
from sweeper.plan.expand import Cell, TrainingJob
from sweeper.run import imports
from sweeper.run.builds import CheckInputs, record_builds
from sweeper.run.cache import ModelCache
from sweeper.run.checkpoints import CheckpointHooks, Checkpoints
from sweeper.run.columns import cell_columns, defense_columns, footprint_columns, job_columns
from sweeper.run.evaluate import (Samples, accuracy, attack_groups, deployed_classifier, deployed_predict, evaluate,
                                  evaluate_deployed, has_controls, model_classifier, predict)
from sweeper.run.profile import span
from sweeper.run.training import trained_model
from sweeper.run.transfer import keeper, transfer


@dataclass(frozen=True)
class JobContext:
    """What a trial needs besides the job: where to cache models and which MCUs to check."""

    grid_name: str
    mcus: tuple[str, ...]
    model_cache: str | None = None  # folder (path or URI) for trained weights; None: no cache
    launch_id: str = ""  # the launch whose provenance the rows point to
    checkpoints: str | None = None  # folder (path or URI) for training checkpoints; None: none
    checkpoint_every: int | str = "auto"  # the grid's train.checkpoint_every
    adversarial: str | None = None  # folder (path or URI) of source cells' examples; None: none
    results: str | None = None  # the store (path or URI) whose builds/ records the job's builds; None: no builds
    built: frozenset[str] = frozenset()  # jobs whose builds the store held when the launch began


@dataclass(frozen=True)
class JobOutcome:
    trained: bool  # False when the model came from the cache
    rows: int


def run_job(job: TrainingJob, cells: Sequence[Cell], data: datasets.Dataset,
            context: JobContext, report: Callable[[dict[str, Any]], None],
            hooks: CheckpointHooks | None = None) -> JobOutcome:
    """``hooks``: where else checkpoints go and come back from (Tune's API in a sweep)."""
    with span("imports"):  # a worker's first job pays them; later ones, nothing
        imports.load()
        import tensorflow as tf

    with span("setup"):
        tf.keras.backend.clear_session()  # reused workers would otherwise accumulate graphs
        train_idx, test_idx = datasets.fold_split(data.y, job.k, job.fold, job.seed, groups=data.groups)
        data = datasets.prepare_fold(data, train_idx)  # e.g. MFCCs scaled with training-fold statistics
        cache = ModelCache(context.model_cache)
    with span("train"):
        trained = trained_model(job, data, train_idx, cache,
                                Checkpoints(context.checkpoints, job.job_id, context.checkpoint_every, hooks))
    model = trained.model
    with span("deploy"):
        deployed = deploy_once(job, model, data.x[train_idx], cache)
    with span("measure"):
        subset = datasets.attack_subset(test_idx, cells[0].samples if cells else 0, job.seed)
        x, y = data.x[subset], data.y[subset]
        samples = Samples(subset, x, y, predict(model, x), deployed_predict(deployed, x))
        base = {**job_columns(job, context, data, model, test_idx, trained.trained, trained.train_s),
                **footprint_columns(model, deployed), "resumed_from_epoch": trained.resumed,
                **defense_columns(job, trained.defense_reg), **jacobian.measure(model, x, job.draw_seed),
                **sanity.measure(model, x, y)}
    own = [cell for cell in cells if cell.eval_bits is None]
    classifier = model_classifier(model, data) if any(c.attack != NONE and c.target == MODEL_TARGET
                                                      and (c.source is None or has_controls(c)) for c in own) else None
    build_classifier = functools.cache(lambda: deployed_classifier(deployed, data, x))  # built once, if needed
    keep = keeper(context.adversarial, samples) if context.adversarial else None
    check = CheckInputs(x)  # what the builds are checked on: these samples and every example below
    keep = check.wrap(keep) if context.results else keep
    training_images = lambda: data.x[train_idx]  # noqa: E731  (copied only for the patch)
    with span("attack"):
        for group in attack_groups([cell for cell in own if cell.source is None]):
            if group[0].target == DEPLOYED_TARGET:
                evaluated = evaluate_deployed(group, deployed, build_classifier, samples, job.draw_seed, keep)
            else:
                evaluated = evaluate(group, model, deployed, classifier, samples, job.draw_seed, keep,
                                     training_images)
            for cell, columns in evaluated:
                report({**base, **cell_columns(cell), **columns})
    if context.results:  # once per trained model, after its own cells made their examples
        with span("builds"):
            record_builds(job, base, deployed, check, cache, context.results, context.built)
    with span("transfer"):
        for cell in (cell for cell in own if cell.source is not None):  # after: nothing here is their source
            report({**base, **cell_columns(cell), **transfer(cell, model, deployed, samples, context.adversarial,
                                                             classifier)})
    with span("other widths"):
        for width in sorted({cell.eval_bits for cell in cells} - {None}):
            at_width = [cell for cell in cells if cell.eval_bits == width]
            for cell, columns in evaluate_at_width(job, width, at_width, model, data, test_idx, samples,
                                                   training_images):
                report({**base, **columns, **cell_columns(cell)})
    return JobOutcome(trained=trained.trained, rows=len(cells))


def evaluate_at_width(job: TrainingJob, width: int, cells: Sequence[Cell], model, data, test_idx,
                      samples: Samples, training_images):
    """(cell, columns) for a job's cells at another bit width: the same weights quantized
    at ``width`` (``defenses.at_width``), attacked on the same samples. The columns that
    describe the model change with it (configuration, test accuracy, packed footprint,
    Jacobians, sanity checks); the .tflite is the preset's, so nothing is deployed here."""
    from sweeper import defenses
    from sweeper.deploy import footprint

    with defenses.at_width(job.defense, model, width):
        at = Samples(samples.index, samples.x, samples.y, predict(model, samples.x), None)
        classifier = model_classifier(model, data) if any(c.attack != NONE for c in cells) else None
        columns = {
            "config_id": job.config_id_at(width), "eval_bits": width,
            "test_acc": accuracy(model, data.x[test_idx], data.y[test_idx]),
            **footprint.packed_kb(model), **jacobian.measure(model, samples.x, job.draw_seed),
            **sanity.measure(model, samples.x, samples.y),
        }
        for group in attack_groups(cells):
            for cell, outcome in evaluate(group, model, None, classifier, at, job.draw_seed,
                                          training_images=training_images):
                yield cell, {**columns, **outcome}


def deploy_once(job: TrainingJob, model, x_train: np.ndarray, cache: ModelCache):
    """The model converted to a full-int8 .tflite and measured (``deploy.Deployment``),
    kept in the model cache beside the weights; a cached .tflite is measured, not rebuilt."""
    from sweeper import deploy

    cached = cache.tflite(job.job_id)
    if cached is not None:
        return deploy.measure(cached)
    # A seeded draw from the training fold calibrates the int8 ranges.
    chosen = np.random.default_rng(job.draw_seed).permutation(len(x_train))[:deploy.REPRESENTATIVE_SAMPLES]
    deployment = deploy.deploy(model, x_train[np.sort(chosen)])
    if deployment.flatbuffer is not None:
        cache.save_tflite(job.job_id, deployment.flatbuffer)
    return deployment

"""Expansion: a validated grid -> training jobs and result cells, with stable ids.

No Ray. A *training job* is one model to train (dataset x model x quantizer x fold,
with the seed and training settings); a *cell* is one result row: a job's model
evaluated under one (attack, epsilon), the clean evaluation (attack ``none``) included.
Each model is trained once and attacked at every cell of its job.

Ids hash everything that determines a result, so they are the same across runs and
machines, and change when anything that matters changes: the names and settings, the
preset's quantizer expressions, a fingerprint of the built model (its layer
configuration, ``models.fingerprint``), the major.minor versions of the libraries that
train and attack it and make the folds, and ``ID_VERSION`` for deliberate changes to
sweeper's own procedure. Fingerprinting builds each distinct model once, so it imports
TensorFlow; ``expand(grid, fingerprints=False)`` skips it for a quick count (``sweeper
validate``), and such a plan cannot be launched.

Transfer attacks (an attack entry with a ``source``): a *transfer cell* on target job T
evaluates T on the adversarial examples of a *source cell*, the same attack, norm,
parameters and eps on the source job S (the same dataset, fold, seed and training
settings, with the source's model, quantizer and/or defense; a defended target's source
is trained with the same defense unless the entry names one). Every transfer cell's source cell is
in the plan (added to S's cells when the grid lists no such white-box attack) and is
marked ``keeps_arrays``: its examples are stored for the targets. A target that is its own
source gets no transfer cell (its white-box cell is that number). A transfer cell's
identity adds its source cell's id, so it never shares an id with a white-box cell, and
every id of a grid without transfer entries is what it was.

Deployed attacks (an attack entry with ``target: deployed``): the cell attacks the job's
int8 .tflite instead of its QKeras model. ``Cell.target`` enters the identity only when it
is ``deployed``, so every id of a grid without such entries is what it was; the label says
it (``square@deployed``, grid.py).

Bit widths (a defense with other ``widths``, dbwt): such a job's white-box cells are
repeated at each width of its ``bits`` other than the preset's own, with ``Cell.eval_bits``
set (in the cell's identity only then). Their rows belong to a configuration of their own
(``TrainingJob.config_id_at``): the same weights quantized at another width are another
model, never averaged with the preset's. Transfer cells evaluate the preset's width only.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from sweeper.errors import UserError
from sweeper.keys import DEPLOYED_TARGET, ID_LIBRARIES, MODEL_TARGET, NONE, version_of
from sweeper.plan.entries import Epsilon
from sweeper.plan.grid import Grid

# Bump when a change to sweeper alters what a job or cell computes: old results then
# stop matching and are recomputed instead of silently mixed with new ones.
# 2: the stq and sbinary activations became batch-independent (sweeper.models.quantizers).
# 3: model fingerprints and library versions in job ids; GSC grouped folds and scaled
#    features; minimal-perturbation attacks run once, budgets derived from their norms.
# 4: each epoch shuffled by (job seed, epoch) (checkpointed training resumes exactly);
#    leaner activation quantizers (fewer graph ops: stochastic draws and dropout differ).
# 5: a sample is robust only if right on both its clean input and its example (transfer
#    rows counted wrong-on-clean samples); dq penalises the quantized kernels; APGD's DLR
#    guard survives compilation and no attack loses a finite fooling iterate to a NaN
#    (Square L2 on 8x8 inputs); patch cells score target rates beside controls.
ID_VERSION = 5


@dataclass(frozen=True)
class TrainingJob:
    dataset: str
    dataset_options: tuple[tuple[str, Any], ...]
    model: str
    quantizer: str
    fold: int
    k: int
    seed: int
    train: tuple[tuple[str, Any], ...]  # the grid's training settings, sorted
    model_fingerprint: str = ""  # models.fingerprint of the built model ("" when not computed)
    job_id: str = field(default="", compare=False)
    config_id: str = field(default="", compare=False)  # the job's id without its fold
    # The training-time defense (sweeper.defenses): its registry name, its grid label and
    # every parameter, sorted. It enters the ids only when it is not "none", so the ids of
    # grids without defenses are what they were before defenses existed.
    defense: str = NONE
    defense_label: str = NONE
    defense_params: tuple[tuple[str, Any], ...] = ()

    @property
    def dataset_key(self) -> tuple[str, tuple]:
        """Which loaded dataset this job needs: its name and options."""
        return self.dataset, self.dataset_options

    @property
    def draw_seed(self) -> int:
        """The seed the job's training, deployment and attacks draw from (``seed_of``)."""
        return seed_of(self.job_id)

    def identity(self) -> dict[str, Any]:
        return {**self.config_identity(), "fold": self.fold}

    def config_identity(self) -> dict[str, Any]:
        """Everything that determines the trained model except the fold."""
        from dataclasses import asdict

        from sweeper.models.quantizers import QUANTIZERS

        preset = {k: v for k, v in asdict(QUANTIZERS.get(self.quantizer)).items() if k != "description"}
        return {"v": ID_VERSION, "dataset": self.dataset, "dataset_options": dict(self.dataset_options),
                "model": self.model, "quantizer": self.quantizer, "preset": preset,
                "model_fingerprint": self.model_fingerprint, "k": self.k, "seed": self.seed,
                "train": dict(self.train), "libraries": library_minor_versions(), **self.defense_identity()}

    def config_id_at(self, eval_bits: int | None) -> str:
        """The configuration of this job's rows evaluated at ``eval_bits`` (dbwt's other
        widths): the same weights quantized otherwise are another configuration."""
        if eval_bits is None:
            return self.config_id
        return stable_id({**self.config_identity(), "eval_bits": eval_bits})

    def defense_identity(self) -> dict[str, Any]:
        if self.defense == NONE:
            return {}
        return {"defense": {"name": self.defense, "params": dict(self.defense_params)}}


@dataclass(frozen=True)
class Source:
    """The source cell of a transfer cell, and what its rows say about the source."""

    cell_id: str  # the white-box cell whose adversarial examples are evaluated
    job_id: str
    config_id: str
    model: str
    quantizer: str


@dataclass(frozen=True)
class Cell:
    job_id: str
    attack: str  # registry name, or "none" for the clean evaluation
    attack_label: str  # unique per grid: the label, or the name
    norm: str
    eps: float
    eps_label: str
    params: tuple[tuple[str, Any], ...]  # every parameter passed to the attack, sorted
    samples: int
    cell_id: str = field(default="", compare=False)
    source: Source | None = None  # set on a transfer cell
    # A source cell: its adversarial examples are stored for transfer cells (not part of
    # its identity: storing them does not change its row).
    keeps_arrays: bool = field(default=False, compare=False)
    # dbwt: the bit width the job's weights are quantized at for this cell; None: the
    # preset's own (every cell of every other defense).
    eval_bits: int | None = None
    # What the attack queries: the QKeras model, or the job's int8 .tflite ("deployed").
    target: str = MODEL_TARGET

    def identity(self) -> dict[str, Any]:
        identity = {"job": self.job_id, "attack": self.attack, "norm": self.norm, "eps": self.eps,
                    "params": self.art_params(), "samples": self.samples}
        if self.source is not None:  # only then: white-box ids stay what they were
            identity["source"] = self.source.cell_id
        if self.eval_bits is not None:  # likewise
            identity["eval_bits"] = self.eval_bits
        if self.target == DEPLOYED_TARGET:  # likewise
            identity["target"] = self.target
        return identity

    def art_params(self) -> dict[str, Any]:
        """Everything passed to ART at this cell's eps: the grid's parameters (relative
        ones such as ``eps_step: eps/4`` resolved) and the ones sweeper pins, less the
        spec's ``late_params`` at their default (the patch's ``placement: random``), which
        would change the ids of cells computed before they existed."""
        if self.attack == NONE:
            return {}
        from sweeper.attacks import recorded_params

        return recorded_params(self.attack, dict(self.params), self.eps)


@dataclass(frozen=True)
class Plan:
    grid: Grid
    jobs: tuple[TrainingJob, ...]
    cells: tuple[Cell, ...]
    fingerprinted: bool = True  # False: ids lack the model fingerprints (a count, not a plan to run)

    def cells_of(self, job_id: str) -> list[Cell]:
        return self._cells_by_job().get(job_id, [])

    def _cells_by_job(self) -> dict[str, list[Cell]]:
        # Built once: a 100k-cell plan would otherwise rescan every cell per job.
        if "_by_job" not in self.__dict__:
            by_job: dict[str, list[Cell]] = {}
            for cell in self.cells:
                by_job.setdefault(cell.job_id, []).append(cell)
            object.__setattr__(self, "_by_job", by_job)
        return self.__dict__["_by_job"]

    def axis_counts(self) -> dict[str, int]:
        """Distinct values per axis, in the order a reader scans a grid."""
        attack_points = Counter((c.attack_label, c.eps_label) for c in self.cells)
        return {
            "datasets": len({job.dataset for job in self.jobs}),
            "models": len({job.model for job in self.jobs}),
            "quantizers": len({job.quantizer for job in self.jobs}),
            "defenses": len({job.defense_label for job in self.jobs}),
            "folds": len(self.grid.folds.indices()),
            "attacks (with none)": len({c.attack_label for c in self.cells}),
            "attack x epsilon points": len(attack_points),
        }


def seed_of(job_id: str) -> int:
    """The seed a job draws from, from its id: a transfer cell's controls use its source's."""
    return int(job_id[:8], 16) % (2**31 - 1)


def stable_id(identity: dict[str, Any]) -> str:
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def library_minor_versions() -> dict[str, str]:
    """major.minor of each of ``keys.ID_LIBRARIES`` (a patch release does not change results)."""
    return {package: ".".join(version_of(package).split(".")[:2]) for package in ID_LIBRARIES}


def expand(grid: Grid, fingerprints: bool = True) -> Plan:
    """The plan of a grid. ``fingerprints`` False leaves the model fingerprints out of the
    ids (no TensorFlow import): enough to count and validate, not to run or compare."""
    jobs = tuple(_jobs(grid, fingerprints))
    if len({job.job_id for job in jobs}) != len(jobs):
        raise UserError("datasets: a dataset is listed twice with the same options")
    own = {job.job_id: _cells(grid, job) for job in jobs}
    transfers = _transfer_cells(grid, jobs, own)
    cells = tuple(cell for job in jobs for cell in [*own[job.job_id], *transfers[job.job_id]])
    _reject_duplicates(cells)
    return Plan(grid, jobs, cells, fingerprinted=fingerprints)


def _reject_duplicates(cells: tuple[Cell, ...]) -> None:
    first_label: dict[str, str] = {}
    for cell in cells:
        seen = first_label.setdefault(cell.cell_id, cell.attack_label)
        if seen != cell.attack_label:
            raise UserError(f"attacks: {seen!r} and {cell.attack_label!r} define the same "
                            f"cells (same attack, norm, parameters and epsilon)")


def _jobs(grid: Grid, fingerprints: bool):
    train = tuple(sorted(grid.train.model_dump().items()))
    for dataset, model, quantizer, defense in grid.setups():
        options = tuple(sorted(dataset.resolved_options().items()))
        fingerprint = _fingerprint(dataset.name, options, model, quantizer) if fingerprints else ""
        params = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)  # hashable
                              for k, v in defense.resolved_params().items()))
        for fold in grid.folds.indices():
            job = TrainingJob(dataset.name, options, model, quantizer, fold, grid.folds.k, grid.seed, train,
                              fingerprint, defense=defense.name, defense_label=defense.key, defense_params=params)
            job = _with_id(job, "job_id")
            yield replace(job, config_id=stable_id(job.config_identity()))


def _fingerprint(dataset: str, options: tuple, model: str, quantizer: str) -> str:
    from sweeper import datasets, models
    from sweeper.models.quantizers import QUANTIZERS

    input_shape, nb_classes = datasets.shape(dataset, dict(options))
    return models.fingerprint(model, input_shape, nb_classes, QUANTIZERS.get(quantizer))


def _cells(grid: Grid, job: TrainingJob) -> list[Cell]:
    """A job's white-box cells (the clean one first), and for a dbwt job the same cells
    again at each of its other bit widths."""
    samples = grid.samples_for(job.dataset)
    own = [_with_id(Cell(job.job_id, NONE, NONE, NONE, 0.0, "0", (), samples), "cell_id")]
    for entry in grid.attacks:
        if entry.source is not None or (entry.datasets is not None and job.dataset not in entry.datasets):
            continue  # transfer entries: _transfer_cells
        params = tuple(sorted(entry.resolved_params().items()))
        for eps in entry.eps:
            own.append(_with_id(_attack_cell(job.job_id, entry, eps, params, samples), "cell_id"))
    # The .tflite is the preset's: deployed cells are not repeated at other widths.
    return own + [_with_id(replace(cell, eval_bits=width), "cell_id")
                  for width in evaluation_widths(job) for cell in own if cell.target == MODEL_TARGET]


def evaluation_widths(job: TrainingJob) -> list[int]:
    """The bit widths besides the preset's own at which a job's model is evaluated: what
    its defense asks for (dbwt's other widths); none for most defenses."""
    from sweeper import defenses
    from sweeper.models.quantizers import QUANTIZERS

    return defenses.evaluation_widths(job.defense, dict(job.defense_params), QUANTIZERS.get(job.quantizer))


def _attack_cell(job_id: str, entry, eps: Epsilon, params, samples: int, label: str | None = None) -> Cell:
    return Cell(job_id, entry.name, label or entry.key, entry.resolved_norm(), eps.value, eps.label,
                params, samples, target=entry.target)


def _transfer_cells(grid: Grid, jobs: tuple[TrainingJob, ...], own: dict[str, list[Cell]]) -> dict[str, list[Cell]]:
    """Each job's transfer cells. Their source cells are added to (or marked in) ``own``:
    a source job's white-box cell that a transfer entry needs is in the plan, keeping arrays."""
    by_setup = {(j.dataset_key, j.model, j.quantizer, j.defense_label, j.fold): j for j in jobs}
    transfers: dict[str, list[Cell]] = {job.job_id: [] for job in jobs}
    for job in jobs:
        samples = grid.samples_for(job.dataset)
        for entry in grid.attacks:
            if entry.source is None or (entry.datasets is not None and job.dataset not in entry.datasets):
                continue
            model, quantizer = entry.source.of(job.model, job.quantizer)
            defense = entry.source.defense_of(job.defense_label)
            source_job = by_setup[job.dataset_key, model, quantizer, defense, job.fold]  # grid.py checked it
            if source_job.job_id == job.job_id:
                continue  # its own source: the white-box cell is that number
            params = tuple(sorted(entry.resolved_params().items()))
            for eps in entry.eps:
                source_cell = _with_id(_attack_cell(source_job.job_id, entry, eps, params, samples,
                                                    entry.white_box_key), "cell_id")
                source_cell = _keep_arrays(own[source_job.job_id], source_cell)
                source = Source(source_cell.cell_id, source_job.job_id, source_job.config_id, model, quantizer)
                cell = replace(_attack_cell(job.job_id, entry, eps, params, samples), source=source)
                transfers[job.job_id].append(_with_id(cell, "cell_id"))
    return transfers


def _keep_arrays(cells: list[Cell], wanted: Cell) -> Cell:
    """Mark ``wanted`` in ``cells`` as keeping its arrays, adding it if absent (the grid
    lists no such white-box attack); returns the cell as it is in the plan."""
    for index, cell in enumerate(cells):
        if cell.cell_id == wanted.cell_id:
            cells[index] = replace(cell, keeps_arrays=True)
            return cells[index]
    cells.append(replace(wanted, keeps_arrays=True))
    return cells[-1]


def _with_id(item, id_field: str):
    return replace(item, **{id_field: stable_id(item.identity())})

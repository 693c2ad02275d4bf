"""What a training job costs, estimated: the order in which a sweep starts its jobs.

This module owns the cost model and its constants, nothing else. It imports no Ray and
no TensorFlow: ``sweep.pending_work`` sorts jobs by ``job_seconds``, longest first, so
that no long job starts last while other workers sit idle (longest-processing-time-first
list scheduling, with estimated instead of true costs). ``makespan`` simulates that
schedule; ``bench/scale.py`` part 5 and ``tests/test_cost.py`` use it.

A job's estimate, in seconds on one CPU of the machine the constants were measured on:

- **training:** epochs x steps per epoch x the step cost. Steps per epoch come from the
  training samples of one fold (the pooled dataset's size x (k-1)/k) and the batch size.
  The step cost is the model's, on the dataset's input shape, times the preset's relative
  step cost; it scales with the batch size (a constant cost per sample);
- **evaluation:** one forward pass per sample of the held-out fold;
- **attacks:** for each cell, its samples x the forwards and gradients the attack asks per
  sample (counted from ART's loops, with the cell's parameters), plus one call latency per
  model call (per sample for attacks that run one sample at a time, per batch otherwise).
  A transfer cell attacks nothing: one forward pass per sample on its source's examples.
  A cell that attacks the deployed build costs ``DEPLOYED_FACTOR`` times its attack on the
  model (the TFLite reference kernels it queries are slower).

Where the constants come from: ``UNIT_COSTS`` (``unit_costs.csv``) is the unit-cost table
that ``bench/scale.py`` part 3 printed (docs/scale.md, section 2: one TensorFlow thread on a
shared 2-core machine, step costs varying up to 2x between runs); ``POOLED_SAMPLES`` and
the query counts are counted (docs/scale.md, section 1). Only the ratios between jobs
matter for the order, not the absolute seconds. To use new measurements (e.g. per-preset
step costs from ``bench/train_step.py``), replace the rows of ``unit_costs.csv``: an exact
(model, input, preset) row always wins over a derived one.
"""

from __future__ import annotations

import functools
import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sweeper.keys import DEPLOYED_TARGET, MODEL_TARGET, NONE

# ---------------------------------------------------------------- the constants

def _unit_costs() -> dict[tuple[str, tuple[int, ...], str], tuple[float, float, float, float]]:
    """``unit_costs.csv`` (beside this module; where its rows come from is said there):
    (model, input shape, preset) -> (s per training step of batch 64, forward ms per sample,
    gradient ms per sample, ms per batch-1 call)."""
    import csv

    with open(Path(__file__).with_name("unit_costs.csv"), newline="", encoding="utf-8") as file:
        rows = csv.DictReader(line for line in file if not line.startswith("#"))
        return {(row["model"], tuple(int(d) for d in row["input"].split("x")), row["preset"]):
                (float(row["step_s"]), float(row["forward_ms"]), float(row["gradient_ms"]), float(row["call_ms"]))
                for row in rows}


UNIT_COSTS = _unit_costs()  # measured: replace the file's rows when re-measured
# The only network timed with several presets; other models take its preset ratios.
REFERENCE = ("stq_net", (32, 32, 1))
MEASURED_BATCH = 64
# ASSUMED: a preset without a row of the reference network costs what a timed one does: the
# deterministic quantizers what int8 costs, the stochastic ones what stq costs (every
# preset of the paper grid has its row now; this serves presets added later).
PRESET_LIKE = {"int4": "int8", "int2": "int8", "ternary": "int8", "binary": "int8", "sbinary": "stq"}

# COUNTED (docs/scale.md section 1): samples of each pooled dataset (train + test).
POOLED_SAMPLES = {"digits": 1_797, "cifar10": 60_000, "svhn": 99_289, "gsc": 46_900}
# A dataset without a count: its jobs still rank among themselves by epochs, model,
# preset and cells; against counted datasets this is a guess (CIFAR-10's size).
UNKNOWN_POOLED_SAMPLES = 60_000

# ASSUMED (docs/scale.md section 1): Boundary's forwards per step, between 21 and 1,000.
BOUNDARY_FORWARDS_PER_STEP = 30
# ASSUMED (ART's HopSkipJump loop): single-sample calls per iteration besides the gradient
# estimate: a binary search towards the input (about log2 of distance / threshold, ~15
# on 8x8 inputs) and a few step-size halvings.
HOP_SKIP_JUMP_SEARCH_CALLS = 20
# MEASURED (bench/attacks.py deployed rows, README Benchmarks: Square on the int8 build
# over Square on the compiled QKeras model, 1.3x to 5.1x): a cell attacking the deployed
# build (target: deployed) queries the TFLite reference kernels, which are slower.
DEPLOYED_FACTOR = 3.0


@dataclass(frozen=True)
class Unit:
    """Costs of one network with one preset on one input shape, in seconds."""

    step: float  # one training step of MEASURED_BATCH samples
    forward: float  # per sample, batched
    gradient: float  # per sample, batched
    call: float  # latency of one model call (what batch-1 attacks pay per query)

    def times(self, other: "Unit", divisor: "Unit") -> "Unit":
        return Unit(*(s * o / d for s, o, d in zip(self._values(), other._values(), divisor._values())))

    def _values(self) -> tuple[float, float, float, float]:
        return self.step, self.forward, self.gradient, self.call


def _row(key) -> Unit:
    step, forward_ms, gradient_ms, call_ms = UNIT_COSTS[key]
    return Unit(step, forward_ms / 1e3, gradient_ms / 1e3, call_ms / 1e3)


# ---------------------------------------------------------------- unit costs

def unit(model: str, input_shape: Sequence[int], preset: str) -> Unit:
    """The unit costs of ``model`` with ``preset`` on ``input_shape``: the exact row if
    measured, else the model's fp row times the reference network's preset ratio."""
    shape = tuple(input_shape)
    if (model, shape, preset) in UNIT_COSTS:
        return _row((model, shape, preset))
    base = _fp_unit(model, shape)
    timed = _timed_like(preset)
    if timed == "fp":
        return base
    return base.times(_row((*REFERENCE, timed)), _row((*REFERENCE, "fp")))


def _timed_like(preset: str) -> str:
    if (*REFERENCE, preset) in UNIT_COSTS:
        return preset
    if preset in PRESET_LIKE:
        return PRESET_LIKE[preset]
    from sweeper.models.quantizers import QUANTIZERS  # a preset added later: judge by its kind

    return "stq" if QUANTIZERS.get(preset).stochastic else "int8"


def _fp_unit(model: str, shape: tuple[int, ...]) -> Unit:
    """fp costs; an unmeasured shape scales the nearest measured one by input size (an
    assumption: stq_net measured 0.82x for 0.48x the input values), an unmeasured model
    is costed as the reference network."""
    rows = [(m, s) for m, s, p in UNIT_COSTS if p == "fp" and m == model] or [REFERENCE]
    if (model, shape) in rows:
        return _row((model, shape, "fp"))
    size = math.prod(shape)
    nearest = min(rows, key=lambda row: abs(math.log(math.prod(row[1]) / size)))
    factor = size / math.prod(nearest[1])
    return Unit(*(value * factor for value in _row((*nearest, "fp"))._values()))


# ---------------------------------------------------------------- attack work

@dataclass(frozen=True)
class Work:
    """What an attack asks of the model for one sample, and how it batches the calls."""

    forwards: float = 0.0  # per sample
    gradients: float = 0.0  # per sample
    calls: float = 0.0  # model calls per batch of samples
    batch: int = 128  # samples per batch (1: one sample at a time)
    setup_gradients: float = 0.0  # per cell, whatever its samples (training a universal patch)
    setup_calls: float = 0.0


def attack_work(attack: str, params: Mapping[str, Any]) -> Work:
    """Queries per sample at most, counted from ART's loops (docs/scale.md section 1).
    Attacks early-stop on success, so these are upper bounds, alike for every job."""
    get = lambda name, default: params.get(name, default)  # noqa: E731
    if attack == NONE:
        return Work(forwards=1, calls=1)
    if attack == "fgsm":
        return Work(gradients=1, calls=1)
    if attack == "pgd":
        steps = get("max_iter", 7) * max(1, get("num_random_init", 1))
        return Work(gradients=steps, calls=steps)
    if attack in ("apgd_ce", "apgd_dlr"):  # one compiled step (loss + gradient) per iteration
        steps = get("max_iter", 100) * get("restarts", 1)
        return Work(gradients=steps, calls=steps)
    if attack == "square":  # one prediction and two loss evaluations per iteration
        queries = 3 * get("max_iter", 1000) * get("nb_restarts", 1)
        return Work(forwards=queries, calls=queries)
    if attack == "patch":  # train one patch on training images, then paste and predict
        steps = get("steps", 200)
        return Work(forwards=1, calls=1, setup_gradients=steps * get("batch_size", 64), setup_calls=steps)
    if attack == "boundary":  # one sample at a time: two calls per step
        steps = get("max_iter", 1000)
        return Work(forwards=steps * BOUNDARY_FORWARDS_PER_STEP, calls=2 * steps, batch=1)
    if attack == "hopskipjump":  # one sample at a time: a gradient estimate and searches per step
        steps = get("max_iter", 50)
        estimates = [min(int(get("init_eval", 100) * math.sqrt(k + 1)), get("max_eval", 10000))
                     for k in range(steps)]
        # sweeper's estimators predict an estimate's samples in one call, whatever ART's batch_size
        return Work(forwards=sum(estimates) + steps * HOP_SKIP_JUMP_SEARCH_CALLS,
                    calls=steps * (1 + HOP_SKIP_JUMP_SEARCH_CALLS), batch=1)
    iterations = get("max_iter", 10) * get("binary_search_steps", 10)
    if attack == "cw_l2":  # two class gradients and a halving/doubling line search
        searches = 1 + get("max_halving", 5) + get("max_doubling", 5)
        return Work(forwards=iterations * searches, gradients=2 * iterations,
                    calls=iterations * (2 + searches))
    if attack == "zoo":  # one sample at a time: 2 queries per coordinate, plus one
        return Work(forwards=iterations * (2 * get("nb_parallel", 128) + 1), calls=iterations, batch=1)
    return Work(gradients=1, calls=1)  # an attack added later: at least one gradient


FORWARD = Work(forwards=1, calls=1)  # one batched prediction per sample: a transfer cell


def attack_seconds(work: Work, samples: int, costs: Unit) -> float:
    per_sample = work.forwards * costs.forward + work.gradients * costs.gradient
    setup = work.setup_gradients * costs.gradient + work.setup_calls * costs.call
    return setup + samples * per_sample + math.ceil(samples / work.batch) * work.calls * costs.call


# ---------------------------------------------------------------- jobs

def training_seconds(train_samples: int, epochs: int, batch_size: int, costs: Unit) -> float:
    steps = epochs * math.ceil(train_samples / batch_size)
    return steps * costs.step * batch_size / MEASURED_BATCH


def job_seconds(job, cells: Iterable) -> float:
    """Estimated seconds of a ``TrainingJob`` that computes ``cells`` (the ``Cell`` s not
    yet stored): training (its model is cached once trained, but a job with pending cells
    is costed as if it trains), evaluating its held-out fold, and attacking."""
    return sum(job_breakdown(job, cells))


def job_breakdown(job, cells: Iterable) -> tuple[float, float, float]:
    """``job_seconds`` in its three parts: (training, evaluating the held-out fold, attacks)."""
    costs = _job_unit(job.model, job.dataset, job.dataset_options, job.quantizer)
    pooled = POOLED_SAMPLES.get(job.dataset, UNKNOWN_POOLED_SAMPLES)
    train = dict(job.train)
    training = training_seconds(pooled * (job.k - 1) // job.k, train["epochs"], train["batch_size"], costs)
    training *= defense_factor(job.defense, dict(job.defense_params))
    evaluation = attack_seconds(Work(forwards=1, calls=1), math.ceil(pooled / job.k), costs)
    attacks = sum(attack_seconds(FORWARD if cell.source is not None else _cell_work(cell.attack, cell.params),
                                 cell.samples, costs) * _target_factor(cell) for cell in cells)
    return training, evaluation, attacks


def _target_factor(cell) -> float:
    return DEPLOYED_FACTOR if getattr(cell, "target", MODEL_TARGET) == DEPLOYED_TARGET else 1.0


# MEASURED (bench/train_step.py --defenses all, stq_net int4, one run on busy cores: README,
# Defenses): a defended training step over a plain one. Adversarial training pays one
# forward and backward pass per attack step on top of the training step.
DEFENSE_FACTORS = {NONE: 1.0, "jr": 3.3, "dq": 1.2, "dbwt": 1.05}


def defense_factor(defense: str, params: Mapping[str, Any]) -> float:
    """How many plain training steps one step of ``defense`` costs."""
    if defense in ("fgsm_at", "pgd_at"):
        return 1.0 + params.get("steps", 1 if defense == "fgsm_at" else 7)
    return DEFENSE_FACTORS.get(defense, 1.0)


@functools.lru_cache(maxsize=None)
def _job_unit(model: str, dataset: str, options: tuple, preset: str) -> Unit:
    from sweeper import datasets  # the shape only: no data is loaded

    return unit(model, datasets.shape(dataset, options)[0], preset)


def _cell_work(attack: str, params: tuple) -> Work:
    # The grid's parameters over the attack's defaults; cached, as a plan has many cells
    # with the same few parameter sets (falls back when a value is unhashable).
    try:
        return _cached_work(attack, params)
    except TypeError:
        return _cached_work.__wrapped__(attack, params)


@functools.lru_cache(maxsize=4096)
def _cached_work(attack: str, params: tuple) -> Work:
    from sweeper.attacks import ATTACKS

    defaults = ATTACKS.get(attack).defaults if attack in ATTACKS else {}
    return attack_work(attack, {**defaults, **dict(params)})


# ---------------------------------------------------------------- the schedule

def makespan(seconds_in_order: Iterable[float], slots: int) -> float:
    """Greedy list scheduling: each job, in the given order, starts on the first slot to
    come free; the time the last one ends. This is what Ray Tune does with a queue of
    equal-resource trials."""
    free = [0.0] * slots
    for seconds in seconds_in_order:
        heapq.heapreplace(free, free[0] + seconds)
    return max(free)


def lpt_bound(slots: int) -> float:
    """Graham's bound: longest-first list scheduling ends within this factor of the
    optimum (4/3 - 1/(3 slots))."""
    return 4 / 3 - 1 / (3 * slots)

"""Benchmark: how sweeper's bookkeeping, Ray Tune's per-trial overhead and the unit costs
of the paper's network scale. Prints figures and ratios; it is not a timed test.

1. Expansion bookkeeping. Builds digits/small_cnn grids of 10,000 and 100,000 cells in
   memory (``grid.validate`` then ``expand.expand``), growing the fold count and the
   epsilon lists: cells = jobs x (1 + eps points). For each: wall time to validate and
   expand, retained and peak Python memory (tracemalloc, in a second pass so the timing
   is not slowed by tracing), RSS growth, bytes per cell, and ``sweep.pending_work``
   with every other cell marked done. Then the 100k/10k ratios (~10x if linear).
2. Ray Tune per-trial overhead. A trivial trainable that reports one small result,
   run through ``tune.Tuner`` on a private local Ray instance (2 CPUs, 1 CPU a trial):
   N=50 and N=200 with ``reuse_actors=True``, N=20 with ``reuse_actors=False``. Prints
   seconds, seconds per trial, driver RSS growth per trial and the experiment
   directory's bytes per trial; then N=200 again under tracemalloc (the driver's Python
   heap per trial, steadier than RSS), and N=200 sweeper-like trials that each report
   18 rows of 1.5 KB, as a paper-grid job does.
3. Unit costs of the paper grid's networks on its input shapes (``UNIT_CONFIGS``:
   ``stq_net`` 32x32x1 with fp, int8 and stq, ``stq_net`` 49x10x1, ``resnet8``,
   ``dscnn``): one training step of batch 64 through ``sweeper.run.training.train`` (marginal
   cost: two trainings of different length, the difference divided by the extra steps,
   so compilation is excluded), and the forward / gradient cost per sample through
   sweeper's compiled ART classifier. Random data: timing only.
4. ZOO per sample with the paper grid's settings on a full-size, untrained stq_net (fp and
   stq presets, one random sample), counting the forward passes it asks for.
5. The schedule (no timing, no Ray): the paper grid's 270 jobs in ``sweep.pending_work``'s
   order (by ``sweeper.plan.cost``), in the order it used before (stochastic preset, then
   cells), in grid order and in LPT order (true costs), simulated as greedy list
   scheduling on 2/16/64/128 slots (``cost.makespan``). True costs: the per-job hours of
   docs/scale.md section 2, then with the faster stq step, then with per-job noise.

    python bench/scale.py [--skip-expand] [--skip-tune] [--skip-model] [--skip-zoo]
                          [--skip-schedule] [--schedule-only]
                          [--steps 200] [--only stq_net:fp,...]

Ray: ``address="local"`` starts a private instance (never connects to someone else's
cluster) and ``ray.shutdown()`` stops only that instance. The machine is shared: compare
ratios taken in one run, not absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sweeper  # noqa: E402,F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper.plan import expand, grid  # noqa: E402

PRESETS = ["fp", "int8", "int4", "int2", "ternary", "stq", "binary", "sbinary"]


# ------------------------------------------------------------------------------ memory

def _rss() -> int:
    """Resident set size of this process in bytes (psutil), else peak RSS (getrusage)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KB on Linux


def _rss_kind() -> str:
    try:
        import psutil  # noqa: F401

        return "RSS (psutil)"
    except ImportError:
        return "peak RSS (getrusage maxrss)"


def _mb(n: float) -> str:
    return f"{n / 1e6:8.1f} MB"


# ---------------------------------------------------------------- 1. expansion bookkeeping

def raw_grid(folds: int, fgsm_eps: int, pgd_eps: int) -> dict:
    """digits x small_cnn x 8 presets x ``folds`` folds; FGSM and PGD eps lists."""
    return {
        "name": f"scale-{folds}-{fgsm_eps + pgd_eps}",
        "datasets": ["digits"],
        "models": ["small_cnn"],
        "quantizers": list(PRESETS),
        "attacks": [
            {"name": "fgsm", "norm": "inf", "eps": [round((i + 1) / 1000, 6) for i in range(fgsm_eps)]},
            {"name": "pgd", "norm": "inf", "eps": [round((i + 1) / 1000, 6) for i in range(pgd_eps)],
             "params": {"max_iter": 7, "eps_step": "2/255"}},
        ],
        "folds": {"k": folds},
        "samples": 100,
    }


def _validate_expand(raw: dict):
    started = time.perf_counter()
    g = grid.validate(raw)
    validated = time.perf_counter()
    plan = expand.expand(g)
    return plan, validated - started, time.perf_counter() - validated


def measure_expansion(label: str, raw: dict) -> dict:
    from sweeper.run import sweep

    gc.collect()
    rss0 = _rss()
    plan, validate_s, expand_s = _validate_expand(raw)
    gc.collect()
    rss_delta = _rss() - rss0
    cells, jobs = len(plan.cells), len(plan.jobs)

    done = {cell.cell_id for cell in plan.cells[::2]}  # half the cells stored
    started = time.perf_counter()
    work = sweep.pending_work(plan, done)  # first call also builds the per-job index
    pending_cold_s = time.perf_counter() - started
    pending_warm_s = float("inf")
    for _ in range(3):  # best of 3: milliseconds on a shared machine are noisy
        started = time.perf_counter()
        sweep.pending_work(plan, done)
        pending_warm_s = min(pending_warm_s, time.perf_counter() - started)
    pending_cells = sum(len(c) for _, c in work)
    assert pending_cells == cells - len(done), (pending_cells, cells, len(done))
    del plan, work, done
    gc.collect()

    tracemalloc.start()
    plan, _, _ = _validate_expand(raw)
    retained, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del plan
    gc.collect()
    return {"label": label, "cells": cells, "jobs": jobs, "validate_s": validate_s,
            "expand_s": expand_s, "total_s": validate_s + expand_s, "retained": retained,
            "peak": peak, "rss_delta": rss_delta, "pending_cold_s": pending_cold_s,
            "pending_warm_s": pending_warm_s, "pending_cells": pending_cells}


def part_expansion() -> None:
    print("== 1. Expansion bookkeeping (grid.validate + expand.expand, sweep.pending_work)")
    # Warm-up: imports (pydantic schemas, attack registry) are not part of the figures.
    expand.expand(grid.validate(raw_grid(2, 1, 1)))
    sizes = [("10k", raw_grid(25, 25, 24)),     # 8 x 25 = 200 jobs x (1 + 49) = 10,000
             ("100k", raw_grid(100, 62, 62))]  # 8 x 100 = 800 jobs x (1 + 124) = 100,000
    rows = [measure_expansion(label, raw) for label, raw in sizes]
    print(f"{'grid':>5} {'cells':>8} {'jobs':>5} {'validate':>9} {'expand':>8} {'us/cell':>8} "
          f"{'retained':>11} {'B/cell':>7} {'peak':>11} {'peak B/cell':>11} {'RSS delta':>11} "
          f"{'pending (cold)':>14} {'(warm, best of 3)':>17}")
    for r in rows:
        print(f"{r['label']:>5} {r['cells']:>8,} {r['jobs']:>5} {r['validate_s']:8.3f}s "
              f"{r['expand_s']:7.2f}s {1e6 * r['total_s'] / r['cells']:8.1f} {_mb(r['retained'])} "
              f"{r['retained'] / r['cells']:7.0f} {_mb(r['peak'])} {r['peak'] / r['cells']:11.0f} "
              f"{_mb(r['rss_delta'])} {1e3 * r['pending_cold_s']:11.1f} ms {1e3 * r['pending_warm_s']:14.1f} ms")
    small, big = rows
    print(f"pending_work: {small['pending_cells']:,} / {big['pending_cells']:,} cells left "
          f"(every other cell marked done)")
    print("ratios 100k/10k (cells ratio = {:.1f}x):".format(big["cells"] / small["cells"]))
    for key, name in [("total_s", "validate+expand time"), ("expand_s", "expand time"),
                      ("retained", "retained memory"), ("peak", "peak memory"),
                      ("rss_delta", "RSS growth"), ("pending_cold_s", "pending_work (cold)"),
                      ("pending_warm_s", "pending_work (warm)")]:
        ratio = big[key] / small[key] if small[key] else float("nan")
        print(f"  {name:<22} {ratio:6.1f}x")
    print()


# ------------------------------------------------------------------- 2. Ray Tune overhead

# A paper-grid job reports 16 to 18 rows; a result row as JSON is about 1.5 KB.
ROW_REPORTS, ROW_BYTES = 18, 1500


def trivial(config):
    """One small result; with ``reports``/``row_bytes`` set, sweeper-like: one JSON row of
    about that size per cell, as sweeper's trials report (16 to 18 per paper-grid job)."""
    from ray import tune

    for cell in range(config.get("reports", 1)):
        tune.report({"i": config["i"], "cell": cell, "row": "x" * config.get("row_bytes", 0)})


def _dir_bytes(path: Path) -> tuple[int, int, int]:
    """(all bytes, bytes of experiment_state files, file count) under path."""
    total = state = files = 0
    for dirpath, _, names in os.walk(path):
        for name in names:
            size = os.path.getsize(os.path.join(dirpath, name))
            total += size
            files += 1
            state += size if name.startswith("experiment_state") else 0
    return total, state, files


def run_tune(n: int, reuse: bool, storage: str, trace: bool = False, reports: int = 1,
             row_bytes: int = 0) -> dict:
    from ray import tune

    name = (f"n{n}-{'reuse' if reuse else 'noreuse'}{'-traced' if trace else ''}"
            f"{f'-rows{reports}x{row_bytes}' if row_bytes else ''}")
    space = {"i": tune.grid_search(list(range(n)))}
    if row_bytes:
        space.update(reports=reports, row_bytes=row_bytes)
    tuner = tune.Tuner(
        tune.with_resources(trivial, {"cpu": 1}),
        param_space=space,
        tune_config=tune.TuneConfig(reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, verbose=0, storage_path=storage),
    )
    gc.collect()
    rss0 = _rss()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - started
    gc.collect()
    rss_delta = _rss() - rss0
    heap, heap_peak = tracemalloc.get_traced_memory() if trace else (0, 0)
    tracemalloc.stop()
    errors = sum(1 for r in results if r.error)
    if len(results) != n or errors:
        sys.exit(f"FAIL: {name}: {len(results)} results, {errors} errors (expected {n}, 0)")
    total, state, files = _dir_bytes(Path(storage) / name)
    return {"name": name, "n": n, "reuse": reuse, "s": seconds, "rss_delta": rss_delta,
            "dir_bytes": total, "state_bytes": state, "files": files, "heap": heap,
            "heap_peak": heap_peak}


def part_tune() -> None:
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # as sweeper does
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import ray

    print("== 2. Ray Tune per-trial overhead (trivial trainable, 1 CPU a trial, 2 CPUs)")
    started = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
             log_to_driver=False, object_store_memory=200 * 1024**2)
    print(f"ray {ray.__version__}: ray.init {time.perf_counter() - started:.1f} s; "
          f"driver memory: {_rss_kind()}")
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    rows = []
    try:
        with tempfile.TemporaryDirectory(prefix="sweeper-scale-") as storage:
            warm = run_tune(4, True, storage)  # first Tuner pays one-time imports and setup
            print(f"(warm-up, not in the table: N=4 with reuse took {warm['s']:.1f} s, "
                  f"driver +{warm['rss_delta'] / 1e6:.1f} MB)")
            for n, reuse in [(50, True), (200, True), (20, False)]:
                rows.append(run_tune(n, reuse, storage))
            traced = run_tune(200, True, storage, trace=True)
            rowlike = run_tune(200, True, storage, trace=True, reports=ROW_REPORTS,
                               row_bytes=ROW_BYTES)
    finally:
        ray.shutdown()
    print(f"{'N':>4} {'reuse_actors':>12} {'total':>8} {'s/trial':>8} {'driver RSS +':>12} "
          f"{'KB/trial':>9} {'exp dir':>10} {'KB/trial':>9} {'of which state':>15} {'files':>6}")
    for r in rows:
        print(f"{r['n']:>4} {str(r['reuse']):>12} {r['s']:7.1f}s {r['s'] / r['n']:8.3f} "
              f"{r['rss_delta'] / 1e6:9.1f} MB {r['rss_delta'] / r['n'] / 1e3:9.1f} "
              f"{r['dir_bytes'] / 1e3:7.0f} KB {r['dir_bytes'] / r['n'] / 1e3:9.1f} "
              f"{r['state_bytes'] / r['n'] / 1e3:12.1f} KB {r['files']:>6}")
    by = {(r["n"], r["reuse"]): r for r in rows}
    a, b, c = by[(50, True)], by[(200, True)], by[(20, False)]
    print(f"ratio N=200/N=50 total time (reuse)        : {b['s'] / a['s']:5.1f}x  (4.0x if linear)")
    print(f"marginal s/trial from N=50 to N=200 (reuse): {(b['s'] - a['s']) / 150:.3f} s")
    print(f"ratio s/trial reuse=False / reuse=True     : "
          f"{(c['s'] / c['n']) / (a['s'] / a['n']):5.1f}x vs N=50, "
          f"{(c['s'] / c['n']) / (b['s'] / b['n']):5.1f}x vs N=200")
    print(f"driver Python heap (tracemalloc, N=200 with reuse, run again traced, {traced['s']:.1f} s): "
          f"retained after fit {traced['heap'] / traced['n'] / 1e3:.1f} KB/trial, "
          f"peak during fit {traced['heap_peak'] / traced['n'] / 1e3:.1f} KB/trial")
    r = rowlike
    print(f"sweeper-like trials (N=200, reuse, {ROW_REPORTS} reports of a {ROW_BYTES}-byte row each): "
          f"{r['s']:.1f} s traced, driver Python heap retained {r['heap'] / r['n'] / 1e3:.1f} KB/trial "
          f"(peak {r['heap_peak'] / r['n'] / 1e3:.1f}), experiment dir {r['dir_bytes'] / r['n'] / 1e3:.1f} "
          f"KB/trial (state {r['state_bytes'] / r['n'] / 1e3:.1f} KB/trial)")
    print()


# ------------------------------------------------------------------------ 3. unit costs

def _time(fn, repeat: int) -> float:
    fn()  # warm-up: trace and compile
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


# (model, input shape, classes, preset): the paper grid's networks on its input shapes.
UNIT_CONFIGS = [
    ("stq_net", (32, 32, 1), 10, "fp"),     # CIFAR-10 / SVHN grayscale
    ("stq_net", (32, 32, 1), 10, "int8"),
    ("stq_net", (32, 32, 1), 10, "stq"),    # stochastic: samples while training
    ("stq_net", (49, 10, 1), 12, "fp"),     # GSC MFCCs, the paper's 12 words
    ("resnet8", (32, 32, 1), 10, "fp"),
    ("dscnn", (49, 10, 1), 12, "fp"),
]


def part_model(steps: int, only: str | None) -> None:
    import numpy as np
    import tensorflow as tf

    from sweeper import attacks, models
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan.entries import Train
    from sweeper.run.training import train

    tf.config.threading.set_intra_op_parallelism_threads(1)  # one trial = one CPU
    tf.config.threading.set_inter_op_parallelism_threads(1)
    print(f"== 3. Unit costs: training step (batch 64, sweeper.run.training.train, Adamax + cosine) and "
          f"forward/gradient per sample (sweeper's compiled ART classifier); 1 TF thread, "
          f"as in a 1-CPU trial; tensorflow {tf.__version__}")
    rng = np.random.default_rng(0)
    short = 20
    settings = Train(epochs=1, batch_size=64, optimizer="adamax", learning_rate=1e-3,
                     schedule="cosine", min_learning_rate=1e-6)
    print(f"{'model':>8} {'input':>8} {'preset':>7} {'params':>9} {'s/step':>7} {'ms/sample':>9} "
          f"{'fwd b1':>8} {'fwd b100':>9} {'fwd b257':>9} {'grad b100':>10}")
    print(f"{'':>8} {'':>8} {'':>7} {'':>9} {'(64)':>7} {'(train)':>9} {'ms/call':>8} "
          f"{'ms/sample':>9} {'ms/sample':>9} {'ms/sample':>10}")
    configs = [c for c in UNIT_CONFIGS if only is None or f"{c[0]}:{c[3]}" in only.split(",")]
    for name, shape, classes, preset in configs:
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(0)
        model = models.build(name, shape, classes, QUANTIZERS.get(preset))
        x = rng.random((64 * (short + steps), *shape), dtype=np.float32)
        y = rng.integers(0, classes, len(x))
        started = time.perf_counter()
        train(model, settings, x[: 64 * short], y[: 64 * short], classes)
        t_short = time.perf_counter() - started
        started = time.perf_counter()
        train(model, settings, x, y, classes)
        t_long = time.perf_counter() - started
        step_s = (t_long - t_short) / steps  # compile and setup cancel out
        clf = attacks.make_classifier(model, classes, shape, (0.0, 1.0))
        x1, x100, x257 = x[:1], x[:100], x[:257]
        onehot = np.eye(classes, dtype=np.float32)[y[:100]]
        fwd1 = _time(lambda: clf.predict(x1), 50)
        fwd100 = _time(lambda: clf.predict(x100), 10) / 100
        fwd257 = _time(lambda: clf.predict(x257), 5) / 257
        grad100 = _time(lambda: clf.loss_gradient(x100, onehot), 5) / 100
        print(f"{name:>8} {'x'.join(map(str, shape)):>8} {preset:>7} {model.count_params():>9,} "
              f"{step_s:7.3f} {1e3 * step_s / 64:9.2f} {1e3 * fwd1:8.2f} {1e3 * fwd100:9.3f} "
              f"{1e3 * fwd257:9.3f} {1e3 * grad100:10.3f}")
    print(f"(s/step is marginal: a {short}-step and a {short + steps}-step training, difference / "
          f"{steps}, so compilation cancels out; random inputs, timing only)")
    print()


def part_zoo(presets: list[str]) -> None:
    """ZOO with the paper grid's settings on one sample of a full-size, untrained stq_net."""
    import numpy as np
    import tensorflow as tf

    from sweeper import attacks, models
    from sweeper.models.quantizers import QUANTIZERS

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass  # already set by part 3
    print("== 4. ZOO per sample (paper settings: 10 binary-search steps x 10 iterations, "
          "nb_parallel 128, batch 1) on stq_net 32x32x1, untrained, 1 random sample, 1 TF thread")
    for preset in presets:
        tf.keras.backend.clear_session()
        tf.keras.utils.set_random_seed(0)
        model = models.build("stq_net", (32, 32, 1), 10, QUANTIZERS.get(preset))
        clf = attacks.make_classifier(model, 10, (32, 32, 1), (0.0, 1.0))
        x = np.random.default_rng(1).random((1, 32, 32, 1), dtype=np.float32)
        y = clf.predict(x).argmax(axis=1)  # attack the predicted label, as if correct
        calls, samples = [0], [0]
        predict = clf.predict

        def counting(xs, *args, **kwargs):
            calls[0] += 1
            samples[0] += len(xs)
            return predict(xs, *args, **kwargs)

        clf.predict = counting
        started = time.perf_counter()
        x_adv = attacks.run("zoo", clf, x, y, math.inf, "2",
                            {"max_iter": 10, "binary_search_steps": 10}, seed=0)
        seconds = time.perf_counter() - started
        success = bool(predict(x_adv).argmax(axis=1)[0] != y[0])
        print(f"  {preset:>5}: {seconds:6.1f} s/sample, {calls[0]:,} predict calls, "
              f"{samples[0]:,} forward samples ({1e3 * seconds / max(samples[0], 1):.2f} ms each), "
              f"adversarial found: {success}")
    print()


# ------------------------------------------------------------------ 5. the schedule

# The "true" cost of a paper-grid job in the simulation: sweeper.plan.cost's estimate from the
# unit costs measured by bench/train_step.py and part 3 (EXTRAPOLATED), so in the first
# scenario the estimate is right by construction and the others make it wrong.
SLOTS = (2, 16, 64, 128)
# Scenario 2: the stochastic presets' training half as costly as estimated (the stq step
# moved by about 2x between runs on shared cores before it was re-measured).
FAST_STQ_STEP = 0.5
NOISE_SIGMA, NOISE_DRAWS = 0.3, 200


def true_hours(job, stq_step: float, plan) -> float:
    """The extrapolated hours of a paper-grid job of ``plan`` (training, evaluation and its
    cells' attacks, by sweeper.plan.cost); ``stq_step`` scales the stochastic presets' training."""
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan import cost

    training, evaluation, attacks = cost.job_breakdown(job, plan.cells_of(job.job_id))
    scale = stq_step if QUANTIZERS.get(job.quantizer).stochastic else 1.0
    return (training * scale + evaluation + attacks) / 3600


def part_hours() -> None:
    """The paper grid's core-hours per (dataset, model, preset) and in total, from
    sweeper.plan.cost's unit costs (measured) and counts: what docs/scale.md section 2 quotes."""
    from sweeper.plan import cost
    from sweeper.run import sweep

    plan = expand.expand(grid.load(ROOT / "grids" / "paper.yaml"), fingerprints=False)
    print("== 6. Hours: the paper grid by sweeper.plan.cost (one CPU per trial; unit costs: cost.UNIT_COSTS)")
    parts = {job.job_id: cost.job_breakdown(job, plan.cells_of(job.job_id)) for job in plan.jobs}
    groups: dict[tuple, list] = {}
    for job in plan.jobs:
        groups.setdefault((job.dataset, job.model, job.quantizer), []).append(parts[job.job_id])
    print(f"{'dataset':<8} {'model':<9} {'preset':<8} {'jobs':>4} {'train h/job':>11} {'eval h/job':>10} "
          f"{'attack h/job':>12} {'total core-h':>12}")
    totals = [0.0, 0.0, 0.0]
    for (dataset, model, preset), rows in groups.items():
        sums = [sum(p[i] for p in rows) / 3600 for i in range(3)]
        totals = [t + x for t, x in zip(totals, sums)]
        print(f"{dataset:<8} {model:<9} {preset:<8} {len(rows):>4} {sums[0] / len(rows):11.1f} "
              f"{sums[1] / len(rows):10.2f} {sums[2] / len(rows):12.1f} {sum(sums):12,.0f}")
    hours = {job_id: sum(p) / 3600 for job_id, p in parts.items()}
    print(f"total {sum(totals):,.0f} core-h: training {totals[0]:,.0f}, evaluation {totals[1]:,.0f}, "
          f"attacks {totals[2]:,.0f} (upper bound); longest job {max(hours.values()):.1f} h")
    order = [hours[job.job_id] for job, _ in sweep.pending_work(plan, set())]
    for slots in SLOTS:
        m = cost.makespan(order, slots)
        print(f"  {slots:>3} slots: {m:8.1f} h = {m / 24:6.1f} days "
              f"(bound {max(sum(hours.values()) / slots, max(hours.values())):.1f} h)")
    print()


def schedule_orders(plan) -> dict[str, list]:
    """The paper grid's jobs in sweeper's order (sweep.pending_work, by sweeper.plan.cost), in
    the order it used before (stochastic preset first, then more cells), and as listed."""
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.run import sweep

    work = [(job, plan.cells_of(job.job_id)) for job in plan.jobs]
    old = sorted(work, key=lambda item: (QUANTIZERS.get(item[0].quantizer).stochastic, len(item[1])),
                 reverse=True)
    return {"cost": [job for job, _ in sweep.pending_work(plan, set())],
            "old": [job for job, _ in old], "grid": list(plan.jobs)}


def makespans(orders: dict[str, list], hours: dict[str, float], slots: int) -> dict[str, float]:
    """Makespan of each order, and of LPT (longest first by the true hours)."""
    from sweeper.plan.cost import makespan

    found = {name: makespan([hours[job.job_id] for job in jobs], slots) for name, jobs in orders.items()}
    found["lpt"] = makespan(sorted(hours.values(), reverse=True), slots)
    return found


def part_schedule() -> None:
    print("== 5. Schedule: greedy list scheduling of the paper grid's 270 jobs on N one-CPU slots "
          "(sweeper.plan.cost.makespan), hours from sweeper.plan.cost (part 6)")
    plan = expand.expand(grid.load(ROOT / "grids" / "paper.yaml"), fingerprints=False)
    orders = schedule_orders(plan)
    for title, stq_step in [("as extrapolated (the cost model's own figures)", 1.0),
                            (f"stochastic presets' training x {FAST_STQ_STEP:.2f} of the estimate", FAST_STQ_STEP)]:
        hours = {job.job_id: true_hours(job, stq_step, plan) for job in plan.jobs}
        print(f"-- true cost: {title}; total {sum(hours.values()):,.0f} h, longest job "
              f"{max(hours.values()):.1f} h")
        print(f"{'slots':>5} {'bound':>8} {'cost':>8} {'old':>8} {'LPT':>8} {'grid':>8} "
              f"{'cost/LPT':>9} {'old/LPT':>8} {'cost/old':>9}")
        for slots in SLOTS:
            m = makespans(orders, hours, slots)
            bound = max(sum(hours.values()) / slots, max(hours.values()))
            print(f"{slots:>5} {bound:8.1f} {m['cost']:8.1f} {m['old']:8.1f} {m['lpt']:8.1f} {m['grid']:8.1f} "
                  f"{m['cost'] / m['lpt']:9.3f} {m['old'] / m['lpt']:8.3f} {m['cost'] / m['old']:9.3f}")
    _schedule_noise(plan, orders)
    print()


def _schedule_noise(plan, orders) -> None:
    """Each job's true cost is its extrapolated cost times an independent log-normal
    error (seeded): how much the order loses when the estimates are off per job."""
    import random

    rng = random.Random(0)
    print(f"-- true cost: extrapolated x log-normal error per job (sigma {NOISE_SIGMA}, "
          f"{NOISE_DRAWS} draws, seed 0): ratios, median and worst draw")
    print(f"{'slots':>5} {'cost/LPT':>16} {'old/LPT':>16} {'cost/old':>16}")
    ratios = {slots: {"cost": [], "old": [], "vs": []} for slots in SLOTS}
    base = {job.job_id: true_hours(job, 1.0, plan) for job in plan.jobs}
    for _ in range(NOISE_DRAWS):
        hours = {job_id: h * rng.lognormvariate(0, NOISE_SIGMA) for job_id, h in base.items()}
        for slots in SLOTS:
            m = makespans(orders, hours, slots)
            ratios[slots]["cost"].append(m["cost"] / m["lpt"])
            ratios[slots]["old"].append(m["old"] / m["lpt"])
            ratios[slots]["vs"].append(m["cost"] / m["old"])
    for slots in SLOTS:
        cells = [sorted(ratios[slots][key]) for key in ("cost", "old")]
        vs = sorted(ratios[slots]["vs"])
        text = [f"{r[len(r) // 2]:.3f} / {r[-1]:.3f}" for r in cells] + [f"{vs[len(vs) // 2]:.3f} / {vs[-1]:.3f}"]
        print(f"{slots:>5} {text[0]:>16} {text[1]:>16} {text[2]:>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-expand", action="store_true")
    parser.add_argument("--skip-tune", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--steps", type=int, default=200, help="training steps timed per preset")
    parser.add_argument("--skip-zoo", action="store_true")
    parser.add_argument("--only", default=None, help="part 3 subset, e.g. stq_net:fp,dscnn:fp")
    parser.add_argument("--skip-schedule", action="store_true")
    parser.add_argument("--schedule-only", action="store_true", help="parts 5 and 6 alone (no timing, no Ray)")
    args = parser.parse_args()
    if args.schedule_only:
        args.skip_expand = args.skip_tune = args.skip_model = args.skip_zoo = True
    print(f"bench/scale.py: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print()
    if not args.skip_expand:
        part_expansion()
    if not args.skip_tune:
        part_tune()
    if not args.skip_model:
        part_model(args.steps, args.only)
    if not args.skip_zoo:
        part_zoo(["fp", "stq"])
    if not args.skip_schedule:
        part_schedule()
        part_hours()


if __name__ == "__main__":
    main()

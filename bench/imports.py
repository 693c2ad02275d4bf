"""Benchmark: what Python's cyclic garbage collector costs a job's process (``sweeper.run.imports``).

A new worker imports TensorFlow, ART and QKeras before its first job; then each job builds,
trains and attacks a model. This bench starts a fresh Python process per way, ``--rounds``
times alternating the ways, each process importing what a job needs and then running
``--jobs`` of the demo's jobs (small_cnn on digits, one TensorFlow thread, as a trial):

- **plain**: the imports as a plain ``import`` (the collector on), nothing frozen;
- **paused**: ``imports.load``: the collector paused during the imports, their objects frozen.

Per way it prints the median seconds of the imports, of the jobs, the collections the jobs
triggered and the seconds spent in them (``gc.callbacks``), and the ratios.

    python bench/imports.py [--rounds 3] [--jobs 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(way: str, jobs: int) -> None:
    """One process's work; prints one JSON line."""
    warnings.filterwarnings("ignore")
    started = time.perf_counter()
    from sweeper.run import imports, placement

    def plain(modules: tuple[str, ...] = imports.HEAVY) -> None:
        for name in modules:
            __import__(name)

    load = imports.load if way == "paused" else plain
    load(("tensorflow",))
    placement.configure(placement.Assignment(cpus=1))  # before TensorFlow runs anything, as a trial
    load()
    imported = time.perf_counter() - started

    from sweeper import datasets, store
    from sweeper.plan import expand, grid
    from sweeper.run import sweep
    from sweeper.run.trial import run_job

    collections: dict[int, list[float]] = defaultdict(list)
    began = [0.0]

    def timed(phase: str, info: dict) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            collections[info["generation"]].append(time.perf_counter() - began[0])

    plan = expand.expand(grid.load(str(ROOT / "grids" / "demo.yaml"), []))
    data = datasets.load_all(plan.grid.data_dir, [job.dataset_key for job in plan.jobs])
    with tempfile.TemporaryDirectory() as folder:
        context = sweep.job_context(plan, store.locate(folder), launch_id="bench")
        gc.callbacks.append(timed)
        started = time.perf_counter()
        for job in plan.jobs[:jobs]:
            run_job(job, plan.cells_of(job.job_id), data[job.dataset_key], context, lambda row: None)
        ran = time.perf_counter() - started
        gc.callbacks.remove(timed)
    print(json.dumps({"imports": imported, "jobs": ran,
                      "full": len(collections[2]), "full_s": sum(collections[2]),
                      "all_s": sum(sum(times) for times in collections.values())}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--child", choices=("plain", "paused"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.jobs)
        return
    ways = ("plain", "paused")
    results: dict[str, list[dict]] = {way: [] for way in ways}
    for round_ in range(1, args.rounds + 1):
        for way in ways:
            done = subprocess.run([sys.executable, __file__, "--child", way, "--jobs", str(args.jobs)],
                                  capture_output=True, text=True, cwd=ROOT, check=True)
            results[way].append(json.loads(done.stdout.strip().splitlines()[-1]))
            got = results[way][-1]
            print(f"round {round_} {way:6s}: imports {got['imports']:.2f} s, {args.jobs} jobs {got['jobs']:.2f} s, "
                  f"full collections {got['full']} ({got['full_s']:.2f} s), all collections {got['all_s']:.2f} s")
    median = {way: {key: statistics.median(r[key] for r in results[way]) for key in results[way][0]} for way in ways}
    for way in ways:
        m = median[way]
        print(f"median {way:6s}: imports {m['imports']:.2f} s, jobs {m['jobs']:.2f} s, "
              f"full collections {m['full']:.0f} ({m['full_s']:.2f} s), all collections {m['all_s']:.2f} s")
    plain, paused = median["plain"], median["paused"]
    print(f"imports plain/paused {plain['imports'] / paused['imports']:.2f}x; "
          f"jobs plain/paused {plain['jobs'] / paused['jobs']:.2f}x; "
          f"imports and jobs together {(plain['imports'] + plain['jobs']) / (paused['imports'] + paused['jobs']):.2f}x")


if __name__ == "__main__":
    main()

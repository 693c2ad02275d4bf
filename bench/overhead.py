"""Benchmark: what Ray Tune costs and gains over a plain loop, on the same cells.

(a) a sequential Python loop calling the trial code directly (one process, no Ray), each job
    given what a launch gives it (``sweep.job_context``: a model cache, checkpoints, kept
    adversarial examples and build records, in a fresh temporary store), its rows kept in a
    list, run in a fresh Python process each round and timed from starting it to its exit,
    as (b) and (c) are: what ``python loop.py`` costs its user, imports included. And (b)
    ``sweeper launch --profile`` on the same grid into a fresh store.
Prints both wall times, the speedup (a)/(b) (on 2 cores the limit is about 2.0), and
the count of trainings against cells (trainings must equal distinct training jobs). Beside
(a) it prints its jobs alone (from the data's load to the last job's end, less the imports
its first job paid: no interpreter start, no imports) and their speedup over (b), the
conservative figure: it charges the launch's start-up and imports to sweeper and none to
the loop. With
``--repeats N`` (default 3) it runs (a) then (b) N times and prints each round's speedup and
their median (issue 24's figure: the median of 3), with the load average before each round,
and the last launch's phase breakdown (``--profile``) with the seconds its process took to
exit after printing it.

``--ceiling`` adds (c) to each round: the same jobs split in two halves of equal estimated
cost (``sweeper.plan.cost``, longest first, each to the lighter half), each half run by
(a)'s loop in a fresh Python process of its own at one thread, the two at once, timed from
starting them to both exiting (their start-up and imports included, as (b)'s). No
scheduler, no Ray, no retries, no rows reaching a store: what two plain processes reach on
this machine. It prints (a)/(c), the ceiling for any two-slot runner that starts its
processes (two TensorFlow processes slow each other: caches, memory bandwidth), and (c)/(b),
sweeper's share of that ceiling, per round and as medians, and says so when the ceiling's
median is below the target (no runner of two processes could have reached it).
(a) gets a fresh process so that every round measures the same thing: in the bench's own
process, only the first round would pay TensorFlow's import. (a) runs TensorFlow on one thread (``--threads 1``,
the default), as each of (b)'s trials does, holding one CPU: (a) is then the work of one slot,
and 2.0 the limit on 2 cores. With ``--threads 0`` (TensorFlow's default, both cores) the loop
runs its batched predictions, attacks and conversions on both cores, and the limit is lower.

    python bench/overhead.py [GRID] [--set key=value ...] [--repeats N] [--ceiling]
                                                    (default grid: grids/demo.yaml)
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET = 1.8  # issue 24's speedup on 2 cores
sys.path.insert(0, str(ROOT))

from sweeper import datasets, store  # noqa: E402
from sweeper.plan import cost, expand, grid  # noqa: E402
from sweeper.run import placement, profile, sweep  # noqa: E402
from sweeper.run.trial import run_job  # noqa: E402


def sequential(plan, jobs=None) -> tuple[float, int, int, float]:
    """Every job of the plan (or ``jobs``) in this process, with a launch's job context in a
    temporary store; returns (seconds, trainings, rows, seconds of them in the first job's
    imports)."""
    jobs = plan.jobs if jobs is None else jobs
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        data = datasets.load_all(plan.grid.data_dir, [job.dataset_key for job in jobs])
        context = sweep.job_context(plan, store.locate(folder), launch_id="bench")
        rows: list[dict] = []
        trainings = 0
        profile.take()
        for job in jobs:
            outcome = run_job(job, plan.cells_of(job.job_id), data[job.dataset_key], context, rows.append)
            trainings += outcome.trained
        seconds = time.perf_counter() - started
    phases = defaultdict(float)
    for name, began, ended in profile.take():
        phases[name] += ended - began
    print("    job phases: " + ", ".join(f"{name} {phases[name]:.1f} s" for name in profile.JOB_PHASES
                                     if phases[name] >= 0.05) + f" (of which fit {phases['fit']:.1f} s)")
    return seconds, trainings, len(rows), phases["imports"]


def halves(plan) -> list[list]:
    """The plan's jobs in two halves of equal estimated cost: longest first, each job to
    the half with less so far (the order a launch runs them in, ``sweep.pending_work``)."""
    parts: list[list] = [[], []]
    loads = [0.0, 0.0]
    for job, cells in sweep.pending_work(plan, set()):
        lighter = loads.index(min(loads))
        parts[lighter].append(job)
        loads[lighter] += cost.job_seconds(job, cells)
    return parts


def loops(grid_path: str, overrides: list[str], threads: int, parts: tuple[str, ...]) -> tuple[float, float, int, int, list[str]]:
    """Each part (``all``, or a half of ``halves``: ``0``, ``1``) run by ``sequential`` in its
    own fresh process, all at once: (a) is one part, (c) two. Returns (wall seconds from
    starting them until all exited, their loops' seconds added without the imports their first
    jobs paid, trainings, rows, each process's job-phase line)."""
    command = [sys.executable, str(Path(__file__).resolve()), grid_path, "--threads", str(threads), "--part"]
    extra = [argument for override in overrides for argument in ("--set", override)]
    started = time.perf_counter()
    children = [subprocess.Popen(command + [part] + extra, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True, cwd=ROOT) for part in parts]
    outputs = [child.communicate()[0] for child in children]
    seconds = time.perf_counter() - started
    counts = [re.search(r"part: (\d+) trainings, (\d+) rows in ([0-9.]+) s, imports ([0-9.]+) s", output)
              for output in outputs]
    if any(child.returncode or found is None for child, found in zip(children, counts)):
        sys.exit(f"a loop failed:\n{outputs}")
    phases = [line.strip() for output in outputs for line in output.splitlines() if "job phases:" in line]
    return (seconds, sum(float(found.group(3)) - float(found.group(4)) for found in counts),
            sum(int(found.group(1)) for found in counts), sum(int(found.group(2)) for found in counts), phases)


def through_sweeper(grid_path: str, overrides: list[str]) -> tuple[float, int, int, str]:
    """``sweeper launch --profile`` into a fresh store; returns (seconds, trainings, cells,
    its profile lines)."""
    with tempfile.TemporaryDirectory() as results:
        command = [sys.executable, "-m", "sweeper", "launch", grid_path, "--results", results, "--profile"]
        for override in overrides:
            command += ["--set", override]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"sweeper launch failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    found = re.search(r"computed (\d+) cells with (\d+) trainings", done.stdout)
    lines = [line for line in done.stderr.splitlines() if line.startswith(("profile:", "  "))]
    whole = re.search(r"whole launch ([0-9.]+) s", done.stderr)
    if whole:
        lines.append(f"  process exit after the profile was printed (Ray's shutdown): "
                       f"{seconds - float(whole.group(1)):.1f} s")
    return seconds, int(found.group(2)), int(found.group(1)), "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", nargs="?", default=str(ROOT / "grids" / "demo.yaml"))
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (a) then (b); the median is printed")
    parser.add_argument("--ceiling", action="store_true", help="add (c): two plain processes, half the jobs each")
    parser.add_argument("--part", choices=("all", "0", "1"),
                        help="run one loop in this process and print its time: all the jobs, as (a), or half 0 or 1 of (c)")
    parser.add_argument("--threads", type=int, default=1,
                        help="(a)'s TensorFlow threads: 1 (default) as a trial holding one CPU, so that the "
                             "limit of (a)/(b) on 2 cores is 2.0; 0 keeps TensorFlow's default (all cores)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*learning_phase_scope.*")  # once per job in (a): noise
    plan = expand.expand(grid.load(args.grid, args.overrides))
    if args.part is not None:  # (a)'s process or one of (c)'s two; this one runs no job
        if args.threads:  # before TensorFlow runs anything, as in a trial (sweeper.run.placement)
            placement.configure(placement.Assignment(cpus=args.threads))
        seconds, trainings, rows, imports = sequential(plan, None if args.part == "all" else halves(plan)[int(args.part)])
        print(f"part: {trainings} trainings, {rows} rows in {seconds:.2f} s, imports {imports:.2f} s")
        return
    print(f"grid {plan.grid.name}: {len(plan.cells)} cells, {len(plan.jobs)} training jobs, "
          f"{os.cpu_count()} cores; (a) at {args.threads or 'the default'} TensorFlow thread(s), "
          f"(b)'s trials at one each (resources.cpus)")

    ratios: list[float] = []
    loop_ratios: list[float] = []  # (a)'s jobs alone over (b): the conservative figure
    ceilings: list[float] = []
    shares: list[float] = []  # (c)/(b): sweeper's share of what two plain processes reach
    for round_ in range(1, args.repeats + 1):
        load = os.getloadavg()[0]
        seq_s, loop_s, seq_trainings, seq_rows, seq_phases = loops(args.grid, args.overrides, args.threads, ("all",))
        print(f"round {round_} (load {load:.2f})")
        print(f"(a) sequential loop, no Ray : {seq_s:7.1f} s  {seq_rows} rows, {seq_trainings} trainings "
              f"(a fresh process, start to exit; its jobs alone, no imports, {loop_s:.1f} s)")
        print(f"    (a)'s {seq_phases[0]}")
        ray_s, ray_trainings, ray_cells, breakdown = through_sweeper(args.grid, args.overrides)
        print(f"(b) sweeper launch          : {ray_s:7.1f} s  {ray_cells} rows, {ray_trainings} trainings")
        ratios.append(seq_s / ray_s)
        loop_ratios.append(loop_s / ray_s)
        print(f"speedup (a)/(b)             : {ratios[-1]:7.2f}x  ((a)'s jobs alone over (b): {loop_ratios[-1]:.2f}x)")
        if seq_trainings != len(plan.jobs) or seq_rows != len(plan.cells):
            sys.exit("FAIL: (a) must train every job and compute every cell")
        if args.ceiling:
            two_s, loops_s, two_trainings, two_rows, two_phases = loops(args.grid, args.overrides, args.threads,
                                                                        ("0", "1"))
            ceilings.append(seq_s / two_s)
            shares.append(two_s / ray_s)
            print(f"(c) two plain processes     : {two_s:7.1f} s  {two_rows} rows, {two_trainings} trainings; "
                  f"(a)/(c) {ceilings[-1]:.2f}x, (c)/(b) {shares[-1]:.2f}; their two loops took "
                  f"{loops_s:.1f} s together, {loops_s / loop_s:.2f}x (a)'s (jobs alone, no imports: the cost of running two at once)")
            for half in two_phases:
                print(f"    (c)'s half: {half}")
            if two_trainings != len(plan.jobs) or two_rows != len(plan.cells):
                sys.exit("FAIL: (c) must train every job and compute every cell")
        print(f"trainings / training jobs   : {ray_trainings}/{len(plan.jobs)}; "
              f"rows / cells: {ray_cells}/{len(plan.cells)}")
        if ray_trainings != len(plan.jobs) or ray_cells != len(plan.cells):
            sys.exit("FAIL: trainings must equal training jobs and rows must equal cells")
    print(f"the last launch's phases (sweeper launch --profile):\n{breakdown}")
    print(f"median speedup over {len(ratios)} rounds: {statistics.median(ratios):.2f}x "
          f"(rounds: {', '.join(f'{r:.2f}x' for r in ratios)}; target >= {TARGET} on 2 cores)")
    print(f"median speedup of (a)'s jobs alone, without its process's start-up and imports: "
          f"{statistics.median(loop_ratios):.2f}x (rounds: {', '.join(f'{r:.2f}x' for r in loop_ratios)})")
    if ceilings:
        print(f"median ceiling (a)/(c), two plain processes: {statistics.median(ceilings):.2f}x "
              f"(rounds: {', '.join(f'{r:.2f}x' for r in ceilings)})")
        print(f"median share (c)/(b), two plain processes' time over the launch's: "
              f"{statistics.median(shares):.2f} (rounds: {', '.join(f'{r:.2f}' for r in shares)})")
        if statistics.median(ceilings) < TARGET:
            print(f"the ceiling is below the {TARGET} target: on this machine, in these rounds, no runner "
                  "that starts two processes reaches it")

if __name__ == "__main__":
    main()

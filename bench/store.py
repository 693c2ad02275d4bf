"""Benchmark: what compaction buys, and what querying, the diagnostics and the report
cost, on a synthetic store the size of the paper grid's results.

Writes N rows (S per-sample outcomes each) as F fragments, as F finished training jobs
would, then measures: a `robust` query before and after `compact`; the compaction; the
worst case over attacks (`worst_case`), computed, then stored as a launch's end stores it
(``query.write_worst_case``) and `robust` again, reading it; the diagnostics; and
optionally the report. Rows are synthetic (random accuracies) but have the real schema; no
model is trained.

Every query and the diagnostics run in a fresh Python process, so their figures are that
process's wall time for the action and its peak resident memory (``VmHWM``: the
interpreter, its libraries and DuckDB's own allocations included; a bare process that
imports sweeper, pyarrow, DuckDB, numpy and scipy is printed as the floor). The targets
of issue 11 are printed beside them, and whether each is met.

    python bench/store.py                          # 1,000,000 rows x 10 samples, 2,000 fragments
    python bench/store.py --rows 4500 --samples 2400 --fragments 450   # the paper grid's shape
    python bench/store.py --rows 20000 --report    # the report draws 3 figures per synthetic dataset
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from sweeper import store  # noqa: E402
from sweeper.store.fragments import write_table  # noqa: E402
from sweeper.store.provenance import schema_with  # noqa: E402

QUANTIZERS = ["fp", "int8", "int4", "int2", "ternary", "stq", "binary", "sbinary"]
POINTS = [("none", "none", 0.0)] + [("fgsm", "inf", e) for e in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)] + \
         [("pgd", "inf", e) for e in (8 / 255, 16 / 255, 32 / 255)] + [("square", "inf", 0.05)]
TARGETS = {"robust": 1.0, "worst_case": 5.0, "diagnostics": 5.0}  # seconds
DIAGNOSTICS_MB = 300
TARGET_ROWS = 1_000_000  # the robust and diagnostics targets are for a store of this many rows
WORST_CASE_OUTCOMES = 10_000_000  # the worst-case target is for a store of this many outcome rows


def synthetic_table(n_rows: int, samples: int, seed: int = 0) -> pa.Table:
    """n_rows rows (whole jobs of len(POINTS) rows each) in the store's schema, built
    column-wise: job j is quantizer j % 8, fold (j // 8) % 10, dataset j // 80."""
    rng = np.random.default_rng(seed)
    per_job = len(POINTS)
    jobs = max(1, -(-n_rows // per_job))  # whole jobs, at least n_rows rows
    rows = jobs * per_job
    job = np.repeat(np.arange(jobs), per_job)
    point = np.tile(np.arange(per_job), jobs)
    eps = np.array([p[2] for p in POINTS])[point]
    clean_ok = rng.random((jobs, 1, samples)) < rng.uniform(0.6, 0.99, (jobs, 1, 1))
    keep = np.where(np.arange(per_job)[None, :, None] == 0, 1.0, rng.uniform(0, 1, (jobs, per_job, 1)))
    adv_ok = (clean_ok & (rng.random((jobs, per_job, samples)) < keep)).reshape(rows, samples)
    clean_ok = np.broadcast_to(clean_ok, (jobs, per_job, samples)).reshape(rows, samples)
    clean, adv = clean_ok.mean(axis=1), adv_ok.mean(axis=1)
    dataset = pc.binary_join_element_wise("ds", pa.array(job // 80).cast(pa.string()), "")
    quantizer = pa.array(QUANTIZERS).take(pa.array(job % 8))
    labels = pa.array([p[0] for p in POINTS]).take(pa.array(point))
    columns = {
        "cell_id": pc.binary_join_element_wise(pa.array(job).cast(pa.string()), pa.array(point).cast(pa.string()),
                                               "-"),
        "job_id": pa.array(job).cast(pa.string()), "launch_id": "bench", "grid": "bench", "dataset": dataset,
        "dataset_options": "{}", "n_classes": 10, "n_features": 1024, "model": "stq_net", "quantizer": quantizer,
        "fold": (job // 8) % 10, "k": 10, "seed": 0, "train": "{}", "attack": labels, "attack_label": labels,
        "norm": pa.array([p[1] for p in POINTS]).take(pa.array(point)), "eps": eps,
        "eps_label": pa.array([f"{p[2]:.4g}" for p in POINTS]).take(pa.array(point)), "attack_params": "{}",
        "n_samples": samples, "clean_acc": clean, "adv_acc": adv,
        "attack_success_rate": np.where(clean > 0, 1 - adv / np.where(clean > 0, clean, 1), np.nan),
        "test_acc": clean, "config_id": pc.binary_join_element_wise(dataset, quantizer, "-"),
        "clip_min": 0.0, "clip_max": 1.0, "params": 999214, "flash_kb": 250.0 * (1 + job % 8), "ram_kb": 256.0,
        "model_cached": False, "train_s": 1.0, "attack_s": 0.1, "host": "bench", "node": "",
        "mcu_targets": ["stm32h7"], "finished_at": datetime.now(timezone.utc),
    }
    offsets = pa.array(np.arange(rows + 1, dtype=np.int64) * samples, pa.int32())
    lists = {"sample_index": np.tile(np.arange(samples), rows), "clean_correct": clean_ok.ravel(),
             "adv_correct": adv_ok.ravel(), "adv_pred": np.zeros(rows * samples, np.int32),
             **{name: np.repeat(eps, samples).astype(np.float32) for name in ("pert_linf", "pert_l2", "pert_l1")}}
    arrays = []
    for field in store.SCHEMA:
        value = columns.get(field.name)
        if field.name in lists:
            arrays.append(pa.ListArray.from_arrays(offsets, pa.array(lists[field.name], field.type.value_type)))
        elif isinstance(value, (pa.Array, np.ndarray)):
            arrays.append(pa.array(value).cast(field.type))
        else:  # one value for every row, or null
            arrays.append(pa.repeat(pa.scalar(value, field.type), rows))
    return pa.Table.from_arrays(arrays, schema=store.SCHEMA)


def write_fragments(location, table: pa.Table, fragments: int, launch) -> int:
    """Write ``table`` as ``fragments`` files of whole jobs, as finished jobs would."""
    table = table.replace_schema_metadata(schema_with([launch]).metadata)
    per_job = len(POINTS)
    size = max(1, table.num_rows // per_job // fragments) * per_job
    written = 0
    for start in range(0, table.num_rows, size):
        write_table(location, table.slice(start, size), "bench")
        written += 1
    return written


# What a fresh process runs for each measurement: the action is timed alone; peak RSS is
# the process's VmHWM (its whole life, imports included), read once the action is done.
# (ru_maxrss would not do: Linux carries it across exec from the forking parent.)
CHILD = """
import json, sys, time
sys.path.insert(0, {root!r})
import duckdb, numpy, pyarrow, scipy.special
from sweeper import store
from sweeper.analysis import diagnostics, query, report
results = {results!r}
started = time.perf_counter()
{action}
seconds = time.perf_counter() - started
peak = [line for line in open("/proc/self/status") if line.startswith("VmHWM:")][0].split()[1]
print(json.dumps({{"seconds": seconds, "peak_mb": int(peak) / 1024, "rows": rows}}))
"""
ACTIONS = {
    "floor": "rows = 0",
    "robust": "rows = query.run(results, 'SELECT quantizer, attack_label, eps_label, adv_acc_mean, adv_acc_std "
              "FROM robust').num_rows",
    "worst_case": "rows = query.run(results, 'SELECT quantizer, attack_label, eps_label, adv_acc_mean "
                  "FROM worst_case').num_rows",
    "write_worst_case": "rows = query.write_worst_case(store.locate(results))",
    "diagnostics": "rows = diagnostics.diagnose_store(store.locate(results)).num_rows",
    "report": "rows = report.write(results, results + '-report') and 1",
}


def measure(name: str, results: str) -> dict:
    code = CHILD.format(root=str(ROOT), results=results, action=ACTIONS[name])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr}")
    return json.loads([text for text in done.stdout.splitlines() if text.startswith("{")][-1])


def line(label: str, figures: dict, target: str = "") -> None:
    print(f"  {label:<36} {figures['seconds']:8.2f} s   peak RSS {figures['peak_mb']:7.0f} MB"
          f"   {figures['rows']:>8} result rows   {target}")


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--samples", type=int, default=10, help="per-sample outcomes per row")
    parser.add_argument("--fragments", type=int, default=2_000)
    parser.add_argument("--report", action="store_true", help="also time the report (about 0.7 s a figure)")
    parser.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)  # the old default
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sweeper-bench-store-"))
    try:
        run(folder, args)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(f"{folder}-report", ignore_errors=True)


def run(folder: Path, args) -> None:
    location, results = store.locate(str(folder)), str(folder)
    started = time.perf_counter()
    table = synthetic_table(args.rows, args.samples)
    generated = time.perf_counter() - started
    outcomes = table.num_rows * args.samples
    launch = store.new_launch(_grid(), "bench", b"bench", ())
    started = time.perf_counter()
    fragments = write_fragments(location, table, args.fragments, launch)
    written = time.perf_counter() - started
    del table
    print(f"store: {outcomes // args.samples} rows x {args.samples} samples "
          f"= {outcomes:,} outcome rows, {fragments} fragments at {folder}")
    print(f"  generate {generated:.2f} s, write {written:.2f} s")
    floor = measure("floor", results)
    print(f"  {'a bare process (imports only)':<36} {'':8}     peak RSS {floor['peak_mb']:7.0f} MB")
    before = measure("robust", results)
    line("robust, before compaction", before)
    started = time.perf_counter()
    done = store.compact(location)
    print(f"  {'compact':<36} {time.perf_counter() - started:8.2f} s   "
          f"({done.before} fragments -> {done.after} file(s))")
    computed = measure("robust", results)
    line("robust, after compaction (computed)", computed)
    worst = measure("worst_case", results)
    scale = "" if outcomes >= WORST_CASE_OUTCOMES else f" (store has {outcomes:,} < 10 M outcome rows)"
    line("worst_case, after compaction", worst, f"target < {TARGETS['worst_case']:g} s on 10 M outcome rows: "
         f"{verdict(worst['seconds'] < TARGETS['worst_case'])}{scale}")
    line("write_worst_case (as launch end)", measure("write_worst_case", results))
    after = measure("robust", results)
    small = "" if outcomes // args.samples >= TARGET_ROWS else f" (store has {outcomes // args.samples:,} < 1 M rows)"
    line("robust, stored worst case", after,
         f"target < {TARGETS['robust']:g} s on 1 M rows: {verdict(after['seconds'] < TARGETS['robust'])}{small}")
    diag = measure("diagnostics", results)
    line("diagnostics", diag, f"target < {TARGETS['diagnostics']:g} s and < {DIAGNOSTICS_MB} MB on 1 M rows: "
         f"{verdict(diag['seconds'] < TARGETS['diagnostics'])}, {verdict(diag['peak_mb'] < DIAGNOSTICS_MB)}{small}")
    if args.report:
        line("report (tables and figures)", measure("report", results))
    size = sum(p.stat().st_size for p in (folder / "rows").iterdir()) / 2**20
    print(f"compacted: {size:.1f} MB on disk; robust: compaction {before['seconds'] / computed['seconds']:.1f}x "
          f"faster, the stored worst case {computed['seconds'] / after['seconds']:.1f}x more")


def _grid():
    from sweeper.plan import grid

    return grid.Grid.model_validate({"name": "bench", "datasets": ["digits"], "models": ["small_cnn"],
                                     "quantizers": ["fp"], "attacks": [{"name": "fgsm", "eps": [0.1]}]})


if __name__ == "__main__":
    main()

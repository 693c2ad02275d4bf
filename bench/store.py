"""Benchmark: what compaction buys, and what reading, querying and reporting cost, on a
synthetic store the size of a big sweep.

Writes N rows as F fragments (as F finished training jobs would), then measures:
(a) reading the store and (b) a `robust` query, before and after `compact`; the
compaction itself; the diagnostics; and rendering the report. Prints figures and the
before/after ratios. Rows are synthetic (random accuracies) but have the real schema
and the real sizes; no model is trained.

    python bench/store.py                   # 100,000 rows in 2,000 fragments
    python bench/store.py --rows 20000 --fragments 500
    python bench/store.py --no-report      # the report draws 3 figures per synthetic dataset
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeper import diagnostics, query, report, store  # noqa: E402

SAMPLES = 20  # per-sample outcomes per row (the paper grid stores up to 2,400)
QUANTIZERS = ["fp", "int8", "int4", "int2", "ternary", "stq", "binary", "sbinary"]
POINTS = [("fgsm", "inf", e) for e in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3)] + \
         [("pgd", "inf", e) for e in (8 / 255, 16 / 255, 32 / 255)] + [("square", "inf", 0.05)]


def synthetic_rows(n_rows: int, n_fragments: int) -> list[list[dict]]:
    rng = random.Random(0)
    per_job = len(POINTS) + 1
    jobs = max(1, n_rows // per_job)
    rows, now = [], datetime.now(timezone.utc).isoformat()
    for job in range(jobs):
        quantizer, fold = QUANTIZERS[job % 8], (job // 8) % 10
        dataset = f"ds{job // 80}"  # 80 jobs (8 quantizers x 10 folds) per dataset
        clean = rng.uniform(0.6, 0.99)
        clean_ok = [rng.random() < clean for _ in range(SAMPLES)]
        for attack, norm, eps in [("none", "none", 0.0), *POINTS]:
            keep = 1.0 if attack == "none" else rng.uniform(0, 1)
            adv_ok = [ok and rng.random() < keep for ok in clean_ok]
            clean, adv = sum(clean_ok) / SAMPLES, sum(adv_ok) / SAMPLES
            rows.append({name: None for name, _, _ in store.COLUMNS} | dict(
                cell_id=f"{job}-{attack}-{eps}", job_id=str(job), launch_id="bench", grid="bench",
                dataset=dataset, dataset_options="{}", n_classes=10, n_features=1024, model="stq_net",
                quantizer=quantizer, fold=fold, k=10, seed=0, train="{}", attack=attack, attack_label=attack,
                norm=norm, eps=eps, eps_label=f"{eps:.4g}", attack_params="{}", n_samples=SAMPLES,
                clean_acc=clean, adv_acc=adv, attack_success_rate=1 - adv / clean if clean else None,
                test_acc=clean, config_id=f"{dataset}-{quantizer}", clip_min=0.0, clip_max=1.0,
                sample_index=list(range(SAMPLES)), clean_correct=clean_ok, adv_correct=adv_ok,
                adv_pred=[0] * SAMPLES, pert_linf=[eps] * SAMPLES, pert_l2=[eps] * SAMPLES,
                pert_l1=[eps] * SAMPLES,
                params=999214, flash_kb=250.0 * (1 + job % 8), ram_kb=256.0, mcu_targets=["stm32h7"],
                model_cached=False, train_s=1.0, attack_s=0.1, finished_at=now,
                host="bench", node=""))
    size = max(1, len(rows) // n_fragments)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


def timed(label: str, action):
    tracemalloc.start()
    started = time.perf_counter()
    result = action()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    print(f"  {label:<40} {seconds:8.2f} s   peak Python heap {peak:7.1f} MB")
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--fragments", type=int, default=2_000)
    parser.add_argument("--no-report", action="store_true",
                        help="skip the report: about 0.7 s a figure, 3 figures per synthetic dataset")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sweeper-bench-store-"))
    try:
        location = store.locate(str(folder))
        batches = synthetic_rows(args.rows, args.fragments)
        launch = store.new_launch(_grid(), "bench", b"bench", ())
        total = sum(len(b) for b in batches)
        print(f"store: {total} rows in {len(batches)} fragments at {folder}")
        timed("write fragments", lambda: [store.write_rows(location, b, launch=launch) for b in batches])
        sql = "SELECT quantizer, attack_label, eps_label, adv_acc_mean, adv_acc_std FROM robust"
        read_before, _ = timed("read, before compaction", lambda: store.read(location))
        query_before, _ = timed("robust query, before compaction", lambda: query.run(str(folder), sql))
        compact_s, done = timed("compact", lambda: store.compact(location))
        read_after, _ = timed("read, after compaction", lambda: store.read(location))
        query_after, _ = timed("robust query, after compaction", lambda: query.run(str(folder), sql))
        timed("diagnostics", lambda: diagnostics.diagnose(store.read(location).table))
        if not args.no_report:
            timed("report (tables and figures)", lambda: report.write(str(folder), folder / "report"))
        size = sum(p.stat().st_size for p in (folder / "rows").iterdir()) / 2**20
        print(f"compacted: {done.before} fragments -> {done.after} file(s), {size:.1f} MB on disk, "
              f"{size * 2**20 / total:.0f} B a row")
        print(f"read speedup from compaction:  {read_before / read_after:.1f}x")
        print(f"query speedup from compaction: {query_before / query_after:.1f}x")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _grid():
    from sweeper import grid

    return grid.Grid.model_validate({"name": "bench", "datasets": ["digits"], "models": ["small_cnn"],
                                     "quantizers": ["fp"], "attacks": [{"name": "fgsm", "eps": [0.1]}]})


if __name__ == "__main__":
    main()

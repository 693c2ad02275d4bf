"""The report's sections on what ships, each a section function of the ``Report``:

- ``flashed``: how robust is the build you flash? Per configuration and budget, the QKeras
  model's worst case beside its deployed build's (``worst@deployed(...)``: the model's
  examples transferred to the build plus the attacks on the build itself), and what each
  covers. Only for stores with attacks on the build (``target: deployed``).
- ``builds``: every build format per configuration (``config_builds``): accepted over the
  folds or why not, its sizes, MACs, the latency estimate, and the MCU targets it fits.
  Only for stores with build records.
- ``budget``: robustness against the budget. Per dataset and budget, one point per
  (configuration, accepted build): the worst-case robust accuracy (and the deployed worst
  case) against deployed flash, RAM and estimated latency, each MCU target's limits drawn,
  the Pareto front marked (``figures.budget``) and listed.

``budget_worst`` defines the robust accuracy at a budget both use, once.
"""

from __future__ import annotations

from collections import defaultdict

from sweeper.analysis import figures
from sweeper.analysis.tables import config_key, dataset_name, file_name, fmt, kb
from sweeper.keys import DEPLOYED_TARGET, INT8, MODEL_TARGET, NONE

WHICH = {MODEL_TARGET: "QKeras worst case", DEPLOYED_TARGET: "deployed worst case"}
# The latency the report quotes: the runtime the builds are (TFLM's), on a targeted MCU it is
# calibrated for; failing that, any calibrated pair (deploy.latency).
PREFERRED_RUNTIME = "tflm-reference"


def budget_worst(robust: list[dict]) -> dict[tuple, dict[str, dict]]:
    """Per (configuration, norm, eps) with an attack at eps > 0, and per network attacked
    (``target``: the QKeras model, or the deployed build): the ``robust`` record with the
    lowest robust accuracy, on the configuration's largest sample count there. Where two
    or more attacks ran that is the per-sample worst case (``worst(...)``,
    ``worst@deployed(...)``), whose accuracy no single attack's is below; where one ran,
    its own accuracy."""
    found: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for record in robust:
        if record["attack"] == NONE or not record["eps"] or record["adv_acc_mean"] is None:
            continue
        target = record.get("target") or MODEL_TARGET
        held = found[config_key(record), record["norm"], record["eps"]]
        best = held.get(target)
        if best is None or _rank(record) > _rank(best):
            held[target] = record
    return found


def _rank(record: dict) -> tuple:
    """The largest sample count, then the lowest accuracy, then (on a tie) the worst case
    over several attacks before a single one: it says what it covers."""
    # rounded: a per-sample worst case averaged over folds equals its only successful
    # attack's mean up to the last bit of a double, and must win that tie
    return record["n_samples"], -round(record["adv_acc_mean"], 9), record["attack"] == "worst_case"


def flashed(report) -> str:
    """How robust is the build you flash? (module docstring)."""
    worst = budget_worst(report.robust)
    if not any(DEPLOYED_TARGET in held for held in worst.values()):
        return ""
    parts = ["## How robust is the build you flash?",
             "Per configuration and budget: `QKeras -> build`, the robust accuracy of the QKeras model (its "
             "worst case over every attack run on it at that budget) beside that of its int8 build (the "
             "deployed worst case: per sample, right only if the build resisted every example at that budget, "
             "both those crafted on the QKeras model and the attacks run on the build itself). A budget with a "
             "single attack shows that attack. The first column is the clean accuracy of the attacked samples, "
             "QKeras model -> build. Means over folds; the attacks each covers are listed below the table. "
             "An accepted sub-byte build (see Builds) predicts as the int8 build on every input behind these "
             "numbers, so the build's column is its too."]
    for dataset in report.datasets():
        configs = [c for c in report.configs(dataset, False) if c["eval_bits"] is None]
        budgets = sorted({(norm, eps) for (key, norm, eps), held in worst.items()
                          if DEPLOYED_TARGET in held and key in {config_key(c) for c in configs}})
        if not budgets:
            continue
        labels, covers = {}, defaultdict(set)
        rows = []
        for config in configs:
            cells = []
            for budget in budgets:
                held = worst.get((config_key(config), *budget), {})
                for target, record in held.items():
                    labels[budget] = record["eps_label"]
                    covers[budget, target].add(record["attack_label"])
                cells.append(" -> ".join(fmt(held[t]["adv_acc_mean"]) if t in held else "n/a" for t in WHICH))
            rows.append([report.label(config), f"{fmt(config['clean_acc_mean'])} -> "
                                               f"{fmt(config['deployed_clean_acc_mean'])}", *cells])
        header = ["model / quantizer", "clean", *[f"L{norm} @ {labels[(norm, eps)]}" for norm, eps in budgets]]
        notes = [f"- L{norm} @ {labels[(norm, eps)]}: " + "; ".join(
                 f"{WHICH[t]}: {', '.join(f'`{c}`' for c in sorted(covers[(norm, eps), t]))}"
                 for t in WHICH if covers[(norm, eps), t]) for norm, eps in budgets]
        parts += [f"### {dataset}", report.table(f"The flashed build's worst case, {dataset}", header, rows,
                                                 ["\n".join(notes)])]
    return "\n\n".join(parts)


def builds(report) -> str:
    """Every build format per configuration: accepted or why not, sizes, MACs, latency."""
    [(records,)] = report.db.execute("SELECT count(*) FROM builds").fetchall()
    if not records:
        return ""
    reference = latency_reference(report)
    latency = _latencies(report, reference)
    fits = _fitting_builds(report)
    parts = ["## Builds: flash, RAM, MACs and latency",
             "Each configuration's builds: `int8` (the converter's), `lut` (TFLM LUT compression: filters as "
             "b-bit indices, decoded by DECODE ops into the arena) and `int4` (packed INT4 filters). A sub-byte "
             "build is accepted only if TFLM's interpreter predicts exactly the int8 build's label on every "
             "check input (the attacked samples and the examples of every attack, `agreement` is the lowest "
             "share over the folds, of `checked` inputs in all) in every fold; a refused or rejected build "
             "says why, and never fits. Flash is the .tflite plus the runtime allowance, RAM the arena plus "
             "the margin (the largest over the folds). MACs are counted from the int8 graph. "
             + (f"Latency is an **estimate** ({reference[1]} on {reference[0]}, from MLPerf Tiny results; "
                "int8 kernels: DECODE and INT4 unpacking not counted, so a build's estimate is its "
                "configuration's); the `latency` view has every MCU and runtime." if reference else
                "No targeted MCU has a latency calibration: no latency estimate.")]
    rows = report.records("SELECT * FROM config_builds")
    for dataset in report.datasets():
        order = {config_key(c): i for i, c in enumerate(report.configs(dataset, False))}
        mine = sorted((r for r in rows if config_key(r) in order),
                      key=lambda r: (order[config_key(r)], r["deploy_format"] != INT8, r["deploy_format"]))
        table = [[report.label(r), r["deploy_format"], f"{r['accepted_folds']}/{r['folds']}",
                  kb(r["flatbuffer_kb"]), kb(r["arena_kb"]), kb(r["flash_kb"]), kb(r["ram_kb"]),
                  fmt(r["agreement_min"]), "" if r["check_samples"] is None else f"{r['check_samples']:,}",
                  "" if r["macs"] is None or not r["accepted"] else f"{r['macs']:,}",
                  _ms(latency.get(config_key(r))) if r["accepted"] else "",
                  ", ".join(fits.get((config_key(r), r["deploy_format"]), [])) or "none",
                  _short(r["errors"]) if not r["accepted"] else ""] for r in mine]
        parts += [f"### {dataset}", report.table(
            f"Builds, {dataset}",
            ["model / quantizer", "build", "accepted folds", ".tflite KB", "arena KB", "flash KB", "RAM KB",
             "agreement", "checked", "MACs", "latency ms (estimate)", "fits", "why not"], table)]
    return "\n\n".join(parts)


def budget(report) -> str:
    """Robustness against the budget (module docstring)."""
    worst = budget_worst(report.robust)
    reference = latency_reference(report)
    latency = _latencies(report, reference)
    shipped = [r for r in report.records("SELECT * FROM config_builds WHERE accepted AND "
                                         "footprint_source = 'measured' AND eval_bits IS NULL")]
    if not worst or not shipped:
        return ""
    mcus = {r["name"]: r for r in report.records("SELECT * FROM mcus")}
    targets = [mcus[m] for m in report.targets() if m in mcus]
    latency_label = (f"estimated latency, ms\n({reference[1]} on {reference[0]}; DECODE/unpacking not counted)"
                     if reference else None)
    parts = ["## Robustness against the budget",
             "What each build buys in robustness for what it costs. Per dataset and budget, one point per "
             "(configuration, accepted build): filled, the QKeras model's worst case at that budget; hollow, "
             "the deployed worst case (attacks on the build included), where the grid attacked the build. "
             "The marker's shape is the build, its colour the quantizer. Against deployed flash (dashed: each "
             "MCU target's flash), deployed RAM (dashed: each target's largest contiguous RAM block) and the "
             "estimated latency. The step line is the Pareto front: no other build is both cheaper and more "
             "robust, robustness being the deployed worst case where the build was attacked, else the QKeras "
             "model's. Builds the checks refused are left out (see Builds)."]
    for dataset in report.datasets():
        mine = [r for r in shipped if dataset_name(r) == dataset]
        budgets = sorted({(norm, eps) for (key, norm, eps) in worst if key in {config_key(r) for r in mine}})
        drawn, rows = [], []
        for norm, eps in budgets:
            points = _points(mine, worst, latency, norm, eps)
            if not points:
                continue
            eps_label = next(iter(worst[config_key(points[0]), norm, eps].values()))["eps_label"]
            title = f"{dataset}, L{norm} @ {eps_label}: worst-case robust accuracy against resources"
            name = file_name(f"budget-{dataset}-L{norm}-{eps_label}.png")
            fronts = figures.budget(points, targets, latency_label, report.out / "figures" / name, title,
                                    lambda p: f"{p['quantizer']} {p['deploy_format']}")
            drawn.append(f"![{title}](figures/{name})")
            rows += [[f"L{norm} @ {eps_label}", axis, ", ".join(
                f"{report.label(p)} [{p['deploy_format']}] ({_x(p, axis)}, {fmt(p['shipped'])} {p['kind']})"
                for p in front)] for axis, front in fronts.items()]
        if drawn:
            parts += [f"### {dataset}", *drawn,
                      report.table(f"Pareto front of robustness against the budget, {dataset}",
                                   ["budget", "against", "Pareto front, cheapest first"], rows)]
    return "\n\n".join(parts) if len(parts) > 1 else ""


def _points(shipped: list[dict], worst: dict, latency: dict, norm: str, eps: float) -> list[dict]:
    """One point per (configuration, accepted build) with a robust accuracy at the budget."""
    points = []
    for build in shipped:
        held = worst.get((config_key(build), norm, eps), {})
        if not held:
            continue
        model = held.get(MODEL_TARGET, {}).get("adv_acc_mean")
        deployed = held.get(DEPLOYED_TARGET, {}).get("adv_acc_mean")
        points.append({**build, "model_acc": model, "deployed_acc": deployed,
                       "shipped": deployed if deployed is not None else model,
                       "kind": "deployed" if deployed is not None else "QKeras",
                       "latency_ms": latency.get(config_key(build))})
    return points


def latency_reference(report) -> tuple[str, str] | None:
    """(MCU, runtime) the report's latency estimates assume: the first targeted MCU (by
    name) with a ``PREFERRED_RUNTIME`` calibration, else the first calibrated pair."""
    pairs = {(r["mcu"], r["runtime"]) for r in report.records(
        "SELECT DISTINCT mcu, runtime FROM latency WHERE targeted")}
    preferred = sorted(pair for pair in pairs if pair[1] == PREFERRED_RUNTIME)
    return (preferred or sorted(pairs) or [None])[0]


def _latencies(report, reference: tuple[str, str] | None) -> dict[tuple, float]:
    if reference is None:
        return {}
    records = report.records("SELECT * FROM latency")
    return {config_key(r): r["latency_ms_estimate"] for r in records if (r["mcu"], r["runtime"]) == reference}


def _fitting_builds(report) -> dict[tuple, list[str]]:
    fitting = defaultdict(list)
    for r in report.records("SELECT * FROM fits WHERE targeted ORDER BY mcu"):
        fitting[config_key(r), r["deploy_format"]].append(r["mcu"])
    return fitting


def _x(point: dict, axis: str) -> str:
    value = point[figures.BUDGET_AXES[axis][0]]
    return f"{value:.3g} ms" if axis == "latency" else f"{value:.1f} KB"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _short(text: str | None, limit: int = 160) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 3] + "..."

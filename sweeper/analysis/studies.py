"""The report's studies beyond the paper's tables, each a section function of the
``Report``: transfer attacks (a source x target matrix per attack and budget, as a table and
a heatmap), targeted patches against their controls, defended models against their
undefended twins (``twins.py``: paired changes, verdicts and the masking flags of both),
and Jacobian norms with their paired ratios to the fp configuration and to the twin. A
store without such rows gets no such section."""

from __future__ import annotations

import json
from collections import defaultdict

from sweeper.analysis import checks, figures, output, query, twins
from sweeper.analysis.tables import MARKERS, ROW, config_key, dataset_name, file_name, fired_text, fmt, row_key, spread
from sweeper.keys import CONFIG_COLUMNS, DEPLOYED_TARGET, NONE


def transfer(report) -> str:
    """Per dataset, attack and budget: the accuracy each target keeps on examples crafted
    on each source (the diagonal is the source's own white-box number), with the transfer rate."""
    matrices: dict[tuple, list[dict]] = defaultdict(list)
    for r in report.robust:
        if r.get("source_config_id"):
            matrices[dataset_name(r), r["attack"], r["norm"], r["eps"], r["eps_label"], r["attack_params"],
                     r["n_samples"]].append(r)
    if not matrices:
        return ""
    parts = ["## Transfer attacks",
             "Rows: the model the examples were crafted on (source); columns: the model evaluated on them "
             "(target). A cell is the target's accuracy on the source's examples, mean over folds, and in "
             "brackets the transfer rate: of the samples both models classify correctly and whose example "
             "fools the source, the share that also fools the target. The diagonal is the source's own "
             "white-box accuracy. Same samples, folds and budget throughout."]
    for key, rows in sorted(matrices.items(), key=lambda item: (item[0][0], item[0][1], item[0][3], item[0][5])):
        dataset, attack, norm, eps, eps_label, params, n_samples = key
        sources, targets, values = transfer_matrix(report, rows)
        title = f"{attack} L{norm} @ {eps_label}"
        name = file_name(f"transfer-{dataset}-{attack}-{norm}-{eps_label}-{len(parts)}.png")
        figures.transfer_matrix([[cell[0] for cell in line] for line in values],
                                [report.label(s) for s in sources], [report.label(t) for t in targets],
                                report.out / "figures" / name, f"{title} on {dataset}: target accuracy")
        table = [[report.label(s), *[_transfer_cell(*cell) for cell in line]] for s, line in zip(sources, values)]
        parts += [f"### {dataset}: {title}", f"Parameters `{params}`, {n_samples} samples per fold.",
                  report.table(f"Transfer, {dataset}: {title}, target accuracy (transfer rate)",
                               ["source ↓ target →", *[report.label(t) for t in targets]], table),
                  f"![{title} on {dataset}](figures/{name})"]
    return "\n\n".join(parts)


def transfer_matrix(report, rows: list[dict]) -> tuple[list[dict], list[dict], list[list[tuple]]]:
    """Sources and targets (clean records, in table order) and per (source, target)
    (accuracy, transfer rate, white-box?); NaN where the grid has no such pair."""
    clean = {r["config_id"]: r for r in report.robust if r["attack"] == NONE}
    first = rows[0]
    white = {r["config_id"]: r for r in report.robust if r["attack"] == first["attack"] and not r.get("source_config_id")
             and r.get("target") != DEPLOYED_TARGET  # the diagonal is the source model's own, not its build's
             and (r["norm"], r["eps_label"], r["attack_params"], r["n_samples"]) ==
             (first["norm"], first["eps_label"], first["attack_params"], first["n_samples"])}
    order = {c["config_id"]: i for i, c in enumerate(report.configs(dataset_name(first), False))}
    ids = lambda found: sorted((clean[i] for i in found if i in clean), key=lambda c: order.get(c["config_id"], 0))  # noqa: E731
    sources = ids({r["source_config_id"] for r in rows})
    targets = ids({r["config_id"] for r in rows} | {s["config_id"] for s in sources})
    pairs = {(r["source_config_id"], r["config_id"]): r for r in rows}
    values = []
    for source in sources:
        line = []
        for target in targets:
            if target["config_id"] == source["config_id"] and source["config_id"] in white:
                line.append((white[source["config_id"]]["adv_acc_mean"], None, True))
            else:
                r = pairs.get((source["config_id"], target["config_id"]))
                line.append((float("nan"), None, False) if r is None else
                            (r["adv_acc_mean"], r["transfer_rate_mean"], False))
        values.append(line)
    return sources, targets, values


# What the "Targeted patches" section says before its tables.
PATCH_INTRO = (
    "A universal targeted patch succeeds when the patched sample is classified as its target. "
    "**Target rate**: of the attacked samples the model classifies correctly clean whose true class "
    "is not the target (`n`, summed over folds), the share classified as the target with the patch on. "
    "**Control**: the best of a uniform-random patch and two solid ones (the input range's low and "
    "high ends) of the same size at exactly the same places; its target rate is the highest of "
    "them, its accuracy the lowest. Accuracy counts any wrong class (what occlusion also does), "
    "over all attacked samples. `random` places the patch anew on every sample; `fixed` at one "
    "place the attacker chose (`center`, or top, left). **P**: the patch is not shown to take more "
    "samples to its target than its control (see the diagnostics). Means over folds."
)


def patches(report) -> str:
    """Per dataset, every targeted patch point (white-box and transferred) as a target
    rate beside its controls', per placement; the store's means over folds."""
    patches = [r for r in report.robust if r.get("target_n") is not None and r["attack"] != NONE]
    if not patches:
        return ""
    parts = ["## Targeted patches", PATCH_INTRO]
    for dataset in report.datasets():
        mine = [r for r in patches if dataset_name(r) == dataset]
        if not mine:
            continue
        order = {config_key(c): i for i, c in enumerate(report.configs(dataset, False))}
        mine.sort(key=lambda r: (order.get(config_key(r), 0), _placement(r) != "random", _placement(r),
                                 r["attack_label"], r["eps"]))
        rows = [[report.label(r), r["attack_label"], _placement(r), r["eps_label"], str(r["target_n"]),
                 fmt(r["target_rate_mean"], r["target_rate_std"]), fmt(r["control_target_rate_mean"]),
                 fmt(r["adv_acc_mean"]), fmt(r["control_adv_acc_mean"]),
                 report.markers(r, r["attack_label"], r["eps_label"], r["attack_params"]).strip(" []")]
                for r in mine]
        parts += [f"### {dataset}", report.table(
            f"Targeted patches, {dataset}: target rate against controls",
            ["model / quantizer", "patch", "placement", "eps", "n", "target rate", "control target rate",
             "accuracy", "control accuracy", "flags"], rows)]
    return "\n\n".join(parts)


def defenses(report) -> str:
    """Each defended configuration against its undefended twin (sweeper.analysis.twins), per
    dataset: the paired changes, the verdicts, and the masking flags of both."""
    if all(r["defense"] in (None, NONE) for r in report.robust):
        return ""
    compared = twins.compare(query.fetch(report.db, twins.ROWS_SQL))
    verdicts = twins.verdicts(compared)
    for table, name in ((compared, "defense_effect.csv"), (verdicts, "defense_verdicts.csv")):
        output.write_text(query.render(table, "csv"), str(report.out / name), "--out", force=True)
    parts = ["## Defended vs undefended",
             "Each defended model against its twin: the same dataset, model, quantizer, training settings, "
             "K and seed, trained without a defense (for dbwt's weights at another width, `@ 2-bit`, the "
             "model trained at that width: `vs int2`), evaluated by the same attacks on the same samples "
             "(folds pooled, samples aligned). Cells read `twin -> defended (change, p_adj)`: an exact "
             "two-sided McNemar test, Holm-adjusted within each defended model; **bold**: significant "
             f"(p_adj < {checks.ALPHA} and |change| >= {checks.MIN_MARGIN}). A gain only under "
             "gradient attacks, while black-box and transfer attacks at that budget find none, is the mark "
             "of gradient masking. Every number is in `defense_effect.csv` and `defense_verdicts.csv`."]
    records, judged = compared.to_pylist(), verdicts.to_pylist()
    for dataset in report.datasets():
        mine = [r for r in records if dataset_name(r) == dataset]
        if mine:
            verdicts = [v for v in judged if dataset_name(v) == dataset]
            parts += [f"### {dataset}", *defense_tables(report, mine, verdicts, dataset)]
    if len(parts) == 1:
        parts.append("No defended model has an undefended twin in this store.")
    return "\n\n".join(parts)


def defense_tables(report, records: list[dict], judged: list[dict], dataset: str) -> list[str]:
    """The changes (a row per defended model and twin, a column per point), the
    verdicts, and the flags per check letter."""
    order = lambda config: (config["model"], config["quantizer"], config["defense_label"],  # noqa: E731
                            config["eval_bits"] is not None, config["eval_bits"] or 0)
    records = sorted(records, key=lambda r: order(r))
    judged = sorted(judged, key=lambda v: (*order(v), v["norm"], v["eps"]))
    pairs = {(r["config_id"], r["twin_config_id"]): {c: r[c] for c in CONFIG_COLUMNS} for r in records}
    several = {defended for defended, _ in pairs if sum(d == defended for d, _ in pairs) > 1}
    name = lambda config, twin: report.label(config) + (  # noqa: E731
        f" vs {twins.width_twin(config)}" if config["eval_bits"] is not None else "") + (
        f" (twin {twin})" if config["config_id"] in several else "")
    columns = sorted({_column(r) for r in records})
    cells = {(r["config_id"], r["twin_config_id"], _column(r)): _twin_cell(r) for r in records}
    changes = [[name(config, twin), *[cells.get((defended, twin, column), "") for column in columns]]
               for (defended, twin), config in pairs.items()]
    verdicts = [[name({c: v[c] for c in CONFIG_COLUMNS}, v["twin_config_id"]), f"L{v['norm']} @ {v['eps_label']}",
                 f"**{v['verdict']}**" if v["gradient_only"] else v["verdict"],
                 _evidence(v, "gradient"), _evidence(v, "black_box")] for v in judged]
    flags = []
    for (defended, twin), config in pairs.items():
        mine, theirs = _flags_of(report.flag_counts, defended), _flags_of(report.flag_counts, twin)
        flags.append([name(config, twin), *[f"{fired_text(mine.get(check))} ({fired_text(theirs.get(check))})"
                                            for check in MARKERS]])
    return [report.table(f"Defended vs undefended, {dataset}: paired changes",
                         ["defended model", *_headers(columns)], changes),
            report.table(f"Defended vs undefended, {dataset}: verdicts",
                         ["defended model", "budget", "verdict", "gradient attack (largest change up)",
                          "black-box or transfer (largest change up)"], verdicts),
            "Gradient-masking flags, fired/judged per check: the defended model, then (its twin).",
            report.table(f"Defended vs undefended, {dataset}: masking flags (twin in brackets)",
                         ["defended model", *MARKERS.values()], flags)]


def jacobians(report) -> str:
    """Per dataset and model: the Jacobian norms of every configuration, and the same
    norms as ratios to the fp configuration and to the undefended twin, fold by fold."""
    per_fold = report.records(f"SELECT {', '.join(ROW)}, fold, any_value(jacobian_fro) AS fro, "
                             "any_value(jacobian_fro_se) AS fro_se, any_value(jacobian_blocks) AS blocks, "
                             "any_value(jacobian_block_fro) AS block_fro, any_value(jacobian_block_se) AS "
                             "block_se, any_value(jacobian_projections) AS projections FROM results "
                             "WHERE jacobian_fro IS NOT NULL GROUP BY ALL")
    if not per_fold:
        return ""
    folds: dict[tuple, dict[int, dict]] = defaultdict(dict)
    for r in per_fold:
        folds[row_key(r)][r["fold"]] = r
    worst_se = max(_relative_se(r) for r in per_fold)
    parts = ["## Jacobian norms",
             "Is quantization a Jacobian regulariser? Per trained model, on its attacked samples in evaluation "
             "mode: the root mean square over the samples of the Frobenius norm of the input-to-logit Jacobian "
             "(`jacobian_fro`) and of each block's Jacobian, block output with respect to block input "
             "(`jacobian_block_fro`; a block runs from one activation every path passes through to the next, "
             "the last ends at the logits). Derivatives are the straight-through estimators' (the gradient an "
             "attack follows) with the quantized weights, not the true derivative of a quantized network (zero "
             "almost everywhere). Cells: mean ± sample standard deviation across folds. Ratios are paired: "
             "per fold (the same samples), the configuration's norm over the reference's, then mean ± std "
             f"across folds. Largest relative standard error of any estimate here, from its random "
             f"projections: {worst_se:.2%}."]
    for dataset in report.datasets():
        configs = [c for c in report.configs(dataset) if row_key(c) in folds]
        blocks_of = {row_key(c): tuple(next(iter(folds[row_key(c)].values()))["blocks"]) for c in configs}
        for model, names in sorted({(c["model"], blocks_of[row_key(c)]) for c in configs}):
            # one table per model and block list (a changed architecture has other blocks)
            mine = [c for c in configs if c["model"] == model and blocks_of[row_key(c)] == names]
            header = [f"{i + 1} {name}" for i, name in enumerate(names)]
            norms = [[report.label(c), fmt(c["test_acc_mean"], c["test_acc_std"]),
                      *_norm_cells(folds[row_key(c)].values(), len(names))] for c in mine]
            parts += [f"### {dataset}, {model}", "Norms (clean accuracy is on the whole held-out fold):",
                      report.table(f"Jacobian norms, {dataset}, {model}",
                                   ["model / quantizer", "clean accuracy", "logits", *header], norms)]
            for title, reference in (("fp", _fp_reference), ("the undefended twin", _twin_reference)):
                rows = []
                for c in mine:
                    ref = reference(c, mine)
                    if ref is not None:
                        rows.append([report.label(c) + f" ÷ {ref['quantizer']}/{ref['defense_label']}",
                                     *_ratio_cells(folds[row_key(c)], folds[row_key(ref)], len(names))])
                if rows:
                    parts += [f"Ratio to {title}:",
                              report.table(f"Jacobian norm ratios to {title}, {dataset}, {model}",
                                           ["model / quantizer ÷ reference", "logits", *header], rows)]
    return "\n\n".join(parts)


# Jacobian norms: what a configuration is compared with, and how cells read.
_REFERENCE_KEY = ["dataset", "dataset_options", "model", "train", "k", "seed", "n_samples"]


def _fp_reference(config: dict, configs: list[dict]) -> dict | None:
    """The fp configuration trained with the same defense (None for fp itself)."""
    same = [c for c in configs if c["quantizer"] == "fp" and config["quantizer"] != "fp"
            and all(c[k] == config[k] for k in (*_REFERENCE_KEY, "defense_label", "defense_params"))
            and c["eval_bits"] is None and config["eval_bits"] is None]
    return same[0] if len(same) == 1 else None


def _twin_reference(config: dict, configs: list[dict]) -> dict | None:
    """The undefended configuration of the same preset (None for an undefended one)."""
    same = [c for c in configs if c["defense"] == NONE and config["defense"] != NONE
            and all(c[k] == config[k] for k in (*_REFERENCE_KEY, "quantizer"))
            and c["eval_bits"] is None and config["eval_bits"] is None]
    return same[0] if len(same) == 1 else None


def _norm_cells(folds, blocks: int) -> list[str]:
    folds = list(folds)
    columns = [[f["fro"] for f in folds], *[[f["block_fro"][k] for f in folds] for k in range(blocks)]]
    return [spread(values, None) for values in columns]


def _ratio_cells(mine: dict[int, dict], theirs: dict[int, dict], blocks: int) -> list[str]:
    shared = sorted(set(mine) & set(theirs))
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    columns = [[ratio(mine[f]["fro"], theirs[f]["fro"]) for f in shared],
               *[[ratio(mine[f]["block_fro"][k], theirs[f]["block_fro"][k]) for f in shared]
                 for k in range(blocks)]]
    return [spread(values, 2) for values in columns]


def _relative_se(record: dict) -> float:
    pairs = [(record["fro_se"], record["fro"]), *zip(record["block_se"] or [], record["block_fro"] or [])]
    return max((se / value for se, value in pairs if se is not None and value), default=0.0)


def _placement(record: dict) -> str:
    """``random``, ``fixed center`` or ``fixed 2,3`` (top, left), from the row's parameters."""
    params = json.loads(record["attack_params"] or "{}")
    if params.get("placement", "random") != "fixed":
        return "random"
    position = params.get("position", "center")
    return f"fixed {position}" if isinstance(position, str) else "fixed {},{}".format(*position)


def _transfer_cell(accuracy: float, rate: float | None, white_box: bool) -> str:
    if accuracy != accuracy:
        return ""
    return f"{fmt(accuracy)} (white-box)" if white_box else f"{fmt(accuracy)} ({fmt(rate)})"


def _evidence(verdict: dict, group: str) -> str:
    if verdict[f"{group}_attack"] is None:
        return "none measured"
    return (f"{verdict[f'{group}_attack']}: {fmt(verdict[f'{group}_twin_acc'])} -> "
            f"{fmt(verdict[f'{group}_defended_acc'])} (p_adj {verdict[f'{group}_p_adjusted']:.2g})")


def _twin_cell(row: dict) -> str:
    """``0.200 -> 0.800 (+0.600, p_adj 1.2e-30)``, bold where significant."""
    text = f"{row['twin_acc']:.3f} -> {row['defended_acc']:.3f} ({row['change']:+.3f}, p_adj {row['p_adjusted']:.2g})"
    return f"**{text}**" if row["significant"] else text


def _column(row: dict) -> tuple:
    """A compared row's column in the report: kind, then budget, then label (sortable)."""
    return (twins.KINDS.index(row["kind"]), row["norm"], row["eps"], row["attack_label"], row["eps_label"],
            row["attack_params"], row["n_samples"])


def _headers(columns: list[tuple]) -> list[str]:
    """``label@eps`` (``clean``), with the parameters and sample count where two columns
    would otherwise share a header."""
    names = ["clean" if c[0] == 0 else f"{c[3]}@{c[4]}" for c in columns]
    return [n + (f" ({c[6]} samples, `{c[5]}`)" if names.count(n) > 1 else "") for n, c in zip(names, columns)]


def _flags_of(counts: dict[tuple, tuple[int, int]], config_id: str) -> dict[str, tuple[int, int]]:
    """Of ``tables.fired_judged``'s counts, per check, those of the configuration ``config_id``."""
    return {check: value for (config, check), value in counts.items() if config[CONFIG_COLUMNS.index("config_id")] == config_id}

"""Report: a Markdown file with PNG figures, regenerated from a result store alone.

Sections mirror the tables and figures of the paper this tool was built for (Pau, Ayaz,
Zakariyya et al., 2025), for whatever grid the store holds:

- Table III analogue: the deployed (int8 .tflite, TFLM arena), measured and packed
  footprints, the paper's flash, and clean accuracy per dataset, model and quantizer;
- Table IV analogue: clean and per-attack accuracy, with the gradient-masking flags
  beside the numbers they qualify;
- Table V analogue: variance across folds of every accuracy;
- does robustness survive deployment: the same accuracies of the int8 .tflite;
- transfer attacks: a source x target matrix per attack and budget (examples crafted on
  the source, accuracy of the target and the transfer rate), as a table and a heatmap;
- targeted patches: per dataset, each patch's target rate beside its controls' (a random
  and solid patches at the same places), per placement, with the flag ``P`` where it does
  not beat them;
- accuracy against epsilon per attack, one line per quantizer, with the fold spread;
- accuracy against deployed flash (the Pareto view) with each MCU target's flash budget
  drawn in, and the configurations that fit each target (flash, and RAM against its
  largest contiguous block);
- defended against undefended twins (only when the store has defended rows): each
  defense's accuracy change per attack and budget, paired, whether a gain is
  gradient-only, and the masking flags of both (``sweeper.twins``);
- Jacobian norms (only when the rows carry them, ``sweeper.models.jacobian``): per model, each
  configuration's input-to-logit and per-block norms, and their paired per-fold ratios
  to the fp configuration and to the undefended twin;
- the gradient-masking diagnostics, and the provenance of every launch.

Every number comes from the query views (``sweeper.query``), so a table can be checked
against a direct SQL query. Means are over folds; ``±`` is the sample standard deviation
across folds (absent when the store has one fold).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from functools import cached_property
from pathlib import Path

from sweeper import diagnostics, output, query, twins
from sweeper.attacks import single_coordinate
from sweeper.errors import UserError
from sweeper.models.quantizers import QUANTIZERS
from sweeper.keys import CONFIG_COLUMNS

MARKERS = {"single_step_beats_iterative": "S", "black_box_beats_white_box": "B",
           "accuracy_rises_with_eps": "E", "adversarial_above_clean": "C", "large_eps_above_chance": "L",
           "patch_not_above_control": "P"}
CONFIG = CONFIG_COLUMNS
# The columns of single-coordinate attacks (attacks.single_coordinate: ART's L1 FGSM and PGD)
# carry this suffix, and their tables this note.
SINGLE_COORDINATE = " (single-coordinate)"
SINGLE_COORDINATE_NOTE = (
    "(single-coordinate): ART's FGSM and PGD under L1, as the paper ran them. Each step puts its whole "
    "size on the one input element with the largest gradient entry: nothing moves when that element "
    "already sits at its bound of the input range, and FGSM never uses more than one element's range, "
    "whatever eps. `apgd_ce` / `apgd_dlr` with norm 1 (APGD-L1, Croce & Hein 2021) measure the L1 threat.")
# A table row: one configuration evaluated on one number of attacked samples (a smoke run
# with fewer samples in the same store gets its own row, never a blend).
ROW = [*CONFIG, "n_samples"]


# The files a report writes in its folder, besides figures/*.png. The folder is the
# report's: regenerating replaces these (and figures of the same names), never anything
# else, and never a folder, link or device of one of these names (sweeper.output).
OWNED = ("report.md", "defense_effect.csv", "defense_verdicts.csv")
FIGURES = "figures"


def write(results: str, out: str | Path) -> Path:
    """Render the report for the store at ``results`` into ``out``; returns report.md.
    Nothing is created under ``out`` unless the store has rows to report and ``out`` is a
    place a report may go (``output.check_folder``)."""
    connection = query.open_store(results)  # a missing or empty store: one line, before anything is written
    try:
        [(rows,)] = connection.execute("SELECT count(*) FROM results").fetchall()
        if not rows:
            raise UserError(f"{results}: no readable rows to report (`sweeper check {results}` says why)")
        out = Path(output.check_folder(str(out), "--out", _owned(Path(out)), stores=output.local_store(results)))
        (out / FIGURES).mkdir(parents=True, exist_ok=True)
        sections = _Report(connection, out, results).sections()
    finally:
        connection.close()
    path = out / "report.md"
    output.write_text("\n\n".join(sections) + "\n", str(path), "--out", force=True)
    return path


def _owned(out: Path) -> list[str]:
    figures = out / FIGURES
    names = [*OWNED, FIGURES]
    if figures.is_dir() and not figures.is_symlink():
        names += [f"{FIGURES}/{name}" for name in sorted(p.name for p in figures.iterdir()) if name.endswith(".png")]
    elif figures.exists() or figures.is_symlink():
        raise UserError(f"--out: {figures} exists and is not a folder")
    return [name for name in names if name != FIGURES]


def fmt(mean: float | None, std: float | None = None) -> str:
    """``0.953 ± 0.012`` (three decimals; no ± without a spread)."""
    if mean is None or mean != mean:
        return "n/a"
    return f"{mean:.3f}" if std is None or std != std else f"{mean:.3f} ± {std:.3f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


class _Report:
    def __init__(self, connection, out: Path, results: str):
        self.db, self.out, self.results = connection, out, results
        self.robust = self._records("SELECT * FROM robust")
        self.flags = self._records("SELECT * FROM diagnostics")
        self.setups = _setup_names(self.robust)
        self.sample_counts, self.versions = defaultdict(set), defaultdict(set)
        for r in self.robust:
            self.sample_counts[_config_key(r)].add(r["n_samples"])
            self.versions[_named_key(r)].add(r["config_id"])
        self.cells = {(_row_key(r), *_point_key(r)): r for r in self.robust}
        self.fired: dict[tuple, set[str]] = defaultdict(set)
        for f in self.flags:
            if f["fired"]:
                self.fired[_row_key(f), *_point_key(f)].add(MARKERS[f["flag"]])

    def _records(self, sql: str) -> list[dict]:
        return query.fetch(self.db, sql).to_pylist()

    def sections(self) -> list[str]:
        sections = [self._header(), self._table_iii(), self._table_iv(), self._table_v(), self._deployment(),
                    self._transfer(), self._patches(), self._eps_curves(), self._pareto(), self._defenses(),
                    self._jacobians(), self._diagnostics(), self._provenance()]
        return [section for section in sections if section]  # a store without transfer rows has no such section

    # ------------------------------------------------------------ helpers

    def _label(self, record: dict) -> str:
        """Model and quantizer, plus the setup when the store holds several, and the sample
        count when one configuration was evaluated on several."""
        notes = [self.setups.get(_config_key(record), "")]
        if len(self.versions[_named_key(record)]) > 1:  # same names, other code or libraries
            notes.append(f"config {record['config_id'] or 'schema 2'}"[:15])
        if "n_samples" in record and len(self.sample_counts[_config_key(record)]) > 1:
            notes.append(f"{record['n_samples']} samples")
        notes = [n for n in notes if n]
        name = f"{record['model']} / {record['quantizer']}"
        if record.get("defense_label") not in (None, "none"):  # trained with a defense
            name += f" / {record['defense_label']}"
        if record.get("eval_bits") is not None:  # dbwt's weights quantized at another width
            name += f" @ {record['eval_bits']}-bit"
        return name + (f" ({', '.join(notes)})" if notes else "")

    def _datasets(self) -> list[str]:
        return sorted({_dataset_name(r) for r in self.robust})

    def _configs(self, dataset: str, per_sample_count: bool = True) -> list[dict]:
        """The clean rows of one dataset, in model then quantizer-registry order: one per
        table row (configuration x sample count), or one per configuration."""
        order = {name: i for i, name in enumerate(QUANTIZERS.names())}
        clean = [r for r in self.robust if r["attack"] == "none" and _dataset_name(r) == dataset]
        if not per_sample_count:
            clean = list({_config_key(r): r for r in clean}.values())
        # Undefended first, then each defense, its own width before its other widths.
        return sorted(clean, key=lambda r: (r["model"], order.get(r["quantizer"], 99), r["train"], r["seed"],
                                            r["defense_label"] != "none", r["defense_label"],
                                            r["eval_bits"] is not None, r["eval_bits"] or 0,
                                            r["config_id"] or "", r["n_samples"]))

    def _attack_points(self, dataset: str) -> list[tuple[str, str, str, str]]:
        """Columns: (attack_label, eps_label, attack_params, header). An attack@eps run
        with different parameters gets one column per parameter set, never a blend."""
        mine = [r for r in self.robust if r["attack"] != "none" and _dataset_name(r) == dataset]
        points = {(r["attack_label"], r["eps_label"], r["attack_params"], r["eps"]) for r in mine}
        coordinate = {r["attack_label"] for r in mine if single_coordinate(r["attack"], r["norm"])}
        ordered = sorted(points, key=lambda p: (p[0], p[3], p[2]))
        variants = defaultdict(list)
        for label, eps_label, params, _ in ordered:
            variants[label, eps_label].append(params)
        return [(label, eps_label, params, f"{label}@{eps_label}" + (
                 f" (params {variants[label, eps_label].index(params) + 1})"
                 if len(variants[label, eps_label]) > 1 else "") + (SINGLE_COORDINATE if label in coordinate else ""))
                for label, eps_label, params, _ in ordered]

    def _cell(self, config: dict, attack_label: str, eps_label: str, params: str) -> dict | None:
        return self.cells.get((_row_key(config), attack_label, eps_label, params))

    def _markers(self, config: dict, attack_label: str, eps_label: str, params: str) -> str:
        fired = sorted(self.fired.get((_row_key(config), attack_label, eps_label, params), ()))
        return f" [{''.join(fired)}]" if fired else ""

    # ------------------------------------------------------------ sections

    def _header(self) -> str:
        rows = self._records("SELECT count(*) AS n, count(DISTINCT job_id) AS jobs, "
                             "string_agg(DISTINCT grid, ', ') AS grids FROM results")[0]
        return "\n".join([
            f"# sweeper report: {rows['grids']}", "",
            f"Regenerated from the result store alone (`sweeper report {self.results}`): "
            f"{rows['n']} result rows from {rows['jobs']} trained models.",
            "Accuracies are means over the folds; `±` is the sample standard deviation across folds.",
            "Adversarial accuracy is measured on the same attacked test samples as the clean accuracy "
            "of that table; only the samples the model classifies correctly are attacked.",
            "Flags in brackets qualify the number they follow; see "
            "[Gradient-masking diagnostics](#gradient-masking-diagnostics)."])

    def _table_iii(self) -> str:
        from sweeper.deploy import footprint

        parts = ["## Table III analogue: memory and clean accuracy",
                 "Three footprints per model. **Deployed** (what the MCU fit uses): flash is the full-int8 "
                 f".tflite plus a {footprint.RUNTIME_FLASH_KB:g} KB allowance for the TensorFlow Lite Micro "
                 f"runtime, RAM the smallest TFLM arena that allocates it plus {footprint.ARENA_MARGIN:.0%}; "
                 "`estimate` marks a model the converter rejected (fused-int8 liveness instead). "
                 "**Measured** are the .tflite and arena alone. **Packed** counts every weight at its "
                 "quantized bit width and the fused activations at theirs: what a runtime with sub-byte "
                 "kernels would need (TFLite stores int8, so sub-8-bit presets do not shrink there). "
                 "The paper's column is its Table III flash, for stq_net. Clean accuracy is on the whole "
                 "held-out fold."]
        for dataset in self._datasets():
            rows = [[self._label(c), f"{c['params']:,}", _kb(c["flash_kb"]), _kb(c["ram_kb"]),
                     c["footprint_source"] or "n/a", _kb(c["tflite_kb"]), _kb(c["arena_kb"]),
                     _kb(c["flash_packed_kb"]), _kb(c["ram_packed_kb"]), _paper_flash(c),
                     fmt(c["test_acc_mean"], c["test_acc_std"]), str(c["folds"]),
                     ", ".join(self._fitting(c)) or "none"] for c in self._configs(dataset, False)]
            parts += [f"### {dataset}", markdown_table(
                ["model / quantizer", "params", "flash KB", "RAM KB", "source", ".tflite KB", "arena KB",
                 "packed flash KB", "packed RAM KB", "paper flash KB", "clean accuracy", "folds", "fits"],
                rows)]
        return "\n\n".join(parts)

    def _deployment(self) -> str:
        """Does robustness survive deployment? The same samples and adversarial examples,
        classified by the QKeras model and by its int8 .tflite."""
        parts = ["## Does robustness survive deployment?",
                 "Accuracy of the QKeras model -> its full-int8 .tflite (TFLite interpreter, int8 input "
                 "and output), on the same attacked samples: clean, and on the adversarial examples crafted "
                 "on the QKeras model. Means over folds."]
        for dataset in self._datasets():
            points = [p for p in self._attack_points(dataset) if not p[0].startswith("worst(")]
            rows = []
            for config in self._configs(dataset):
                cells = [self._cell(config, label, eps_label, params) for label, eps_label, params, _ in points]
                rows.append([self._label(config), _pair(config["clean_acc_mean"], config["deployed_clean_acc_mean"]),
                             *["" if c is None else _pair(c["adv_acc_mean"], c["deployed_adv_acc_mean"])
                               for c in cells]])
            parts += [f"### {dataset}", markdown_table(
                ["model / quantizer", "clean"] + [title for *_, title in points], rows), *_notes(points)]
        return "\n\n".join(parts)

    def _transfer(self) -> str:
        """Per dataset, attack and budget: the accuracy each target keeps on examples crafted
        on each source (the diagonal is the source's own white-box number), with the transfer rate."""
        from sweeper import figures

        matrices: dict[tuple, list[dict]] = defaultdict(list)
        for r in self.robust:
            if r.get("source_config_id"):
                matrices[_dataset_name(r), r["attack"], r["norm"], r["eps"], r["eps_label"], r["attack_params"],
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
            sources, targets, values = self._transfer_matrix(rows)
            title = f"{attack} L{norm} @ {eps_label}"
            name = _file_name(f"transfer-{dataset}-{attack}-{norm}-{eps_label}-{len(parts)}.png")
            figures.transfer_matrix([[cell[0] for cell in line] for line in values],
                                    [self._label(s) for s in sources], [self._label(t) for t in targets],
                                    self.out / "figures" / name, f"{title} on {dataset}: target accuracy")
            table = [[self._label(s), *[_transfer_cell(*cell) for cell in line]] for s, line in zip(sources, values)]
            parts += [f"### {dataset}: {title}", f"Parameters `{params}`, {n_samples} samples per fold.",
                      markdown_table(["source ↓ target →", *[self._label(t) for t in targets]], table),
                      f"![{title} on {dataset}](figures/{name})"]
        return "\n\n".join(parts)

    def _patches(self) -> str:
        """Per dataset, every targeted patch point (white-box and transferred) as a target
        rate beside its controls', per placement; the store's means over folds."""
        patches = [r for r in self.robust if r.get("target_n") is not None and r["attack"] != "none"]
        if not patches:
            return ""
        parts = ["## Targeted patches",
                 "A universal targeted patch succeeds when the patched sample is classified as its target. "
                 "**Target rate**: of the attacked samples the model classifies correctly clean whose true class "
                 "is not the target (`n`, summed over folds), the share classified as the target with the patch on. "
                 "**Control**: the best of a uniform-random patch and two solid ones (the input range's low and "
                 "high ends) of the same size at exactly the same places; its target rate is the highest of "
                 "them, its accuracy the lowest. Accuracy counts any wrong class (what occlusion also does), "
                 "over all attacked samples. `random` places the patch anew on every sample; `fixed` at one "
                 "place the attacker chose (`center`, or top, left). **P**: the patch is not shown to take more "
                 "samples to its target than its control (see the diagnostics). Means over folds."]
        for dataset in self._datasets():
            mine = [r for r in patches if _dataset_name(r) == dataset]
            if not mine:
                continue
            order = {_config_key(c): i for i, c in enumerate(self._configs(dataset, False))}
            mine.sort(key=lambda r: (order.get(_config_key(r), 0), _placement(r) != "random", _placement(r),
                                     r["attack_label"], r["eps"]))
            rows = [[self._label(r), r["attack_label"], _placement(r), r["eps_label"], str(r["target_n"]),
                     fmt(r["target_rate_mean"], r["target_rate_std"]), fmt(r["control_target_rate_mean"]),
                     fmt(r["adv_acc_mean"]), fmt(r["control_adv_acc_mean"]),
                     self._markers(r, r["attack_label"], r["eps_label"], r["attack_params"]).strip(" []")]
                    for r in mine]
            parts += [f"### {dataset}", markdown_table(
                ["model / quantizer", "patch", "placement", "eps", "n", "target rate", "control target rate",
                 "accuracy", "control accuracy", "flags"], rows)]
        return "\n\n".join(parts)

    def _transfer_matrix(self, rows: list[dict]) -> tuple[list[dict], list[dict], list[list[tuple]]]:
        """Sources and targets (clean records, in table order) and per (source, target)
        (accuracy, transfer rate, white-box?); NaN where the grid has no such pair."""
        clean = {r["config_id"]: r for r in self.robust if r["attack"] == "none"}
        first = rows[0]
        white = {r["config_id"]: r for r in self.robust if r["attack"] == first["attack"] and not r.get("source_config_id")
                 and r.get("target") != "deployed"  # the diagonal is the source model's own, not its build's
                 and (r["norm"], r["eps_label"], r["attack_params"], r["n_samples"]) ==
                 (first["norm"], first["eps_label"], first["attack_params"], first["n_samples"])}
        order = {c["config_id"]: i for i, c in enumerate(self._configs(_dataset_name(first), False))}
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

    def _fitting(self, config: dict) -> list[str]:
        return self._fits.get(_config_key(config), [])

    @cached_property
    def _fits(self) -> dict[tuple, list[str]]:
        fitting = defaultdict(list)
        for r in self._records("SELECT * FROM fits WHERE targeted ORDER BY mcu"):
            fitting[_config_key(r)].append(r["mcu"])
        return fitting

    def _table_iv(self) -> str:
        return self._per_point_table(
            "## Table IV analogue: accuracy under attack",
            "Columns are attack@epsilon; `none` is the clean accuracy of the attacked samples.", "none",
            clean=lambda c: fmt(c["clean_acc_mean"], c["clean_acc_std"]),
            attacked=lambda c, r: fmt(r["adv_acc_mean"], r["adv_acc_std"])
            + self._markers(c, r["attack_label"], r["eps_label"], r["attack_params"]))

    def _table_v(self) -> str:
        return self._per_point_table(
            "## Table V analogue: variance across folds",
            "Sample variance of the accuracy across folds (clean: the whole held-out fold).", "clean",
            clean=lambda c: _variance(None if c["test_acc_std"] is None else c["test_acc_std"] ** 2),
            attacked=lambda c, r: _variance(r["adv_acc_var"]))

    def _per_point_table(self, heading: str, note: str, clean_header: str, clean, attacked) -> str:
        """One table per dataset: a row per configuration, a column per attack@epsilon."""
        parts = [heading, note]
        for dataset in self._datasets():
            points = self._attack_points(dataset)
            rows = []
            for config in self._configs(dataset):
                cells = [self._cell(config, label, eps_label, params) for label, eps_label, params, _ in points]
                rows.append([self._label(config), clean(config),
                             *["" if cell is None else attacked(config, cell) for cell in cells]])
            header = ["model / quantizer", clean_header] + [title for *_, title in points]
            parts += [f"### {dataset}", markdown_table(header, rows), *_notes(points)]
            parts += [f"- {title}: `{params}`" for label, eps_label, params, title in points if "(params" in title]
        return "\n\n".join(parts)

    def _eps_curves(self) -> str:
        from sweeper import figures

        parts = ["## Accuracy against epsilon",
                 "One line per quantizer (mean over folds), the band is ± one standard deviation; "
                 "the dotted line is chance. Attacks with a single epsilon are in Table IV only."]
        curves: dict[tuple, list[dict]] = defaultdict(list)
        noted = False
        for r in self.robust:
            if r["attack"] != "none" and 0 < r["eps"] < float("inf"):  # unbounded has no place on an axis
                curves[_dataset_name(r), r["model"], r["attack_label"], r["n_samples"]].append(r)
        for (dataset, model, label, _), points in sorted(curves.items()):
            if len({p["eps"] for p in points}) < 2:
                continue
            name = _file_name(f"eps-{dataset}-{model}-{label}.png")
            classes = self._classes(dataset)
            chance = 1 / classes if classes else None
            if any(single_coordinate(p["attack"], p["norm"]) for p in points):
                label += SINGLE_COORDINATE
                noted = True
            figures.eps_curve(points, self.out / "figures" / name, f"{label} on {dataset}, {model}", chance)
            parts.append(f"![{label} on {dataset}, {model}](figures/{name})")
        return "\n\n".join(parts + ([SINGLE_COORDINATE_NOTE] if noted else []))

    def _classes(self, dataset: str) -> int:
        """The dataset's class count (0 if unknown: rows from a schema-1 store)."""
        return self._class_counts.get(dataset, 0)

    @cached_property
    def _class_counts(self) -> dict[str, int]:
        rows = self._records("SELECT max(n_classes) AS n, dataset, dataset_options FROM results GROUP BY ALL")
        return {_dataset_name(r): r["n"] for r in rows if r["n"]}

    def _pareto(self) -> str:
        from sweeper import figures

        mcus = {r["name"]: r for r in self._records("SELECT * FROM mcus")}
        targets = sorted({m for r in self._records("SELECT DISTINCT unnest(mcu_targets) AS m FROM results")
                          for m in [r["m"]] if m in mcus})
        parts = ["## Accuracy against flash: what fits where",
                 "Clean accuracy against flash size; dashed lines are the flash budgets of the grid's MCU "
                 "targets, and the step line joins the Pareto-optimal configurations (no other is both "
                 "smaller and more accurate)."]
        for dataset in self._datasets():
            configs = self._configs(dataset, False)
            # Rows of older stores (schema <= 2) have no deployed flash: no place on the axis.
            placed = [c for c in configs if c["flash_kb"] is not None and c["test_acc_mean"] is not None]
            parts.append(f"### {dataset}")
            if len(placed) < len(configs):
                parts.append(f"{len(configs) - len(placed)} of {len(configs)} configurations have no deployed "
                             "flash figure (rows of an older store) and are left out of the figure.")
            if placed:
                name = _file_name(f"pareto-{dataset}.png")
                front = figures.pareto(placed, [mcus[t] for t in targets], self.out / "figures" / name,
                                       f"clean accuracy against flash, {dataset}", self._label)
                parts += [f"![accuracy against flash, {dataset}](figures/{name})",
                          "Pareto-optimal: " + ", ".join(f"{self._label(c)} ({c['flash_kb']:.1f} KB, "
                                                         f"{fmt(c['test_acc_mean'])})" for c in front) + "."]
            rows = []
            for target in targets:
                fitting = [c for c in configs if target in self._fitting(c)]
                best = max(fitting, key=lambda c: c["test_acc_mean"], default=None)
                rows.append([target, f"{mcus[target]['flash_kb']:g}", f"{mcus[target]['ram_block_kb']:g}",
                             f"{len(fitting)} of {len(configs)}",
                             ", ".join(self._label(c) for c in fitting) or "none",
                             "" if best is None else f"{self._label(best)} ({fmt(best['test_acc_mean'])})"])
            parts.append(markdown_table(["MCU", "flash KB", "largest RAM block KB", "fit", "configurations that fit",
                                         "most accurate that fits"], rows))
        return "\n\n".join(parts)

    def _diagnostics(self) -> str:
        parts = ["## Gradient-masking diagnostics",
                 "Warning signs that a model only looks robust because its gradients are useless "
                 "(Athalye, Carlini and Wagner, 2018). Each check compares numbers the grid has, on "
                 "the same attacked samples: a paired exact test (McNemar; a binomial test against "
                 "chance + 0.10 for L), Holm-adjusted within each configuration and check at "
                 f"{diagnostics.ALPHA}, and a difference of at least {diagnostics.MIN_MARGIN}. P is the other "
                 "way round: it fires unless a targeted patch's target rate beats its controls' by a binomial "
                 f"test at {diagnostics.ALPHA} (not adjusted) and by at least {diagnostics.MIN_MARGIN}. Cells read "
                 "fired/judged; `-` means the grid has no numbers to judge that check.",
                 "\n".join(f"- **{MARKERS[c]}** `{c}`: {text}" for c, text in diagnostics.CHECKS.items())]
        counts = {(*[s[c] for c in CONFIG], s["flag"]): s for s in diagnostics.summary(self.flags)}
        rows = []
        for dataset in self._datasets():
            for config in self._configs(dataset, False):
                cells = []
                for check in diagnostics.CHECKS:
                    s = counts.get((*[config[c] for c in CONFIG], check))
                    cells.append("-" if s is None else f"{s['fired']}/{s['judged']}")
                rows.append([dataset, self._label(config), *cells])
        parts.append(markdown_table(["dataset", "model / quantizer", *MARKERS.values()], rows))
        fired = [f for f in self.flags if f["fired"]]
        parts.append("### Flags that fired" if fired else "No flag fired.")
        if fired:
            parts.append("\n".join(f"- {_dataset_name(f)}, {self._label(f)}: **{MARKERS[f['flag']]}** "
                                   f"{f['detail']}" for f in fired))
        return "\n\n".join(parts)

    def _defenses(self) -> str:
        """Each defended configuration against its undefended twin (sweeper.twins), per
        dataset: the paired changes, the verdicts, and the masking flags of both."""
        if all(r["defense"] in (None, twins.NONE) for r in self.robust):
            return ""
        compared = twins.compare(query.fetch(self.db, twins.ROWS_SQL))
        verdicts = twins.verdicts(compared)
        for table, name in ((compared, "defense_effect.csv"), (verdicts, "defense_verdicts.csv")):
            output.write_text(query.render(table, "csv"), str(self.out / name), "--out", force=True)
        parts = ["## Defended vs undefended",
                 "Each defended model against its twin: the same dataset, model, quantizer, training settings, "
                 "K and seed, trained without a defense (for dbwt's weights at another width, `@ 2-bit`, the "
                 "model trained at that width: `vs int2`), evaluated by the same attacks on the same samples "
                 "(folds pooled, samples aligned). Cells read `twin -> defended (change, p_adj)`: an exact "
                 "two-sided McNemar test, Holm-adjusted within each defended model; **bold**: significant "
                 f"(p_adj < {diagnostics.ALPHA} and |change| >= {diagnostics.MIN_MARGIN}). A gain only under "
                 "gradient attacks, while black-box and transfer attacks at that budget find none, is the mark "
                 "of gradient masking. Every number is in `defense_effect.csv` and `defense_verdicts.csv`."]
        records, judged = compared.to_pylist(), verdicts.to_pylist()
        for dataset in self._datasets():
            mine = [r for r in records if _dataset_name(r) == dataset]
            if mine:
                verdicts = [v for v in judged if _dataset_name(v) == dataset]
                parts += [f"### {dataset}", *self._defense_tables(mine, verdicts)]
        if len(parts) == 1:
            parts.append("No defended model has an undefended twin in this store.")
        return "\n\n".join(parts)

    def _defense_tables(self, records: list[dict], judged: list[dict]) -> list[str]:
        """The changes (a row per defended model and twin, a column per point), the
        verdicts, and the flags per check letter."""
        order = lambda config: (config["model"], config["quantizer"], config["defense_label"],  # noqa: E731
                                config["eval_bits"] is not None, config["eval_bits"] or 0)
        records = sorted(records, key=lambda r: order(r))
        judged = sorted(judged, key=lambda v: (*order(v), v["norm"], v["eps"]))
        pairs = {(r["config_id"], r["twin_config_id"]): {c: r[c] for c in CONFIG} for r in records}
        several = {defended for defended, _ in pairs if sum(d == defended for d, _ in pairs) > 1}
        name = lambda config, twin: self._label(config) + (  # noqa: E731
            f" vs {twins.width_twin(config)}" if config["eval_bits"] is not None else "") + (
            f" (twin {twin})" if config["config_id"] in several else "")
        columns = sorted({twins.column(r) for r in records})
        cells = {(r["config_id"], r["twin_config_id"], twins.column(r)): twins.cell(r) for r in records}
        changes = [[name(config, twin), *[cells.get((defended, twin, column), "") for column in columns]]
                   for (defended, twin), config in pairs.items()]
        verdicts = [[name({c: v[c] for c in CONFIG}, v["twin_config_id"]), f"L{v['norm']} @ {v['eps_label']}",
                     f"**{v['verdict']}**" if v["gradient_only"] else v["verdict"],
                     _evidence(v, "gradient"), _evidence(v, "black_box")] for v in judged]
        flags = []
        for (defended, twin), config in pairs.items():
            mine, theirs = twins.flag_counts(self.flags, defended), twins.flag_counts(self.flags, twin)
            flags.append([name(config, twin), *[f"{_fired(mine.get(check))} ({_fired(theirs.get(check))})"
                                                for check in MARKERS]])
        return [markdown_table(["defended model", *twins.headers(columns)], changes),
                markdown_table(["defended model", "budget", "verdict", "gradient attack (largest change up)",
                                "black-box or transfer (largest change up)"], verdicts),
                "Gradient-masking flags, fired/judged per check: the defended model, then (its twin).",
                markdown_table(["defended model", *MARKERS.values()], flags)]

    def _jacobians(self) -> str:
        """Per dataset and model: the Jacobian norms of every configuration, and the same
        norms as ratios to the fp configuration and to the undefended twin, fold by fold."""
        per_fold = self._records(f"SELECT {', '.join(ROW)}, fold, any_value(jacobian_fro) AS fro, "
                                 "any_value(jacobian_fro_se) AS fro_se, any_value(jacobian_blocks) AS blocks, "
                                 "any_value(jacobian_block_fro) AS block_fro, any_value(jacobian_block_se) AS "
                                 "block_se, any_value(jacobian_projections) AS projections FROM results "
                                 "WHERE jacobian_fro IS NOT NULL GROUP BY ALL")
        if not per_fold:
            return ""
        folds: dict[tuple, dict[int, dict]] = defaultdict(dict)
        for r in per_fold:
            folds[_row_key(r)][r["fold"]] = r
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
        for dataset in self._datasets():
            configs = [c for c in self._configs(dataset) if _row_key(c) in folds]
            blocks_of = {_row_key(c): tuple(next(iter(folds[_row_key(c)].values()))["blocks"]) for c in configs}
            for model, names in sorted({(c["model"], blocks_of[_row_key(c)]) for c in configs}):
                # one table per model and block list (a changed architecture has other blocks)
                mine = [c for c in configs if c["model"] == model and blocks_of[_row_key(c)] == names]
                header = [f"{i + 1} {name}" for i, name in enumerate(names)]
                norms = [[self._label(c), fmt(c["test_acc_mean"], c["test_acc_std"]),
                          *_norm_cells(folds[_row_key(c)].values(), len(names))] for c in mine]
                parts += [f"### {dataset}, {model}", "Norms (clean accuracy is on the whole held-out fold):",
                          markdown_table(["model / quantizer", "clean accuracy", "logits", *header], norms)]
                for title, reference in (("fp", _fp_reference), ("the undefended twin", _twin_reference)):
                    rows = []
                    for c in mine:
                        ref = reference(c, mine)
                        if ref is not None:
                            rows.append([self._label(c) + f" ÷ {ref['quantizer']}/{ref['defense_label']}",
                                         *_ratio_cells(folds[_row_key(c)], folds[_row_key(ref)], len(names))])
                    if rows:
                        parts += [f"Ratio to {title}:",
                                  markdown_table(["model / quantizer ÷ reference", "logits", *header], rows)]
        return "\n\n".join(parts)

    def _provenance(self) -> str:
        launches = self._records("SELECT * FROM launches ORDER BY started_at")
        rows = [[l["started_at"], l["grid_name"], l["grid_file"] or "(in code)", l["grid_sha256"][:12] or "-",
                 " ".join(l["overrides"]) or "-",
                 ", ".join(f"{k} {v}" for k, v in sorted(json.loads(l["versions"]).items()))]
                for l in launches]
        return "\n\n".join(["## Provenance", "Every launch whose rows are in the store (from the Parquet "
                            "metadata; `sweeper query RESULTS \"SELECT grid_text FROM launches\"` shows the "
                            "grid files).",
                            markdown_table(["started (UTC)", "grid", "file", "sha256", "overrides", "versions"],
                                           rows)])


def _notes(points: list[tuple[str, str, str, str]]) -> list[str]:
    """The note a table of these attack points needs below it: single-coordinate columns."""
    return [SINGLE_COORDINATE_NOTE] if any(title.endswith(SINGLE_COORDINATE) for *_, title in points) else []
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
    same = [c for c in configs if c["defense"] == twins.NONE and config["defense"] != twins.NONE
            and all(c[k] == config[k] for k in (*_REFERENCE_KEY, "quantizer"))
            and c["eval_bits"] is None and config["eval_bits"] is None]
    return same[0] if len(same) == 1 else None


def _norm_cells(folds, blocks: int) -> list[str]:
    folds = list(folds)
    columns = [[f["fro"] for f in folds], *[[f["block_fro"][k] for f in folds] for k in range(blocks)]]
    return [_spread(values, None) for values in columns]


def _ratio_cells(mine: dict[int, dict], theirs: dict[int, dict], blocks: int) -> list[str]:
    shared = sorted(set(mine) & set(theirs))
    ratio = lambda a, b: a / b if b else float("nan")  # noqa: E731
    columns = [[ratio(mine[f]["fro"], theirs[f]["fro"]) for f in shared],
               *[[ratio(mine[f]["block_fro"][k], theirs[f]["block_fro"][k]) for f in shared]
                 for k in range(blocks)]]
    return [_spread(values, 2) for values in columns]


def _spread(values: list[float], decimals: int | None) -> str:
    """mean ± sample standard deviation (no ± for one value), both to ``decimals``
    places; None: as many as give the mean three significant digits."""
    import math
    import statistics

    if not values or any(v != v for v in values):
        return "n/a"
    mean = statistics.fmean(values)
    if decimals is None:
        decimals = max(0, 2 - math.floor(math.log10(abs(mean)))) if mean else 2
    return f"{mean:.{decimals}f}" + (f" ± {statistics.stdev(values):.{decimals}f}" if len(values) > 1 else "")


def _relative_se(record: dict) -> float:
    pairs = [(record["fro_se"], record["fro"]), *zip(record["block_se"] or [], record["block_fro"] or [])]
    return max((se / value for se, value in pairs if se is not None and value), default=0.0)


def _config_key(record: dict) -> tuple:
    return tuple(record[c] for c in CONFIG)


def _named_key(record: dict) -> tuple:
    return tuple(record[c] for c in CONFIG if c != "config_id")


def _row_key(record: dict) -> tuple:
    return tuple(record[c] for c in ROW)


def _point_key(record: dict) -> tuple:
    return record["attack_label"], record["eps_label"], record["attack_params"]


def _dataset_name(record: dict) -> str:
    options = json.loads(record["dataset_options"] or "{}")
    return record["dataset"] + "".join(f" {k}={v}" for k, v in sorted(options.items()))


def _setup_names(robust: list[dict]) -> dict[tuple, str]:
    """'setup 1', 'setup 2'... for configurations that differ only in training setup."""
    setups = sorted({_setup(r) for r in robust}, key=str)
    if len(setups) <= 1:
        return {}
    index = {setup: f"setup {i + 1}" for i, setup in enumerate(setups)}
    return {_config_key(r): index[_setup(r)] for r in robust}


def _setup(record: dict) -> tuple:
    """What tells apart two configurations of one model and preset: training settings,
    K and seed."""
    return record["train"], record["k"], record["seed"]


# The paper's Table III flash for its stq_net (KB), by preset.
PAPER_FLASH_KB = {"fp": 4496, "int8": 1124, "int4": 527, "int2": 281, "ternary": 410, "stq": 410, "binary": 140}


def _paper_flash(config: dict) -> str:
    value = PAPER_FLASH_KB.get(config["quantizer"]) if config["model"] == "stq_net" else None
    return "" if value is None else f"{value:g}"


def _kb(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.1f}"


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


def _pair(qkeras: float | None, deployed: float | None) -> str:
    return f"{fmt(qkeras)} -> {fmt(deployed)}"


def _variance(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2e}"


def _evidence(verdict: dict, group: str) -> str:
    if verdict[f"{group}_attack"] is None:
        return "none measured"
    return (f"{verdict[f'{group}_attack']}: {fmt(verdict[f'{group}_twin_acc'])} -> "
            f"{fmt(verdict[f'{group}_defended_acc'])} (p_adj {verdict[f'{group}_p_adjusted']:.2g})")


def _fired(counts: tuple[int, int] | None) -> str:
    return "-" if counts is None else f"{counts[0]}/{counts[1]}"


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


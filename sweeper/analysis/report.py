"""Report: a Markdown file with PNG figures, and every table also as LaTeX and CSV
(``latex.py``: ``tables/<stem>.tex`` and ``.csv``), regenerated from a result store alone.

Sections mirror the tables and figures of the paper this tool was built for (Pau, Ayaz,
Zakariyya et al., 2025), for whatever grid the store holds:

- Table III analogue: the deployed (int8 .tflite, TFLM arena), measured and packed
  footprints, the paper's flash, and clean accuracy per dataset, model and quantizer;
- Table IV analogue: clean and per-attack accuracy, with the gradient-masking flags
  beside the numbers they qualify, one table per dataset and budget with the worst case
  over attacks under a short label (``budgets.py``);
- Table V analogue: variance across folds of every accuracy (cut the same way);
- does robustness survive deployment: the same accuracies of the int8 .tflite;
- how robust is the build you flash: the QKeras model's worst case beside its build's
  (``shipping.py``, only with attacks on the build);
- transfer attacks: a source x target matrix per attack and budget (examples crafted on
  the source, accuracy of the target and the transfer rate), as a table and a heatmap;
- targeted patches: per dataset, each patch's target rate beside its controls' (a random
  and solid patches at the same places), per placement, with the flag ``P`` where it does
  not beat them;
- accuracy against epsilon per attack, one line per quantizer, with the fold spread;
- accuracy against deployed flash (the Pareto view) with each MCU target's flash budget
  drawn in, and the configurations that fit each target with some build (flash, and RAM
  against its largest contiguous block);
- builds (only with build records): every build format per configuration, accepted or
  why not, its sizes, MACs, latency estimate and fit; and robustness against the budget:
  the worst case per build against deployed flash, RAM and estimated latency, with the
  Pareto front (``shipping.py``);
- defended against undefended twins (only when the store has defended rows): each
  defense's accuracy change per attack and budget, paired, whether a gain is
  gradient-only, and the masking flags of both (``sweeper.analysis.twins``);
- Jacobian norms (only when the rows carry them, ``sweeper.models.jacobian``): per model, each
  configuration's input-to-logit and per-block norms, and their paired per-fold ratios
  to the fp configuration and to the undefended twin;
- the gradient-masking diagnostics beside AutoAttack's sanity checks of each trained model
  (``sweeper.models.sanity``), and the provenance of every launch.

The paper's tables, the deployment, epsilon and flash views, the diagnostics and the
provenance are written here; the studies (transfer, patches, defenses, Jacobians) are
``studies.py``'s sections, what ships (the flashed build, builds, budget) ``shipping.py``'s, the shared table helpers ``tables.py``'s, the figures
``figures.py``'s. Every number comes from the query views (``sweeper.analysis.query``), so
a table can be checked against a direct SQL query. Means are over folds; ``±`` is the sample standard deviation
across folds (absent when the store has one fold).
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import cached_property
from pathlib import Path

from sweeper.analysis import budgets, checks, figures, latex, output, query, sanity, shipping, studies
from sweeper.analysis.tables import (MARKERS, SINGLE_COORDINATE, SINGLE_COORDINATE_NOTE, Num, Table, config_key,
                                     dataset_name, file_name, fired_judged, fired_text, fmt, kb, named_key,
                                     point_key, row_key, setup_names)
from sweeper.attacks import single_coordinate
from sweeper.deploy.footprint import ARENA_MARGIN, RUNTIME_FLASH_KB
from sweeper.errors import UserError
from sweeper.keys import INT8, NONE
from sweeper.models.quantizers import QUANTIZERS

# The files a report writes in its folder, besides figures/*.png. The folder is the
# report's: regenerating replaces these (and figures of the same names), never anything
# else, and never a folder, link or device of one of these names (sweeper.analysis.output).
OWNED = ("report.md", "defense_effect.csv", "defense_verdicts.csv")
FIGURES = "figures"
TABLES = "tables"  # each table's .tex and .csv (latex.py)


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
        (out / TABLES).mkdir(exist_ok=True)
        report = Report(connection, out, results)
        sections = report.sections()
    finally:
        connection.close()
    for table in report.tables:
        for suffix, text in ((".tex", latex.render(table)), (".csv", latex.render_csv(table))):
            output.write_text(text, str(out / TABLES / f"{table.stem}{suffix}"), "--out", force=True)
    path = out / "report.md"
    output.write_text("\n\n".join(sections) + "\n", str(path), "--out", force=True)
    return path


def _owned(out: Path) -> list[str]:
    names = list(OWNED)
    for folder, suffixes in ((FIGURES, (".png",)), (TABLES, (".tex", ".csv"))):
        path = out / folder
        if path.is_dir() and not path.is_symlink():
            names += [f"{folder}/{name}" for name in sorted(p.name for p in path.iterdir()) if name.endswith(suffixes)]
        elif path.exists() or path.is_symlink():
            raise UserError(f"--out: {path} exists and is not a folder")
    return names


class Report:
    """The sections of one report, from an open connection over the store (``query``)."""

    def __init__(self, connection, out: Path, results: str):
        self.db, self.out, self.results = connection, out, results
        self.robust = self.records("SELECT * FROM robust")
        self.flags = self.records("SELECT * FROM diagnostics")
        self.setups = setup_names(self.robust)
        self.sample_counts, self.versions = defaultdict(set), defaultdict(set)
        for r in self.robust:
            self.sample_counts[config_key(r)].add(r["n_samples"])
            self.versions[named_key(r)].add(r["config_id"])
        self.cells = {(row_key(r), *point_key(r)): r for r in self.robust}
        self.flag_counts = fired_judged(self.flags)
        self.worst = budgets.WorstLabels(self.robust)
        self.tables: list[Table] = []  # every table written, in order (also as LaTeX and CSV)
        self.fired: dict[tuple, set[str]] = defaultdict(set)
        for f in self.flags:
            if f["fired"]:
                self.fired[row_key(f), *point_key(f)].add(MARKERS[f["flag"]])

    def records(self, sql: str) -> list[dict]:
        return query.fetch(self.db, sql).to_pylist()

    def table(self, caption: str, header: list[str], rows: list[list], notes: list[str] = (),
              best: dict[int, str] | None = None) -> str:
        """A table of the report, kept for its LaTeX and CSV files (``latex.py``); returns
        its Markdown with ``notes`` below it. ``best``: column index -> "max"/"min", the
        value set in bold in LaTeX."""
        stem = f"{len(self.tables) + 1:02d}-" + file_name(caption.lower())[:80].strip("_")
        table = Table(stem, caption, header, rows, list(notes), best or {})
        self.tables.append(table)
        return "\n\n".join([table.markdown(), *notes])

    def sections(self) -> list[str]:
        sections = [self._header(), self._table_iii(), self._table_iv(), self._table_v(), self._deployment(),
                    shipping.flashed(self), studies.transfer(self), studies.patches(self), self._eps_curves(),
                    self._pareto(), shipping.builds(self), shipping.budget(self), studies.defenses(self),
                    studies.jacobians(self), self._diagnostics(), self._provenance()]
        return [section for section in sections if section]  # a store without transfer rows has no such section

    # ------------------------------------------------------------ helpers

    def label(self, record: dict) -> str:
        """Model and quantizer, plus the setup when the store holds several, and the sample
        count when one configuration was evaluated on several."""
        notes = [self.setups.get(config_key(record), "")]
        if len(self.versions[named_key(record)]) > 1:  # same names, other code or libraries
            notes.append(f"config {record['config_id'] or 'schema 2'}"[:15])
        if "n_samples" in record and len(self.sample_counts[config_key(record)]) > 1:
            notes.append(f"{record['n_samples']} samples")
        notes = [n for n in notes if n]
        name = f"{record['model']} / {record['quantizer']}"
        if record.get("defense_label") not in (None, NONE):  # trained with a defense
            name += f" / {record['defense_label']}"
        if record.get("eval_bits") is not None:  # dbwt's weights quantized at another width
            name += f" @ {record['eval_bits']}-bit"
        return name + (f" ({', '.join(notes)})" if notes else "")

    def datasets(self) -> list[str]:
        return sorted({dataset_name(r) for r in self.robust})

    def configs(self, dataset: str, per_sample_count: bool = True) -> list[dict]:
        """The clean rows of one dataset, in model then quantizer-registry order: one per
        table row (configuration x sample count), or one per configuration."""
        order = {name: i for i, name in enumerate(QUANTIZERS.names())}
        clean = [r for r in self.robust if r["attack"] == NONE and dataset_name(r) == dataset]
        if not per_sample_count:
            clean = list({config_key(r): r for r in clean}.values())
        # Undefended first, then each defense, its own width before its other widths.
        return sorted(clean, key=lambda r: (r["model"], order.get(r["quantizer"], 99), r["train"], r["seed"],
                                            r["defense_label"] != NONE, r["defense_label"],
                                            r["eval_bits"] is not None, r["eval_bits"] or 0,
                                            r["config_id"] or "", r["n_samples"]))

    def cell(self, config: dict, attack_label: str, eps_label: str, params: str) -> dict | None:
        return self.cells.get((row_key(config), attack_label, eps_label, params))

    def markers(self, config: dict, attack_label: str, eps_label: str, params: str) -> str:
        fired = self.letters(config, attack_label, eps_label, params)
        return f" [{fired}]" if fired else ""

    def letters(self, config: dict, attack_label: str, eps_label: str, params: str) -> str:
        """The letters of the flags fired on a point of a configuration, sorted."""
        return "".join(sorted(self.fired.get((row_key(config), attack_label, eps_label, params), ())))

    def _fitting(self, config: dict) -> list[str]:
        """The grid's MCU targets some build of ``config`` fits."""
        return list(self._fits.get(config_key(config), {}))

    def _fit_text(self, config: dict) -> str:
        """Those MCUs, each with the builds that fit it where the int8 build does not."""
        return ", ".join(mcu if INT8 in builds else f"{mcu} ({'+'.join(builds)})"
                         for mcu, builds in self._fits.get(config_key(config), {}).items()) or "none"

    @cached_property
    def _fits(self) -> dict[tuple, dict[str, list[str]]]:
        fitting = defaultdict(dict)  # configuration -> MCU -> the builds that fit it
        for r in self.records("SELECT * FROM fits WHERE targeted ORDER BY mcu, deploy_format"):
            fitting[config_key(r)].setdefault(r["mcu"], []).append(r["deploy_format"])
        return fitting

    def targets(self) -> list[str]:
        """The MCU profiles the grid targets (``mcu_targets``), known ones only, by name."""
        known = {r["name"] for r in self.records("SELECT name FROM mcus")}
        return sorted({r["m"] for r in self.records("SELECT DISTINCT unnest(mcu_targets) AS m FROM results")}
                      & known)

    def _classes(self, dataset: str) -> int:
        """The dataset's class count (0 if unknown: rows from a schema-1 store)."""
        return self._class_counts.get(dataset, 0)

    @cached_property
    def _class_counts(self) -> dict[str, int]:
        rows = self.records("SELECT max(n_classes) AS n, dataset, dataset_options FROM results GROUP BY ALL")
        return {dataset_name(r): r["n"] for r in rows if r["n"]}

    # ------------------------------------------------------------ sections

    def _header(self) -> str:
        rows = self.records("SELECT count(*) AS n, count(DISTINCT job_id) AS jobs, "
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
        parts = ["## Table III analogue: memory and clean accuracy",
                 "Three footprints per model. **Deployed** (what the MCU fit uses): flash is the full-int8 "
                 f".tflite plus a {RUNTIME_FLASH_KB:g} KB allowance for the TensorFlow Lite Micro "
                 f"runtime, RAM the smallest TFLM arena that allocates it plus {ARENA_MARGIN:.0%}; "
                 "`estimate` marks a model the converter rejected (fused-int8 liveness instead). "
                 "**Measured** are the .tflite and arena alone. **Packed** counts every weight at its "
                 "quantized bit width and the fused activations at theirs: what a runtime with sub-byte "
                 "kernels would need (TFLite stores int8, so sub-8-bit presets do not shrink there). "
                 "The paper's column is its Table III flash, for stq_net. Clean accuracy is on the whole "
                 "held-out fold."]
        for dataset in self.datasets():
            rows = [[self.label(c), f"{c['params']:,}", kb(c["flash_kb"]), kb(c["ram_kb"]),
                     c["footprint_source"] or "n/a", kb(c["tflite_kb"]), kb(c["arena_kb"]),
                     kb(c["flash_packed_kb"]), kb(c["ram_packed_kb"]), _paper_flash(c),
                     Num(c["test_acc_mean"], c["test_acc_std"]), str(c["folds"]),
                     self._fit_text(c)] for c in self.configs(dataset, False)]
            parts += [f"### {dataset}", self.table(
                f"Table III analogue, {dataset}: memory and clean accuracy",
                ["model / quantizer", "params", "flash KB", "RAM KB", "source", ".tflite KB", "arena KB",
                 "packed flash KB", "packed RAM KB", "paper flash KB", "clean accuracy", "folds", "fits"],
                rows, best={10: "max"})]
        return "\n\n".join(parts)

    def _table_iv(self) -> str:
        return self._per_budget_tables(
            "## Table IV analogue: accuracy under attack", "Table IV analogue",
            "One table per dataset and budget; columns are the attacks run at it, then the worst case over "
            "them (short labels, listed below each table). `clean` is the clean accuracy of the attacked samples. "
            "In LaTeX the highest value of each column is bold.",
            clean=lambda c: Num(c["clean_acc_mean"], c["clean_acc_std"]),
            attacked=lambda c, r: Num(r["adv_acc_mean"], r["adv_acc_std"],
                                      self.letters(c, r["attack_label"], r["eps_label"], r["attack_params"])),
            best="max")

    def _table_v(self) -> str:
        return self._per_budget_tables(
            "## Table V analogue: variance across folds", "Table V analogue",
            "Sample variance of the accuracy across folds (clean: the whole held-out fold), per dataset and budget.",
            clean=lambda c: _variance(None if c["test_acc_std"] is None else c["test_acc_std"] ** 2),
            attacked=lambda c, r: _variance(r["adv_acc_var"]))

    def _deployment(self) -> str:
        """Does robustness survive deployment? The same samples and adversarial examples,
        classified by the QKeras model and by its int8 .tflite."""
        return self._per_budget_tables(
            "## Does robustness survive deployment?", "QKeras model -> int8 .tflite",
            "Accuracy of the QKeras model -> its full-int8 .tflite (TFLite interpreter, int8 input "
            "and output), on the same attacked samples: clean, and on the adversarial examples crafted "
            "on the QKeras model. Means over folds. The model's worst case has no deployed counterpart "
            "and is left out; `D` columns are the build's own worst case.",
            clean=lambda c: _pair(c["clean_acc_mean"], c["deployed_clean_acc_mean"]),
            attacked=lambda c, r: _pair(r["adv_acc_mean"], r["deployed_adv_acc_mean"]),
            keep=lambda point: not point.label.startswith(budgets.MODEL_WORST))

    def _per_budget_tables(self, heading: str, caption: str, note: str, clean, attacked, best: str | None = None,
                           keep=lambda point: True) -> str:
        """One table per dataset and budget (``budgets.py``): a row per configuration, the
        clean column, then a column per attack at that budget and the worst cases."""
        parts = [heading, note]
        for dataset in self.datasets():
            for budget in budgets.budgets(self.robust, dataset, self.worst):
                points = [p for p in budget.points if keep(p)]
                rows = []
                for config in self.configs(dataset):
                    cells = [self.cell(config, p.label, p.eps_label, p.params) for p in points]
                    if any(cells):
                        rows.append([self.label(config), clean(config),
                                     *["" if cell is None else attacked(config, cell) for cell in cells]])
                if not points or not rows:
                    continue
                header = ["model / quantizer", "clean", *[p.header for p in points]]
                title = f"{dataset}, {budget.title}"
                shown = budgets.Budget(budget.norm, budget.eps, budget.eps_label, tuple(points))
                parts += [f"### {title}", self.table(
                    f"{caption}, {title}", header, rows, budgets.legend(shown, self.worst),
                    best={i: best for i in range(1, len(header))} if best else None)]
        return "\n\n".join(parts)

    def _eps_curves(self) -> str:
        parts = ["## Accuracy against epsilon",
                 "One line per quantizer (mean over folds), the band is ± one standard deviation; "
                 "the dotted line is chance. Attacks with a single epsilon are in Table IV only."]
        curves: dict[tuple, list[dict]] = defaultdict(list)
        noted = False
        for r in self.robust:
            if r["attack"] != NONE and 0 < r["eps"] < float("inf"):  # unbounded has no place on an axis
                curves[dataset_name(r), r["model"], r["attack_label"], r["n_samples"]].append(r)
        shown = set()
        for (dataset, model, label, _), points in sorted(curves.items()):
            if len({p["eps"] for p in points}) < 2:
                continue
            shown.add(label)
            label = self.worst.name(label)  # a worst case's short name: titles and file names stay short
            name = file_name(f"eps-{dataset}-{model}-{label}.png")
            classes = self._classes(dataset)
            chance = 1 / classes if classes else None
            if any(single_coordinate(p["attack"], p["norm"]) for p in points):
                label += SINGLE_COORDINATE
                noted = True
            figures.eps_curve(points, self.out / "figures" / name, f"{label} on {dataset}, {model}", chance)
            parts.append(f"![{label} on {dataset}, {model}](figures/{name})")
        legend = self.worst.legend(shown)
        return "\n\n".join(parts + (["\n".join(f"- {line}" for line in legend)] if legend else [])
                           + ([SINGLE_COORDINATE_NOTE] if noted else []))

    def _pareto(self) -> str:
        mcus = {r["name"]: r for r in self.records("SELECT * FROM mcus")}
        targets = self.targets()
        parts = ["## Accuracy against flash: what fits where",
                 "Clean accuracy against flash size; dashed lines are the flash budgets of the grid's MCU "
                 "targets, and the step line joins the Pareto-optimal configurations (no other is both "
                 "smaller and more accurate)."]
        for dataset in self.datasets():
            configs = self.configs(dataset, False)
            # Rows of older stores (schema <= 2) have no deployed flash: no place on the axis.
            placed = [c for c in configs if c["flash_kb"] is not None and c["test_acc_mean"] is not None]
            parts.append(f"### {dataset}")
            if len(placed) < len(configs):
                parts.append(f"{len(configs) - len(placed)} of {len(configs)} configurations have no deployed "
                             "flash figure (rows of an older store) and are left out of the figure.")
            if placed:
                name = file_name(f"pareto-{dataset}.png")
                front = figures.pareto(placed, [mcus[t] for t in targets], self.out / "figures" / name,
                                       f"clean accuracy against flash, {dataset}", self.label)
                parts += [f"![accuracy against flash, {dataset}](figures/{name})",
                          "Pareto-optimal: " + ", ".join(f"{self.label(c)} ({c['flash_kb']:.1f} KB, "
                                                         f"{fmt(c['test_acc_mean'])})" for c in front) + "."]
            rows = []
            for target in targets:
                fitting = [c for c in configs if target in self._fitting(c)]
                best = max(fitting, key=lambda c: c["test_acc_mean"], default=None)
                rows.append([target, f"{mcus[target]['flash_kb']:g}", f"{mcus[target]['ram_block_kb']:g}",
                             f"{len(fitting)} of {len(configs)}",
                             ", ".join(self.label(c) for c in fitting) or "none",
                             "" if best is None else f"{self.label(best)} ({fmt(best['test_acc_mean'])})"])
            parts.append(self.table(f"What fits where, {dataset}", ["MCU", "flash KB", "largest RAM block KB", "fit",
                                                                    "configurations that fit",
                                                                    "most accurate that fits"], rows))
        return "\n\n".join(parts)

    def _diagnostics(self) -> str:
        parts = ["## Gradient-masking diagnostics",
                 "Warning signs that a model only looks robust because its gradients are useless "
                 "(Athalye, Carlini and Wagner, 2018). Each check compares numbers the grid has, on "
                 "the same attacked samples: a paired exact test (McNemar; a binomial test against "
                 "chance + 0.10 for L), Holm-adjusted within each configuration and check at "
                 f"{checks.ALPHA}, and a difference of at least {checks.MIN_MARGIN}. P is the other "
                 "way round: it fires unless a targeted patch's target rate beats its controls' by a binomial "
                 f"test at {checks.ALPHA} (not adjusted) and by at least {checks.MIN_MARGIN}. Cells read "
                 "fired/judged; `-` means the grid has no numbers to judge that check.",
                 "\n".join(f"- **{MARKERS[c]}** `{c}`: {text}" for c, text in checks.CHECKS.items()),
                 sanity.LEGEND]
        rows = []
        checked = sanity.per_config(self.db)
        for dataset in self.datasets():
            for config in self.configs(dataset, False):
                cells = [fired_text(self.flag_counts.get((config_key(config), check))) for check in checks.CHECKS]
                rows.append([dataset, self.label(config), *cells, *sanity.cells(checked.get(config_key(config)))])
        parts.append(self.table("Gradient-masking diagnostics and sanity checks, fired/judged per check",
                                ["dataset", "model / quantizer", *MARKERS.values(), *sanity.HEADER], rows))
        fired = [f for f in self.flags if f["fired"]]
        parts.append("### Flags that fired" if fired else "No flag fired.")
        if fired:
            parts.append("\n".join(f"- {dataset_name(f)}, {self.label(f)}: **{MARKERS[f['flag']]}** "
                                   f"{f['detail']}" for f in fired))
        return "\n\n".join(parts)

    def _provenance(self) -> str:
        launches = self.records("SELECT * FROM launches ORDER BY started_at")
        rows = [[l["started_at"], l["grid_name"], l["grid_file"] or "(in code)", l["grid_sha256"][:12] or "-",
                 " ".join(l["overrides"]) or "-",
                 ", ".join(f"{k} {v}" for k, v in sorted(json.loads(l["versions"]).items()))]
                for l in launches]
        return "\n\n".join(["## Provenance", "Every launch whose rows are in the store (from the Parquet "
                            "metadata; `sweeper query RESULTS \"SELECT grid_text FROM launches\"` shows the "
                            "grid files).",
                            self.table("Provenance: every launch", ["started (UTC)", "grid", "file", "sha256",
                                                                    "overrides", "versions"], rows)])


# The paper's Table III flash for its stq_net (KB), by preset.
PAPER_FLASH_KB = {"fp": 4496, "int8": 1124, "int4": 527, "int2": 281, "ternary": 410, "stq": 410, "binary": 140}


def _paper_flash(config: dict) -> str:
    value = PAPER_FLASH_KB.get(config["quantizer"]) if config["model"] == "stq_net" else None
    return "" if value is None else f"{value:g}"


def _pair(qkeras: float | None, deployed: float | None) -> str:
    return f"{fmt(qkeras)} -> {fmt(deployed)}"


def _variance(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2e}"

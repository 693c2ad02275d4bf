"""Results cards: one JSON record per configuration of a store, in the spirit of
RobustBench's (``robustbench/eval.py``: clean accuracy, robust accuracy under a named
threat model and budget, the number of samples, the attacks run), extended with what
sweeper measures: the worst case over the attacks run and the attacks it covers, the
deployed int8 build's accuracies and worst case, the footprint (per build format, from the
query layer's ``config_builds`` view), which MCU profiles it fits and with which builds,
AutoAttack's sanity checks, the fold statistics, the library versions and the config id.
``card.schema.json`` (shipped beside this file) is the JSON Schema of the document
``sweeper card`` writes, an array of cards; every field's meaning and denominator is
described there.

A configuration here is the report's table row: the configuration's columns
(``keys.CONFIG_COLUMNS``) and the number of attacked samples per fold (a smoke run with
fewer samples in the same store gets its own card). Numbers are means over folds, with
the sample standard deviation across folds (null with one fold); every accuracy's
denominator is the attacked samples, ``n_samples`` per fold.

The worst case is ``robust``'s (``sweeper.analysis.views``): per sample, robust only if
every attack at the budget failed on it. It is an upper bound on the robust accuracy,
like AutoAttack's standard version, which is such a worst case over APGD-CE, APGD-T, FAB-T
and Square: a stronger or further attack can only lower it. It equals AutoAttack's number
only when the attacks it covers are AutoAttack's (sweeper's ``apgd_ce``, ``apgd_dlr`` and
``square`` are three of AutoAttack's four, with fewer iterations by default).

sweeper does not count queries, so a card has no forward-pass count (RobustBench's
``forward passes``); it names each attack's parameters (iterations, restarts) instead.
"""

from __future__ import annotations

import json
from collections import defaultdict
from importlib import resources
from typing import Any

from sweeper.analysis import budgets, query, sanity
from sweeper.analysis.tables import MARKERS, ROW, config_key, row_key
from sweeper.keys import CONFIG_COLUMNS, NONE

CARD_VERSION = 1
SCHEMA_FILE = "card.schema.json"
VERSIONS = ("sweeper", "tensorflow", "qkeras", "art", "sklearn", "ray")  # <name>_version row columns
# Per configuration and build format (int8, sub-byte builds): what it can ship; its rows,
# less the configuration's columns and what the card says elsewhere, are a card's
# footprint.builds.
BUILDS_VIEW = "config_builds"
_NOT_BUILD = {*CONFIG_COLUMNS, "n_samples", "test_acc_mean", "test_acc_std", "mcu_targets"}


def schema() -> dict:
    """The JSON Schema of ``sweeper card``'s document (shipped as package data)."""
    return json.loads(resources.files("sweeper.analysis").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def cards(results: str) -> list[dict[str, Any]]:
    """One card per configuration (module docstring) of the store at ``results``, in the
    order of its configuration columns."""
    connection = query.open_store(results)
    try:
        read = _Reader(connection)
        return [read.card(key, points) for key, points in read.configurations().items()]
    finally:
        connection.close()


class _Reader:
    """Reads every view a card needs once, then answers per configuration."""

    def __init__(self, connection):
        self.db = connection
        self.robust = self.records("SELECT * FROM robust ORDER BY ALL")
        self.jobs = self.records(
            f"SELECT {', '.join(ROW)}, fold, {', '.join(f'{v}_version' for v in VERSIONS)}, "
            f"mcu_targets FROM results WHERE attack = '{NONE}'")
        self.fits = defaultdict(set)  # config_id -> MCUs it fits
        self.formats = defaultdict(set)  # (config_id, MCU) -> the build formats that fit it
        for r in self.records("SELECT * FROM fits"):
            self.fits[r["config_id"]].add(r["mcu"])
            self.formats[r["config_id"], r["mcu"]].add(r["deploy_format"])
        self.mcus = [r["name"] for r in self.records("SELECT name FROM mcus ORDER BY name")]
        self.flags = defaultdict(set)
        for r in self.records("SELECT * FROM diagnostics WHERE fired"):
            self.flags[row_key(r), r["attack_label"], r["eps_label"], r["attack_params"]].add(r["flag"])
        self.builds = self._builds()
        self.sanity = sanity.per_config(connection)

    def records(self, sql: str) -> list[dict]:
        return query.fetch(self.db, sql).to_pylist()

    def _builds(self) -> dict[str, list[dict]]:
        """Per config_id, its rows of ``BUILDS_VIEW`` (per-build footprints)."""
        found = defaultdict(list)
        for r in self.records(f"SELECT * FROM {BUILDS_VIEW}"):
            found[r["config_id"]].append({k: _plain(v) for k, v in r.items() if k not in _NOT_BUILD})
        for records in found.values():  # the int8 build first, then the others by name
            records.sort(key=lambda b: (b.get("deploy_format") != "int8", str(b.get("deploy_format"))))
        return found

    def configurations(self) -> dict[tuple, list[dict]]:
        grouped: dict[tuple, list[dict]] = defaultdict(list)
        for r in self.robust:
            grouped[row_key(r)].append(r)
        return grouped

    def card(self, key: tuple, points: list[dict]) -> dict[str, Any]:
        first = points[0]
        clean = next((p for p in points if p["attack"] == NONE), None)
        jobs = [j for j in self.jobs if row_key(j) == key]
        return {
            "card_version": CARD_VERSION,
            "config_id": first["config_id"],
            "configuration": {"dataset": first["dataset"], "dataset_options": _object(first["dataset_options"]),
                              "model": first["model"], "quantizer": first["quantizer"],
                              "defense": first["defense_label"], "defense_params": _object(first["defense_params"]),
                              "eval_bits": first["eval_bits"], "train": _object(first["train"]),
                              "k": first["k"], "seed": first["seed"]},
            "n_samples": first["n_samples"],
            "folds": max(p["folds"] for p in points),
            "clean": None if clean is None else {
                **_stat(clean["adv_acc_mean"], clean["adv_acc_std"], clean),
                "test_accuracy": _number(clean["test_acc_mean"]), "test_accuracy_std": _number(clean["test_acc_std"]),
                "deployed_accuracy": _number(clean["deployed_clean_acc_mean"])},
            "threat_models": self._threats(key, points),
            "footprint": self._footprint(first),
            "mcu_fit": [self._fit(first["config_id"], mcu, jobs) for mcu in self.mcus],
            "sanity": _sanity(self.sanity.get(config_key(first))),
            "versions": {name: sorted({j[f"{name}_version"] for j in jobs if j[f"{name}_version"]})
                         for name in VERSIONS},
        }

    def _fit(self, config_id: str, mcu: str, jobs: list[dict]) -> dict:
        return {"mcu": mcu, "fits": mcu in self.fits[config_id],
                "targeted": any(mcu in (j["mcu_targets"] or []) for j in jobs),
                "formats": sorted(self.formats.get((config_id, mcu), ()))}  # which builds fit

    def _threats(self, key: tuple, points: list[dict]) -> list[dict]:
        threats: dict[tuple, dict] = {}
        for p in points:
            if p["attack"] == NONE:
                continue
            threat = threats.setdefault((p["norm"], p["eps"]), {
                "norm": p["norm"], "eps": p["eps"], "eps_label": p["eps_label"], "attacks": [],
                "worst_case": None, "deployed_worst_case": None})
            if budgets.is_worst(p["attack_label"]):
                label = p["attack_label"]
                deployed = label.startswith(budgets.DEPLOYED_WORST)
                mean = p["deployed_adv_acc_mean"] if deployed else p["adv_acc_mean"]
                std = p["deployed_adv_acc_std"] if deployed else p["adv_acc_std"]
                threat["deployed_worst_case" if deployed else "worst_case"] = {
                    "label": label, "attacks": label[label.index("(") + 1:-1].split("+"), **_stat(mean, std, p)}
                continue
            flags = self.flags.get((key, p["attack_label"], p["eps_label"], p["attack_params"]), set())
            threat["attacks"].append({
                "label": p["attack_label"], "attack": p["attack"], "params": _object(p["attack_params"]),
                "target": p["target"], "source_config_id": p["source_config_id"],
                **_stat(p["adv_acc_mean"], p["adv_acc_std"], p),
                "deployed_robust_accuracy": _number(p["deployed_adv_acc_mean"]),
                "target_rate": _number(p["target_rate_mean"]),
                "flags": sorted(flags, key=list(MARKERS).index)})
        return list(threats.values())

    def _footprint(self, first: dict) -> dict:
        return {"params": first["params"], "source": first["footprint_source"],
                "int8": {"flash_kb": _number(first["flash_kb"]), "ram_kb": _number(first["ram_kb"]),
                         "tflite_kb": _number(first["tflite_kb"]), "arena_kb": _number(first["arena_kb"])},
                "packed": {"flash_kb": _number(first["flash_packed_kb"]), "ram_kb": _number(first["ram_packed_kb"])},
                "builds": self.builds.get(first["config_id"], [])}


def _stat(mean, std, point: dict) -> dict:
    """A mean over folds with its spread and denominators."""
    return {"accuracy" if point["attack"] == NONE else "robust_accuracy": _number(mean), "std": _number(std),
            "folds": point["folds"], "samples": point["samples"]}


def _sanity(entry: dict | None) -> dict | None:
    """AutoAttack's sanity checks pooled over the configuration's trained models
    (``sweeper.analysis.sanity``, as the report's diagnostics table); None where its rows
    predate them."""
    if entry is None:
        return None
    return {"models": entry["models"], "zero_grad_samples": entry["zero"], "samples": entry["samples"],
            "zero_grad_share": entry["share"], "output_is_simplex": entry["simplex"], "randomized": entry["randomized"]}


def _plain(value):
    """A view's value as JSON has it (NaN as null)."""
    return _number(value) if isinstance(value, float) else value


def _object(text: str | None) -> dict:
    """A JSON-object column as an object; {} where an older schema left it null."""
    return json.loads(text) if text else {}


def _number(value) -> float | None:
    """A float for JSON; null for a missing or NaN value (JSON has no NaN)."""
    return None if value is None or value != value else float(value)


def render(found: list[dict]) -> str:
    return json.dumps(found, indent=2, sort_keys=False) + "\n"

"""Defended against undefended twins: does a training-time defense raise accuracy under
attacks that do not use the model's gradients, or only under those that do?

A *defended configuration* is one with ``defense`` other than ``none``. Its *twin* is the
configuration equal to it in every ``CONFIG_COLUMNS`` except ``config_id``,
``defense``, ``defense_label`` and ``defense_params``, trained with ``defense`` ``none``
(same dataset, options, model, quantizer, training settings, K and seed). A dbwt
configuration at another bit width (``eval_bits`` W: the shared weights quantized at W)
is twinned with the undefended model of the preset trained at W instead (``int4 / dbwt
@ 2-bit`` against ``int2``): the shared weights against a model trained at that width,
on the same samples. A configuration without a twin gives no rows; configurations that
differ in anything else (model, quantizer, seed...) are never paired. Where several undefended configurations qualify
(same names, other code or libraries, so other ``config_id``), each is a twin of its own.

``compare`` pairs the two at every *point* both have: the same ``POINT_COLUMNS``
except ``source_config_id`` (a transfer attack's ``attack_label`` already names its
source, e.g. ``fgsm<-fp+none``, and the two models' transfer rows share that source, not
its config_id when the source is defended too). The clean evaluation (attack ``none``,
eps 0) is a point too, compared on ``clean_correct``; attacks compare ``adv_correct``.
A point label that occurs twice in one configuration (two sources, one label) is
ambiguous and not compared. A point pools its folds; each sample is keyed by
``(fold, sample_index)`` and taken once (its earliest row, as ``sweeper.analysis.diagnostics``
does), and only the samples both models were evaluated on are compared. On those n pairs:

- ``twin_acc``, ``defended_acc``: the accuracies; ``change = defended_acc - twin_acc``;
- ``b = #(twin right, defended wrong)``, ``c = #(twin wrong, defended right)``, so
  ``change = (c - b) / n``;
- ``p_value``: the exact two-sided McNemar test, ``min(1, 2 P(X >= max(b, c)))`` for
  ``X ~ Binomial(b + c, 1/2)`` (1 when ``b + c = 0``);
- ``p_adjusted``: Holm's step-down adjustment over every comparison of one defended
  configuration (all its points, against all its twins): one family per defended
  configuration, never shared between two;
- ``significant``: ``p_adjusted < checks.ALPHA`` and ``|change| >= checks.MIN_MARGIN``;
- ``kind``: ``clean``; ``transfer`` (``source_config_id`` set); ``black-box`` (the attack's
  ``ATTACKS`` spec says so); else ``gradient`` (white-box). Attacks sweeper no longer
  registers are left out, as the diagnostics leave them out.

``verdicts`` judges each defended configuration, twin and budget (norm, eps > 0): a
defense that raises accuracy under gradient attacks only is the classic sign of gradient
masking (Athalye, Carlini and Wagner, 2018), so ``gradient_only`` is set where at least
one gradient attack's accuracy rose significantly, at least one black-box or transfer
attack was measured at that norm and eps, and none of those rose significantly.

It holds the samples of the defended configurations and their twins in memory, point by
point in numpy: stores with defenses are small (thousands of rows); ``ROWS_SQL`` reads
only those rows and the columns needed.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sweeper import store
from sweeper.analysis.checks import ALPHA, FOLD_SHIFT, MIN_MARGIN
from sweeper.analysis.stats import holm, mcnemar_two_sided
from sweeper.attacks import ATTACKS
from sweeper.defenses.bit_width import presets_by_width
from sweeper.keys import ABSENT_MEANS, CONFIG_COLUMNS, NONE, POINT_COLUMNS

KINDS = ("clean", "gradient", "black-box", "transfer")  # in the order the tables list them
_DEFENSE_COLUMNS = ("config_id", "defense", "defense_label", "defense_params")
TWIN_KEY = [c for c in CONFIG_COLUMNS if c not in _DEFENSE_COLUMNS]  # what a twin shares
MATCH_COLUMNS = [c for c in POINT_COLUMNS if c != "source_config_id"]  # what a pair shares
_SOURCE = POINT_COLUMNS.index("source_config_id")
_DEFENSE = CONFIG_COLUMNS.index("defense")
_CONFIG_ID = CONFIG_COLUMNS.index("config_id")
_OUTCOMES = ["fold", "sample_index", "clean_correct", "adv_correct"]
_NEEDED = [*CONFIG_COLUMNS, *POINT_COLUMNS, *_OUTCOMES]

SCHEMA = pa.schema([
    *[store.SCHEMA.field(name) for name in CONFIG_COLUMNS],  # the defended configuration
    pa.field("twin_config_id", pa.string()),
    *[store.SCHEMA.field(name) for name in POINT_COLUMNS],  # the defended point's
    pa.field("kind", pa.string()),  # clean, gradient, black-box, transfer
    pa.field("n_pairs", pa.int64()),  # samples both models were evaluated on
    pa.field("twin_acc", pa.float64()),
    pa.field("defended_acc", pa.float64()),
    pa.field("change", pa.float64()),  # defended_acc - twin_acc
    pa.field("b", pa.int64()),  # twin right, defended wrong
    pa.field("c", pa.int64()),  # twin wrong, defended right
    pa.field("p_value", pa.float64()),  # exact two-sided McNemar
    pa.field("p_adjusted", pa.float64()),  # Holm within the defended configuration
    pa.field("significant", pa.bool_()),
])

VERDICTS = {
    "gradient-only gain": "a gradient attack's accuracy rose significantly; no black-box or transfer "
                          "attack's did",
    "gain under black-box too": "a gradient attack's and a black-box or transfer attack's accuracy both "
                                "rose significantly",
    "black-box-only gain": "a black-box or transfer attack's accuracy rose significantly, no gradient "
                           "attack's did (often: the twin's gradients were masked and the defense's are not)",
    "no significant gain": "no attack's accuracy rose significantly",
    "not judged (no black-box or transfer attack at this budget)":
        "a gradient attack's accuracy rose significantly, but nothing that ignores gradients was measured",
}

_EVIDENCE = [("attack", pa.string()), ("twin_acc", pa.float64()), ("defended_acc", pa.float64()),
             ("p_adjusted", pa.float64())]
VERDICT_SCHEMA = pa.schema([
    *[store.SCHEMA.field(name) for name in CONFIG_COLUMNS],
    pa.field("twin_config_id", pa.string()),
    store.SCHEMA.field("norm"), store.SCHEMA.field("eps"), store.SCHEMA.field("eps_label"),
    pa.field("verdict", pa.string()),
    pa.field("gradient_only", pa.bool_()),
    pa.field("n_gradient", pa.int64()),  # gradient points compared at this budget
    pa.field("n_black_box", pa.int64()),  # black-box and transfer points compared
    # What the verdict rests on: of each group, the point whose accuracy rose most.
    *[pa.field(f"gradient_{name}", dtype) for name, dtype in _EVIDENCE],
    *[pa.field(f"black_box_{name}", dtype) for name, dtype in _EVIDENCE],
])

# The rows ``compare`` needs from a store's ``results`` view: the defended configurations'
# and every configuration that shares a twin key with one, needed columns only.
# (A dbwt configuration's twins at another width are those of the preset at that width.)
_WIDTH_PRESETS = presets_by_width()
_SAME_BUT_WIDTH = " AND ".join(f"r.{c} IS NOT DISTINCT FROM d.{c}" for c in TWIN_KEY
                               if c not in ("quantizer", "eval_bits"))
ROWS_SQL = (f"SELECT {', '.join(_NEEDED)} FROM results AS r WHERE EXISTS (SELECT 1 FROM results AS d "
            f"WHERE d.defense <> '{NONE}' AND "
            + " AND ".join(f"r.{c} IS NOT DISTINCT FROM d.{c}" for c in TWIN_KEY) + ")"
            + f" OR (r.defense = '{NONE}' AND r.eval_bits IS NULL AND EXISTS (SELECT 1 FROM results AS d, "
            f"(VALUES {', '.join(f'({b}, {q!r})' for b, q in _WIDTH_PRESETS.items())}) AS w(bits, quantizer) "
            f"WHERE d.defense <> '{NONE}' AND d.eval_bits = w.bits AND r.quantizer = w.quantizer AND "
            + _SAME_BUT_WIDTH + "))")


# ---------------------------------------------------------------- compare

def compare(rows: pa.Table) -> pa.Table:
    """Every defended configuration against its twin(s), point by point (``SCHEMA``)."""
    points = _points(_usable(rows))
    defended = [config for config in points if config[_DEFENSE] != NONE]
    twins = defaultdict(list)
    for config in points:
        if config[_DEFENSE] == NONE:
            twins[_twin_key(config)].append(config)
    out = []
    for config in sorted(defended, key=_sortable):
        found = [row for twin in sorted(twins.get(_twin_key(config), []), key=_sortable)
                 for row in _pairs(config, points[config], twin, points[twin])]
        for row, adjusted in zip(found, holm([row["p_value"] for row in found])):
            row.update(p_adjusted=float(adjusted),
                       significant=bool(adjusted < ALPHA and abs(row["change"]) >= MIN_MARGIN - 1e-12))
        out += found
    return pa.Table.from_pylist(out, schema=SCHEMA)


def _usable(rows: pa.Table) -> pa.Table:
    """The rows that can be paired: the clean evaluation or a registered attack at eps > 0,
    with per-sample outcomes as long as their sample indices. Defense columns an older
    table lacks read as ``ABSENT_MEANS``; any other missing column is an error."""
    missing = [c for c in _NEEDED if c not in rows.column_names and c not in ABSENT_MEANS
               and c != "source_config_id"]
    if missing:
        raise ValueError(f"twins.compare: rows lack column {missing[0]!r}")
    columns = {}
    for name in _NEEDED:
        column = store.column_or_null(rows, store.SCHEMA.field(name))
        columns[name] = pc.fill_null(column, ABSENT_MEANS[name]) if name in ABSENT_MEANS else column
    table = pa.table(columns)
    attack, clean = table.column("attack"), pc.equal(table.column("attack"), NONE)
    outcome = pc.if_else(clean, table.column("clean_correct"), table.column("adv_correct"))
    known = pc.or_(clean, pc.and_(pc.is_in(attack, pa.array(ATTACKS.names())), pc.greater(table.column("eps"), 0.0)))
    same_length = pc.equal(pc.list_value_length(table.column("sample_index")), pc.list_value_length(outcome))
    keep = pc.fill_null(pc.and_(known, same_length), False)
    return table.append_column("_outcome", outcome).filter(keep).combine_chunks()


def _points(table: pa.Table) -> dict[tuple, dict[tuple, dict]]:
    """config -> point (POINT_COLUMNS) -> {"keys", "right", "source"}: the folds pooled,
    each (fold, sample_index) once, its earliest row's outcome, sorted by key."""
    flat_index = pc.list_flatten(table.column("sample_index"))
    flat_right = pc.list_flatten(table.column("_outcome"))
    valid = np.asarray(pc.and_(pc.is_valid(flat_index), pc.is_valid(flat_right)))
    lengths = np.asarray(pc.list_value_length(table.column("sample_index")).fill_null(0))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    folds = np.asarray(pc.fill_null(table.column("fold"), -1)).astype(np.int64)
    keys = (np.repeat(folds, lengths) << FOLD_SHIFT) + np.asarray(flat_index.fill_null(-1)).astype(np.int64)
    right = np.asarray(flat_right.fill_null(False)).astype(bool)
    scalars = {name: table.column(name).to_pylist() for name in [*CONFIG_COLUMNS, *POINT_COLUMNS]}
    groups: dict[tuple, dict[tuple, list[int]]] = defaultdict(lambda: defaultdict(list))
    for row in range(table.num_rows):
        config = tuple(scalars[c][row] for c in CONFIG_COLUMNS)
        groups[config][tuple(scalars[c][row] for c in POINT_COLUMNS)].append(row)
    points: dict[tuple, dict[tuple, dict]] = {}
    for config, by_point in groups.items():
        points[config] = {}
        for point, rows in by_point.items():
            parts = np.concatenate([np.arange(offsets[r], offsets[r + 1]) for r in rows])
            parts = parts[valid[parts]]
            unique, first = np.unique(keys[parts], return_index=True)  # first: the earliest row's
            points[config][point] = {"keys": unique, "right": right[parts[first]]}
    return points


def _pairs(config: tuple, mine: dict[tuple, dict], twin: tuple, theirs: dict[tuple, dict]) -> list[dict]:
    """One row per point the defended configuration and its twin both have, samples aligned."""
    own, other = _by_match(mine), _by_match(theirs)
    rows = []
    for key in sorted(own.keys() & other.keys(), key=_sortable):
        if len(own[key]) > 1 or len(other[key]) > 1:
            continue  # one label, two sources: ambiguous
        (point, a), (_, t) = own[key][0], other[key][0]
        _, at_a, at_t = np.intersect1d(a["keys"], t["keys"], assume_unique=True, return_indices=True)
        if not len(at_a):
            continue
        defended, twin_right = a["right"][at_a], t["right"][at_t]
        b = int(np.count_nonzero(twin_right & ~defended))
        c = int(np.count_nonzero(~twin_right & defended))
        n = len(at_a)
        rows.append({**dict(zip(CONFIG_COLUMNS, config)), "twin_config_id": twin[_CONFIG_ID],
                     **dict(zip(POINT_COLUMNS, point)), "kind": _kind(point), "n_pairs": n,
                     "twin_acc": float(twin_right.mean()), "defended_acc": float(defended.mean()),
                     "change": (c - b) / n, "b": b, "c": c, "p_value": mcnemar_two_sided(b, c)})
    return rows


def _by_match(points: dict[tuple, dict]) -> dict[tuple, list]:
    matched = defaultdict(list)
    for point, samples in points.items():
        matched[point[:_SOURCE] + point[_SOURCE + 1:]].append((point, samples))
    return matched


def _kind(point: tuple) -> str:
    attack, source = point[0], point[_SOURCE]
    if attack == NONE:
        return "clean"
    if source is not None:
        return "transfer"
    return "black-box" if ATTACKS.get(attack).black_box else "gradient"


def width_twin(config: dict) -> str | None:
    """The preset whose undefended models twin a configuration at another width."""
    return _WIDTH_PRESETS.get(config["eval_bits"])


def _twin_key(config: tuple) -> tuple:
    """What a configuration shares with its twins; at another width (dbwt's eval_bits),
    the key of the preset trained at that width (no such preset: a key nothing has)."""
    values = dict(zip(CONFIG_COLUMNS, config))
    if values["eval_bits"] is not None:
        values.update(quantizer=_WIDTH_PRESETS.get(values["eval_bits"]), eval_bits=None)
    return tuple(values[c] for c in TWIN_KEY)


def _sortable(values: tuple) -> tuple:
    """Tuples with None sort (None first) beside values of their own column."""
    return tuple((v is not None, v if v is not None else 0) if not isinstance(v, str) else (True, v)
                 for v in values)


# ---------------------------------------------------------------- verdicts

def verdicts(compared: pa.Table) -> pa.Table:
    """Per defended configuration, twin and budget (norm, eps > 0): the verdict
    (``VERDICTS``) and the accuracies it rests on (``VERDICT_SCHEMA``)."""
    budgets: dict[tuple, list[dict]] = defaultdict(list)
    for row in compared.to_pylist():
        if row["kind"] != "clean":
            key = (*[row[c] for c in CONFIG_COLUMNS], row["twin_config_id"], row["norm"], row["eps"])
            budgets[key].append(row)
    out = [_verdict(key, rows) for key, rows in budgets.items()]
    return pa.Table.from_pylist(out, schema=VERDICT_SCHEMA)


def _verdict(key: tuple, rows: list[dict]) -> dict:
    gradient = [r for r in rows if r["kind"] == "gradient"]
    blind = [r for r in rows if r["kind"] in ("black-box", "transfer")]  # no gradient of the target
    rose = lambda group: [r for r in group if r["significant"] and r["change"] > 0]  # noqa: E731
    if rose(blind):
        verdict = "gain under black-box too" if rose(gradient) else "black-box-only gain"
    elif rose(gradient):
        verdict = "gradient-only gain" if blind else "not judged (no black-box or transfer attack at this budget)"
    else:
        verdict = "no significant gain"
    out = {**dict(zip([*CONFIG_COLUMNS, "twin_config_id", "norm", "eps"], key)), "eps_label": rows[0]["eps_label"],
           "verdict": verdict, "gradient_only": verdict == "gradient-only gain",
           "n_gradient": len(gradient), "n_black_box": len(blind)}
    for prefix, group in (("gradient", gradient), ("black_box", blind)):
        best = max(group, key=lambda r: r["change"], default=None)  # the largest change up (may be < 0)
        out.update({f"{prefix}_{name}": None if best is None else best[field]
                    for name, field in (("attack", "attack_label"), ("twin_acc", "twin_acc"),
                                        ("defended_acc", "defended_acc"), ("p_adjusted", "p_adjusted"))})
    return out

"""The report's per-point tables (Table IV's accuracies, Table V's variances, the deployed
build's accuracies) cut so they stay readable at any grid size: one table per dataset and
budget (norm, eps), a row per configuration, a column per attack at that budget, and the
worst case over attacks in columns named by a short label (``W1``, ``W2``... for the QKeras
model's, ``D1``... for the deployed build's) with a legend listing the attacks each covers.
A label covers another set of attacks for another configuration (fp is its own transfer
source, so its worst case lacks ``fgsm<-fp``), which is why a table may hold two of them.
The short labels are numbered once per report, so a label means the same set in every
table and figure (``WorstLabels``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sweeper.analysis.tables import dataset_name
from sweeper.attacks import single_coordinate
from sweeper.keys import DEPLOYED_TARGET, NONE

MODEL_WORST, DEPLOYED_WORST = "worst(", f"worst@{DEPLOYED_TARGET}("
NORMS = {"inf": "L-inf", "1": "L1", "2": "L2"}
SINGLE_COORDINATE_MARK = " †"  # a single-coordinate attack's column (attacks.single_coordinate)


@dataclass(frozen=True)
class Point:
    """A column of a per-budget table: one attack label and parameter set at the budget."""

    label: str  # attack_label
    eps_label: str
    params: str  # attack_params
    header: str
    single_coordinate: bool


@dataclass(frozen=True)
class Budget:
    """One per-budget table's budget, and its columns."""

    norm: str
    eps: float
    eps_label: str
    points: tuple[Point, ...]

    @property
    def title(self) -> str:
        return f"{NORMS.get(self.norm, self.norm)} eps {self.eps_label}"


class WorstLabels:
    """Short names of the worst-case labels of a store: ``W<n>`` (the model's) and ``D<n>``
    (the deployed build's), numbered in sorted order of the attacks they cover."""

    def __init__(self, robust: list[dict]):
        labels = sorted({r["attack_label"] for r in robust if is_worst(r["attack_label"])})
        model = [label for label in labels if label.startswith(MODEL_WORST)]
        deployed = [label for label in labels if label.startswith(DEPLOYED_WORST)]
        self.short = {label: f"W{i + 1}" for i, label in enumerate(model)}
        self.short |= {label: f"D{i + 1}" for i, label in enumerate(deployed)}

    def name(self, label: str) -> str:
        """The short name of a worst-case label; any other label as it is."""
        return self.short.get(label, label)

    def legend(self, labels) -> list[str]:
        """One line per worst-case label among ``labels``: its short name and what it covers."""
        lines = []
        for label in sorted(set(labels) & set(self.short), key=lambda l: (self.short[l][0], int(self.short[l][1:]))):
            covers = label[label.index("(") + 1:-1].replace("+", ", ")
            whose = "the int8 build (transfer from the model and attacks on the build)" \
                if label.startswith(DEPLOYED_WORST) else "the QKeras model"
            lines.append(f"{self.short[label]}: worst case of {whose} over {covers}; a sample counts as robust "
                         "only if every one of these attacks failed on it (`" + label + "`)")
        return lines


def is_worst(label: str) -> bool:
    return label.startswith(MODEL_WORST) or label.startswith(DEPLOYED_WORST)


def budgets(robust: list[dict], dataset: str, names: WorstLabels) -> list[Budget]:
    """The budgets of ``dataset``'s attacked points, by norm then eps; in each, the attacks
    by label (an attack label run with two parameter sets gets two numbered columns, never
    a blend), then the worst cases."""
    mine = [r for r in robust if r["attack"] != NONE and dataset_name(r) == dataset]
    grouped: dict[tuple, dict[tuple, dict]] = defaultdict(dict)
    for r in mine:
        grouped[r["norm"], r["eps"], r["eps_label"]][r["attack_label"], r["attack_params"]] = r
    found = []
    for (norm, eps, eps_label), points in sorted(grouped.items(), key=lambda item: (item[0][0], item[0][1])):
        ordered = sorted(points, key=lambda p: (is_worst(p[0]), names.name(p[0]), p[1]))
        variants = defaultdict(list)
        for label, params in ordered:
            variants[label].append(params)
        columns = []
        for label, params in ordered:
            record = points[label, params]
            coordinate = single_coordinate(record["attack"], record["norm"])
            header = names.name(label) + (f" (params {variants[label].index(params) + 1})"
                                          if len(variants[label]) > 1 else "")
            columns.append(Point(label, eps_label, params, header + (SINGLE_COORDINATE_MARK if coordinate else ""),
                                 coordinate))
        found.append(Budget(norm, eps, eps_label, tuple(columns)))
    return found


def legend(budget: Budget, names: WorstLabels) -> list[str]:
    """The notes a per-budget table needs: its worst-case labels, single-coordinate
    columns, and the parameters of a label run with several."""
    from sweeper.analysis.tables import SINGLE_COORDINATE_NOTE

    notes = names.legend(p.label for p in budget.points)
    if any(p.single_coordinate for p in budget.points):
        notes.append("†" + SINGLE_COORDINATE_NOTE.removeprefix("(single-coordinate)"))
    notes += [f"{p.header}: `{p.params}`" for p in budget.points if "(params" in p.header]
    return notes

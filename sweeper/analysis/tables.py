"""What the report's tables share: how a number and a table are written (``Num``: a mean,
its spread and the flags on it; ``Table``: one table of the report, which ``latex.py`` also
writes as LaTeX and CSV), the keys that place a record in a table (configuration, row,
point, dataset), the setup names that tell configurations apart, the masking flags' letters
and their counts per configuration, and file names for figures and tables."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Union

from sweeper.keys import CONFIG_COLUMNS

MARKERS = {"single_step_beats_iterative": "S", "black_box_beats_white_box": "B",
           "accuracy_rises_with_eps": "E", "adversarial_above_clean": "C", "large_eps_above_chance": "L",
           "patch_not_above_control": "P"}
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
ROW = [*CONFIG_COLUMNS, "n_samples"]


def fmt(mean: float | None, std: float | None = None) -> str:
    """``0.953 ± 0.012`` (three decimals; no ± without a spread)."""
    if mean is None or mean != mean:
        return "n/a"
    return f"{mean:.3f}" if std is None or std != std else f"{mean:.3f} ± {std:.3f}"


@dataclass(frozen=True)
class Num:
    """A number of a table: a mean over folds, its standard deviation across folds (None:
    one fold, or none shown) and the letters of the masking flags on it. Written ``fmt``'s
    way in Markdown, ``0.953 ± 0.012 [S]``; LaTeX and CSV read the parts."""

    mean: float | None
    std: float | None = None
    flags: str = ""

    def __str__(self) -> str:
        return fmt(self.mean, self.std) + (f" [{self.flags}]" if self.flags else "")


Cell = Union[str, Num]


@dataclass
class Table:
    """One table of the report: its caption, header, rows (text or ``Num`` cells), the
    legend lines below it, and per column index "max" or "min" where the best value of the
    column is set in bold (LaTeX). ``stem`` names its LaTeX and CSV files."""

    stem: str
    caption: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)
    best: dict[int, str] = field(default_factory=dict)

    def markdown(self) -> str:
        return markdown_table(self.header, self.rows)


def markdown_table(header: list[str], rows: list[list[Cell]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def notes(points: list[tuple[str, str, str, str]]) -> list[str]:
    """The note a table of these attack points needs below it: single-coordinate columns."""
    return [SINGLE_COORDINATE_NOTE] if any(title.endswith(SINGLE_COORDINATE) for *_, title in points) else []


def kb(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.1f}"


def spread(values: list[float], decimals: int | None) -> str:
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


def config_key(record: dict) -> tuple:
    return tuple(record[c] for c in CONFIG_COLUMNS)


def named_key(record: dict) -> tuple:
    return tuple(record[c] for c in CONFIG_COLUMNS if c != "config_id")


def row_key(record: dict) -> tuple:
    return tuple(record[c] for c in ROW)


def point_key(record: dict) -> tuple:
    return record["attack_label"], record["eps_label"], record["attack_params"]


def dataset_name(record: dict) -> str:
    options = json.loads(record["dataset_options"] or "{}")
    return record["dataset"] + "".join(f" {k}={v}" for k, v in sorted(options.items()))


def setup_names(robust: list[dict]) -> dict[tuple, str]:
    """'setup 1', 'setup 2'... for configurations that differ only in training setup."""
    setups = sorted({_setup(r) for r in robust}, key=str)
    if len(setups) <= 1:
        return {}
    index = {setup: f"setup {i + 1}" for i, setup in enumerate(setups)}
    return {config_key(r): index[_setup(r)] for r in robust}


def _setup(record: dict) -> tuple:
    """What tells apart two configurations of one model and preset: training settings,
    K and seed."""
    return record["train"], record["k"], record["seed"]


def file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def fired_judged(flags: Iterable[dict]) -> dict[tuple, tuple[int, int]]:
    """Of the diagnostics' ``flags`` (records of the ``diagnostics`` view), per configuration
    (``config_key``) and check: how many fired and how many were judged."""
    counts: dict[tuple, list[int]] = defaultdict(lambda: [0, 0])
    for flag in flags:
        counts[config_key(flag), flag["flag"]][0] += int(flag["fired"])
        counts[config_key(flag), flag["flag"]][1] += 1
    return {key: (fired, judged) for key, (fired, judged) in counts.items()}


def fired_text(counts: tuple[int, int] | None) -> str:
    """``fired/judged``, ``-`` where the check could not be judged."""
    return "-" if counts is None else f"{counts[0]}/{counts[1]}"

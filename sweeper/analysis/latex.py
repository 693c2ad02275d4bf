"""The report's tables as a researcher pastes them: LaTeX (booktabs) and CSV, one file of
each per ``tables.Table``, beside the Markdown (``DIR/tables/<stem>.tex`` and ``.csv``).

**LaTeX.** A ``table*`` float (both columns of a two-column paper) in ``\\footnotesize``,
booktabs rules (``\\usepackage{booktabs}``, the only package needed), every number ``mean
$\\pm$ std`` over folds, the best value of each accuracy column in bold (the highest; the
lowest for a column of costs, ``Table.best``; none where every value ties), the masking
flags as superscript letters with their legend below the table, and the table's own notes.

**No table wider than the page.** The page is the ``\\textwidth`` of a two-column paper,
``TEXTWIDTH_PT`` = 505 pt (ACM's 7 in; IEEEtran's 516 pt is wider). A column's width is
estimated as its longest cell (header included) at ``CHAR_PT`` per character (\\footnotesize
Computer Modern: digits are 4.25 pt, bold digits 4.9 pt; 4.6 errs wide) plus 2 \\tabcolsep
(6 pt each); a text column estimated wider than ``WRAP_PT`` is set as a ``p{WRAP_PT}``
paragraph column, which wraps. Columns then go into as few tabulars as fit the width, each
repeating the first (row label) column, stacked in the same float. ``tests/test_latex.py``
compiles the tables with pdflatex where one is installed and checks that none is overfull.

**CSV.** The same rows, one line each, with a ``Num`` column split into ``<header>`` (the
mean), ``<header> std`` and ``<header> flags`` (the latter two only where the column has
any), so a spreadsheet gets numbers, not text.
"""

from __future__ import annotations

import csv
import io
import re

from sweeper.analysis.tables import MARKERS, Num, Table, fmt

TEXTWIDTH_PT = 505.0  # \textwidth of a two-column paper (table*), in TeX points
CHAR_PT = 4.6  # estimated width of one character at \footnotesize
TABCOLSEP_PT = 6.0  # LaTeX's default \tabcolsep, on each side of a column
WRAP_PT = 140.0  # a text column wider than this wraps (p{} column)
LONG_TOKEN = 16  # letters and digits in a row after which a line may break (hashes)
_FLAG_NAMES = {letter: check for check, letter in MARKERS.items()}
_SYMBOLS = {"±": r"$\pm$", "÷": r"$\div$", "↓": r"$\downarrow$", "→": r"$\rightarrow$", "≥": r"$\geq$",
            "≤": r"$\leq$", "×": r"$\times$", "–": "--", "—": "---", "->": r"$\rightarrow$",
            "†": r"$^\dagger$"}
_SPECIAL = {"\\": r"\textbackslash{}", "{": r"\{", "}": r"\}", "$": r"\$", "&": r"\&", "#": r"\#",
            "^": r"\^{}", "_": r"\_", "%": r"\%", "~": r"\~{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def escape(text: str) -> str:
    """``text`` as LaTeX text: special characters escaped, a few symbols as math, any
    other non-ASCII character as ``?`` (LaTeX without extra packages has no glyph for it);
    a break allowed after separators and inside long runs of letters and digits (hashes),
    so a paragraph column can wrap them."""
    out, run = [], 0  # run: characters since the last place a line may break
    for token in re.split(r"(->|.)", text, flags=re.S):
        if not token:
            continue
        run = 0 if not token.isalnum() else run + 1
        if run > LONG_TOKEN:  # a hash or a long name: a paragraph column may break it
            out.append(r"\allowbreak{}")
            run = 1
        if token in _SYMBOLS:
            out.append(_SYMBOLS[token])
        elif token in _SPECIAL:
            out.append(_SPECIAL[token])
        elif ord(token[0]) > 127:
            out.append("?")
        else:
            out.append(token + (r"\allowbreak{}" if token in ",/+=" else ""))
    return "".join(out)


def prose(text: str) -> str:
    """A Markdown note as LaTeX text: `code` as typewriter, **bold** as bold."""
    parts = re.split(r"(`[^`]*`|\*\*[^*]+\*\*)", text)
    return "".join(r"\texttt{" + escape(p[1:-1]) + "}" if p.startswith("`") else
                   r"\textbf{" + escape(p[2:-2]) + "}" if p.startswith("**") else escape(p) for p in parts)


# ---------------------------------------------------------------- widths

def cell_width(cell) -> float:
    """Estimated width of a cell's text, in points (module docstring)."""
    return len(str(cell)) * CHAR_PT


def column_widths(table: Table) -> list[float]:
    """Each column's estimated width, in points, \\tabcolsep included (a wrapping column's
    is ``WRAP_PT``)."""
    widths = []
    for index, name in enumerate(table.header):
        cells = [row[index] for row in table.rows if index < len(row)]
        text = max([cell_width(name), *(cell_width(c) for c in cells)])
        if not _numeric(cells):
            text = min(text, WRAP_PT)
        widths.append(text + 2 * TABCOLSEP_PT)
    return widths


def chunks(table: Table, budget: float = TEXTWIDTH_PT) -> list[list[int]]:
    """The column indices of each tabular: the first column in every one, the others in
    order, as many per tabular as fit ``budget`` (at least one)."""
    widths = column_widths(table)
    parts: list[list[int]] = []
    current, used = [0], widths[0]
    for index in range(1, len(widths)):
        if len(current) > 1 and used + widths[index] > budget:
            parts.append(current)
            current, used = [0], widths[0]
        current.append(index)
        used += widths[index]
    parts.append(current)
    return parts


def width(table: Table, columns: list[int]) -> float:
    """Estimated width of the tabular of ``columns``, in points."""
    widths = column_widths(table)
    return sum(widths[i] for i in columns)


# ---------------------------------------------------------------- rendering

def render(table: Table, label: str | None = None) -> str:
    """The table as a LaTeX ``table*`` float (module docstring)."""
    best = _best_rows(table)
    flags = sorted({letter for row in table.rows for cell in row if isinstance(cell, Num) for letter in cell.flags})
    parts = chunks(table)
    lines = [r"\begin{table*}[t]", r"\centering", r"\footnotesize",
             r"\caption{" + prose(table.caption) + (f" (in {len(parts)} parts)" if len(parts) > 1 else "") + "}",
             r"\label{" + (label or f"tab:{table.stem}") + "}"]
    for number, columns in enumerate(parts):
        if number:
            lines.append(r"\medskip")
        lines += [r"\begin{tabular}{" + "".join(_spec(table, i) for i in columns) + "}", r"\toprule",
                  " & ".join(escape(table.header[i]) for i in columns) + r" \\", r"\midrule"]
        for r, row in enumerate(table.rows):
            lines.append(" & ".join(_cell(row[i] if i < len(row) else "", (r, i) in best) for i in columns) + r" \\")
        lines += [r"\bottomrule", r"\end{tabular}", ""]
    notes = [prose(note) for note in table.notes]
    notes += [f"\\textsuperscript{{{letter}}}\\,\\texttt{{{escape(_FLAG_NAMES.get(letter, letter))}}}" for letter in flags]
    if notes:
        lines += [r"\par\smallskip", r"\raggedright\scriptsize", r"\\ ".join(notes)]
    lines.append(r"\end{table*}")
    return "\n".join(lines) + "\n"


def _spec(table: Table, index: int) -> str:
    cells = [row[index] for row in table.rows if index < len(row)]
    if _numeric(cells):
        return "r"
    text = max([cell_width(table.header[index]), *(cell_width(c) for c in cells)])
    return f"p{{{WRAP_PT:g}pt}}" if text > WRAP_PT else "l"


def _numeric(cells) -> bool:
    return any(isinstance(c, Num) for c in cells) and all(isinstance(c, Num) or c in ("", "n/a") for c in cells)


def _cell(cell, bold: bool) -> str:
    if not isinstance(cell, Num):
        return escape(str(cell))
    text = fmt(cell.mean)
    if bold:
        text = r"\textbf{" + text + "}"
    if cell.std is not None and cell.std == cell.std and text != "n/a":
        text += r" $\pm$ " + fmt(cell.std)
    if cell.flags:
        text += r"\textsuperscript{" + ",".join(cell.flags) + "}"
    return text


def _best_rows(table: Table) -> set[tuple[int, int]]:
    """(row, column) of each column's best value, as printed (three decimals); none in a
    column where every value ties."""
    best = set()
    for column, direction in table.best.items():
        values = {r: round(row[column].mean, 3) for r, row in enumerate(table.rows)
                  if column < len(row) and isinstance(row[column], Num) and row[column].mean is not None
                  and row[column].mean == row[column].mean}
        if len(set(values.values())) < 2:
            continue
        target = max(values.values()) if direction == "max" else min(values.values())
        best |= {(r, column) for r, value in values.items() if value == target}
    return best


def render_csv(table: Table) -> str:
    """The table as CSV (module docstring)."""
    header, getters = [], []
    for index, name in enumerate(table.header):
        cells = [row[index] for row in table.rows if index < len(row)]
        if not any(isinstance(c, Num) for c in cells):
            header.append(name)
            getters.append(lambda row, i=index: str(row[i]) if i < len(row) else "")
            continue
        header.append(name)
        getters.append(lambda row, i=index: _number(row, i, "mean"))
        if any(isinstance(c, Num) and c.std is not None for c in cells):
            header.append(f"{name} std")
            getters.append(lambda row, i=index: _number(row, i, "std"))
        if any(isinstance(c, Num) and c.flags for c in cells):
            header.append(f"{name} flags")
            getters.append(lambda row, i=index: row[i].flags if i < len(row) and isinstance(row[i], Num) else "")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        writer.writerow([get(row) for get in getters])
    return buffer.getvalue()


def _number(row, index: int, part: str) -> str:
    cell = row[index] if index < len(row) else None
    if not isinstance(cell, Num):
        return "" if cell is None or cell == "n/a" else str(cell)
    value = getattr(cell, part)
    return "" if value is None or value != value else repr(float(value))

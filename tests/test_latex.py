"""The report's LaTeX and CSV tables (sweeper.analysis.latex): parsed with a real LaTeX
parser (pylatexenc, the test extra), their cells checked against the Markdown's numbers and
a direct query, and compiled with pdflatex where one is installed, inside a two-column
page of ``latex.TEXTWIDTH_PT``: no table may be overfull, and a table too wide for the page
is split (the same table forced into one tabular is overfull: the check can fail); and a
long figure title is wrapped inside its figure."""

from __future__ import annotations

import csv
import io
import shutil
import subprocess

import pytest

from sweeper import store
from sweeper.analysis import latex, query, report
from sweeper.analysis.tables import Num, Table
from tests.test_report import _rows

walker = pytest.importorskip("pylatexenc.latexwalker")

# A two-column paper's page: \textwidth is latex.TEXTWIDTH_PT, booktabs the only package.
PREAMBLE = ("\\documentclass[twocolumn,10pt]{article}\n\\usepackage{booktabs}\n"
            f"\\setlength{{\\textwidth}}{{{latex.TEXTWIDTH_PT}pt}}\n\\setlength{{\\oddsidemargin}}{{-0.5in}}\n"
            "\\setlength{\\textheight}{9in}\n\\setlength{\\topmargin}{-0.5in}\n\\begin{document}\n")


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    """The LaTeX and CSV files of test_report's small store's report, by stem."""
    folder = tmp_path_factory.mktemp("latex")
    location = store.locate(str(folder / "results"))
    store.write_rows(location, _rows())
    out = report.write(location.text, folder / "report").parent / report.TABLES
    files = {path.stem: {} for path in out.iterdir()}
    for path in out.iterdir():
        files[path.stem][path.suffix] = path.read_text()
    return location.text, files


def _wide() -> Table:
    """A table of 30 attack columns: far wider than a page in one tabular."""
    header = ["model / quantizer"] + [f"attack_{i:02d}" for i in range(30)]
    rows = [[f"small_cnn / {q}"] + [Num(0.5 + i / 100, 0.01) for i in range(30)] for q in ("fp", "int4")]
    return Table("wide", "A wide table", header, rows, [], {i: "max" for i in range(1, 31)})


def _tabulars(text: str) -> list[tuple[str, list[list[str]]]]:
    """Each tabular of a table* float as (column spec, rows of cell LaTeX), from the parse
    tree; the break points ``latex.escape`` allows (``\\allowbreak{}``) left out."""
    nodes, _, _ = walker.LatexWalker(text, tolerant_parsing=False).get_latex_nodes()
    [float_] = [n for n in nodes if isinstance(n, walker.LatexEnvironmentNode)]
    assert float_.environmentname == "table*"
    found = []
    for node in float_.nodelist:
        if not isinstance(node, walker.LatexEnvironmentNode):
            continue
        assert node.environmentname == "tabular"
        spec = node.nodeargd.argnlist[0].latex_verbatim()[1:-1]
        rows, cells, cell = [], [], []
        for child in node.nodelist:
            if isinstance(child, walker.LatexSpecialsNode) and child.specials_chars == "&":
                cells.append(_text(cell))
                cell = []
            elif isinstance(child, walker.LatexMacroNode) and child.macroname == "\\":
                rows.append(cells + [_text(cell)])
                cells, cell = [], []
            elif isinstance(child, walker.LatexMacroNode) and child.macroname in ("toprule", "midrule", "bottomrule"):
                continue
            else:
                cell.append(child.latex_verbatim())
        assert not cells and not "".join(cell).strip(), "text after the last row"
        found.append((spec, rows))
    return found


def _text(parts: list[str]) -> str:
    return "".join(parts).replace("\\allowbreak{}", "").strip()


def _columns(spec: str) -> int:
    return spec.count("l") + spec.count("r") + spec.count("p{")


def test_every_table_parses_with_one_cell_per_column(tables):
    _, files = tables
    assert len(files) >= 8 and all(set(f) == {".tex", ".csv"} for f in files.values())
    for stem, f in files.items():
        parts = _tabulars(f[".tex"])
        assert parts, stem
        lines = list(csv.reader(io.StringIO(f[".csv"])))
        for spec, rows in parts:
            assert all(len(row) == _columns(spec) for row in rows), (stem, spec)
            assert len(rows) == len(lines), stem  # the header and one line per row, as the CSV


def test_table_iv_cells_carry_the_numbers_the_best_in_bold_and_the_flags(tables):
    results, files = tables
    [stem] = [s for s in files if "table_iv" in s and "eps_0.1" in s]
    [(spec, rows)] = _tabulars(files[stem][".tex"])
    header, body = rows[0], {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
    assert header[:4] == ["model / quantizer", "clean", "fgsm", "pgd"] and header[-1] == "W1"
    direct = {r["quantizer"]: r for r in query.run(
        results, "SELECT quantizer, avg(adv_acc) AS m, stddev_samp(adv_acc) AS s FROM results "
                 "WHERE attack = 'pgd' GROUP BY ALL").to_pylist()}
    int4, fp = body["small\\_cnn / int4"]["pgd"], body["small\\_cnn / fp"]["pgd"]
    # int4's pgd (0.700) is the column's best, and FGSM beating it flags it (S) with a legend
    assert int4 == f"\\textbf{{{direct['int4']['m']:.3f}}} $\\pm$ {direct['int4']['s']:.3f}\\textsuperscript{{S}}"
    assert fp == f"{direct['fp']['m']:.3f} $\\pm$ {direct['fp']['s']:.3f}"
    assert "\\textsuperscript{S}\\,\\texttt{single\\_step\\_beats\\_iterative}" in files[stem][".tex"]
    assert "W1: worst case of the QKeras model over fgsm, pgd" in _text([files[stem][".tex"]])
    # the CSV holds numbers: mean, std and flags apart
    lines = {row["model / quantizer"]: row for row in csv.DictReader(io.StringIO(files[stem][".csv"]))}
    assert float(lines["small_cnn / int4"]["pgd"]) == pytest.approx(direct["int4"]["m"])
    assert float(lines["small_cnn / int4"]["pgd std"]) == pytest.approx(direct["int4"]["s"])
    assert lines["small_cnn / int4"]["pgd flags"] == "S" and lines["small_cnn / fp"]["pgd flags"] == ""


def test_escape_keeps_user_text_literal():
    """Store strings (labels, hashes) are text, never LaTeX commands."""
    text = latex.escape(r"a_b & c% $x$ {y} \input{z} ~#^")
    nodes, _, _ = walker.LatexWalker(text, tolerant_parsing=False).get_latex_nodes()
    macros = {n.macroname for n in nodes if isinstance(n, walker.LatexMacroNode)}
    assert "input" not in macros and not any(isinstance(n, walker.LatexSpecialsNode) for n in nodes)
    assert not any(isinstance(n, walker.LatexMathNode) for n in nodes)


def test_a_table_wider_than_the_page_is_split_into_tabulars_that_fit():
    table = _wide()
    assert latex.width(table, list(range(len(table.header)))) > 2 * latex.TEXTWIDTH_PT
    parts = latex.chunks(table)
    assert len(parts) >= 3 and all(part[0] == 0 for part in parts)  # the row labels repeat
    assert sorted({i for part in parts for i in part}) == list(range(len(table.header)))  # every column once
    assert all(latex.width(table, part) <= latex.TEXTWIDTH_PT for part in parts)
    assert len(_tabulars(latex.render(table))) == len(parts)


def _compile(folder, bodies: list[str]) -> str:
    (folder / "doc.tex").write_text(PREAMBLE + "\n\\clearpage\n".join(bodies) + "\n\\end{document}\n")
    done = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    log = (folder / "doc.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    return log


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="no pdflatex on PATH (TeX Live: apt-get install "
                    "texlive-latex-base texlive-latex-recommended); the parser tests still run")
def test_every_table_compiles_and_none_is_wider_than_the_page(tables, tmp_path, monkeypatch):
    _, files = tables
    log = _compile(tmp_path, [f[".tex"] for f in files.values()] + [latex.render(_wide())])
    assert "Overfull \\hbox" not in log
    # the control: the same wide table in one tabular does not fit the page
    monkeypatch.setattr(latex, "chunks", lambda table, budget=0: [list(range(len(table.header)))])
    (tmp_path / "doc.log").unlink()
    assert "Overfull \\hbox" in _compile(tmp_path, [latex.render(_wide())])


def test_a_long_figure_title_is_wrapped_inside_the_figure():
    """Figures are the other half of a paper's page: a worst-case label as a title runs off
    both edges unless wrapped (figures.fit_title)."""
    from sweeper.analysis import figures

    plt = figures._pyplot()
    figure, axes = plt.subplots(figsize=(5, 3.5))
    long = "digits, small_cnn: worst(apgd_ce+apgd_dlr+fgsm<-fp+pgd+pgd<-fp+square) @ L-inf, 100 samples"
    figures.fit_title(figure, axes, long)
    title = axes.title
    renderer = figure.canvas.get_renderer()
    # wrapped, and nothing lost: the same characters but for whitespace
    assert "\n" in title.get_text() and "".join(title.get_text().split()) == "".join(long.split())
    box = title.get_window_extent(renderer)
    assert box.x0 >= 0 and box.x1 <= figure.get_figwidth() * figure.dpi  # inside the figure
    figures.fit_title(figure, axes, "digits, small_cnn")
    assert "\n" not in axes.title.get_text()  # a short title stays on one line
    plt.close(figure)

"""Report: rendered for a small store, its tables checked against direct SQL queries."""

from __future__ import annotations

import re

import pytest

from sweeper import store
from sweeper.analysis import query, report
from sweeper.analysis.tables import SINGLE_COORDINATE_NOTE
from tests.conftest import cli
from tests.test_store import make_row

# (quantizer, flash KB); per fold: (clean test acc, fgsm 0.1, fgsm 0.2, pgd 0.1). Fit is
# computed from flash and RAM: fp's 1500 KB fits the H7 (2048) but not the nRF52840 (1024).
CONFIGS = {
    "fp": (1500.0, [(0.95, 0.50, 0.30, 0.20), (0.97, 0.55, 0.35, 0.25), (0.96, 0.45, 0.25, 0.15)]),
    # int4: FGSM beats PGD by far (0.10 against 0.70) -> the single-step flag on pgd@0.1
    "int4": (5.0, [(0.90, 0.10, 0.05, 0.70), (0.88, 0.12, 0.06, 0.72),
                                            (0.91, 0.08, 0.04, 0.68)]),
}


def _first(accuracy: float) -> list[bool]:
    """Per-sample outcomes of 100 samples: the first accuracy*100 correct (so every attacked
    sample that survives was also correct clean, as in a real run)."""
    return [i < round(accuracy * 100) for i in range(100)]


def _rows():
    rows = []
    for quantizer, (flash, folds) in CONFIGS.items():
        for fold, (clean, fgsm1, fgsm2, pgd) in enumerate(folds):
            common = dict(quantizer=quantizer, fold=fold, flash_kb=flash, ram_kb=1.0, test_acc=clean,
                          clean_acc=clean, n_samples=100, mcu_targets=["stm32h7", "nrf52840"],
                          job_id=f"{quantizer}{fold}", train="{}", config_id=quantizer, clip_min=0.0,
                          clip_max=1.0, sample_index=list(range(100)), clean_correct=_first(clean),
                          footprint_source="measured", tflite_kb=flash / 2, arena_kb=1.0 / 1.1,
                          flash_packed_kb=flash / 4, ram_packed_kb=0.25, deployed_clean_acc=clean - 0.01)
            rows.append(make_row(f"{quantizer}{fold}-none", attack="none", attack_label="none", norm="none",
                                 eps=0.0, eps_label="0", adv_acc=clean, adv_correct=_first(clean), **common))
            for attack, eps, adv in (("fgsm", 0.1, fgsm1), ("fgsm", 0.2, fgsm2), ("pgd", 0.1, pgd)):
                rows.append(make_row(f"{quantizer}{fold}-{attack}{eps}", attack=attack, attack_label=attack,
                                     eps=eps, eps_label=str(eps), adv_acc=adv, adv_correct=_first(adv),
                                     deployed_adv_acc=adv + 0.02, **common))
    return rows


@pytest.fixture
def rendered(tmp_path):
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, _rows())
    path = report.write(location.text, tmp_path / "report")
    return location.text, path, path.read_text()


def _table(text: str, section: str, dataset: str = "digits") -> dict[str, dict[str, str]]:
    """The Markdown table under `### dataset` in the section whose heading starts with `section`."""
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    block = body.split(f"### {dataset}\n", 1)[1].strip().split("\n\n", 1)[0]
    lines = [line.strip().strip("|").split(" | ") for line in block.splitlines()]
    header, rows = [cell.strip() for cell in lines[0]], lines[2:]
    return {row[0].strip(): dict(zip(header, (cell.strip() for cell in row))) for row in rows}


def _direct(results: str, sql: str) -> dict[str, tuple]:
    return {row[0]: row[1:] for row in (tuple(r.values()) for r in query.run(results, sql).to_pylist())}


def test_table_iii_matches_a_direct_query(rendered):
    results, _, text = rendered
    table = _table(text, "Table III")
    direct = _direct(results, "SELECT quantizer, avg(test_acc), stddev_samp(test_acc), max(flash_kb) "
                              "FROM results WHERE attack = 'none' GROUP BY quantizer")
    assert set(table) == {"small_cnn / fp", "small_cnn / int4"}
    for quantizer, (mean, std, flash) in direct.items():
        row = table[f"small_cnn / {quantizer}"]
        assert row["clean accuracy"] == f"{mean:.3f} ± {std:.3f}"
        assert row["flash KB"] == f"{flash:.1f}" and row["folds"] == "3"
    assert table["small_cnn / int4"]["fits"] == "nrf52840, stm32h7"
    assert table["small_cnn / fp"]["fits"] == "stm32h7"


def test_table_iv_and_v_match_direct_queries_and_carry_the_flags(rendered):
    """One table per budget: a column per attack at it, the worst case under a short label."""
    results, _, text = rendered
    budgets = {"0.1": "digits, L-inf eps 0.1", "0.2": "digits, L-inf eps 0.2"}
    accuracy = {eps: _table(text, "Table IV", title) for eps, title in budgets.items()}
    variance = {eps: _table(text, "Table V", title) for eps, title in budgets.items()}
    direct = query.run(results, "SELECT quantizer, attack_label, eps_label, avg(adv_acc) AS m, "
                                "stddev_samp(adv_acc) AS s, var_samp(adv_acc) AS v FROM results "
                                "WHERE attack <> 'none' GROUP BY ALL").to_pylist()
    assert len(direct) == 6
    for d in direct:
        cell = accuracy[d["eps_label"]][f"small_cnn / {d['quantizer']}"][d["attack_label"]]
        assert re.sub(r" \[\w+\]$", "", cell) == f"{d['m']:.3f} ± {d['s']:.3f}"
        assert variance[d["eps_label"]][f"small_cnn / {d['quantizer']}"][d["attack_label"]] == f"{d['v']:.2e}"
    assert set(accuracy["0.2"]["small_cnn / fp"]) == {"model / quantizer", "clean", "fgsm"}  # no pgd at 0.2
    assert accuracy["0.1"]["small_cnn / int4"]["pgd"].endswith("[S]")  # FGSM beat PGD on int4
    assert not accuracy["0.1"]["small_cnn / fp"]["pgd"].endswith("]")
    assert "**S** iterative pgd@0.1 leaves 0.700 accuracy, single-step fgsm@0.1 with no more budget 0.100" in text
    # the worst case over FGSM and PGD at 0.1: per sample, the lower of the two; its short
    # label's legend names the attacks it covers
    assert accuracy["0.1"]["small_cnn / int4"]["W1"].startswith("0.100 ± 0.020")
    assert "W1: worst case of the QKeras model over fgsm, pgd;" in text


def test_figures_and_fits(rendered):
    _, path, text = rendered
    figures = sorted(p.name for p in (path.parent / "figures").iterdir())
    # pgd has one eps: no curve; worst(fgsm+pgd) at 0.1 is one point too; robustness against
    # the budget at each of the two budgets (the int8 builds of the rows: no build records)
    assert figures == ["budget-digits-Linf-0.1.png", "budget-digits-Linf-0.2.png", "eps-digits-small_cnn-fgsm.png",
                       "pareto-digits.png"]
    for name in figures:
        assert (path.parent / "figures" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"(figures/{name})" in text
    fits = [line for line in text.splitlines() if line.startswith("| nrf52840 |")]
    assert fits == ["| nrf52840 | 1024 | 256 | 1 of 2 | small_cnn / int4 | small_cnn / int4 (0.897) |"]
    assert "Pareto-optimal: small_cnn / int4 (5.0 KB, 0.897), small_cnn / fp (1500.0 KB, 0.960)." in text


def test_report_command(rendered, tmp_path):
    sweeper = cli  # in process: a report needs no new interpreter
    results, _, text = rendered
    done = sweeper("report", results, "--out", str(tmp_path / "again"))
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "4 figures" in done.stdout
    assert (tmp_path / "again" / "report.md").read_text() == text  # regenerated: the same report
    missing = sweeper("report", str(tmp_path / "nothing"), "--out", str(tmp_path / "r2"))
    assert missing.returncode == 2 and "no sweeper results here" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_table_iii_shows_every_footprint_and_the_deployment_section(rendered):
    results, _, text = rendered
    table = _table(text, "Table III")
    row = table["small_cnn / int4"]
    assert (row["flash KB"], row["source"], row[".tflite KB"], row["packed flash KB"]) == \
        ("5.0", "measured", "2.5", "1.2")
    assert row["paper flash KB"] == ""  # the paper's figures are for stq_net only
    deployed = _table(text, "Does robustness survive deployment?", "digits, L-inf eps 0.1")
    direct = query.run(results, "SELECT avg(adv_acc) AS q, avg(deployed_adv_acc) AS d FROM results "
                                "WHERE quantizer = 'int4' AND attack = 'pgd'").to_pylist()[0]
    assert deployed["small_cnn / int4"]["pgd"] == f"{direct['q']:.3f} -> {direct['d']:.3f}"
    assert "W1" not in deployed["small_cnn / int4"]  # the model's worst case has no deployed counterpart


def test_rows_of_a_defended_model_are_labelled_with_the_defense(tmp_path):
    rows = _rows()
    defended = [{**row, "cell_id": row["cell_id"] + "-jr", "job_id": row["job_id"] + "-jr",
                 "config_id": row["config_id"] + "-jr", "defense": "jr", "defense_label": "jr",
                 "defense_params": '{"lambda": 0.01, "projections": 1}', "adv_acc": 0.01}
                for row in rows if row["quantizer"] == "int4"]
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, rows + defended)
    table = _table(report.write(location.text, tmp_path / "report").read_text(), "Table IV", "digits, L-inf eps 0.1")
    assert table["small_cnn / int4 / jr"]["pgd"].startswith("0.010 ")
    assert table["small_cnn / int4"]["pgd"].startswith("0.700 ")  # the undefended rows stay apart


def test_rows_at_another_bit_width_are_a_configuration_of_their_own(tmp_path):
    rows = [{**row, "defense": "dbwt", "defense_label": "dbwt", "defense_params": '{"bits": [8, 4, 2], "period": 1}'}
            for row in _rows() if row["quantizer"] == "int4"]
    at_eight = [{**row, "cell_id": row["cell_id"] + "-8", "config_id": row["config_id"] + "-8", "eval_bits": 8,
                 "adv_acc": 0.02} for row in rows]
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, rows + at_eight)
    table = _table(report.write(location.text, tmp_path / "report").read_text(), "Table IV", "digits, L-inf eps 0.1")
    assert list(table)[:2] == ["small_cnn / int4 / dbwt", "small_cnn / int4 / dbwt @ 8-bit"]
    assert table["small_cnn / int4 / dbwt @ 8-bit"]["pgd"].startswith("0.020 ")
    assert table["small_cnn / int4 / dbwt"]["pgd"].startswith("0.700 ")  # never averaged together


def _patch_rows() -> list[dict]:
    """Per configuration and fold, a random patch (occlusion: no better than its controls)
    and one at the centre (far better), with their target rates over 80 samples."""
    rows = []
    for row in (r for r in _rows() if r["attack"] == "none"):
        for label, params, rate, control in (("patch", '{"target": 0}', 0.05, 0.10),
                                             ("patch-fixed", '{"placement": "fixed", "target": 0}', 0.90, 0.10)):
            rate += 0.0125 * row["fold"]  # one more of 80 per fold: a spread across folds
            rows.append({**row, "cell_id": f"{row['cell_id']}-{label}", "attack": "patch", "attack_label": label,
                         "norm": "patch", "eps": 0.25, "eps_label": "0.25", "attack_params": params,
                         "adv_acc": 0.5, "adv_correct": _first(0.5), "target_rate": rate, "target_n": 80,
                         "control_target_rate": control, "control_adv_acc": 0.4})
    return rows


def test_patches_are_shown_as_target_rates_beside_their_controls_per_placement(tmp_path):
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, _rows() + _patch_rows())
    text = report.write(location.text, tmp_path / "report").read_text()
    body = text.split("## Targeted patches", 1)[1].split("\n## ", 1)[0]
    lines = body.split("### digits\n", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    table = {(row["model / quantizer"], row["placement"]): row for row in
             (dict(zip(header, (cell.strip() for cell in line.strip("|").split(" | ")))) for line in lines[2:])}
    assert set(table) == {(f"small_cnn / {q}", p) for q in ("fp", "int4") for p in ("random", "fixed center")}
    direct = query.run(location.text, "SELECT quantizer, attack_label, avg(target_rate) AS m, "
                                      "stddev_samp(target_rate) AS s, avg(control_target_rate) AS c, "
                                      "sum(target_n) AS n FROM results WHERE attack = 'patch' GROUP BY ALL")
    for d in direct.to_pylist():
        row = table[f"small_cnn / {d['quantizer']}", "random" if d["attack_label"] == "patch" else "fixed center"]
        assert row["target rate"] == f"{d['m']:.3f} ± {d['s']:.3f}" and row["control target rate"] == f"{d['c']:.3f}"
        assert (row["patch"], row["n"], row["accuracy"], row["control accuracy"]) == \
            (d["attack_label"], str(d["n"]), "0.500", "0.400")
        # the random patch takes fewer samples to the target than its controls: flagged
        assert ("P" in row["flags"]) == (d["attack_label"] == "patch")
    assert "**P** `patch_not_above_control`" in text
    assert "**P** patch@0.25 takes 0.062 of 240 clean-correct non-target samples to its target" in text


def test_a_store_without_patches_has_no_patch_section(rendered):
    assert "## Targeted patches" not in rendered[2]
def test_arts_l1_fgsm_and_pgd_are_labelled_single_coordinate(tmp_path):
    # The same rows, under labels a grid might give: fgsm and pgd under L1 (ART's
    # single-coordinate steps) and an APGD-L1 column, which is an L1 attack proper.
    relabel = {"fgsm": ("fgsm", "fgsm_l1", "1"), "pgd": ("apgd_ce", "apgd_l1", "1")}
    rows = [{**row, **dict(zip(("attack", "attack_label", "norm"), relabel[row["attack"]]))}
            if row["attack"] in relabel else row for row in _rows()]
    rows += [{**row, "cell_id": row["cell_id"] + "-pgd1", "attack": "pgd", "attack_label": "pgd_l1", "norm": "1"}
             for row in _rows() if row["attack"] == "pgd"]
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, rows)
    text = report.write(location.text, tmp_path / "report").read_text()
    note = "†" + SINGLE_COORDINATE_NOTE.removeprefix("(single-coordinate)")
    for section in ("Table IV", "Table V", "Does robustness survive deployment"):
        header = set(next(iter(_table(text, section, "digits, L1 eps 0.1").values())))
        assert {"fgsm_l1 †", "pgd_l1 †", "apgd_l1"} <= header
        assert "fgsm_l1 †" in next(iter(_table(text, section, "digits, L1 eps 0.2").values()))
        body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
        assert body.count(note) == 2  # once below each of the two L1 budgets' tables
    assert "![fgsm_l1 (single-coordinate) on digits, small_cnn]" in text  # the eps curve
    assert SINGLE_COORDINATE_NOTE in text.split("## Accuracy against epsilon", 1)[1]
# Per quantizer, per fold: (jacobian_fro, [block norms]); int4 / jr_layer halves the blocks.
JACOBIANS = {"fp": [(30.0, [60.0, 30.0, 6.0]), (34.0, [70.0, 36.0, 7.0]), (32.0, [66.0, 33.0, 7.5])],
             "int4": [(27.0, [48.0, 39.0, 8.0]), (33.0, [56.0, 40.0, 8.5]), (30.0, [52.0, 38.0, 8.2])]}


def _jacobian_rows() -> list[dict]:
    rows = []
    for row in _rows():
        fro, blocks = JACOBIANS[row["quantizer"]][row["fold"]]
        rows.append({**row, "jacobian_fro": fro, "jacobian_fro_se": 0.0, "jacobian_projections": 16,
                     "jacobian_blocks": ["conv2d", "conv2d", "dense"], "jacobian_block_fro": blocks,
                     "jacobian_block_se": [0.01 * blocks[0], 0.002 * blocks[1], 0.0]})
        if row["quantizer"] == "int4":
            rows.append({**rows[-1], "cell_id": row["cell_id"] + "-l", "job_id": row["job_id"] + "-l",
                         "config_id": "int4-l", "defense": "jr_layer", "defense_label": "jr_layer",
                         "defense_params": '{"lambda": 0.001, "projections": 1}', "jacobian_fro": fro * 0.6,
                         "jacobian_block_fro": [b / 2 for b in blocks],
                         "jacobian_block_se": [0.005 * blocks[0], 0.001 * blocks[1], 0.0]})
    return rows


def _jacobian_tables(text: str) -> list[dict[str, dict[str, str]]]:
    """The tables of the Jacobian section, in order (norms, ratio to fp, ratio to twin)."""
    body = text.split("## Jacobian norms", 1)[1].split("\n## ", 1)[0]
    tables = []
    for block in re.findall(r"(?:^\|.*\n?)+", body, flags=re.M):
        lines = [line.strip().strip("|").split(" | ") for line in block.strip().splitlines()]
        header = [cell.strip() for cell in lines[0]]
        tables.append({row[0].strip(): dict(zip(header, (c.strip() for c in row))) for row in lines[2:]})
    return tables


def test_the_jacobian_section_matches_direct_queries_and_pairs_folds(tmp_path):
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, _jacobian_rows())
    text = report.write(location.text, tmp_path / "report").read_text()
    assert "### digits, small_cnn" in text and "Largest relative standard error of any estimate here" in text
    norms, to_fp, to_twin = _jacobian_tables(text)
    direct = _direct(location.text, "SELECT config_id, avg(f), stddev_samp(f), avg(b), stddev_samp(b) FROM "
                                    "(SELECT DISTINCT config_id, fold, jacobian_fro AS f, jacobian_block_fro[1] AS b "
                                    "FROM results) GROUP BY config_id")
    labels = {"fp": "small_cnn / fp", "int4": "small_cnn / int4", "int4-l": "small_cnn / int4 / jr_layer"}
    assert set(norms) == set(labels.values())
    for config, (fro, fro_std, first, first_std) in direct.items():
        row = norms[labels[config]]
        for cell, (mean, std) in ((row["logits"], (fro, fro_std)), (row["1 conv2d"], (first, first_std))):
            shown = [float(part) for part in cell.split(" ± ")]
            assert shown == pytest.approx([mean, std], abs=0.051), (cell, mean, std)  # 3 significant digits
    assert norms["small_cnn / fp"]["3 dense"] == "6.83 ± 0.76"
    # paired per fold: mean of (int4 / fp) over the three folds
    ratios = [JACOBIANS["int4"][f][1][0] / JACOBIANS["fp"][f][1][0] for f in range(3)]
    import statistics

    expected = f"{statistics.fmean(ratios):.2f} ± {statistics.stdev(ratios):.2f}"
    assert to_fp["small_cnn / int4 ÷ fp/none"]["1 conv2d"] == expected
    assert set(to_fp) == {"small_cnn / int4 ÷ fp/none"}  # jr_layer has no fp model with jr_layer here
    assert to_twin == {"small_cnn / int4 / jr_layer ÷ int4/none": {
        "model / quantizer ÷ reference": "small_cnn / int4 / jr_layer ÷ int4/none", "logits": "0.60 ± 0.00",
        "1 conv2d": "0.50 ± 0.00", "2 conv2d": "0.50 ± 0.00", "3 dense": "0.50 ± 0.00"}}
    assert "1.00%" in text  # the largest relative SE: 0.01 of block 1


def test_a_store_without_jacobian_norms_has_no_such_section(rendered):
    assert "## Jacobian norms" not in rendered[2]

"""Defended against undefended twins (sweeper.analysis.twins): who is paired with whom, on which
samples, with which test and family, and when a gain is called gradient-only; and the
report's section built from them."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import binomtest

from sweeper import store
from sweeper.analysis import checks, report, stats, tables, twins
from tests.test_diagnostics import hits, point, table
from tests.test_store import make_row

JR = {"defense": "jr", "defense_label": "jr", "defense_params": '{"lambda": 0.01, "projections": 1}'}
PLAIN = {"defense": "none", "defense_label": "none", "defense_params": "{}"}


def model(config: str, defense: dict = PLAIN, **changes):
    """A function that makes the rows of one point of configuration ``config``, trained
    with ``defense`` (and other configuration columns changed), 2 folds x 100 samples."""
    def rows(attack, eps, adv, **options):
        made = point(attack, eps, adv, config=config, folds=2, **options)
        return [{**row, **defense, **changes, "cell_id": f"{row['cell_id']}-{config}"} for row in made]
    return rows


def clean_point(maker, right: list[bool]):
    # The clean row's adv_correct is deliberately wrong: the clean point must read clean_correct.
    return maker("none", 0.0, [False] * len(right), clean=right, norm="none", eps_label="0")


def by_label(compared: pa.Table) -> dict[str, dict]:
    return {row["attack_label"]: row for row in compared.to_pylist()}


def verdict_at(verdicts: pa.Table, eps: float = 0.1) -> dict:
    [row] = [v for v in verdicts.to_pylist() if v["eps"] == eps]
    return row


def twin_and_defended(square_defended: list[bool]):
    plain, jr = model("plain"), model("jr", JR)
    return table(clean_point(plain, hits(95)), clean_point(jr, hits(93)),
                 plain("pgd", 0.1, hits(20)), jr("pgd", 0.1, hits(80, offset=10)),
                 plain("square", 0.1, hits(20)), jr("square", 0.1, square_defended))


# ---------------------------------------------------------------- (a), (b): the verdicts

def test_a_gain_under_pgd_only_is_flagged_gradient_only():
    compared = twins.compare(twin_and_defended(hits(20, offset=5)))
    rows = by_label(compared)
    assert set(rows) == {"none", "pgd", "square"}
    pgd = rows["pgd"]
    assert (pgd["config_id"], pgd["twin_config_id"], pgd["defense"], pgd["kind"]) == ("jr", "plain", "jr", "gradient")
    assert (pgd["n_pairs"], pgd["twin_acc"], pgd["defended_acc"]) == (200, 0.2, 0.8)
    # per fold: twin right on 0-19, defended on 10-89 -> b = 10, c = 70
    assert (pgd["b"], pgd["c"], pgd["change"]) == (20, 140, pytest.approx(0.6))
    assert pgd["p_value"] == pytest.approx(binomtest(140, 160, 0.5).pvalue, rel=1e-9)
    assert pgd["significant"] and pgd["p_adjusted"] < checks.ALPHA
    square = rows["square"]
    assert (square["kind"], square["b"], square["c"], square["change"]) == ("black-box", 10, 10, 0.0)
    assert square["p_value"] == 1.0 and not square["significant"]
    clean = rows["none"]  # clean_correct compared, not adv_correct
    assert (clean["kind"], clean["twin_acc"], clean["defended_acc"]) == ("clean", 0.95, 0.93)
    judged = verdict_at(twins.verdicts(compared))
    assert (judged["verdict"], judged["gradient_only"]) == ("gradient-only gain", True)
    assert (judged["n_gradient"], judged["n_black_box"]) == (1, 1)
    assert (judged["gradient_attack"], judged["gradient_twin_acc"], judged["gradient_defended_acc"]) == \
        ("pgd", 0.2, 0.8)
    assert (judged["black_box_attack"], judged["black_box_defended_acc"]) == ("square", 0.2)
    assert len(twins.verdicts(compared)) == 1  # the clean point is no budget


def test_b_a_gain_under_square_too_is_not_flagged():
    compared = twins.compare(twin_and_defended(hits(70)))
    assert by_label(compared)["square"]["significant"]
    judged = verdict_at(twins.verdicts(compared))
    assert (judged["verdict"], judged["gradient_only"]) == ("gain under black-box too", False)
    assert judged["black_box_defended_acc"] == 0.7


def test_transfer_counts_as_black_box_and_a_budget_without_one_is_not_judged():
    plain, jr = model("plain"), model("jr", JR)
    transfer = dict(label="fgsm<-fp+none", source="fp-config")
    rows = table(plain("pgd", 0.1, hits(20)), jr("pgd", 0.1, hits(80)),
                 plain("fgsm", 0.1, hits(30), **transfer), jr("fgsm", 0.1, hits(30), **transfer),
                 plain("pgd", 0.2, hits(10)), jr("pgd", 0.2, hits(60)))
    compared = twins.compare(rows)
    assert by_label(compared)["fgsm<-fp+none"]["kind"] == "transfer"
    verdicts = twins.verdicts(compared)
    assert verdict_at(verdicts, 0.1)["verdict"] == "gradient-only gain"
    assert verdict_at(verdicts, 0.1)["black_box_attack"] == "fgsm<-fp+none"
    assert verdict_at(verdicts, 0.2)["verdict"] == "not judged (no black-box or transfer attack at this budget)"
    assert not verdict_at(verdicts, 0.2)["gradient_only"]


def test_a_gain_under_black_box_alone_is_its_own_verdict():
    """The twin masked its gradients (PGD high, Square low); the defense undid it: PGD
    falls, Square rises. No gradient-only gain, and no 'too'."""
    plain, jr = model("plain"), model("jr", JR)
    compared = twins.compare(table(plain("pgd", 0.1, hits(60)), jr("pgd", 0.1, hits(30)),
                                   plain("square", 0.1, hits(10)), jr("square", 0.1, hits(40))))
    judged = verdict_at(twins.verdicts(compared))
    assert (judged["verdict"], judged["gradient_only"]) == ("black-box-only gain", False)


def test_a_significant_drop_is_no_gain():
    plain, jr = model("plain"), model("jr", JR)
    compared = twins.compare(table(plain("pgd", 0.1, hits(80)), jr("pgd", 0.1, hits(20)),
                                   plain("square", 0.1, hits(50)), jr("square", 0.1, hits(50))))
    assert by_label(compared)["pgd"]["significant"] and by_label(compared)["pgd"]["change"] < 0
    assert verdict_at(twins.verdicts(compared))["verdict"] == "no significant gain"


# ---------------------------------------------------------------- (c): the samples

def test_c_samples_are_aligned_on_fold_and_index_and_only_shared_ones_count():
    base = point("pgd", 0.1, hits(10), folds=1)[0]
    twin = {**base, **PLAIN, "config_id": "plain", "cell_id": "t"}
    defended = {**base, **JR, "config_id": "jr", "cell_id": "d"}
    # The twin lists samples 0-99 backwards; the defended model 50-149 in order, and on
    # fold 1 samples with the twin's fold-0 indices (other samples: never paired).
    twin_right = {i: i % 3 == 0 for i in range(100)}
    defended_right = {i: i % 2 == 0 for i in range(50, 150)}
    rows = [{**twin, "sample_index": list(range(99, -1, -1)), "adv_correct": [twin_right[i] for i in range(99, -1, -1)],
             "clean_correct": [True] * 100},
            {**defended, "sample_index": list(range(50, 150)), "adv_correct": [defended_right[i] for i in range(50, 150)],
             "clean_correct": [True] * 100},
            {**defended, "cell_id": "d1", "fold": 1, "sample_index": list(range(100)), "adv_correct": [True] * 100,
             "clean_correct": [True] * 100},
            # the same fold-0 samples again in a later row: each sample is taken once, from its earliest row
            {**defended, "cell_id": "d2", "sample_index": list(range(50, 100)), "adv_correct": [False] * 50,
             "clean_correct": [True] * 50}]
    [row] = twins.compare(pa.Table.from_pylist(rows, schema=store.SCHEMA)).to_pylist()
    shared = range(50, 100)
    b = sum(twin_right[i] and not defended_right[i] for i in shared)
    c = sum(defended_right[i] and not twin_right[i] for i in shared)
    assert row["n_pairs"] == 50 and (row["b"], row["c"]) == (b, c) and b and c
    assert row["twin_acc"] == pytest.approx(np.mean([twin_right[i] for i in shared]))
    assert row["defended_acc"] == pytest.approx(np.mean([defended_right[i] for i in shared]))


# ---------------------------------------------------------------- (d): who is a twin

def test_d_only_the_configuration_that_differs_in_its_defense_alone_is_a_twin():
    jr = model("jr", JR)
    defended = jr("pgd", 0.1, hits(80))
    assert twins.compare(table(defended)).num_rows == 0  # no twin: no rows
    decoys = [model("other-model", model="resnet8"), model("other-quantizer", quantizer="int8"),
              model("other-seed", seed=1), model("other-train", train='{"epochs": 2}')]
    assert twins.compare(table(defended, *[d("pgd", 0.1, hits(20)) for d in decoys])).num_rows == 0
    rows = table(defended, model("plain")("pgd", 0.1, hits(20)), *[d("pgd", 0.1, hits(20)) for d in decoys])
    assert twins.compare(rows).column("twin_config_id").to_pylist() == ["plain"]
    # two defended models are never each other's twin
    other_defense = model("fgsm_at", {**JR, "defense": "fgsm_at", "defense_label": "fgsm_at"})
    assert twins.compare(table(defended, other_defense("pgd", 0.1, hits(20)))).num_rows == 0


DBWT = {"defense": "dbwt", "defense_label": "dbwt", "defense_params": '{"bits": [8, 4, 2], "period": 1}'}


def dbwt_at_two_bits_and_the_plain_models():
    """int4 trained with dbwt, at its own width and at 2 bits, beside plain int4 and int2."""
    own, at_two = model("dbwt", DBWT), model("dbwt@2", DBWT, eval_bits=2)
    plain_four, plain_two = model("plain-int4"), model("plain-int2", quantizer="int2")
    return table(own("pgd", 0.1, hits(50)), at_two("pgd", 0.1, hits(60)),
                 plain_four("pgd", 0.1, hits(40)), plain_two("pgd", 0.1, hits(20)))


def test_dbwt_weights_at_another_width_are_twinned_with_the_model_trained_at_that_width():
    compared = twins.compare(dbwt_at_two_bits_and_the_plain_models()).to_pylist()
    pairs = {(r["config_id"], r["twin_config_id"]): (r["twin_acc"], r["defended_acc"]) for r in compared}
    assert pairs == {("dbwt", "plain-int4"): (0.4, 0.5), ("dbwt@2", "plain-int2"): (0.2, 0.6)}
    assert twins.width_twin({"eval_bits": 2}) == "int2" and twins.width_twin({"eval_bits": 3}) is None
    no_preset = table(model("dbwt@3", DBWT, eval_bits=3)("pgd", 0.1, hits(60)),
                      model("plain-int4")("pgd", 0.1, hits(40)))
    assert twins.compare(no_preset).num_rows == 0  # no preset is trained at 3 bits: no twin


def test_points_differing_in_anything_but_the_source_are_not_paired():
    plain, jr = model("plain"), model("jr", JR)
    rows = table(plain("pgd", 0.1, hits(20)), jr("pgd", 0.1, hits(80), params='{"max_iter": 20}'),
                 plain("fgsm", 0.1, hits(20)), jr("fgsm", 0.2, hits(80)))
    assert twins.compare(rows).num_rows == 0


def test_rows_lacking_an_outcome_column_are_refused_by_name():
    with pytest.raises(ValueError, match="'adv_correct'"):
        twins.compare(table(model("jr", JR)("pgd", 0.1, hits(80))).drop_columns(["adv_correct"]))


# ---------------------------------------------------------------- (e): Holm's family

def test_e_holm_adjusts_within_each_defended_configuration_only():
    plain, jr = model("plain"), model("jr", JR)
    at = model("fgsm_at", {**JR, "defense": "fgsm_at", "defense_label": "fgsm_at"})
    points = [("pgd", 0.1, 20, 30), ("pgd", 0.2, 10, 18), ("fgsm", 0.1, 30, 37)]
    rows = [plain(a, e, hits(t)) for a, e, t, _ in points] + [jr(a, e, hits(d)) for a, e, _, d in points]
    rows += [at("pgd", 0.1, hits(30))]  # alone in its family
    compared = twins.compare(table(*rows)).to_pylist()
    mine = [r for r in compared if r["config_id"] == "jr"]
    [alone] = [r for r in compared if r["config_id"] == "fgsm_at"]
    assert len(mine) == 3
    assert [r["p_adjusted"] for r in mine] == pytest.approx(list(stats.holm([r["p_value"] for r in mine])))
    assert alone["p_adjusted"] == alone["p_value"]
    everything = stats.holm([r["p_value"] for r in compared])
    assert alone["p_adjusted"] != pytest.approx(everything[compared.index(alone)])  # one family would differ
    assert any(r["p_adjusted"] > r["p_value"] for r in mine)


# ---------------------------------------------------------------- (f): the report

def stored(tmp_path, rows: pa.Table) -> store.Location:
    """``rows`` written to a store, with make_row's footprint and timing columns."""
    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, [make_row(row.pop("cell_id"), **{k: v for k, v in row.items() if v is not None})
                                for row in rows.to_pylist()])
    return location


def test_f_report_has_the_section_and_the_csvs(tmp_path):
    location = stored(tmp_path, twin_and_defended(hits(20, offset=5)))
    path = report.write(location.text, tmp_path / "report")
    text = path.read_text()
    section = text.split("## Defended vs undefended", 1)[1].split("\n## ", 1)[0]
    assert "**0.200 -> 0.800 (+0.600, p_adj" in section  # significant: bold
    assert "| small_cnn / int4 / jr | Linf @ 0.1 | **gradient-only gain** | pgd: 0.200 -> 0.800 (p_adj" in section
    assert "| 0.200 -> 0.200 (+0.000, p_adj 1) |" in section  # square, not bold
    assert "0.950 -> 0.930" in section  # the clean point
    flags = [line for line in section.splitlines() if line.startswith("| small_cnn / int4 / jr |")][-1]
    assert flags.count("(") == len(tables.MARKERS)  # each check: the defended model's count, then its twin's
    with open(path.parent / "defense_effect.csv") as handle:
        effect = list(csv.DictReader(handle))
    assert {r["attack_label"]: r["significant"] for r in effect} == {"none": "False", "pgd": "True", "square": "False"}
    with open(path.parent / "defense_verdicts.csv") as handle:
        [verdict] = list(csv.DictReader(handle))
    assert verdict["verdict"] == "gradient-only gain" and verdict["twin_config_id"] == "plain"


def test_the_report_reads_the_twin_at_another_width_from_the_store(tmp_path):
    location = stored(tmp_path, dbwt_at_two_bits_and_the_plain_models())
    section = report.write(location.text, tmp_path / "report").read_text().split("## Defended vs undefended", 1)[1]
    assert "| small_cnn / int4 / dbwt @ 2-bit vs int2 | **0.200 -> 0.600 (+0.400, p_adj" in section
    assert "| small_cnn / int4 / dbwt | **0.400 -> 0.500 (+0.100, p_adj" in section


def test_a_report_without_defended_rows_has_no_such_section(tmp_path):
    location = stored(tmp_path, table(model("plain")("pgd", 0.1, hits(20))))
    path = report.write(location.text, tmp_path / "report")
    assert "Defended vs undefended" not in path.read_text()
    assert not (path.parent / "defense_effect.csv").exists()

"""Gradient-masking diagnostics: each check fires where it must, stays quiet where it
must, and is absent where the grid has no numbers to judge it."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sweeper import diagnostics, query, store
from tests.test_store import make_row

FOLDS = 3


def rows(*points, quantizer="int4", samples=100, clean=0.9):
    """Store rows for one configuration: (attack, label, norm, eps, adv_acc) per point,
    the same on every fold, plus the clean rows."""
    out = []
    for fold in range(FOLDS):
        common = dict(quantizer=quantizer, fold=fold, n_samples=samples, clean_acc=clean, train="{}")
        out.append(make_row(f"{quantizer}-clean-{fold}", attack="none", attack_label="none", norm="none",
                            eps=0.0, eps_label="0", adv_acc=clean, **common))
        for attack, label, norm, eps, adv in points:
            out.append(make_row(f"{quantizer}-{label}-{eps}-{fold}", attack=attack, attack_label=label,
                                norm=norm, eps=eps, eps_label=str(eps), adv_acc=adv, **common))
    return out


def judged(table_rows, check):
    table = store.to_table(table_rows)
    return [f for f in diagnostics.diagnose(table).to_pylist() if f["flag"] == check]


def numbers(flag, *keys):
    return tuple(round(flag[key], 9) if isinstance(flag[key], float) else flag[key] for key in keys)


def fired(table_rows, check):
    return [f for f in judged(table_rows, check) if f["fired"]]


def test_single_step_beating_iterative_fires_on_the_iterative_number():
    [flag] = fired(rows(("fgsm", "fgsm", "inf", 0.1, 0.2), ("pgd", "pgd", "inf", 0.1, 0.6)),
                   "single_step_beats_iterative")
    assert numbers(flag, "attack_label", "value", "reference") == ("pgd", 0.6, 0.2)
    assert flag["reference_label"] == "fgsm@0.1"
    assert not fired(rows(("fgsm", "fgsm", "inf", 0.1, 0.5), ("pgd", "pgd", "inf", 0.1, 0.3)),
                     "single_step_beats_iterative")
    # Different budgets (or norms) are not comparable: nothing is judged.
    assert not judged(rows(("fgsm", "fgsm", "inf", 0.2, 0.2), ("pgd", "pgd", "inf", 0.1, 0.6)),
                      "single_step_beats_iterative")
    assert not judged(rows(("fgsm", "fgsm", "2", 0.1, 0.2), ("pgd", "pgd", "inf", 0.1, 0.6)),
                      "single_step_beats_iterative")


def test_black_box_beating_white_box_compares_with_the_best_white_box():
    points = [("square", "square", "inf", 0.1, 0.1), ("pgd", "pgd", "inf", 0.1, 0.6),
              ("fgsm", "fgsm", "inf", 0.1, 0.7)]
    [flag] = fired(rows(*points), "black_box_beats_white_box")
    assert numbers(flag, "attack_label", "value", "reference_label") == ("pgd", 0.6, "square@0.1")
    strong_white = [("square", "square", "inf", 0.1, 0.5), ("pgd", "pgd", "inf", 0.1, 0.1),
                    ("fgsm", "fgsm", "inf", 0.1, 0.7)]
    assert len(judged(rows(*strong_white), "black_box_beats_white_box")) == 1
    assert not fired(rows(*strong_white), "black_box_beats_white_box")
    # Unbounded minimal-perturbation attacks under the same norm are comparable.
    [flag] = fired(rows(("zoo", "zoo", "2", 0.0, 0.1), ("cw_l2", "cw_l2", "2", 0.0, 0.5)),
                   "black_box_beats_white_box")
    assert flag["attack_label"] == "cw_l2"
    assert not judged(rows(("square", "square", "inf", 0.1, 0.1)), "black_box_beats_white_box")


def test_accuracy_rising_with_eps():
    rising = rows(("fgsm", "fgsm", "inf", 0.1, 0.3), ("fgsm", "fgsm", "inf", 0.2, 0.25),
                  ("fgsm", "fgsm", "inf", 0.3, 0.6))
    [flag] = fired(rising, "accuracy_rises_with_eps")
    assert numbers(flag, "eps", "value", "reference", "reference_label") == (0.3, 0.6, 0.25, "fgsm@0.2")
    falling = rows(("fgsm", "fgsm", "inf", 0.1, 0.6), ("fgsm", "fgsm", "inf", 0.2, 0.3))
    assert len(judged(falling, "accuracy_rises_with_eps")) == 1 and not fired(falling, "accuracy_rises_with_eps")
    within_noise = rows(("fgsm", "fgsm", "inf", 0.1, 0.50), ("fgsm", "fgsm", "inf", 0.2, 0.53))
    assert not fired(within_noise, "accuracy_rises_with_eps")
    assert not judged(rows(("fgsm", "fgsm", "inf", 0.1, 0.6)), "accuracy_rises_with_eps")


def test_adversarial_above_clean():
    [flag] = fired(rows(("pgd", "pgd", "inf", 0.1, 0.95), clean=0.5), "adversarial_above_clean")
    assert numbers(flag, "value", "reference") == (0.95, 0.5)
    assert not fired(rows(("pgd", "pgd", "inf", 0.1, 0.4), clean=0.5), "adversarial_above_clean")


def test_large_eps_staying_above_chance():
    [flag] = fired(rows(("fgsm", "fgsm", "inf", 0.3, 0.8)), "large_eps_above_chance")
    assert flag["reference"] == pytest.approx(0.1)  # chance with 10 classes
    assert not fired(rows(("fgsm", "fgsm", "inf", 0.3, 0.12)), "large_eps_above_chance")
    assert not judged(rows(("fgsm", "fgsm", "inf", 0.1, 0.8)), "large_eps_above_chance")  # not large
    # L2 2.4 over 64 values is 0.3 a value; an unbounded C&W counts as large; eps 0 FGSM is clean.
    assert fired(rows(("pgd", "pgd", "2", 2.4, 0.8)), "large_eps_above_chance")
    assert not judged(rows(("pgd", "pgd", "2", 1.0, 0.8)), "large_eps_above_chance")
    assert fired(rows(("cw_l2", "cw_l2", "2", 0.0, 0.8)), "large_eps_above_chance")
    assert not judged(rows(("fgsm", "fgsm", "inf", 0.0, 0.9)), "large_eps_above_chance")


def test_few_samples_need_a_bigger_difference():
    points = (("fgsm", "fgsm", "inf", 0.1, 0.4), ("pgd", "pgd", "inf", 0.1, 0.6))
    assert fired(rows(*points, samples=100), "single_step_beats_iterative")
    assert not fired(rows(*points, samples=5), "single_step_beats_iterative")  # 15 samples: noise
    assert diagnostics.margin(0.0, 10, 1.0, 10) == diagnostics.MIN_MARGIN


def test_folds_are_averaged_and_configurations_kept_apart():
    both = rows(("fgsm", "fgsm", "inf", 0.1, 0.2), ("pgd", "pgd", "inf", 0.1, 0.6), quantizer="ternary") + \
        rows(("fgsm", "fgsm", "inf", 0.1, 0.5), ("pgd", "pgd", "inf", 0.1, 0.3), quantizer="fp")
    both[1]["adv_acc"] = 0.5  # ternary fgsm on fold 0: the mean is (0.5 + 0.2 + 0.2) / 3
    flags = judged(both, "single_step_beats_iterative")
    by_quantizer = {f["quantizer"]: f for f in flags}
    assert set(by_quantizer) == {"ternary", "fp"}
    assert by_quantizer["ternary"]["fired"] and not by_quantizer["fp"]["fired"]
    assert by_quantizer["ternary"]["reference"] == pytest.approx(0.3)


def test_flags_are_in_the_store_and_queryable(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, rows(("fgsm", "fgsm", "inf", 0.1, 0.2), ("pgd", "pgd", "inf", 0.1, 0.6)))
    written = diagnostics.write(location)
    on_disk = pq.read_table(tmp_path / store.DIAGNOSTICS_FILE)
    assert on_disk.equals(written) and on_disk.num_rows > 0
    queried = query.run(str(tmp_path), "SELECT flag, attack_label FROM diagnostics WHERE fired ORDER BY ALL")
    assert queried.to_pylist() == [{"flag": "single_step_beats_iterative", "attack_label": "pgd"}]

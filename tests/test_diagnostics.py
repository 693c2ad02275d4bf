"""Gradient-masking diagnostics: each check fires where it must, stays quiet where it
must, and is absent where the grid has no numbers to judge it; the statistics (paired
exact tests, Holm per configuration and check) keep false alarms at the stated rate."""

from __future__ import annotations

import math
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest

from sweeper import keys, store
from sweeper.analysis import checks, diagnostics, flags, query, stats
from sweeper.analysis.flags import SCHEMA as FLAG_SCHEMA, plain
from tests import diagnostics_reference as reference_diagnostics

FOLDS = 3
N = 100  # attacked samples per fold



def same(table: pa.Table, other: pa.Table) -> bool:
    """The same flags, dictionary-encoded or not (their dictionaries' order may differ)."""
    return plain(table).equals(plain(other))

def hits(correct: int, n: int = N, offset: int = 0) -> list[bool]:
    """n outcomes, ``correct`` of them True, starting at ``offset`` (wrapping): with offset 0
    the correct samples of a smaller count are a subset of those of a larger one."""
    return [(i - offset) % n < correct for i in range(n)]


def point(attack, eps, adv, *, label=None, norm="inf", clean=None, params="{}", config="cfg", quantizer="int4",
          clip=(0.0, 1.0), n_classes=10, n_features=64, folds=FOLDS, eps_label=None, outcomes=True, source=None,
          target=None):
    """The rows (one per fold) of one point: ``adv`` (and ``clean``, default all correct) are
    per-sample outcome lists, the same on every fold; sample_index counts from fold * 1000.
    ``target``: a patch's (hits, target_n, control hits) on every fold."""
    clean = [True] * len(adv) if clean is None else clean
    out = []
    for fold in range(folds):
        row = {name: None for name in store.SCHEMA.names}
        label_ = label or attack
        row.update(cell_id=f"{config}-{label_}-{eps}-{params}-{len(adv)}-{fold}", job_id=f"{config}-{fold}",
                   config_id=config, dataset="digits", dataset_options="{}", n_classes=n_classes,
                   n_features=n_features, clip_min=clip[0] if clip else None, clip_max=clip[1] if clip else None,
                   model="small_cnn", quantizer=quantizer, fold=fold, k=folds, seed=0, train="{}",
                   attack=attack, attack_label=label_, norm=norm, eps=eps,
                   eps_label=eps_label or ("unbounded" if math.isinf(eps) else str(eps)), attack_params=params,
                   n_samples=len(adv), clean_acc=float(np.mean(clean)), adv_acc=float(np.mean(adv)),
                   source_config_id=source)
        if target is not None:
            hit, n, control = target
            row.update(target_n=n, target_rate=hit / n if n else math.nan,
                       control_target_rate=control / n if n else math.nan)
        if outcomes:
            row.update(sample_index=[fold * 1000 + i for i in range(len(adv))], clean_correct=list(clean),
                       adv_correct=list(adv), adv_pred=[0] * len(adv))
        out.append(row)
    return out


def table(*points) -> pa.Table:
    return pa.Table.from_pylist([row for rows in points for row in rows], schema=store.SCHEMA)


def judged(check, *points):
    return [f for f in diagnostics.diagnose(table(*points)).to_pylist() if f["flag"] == check]


def fired(check, *points):
    return [f for f in judged(check, *points) if f["fired"]]


def old_rule_fires(high: float, low: float, n_high: int, n_low: int) -> bool:
    """The rule this module used before: a difference counts beyond twice its standard
    error, the two accuracies taken as independent, and at least MIN_MARGIN."""
    se = math.sqrt(high * (1 - high) / n_high + low * (1 - low) / n_low)
    return high - low > max(checks.MIN_MARGIN, 2 * se)


# ---------------------------------------------------------------- statistics

def test_holm_and_the_exact_tests_on_known_numbers():
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5]) == pytest.approx([0.5]) and len(stats.holm([])) == 0
    assert stats.mcnemar_p(0, 5) == pytest.approx(1 / 32)  # 5 discordant pairs, all one way
    assert stats.mcnemar_p(5, 0) == 1.0 and stats.mcnemar_p(0, 0) == 1.0
    assert stats.binomial_p(3, 3, 0.5) == pytest.approx(1 / 8)
    for k, n, p0 in [(164, 300, 0.5), (75, 300, 0.2), (1, 1, 0.5), (2000, 2400, 0.2)]:
        assert stats.binomial_p(k, n, p0) == pytest.approx(
            binomtest(k, n, p0, alternative="greater").pvalue, rel=1e-9, abs=1e-300)


# ---------------------------------------------------------------- each check

def test_single_step_beating_iterative_fires_on_the_iterative_number():
    fgsm = point("fgsm", 0.1, hits(20))
    [flag] = fired("single_step_beats_iterative", fgsm, point("pgd", 0.1, hits(60)))
    assert (flag["attack_label"], flag["value"], flag["reference"]) == ("pgd", 0.6, 0.2)
    assert flag["reference_label"] == "fgsm@0.1" and flag["n_pairs"] == FOLDS * N
    assert flag["p_adjusted"] == flag["p_value"] < 1e-9  # one comparison: Holm changes nothing
    [quiet] = judged("single_step_beats_iterative", point("fgsm", 0.1, hits(50)), point("pgd", 0.1, hits(30)))
    assert not quiet["fired"] and quiet["p_value"] == 1.0
    # Widened: PGD with more budget leaving more accuracy is as suspicious; with less, it is not judged.
    assert fired("single_step_beats_iterative", fgsm, point("pgd", 0.2, hits(60)))
    assert not judged("single_step_beats_iterative", fgsm, point("pgd", 0.05, hits(60)))
    assert not judged("single_step_beats_iterative", point("fgsm", 0.1, hits(20), norm="2"),
                      point("pgd", 0.1, hits(60)))
    # Unbounded C&W has at least every budget of its norm.
    [flag] = fired("single_step_beats_iterative", point("fgsm", 1.0, hits(20), norm="2"),
                   point("cw_l2", math.inf, hits(60), norm="2"))
    assert flag["attack_label"] == "cw_l2" and flag["eps_label"] == "unbounded"


def test_black_box_beating_white_box_compares_with_the_best_white_box():
    square, pgd, fgsm = point("square", 0.1, hits(10)), point("pgd", 0.1, hits(60)), point("fgsm", 0.1, hits(70))
    [flag] = fired("black_box_beats_white_box", square, pgd, fgsm)
    assert (flag["attack_label"], flag["value"], flag["reference_label"]) == ("pgd", 0.6, "square@0.1")
    strong_white = [point("square", 0.1, hits(50)), point("pgd", 0.1, hits(10)), fgsm]
    assert len(judged("black_box_beats_white_box", *strong_white)) == 1
    assert not fired("black_box_beats_white_box", *strong_white)
    # Unbounded minimal-perturbation attacks under the same norm are comparable.
    [flag] = fired("black_box_beats_white_box", point("zoo", math.inf, hits(10), norm="2"),
                   point("cw_l2", math.inf, hits(50), norm="2"))
    assert flag["attack_label"] == "cw_l2"
    assert not judged("black_box_beats_white_box", point("square", 0.1, hits(10)))
    assert not judged("black_box_beats_white_box", point("square", 0.1, hits(10)), point("pgd", 0.2, hits(60)))


def test_a_transfer_attack_is_judged_as_black_box_and_never_at_a_large_budget():
    # Examples crafted on another model (no gradient of this one) leave less accuracy than
    # white-box FGSM: the masking sign B looks for.
    transfer = point("fgsm", 0.1, hits(10), label="fgsm<-fp", source="fp-config")
    [flag] = fired("black_box_beats_white_box", transfer, point("fgsm", 0.1, hits(60)))
    assert (flag["attack_label"], flag["reference_label"]) == ("fgsm", "fgsm<-fp@0.1")
    # nor is a transfer FGSM a white-box single step, or a white-box reference for Square
    assert not judged("single_step_beats_iterative", transfer, point("pgd", 0.1, hits(60)))
    assert not judged("black_box_beats_white_box", transfer, point("square", 0.1, hits(10)))
    # a transfer attack does not adapt to the target: staying above chance at a large
    # budget is expected, not a flag; the same white-box point is judged
    large = dict(adv=hits(90), label="fgsm<-fp", source="fp-config")
    assert not judged("large_eps_above_chance", point("fgsm", 0.5, **large))
    assert fired("large_eps_above_chance", point("fgsm", 0.5, hits(90)))
    # the white-box and transfer points of one label and eps are never merged
    assert len(judged("adversarial_above_clean", transfer, point("fgsm", 0.1, hits(10), label="fgsm<-fp",
                                                                   source="int8-config"))) == 2


def test_accuracy_rising_with_eps_judges_every_pair_of_budgets_as_one_family():
    rising = [point("fgsm", 0.1, hits(30)), point("fgsm", 0.2, hits(25)), point("fgsm", 0.3, hits(60))]
    flags = judged("accuracy_rises_with_eps", *rising)
    assert len(flags) == 3  # (0.1, 0.2), (0.1, 0.3), (0.2, 0.3)
    assert all(f["p_adjusted"] >= f["p_value"] for f in flags)
    assert {(f["eps"], f["reference_label"]) for f in flags if f["fired"]} == {(0.3, "fgsm@0.1"),
                                                                              (0.3, "fgsm@0.2")}
    falling = [point("fgsm", 0.1, hits(60)), point("fgsm", 0.2, hits(30))]
    assert len(judged("accuracy_rises_with_eps", *falling)) == 1 and not fired("accuracy_rises_with_eps", *falling)
    # 3 more correct of 100 on every fold: 9 discordant pairs of 300, all one way, p = 0.002,
    # yet 0.03 is a small effect; 1 more of 100 (0.01) is below MIN_MARGIN however sure.
    assert fired("accuracy_rises_with_eps", point("fgsm", 0.1, hits(50)), point("fgsm", 0.2, hits(53)))
    assert not fired("accuracy_rises_with_eps", point("fgsm", 0.1, hits(50)), point("fgsm", 0.2, hits(51)))
    assert not judged("accuracy_rises_with_eps", point("fgsm", 0.1, hits(60)))
    # An unbounded point is the largest budget of its curve.
    assert fired("accuracy_rises_with_eps", point("cw_l2", 1.0, hits(10), norm="2"),
                 point("cw_l2", math.inf, hits(60), norm="2"))


def test_adversarial_above_clean_pairs_each_samples_outcomes():
    [flag] = fired("adversarial_above_clean", point("pgd", 0.1, hits(95), clean=hits(50)))
    assert (flag["value"], flag["reference"], flag["reference_label"]) == (0.95, 0.5, "clean")
    assert not fired("adversarial_above_clean", point("pgd", 0.1, hits(40), clean=hits(50)))
    # Same accuracy, different samples right: 10 gained and 10 lost is no evidence.
    assert not fired("adversarial_above_clean", point("pgd", 0.1, hits(50, offset=10), clean=hits(50)))
    assert not judged("adversarial_above_clean", point("pgd", 0.1, hits(95), clean=hits(50), outcomes=False))


def test_large_eps_staying_above_chance():
    [flag] = fired("large_eps_above_chance", point("fgsm", 0.3, hits(80)))
    assert flag["reference"] == pytest.approx(0.1) and flag["n_pairs"] == FOLDS * N  # chance with 10 classes
    assert not fired("large_eps_above_chance", point("fgsm", 0.3, hits(12)))
    # 0.25 with chance 0.1 is above 0.2 but not surely so: p(X >= 75 | 300, 0.2) = 0.02, and a
    # family of three such points adjusts it past 0.05.
    three = [point("fgsm", eps, hits(25)) for eps in (0.3, 0.4, 0.5)]
    assert len(judged("large_eps_above_chance", *three)) == 3 and not fired("large_eps_above_chance", *three)
    assert fired("large_eps_above_chance", three[0])
    assert not judged("large_eps_above_chance", point("fgsm", 0.1, hits(80)))  # not large
    # L2 2.4 over 64 values is 0.3 a value; an unbounded C&W counts as large.
    assert fired("large_eps_above_chance", point("pgd", 2.4, hits(80), norm="2"))
    assert not judged("large_eps_above_chance", point("pgd", 1.0, hits(80), norm="2"))
    assert fired("large_eps_above_chance", point("cw_l2", math.inf, hits(80), norm="2"))
    assert not judged("large_eps_above_chance", point("fgsm", 0.0, hits(90)))  # eps 0 is clean
    assert not judged("large_eps_above_chance", point("fgsm", 0.3, hits(80), clip=None))  # no scale


def test_large_eps_is_judged_on_the_rows_own_scale():
    assert fired("large_eps_above_chance", point("fgsm", 0.3, hits(80), clip=(0.0, 1.0)))
    # A standardized input spans 149 units: eps 0.3 is 0.2 % of it.
    assert not judged("large_eps_above_chance", point("fgsm", 0.3, hits(80), clip=(-124.0, 25.0)))
    assert fired("large_eps_above_chance", point("fgsm", 0.3 * 149, hits(80), clip=(-124.0, 25.0)))
    # L2 on a [0, 255] range: 0.3 * 255 * sqrt(64) is large, a tenth of it is not.
    assert judged("large_eps_above_chance", point("pgd", 0.3 * 255 * 8, hits(80), norm="2", clip=(0.0, 255.0)))
    assert not judged("large_eps_above_chance", point("pgd", 2.4, hits(80), norm="2", clip=(0.0, 255.0)))


def test_a_patch_that_does_not_beat_its_control_is_flagged():
    # 3 folds of 40 clean-correct non-target samples each: 36 taken to the target against
    # the controls' 4, a patch; 5 against 4 is occlusion, no better than a random square.
    beats = point("patch", 0.25, hits(50), norm="patch", target=(36, 40, 4))
    [flag] = judged("patch_not_above_control", beats)
    assert not flag["fired"] and flag["reference_label"] == "control"
    assert (flag["value"], flag["reference"], flag["n_pairs"]) == (0.9, 0.1, 120)
    assert flag["p_adjusted"] == flag["p_value"] < 1e-9  # judged alone, never Holm-adjusted
    [flag] = fired("patch_not_above_control", point("patch", 0.25, hits(50), norm="patch", target=(5, 40, 4)))
    assert flag["detail"].startswith("patch@0.25 takes 0.125 of 120 clean-correct non-target samples to its "
                                     "target, its best control 0.100 (p = ")
    # A large rate on few samples is no evidence (2 of 2 against the controls' 1 of 2: p = 0.25),
    # and a sure but tiny edge is below MIN_MARGIN (1 more of 100 per fold).
    assert fired("patch_not_above_control", point("patch", 0.25, hits(50), norm="patch", target=(2, 2, 1), folds=1))
    assert fired("patch_not_above_control", point("patch", 0.25, hits(50), norm="patch", target=(1, 100, 0)))
    # Folds are pooled, each fold once: fold 0 stored again with another rate counts its first row.
    pooled = point("patch", 0.25, hits(50), norm="patch", target=(36, 40, 4))
    pooled.append(dict(pooled[0], cell_id="again", target_rate=0.0))
    assert judged("patch_not_above_control", pooled)[0]["value"] == 0.9
    # Not judged: rows without a target rate (other attacks, older stores), no denominator.
    assert not judged("patch_not_above_control", point("patch", 0.25, hits(50), norm="patch"),
                      point("fgsm", 0.1, hits(20)))
    assert not judged("patch_not_above_control", point("patch", 0.25, hits(50), norm="patch", target=(0, 0, 0)))


# ---------------------------------------------------------------- points, pooling, pairing

def test_points_differing_in_attack_params_or_sample_count_are_never_merged():
    # The old code grouped by label and eps alone, averaged these two FGSM points to 0.5
    # and judged one comparison that could not fire.
    weak = point("fgsm", 0.1, hits(20), params='{"num_random_init": 0}')
    other = point("fgsm", 0.1, hits(80), params='{"num_random_init": 5}')
    flags = judged("single_step_beats_iterative", weak, other, point("pgd", 0.1, hits(50)))
    assert sorted((f["reference"], f["fired"]) for f in flags) == [(0.2, True), (0.8, False)]
    assert {f["reference_label"] for f in flags} == {"fgsm@0.1 [num_random_init=0]",
                                                     "fgsm@0.1 [num_random_init=5]"}
    few = point("fgsm", 0.1, hits(20, n=40))
    flags = judged("large_eps_above_chance", point("fgsm", 0.3, hits(80)), point("fgsm", 0.3, hits(10, n=40)))
    assert sorted((f["n_samples"], f["n_pairs"]) for f in flags) == [(40, 120), (100, 300)]
    # Different sample counts still compare, on the samples both have.
    [flag] = judged("single_step_beats_iterative", few, point("pgd", 0.1, hits(60)))
    assert (flag["n_pairs"], flag["value"], flag["reference"]) == (FOLDS * 40, 1.0, 0.5)


def test_pairing_finds_a_consistent_difference_the_independent_rule_misses():
    # PGD is right on every sample FGSM is right on, and on 5 more of each 100: 15 pairs,
    # all one way, are overwhelming evidence (p = 2**-15). Taken as independent, 0.50
    # against 0.55 on 300 samples is within twice the standard error (0.081).
    fgsm, pgd = point("fgsm", 0.1, hits(50)), point("pgd", 0.1, hits(55))
    [flag] = judged("single_step_beats_iterative", fgsm, pgd)
    assert flag["fired"] and flag["p_value"] == pytest.approx(2 ** -15)
    assert not old_rule_fires(0.55, 0.50, FOLDS * N, FOLDS * N)
    # Few samples: 3 pairs all one way (p = 1/8) are not enough, whatever the 0.2 effect.
    assert not fired("single_step_beats_iterative", point("fgsm", 0.1, hits(2, n=5)), point("pgd", 0.1, hits(3, n=5)))
    # The same accuracies on samples that disagree 45 to 30 are no evidence either way.
    [flag] = judged("single_step_beats_iterative", fgsm, point("pgd", 0.1, hits(55, offset=40)))
    assert not flag["fired"] and flag["p_value"] > 0.05


def test_folds_are_pooled_and_configurations_kept_apart():
    ternary_fgsm = point("fgsm", 0.1, hits(20), quantizer="ternary", config="t")
    ternary_fgsm[0]["adv_correct"] = hits(50)  # fold 0: 50 right; pooled (50 + 20 + 20) / 300
    flags = judged("single_step_beats_iterative", ternary_fgsm,
                   point("pgd", 0.1, hits(60), quantizer="ternary", config="t"),
                   point("fgsm", 0.1, hits(50), quantizer="fp", config="f"),
                   point("pgd", 0.1, hits(30), quantizer="fp", config="f"))
    by_quantizer = {f["quantizer"]: f for f in flags}
    assert set(by_quantizer) == {"ternary", "fp"} and by_quantizer["ternary"]["config_id"] == "t"
    assert by_quantizer["ternary"]["fired"] and not by_quantizer["fp"]["fired"]
    assert by_quantizer["ternary"]["reference"] == pytest.approx(0.3)


def test_only_samples_both_points_attacked_are_compared():
    fgsm, pgd = point("fgsm", 0.1, hits(20)), point("pgd", 0.1, hits(60))
    for row in pgd:  # PGD's samples are shifted by 50: half of them are FGSM's
        row["sample_index"] = [i + 50 for i in row["sample_index"]]
    [flag] = judged("single_step_beats_iterative", fgsm, pgd)
    # FGSM's samples 50..99 (all wrong) against PGD's first 50 (all right).
    assert (flag["n_pairs"], flag["reference"], flag["value"]) == (FOLDS * 50, 0.0, 1.0)


def test_a_schema_2_table_gives_no_flags_and_no_error():
    old = dict(config_id=None, clip_min=None, clip_max=None)
    rows = [*point("fgsm", 0.1, hits(20), outcomes=False), *point("pgd", 0.1, hits(60), outcomes=False),
            *point("square", 0.3, hits(90), outcomes=False),
            *point("cw_l2", 0.0, hits(90), norm="2", outcomes=False)]  # schema 2: eps 0 was unbounded
    legacy = pa.Table.from_pylist([{**row, **old} for row in rows], schema=store.SCHEMA)
    assert diagnostics.diagnose(legacy).num_rows == 0
    assert diagnostics.diagnose(legacy).schema.equals(FLAG_SCHEMA)
    # Without the new columns at all (an older reader's table), too.
    assert diagnostics.diagnose(legacy.drop_columns([*keys.OUTCOME_COLUMNS, "clip_min", "clip_max"])).num_rows == 0
    assert diagnostics.diagnose(store.SCHEMA.empty_table()).num_rows == 0
    # Mixed with new rows: the new ones are judged, the old ones skipped.
    mixed = pa.concat_tables([legacy, table(point("fgsm", 0.1, hits(20)), point("pgd", 0.1, hits(60)))])
    assert {f["flag"] for f in diagnostics.diagnose(mixed).to_pylist()} >= {"single_step_beats_iterative"}


def test_flags_are_in_the_store_and_queryable(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, [*point("fgsm", 0.1, hits(20)), *point("pgd", 0.1, hits(60))])
    written = diagnostics.write(location)
    on_disk = pq.read_table(tmp_path / store.DIAGNOSTICS_FILE)
    assert same(on_disk, written) and on_disk.num_rows > 0
    queried = query.run(str(tmp_path), "SELECT flag, attack_label FROM diagnostics WHERE fired ORDER BY ALL")
    assert queried.to_pylist() == [{"flag": "single_step_beats_iterative", "attack_label": "pgd"}]


# ---------------------------------------------------------------- false alarms under the null

def flat_curves(configs: int, rng: np.random.Generator, p: float = 0.5, eps=(0.05, 0.1, 0.15, 0.2, 0.25, 0.3)):
    """One FGSM curve per configuration, accuracy p at every eps: each sample is right with
    probability p, independently per point and fold. Built column-wise (fast)."""
    rows = configs * len(eps) * FOLDS
    correct = rng.random((rows, N)) < p
    config = np.repeat(np.arange(configs), len(eps) * FOLDS)
    eps_of = np.tile(np.repeat(eps, FOLDS), configs)
    fold = np.tile(np.arange(FOLDS), configs * len(eps))
    offsets = pa.array(np.arange(rows + 1) * N, pa.int32())
    index = (fold[:, None] * 1000 + np.arange(N)).ravel()
    lists = {"sample_index": pa.ListArray.from_arrays(offsets, pa.array(index)),
             "adv_correct": pa.ListArray.from_arrays(offsets, pa.array(correct.ravel())),
             "clean_correct": pa.ListArray.from_arrays(offsets, pa.array(np.ones(rows * N, bool)))}
    given = {"config_id": pa.array([f"c{c}" for c in config]), "fold": pa.array(fold, pa.int32()),
             "attack": pa.array(["fgsm"] * rows), "attack_label": pa.array(["fgsm"] * rows),
             "norm": pa.array(["inf"] * rows), "eps": pa.array(eps_of),
             "eps_label": pa.array([str(e) for e in eps_of]),
             "attack_params": pa.array(["{}"] * rows), "n_samples": pa.array(np.full(rows, N), pa.int32()),
             "n_classes": pa.array(np.full(rows, 10), pa.int32()), **lists}
    columns = [given.get(f.name, pa.nulls(rows, f.type)) for f in store.SCHEMA]
    return pa.Table.from_arrays(columns, schema=store.SCHEMA), correct.reshape(configs, len(eps), FOLDS * N)


def old_rule_rate(correct: np.ndarray) -> float:
    """The old rule on the same data: the largest rise over any smaller eps, against twice
    its independent standard error."""
    fired = 0
    for curve in correct.mean(axis=2):  # accuracy per eps, pooled over folds
        rise, j, i = max((curve[j] - curve[i], j, i) for j in range(len(curve)) for i in range(j))
        fired += old_rule_fires(curve[j], curve[i], correct.shape[2], correct.shape[2])
    return fired / len(correct)


def test_accuracy_rises_with_eps_false_alarm_rate_on_flat_curves():
    configs = 1000
    started = time.perf_counter()
    rows, correct = flat_curves(configs, np.random.default_rng(20260101))
    flags = diagnostics.diagnose(rows).to_pylist()
    rising = [f for f in flags if f["flag"] == "accuracy_rises_with_eps"]
    assert len(rising) == configs * 15  # every pair of the 6 budgets judged
    rate = len({f["config_id"] for f in rising if f["fired"]}) / configs
    old = old_rule_rate(correct)
    print(f"\nflat curves, {configs} configurations of 6 eps x {FOLDS} folds x {N} samples: E fired in "
          f"{rate:.3f} of them (old rule: {old:.3f}); {time.perf_counter() - started:.1f} s")
    # Holm keeps the family-wise rate at most ALPHA; slack: three binomial standard errors.
    assert rate <= checks.ALPHA + 3 * math.sqrt(checks.ALPHA * (1 - checks.ALPHA) / configs)
    assert old > 0.1  # the rule it replaces, on the same data


# ---------------------------------------------------------------- DuckDB against the reference

ATTACK_NORMS = [("fgsm", "inf"), ("fgsm", "2"), ("pgd", "inf"), ("pgd", "2"), ("square", "inf"), ("cw_l2", "2"),
                ("zoo", "2"), ("boundary", "2"), ("patch", "patch"), ("none", "none")]


def random_rows(rng: np.random.Generator, configs: int = 10) -> list[dict]:
    """Rows that hit every corner the pooling and the checks have: several configurations,
    every attack kind, transfer attacks (some sharing a white-box attack's label), unbounded budgets, namesakes that differ in parameters or sample
    count, a fold stored twice, shifted and repeated sample indices, nulls inside the
    outcome lists, rows without outcomes or clip range, and one unknown attack."""
    rows = []
    for config in range(configs):
        for _ in range(int(rng.integers(6, 16))):
            attack, norm = ATTACK_NORMS[rng.integers(len(ATTACK_NORMS))]
            eps = float(rng.choice([0.0, 0.05, 0.1, 0.3, 0.5, 2.4, math.inf]))
            n = int(rng.choice([8, 12]))
            p_right = float(rng.uniform(0.05, 0.95))
            adv = list(rng.random(n) < p_right)
            source = str(rng.choice(["src-a", "src-b"])) if attack != "none" and rng.random() < 0.2 else None
            target_n = int(rng.choice([0, 5, 40]))
            target = (int(rng.integers(0, target_n + 1)), target_n, int(rng.integers(0, target_n + 1)))
            rows += point(attack, eps, adv, norm=norm, source=source,
                          target=target if attack == "patch" and rng.random() < 0.9 else None,
                          label=f"{attack}<-{source}" if source and rng.random() < 0.5 else None, clean=list(rng.random(n) < 0.9), config=f"c{config}",
                          quantizer=f"q{config}", params=str(rng.choice(["{}", '{"max_iter": 3}'])),
                          clip=None if rng.random() < 0.1 else (0.0, float(rng.choice([1.0, 255.0]))),
                          n_classes=int(rng.choice([2, 10])), folds=int(rng.integers(1, 4)),
                          outcomes=rng.random() > 0.05)
    for row in rows:
        row["cell_id"] = f"{row['cell_id']}-{rng.integers(1 << 30)}"
        if row["sample_index"] is None:
            continue
        shape = rng.random()
        if shape < 0.1:  # other samples
            row["sample_index"] = [i + int(rng.integers(0, 4)) for i in row["sample_index"]]
        elif shape < 0.15:  # a sample index repeated within the row
            row["sample_index"][-1] = row["sample_index"][0]
        elif shape < 0.2:  # an unknown outcome
            row["adv_correct"][int(rng.integers(len(row["adv_correct"])))] = None
        elif shape < 0.22:  # lists of unequal length: not judged
            row["clean_correct"] = row["clean_correct"][:-1]
    twice = [dict(row, cell_id=row["cell_id"] + "-again", adv_correct=list(rng.random(len(row["adv_correct"])) < 0.5),
                  target_rate=None if row["target_rate"] is None else 1 - row["target_rate"])
             for row in rows[::7] if row["sample_index"] is not None]
    strange = [dict(rows[0], attack="deepfool", cell_id="unknown-attack")]
    return rows + twice + strange


@pytest.mark.parametrize("seed", range(6))
def test_duckdb_gives_exactly_the_reference_table(seed):
    rows = random_rows(np.random.default_rng(seed))
    order = np.random.default_rng(seed + 100).permutation(len(rows))
    shuffled = table([rows[i] for i in order])
    reference = reference_diagnostics.diagnose_reference(shuffled)
    assert reference.num_rows > 50 and len(set(reference.column("flag").to_pylist())) == len(checks.CHECKS)
    assert 0 < sum(reference.column("fired").to_pylist()) < reference.num_rows
    assert same(diagnostics.diagnose(shuffled), reference)


def test_the_store_path_gives_exactly_the_reference_table(tmp_path):
    """Fragments scanned by DuckDB (a cell stored twice counts once, the earliest copy)
    give the same table as the reference on the rows ``store.read`` returns."""
    location = store.locate(str(tmp_path))
    rows = random_rows(np.random.default_rng(7))
    for start in range(0, len(rows), 40):
        store.write_rows(location, rows[start:start + 40])
    store.write_rows(location, [dict(row, adv_correct=[not v if v is not None else None for v in row["adv_correct"]])
                                for row in rows[:30] if row["adv_correct"] is not None])  # later copies: ignored
    reference = reference_diagnostics.diagnose_reference(store.read(location).table)
    assert reference.num_rows > 50
    assert same(diagnostics.diagnose_store(location), reference)
    assert same(query.run(str(tmp_path), "SELECT * FROM diagnostics"), reference)


def uniform_rows(rng: np.random.Generator) -> list[dict]:
    """Configurations whose points all hold the same folds and the same samples in the same
    order (counted on bit strings), one where a row holds its samples in another order,
    one where a point lacks a fold, one whose rows all list a sample twice (all three
    counted sample by sample)."""
    rows = {}
    for config in ("u0", "u1", "u2", "u3"):
        for attack, norm in ATTACK_NORMS[:-1]:
            for eps in (0.05, 0.3, math.inf):
                rows[config, attack, eps] = point(
                    attack, eps, list(rng.random(12) < rng.uniform(0.1, 0.9)), norm=norm, config=config,
                    quantizer=config, clean=list(rng.random(12) < 0.9),
                    target=(int(rng.integers(0, 11)), 10, int(rng.integers(0, 4))) if attack == "patch" else None)
    row = rows["u1", "pgd", 0.05][1]  # the same samples and outcomes, listed backwards
    for name in ("sample_index", "clean_correct", "adv_correct"):
        row[name] = row[name][::-1]
    del rows["u2", "fgsm", 0.3][2]
    for (config, *_), point_rows in rows.items():
        for row in point_rows if config == "u3" else []:
            row["sample_index"][-1] = row["sample_index"][0]
    return [row for point_rows in rows.values() for row in point_rows]


def test_the_bit_string_path_gives_exactly_the_reference_table():
    rows = table(uniform_rows(np.random.default_rng(11)))
    reference = reference_diagnostics.diagnose_reference(rows)
    assert len(set(reference.column("config_id").to_pylist())) == 4
    assert len(set(reference.column("flag"))) == len(checks.CHECKS)
    assert 0 < sum(reference.column("fired").to_pylist()) < reference.num_rows
    assert same(diagnostics.diagnose(rows), reference)


def test_configurations_written_in_chunks_give_the_same_table(monkeypatch):
    """The flags are written a few whole configurations at a time (memory): chunks of one
    configuration give exactly the one-chunk table, over uniform and pooled configurations."""
    rows = table(random_rows(np.random.default_rng(3), configs=4) + uniform_rows(np.random.default_rng(4)))
    whole = diagnostics.diagnose(rows)
    assert len(set(whole.column("config_id").to_pylist())) == 8 and whole.num_rows > 100
    monkeypatch.setattr(flags, "_CHUNK_POINTS", 1)
    chunked = diagnostics.diagnose(rows)
    assert chunked.column("detail").num_chunks >= 8  # one chunk per configuration
    assert same(chunked, whole) and same(chunked, reference_diagnostics.diagnose_reference(rows))


def test_a_store_too_big_for_the_tight_limit_is_diagnosed_under_the_callers(tmp_path, monkeypatch):
    """DuckDB first pools under a tight memory limit; out of memory, it runs again under the
    caller's limit and gives the same table."""
    location = store.locate(str(tmp_path))
    store.write_rows(location, random_rows(np.random.default_rng(5), configs=3))
    reference = reference_diagnostics.diagnose_reference(store.read(location).table)
    limits, counts = [], diagnostics._store_counts
    monkeypatch.setattr(diagnostics, "_store_counts", lambda loc, limit: limits.append(limit) or counts(loc, limit))
    monkeypatch.setattr(diagnostics, "_TIGHT_LIMIT", "1KB")
    assert same(diagnostics.diagnose_store(location, "1GB"), reference) and reference.num_rows > 20
    assert limits == ["1KB", "1GB"]


def test_attacks_on_the_deployed_build_are_not_judged():
    """Square on the int8 build leaving less accuracy than PGD on the QKeras model says
    nothing about the model's gradients: the build is another network (and every point
    of it would otherwise be judged against the model's)."""
    on_build = point("square", 0.1, hits(10), label="square@deployed")
    for row in on_build:
        row["target"] = "deployed"
    pgd = point("pgd", 0.1, hits(60))
    assert fired("black_box_beats_white_box", point("square", 0.1, hits(10)), pgd)  # on the model: judged
    assert not diagnostics.diagnose(table(on_build)).num_rows
    assert not judged("black_box_beats_white_box", on_build, pgd)
    rows = table(on_build, pgd, point("fgsm", 0.1, hits(70)))
    assert same(diagnostics.diagnose(rows), reference_diagnostics.diagnose_reference(rows))

"""The derived views of a store's rows, as SQL over ``results`` and the build records
``builds``: ``robust`` (every point's mean and spread across folds, and the worst case over
attacks at each budget, of the QKeras model and of its deployed build: ``WORST_CASES``),
``config_builds`` (what each configuration can ship, per build format), ``fits`` (which
build of which configuration fits which MCU profile: ``FITS``) and ``latency`` (estimated
from MACs and the profiles' cores, clocks and ``latency_calibrations``). ``query.py``
creates them on every connection."""

from __future__ import annotations

from dataclasses import dataclass

from sweeper.keys import CONFIG_COLUMNS, DEPLOYED_TARGET, INT8, MODEL_TARGET, NONE, POINT_COLUMNS

# The fold axis is averaged away; everything else that determines a result stays a key
# (CONFIG_COLUMNS and POINT_COLUMNS), so rows that differ in parameters,
# sample count or code version are never averaged together.
_CONFIG = ", ".join(CONFIG_COLUMNS)
_POINT = ", ".join(POINT_COLUMNS)
_ACCURACIES = """
               len(list_distinct(list(fold)))::INTEGER AS folds, count(*)::INTEGER AS rows,
               CAST(sum(n_samples) AS BIGINT) AS samples,
               avg(clean_acc) AS clean_acc_mean, stddev_samp(clean_acc) AS clean_acc_std,
               avg(adv_acc) AS adv_acc_mean, stddev_samp(adv_acc) AS adv_acc_std,
               var_samp(adv_acc) AS adv_acc_var,
               avg(attack_success_rate) AS success_rate_mean,
               stddev_samp(attack_success_rate) AS success_rate_std,
               avg(test_acc) AS test_acc_mean, stddev_samp(test_acc) AS test_acc_std,
               avg(deployed_clean_acc) AS deployed_clean_acc_mean,
               avg(deployed_adv_acc) AS deployed_adv_acc_mean,
               stddev_samp(deployed_adv_acc) AS deployed_adv_acc_std,
               max(params) AS params, max(flash_kb) AS flash_kb, max(ram_kb) AS ram_kb,
               max(tflite_kb) AS tflite_kb, max(arena_kb) AS arena_kb,
               max(flash_packed_kb) AS flash_packed_kb, max(ram_packed_kb) AS ram_packed_kb,
               nullif(array_to_string(list_sort(list_distinct(list(footprint_source))), '+'), '')
                   AS footprint_source"""
# Worst case over attacks at each budget, the robustness-leaderboard convention: a sample
# counts as robust only if every attack run at that (norm, eps) on it failed. Built from
# the per-sample outcomes of one fold's rows with the same samples, then averaged over
# folds like any other point; its label names the attacks it covers. Two groups, one per
# network the outcomes are of (``WorstCase``): the QKeras model (``worst(...)``: rows that
# attacked the model), and the deployed int8 build (``worst@deployed(...)``: every row's
# deployed_adv_correct, i.e. the build under transfer from the QKeras model's examples,
# and the rows that attacked the build itself, whose outcomes are the build's).
_KEY = [*CONFIG_COLUMNS, "fold", "norm", "eps", "n_samples"]
_SAME = " AND ".join(f"a.{c} IS NOT DISTINCT FROM covered.{c}" for c in _KEY)  # NULL-safe: schema-2 keys
# Only (configuration, fold, norm, eps) groups with at least two attacks make a worst
# case: a cheap first pass on one hash of few columns (config_id, fold, norm, eps,
# n_samples: coarser than the group, and a hash collision only merges groups, so no such
# group is lost; grouping ~1 M rows by one integer is ~5x faster than by the five columns)
# finds where two attack labels meet, and only those rows are grouped exactly and unnested. (DISTINCT aggregates are written with
# list_distinct: the same values, far cheaper in DuckDB.)
_ATTACKED = f"FROM results WHERE attack <> '{NONE}' AND eps > 0"
_COARSE = ["config_id", "fold", "norm", "eps", "n_samples"]
_COARSE_HASH = f"hash({', '.join(_COARSE)})"  # one integer to group on; a collision only widens a group


@dataclass(frozen=True)
class WorstCase:
    """One group of the worst case: whose outcomes it pools, as SQL over ``results``."""

    target: str  # the network the outcomes are of: store's ``target`` values
    label: str  # what the attack_label starts with: worst(a+b)
    rows: str  # which attack rows take part
    ok: str  # a row's per-sample robust outcomes
    clean: str  # a row's per-sample clean outcomes (null entries: unknown, left out)
    clean_acc: str  # a row's clean accuracy
    needs: str  # besides two attack labels, what a group must have (a boolean aggregate)
    deployed: bool  # the deployed_* accuracies are the group's own (else null)


WORST_CASES = (
    WorstCase(MODEL_TARGET, "worst(",
              f"coalesce(target, '{MODEL_TARGET}') = '{MODEL_TARGET}' AND adv_correct IS NOT NULL",
              "adv_correct", "clean_correct", "clean_acc", "true", deployed=False),
    # A model row knows the build's per-sample outcome on its example (deployed_adv_correct)
    # but not its clean one: only the build's own rows say it, and a group needs one.
    WorstCase(DEPLOYED_TARGET, f"worst@{DEPLOYED_TARGET}(", "deployed_adv_correct IS NOT NULL",
              "deployed_adv_correct",
              f"CASE WHEN target = '{DEPLOYED_TARGET}' THEN clean_correct "
              "ELSE list_transform(deployed_adv_correct, lambda x: NULL::BOOLEAN) END",
              "deployed_clean_acc", f"bool_or(target = '{DEPLOYED_TARGET}')", deployed=True),
)


def _worst_case_sql(group: WorstCase) -> str:
    """The worst case of one group (module doc, ``robust``)."""
    deployed = ("any_value(clean_acc) AS deployed_clean_acc, NULL::DOUBLE AS deployed_adv_acc" if group.deployed
                else "NULL::DOUBLE AS deployed_clean_acc, NULL::DOUBLE AS deployed_adv_acc")
    accuracies = _ACCURACIES.replace("fold)", "covered.fold)").replace("(n_samples)", "(covered.n_samples)")
    return f"""
        WITH coarse AS MATERIALIZED (
            SELECT {_COARSE_HASH} AS h {_ATTACKED} AND {group.rows} GROUP BY h
            HAVING min(attack_label) <> max(attack_label) AND {group.needs}),
        candidates AS (
            SELECT a.* FROM (SELECT {', '.join(_KEY)}, attack_label, eps_label, target,
                                    {group.clean_acc} AS clean_acc, test_acc, params,
                                    flash_kb, ram_kb, tflite_kb, arena_kb, flash_packed_kb, ram_packed_kb,
                                    footprint_source, sample_index, {group.ok} AS ok_list,
                                    {group.clean} AS clean_list {_ATTACKED} AND {group.rows}) AS a
            WHERE {_COARSE_HASH} IN (SELECT h FROM coarse)),
        covered AS MATERIALIZED (
            SELECT row_number() OVER () AS gid, * FROM (
                SELECT {_CONFIG}, fold, norm, eps, n_samples, min(eps_label) AS eps_label,
                       array_to_string(list_sort(list_distinct(list(attack_label))), '+') AS covers,
                       len(list_distinct(list(attack_label))) AS attacks, {group.needs} AS needed,
                       any_value(clean_acc) AS clean_acc,
                       any_value(test_acc) AS test_acc, max(params) AS params,
                       max(flash_kb) AS flash_kb, max(ram_kb) AS ram_kb, max(tflite_kb) AS tflite_kb,
                       max(arena_kb) AS arena_kb, max(flash_packed_kb) AS flash_packed_kb,
                       max(ram_packed_kb) AS ram_packed_kb, any_value(footprint_source) AS footprint_source,
                       {deployed}
                FROM candidates GROUP BY {_CONFIG}, fold, norm, eps, n_samples)
            WHERE attacks >= 2 AND needed),
        per_sample AS (
            SELECT gid, sample, bool_and(ok) AS ok, bool_and(clean) AS clean
            FROM (SELECT covered.gid, unnest(a.sample_index) AS sample, unnest(a.ok_list) AS ok,
                         unnest(a.clean_list) AS clean
                  FROM candidates AS a JOIN covered ON {_SAME})
            GROUP BY gid, sample),
        per_fold AS (
            SELECT gid, avg(ok::DOUBLE) AS adv_acc,
                   sum((clean AND NOT ok)::INTEGER) / nullif(sum(clean::INTEGER), 0) AS attack_success_rate
            FROM per_sample GROUP BY gid),
        folds AS (SELECT covered.* EXCLUDE (deployed_adv_acc), per_fold.adv_acc AS adv_acc,
                         per_fold.attack_success_rate,
                         {"per_fold.adv_acc" if group.deployed else "NULL::DOUBLE"} AS deployed_adv_acc
                  FROM covered JOIN per_fold USING (gid))
        SELECT {', '.join('covered.' + c for c in CONFIG_COLUMNS)}, 'worst_case' AS attack,
               '{group.label}' || covers || ')' AS attack_label, covered.norm AS norm, covered.eps AS eps,
               eps_label, '{{"covers": "' || covers || '"}}' AS attack_params,
               covered.n_samples AS n_samples, '{group.target}' AS target, {accuracies}
        FROM folds AS covered
        GROUP BY ALL"""


_WORST_CASE = "\n        UNION ALL BY NAME\n".join(f"SELECT * FROM ({_worst_case_sql(group)})" for group in WORST_CASES)
# Transfer rows: which model crafted the examples (fixed by source_config_id, a key), and
# the transfer rate over the folds where it is defined (NaN: no sample to transfer).
_TRANSFER = """
               any_value(source_model) AS source_model, any_value(source_quantizer) AS source_quantizer,
               avg(CASE WHEN isnan(transfer_rate) THEN NULL ELSE transfer_rate END) AS transfer_rate_mean,
               stddev_samp(CASE WHEN isnan(transfer_rate) THEN NULL ELSE transfer_rate END) AS transfer_rate_std"""
# A targeted patch's score beside its controls' (null on every other point); NaN rates (no
# clean-correct non-target sample in a fold) are left out of the means.
_TARGETS = """
               avg(CASE WHEN isnan(target_rate) THEN NULL ELSE target_rate END) AS target_rate_mean,
               stddev_samp(CASE WHEN isnan(target_rate) THEN NULL ELSE target_rate END) AS target_rate_std,
               avg(CASE WHEN isnan(control_target_rate) THEN NULL ELSE control_target_rate END)
                   AS control_target_rate_mean,
               avg(control_adv_acc) AS control_adv_acc_mean, CAST(sum(target_n) AS BIGINT) AS target_n"""
# What a configuration can ship, per build format (``config_builds``): the int8 build's
# deployed figures from the rows (measured, or estimated where the converter refused:
# footprint_source, as the fit has always judged them), and each sub-byte build from the
# store's build records (``builds``), over the folds: its largest figures, and accepted
# only if every fold of the configuration has an accepted build of it (a refused build
# never fits). MACs come from the records (the same for every build of a job).
_BUILT = f"""
        SELECT config_id, deploy_format, count(DISTINCT fold)::INTEGER AS built_folds,
               (count(DISTINCT fold) FILTER (WHERE accepted))::INTEGER AS accepted_folds,
               max(flatbuffer_kb) AS flatbuffer_kb, max(arena_kb) AS arena_kb, max(flash_kb) AS flash_kb,
               max(ram_kb) AS ram_kb, min(agreement) AS agreement_min,
               CAST(sum(check_samples) AS BIGINT) AS check_samples, max(macs) AS macs,
               nullif(array_to_string(list_sort(list_distinct(list(error) FILTER (WHERE error IS NOT NULL))), '; '),
                      '') AS errors
        FROM builds WHERE config_id IS NOT NULL GROUP BY ALL"""
_CONFIG_BUILDS = f"""
        WITH jobs AS (
            SELECT DISTINCT {_CONFIG}, fold, job_id, test_acc, flash_kb, ram_kb, tflite_kb, arena_kb,
                            footprint_source, mcu_targets FROM results),
        configs AS (
            SELECT {_CONFIG}, count(DISTINCT fold)::INTEGER AS folds,
                   (count(DISTINCT fold) FILTER (WHERE flash_kb IS NOT NULL AND ram_kb IS NOT NULL))::INTEGER AS placed,
                   avg(test_acc) AS test_acc_mean, stddev_samp(test_acc) AS test_acc_std,
                   list_sort(list_distinct(flatten(list(mcu_targets) FILTER (WHERE mcu_targets IS NOT NULL))))
                       AS mcu_targets,
                   max(flash_kb) AS flash_kb, max(ram_kb) AS ram_kb, max(tflite_kb) AS flatbuffer_kb,
                   max(arena_kb) AS arena_kb,
                   nullif(array_to_string(list_sort(list_distinct(list(footprint_source))), '+'), '')
                       AS footprint_source
            FROM jobs GROUP BY ALL),
        built AS ({_BUILT})
        SELECT {', '.join('c.' + col for col in CONFIG_COLUMNS)}, '{INT8}' AS deploy_format,
               c.placed = c.folds AS accepted, c.folds, c.placed AS built_folds, c.placed AS accepted_folds,
               c.footprint_source, c.flash_kb, c.ram_kb, c.flatbuffer_kb, c.arena_kb, b.macs, b.agreement_min,
               b.check_samples, b.errors, c.test_acc_mean, c.test_acc_std, c.mcu_targets
        FROM configs AS c LEFT JOIN built AS b ON b.config_id = c.config_id AND b.deploy_format = '{INT8}'
        UNION ALL BY NAME
        SELECT {', '.join('c.' + col for col in CONFIG_COLUMNS)}, b.deploy_format,
               b.accepted_folds = c.folds AS accepted, c.folds, b.built_folds, b.accepted_folds,
               CASE WHEN b.flash_kb IS NOT NULL THEN 'measured' END AS footprint_source,  -- none: not built
               b.flash_kb, b.ram_kb, b.flatbuffer_kb, b.arena_kb, b.macs,
               b.agreement_min, b.check_samples, b.errors, c.test_acc_mean, c.test_acc_std, c.mcu_targets
        FROM configs AS c JOIN built AS b ON b.config_id = c.config_id AND b.deploy_format <> '{INT8}'"""
# The fit, once: a build fits an MCU when it is accepted and its deployed flash and RAM
# (allowance and margin included) are within the MCU's flash and largest contiguous RAM
# block (a TFLM arena is one block).
FITS = "c.accepted AND c.flash_kb <= m.flash_kb AND c.ram_kb <= m.ram_block_kb"
VIEWS = {  # in creation order: robust reads worst_case, fits and latency read config_builds
    "worst_case": _WORST_CASE,
    "robust": f"""
        SELECT {_CONFIG}, {_POINT}, {_ACCURACIES}, {_TRANSFER}, {_TARGETS}
        FROM results GROUP BY ALL
        UNION ALL BY NAME
        SELECT * FROM worst_case""",
    # Fit is computed here from the footprints and the MCU profiles, never frozen in a row:
    # a corrected profile changes the answer for every stored model. One row per build
    # that fits: a configuration fits an MCU if some build of it does.
    "config_builds": _CONFIG_BUILDS,
    "fits": f"""
        SELECT m.name AS mcu, list_contains(c.mcu_targets, m.name) AS targeted,
               {', '.join('c.' + col for col in CONFIG_COLUMNS)}, c.deploy_format, c.footprint_source,
               c.flash_kb, c.ram_kb, m.flash_kb AS mcu_flash_kb, m.ram_block_kb AS mcu_ram_block_kb,
               c.folds, c.test_acc_mean, c.test_acc_std
        FROM config_builds AS c JOIN mcus AS m ON {FITS}""",
    # An estimate, never a measurement: MACs x the cycles per MAC a published MLPerf Tiny
    # result implies for the MCU's core and a runtime, over the MCU's clock (deploy.latency).
    "latency": f"""
        SELECT {', '.join('c.' + col for col in CONFIG_COLUMNS)}, c.macs, m.name AS mcu,
               list_contains(c.mcu_targets, m.name) AS targeted, m.core, m.clock_mhz, k.runtime,
               k.cycles_per_mac, k.board AS calibration_board,
               c.macs * k.cycles_per_mac / (m.clock_mhz * 1000.0) AS latency_ms_estimate,
               'estimate: ' || k.runtime || ' on ' || m.name || ' (' || m.core || ', ' || printf('%g', m.clock_mhz)
                   || ' MHz), ' || printf('%.2f', k.cycles_per_mac) || ' cycles/MAC from MLPerf Tiny on '
                   || k.board || '; int8 kernels: DECODE and INT4 unpacking not counted' AS assumes
        FROM config_builds AS c JOIN mcus AS m ON true JOIN latency_calibrations AS k ON k.core = m.core
        WHERE c.deploy_format = '{INT8}' AND c.macs IS NOT NULL""",
}

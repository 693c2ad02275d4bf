"""Query: SQL over the store (table `results` and its views), read-only, four output formats."""

from __future__ import annotations

import csv
import io
import json

import pytest

import pyarrow as pa
import pyarrow.parquet as pq

from sweeper import keys, store
from sweeper.analysis import query
from sweeper.errors import UserError
from sweeper.store.fragments import _coerce
from tests.test_store import make_row


@pytest.fixture
def results(tmp_path):
    location = store.locate(str(tmp_path / "r"))
    store.write_rows(location, [make_row("a", quantizer="fp", adv_acc=0.25),
                                make_row("b", quantizer="fp", adv_acc=0.75)])
    store.write_rows(location, [make_row("c", quantizer="int4", adv_acc=0.5,
                                         attack_success_rate=float("nan"))])
    return location.text


def test_sql_over_all_fragments(results):
    table = query.run(results, "SELECT quantizer, avg(adv_acc) AS acc, count(*) AS n "
                               "FROM results GROUP BY ALL ORDER BY ALL")
    assert table.to_pylist() == [{"quantizer": "fp", "acc": 0.5, "n": 2},
                                 {"quantizer": "int4", "acc": 0.5, "n": 1}]


def test_csv_and_json_output(results):
    table = query.run(results, "SELECT cell_id, attack_success_rate, mcu_targets FROM results ORDER BY cell_id")
    rows = list(csv.DictReader(io.StringIO(query.render(table, "csv"))))
    assert [r["cell_id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["mcu_targets"] == "stm32h7"
    records = json.loads(query.render(table, "json"))
    assert records[2]["attack_success_rate"] is None  # NaN is not JSON
    assert records[0]["attack_success_rate"] == pytest.approx(0.44)


@pytest.mark.parametrize("sql", [
    "COPY results TO 'out.csv'",
    "SELECT * FROM read_csv('/etc/hostname')",
    "SET enable_external_access = true",
])
def test_queries_cannot_touch_files_or_settings(results, sql, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match="query failed"):
        query.run(results, sql)
    assert not (tmp_path / "out.csv").exists()


def test_sql_errors_are_one_line(results):
    with pytest.raises(UserError) as caught:
        query.run(results, "SELECT nope FROM results")
    assert "nope" in str(caught.value) and "\n" not in str(caught.value)


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="no sweeper results here"):
        query.run(str(tmp_path), "SELECT 1")


def test_robust_view_averages_folds(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, [make_row(f"f{fold}", fold=fold, adv_acc=acc, test_acc=acc)
                                for fold, acc in enumerate([0.2, 0.4, 0.9])])
    [row] = query.run(str(tmp_path), "SELECT folds, adv_acc_mean, adv_acc_std, adv_acc_var, samples "
                                     "FROM robust").to_pylist()
    assert row["folds"] == 3 and row["samples"] == 60
    assert row["adv_acc_mean"] == pytest.approx(0.5)
    assert row["adv_acc_var"] == pytest.approx(((0.3**2) + (0.1**2) + (0.4**2)) / 2)
    assert row["adv_acc_std"] == pytest.approx(row["adv_acc_var"] ** 0.5)


def test_fits_view_computes_fit_from_the_footprint_and_the_profiles(tmp_path):
    location = store.locate(str(tmp_path))
    clean = dict(attack="none", attack_label="none", norm="none", eps=0.0, mcu_targets=["stm32h7", "nrf52840"])
    store.write_rows(location, [
        make_row("a", quantizer="fp", flash_kb=1500.0, **clean),
        make_row("b", quantizer="int4", flash_kb=200.0, ram_kb=300.0, **clean),
        make_row("c", quantizer="int4", flash_kb=200.0, ram_kb=300.0),  # an attack row: not counted twice
    ])
    rows = query.run(str(tmp_path), "SELECT mcu, quantizer, flash_kb, mcu_flash_kb, folds FROM fits "
                                    "WHERE targeted ORDER BY mcu, quantizer").to_pylist()
    # int4 needs 300 KB of RAM: more than the nRF52840's 256 KB, so only the H7 fits it.
    assert rows == [
        {"mcu": "stm32h7", "quantizer": "fp", "flash_kb": 1500.0, "mcu_flash_kb": 2048.0, "folds": 1},
        {"mcu": "stm32h7", "quantizer": "int4", "flash_kb": 200.0, "mcu_flash_kb": 2048.0, "folds": 1},
    ]
    # The arena is one block: 600 KB of RAM fits neither the H7 (1 MB in all, 512 KB at most
    # in one block) nor the esp32s3 (largest block 416 KB).
    store.write_rows(location, [make_row("d", quantizer="int2", flash_kb=100.0, ram_kb=600.0, **clean)])
    assert not query.run(str(tmp_path), "SELECT * FROM fits WHERE quantizer = 'int2'").num_rows
    # Every profile is judged, targeted or not: the esp32s3 (8 MB flash, 416 KB block) fits both.
    others = query.run(str(tmp_path), "SELECT quantizer FROM fits WHERE mcu = 'esp32s3' AND NOT targeted "
                                      "ORDER BY ALL").column("quantizer").to_pylist()
    assert others == ["fp", "int4"]


def test_views_never_average_rows_that_differ(tmp_path):
    """Rows of one configuration with other attack parameters, another sample count (a
    smoke run into the default store) or from other code are separate points."""
    location = store.locate(str(tmp_path))
    store.write_rows(location, [
        make_row("a", adv_acc=0.2, config_id="c1"),
        make_row("b", adv_acc=0.4, config_id="c1", attack_params='{"max_iter": 9}'),
        make_row("c", adv_acc=0.6, config_id="c1", n_samples=10),
        make_row("d", adv_acc=0.8, config_id="c2"),
    ])
    rows = query.run(str(tmp_path), "SELECT folds, rows, samples, adv_acc_mean FROM robust "
                                    "ORDER BY adv_acc_mean").to_pylist()
    assert [(r["folds"], r["rows"], r["adv_acc_mean"]) for r in rows] == \
        [(1, 1, 0.2), (1, 1, 0.4), (1, 1, 0.6), (1, 1, 0.8)]
    assert [r["samples"] for r in rows] == [20, 20, 10, 20]
    assert all(type(r["samples"]) is int for r in rows)  # an integer, not a DECIMAL


def _outcomes(correct: list[bool], clean: list[bool] | None = None) -> dict:
    clean = clean or [True] * len(correct)
    return dict(sample_index=list(range(len(correct))), adv_correct=correct, clean_correct=clean,
                n_samples=len(correct), adv_acc=sum(correct) / len(correct), clean_acc=sum(clean) / len(clean))


def test_worst_case_over_attacks_counts_a_sample_robust_only_if_every_attack_failed(tmp_path):
    location = store.locate(str(tmp_path))
    rows = []
    for fold, (fgsm, square) in enumerate([([1, 1, 0, 1], [1, 0, 1, 1]), ([1, 1, 1, 1], [0, 1, 1, 1])]):
        common = dict(fold=fold, config_id="c", eps=0.1, eps_label="0.1")
        rows += [make_row(f"f{fold}", attack="fgsm", attack_label="fgsm", **common, **_outcomes(list(map(bool, fgsm)))),
                 make_row(f"s{fold}", attack="square", attack_label="square", **common,
                          **_outcomes(list(map(bool, square)))),
                 # another budget: not mixed into eps 0.1
                 make_row(f"p{fold}", attack="pgd", attack_label="pgd", fold=fold, config_id="c", eps=0.2,
                          eps_label="0.2", **_outcomes([False] * 4))]
    store.write_rows(location, rows)
    [worst] = query.run(str(tmp_path), "SELECT * FROM robust WHERE attack = 'worst_case'").to_pylist()
    assert worst["attack_label"] == "worst(fgsm+square)" and worst["eps"] == 0.1
    # fold 0: samples 0 and 3 survive both (0.5); fold 1: samples 1, 2, 3 (0.75)
    assert worst["folds"] == 2 and worst["adv_acc_mean"] == pytest.approx(0.625)
    assert worst["adv_acc_std"] == pytest.approx((2 * 0.125**2) ** 0.5)
    single = query.run(str(tmp_path), "SELECT adv_acc_mean FROM robust WHERE attack = 'fgsm'").to_pylist()
    assert single == [{"adv_acc_mean": pytest.approx(0.875)}]  # each attack alone is still there


def test_the_stored_worst_case_is_read_only_while_the_rows_it_came_from_are_unchanged(tmp_path):
    location = store.locate(str(tmp_path))
    common = dict(fold=0, config_id="c", eps=0.1, eps_label="0.1")
    store.write_rows(location, [
        make_row("f", attack="fgsm", attack_label="fgsm", **common, **_outcomes([True, True, False, True])),
        make_row("s", attack="square", attack_label="square", **common, **_outcomes([True, False, True, True]))])
    store.compact(location)
    worst = "SELECT adv_acc_mean FROM robust WHERE attack = 'worst_case'"
    computed = query.run(str(tmp_path), worst).to_pylist()
    assert query.write_worst_case(location) == 1
    stored = tmp_path / store.WORST_CASE_FILE
    assert query._current_worst_case(location, store.survey(location)) == str(stored)
    assert query.run(str(tmp_path), worst).to_pylist() == computed == [{"adv_acc_mean": 0.5}]

    # Proof that it is read: a doctored copy with the same tag is what the query returns.
    table = pq.read_table(stored)
    doctored = table.set_column(table.column_names.index("adv_acc_mean"), "adv_acc_mean", pa.array([0.99]))
    pq.write_table(doctored.replace_schema_metadata(table.schema.metadata), stored)
    assert query.run(str(tmp_path), worst).to_pylist() == [{"adv_acc_mean": 0.99}]

    # New rows: the file no longer matches and the view is computed from the rows again.
    store.write_rows(location, [make_row("p", attack="pgd", attack_label="pgd", **common,
                                         **_outcomes([False, True, True, True]))])
    assert query._current_worst_case(location, store.survey(location)) is None
    assert query.run(str(tmp_path), worst).to_pylist() == [{"adv_acc_mean": 0.25}]


def test_parquet_output_and_memory_limit_through_the_cli(results, tmp_path):
    import pyarrow.parquet as pq

    from tests.conftest import cli as sweeper  # in process: DuckDB's limit is the command's own

    out = tmp_path / "q.parquet"
    done = sweeper("query", results, "SELECT cell_id, adv_acc FROM results ORDER BY cell_id",
                   "--format", "parquet", "--output", str(out))
    assert done.returncode == 0, done.stderr
    assert pq.read_table(out).to_pylist() == [{"cell_id": "a", "adv_acc": 0.25}, {"cell_id": "b", "adv_acc": 0.75},
                                              {"cell_id": "c", "adv_acc": 0.5}]
    no_file = sweeper("query", results, "SELECT 1", "--format", "parquet")
    assert no_file.returncode == 2 and "--output: required" in no_file.stderr
    failed = sweeper("query", results, "SELECT nope", "--format", "parquet", "--output", str(tmp_path / "x.parquet"))
    assert failed.returncode == 2 and not (tmp_path / "x.parquet").exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    tiny = sweeper("query", results, "SELECT count(*) FROM range(100000000) t(i) GROUP BY i % 50000000",
                   "--memory-limit", "20MB", "--format", "csv")
    assert tiny.returncode == 2 and "memory" in tiny.stderr.lower()
    bad = sweeper("query", results, "SELECT 1", "--memory-limit", "lots")
    assert bad.returncode == 2 and "--memory-limit" in bad.stderr


def test_the_store_is_scanned_in_place_with_every_guarantee_of_read(tmp_path):
    """DuckDB reads the fragments itself, yet sees exactly what store.read returns: the
    earliest copy of a cell stored twice, nothing of a torn or a foreign file, and a
    schema-2 fragment through its older meanings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.test_store import _foreign_file

    location = store.locate(str(tmp_path))
    good = store.write_rows(location, [make_row("a", adv_acc=0.1), make_row("b", adv_acc=0.2)])
    store.write_rows(location, [make_row("a", adv_acc=0.9), make_row("c", adv_acc=0.3)])  # "a" again: ignored
    torn = tmp_path / "rows" / "part-99999999T999999-torn-00000000.parquet"
    torn.write_bytes(open(good, "rb").read()[:100])
    foreign = _foreign_file(tmp_path)
    old = make_row("z", flash_kb=7.0)
    for column in [*keys.OUTCOME_COLUMNS, "config_id", "clip_min", "clip_max"]:
        del old[column]
    pq.write_table(pa.Table.from_pylist([_coerce(old)]).replace_schema_metadata(
        {"sweeper_schema_version": "2"}), tmp_path / "rows" / "part-00000000T000000-v2-00000000.parquet")

    columns = ["cell_id", "adv_acc", "flash_kb", "flash_packed_kb", "sample_index"]
    expected = store.read(location, columns).table.sort_by("cell_id")
    assert expected.column("cell_id").to_pylist() == ["a", "b", "c", "z"]
    got = query.run(str(tmp_path), f"SELECT {', '.join(columns)} FROM results ORDER BY cell_id")
    assert got.to_pylist() == expected.to_pylist()
    assert got.to_pylist()[0]["adv_acc"] == 0.1 and got.to_pylist()[3]["flash_packed_kb"] == 7.0
    with pytest.raises(UserError, match="query failed"):  # only the store's own fragments are readable
        query.run(str(tmp_path), f"SELECT * FROM read_parquet('{foreign}')")


def test_a_stored_worst_case_older_than_the_defense_columns_is_computed_again(tmp_path):
    outcomes = dict(config_id="cfg", sample_index=[1, 2], clean_correct=[True, True], adv_pred=[1, 1],
                    pert_linf=[0.1, 0.1], pert_l2=[0.1, 0.1], pert_l1=[0.1, 0.1])
    location = store.locate(str(tmp_path))
    store.write_rows(location, [make_row("a", attack="fgsm", attack_label="fgsm", adv_correct=[True, True], **outcomes),
                                make_row("b", attack="pgd", attack_label="pgd", adv_correct=[True, False], **outcomes)])
    assert query.write_worst_case(location) == 1
    path = location.sub(store.WORST_CASE_FILE)
    stored = pq.read_table(path)  # as a sweeper without defenses wrote it, same row files
    pq.write_table(stored.drop_columns(["defense", "defense_label", "defense_params"])
                   .replace_schema_metadata(stored.schema.metadata), path)
    table = query.run(str(tmp_path), "SELECT attack_label, defense FROM robust ORDER BY attack_label")
    assert table.to_pylist()[-1] == {"attack_label": "worst(fgsm+pgd)", "defense": "none"}


def _deployed_rows() -> list[dict]:
    """One fold at L-inf 0.1: fgsm and pgd on the QKeras model (their deployed_adv_correct:
    the transfer to the build), square on the build itself (target deployed, whose outcomes
    are the build's: it gets sample 3 wrong unperturbed), and fgsm alone at 0.2."""
    common = dict(fold=0, config_id="c", eps=0.1, eps_label="0.1", deployed_clean_acc=0.75)
    build_clean = [True, True, True, False]
    return [
        make_row("f", attack="fgsm", attack_label="fgsm", **common, **_outcomes([True, True, False, True]),
                 deployed_adv_correct=[True, False, True, False], deployed_adv_acc=0.5),
        make_row("p", attack="pgd", attack_label="pgd", **common, **_outcomes([True, False, False, True]),
                 deployed_adv_correct=[True, True, True, False], deployed_adv_acc=0.75),
        make_row("s", attack="square", attack_label="square@deployed", target="deployed", **common,
                 **_outcomes([True, True, False, False], build_clean),
                 deployed_adv_correct=[True, True, False, False], deployed_adv_acc=0.5),
        make_row("g", attack="fgsm", attack_label="fgsm", **{**common, "eps": 0.2, "eps_label": "0.2"},
                 **_outcomes([False] * 4), deployed_adv_correct=[True, False, False, False])]


def test_the_deployed_worst_case_pools_the_transfer_and_the_attacks_on_the_build(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, _deployed_rows())
    sql = "SELECT * FROM robust WHERE attack = 'worst_case' ORDER BY target"
    deployed, model = query.run(str(tmp_path), sql).to_pylist()
    # The model's worst case leaves the build's own rows out: samples 0 and 3 survive fgsm and pgd.
    assert (model["attack_label"], model["target"], model["adv_acc_mean"]) == ("worst(fgsm+pgd)", "model", 0.5)
    assert model["deployed_adv_acc_mean"] is None and model["clean_acc_mean"] == 1.0
    # The build's: per sample, right on every example (fgsm's and pgd's transferred, square's
    # on the build): only sample 0.
    assert deployed["attack_label"] == "worst@deployed(fgsm+pgd+square@deployed)"
    assert deployed["target"] == "deployed" and deployed["eps"] == 0.1
    assert deployed["adv_acc_mean"] == deployed["deployed_adv_acc_mean"] == 0.25
    assert deployed["clean_acc_mean"] == deployed["deployed_clean_acc_mean"] == 0.75
    # success rate: of the 3 samples the build gets right unperturbed, 2 were fooled
    assert deployed["success_rate_mean"] == pytest.approx(2 / 3)
    # eps 0.2 has no attack on the build: no deployed worst case there; the points stay apart.
    assert query.run(str(tmp_path), "SELECT count(*) AS n FROM robust WHERE eps = 0.2").to_pylist() == [{"n": 1}]
    points = query.run(str(tmp_path), "SELECT attack_label, target FROM robust WHERE attack <> 'worst_case' "
                                      "ORDER BY ALL").to_pylist()
    assert points == [{"attack_label": "fgsm", "target": "model"}] * 2 + [
        {"attack_label": "pgd", "target": "model"}, {"attack_label": "square@deployed", "target": "deployed"}]


def test_a_stored_worst_case_without_the_deployed_group_is_computed_again(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, _deployed_rows())
    assert query.write_worst_case(location) == 2
    path = location.sub(store.WORST_CASE_FILE)
    stored = pq.read_table(path)
    model_only = stored.filter(pa.compute.equal(stored.column("target"), "model")).drop_columns(["target"])
    pq.write_table(model_only.replace_schema_metadata(stored.schema.metadata), path)  # as an older sweeper wrote it
    labels = query.run(str(tmp_path), "SELECT attack_label FROM worst_case ORDER BY ALL").to_pylist()
    assert labels == [{"attack_label": "worst(fgsm+pgd)"}, {"attack_label": "worst@deployed(fgsm+pgd+square@deployed)"}]

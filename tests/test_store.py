"""Result store: schema, atomic fragments, reading around damage, done cells, provenance,
compaction, and other tools reading the same rows."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeper import keys, store
from sweeper.store.fragments import _coerce
from tests.conftest import ROOT


def make_row(cell_id: str, **overrides) -> dict:
    row = {name: None for name, _, _ in store.COLUMNS}
    row.update(cell_id=cell_id, job_id="j1", launch_id="", grid="g", dataset="digits", n_classes=10,
               n_features=64, model="small_cnn",
               quantizer="int4", fold=0, k=3, seed=0, attack="fgsm", attack_label="fgsm",
               norm="inf", eps=0.1, eps_label="0.1", attack_params="{}", n_samples=20,
               clean_acc=0.9, adv_acc=0.5, attack_success_rate=0.44, test_acc=0.91, params=100,
               flash_kb=1.5, ram_kb=0.5, mcu_targets=["stm32h7"],
               model_cached=False, train_s=1.0, attack_s=0.1,
               finished_at=datetime.now(timezone.utc).isoformat(), host="h")
    row.update(overrides)
    return row


def test_rows_round_trip_with_the_fixed_schema(tmp_path):
    location = store.locate(str(tmp_path / "r"))
    path = store.write_rows(location, [make_row("a"), make_row("b", eps_label="8/255")], tag="j1")
    assert path.endswith(".parquet") and path.startswith(f"{tmp_path}/r/rows/part-")
    table = store.read(location).table
    assert table.schema.equals(store.SCHEMA, check_metadata=False)
    assert table.column("cell_id").to_pylist() == ["a", "b"]
    assert table.column("eps_label").to_pylist() == ["0.1", "8/255"]
    assert table.column("mcu_targets").to_pylist() == [["stm32h7"], ["stm32h7"]]
    assert table.column("finished_at").type.tz == "UTC"
    metadata = pq.read_schema(path).metadata
    assert metadata[b"sweeper_schema_version"] == str(store.SCHEMA_VERSION).encode()


def test_rows_missing_a_column_are_refused(tmp_path):
    row = make_row("a")
    del row["adv_acc"]
    with pytest.raises(ValueError, match="adv_acc"):
        store.write_rows(store.locate(str(tmp_path)), [row])
    assert store.fragments(store.locate(str(tmp_path))) == []


def test_each_write_adds_a_fragment_and_leaves_no_temporary_file(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, [make_row("a")])
    store.write_rows(location, [make_row("b"), make_row("c")])
    assert store.write_rows(location, []) is None
    assert len(store.fragments(location)) == 2
    assert not list((tmp_path / ".staging").iterdir())
    assert store.done_cell_ids(location) == {"a", "b", "c"}


def test_a_damaged_fragment_is_reported_and_the_rest_still_read(tmp_path):
    location = store.locate(str(tmp_path))
    good = store.write_rows(location, [make_row("a")])
    torn = tmp_path / "rows" / "part-99999999T999999-torn-00000000.parquet"
    torn.write_bytes(open(good, "rb").read()[:100])  # a write cut short
    result = store.read(location)
    assert result.table.column("cell_id").to_pylist() == ["a"]
    assert result.damaged == (str(torn),)


def test_empty_or_missing_store(tmp_path):
    location = store.locate(str(tmp_path / "absent"))
    assert store.read(location).table.num_rows == 0
    assert store.done_cell_ids(location) == set()
    with pytest.raises(Exception, match="no sweeper results here"):
        store.require_results(location)


def test_uri_locations(tmp_path):
    location = store.locate(f"file://{tmp_path}/r")
    store.write_rows(location, [make_row("a")])
    assert store.done_cell_ids(store.locate(str(tmp_path / "r"))) == {"a"}


def test_a_cell_stored_twice_is_read_once_and_reported(tmp_path):
    location = store.locate(str(tmp_path))
    first = store.write_rows(location, [make_row("a", adv_acc=0.1), make_row("b")])
    second = store.write_rows(location, [make_row("a", adv_acc=0.9)])
    result = store.read(location)
    assert sorted(result.table.column("cell_id").to_pylist()) == ["a", "b"]
    assert result.duplicates == 1
    assert store.read(location, ["cell_id", "adv_acc"]).table.to_pylist()[0] == {"cell_id": "a", "adv_acc": 0.1}
    report = store.check(location)
    assert report.duplicates == {"a": tuple(sorted([first, second]))}
    assert not report.healthy and report.rows == 3 and report.fragments == 2


def test_check_and_set_aside_damaged_fragments(tmp_path):
    location = store.locate(str(tmp_path))
    good = store.write_rows(location, [make_row("a")])
    torn = tmp_path / "rows" / "part-99999999T999999-torn-00000000.parquet"
    torn.write_bytes(open(good, "rb").read()[:200])
    (tmp_path / ".staging" / "part-x.parquet").write_bytes(b"half")
    report = store.check(location)
    assert report.damaged == (str(torn),) and not report.healthy
    assert report.temporaries == (str(tmp_path / ".staging" / "part-x.parquet"),)
    moved = store.set_aside(location, report.damaged)
    assert moved == [str(tmp_path / "damaged" / torn.name)]
    assert (tmp_path / "damaged" / torn.name).read_bytes() == open(good, "rb").read()[:200]
    after = store.check(location)
    assert after.healthy and after.set_aside == (moved[0],)
    assert store.done_cell_ids(location) == {"a"}


# ---------------------------------------------------------------- provenance and compaction

def _launch(text: str = "name: g\n", overrides=("train.epochs=1",)):
    from sweeper.plan import grid

    spec = grid.Grid.model_validate({"name": "g", "datasets": ["digits"], "models": ["small_cnn"],
                                     "quantizers": ["fp"], "attacks": [{"name": "fgsm", "eps": [0.1]}]})
    return store.new_launch(spec, "grids/g.yaml", text.encode(), overrides)


def test_every_fragment_records_its_launch(tmp_path):
    import hashlib

    location = store.locate(str(tmp_path))
    launch = _launch("name: g  # the grid file\n")
    path = store.write_rows(location, [make_row("a", launch_id=launch.launch_id)], launch=launch)
    [record] = store.launches(location)
    assert record["launch_id"] == launch.launch_id
    assert record["grid_text"] == "name: g  # the grid file\n"
    assert record["grid_sha256"] == hashlib.sha256(b"name: g  # the grid file\n").hexdigest()
    assert record["overrides"] == ["train.epochs=1"] and record["grid_file"] == "grids/g.yaml"
    assert '"name":"g"' in record["grid_resolved"]
    assert set(record["versions"]) >= {"sweeper", "tensorflow", "qkeras", "art", "ray", "python", "sweeper_commit"}
    if (ROOT / ".git").exists():  # run from a checkout: the commit is found wherever the module lives
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", record["versions"]["sweeper_commit"])
    assert record["started_at"].endswith("+00:00")
    assert pq.read_schema(path).metadata[b"sweeper_schema_version"] == str(store.SCHEMA_VERSION).encode()


def test_compaction_merges_dedupes_sorts_and_keeps_every_launch(tmp_path):
    location = store.locate(str(tmp_path))
    first, second = _launch("a"), _launch("b")
    store.write_rows(location, [make_row("b", quantizer="int4"), make_row("a", quantizer="fp")], launch=first)
    store.write_rows(location, [make_row("a", quantizer="fp", adv_acc=0.9), make_row("c", quantizer="int8")],
                     launch=second)
    before = store.read(location).table

    report = store.compact(location)
    assert (report.before, report.after, report.rows, report.duplicates) == (2, 1, 3, 1)
    [path] = store.fragments(location)
    assert "-compacted-" in path and path.startswith(f"{tmp_path}/rows/")
    after = store.read(location).table
    assert after.column("quantizer").to_pylist() == ["fp", "int4", "int8"]  # sorted
    assert sorted(after.to_pylist(), key=lambda r: r["cell_id"]) == \
        sorted(before.to_pylist(), key=lambda r: r["cell_id"])  # the first stored row of "a" kept
    assert {r["launch_id"] for r in store.launches(location)} == {first.launch_id, second.launch_id}
    assert store.check(location).healthy

    again = store.compact(location)  # nothing left to do
    assert (again.before, again.after, again.rows) == (1, 1, 3) and store.fragments(location) == [path]


def test_files_of_one_compaction_are_known_unique_and_not_rewritten(tmp_path):
    from sweeper.analysis import query

    location = store.locate(str(tmp_path))
    store.write_rows(location, [make_row("a"), make_row("b")], launch=_launch("a"))
    store.write_rows(location, [make_row("a", adv_acc=0.9), make_row("c")], launch=_launch("b"))
    assert not store.survey(location).one_compaction  # "a" is stored twice

    report = store.compact(location, max_rows_per_file=2)
    assert (report.after, report.rows) == (2, 3)
    found = store.survey(location)
    assert len({f.compaction for f in found.fragments}) == 1 and found.fragments[0].compaction
    assert found.one_compaction  # the query skips its duplicate check
    files = sorted(store.fragments(location))
    assert store.compact(location).after == 2 and sorted(store.fragments(location)) == files  # a no-op

    store.write_rows(location, [make_row("a", adv_acc=0.5)], launch=_launch("c"))  # a new fragment
    assert not store.survey(location).one_compaction
    assert query.run(str(tmp_path), "SELECT count(*) AS n FROM results").column("n").to_pylist() == [3]


def test_compaction_sets_damaged_fragments_aside_and_moves_legacy_ones(tmp_path):
    location = store.locate(str(tmp_path))
    good = store.write_rows(location, [make_row("a")])
    torn = tmp_path / "rows" / "part-99999999T999999-torn-00000000.parquet"
    torn.write_bytes(open(good, "rb").read()[:200])
    legacy = tmp_path / "part-00000000T000000-old-00000000.parquet"  # schema 1 layout
    old = make_row("z", fits_mcus=["stm32h7"])  # a column schema 3 dropped
    for column in ("launch_id", "n_classes", "n_features", *keys.OUTCOME_COLUMNS, "config_id"):
        del old[column]
    old_table = pa.Table.from_pylist([_coerce(old)])
    pq.write_table(old_table.replace_schema_metadata({"sweeper_schema_version": "1"}), legacy)

    report = store.compact(location)
    assert report.damaged == (str(torn),) and report.rows == 2
    assert (tmp_path / "damaged" / torn.name).exists() and not legacy.exists()
    rows = {r["cell_id"]: r for r in store.read(location).table.to_pylist()}
    assert set(rows) == {"a", "z"} and rows["z"]["n_classes"] is None


def _bools(values) -> tuple:
    return () if values is None else tuple(bool(v) for v in values)  # list, numpy array or polars Series


def test_pyarrow_pandas_polars_and_duckdb_read_the_same_rows(tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as ds

    location = store.locate(str(tmp_path))
    store.write_rows(location, [make_row(c, adv_acc=i / 10, eps_label=f"{i}/255") for i, c in enumerate("abc")])
    store.write_rows(location, [make_row("d", mcu_targets=[], adv_acc=float("nan"),
                                         sample_index=[3, 1], adv_correct=[True, False])])
    store.compact(location)
    rows = tmp_path / "rows"

    def key(records):
        return sorted((r["cell_id"], r["eps_label"], None if r["adv_acc"] != r["adv_acc"] else r["adv_acc"],
                       tuple(r["mcu_targets"]), r["n_classes"], _bools(r["adv_correct"])) for r in records)

    expected = key(store.read(location).table.to_pylist())
    assert len(expected) == 4
    assert key(ds.dataset(rows, format="parquet").to_table().to_pylist()) == expected
    assert key(pd.read_parquet(rows).to_dict("records")) == expected
    assert key(pl.read_parquet(f"{rows}/*.parquet").to_dicts()) == expected
    assert key(duckdb.sql(f"SELECT * FROM read_parquet('{rows}/*.parquet')").fetch_arrow_table()
               .to_pylist()) == expected


# ---------------------------------------------------------------- what is not a fragment

def _foreign_file(folder, name="part-0.parquet"):
    """A Parquet file some other tool dropped among the fragments (no sweeper footer)."""
    path = folder / "rows" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"cell_id": ["x", "y"], "something": [1, 2]}), path)
    return path


def test_a_foreign_parquet_file_is_never_read_or_deleted(tmp_path):
    location = store.locate(str(tmp_path))
    store.write_rows(location, [make_row("a")])
    foreign = _foreign_file(tmp_path)
    result = store.read(location)
    assert result.table.column("cell_id").to_pylist() == ["a"]  # not two all-null rows "x", "y"
    assert result.foreign == (str(foreign),) and not result.damaged
    report = store.check(location)
    assert report.foreign == (str(foreign),) and report.healthy
    compacted = store.compact(location)
    assert compacted.rows == 1 and foreign.exists()  # compaction deletes only what it read
    assert store.launches(location) == []  # (a launch-less fragment) and nothing from the foreign file
    assert store.done_cell_ids(location) == {"a"}


def test_check_reports_points_with_more_rows_than_folds_and_mixed_models(tmp_path):
    location = store.locate(str(tmp_path))
    # Two rows of fold 0 that share every key a view groups by: a store that no longer
    # means one thing per row (e.g. rows written by hand, or an older sweeper).
    store.write_rows(location, [make_row("a", weights_sha256="w1"), make_row("b", weights_sha256="w2")])
    report = store.check(location)
    assert not report.healthy
    assert report.overfull == ("digits/small_cnn/int4 fgsm@0.1: 2 rows for 1 folds",)
    assert report.mixed_models == ("job j1: rows from 2 different trained models",)


def test_schema_2_rows_read_with_nulls_for_the_new_columns(tmp_path):
    location = store.locate(str(tmp_path))
    old = make_row("z", fits_mcus=["stm32h7"])
    for column in [*keys.OUTCOME_COLUMNS, "config_id", "clip_min", "clip_max", "weights_sha256"]:
        del old[column]
    path = tmp_path / "rows" / "part-00000000T000000-v2-00000000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_coerce(old)]).replace_schema_metadata(
        {"sweeper_schema_version": "2"}), path)
    [row] = store.read(location).table.to_pylist()
    assert row["cell_id"] == "z" and row["adv_correct"] is None and row["clip_max"] is None
    assert "fits_mcus" not in row
    # flash_kb/ram_kb meant packed weights and unfused liveness then: never read as the
    # deployed figures of today; the packed flash keeps its meaning under its new name.
    assert (row["flash_packed_kb"], row["flash_kb"], row["ram_kb"]) == (1.5, None, None)
    assert store.read(location, ["flash_kb", "flash_packed_kb"]).table.to_pylist() == \
        [{"flash_kb": None, "flash_packed_kb": 1.5}]


def test_survey_sorts_fragments_from_their_footers(tmp_path):
    location = store.locate(str(tmp_path))
    good = store.write_rows(location, [make_row("a"), make_row("b")])
    torn = tmp_path / "rows" / "part-99999999T999999-torn-00000000.parquet"
    torn.write_bytes(open(good, "rb").read()[:100])
    foreign = _foreign_file(tmp_path)
    found = store.survey(location)
    [fragment] = found.fragments
    assert (fragment.path, fragment.version, fragment.rows) == (good, store.SCHEMA_VERSION, 2)
    assert set(fragment.columns) == set(store.SCHEMA.names)
    assert found.damaged == (str(torn),) and found.foreign == (str(foreign),)


def test_projection_reads_older_schemas_as_read_does():
    current = store.projection(["cell_id", "flash_kb"], 3, ["cell_id", "flash_kb", "flash_packed_kb"])
    assert current == ['CAST("cell_id" AS VARCHAR) AS "cell_id"', 'CAST("flash_kb" AS DOUBLE) AS "flash_kb"',
                       'CAST(NULL AS DOUBLE) AS "flash_packed_kb"']
    older = store.projection(["cell_id", "flash_kb", "ram_kb"], 2, ["flash_kb", "ram_kb", "flash_packed_kb"])
    assert older == ['CAST(NULL AS DOUBLE) AS "flash_kb"', 'CAST(NULL AS DOUBLE) AS "ram_kb"',
                     'CAST("flash_kb" AS DOUBLE) AS "flash_packed_kb"']


def test_rows_older_than_defenses_read_as_trained_without_one(tmp_path):
    from sweeper.analysis import query

    location = store.locate(str(tmp_path))
    old = make_row("z")
    for column in ("defense", "defense_label", "defense_params", "defense_reg"):
        del old[column]
    path = tmp_path / "rows" / "part-00000000T000000-v3-00000000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([_coerce(old)]).replace_schema_metadata(
        {"sweeper_schema_version": "3"}), path)
    store.write_rows(location, [make_row("y", defense="jr", defense_label="jr",
                                         defense_params='{"lambda": 0.01, "projections": 1}', defense_reg=9.5)])
    expected = [("y", "jr", "jr", 9.5), ("z", "none", "none", None)]
    rows = sorted(store.read(location).table.to_pylist(), key=lambda r: r["cell_id"])
    assert [(r["cell_id"], r["defense"], r["defense_label"], r["defense_reg"]) for r in rows] == expected
    table = query.run(str(tmp_path), "SELECT cell_id, defense, defense_label, defense_reg FROM results ORDER BY cell_id")
    assert [tuple(r.values()) for r in table.to_pylist()] == expected

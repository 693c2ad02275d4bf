"""Result store: schema, atomic fragments, reading around damage, done cells."""

from __future__ import annotations

from datetime import datetime, timezone

import pyarrow.parquet as pq
import pytest

from sweeper import store


def make_row(cell_id: str, **overrides) -> dict:
    row = {name: None for name, _, _ in store.COLUMNS}
    row.update(cell_id=cell_id, job_id="j1", grid="g", dataset="digits", model="small_cnn",
               quantizer="int4", fold=0, k=3, seed=0, attack="fgsm", attack_label="fgsm",
               norm="inf", eps=0.1, eps_label="0.1", attack_params="{}", n_samples=20,
               clean_acc=0.9, adv_acc=0.5, attack_success_rate=0.44, test_acc=0.91, params=100,
               flash_kb=1.5, ram_kb=0.5, mcu_targets=["stm32h7"], fits_mcus=["stm32h7"],
               model_cached=False, train_s=1.0, attack_s=0.1,
               finished_at=datetime.now(timezone.utc).isoformat(), host="h")
    row.update(overrides)
    return row


def test_rows_round_trip_with_the_fixed_schema(tmp_path):
    location = store.locate(str(tmp_path / "r"))
    path = store.write_rows(location, [make_row("a"), make_row("b", eps_label="8/255")], tag="j1")
    assert path.endswith(".parquet") and "/part-" in path
    table = store.read(location).table
    assert table.schema.equals(store.SCHEMA, check_metadata=False)
    assert table.column("cell_id").to_pylist() == ["a", "b"]
    assert table.column("eps_label").to_pylist() == ["0.1", "8/255"]
    assert table.column("fits_mcus").to_pylist() == [["stm32h7"], ["stm32h7"]]
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
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    assert store.done_cell_ids(location) == {"a", "b", "c"}


def test_a_damaged_fragment_is_reported_and_the_rest_still_read(tmp_path):
    location = store.locate(str(tmp_path))
    good = store.write_rows(location, [make_row("a")])
    torn = tmp_path / "part-99999999T999999-torn-00000000.parquet"
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
    torn = tmp_path / "part-99999999T999999-torn-00000000.parquet"
    torn.write_bytes(open(good, "rb").read()[:200])
    (tmp_path / ".tmp-part-x.parquet").write_bytes(b"half")
    report = store.check(location)
    assert report.damaged == (str(torn),) and not report.healthy
    assert report.temporaries == (str(tmp_path / ".tmp-part-x.parquet"),)
    moved = store.set_aside(location, report.damaged)
    assert moved == [str(tmp_path / f"damaged-{torn.name}")]
    assert (tmp_path / f"damaged-{torn.name}").read_bytes() == open(good, "rb").read()[:200]
    after = store.check(location)
    assert after.healthy and after.set_aside == (moved[0],)
    assert store.done_cell_ids(location) == {"a"}

"""Query: SQL over the store as table `results`, read-only, three output formats."""

from __future__ import annotations

import csv
import io
import json

import pytest

from sweeper import query, store
from sweeper.errors import UserError
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
    table = query.run(results, "SELECT cell_id, attack_success_rate, fits_mcus FROM results ORDER BY cell_id")
    rows = list(csv.DictReader(io.StringIO(query.render(table, "csv"))))
    assert [r["cell_id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["fits_mcus"] == "stm32h7"
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

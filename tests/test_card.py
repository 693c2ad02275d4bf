"""Results cards (sweeper.analysis.card): every card of a small store valid against the
shipped JSON Schema, its numbers equal to direct queries, its worst case no higher than any
attack it covers, and ``sweeper card``'s output rules (stdout, --out, --force, never inside
the store)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from sweeper import store
from sweeper.analysis import card, query
from sweeper.cli import app
from tests.test_report import _rows

jsonschema = pytest.importorskip("jsonschema")

# Per quantizer: the zero-gradient shares of its three folds' models (AutoAttack's check)
ZERO_GRAD = {"fp": (0.0, 0.0, 0.0), "int4": (0.02, 0.05, 0.0)}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> str:
    rows = [{**row, "zero_grad_share": ZERO_GRAD[row["quantizer"]][row["fold"]], "output_is_simplex": False,
             "randomized": row["quantizer"] == "int4" and row["fold"] == 1, "sweeper_version": "0.1.0",
             "tensorflow_version": "2.21.0"} for row in _rows()]
    location = store.locate(str(tmp_path_factory.mktemp("card") / "results"))
    store.write_rows(location, rows)
    return location.text


@pytest.fixture(scope="module")
def cards(results) -> dict[str, dict]:
    found = card.cards(results)
    jsonschema.Draft202012Validator(card.schema()).validate(found)
    return {c["configuration"]["quantizer"]: c for c in found}


def test_the_schema_is_valid_and_refuses_a_broken_card(cards):
    validator = jsonschema.Draft202012Validator(card.schema())
    validator.check_schema(card.schema())
    broken = json.loads(json.dumps(cards["int4"]))
    broken["threat_models"][0]["attacks"][0]["robust_accuracy"] = 1.5  # not a share
    assert not validator.is_valid([broken])
    del broken["n_samples"]
    assert any("n_samples" in e.message for e in validator.iter_errors([broken]))


def test_cards_match_direct_queries(results, cards):
    assert set(cards) == {"fp", "int4"}
    direct = {(r["quantizer"], r["attack"], r["eps"]): r for r in query.run(
        results, "SELECT quantizer, attack, eps, avg(adv_acc) AS m, stddev_samp(adv_acc) AS s, count(*) AS folds, "
                 "sum(n_samples) AS samples FROM results GROUP BY ALL").to_pylist()}
    for quantizer, found in cards.items():
        assert found["n_samples"] == 100 and found["folds"] == 3
        clean = direct[quantizer, "none", 0.0]
        assert found["clean"]["accuracy"] == pytest.approx(clean["m"]) and found["clean"]["samples"] == 300
        threats = {(t["norm"], t["eps"]): t for t in found["threat_models"]}
        assert set(threats) == {("inf", 0.1), ("inf", 0.2)}
        for (norm, eps), threat in threats.items():
            for attack in threat["attacks"]:
                d = direct[quantizer, attack["attack"], eps]
                assert attack["robust_accuracy"] == pytest.approx(d["m"]) and attack["std"] == pytest.approx(d["s"])
                assert (attack["folds"], attack["samples"]) == (d["folds"], d["samples"])
    int4 = {(t["norm"], t["eps"]): t for t in cards["int4"]["threat_models"]}
    worst = int4["inf", 0.1]["worst_case"]
    # per sample, robust only if fgsm and pgd both failed: here fgsm's 0.10 (test_report's rows)
    assert worst["attacks"] == ["fgsm", "pgd"] and worst["robust_accuracy"] == pytest.approx(0.10)
    assert all(worst["robust_accuracy"] <= a["robust_accuracy"] for a in int4["inf", 0.1]["attacks"])
    assert int4["inf", 0.2]["worst_case"] is None  # one attack at 0.2: no worst case over attacks
    assert int4["inf", 0.1]["deployed_worst_case"] is None  # no attack on the build itself
    pgd = next(a for a in int4["inf", 0.1]["attacks"] if a["attack"] == "pgd")
    assert pgd["flags"] == ["single_step_beats_iterative"] and pgd["deployed_robust_accuracy"] == pytest.approx(0.72)


def test_cards_carry_footprint_fit_sanity_and_versions(cards):
    fp, int4 = cards["fp"], cards["int4"]
    assert fp["footprint"]["int8"]["flash_kb"] == 1500.0 and int4["footprint"]["packed"]["flash_kb"] == 1.25
    # no build records in this store: the int8 build its rows measured is its one build
    [only] = fp["footprint"]["builds"]
    assert (only["deploy_format"], only["accepted"], only["flash_kb"]) == ("int8", True, 1500.0)
    fits = {m["mcu"]: m for m in fp["mcu_fit"]}
    # 1500 KB: within the H7's 2048 KB flash, not the nRF52840's 1024; the grid named both
    assert fits["stm32h7"] == {"mcu": "stm32h7", "fits": True, "targeted": True, "formats": ["int8"]}
    assert fits["nrf52840"] == {"mcu": "nrf52840", "fits": False, "targeted": True, "formats": []}
    assert fits["esp32s3"]["targeted"] is False
    # pooled over the three models: 2 + 5 + 0 of 300 attacked samples, as the report's table
    assert int4["sanity"] == {"models": 3, "zero_grad_samples": 7, "samples": 300, "zero_grad_share": 7 / 300,
                              "output_is_simplex": False, "randomized": True}
    assert fp["sanity"]["randomized"] is False and fp["sanity"]["zero_grad_share"] == 0.0
    assert fp["versions"]["sweeper"] == ["0.1.0"] and fp["versions"]["ray"] == []


def test_the_command_prints_or_writes_a_new_file_never_inside_the_store(results, cards, tmp_path):
    runner = CliRunner()
    printed = runner.invoke(app, ["card", results])
    assert printed.exit_code == 0, printed.output
    assert {c["config_id"] for c in json.loads(printed.stdout)} == {c["config_id"] for c in cards.values()}
    target = tmp_path / "cards.json"
    assert runner.invoke(app, ["card", results, "--out", str(target)]).exit_code == 0
    assert len(json.loads(target.read_text())) == 2
    again = runner.invoke(app, ["card", results, "--out", str(target)])
    assert again.exit_code == 2 and "--out" in again.output and "--force" in again.output
    assert runner.invoke(app, ["card", results, "--out", str(target), "--force"]).exit_code == 0
    inside = runner.invoke(app, ["card", results, "--out", f"{results}/cards.json"])
    assert inside.exit_code == 2 and "inside the result store" in inside.output
    assert not (tmp_path.parent / "cards.json").exists()


def test_per_build_footprints_fill_the_card_from_the_stores_build_records(results, tmp_path):
    """Issue 22's build records (RESULTS/builds/): an accepted sub-byte build of int4 small
    enough for the nRF52840 where its int8 build is not; the card lists both builds and says
    which format fits which MCU."""
    from tests.test_shipping import _build

    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    location = store.locate(str(copy))
    int4 = next(r for r in _config_rows(location) if r["quantizer"] == "int4")
    for fold in range(3):
        record = _build(int4["config_id"], fold, "lut", 100.0, 1.0)
        record.update(job_id=f"int4-{fold}", quantizer="int4", config_id=int4["config_id"])
        store.write_builds(location, f"int4-{fold}", [record])
    found = card.cards(location.text)
    jsonschema.Draft202012Validator(card.schema()).validate(found)
    builds = {c["configuration"]["quantizer"]: c["footprint"]["builds"] for c in found}
    assert [b["deploy_format"] for b in builds["int4"]] == ["int8", "lut"]
    assert builds["int4"][1]["flash_kb"] == 100.0  # the LUT build's, not the int8 one's
    fits = {m["mcu"]: m for c in found if c["configuration"]["quantizer"] == "int4" for m in c["mcu_fit"]}
    assert fits["nrf52840"]["fits"] and "lut" in fits["nrf52840"]["formats"]
    assert all("formats" in m for c in found for m in c["mcu_fit"])  # per-build fits are asked for


def _config_rows(location) -> list[dict]:
    return query.fetch(query.open_store(location.text), "SELECT DISTINCT config_id, quantizer FROM results").to_pylist()


def test_the_deployed_worst_case_is_the_builds_and_covers_the_attacks_on_it(tmp_path):
    """test_query's rows: fgsm and pgd on the model (transferred to the build), square on the
    build itself; the build's worst case keeps only sample 0 of 4."""
    from tests.test_query import _deployed_rows

    location = store.locate(str(tmp_path / "results"))
    store.write_rows(location, _deployed_rows())
    [found] = card.cards(location.text)
    jsonschema.Draft202012Validator(card.schema()).validate([found])
    threat = next(t for t in found["threat_models"] if t["eps"] == 0.1)
    assert threat["worst_case"]["attacks"] == ["fgsm", "pgd"] and threat["worst_case"]["robust_accuracy"] == 0.5
    deployed = threat["deployed_worst_case"]
    assert deployed["attacks"] == ["fgsm", "pgd", "square@deployed"] and deployed["robust_accuracy"] == 0.25
    square = next(a for a in threat["attacks"] if a["label"] == "square@deployed")
    assert square["target"] == "deployed"
    assert deployed["robust_accuracy"] <= min(a["deployed_robust_accuracy"] for a in threat["attacks"])

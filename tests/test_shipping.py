"""What ships (issue 22): every job's builds recorded in the store with the reason for each
refused one, never a crashed trial; a relaunch reuses them; the MCU fit per build; latency
as a labelled estimate; and the report's sections on the flashed build and robustness
against the budget, checked on constructed stores against what their numbers mean."""

from __future__ import annotations

import re
import shutil

import pytest

from sweeper import store
from sweeper.analysis import figures, query, report
from sweeper.keys import DEPLOYED_TARGET
from tests.test_store import make_row

# --------------------------------------------------------------------------- constructed stores

N = 10  # attacked samples per row
MCUS = ["stm32h7", "nrf52840", "stm32f4"]


def _first(k: int) -> list[bool]:
    return [i < k for i in range(N)]


def _build(config: str, fold: int, fmt: str, flash: float, ram: float, accepted: bool = True,
           error: str | None = None) -> dict:
    record = {name: None for name, _, _ in store.BUILD_COLUMNS}
    record.update(job_id=f"{config}{fold}", config_id=config, dataset="digits", dataset_options="{}",
                  model="small_cnn", quantizer=config, train="{}", k=3, seed=0, defense="none",
                  defense_label="none", defense_params="{}", fold=fold, deploy_format=fmt, accepted=accepted,
                  flatbuffer_kb=flash - 32, arena_kb=ram / 1.1, flash_kb=flash, ram_kb=ram, macs=88_064,
                  identical=accepted, agreement=1.0 if accepted else 0.7, check_samples=60, error=error)
    return record


def _rows(config: str, flash: float, ram: float, model_worst: int, deployed_worst: int) -> list[dict]:
    """Three folds of one configuration at L-inf 0.1: square and boundary on the model
    (per sample robust on the first model_worst+1 and model_worst samples: worst case
    model_worst/N; their examples transferred to the build robust on the first
    deployed_worst+2 and +1) and square on the build (robust on the first deployed_worst:
    the deployed worst case deployed_worst/N)."""
    rows = []
    for fold in range(3):
        common = dict(quantizer=config, config_id=config, job_id=f"{config}{fold}", fold=fold, train="{}",
                      dataset_options="{}", flash_kb=flash, ram_kb=ram, footprint_source="measured",
                      tflite_kb=flash - 32, arena_kb=ram / 1.1, mcu_targets=MCUS, n_samples=N,
                      sample_index=list(range(N)), clean_correct=_first(9), clean_acc=0.9, test_acc=0.9,
                      deployed_clean_acc=0.9)
        rows.append(make_row(f"{config}{fold}-none", attack="none", attack_label="none", norm="none", eps=0.0,
                             eps_label="0", adv_acc=0.9, adv_correct=_first(9), deployed_adv_acc=0.9,
                             deployed_adv_correct=_first(9), **common))
        for label, model, transferred in (("square", model_worst + 1, deployed_worst + 2),
                                          ("boundary", model_worst, deployed_worst + 1)):
            rows.append(make_row(f"{config}{fold}-{label}", attack=label, attack_label=label, adv_acc=model / N,
                                 adv_correct=_first(model), deployed_adv_acc=transferred / N,
                                 deployed_adv_correct=_first(transferred), **common))
        rows.append(make_row(f"{config}{fold}-square@deployed", attack="square", attack_label="square@deployed",
                             target=DEPLOYED_TARGET, adv_acc=deployed_worst / N, adv_correct=_first(deployed_worst),
                             deployed_adv_acc=deployed_worst / N, deployed_adv_correct=_first(deployed_worst),
                             **common))
    return rows


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A store of three configurations with builds (flash KB, RAM KB):

    - ternary: int8 (1100, 80), lut (300, 600: more RAM than any block), int4 refused (200, 80);
      worst cases 0.5 (QKeras) and 0.4 (deployed);
    - binary: int8 (1050, 60), lut (200, 100) in every fold; 0.3 and 0.2;
    - int4: int8 (1100, 80), lut (200, 100) accepted in two folds of three; 0.7 and 0.6."""
    location = store.locate(str(tmp_path_factory.mktemp("shipped") / "results"))
    store.write_rows(location, _rows("ternary", 1100.0, 80.0, 5, 4) + _rows("binary", 1050.0, 60.0, 3, 2)
                     + _rows("int4", 1100.0, 80.0, 7, 6))
    builds = {}
    for fold in range(3):
        builds[f"ternary{fold}"] = [_build("ternary", fold, "int8", 1100.0, 80.0),
                                    _build("ternary", fold, "lut", 300.0, 600.0),
                                    _build("ternary", fold, "int4", 200.0, 80.0, False,
                                           "refused: predicts differently from the int8 build on 9 of 30")]
        builds[f"binary{fold}"] = [_build("binary", fold, "int8", 1050.0, 60.0),
                                   _build("binary", fold, "lut", 200.0, 100.0)]
        builds[f"int4{fold}"] = [_build("int4", fold, "int8", 1100.0, 80.0),
                                 _build("int4", fold, "lut", 200.0, 100.0, fold < 2,
                                        None if fold < 2 else "refused: predicts differently on 1 of 60")]
    for job_id, records in builds.items():
        store.write_builds(location, job_id, records)
    return location


def test_a_configuration_fits_an_mcu_if_some_accepted_build_does_and_the_view_says_which(shipped):
    rows = query.run(shipped.text, "SELECT mcu, quantizer, deploy_format FROM fits WHERE targeted ORDER BY ALL")
    assert [tuple(r.values()) for r in rows.to_pylist()] == [
        # binary's lut build (200 KB, 100 KB) fits all three; its int8 build (1050 KB) only the H7
        ("nrf52840", "binary", "lut"), ("stm32f4", "binary", "lut"), ("stm32h7", "binary", "int8"),
        ("stm32h7", "binary", "lut"),
        # int4's lut was refused in one fold: it fits nowhere, however small
        ("stm32h7", "int4", "int8"),
        # ternary's refused int4 build (200 KB, 80 KB) never fits; its lut's 600 KB arena fits no block
        ("stm32h7", "ternary", "int8")]
    builds = {(r["quantizer"], r["deploy_format"]): r for r in query.run(
        shipped.text, "SELECT * FROM config_builds").to_pylist()}
    assert (builds["int4", "lut"]["accepted"], builds["int4", "lut"]["accepted_folds"],
            builds["int4", "lut"]["folds"]) == (False, 2, 3)
    assert builds["ternary", "int4"]["errors"].startswith("refused: predicts differently")
    assert builds["binary", "lut"]["flash_kb"] == 200.0 and builds["binary", "int8"]["flash_kb"] == 1050.0


def test_a_store_without_build_records_fits_its_int8_builds_as_before(tmp_path):
    location = store.locate(str(tmp_path / "old"))
    store.write_rows(location, _rows("binary", 1050.0, 60.0, 3, 2))
    rows = query.run(location.text, "SELECT mcu, deploy_format FROM fits WHERE targeted").to_pylist()
    assert rows == [{"mcu": "stm32h7", "deploy_format": "int8"}]
    assert not query.run(location.text, "SELECT * FROM latency").num_rows  # no MACs: no estimate


def test_latency_is_an_estimate_that_names_its_runtime_and_exists_only_where_calibrated(shipped):
    from sweeper.deploy.latency import latency_ms

    rows = query.run(shipped.text, "SELECT * FROM latency WHERE quantizer = 'binary'").to_pylist()
    pairs = {(r["mcu"], r["runtime"]) for r in rows}
    assert ("stm32f4", "tflm-reference") in pairs and ("stm32h7", "x-cube-ai") in pairs
    assert ("stm32h7", "tflm-reference") not in pairs  # not calibrated on a Cortex-M7
    assert not {mcu for mcu, _ in pairs} & {"rp2040", "esp32s3"}  # no calibration for their cores
    for r in rows:
        assert r["latency_ms_estimate"] == pytest.approx(latency_ms(88_064, r["mcu"], r["runtime"]))
        assert r["assumes"].startswith(f"estimate: {r['runtime']} on {r['mcu']}")
        assert "DECODE and INT4 unpacking not counted" in r["assumes"]
    [f4] = [r for r in rows if (r["mcu"], r["runtime"]) == ("stm32f4", "tflm-reference")]
    assert f4["assumes"] == ("estimate: tflm-reference on stm32f4 (cortex-m4, 180 MHz), 6.74 cycles/MAC from MLPerf "
                             "Tiny on NUCLEO-L4R5ZI (STM32L4R5ZI); int8 kernels: DECODE and INT4 unpacking not counted")


def test_a_build_the_tools_made_no_flatbuffer_for_has_no_footprint_and_fits_nothing(tmp_path):
    location = store.locate(str(tmp_path / "rejected"))
    store.write_rows(location, _rows("binary", 1050.0, 60.0, 3, 2))
    for fold in range(3):
        rejected = {**_build("binary", fold, "int4", 0.0, 0.0, False, "RuntimeError: the packer broke"),
                    "flatbuffer_kb": None, "arena_kb": None, "flash_kb": None, "ram_kb": None}
        store.write_builds(location, f"binary{fold}", [_build("binary", fold, "int8", 1050.0, 60.0), rejected])
    builds = {r["deploy_format"]: r for r in query.run(location.text, "SELECT * FROM config_builds").to_pylist()}
    # not "measured": nothing was measured (the report's budget figure plots measured builds only)
    assert builds["int4"]["footprint_source"] is None and builds["int8"]["footprint_source"] == "measured"
    assert builds["int4"]["errors"] == "RuntimeError: the packer broke" and builds["int4"]["accepted_folds"] == 0
    fits = query.run(location.text, "SELECT DISTINCT deploy_format FROM fits").to_pylist()
    assert fits == [{"deploy_format": "int8"}]


def test_the_pareto_front_keeps_exactly_the_points_nothing_beats():
    points = [{"name": n, "x": x, "y": y} for n, x, y in [
        ("a", 1, 0.2), ("b", 2, 0.5), ("c", 2, 0.4), ("d", 3, 0.5), ("e", 4, 0.9), ("f", 4, 0.9),
        ("g", 5, 0.8), ("h", 0.5, 0.1)]]
    front = figures.pareto_front(points, "x", "y")
    # c is beaten by b (same size, more robust), d by b (smaller, as robust), g by e; e and f tie
    assert [p["name"] for p in front] == ["h", "a", "b", "e", "f"]
    assert figures.pareto_front([], "x", "y") == []


def test_the_worst_case_wins_a_tie_with_its_attack_that_differs_only_in_the_last_bit():
    from sweeper.analysis.shipping import budget_worst

    from sweeper.keys import CONFIG_COLUMNS

    point = {**dict.fromkeys(CONFIG_COLUMNS), "config_id": "c", "norm": "inf", "eps": 0.1, "n_samples": 100,
             "target": "model"}
    square = {**point, "attack": "square", "attack_label": "square", "adv_acc_mean": 0.6266666666666666}
    worst = {**point, "attack": "worst_case", "attack_label": "worst(boundary+square)",
             "adv_acc_mean": 0.6266666666666667}  # the same 188 of 300 samples, summed in another order
    boundary = {**point, "attack": "boundary", "attack_label": "boundary", "adv_acc_mean": 0.9}
    for order in ([square, worst, boundary], [worst, square, boundary]):
        [held] = budget_worst(order).values()
        assert held["model"]["attack_label"] == "worst(boundary+square)"


@pytest.fixture(scope="module")
def reported(shipped, tmp_path_factory):
    path = report.write(shipped.text, tmp_path_factory.mktemp("report"))
    return path, path.read_text()


def _section(text: str, heading: str) -> str:
    return text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]


def test_the_flashed_build_section_sets_the_deployed_worst_case_beside_the_models(shipped, reported):
    _, text = reported
    body = _section(text, "How robust is the build you flash?")
    cells = dict(re.findall(r"^\| small_cnn / (\w+) \| 0\.900 -> 0\.900 \| (.+) \|$", body, flags=re.M))
    # per sample: square and boundary on the model (worst 0.5), their examples on the build plus
    # square on the build itself (worst 0.4): the deployed worst case pools all three
    assert cells == {"ternary": "0.500 -> 0.400", "binary": "0.300 -> 0.200", "int4": "0.700 -> 0.600"}
    worst = query.run(shipped.text, "SELECT target, adv_acc_mean FROM worst_case WHERE quantizer = 'ternary'")
    assert sorted(tuple(r.values()) for r in worst.to_pylist()) == [("deployed", pytest.approx(0.4)),
                                                                    ("model", pytest.approx(0.5))]
    assert ("QKeras worst case: `worst(boundary+square)`; deployed worst case: "
            "`worst@deployed(boundary+square+square@deployed)`") in body


def test_robustness_against_the_budget_lists_the_front_of_the_accepted_builds(reported):
    path, text = reported
    body = _section(text, "Robustness against the budget")
    assert "![digits, Linf @ 0.1: worst-case robust accuracy against resources](figures/budget-digits-Linf-0.1.png)" \
        in body
    assert (path.parent / "figures" / "budget-digits-Linf-0.1.png").read_bytes()[:4] == b"\x89PNG"
    fronts = dict(re.findall(r"^\| Linf @ 0\.1 \| (\w+) \| (.+) \|$", body, flags=re.M))
    # robustness is the deployed worst case; int4's lut (refused in a fold) and ternary's
    # int4 are no points; the lut builds are the cheap ones in flash, not in RAM
    assert fronts["flash"] == ("small_cnn / binary [lut] (200.0 KB, 0.200 deployed), small_cnn / ternary [lut] "
                               "(300.0 KB, 0.400 deployed), small_cnn / int4 [int8] (1100.0 KB, 0.600 deployed)")
    assert fronts["RAM"] == ("small_cnn / binary [int8] (60.0 KB, 0.200 deployed), small_cnn / int4 [int8] "
                             "(80.0 KB, 0.600 deployed)")
    # the same MACs for every configuration: one latency, and the most robust build holds it
    assert re.fullmatch(r"small_cnn / int4 \[int8\] \(\S+ ms, 0\.600 deployed\)", fronts["latency"])


def test_the_builds_section_and_table_iii_say_which_build_fits_and_why_one_was_refused(reported):
    _, text = reported
    body = _section(text, "Builds: flash, RAM, MACs and latency")
    assert "Latency is an **estimate** (tflm-reference on nrf52840" in body
    lines = {tuple(cell.strip() for cell in line.strip("|").split("|")[:2]): line
             for line in body.splitlines() if line.startswith("| small_cnn")}
    assert "| 3/3 |" in lines["small_cnn / binary", "lut"] and "| nrf52840, stm32f4, stm32h7 |" in \
        lines["small_cnn / binary", "lut"]
    assert "| 2/3 |" in lines["small_cnn / int4", "lut"] and "refused: predicts differently on 1 of 60" in \
        lines["small_cnn / int4", "lut"]
    assert "| none | refused: predicts differently from the int8 build on 9 of 30 |" in lines["small_cnn / ternary",
                                                                                               "int4"]
    table_iii = _section(text, "Table III")
    assert re.search(r"^\| small_cnn / binary \|.*\| nrf52840 \(lut\), stm32f4 \(lut\), stm32h7 \|$", table_iii,
                     flags=re.M)


def test_build_records_are_read_once_and_a_damaged_file_is_skipped(shipped, tmp_path):
    copy = tmp_path / "results"
    shutil.copytree(shipped.path, copy)
    location = store.locate(str(copy))
    assert store.compact_builds(location) == 21  # ternary's 3 builds, binary's and int4's 2, in 3 folds
    [compacted] = store.build_files(location)
    assert "/builds/compacted-" in compacted
    # a crash between compaction's write and its deletions leaves a job's own file behind
    store.write_builds(location, "binary0", [_build("binary", 0, "lut", 999.0, 999.0)])
    (copy / "builds" / "job-notes.parquet").write_text("not Parquet")
    found = store.read_builds(location)
    assert found.table.num_rows == 21 and found.damaged == (str(copy / "builds" / "job-notes.parquet"),)
    lut = [r for r in found.table.to_pylist() if (r["job_id"], r["deploy_format"]) == ("binary0", "lut")]
    assert [r["flash_kb"] for r in lut] == [200.0]  # the compacted file's, read first
    assert query.run(str(copy), "SELECT count(*) AS n FROM builds").to_pylist() == [{"n": 21}]


def test_the_readme_documents_every_build_column():
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text()
    block = readme.split("#### The build records", 1)[1].split("\n#", 1)[0]
    documented = [line for line in block.splitlines() if line.startswith("| `")]
    escaped = [(name, dtype, meaning.replace("|", "\\|")) for name, dtype, meaning in store.BUILD_COLUMNS]
    assert documented == [f"| `{name}` | {dtype} | {meaning} |" for name, dtype, meaning in escaped]


# --------------------------------------------------------------------------- through the trial and the sweep

TINY = {"name": "ship", "seed": 0, "datasets": ["digits"], "models": ["small_cnn"], "quantizers": ["ternary"],
        "attacks": [{"name": "fgsm", "eps": [0.1]},
                    {"name": "square", "eps": [0.1], "params": {"max_iter": 20}, "target": "deployed"}],
        "folds": {"k": 3, "only": [0]}, "train": {"epochs": 3, "learning_rate": 0.01}, "samples": 30,
        "mcus": ["stm32h7"]}


def _counting(monkeypatch) -> list:
    """Count the calls of deploy.builds (the trial reaches it through the package)."""
    from sweeper import deploy

    calls, original = [], deploy.builds
    monkeypatch.setattr(deploy, "builds", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """A one-job sweep in process: (store, plan, deploy.builds calls)."""
    from sweeper.plan import expand, grid
    from sweeper.run import sweep
    from sweeper.run.runners import InProcessRunner

    results = tmp_path_factory.mktemp("launched") / "results"
    plan = expand.expand(grid.validate(TINY))
    with pytest.MonkeyPatch.context() as patch:
        calls = _counting(patch)
        sweep.launch(plan, str(results), runner=InProcessRunner())
    return results, plan, len(calls)


@pytest.mark.slow
def test_a_launch_records_every_build_with_its_reason_and_keeps_the_accepted_ones(launched):
    from sweeper import datasets
    from sweeper.deploy.tflm import tflm_outputs

    results, plan, calls = launched
    [job] = plan.jobs
    location = store.locate(str(results))
    records = {r["deploy_format"]: r for r in store.read_builds(location).table.to_pylist()}
    rows = store.read(location).table.to_pylist()
    assert calls == 1 and set(records) == {"int8", "lut", "int4"}
    assert len(store.build_files(location)) == 1  # one job: its own file, nothing to merge
    for record in records.values():
        assert record["job_id"] == job.job_id and record["config_id"] == job.config_id
        assert record["accepted"] == (record["error"] is None), record
        if record["agreement"] is not None and not record["accepted"]:  # refused: says on how many
            assert record["agreement"] < 1 and f"of {record['check_samples']} check samples" in record["error"]
    int8 = records["int8"]
    # the same build and rule as the rows' footprint; checked on the clean samples and the examples
    assert (int8["flash_kb"], int8["ram_kb"]) == (rows[0]["flash_kb"], rows[0]["ram_kb"])
    assert int8["tflite_file"] == f"{job.job_id}.tflite" and int8["macs"] == 88_064
    assert int8["check_samples"] > rows[0]["n_samples"]
    lut = records["lut"]
    assert lut["accepted"] and lut["tflite_file"] == f"{job.job_id}.lut.tflite" and lut["flash_kb"] < int8["flash_kb"]
    kept = (results / "models" / lut["tflite_file"]).read_bytes()
    assert len(kept) == round(lut["flatbuffer_kb"] * 1024)
    # what accepted means: TFLM predicts with the kept LUT build exactly as with the int8 build
    x = datasets.load("digits").x[rows[0]["sample_index"]]
    int8_file = (results / "models" / int8["tflite_file"]).read_bytes()
    assert (tflm_outputs(kept, x).argmax(1) == tflm_outputs(int8_file, x).argmax(1)).all()
    if not records["int4"]["accepted"]:
        assert not (results / "models" / f"{job.job_id}.int4.tflite").exists()


def _rerun(launched, tmp_path, cells_wanted=("none", "fgsm")) -> tuple[list, dict]:
    """The launched job again in a fresh store holding only its cached weights and .tflite:
    (its rows, its build records by format)."""
    from sweeper import datasets
    from sweeper.run.trial import JobContext, run_job

    results, plan, _ = launched
    shutil.copytree(results / "models", tmp_path / "r" / "models")
    [job] = plan.jobs
    cells = [c for c in plan.cells_of(job.job_id) if c.attack in cells_wanted and c.target == "model"]
    rows = []
    context = JobContext("ship", ("stm32h7",), model_cache=str(tmp_path / "r" / "models"), results=str(tmp_path / "r"))
    run_job(job, cells, datasets.load("digits"), context, rows.append)
    assert len(rows) == len(cells) == 2  # the trial went on
    found = store.read_builds(store.locate(str(tmp_path / "r"))).table.to_pylist()
    return rows, {r["deploy_format"]: r for r in found}


@pytest.mark.slow
def test_a_build_the_tools_reject_gets_its_reason_never_a_crashed_trial(launched, tmp_path, monkeypatch):
    from sweeper.deploy.builds import FORMATS

    def reject(flatbuffer):
        raise RuntimeError("the packer broke")

    monkeypatch.setitem(FORMATS._entries, "int4", reject)
    _, records = _rerun(launched, tmp_path)
    assert (records["int4"]["accepted"], records["int4"]["error"]) == (False, "RuntimeError: the packer broke")
    assert records["int4"]["tflite_file"] is None and records["int8"]["accepted"] and records["lut"]["accepted"]


@pytest.mark.slow
def test_a_failing_builder_or_conversion_leaves_records_that_say_so(launched, tmp_path, monkeypatch):
    from sweeper import deploy

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(deploy, "builds", broken)
    _, records = _rerun(launched, tmp_path / "builder")
    assert records["int8"]["accepted"] and records["int8"]["flash_kb"] > 0  # the int8 build stands
    assert [records[f]["error"] for f in ("lut", "int4")] == ["builds failed: RuntimeError: boom"] * 2

    def refuse(*args, **kwargs):
        raise deploy.DeployError("op FOO is not supported")

    monkeypatch.setattr(deploy, "convert_int8", refuse)
    (tmp_path / "converter").mkdir()
    shutil.copytree(launched[0] / "models", tmp_path / "models")
    for path in (tmp_path / "models").glob("*.tflite"):  # only the weights: the conversion runs again
        path.unlink()
    launched_weights_only = (tmp_path, *launched[1:])
    rows, records = _rerun(launched_weights_only, tmp_path / "converter")
    assert rows[0]["deploy_error"] == "DeployError: op FOO is not supported"
    assert records["int8"]["error"] == "DeployError: op FOO is not supported"
    assert records["lut"]["error"] == records["int4"]["error"] == \
        "no int8 build to rewrite: DeployError: op FOO is not supported"
    assert not any(r["accepted"] for r in records.values())


@pytest.mark.slow
def test_a_relaunch_reuses_the_stored_builds(launched, tmp_path, monkeypatch):
    from sweeper.plan import expand, grid
    from sweeper.run import sweep
    from sweeper.run.runners import InProcessRunner

    shutil.copytree(launched[0], tmp_path / "results")
    location = store.locate(str(tmp_path / "results"))
    before = store.read_builds(location).table
    extended = expand.expand(grid.validate({**TINY, "attacks": [{"name": "fgsm", "eps": [0.1, 0.2]},
                                                                *TINY["attacks"][1:]]}))
    calls = _counting(monkeypatch)
    done = sweep.launch(extended, location.text, runner=InProcessRunner())
    assert done.computed == 1 and done.trainings == 0  # the new cell, of the cached model
    assert calls == [] and store.read_builds(location).table.equals(before)  # nothing rebuilt

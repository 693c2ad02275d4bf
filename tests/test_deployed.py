"""Attacking the deployed build itself (``target: deployed``): the int8 ``.tflite`` as an
ART classifier (batched predictions bit for bit those of one sample at a time, the fallback
when they are not, no gradient), Square on an fp model's build against Square on the fp
model, the grid's refusal of gradient attacks, unchanged ids, and a deployed cell end to
end through the trial (its stored examples give the row's predictions on a fresh
interpreter; a model that does not convert gets rows without outcomes)."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks, keys
from sweeper.errors import UserError
from sweeper.plan import expand, grid
from tests.conftest import digits_small_cnn

CLIP = (0.0, 1.0)
SHAPE = (8, 8, 1)
BASE = {"name": "dep", "datasets": ["digits"], "models": ["small_cnn"], "quantizers": ["int8"],
        "folds": {"k": 3, "only": [0]}}

pytestmark = pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated")


# --------------------------------------------------------------------------- the estimator


@pytest.fixture(scope="module")
def fp_build():
    """(fp small_cnn's compiled classifier, its int8 build's classifier, the .tflite,
    held-out digits, their labels): 5 epochs on digits' first 1500 images."""
    from sweeper import deploy

    model, x, y = digits_small_cnn("fp", 1500, 5)
    flatbuffer = deploy.convert_int8(deploy.strip(model), x[:200])
    fast = attacks.make_classifier(model, 10, SHAPE, CLIP)
    return fast, attacks.make_deployed_classifier(flatbuffer, 10, SHAPE, CLIP), flatbuffer, x[1500:], y[1500:]


def _one_at_a_time(flatbuffer: bytes, x: np.ndarray) -> np.ndarray:
    """The int8 outputs of a fresh reference-kernel interpreter, one sample per invocation
    (as deploy.evaluate and an MCU run it)."""
    import tensorflow as tf

    from sweeper import deploy

    interpreter = tf.lite.Interpreter(model_content=flatbuffer, num_threads=1,
                                      experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    source, target = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    out = []
    for sample in deploy.quantize_input(x, source):
        interpreter.set_tensor(source["index"], sample[None])
        interpreter.invoke()
        out.append(interpreter.get_tensor(target["index"])[0].copy())
    return np.array(out)


@pytest.mark.slow
def test_batched_predictions_are_one_sample_at_a_time_bit_for_bit(fp_build, monkeypatch):
    from sweeper import deploy
    from sweeper.attacks.deployed import DEPLOYED_CHUNK, Int8Logits

    _, deployed, flatbuffer, x, y = fp_build
    assert deployed.runner.batched
    invocations = []
    original = Int8Logits._invoke
    monkeypatch.setattr(Int8Logits, "_invoke", lambda self, q: invocations.append(len(q)) or original(self, q))
    q = deployed.runner._interpreted(deploy.quantize_input(x, deployed.runner._input))  # the port aside
    assert invocations == [DEPLOYED_CHUNK] * (len(x) // DEPLOYED_CHUNK) + [len(x) % DEPLOYED_CHUNK]
    np.testing.assert_array_equal(q, _one_at_a_time(flatbuffer, x))
    assert deployed.runner.forward == "numpy port"
    np.testing.assert_array_equal(deployed.runner.int8(x), q)
    # The logits are the int8 outputs dequantized; their argmax is deploy.evaluate's label.
    logits = deployed.predict(x)
    scale, zero_point = deployed.runner.output_scale, deployed.runner.output_zero_point
    np.testing.assert_allclose(logits, (q.astype(np.float64) - zero_point) * scale, rtol=1e-6)
    np.testing.assert_array_equal(logits.argmax(axis=1), deploy.evaluate(flatbuffer, x).predictions)
    assert logits.dtype == np.float32 and np.mean(logits.argmax(axis=1) == y) > 0.85


@pytest.mark.slow
def test_a_build_whose_batches_differ_runs_one_sample_per_call(fp_build, monkeypatch, caplog):
    from sweeper.attacks.deployed import Int8Logits

    _, _, flatbuffer, x, _ = fp_build
    original = Int8Logits._invoke

    def batches_differ(self, quantized):  # a kernel that misbehaves with a batch dimension
        out = original(self, quantized).copy()
        return out + 1 if len(quantized) > 1 else out

    monkeypatch.setattr(Int8Logits, "_invoke", batches_differ)
    with caplog.at_level(logging.WARNING, logger="sweeper.attacks.deployed"):
        runner = Int8Logits(flatbuffer, SHAPE, CLIP)
    assert not runner.batched and "one sample per call" in caplog.text
    np.testing.assert_array_equal(runner.int8(x[:20]), _one_at_a_time(flatbuffer, x[:20]))


@pytest.mark.slow
def test_the_build_has_no_gradient(fp_build):
    _, deployed, _, x, y = fp_build
    for gradient in (lambda: deployed.loss_gradient(x[:2], y[:2]), lambda: deployed.class_gradient(x[:2])):
        with pytest.raises(attacks.NoGradientError, match="has no gradient: attack it with a black-box attack"):
            gradient()


def _rounded_logits(classifier, scale: float):
    """``classifier`` whose logits are rounded to multiples of ``scale``: the fp model seen
    through the int8 build's output quantization alone."""
    rounded = attacks.make_classifier(classifier.model, 10, SHAPE, CLIP)
    predict = rounded.predict
    rounded.predict = lambda x, batch_size=128, **kwargs: (np.round(predict(x) / scale) * scale).astype(np.float32)
    return rounded


@pytest.mark.slow
def test_square_on_an_fp_build_agrees_with_square_on_the_fp_model_within_int8_rounding(fp_build):
    """The int8 build of an fp model computes it up to rounding: of inputs (1/255 steps),
    weights, activations and logits (the output scale).

    Tolerances, measured on this model: (1) logits within 2 output scales for 99% of the
    held-out logits (measured 1.1; a single outlier reached 11 scales), predictions equal on
    99% (measured 99.7%). (2) Square at L-inf 0.2 on 60 samples both classify correctly
    (3 seeds). Against the fp model's own float logits the build reads more samples robust
    (7.5 and 8.1 more on average over 10 seeds, on the model trained here with two threads
    and with one): Square keeps a step only if the margin loss falls, and a margin quantized
    to the output scale hides small falls. That is score quantization, not robustness: the
    fp model with its logits rounded to the build's output scale shows most of the same gap.
    The check: the build's mean robust count lies less than half as far from the rounded
    model's as from the float model's (measured over 10 seeds: 0.9 and 2.7 from the rounded model's, 7.5 and 8.1 from the
    float model's). Single seeds are not compared: a seed's count moves by up to 7 between
    two runs of Square that differ in a rounded logit. (3) The control: a random sign
    perturbation of the same budget (+-eps on every input) leaves far more samples robust
    than Square does on the build."""
    fast, deployed, _, x, y = fp_build
    scale = deployed.runner.output_scale
    float_logits, build_logits = fast.predict(x), deployed.predict(x)
    assert np.quantile(np.abs(float_logits - build_logits), 0.99) <= 2 * scale
    assert np.mean(float_logits.argmax(axis=1) == build_logits.argmax(axis=1)) >= 0.99

    both = np.flatnonzero((float_logits.argmax(axis=1) == y) & (build_logits.argmax(axis=1) == y))[:60]
    x, y = x[both], y[both]
    rounded = _rounded_logits(fast, scale)
    robust = {"build": [], "rounded": [], "float": []}
    for seed in range(3):
        for name, on, judge in (("build", deployed, deployed), ("rounded", rounded, fast), ("float", fast, fast)):
            x_adv = attacks.run("square", on, x, y, 0.2, "inf", {"max_iter": 300}, seed=seed)
            robust[name].append(int(np.sum(judge.predict(x_adv).argmax(axis=1) == y)))
    build, rounded_fp, float_fp = (np.mean(robust[name]) for name in ("build", "rounded", "float"))
    assert build > float_fp, robust  # the quantized score, as measured
    # rounding the logits explains most of it: the build sits nearer the rounded fp model
    assert abs(build - rounded_fp) < 0.5 * (build - float_fp), robust

    signs = np.random.default_rng(0).choice([-1.0, 1.0], size=x.shape)
    control = np.clip(x + 0.2 * signs, *CLIP).astype(np.float32)
    control_robust = int(np.sum(deployed.predict(control).argmax(axis=1) == y))
    assert control_robust - max(robust["build"]) >= 0.4 * len(y), (control_robust, robust)


# --------------------------------------------------------------------------- the grid


@pytest.mark.parametrize("name", ["fgsm", "pgd", "cw_l2", "apgd_ce", "apgd_dlr", "patch"])
def test_a_gradient_attack_on_the_build_is_refused_in_one_line(name):
    entry = {"name": name, "eps": [0.1], "target": "deployed"}
    with pytest.raises(UserError) as error:
        grid.validate({**BASE, "attacks": [{"name": "square", "eps": [0.1]}, entry]})
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"grid: attacks.1.target: attack '{name}' needs gradients and the deployed build "
                              f"has none; target: deployed takes a black-box attack (square, boundary, zoo, "
                              f"hopskipjump)")


def test_target_values_and_transfer_sources_are_checked():
    with pytest.raises(UserError, match=r"^grid: attacks\.0\.target: Input should be 'model' or 'deployed'$"):
        grid.validate({**BASE, "attacks": [{"name": "square", "eps": [0.1], "target": "tflite"}]})
    transfer = {"name": "square", "eps": [0.1], "target": "deployed", "source": {"quantizer": "fp"}}
    with pytest.raises(UserError, match=r"^grid: attacks\.0\.target: target: deployed attacks the build itself"):
        grid.validate({**BASE, "quantizers": ["fp", "int8"], "attacks": [transfer]})


def test_zoo_on_the_build_needs_a_finite_difference_above_the_input_step():
    entry = {"name": "zoo", "eps": ["unbounded"], "target": "deployed"}
    with pytest.raises(UserError, match=r"^grid: attacks\.0\.target: zoo's finite differences \(variable_h 0\.0001\) "
                                        r"are smaller than the build's input step"):
        grid.validate({**BASE, "attacks": [entry]})
    grid.validate({**BASE, "attacks": [{**entry, "params": {"variable_h": 0.01}}]})
    grid.validate({**BASE, "attacks": [{**entry, "target": "model"}]})  # the model: any step


@pytest.mark.slow
def test_zoo_moves_the_build_only_with_a_step_above_its_input_step(fp_build):
    _, deployed, _, x, y = fp_build
    right = deployed.predict(x).argmax(axis=1) == y
    x, y = x[right][:6], y[right][:6]
    params = {"max_iter": 10, "binary_search_steps": 2, "initial_const": 10.0, "learning_rate": 0.1}
    fooled = {}
    for h in (1e-4, 0.01):
        x_adv = attacks.run("zoo", deployed, x, y, math.inf, "2", {**params, "variable_h": h}, seed=0)
        fooled[h] = int(np.sum(deployed.predict(x_adv).argmax(axis=1) != y))
    assert fooled[1e-4] == 0 and fooled[0.01] >= 3, fooled


@pytest.mark.e2e
@pytest.mark.slow
def test_the_cli_refuses_it_with_exit_2(tmp_path):
    from tests.conftest import write_grid

    path = write_grid(tmp_path, {**BASE, "attacks": [{"name": "pgd", "eps": [0.1], "target": "deployed"}]})
    done = subprocess.run([sys.executable, "-m", "sweeper", "validate", str(path)], capture_output=True, text=True)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert "attacks.0.target: attack 'pgd' needs gradients" in done.stderr


ATTACKS = [{"name": "fgsm", "eps": [0.1]}, {"name": "square", "eps": [0.1, 0.2], "params": {"max_iter": 50}},
           {"name": "boundary", "norm": "2", "eps": [0.5, "unbounded"]}]


def test_ids_are_unchanged_unless_the_target_is_deployed():
    plain = expand.expand(grid.validate({**BASE, "attacks": ATTACKS}), fingerprints=False)
    explicit = expand.expand(grid.validate({**BASE, "attacks": [{**a, "target": "model"} for a in ATTACKS]}),
                             fingerprints=False)
    assert [c.cell_id for c in explicit.cells] == [c.cell_id for c in plain.cells]
    assert {c.target for c in plain.cells} == {"model"}

    deployed = [{**a, "target": "deployed"} for a in ATTACKS[1:]]
    both = expand.expand(grid.validate({**BASE, "attacks": ATTACKS + deployed}), fingerprints=False)
    model_cells = [c for c in both.cells if c.target == "model"]
    assert [c.cell_id for c in model_cells] == [c.cell_id for c in plain.cells]
    on_build = [c for c in both.cells if c.target == "deployed"]
    assert [c.attack_label for c in on_build] == ["square@deployed"] * 2 + ["boundary@deployed"] * 2
    assert not {c.cell_id for c in on_build} & {c.cell_id for c in plain.cells}
    twins = {c.cell_id: c for c in model_cells}
    for cell in on_build:  # the same cell but for its target, and its id says so
        model_twin = replace(cell, target="model", attack_label=cell.attack_label.removesuffix("@deployed"))
        assert expand.stable_id(model_twin.identity()) in twins
        assert cell.identity() == {**model_twin.identity(), "target": "deployed"}


def test_a_minimal_attack_runs_once_per_target_and_dbwt_widths_skip_the_build():
    from sweeper.run.evaluate import attack_groups

    attacks_ = [{"name": "boundary", "norm": "2", "eps": [0.5, "unbounded"]},
                {"name": "boundary", "norm": "2", "eps": [0.5, "unbounded"], "target": "deployed"}]
    plan = expand.expand(grid.validate({**BASE, "attacks": attacks_}), fingerprints=False)
    groups = attack_groups([c for c in plan.cells if c.attack != "none"])
    assert sorted((g[0].target, len(g)) for g in groups) == [("deployed", 2), ("model", 2)]

    dbwt = expand.expand(grid.validate({**BASE, "quantizers": ["int4"], "attacks": attacks_,
                                        "defenses": [{"name": "dbwt", "params": {"bits": [2, 4]}}]}),
                         fingerprints=False)
    at_width = [c for c in dbwt.cells if c.eval_bits is not None]
    assert at_width and all(c.target == "model" for c in at_width)
    assert sum(c.target == "deployed" for c in dbwt.cells) == 2


# --------------------------------------------------------------------------- through the trial

TRIAL = {**BASE, "train": {"epochs": 2, "learning_rate": 0.01}, "samples": 40,
         "attacks": [{"name": "square", "eps": [0.2], "params": {"max_iter": 100}},
                     {"name": "square", "eps": [0.2], "params": {"max_iter": 100}, "target": "deployed"}]}


def _run_trial(tmp_path, cache: str):
    """(job, cells, rows by label, (attack, estimator class) of each attacks.run call)."""
    from unittest import mock

    from sweeper import datasets
    from sweeper.run.trial import JobContext, run_job

    plan = expand.expand(grid.validate(TRIAL))
    [job] = plan.jobs
    # The deployed cell keeps its examples, as a transfer source does, so they can be re-run.
    cells = [replace(c, keeps_arrays=True) if c.target == "deployed" else c for c in plan.cells_of(job.job_id)]
    rows, calls, original = [], [], attacks.run

    def spy(name, classifier, *args, **kwargs):
        calls.append((name, type(classifier).__name__))
        return original(name, classifier, *args, **kwargs)

    context = JobContext("dep", ("stm32h7",), model_cache=cache, adversarial=str(tmp_path / "adversarial"))
    with mock.patch.object(attacks, "run", spy):
        run_job(job, cells, datasets.load("digits"), context, rows.append)
    return job, cells, {r["attack_label"]: r for r in rows}, calls


@pytest.fixture(scope="module")
def trial_rows(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("trial")
    return (tmp_path, *_run_trial(tmp_path, str(tmp_path / "models")))


@pytest.mark.slow
def test_a_deployed_square_cells_examples_give_its_predictions_on_a_fresh_interpreter(trial_rows):
    from sweeper import datasets, deploy, store

    tmp_path, job, cells, rows, calls = trial_rows
    row, model_row = rows["square@deployed"], rows["square"]
    assert (row["target"], model_row["target"]) == ("deployed", "model")
    # Square ran twice: on the QKeras model, and on the build through the interpreter.
    assert calls == [("square", "FastTensorFlowV2Classifier"), ("square", "DeployedClassifier")]
    [cell] = [c for c in cells if c.target == "deployed"]
    assert row["cell_id"] == cell.cell_id and row["deploy_error"] is None
    flatbuffer = store.get_bytes(store.locate(str(tmp_path / "models")), f"{job.job_id}.tflite")
    stored = store.get_arrays(store.locate(str(tmp_path / "adversarial")), f"{cell.cell_id}.npz")
    data = datasets.load("digits")
    x, y = data.x[row["sample_index"]], data.y[row["sample_index"]]
    np.testing.assert_array_equal(stored["sample_index"], row["sample_index"])

    # The build's own clean predictions decide which samples count and are attacked.
    clean = deploy.evaluate(flatbuffer, x).predictions == y
    assert row["clean_correct"] == clean.tolist() == stored["clean_correct"].tolist()
    assert row["deployed_clean_acc"] == row["clean_acc"] == pytest.approx(clean.mean())
    np.testing.assert_array_equal(stored["x_adv"][~clean], x[~clean])  # not attacked
    # Re-run through a fresh interpreter, one sample at a time: exactly the stored predictions.
    fresh = deploy.evaluate(flatbuffer, stored["x_adv"]).predictions
    assert row["adv_pred"] == fresh.tolist()
    assert row["adv_correct"] == (clean & (fresh == y)).tolist() == row["deployed_adv_correct"]
    assert row["adv_acc"] == row["deployed_adv_acc"] == pytest.approx(np.mean(row["adv_correct"]))
    broken = clean & ~np.array(row["adv_correct"])
    assert broken.sum() >= 3  # the attack fooled the build
    assert row["attack_success_rate"] == pytest.approx(broken.sum() / clean.sum())
    assert np.max(np.abs(stored["x_adv"] - x)) <= 0.2 * (1 + attacks.BUDGET_RTOL)
    assert max(row["pert_linf"]) <= 0.2 * (1 + attacks.BUDGET_RTOL)


@pytest.mark.slow
def test_a_model_without_a_build_gets_deployed_rows_without_outcomes(trial_rows, tmp_path, monkeypatch):
    import shutil

    from sweeper import deploy, store

    cached, job, _, _, _ = trial_rows
    (tmp_path / "models").mkdir()  # the trained weights only: the conversion runs again
    shutil.copy(cached / "models" / f"{job.job_id}.weights.h5", tmp_path / "models")

    def refuse(*args, **kwargs):
        raise deploy.DeployError("op FOO is not supported")

    monkeypatch.setattr(deploy, "convert_int8", refuse)
    _, _, rows, calls = _run_trial(tmp_path, str(tmp_path / "models"))
    row = rows["square@deployed"]
    assert calls == [("square", "FastTensorFlowV2Classifier")]  # nothing to attack on the build
    assert row["deploy_error"] == "DeployError: op FOO is not supported" and row["target"] == "deployed"
    assert row["n_samples"] == 40 and row["attack_s"] == 0.0
    for name in ("clean_acc", "adv_acc", "attack_success_rate", "deployed_adv_acc", *keys.OUTCOME_COLUMNS):
        assert row[name] is None, name
    assert rows["square"]["adv_acc"] is not None  # the model's own cell is computed as ever
    store.to_table([rows["square"], row])  # the row fits the schema

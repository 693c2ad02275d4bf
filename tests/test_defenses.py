"""Training-time defenses (sweeper.defenses) on a real small_cnn int8 QKeras model and the
embedded digits: each defense's mechanism against an undefended twin trained on the
same batches from the same initialisation, plain training untouched by the wrapper, a
resumed defended training equal to an uninterrupted one, and the registry's errors."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from sweeper import datasets, defenses
from sweeper.errors import UserError
from sweeper.plan.entries import Train

PRESET = "int8"
SETTINGS = Train(epochs=4, learning_rate=0.01)
SEED = 3


# ---------------------------------------------------------------- registry (no TensorFlow)

def test_unknown_names_and_parameters_are_one_line_errors():
    with pytest.raises(UserError, match=r"^unknown defense 'jrr'; available: none, jr, jr_layer, dq, fgsm_at, pgd_at, "
                                        r"dbwt$"):
        defenses.resolve("jrr")
    with pytest.raises(UserError, match=r"^defense 'jr': unknown parameter 'lamda'; accepted: lambda, projections$"):
        defenses.resolve("jr", {"lamda": 0.1})
    with pytest.raises(UserError, match=r"^defense 'fgsm_at': eps must be a number in \(0, 1\]"):
        defenses.resolve("fgsm_at", {"eps": 0})
    with pytest.raises(UserError, match=r"^defense 'pgd_at': steps must be a whole number in 1\.\.1000, got 2\.5$"):
        defenses.resolve("pgd_at", {"steps": 2.5})
    with pytest.raises(UserError, match=r"^defense 'dbwt': bits must be bit widths, a list of at least two "
                                        r"distinct whole numbers in 2\.\.16, got \[4, 4\]$"):
        defenses.resolve("dbwt", {"bits": [4, 4]})


def test_defaults_fill_in_and_budgets_may_be_fractions():
    assert defenses.resolve("none") == {}
    assert defenses.resolve("jr_layer") == {"lambda": 0.001, "projections": 1}
    assert defenses.resolve("pgd_at", {"eps": "16/255"}) == {"eps": 16 / 255, "steps": 7, "step": 0.25}
    assert defenses.resolve("dbwt") == {"bits": [8, 4, 2], "period": 1}


@pytest.mark.parametrize("params, message", [
    ({"lambda": 0}, r"defense 'jr_layer': lambda must be a number in \(0, 1e\+06\]"),
    ({"lambda": "a lot"}, r"defense 'jr_layer': lambda must be a number"),
    ({"projections": 0}, r"defense 'jr_layer': projections must be a whole number in 1\.\.64, got 0$"),
    ({"lamda": 0.1}, r"defense 'jr_layer': unknown parameter 'lamda'; accepted: lambda, projections$"),
])
def test_jr_layer_parameters_are_checked_when_the_grid_loads(tmp_path, tiny_grid, params, message):
    from sweeper.plan import grid
    from tests.conftest import write_grid

    path = write_grid(tmp_path, {**tiny_grid, "defenses": ["none", {"name": "jr_layer", "params": params}]})
    with pytest.raises(UserError, match=message):
        grid.load(path)
    tiny_grid["defenses"] = ["none", {"name": "jr_layer", "params": {"lambda": "1/100"}}]
    loaded = grid.load(write_grid(tmp_path, tiny_grid))
    assert loaded.defenses[1].resolved_params() == {"lambda": 0.01, "projections": 1}


def test_dbwt_refuses_a_preset_without_bit_widths():
    from sweeper.models.quantizers import QUANTIZERS

    with pytest.raises(UserError, match=r"^defense 'dbwt' switches bit widths, .* not 'ternary'$"):
        defenses.build("dbwt", preset=QUANTIZERS.get("ternary"))
    assert defenses.build("none") is None  # plain training: no wrapper at all


# ---------------------------------------------------------------- training

@functools.cache
def _split():
    digits = datasets.load("digits")
    train_idx, test_idx = datasets.fold_split(digits.y, 3, 0, 0)
    return digits, train_idx, test_idx


def _model(preset: str = PRESET):
    import tensorflow as tf

    from sweeper import models
    from sweeper.models.quantizers import QUANTIZERS

    tf.keras.backend.clear_session()
    tf.keras.utils.set_random_seed(7)
    return models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get(preset))


def _trained(name: str | None, params: dict | None = None, settings: Train = SETTINGS, preset: str = PRESET,
             **kwargs):
    """(model, defense) trained on the training fold; name None: no defense argument."""
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.run.training import train

    digits, train_idx, _ = _split()
    model = _model(preset)
    defense = None if name is None else defenses.build(name, params, clip_values=digits.clip_values,
                                                       preset=QUANTIZERS.get(preset))
    train(model, settings, digits.x[train_idx], digits.y[train_idx], 10, SEED, defense=defense, **kwargs)
    return model, defense


@functools.cache
def _twin():
    """The undefended twin every mechanism is compared with."""
    return _trained(None)[0]


def _held_out():
    digits, _, test_idx = _split()
    return digits.x[test_idx], digits.y[test_idx]


@pytest.mark.slow
def test_none_and_the_wrapper_with_the_plain_step_are_plain_training_bit_for_bit():
    from sweeper.defenses.base import Defense

    plain = _twin()
    named_none, _ = _trained("none")
    # The wrapper itself, running the plain cross-entropy step: same batches, loss and
    # optimizer updates as model.fit, so the same weights to the bit.
    wrapped = _model()
    from sweeper.run.training import train

    digits, train_idx, _ = _split()
    train(wrapped, SETTINGS, digits.x[train_idx], digits.y[train_idx], 10, SEED, defense=Defense())
    for model in (named_none, wrapped):
        for a, b in zip(model.get_weights(), plain.get_weights()):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_jr_lowers_the_jacobian_penalty_against_its_undefended_twin():
    import tensorflow as tf

    from sweeper.defenses.regularizers import jacobian_penalty

    model, defense = _trained("jr")
    x, _ = _held_out()
    key = tf.constant([5, 6], tf.int64)  # the same projections for both models
    defended = float(jacobian_penalty(model, x, key, projections=4)[1])
    undefended = float(jacobian_penalty(_twin(), x, key, projections=4)[1])
    assert defended < undefended / 4, (defended, undefended)  # measured: 10.1 against 208
    assert 0 < defense.summary["jr"] < undefended / 2  # the last epoch's mean, for the row


def _deployed_gram(model) -> float:
    """sum ||Q^T Q - I||^2 computed apart from the defense: numpy on the weights the
    deployed build stores (deploy.plain.quantized_weights), Gram on the smaller side."""
    from sweeper.deploy.plain import quantized_weights

    total = 0.0
    for layer in model.layers:
        if hasattr(layer, "kernel"):
            kernel = quantized_weights(layer)[0]
            matrix = kernel.reshape(-1, kernel.shape[-1])
            gram = matrix.T @ matrix if matrix.shape[0] >= matrix.shape[1] else matrix @ matrix.T
            total += float(np.sum((gram - np.eye(len(gram))) ** 2))
    return total


@pytest.mark.slow
def test_jr_layer_lowers_the_hidden_blocks_jacobians_against_its_undefended_twin():
    """The intended effect, measured as the rows measure it (evaluation mode, the
    straight-through Jacobian): both conv blocks' norms at most 0.7x the twin's (measured:
    16.7 and 13.3 against 34.6 and 26.1), and the penalty it trains on below half the
    twin's. The dense block (10 outputs, the smallest term of the sum) barely moves."""
    import tensorflow as tf

    from sweeper.defenses.regularizers import layer_jacobian_penalty
    from sweeper.models import jacobian

    model, defense = _trained("jr_layer")
    x, y = _held_out()
    defended, undefended = jacobian.measure(model, x[:100], seed=1), jacobian.measure(_twin(), x[:100], seed=1)
    for block in (0, 1):
        assert defended["jacobian_block_fro"][block] < 0.7 * undefended["jacobian_block_fro"][block], \
            (defended["jacobian_block_fro"], undefended["jacobian_block_fro"])
    key = tf.constant([5, 6], tf.int64)  # the same projections for both models
    penalty = lambda m: float(layer_jacobian_penalty(jacobian.block_model(m), x, key, 4)[1])  # noqa: E731
    assert penalty(model) < penalty(_twin()) / 2, (penalty(model), penalty(_twin()))
    assert 0 < defense.summary["jr_layer"]  # the last epoch's mean, for the row
    accuracy = lambda m: float(np.mean(np.argmax(m.predict(x, verbose=0), axis=1) == y))  # noqa: E731
    assert accuracy(model) > accuracy(_twin()) - 0.15  # measured: 0.87 against 0.97 after 4 epochs


def test_dq_penalises_the_kernels_the_layers_multiply_with():
    import tensorflow as tf
    from qkeras import QDepthwiseConv2D

    from sweeper.defenses.regularizers import kernel_matrices, lipschitz_penalty

    # ternary: the latent kernels are floats, the layers multiply with -1, 0, 1
    model = _model("ternary")
    assert [tuple(m.shape) for m in kernel_matrices(model)] == [(1, 9, 16), (1, 144, 32), (1, 512, 10)]
    assert float(lipschitz_penalty(model)) == pytest.approx(_deployed_gram(model), rel=1e-6)
    with tf.GradientTape() as tape:
        penalty = lipschitz_penalty(model)
    kernels = [v for v in model.trainable_variables if "kernel" in v.name]
    # straight-through: the gradient reaches every latent kernel
    assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in tape.gradient(penalty, kernels))
    # a depthwise kernel is one operator per channel: three channels whose 3x3 filters are
    # each the same unit vector are each orthonormal (a (9, 3) matrix would not be)
    inputs = tf.keras.Input((4, 4, 3))
    depthwise = tf.keras.Model(inputs, QDepthwiseConv2D(3, use_bias=False)(inputs))
    unit = np.zeros((3, 3, 3, 1), np.float32)
    unit[0, 0] = 1.0
    depthwise.layers[-1].depthwise_kernel.assign(unit)
    assert [tuple(m.shape) for m in kernel_matrices(depthwise)] == [(3, 9, 1)]
    assert float(lipschitz_penalty(depthwise)) == 0.0


@functools.cache
def _dq_and_twin(preset: str):
    """(model trained with dq, its defense, the undefended twin): same batches, same start."""
    model, defense = _trained("dq", preset=preset)
    return model, defense, _trained(None, preset=preset)[0]


def _test_accuracy(model) -> float:
    x, y = _held_out()
    return float(np.mean(np.argmax(model.predict(x, verbose=0), axis=1) == y))


@pytest.mark.slow
@pytest.mark.parametrize("preset, lowered", [("ternary", 5), ("int4", 1.5)])
def test_dq_lowers_the_quantized_networks_gram_and_keeps_clean_accuracy(preset, lowered):
    model, defense, twin = _dq_and_twin(preset)
    defended, undefended = _deployed_gram(model), _deployed_gram(twin)
    # measured: ternary 15,496 against 244,889; int4 620 against 1,262
    assert defended < undefended / lowered, (defended, undefended)
    # measured: ternary 0.855 against 0.878, int4 0.970 against 0.973
    assert _test_accuracy(model) > _test_accuracy(twin) - 0.05
    assert defense.summary["dq"] > 0
    # every class still reads some feature: the quantized last layer has a non-zero
    # weight in every column (penalising the latent weights emptied ternary's)
    dense = [layer for layer in model.layers if hasattr(layer, "kernel")][-1]
    from sweeper.deploy.plain import quantized_weights

    assert (quantized_weights(dense)[0] != 0).any(axis=0).all()


def test_dq_refuses_binary_weights_whose_norm_is_fixed():
    from sweeper.models.quantizers import QUANTIZERS

    with pytest.raises(UserError, match=r"^defense 'dq' needs kernels whose norms training can change; 'binary'"):
        defenses.build("dq", preset=QUANTIZERS.get("binary"))
    assert defenses.build("dq", preset=QUANTIZERS.get("sbinary")) is not None  # its scale adapts
    from sweeper.plan import grid

    raw = {"name": "g", "datasets": ["digits"], "models": ["small_cnn"], "quantizers": ["fp", "binary"],
           "defenses": ["none", "dq"]}
    with pytest.raises(UserError, match=r"^grid: defenses: defense 'dq' needs .*; limit it with quantizers"):
        grid.validate(raw)
    raw["defenses"][1] = {"name": "dq", "quantizers": ["fp"]}
    assert grid.validate(raw).defenses[1].quantizers == ("fp",)


def _fgsm_accuracy(model, eps: float) -> float:
    from sweeper import attacks

    digits, _, _ = _split()
    x, y = _held_out()
    classifier = attacks.make_classifier(model, 10, digits.input_shape, digits.clip_values)
    x_adv = attacks.run("fgsm", classifier, x, y, eps, "inf", {"num_random_init": 0}, 0)
    return float(np.mean(np.argmax(classifier.predict(x_adv), axis=1) == y))


@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("fgsm_at", {"eps": 0.1}),
                                          ("pgd_at", {"eps": 0.1, "steps": 3, "step": 0.5})])
def test_adversarial_training_raises_fgsm_accuracy_at_its_training_eps(name, params):
    model, _ = _trained(name, params)
    defended, undefended = _fgsm_accuracy(model, 0.1), _fgsm_accuracy(_twin(), 0.1)
    assert defended > undefended + 0.1, (defended, undefended)  # measured: 0.79 and 0.85 against 0.63


@pytest.mark.slow
def test_dbwt_evaluates_one_set_of_shared_weights_at_every_bit_width():
    from sweeper import models
    from sweeper.defenses.bit_width import accuracy_by_width, at_bit_width

    model, defense = _trained("dbwt")
    x, y = _held_out()
    weights = model.get_weights()
    fingerprint = models.model_fingerprint(model)
    by_width = accuracy_by_width(model, x, y, [8, 4, 2])
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), weights))
    assert models.model_fingerprint(model) == fingerprint == models.model_fingerprint(_model())
    with at_bit_width(model, 2):
        two_bit = model.predict(x[:50], verbose=0)
    assert not np.allclose(two_bit, model.predict(x[:50], verbose=0))  # the width did change
    # The mechanism: trained across widths, the weights still work at 2 bits, where the
    # same architecture trained at 8 bits only does not (measured: 0.89 against 0.40).
    plain_two_bit = accuracy_by_width(_twin(), x, y, [2])[2]
    assert min(by_width.values()) > 0.8 and by_width[2] > plain_two_bit + 0.2, (by_width, plain_two_bit)
    assert 2 < defense.summary["bits"] < 8  # the last epoch cycled through the widths


class _Interrupt(Exception):
    pass


class _DiesAfter:
    """Checkpoint hooks whose process 'dies' right after checkpointing epoch ``k``."""

    def __init__(self, k: int):
        self.k = k

    def latest(self):
        return None

    def save(self, data: bytes, epoch: int) -> None:
        if epoch == self.k:
            raise _Interrupt

    def finished(self) -> None:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("name, params", [("fgsm_at", {"eps": 0.1}), ("dbwt", {"period": 2})])
def test_a_resumed_defended_training_ends_with_the_uninterrupted_weights(tmp_path, name, params):
    """Random starts are drawn from (seed, step) and dbwt's cycle from the optimizer's
    step count, both restored by a checkpoint: so the resumed run is bitwise the same."""
    from sweeper.run.checkpoints import Checkpoints

    settings = Train(epochs=3, learning_rate=0.01)
    uninterrupted, _ = _trained(name, params, settings)
    with pytest.raises(_Interrupt):
        _trained(name, params, settings, checkpoints=Checkpoints(str(tmp_path), "job", 1, _DiesAfter(1)))
    resumed, _ = _trained(name, params, settings, checkpoints=Checkpoints(str(tmp_path), "job", 1))
    for a, b in zip(resumed.get_weights(), uninterrupted.get_weights()):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_defended_job_stores_its_defense_and_regularizer_and_keeps_them_when_cached(tmp_path):
    from sweeper.plan import expand, grid
    from sweeper.run.trial import JobContext, run_job

    raw = {"name": "defended", "datasets": ["digits"], "models": ["small_cnn"], "quantizers": [PRESET],
           "defenses": [{"name": "jr", "label": "jr_strong", "params": {"lambda": 0.1}}],
           "folds": {"k": 3, "only": [0]}, "train": {"epochs": 1}, "samples": 10}
    [job] = expand.expand(grid.validate(raw)).jobs
    digits, context = datasets.load("digits"), JobContext("defended", ("stm32h7",), model_cache=str(tmp_path))
    runs = [[], []]
    for rows in runs:  # trained, then loaded from the cache
        run_job(job, [expand.Cell(job.job_id, "none", "none", "none", 0.0, "0", (), 10)], digits, context,
                rows.append)
    trained, cached = runs[0][0], runs[1][0]
    assert (trained["defense"], trained["defense_label"]) == ("jr", "jr_strong")
    assert trained["defense_params"] == '{"lambda": 0.1, "projections": 1}'
    assert trained["defense_reg"] > 0 and not trained["model_cached"] and cached["model_cached"]
    assert cached["defense_reg"] == trained["defense_reg"]
    assert cached["weights_sha256"] == trained["weights_sha256"]


@pytest.mark.slow
def test_a_dbwt_job_stores_rows_at_each_bit_width_from_its_one_set_of_weights(tmp_path):
    """The rows at another width are the cached weights quantized there: the clean and
    FGSM outcomes an attack run at that width by hand gives, in a configuration of their own."""
    from sweeper import attacks, models
    from sweeper.defenses.bit_width import at_bit_width
    from sweeper.models import jacobian
    from sweeper.models.quantizers import QUANTIZERS
    from sweeper.plan import expand, grid
    from sweeper.run.cache import ModelCache
    from sweeper.run.trial import JobContext, run_job

    raw = {"name": "cycled", "datasets": ["digits"], "models": ["small_cnn"], "quantizers": ["int4"],
           "defenses": ["dbwt"], "attacks": [{"name": "fgsm", "eps": [0.1]}],
           "folds": {"k": 3, "only": [0]}, "train": {"epochs": 3}, "samples": 30}
    plan = expand.expand(grid.validate(raw))
    [job] = plan.jobs
    data, rows = datasets.load("digits"), []
    run_job(job, plan.cells_of(job.job_id), data, JobContext("cycled", ("stm32h7",), model_cache=str(tmp_path)),
            rows.append)
    by = {(r["eval_bits"], r["attack"]): r for r in rows}
    assert set(by) == {(w, a) for w in (None, 8, 2) for a in ("none", "fgsm")}
    assert len({r["weights_sha256"] for r in rows}) == 1  # one set of weights
    assert {by[w, "none"]["config_id"] for w in (None, 8, 2)} == {job.config_id, job.config_id_at(8),
                                                                  job.config_id_at(2)}
    assert all(by[w, a]["deployed_adv_acc"] is None for w in (8, 2) for a in ("none", "fgsm"))
    assert by[None, "none"]["deployed_clean_acc"] is not None
    assert by[2, "none"]["flash_packed_kb"] < by[None, "none"]["flash_packed_kb"] < by[8, "none"]["flash_packed_kb"]
    assert by[8, "none"]["flash_kb"] == by[None, "none"]["flash_kb"]  # int8 .tflite at every width

    model = models.build("small_cnn", data.input_shape, data.nb_classes, QUANTIZERS.get("int4"))
    assert ModelCache(str(tmp_path)).load_weights(model, job.job_id)
    index = np.array(by[None, "none"]["sample_index"])
    x, y = data.x[index], data.y[index]
    for width in (8, 2):
        with at_bit_width(model, width):
            clean = np.argmax(model.predict(x, verbose=0), axis=1)
            ok = clean == y
            classifier = attacks.make_classifier(model, data.nb_classes, data.input_shape, data.clip_values)
            x_adv = x.copy()
            if ok.any():
                fgsm = dict(plan.cells_of(job.job_id)[1].params)
                x_adv[ok] = attacks.run("fgsm", classifier, x[ok], y[ok], 0.1, "inf", fgsm, job.draw_seed)
            adv = np.argmax(model.predict(x_adv, verbose=0), axis=1)
            measured = jacobian.measure(model, x, job.draw_seed)  # the Jacobians at that width
        assert by[width, "none"]["clean_correct"] == (clean == y).tolist()
        assert by[width, "fgsm"]["adv_pred"] == adv.tolist()
        assert by[width, "fgsm"]["jacobian_block_fro"] == measured["jacobian_block_fro"]
        assert by[width, "none"]["jacobian_fro"] == measured["jacobian_fro"]
    assert by[2, "none"]["jacobian_fro"] != by[None, "none"]["jacobian_fro"]
    assert by[8, "none"]["clean_correct"] != by[2, "none"]["clean_correct"]  # the width did change

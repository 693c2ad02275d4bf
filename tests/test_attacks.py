"""Attacks: specs and validation without ART, the fast estimator against ART's stock one,
every registered attack on a tiny trained QKeras digits model, the eps semantics (0 clean,
unbounded for minimal attacks), and the Square Attack on non-square inputs."""

from __future__ import annotations

import math
import random
import subprocess
import sys

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks
from sweeper.errors import UserError

N = 8
CLIP = (0.0, 1.0)
# Small enough to keep every attack under a second on the fast estimator.
QUICK_PARAMS = {
    "fgsm": {},
    "pgd": {"max_iter": 5},
    "square": {"max_iter": 30},
    "cw_l2": {"max_iter": 5, "binary_search_steps": 3},
    "boundary": {"max_iter": 20, "init_size": 20},
    "zoo": {"max_iter": 3, "binary_search_steps": 2},
}


def _tiny_qkeras_model():
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, QDense, quantized_bits, quantized_relu

    bits = quantized_bits(4, 0, 1)
    return tf.keras.Sequential([
        tf.keras.Input((8, 8, 1)),
        QConv2D(8, 3, kernel_quantizer=bits, bias_quantizer=bits),
        QActivation(quantized_relu(4)),
        tf.keras.layers.Flatten(),
        QDense(10, kernel_quantizer=bits, bias_quantizer=bits),  # logits, no softmax
    ])


@pytest.fixture(scope="module")
def digits():
    import tensorflow as tf
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    tf.keras.utils.set_random_seed(0)
    model = _tiny_qkeras_model()
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1500], y[:1500], epochs=4, batch_size=32, verbose=0)
    return model, x[1500:], y[1500:]


@pytest.fixture(scope="module")
def fast(digits):
    return attacks.make_classifier(digits[0], 10, (8, 8, 1), CLIP)


@pytest.fixture(scope="module")
def stock(digits):
    return attacks.make_stock_classifier(digits[0], 10, (8, 8, 1), CLIP)


@pytest.fixture(scope="module")
def sample(digits):
    _, x, y = digits
    return x[:N], y[:N]


def _accuracy(classifier, x, y) -> float:
    return float((classifier.predict(x).argmax(axis=1) == y).mean())


# --------------------------------------------------------------------------- no ART needed


def test_import_pulls_in_neither_tensorflow_nor_art():
    code = ("import sys, sweeper.attacks as a; a.validate('pgd', 'inf', {'max_iter': 3}); "
            "assert not {'tensorflow', 'art'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_registered_attacks_and_their_norms():
    assert attacks.ATTACKS.names() == ["fgsm", "pgd", "square", "cw_l2", "boundary", "zoo"]
    for name in attacks.ATTACKS:
        spec = attacks.ATTACKS.get(name)
        assert spec.name == name and spec.norms and set(spec.norms) <= {"inf", "1", "2"}
        assert spec.fixed.get("targeted", False) is False  # untargeted everywhere
    assert not attacks.ATTACKS.get("cw_l2").uses_eps and attacks.ATTACKS.get("pgd").uses_eps


def test_unknown_attack_lists_the_available_ones():
    with pytest.raises(UserError, match=r"unknown attack 'pgdd'; available: fgsm, pgd, square"):
        attacks.validate("pgdd", None, {})


@pytest.mark.parametrize("norm, params, eps, message", [
    ("l2", {}, None, r"attack 'pgd': unsupported norm 'l2'; accepted: inf, 1, 2"),
    (None, {"max_iters": 3}, None,
     r"attack 'pgd': unknown parameter 'max_iters'; accepted: eps_step, max_iter, num_random_init"),
    (None, {"max_iter": 2.5}, None, r"parameter 'max_iter' must be an integer, got 2.5"),
    (None, {"max_iter": True}, None, r"parameter 'max_iter' must be a number, got True"),
    (None, {"targeted": True}, None, r"unknown parameter 'targeted'"),
    (None, {}, -0.1, r"eps must be a finite number >= 0, got -0.1"),
])
def test_validate_names_the_bad_field(norm, params, eps, message):
    with pytest.raises(UserError, match=message):
        attacks.validate("pgd", norm, params, eps=eps)


def test_validate_accepts_norm_spellings_and_int_for_float():
    for norm in ("inf", "INF", float("inf"), 2, 2.0, "2", None):
        attacks.validate("pgd", norm, {"eps_step": 1, "max_iter": 3})
    with pytest.raises(UserError, match="accepted: 2$"):
        attacks.validate("cw_l2", "inf", {})


def test_art_params_fill_defaults_and_pin_fixed():
    full = attacks.art_params("pgd", {"max_iter": 3})
    assert full["max_iter"] == 3 and full["eps_step"] == 2 / 255
    assert full["targeted"] is False and full["verbose"] is False


def test_budget_projection_and_rejection_without_art():
    class Box:
        clip_values = CLIP

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (6, 4, 4, 1)).astype(np.float32)
    x_adv = rng.uniform(0, 1, x.shape).astype(np.float32)
    for norm in ("inf", "1", "2"):
        projected = attacks._within_budget(x, x_adv, 0.3, norm, project=True, classifier=Box)
        assert np.all(attacks.perturbation_norms(x, projected, norm) <= 0.3 * (1 + attacks.BUDGET_RTOL))
        assert projected.min() >= 0 and projected.max() <= 1
    near = x + (x_adv - x) * 0.01
    mixed = np.concatenate([near[:3], x_adv[3:]])
    kept = attacks._within_budget(x, mixed, 0.3, "2", project=False, classifier=Box)
    np.testing.assert_array_equal(kept[:3], near[:3])  # inside: kept
    np.testing.assert_array_equal(kept[3:], x[3:])  # outside: replaced by the clean input
    assert attacks._within_budget(x, x_adv, None, "2", project=False, classifier=Box) is x_adv


class NoModel:
    """A classifier that must not be used: run() answers these cases before ART."""

    clip_values = CLIP

    def __getattr__(self, name):
        raise AssertionError(f"run() used the classifier's {name!r}")


UNBOUNDED_MESSAGE = ("needs a finite eps budget; 'unbounded' is only for minimal-perturbation "
                     "attacks: cw_l2, boundary, zoo")


def test_minimal_attacks_are_the_ones_without_a_budget():
    minimal = [name for name in attacks.ATTACKS if attacks.is_minimal(name)]
    assert minimal == ["cw_l2", "boundary", "zoo"]


@pytest.mark.parametrize("name", ["fgsm", "pgd", "square", "cw_l2", "boundary", "zoo"])
def test_zero_eps_is_clean_for_every_attack(name):
    # fgsm@0 always meant clean; cw_l2/boundary/zoo@0 used to mean unbounded.
    x = np.linspace(-0.5, 1.5, 2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8, 1)
    clean = attacks.run(name, NoModel(), x, None, 0.0, None, {}, seed=0)
    np.testing.assert_array_equal(clean, np.clip(x, *CLIP))
    assert clean.dtype == np.float32


@pytest.mark.parametrize("name", ["fgsm", "pgd", "square"])
@pytest.mark.parametrize("eps", [math.inf, None])
def test_unbounded_is_only_for_minimal_attacks(name, eps):
    x = np.zeros((2, 8, 8, 1), np.float32)
    message = f"^attack '{name}': {UNBOUNDED_MESSAGE}$"
    with pytest.raises(UserError, match=message):
        attacks.run(name, NoModel(), x, None, eps, None, {}, seed=0)
    if eps is not None:  # validate(eps=None) means "no eps to check"
        with pytest.raises(UserError, match=message):
            attacks.validate(name, None, {}, eps=eps)
    for minimal in ("cw_l2", "boundary", "zoo"):
        attacks.validate(minimal, None, {}, eps=math.inf)


# --------------------------------------------------------------------------- estimator
# Everything below uses the trained model: marked slow (TensorFlow import + fit, ~10 s once).


@pytest.mark.slow
def test_fast_estimator_matches_stock(fast, stock, sample):
    x, y = sample
    one_hot = np.eye(10, dtype=np.float32)[y]
    assert isinstance(fast, attacks.FastTensorFlowV2Classifier)
    np.testing.assert_allclose(fast.predict(x), stock.predict(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fast.loss_gradient(x, one_hot), stock.loss_gradient(x, one_hot),
                               rtol=1e-5, atol=1e-7)
    for label in (None, 3, y):
        np.testing.assert_allclose(fast.class_gradient(x, label=label),
                                   stock.class_gradient(x, label=label), rtol=1e-5, atol=1e-6)
    assert fast.class_gradient(x).shape == (N, 10, 8, 8, 1)
    assert fast.class_gradient(x, label=y).shape == (N, 1, 8, 8, 1)


@pytest.mark.slow
def test_fast_estimator_handles_other_batch_sizes_and_label_indices(fast, stock, digits):
    _, x, y = digits
    for n in (1, 3, 64):
        np.testing.assert_allclose(fast.predict(x[:n]), stock.predict(x[:n]), rtol=1e-5, atol=1e-6)
    one_hot = np.eye(10, dtype=np.float32)[y[:5]]
    np.testing.assert_allclose(fast.loss_gradient(x[:5], y[:5]), stock.loss_gradient(x[:5], one_hot),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_model_is_not_trivial(fast, digits):
    _, x, y = digits
    assert _accuracy(fast, x, y) > 0.6


# --------------------------------------------------------------------------- attacks


@pytest.mark.slow
@pytest.mark.parametrize("name", list(QUICK_PARAMS))
def test_every_attack_stays_in_clip_values_and_budget(name, fast, sample):
    assert set(QUICK_PARAMS) == set(attacks.ATTACKS.names())
    x, y = sample
    spec = attacks.ATTACKS.get(name)
    for norm in spec.norms:
        eps = 0.1 if norm == "inf" else 0.5
        x_adv = attacks.run(name, fast, x, y, eps, norm, QUICK_PARAMS[name], seed=0)
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        assert x_adv.min() >= CLIP[0] and x_adv.max() <= CLIP[1]
        sizes = attacks.perturbation_norms(x, x_adv, norm)
        assert np.all(sizes <= eps * (1 + attacks.BUDGET_RTOL)), (norm, sizes)


@pytest.mark.slow
def test_post_hoc_budget_rejects_large_perturbations(fast, sample):
    x, y = sample
    params = {"max_iter": 20, "init_size": 20}
    unbounded = attacks.run("boundary", fast, x, y, math.inf, "2", params, seed=0)
    sizes = attacks.perturbation_norms(x, unbounded, "2")
    assert sizes.max() > 0  # boundary found something
    eps = float(np.median(sizes[sizes > 0]))
    bounded = attacks.run("boundary", fast, x, y, eps, "2", params, seed=0)
    inside = sizes <= eps
    np.testing.assert_array_equal(bounded[inside], unbounded[inside])
    np.testing.assert_array_equal(bounded[~inside], x[~inside])


@pytest.mark.slow
def test_fgsm_at_large_eps_lowers_accuracy(fast, digits):
    _, x, y = digits
    x, y = x[:100], y[:100]
    x_adv = attacks.run("fgsm", fast, x, y, 0.3, "inf", {}, seed=0)
    assert _accuracy(fast, x_adv, y) < _accuracy(fast, x, y) - 0.3


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pgd", "cw_l2", "boundary"])
def test_zero_eps_returns_clean_inputs(name, fast, sample):
    x, y = sample
    np.testing.assert_array_equal(attacks.run(name, fast, x, y, 0.0, None, {}, seed=0), x)
    if not attacks.is_minimal(name):
        with pytest.raises(UserError, match="needs a finite eps budget"):
            attacks.run(name, fast, x, y, None, None, {}, seed=0)


@pytest.mark.slow
def test_unbounded_minimal_attack_returns_its_raw_examples(fast, sample):
    # One unbounded run per model; every post-hoc budget is then read off its norms.
    x, y = sample
    params = {**QUICK_PARAMS["cw_l2"], "initial_const": 1.0, "learning_rate": 0.1}
    unbounded = attacks.run("cw_l2", fast, x, y, math.inf, "2", params, seed=0)
    np.testing.assert_array_equal(attacks.run("cw_l2", fast, x, y, None, "2", params, seed=0),
                                  unbounded)
    assert unbounded.min() >= CLIP[0] and unbounded.max() <= CLIP[1]
    changed = attacks.perturbation_norms(x, unbounded, "2") > 0
    assert changed.any()
    # A changed sample is adversarial; a failed one is exactly its clean input.
    assert (fast.predict(unbounded[changed]).argmax(axis=1) != y[changed]).all()
    np.testing.assert_array_equal(unbounded[~changed], x[~changed])
    sizes = attacks.perturbation_norms(x, unbounded, "2")
    eps = float(np.median(sizes[changed]))
    bounded = attacks.run("cw_l2", fast, x, y, eps, "2", params, seed=0)
    np.testing.assert_array_equal(bounded, np.where((sizes <= eps)[:, None, None, None], unbounded, x))


@pytest.mark.slow
def test_boundary_overflow_counts_as_a_failed_attack(fast, sample, monkeypatch):
    from art.attacks.evasion import BoundaryAttack

    calls = []

    def overflow(self, x, y=None, **kwargs):
        calls.append(len(x))
        raise OverflowError("(34, 'Numerical result out of range')")

    monkeypatch.setattr(BoundaryAttack, "generate", overflow)
    x, y = sample
    for eps in (math.inf, 10.0):  # unbounded, and a budget the random start would meet
        x_adv = attacks.run("boundary", fast, x, y, eps, "2", QUICK_PARAMS["boundary"], seed=0)
        np.testing.assert_array_equal(x_adv, x)
    assert calls  # samples with a random start reached ART (and overflowed)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pgd", "square", "boundary"])
def test_same_seed_same_examples(name, fast, sample):
    x, y = sample
    eps = 0.1 if attacks.ATTACKS.get(name).uses_eps else math.inf
    first = attacks.run(name, fast, x, y, eps, None, QUICK_PARAMS[name], seed=3)
    again = attacks.run(name, fast, x, y, eps, None, QUICK_PARAMS[name], seed=3)
    np.testing.assert_array_equal(first, again)


@pytest.mark.slow
def test_overridden_art_defaults_reach_art(fast):
    def built(name, **params):
        spec = attacks.ATTACKS.get(name)
        return spec.build(fast, 0.1, spec.norms[0], attacks.art_params(name, params), 0)

    boundary = built("boundary")
    assert boundary.targeted is False and boundary.max_iter == 1000 and boundary.verbose is False
    pgd = built("pgd")
    assert (pgd.max_iter, pgd.num_random_init, pgd.eps_step, pgd.targeted) == (7, 1, 2 / 255, False)
    assert built("pgd", max_iter=3).max_iter == 3
    zoo = built("zoo")
    assert (zoo.binary_search_steps, zoo.use_resize, zoo.use_importance) == (10, False, False)
    assert zoo.nb_parallel == 64  # capped at the 8x8x1 input
    cw = built("cw_l2")
    assert (cw.max_iter, cw.binary_search_steps, cw.targeted) == (10, 10, False)


@pytest.mark.slow
def test_art_rejects_bad_values_as_user_errors(fast, sample):
    x, y = sample
    with pytest.raises(UserError, match="attack 'pgd':"):
        attacks.run("pgd", fast, x, y, 0.1, "inf", {"max_iter": -1}, seed=0)


@pytest.mark.slow
def test_cw_batch_size_changes_speed_not_examples(fast, sample):
    # sweeper pins batch_size=128 for C&W where ART defaults to 1; this is why that is safe.
    x, y = sample
    spec = attacks.ATTACKS.get("cw_l2")
    results = []
    for batch_size in (1, 128):
        np.random.seed(0)
        params = {**attacks.art_params("cw_l2", QUICK_PARAMS["cw_l2"]), "batch_size": batch_size}
        results.append(spec.build(fast, 0.0, "2", params, 0).generate(x=x, y=y))
    np.testing.assert_array_equal(results[0], results[1])


# --------------------------------------------------------------------------- square attack


def test_square_tile_is_arts_clamped_to_the_narrow_side():
    # ART's side: round(sqrt(p * h * w)), at least 1 (L-inf) or 3 and odd (L2).
    assert attacks._tile_side(0.8, 8, 8, smallest=1, odd=False) == 7  # ART's, unclamped
    assert attacks._tile_side(0.8, 32, 32, smallest=3, odd=True) == 29
    assert attacks._tile_side(0.001, 32, 32, smallest=3, odd=True) == 3
    assert attacks._tile_side(0.8, 49, 10, smallest=1, odd=False) == 10  # ART: 20 > width
    assert attacks._tile_side(0.8, 10, 49, smallest=3, odd=True) == 10
    assert attacks._tile_side(0.5, 49, 10, smallest=3, odd=True) == 10  # ART: 17
    np.random.seed(0)
    assert {attacks._tile_start(10, 10) for _ in range(20)} == {0}  # the whole width
    assert {attacks._tile_start(49, 10) for _ in range(500)} == set(range(39))  # as ART



@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 0.5)])
def test_square_matches_art_on_square_inputs(norm, eps, fast, sample):
    # sweeper's Square clamps its tile to the narrow side; on 8x8 it must be ART's attack.
    from art.attacks.evasion import SquareAttack

    x, y = sample
    params = attacks.art_params("square", {"max_iter": 40})
    results = []
    for cls in (SquareAttack, attacks.AnyShapeSquareAttack):
        random.seed(5)
        np.random.seed(5)
        attack = cls(fast, norm=math.inf if norm == "inf" else 2, eps=eps, **params)
        results.append(attack.generate(x=x, y=y))
    np.testing.assert_array_equal(results[1], results[0])
    assert (attacks.perturbation_norms(x, results[1], norm) > 0).any()  # it did attack
    assert isinstance(attacks.ATTACKS.get("square").build(fast, eps, norm, params, 0),
                      attacks.AnyShapeSquareAttack)


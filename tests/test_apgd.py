"""APGD-CE and APGD-DLR (sweeper/attacks/apgd.py, and apgd_l1.py for L1): the reference's
step-size schedules, DLR loss and L1 projection on fixed values; non-finite iterates (tied
logits) never replacing a finite fooling one; and on briefly trained QKeras models at every
dataset's input shape: budget and clip values, at least PGD's strength at equal iterations
(L1: at least ART's PGD, and more than a random perturbation of the same budget), seeding,
restarts."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from sweeper import attacks
from sweeper.attacks import apgd, apgd_l1
from sweeper.errors import UserError

CLIP = (0.0, 1.0)
SHAPES = {  # dataset: input shape (digits resized to it: real images, every shape)
    "digits": (8, 8, 1),
    "cifar10_gray": (32, 32, 1),
    "cifar10": (32, 32, 3),
    "speech_commands": (49, 10, 1),
}
EPS = {"inf": 0.05, "2": 0.5, "1": 4.0}  # L1: 3,072 elements on cifar10 need more than 1
N = 100  # attacked samples per model
QUICK = {"max_iter": 10}


# --------------------------------------------------------------------------- no model


def test_registered_as_budget_attacks_with_the_references_defaults():
    for name in ("apgd_ce", "apgd_dlr"):
        spec = attacks.ATTACKS.get(name)
        assert spec.norms == ("inf", "2", "1") and spec.uses_eps and not spec.black_box
        assert dict(spec.defaults) == {"max_iter": 100, "restarts": 1}
        assert spec.fixed["rho"] == 0.75 and spec.fixed["targeted"] is False
        assert not attacks.single_coordinate(name, "1")  # APGD-L1 moves many elements
    with pytest.raises(UserError, match=r"attack 'apgd_ce': unknown parameter 'eps_step'"):
        attacks.validate("apgd_ce", "inf", {"eps_step": 0.1})
    with pytest.raises(UserError, match=r"attack 'apgd_dlr': unsupported norm 'patch'"):
        attacks.validate("apgd_dlr", "patch", {})


def test_l1_checks_every_four_percent_of_the_iterations():
    # The reference's L1 branch: k = max(int(0.04 * n_iter), 1), checked whenever k more
    # iterations have run (counter3 == k), not on the L-inf/L2 schedule.
    assert list(apgd_l1.checkpoints(100)) == list(range(3, 100, 4))
    assert set(apgd_l1.checkpoints(100).values()) == {4}
    assert apgd_l1.checkpoints(10) == {i: 1 for i in range(10)}
    assert list(apgd_l1.checkpoints(1000)) == list(range(39, 1000, 40))


def test_l1_sparsity_check_resets_or_shrinks_the_step():
    # Sample 0's best point moved 2 of 4 elements, against 4 at the last check: sparser
    # (2/4 < 0.95), so its step goes back to eps and it restarts from its best point.
    # Sample 1's moved 4 of 4 as before: step / 1.5. Sample 2's step is at its floor eps/10.
    x = np.zeros((3, 4), np.float32)
    run = _run_state([[0, 0]] * 3, loss_best=[1, 1, 1], reduced_last=[True] * 3, best_last=[1, 1, 1])
    run.x_adv, run.grad = np.zeros((3, 4), np.float32), np.zeros((3, 4), np.float32)
    run.x_best = np.array([[0.1, 0, 0.2, 0], [0.1] * 4, [0.1] * 4], np.float32)
    run.grad_best = np.full((3, 4), 5.0, np.float32)
    run.step = np.array([0.3, 0.9, 0.1], np.float32)
    run.sp_old = np.array([4, 4, 4], np.float32)
    apgd_l1.adapt_sparsity(run, x, eps=1.0)
    np.testing.assert_allclose(run.step, [1.0, 0.6, 0.1], rtol=1e-6)
    np.testing.assert_allclose(run.topk, [2 / 4 / 1.5, 4 / 4 / 1.5, 4 / 4 / 1.5], rtol=1e-6)
    np.testing.assert_array_equal(run.sp_old, [2, 4, 4])
    np.testing.assert_array_equal(run.x_adv[0], run.x_best[0])  # restarted from its best
    np.testing.assert_array_equal(run.x_adv[1:], 0)
    np.testing.assert_array_equal(run.grad[:, 0], [5, 0, 0])


def test_a_non_finite_iterate_never_replaces_a_finite_fooling_one():
    # Label 3; iterate 0 fooled the model (prediction 1) at a finite point. Iterate 1 is NaN:
    # its logits are NaN, whose argmax (0) is not the label either, and its loss NaN. The
    # book-keeping must keep the finite fooling point and restart from the best point.
    y = np.array([3, 3])
    run = _run_state([[0, 0, 0], [0, 0, 0]], loss_best=[0.5, 0.5], reduced_last=[True, True],
                     best_last=[0.5, 0.5])
    fooling = np.array([0.25, 0.75], np.float32)
    run.x_adv = np.stack([fooling, fooling])
    apgd._record(run, 0, np.array([[0, 2, 0, 1.0]] * 2, np.float32), np.array([1.0, 1.0], np.float32), y)
    np.testing.assert_array_equal(run.x_best_adv, [fooling, fooling])
    run.x_adv = np.array([[np.nan, 0.5], [np.nan, 0.5]], np.float32)
    logits = np.array([[np.nan] * 4,  # NaN logits: argmax 0
                       [0, 4, 0, 1.0]], np.float32)  # finite logits of a NaN input (ReLU maps NaN to 0)
    apgd._record(run, 1, logits, np.array([np.nan, 9.0], np.float32), y)
    np.testing.assert_array_equal(run.x_best_adv, [fooling, fooling])
    assert not run.acc.any()  # still fooled, by the finite iterate
    np.testing.assert_array_equal(run.loss_best, [1.0, 1.0])  # a NaN point is never the best
    np.testing.assert_array_equal(run.x_adv, [fooling, fooling])  # restarted from the best point


def test_checkpoints_follow_the_papers_schedule():
    # Paper: p_0 = 0, p_1 = 0.22, p_(j+1) = p_j + max(p_j - p_(j-1) - 0.03, 0.06); checks
    # after ceil(p_j * N) iterations. By hand for N = 100 and 1000:
    after_100 = [22, 41, 57, 70, 80, 87, 93, 99]
    schedule = apgd.checkpoints(100)
    assert [i + 1 for i in schedule] == after_100
    assert list(schedule.values()) == [22, 19, 16, 13, 10, 7, 6, 6]  # window since the last
    assert [i + 1 for i in apgd.checkpoints(1000)] == [10 * w for w in after_100]
    # Tiny runs: every window is at least one iteration, as the reference's max(..., 1).
    assert apgd.checkpoints(10) == {1: 2, **{i: 1 for i in range(2, 10)}}
    assert apgd.checkpoints(1) == {0: 1}


def _run_state(loss_steps, loss_best, reduced_last, best_last):
    batch = len(loss_best)
    x_best = np.full((batch, 2), 7.0, np.float32)
    return apgd._Run(
        x_adv=np.zeros((batch, 2), np.float32), x_adv_old=np.zeros((batch, 2), np.float32),
        grad=np.zeros((batch, 2), np.float32), step=np.ones(batch, np.float32),
        x_best=x_best, grad_best=x_best.copy(), loss_best=np.array(loss_best, np.float32),
        x_best_adv=np.zeros((batch, 2), np.float32), acc=np.ones(batch, bool),
        loss_steps=np.array(loss_steps, np.float32).T,
        loss_best_last_check=np.array(best_last, np.float32),
        reduced_last_check=np.array(reduced_last, bool))


def test_step_is_halved_on_oscillation_or_a_stalled_best_loss():
    # Four samples, a window of k = 4 steps (rows 1..4 of 5; row 0 precedes the window).
    steps = [[0, 1, 2, 3, 4],  # rose 4/4 times: kept
             [0, 1, 0, 1, 0],  # rose 2/4 <= 0.75 * 4: oscillates, halved
             [0, 1, 2, 3, 2],  # rose 3/4 <= 3: halved (the threshold is inclusive)
             [0, 1, 2, 3, 4]]  # rose 4/4, but best loss stalled after an unhalved check
    run = _run_state(steps, loss_best=[4, 1, 3, 4], reduced_last=[False, False, False, False],
                     best_last=[3, 1, 3, 4])
    apgd._check_step_size(run, i=4, k=4, rho=0.75)
    halved = np.array([False, True, True, True])
    np.testing.assert_array_equal(run.step, np.where(halved, 0.5, 1.0))
    np.testing.assert_array_equal(run.x_adv[:, 0], np.where(halved, 7.0, 0.0))  # from the best
    np.testing.assert_array_equal(run.reduced_last_check, halved)
    # A stall right after a halving does not halve again (the reference's condition 2).
    run = _run_state(steps[:1], loss_best=[4], reduced_last=[True], best_last=[4])
    apgd._check_step_size(run, i=4, k=4, rho=0.75)
    assert run.step[0] == 1.0


class NoModel:
    """A classifier that must not be used: these errors come before any model call."""

    clip_values = CLIP

    def __getattr__(self, name):
        raise AssertionError(f"the attack used the classifier's {name!r}")


@pytest.mark.parametrize("params", [{"max_iter": 0}, {"restarts": 0}])
def test_bad_iteration_counts_are_user_errors(params):
    x = np.zeros((2, 8, 8, 1), np.float32)
    (name, value), = params.items()
    with pytest.raises(UserError, match=rf"^attack 'apgd_ce': parameter '{name}' must be a whole number >= 1, "
                                        rf"got {value}$"):
        attacks.run("apgd_ce", NoModel(), x, None, 0.1, "inf", params, seed=0)


# --------------------------------------------------------------------------- TensorFlow


def test_dlr_loss_matches_hand_computed_values():
    import tensorflow as tf

    logits = tf.constant([[1.0, 5.0, 3.0, 2.0],  # y = 1 on top: -(5 - 3) / (5 - 2)
                          [1.0, 5.0, 3.0, 2.0],  # y = 0: -(1 - 5) / (5 - 2)
                          [2.0, -1.0, 0.5, 0.0]])  # y = 2, top three 2, 0.5, 0: -(0.5 - 2) / (2 - 0)
    labels = tf.constant([1, 0, 2])
    expected = [-2 / 3, 4 / 3, 0.75]
    np.testing.assert_allclose(apgd.dlr_loss(logits, labels).numpy(), expected, rtol=1e-6)
    # Shift- and scale-invariant, unlike the logit margin.
    np.testing.assert_allclose(apgd.dlr_loss(3 * logits - 7, labels).numpy(), expected, rtol=1e-5)
    with tf.GradientTape() as tape:
        tape.watch(logits)
        total = tf.reduce_sum(apgd.dlr_loss(logits, labels))
    grad = tape.gradient(total, logits).numpy()
    # Row 1 is -(z_1 - z_2) / (z_1 - z_3) = -N / D with N = 2, D = 3: d/dz_1 = -(D - N) / D^2,
    # d/dz_2 = 1 / D, d/dz_3 = -N / D^2, and z_0 (not among the top three) gets nothing.
    np.testing.assert_allclose(grad[0], [0, -1 / 9, 3 / 9, -2 / 9], rtol=1e-6, atol=1e-7)


def test_compiled_dlr_loss_keeps_its_guard_on_tied_logits():
    # The top three logits tie (ternary and binary networks' logits are sums of a few
    # levels). Compiled, the reference's (a - b) + 1e-12 was rewritten to a - (b - 1e-12),
    # i.e. a - b = 0: an infinite loss and NaN gradients. The guard must survive tracing.
    import tensorflow as tf

    logits = tf.constant([[11.0, 3.0, 11.0, 1.0, 11.0, 5.0],  # y = 1 below three tied logits
                          [11.0, 11.0, 11.0, 0.0, 0.0, 0.0]])  # y = 0 tied on top: loss 0
    labels = tf.constant([1, 0])

    def loss_and_gradient(z, y):
        with tf.GradientTape() as tape:
            tape.watch(z)
            loss = apgd.dlr_loss(z, y)
            total = tf.reduce_sum(loss)
        return loss, tape.gradient(total, z)

    eager = apgd.dlr_loss(logits, labels).numpy()
    np.testing.assert_allclose(eager, [8 / 1e-12, 0.0], rtol=1e-6)  # -(3 - 11) / 1e-12
    loss, gradient = (t.numpy() for t in tf.function(loss_and_gradient)(logits, labels))
    np.testing.assert_allclose(loss, eager, rtol=1e-6)
    assert np.isfinite(gradient).all()


def _tied_classifier():
    """4 classes on 3 inputs in [0, 1]: z_j = round(2 x_j) (straight-through gradient) for
    j < 3 and z_3 = 1.5. At x = 0.7 (label 3) z = (1, 1, 1, 1.5); where every x_j >= 0.75 the
    top three tie at 2 above z_3, a misclassified point with a DLR denominator of 0."""
    import tensorflow as tf

    inputs = tf.keras.Input((3,))
    rounded = tf.keras.layers.Lambda(lambda v: 2 * v + tf.stop_gradient(tf.round(2 * v) - 2 * v))(inputs)
    logits = tf.keras.layers.Lambda(lambda r: tf.concat([r, tf.fill([tf.shape(r)[0], 1], 1.5)], 1))(rounded)
    return attacks.make_classifier(tf.keras.Model(inputs, logits), 4, (3,), CLIP)


@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("2", 3.0), ("inf", 1.0)])
def test_tied_logits_keep_the_fooling_iterate(norm, eps):
    # A random start with every x_j >= 0.75 (1 in 8 of them) ties the top logits above the
    # label: today's DLR gave NaN there, the NaN iterate passed for a fooling one, and the
    # NaN example came back as the clean input, counted robust. Every other start fools the
    # model at once or within a step (z_j = 2 > 1.5 once x_j >= 0.75), so all 40 are fooled.
    classifier = _tied_classifier()
    x, y = np.full((40, 3), 0.7, np.float32), np.full(40, 3)
    assert _accuracy(classifier, x, y) == 1.0
    raw = apgd.APGD(classifier, "dlr", norm, eps, 10, 1, 0.75, 128).generate(x, y, seed=0)
    assert np.isfinite(raw).all()
    x_adv = attacks.run("apgd_dlr", classifier, x, y, eps, norm, {"max_iter": 10}, seed=0)
    np.testing.assert_array_equal(x_adv, raw)
    assert _accuracy(classifier, x_adv, y) == 0.0


def _l1_box_projection(x, p, eps, lo, hi):
    """An independent reference for apgd_l1.l1_projection: the projection of x + p onto
    {||d||_1 <= eps, lo <= x + d <= hi} is d_i = sign(p_i) * clip(|p_i| - lam, 0, room_i),
    room_i the distance to the bound p_i points at, lam >= 0 the smallest with
    sum |d_i| <= eps (KKT); lam by bisection, in float64."""
    out = []
    for xi, pi in zip(x.reshape(len(x), -1).astype(np.float64), p.reshape(len(p), -1).astype(np.float64)):
        room = np.where(pi > 0, hi - xi, xi - lo)

        def size(lam):
            return np.clip(np.abs(pi) - lam, 0, room)

        lam = 0.0
        if size(0.0).sum() > eps:
            low, high = 0.0, float(np.abs(pi).max())
            for _ in range(100):
                middle = (low + high) / 2
                low, high = (middle, high) if size(middle).sum() > eps else (low, middle)
            lam = high
        out.append(np.sign(pi) * size(lam))
    return np.array(out).reshape(p.shape)


@pytest.mark.parametrize("eps", [0.1, 0.6, 2.0, 10.0])
def test_l1_projection_is_the_projection_onto_ball_and_box(eps):
    import tensorflow as tf

    rng = np.random.default_rng(int(eps * 10))
    x = rng.random((12, 8, 8, 1)).astype(np.float32)
    x[:, :2], x[:, -1] = 0.0, 1.0  # elements at the bounds, as digits' background
    p = (rng.standard_normal(x.shape) * rng.choice([0.01, 0.1, 1.0], size=(12, 1, 1, 1))).astype(np.float32)
    p[6:] *= rng.random(p[6:].shape) < 0.1  # sparse perturbations too
    for lo, hi in ((0.0, 1.0), (-0.5, 1.0)):
        delta = tf.function(apgd_l1.l1_projection)(x, p, eps, lo, hi).numpy()
        expected = _l1_box_projection(x, p, eps, lo, hi)
        np.testing.assert_allclose(p + delta, expected, atol=2e-5)
        assert (x + p + delta >= lo - 1e-6).all() and (x + p + delta <= hi + 1e-6).all()
        sizes = np.abs(p + delta).reshape(len(x), -1).sum(axis=1)
        assert (sizes <= eps * (1 + 1e-4)).all()
    assert (np.abs(expected).reshape(12, -1).sum(axis=1) > eps * 0.999).any()  # the ball binds


@pytest.mark.slow
def test_dlr_needs_three_classes():
    import tensorflow as tf

    two_classes = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    classifier = attacks.make_classifier(two_classes, 2, (4,), CLIP)
    x = np.full((3, 4), 0.5, np.float32)
    with pytest.raises(UserError, match=r"^attack 'apgd_dlr': the DLR loss needs at least 3 "
                                        r"classes; the model has 2$"):
        attacks.run("apgd_dlr", classifier, x, None, 0.1, "inf", QUICK, seed=0)
    assert attacks.run("apgd_ce", classifier, x, None, 0.1, "inf", QUICK, seed=0).shape == x.shape


# --------------------------------------------------------------------------- trained models
# Digits resized to each dataset's input shape, a small QKeras CNN trained for 3 epochs.


@pytest.fixture(scope="module")
def trained():
    """dataset -> (fast classifier, N held-out inputs, their labels), built on first use."""
    return functools.cache(lambda dataset: _trained_model(SHAPES[dataset]))


def _digits_as(shape):
    import tensorflow as tf
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    if shape[:2] != x.shape[1:3]:
        x = tf.image.resize(x, shape[:2]).numpy()
    x = np.clip(np.repeat(x, shape[2], axis=-1), *CLIP).astype(np.float32)
    return x, data.target.astype(np.int64)


def _trained_model(shape):
    import tensorflow as tf
    from qkeras import QActivation, QConv2D, QDense, quantized_bits, quantized_relu

    x, y = _digits_as(shape)
    tf.keras.utils.set_random_seed(0)
    bits = quantized_bits(4, 0, 1)
    model = tf.keras.Sequential([
        tf.keras.Input(shape),
        QConv2D(8, 3, strides=1 if shape[0] == 8 else 2, kernel_quantizer=bits, bias_quantizer=bits),
        QActivation(quantized_relu(4)),
        tf.keras.layers.Flatten(),
        QDense(10, kernel_quantizer=bits, bias_quantizer=bits),  # logits
    ])
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:1500], y[:1500], epochs=3, batch_size=32, verbose=0)
    return attacks.make_classifier(model, 10, shape, CLIP), x[1500:1500 + N], y[1500:1500 + N]


def _accuracy(classifier, x, y) -> float:
    return float((classifier.predict(x).argmax(axis=1) == y).mean())


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(SHAPES))
@pytest.mark.parametrize("name", ["apgd_ce", "apgd_dlr"])
@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_apgd_stays_within_budget_and_clip_values(dataset, name, norm, trained):
    classifier, x, y = trained(dataset)
    x, y, eps = x[:20], y[:20], EPS[norm]
    spec = attacks.ATTACKS.get(name)
    params = attacks.art_params(name, QUICK, eps)
    # The attack's own output, before run() re-projects anything.
    raw = spec.generate(spec.build(classifier, eps, norm, params, 0), classifier, x, y, params, 0)
    for x_adv in (raw, attacks.run(name, classifier, x, y, eps, norm, QUICK, seed=0)):
        assert x_adv.shape == x.shape and x_adv.dtype == np.float32
        assert x_adv.min() >= CLIP[0] and x_adv.max() <= CLIP[1]
        sizes = attacks.perturbation_norms(x, x_adv, norm)
        assert np.all(sizes <= eps * (1 + attacks.BUDGET_RTOL)), sizes.max()
    np.testing.assert_array_equal(attacks.run(name, classifier, x, y, eps, norm, QUICK, seed=0), raw)
    attacked = classifier.predict(x).argmax(axis=1) == y  # only these are attacked
    assert (attacks.perturbation_norms(x, raw, norm)[attacked] > 0).all()
    np.testing.assert_array_equal(raw[~attacked], x[~attacked])  # already wrong: kept clean
    assert _accuracy(classifier, raw, y) < _accuracy(classifier, x, y)


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(SHAPES))
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_apgd_ce_is_at_least_as_strong_as_pgd(dataset, norm, trained):
    # Same samples, budget and iterations; PGD with sweeper's one random start and a step
    # of eps/4 (enough to cross the ball in 10 steps). No slack: APGD must not do worse.
    classifier, x, y = trained(dataset)
    eps, iterations = EPS[norm], 10
    accuracy = {"clean": _accuracy(classifier, x, y)}
    for name, params in (("pgd", {"max_iter": iterations, "eps_step": "eps/4"}),
                         ("apgd_ce", {"max_iter": iterations}),
                         ("apgd_dlr", {"max_iter": iterations})):
        x_adv = attacks.run(name, classifier, x, y, eps, norm, params, seed=0)
        accuracy[name] = _accuracy(classifier, x_adv, y)
    print(f"\n{dataset} {norm} eps={eps} max_iter={iterations}: {accuracy}")
    assert accuracy["pgd"] < accuracy["clean"]  # the budget bites
    assert accuracy["apgd_ce"] <= accuracy["pgd"]


@pytest.mark.slow
@pytest.mark.parametrize("eps", [1.0, 2.0])
def test_apgd_l1_beats_arts_l1_pgd_and_a_random_perturbation(eps, trained):
    # Same samples, budget and iterations. ART's L1 PGD (one random start, steps of eps/4)
    # moves one element per step; APGD-L1 must do at least as well, and the control, a
    # random sparse perturbation of the same L1 size, must do less than either.
    classifier, x, y = trained("digits")
    iterations, l0 = 10, lambda a: np.count_nonzero((a - x).reshape(len(x), -1), axis=1)  # noqa: E731
    accuracy = {"clean": _accuracy(classifier, x, y)}
    for name, params in (("fgsm", {}), ("pgd", {"max_iter": iterations, "eps_step": "eps/4"}),
                         ("apgd_ce", {"max_iter": iterations}), ("apgd_dlr", {"max_iter": iterations})):
        x_adv = attacks.run(name, classifier, x, y, eps, "1", params, seed=0)
        accuracy[name] = _accuracy(classifier, x_adv, y)
        if name == "fgsm":
            assert l0(x_adv).max() == 1  # ART's L1 step: a single element
        if name == "apgd_ce":
            assert l0(x_adv).max() > 1  # APGD-L1's: the topk share
    rng = np.random.default_rng(0)
    for elements in (1, 8):
        control = apgd_l1.random_sparse_l1(x, eps, elements, *CLIP, rng)
        assert np.all(attacks.perturbation_norms(x, control, "1") <= eps * (1 + 1e-6))
        accuracy[f"random{elements}"] = _accuracy(classifier, control, y)
    print(f"\ndigits L1 eps={eps} max_iter={iterations}: {accuracy}")
    assert accuracy["pgd"] <= accuracy["clean"] - 0.1  # the budget bites
    assert accuracy["apgd_ce"] <= accuracy["pgd"]
    assert accuracy["apgd_ce"] < min(accuracy["random1"], accuracy["random8"]) - 0.1


@pytest.mark.slow
@pytest.mark.parametrize("dataset", list(SHAPES))
def test_seeded_runs_are_reproducible(dataset, trained):
    classifier, x, y = trained(dataset)
    x, y = x[:10], y[:10]
    for name, norm in (("apgd_ce", "inf"), ("apgd_dlr", "2"), ("apgd_ce", "1")):
        first = attacks.run(name, classifier, x, y, EPS[norm], norm, QUICK, seed=3)
        np.testing.assert_array_equal(
            attacks.run(name, classifier, x, y, EPS[norm], norm, QUICK, seed=3), first)
        other = attacks.run(name, classifier, x, y, EPS[norm], norm, QUICK, seed=4)
        assert not np.array_equal(other, first)  # the seed draws the random start


@pytest.mark.slow
def test_a_restart_only_adds_fooled_samples(trained):
    # The first restart draws the same start with the same seed; the second attacks only
    # the samples the first did not fool, so the fooled set can only grow. (The restart
    # loop is shared by both losses.)
    classifier, x, y = trained("digits")
    name = "apgd_ce"
    fooled = {}
    for restarts in (1, 2):
        params = {"max_iter": 5, "restarts": restarts}
        x_adv = attacks.run(name, classifier, x, y, 0.08, "inf", params, seed=0)
        fooled[restarts] = classifier.predict(x_adv).argmax(axis=1) != y
    assert (fooled[2] >= fooled[1]).all()
    assert fooled[2].sum() > fooled[1].sum()  # here the second start found more (seeded)
    print(f"\n{name} fooled: 1 restart {fooled[1].sum()}, 2 restarts {fooled[2].sum()} of {N}")

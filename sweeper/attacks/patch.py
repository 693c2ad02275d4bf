"""The adversarial patch attack (Brown et al. 2017, "Adversarial Patch"): its spec, the
patch's size for a budget (``patch_shape``), ``Patch``, which trains one universal
targeted patch on training-fold images and pastes it on the attacked samples, its
controls, and ``target_rate``, what the patch is scored by.

What sweeper means by it:

- One patch of ph x pw pixels (all channels) is trained per run, by Adam ascent on the
  mean log-probability of the ``target`` class over batches of training-fold images, each
  image with the patch at a place given by ``placement`` (below; no rotation or scaling,
  which inputs of 8x8 pixels or 49x10 MFCCs do not need). Its pixels stay in the
  classifier's ``clip_values``.
- ``eps`` is the share of the input's area (height x width) the patch covers, in (0, 1]:
  the patch is the largest one of proportions ``shape`` (h:w) with whole-pixel sides and
  at most eps * height * width pixels (each side is floored, so it never exceeds eps).
  Its norm is "patch": it is never compared or pooled with an L-p budget.
- ``shape`` defaults to the input's own proportions (height:width), which fits every eps
  up to 1: square patches on square images, and 49:10 rectangles on 49x10 MFCCs. An
  explicit ``shape: [h, w]`` (e.g. [1, 1] for squares on MFCCs) that makes the patch
  taller or wider than the input is an error naming ``shape``.
- ``placement`` is part of the threat model. ``random`` (the default): in training and on
  each attacked sample the patch goes to its own uniformly random place, drawn from the
  seed (Brown et al.'s expectation over locations: a patch that must work anywhere).
  ``fixed``: always at ``position``, ``center`` (the default: top (height - ph) // 2, left
  (width - pw) // 2) or ``[top, left]`` in pixels; the attacker chooses the place, and the
  patch is trained there. A position where the patch does not fit is an error naming
  ``position`` when the attack is built (the patch's size needs the input's shape).
- The patch is pasted with a hard rectangular mask, exactly: the covered pixels are the
  patch's, every other pixel is the input's (no interpolation, no reflected or tiled
  mask, unlike ART's AdversarialPatchTensorFlowV2; see the README).
- **Scored as a targeted attack** (``target_rate``): of the attacked samples the model
  classifies correctly clean whose true class is not ``target``, the share it classifies
  as ``target`` with the patch on. A misclassification into another class is occlusion,
  not the patch's success.
- **Controls** (``_controls``): the same-size patches an attack must beat, pasted at
  exactly the trained patch's places (the same seeded stream): a uniform-random patch
  (drawn from the seed) and two solid ones, at ``clip_values``' low and high ends ("black"
  and "white"). They cost forward passes only.

Paste and training step are ``tf.function`` s traced once per classifier (the patch's
size and the batch are dynamic dimensions), on the model's logits with each QKeras
weight quantized once per trace, as in the compiled estimator.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sweeper.attacks.spec import PATCH_NORM, AttackSpec
from sweeper.errors import preview
from sweeper.plan.limits import positive, whole

_COMPILED: "weakref.WeakKeyDictionary[Any, tuple[Callable, Callable]]" = weakref.WeakKeyDictionary()
ADAM = (0.9, 0.999, 1e-8)  # Kingma & Ba's beta1, beta2 and epsilon


def patch_shape(eps: float, height: int, width: int, shape=None) -> tuple[int, int]:
    """(ph, pw) of the patch covering at most eps of a height x width input (module doc).

    Raises ValueError (one line, naming the field) for eps outside (0, 1], a patch under
    one pixel, or a ``shape`` that does not fit the input.
    """
    if not 0 < eps <= 1:
        raise ValueError(f"eps is the share of the input's area the patch covers and must be "
                         f"in (0, 1], got {eps!r}")
    h, w = (height, width) if shape is None else (float(shape[0]), float(shape[1]))
    area = eps * height * width
    if area < 1 - 1e-9:
        raise ValueError(f"eps {eps} covers less than one pixel of the {height}x{width} input")
    # The tiny factor keeps an exact product (0.09 * 100 = 8.999...) from losing a pixel.
    ph = max(1, math.floor(math.sqrt(area * h / w) * (1 + 1e-9)))
    pw = max(1, math.floor(math.sqrt(area * w / h) * (1 + 1e-9)))
    if ph * pw > area * (1 + 1e-9):  # one side was raised to 1 pixel: shorten the other
        longest = math.floor(area * (1 + 1e-9))
        ph, pw = (longest, 1) if pw == 1 else (1, longest)
    if ph > height or pw > width:
        written = "the default" if shape is None else list(shape)
        raise ValueError(f"parameter 'shape' {written} gives a {ph}x{pw} patch at eps {eps}, "
                         f"larger than the {height}x{width} input")
    return ph, pw


MAX_ASPECT = 1e6  # of an explicit shape: beyond it, the patch's side arithmetic overflows


def check_shape(value: Any) -> str | None:
    """Why ``value`` is not a patch shape [h, w] (two numbers > 0, neither more than
    MAX_ASPECT times the other); None if it is."""
    if value is None:
        return None
    if (isinstance(value, (list, tuple)) and len(value) == 2
            and all(positive().accepts(v) for v in value)
            and max(value) <= MAX_ASPECT * min(value)):
        return None
    return (f"must be [height, width], two numbers > 0 (the patch's proportions, at most "
            f"{MAX_ASPECT:g} to 1)")


PLACEMENTS = ("random", "fixed")
CENTER = "center"
CONTROLS = ("random", "black", "white")  # the controls' names, in the order they are made


def check_placement(value: Any) -> str | None:
    return None if value in PLACEMENTS else f"must be one of: {', '.join(PLACEMENTS)}"


def check_position(value: Any) -> str | None:
    if value == CENTER or (isinstance(value, (list, tuple)) and len(value) == 2
                           and all(whole(0).accepts(v) for v in value)):
        return None
    return "must be 'center' or [top, left], two whole pixels >= 0 (the patch's top-left corner)"


def check_together(params) -> tuple[str, str] | None:
    """A position other than the default needs ``placement: fixed``."""
    if params["position"] != CENTER and params["placement"] != "fixed":
        return "position", "needs placement: fixed"
    return None


def label_suffix(params) -> str:
    """``-fixed`` (at the centre) or ``-fixed-TOP-LEFT``; nothing for random places."""
    if params["placement"] != "fixed":
        return ""
    return "-fixed" if params["position"] == CENTER else "-fixed-{}-{}".format(*params["position"])


def fixed_corner(size: tuple[int, int], image_size, position) -> tuple[int, int]:
    """(top, left) of a fixed placement; ValueError naming ``position`` if it does not fit."""
    (height, width), (ph, pw) = image_size, size
    if position == CENTER:
        return (height - ph) // 2, (width - pw) // 2
    top, left = position
    if top + ph > height or left + pw > width:
        raise ValueError(f"parameter 'position' {preview(list(position))} puts the {ph}x{pw} patch outside the "
                         f"{height}x{width} input (top at most {height - ph}, left at most {width - pw})")
    return int(top), int(left)


@dataclass
class Patch:
    """A patch attack bound to a classifier and a size; ``train`` then ``apply``."""

    classifier: Any
    size: tuple[int, int]  # (ph, pw) pixels
    target: int
    steps: int
    learning_rate: float  # Adam's step, as a share of the clip range
    batch_size: int
    max_train: int  # training images drawn (seeded) from the ones given
    placement: str = "random"  # PLACEMENTS (module doc)
    position: Any = CENTER  # a fixed placement's corner: CENTER or (top, left)

    def train(self, x_train: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The universal patch (ph, pw, channels), float32 within clip_values."""
        _, step = _compiled(self.classifier)
        lo, hi = _bounds(self.classifier)
        pool = np.asarray(x_train, np.float32)
        pool = pool[np.sort(rng.permutation(len(pool))[:self.max_train])]
        patch = rng.uniform(lo, hi, (*self.size, pool.shape[-1])).astype(np.float32)
        m, v = np.zeros_like(patch), np.zeros_like(patch)
        lr = np.float32(self.learning_rate * (hi - lo))
        for t in range(1, self.steps + 1):
            images = pool[rng.integers(0, len(pool), self.batch_size)]
            tops, lefts = self.places(len(images), pool.shape[1:3], rng)
            patch, m, v = step(patch, m, v, np.float32(t), images, tops, lefts,
                               np.int32(self.target), lr, np.float32(lo), np.float32(hi))
        return np.asarray(patch)

    def places(self, n: int, image_size, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Top and left corners of n placements: uniform over every place that fits (drawn
        from rng), or the fixed corner (rng untouched)."""
        (height, width), (ph, pw) = image_size, self.size
        if self.placement == "fixed":
            top, left = fixed_corner(self.size, image_size, self.position)
            return np.full(n, top, np.int32), np.full(n, left, np.int32)
        return (rng.integers(0, height - ph + 1, n).astype(np.int32),
                rng.integers(0, width - pw + 1, n).astype(np.int32))

    def apply(self, x: np.ndarray, patch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """x with the patch pasted on each sample at its own place (``places``)."""
        x = np.asarray(x, np.float32)
        return self.paste(x, patch, *self.places(len(x), x.shape[1:3], rng))

    def paste(self, x: np.ndarray, patch: np.ndarray, tops: np.ndarray, lefts: np.ndarray) -> np.ndarray:
        """x with the patch's top-left corner at (tops[i], lefts[i]) on sample i."""
        paste, _ = _compiled(self.classifier)
        return np.asarray(paste(np.asarray(x, np.float32), np.asarray(patch, np.float32), tops, lefts))


def target_rate(y: np.ndarray, clean_pred: np.ndarray, pred: np.ndarray, target: int) -> tuple[float, int]:
    """(rate, n): of the n samples the model classifies correctly clean whose true class is
    not ``target``, the share predicted as ``target`` in ``pred``; NaN when n is 0. A
    sample already misclassified clean (as the target or not) is no success of the patch,
    and a target-class sample cannot be taken to its own class."""
    base = (clean_pred == y) & (y != target)
    n = int(base.sum())
    return (float(np.sum(base & (pred == target)) / n) if n else float("nan")), n


def _paste(images, patch, tops, lefts):
    """Each image with the patch at (top, left): a hard mask, every pixel exact."""
    import tensorflow as tf

    ph, pw = tf.shape(patch)[0], tf.shape(patch)[1]
    rows = tf.range(tf.shape(images)[1])[None, :] - tops[:, None]  # (batch, height)
    cols = tf.range(tf.shape(images)[2])[None, :] - lefts[:, None]  # (batch, width)
    inside = ((rows >= 0) & (rows < ph))[:, :, None] & ((cols >= 0) & (cols < pw))[:, None, :]
    mask = tf.cast(inside, images.dtype)[..., None]
    # The patch's pixel for every image pixel (clamped indices outside, masked away).
    canvas = tf.gather(patch, tf.clip_by_value(rows, 0, ph - 1))  # (batch, height, pw, C)
    canvas = tf.gather(canvas, tf.clip_by_value(cols, 0, pw - 1), axis=2, batch_dims=1)
    return images * (1 - mask) + canvas * mask  # 0/1 mask: x*1 + p*0 is x exactly


def _compiled(classifier) -> tuple[Callable, Callable]:
    """(paste, step) for this classifier, each traced once and cached."""
    if classifier not in _COMPILED:
        _COMPILED[classifier] = _trace(classifier.model, tuple(classifier.input_shape))
    return _COMPILED[classifier]


def _trace(model, input_shape: tuple) -> tuple[Callable, Callable]:
    import tensorflow as tf

    from sweeper.attacks.estimator import _quantized_weights_once

    quantized: dict = {}  # QKeras weights quantized once per trace, as in the estimator
    beta1, beta2, epsilon = ADAM

    def step(patch, m, v, t, images, tops, lefts, target, lr, lo, hi):
        with tf.GradientTape() as tape:
            tape.watch(patch)
            with _quantized_weights_once(model, quantized):
                logits = model(_paste(images, patch, tops, lefts), training=False)
            labels = tf.fill(tf.shape(tops), target)
            # Minimising the cross-entropy to the target is ascending its log-probability.
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        grad = tf.convert_to_tensor(tape.gradient(loss, patch))  # gather gives IndexedSlices
        m = beta1 * m + (1 - beta1) * grad
        v = beta2 * v + (1 - beta2) * grad ** 2
        update = (m / (1 - beta1 ** t)) / (tf.sqrt(v / (1 - beta2 ** t)) + epsilon)
        return tf.clip_by_value(patch - lr * update, lo, hi), m, v

    image = tf.TensorSpec([None, *input_shape], tf.float32)
    piece = tf.TensorSpec([None, None, input_shape[-1]], tf.float32)
    corner, scalar = tf.TensorSpec([None], tf.int32), tf.TensorSpec([], tf.float32)
    return (tf.function(_paste, input_signature=[image, piece, corner, corner]),
            tf.function(step, input_signature=[piece, piece, piece, scalar, image, corner, corner,
                                               tf.TensorSpec([], tf.int32), scalar, scalar, scalar]))


def _bounds(classifier) -> tuple[float, float]:
    if classifier.clip_values is None:
        raise ValueError("needs the classifier's clip_values: the patch's pixels lie within them")
    lo, hi = classifier.clip_values
    return float(lo), float(hi)


def _fits(params, eps: float, input_shape: tuple, nb_classes: int) -> str | None:
    """Why a patch with ``params`` at ``eps`` cannot be trained on inputs of
    ``input_shape`` with ``nb_classes`` classes (None: it can). Grids check it for every
    dataset an entry covers; ``_build`` raises the same message."""
    if len(input_shape) != 3:
        return f"needs height x width x channels inputs, got {preview(tuple(input_shape))}"
    if params["target"] >= nb_classes:
        return f"parameter 'target' {params['target']} is not a class of the {nb_classes}-class model"
    if eps == 0:
        return None  # the clean evaluation: no patch
    try:
        size = patch_shape(eps, *input_shape[:2], params["shape"])
        if params["placement"] == "fixed":
            fixed_corner(size, input_shape[:2], params["position"])  # fits, or one line naming position
    except ValueError as error:
        return str(error)
    return None


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent streams for training, placements and the random control: the places
    do not depend on how long training drew, and the controls take the trained patch's."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(3)]


def _build(classifier, eps, norm, params, seed) -> Patch:
    problem = _fits(params, eps, tuple(classifier.input_shape), classifier.nb_classes)
    if problem:
        raise ValueError(problem)
    height, width = classifier.input_shape[:2]
    size = patch_shape(eps, height, width, params["shape"])
    return Patch(classifier, size, params["target"], params["steps"], params["learning_rate"],
                 params["batch_size"], params["max_train"], params["placement"], params["position"])


def _generate(attack: Patch, classifier, x, y, params, seed, *, x_train) -> np.ndarray:
    train_rng, place_rng, _ = _streams(seed)
    return attack.apply(x, attack.train(x_train, train_rng), place_rng)


def _controls(attack: Patch, classifier, x, params, seed) -> dict[str, np.ndarray]:
    """CONTROLS, each pasted at exactly the places ``_generate`` gives x with this seed."""
    _, place_rng, control_rng = _streams(seed)
    x = np.asarray(x, np.float32)
    tops, lefts = attack.places(len(x), x.shape[1:3], place_rng)
    lo, hi = _bounds(classifier)
    shape = (*attack.size, x.shape[-1])
    patches = {"random": control_rng.uniform(lo, hi, shape), "black": np.full(shape, lo), "white": np.full(shape, hi)}
    return {name: attack.paste(x, patches[name], tops, lefts) for name in CONTROLS}


PATCH = AttackSpec(
    name="patch",
    norms=(PATCH_NORM,),
    # Brown et al. train for many epochs; 200 Adam steps of 64 images reach a patch that
    # fools the tiny models tested within seconds (tests/test_patch.py).
    defaults={"target": 0, "steps": 200, "learning_rate": 0.05, "batch_size": 64,
              "max_train": 512, "shape": None, "placement": "random", "position": CENTER},
    limits={"target": whole(0, what="a class index"), "steps": whole(1), "learning_rate": positive(),
            # a batch of images in memory at once, and Adam's step on each
            "batch_size": whole(1, 4096), "max_train": whole(1)},
    param_checks={"shape": check_shape, "placement": check_placement, "position": check_position},
    fits=_fits,
    late_params=("placement", "position"),  # today's random patches keep their cell ids
    check_params=check_together,
    label_suffix=label_suffix,
    controls=_controls,
    fixed={"targeted": True},
    uses_eps=True,
    black_box=False,
    needs_training_data=True,
    max_eps=1.0,  # eps is the share of the input's area the patch covers
    build=_build,
    generate=_generate,
    description="Universal targeted adversarial patch trained on the training fold (Brown et al. 2017)",
)

"""Square Attack: its spec, and ``AnyShapeSquareAttack``, ART's SquareAttack made to work
on non-square inputs (49x10 MFCCs) while returning ART's examples on square ones, with
one prediction per iteration where ART makes three.

The ART subclass is created on first use (``_square_attack_class``) so that importing
this module imports neither TensorFlow nor ART.
"""

from __future__ import annotations

import functools
import math
import random

import numpy as np

from sweeper.attacks.spec import AttackSpec, _art_norm
from sweeper.plan.limits import positive, whole


def _build_square(classifier, eps, norm, params, seed):
    # ART's SquareAttack fails on non-square inputs (49x10 MFCCs): see AnyShapeSquareAttack.
    return _square_attack_class()(classifier, norm=_art_norm(norm), eps=eps, **params)


SQUARE = AttackSpec(
    name="square",
    norms=("inf", "2"),
    defaults={"max_iter": 1000, "p_init": 0.8, "nb_restarts": 1},
    # ART refuses p_init outside (0, 1): it is the share of pixels the first squares cover.
    limits={"max_iter": whole(1), "p_init": positive(1, high_open=True), "nb_restarts": whole(1)},
    fixed={"adv_criterion": None, "loss": None, "batch_size": 128, "verbose": False},
    uses_eps=True,
    black_box=True,
    build=_build_square,
    description="Square Attack, score-based random search (Andriushchenko et al. 2020)",
)


def _tile_side(fraction: float, height: int, width: int, *, smallest: int, odd: bool) -> int:
    """ART's square side for a fraction of the image, clamped to the narrow side.

    ART takes sqrt(fraction * height * width), which outgrows the width of a tall narrow
    input (49x10 MFCCs); on square inputs the clamp never binds where ART itself works.
    """
    side = max(int(round(math.sqrt(fraction * height * width))), smallest)
    if odd and side % 2 == 0:
        side += 1
    return min(side, height, width)


def _tile_start(length: int, side: int) -> int:
    # ART draws from [0, length - side): the last position is never used (kept, so that
    # square inputs give ART's examples); a side as long as the axis can only start at 0.
    return np.random.randint(0, max(length - side, 1))


def _square_bump(side: int) -> np.ndarray:
    """ART's pseudo-Gaussian L2 bump (SquareAttack.generate's _get_perturbation), verbatim:
    the same float operations and the same two random.random() draws."""
    delta = np.zeros([side, side])
    gaussian_perturbation = np.zeros([side // 2, side])
    x_c = side // 4
    y_c = side // 2
    for i_y in range(y_c):
        gaussian_perturbation[
            max(x_c, 0): min(x_c + (2 * i_y + 1), side // 2),
            max(0, y_c): min(y_c + (2 * i_y + 1), side),
        ] += 1.0 / ((i_y + 1) ** 2)
        x_c -= 1
        y_c -= 1
    gaussian_perturbation /= np.sqrt(np.sum(gaussian_perturbation**2))
    delta[: side // 2] = gaussian_perturbation
    delta[side // 2: side // 2 + gaussian_perturbation.shape[0]] = -gaussian_perturbation
    delta /= np.sqrt(np.sum(delta**2))
    if random.random() > 0.5:
        delta = np.transpose(delta)
    if random.random() > 0.5:
        delta = -delta
    return delta


def _margin(logits: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ART's margin loss (SquareAttack._get_logits_diff) on logits already predicted:
    the true class's logit minus the highest other one, by ART's own operations."""
    logit_correct = np.take_along_axis(logits, np.expand_dims(np.argmax(y, axis=1), axis=1), axis=1)
    logit_highest_incorrect = np.take_along_axis(
        logits, np.expand_dims(np.argsort(logits, axis=1)[:, -2], axis=1), axis=1)
    return (logit_correct - logit_highest_incorrect)[:, 0]


@functools.cache
def _square_attack_class() -> type:
    from sweeper.attacks.art_lib import (ART_NUMPY_DTYPE, SquareAttack, check_and_transform_label_format,
                                         get_labels_np_array)

    class AnyShapeSquareAttack(SquareAttack):
        """ART's SquareAttack (L-inf and L2) on any height x width, not only square inputs.

        ART sizes each square from height * width and draws its position in
        ``[0, width - side)``, which is empty once the side exceeds the narrow dimension: a
        49x10 input fails with ``ValueError: high <= 0``. Its L2 start also lays 5x5 bumps
        of side height // 5, which overruns a narrow width. Here the side is clamped to the
        narrow dimension (``_tile_side``) and the L2 start lays bumps of side narrow // 5,
        5 across the narrow dimension and proportionally many along the long one.

        Otherwise this is ART 1.20's ``generate`` restructured: ART's restart loop, written
        out once per norm there, is ``_restart`` here, and each norm's start and step are
        the blocks of ART's code before and inside that loop. On square inputs it makes the
        same random draws in the same order, so it returns ART's examples exactly (tests
        check it), except that it never accepts a non-finite candidate (``_keep_improved``:
        its L2 start is NaN where the narrow side is under 10 pixels, as on 8x8 digits).
        Channels-first estimators, norm 1 and a loss of one's own use ART's code unchanged;
        there are no progress bars (sweeper pins verbose=False).

        One prediction per iteration where ART makes three: ART predicts every x_adv for
        the robust mask, then the robust ones again for the loss before the step, then the
        candidates. The first two are logits of inputs already predicted, so the logits of
        x_adv are kept (``logits``) and updated where a candidate is accepted. This returns
        ART's examples as long as a sample's logits do not depend on the other samples of
        its batch, which holds for inference (activation scales are fixed,
        sweeper.models.quantizers) and is what the tests check bitwise.
        """

        def generate(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs) -> np.ndarray:
            linf = self.norm in (np.inf, "inf")
            margin_loss = getattr(self.loss, "__func__", None) is SquareAttack._get_logits_diff
            if (self.estimator.channels_first or x.ndim != 4 or not (linf or self.norm == 2)
                    or not margin_loss):
                return super().generate(x, y, **kwargs)
            x_adv = x.astype(ART_NUMPY_DTYPE)
            # x_adv is x until the first restart: one prediction gives ART's labels (when y
            # is None), its first robust mask and its first loss.
            clean = self.estimator.predict(x_adv, batch_size=self.batch_size)
            if y is None:  # as ART: the model's predictions are the labels
                y = get_labels_np_array(clean)
            else:
                y = check_and_transform_label_format(y, nb_classes=self.estimator.nb_classes)
            if linf:
                start, step = self._linf_start, self._linf_step
            else:
                start, step = self._l2_start, self._l2_step
            logits = clean.copy()  # the logits of x_adv, row by row
            for _ in range(self.nb_restarts):
                robust = np.logical_not(self.adv_criterion(logits, y))
                if not robust.any():
                    break
                self._restart(x, x_adv, y, (clean, logits), robust, start, step)
            return x_adv

        def _clip(self, x):
            return np.clip(x, self.estimator.clip_values[0], self.estimator.clip_values[1])

        def _keep_improved(self, x_adv, logits, robust, x_robust, logits_robust, x_new,
                           y_robust) -> None:
            """Greedy random search: accept x_new where the margin loss went down; x_adv
            and its logits are updated together.

            A non-finite candidate is never accepted (ART accepts it). The L2 start lays
            bumps of side narrow // 5 (ART: height // 5), which is 1 on 8x8 digits, and a
            1-pixel bump is 0/0: every start is NaN there. A NaN input can still get finite logits (ReLU maps NaN
            to 0), often misclassified: ART took it as a success and stopped attacking the
            sample, whose NaN example then counted as the clean input (budget.run), so
            Square L2 on digits measured clean accuracy. Rejected, the search goes on from
            the last finite point; where no candidate is NaN, this is ART's search exactly.
            """
            logits_new = self.estimator.predict(x_new, batch_size=self.batch_size)
            finite = np.isfinite(x_new).reshape(len(x_new), -1).all(axis=1)
            improved = finite & ((_margin(logits_new, y_robust) - _margin(logits_robust, y_robust)) < 0.0)
            x_robust[improved] = x_new[improved]
            x_adv[robust] = x_robust
            logits_robust[improved] = logits_new[improved]
            logits[robust] = logits_robust

        def _restart(self, x, x_adv, y, clean_and_adv_logits, robust, start, step) -> None:
            """One restart, ART's loop for either norm: ``start`` from the clean input (ART
            restarts from x), then up to max_iter random-search ``step``s on the samples
            still classified correctly, each kept where it lowers the margin loss."""
            clean, logits = clean_and_adv_logits
            x_robust, y_robust = x[robust], y[robust]
            self._keep_improved(x_adv, logits, robust, x_robust, clean[robust],
                                start(x_robust), y_robust)
            for i_iter in range(self.max_iter):
                robust = np.logical_not(self.adv_criterion(logits, y))
                if not robust.any():
                    break
                x_robust, x_init, y_robust = x_adv[robust], x[robust], y[robust]
                x_new = step(x_robust, x_init, self._get_percentage_of_elements(i_iter))
                self._keep_improved(x_adv, logits, robust, x_robust, logits[robust], x_new,
                                    y_robust)

        def _linf_start(self, x_robust) -> np.ndarray:
            """ART's L-inf start: vertical stripes of +-eps."""
            n, _, width, channels = x_robust.shape
            stripes = self.eps * np.random.choice([-1, 1], size=(n, 1, width, channels))
            return self._clip(x_robust + stripes).astype(ART_NUMPY_DTYPE)

        def _linf_step(self, x_robust, x_init, fraction) -> np.ndarray:
            """ART's L-inf step: one square window moved by +-2 eps per channel, then back
            into the eps ball around x_init."""
            height, width, channels = x_robust.shape[1:]
            side = _tile_side(fraction, height, width, smallest=1, odd=False)
            top, left = _tile_start(height, side), _tile_start(width, side)
            delta = np.zeros(self.estimator.input_shape)
            delta[top:top + side, left:left + side, :] = np.random.choice(
                [-2 * self.eps, 2 * self.eps], size=[1, 1, channels])
            x_new = np.minimum(np.maximum(x_robust + delta, x_init - self.eps),
                               x_init + self.eps)
            return self._clip(x_new).astype(ART_NUMPY_DTYPE)

        def _l2_start(self, x_robust) -> np.ndarray:
            """ART's L2 start: the grid of bumps (``_l2_bumps``) scaled to norm eps."""
            delta_init = self._l2_bumps(*x_robust.shape)
            norms = np.sqrt(np.sum(delta_init**2, axis=(1, 2, 3), keepdims=True))
            return self._clip(x_robust + delta_init / norms * self.eps)

        def _l2_step(self, x_robust, x_init, fraction) -> np.ndarray:
            """ART's L2 step: a new bump in one window (``_l2_update``), rescaled to norm eps."""
            height, width, channels = x_robust.shape[1:]
            delta = x_robust - x_init
            side = _tile_side(fraction, height, width, smallest=3, odd=True)
            self._l2_update(delta, side, channels)
            # ART's expression and float order: (eps * delta) / ||delta||.
            norms = np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True))
            return self._clip(x_init + self.eps * delta / norms)

        @staticmethod
        def _l2_bumps(n, height, width, channels) -> np.ndarray:
            """ART's initial L2 perturbation: a grid of bumps with random signs per channel,
            5 of side narrow // 5 across the narrow dimension (ART: 5x5 of height // 5)."""
            n_tiles = 5
            narrow = min(height, width)
            side = narrow // n_tiles
            delta_init = np.zeros((n, height, width, channels), dtype=ART_NUMPY_DTYPE)
            for row in range(n_tiles * height // narrow):
                for col in range(n_tiles * width // narrow):
                    bump = _square_bump(side).reshape(1, side, side, 1) * np.random.choice(
                        [-1, 1], size=(n, 1, 1, channels))
                    top, left = row * side, col * side
                    delta_init[:, top:top + side, left:left + side, :] += bump
            return delta_init

        def _l2_update(self, delta, side, channels) -> None:
            """ART's L2 update of delta, in place: a new bump in one square window, the
            perturbation of a second window folded into it, within the eps budget."""
            height, width = delta.shape[1:3]
            norms = np.sqrt(np.sum(delta**2, axis=(1, 2, 3), keepdims=True))
            top, left = _tile_start(height, side), _tile_start(width, side)
            window = (slice(None), slice(top, top + side), slice(left, left + side), slice(None))
            mask = np.zeros(delta.shape)
            mask[window] = 1.0
            window_norm = np.sqrt(np.sum(delta[window] ** 2, axis=(1, 2), keepdims=True))
            top_2, left_2 = _tile_start(height, side), _tile_start(width, side)
            window_2 = (slice(None), slice(top_2, top_2 + side), slice(left_2, left_2 + side),
                        slice(None))
            mask_2 = np.zeros(delta.shape)
            mask_2[window_2] = 1.0
            both_norm = np.sqrt(np.sum((delta * np.maximum(mask, mask_2)) ** 2, axis=(1, 2, 3),
                                       keepdims=True))
            new = (np.ones([len(delta), side, side, channels])
                   * _square_bump(side).reshape(1, side, side, 1)
                   * np.random.choice([-1, 1], size=[len(delta), 1, 1, channels]))
            new += delta[window] / np.maximum(1e-9, window_norm)
            room = (self.eps * np.ones(new.shape)) ** 2 - norms**2
            room[room < 0.0] = 0.0
            new /= np.sqrt(np.sum(new**2, axis=(1, 2), keepdims=True)) * np.sqrt(
                room / channels + both_norm**2)
            delta[window_2] = 0.0
            delta[window] = new

    return AnyShapeSquareAttack

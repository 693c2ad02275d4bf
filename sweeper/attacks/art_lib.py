"""ART (adversarial-robustness-toolbox), imported without closing the process's logging
handlers: every module of sweeper takes ART from here.

``art/__init__.py`` calls ``logging.config.dictConfig``, which closes every handler the
process already has. absl's handler (TensorFlow's) then closes the stream it writes to
whenever that stream is no longer ``sys.stderr``: a launch run inside a test runner's
capture, or under anything that swaps ``sys.stderr`` (Typer's CliRunner), lost its
standard error for the rest of the process. During the import, ``dictConfig`` is replaced
by what ART's configuration does for ART itself: a NullHandler on the ``art`` logger.
tests/test_art_lib.py checks both the harm and its absence."""

from __future__ import annotations

import logging
import logging.config
import sys


def _art_logger_only(config: dict) -> None:
    """ART's own logger as its configuration sets it (no output unless the user adds a
    handler); nothing else in the process is touched."""
    logging.getLogger("art").addHandler(logging.NullHandler())


def _import_art() -> None:
    if "art" in sys.modules:
        return
    original = logging.config.dictConfig
    logging.config.dictConfig = _art_logger_only
    try:
        import art  # noqa: F401
    finally:
        logging.config.dictConfig = original


_import_art()

from art.attacks.evasion import (BoundaryAttack, CarliniL2Method, FastGradientMethod,  # noqa: E402
                                 HopSkipJump, ProjectedGradientDescentNumpy, SquareAttack, ZooAttack)
from art.config import ART_NUMPY_DTYPE  # noqa: E402
from art.estimators.classification import TensorFlowV2Classifier  # noqa: E402
from art.estimators.classification.blackbox import BlackBoxClassifierNeuralNetwork  # noqa: E402
from art.utils import check_and_transform_label_format, get_labels_np_array  # noqa: E402

__all__ = ["ART_NUMPY_DTYPE", "BlackBoxClassifierNeuralNetwork", "BoundaryAttack", "CarliniL2Method",
           "FastGradientMethod", "HopSkipJump", "ProjectedGradientDescentNumpy", "SquareAttack",
           "TensorFlowV2Classifier", "ZooAttack", "check_and_transform_label_format", "get_labels_np_array"]

"""Training-time defenses: the ``DEFENSES`` registry (``spec.py``: what a defense is,
checking its parameters and presets), building the compiled training step that
``sweeper.run.training.train`` runs, and evaluating a model at the other bit widths a
defense trains it for (``evaluation_widths``, ``at_width``).

A defense changes how a model is trained, never the model: each one is a custom
``train_step`` (base.py's ``DefendedModel``) compiled by Keras's ``fit`` on sweeper's own
QKeras model, so checkpoints, the seeded shuffles and the cosine schedule work as in
plain training. Why not ART's adversarial trainers: they call ``fit`` once per batch
and retrace, 7-8x slower than a compiled step (DEPLOY_AND_ATTACK_NOTES.md).

| defense | family module | what the step does |
|---|---|---|
| ``none`` | | plain training (``train`` skips the wrapper: bit-identical to no defense) |
| ``jr`` | regularizers.py | CE + lambda * 1/2 ||J||_F^2, random-projection estimate |
| ``jr_layer`` | regularizers.py | CE + lambda * sum_k 1/2 ||J_k||_F^2 over the blocks (sweeper.models.jacobian) |
| ``dq`` | regularizers.py | CE + beta * sum ||Q^T Q - I||^2 over the quantized kernels |
| ``fgsm_at`` | adversarial.py | CE on FGSM examples from a random start (fast AT) |
| ``pgd_at`` | adversarial.py | CE on PGD examples (Madry AT) |
| ``dbwt`` | bit_width.py | CE at a bit width that cycles over shared weights |

Every budget (``eps``) is a fraction of the dataset's clip range (``clip_values``):
eps 8/255 is 8/255 * (clip_max - clip_min) in input units. All sweeper datasets lie in
[0, 1], so it is also the input value, as attack budgets are.

This module registers the defenses; it imports neither TensorFlow nor QKeras: grids
validate defenses without them.
"""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.defenses import adversarial, bit_width, regularizers
from sweeper.defenses.spec import DEFENSES, DefenseSpec, check_preset, resolve  # noqa: F401  (the API)
from sweeper.keys import NONE

def build(name: str, params: Mapping[str, Any] | None = None, *,
          clip_values: tuple[float, float] = (0.0, 1.0), preset: Any = None):
    """The defense's training step for ``train(..., defense=...)``: a ``base.Defense``,
    or None for ``none`` (plain training). ``preset``: the model's quantizer preset
    (``sweeper.models.quantizers.Preset``), which ``dbwt`` needs."""
    spec = DEFENSES.get(name)
    resolved = resolve(name, params)
    return None if spec.build is None else spec.build(resolved, tuple(clip_values), preset)


def evaluation_widths(name: str, params: Mapping[str, Any], preset: Any) -> list[int]:
    """The bit widths besides the preset's own at which a model trained with the defense
    is evaluated too (the spec's ``widths``: dbwt's other widths); none for the others."""
    spec = DEFENSES.get(name)
    return [] if spec.widths is None else spec.widths(params, preset)


def at_width(name: str, model, width: int):
    """A context in which ``model``, trained with the defense, computes at ``width``."""
    return DEFENSES.get(name).at_width(model, width)


DEFENSES.add(NONE, DefenseSpec(NONE, {}, {}, "plain training (no defense)"))
for _spec in (*regularizers.SPECS, *adversarial.SPECS, *bit_width.SPECS):
    DEFENSES.add(_spec.name, _spec)
del _spec

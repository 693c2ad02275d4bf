"""Quantizer presets: the paper's eight named ways of quantizing a network with QKeras.

A preset says, as QKeras quantizer expressions, how a model's weights (kernels), biases
and activations are quantized. Models read presets; they never hard-code quantizers.
Expressions are plain strings so this module imports without TensorFlow; ``make``
turns one into a QKeras quantizer object when a model is built.

Stochastic presets (``stq``, ``sbinary``) sample during training and are deterministic
at evaluation; ``models.QModel`` makes that true under TF2 (QKeras alone does not).
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeper.registry import Registry


@dataclass(frozen=True)
class Preset:
    name: str
    kernel: str | None  # None: full-precision float32 weights
    bias: str | None
    activation: str  # a QKeras activation quantizer, or plain "relu"
    stochastic: bool
    description: str


QUANTIZERS: Registry[Preset] = Registry("quantizer")


def _add(preset: Preset) -> None:
    QUANTIZERS.add(preset.name, preset)


_add(Preset("fp", None, None, "relu", False, "full precision float32 (baseline)"))
for _bits in (8, 4, 2):
    _add(Preset(
        f"int{_bits}",
        f"quantized_bits({_bits},0,alpha=1)",
        f"quantized_bits({_bits},0,alpha=1)",
        f"quantized_relu({_bits})",
        False,
        f"{_bits}-bit fixed-point weights, biases and ReLU activations",
    ))
# Ternary and binary nets keep 8-bit biases (a handful of values per layer) and use
# ternary/binary activations: the weights *and* the activations are deeply quantized.
_add(Preset("ternary", "ternary(alpha=1)", "quantized_bits(8,0,alpha=1)",
            "ternary(alpha=1)", False, "ternary {-1,0,1} weights and activations"))
# The stochastic presets' activations use a fixed scale (alpha=1). With alpha='auto_po2'
# an activation's scale is computed over the whole batch tensor, so a sample's prediction
# depends on which other samples share its batch: unlike inference on an MCU (batch 1),
# and it lets decision-based attacks such as Boundary "succeed" in ART's candidate batches
# but not in evaluation. Weights keep 'auto_po2': their scale depends only on the weights.
# QKeras's stochastic_ternary samples only with alpha 'auto'/'auto_po2' (it asserts so),
# so stq's activations are plain ternary; its weights carry the stochastic quantization.
_add(Preset("stq", "stochastic_ternary(alpha='auto_po2')", "quantized_bits(8,0,alpha=1)",
            "ternary(alpha=1)", True,
            "stochastic ternary weights (sampled while training), ternary activations"))
_add(Preset("binary", "binary(alpha=1)", "quantized_bits(8,0,alpha=1)",
            "binary(alpha=1)", False, "binary {-1,1} weights and activations"))
_add(Preset("sbinary", "stochastic_binary(alpha='auto_po2')", "quantized_bits(8,0,alpha=1)",
            "stochastic_binary(alpha=1)", True,
            "stochastic binary weights and activations (sampled while training)"))


def make(expression: str | None):
    """A fresh QKeras quantizer object for an expression (None stays None)."""
    if expression is None:
        return None
    from qkeras.quantizers import get_quantizer

    return get_quantizer(expression)


def activation(preset: Preset):
    """The activation a preset applies after each hidden layer (a QKeras layer)."""
    from qkeras import QActivation

    if preset.activation == "relu":
        return QActivation("relu")
    return QActivation(make(preset.activation))

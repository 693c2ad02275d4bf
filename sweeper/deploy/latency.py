"""Latency estimates: ``estimate(macs, mcu, runtime)`` (and ``latency_ms``), a model's
multiply-accumulates (``macs.py``) times the cycles per MAC a published MLPerf Tiny
result measured for that core and runtime, over the MCU's clock. Always an estimate,
labelled with the runtime it assumes: on one chip the runtime changes latency 3x
(reference TFLM against ST's X-CUBE-AI below).

``CALIBRATIONS``, one per (core, runtime), each from the MLPerf Tiny closed division
(mlcommons/tiny_results_v*; median throughput of the performance run, latency = 1 /
throughput): cycles per MAC = latency x clock / MACs of the image-classification model
(ResNet-8), with sweeper's own count of that network (``macs.REFERENCE_MACS``). The
keyword-spotting result (DS-CNN) on the same board is the check: the estimate reproduces
the calibration board's ResNet-8 latency by construction, and its DS-CNN latency within
a factor of 2 (measured: 0.64 to 0.83 of it; DS-CNN's depthwise layers do fewer MACs a
cycle than ResNet-8's convolutions).

What it assumes: cycles per MAC carry over between chips with the same core (an
STM32H743 at 480 MHz from an STM32H7A3 at 280 MHz), whatever their flash wait states
and caches; latency scales with MACs, whatever the layer mix (off by the factor above
between a convolutional and a depthwise network); the int8 build runs (a LUT build adds
DECODE work, an INT4 build unpacking, neither counted). Cores with no published
calibration here (Cortex-M0+, Xtensa LX7) and runtimes never measured on a core (no
reference-TFLM or CMSIS-NN result on a Cortex-M7 found) get no estimate: ``estimate``
raises ``ValueError`` naming what is calibrated.
"""

from __future__ import annotations

from dataclasses import dataclass

from sweeper.deploy.macs import REFERENCE_MACS
from sweeper.registry import Registry

RUNTIMES: Registry[str] = Registry("runtime")
RUNTIMES.add("tflm-reference", "TensorFlow Lite Micro with its reference (portable C++) kernels")
RUNTIMES.add("cmsis-nn", "Arm CMSIS-NN kernels (as run by microTVM in the calibration)")
RUNTIMES.add("x-cube-ai", "ST X-CUBE-AI (STM32Cube.AI) generated code and kernels")


@dataclass(frozen=True)
class Calibration:
    """One published MLPerf Tiny result pair (image classification, keyword spotting)
    of one runtime on one board, and the cycles per MAC it implies."""

    runtime: str
    core: str
    board: str
    clock_mhz: float
    ic_per_s: float  # ResNet-8 median throughput, inferences a second
    kws_per_s: float  # DS-CNN median throughput: the check
    source: str

    @property
    def cycles_per_mac(self) -> float:
        return self.clock_mhz * 1e6 / self.ic_per_s / REFERENCE_MACS["resnet8"]

    @property
    def ic_ms(self) -> float:
        return 1000.0 / self.ic_per_s

    @property
    def kws_ms(self) -> float:
        return 1000.0 / self.kws_per_s


_RESULTS = "mlcommons/tiny_results_{} closed/{}/results/{}/{{ic,kws}}/performance/results.txt"
CALIBRATIONS = [
    Calibration("tflm-reference", "cortex-m4", "NUCLEO-L4R5ZI (STM32L4R5ZI)", 120, 1.420, 5.497,
                _RESULTS.format("v0.5", "reference", "Nucleo-L4R5ZI")
                + "; TFLM v2.3.1, no kernel library (systems/Nucleo_L4R5ZI_System_Description.json)"),
    Calibration("cmsis-nn", "cortex-m4", "NUCLEO-L4R5ZI (STM32L4R5ZI)", 120, 2.567, 10.019,
                _RESULTS.format("v1.0", "OctoML", "microtvm_cmsis_nn/NUCLEO_L4R5ZI")
                + "; microTVM with CMSIS-NN (systems/system_description_NUCLEO_L4R5ZI_"
                  "microtvm_cmsis_nn.json)"),
    Calibration("x-cube-ai", "cortex-m4", "NUCLEO-L4R5ZI (STM32L4R5ZI)", 120, 4.407, 13.323,
                _RESULTS.format("v1.0", "STMicroelectronics", "NUCLEO_L4R5ZI")
                + "; X-CUBE-AI v7.3.0"),
    Calibration("x-cube-ai", "cortex-m7", "NUCLEO-H7A3ZI-Q (STM32H7A3ZIT6Q)", 280, 18.401, 59.667,
                _RESULTS.format("v1.0", "STMicroelectronics", "NUCLEO-H7A3ZI-Q")
                + "; X-CUBE-AI v7.3.0"),
]


@dataclass(frozen=True)
class LatencyEstimate:
    """An estimated inference latency and everything it assumes."""

    ms: float
    mcu: str
    runtime: str
    calibration: Calibration

    @property
    def label(self) -> str:
        return (f"~{self.ms:.3g} ms (estimate: {self.runtime} on {self.mcu}, "
                f"{self.calibration.cycles_per_mac:.2f} cycles/MAC from {self.calibration.board})")


def calibration(core: str, runtime: str) -> Calibration:
    """The published calibration of ``runtime`` on ``core``, or ``ValueError``."""
    RUNTIMES.get(runtime)  # an unknown runtime name: "unknown runtime ...; available: ..."
    for item in CALIBRATIONS:
        if (item.core, item.runtime) == (core, runtime):
            return item
    raise ValueError(f"no published latency calibration for {runtime} on a {core}; "
                     f"calibrated there: {', '.join(runtimes_for(core)) or 'none'}")


def runtimes_for(core: str) -> list[str]:
    """The runtimes with a calibration on ``core``."""
    return [item.runtime for item in CALIBRATIONS if item.core == core]


def estimate(macs: int, mcu, runtime: str) -> LatencyEstimate:
    """The latency of ``macs`` multiply-accumulates on ``mcu`` (a name or an
    ``MCUProfile``) with ``runtime``: MACs x cycles per MAC / the MCU's clock."""
    from sweeper.deploy.mcus import MCUS

    profile = MCUS.get(mcu) if isinstance(mcu, str) else mcu
    found = calibration(profile.core, runtime)
    ms = macs * found.cycles_per_mac / (profile.clock_mhz * 1e6) * 1000.0
    return LatencyEstimate(ms, profile.name, runtime, found)


def latency_ms(macs: int, mcu, runtime: str) -> float:
    """``estimate(...).ms``: the estimated milliseconds alone."""
    return estimate(macs, mcu, runtime).ms

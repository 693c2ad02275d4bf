"""The microcontroller profiles a grid can target (``MCUS``): flash, total SRAM, the
largest contiguous SRAM block a TensorFlow Lite Micro arena can use, and the core and
clock ``latency.py`` estimates latency from, each with its datasheet, listed as data in
``mcus.yaml``. Plain data: the CLI lists and validates MCUs without TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sweeper.registry import Registry


@dataclass(frozen=True)
class MCUProfile:
    """A microcontroller's on-chip flash, total on-chip SRAM and largest contiguous SRAM
    block, in KB (1024 bytes), and its CPU core and top clock. A TensorFlow Lite Micro
    arena is one block of memory, so fit is judged against ``ram_block_kb``, not the
    total a datasheet headline quotes. The core picks the latency calibration
    (``sweeper.deploy.latency``), the clock scales it."""

    name: str
    flash_kb: float
    ram_kb: float
    ram_block_kb: float  # largest contiguous SRAM address range
    description: str
    source: str
    core: str  # cortex-m4, cortex-m7, cortex-m0+, xtensa-lx7
    clock_mhz: float  # the core's top clock, per the same source


MCUS = Registry[MCUProfile]("mcu")


def _profiles() -> None:
    """Register the profiles as ``mcus.yaml`` (beside this module) lists them, in order."""
    import yaml

    listed = yaml.safe_load(Path(__file__).with_name("mcus.yaml").read_text(encoding="utf-8"))
    for name, fields in listed.items():
        MCUS.add(name, MCUProfile(name=name, **fields))


_profiles()

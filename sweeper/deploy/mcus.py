"""The microcontroller profiles a grid can target (``MCUS``): flash, total SRAM, the
largest contiguous SRAM block a TensorFlow Lite Micro arena can use, and the core and
clock ``latency.py`` estimates latency from, each with its datasheet. Plain data: the
CLI lists and validates MCUs without TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

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

for _profile in [
    MCUProfile(
        "stm32h7", 2048, 1024, 512,
        "STM32H743/753 (Cortex-M7, 480 MHz), the paper's target: 2 MB flash, "
        "1 MB RAM as ST quotes it (128 KB DTCM + 64 KB ITCM + 864 KB user SRAM: "
        "AXI SRAM 512 KB and SRAM1-4), split over several non-contiguous regions; the "
        "largest block is the 512 KB AXI SRAM at 0x24000000",
        "ST DS12110 STM32H743xI datasheet", "cortex-m7", 480,
    ),
    MCUProfile(
        "stm32f4", 512, 128, 128,
        "STM32F446RE (Cortex-M4F, 180 MHz, Nucleo-F446RE): 512 KB flash, "
        "128 KB total SRAM (SRAM1 112 KB + SRAM2 16 KB, adjacent from 0x20000000)",
        "ST DS10693 STM32F446xC/E datasheet", "cortex-m4", 180,
    ),
    MCUProfile(
        "stm32f7", 1024, 320, 320,
        "STM32F746NG (Cortex-M7, 216 MHz, STM32F746G-DISCO): 1 MB flash, "
        "320 KB total SRAM (DTCM 64 KB + SRAM1 240 KB + SRAM2 16 KB, adjacent from "
        "0x20000000; ITCM not counted)",
        "ST DS10916 STM32F745xx/STM32F746xx datasheet", "cortex-m7", 216,
    ),
    MCUProfile(
        "stm32l4", 1024, 128, 128,
        "STM32L476RG (Cortex-M4F, 80 MHz, Nucleo-L476RG): 1 MB flash, "
        "128 KB total SRAM (SRAM1 96 KB + SRAM2 32 KB, which is also mapped at "
        "0x20018000, right after SRAM1)",
        "ST DS10198 STM32L476xx datasheet", "cortex-m4", 80,
    ),
    MCUProfile(
        "nrf52840", 1024, 256, 256,
        "Nordic nRF52840 (Cortex-M4F, 64 MHz): 1 MB flash, 256 KB total SRAM, one "
        "address range from 0x20000000",
        "Nordic nRF52840 Product Specification v1.7", "cortex-m4", 64,
    ),
    MCUProfile(
        "arduino_nano33_ble_sense", 1024, 256, 256,
        "Arduino Nano 33 BLE Sense: nRF52840 SoC (Cortex-M4F, 64 MHz), 1 MB flash, 256 KB total SRAM "
        "(the Mbed OS core and bootloader use part of both)",
        "Arduino ABX00031 Nano 33 BLE Sense product reference manual (datasheet)", "cortex-m4", 64,
    ),
    MCUProfile(
        "rp2040", 2048, 264, 264,
        "Raspberry Pi RP2040 (dual Cortex-M0+, 133 MHz): 264 KB total on-chip SRAM "
        "(striped SRAM0-3 then SRAM4-5, one address range from 0x20000000); "
        "no on-chip flash, the 2048 KB is the external QSPI flash of the Raspberry Pi Pico",
        "Raspberry Pi RP2040 Datasheet; Raspberry Pi Pico Datasheet", "cortex-m0+", 133,
    ),
    MCUProfile(
        "esp32s3", 8192, 512, 416,
        "Espressif ESP32-S3 (dual Xtensa LX7, 240 MHz): 512 KB total on-chip SRAM "
        "(SRAM0 64 KB, SRAM1 416 KB, SRAM2 32 KB; optional PSRAM not counted); the largest "
        "block is SRAM1, less what ESP-IDF itself takes; flash is external or in-package, the 8192 KB is "
        "the 8 MB flash of the ESP32-S3-DevKitC-1 N8",
        "Espressif ESP32-S3 Series Datasheet; ESP32-S3-DevKitC-1 User Guide", "xtensa-lx7", 240,
    ),
]:
    MCUS.add(_profile.name, _profile)

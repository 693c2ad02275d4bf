"""Benchmark: the TFLM child processes' share of a job's deployment, one fresh ``python -m
sweeper.deploy arena|outputs`` per call (as before issue 24) against this process's
long-lived server (``sweeper.deploy.server``).

Converts a few small_cnn digits models (untrained: the calls' cost does not depend on the
weights), then, alternating model by model so that the machine's noise falls on both,
runs what a job runs after conversion (``deploy.measure``: the int8 arena; ``builds``:
TFLM outputs of the int8 build, and each sub-byte build's outputs and arena) once with
each child. Prints the seconds per job and per child call, and the answers' equality.

    python bench/deploy_child.py [--models 4] [--samples 64]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from sweeper import deploy, models  # noqa: E402
from sweeper.deploy import arena, server, tflm  # noqa: E402
from sweeper.deploy.builds import builds  # noqa: E402
from sweeper.deploy.common import DeployError  # noqa: E402
from sweeper.models.quantizers import QUANTIZERS  # noqa: E402

CALLS = [0]


def one_shot(command: str, data: bytes, timeout_s: float, what: str) -> bytes:
    """The child as it was: a fresh ``python -m sweeper.deploy COMMAND`` per call."""
    CALLS[0] += 1
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "sweeper.deploy", command], input=data,
                          capture_output=True, timeout=timeout_s, env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise DeployError(f"{what} failed: {lines[-1] if lines else done.returncode}")
    return done.stdout


def served(command: str, data: bytes, timeout_s: float, what: str) -> bytes:
    CALLS[0] += 1
    return server.child(command, data, timeout_s, what)


def job(flatbuffer: bytes, x_check: np.ndarray, child) -> tuple[float, int, list]:
    arena.child = tflm.child = child  # what arena_bytes and tflm_outputs call
    CALLS[0] = 0
    started = time.perf_counter()
    measured = deploy.measure(flatbuffer)
    found = builds(flatbuffer, x_check, int8_arena=measured.arena_bytes)
    seconds = time.perf_counter() - started
    return seconds, CALLS[0], [(b.format, b.arena_bytes, b.agreement, b.error) for b in found]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=4)
    parser.add_argument("--samples", type=int, default=64)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.random((max(args.samples, 32), 8, 8, 1), dtype=np.float32)
    presets = ["int8", "int4", "ternary", "binary"]
    flatbuffers = [deploy.convert_int8(deploy.strip(models.build(
        "small_cnn", (8, 8, 1), 10, QUANTIZERS.get(presets[i % len(presets)]))), x[:32])
        for i in range(args.models)]
    server.child("arena", flatbuffers[0], 60, "warm-up")  # the server's start is paid once a worker
    totals = {"one-shot": [0.0, 0], "server": [0.0, 0]}
    for i, flatbuffer in enumerate(flatbuffers):
        order = [("one-shot", one_shot), ("server", served)][:: 1 if i % 2 == 0 else -1]
        results = {}
        for name, child in order:
            seconds, calls, results[name] = job(flatbuffer, x[: args.samples], child)
            totals[name][0] += seconds
            totals[name][1] += calls
        assert results["one-shot"] == results["server"], results
    for name, (seconds, calls) in totals.items():
        print(f"{name:9s}: {seconds / args.models:.3f} s per job, {calls / args.models:.1f} calls "
              f"per job, {seconds / calls:.3f} s per call (conversion excluded)")
    print(f"saved: {(totals['one-shot'][0] - totals['server'][0]) / args.models:.3f} s per job; "
          "answers identical")


if __name__ == "__main__":
    main()

"""Benchmark: bytes of datasets a node pulls, one object of all datasets (before) against
one object per dataset (now, ``ray_tune.put_each``).

Starts a head and a second node on this machine with ``ray start`` (as
tests/test_cluster.py does), puts stand-in datasets shaped like the paper grid's (CIFAR-10
and SVHN grayscale, GSC MFCCs, float32 with int64 labels; ``--scale`` shrinks the sample
counts to fit this machine's object stores) from a driver on the head, runs "trials" on
the second node that each get the dataset their job needs, and prints how many bytes the
second node's object store created, i.e. pulled. Measured, on stand-in arrays; the
full-size figure is the measured one divided by the scale. Runs ``ray stop`` at the end:

    flock /tmp/ray.lock python bench/data_pull.py [--scale 0.1]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sweeper.datasets import Dataset  # noqa: E402
from sweeper.run.ray_tune import put_each  # noqa: E402

PAPER = {"cifar10": (60_000, (32, 32, 1)), "svhn": (99_289, (32, 32, 1)),
         "gsc": (46_900, (49, 10, 1))}  # samples, input shape (docs/scale.md section 3)
# The datasets of the trials the second node runs, per scenario.
SCENARIOS = [("gsc",), ("cifar10",), ("svhn",), ("cifar10", "svhn", "gsc")]
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def stand_ins(scale: float) -> dict[str, Dataset]:
    return {name: Dataset(name, np.zeros((int(count * scale), *shape), np.float32),
                          np.zeros(int(count * scale), np.int64), tuple("0123456789"))
            for name, (count, shape) in PAPER.items()}


def start_two_nodes(store_bytes: int) -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    limits = ["--num-cpus=1", "--memory=3000000000", f"--object-store-memory={store_bytes}"]
    for args in (["--head", f"--port={port}", "--include-dashboard=false"],
                 [f"--address=127.0.0.1:{port}"]):
        subprocess.run(["ray", "start", *args, *limits], env=ENV, check=True,
                       capture_output=True, timeout=180)
    return f"127.0.0.1:{port}"


def pulled(ray, node: dict) -> int:
    from ray._private.internal_api import node_stats

    return node_stats(node["NodeManagerAddress"], node["NodeManagerPort"],
                      include_memory_info=False).store_stats.cumulative_created_bytes


def run(ray, data: dict, other: dict) -> list[tuple[tuple[str, ...], int, int]]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=1, scheduling_strategy=NodeAffinitySchedulingStrategy(
        other["NodeID"], soft=False))
    def trial(box: list, name: str) -> int:  # refs in a list: the trial gets them itself
        got = ray.get(box[0])
        return (got[name] if isinstance(got, dict) else got).x.nbytes

    figures = []
    for scenario in SCENARIOS:
        per_mode = []
        for one_object in (True, False):
            before = pulled(ray, other)
            if one_object:  # before: tune.with_parameters(data=...) put the whole dict
                refs = dict.fromkeys(data, ray.put(data))
            else:
                refs = put_each(data)
            ray.get([trial.remote([refs[name]], name) for name in scenario])
            per_mode.append(pulled(ray, other) - before)
            del refs  # freed on every node before the next measurement
        figures.append((scenario, *per_mode))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.1)
    scale = parser.parse_args().scale
    data = stand_ins(scale)
    total = sum(d.x.nbytes + d.y.nbytes for d in data.values())
    import ray

    try:
        address = start_two_nodes(max(3 * total, 100_000_000))
        os.environ.update(RAY_AUTH_MODE="disabled")
        ray.init(address=address, include_dashboard=False, logging_level="ERROR")
        here = ray.get_runtime_context().get_node_id()
        other = next(n for n in ray.nodes() if n["Alive"] and n["NodeID"] != here)
        print(f"stand-ins at scale {scale}: {total / 1e6:.1f} MB in all "
              f"(full size {total / scale / 1e6:.0f} MB)")
        print("second node trains | one object: MB pulled | per dataset: MB pulled | full size (MB)")
        for scenario, old, new in run(ray, data, other):
            print(f"{'+'.join(scenario):18} | {old / 1e6:21.1f} | {new / 1e6:22.1f} | "
                  f"{old / scale / 1e6:.0f} -> {new / scale / 1e6:.0f}")
    finally:
        ray.shutdown()
        subprocess.run(["ray", "stop"], env=ENV, capture_output=True, timeout=180)


if __name__ == "__main__":
    main()

"""Sweeper's Ray cluster, without Tune: connect to Ray or start a local instance (and
stop it), check that some node can hold one trial, count the trials it holds at once, and
put each dataset once in the object store. ``runners.RayTuneRunner`` imports it when a launch starts;
Tune (``ray_tune.py``, with ``ray_tune.warm_imports``) is imported meanwhile, in the background.
"""

from __future__ import annotations

import logging
import os
import signal
from types import MappingProxyType

from rich.console import Console

from sweeper import WORKER_ENV
from sweeper.console import styled
from sweeper.errors import UserError
from sweeper.run import processes


# What sweeper's own local instance changes in Ray's configuration (bench/ray_start.py):
OWN_SYSTEM_CONFIG = MappingProxyType({
    # No workers prestarted for the driver: Tune gives its trial actors a runtime_env of
    # their own, so those workers never take a trial; they only booted beside the trials'.
    "prestart_worker_first_driver": False,
    # The raylet connects to the object store it has just started, retrying every
    # raylet_client_connect_timeout_milliseconds: 1 s by default, and in about half of the
    # starts the first try came too early, so that ray.init took a second more. Every
    # 0.1 s instead, with ten times the attempts: the same 10 s before giving up.
    "raylet_client_connect_timeout_milliseconds": 100,
    "raylet_client_num_connect_attempts": 100,
})


def init_ray(address: str | None, verbose: bool) -> bool:
    """Connect to Ray, or start a local instance; True when that local instance is
    sweeper's own (a cluster of this machine alone, which never grows)."""
    import ray

    if ray.is_initialized():
        return False
    own = address is None and not os.environ.get("RAY_ADDRESS")
    # A cluster's workers get WORKER_ENV through the job's runtime_env. A local instance's
    # processes inherit this process's environment, which has it (sweeper/__init__.py).
    ray.init(address=address, runtime_env=None if own else {"env_vars": dict(WORKER_ENV)},
             log_to_driver=verbose, include_dashboard=False,
             _system_config=dict(OWN_SYSTEM_CONFIG) if own else None,
             logging_level=logging.INFO if verbose else logging.ERROR)
    if not verbose:  # failed trials are summarised in one line each by the CLI
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    return own


def shutdown_own() -> None:
    """End the local Ray instance that ``init_ray`` started (``own``), its autoscaler
    monitor first. ``ray.shutdown`` stops the GCS before the monitor, whose SIGTERM handler
    then waits on the dead GCS until Ray kills it a second later: 1.0 s of the 1.4 s
    (``python bench/ray_stop.py``). A local instance of one machine never scales, so the
    monitor has nothing to finish; killed first, Ray finds it gone and goes on."""
    import ray

    stop_monitor()
    ray.shutdown()


def stop_monitor() -> list[int]:
    """Kill the autoscaler monitor of the local instance this process started; returns
    the pids killed (none where it is not this process's child, or there is no /proc:
    Ray's shutdown then waits as usual)."""
    killed = []
    for pid, process in processes.children().items():
        if not any(arg.endswith(_MONITOR_SCRIPTS) for arg in process.argv):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except OSError:  # it ended meanwhile
            pass
    return killed


# Ray's autoscaler monitor, as the driver starts it for a local head (v1 and v2)
_MONITOR_SCRIPTS = (os.path.join("autoscaler", "_private", "monitor.py"), os.path.join("autoscaler", "v2", "monitor.py"))


def check_resources(resources, *, local: bool, console: Console | None = None) -> None:
    """Fail fast, in one line, when no node of the Ray cluster can hold one trial
    (``resources.cpus`` CPUs and ``resources.gpus`` GPUs on one node): Tune would wait for
    it forever at "cells 0/N (starting)". A cluster that may add nodes is given the
    benefit of the doubt: one whose autoscaler published its node types is checked against
    them; on another cluster (``--address``) that may autoscale unseen, a warning says
    what is missing and the sweep waits. Sweeper's own local cluster never grows."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    missing = missing_resource(nodes, resources.cpus, resources.gpus)
    if missing is None:
        return
    node_types = _autoscaler_node_types()
    if node_types is not None and not local:
        if missing_resource(node_types, resources.cpus, resources.gpus) is None:
            return  # the autoscaler can add a node that fits
        raise UserError(f"{missing}, nor can the cluster's autoscaler add one "
                        f"({_most(node_types)} on its largest node type)")
    if local:
        raise UserError(missing + " (sweeper's local Ray cluster; use --address for a cluster that has them)")
    if console is not None:
        console.print(styled("warning:", "yellow", f"{missing}; the sweep waits for one to join (Ctrl-C to stop)"))


def slots(resources) -> int:
    """How many trials of ``resources`` the cluster's live nodes hold at once (at least 1:
    a cluster that may grow holds one once it has)."""
    import ray

    held = 0
    for node in (node["Resources"] for node in ray.nodes() if node.get("Alive")):
        fits = node.get("CPU", 0) // resources.cpus  # cpus > 0 (grid.py)
        if resources.gpus:
            fits = min(fits, node.get("GPU", 0) // resources.gpus)
        held += int(fits)
    return max(1, held)


def missing_resource(nodes: list[dict], cpus: float, gpus: float) -> str | None:
    """None if some node (Ray's resource mapping) holds ``cpus`` CPUs and ``gpus`` GPUs;
    else one line naming the missing resource and what the nodes have."""
    if any(node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus for node in nodes):
        return None
    if gpus > 0 and not any(node.get("GPU", 0) >= gpus for node in nodes):
        field, asked = "resources.gpus", f"{gpus:g} GPUs"
    elif not any(node.get("CPU", 0) >= cpus for node in nodes):
        field, asked = "resources.cpus", f"{cpus:g} CPUs"
    else:  # enough of each, never on one node
        field, asked = "resources", f"{cpus:g} CPUs and {gpus:g} GPUs on one node"
    return f"{field}: each trial asks for {asked}, but no node of the Ray cluster has them ({_most(nodes)})"


def _most(nodes: list[dict]) -> str:
    if not nodes:
        return "it has no node"
    cpus = max(node.get("CPU", 0) for node in nodes)
    gpus = max(node.get("GPU", 0) for node in nodes)
    return f"{len(nodes)} node{'s' * (len(nodes) != 1)}, at most {cpus:g} CPUs and {gpus:g} GPUs each"


def _autoscaler_node_types() -> list[dict] | None:
    """The resources of each node type an autoscaler may launch, when it published them
    (Ray's autoscaler v2 and KubeRay do, in the GCS); None when unknown."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # a private API: unknown, never an error
        return None
    if config is None or not config.node_group_configs:
        return None
    return [dict(group.resources) for group in config.node_group_configs if group.max_count != 0]


def put_each(data: dict) -> dict:
    """One object per dataset (key -> ObjectRef): a trial gets only its job's dataset, so
    a node never pulls one that none of its trials uses (one object of all of them would
    be pulled whole by every node)."""
    import ray

    return {key: ray.put(dataset) for key, dataset in data.items()}

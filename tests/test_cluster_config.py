"""cluster.yaml: Ray's own config checks pass offline, they catch typos, and the
sweeper-specific parts (Ray pinned to the installed version, sweeper installed from
the copied checkout, Keras 2 selected everywhere, trials kept off the head) hold.

The checks are the offline part of what `ray up` does before it touches AWS:
``prepare_config`` merges the file with Ray's AWS defaults (read from a YAML file
inside the ray package) and ``validate_config`` checks the result against
``ray/autoscaler/ray-schema.json``. Neither calls AWS, so nothing is mocked: the
``offline`` fixture only makes sure of it, by refusing every network connection
and hiding any AWS credentials for the duration of each test. The schema does not
look inside ``node_config`` (EC2's own parameters, checked by AWS at launch).
"""

from __future__ import annotations

import copy
import re
import socket

import jsonschema
import pytest
import typer
import yaml

from sweeper.cli import app
from sweeper.keys import version_of
from tests.conftest import ROOT

CLUSTER_YAML = ROOT / "cluster.yaml"
CLUSTER_DOC = ROOT / "docs" / "cluster.md"


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"cluster config validation tried to open a network connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/credentials")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent/config")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def raw() -> dict:
    """cluster.yaml as written."""
    return yaml.safe_load(CLUSTER_YAML.read_text())


def check(config: dict) -> dict:
    """What `ray up` checks before it contacts the cloud; returns the prepared config."""
    from ray.autoscaler._private.util import prepare_config, validate_config  # Ray: not at collection

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_own_validation(offline, raw):
    prepared = check(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


# ---------------------------------------------------------------- typos are caught

def test_a_misspelled_top_level_key_fails(offline, raw):
    raw["max_worker"] = raw.pop("max_workers")
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        check(raw)


def test_an_unknown_key_in_a_node_type_fails(offline, raw):
    cpu = raw["available_node_types"]["cpu_worker"]
    cpu["min_worker"] = cpu.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        check(raw)


def test_a_fractional_resource_fails(offline, raw):
    raw["available_node_types"]["cpu_worker"]["resources"]["CPU"] = 1.5
    with pytest.raises(jsonschema.ValidationError, match="1.5"):
        check(raw)


# ---------------------------------------------------------------- sweeper's parts

def test_nodes_pin_ray_to_the_installed_version_and_install_the_mounted_checkout(offline, raw):
    prepared = check(raw)
    assert prepared["file_mounts"] == {"~/sweeper": "."}
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in
        commands = prepared[key]
        pins = [m.group(1) for c in commands for m in re.finditer(r"ray\[default\]==([^\"'\s]+)", c)]
        assert pins == [version_of("ray")], f"{key}: ray[default] must be pinned to {version_of('ray')}"
        installs = [i for i, c in enumerate(commands) if re.search(r"\bpip install -e ~/sweeper\b", c)]
        assert installs, f"{key}: sweeper is not installed from ~/sweeper"
        pin_at = next(i for i, c in enumerate(commands) if "ray[default]==" in c)
        assert pin_at < installs[0], f"{key}: pin Ray before sweeper pulls in a newer one"
    assert any("boto3" in c for c in prepared["head_setup_commands"])  # the autoscaler needs it


def test_every_ray_process_gets_keras_2(offline, raw):
    prepared = check(raw)
    for key, flag in (("head_start_ray_commands", "--head"), ("worker_start_ray_commands", "--address")):
        starts = [c for c in prepared[key] if "ray start" in c]
        assert len(starts) == 1, key
        assert re.search(rf"\bTF_USE_LEGACY_KERAS=1\b.*\bray start\b.*{flag}", starts[0]), key
        assert re.search(r"\bTF_CPP_MIN_LOG_LEVEL=3\b.*\bray start\b", starts[0]), key
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in prepared["head_start_ray_commands"][-1]
    assert "$RAY_HEAD_IP:6379" in prepared["worker_start_ray_commands"][-1]
    bashrc = [c for c in prepared["setup_commands"] if ".bashrc" in c]
    assert any("export TF_USE_LEGACY_KERAS=1" in c for c in bashrc)


def test_trials_never_run_on_the_head_and_workers_scale_from_zero(offline, raw):
    prepared = check(raw)
    types = prepared["available_node_types"]
    assert types[prepared["head_node_type"]]["resources"]["CPU"] == 0
    workers = {name: t for name, t in types.items() if name != prepared["head_node_type"]}
    assert workers["cpu_worker"]["min_workers"] == 0
    assert workers["cpu_worker"]["resources"]["CPU"] > 0
    assert workers["cpu_worker"]["node_config"]["InstanceMarketOptions"] == {"MarketType": "spot"}
    assert workers["gpu_worker"]["min_workers"] == 0
    assert workers["gpu_worker"]["resources"]["GPU"] >= 1
    assert "InstanceMarketOptions" not in workers["gpu_worker"]["node_config"]
    assert sum(t["max_workers"] for t in workers.values()) <= prepared["max_workers"]
    assert prepared["provider"]["cache_stopped_nodes"] is False


def test_every_node_gets_the_instance_profile_for_s3(raw):
    for name, node_type in raw["available_node_types"].items():
        assert node_type["node_config"].get("IamInstanceProfile") == {"Name": "sweeper-node"}, name


# ---------------------------------------------------------------- the documented commands

def _launch_lines() -> list[str]:
    text = CLUSTER_YAML.read_text() + "\n" + CLUSTER_DOC.read_text()
    text = text.replace("\\\n", " ")  # join continued shell lines
    return [m.group(0) for m in re.finditer(r"sweeper launch \S+\.ya?ml[^\n]*", text)]


def test_documented_launch_commands_use_real_grids_and_options():
    launch = typer.main.get_command(app).commands["launch"]
    options = {opt for param in launch.params for opt in param.opts}
    lines = _launch_lines()
    assert len(lines) >= 4  # two in cluster.yaml, two in the doc
    for line in lines:
        grid = line.split()[2]
        assert (ROOT / grid).is_file(), line
        used = set(re.findall(r"(?<!\S)--[a-z][\w-]*", line.split('"')[0]))
        assert used <= options, f"unknown options {used - options} in: {line}"
        assert "--results s3://" in line, f"a cluster sweep needs shared storage: {line}"

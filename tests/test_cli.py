"""The CLI as a user runs it: exit codes, one-line errors, nothing written on bad input,
and no heavy imports for --help, validate and expand."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli, write_grid


def sweeper(*args, cwd=None, env=None, timeout=600):
    """`python -m sweeper ARGS` in a new process: for exit codes, signals, tracebacks and
    concurrent launches; ``conftest.cli`` runs the others in process."""
    return subprocess.run([sys.executable, "-m", "sweeper", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def test_validate_and_expand_the_demo_grid():
    validated = cli("validate", str(ROOT / "grids" / "demo.yaml"))
    assert validated.returncode == 0
    assert "ok (216 cells in 24 training jobs)" in validated.stdout
    expanded = cli("expand", str(ROOT / "grids" / "demo.yaml"), "--set", "folds.k=5")
    assert expanded.returncode == 0
    assert "grid demo: 360 cells, 40 trainings" in expanded.stdout
    assert "quantizers               8" in expanded.stdout


@pytest.mark.e2e
@pytest.mark.parametrize("command", ["validate", "expand", "launch"])
def test_bad_grid_exits_2_with_one_line_and_writes_nothing(tmp_path, tiny_grid, command):
    tiny_grid["attacks"][0]["eps"] = [-0.5]
    path = write_grid(tmp_path, tiny_grid)
    result = sweeper(command, str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "attacks.0.eps" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


@pytest.mark.e2e
def test_debug_shows_the_traceback(tmp_path):
    result = sweeper("--debug", "validate", str(tmp_path / "absent.yaml"))
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "grid file not found" in result.stderr


def test_missing_results_and_bad_format(tmp_path):
    missing = cli("query", str(tmp_path), "SELECT 1")
    assert missing.returncode == 2 and "no sweeper results here" in missing.stderr
    bad = cli("query", str(tmp_path), "SELECT 1", "--format", "xml")
    assert bad.returncode == 2 and "unknown format 'xml'; available: table, csv, json" in bad.stderr


def test_mcu_lists_profiles():
    result = cli("mcu")
    assert result.returncode == 0
    assert "stm32h7" in result.stdout and "2048" in result.stdout


HEAVY = ("tensorflow", "ray", "art", "qkeras", "duckdb")


@pytest.mark.e2e
@pytest.mark.parametrize("args", [["--help"], ["validate", "grids/demo.yaml"],
                                  ["expand", "grids/demo.yaml", "--results", "/nonexistent/store"], ["mcu"]])
def test_light_commands_import_no_heavy_library(args):
    script = ("import sys\nfrom typer.testing import CliRunner\nfrom sweeper.cli import app\n"
              f"result = CliRunner().invoke(app, {args!r})\n"
              "assert result.exit_code == 0, result.output\n"
              f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_compact_merges_fragments_and_writes_the_diagnostics(tmp_path):
    from sweeper import store
    from tests.test_store import make_row

    location = store.locate(str(tmp_path / "r"))
    store.write_rows(location, [make_row("a", fold=0), make_row("b", fold=1)])
    store.write_rows(location, [make_row("b", fold=1), make_row("c", fold=2)])  # b twice, as after a crash
    done = cli("compact", location.text)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{location.text}: 2 fragments -> 1 file(s), 3 rows, 1 duplicate rows dropped"
    assert len(store.fragments(location)) == 1 and (tmp_path / "r" / "diagnostics.parquet").exists()
    assert cli("check", location.text).returncode == 0
    missing = cli("compact", str(tmp_path / "none"))
    assert missing.returncode == 2 and "no sweeper results here" in missing.stderr


# ---------------------------------------------------------------- hostile grid input, in process

def _validate_in(directory, *args):
    """`sweeper validate ARGS` run in process with ``directory`` as the working folder."""
    import os

    from typer.testing import CliRunner

    from sweeper.cli import app

    here = os.getcwd()
    os.chdir(directory)
    try:
        return CliRunner().invoke(app, ["validate", *args])
    finally:
        os.chdir(here)


@pytest.mark.parametrize("args, message", [
    (["/dev/zero"], "error: /dev/zero: not a regular file (a character device); give the path of a grid file"),
    (["grid.yaml", "--set", "name='[/x] :x:'"],
     "error: grid.yaml: name: '[/x] :x:' is not usable as a folder name: use letters, digits, '_', '-' and '.', "
     "not starting with '.'"),
    (["grid.yaml", "--set", "attacks.--1.eps=1"], "error: --set attacks.--1: no entry named '--1'"),
])
def test_hostile_input_is_one_literal_line_and_exit_2(tmp_path, tiny_grid, args, message):
    write_grid(tmp_path, tiny_grid)
    result = _validate_in(tmp_path, *args)
    assert result.exit_code == 2, result.output
    # the user's text printed as written: no rich markup, no emoji code
    assert result.stderr == message + "\n" and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.yaml"]


def test_missing_resource_names_it_and_what_the_nodes_have():
    from sweeper.run.ray_cluster import missing_resource

    one_cpu_node = [{"CPU": 2.0, "memory": 1e9}]
    assert missing_resource(one_cpu_node, 1, 2) == (
        "resources.gpus: each trial asks for 2 GPUs, but no node of the Ray cluster has them "
        "(1 node, at most 2 CPUs and 0 GPUs each)")
    assert missing_resource(one_cpu_node, 4, 0).startswith("resources.cpus: each trial asks for 4 CPUs")
    assert missing_resource([{"CPU": 2.0}, {"CPU": 1.0, "GPU": 1.0}], 2, 1).startswith(
        "resources: each trial asks for 2 CPUs and 1 GPUs on one node")
    assert missing_resource([{"CPU": 2.0, "GPU": 1.0}], 1, 0.25) is None
    assert missing_resource(one_cpu_node, 2, 0) is None


@pytest.mark.e2e
@pytest.mark.slow
def test_launch_asking_for_gpus_the_cluster_lacks_fails_fast(tmp_path, tiny_grid):
    """Before: Tune waited forever at "cells 0/2 (starting)"; now exit 2 once Ray is up."""
    path = write_grid(tmp_path, tiny_grid)
    result = sweeper("launch", str(path), "--set", "resources.gpus=2", cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: resources.gpus: each trial asks for 2 GPUs, but no node of the Ray cluster has them "
        "(1 node, at most "), lines
    assert "0 GPUs each) (sweeper's local Ray cluster" in lines[0]
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["grid.yaml"]


def test_a_local_launch_takes_no_address_and_writes_nothing(tmp_path, tiny_grid):
    result = cli("launch", str(write_grid(tmp_path, tiny_grid)), "--local", "--address", "auto",
                     "--results", str(tmp_path / "r"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "error: --local: runs in this process, so it takes no --address"
    assert not (tmp_path / "r").exists()


def test_the_command_freezes_the_collector_at_exit_only_when_it_is_the_process(monkeypatch):
    """``sweeper`` (cli.main) spares the interpreter its last collection at exit
    (bench/overhead.py prints the launch's exit time); the app called in process, as
    these tests do, leaves the collector alone."""
    import atexit
    import gc

    from sweeper import cli as command

    registered, ran = [], []
    monkeypatch.setattr(atexit, "register", registered.append)
    real_app = command.app
    monkeypatch.setattr(command, "app", lambda: ran.append("app"))
    command.main()
    assert registered == [gc.freeze] and ran == ["app"]
    registered.clear()
    monkeypatch.setattr(command, "app", real_app)
    assert cli("mcu").returncode == 0 and registered == []

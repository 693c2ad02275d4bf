"""Shared test helpers: tiny grids written to tmp_path, the repository root, a tiny store
launched once per session and copied per test (``tiny_store``), the CLI run in process
(``cli``), and heavy libraries named at module level without importing them at
collection (``lazy_module``)."""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS before any test imports TensorFlow)

# One compute thread per test process (TensorFlow's two pools, OpenMP, BLAS), as a Ray trial
# holding one CPU has (sweeper.run.placement): the suite's models are tiny, so a second
# thread only adds synchronisation (test_defenses: 49 s against 59 s in one process on 2
# cores), and with two xdist workers, or a worker beside a launch's trials, it oversubscribes
# the cores. Subprocesses (launches, their Ray workers) inherit it. Set before TensorFlow loads.
for _variable in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

ROOT = Path(__file__).resolve().parent.parent

TINY_GRID = {
    "name": "tiny",
    "seed": 0,
    "datasets": ["digits"],
    "models": ["small_cnn"],
    "quantizers": ["fp", "int4"],
    "attacks": [
        {"name": "fgsm", "norm": "inf", "eps": [0.1, 0.2]},
        {"name": "pgd", "norm": "inf", "eps": ["8/255"], "params": {"max_iter": 3, "eps_step": "2/255"}},
    ],
    "folds": {"k": 3, "only": [0]},
    "train": {"epochs": 1, "batch_size": 64},
    "samples": 20,
    "mcus": ["stm32h7"],
}


class _LazyModule:
    """A module imported on its first attribute use (``lazy_module``)."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        # pytest probes every module-level name at collection (for fixture markers:
        # private names); those must not import the module. Tests use public names.
        if attribute.startswith("_") or attribute == "pytestmark":
            raise AttributeError(attribute)
        return getattr(importlib.import_module(self._name), attribute)


def lazy_module(name: str):
    """``name`` as a module-level name of a test file, imported only when a test uses it,
    so that collecting the suite imports no TensorFlow, QKeras or Ray
    (tests/test_architecture.py checks it). A file whose package is not installed is
    skipped at collection, as ``pytest.importorskip`` would."""
    if importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed", allow_module_level=True)
    return _LazyModule(name)


def digits_small_cnn(preset: str, n_train: int, epochs: int):
    """(small_cnn trained on digits' first ``n_train`` images under ``preset`` for
    ``epochs``, seed 0; every digit as 8x8x1 in [0, 1]; their labels): the tiny trained model
    the deploy and attack tests share the recipe of."""
    import numpy as np
    import tensorflow as tf
    from sklearn.datasets import load_digits

    from sweeper import models
    from sweeper.models import quantizers

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    y = data.target.astype(np.int64)
    tf.keras.utils.set_random_seed(0)
    model = models.build("small_cnn", (8, 8, 1), 10, quantizers.QUANTIZERS.get(preset))
    model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x[:n_train], y[:n_train], epochs=epochs, batch_size=32, verbose=0)
    return model, x, y


def write_grid(directory: Path, grid: dict, name: str = "grid.yaml") -> Path:
    path = directory / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


@pytest.fixture
def tiny_grid() -> dict:
    import copy

    return copy.deepcopy(TINY_GRID)


@pytest.fixture(scope="session")
def tiny_store_once(tmp_path_factory) -> Path:
    """``TINY_GRID`` launched once per session, in process (no Ray): 2 trainings, 8 cells,
    compacted, with its cached models. Tests take a copy (``tiny_store``). Under xdist the
    workers share one: the first to need it launches it, the others wait and read it."""
    import fcntl
    import io

    from rich.console import Console

    from sweeper.plan import expand, grid
    from sweeper.run import sweep
    from sweeper.run.runners import InProcessRunner

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, above each worker's
    folder = shared / "tiny-store"
    with open(shared / "tiny-store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / "launched").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            plan = expand.expand(grid.load(write_grid(folder, TINY_GRID)))
            report = sweep.launch(plan, str(folder / "results"), runner=InProcessRunner(),
                                  console=Console(file=io.StringIO()))
            assert report.complete and not report.failed_jobs, report
            (folder / "launched").touch()
    return folder / "results"


@pytest.fixture
def tiny_store(tiny_store_once, tmp_path) -> Path:
    """A copy of the session's finished ``TINY_GRID`` store in ``tmp_path/results``, to
    change freely."""
    return Path(shutil.copytree(tiny_store_once, tmp_path / "results"))


def cli(*args, cwd: Path | str | None = None) -> subprocess.CompletedProcess:
    """The sweeper CLI run in this process (Typer's CliRunner), answered as a subprocess
    would be (returncode, stdout, stderr), without a new interpreter's start-up and
    TensorFlow import (seconds each). An exception the CLI does not turn into an exit code
    is raised here. Only signals, real exit codes and concurrent launches need a process."""
    from typer.testing import CliRunner

    from sweeper.cli import app

    previous = os.getcwd()
    os.chdir(cwd or previous)
    try:
        result = CliRunner().invoke(app, [str(arg) for arg in args])
    finally:
        os.chdir(previous)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(list(args), result.exit_code, result.stdout, result.stderr)


def launch_until_first_fragment(grid_path: Path, results: Path, *options: str,
                                env: dict | None = None) -> subprocess.Popen:
    """Start `sweeper launch` (with ``options``) in the background and return once it has
    stored a fragment (so a test can then hurt it mid-sweep)."""
    process = subprocess.Popen([sys.executable, "-m", "sweeper", "launch", str(grid_path),
                                "--results", str(results), *options], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not list(results.glob("rows/part-*.parquet")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    return process


PROCESSES = "processes"  # the xdist group of the tests that spawn processes or start Ray


@pytest.hookimpl(tryfirst=True)  # before xdist's own, which reads the groups
def pytest_collection_modifyitems(config, items):
    """With pytest-xdist (``-n 3 --dist loadgroup``), tests run in groups, each group on
    one worker: every test that spawns sweeper processes or starts Ray (``e2e``,
    ``serial``) in one group, one after another (a ``serial`` test's `ray stop` must never
    meet another Ray test, and two Ray launches at once would share the two cores with each
    other); every other test with the rest of its module, whose module-scoped fixtures
    (trained models, launched stores) are then built once, not once per worker.

    On an xdist worker the groups are also put in the order they are handed out (see
    ``pytest_xdist_make_scheduler``): the processes group (the longest) first, then modules
    by their number of ``slow`` tests, so that the last groups to run are short ones and no
    worker waits long on the other at the end."""
    group = {item.nodeid: PROCESSES if _processes(item) else item.path.stem for item in items}
    slow: dict[str, int] = {}
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        item.add_marker(pytest.mark.xdist_group(group[item.nodeid]))
        slow[group[item.nodeid]] = slow.get(group[item.nodeid], 0) + bool(item.get_closest_marker("slow"))
        first.setdefault(group[item.nodeid], index)
    if hasattr(config, "workerinput"):
        slow[PROCESSES] = len(items) + 1
        items.sort(key=lambda item: (-slow[group[item.nodeid]], first[group[item.nodeid]]))


def _processes(item) -> bool:
    return bool(item.get_closest_marker("e2e") or item.get_closest_marker("serial"))


BACKGROUND_NICENESS = 10


def pytest_runtest_setup(item):
    """On an xdist worker, the other tests yield the cores to the processes group: Ray's
    nodes, autoscaler and trials starved of CPU wait out heartbeats and retries (beside two
    busy workers at equal priority the two-node and autoscaling tests took 4 to 7 times as
    long as alone). The first test of any other group lowers its worker's priority for the
    rest of the session; the processes group, handed out first, keeps the suite's."""
    if os.environ.get("PYTEST_XDIST_WORKER") and not _processes(item) and os.nice(0) < BACKGROUND_NICENESS:
        os.nice(BACKGROUND_NICENESS - os.nice(0))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadgroup``, handing the groups out in the order the workers collected
    them (``pytest_collection_modifyitems``), not by their number of tests."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    config.option.loadscopereorder = False
    return LoadGroupScheduling(config, log)

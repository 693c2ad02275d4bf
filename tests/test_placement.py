"""Worker-side placement: TensorFlow in a trial sees exactly the GPUs Ray assigned it, with
memory growth on, and one intra-op thread per assigned CPU.

No GPU here, so the GPU path runs against ``FakeTF``, a stand-in for ``tf.config`` that
lists fake physical GPUs, records what is set, and once "initialised" refuses changes
the way TensorFlow does. Everything else is real: the CPU path runs real TensorFlow, and
the assignment is read inside real Ray tasks given GPUs that Ray was told the node has.
"""

from __future__ import annotations

import subprocess
import sys
from collections import namedtuple
from types import SimpleNamespace

import pytest

from sweeper.errors import UserError
from sweeper.plan import grid
from sweeper.run.placement import Assignment, PlacementError, configure, current
from tests.conftest import write_grid

Device = namedtuple("Device", "name device_type")  # tf's PhysicalDevice has these fields


class FakeTF:
    """``tf.config`` with ``gpus`` physical GPUs; ``initialised``: settings are frozen
    (TensorFlow accepts a setting it already has then, and raises on any other)."""

    def __init__(self, gpus: int, initialised: bool = False):
        self.physical = [Device(f"/physical_device:GPU:{i}", "GPU") for i in range(gpus)]
        self.visible, self.growth = list(self.physical), {}
        self.threads = {"intra": 0, "inter": 0}
        self.initialised = initialised
        self.config = SimpleNamespace(
            list_physical_devices=lambda kind: list(self.physical),
            set_visible_devices=lambda devices, kind: self._set("visible", list(devices)),
            get_visible_devices=lambda kind: list(self.visible),
            experimental=SimpleNamespace(
                set_memory_growth=lambda device, on: self._grow(device, on),
                get_memory_growth=lambda device: self.growth.get(device, False)),
            threading=SimpleNamespace(
                set_intra_op_parallelism_threads=lambda n: self._thread("intra", n),
                set_inter_op_parallelism_threads=lambda n: self._thread("inter", n)))

    def _frozen(self, old, new) -> None:
        if self.initialised and old != new:
            raise RuntimeError("cannot be modified after being initialized")

    def _set(self, attribute, value) -> None:
        self._frozen(getattr(self, attribute), value)
        setattr(self, attribute, value)

    def _grow(self, device, on) -> None:
        self._frozen(self.growth.get(device, False), on)
        self.growth[device] = on

    def _thread(self, kind, count) -> None:
        self._frozen(self.threads[kind], count)
        self.threads[kind] = count


def test_exactly_the_assigned_gpu_is_visible_with_memory_growth():
    tf = FakeTF(gpus=4)  # CUDA_VISIBLE_DEVICES unset: TensorFlow's index is the CUDA id
    placed = configure(Assignment(cpus=2, gpu_ids=("2",)), tf)
    assert tf.visible == [tf.physical[2]]
    assert tf.growth == {tf.physical[2]: True}
    assert tf.threads == {"intra": 2, "inter": 1}
    assert placed.gpus == ("/physical_device:GPU:2",) and placed.intra_op_threads == 2


def test_ray_renumbered_gpus_are_matched_through_cuda_visible_devices():
    # Ray set CUDA_VISIBLE_DEVICES=3,1 for a 2-GPU trial: TensorFlow lists them as 0 and 1.
    tf = FakeTF(gpus=2)
    configure(Assignment(cpus=1, gpu_ids=("1", "3"), cuda_visible="3,1"), tf)
    assert tf.visible == tf.physical and all(tf.growth[gpu] for gpu in tf.physical)


def test_a_cpu_trial_on_a_gpu_node_sees_no_gpu():
    # Ray leaves CUDA_VISIBLE_DEVICES alone for a worker without GPUs; TensorFlow would
    # otherwise take every GPU's memory.
    tf = FakeTF(gpus=2)
    placed = configure(Assignment(cpus=1.5), tf)
    assert tf.visible == [] and tf.growth == {} and placed.gpus == ()
    assert tf.threads["intra"] == 1


def test_trials_sharing_a_gpu_each_see_it_and_only_it():
    workers = [FakeTF(gpus=2) for _ in range(4)]  # gpus: 0.25, four trials on GPU 1
    for tf in workers:
        configure(Assignment(cpus=1, gpu_ids=("1",)), tf)
    assert all(tf.visible == [tf.physical[1]] and tf.growth == {tf.physical[1]: True}
               for tf in workers)


def test_an_assigned_gpu_tensorflow_cannot_see_is_an_error():
    with pytest.raises(PlacementError, match=r"assigned GPU\(s\) 0 but TensorFlow finds 0"):
        configure(Assignment(cpus=1, gpu_ids=("0",)), FakeTF(gpus=0))


def test_a_reused_actor_keeps_its_gpu_and_refuses_another():
    tf = FakeTF(gpus=2)
    configure(Assignment(cpus=1, gpu_ids=("0",)), tf)
    tf.initialised = True  # the first trial ran: TensorFlow's settings are frozen
    configure(Assignment(cpus=1, gpu_ids=("0",)), tf)  # the next trial, same assignment
    assert tf.visible == [tf.physical[0]]
    with pytest.raises(PlacementError, match="already initialised.*visible GPUs"):
        configure(Assignment(cpus=1, gpu_ids=("1",)), tf)


@pytest.mark.slow
def test_real_tensorflow_on_cpu_takes_the_thread_count_and_no_gpu():
    # A fresh process: TensorFlow must not be initialised yet, as in a new trial actor.
    script = ("import sweeper, tensorflow as tf\n"
              "from sweeper.run.placement import Assignment, configure\n"
              "print(configure(Assignment(cpus=2)).gpus, "
              "tf.config.threading.get_intra_op_parallelism_threads(), "
              "tf.config.threading.get_inter_op_parallelism_threads(), "
              "tf.config.get_visible_devices('GPU'), float(tf.reduce_sum(tf.ones(3))))")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split("\n")[-2] == "() 2 1 [] 3.0"


@pytest.mark.parametrize("gpus, accepted", [("0", 0), ("0.25", 0.25), ("1", 1), ("2", 2)])
def test_a_grid_asks_for_no_gpu_a_share_of_one_or_whole_gpus(tmp_path, tiny_grid, gpus, accepted):
    loaded = grid.load(write_grid(tmp_path, tiny_grid), [f"resources.gpus={gpus}"])
    assert loaded.resources.gpus == accepted


@pytest.mark.parametrize("gpus, message", [
    ("1.5", "a fraction of a GPU must be at most 1; above 1, ask for whole GPUs"),
    ("-0.5", "must be 0, a share of one GPU in (0, 1], or a whole number of GPUs"),
    ("true", "must be 0, a share"),
    (".inf", "must be 0, a share"),
    ("one", "must be 0, a share")])
def test_other_gpu_requests_are_refused_in_one_line(tmp_path, tiny_grid, gpus, message):
    with pytest.raises(UserError) as refused:
        grid.load(write_grid(tmp_path, tiny_grid), [f"resources.gpus={gpus}"])
    assert f"resources.gpus: {message}" in str(refused.value)
    assert "\n" not in str(refused.value)


@pytest.fixture
def ray_with_two_gpus():
    import ray

    # Ray is told the node has two GPUs; it assigns them and sets CUDA_VISIBLE_DEVICES
    # exactly as on a GPU node.
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False)
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.mark.e2e
@pytest.mark.slow
def test_the_assignment_a_ray_task_reads_selects_its_gpu(ray_with_two_gpus):
    ray = ray_with_two_gpus

    # The assignment is read in real Ray tasks; configure runs here, on a FakeTF that
    # lists the GPUs CUDA_VISIBLE_DEVICES names, as TensorFlow would in that worker.
    read = ray.remote(current)

    def placed(**resources):
        assignment = ray.get(read.options(**resources).remote())
        listed = len(assignment.cuda_visible.split(",")) if assignment.cuda_visible else 0
        return assignment, configure(assignment, FakeTF(gpus=listed)).gpus

    for assignment, gpus in [placed(num_cpus=0.5, num_gpus=0.5) for _ in range(2)]:
        assert assignment.cpus == 0.5 and len(assignment.gpu_ids) == 1
        assert assignment.cuda_visible == assignment.gpu_ids[0]
        assert gpus == ("/physical_device:GPU:0",)
    whole, whole_gpus = placed(num_gpus=2)
    assert sorted(whole.gpu_ids) == ["0", "1"] and len(whole_gpus) == 2
    cpu_only, cpu_gpus = placed(num_gpus=0)
    assert cpu_only.gpu_ids == () and cpu_gpus == ()

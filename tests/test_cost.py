"""The cost model ranks jobs as their work says, pending_work follows it, and the order it
gives schedules the paper grid close to longest-processing-time-first (a simulation, not
a timing)."""

from __future__ import annotations

import importlib.util

import pytest

from sweeper.plan import cost, expand, grid
from sweeper.run import sweep
from tests.conftest import ROOT, TINY_GRID


def plan_of(**changes) -> expand.Plan:
    raw = {**TINY_GRID, "folds": {"k": 3, "only": [0]}, **changes}
    return expand.expand(grid.validate(raw), fingerprints=False)


def costs_by(plan: expand.Plan, key) -> dict:
    return {key(job): cost.job_seconds(job, plan.cells_of(job.job_id)) for job in plan.jobs}


def test_bigger_datasets_cost_more():
    plan = plan_of(datasets=["digits", {"name": "cifar10", "grayscale": True},
                             {"name": "svhn", "grayscale": True}], quantizers=["fp"])
    by_dataset = costs_by(plan, lambda job: job.dataset)
    assert by_dataset["svhn"] > by_dataset["cifar10"] > by_dataset["digits"]
    # training scales with the fold's samples: SVHN's 99,289 against CIFAR-10's 60,000
    unit = cost.unit("small_cnn", (32, 32, 1), "fp")
    ratio = cost.training_seconds(99_289 * 2 // 3, 1, 64, unit) / cost.training_seconds(60_000 * 2 // 3, 1, 64, unit)
    assert ratio == pytest.approx(99_289 / 60_000, rel=1e-3)


def test_more_epochs_cost_more_and_training_is_linear_in_them():
    one = costs_by(plan_of(quantizers=["fp"]), lambda job: job.quantizer)["fp"]
    ten = costs_by(plan_of(quantizers=["fp"], train={"epochs": 10, "batch_size": 64}), lambda job: job.quantizer)["fp"]
    unit = cost.unit("small_cnn", (8, 8, 1), "fp")
    per_epoch = cost.training_seconds(1797 * 2 // 3, 1, 64, unit)
    assert ten - one == pytest.approx(9 * per_epoch)


def test_costlier_presets_rank_higher_and_unmeasured_models_take_the_reference_ratios():
    by_preset = costs_by(plan_of(quantizers=["fp", "int8", "sbinary"]), lambda job: job.quantizer)
    assert by_preset["sbinary"] > by_preset["int8"] > by_preset["fp"]  # bench/train_step.py's ratios
    # a measured row wins over a derived one
    assert cost.unit("resnet8", (32, 32, 1), "sbinary").step == cost.UNIT_COSTS[("resnet8", (32, 32, 1), "sbinary")][0]
    # small_cnn has no row: its fp costs scale stq_net's by input size, presets take stq_net's ratios
    ratio = cost.UNIT_COSTS[("stq_net", (32, 32, 1), "sbinary")][0] / cost.UNIT_COSTS[("stq_net", (32, 32, 1), "fp")][0]
    small = cost.unit("small_cnn", (8, 8, 1), "sbinary").step / cost.unit("small_cnn", (8, 8, 1), "fp").step
    assert small == pytest.approx(ratio)
    assert cost.unit("small_cnn", (8, 8, 1), "fp").step == pytest.approx(0.060 * 64 / 1024)


def test_attack_work_follows_the_cell_parameters():
    unit = cost.unit("stq_net", (32, 32, 1), "fp")
    def square(iterations):
        return cost.attack_seconds(cost.attack_work("square", {"max_iter": iterations}), 100, unit)

    assert square(10_000) == pytest.approx(100 * square(100))
    assert cost.attack_work("pgd", {"max_iter": 7, "num_random_init": 1}).gradients == 7
    assert cost.attack_work("apgd_ce", {"max_iter": 100, "restarts": 2}).gradients == 200
    assert cost.attack_work("apgd_dlr", {}).gradients == 100  # the reference's 100 iterations
    # ZOO and Boundary attack one sample at a time: one call latency per query round per sample
    zoo = cost.attack_work("zoo", {"max_iter": 10, "binary_search_steps": 10, "nb_parallel": 128})
    assert (zoo.forwards, zoo.batch) == (100 * 257, 1)
    more_samples = cost.attack_seconds(zoo, 200, unit)
    assert more_samples == pytest.approx(2 * cost.attack_seconds(zoo, 100, unit))
    # A universal patch is trained once per cell: its training does not grow with the samples
    patch = cost.attack_work("patch", {"steps": 200, "batch_size": 64})
    once = 200 * 64 * unit.gradient + 200 * unit.call
    assert cost.attack_seconds(patch, 100, unit) - once == pytest.approx(100 * (unit.forward + unit.call / 100) * 1)
    assert cost.attack_seconds(patch, 1, unit) > once


def test_pending_work_is_longest_first_by_the_estimate_and_skips_done_cells():
    plan = plan_of(datasets=["digits", {"name": "svhn", "grayscale": True}], quantizers=["fp", "int8", "sbinary"])
    svhn_stq = next(job for job in plan.jobs if (job.dataset, job.quantizer) == ("svhn", "sbinary"))
    work = sweep.pending_work(plan, set())
    estimates = [cost.job_seconds(job, cells) for job, cells in work]
    assert estimates == sorted(estimates, reverse=True)
    assert [(job.dataset, job.quantizer) for job, _ in work] == [
        ("svhn", "sbinary"), ("svhn", "int8"), ("svhn", "fp"), ("digits", "sbinary"), ("digits", "int8"),
        ("digits", "fp")]
    # The old rule (stochastic first, then cells) would start digits/sbinary before svhn/int8.
    done = {cell.cell_id for cell in plan.cells_of(svhn_stq.job_id)}
    assert svhn_stq not in [job for job, _ in sweep.pending_work(plan, done)]


def test_makespan_on_the_classic_lpt_case():
    # 2 slots, jobs 3,3,2,2,2: the optimum is 6 (3+3 | 2+2+2); Graham's bound allows
    # LPT 7/6 of it, and LPT takes exactly that (its worst case).
    jobs = [2, 3, 2, 3, 2]
    assert cost.makespan(sorted(jobs, reverse=True), 2) == 7 == pytest.approx(cost.lpt_bound(2) * 6)
    # 2 slots, jobs 1,1,2: the optimum is 2; shortest first ends at 3, beyond the bound
    assert cost.makespan([2, 1, 1], 2) == 2
    assert cost.makespan([1, 1, 2], 2) == 3 > cost.lpt_bound(2) * 2
    assert cost.makespan([5], 3) == 5 and cost.makespan([], 2) == 0


def _bench():
    spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "bench" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("slots", [16, 64, 128])
def test_the_cost_order_schedules_the_paper_grid_within_the_lpt_bound(slots):
    """The paper grid (docs/scale.md): with the estimates right, sweeper's order is LPT's;
    with the stochastic presets' training half what the estimate says, it still keeps LPT's
    guarantee (Graham's bound over the lower bound), and starting the same jobs in the
    reverse order ends later."""
    bench = _bench()
    plan = expand.expand(grid.load(ROOT / "grids" / "paper.yaml"), fingerprints=False)
    orders = bench.schedule_orders(plan)
    right = {job.job_id: bench.true_hours(job, 1.0, plan) for job in plan.jobs}
    assert bench.makespans(orders, right, slots)["cost"] == pytest.approx(bench.makespans(orders, right, slots)["lpt"])
    hours = {job.job_id: bench.true_hours(job, bench.FAST_STQ_STEP, plan) for job in plan.jobs}
    found = bench.makespans(orders, hours, slots)
    lower = max(sum(hours.values()) / slots, max(hours.values()))  # no schedule beats this
    assert found["cost"] <= cost.lpt_bound(slots) * lower
    backwards = cost.makespan([hours[job.job_id] for job in reversed(orders["cost"])], slots)
    assert backwards > found["cost"]


def test_a_defended_job_costs_its_training_step_times_the_defense():
    plain = plan_of(quantizers=["int4"])
    defended = plan_of(quantizers=["int4"], defenses=[{"name": "pgd_at", "params": {"steps": 3}}])
    [job], [guarded] = plain.jobs, defended.jobs
    train, evaluation, attacks = cost.job_breakdown(job, plain.cells_of(job.job_id))
    t2, e2, a2 = cost.job_breakdown(guarded, defended.cells_of(guarded.job_id))
    assert t2 == pytest.approx(4 * train) and (e2, a2) == (evaluation, attacks)  # 3 attack steps + the step
    assert cost.defense_factor("fgsm_at", {}) == 2.0 and cost.defense_factor("none", {}) == 1.0


def test_an_attack_on_the_deployed_build_costs_more_than_on_the_model():
    from sweeper.plan import expand, grid

    attacks = [{"name": "square", "eps": [0.1]}, {"name": "square", "eps": [0.1], "target": "deployed"}]
    plan = expand.expand(grid.validate({"name": "c", "datasets": ["digits"], "models": ["small_cnn"],
                                        "quantizers": ["int8"], "folds": {"k": 3, "only": [0]},
                                        "attacks": attacks}), fingerprints=False)
    [job] = plan.jobs
    model, deployed = ([c for c in plan.cells if c.attack == "square" and c.target == target]
                       for target in ("model", "deployed"))
    on_build, on_model = cost.job_breakdown(job, deployed)[2], cost.job_breakdown(job, model)[2]
    assert on_build == pytest.approx(cost.DEPLOYED_FACTOR * on_model)

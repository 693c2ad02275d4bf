"""Whether a grid can run: checks of a schema-valid grid against the datasets' declared
shapes, class counts and fold limits and the attack specs' ``fits``, so that whatever a
trial would refuse on input grounds is refused by ``sweeper validate``, in one line,
before anything trains (``validate`` accepting what ``launch`` then rejects was a bug).

What is checked here, each error naming the field:

- ``folds.k`` against each dataset's ``most_folds`` (every test fold can hold every class);
- every attack entry at every budget, on every dataset it covers (``attacks.check_fit``:
  a patch that fits the input, a target class the dataset has, the DLR loss's 3 classes);
- every defense entry trains something, and every dataset is trained on (a defense
  limited to quantizers or datasets the grid lacks would silently train nothing). Model
  and attack entries limited to datasets the grid lacks are fine: narrowing a grid
  (``grids/paper.yaml --set datasets=[digits]``) leaves its cifar10-only entries idle;
- the plan's size: at most ``MAX_JOBS`` trainings and ``MAX_CELLS`` cells, counted
  without expanding it (a typo such as ``folds.k: 100000`` must not make validate
  expand millions of cells).

Resources (``resources.gpus``) depend on the cluster, not the grid: ``sweep`` checks them
once Ray is up. Imports no TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sweeper.errors import UserError, preview

if TYPE_CHECKING:
    from sweeper.plan.grid import Grid

MAX_JOBS = 10_000  # trainings of one grid (Tune keeps ~86 KB of driver memory per trial)
MAX_CELLS = 1_000_000  # rows of one grid (expanding them takes ~20 s)


def check(grid: Grid) -> None:
    """Raise ValueError (pydantic reports it as the grid's error) if the grid cannot run."""
    _folds_fit(grid)
    _defenses_and_datasets_used(grid)
    _attacks_fit(grid)
    _plan_size(grid)


def _folds_fit(grid: Grid) -> None:
    from sweeper import datasets

    for choice in grid.datasets:
        declared = datasets.most_folds(choice.name, choice.resolved_options())
        if declared is not None and grid.folds.k > declared[0]:
            most, why = declared
            raise ValueError(f"folds.k: {grid.folds.k} folds are more than dataset {choice.name!r} allows: "
                             f"{why}, so at most {most} folds can each test every class")


def _defenses_and_datasets_used(grid: Grid) -> None:
    setups = list(grid.setups())
    trained = {dataset.name for dataset, *_ in setups}
    for index, choice in enumerate(grid.datasets):
        if choice.name not in trained:
            raise ValueError(f"datasets.{index}: no model is trained on {choice.name!r} (each model is limited "
                             f"to other datasets)")
    used = {defense.key for *_, defense in setups}
    for index, entry in enumerate(grid.defenses):
        if entry.key not in used:
            limits = " and ".join(f"{kind} {_listed(values)}" for kind, values in
                                  (("quantizers", entry.quantizers), ("datasets", entry.datasets)) if values)
            raise ValueError(f"defenses.{index}: {preview(entry.key)} is limited to {limits}, which no model "
                             f"of the grid is trained with: it would train nothing")


def _attacks_fit(grid: Grid) -> None:
    from sweeper import datasets
    from sweeper.attacks import check_fit

    for choice in grid.datasets:
        shape, classes = datasets.shape(choice.name, choice.resolved_options())
        for index, entry in enumerate(grid.attacks):
            if entry.datasets is not None and choice.name not in entry.datasets:
                continue
            for eps in entry.eps:
                try:
                    check_fit(entry.name, entry.params, eps.value, shape, classes)
                except UserError as error:
                    raise ValueError(f"attacks.{index}: {error} (dataset {choice.name!r}: "
                                     f"{'x'.join(map(str, shape))} inputs, {classes} classes)") from None


def _plan_size(grid: Grid) -> None:
    """Count trainings and (at least) cells as expand.py would make them, refusing a
    plan beyond MAX_JOBS or MAX_CELLS. Transfer cells and dbwt's other widths are left
    out of the count: it is a lower bound, cheap whatever the grid."""
    folds = len(grid.folds.indices())
    jobs = cells = 0
    for dataset, *_ in grid.setups():
        per_job = 1 + sum(len(entry.eps) for entry in grid.attacks if entry.source is None
                          and (entry.datasets is None or dataset.name in entry.datasets))
        jobs, cells = jobs + folds, cells + folds * per_job
    if jobs > MAX_JOBS or cells > MAX_CELLS:
        raise ValueError(f"the grid makes {jobs} trainings and at least {cells} cells; one grid makes at most "
                         f"{MAX_JOBS} trainings and {MAX_CELLS} cells: split it, or run some folds "
                         f"(folds.only)")


def _listed(values) -> str:
    return ", ".join(values)  # registry names, checked by the schema: short and plain

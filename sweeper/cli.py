"""The command line: parses arguments and calls the modules that do the work.

Heavy libraries (TensorFlow, ART, Ray) are imported only by the commands that run
trials, so ``sweeper --help``, ``validate`` and ``expand`` start quickly. Every user
error is printed as one line and exits with code 2, and so is a full disk (exit 1) or
a store sweeper may not write (exit 2, ``errors.storage_fault``); ``--debug`` (or
SWEEPER_DEBUG=1) shows the traceback instead. Everything is printed through consoles
that read no markup or emoji codes into user text (``sweeper.console``).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from sweeper.console import console, styled
from sweeper.errors import UserError, storage_fault

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Sweep quantized tiny networks x adversarial attacks on Ray Tune.")
err = console(stderr=True, soft_wrap=True)
out = console(soft_wrap=True)

SetOption = typer.Option(None, "--set", metavar="KEY=VALUE",
                         help="Override a grid field, e.g. --set train.epochs=2 --set folds.k=3")


def _debug() -> bool:
    return os.environ.get("SWEEPER_DEBUG", "") not in ("", "0")


def user_errors(command):
    """Turn UserError into one line on stderr and exit code 2, and a full disk or a
    read-only store into one line naming the file (``storage_fault``'s exit code)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            if _debug():
                raise
            err.print(styled("error:", "red", str(error)))
            raise typer.Exit(2)
        except OSError as error:
            fault = storage_fault(error)
            if fault is None or _debug():
                raise
            err.print(styled("error:", "red", fault[0]))
            raise typer.Exit(fault[1])

    return wrapper


def warn(message: str) -> None:
    err.print(styled("warning:", "yellow", message))


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")):
    if debug:
        os.environ["SWEEPER_DEBUG"] = "1"


def _plan(grid_path: Path, overrides: Optional[List[str]], fingerprints: bool = True):
    from sweeper.plan import expand, grid

    return expand.expand(grid.load(grid_path, overrides or []), fingerprints=fingerprints)


def _results_path(plan, results: Optional[str]) -> str:
    return results or str(Path("results") / plan.grid.name)


@app.command()
@user_errors
def validate(grid_path: Path = typer.Argument(..., metavar="GRID"), set: Optional[List[str]] = SetOption):
    """Check a grid file without running anything (imports no TensorFlow or Ray)."""
    plan = _plan(grid_path, set, fingerprints=False)
    out.print(f"{grid_path}: ok ({len(plan.cells)} cells in {len(plan.jobs)} training jobs)")


@app.command()
@user_errors
def expand(grid_path: Path = typer.Argument(..., metavar="GRID"), set: Optional[List[str]] = SetOption,
           results: Optional[str] = typer.Option(None, help="Result store to compare with "
                                                  "[default: results/<grid name>]")):
    """Show what a grid would run: cells, trainings, per-axis counts, and what is done."""
    from sweeper import store

    # Comparing with a store needs the real ids, hence the model fingerprints (TensorFlow);
    # a count alone does not.
    loaded = _plan(grid_path, set, fingerprints=False)
    location = store.locate(_results_path(loaded, results))
    stored = bool(store.fragments(location))
    plan = _plan(grid_path, set) if stored else loaded
    per_job = sorted({len(plan.cells_of(job.job_id)) for job in plan.jobs}) or [0]
    span = f"{per_job[0]}" if len(per_job) == 1 else f"{per_job[0]} to {per_job[-1]}"
    out.print(f"grid {plan.grid.name}: {len(plan.cells)} cells, {len(plan.jobs)} trainings "
              f"(each model trained once, then evaluated at {span} cells)")
    for axis, count in plan.axis_counts().items():
        out.print(f"  {axis:<24} {count}")
    if stored:
        done = store.done_cell_ids(location) & {cell.cell_id for cell in plan.cells}
        out.print(f"already in {location.text}: {len(done)}/{len(plan.cells)} cells")


@app.command()
@user_errors
def launch(grid_path: Path = typer.Argument(..., metavar="GRID"), set: Optional[List[str]] = SetOption,
           results: Optional[str] = typer.Option(None, help="Result store path or URI "
                                                  "[default: results/<grid name>]"),
           address: Optional[str] = typer.Option(None, help="Ray cluster to use (auto, HOST:PORT, "
                                                 "ray://HOST:10001) [default: start a local one]"),
           verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Ray and TensorFlow logs."),
           wait: bool = typer.Option(False, "--wait", help="If another launch holds the store, wait "
                                     "for it to end [default: exit 2 naming it]"),
           local: bool = typer.Option(False, "--local", help="Run the trials in this process, one after "
                                      "another, without Ray (debugging: no retries, no cluster)"),
           log: Optional[str] = typer.Option(None, "--log", help="Also log each job's parameters and each "
                                             "cell's metrics to mlflow, tensorboard or wandb (offline unless "
                                             "WANDB_MODE says otherwise; the store stays the source of truth)"),
           log_dir: Optional[str] = typer.Option(None, "--log-dir", help="Folder for --log tensorboard's "
                                                 "or wandb's files [default: runs/<grid name>]"),
           profile: bool = typer.Option(False, "--profile", help="Print where the launch spent its time, "
                                        "and write its timeline to RESULTS/profiles/<launch id>.trace.json")):
    """Run every cell of a grid not yet in the result store. One launch at a time writes a
    store: it holds the store's lease (RESULTS/.lease.json) until it ends."""
    from sweeper import store
    from sweeper.plan import grid
    from sweeper.run import lease
    from sweeper.run.profile import Timeline
    from sweeper.run.runners import InProcessRunner, RayTuneRunner

    if local and address is not None:
        raise UserError("--local: runs in this process, so it takes no --address")

    timeline = Timeline()
    with timeline.phase("grid: loading and expanding"):
        loaded = _plan(grid_path, set, fingerprints=False)  # enough to name the store: no TensorFlow yet
    path = _results_path(loaded, results)
    tracker = _tracker(log, log_dir, loaded.grid.name)
    out.print(f"grid {loaded.grid.name}: {len(loaded.cells)} cells in {len(loaded.jobs)} training jobs "
              f"-> {path}")
    provenance = store.new_launch(loaded.grid, str(grid_path), grid.read_bytes(grid_path), set or [])
    held = lease.Lease(store.locate(path), provenance.launch_id, loaded.grid.name)
    try:
        with held.acquire(wait=wait, on_wait=_waiting(path)):
            if held.took_over:
                warn(f"{path}/{lease.LEASE_FILE} was damaged ({held.took_over}); this launch took it over")
            with timeline.phase("grid: model fingerprints"):
                plan = _plan(grid_path, set)
            from sweeper.run import sweep

            runner = InProcessRunner() if local else RayTuneRunner(address, verbose)
            report = sweep.launch(plan, path, runner=runner, console=err, provenance=provenance, held=True,
                                  tracker=tracker, timeline=timeline)
            if profile:
                _profile(timeline, path, provenance.launch_id)
    except KeyboardInterrupt:
        err.print("interrupted; cells already stored are kept: rerun the same command to resume")
        raise typer.Exit(130)
    if held.lost:
        warn("this launch lost the store's lease to another one (it stalled longer than the lease's TTL); "
             "both may have computed the same cells, stored once each: `sweeper check` reports duplicates, "
             "`sweeper compact` drops them")
    if report.tracker_failed:
        warn(f"--log {log}: stopped logging ({report.tracker_failed}); the store has every row")
    code = _summarise(report, path)
    if report.already_done + report.computed:
        out.print(next_steps(path, loaded.grid.name))
    raise typer.Exit(code)


def _profile(timeline, path: str, launch_id: str) -> None:
    """--profile: the launch's breakdown on stderr, its timeline into the store."""
    from sweeper import store
    from sweeper.run import profile

    for line in profile.lines(timeline):
        err.print(line)
    err.print(f"profile: timeline in {profile.save(timeline, store.locate(path), launch_id)} "
              f"(Chrome trace format: open it in https://ui.perfetto.dev or chrome://tracing)")


def _tracker(log: Optional[str], log_dir: Optional[str], grid_name: str):
    """``--log``'s tracker, or None; checked before anything runs (sweeper.run.tracking)."""
    if log is None:
        if log_dir is not None:
            raise UserError("--log-dir: only with --log tensorboard or wandb")
        return None
    if log_dir is not None and log not in ("tensorboard", "wandb"):
        raise UserError("--log-dir: only with --log tensorboard or wandb")
    from sweeper.run import tracking

    return tracking.make(log, grid_name, log_dir)


# The example query the line after a launch suggests: robust accuracy per configuration and point.
NEXT_QUERY = "SELECT model, quantizer, defense_label, attack_label, eps_label, adv_acc_mean FROM robust ORDER BY ALL"


def next_steps(path: str, name: str) -> str:
    """The line after a launch: where its results are and the commands that read them,
    shell-quoted so they paste as they are."""
    import shlex

    store, report_dir = shlex.quote(path), shlex.quote(str(Path("reports") / name))
    return (f"results in {path}; next: sweeper report {store} --out {report_dir}  |  "
            f"sweeper query {store} {shlex.quote(NEXT_QUERY)}  |  sweeper card {store}")


def _waiting(path: str):
    def tell(holder) -> None:
        err.print(f"waiting: {path} is in use by {holder.line()}")

    return tell


def _summarise(report, path: str) -> int:
    from sweeper.store import DAMAGED_DIR

    for fragment in report.damaged_fragments:
        warn(f"damaged result fragment set aside (moved to {DAMAGED_DIR}/), its cells recomputed: {fragment} "
             f"({report.why.get(fragment, 'unreadable')})")
    done = report.already_done + report.computed
    if report.computed == 0 and report.complete:
        out.print(f"{done}/{report.total_cells} cells already done; nothing to compute ({path})")
        return 0
    out.print(f"computed {report.computed} cells with {report.trainings} trainings; "
              f"{done}/{report.total_cells} cells done ({path})")
    for line in report.failed_jobs:
        err.print(styled("failed:", "red", line))
    if report.failed_jobs:
        return 1
    if not report.complete:
        err.print(f"interrupted: {done}/{report.total_cells} cells done; "
                  "rerun the same command to resume")
        return 130
    return 0


@app.command()
@user_errors
def query(results: str = typer.Argument(..., metavar="RESULTS"), sql: str = typer.Argument(..., metavar="SQL"),
          format: str = typer.Option("table", "--format", "-f", help="table, csv, json or parquet"),
          output: Optional[str] = typer.Option(None, "--output", "-o",
                                               help="Write to this new file (required for parquet); never "
                                                    "inside a result store"),
          force: bool = typer.Option(False, "--force", help="Replace --output if it is an existing regular file"),
          memory_limit: str = typer.Option("2GB", help="DuckDB memory limit, e.g. 512MB or 2GiB (at least 16MiB)")):
    """Run read-only SQL over a result store. Tables: results (the rows), robust (mean and
    std across folds), fits (configurations fitting each MCU), diagnostics, launches, mcus."""
    from sweeper.analysis import duck, output as o, query as q

    if format not in q.FORMATS:
        raise UserError(f"--format: unknown format {format!r}; available: {', '.join(q.FORMATS)}")
    if format == "parquet" and output is None:
        raise UserError("--output: required with --format parquet (Parquet is written to a file)")
    if format == "table" and output is not None:
        raise UserError("--output: not with --format table; use csv, json or parquet")
    limit = duck.parse_memory_limit(memory_limit)
    stores = o.local_store(results)
    if output is not None:  # refused before the query runs, and checked again when written
        o.check_target(output, "--output", force, stores)
    table = q.run(results, sql, limit)
    if format == "parquet":
        import pyarrow.parquet as pq

        o.write(output, "--output", lambda temporary: pq.write_table(table, temporary), force, stores)
        err.print(f"wrote {table.num_rows} rows to {output}")
    elif output is not None:
        o.write_text(q.render(table, format), output, "--output", force, stores)
        err.print(f"wrote {table.num_rows} rows to {output}")
    elif format == "table":
        # Off a terminal (pipes, files) print whole cells rather than wrap at 80 columns.
        (out if out.is_terminal else console(width=100_000)).print(q.rich_table(table))
    else:
        sys.stdout.write(q.render(table, format))


@app.command()
@user_errors
def report(results: str = typer.Argument(..., metavar="RESULTS"),
           out_dir: str = typer.Option(..., "--out", help="Folder for report.md, figures/ and tables/ (its files are "
                                                          "replaced; never inside a result store)")):
    """Write a Markdown report with PNG figures (the paper's tables, epsilon curves, the
    Pareto view against MCU budgets, gradient-masking flags) from the store alone."""
    from sweeper.analysis import report as r

    path = r.write(results, out_dir)
    out.print(f"wrote {path} and {len(list((path.parent / r.FIGURES).glob('*.png')))} figures")


@app.command()
@user_errors
def card(results: str = typer.Argument(..., metavar="RESULTS"),
         out_file: Optional[str] = typer.Option(None, "--out", help="Write the cards to this new JSON file "
                                                "[default: standard output]; never inside a result store"),
         force: bool = typer.Option(False, "--force", help="Replace --out if it is an existing regular file")):
    """Write a results card per configuration (JSON: clean and robust accuracy per threat
    model and budget, the worst case and the attacks it covers, footprint, MCU fit,
    AutoAttack's sanity checks, versions), valid against sweeper/analysis/card.schema.json."""
    from sweeper.analysis import card as c
    from sweeper.analysis import output as o

    stores = o.local_store(results)
    if out_file is not None:  # refused before the store is read, and checked again when written
        o.check_target(out_file, "--out", force, stores)
    found = c.cards(results)
    text = c.render(found)
    if out_file is None:
        sys.stdout.write(text)
        return
    o.write_text(text, out_file, "--out", force, stores)
    err.print(f"wrote {len(found)} cards to {out_file}")


@app.command()
@user_errors
def check(results: str = typer.Argument(..., metavar="RESULTS")):
    """Check a result store: unreadable fragments, cells stored twice, leftovers."""
    from sweeper import store

    location = store.locate(results)
    store.require_results(location)
    report = store.check(location)
    out.print(f"{results}: {report.fragments} fragments, {report.rows} rows, "
              f"{report.rows - sum(len(w) - 1 for w in report.duplicates.values())} cells")
    for path in report.damaged:
        out.print(f"damaged: {path} ({report.why.get(path, 'unreadable')}; the next launch or compact moves it "
                  "to damaged/, and launch recomputes its cells)")
    for cell, where in report.duplicates.items():
        out.print(f"duplicate: cell {cell} in {', '.join(where)} (queries use the first)")
    for path in report.temporaries:
        out.print(f"leftover of an unfinished write (never read, safe to delete): {path}")
    for path in report.set_aside:
        out.print(f"set aside by an earlier launch: {path}")
    for path in report.foreign:
        out.print(f"not a sweeper file (not Parquet, or no sweeper schema version in its footer; never read, "
                  f"moved or deleted): {path}")
    for line in report.overfull:
        out.print(f"more rows than folds: {line}")
    for line in report.mixed_models:
        out.print(f"mixed models: {line}")
    out.print("ok" if report.healthy else "problems found")
    raise typer.Exit(0 if report.healthy else 1)


@app.command()
@user_errors
def compact(results: str = typer.Argument(..., metavar="RESULTS")):
    """Merge a store's fragments into one sorted file (launch does this when it ends)."""
    from sweeper import store
    from sweeper.run.sweep import finish

    location = store.locate(results)
    store.require_results(location)
    done = finish(location)
    out.print(f"{results}: {done.before} fragments -> {done.after} file(s), {done.rows} rows"
              + (f", {done.duplicates} duplicate rows dropped" if done.duplicates else ""))
    for path in done.damaged:
        warn(f"damaged fragment set aside (moved to damaged/), not compacted: {path} "
             f"({done.why.get(path, 'unreadable')})")


@app.command()
def mcu():
    """List the MCU profiles grids can target."""
    from rich.table import Table

    from sweeper.deploy.mcus import MCUS

    table = Table(show_edge=False, header_style="bold")
    for column in ("name", "flash KB", "RAM KB", "largest RAM block KB", "description", "source"):
        table.add_column(column)
    for name in MCUS:
        profile = MCUS.get(name)
        table.add_row(name, f"{profile.flash_kb:g}", f"{profile.ram_kb:g}", f"{profile.ram_block_kb:g}",
                      profile.description,
                      profile.source)
    out.print(table)


def main() -> None:
    """The ``sweeper`` command (and ``python -m sweeper``): the app, in a process of its own."""
    import atexit
    import gc

    # At exit, after every command has closed what it wrote: spare the interpreter its last
    # collection over Ray's, Arrow's and pandas' objects (0.6 of a launch's 0.8 s of exit).
    # Only here, never in a process that goes on (tests call the app in process).
    atexit.register(gc.freeze)
    app()


if __name__ == "__main__":
    main()

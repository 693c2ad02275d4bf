"""Hostile and careless input (issue 20): the query, output-file, store, lease and
rendering side. Each case is what a careless or hostile user tried; each test fails on
the code before the fix. Nothing runs that should not, nothing is lost, and every error
is one line. In-process (Typer's CliRunner) and without TensorFlow or Ray, except one
test of the sweep's callback, which imports Ray Tune."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import time
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeper import keys, store
from sweeper.run.sweep import LaunchReport
from sweeper.store.fragments import _coerce
from tests.conftest import write_grid
from tests.test_store import make_row


def sweeper(*args):
    """Run the CLI in-process; the result has exit_code, stdout and stderr."""
    from typer.testing import CliRunner

    from sweeper.cli import app

    return CliRunner().invoke(app, [str(arg) for arg in args])


def one_line_error(result, code: int = 2) -> str:
    """The command exited with ``code`` and one line on stderr, no traceback; the line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    line = result.stderr.strip()
    assert line.startswith("error: ") and "\n" not in line, result.stderr
    return line


def _store(path: Path) -> store.Location:
    location = store.locate(str(path))
    store.write_rows(location, [make_row("a", adv_acc=0.25), make_row("b", adv_acc=0.75, fold=1)])
    store.write_rows(location, [make_row("c", quantizer="fp", adv_acc=0.5)])
    return location


def _files(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. --memory-limit is not SQL

@pytest.mark.parametrize("limit, reason", [
    ("2GB'; COPY (SELECT 'owned' AS a) TO '{tmp}/owned.csv'; SET memory_limit='2GB", "is not a size"),
    ("2GB'; SET allowed_directories=['{tmp}/']; SET memory_limit='2GB", "is not a size"),
    ("lots", "is not a size"),
    ("-1GB", "is not a size"),
    ("1KB", "is below the 16MiB a query needs"),
])
def test_memory_limit_is_a_size_never_sql(tmp_path, monkeypatch, limit, reason):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "r")
    (tmp_path / "secret.csv").write_text("secret\nhunter2\n")
    sql = f"SELECT * FROM read_csv('{tmp_path}/secret.csv')" if "allowed" in limit else "SELECT 1 AS one"
    result = sweeper("query", tmp_path / "r", sql, "--format", "csv", "--memory-limit", limit.format(tmp=tmp_path))
    line = one_line_error(result)
    assert line.startswith("error: --memory-limit: ") and reason in line
    assert "hunter2" not in result.stdout and not (tmp_path / "owned.csv").exists()


def test_memory_limits_in_duckdbs_units():
    from sweeper.analysis import duck

    assert duck.parse_memory_limit("2GB") == 2 * 1000**3
    assert duck.parse_memory_limit(" 512 mib ") == 512 * 1024**2
    assert duck.parse_memory_limit("1.5GiB") == int(1.5 * 1024**3)
    for bad in ("2 GB;", "1e3MB", "GB", "2", "2 parsecs", "16MB'"):
        with pytest.raises(Exception, match="--memory-limit"):
            duck.parse_memory_limit(bad)


def test_a_store_path_with_quotes_and_glob_characters_reads_exactly_its_own_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "it's runs[old]*")
    # A copy of the store beside it, whose paths the unescaped glob "runs[old]*" matches.
    import shutil

    shutil.copytree(tmp_path / "it's runs[old]*", tmp_path / "it's runsoXX")
    store.write_rows(store.locate(str(tmp_path / "it's runsoXX")), [make_row("z")])
    result = sweeper("query", tmp_path / "it's runs[old]*", "SELECT cell_id FROM results ORDER BY cell_id",
                     "--format", "csv")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stdout.split() == ["cell_id", "a", "b", "c"]
    robust = sweeper("query", tmp_path / "it's runs[old]*", "SELECT sum(rows) AS n FROM robust", "--format", "csv")
    assert robust.exit_code == 0 and robust.stdout.split() == ["n", "3"], robust.stderr


# ---------------------------------------------------------------- 2. --output never loses anything

def _special(tmp_path: Path, kind: str) -> Path:
    """An existing path of ``kind`` that --output must not replace."""
    if kind == "fragment":
        return Path(store.fragments(store.locate(str(tmp_path / "r")))[0])
    if kind == "new file in rows/":
        return tmp_path / "r" / "rows" / "mine.parquet"
    if kind == "new file in models/":
        (tmp_path / "r" / "models").mkdir()
        return tmp_path / "r" / "models" / "x.csv"
    path = tmp_path / "target"
    if kind == "symlink":
        (tmp_path / "precious.txt").write_text("keep me")
        path.symlink_to(tmp_path / "precious.txt")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "regular file":
        path.write_text("keep me")
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # like /dev/null
    return path


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
@pytest.mark.parametrize("kind, message", [
    ("fragment", "is inside the result store"),
    ("new file in rows/", "is inside the result store"),
    ("new file in models/", "is inside the result store"),
    ("symlink", "exists and is a symbolic link"),
    ("fifo", "exists and is a FIFO"),
    ("folder", "exists and is a folder"),
    ("device", "exists and is a character device"),
    ("regular file", "exists; pass --force to replace it"),
])
def test_output_never_replaces_what_it_must_not(tmp_path, monkeypatch, fmt, kind, message):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "r")
    target = _special(tmp_path, kind)
    before = _files(tmp_path), {p.name: stat.S_IFMT(p.lstat().st_mode) for p in tmp_path.iterdir()}
    result = sweeper("query", tmp_path / "r", "SELECT * FROM results WHERE false", "--format", fmt,
                     "--output", target)
    line = one_line_error(result)
    assert line.startswith("error: --output: ") and message in line
    assert (_files(tmp_path), {p.name: stat.S_IFMT(p.lstat().st_mode) for p in tmp_path.iterdir()}) == before
    assert sweeper("check", tmp_path / "r").stdout.startswith(f"{tmp_path / 'r'}: 2 fragments, 3 rows")


def test_force_replaces_only_a_regular_file_whole(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "r")
    (tmp_path / "out.csv").write_text("old")
    done = sweeper("query", tmp_path / "r", "SELECT cell_id FROM results ORDER BY ALL", "-f", "csv",
                   "--output", "out.csv", "--force")
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "out.csv").read_text() == "cell_id\na\nb\nc\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "r"]  # no temporary left
    link = tmp_path / "link.csv"
    link.symlink_to(tmp_path / "out.csv")
    refused = sweeper("query", tmp_path / "r", "SELECT 1", "-f", "csv", "--output", link, "--force")
    assert "is a symbolic link" in one_line_error(refused) and link.is_symlink()


@pytest.mark.parametrize("output, message", [("", "--output: empty path"), (".", "exists and is a folder")])
def test_empty_and_folder_outputs_are_one_line(tmp_path, monkeypatch, output, message):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "r")
    assert message in one_line_error(sweeper("query", tmp_path / "r", "SELECT 1", "-f", "csv", "--output", output))


# ---------------------------------------------------------------- 3. user text is never markup

@pytest.mark.parametrize("name", ["[/x].yaml", ":x:.yaml", "runs[old].yaml", "[bold]b[/bold].yaml"])
def test_paths_print_literally_in_errors(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert name in one_line_error(sweeper("validate", name))


def test_values_print_literally_in_errors(tmp_path, tiny_grid):
    line = one_line_error(sweeper("validate", write_grid(tmp_path, tiny_grid), "--set", "name=[bold]x :x:"))
    assert "name=[bold]x :x:" in line


def test_store_paths_and_query_results_print_literally(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "runs[old]")
    checked = sweeper("check", "runs[old]")
    assert checked.stdout.startswith("runs[old]: 2 fragments, 3 rows, 3 cells"), checked.stdout
    shown = sweeper("query", "runs[old]", "SELECT '[/x] :x: [red]r' AS \"[/y]\"")
    assert shown.exit_code == 0, (shown.stderr, shown.exception)
    assert "[/x] :x: [red]r" in shown.stdout and "[/y]" in shown.stdout


def test_progress_labels_print_literally():
    import io

    from rich.console import Console

    from sweeper.run.progress import CellProgress

    buffer = io.StringIO()
    with CellProgress(Console(file=buffer, force_terminal=True, width=200), total=2, done=0) as progress:
        progress.advance("digits/[/x]/:x: fold 0")
    assert "digits/[/x]/:x: fold 0" in buffer.getvalue()


# ---------------------------------------------------------------- 5. damaged fragments, foreign files

def _write_fragment(folder: Path, name: str, table: pa.Table, metadata: dict) -> Path:
    path = folder / "rows" / f"part-99999999T999999-{name}.parquet"
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def _damage(kind: str) -> tuple[pa.Table, dict]:
    table = store.to_table([make_row("bad")])
    metadata = dict(table.schema.metadata)
    if kind == "version abc":
        metadata[b"sweeper_schema_version"] = b"abc"
    elif kind == "provenance not JSON":
        metadata[b"sweeper_launches"] = b"{not json"
    elif kind == "provenance not records":
        metadata[b"sweeper_launches"] = b'[{"launch_id": 7, "overrides": "x"}]'
    elif kind == "adv_acc as text":
        table = table.set_column(table.column_names.index("adv_acc"), "adv_acc", pa.array(["high"]))
    elif kind == "no cell_id":
        table = table.drop_columns(["cell_id"])
    elif kind == "null cell_id":
        table = table.set_column(0, "cell_id", pa.array([None], pa.string()))
    return table, metadata


@pytest.mark.parametrize("kind, reason", [
    ("version abc", "schema version 'abc' is not a positive integer"),
    ("provenance not JSON", "provenance (sweeper_launches) is not JSON"),
    ("provenance not records", "provenance (sweeper_launches) is not a list of launch records"),
    ("adv_acc as text", "column adv_acc is string, not double"),
    ("no cell_id", "no cell_id column of strings"),
    ("null cell_id", "null cell_id"),
])
def test_a_fragment_with_a_footer_sweeper_never_writes_is_damaged(tmp_path, kind, reason):
    location = _store(tmp_path / "r")
    bad = _write_fragment(tmp_path / "r", "bad", *_damage(kind))
    checked = sweeper("check", location.text)
    assert checked.exit_code == 1 and f"damaged: {bad} ({reason};" in checked.stdout, checked.stdout
    query = sweeper("query", location.text, "SELECT cell_id, adv_acc FROM results ORDER BY ALL", "-f", "csv")
    assert query.exit_code == 0 and query.stdout.split() == ["cell_id,adv_acc", "a,0.25", "b,0.75", "c,0.5"], \
        (query.stderr, query.exception)
    assert sweeper("query", location.text, "SELECT count(*) AS n FROM launches", "-f", "csv").exit_code == 0
    compacted = sweeper("compact", location.text)
    assert compacted.exit_code == 0, (compacted.stderr, compacted.exception)
    assert f"damaged fragment set aside (moved to damaged/), not compacted: {bad} ({reason})" in compacted.stderr
    assert (tmp_path / "r" / "damaged" / bad.name).read_bytes() and not bad.exists()
    assert sorted(store.read(location, ["cell_id"]).table.column("cell_id").to_pylist()) == ["a", "b", "c"]
    assert sweeper("check", location.text).exit_code == 0


def test_a_file_that_is_not_parquet_is_foreign_and_never_moved(tmp_path):
    location = _store(tmp_path / "r")
    notes = tmp_path / "r" / "rows" / "part-notes.parquet"
    notes.write_text("my notes on this run\n")
    checked = sweeper("check", location.text)
    assert checked.exit_code == 0 and f"not a sweeper file (not Parquet" in checked.stdout, checked.stdout
    assert sweeper("compact", location.text).exit_code == 0
    assert notes.read_text() == "my notes on this run\n" and not (tmp_path / "r" / "damaged").exists()
    torn = tmp_path / "r" / "rows" / "part-99999999T999999-torn.parquet"  # Parquet cut short: damaged
    torn.write_bytes(Path(store.fragments(location)[0]).read_bytes()[:100])
    assert f"damaged: {torn} (unreadable Parquet footer" in sweeper("check", location.text).stdout


# ---------------------------------------------------------------- 5. damaged leases

def _lease(path: Path, **fields) -> None:
    record = {"launch_id": "old", "host": socket.gethostname(), "pid": os.getpid(), "grid": "g",
              "started": "2025-01-01T00:00:00+00:00", "heartbeat": time.time(), **fields}
    path.mkdir(parents=True, exist_ok=True)
    (path / ".lease.json").write_text(json.dumps(record))


@pytest.mark.parametrize("fields, reason", [
    ({"heartbeat": "abc"}, "heartbeat 'abc' is not a number"),
    ({"heartbeat": float("nan")}, "heartbeat nan is not a finite time"),
    ({"heartbeat": time.time() + 1e9}, "lies more than 300 s in the future"),
    ({"pid": 1e20}, "pid 1e+20 is not an integer"),
    ({"pid": 10**20}, "pid 100000000000000000000 is out of range"),
    ({"pid": -1}, "pid -1 is out of range"),
    ({"grid": ["g"]}, "grid ['g'] is not text"),
])
def test_a_damaged_lease_is_reported_and_taken_over(tmp_path, fields, reason):
    from sweeper.run import lease

    _lease(tmp_path, **fields)
    held = lease.Lease(store.locate(str(tmp_path)), "new", "g").acquire()
    try:
        assert reason in held.took_over
        assert lease.read(store.locate(str(tmp_path))).launch_id == "new"
    finally:
        held.release()
    assert not (tmp_path / ".lease.json").exists()


def test_a_lease_that_is_a_folder_is_moved_aside_and_taken_over(tmp_path):
    from sweeper.run import lease

    (tmp_path / ".lease.json").mkdir()
    (tmp_path / ".lease.json" / "kept.txt").write_text("someone's")
    with lease.Lease(store.locate(str(tmp_path)), "new", "g").acquire() as held:
        assert held.took_over == ".lease.json is a folder, not a file"
        assert lease.read(store.locate(str(tmp_path))).launch_id == "new"
    [aside] = (tmp_path / "damaged").iterdir()
    assert (aside / "kept.txt").read_text() == "someone's"


def _fake_sweep(monkeypatch, launch) -> None:
    """`sweeper launch` without TensorFlow or Ray: the plan without fingerprints, and
    ``launch`` as sweep.launch."""
    import sweeper.run
    from sweeper import cli

    real_plan = cli._plan
    monkeypatch.setattr(cli, "_plan", lambda path, overrides, fingerprints=True: real_plan(path, overrides, False))
    fake = types.ModuleType("sweeper.run.sweep")
    fake.launch = launch
    monkeypatch.setitem(sys.modules, "sweeper.run.sweep", fake)
    monkeypatch.setattr(sweeper.run, "sweep", fake, raising=False)


def _report(done: int = 0, total: int = 8):
    """What the real sweep returns (its own class, so a field it gains is there too)."""
    return LaunchReport(total_cells=total, already_done=done)


def test_launch_says_in_one_line_that_it_took_over_a_damaged_lease(tmp_path, tiny_grid, monkeypatch):
    _fake_sweep(monkeypatch, lambda plan, path, **_: _report(8))
    _lease(tmp_path / "r", heartbeat="abc")
    result = sweeper("launch", write_grid(tmp_path, tiny_grid), "--results", tmp_path / "r")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stderr.strip() == (f"warning: {tmp_path / 'r'}/.lease.json was damaged (heartbeat 'abc' is not "
                                     "a number); this launch took it over")
    assert not (tmp_path / "r" / ".lease.json").exists()


# ---------------------------------------------------------------- 5. a full disk, a read-only store

class _Refusing:
    """A local filesystem whose writes fail as a full or read-only disk's do: pyarrow's
    errors name no file; a full disk fails mid-write, leaving a partial file."""

    def __init__(self, fs, code: int):
        self.fs, self.code = fs, code

    def __getattr__(self, name):
        return getattr(self.fs, name)

    def _refuse(self, *args, **kwargs):
        raise OSError(self.code, f"[errno {self.code}] {os.strerror(self.code)}")

    def open_output_stream(self, path, *args, **kwargs):
        if self.code == errno.ENOSPC:
            with self.fs.open_output_stream(path) as stream:
                stream.write(b"PAR1 half")
        self._refuse()

    def __getattribute__(self, name):
        # A full disk still makes folders, renames and deletes; a read-only one does nothing.
        if name in ("create_dir", "move", "delete_file") and object.__getattribute__(self, "code") != errno.ENOSPC:
            return object.__getattribute__(self, "_refuse")
        return object.__getattribute__(self, name)


def _refusing(location: store.Location, code: int) -> store.Location:
    return store.Location(_Refusing(location.fs, code), location.path, location.text)


def test_disk_full_during_launch_is_one_line_naming_the_file_and_keeps_what_was_written(
        tmp_path, tiny_grid, monkeypatch):
    results = tmp_path / "r"

    def launch(plan, path, **_):
        location = store.locate(path)
        store.write_rows(location, [make_row("kept")])
        store.write_rows(_refusing(location, errno.ENOSPC), [make_row("lost")], tag="full")
        raise AssertionError("not reached")

    _fake_sweep(monkeypatch, launch)
    line = one_line_error(sweeper("launch", write_grid(tmp_path, tiny_grid), "--results", results), code=1)
    assert line.startswith(f"error: disk full while writing {results}/rows/part-") and "-full-" in line
    assert line.endswith(": No space left on device; what was stored before is kept: free space and rerun "
                         "the same command to resume (`sweeper check` lists the leftovers)")
    assert store.read(store.locate(str(results)), ["cell_id"]).table.column("cell_id").to_pylist() == ["kept"]
    assert not list((results / ".staging").iterdir())  # the half-written staging file was removed
    assert not (results / ".lease.json").exists()  # released


@pytest.mark.parametrize("code, exit_code, message", [
    (errno.ENOSPC, 1, "disk full while writing {r}/rows/part-"),
    (errno.EROFS, 2, "cannot write {r}/rows/part-"),
])
def test_compact_on_a_full_disk_or_a_read_only_store_is_one_line(tmp_path, monkeypatch, code, exit_code, message):
    location = _store(tmp_path / "r")
    before = _files(tmp_path / "r")
    real_locate = store.locate
    monkeypatch.setattr(store, "locate", lambda text: _refusing(real_locate(text), code))
    line = one_line_error(sweeper("compact", location.text), exit_code)
    assert line.startswith("error: " + message.format(r=tmp_path / "r")), line
    monkeypatch.setattr(store, "locate", real_locate)
    assert _files(tmp_path / "r") == before  # every fragment kept, nothing half-written left


def test_launch_on_a_read_only_store_is_one_line(tmp_path, tiny_grid, monkeypatch):
    from sweeper.run import lease

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", path)

    _fake_sweep(monkeypatch, lambda *args, **kwargs: pytest.fail("launched on a read-only store"))
    location = _store(tmp_path / "r")
    before = _files(tmp_path / "r")
    monkeypatch.setattr(lease, "open", read_only, raising=False)
    line = one_line_error(sweeper("launch", write_grid(tmp_path, tiny_grid), "--results", location.text))
    assert line == f"error: cannot write {location.path}/.lease.json: Read-only file system"
    assert _files(tmp_path / "r") == before


def test_check_lists_the_leftovers_of_unfinished_writes(tmp_path):
    location = _store(tmp_path / "r")
    leftovers = [tmp_path / "r" / "models" / ".staging" / "1a2b3c4d-j1.weights.h5",
                 tmp_path / "r" / "adversarial" / ".staging" / "1a2b3c4d-c1.npz",
                 tmp_path / "r" / ".lease.json.1a2b3c4d"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half")
    checked = sweeper("check", location.text)
    assert checked.exit_code == 0, checked.stdout  # leftovers are harmless
    listed = [line.rpartition(": ")[2] for line in checked.stdout.splitlines() if line.startswith("leftover")]
    assert listed == sorted(str(path) for path in leftovers)


def test_a_refused_write_stops_the_sweep_instead_of_failing_the_trial(tmp_path):
    """The driver's callback keeps a refused write (its own, or a worker's) as the fault
    the launch raises, and the stopper ends the sweep: Tune would otherwise retry the
    trial, training the model again to fail at the same write."""
    from sweeper.run import ray_tune
    from sweeper.run.rows import RowSink

    location = store.locate(str(tmp_path / "r"))
    rows = RowSink(_refusing(location, errno.ENOSPC), types.SimpleNamespace(advance=lambda *_: None),
                   store.new_launch(types.SimpleNamespace(name="g", model_dump_json=lambda: "{}")))
    callback = ray_tune._TuneRows(rows)
    stopper, trial = ray_tune._StopOnFault(rows), types.SimpleNamespace(trial_id="t1")
    assert not stopper.stop_all()
    row = make_row("a")
    callback.on_trial_result(0, [], trial, {"row": json.dumps(row)})
    callback.on_trial_complete(0, [], trial)
    assert rows.fault.errno == errno.ENOSPC and rows.fault.filename.startswith(f"{location.path}/rows/part-")
    assert stopper.stop_all() and stopper("t1", {}) and rows.written == 0 and "a" in rows.pending["t1"]
    worker = RowSink(location, rows.progress, rows.provenance)
    ray_tune._TuneRows(worker).on_trial_result(
        0, [], trial, {ray_tune.STORAGE_FAULT: json.dumps([errno.ENOSPC, "/r/models/j.weights.h5"])})
    assert (worker.fault.errno, worker.fault.filename) == (errno.ENOSPC, "/r/models/j.weights.h5")


# ---------------------------------------------------------------- 5. report and empty paths

def _schema_2_store(folder: Path) -> None:
    from tests.test_report import _rows

    gone = {*keys.OUTCOME_COLUMNS, "config_id", "clip_min", "clip_max", "weights_sha256", "tflite_kb", "arena_kb",
            "flash_packed_kb", "ram_packed_kb", "footprint_source", "deployed_clean_acc", "deployed_adv_acc",
            "deployed_adv_correct", "defense", "defense_label", "defense_params", "defense_reg", "eval_bits",
            "source_job_id", "source_config_id", "source_model", "source_quantizer", "transfer_rate"}
    rows = [_coerce({k: v for k, v in row.items() if k not in gone}) for row in _rows()]
    (folder / "rows").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows).replace_schema_metadata({"sweeper_schema_version": "2"}),
                   folder / "rows" / "part-00000000T000000-v2-00000000.parquet")


def test_report_reads_a_schema_2_store(tmp_path):
    _schema_2_store(tmp_path / "old")
    done = sweeper("report", tmp_path / "old", "--out", tmp_path / "report")
    assert done.exit_code == 0, (done.stderr, done.exception)
    text = (tmp_path / "report" / "report.md").read_text()
    assert "2 of 2 configurations have no deployed flash figure (rows of an older store)" in text
    assert "small_cnn / int4" in text.split("## Table IV", 1)[1]


@pytest.mark.parametrize("results, out, message", [
    ("missing", "out", "no sweeper results here"),
    ("empty", "out", "no sweeper results here"),
    ("only foreign", "out", "no readable rows to report"),
    ("r", "r/report", "--out: r/report is inside the result store"),
    ("r", "", "--out: empty path"),
])
def test_report_writes_nothing_for_a_store_without_rows_or_an_out_inside_one(tmp_path, monkeypatch, results,
                                                                              out, message):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path / "r")
    (tmp_path / "empty" / "rows").mkdir(parents=True)
    (tmp_path / "only foreign" / "rows").mkdir(parents=True)
    (tmp_path / "only foreign" / "rows" / "part-notes.parquet").write_text("notes")
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    assert message in one_line_error(sweeper("report", results, "--out", out))
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_report_never_writes_through_a_link_in_its_folder(tmp_path):
    _store(tmp_path / "r")
    (tmp_path / "out" / "figures").mkdir(parents=True)
    (tmp_path / "precious.png").write_bytes(b"keep me")
    (tmp_path / "out" / "figures" / "pareto-digits.png").symlink_to(tmp_path / "precious.png")
    line = one_line_error(sweeper("report", tmp_path / "r", "--out", tmp_path / "out"))
    assert "pareto-digits.png exists and is a symbolic link" in line
    assert (tmp_path / "precious.png").read_bytes() == b"keep me" and not (tmp_path / "out" / "report.md").exists()


@pytest.mark.parametrize("command", [["query", "", "SELECT 1"], ["check", ""], ["compact", ""]])
def test_an_empty_results_path_is_one_line(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    _store(tmp_path)  # the working directory is a store: "" must not mean it
    assert "RESULTS: empty path" in one_line_error(sweeper(*command))

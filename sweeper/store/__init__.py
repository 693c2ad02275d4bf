"""The result store: a folder (local path or any URI pyarrow understands) holding a
Parquet dataset with one fixed schema, one row per cell, plus what a sweep keeps beside it::

    RESULTS/rows/part-*.parquet     the rows: point pandas, polars, DuckDB or Spark here
    RESULTS/diagnostics.parquet     gradient-masking flags (sweeper.analysis.diagnostics), derived
    RESULTS/worst_case.parquet      the worst case over attacks (sweeper.analysis.query), derived
    RESULTS/models/                 trained weights and .tflite files (int8, and each accepted sub-byte build)
    RESULTS/builds/                 per training job, one record per build (int8, lut, int4): sizes, checks, MACs
    RESULTS/checkpoints/            mid-training state of jobs in flight (sweeper.run.checkpoints), removed when done
    RESULTS/adversarial/            source cells' adversarial examples, one compressed .npz per cell, for transfer attacks
    RESULTS/.lease.json             the running launch's lease (sweeper.run.lease)
    RESULTS/damaged/                damaged fragments (and a damaged lease), set aside, never deleted
    RESULTS/.staging/, _tune/       in-progress writes (each folder's .staging/); Ray Tune's own state

One file per concern: ``schema.py`` (the columns, the version and its history),
``provenance.py`` (``Launch``: where rows came from, in every file's footer), ``files.py``
(``Location``, atomic blobs), ``fragments.py`` (what a fragment is, writing one),
``rows.py`` (reading the rows), ``health.py`` (``check``, ``set_aside``, ``compact``),
``builds.py`` (the build records, a dataset of their own: a build is per model, not per cell).
Every file records its provenance in its Parquet metadata. At the end of a sweep the
fragments are compacted into one file; until then reading skips (and reports) fragments
that cannot be read and keeps the first row of a cell stored twice. A write that fails
names its file, so a full disk or a read-only store is one line; ``leftovers`` lists what
unfinished writes left behind. This module re-exports the store's API.
"""

from __future__ import annotations

from sweeper.store.builds import (  # noqa: F401
    BUILD_COLUMNS,
    BUILD_SCHEMA,
    BUILDS_DIR,
    BuildsRead,
    build_files,
    build_jobs,
    compact_builds,
    job_file,
    read_builds,
    write_builds,
)
from sweeper.store.files import (  # noqa: F401
    Location,
    delete_bytes,
    file_names,
    get_arrays,
    get_bytes,
    locate,
    naming,
    put_arrays,
    put_bytes,
    write_file,
)
from sweeper.store.fragments import (  # noqa: F401
    DamagedFile,
    ForeignFile,
    Fragment,
    Survey,
    fragments,
    launches,
    survey,
    to_table,
    write_rows,
)
from sweeper.store.health import CheckReport, CompactReport, check, compact, leftovers, set_aside  # noqa: F401
from sweeper.store.provenance import Launch, library_versions, new_launch  # noqa: F401
from sweeper.store.rows import ReadResult, done_cell_ids, read, read_fragments, require_results  # noqa: F401
from sweeper.store.schema import (  # noqa: F401
    ADVERSARIAL_DIR,
    COLUMNS,
    DAMAGED_DIR,
    DIAGNOSTICS_FILE,
    FRAGMENT_PREFIX,
    LEASE_FILE,
    META_COMPACTION,
    META_LAUNCHES,
    META_ROWS,
    META_VERSION,
    ROWS_DIR,
    SCHEMA,
    SCHEMA_VERSION,
    STAGING_DIR,
    WORST_CASE_FILE,
    column_or_null,
    projection,
    sql_type_of,
)

"""Provenance: where a launch's rows came from (``Launch``: the grid file and its hash, the
overrides, the resolved grid, the library versions and the source commit), kept in the
footer of every file holding them (``schema_with``)."""

from __future__ import annotations

import hashlib
import json
import platform
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import Iterable

import pyarrow as pa

from sweeper.keys import LIBRARIES, version_of
from sweeper.store.schema import META_LAUNCHES, META_VERSION, SCHEMA, SCHEMA_VERSION


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    """Versions of the libraries that determine a result, keyed by their row column."""
    return {column: version_of(package) for column, package in LIBRARIES.items()}


@dataclass(frozen=True)
class Launch:
    """Where a launch's rows came from; kept in the metadata of every file holding them."""

    launch_id: str
    started_at: str  # ISO 8601, UTC
    grid_name: str
    grid_file: str  # as given on the command line ("" when the plan was built in code)
    grid_sha256: str  # of the file's bytes ("" without a file)
    grid_text: str  # the file as it was when the launch started
    overrides: tuple[str, ...]  # --set KEY=VALUE, in order
    grid_resolved: str  # the validated grid after overrides, as JSON: what actually ran
    versions: dict[str, str] = field(default_factory=dict)  # library -> version, plus python


def new_launch(grid, grid_file: str = "", grid_bytes: bytes | None = None,
               overrides: Iterable[str] = ()) -> Launch:
    versions = {column.removesuffix("_version"): v for column, v in library_versions().items()}
    versions.update(python=platform.python_version(), pyarrow=pa.__version__, sweeper_commit=_source_commit())
    return Launch(launch_id=uuid.uuid4().hex[:16],
                  started_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  grid_name=grid.name, grid_file=grid_file,
                  grid_sha256=hashlib.sha256(grid_bytes).hexdigest() if grid_bytes is not None else "",
                  grid_text=grid_bytes.decode("utf-8", "replace") if grid_bytes is not None else "",
                  overrides=tuple(overrides), grid_resolved=grid.model_dump_json(), versions=versions)


def _source_commit() -> str:
    """The git commit of the sweeper checkout that runs ("+dirty" with local edits), or ""
    when sweeper is not run from a git checkout: the version number alone cannot tell two
    development launches apart."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return ""
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        edits = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if head.returncode != 0:
        return ""
    return head.stdout.strip() + ("+dirty" if edits.stdout.strip() else "")




def schema_with(launches: Iterable[Launch | dict]) -> pa.Schema:
    """The store's schema with ``launches`` (records or dicts) in its footer metadata."""
    records = [asdict(launch) if isinstance(launch, Launch) else launch for launch in launches]
    return SCHEMA.with_metadata({META_VERSION: str(SCHEMA_VERSION).encode(),
                                 META_LAUNCHES: json.dumps(records, sort_keys=True).encode()})


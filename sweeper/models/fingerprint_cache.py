"""The model fingerprints, kept on disk between processes.

A launch needs every job's id before it can tell what is already stored, and an id holds
the model's fingerprint (``models.fingerprint``), which builds the model: TensorFlow's
import alone takes seconds, so a relaunch of a finished grid spent most of its time
importing it to learn that nothing was left to do. This module keeps each computed
fingerprint in a small JSON file in sweeper's per-user cache folder
(``sweeper.cache_dir()/fingerprints.json``), keyed by everything that determines it:

- the model's name, input shape and class count, and the preset's quantizer expressions;
- the builder: its module and name, and a hash of the source of every module in
  ``sweeper/models/`` (the builders, the quantizers, the layer helpers they share);
- the full versions of the libraries that build and serialise the model (TensorFlow,
  tf-keras, QKeras) and Python's major.minor.

A changed line of model or quantizer code, or another library version, is another key:
a stale fingerprint cannot be read back. Only sweeper's own builders, module-level
functions of ``sweeper/models/`` whose source is hashed, are cached; anything else (a
builder registered from elsewhere, a closure, a lambda, a callable object, which code
outside the hashed files may change) is computed every time. Workers still recompute the fingerprint of the model they build and refuse a job
whose fingerprint differs from the plan's (``run/training.py``).

The file is an optimisation only: unreadable, damaged or unwritable, it is ignored (the
fingerprint is computed), and it is replaced whole (a temporary file renamed), so a
reader never sees half of it. Plain Python: no TensorFlow here.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

from sweeper import cache_dir
from sweeper.keys import version_of

FILE_NAME = "fingerprints.json"
FORMAT = 1
# The libraries that build a model and serialise its configuration (what is hashed).
BUILD_LIBRARIES = ("tensorflow", "tf-keras", "qkeras")
# Enough for every model x shape x preset a user sweeps; beyond it the oldest go first.
MAX_ENTRIES = 4096
MODELS_DIR = Path(__file__).resolve().parent


def path() -> Path:
    return cache_dir() / FILE_NAME


def key(name: str, builder: Callable, input_shape: tuple, nb_classes: int, preset) -> str | None:
    """The cache key of a model's fingerprint, or None when ``builder`` is not a
    module-level function whose source pins what it builds (module docstring)."""
    source = _builder_source(builder)
    if source is None:
        return None
    preset_fields = {k: v for k, v in dataclasses.asdict(preset).items() if k != "description"}
    identity = {"format": FORMAT, "model": name, "builder": f"{builder.__module__}.{builder.__qualname__}",
                "input_shape": list(input_shape), "nb_classes": int(nb_classes), "preset": preset_fields,
                "code": code_hash(source), "libraries": {package: version_of(package) for package in BUILD_LIBRARIES},
                "python": list(sys.version_info[:2])}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=repr).encode()).hexdigest()


def _builder_source(builder: Callable) -> str | None:
    module = sys.modules.get(getattr(builder, "__module__", None) or "")
    qualname = getattr(builder, "__qualname__", "")
    if module is None or "." in qualname or getattr(module, qualname, None) is not builder:
        return None
    if module.__name__ != __package__:  # sweeper.models: its folder is what code_hash hashes
        return None
    source = getattr(module, "__file__", None)
    return str(Path(source).resolve()) if source and source.endswith(".py") else None


def code_hash(builder_source: str) -> str:
    """A hash of the source of every module in ``sweeper/models/`` (the builder's among them)."""
    files = sorted({*map(str, MODELS_DIR.glob("*.py")), builder_source})
    return _hash_files(tuple(files))


@functools.lru_cache(maxsize=None)
def _hash_files(files: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0" + Path(name).read_bytes() + b"\0")
    return digest.hexdigest()


def get(cache_key: str | None) -> str | None:
    if cache_key is None:
        return None
    found = _entries().get(cache_key)
    return found if isinstance(found, str) else None


def put(cache_key: str | None, fingerprint: str) -> None:
    """Remember a computed fingerprint (quietly nothing if the file cannot be written)."""
    if cache_key is None:
        return
    entries = {**_read(), cache_key: fingerprint}  # what other processes added meanwhile too
    while len(entries) > MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    _entries.cache_clear()
    try:
        _write(entries)
    except OSError:
        pass


@functools.lru_cache(maxsize=1)
def _entries() -> dict[str, Any]:
    return _read()


def _read() -> dict[str, Any]:
    try:
        data = json.loads(path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("entries"), dict):
        return {}
    return data["entries"]


def _write(entries: dict[str, Any]) -> None:
    target = path()
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=".fingerprints-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump({"format": FORMAT, "entries": entries}, file)
        os.replace(staging, target)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise

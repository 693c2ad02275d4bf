"""The store as a folder on some filesystem: ``Location`` (local path or any URI pyarrow
understands), and the blobs a sweep keeps there beside the rows (trained weights and
.tflite files, checkpoints, adversarial examples, derived Parquet files), each written
atomically under a unique staging name and renamed, its failure naming the file
(``naming``)."""

from __future__ import annotations

import io
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from sweeper.errors import UserError
from sweeper.store.schema import STAGING_DIR


@dataclass(frozen=True)
class Location:
    """A results folder on some filesystem (local disk, S3, GCS, NFS...)."""

    fs: pafs.FileSystem
    path: str
    text: str  # as the user wrote it, for messages

    def sub(self, *names: str) -> str:
        """A path inside the folder, for this location's ``fs``."""
        return "/".join([self.path, *names])

    def uri(self, *names: str) -> str:
        """A path inside the folder that ``locate`` resolves the same way from any process:
        absolute on local disk (Ray Tune runs trials in their own working directories),
        the URI as given elsewhere."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return self.sub(*names)
        return "/".join([self.text.rstrip("/"), *names])


def locate(results: str) -> Location:
    if not results.strip():  # abspath("") is the working directory: never a store by accident
        raise UserError("RESULTS: empty path; name the result store's folder")
    try:
        fs, path = pafs.FileSystem.from_uri(results)
    except (pa.ArrowInvalid, ValueError):
        fs, path = pafs.LocalFileSystem(), os.path.abspath(results)
    return Location(fs, path.rstrip("/"), results)



def write_file(location: Location, relative: str, table: pa.Table) -> str:
    """Write ``table`` to ``RESULTS/relative`` atomically: under .staging/, then renamed,
    so a reader sees the old file or the new one, never half of one."""
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    return put_bytes(location, relative, buffer.getvalue().to_pybytes())


def put_bytes(location: Location, relative: str, data: bytes) -> str:
    """Write bytes to ``RESULTS/relative`` atomically (a unique staging name, then a
    rename): two writers of one file never tear it, and a reader sees all of it or none.
    A write that fails (a full disk) removes its staging file, and its error names the
    file it was writing."""
    final = location.sub(relative)
    staging = location.sub(STAGING_DIR, f"{uuid.uuid4().hex[:8]}-{relative.rpartition('/')[2]}")
    with naming(final):
        location.fs.create_dir(final.rpartition("/")[0], recursive=True)
        location.fs.create_dir(location.sub(STAGING_DIR), recursive=True)
        try:
            with location.fs.open_output_stream(staging) as stream:
                stream.write(data)
            location.fs.move(staging, final)
        except BaseException:
            _discard(location, staging)
            raise
    return final


def _discard(location: Location, path: str) -> None:
    """Remove a staging file of ours that will never be renamed (it frees a full disk);
    if even that fails, ``check`` lists it as a leftover."""
    try:
        if location.fs.get_file_info(path).type == pafs.FileType.File:
            location.fs.delete_file(path)
    except OSError:
        pass


@contextmanager
def naming(path: str):
    """An OSError raised inside names ``path``: pyarrow's errors name no file and a
    temporary's name means nothing to the user, so a full disk or a read-only store is
    reported with the file sweeper was writing."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(error.errno, os.strerror(error.errno), path) from error


def get_bytes(location: Location, relative: str) -> bytes | None:
    """The bytes of ``RESULTS/relative``, or None when there is no such file."""
    path = location.sub(relative)
    if location.fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with location.fs.open_input_stream(path) as stream:
        return stream.read()


def put_arrays(location: Location, relative: str, **arrays) -> str:
    """Numpy arrays as one compressed .npz at ``RESULTS/relative``, atomically (put_bytes)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return put_bytes(location, relative, buffer.getvalue())


def get_arrays(location: Location, relative: str) -> dict[str, Any] | None:
    """The arrays put_arrays stored at ``RESULTS/relative``, or None when there is none."""
    import numpy as np

    data = get_bytes(location, relative)
    if data is None:
        return None
    with np.load(io.BytesIO(data)) as arrays:
        return {name: arrays[name] for name in arrays.files}


def file_names(location: Location, folder: str) -> set[str]:
    """The names of the files in ``RESULTS/folder`` (empty when there is no such folder)."""
    return {path.rpartition("/")[2] for path in list_files(location, folder, "")}


def delete_bytes(location: Location, relative: str) -> None:
    """Remove ``RESULTS/relative`` if it exists (put_bytes's counterpart)."""
    path = location.sub(relative)
    if location.fs.get_file_info(path).type == pafs.FileType.File:
        location.fs.delete_file(path)



def list_files(location: Location, folder: str | None, prefix: str, suffix: str = "") -> list[str]:
    where = location.sub(folder) if folder else location.path
    infos = location.fs.get_file_info(pafs.FileSelector(where, allow_not_found=True))
    return sorted(info.path for info in infos if info.type == pafs.FileType.File
                  and info.base_name.startswith(prefix) and info.base_name.endswith(suffix))


"""Files and folders the user names (``query --output``, ``report --out``): where sweeper
may write them, and how, so that nothing is lost or clobbered.

- **Never inside a result store.** A query result written over ``STORE/rows/<fragment>``
  replaced real rows with its own, and ``check`` could not tell. A folder is a store if
  it holds ``rows/part-*.parquet``, a lease (``.lease.json``) or a schema-1 fragment at its
  top; the path is refused if it or any folder above it (symbolic links resolved) is one.
- **Never over anything but a regular file:** a folder, a device, a FIFO, a socket or a
  symbolic link is refused, ``--force`` or not (as root, writing "over" ``/dev/full`` or a
  link would replace the node or write through it).
- **Never over an existing file without ``--force``** (``report`` owns its folder: it
  replaces its own files there, see ``check_folder``).
- **Always whole:** written under a unique temporary name in the same folder, then
  linked into place (which fails if a file appeared meanwhile) or, with ``--force``,
  renamed over the old file; a failed write leaves nothing behind.
"""

from __future__ import annotations

import os
import stat
import tempfile
from typing import Callable, Iterable

from sweeper.errors import UserError


def check_target(path: str, option: str, force: bool = False, stores: Iterable[str] = ()) -> str:
    """The absolute path a user-named output file may be written to, or a one-line
    UserError naming ``option``. ``stores``: result stores the command reads (refused
    even before they hold a fragment)."""
    if not path.strip():
        raise UserError(f"{option}: empty path; name the file to write")
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise UserError(f"{option}: folder {folder} does not exist")
    _refuse_inside_store(folder, option, path, stores)
    try:
        mode = os.lstat(target).st_mode
    except FileNotFoundError:
        return target
    if not stat.S_ISREG(mode):
        raise UserError(f"{option}: {path} exists and is {_kind(mode)}; sweeper writes only new or regular files")
    if not force:
        raise UserError(f"{option}: {path} exists; pass --force to replace it")
    return target


def check_folder(path: str, option: str, owned: Iterable[str], stores: Iterable[str] = ()) -> str:
    """The absolute path of a folder a command fills with its own files (``owned``,
    relative names, e.g. a report's report.md and figures/*.png), or a one-line
    UserError: never inside a store, never a non-folder, and none of its files already
    there as anything but a regular file (a folder, link or device of that name)."""
    if not path.strip():
        raise UserError(f"{option}: empty path; name the folder to write")
    target = os.path.abspath(path)
    if os.path.lexists(target) and not os.path.isdir(target):
        raise UserError(f"{option}: {path} exists and is not a folder")
    existing = target
    while not os.path.lexists(existing):  # the nearest folder that exists: what is checked
        existing = os.path.dirname(existing)
    _refuse_inside_store(existing, option, path, stores)
    for name in owned:
        file = os.path.join(target, name)
        if os.path.lexists(file) and not stat.S_ISREG(os.lstat(file).st_mode):
            raise UserError(f"{option}: {file} exists and is {_kind(os.lstat(file).st_mode)}; "
                            "sweeper writes only new or regular files")
    return target


def write(path: str, option: str, write_to: Callable[[str], None], force: bool = False,
          stores: Iterable[str] = ()) -> None:
    """Write a user-named file whole: ``write_to(temporary)`` fills a temporary beside it,
    which then takes the file's place (see the module docstring)."""
    target = check_target(path, option, force, stores)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp",
                                         dir=os.path.dirname(target))
    os.close(handle)
    try:
        write_to(temporary)
        os.chmod(temporary, 0o666 & ~_umask())  # as a plainly created file (mkstemp makes 0600)
        _place(temporary, target, path, option, force)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def write_text(text: str, path: str, option: str, force: bool = False, stores: Iterable[str] = ()) -> None:
    def fill(temporary: str) -> None:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)

    write(path, option, fill, force, stores)


def _place(temporary: str, target: str, path: str, option: str, force: bool) -> None:
    if force:
        check_target(path, option, True)  # again: it may have become a link or a device meanwhile
        os.replace(temporary, target)
        return
    try:
        os.link(temporary, target)  # exclusive: fails if a file of that name appeared meanwhile
    except FileExistsError:
        raise UserError(f"{option}: {path} exists; pass --force to replace it") from None
    except OSError:  # a filesystem without hard links: check, then rename
        check_target(path, option, False)
        os.replace(temporary, target)


def _refuse_inside_store(folder: str, option: str, path: str, stores: Iterable[str]) -> None:
    named = {os.path.realpath(store) for store in stores}
    here, found = os.path.realpath(folder), None
    while True:
        if here in named or is_store(here):
            found = here  # the outermost one is named (rows/ itself looks like a schema-1 store)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    if found is not None:
        raise UserError(f"{option}: {path} is inside the result store {found}; write it elsewhere "
                        "(a file there could replace stored rows)")


def local_store(results: str) -> list[str]:
    """The folder of the result store ``results`` names, as the ``stores`` the checks
    refuse; none for a store on another filesystem (S3, GCS...)."""
    import pyarrow.fs as pafs

    from sweeper import store

    location = store.locate(results)
    return [location.path] if isinstance(location.fs, pafs.LocalFileSystem) else []


def is_store(folder: str) -> bool:
    """``folder`` is a result store: it holds fragments under rows/, a lease, or a
    schema-1 fragment (a Parquet file with sweeper's footer) at its top."""
    from sweeper import store

    try:
        names = os.listdir(folder)
    except OSError:
        return False
    if store.LEASE_FILE in names:
        return True
    if store.ROWS_DIR in names and os.path.isdir(os.path.join(folder, store.ROWS_DIR)):
        try:
            if any(_fragment_name(name) for name in os.listdir(os.path.join(folder, store.ROWS_DIR))):
                return True
        except OSError:
            pass
    return any(_fragment_name(name) and _sweeper_footer(os.path.join(folder, name)) for name in names)


def _fragment_name(name: str) -> bool:
    from sweeper import store

    return name.startswith(store.FRAGMENT_PREFIX) and name.endswith(".parquet")


def _sweeper_footer(path: str) -> bool:
    from sweeper import store

    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return store.META_VERSION in (pq.read_schema(path).metadata or {})
    except (pa.ArrowException, OSError):  # not Parquet, unreadable: not a sweeper fragment
        return False


def _kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")]
    return next((name for test, name in kinds if test(mode)), "not a regular file")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

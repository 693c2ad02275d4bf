"""User-facing errors: the CLI prints these as one line and exits with code 2. A full
disk or a place sweeper may not write is one line too (``storage_fault``)."""

from __future__ import annotations

import errno
import os

FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
REFUSED = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class UserError(Exception):
    """Bad input from the user (grid file, option, results path): one clear line."""


class NotAvailableError(UserError):
    """A part that exists in the schema but cannot run here (e.g. data not present)."""


def storage_error(error: BaseException | None) -> OSError | None:
    """The full disk, or read-only or forbidden place, anywhere in ``error``'s chain (Ray
    Tune and TensorFlow wrap some errors), or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in FULL | REFUSED:
            return error
        error = error.__cause__ or error.__context__
    return None


def storage_fault(error: BaseException) -> tuple[str, int] | None:
    """``storage_error`` as one line and an exit code; None for anything else. A full
    disk exits 1: what was written before is kept, and a rerun resumes. A read-only or
    forbidden place exits 2: it is refused before anything is written."""
    found = storage_error(error)
    if found is None:
        return None
    where, reason = found.filename or "the result store", os.strerror(found.errno)
    if found.errno in FULL:
        return (f"disk full while writing {where}: {reason}; what was stored before is kept: free space "
                "and rerun the same command to resume (`sweeper check` lists the leftovers)"), 1
    verb = "write" if found.errno == errno.EROFS else "access"
    return f"cannot {verb} {where}: {reason}", 2

"""User-facing errors: the CLI prints these as one line and exits with code 2. A full
disk or a place sweeper may not write is one line too (``storage_fault``).

Also how a user's value appears in an error: ``preview`` renders any value (a string of
a megabyte, a list nested 900 deep, an integer of 5,000 digits) in a few dozen
characters without ever building its full ``repr``, so an error message about a hostile
value costs nothing and stays short. Every message that quotes user input uses it.
"""

from __future__ import annotations

import errno
import math
import os
from typing import Any

FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
REFUSED = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})
PREVIEW_CHARS = 40  # of a value quoted in an error message
MESSAGE_CHARS = 1000  # of a whole message: a last bound, whatever a message quotes


def one_line(text: str, limit: int = MESSAGE_CHARS) -> str:
    """``text`` on one line (line breaks and other control characters escaped), at most
    ``limit`` characters."""
    text = text[: limit * 4]  # an escape is at most 4 characters: never escape more than needed
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class UserError(Exception):
    """Bad input from the user (grid file, option, results path): one clear line."""

    def __init__(self, message: str = "", *args: Any):
        super().__init__(one_line(str(message)), *args)


class NotAvailableError(UserError):
    """A part that exists in the schema but cannot run here (e.g. data not present)."""


def preview(value: Any, limit: int = PREVIEW_CHARS) -> str:
    """``repr(value)`` shortened to at most ``limit`` characters ("..." marks a cut); its
    cost is bounded by ``limit``, never by the size of ``value``."""
    text = _bounded_repr(value, limit + 1)
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def _bounded_repr(value: Any, budget: int) -> str:
    """A prefix of ``repr(value)`` of at least ``budget`` characters when the repr is that
    long, built piece by piece: containers are walked only until the budget is spent."""
    if isinstance(value, str):
        return repr(value[:budget])[: budget + 2] + ("" if len(value) <= budget else "'...")
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        if value.bit_length() > 3 * budget + 64:  # str() of a huge int is slow, or refused
            return f"<an integer of {math.floor(value.bit_length() * math.log10(2)) + 1} digits>"
        return repr(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return _bounded_items(value.items(), "{}", budget, mapping=True)
    if isinstance(value, (list, tuple, set, frozenset)):
        brackets = "[]" if isinstance(value, list) else "()" if isinstance(value, tuple) else "{}"
        return _bounded_items(value, brackets, budget)
    if isinstance(value, (bytes, bytearray)):
        return repr(bytes(value[:budget]))
    text = repr(value)  # other types (dates, Epsilon) have short reprs of their own
    return text[: budget + 3]


def _bounded_items(items, brackets: str, budget: int, mapping: bool = False) -> str:
    # Each nested level starts with its bracket, so the budget shrinks with depth: the
    # recursion ends after at most ``budget`` levels, however deep the value.
    parts, used = [brackets[0]], 1
    for index, item in enumerate(items):
        if used > budget:
            return "".join(parts) + "..."
        piece = "" if index == 0 else ", "
        if mapping:
            key, item = item
            piece += _bounded_repr(key, budget - used - len(piece)) + ": "
        piece += _bounded_repr(item, budget - used - len(piece))
        parts.append(piece)
        used += len(piece)
    return "".join(parts) + brackets[1]


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

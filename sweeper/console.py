"""What sweeper prints on the user's terminal: consoles that print user text literally.

User text (paths, grid names and labels, error messages, query results) reaches the
terminal through ``console()``, which reads no markup, emoji codes or highlighting into
it: a path ``[/x].yaml`` or a label ``:x:`` prints as written. sweeper's own styles are
Text objects (``styled``), never markup in a string.
"""

from __future__ import annotations

from rich.console import Console
from rich.text import Text


def console(stderr: bool = False, **options) -> Console:
    """A console that prints every string literally (no markup, emoji or highlighting)."""
    return Console(stderr=stderr, markup=False, emoji=False, highlight=False, **options)


def styled(label: str, style: str, message: str) -> Text:
    """``label`` in ``style``, then ``message`` as written: e.g. a red ``error:``."""
    return Text.assemble((label, style), " ", message)

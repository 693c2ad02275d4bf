"""What every deployment step shares: ``DeployError`` (a model that cannot be deployed),
``one_line`` (how a failure is reported in a row), and ``quiet`` (silencing
the converter's and interpreter's output on file descriptors 1 and 2). Running TFLM in a
child process is ``server.child``."""

from __future__ import annotations

import contextlib
import os
import sys



class DeployError(ValueError):
    """A model that cannot be deployed as full int8, with a one-line reason."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def quiet():
    """Silence file descriptors 1 and 2 (the converter's C++ chatter, the TFLite
    interpreter's deprecation notice) and Python warnings, for the whole process."""
    import warnings

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


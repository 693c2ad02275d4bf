"""What every deployment step shares: ``DeployError`` (a model that cannot be deployed),
``one_line`` (how a failure is reported in a row), ``quiet`` (silencing the
converter's and interpreter's output on file descriptors 1 and 2) and ``child`` (running
``python -m sweeper.deploy COMMAND`` in a child process, where TFLM's interpreter may
crash without taking the trial with it)."""

from __future__ import annotations

import contextlib
import os
import sys

import sweeper


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


def child(command: str, data: bytes, timeout_s: float, what: str) -> bytes:
    """stdout of ``python -m sweeper.deploy COMMAND`` fed ``data`` on stdin, run with this
    process's sweeper checkout first on its PYTHONPATH; ``DeployError`` naming ``what``
    failed, with the child's last line of stderr (or its signal), if it exits non-zero."""
    import subprocess

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(sweeper.__file__)))
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "sweeper.deploy", command], input=data,
                          capture_output=True, timeout=timeout_s,
                          env={**os.environ, "PYTHONPATH": path})
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        reason = lines[-1] if lines else (f"killed by signal {-done.returncode}" if done.returncode < 0
                                          else f"exit status {done.returncode}")
        raise DeployError(f"{what} failed: {reason}")
    return done.stdout

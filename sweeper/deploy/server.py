"""The long-lived TFLM child: ``child(command, data, timeout_s, what)``, what ``python -m
sweeper.deploy COMMAND`` answers, asked of this process's ``Server`` (the client side),
and ``serve``, the loop ``python -m sweeper.deploy serve`` runs.

Starting ``python -m sweeper.deploy COMMAND`` for every arena search and every TFLM run
cost about 0.25 s of interpreter start-up and imports for 0.05 s of work, 4-5 times a
job. So each process that deploys starts one server on first use (``python -m
sweeper.deploy serve``, in its own process group), which imports tflite-micro once and
then answers requests read on stdin, each in a forked grandchild: a segmentation fault in
TFLM kills that grandchild only, comes back as the same one-line reason the one-shot
child gave ("killed by signal 11", or the last line the grandchild wrote), and the server
stays up for the next request.

The server exits at EOF on its stdin, which its parent's exit gives however the parent
dies (SIGKILL included; a forked child of the parent closes its copies of the pipes at
once). PR_SET_PDEATHSIG is not used: it fires when the parent *thread* that started the
server exits, which would end a server a thread pool's short-lived thread started.

Frames, both ways, are length-prefixed (8-byte big-endian lengths): a request is the
command then the payload; an answer is a status byte (0: the answer, 1: a one-line
reason) then the answer. POSIX only (``os.fork``).
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Callable

import sweeper
from sweeper.deploy.common import DeployError, one_line

_LENGTH = struct.Struct("!Q")
_STATUS = struct.Struct("!BQ")  # status, answer length


class _ServerGone(Exception):
    """The server closed its end before answering (it exited or was killed)."""


# --- the server's side -------------------------------------------------------------------

def serve(handlers: dict[str, Callable[[bytes], bytes]]) -> None:
    """Answer requests on stdin until EOF (the parent exited or is done): each runs
    ``handlers[command](payload)`` in a forked grandchild. The answers go to the original
    stdout; anything else written to file descriptor 1 goes to stderr instead."""
    reply = os.dup(1)
    os.dup2(2, 1)
    while True:
        command = _read(0, None)
        if command is None:
            return
        payload = _read(0, None) or b""
        handler = handlers.get(command.decode(errors="replace"))
        if handler is None:
            status, answer = 1, f"unknown command {command!r}; available: {', '.join(handlers)}"
            answer = answer.encode()
        else:
            status, answer = _in_grandchild(handler, payload)
        _write_all(reply, _STATUS.pack(status, len(answer)) + answer, None)


def _in_grandchild(handler: Callable[[bytes], bytes], payload: bytes) -> tuple[int, bytes]:
    """(0, answer), or (1, reason): the grandchild's last line of output (its error line),
    or how it died, as the one-shot child reported it."""
    with tempfile.TemporaryFile() as answer_file, tempfile.TemporaryFile() as log:
        pid = os.fork()
        if pid == 0:  # the grandchild: its output goes to the log, the answer to a file
            code = 1
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                answer_file.write(handler(payload))
                answer_file.flush()
                code = 0
            except BaseException as exc:  # noqa: BLE001  (every failure is a reason)
                reason = str(exc) if isinstance(exc, DeployError) else one_line(exc)
                os.write(2, f"\n{reason}\n".encode(errors="replace"))
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            answer_file.seek(0)
            return 0, answer_file.read()
        log.seek(0)
        lines = log.read().decode(errors="replace").strip().splitlines()
    return 1, (lines[-1] if lines else _death(status)).encode()


def _death(status: int) -> str:
    """A wait status as the one-shot child's error said it."""
    if os.WIFSIGNALED(status):
        return f"killed by signal {os.WTERMSIG(status)}"
    return f"exit status {os.WEXITSTATUS(status)}"


# --- framing -----------------------------------------------------------------------------

def _read(fd: int, deadline: float | None) -> bytes | None:
    """One length-prefixed frame, or None on EOF before it starts."""
    head = _read_exactly(fd, _LENGTH.size, deadline, eof_ok=True)
    return None if head is None else _read_exactly(fd, _LENGTH.unpack(head)[0], deadline)


def _read_exactly(fd: int, size: int, deadline: float | None, eof_ok: bool = False):
    chunks, left = [], size
    while left:
        _wait(fd, deadline, writing=False)
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            if eof_ok and left == size:
                return None
            raise _ServerGone("the stream ended in a frame")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes, deadline: float | None) -> None:
    view = memoryview(data)
    while view:
        _wait(fd, deadline, writing=True)
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            continue
        except BrokenPipeError as exc:
            raise _ServerGone("the server's stdin is closed") from exc


def _wait(fd: int, deadline: float | None, writing: bool) -> None:
    """Until ``fd`` is ready, or TimeoutError at ``deadline`` (None: no deadline)."""
    if deadline is None:
        return
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready = select.select([], [fd], [], left)[1] if writing else select.select([fd], [], [], left)[0]
        if ready:
            return


def _frame(*parts: bytes) -> bytes:
    return b"".join(_LENGTH.pack(len(part)) + part for part in parts)


# --- the client's side -------------------------------------------------------------------

class Server:
    """One server per process, started on first use: ``request`` sends a command and its
    payload and returns the answer, or raises ``DeployError`` as the one-shot child did.

    On a timeout the server's whole process group (it and its grandchildren) is killed;
    a server found dead is started afresh, and one that dies during a request is
    restarted once for it. A process forked from the owner starts its own server (it
    never talks to its parent's). ``argv`` replaces the server's command line (tests)."""

    def __init__(self, argv: list[str] | None = None):
        self._argv = argv or [sys.executable, "-m", "sweeper.deploy", "serve"]
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._stderr = None
        self._owner = os.getpid()

    @property
    def pid(self) -> int | None:
        """The running server's process id (None before the first request)."""
        return self._process.pid if self._process is not None and self._owned() else None

    def request(self, command: str, data: bytes, timeout_s: float, what: str) -> bytes:
        deadline = time.monotonic() + timeout_s
        with self._lock:
            status, answer = self._ask(command, data, deadline, f"{what} failed: ", timeout_s)
        if status != 0:
            raise DeployError(f"{what} failed: {answer.decode(errors='replace')}")
        return answer

    def _ask(self, command: str, data: bytes, deadline: float, failed: str,
             timeout_s: float) -> tuple[int, bytes]:
        """(status, answer), from a fresh server if this one dies during the request."""
        for attempt in (1, 2):
            process = self._running(failed)
            try:
                _write_all(process.stdin.fileno(), _frame(command.encode(), data), deadline)
                status, length = _STATUS.unpack(
                    _read_exactly(process.stdout.fileno(), _STATUS.size, deadline))
                return status, _read_exactly(process.stdout.fileno(), length, deadline)
            except TimeoutError:
                self.stop()
                raise DeployError(f"{failed}no answer within {timeout_s:g} s") from None
            except _ServerGone:
                reason = self._exit_reason()
                self.stop()
                if attempt == 2:
                    raise DeployError(f"{failed}the TFLM server exited ({reason})") from None
            except BaseException:  # e.g. KeyboardInterrupt mid-frame: the pipes are out of step
                self.stop()
                raise
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Kill the server's process group and reap the server (nothing if none runs)."""
        process, self._process = self._process, None
        if process is None or not self._owned():
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own group: the grandchildren too
        except (ProcessLookupError, PermissionError):
            pass
        process.wait()
        self._close(process)

    def close(self) -> None:
        """At exit: EOF on the server's stdin ends it; killed if it lingers."""
        process = self._process
        if process is None or not self._owned():
            return
        try:
            process.stdin.close()
            process.wait(timeout=2)
            self._process = None
            self._close(process)
        except (OSError, subprocess.TimeoutExpired):
            self.stop()

    def forget(self) -> None:
        """In a forked child: drop the parent's server (closing only this process's copies
        of its pipes) and the lock, which another thread may have held at the fork."""
        if self._process is not None:
            self._close(self._process)
        self._process, self._stderr = None, None
        self._lock = threading.Lock()
        self._owner = os.getpid()

    def _owned(self) -> bool:
        return self._owner == os.getpid()

    def _running(self, failed: str) -> subprocess.Popen:
        if not self._owned():
            self.forget()
        if self._process is not None and self._process.poll() is not None:
            self.stop()
        if self._process is None:
            package_root = os.path.dirname(os.path.dirname(os.path.abspath(sweeper.__file__)))
            path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
            self._stderr = tempfile.TemporaryFile()
            try:
                self._process = subprocess.Popen(
                    self._argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=self._stderr, bufsize=0, start_new_session=True,
                    env={**os.environ, "PYTHONPATH": path})
            except OSError as exc:
                raise DeployError(f"{failed}cannot start the TFLM server: {one_line(exc)}") from None
            os.set_blocking(self._process.stdin.fileno(), False)
        return self._process

    def _exit_reason(self) -> str:
        """The server's last line of stderr, or how it died."""
        process = self._process
        try:
            status = process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "it closed its pipes"
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        if lines:
            return lines[-1]
        return f"killed by signal {-status}" if status < 0 else f"exit status {status}"

    def _close(self, process: subprocess.Popen) -> None:
        for stream in (process.stdin, process.stdout, self._stderr):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def child(command: str, data: bytes, timeout_s: float, what: str) -> bytes:
    """The answer of ``python -m sweeper.deploy COMMAND`` to ``data``, computed by this
    process's long-lived TFLM server (started on first use with this process's sweeper
    checkout first on its PYTHONPATH; each request in a forked grandchild, where TFLM's
    interpreter may crash without taking the trial with it); ``DeployError`` naming
    ``what`` failed, with the grandchild's last line of output (or its signal) if it
    fails, or if no answer comes within ``timeout_s``."""
    return SERVER.request(command, data, timeout_s, what)


SERVER = Server()
atexit.register(SERVER.close)
os.register_at_fork(after_in_child=SERVER.forget)

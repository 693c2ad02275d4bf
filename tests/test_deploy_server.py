"""The long-lived TFLM server (``sweeper.deploy.server``) that ``server.child`` asks: the
same answers and errors as the one-shot ``python -m sweeper.deploy arena|outputs``, a
crash in a request that leaves the server up, timeouts and deaths that start a fresh
server, and a forked process that never talks to its parent's server."""

import io
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import sweeper  # noqa: F401  (sets TF_USE_LEGACY_KERAS=1 before TensorFlow loads)
from sweeper.deploy.common import DeployError
from sweeper.deploy.server import SERVER, Server, child

from conftest import lazy_module  # noqa: E402
lazy_module("tensorflow")
lazy_module("tflite_micro")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A server answering the real commands and two test-only ones: "crash" (the grandchild
# dies of SIGSEGV, as TFLM's interpreter may), "hang" (it writes its pid to the file named
# by the payload, then sleeps) and "kill_server" (it adds the server's pid to the file
# named by the payload, then kills the server).
TEST_SERVER = [sys.executable, "-c", """
import os, signal, time
from sweeper.deploy.__main__ import HANDLERS
from sweeper.deploy.server import serve

def hang(path):
    open(path, "w").write(str(os.getpid()))
    time.sleep(600)

def kill_server(path):
    with open(path, "a") as log:
        log.write(f"{os.getppid()} ")
    os.kill(os.getppid(), signal.SIGKILL)
    return b""

serve({**HANDLERS, "crash": lambda data: os.kill(os.getpid(), signal.SIGSEGV), "hang": hang,
       "kill_server": kill_server})
"""]


@pytest.fixture(scope="module")
def flatbuffer() -> bytes:
    """An untrained small_cnn's int8 build (conversion only, no training)."""
    from sweeper import deploy, models
    from sweeper.models.quantizers import QUANTIZERS

    model = models.build("small_cnn", (8, 8, 1), 10, QUANTIZERS.get("int8"))
    x = np.random.default_rng(0).random((32, 8, 8, 1), dtype=np.float32)
    return deploy.convert_int8(deploy.strip(model), x)


def _one_shot(command: str, data: bytes) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sweeper.deploy", command], input=data,
                          capture_output=True, env={**os.environ, "PYTHONPATH": ROOT})


def _outputs_payload(flatbuffer: bytes) -> bytes:
    from sweeper.deploy.tflm import quantize

    x = np.random.default_rng(1).random((16, 8, 8, 1), dtype=np.float32)
    payload = io.BytesIO()
    np.savez(payload, flatbuffer=np.frombuffer(flatbuffer, dtype=np.uint8),
             x=quantize(flatbuffer, x))
    return payload.getvalue()


def _gone(pid: int, within_s: float = 5.0) -> bool:
    """Whether no process ``pid`` exists (zombies reaped) within ``within_s``."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def test_the_server_answers_as_the_one_shot_child_and_is_reused(flatbuffer):
    arena = child("arena", flatbuffer, 60, "TFLM arena search")
    pid = SERVER.pid
    assert pid is not None and int(arena) > 0
    assert arena == _one_shot("arena", flatbuffer).stdout
    payload = _outputs_payload(flatbuffer)
    outputs = child("outputs", payload, 60, "TFLM interpreter")
    assert outputs == _one_shot("outputs", payload).stdout
    assert np.load(io.BytesIO(outputs)).shape == (16, 10)
    for command, data in [("arena", b"not a flatbuffer"), ("outputs", b"not an npz")]:
        stderr = _one_shot(command, data).stderr.decode().strip().splitlines()[-1]
        with pytest.raises(DeployError) as error:
            child(command, data, 60, "TFLM step")
        assert str(error.value) == f"TFLM step failed: {stderr}"
    assert SERVER.pid == pid  # one server for all of them


def test_a_crashed_request_is_an_error_and_the_server_goes_on(flatbuffer):
    server = Server(TEST_SERVER)
    try:
        with pytest.raises(DeployError, match=r"^TFLM interpreter failed: killed by signal 11$"):
            server.request("crash", b"", 60, "TFLM interpreter")
        pid = server.pid
        assert server.request("arena", flatbuffer, 60, "TFLM arena search") == \
            child("arena", flatbuffer, 60, "TFLM arena search")
        assert server.pid == pid
        with pytest.raises(DeployError, match="unknown command b'nope'; available: arena, outputs"):
            server.request("nope", b"", 60, "TFLM step")
    finally:
        server.stop()


def test_a_timeout_kills_the_server_and_its_grandchild(flatbuffer, tmp_path):
    server = Server(TEST_SERVER)
    try:
        server.request("arena", flatbuffer, 60, "TFLM arena search")
        pid, path = server.pid, tmp_path / "grandchild"
        started = time.monotonic()
        with pytest.raises(DeployError, match=r"^TFLM step failed: no answer within 2 s$"):
            server.request("hang", str(path).encode(), 2, "TFLM step")
        assert time.monotonic() - started < 10
        assert _gone(pid) and _gone(int(path.read_text()))
        assert server.request("arena", flatbuffer, 60, "TFLM arena search").strip().isdigit()
        assert server.pid not in (None, pid)
        # interrupted mid-request (e.g. KeyboardInterrupt): the answer still to come must
        # not be read as the next request's
        pid, previous = server.pid, signal.signal(signal.SIGALRM, _interrupt)
        try:
            signal.alarm(1)
            with pytest.raises(KeyboardInterrupt):
                server.request("hang", str(path).encode(), 60, "TFLM step")
        finally:
            signal.signal(signal.SIGALRM, previous)
        assert _gone(pid)
        assert server.request("arena", flatbuffer, 5, "TFLM arena search").strip().isdigit()
    finally:
        server.stop()


def test_a_dead_server_is_restarted_once(flatbuffer, tmp_path):
    server = Server()
    try:
        first = server.request("arena", flatbuffer, 60, "TFLM arena search")
        pid = server.pid
        os.kill(pid, signal.SIGKILL)
        assert server.request("arena", flatbuffer, 60, "TFLM arena search") == first
        assert server.pid not in (None, pid) and _gone(pid)
    finally:
        server.stop()
    server, log = Server(TEST_SERVER), tmp_path / "servers"
    try:  # a server that dies during the request: asked again of a fresh one, once
        with pytest.raises(DeployError, match=r"^TFLM step failed: the TFLM server exited "
                                              r"\(killed by signal 9\)$"):
            server.request("kill_server", str(log).encode(), 60, "TFLM step")
        assert len(set(log.read_text().split())) == 2
        assert server.request("arena", flatbuffer, 60, "TFLM arena search") == first
    finally:
        server.stop()
    broken = Server([sys.executable, "-c", "import sys; sys.exit('no tflite-micro here')"])
    with pytest.raises(DeployError, match=r"^TFLM step failed: the TFLM server exited "
                                          r"\(no tflite-micro here\)$"):
        broken.request("arena", flatbuffer, 60, "TFLM step")
    assert broken.pid is None


def test_a_forked_process_starts_its_own_server(flatbuffer):
    answer = child("arena", flatbuffer, 60, "TFLM arena search")
    parent_server = SERVER.pid
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the forked child: its own server, the same answer
        code = 1
        try:
            same = child("arena", flatbuffer, 60, "TFLM arena search") == answer
            own = SERVER.pid not in (None, parent_server)
            os.write(write, f"{same} {own}".encode())
            SERVER.stop()
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as report:
        said = report.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert said == "True True"
    assert child("arena", flatbuffer, 60, "TFLM arena search") == answer
    assert SERVER.pid == parent_server  # the parent's server was left alone: no restart


def test_the_server_exits_with_its_parent():
    """A parent killed outright (SIGKILL: no atexit) leaves EOF on the server's stdin."""
    code = ("import sys, time\nfrom sweeper.deploy.server import SERVER, child\n"
            "try:\n    child('arena', b'not a flatbuffer', 60, 'TFLM arena search')\n"
            "except Exception:\n    pass\nprint(SERVER.pid, flush=True)\ntime.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                              env={**os.environ, "PYTHONPATH": ROOT})
    try:
        server = int(parent.stdout.readline())
        assert not _gone(server, 0.2)
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert _gone(server)

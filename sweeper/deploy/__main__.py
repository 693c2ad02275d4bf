"""``python -m sweeper.deploy COMMAND``: the child processes ``sweeper.deploy`` starts,
so that TFLM's interpreter may crash without taking the trial with it.

- ``serve`` (``server.serve``, what ``server.child`` starts once per process): imports
  tflite-micro once, then answers length-prefixed requests (a command below and its
  input) read on stdin until EOF, each in a forked grandchild;
- ``arena`` (``arena.arena_bytes``): a flatbuffer in, the smallest TFLite Micro arena
  that allocates it out;
- ``outputs`` (``tflm.tflm_outputs``): a flatbuffer and int8 samples in (.npz), the
  int8 outputs TFLM computes out (.npy).

``arena`` and ``outputs`` also run one-shot (``python -m sweeper.deploy arena <
model.tflite``): input on stdin, the answer on stdout, or exit with the reason (a one-line
error) on stderr."""

import os
import sys

from tflite_micro.python.tflite_micro import runtime  # noqa: F401  (once, before forking)

from sweeper.deploy.arena import _search_arena
from sweeper.deploy.common import DeployError, one_line
from sweeper.deploy.server import serve
from sweeper.deploy.tflm import _run_outputs

# what each command answers (bytes in, bytes out); a test server imports these
HANDLERS = {"arena": lambda data: f"{_search_arena(data)}\n".encode(), "outputs": _run_outputs}


def main(argv: list[str]) -> None:
    """Serve requests, or answer one (stdin in, stdout out, the reason on stderr)."""
    if argv == ["serve"]:
        serve(HANDLERS)
        return
    if len(argv) != 1 or argv[0] not in HANDLERS:
        sys.exit(f"usage: python -m sweeper.deploy serve|arena|outputs (got {argv})")
    answer_fd = os.dup(1)  # the interpreter's own prints go to stderr, not into the answer
    os.dup2(2, 1)
    try:
        answer = HANDLERS[argv[0]](sys.stdin.buffer.read())
    except Exception as exc:  # the interpreter raises RuntimeError, ValueError...
        sys.exit(str(exc) if isinstance(exc, DeployError) else one_line(exc))
    with os.fdopen(answer_fd, "wb") as out:
        out.write(answer)


if __name__ == "__main__":  # imported (a test's server), it only defines HANDLERS
    main(sys.argv[1:])

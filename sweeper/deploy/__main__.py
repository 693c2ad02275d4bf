"""``python -m sweeper.deploy COMMAND``: the child processes ``sweeper.deploy`` starts,
so that TFLM's interpreter may crash without taking the trial with it.

- ``serve`` (``server.serve``, what ``common.child`` starts once per process): imports
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

from sweeper.deploy.common import DeployError, one_line
from sweeper.deploy.server import handlers, serve

HANDLERS = handlers()

if sys.argv[1:] == ["serve"]:
    serve(HANDLERS)
elif len(sys.argv) == 2 and sys.argv[1] in HANDLERS:
    answer_fd = os.dup(1)  # the interpreter's own prints go to stderr, not into the answer
    os.dup2(2, 1)
    try:
        answer = HANDLERS[sys.argv[1]](sys.stdin.buffer.read())
    except Exception as exc:  # the interpreter raises RuntimeError, ValueError...
        sys.exit(str(exc) if isinstance(exc, DeployError) else one_line(exc))
    with os.fdopen(answer_fd, "wb") as out:
        out.write(answer)
else:
    sys.exit(f"usage: python -m sweeper.deploy serve|arena|outputs (got {sys.argv[1:]})")

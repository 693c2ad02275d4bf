"""``python -m sweeper.deploy COMMAND``: the child processes ``sweeper.deploy`` starts,
so that TFLM's interpreter may crash without taking the trial with it. Each reads its
input on stdin and exits with the reason (a one-line error) on stderr:

- ``arena`` (``arena.arena_bytes``): a flatbuffer in, the smallest TFLite Micro arena
  that allocates it out;
- ``outputs`` (``tflm.tflm_outputs``): a flatbuffer and int8 samples in (.npz), the
  int8 outputs TFLM computes out (.npy)."""

import sys

from sweeper.deploy.common import one_line

if sys.argv[1:] == ["arena"]:  # arena_bytes's child process
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401  (once, before forking)

    from sweeper.deploy.arena import _search_arena
    from sweeper.deploy.common import DeployError

    try:
        print(_search_arena(sys.stdin.buffer.read()))
    except DeployError as exc:
        sys.exit(str(exc))
elif sys.argv[1:] == ["outputs"]:  # tflm_outputs's child process
    import os

    from sweeper.deploy.tflm import _run_outputs

    answer_fd = os.dup(1)  # the interpreter's own prints go to stderr, not into the answer
    os.dup2(2, 1)
    try:
        answer = _run_outputs(sys.stdin.buffer.read())
    except Exception as exc:  # the interpreter raises RuntimeError, ValueError...
        sys.exit(one_line(exc))
    with os.fdopen(answer_fd, "wb") as out:
        out.write(answer)
else:
    sys.exit(f"usage: python -m sweeper.deploy arena|outputs (got {sys.argv[1:]})")

"""``python -m sweeper.deploy arena``: the child process ``arena.arena_bytes`` starts. It
reads a flatbuffer on stdin and prints the smallest TFLite Micro arena that allocates it,
or exits with the reason (a one-line ``DeployError``) on stderr."""

import sys

from sweeper.deploy.arena import _search_arena
from sweeper.deploy.common import DeployError

if sys.argv[1:] == ["arena"]:  # arena_bytes's child process
    from tflite_micro.python.tflite_micro import runtime  # noqa: F401  (once, before forking)

    try:
        print(_search_arena(sys.stdin.buffer.read()))
    except DeployError as exc:
        sys.exit(str(exc))

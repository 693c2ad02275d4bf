"""Reading YAML from users (grid files and ``--set`` values) with bounded cost.

A grid file is small; anything that is not is refused before it can cost time or
memory, each refusal one ``UserError`` line naming the file (or ``--set`` key) and where:

- **Size.** Only regular files are read (a FIFO would block, ``/dev/zero`` never ends),
  at most ``MAX_FILE_BYTES`` (reading one byte more tells a larger file); a ``--set``
  value at most ``MAX_VALUE_BYTES``.
- **Decoding.** Strict UTF-8 (a UTF-8 byte-order mark is skipped); UTF-16/32, latin-1
  or NUL bytes are named with the byte offset and line.
- **Nesting.** At most ``MAX_DEPTH`` levels, counted while the document is composed, so
  a 900-deep list never reaches Python's recursion limit.
- **Aliases.** The composed graph is measured before anything is constructed: the number
  of values it holds with every alias expanded (``MAX_VALUES``) and its depth with
  aliases followed. A billion-laughs file is refused without ever being expanded; an
  alias to a node that contains itself is refused too.
- **Keys.** A mapping that repeats a key (``seed`` twice) is refused, naming the key and
  the line; YAML's merge key (``<<: *base``) still lets a mapping override merged keys.
- **Values.** A scalar that does not convert (an integer of 5,000 digits, a timestamp
  like 2024-13-45) is refused with its line, not a traceback.

PyYAML's pure-Python safe loader is used (its C loader composes without hooks): at
most a megabyte, parsed in a few seconds at worst.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import Any

import yaml

from sweeper.errors import UserError, preview

MAX_FILE_BYTES = 1 << 20  # 1 MiB: the largest shipped grid is under 4 KB
MAX_VALUE_BYTES = 64 << 10  # one --set value
MAX_DEPTH = 32  # a grid nests 5 levels deep (attacks.0.params.shape.0)
MAX_VALUES = 10_000  # scalars, lists and mappings, aliases expanded
MERGE_TAG = "tag:yaml.org,2002:merge"
NEWLINE = b"\n"


def read_file(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; anything else is a
    one-line ``UserError`` without reading more than ``limit + 1`` bytes."""
    try:
        # Non-blocking: opening a FIFO without a writer would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(f"{path}: grid file not found") from None
    except OSError as error:
        raise UserError(f"{path}: cannot read grid file ({error.strerror})") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise UserError(f"{path}: is a folder, not a grid file")
        raise UserError(f"{path}: not a regular file ({_kind(mode)}); give the path of a grid file")
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as error:
            raise UserError(f"{path}: cannot read grid file ({error.strerror})") from None
    if len(data) > limit:
        raise UserError(f"{path}: larger than {_size(limit)}, the most a grid file may be")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a pipe"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _size(limit: int) -> str:
    return f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"


def decode(data: bytes, where: str) -> str:
    """``data`` as UTF-8 text (a UTF-8 byte-order mark dropped), or a one-line error
    naming the first offending byte's offset and line."""
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    for bom, name in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                      (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):
        if data.startswith(bom):
            raise UserError(f"{where}: is {name} text (it starts with a {name} byte-order mark); "
                            f"save it as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"{where}: not UTF-8 text: byte 0x{data[error.start]:02x} at offset {error.start} "
                        f"({_line(data, error.start)}); save it as UTF-8") from None
    if "\x00" in text:
        offset = data.index(b"\x00")
        raise UserError(f"{where}: NUL byte at offset {offset} ({_line(data, offset)}); UTF-16 text? "
                        f"save it as UTF-8")
    return text


def _line(data: bytes, offset: int) -> str:
    return f"line {data.count(NEWLINE, 0, offset) + 1}"


def load_file(path: Path) -> Any:
    """The YAML document of a grid file, read within every bound of this module."""
    return loads(decode(read_file(path), str(path)), str(path))


def loads(text: str, where: str, limit: int | None = None) -> Any:
    """The YAML document in ``text`` (None for an empty one), within every bound of this
    module; ``where`` starts each error ("grid.yaml", "--set seed")."""
    if limit is not None and len(text) > limit // 4 and len(text.encode("utf-8", "surrogatepass")) > limit:
        raise UserError(f"{where}: value larger than {_size(limit)}")
    loader = None
    try:
        loader = _BoundedLoader(text)  # checks every character is one YAML allows
        node = loader.get_single_node()
        if node is None:
            return None
        _measure(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        raise UserError(f"{where}: {_marked(error)}") from None
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise UserError(f"{where}: character {preview(chr(error.character))} at line {line}, column {column} "
                        f"is not allowed in YAML") from None
    except yaml.YAMLError as error:
        raise UserError(f"{where}: YAML error: {str(error)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _marked(error: yaml.MarkedYAMLError) -> str:
    mark = error.problem_mark or error.context_mark
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = error.problem or error.context or "not valid YAML"
    if isinstance(error, _Refused):
        return f"{problem}{where}"
    return f"YAML syntax error{where}: {problem}"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that sweeper will not read (too deep, too large, a repeated key)."""

    def __init__(self, problem: str, mark):
        super().__init__(problem=problem, problem_mark=mark)


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader, counting depth while composing and refusing repeated keys
    and values that do not convert."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested deeper than {MAX_DEPTH} levels", self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == MERGE_TAG:
                    continue  # merged keys may be overridden: that is what merging is for
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                except TypeError:
                    continue  # an unhashable key: the safe constructor refuses it itself
                if repeated:
                    raise _Refused(f"key {preview(key)} appears twice in one mapping", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError) as error:
            reason = str(error).split(":")[0][:80]  # Python's own words, first clause
            raise _Refused(f"cannot read the value {preview(node.value)} ({reason})", node.start_mark) from None


def _measure(root: yaml.Node) -> None:
    """Refuse a composed graph whose expansion (every alias replaced by its node) holds
    more than MAX_VALUES values or nests deeper than MAX_DEPTH, or that contains itself.
    Iterative, each node measured once: the cost follows the file, not the expansion."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (values, depth), expanded
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children = _children(node)
        if not children_done:
            if key in on_path:
                raise _Refused("an alias refers to a node that contains it", node.start_mark)
            on_path.add(key)
            stack.append((node, True))
            for child in children:
                if id(child) in on_path:
                    raise _Refused("an alias refers to a node that contains it", child.start_mark)
                if id(child) not in sizes:
                    stack.append((child, False))
            continue
        on_path.discard(key)
        values = 1 + sum(sizes[id(child)][0] for child in children)
        depth = 1 + max((sizes[id(child)][1] for child in children), default=0)
        if values > MAX_VALUES:
            raise _Refused(f"holds more than {MAX_VALUES} values with its aliases expanded", node.start_mark)
        if depth > MAX_DEPTH:
            raise _Refused(f"nested deeper than {MAX_DEPTH} levels with its aliases expanded", node.start_mark)
        sizes[key] = (values, depth)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []

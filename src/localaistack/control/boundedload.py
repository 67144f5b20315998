"""Reading the files a user hands las, within bounds of time and memory.

Manifests, policies and hardware profiles all come through here: ``read_limited`` reads at
most ``MAX_FILE_BYTES`` (the size is checked before anything is read), ``decode_text``
accepts UTF-8 text only (no NUL or other control characters), and ``load_yaml`` /
``load_json`` refuse documents nested deeper than ``MAX_DEPTH`` or holding more than
``MAX_NODES`` values, counting every value an alias repeats (so an alias bomb is refused
when it is read, not after it has filled the memory). The YAML events come from libyaml
where PyYAML has it (fast, and it stops where the bound is hit); the node graph is composed
here, with the counts, before anything is constructed.

Problems are ``InputError``s, which name what is wrong and where (a line) but not the file:
each caller raises its own error type (``ManifestError``...) naming the file.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

MAX_FILE_BYTES = 1 << 20  # 1 MiB: far above any real manifest, policy or profile
MAX_DEPTH = 64  # nested mappings/lists
MAX_NODES = 20_000  # values in the document, each alias counted as all it repeats
MAX_INT = 1 << 63  # integers are within a signed 64-bit range

_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's parser if present


class InputError(Exception):
    """What is wrong with a document; ``line`` is 1-based, None when unknown."""

    def __init__(self, problem: str, line: int | None = None, hint: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.line = line
        self.hint = hint

    def where(self, name: str) -> str:
        """``NAME:LINE: problem`` (or ``NAME: problem``)."""
        return f"{name}:{self.line}: {self.problem}" if self.line else f"{name}: {self.problem}"


def _size_text(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_limited(path: Path, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, at most ``limit`` of them.

    A regular file's size is checked before it is read; a pipe or device (``/dev/stdin``,
    ``/dev/zero``) is read up to the limit. Opening never blocks (a FIFO without a writer
    reads as empty).

    Raises:
        OSError: the file cannot be opened or read (IsADirectoryError for a directory).
        InputError: the file is larger than ``limit``.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        too_big = InputError(
            f"the file is larger than the limit of {_size_text(limit)}"
            + (f" ({_size_text(st.st_size)})" if stat.S_ISREG(st.st_mode) else ""),
            hint="this is not a las file: check the path",
        )
        if stat.S_ISREG(st.st_mode) and st.st_size > limit:
            raise too_big
        os.set_blocking(fd, True)  # a pipe's writer may still be writing
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > limit:
            raise too_big
        return b"".join(chunks)
    finally:
        os.close(fd)


def _line_col(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)
# C0 controls (but tab, newline, carriage return), DEL, the C1 controls, and surrogates
# (only in a str made from undecodable bytes).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def decode_text(raw: bytes) -> str:
    """``raw`` as text: UTF-8 (a UTF-8 byte order mark is dropped), no control characters.

    Raises:
        InputError: another encoding, bytes that are not UTF-8, or a control character.
    """
    hint = "save the file as UTF-8 text"
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise InputError(f"the file is {encoding} text, not UTF-8", 1, hint)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        good = raw[: exc.start].decode("utf-8")
        line, col = _line_col(good, len(good))
        raise InputError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}, column {col}",
            line,
            hint,
        ) from None
    return check_text(text.removeprefix("\ufeff"))


def check_text(text: str) -> str:
    """``text`` itself if it holds no control character (but tab and line breaks).

    Raises:
        InputError: naming the first one and its line.
    """
    m = _CONTROL_RE.search(text)
    if m is None:
        return text
    ch = m.group()
    line, col = _line_col(text, m.start())
    if 0xD800 <= ord(ch) <= 0xDFFF:
        raise InputError(f"not UTF-8 text at line {line}, column {col}", line, "save as UTF-8")
    what = "a NUL byte" if ch == "\0" else f"the control character {ch!r}"
    raise InputError(
        f"contains {what} at line {line}, column {col}",
        line,
        "a las file is text; where a value needs such a character, write it as an escape in "
        'a double-quoted string ("\\t")',
    )


# --- YAML ------------------------------------------------------------------------------------


def _too_many(line: int | None) -> InputError:
    return InputError(
        f"more than {MAX_NODES} values (counting what each alias repeats)",
        line,
        "a manifest or policy is small; an alias that repeats a large part many times is "
        "refused (see docs/manifest.md, Limits)",
    )


def _too_deep(line: int | None) -> InputError:
    return InputError(
        f"nested more than {MAX_DEPTH} levels deep",
        line,
        "flatten the document (see docs/manifest.md, Limits)",
    )


class _Composer:
    """The node graph of one YAML document, composed from parser events within bounds.

    Every node counts once where it is written; an alias counts as every node of what it
    repeats, and adds that part's depth to its own. An alias inside the part it names (a
    recursive document) is refused.
    """

    def __init__(self, events: Iterator[Event]) -> None:
        self.events = events
        self.peeked: Any = None  # an Event (libyaml's marks are typed apart from PyYAML's)
        self.resolver: Any = Resolver()
        self.anchors: dict[str, Node] = {}
        self.sizes: dict[str, int] = {}  # anchor -> nodes it stands for
        self.heights: dict[str, int] = {}  # anchor -> its depth
        self.open: set[str] = set()  # anchors being composed
        self.count = 0
        self.depth = 0
        self.deepest = 0

    def peek(self) -> Any:
        if self.peeked is None:
            self.peeked = next(self.events)
        return self.peeked

    def next(self) -> Any:
        event = self.peek()
        self.peeked = None
        return event

    def document(self) -> Node | None:
        if isinstance(self.peek(), StreamStartEvent):
            self.next()
        if isinstance(self.peek(), StreamEndEvent):
            return None
        start = self.next()
        assert isinstance(start, DocumentStartEvent)
        root = self.node()
        end = self.next()
        assert isinstance(end, DocumentEndEvent)
        after = self.peek()
        if not isinstance(after, StreamEndEvent):
            raise InputError(
                "more than one YAML document (a second '---')",
                after.start_mark.line + 1,
                "a las file is one document: remove what follows the second '---'",
            )
        return root

    def _add(self, n: int, line: int) -> None:
        self.count += n
        if self.count > MAX_NODES:
            raise _too_many(line)

    def node(self) -> Node:
        event = self.next()
        line = event.start_mark.line + 1
        if isinstance(event, AliasEvent):
            anchor = event.anchor
            if anchor in self.open:
                raise InputError(
                    f"alias *{anchor} is inside the part it names (a recursive document)",
                    line,
                    "an alias may only repeat a part that is complete before it",
                )
            if anchor not in self.anchors:
                raise InputError(f"alias *{anchor} names no anchor before it", line)
            self._add(self.sizes[anchor], line)
            reach = self.depth + self.heights[anchor]
            if reach > MAX_DEPTH:
                raise _too_deep(line)
            self.deepest = max(self.deepest, reach)
            return self.anchors[anchor]
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            if anchor in self.anchors or anchor in self.open:
                raise InputError(f"anchor &{anchor} is defined twice", line)
            self.open.add(anchor)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _too_deep(line)
        start_count, outer_deepest = self.count, self.deepest
        self.deepest = self.depth
        self._add(1, line)
        node: Node
        tag = getattr(event, "tag", None)
        implicit = getattr(event, "implicit", None)
        mark: Any = event.start_mark  # libyaml's Mark or PyYAML's
        if isinstance(event, ScalarEvent):
            if tag is None or tag == "!":
                tag = self.resolver.resolve(ScalarNode, event.value, implicit)
            node = ScalarNode(tag, event.value, mark, cast(Any, event.end_mark), event.style)
        elif isinstance(event, SequenceStartEvent):
            if tag is None or tag == "!":
                tag = self.resolver.resolve(SequenceNode, None, implicit)
            items: list[Node] = []
            node = SequenceNode(tag, items, mark, None, event.flow_style)
            while not isinstance(self.peek(), SequenceEndEvent):
                items.append(self.node())
            node.end_mark = self.next().end_mark
        elif isinstance(event, MappingStartEvent):
            if tag is None or tag == "!":
                tag = self.resolver.resolve(MappingNode, None, implicit)
            pairs: list[tuple[Node, Node]] = []
            node = MappingNode(tag, pairs, mark, None, event.flow_style)
            while not isinstance(self.peek(), MappingEndEvent):
                key = self.node()
                pairs.append((key, self.node()))
            node.end_mark = self.next().end_mark
        else:  # the parser emits no other event here
            raise InputError(f"unexpected YAML event {type(event).__name__}", line)
        height = self.deepest - self.depth + 1
        self.deepest = max(outer_deepest, self.deepest)
        self.depth -= 1
        if anchor is not None:
            self.open.discard(anchor)
            self.anchors[anchor] = node
            self.sizes[anchor] = self.count - start_count
            self.heights[anchor] = height
        return node


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Constructor(SafeConstructor):
    """SafeConstructor whose value errors carry the node's line, with integers bounded."""

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:  # a month 13, an empty `!!int`...: a bad value, not a bug
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise ConstructorError(
                None, None, f"{_short(node.value)} is not a valid {kind}: {exc}", node.start_mark
            ) from None

    def construct_yaml_int(self, node: ScalarNode) -> int:
        text = str(node.value)
        if len(text) > 40:  # int() of thousands of digits is slow, and never a las value
            raise ValueError("a number of more than 40 characters")
        value = super().construct_yaml_int(node)
        if not -MAX_INT <= value < MAX_INT:
            raise ValueError("a number out of the 64-bit range")
        return value


cast(Any, _Constructor).add_constructor("tag:yaml.org,2002:int", _Constructor.construct_yaml_int)


def _yaml_problem(exc: yaml.YAMLError, what: str = "YAML syntax error") -> InputError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = str(getattr(exc, "problem", None) or str(exc).splitlines()[0])
    if "nesting depth" in problem:  # libyaml's own bound (1000 levels), rarely reached first
        return _too_deep(line)
    return InputError(f"{what}: {problem}", line, "fix the YAML")


def compose_yaml(text: str) -> Node | None:
    """The document's node graph (None for an empty document), within the bounds.

    Raises:
        InputError: bad YAML, or past a bound.
    """
    loader = _Loader(text)

    def events() -> Iterator[Event]:
        while True:
            yield loader.get_event()

    try:
        return _Composer(events()).document()
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc) from None
    finally:
        loader.dispose()


def construct_yaml(root: Node | None) -> Any:
    """The Python value of a node graph from ``compose_yaml``.

    Raises:
        InputError: a value that cannot be constructed (an unhashable key, a bad tag...).
    """
    if root is None:
        return None
    try:
        return _Constructor().construct_document(root)
    except yaml.YAMLError as exc:
        raise _yaml_problem(exc, "invalid YAML value") from None
    except RecursionError:  # not reached within MAX_DEPTH; kept as a clear error
        raise _too_deep(root.start_mark.line + 1) from None


def load_yaml(text: str) -> tuple[Any, Node | None]:
    """The value of a YAML document and its node graph (for line numbers).

    Raises:
        InputError: bad YAML, or past a bound.
    """
    root = compose_yaml(text)
    return construct_yaml(root), root


def nul_paths(data: Any) -> list[tuple[str | int, ...]]:
    """Where a string (a value or a key) holds a NUL: no process can take one (argv, env
    and paths are C strings), and no field of a las file has a use for it."""
    found: list[tuple[str | int, ...]] = []
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            if "\0" in value:
                found.append(path)
        elif isinstance(value, dict):
            for k, v in value.items():
                key = k if isinstance(k, str | int) else str(k)
                if isinstance(k, str) and "\0" in k:
                    found.append((*path, key))
                stack.append((v, (*path, key)))
        elif isinstance(value, list):
            stack += [(v, (*path, i)) for i, v in enumerate(value)]
    return sorted(found, key=str)


# --- JSON ------------------------------------------------------------------------------------


def load_json(text: str) -> Any:
    """The value of a JSON document, within the bounds.

    Raises:
        InputError: bad JSON, or past a bound.
    """
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", exc.lineno
        ) from None
    except RecursionError:
        raise _too_deep(None) from None
    except ValueError as exc:  # an integer of thousands of digits
        raise InputError(f"not valid JSON: {exc}") from None
    count = 0
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise _too_many(None)
        if depth > MAX_DEPTH:
            raise _too_deep(None)
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
    return data

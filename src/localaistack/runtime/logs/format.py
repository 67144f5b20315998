"""The records of a run's log file: the format's constants, the encoding and decoding of one
record, and the forward pass that finds a file's record boundaries.

The format is specified in docs/logs.md; this module and that page change together.
Standard library only: the supervisor imports it (through the writer) and must start fast.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from itertools import repeat
from typing import NamedTuple, cast

__all__ = [
    "BLOCK",
    "FILE_MODE",
    "FULL",
    "LAS",
    "MAX_LENGTH_DIGITS",
    "PARTIAL",
    "PREFIX_LEN",
    "STDERR",
    "STDOUT",
    "STREAM_NAMES",
    "TIMESTAMP_LEN",
    "Entry",
    "Record",
    "block_header",
    "body_records",
    "line_prefix",
    "parse_header",
    "parse_line",
    "pread",
    "rotated_path",
    "scan",
    "timestamp",
]

# --------------------------------------------------------------------------------------------
# constants (docs/logs.md, "Records")

TIMESTAMP_LEN = 27  # 2026-11-26T18:27:23.123456Z: UTC, microseconds, ASCII
PREFIX_LEN = TIMESTAMP_LEN + 5  # "<timestamp> <stream> <flag> ": where payload or length starts

STDOUT = "O"
STDERR = "E"
LAS = "L"  # las's own notes (line records only)
STREAM_NAMES: dict[str, str] = {STDOUT: "stdout", STDERR: "stderr", LAS: "las"}

FULL = "F"  # a line record holding a whole line
PARTIAL = "P"  # a line record holding a piece of a line
BLOCK = "B"  # a block record's header
MAX_LENGTH_DIGITS = 15  # a block header's length: at most this many ASCII digits

FILE_MODE = 0o600  # of every log file, live or rotated

_STREAM_BY_BYTE: dict[int, str] = {ord(STDOUT): STDOUT, ord(STDERR): STDERR, ord(LAS): LAS}
_BLOCK_STREAM_BY_BYTE: dict[int, str] = {ord(STDOUT): STDOUT, ord(STDERR): STDERR}
_FLAG_F = ord(FULL)
_FLAG_P = ord(PARTIAL)


def rotated_path(live: str, index: int) -> str:
    """The name of a run's file ``index`` (0: the live file, 1: the newest rotated one)."""
    return live if index == 0 else f"{live}.{index}"


class Record(NamedTuple):
    """One record as read: a line (or piece of one) with its time and stream.

    ``stream`` is ``STDOUT``, ``STDERR`` or ``LAS``; ``partial`` is true for a piece of a line
    (a ``P`` record, or text a file ends with inside a block); ``ts`` is ``""`` for a line no
    record starts with (returned whole as ``payload``, stream ``LAS``).
    """

    ts: str
    stream: str
    partial: bool
    payload: bytes


# Builds a Record from a 4-tuple without a Python-level call (reading speed).
_make_record = cast(
    "Callable[[tuple[str, str, bool, bytes]], Record]", functools.partial(tuple.__new__, Record)
)


# --------------------------------------------------------------------------------------------
# encoding


def timestamp() -> bytes:
    """The current time as a record's timestamp, e.g. ``2026-11-26T18:27:23.123456Z``."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode("ascii")
    return b"%s.%06dZ" % (head, ns // 1000)


def line_prefix(ts: bytes, stream: bytes, partial: bool = False) -> bytes:
    """What a line record's payload follows: ``<ts> <stream> <F|P> ``."""
    return b"%s %s %s " % (ts, stream, b"P" if partial else b"F")


def block_header(ts: bytes, stream: bytes, nbytes: int) -> bytes:
    """A block record's first line, ``<ts> <stream> B <nbytes>\\n``; ``nbytes`` of body follow."""
    return b"%s %s B %d\n" % (ts, stream, nbytes)


# --------------------------------------------------------------------------------------------
# decoding one record


def parse_line(line: bytes) -> Record:
    """The record a line (without its newline) that is not a block header stands for.

    A line record, or, for a line no record starts with, a raw record: ``ts=""``, stream
    ``LAS``, the whole line as payload.
    """
    if (
        len(line) >= PREFIX_LEN
        and line[26] == 0x5A  # Z
        and line[27] == 0x20
        and line[29] == 0x20
        and line[31] == 0x20
        and line[10] == 0x54  # T
    ):
        stream = _STREAM_BY_BYTE.get(line[28])
        flag = line[30]
        if stream is not None and flag in (_FLAG_F, _FLAG_P):
            try:
                ts = line[:TIMESTAMP_LEN].decode("ascii")
            except UnicodeDecodeError:
                pass
            else:
                return Record(ts, stream, flag == _FLAG_P, line[PREFIX_LEN:])
    return Record("", LAS, False, line)


def parse_header(line: bytes) -> tuple[str, str, int] | None:
    """``(ts, stream, nbytes)`` if ``line`` (without its newline) is a block header."""
    if (
        len(line) > PREFIX_LEN
        and line[29:32] == b" B "
        and line[26] == 0x5A  # Z
        and line[27] == 0x20
        and line[10] == 0x54  # T
    ):
        stream = _BLOCK_STREAM_BY_BYTE.get(line[28])
        digits = line[PREFIX_LEN:]
        if stream is not None and len(digits) <= MAX_LENGTH_DIGITS and digits.isdigit():
            try:
                ts = line[:TIMESTAMP_LEN].decode("ascii")
            except UnicodeDecodeError:
                return None
            return ts, stream, int(digits)
    return None


def body_records(ts: str, stream: str, body: bytes) -> list[Record]:
    """The records of (a run of complete lines of) a block's body, one per line.

    Text after the last newline (only where a file ends inside the block) is a partial record.
    """
    lines = body.split(b"\n")
    last = lines.pop()
    recs = list(map(_make_record, zip(repeat(ts), repeat(stream), repeat(False), lines)))
    if last:
        recs.append(Record(ts, stream, True, last))
    return recs


# --------------------------------------------------------------------------------------------
# a file's record boundaries

_SCAN_WINDOW = 4096
_SCAN_MAX_WINDOW = 1 << 20

# (start of the record, start of its lines, end of its lines, block ts or None, block stream)
Entry = tuple[int, int, int, str | None, str]
_Header = tuple[str, str, int]


def pread(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes of ``fd`` at ``offset`` (fewer only at the end of the file)."""
    if size <= 0:
        return b""
    data = os.pread(fd, size, offset)
    while len(data) < size:  # pread may return less than asked; stop at EOF
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _header_at(data: bytes, ls: int, start: int, stop: int) -> tuple[int, int, _Header] | None:
    """The block header whose line starts at ``ls``, if it does (and ``ls`` starts a line)."""
    if ls == start or (ls > start and data[ls - 1] == 0x0A):
        e = data.find(b"\n", ls, stop + 1)
        header = parse_header(data[ls:e])
        if header is not None:
            return ls, e, header
    return None


def _find_header(data: bytes, start: int, stop: int) -> tuple[int, int, _Header] | None:
    """The first block header line among the lines in ``data[start : stop + 1]``.

    ``start`` is the start of a line, ``data[stop]`` a newline.  Returns ``(line start, line
    end, (ts, stream, nbytes))``.  Looks for the ``B`` at offset 30 with ``memchr`` (a header is
    ``<ts> O B <n>``; line records have ``F`` or ``P`` there); where ``B`` is frequent in the
    text, for ``Z O B `` or ``Z E B `` (a regular expression) instead.
    """
    hits = 0
    i = data.find(b"B", start + 30, stop)
    while i >= 0:
        hits += 1
        if hits > 64:
            return _find_header_dense(data, i - 26 - 4, start, stop)
        if data[i - 4] == 0x5A and data[i - 1] == 0x20 and data[i + 1] == 0x20:
            found = _header_at(data, i - 30, start, stop)
            if found is not None:
                return found
        i = data.find(b"B", i + 1, stop)
    return None


def _find_header_dense(
    data: bytes, pos: int, start: int, stop: int
) -> tuple[int, int, _Header] | None:
    """``_find_header`` for text full of ``B``s, from line start ``pos`` on (or later)."""
    import re  # only here: the supervisor, which writes, rarely needs it

    hint = re.compile(rb"Z [OE] B ")  # (re caches the compiled pattern)
    m = hint.search(data, max(pos, start) + 26, stop)
    while m is not None:
        found = _header_at(data, m.start() - 26, start, stop)
        if found is not None:
            return found
        m = hint.search(data, m.start() + 1, stop)
    return None


def scan(fd: int, size: int) -> tuple[list[Entry], int]:
    """The structure of a file's first ``size`` bytes, by a forward pass over record heads.

    Returns ``(entries, frag)``: entries in file order, each a block (its body bytes; the body
    may reach past ``size`` if the file ends inside it) or a run of line records (complete
    lines); ``frag`` is where unterminated text at the end starts (``size`` if there is none).
    Block bodies are skipped, not read; runs of line records are searched for block headers at
    memory speed, not line by line.
    """
    entries: list[Entry] = []
    pos = seg = 0
    data = b""
    woff = 0
    win = _SCAN_WINDOW
    while pos < size:
        rel = pos - woff
        if rel < 0 or rel >= len(data):
            data = pread(fd, min(win, size - pos), pos)
            woff = pos
            rel = 0
            if not data:
                break  # the file shrank
        last = data.rfind(b"\n", rel)
        if last < 0:
            if woff + len(data) >= size:
                break  # unterminated text at the end
            if rel == 0:
                win = len(data) * 4  # a line longer than the window
            data = b""
            continue
        found = _find_header(data, rel, last)
        if found is None:
            pos = woff + last + 1
            win = min(win * 2, _SCAN_MAX_WINDOW)
            continue
        ls, e, header = found
        start = woff + ls
        if start > seg:
            entries.append((seg, seg, start, None, ""))
        body = woff + e + 1
        ts, stream, nbytes = header
        entries.append((start, body, body + nbytes, ts, stream))
        pos = seg = body + nbytes
        win = _SCAN_WINDOW
    end = min(pos, size)
    if seg < end:
        entries.append((seg, seg, end, None, ""))
    return entries, end

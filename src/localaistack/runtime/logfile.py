"""Per-run log capture: the stored form of a workload's stdout/stderr.

Standard library only: the supervisor imports this module and must start fast.

Files
-----
One live file per run (e.g. ``$LAS_HOME/logs/INSTANCE/RUN_ID.log``), created with mode 0600
and only ever opened in append mode.  Rotated files sit beside it: ``RUN_ID.log.1`` is the
newest rotated file, ``RUN_ID.log.N`` the oldest; ``keep`` rotated files are kept besides the
live one.  Rotation happens by size, at record boundaries only: before writing a record that
would make the live file exceed ``max_size`` the files are shifted (``.N-1`` -> ``.N`` ...
live -> ``.1``) and a fresh live file is opened.  A single record larger than ``max_size`` (a
block or a line record) is still written whole, to a fresh file; a block is never split
across files.

Records
-------
A file is a sequence of records, parsed strictly forward from its first byte: at each record
boundary the reader takes the bytes up to the next ``b"\n"`` (the record's first line) and
looks at fixed byte positions::

    <timestamp> <stream> <flag> <rest>

* ``timestamp`` (bytes 0-26): UTC, ISO-8601 with microseconds, e.g.
  ``2026-11-26T18:27:23.123456Z`` (always 27 ASCII characters; readers check ``T`` at byte 10
  and ``Z`` at byte 26).  One timestamp is taken per chunk received from the workload (per
  ``feed`` call), not per line: every line of a chunk carries the chunk's time.
* single spaces at bytes 27, 29 and 31.
* ``stream`` (byte 28): ``O`` (stdout), ``E`` (stderr) or ``L`` (las's own notes).
* ``flag`` (byte 30): ``B``, ``F`` or ``P``.
* ``rest``: from byte 32 to the newline.

**Block record**: a first line ``<timestamp> <O|E> B <nbytes>\n`` -- ``nbytes`` one or more
ASCII digits (at most 15) and nothing after them -- immediately followed by exactly
``nbytes`` raw bytes, the body, copied verbatim from the workload's stream.  The body
consists of complete lines only, each ending in ``b"\n"`` (its last byte is ``b"\n"``), none
longer than ``max_line`` bytes.  Each body line is one full line of that stream, with the
block's timestamp.  The next record starts right after the body.  Body lines are never
interpreted: a workload line that looks exactly like a block header or a line record is just
a line (which is why files can only be parsed forward).  Example, two lines of stdout::

    2026-11-26T18:27:23.123456Z O B 12\nhello\nworld\n

**Line record**: one line ``<timestamp> <O|E|L> <F|P> <payload>\n``.

* ``F``: a full line; ``payload`` is the line without its newline.
* ``P``: a partial line: a piece of a line longer than ``max_line`` bytes (every piece but the
  last is ``P``, the last is ``F``), or text at the end of a stream without a trailing newline.
* ``payload``: any bytes except ``b"\n"``.

The writer stores the complete lines of a chunk (a ``feed`` call, with the stream's buffered
incomplete line in front) as one block when they amount to at least 4 KiB and none is longer
than ``max_line``; otherwise as ``F`` (and ``P``) line records, so a slowly writing workload
produces line records.  las's notes are ``L F`` line records.  Readers accept either kind
anywhere, and files written before blocks existed (line records only).

Damage
------
A line a reader cannot parse where a record should start is returned as a raw record:
``Record(ts="", stream="L", partial=False, payload=<the whole line>)``.  A file that ends
inside a block (a torn block) yields the body lines that are present, the last one partial
if it lacks its newline; reading then goes on with the next file.  A writer whose write is
cut short (disk full) completes the cut record before writing anything else into that file,
so damage is only ever at the end of a file.  A writer that opens an existing live file
ending in an unterminated line first writes ``b"\\n"``; one ending inside a block (a writer
died in the middle of writing it) first rotates that file away (with ``keep=0``: deletes it).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import repeat
from pathlib import Path
from typing import NamedTuple, cast

__all__ = [
    "LogWriter",
    "Record",
    "follow_records",
    "format_record",
    "format_records",
    "iter_records",
    "tail_records",
]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_FILE_MODE = 0o600
_READ_BLOCK = 1 << 20
_SCAN_WINDOW = 4096
_BLOCK_MIN = 4096  # complete lines of a chunk amounting to less are stored as line records
_TS_LEN = 27
_HEADER_LEN = _TS_LEN + 5  # "<ts> O F "
_MAX_DIGITS = 15

_STREAM_CODES: dict[str, bytes] = {
    "O": b"O",
    "E": b"E",
    "stdout": b"O",
    "stderr": b"E",
}
_STREAM_BY_BYTE: dict[int, str] = {ord("O"): "O", ord("E"): "E", ord("L"): "L"}
_BLOCK_STREAM_BY_BYTE: dict[int, str] = {ord("O"): "O", ord("E"): "E"}
_STREAM_NAMES: dict[str, bytes] = {"O": b"stdout", "E": b"stderr", "L": b"las"}
_FLAG_F = ord("F")
_FLAG_P = ord("P")

_Buffer = bytes | bytearray | memoryview


class Record(NamedTuple):
    """One stored record.  ``stream`` is ``"O"``, ``"E"`` or ``"L"``."""

    ts: str
    stream: str
    partial: bool
    payload: bytes


# Builds a Record from a 4-tuple without a Python-level call (reading speed).
_make_record = cast(
    "Callable[[tuple[str, str, bool, bytes]], Record]", functools.partial(tuple.__new__, Record)
)


# --------------------------------------------------------------------------------------------
# timestamps


def _timestamp() -> bytes:
    """``2026-11-26T18:27:23.123456Z`` as bytes (taken once per write batch)."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode("ascii")
    return b"%s.%06dZ" % (head, ns // 1000)


# --------------------------------------------------------------------------------------------
# writing

_BLOB = 0  # complete line records in one bytes object; may be split between files at newlines
_BLOCK = 1  # a block record (header + body buffers); written whole
_NOTE = 2  # the "lines could not be written" note: a one-record blob


class _Item:
    """Something to write: a blob of line records or a block record."""

    __slots__ = ("bufs", "kind", "lines", "reported", "size", "src", "src_end", "src_off")

    def __init__(
        self,
        bufs: list[_Buffer],
        size: int,
        lines: int,
        kind: int,
        reported: int = 0,
        src: bytes = b"",
        src_end: int = 0,
        src_off: int = 0,
    ) -> None:
        self.bufs = bufs
        self.size = size
        # -1: not counted yet.  A block's lines are those of src[:src_end], which is written
        # from offset src_off of the item on (after the header and the pending text).
        self.lines = lines
        self.kind = kind
        self.reported = reported  # _NOTE: how many dropped lines it reports
        self.src = src
        self.src_end = src_end
        self.src_off = src_off

    def nlines(self) -> int:
        if self.lines < 0:
            self.lines = self.src.count(b"\n", 0, self.src_end)
        return self.lines

    def lines_in(self, n: int) -> int:
        """How many of a block's lines lie wholly in its first ``n`` bytes."""
        return self.src.count(b"\n", 0, min(max(n - self.src_off, 0), self.src_end))


def _advance(bufs: Sequence[_Buffer], n: int) -> list[_Buffer]:
    """``bufs`` without their first ``n`` bytes (as views, no copy)."""
    out: list[_Buffer] = []
    for b in bufs:
        size = len(b)
        if n >= size:
            n -= size
            continue
        out.append(memoryview(b)[n:] if n else b)
        n = 0
    return out


class LogWriter:
    """Writes a run's output as records to ``path``, rotating by size.

    ``feed`` accepts arbitrary chunks (as read from a pipe) per stream.  The complete lines of
    a chunk (with the stream's buffered incomplete line in front) are written with one
    ``os.writev`` as one block record (or, under 4 KiB, as line records); the text after the
    chunk's last newline is buffered until its newline arrives, until more than ``max_line``
    bytes accumulate (then it is cut into ``P`` records), or until ``flush_partial`` is called
    at the end of the stream.

    Write errors (``ENOSPC``, ``EDQUOT``, ``EIO``, any ``OSError``) never reach the caller and
    never block it: the lines that could not be written are counted in ``dropped_lines``, and
    the next successful write is preceded by an ``L`` note saying how many were lost.  A
    record cut short by a failed write is held (at most one) and completed before anything
    else is written to the file (so that the file stays parseable); the lines of it that did
    not make it are counted as dropped when it is cut, and stay counted even if it is
    completed later.

    ``written_lines`` counts the records written: one per line record (las's notes included)
    and one per block record, however many lines the block holds -- counting every line as it
    is written would cost as much as all the rest of ``feed``.

    The constructor creates the parent directory and opens (or creates, mode 0600) the live
    file in append mode; it raises ``OSError`` if that fails.  All methods are thread-safe.
    """

    def __init__(
        self, path: Path | str, *, max_size: int, keep: int, max_line: int = 1 << 20
    ) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, not {max_size}")
        if keep < 0:
            raise ValueError(f"keep must not be negative, not {keep}")
        if max_line <= 0:
            raise ValueError(f"max_line must be positive, not {max_line}")
        self.path = Path(path)
        self.max_size = max_size
        self.keep = keep
        self.max_line = max_line
        self.dropped_lines = 0
        self.written_lines = 0
        self._unreported = 0
        self._last_error = ""
        self._need_newline = False
        self._pending: dict[bytes, bytearray] = {}
        self._torn: list[_Buffer] | None = None  # the unwritten rest of a cut-short record
        self._torn_size = 0
        self._torn_records = 0  # records to count as written once it is complete
        self._lock = threading.Lock()
        self._closed = False
        self._fd = -1
        self._size = 0
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._open():
            self._rotate()

    # -- public API ---------------------------------------------------------------------

    def feed(self, stream: str, data: bytes) -> None:
        """Record a chunk of ``stream`` (``"O"``/``"stdout"`` or ``"E"``/``"stderr"``)."""
        code = _stream_code(stream)
        if not data:
            return
        # Keep rotation close to max_size: a chunk much larger than the file size limit is
        # recorded as several blocks, cut at line boundaries (never at the default size).
        limit = max(4096, self.max_size // 4)
        if len(data) > limit:
            pos = 0
            while len(data) - pos > limit:
                cut = data.rfind(b"\n", pos, pos + limit) + 1
                if cut <= pos:
                    break  # one very long line: the long-line rules below handle it
                self.feed(stream, data[pos:cut])
                pos = cut
            data = data[pos:]
        with self._lock:
            self._check_open()
            end = data.rfind(b"\n") + 1
            max_line = self.max_line
            if not end:
                buf = self._pending.get(code)
                if buf is None:
                    buf = self._pending[code] = bytearray(data)
                else:
                    buf += data
                if len(buf) > max_line:
                    ts = _timestamp()
                    self._emit(ts, [self._cut(ts, code, buf)])
                return
            pend = self._pending.pop(code, None)
            plen = len(pend) if pend else 0
            total = plen + end
            ts = _timestamp()
            items: list[_Item] = []
            if total > max_line + 1 and self._has_long_line(plen, data, end):
                complete = bytes(pend) + data[:end] if pend else data[:end]
                items.append(self._split_long(ts, code, complete))
            elif total < _BLOCK_MIN:
                complete = bytes(pend) + data[:end] if pend else data[:end]
                items.append(self._line_records(ts, code, complete))
            else:
                header = b"%s %s B %d\n" % (ts, code, total)
                body: _Buffer = data if end == len(data) else memoryview(data)[:end]
                bufs: list[_Buffer] = [header, pend, body] if pend else [header, body]
                src_off = len(header) + plen
                items.append(
                    _Item(bufs, src_off + end, -1, _BLOCK, src=data, src_end=end, src_off=src_off)
                )
            if end < len(data):
                rest = bytearray(memoryview(data)[end:])
                self._pending[code] = rest
                if len(rest) > max_line:
                    items.append(self._cut(ts, code, rest))
            self._emit(ts, items)

    def flush_partial(self, stream: str) -> None:
        """At the end of ``stream``: write its buffered incomplete line as a ``P`` record."""
        code = _stream_code(stream)
        with self._lock:
            self._check_open()
            self._flush_partial(code)

    def note(self, text: str) -> None:
        """Write las's own message as ``L`` record(s), one per line of ``text``."""
        data = text.encode("utf-8", "backslashreplace")
        if data.endswith(b"\n"):
            data = data[:-1]
        lines = data.split(b"\n")
        with self._lock:
            self._check_open()
            ts = _timestamp()
            prefix = ts + b" L F "
            blob = prefix + (b"\n" + prefix).join(lines) + b"\n"
            self._emit(ts, [_Item([blob], len(blob), len(lines), _BLOB)])

    def close(self) -> None:
        """Flush buffered partial lines, try to report pending drops, close the file."""
        with self._lock:
            if self._closed:
                return
            for code in list(self._pending):
                self._flush_partial(code)
            if self._unreported or self._torn is not None:
                self._emit(_timestamp(), [])
            self._torn = None
            self._closed = True
            if self._fd >= 0:
                fd, self._fd = self._fd, -1
                with contextlib.suppress(OSError):
                    os.close(fd)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> LogWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- building records ---------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"LogWriter for {self.path} is closed")

    def _has_long_line(self, plen: int, data: bytes, end: int) -> bool:
        """Whether a line of ``pending + data[:end]`` is longer than ``max_line``.

        Looks for the last newline in windows of ``max_line + 1`` bytes: one search per
        ``max_line`` bytes or so, not one per line.
        """
        max_line = self.max_line
        first = data.find(b"\n")
        if plen + first > max_line:
            return True
        pos = first + 1
        step = max_line + 1
        while pos < end:
            nl = data.rfind(b"\n", pos, min(pos + step, end))
            if nl < 0:
                return True
            pos = nl + 1
        return False

    @staticmethod
    def _line_records(ts: bytes, code: bytes, complete: bytes) -> _Item:
        prefix = ts + b" " + code + b" F "
        blob = prefix + complete[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
        return _Item([blob], len(blob), complete.count(b"\n"), _BLOB)

    def _split_long(self, ts: bytes, code: bytes, complete: bytes) -> _Item:
        """Line records for ``complete`` (ends in a newline), long lines cut into pieces."""
        fprefix = ts + b" " + code + b" F "
        pprefix = ts + b" " + code + b" P "
        max_line = self.max_line
        recs: list[bytes] = []
        parts = complete.split(b"\n")
        parts.pop()
        for line in parts:
            if len(line) <= max_line:
                recs.append(fprefix + line + b"\n")
                continue
            last = (len(line) - 1) // max_line * max_line
            recs.extend(pprefix + line[i : i + max_line] + b"\n" for i in range(0, last, max_line))
            recs.append(fprefix + line[last:] + b"\n")
        blob = b"".join(recs)
        return _Item([blob], len(blob), len(recs), _BLOB)

    def _cut(self, ts: bytes, code: bytes, buf: bytearray) -> _Item:
        """``P`` records for the front of an incomplete line longer than ``max_line``.

        Leaves the last 1..``max_line`` bytes in ``buf``.
        """
        max_line = self.max_line
        cut = (len(buf) - 1) // max_line * max_line
        pprefix = ts + b" " + code + b" P "
        blob = b"".join(pprefix + buf[i : i + max_line] + b"\n" for i in range(0, cut, max_line))
        del buf[:cut]
        return _Item([blob], len(blob), cut // max_line, _BLOB)

    def _flush_partial(self, code: bytes) -> None:
        rest = self._pending.pop(code, None)
        if rest:
            ts = _timestamp()
            blob = ts + b" " + code + b" P " + rest + b"\n"
            self._emit(ts, [_Item([blob], len(blob), 1, _BLOB)])

    def _drop_note(self, ts: bytes) -> bytes:
        n = self._unreported
        text = f"las: {n} line{'s' if n != 1 else ''} could not be written ({self._last_error})"
        return ts + b" L F " + text.encode("utf-8", "backslashreplace") + b"\n"

    # -- files --------------------------------------------------------------------------

    def _rotated_name(self, index: int) -> str:
        return f"{self.path}.{index}"

    def _open(self) -> bool:
        """Open the live file; True if it ends inside a block (it must be rotated away)."""
        fd = os.open(self.path, _OPEN_FLAGS, _FILE_MODE)
        try:
            size = os.fstat(fd).st_size
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = size
        self._need_newline = False
        if size > 0:
            # A previous writer may have died mid-record.
            try:
                state = _end_state(self.path, size)
            except OSError:
                state = ""
            if state == "block":
                return True
            self._need_newline = state == "line"
        return False

    def _rotate(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.keep == 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        else:
            top = 0
            while top < self.keep - 1 and os.path.lexists(self._rotated_name(top + 1)):
                top += 1
            for i in range(top, 0, -1):
                os.rename(self._rotated_name(i), self._rotated_name(i + 1))
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, self._rotated_name(1))
        if self._open():
            self._need_newline = True  # someone else's torn file appeared meanwhile

    # -- writing ------------------------------------------------------------------------

    def _fail(self, exc: OSError) -> None:
        self._last_error = exc.strerror or str(exc)

    def _write(self, bufs: Sequence[_Buffer], n: int) -> int:
        """Write ``n`` bytes from ``bufs`` to the live file; the bytes written (< n: failed)."""
        if self._need_newline:
            try:
                if os.write(self._fd, b"\n") != 1:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            except OSError as exc:
                self._fail(exc)
                return 0
            self._size += 1
            self._need_newline = False
        pos = 0
        while pos < n:
            try:
                w = os.writev(self._fd, _advance(bufs, pos) if pos else bufs)
            except OSError as exc:
                self._fail(exc)
                break
            if w <= 0:
                self._fail(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
                break
            pos += w
            self._size += w
        return pos

    def _finish_torn(self) -> bool:
        """Write the rest of the record cut short earlier; True when done."""
        assert self._torn is not None
        if self._fd < 0:  # cannot happen (no rotation while a record is torn); be safe
            self._torn = None
            return True
        w = self._write(self._torn, self._torn_size)
        if w == self._torn_size:
            self.written_lines += self._torn_records
            self._torn = None
            return True
        if w:
            self._torn = _advance(self._torn, w)
            self._torn_size -= w
        return False

    def _tear(self, rest: list[_Buffer], size: int) -> None:
        """Hold the unwritten rest of a record cut short, to complete it before all else.

        The lines whose newline did not make it are counted as dropped right away (the
        supervisor reports the count before it closes the writer); they stay counted even if
        the record is completed later.
        """
        self._torn = rest
        self._torn_size = size
        self._torn_records = 1

    def _lost(self, item: _Item, lines: int) -> None:
        if item.kind != _NOTE:  # the note itself is not a lost line; it is retried
            self.dropped_lines += lines
            self._unreported += lines

    def _emit(self, ts: bytes, items: list[_Item]) -> None:
        """Write ``items`` in order, rotating as needed; never raises."""
        if self._unreported:
            note = self._drop_note(ts)
            items.insert(0, _Item([note], len(note), 1, _NOTE, self._unreported))
        ok = self._torn is None or self._finish_torn()
        for item in items:
            if ok:
                ok = self._put(item)
            else:
                self._lost(item, item.nlines())

    def _put(self, item: _Item) -> bool:
        """Write one item; on failure do the accounting and return False."""
        if item.kind == _BLOCK:
            try:
                if self._fd < 0:
                    self._open()
                if item.size > self.max_size - self._size and self._size > 0:
                    self._rotate()
            except OSError as exc:
                self._fail(exc)
                self._lost(item, item.nlines())
                return False
            w = self._write(item.bufs, item.size)
            if w == item.size:
                self.written_lines += 1
                return True
            if w == 0:
                self._lost(item, item.nlines())
            else:
                self._tear(_advance(item.bufs, w), item.size - w)
                self._lost(item, item.nlines() - item.lines_in(w))
            return False
        blob = cast(bytes, item.bufs[0])
        n = item.size
        pos = 0
        while pos < n:
            end = n
            try:
                if self._fd < 0:
                    self._open()
                room = self.max_size - self._size
                if n - pos > room:
                    cut = blob.rfind(b"\n", pos, pos + room) + 1 if room > 0 else 0
                    if cut <= pos:
                        if self._size > 0:
                            self._rotate()
                            continue
                        cut = blob.find(b"\n", pos) + 1  # oversized record: whole, fresh file
                    end = cut
            except OSError as exc:
                self._fail(exc)
                break
            w = self._write(
                [blob if pos == 0 and end == n else memoryview(blob)[pos:end]], end - pos
            )
            pos += w
            if pos < end:
                break
        if pos == n:
            self.written_lines += item.lines
            if item.kind == _NOTE:
                self._unreported -= item.reported
            return True
        done = blob.count(b"\n", 0, pos)
        self.written_lines += done
        lost = item.lines - done
        if pos > 0 and blob[pos - 1] != 0x0A:  # a record cut short: complete it later
            rec_end = blob.find(b"\n", pos) + 1
            self._tear([memoryview(blob)[pos:rec_end]], rec_end - pos)
        if item.kind == _NOTE:
            if pos > 0:
                self._unreported -= item.reported  # written, or completed later
        else:
            self._lost(item, lost)
        return False


def _stream_code(stream: str) -> bytes:
    try:
        return _STREAM_CODES[stream]
    except KeyError:
        raise ValueError(f"unknown stream {stream!r}; use 'O'/'stdout' or 'E'/'stderr'") from None


# --------------------------------------------------------------------------------------------
# parsing and formatting


def _parse(line: bytes) -> Record:
    """A line where a record starts that is not a block header: a line record or raw."""
    if (
        len(line) >= _HEADER_LEN
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
                ts = line[:_TS_LEN].decode("ascii")
            except UnicodeDecodeError:
                pass
            else:
                return Record(ts, stream, flag == _FLAG_P, line[_HEADER_LEN:])
    return Record("", "L", False, line)


def _parse_header(line: bytes) -> tuple[str, str, int] | None:  # (ts, stream, nbytes)
    """``(ts, stream, nbytes)`` if ``line`` (without its newline) is a block header."""
    if (
        len(line) > _HEADER_LEN
        and line[29:32] == b" B "
        and line[26] == 0x5A  # Z
        and line[27] == 0x20
        and line[10] == 0x54  # T
    ):
        stream = _BLOCK_STREAM_BY_BYTE.get(line[28])
        digits = line[_HEADER_LEN:]
        if stream is not None and len(digits) <= _MAX_DIGITS and digits.isdigit():
            try:
                ts = line[:_TS_LEN].decode("ascii")
            except UnicodeDecodeError:
                return None
            return ts, stream, int(digits)
    return None


def _body_records(ts: str, stream: str, body: bytes) -> list[Record]:
    """The records of (a run of complete lines of) a block body.

    Text after the last newline (only in a damaged block) is a partial record.
    """
    lines = body.split(b"\n")
    last = lines.pop()
    recs = list(map(_make_record, zip(repeat(ts), repeat(stream), repeat(False), lines)))
    if last:
        recs.append(Record(ts, stream, True, last))
    return recs


def format_record(rec: Record, timestamps: bool) -> bytes:
    """The record as output.

    Without timestamps: the bytes the workload wrote -- ``payload + b"\\n"`` for a full
    line, the bare payload for a partial one, so that the pieces of a cut line reassemble
    exactly and text at EOF without a newline is reproduced as is.  (``format_records``
    additionally ends a partial line with a newline when a record of another stream follows.)

    With timestamps: one output line per record, ``<ts> <stdout|stderr|las> <payload>\\n``,
    partial records included (raw records use ``-`` as timestamp).
    """
    if timestamps:
        name = _STREAM_NAMES.get(rec.stream, b"las")
        return b"%s %s %s\n" % (rec.ts.encode("ascii") or b"-", name, rec.payload)
    return rec.payload if rec.partial else rec.payload + b"\n"


def format_records(records: Iterable[Record], timestamps: bool) -> Iterator[bytes]:
    """``format_record`` for a sequence of records, streaming.

    Without timestamps, a partial record continued by the next record of the same stream is
    output without a newline (the line reassembles exactly); if a record of another stream
    comes next, a newline is output first so the two do not run together.
    """
    open_stream: str | None = None
    for rec in records:
        out = format_record(rec, timestamps)
        if not timestamps:
            if open_stream is not None and open_stream != rec.stream:
                out = b"\n" + out
            open_stream = rec.stream if rec.partial else None
        yield out


class _Parser:
    """Forward parser of one file's bytes, fed in arbitrary chunks."""

    __slots__ = ("buf", "left", "stream", "ts")

    def __init__(self) -> None:
        self.buf = b""  # bytes not parsed yet (an incomplete line)
        self.left = 0  # body bytes of the current block not consumed yet
        self.ts = ""
        self.stream = "O"

    def feed(self, chunk: bytes) -> list[Record]:
        data = self.buf + chunk if self.buf else chunk
        n = len(data)
        pos = 0
        out: list[Record] = []
        while pos < n:
            left = self.left
            if left:
                end = pos + left
                if end <= n:  # the rest of the body is here
                    out.extend(_body_records(self.ts, self.stream, data[pos:end]))
                    self.left = 0
                    pos = end
                    continue
                nl = data.rfind(b"\n", pos)
                if nl < 0:
                    break
                out.extend(_body_records(self.ts, self.stream, data[pos : nl + 1]))
                self.left -= nl + 1 - pos
                pos = nl + 1
                break
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            line = data[pos:nl]
            pos = nl + 1
            header = _parse_header(line)
            if header is None:
                out.append(_parse(line))
            else:
                self.ts, self.stream, self.left = header
        self.buf = data[pos:] if pos < n else b""
        return out

    def finish(self) -> list[Record]:
        """At the end of the file: what is left (unterminated text, a torn block's end)."""
        buf, self.buf = self.buf, b""
        left, self.left = self.left, 0
        if not buf:
            return []
        if left:
            return [Record(self.ts, self.stream, True, buf)]
        return [_parse(buf)]


# --------------------------------------------------------------------------------------------
# reading: following a chain of files across rotations


class _Handle:
    __slots__ = ("dev", "fd", "hint", "ino")

    def __init__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.fd = fd
        self.dev = st.st_dev
        self.ino = st.st_ino
        self.hint = 0  # the index it was last seen at: files only move to higher indices

    def same(self, st: os.stat_result | None) -> bool:
        return st is not None and st.st_ino == self.ino and st.st_dev == self.dev

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _stat(name: str | Path) -> os.stat_result | None:
    try:
        return os.stat(name)
    except OSError:
        return None


def _open_read(name: str | Path) -> _Handle | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return _Handle(fd)
    except OSError:
        os.close(fd)
        return None


class _Chain:
    """Names of the live file and its rotated files; locates files by inode."""

    def __init__(self, path: Path | str) -> None:
        self.live = os.fspath(path)
        self.dir = os.path.dirname(self.live) or "."
        self.prefix = os.path.basename(self.live) + "."

    def name(self, index: int) -> str:
        return self.live if index == 0 else f"{self.live}.{index}"

    def rotated_indices(self) -> list[int]:
        try:
            names = os.listdir(self.dir)
        except OSError:
            return []
        plen = len(self.prefix)
        return sorted(
            int(n[plen:])
            for n in names
            if n.startswith(self.prefix)
            and n[plen:].isascii()
            and n[plen:].isdigit()
            and n[plen:] != "0"
        )

    def locate(self, h: _Handle) -> int | None:
        """Index of the name ``h`` is currently at (0 = live), or None.

        Looks where it was last seen and just above first (it moves one index per rotation),
        then scans all the rotated names oldest-ward.
        """
        for i in range(h.hint, h.hint + 3):
            if h.same(_stat(self.name(i))):
                h.hint = i
                return i
        if h.hint > 0 and h.same(_stat(self.live)):
            h.hint = 0
            return 0
        for i in self.rotated_indices():
            if h.same(_stat(self.name(i))):
                h.hint = i
                return i
        return None

    def neighbour(self, h: _Handle, delta: int) -> tuple[bool, _Handle | None]:
        """Open the file after (``delta=-1``) or before (``delta=+1``) ``h`` in the chain.

        Returns ``(found, handle)``: ``found`` is False when ``h`` is no longer in the chain
        (deleted); ``handle`` is None when there is no neighbour (yet).  Correct while the
        writer rotates concurrently: the adjacent name is opened and then ``h`` is verified
        to still be where it was.  Renames go oldest first (``.k`` -> ``.k+1`` before
        ``.k-1`` -> ``.k``), so a file can only have entered or left the adjacent name if
        ``h`` moved too.  A missing adjacent name is a rotation in progress (retried) or a
        file someone deleted (then the nearest existing one is taken).
        """
        misses = 0
        for _ in range(2000):
            try:
                if os.fstat(h.fd).st_nlink == 0:
                    return False, None
            except OSError:
                return False, None
            idx = self.locate(h)
            if idx is None:
                time.sleep(0.0005)
                continue
            target = idx + delta
            if target < 0:
                return True, None
            other = _open_read(self.name(target))
            if not h.same(_stat(self.name(idx))):
                if other is not None:
                    other.close()
                continue  # rotated meanwhile: look again
            if other is None and target > 0:
                indices = self.rotated_indices()
                if delta > 0:
                    older = [i for i in indices if i > idx]
                    if not older:
                        return True, None
                    nearest = min(older)
                else:
                    nearest = max((i for i in indices if i < idx), default=0)
                misses += 1
                if misses < 20:
                    time.sleep(0.0005)
                    continue
                target = nearest
                other = _open_read(self.name(target))
                if other is None:
                    continue
            if other is not None:
                other.hint = target
            return True, other
        return False, None

    def open_oldest(self) -> _Handle | None:
        """Open the oldest file of the chain (None if there is none).

        Checks afterwards that no older file exists: had the writer rotated between listing
        the names and opening one, the file opened could be the second oldest.
        """
        h: _Handle | None = None
        for _ in range(1000):
            for i in [*reversed(self.rotated_indices()), 0]:
                h = _open_read(self.name(i))
                if h is not None:
                    h.hint = i
                    break
            if h is None:
                return None
            idx = self.locate(h)
            if idx is not None and idx >= max(self.rotated_indices(), default=0):
                return h
            h.close()  # rotated meanwhile (or deleted): look again
            h = None
        return _open_read(self.live)


def _read_records(h: _Handle, parser: _Parser) -> tuple[list[Record], bool]:
    """Read what is there and parse it: (records, got_data)."""
    out: list[Record] = []
    got = False
    while True:
        try:
            chunk = os.read(h.fd, _READ_BLOCK)
        except OSError:
            chunk = b""
        if not chunk:
            return out, got
        got = True
        out.extend(parser.feed(chunk))
        if len(out) >= 4096:
            return out, got


def _pread(fd: int, size: int, offset: int) -> bytes:
    if size <= 0:
        return b""
    data = os.pread(fd, size, offset)
    while len(data) < size:  # pread may return less than asked; stop at EOF
        more = os.pread(fd, size - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


# (start of the record, start of its lines, end of its lines, block ts or None, block stream)
_Entry = tuple[int, int, int, str | None, str]


_Header = tuple[str, str, int]


def _header_at(data: bytes, ls: int, start: int, stop: int) -> tuple[int, int, _Header] | None:
    """The block header whose line starts at ``ls``, if it does (and ``ls`` starts a line)."""
    if ls == start or (ls > start and data[ls - 1] == 0x0A):
        e = data.find(b"\n", ls, stop + 1)
        header = _parse_header(data[ls:e])
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
    import re  # only here: the supervisor, which writes, does not need it

    hint = re.compile(rb"Z [OE] B ")  # (re caches the compiled pattern)
    m = hint.search(data, max(pos, start) + 26, stop)
    while m is not None:
        found = _header_at(data, m.start() - 26, start, stop)
        if found is not None:
            return found
        m = hint.search(data, m.start() + 1, stop)
    return None


def _scan(fd: int, size: int) -> tuple[list[_Entry], int]:
    """The structure of a file's first ``size`` bytes, by a forward pass over record heads.

    Returns ``(entries, frag)``: entries in file order, each a block (its body bytes; the body
    may reach past ``size`` if the file ends inside it) or a run of line records (complete
    lines); ``frag`` is where unterminated text at the end starts (``size`` if there is none).
    Block bodies are skipped, not read; runs of line records are searched for block headers at
    memory speed, not line by line.
    """
    entries: list[_Entry] = []
    pos = seg = 0
    data = b""
    woff = 0
    win = _SCAN_WINDOW
    while pos < size:
        rel = pos - woff
        if rel < 0 or rel >= len(data):
            data = _pread(fd, min(win, size - pos), pos)
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
            win = min(win * 2, _READ_BLOCK)
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


def _end_state(path: Path, size: int) -> str:
    """How a file's first ``size`` bytes end: ``""`` (at a record boundary), ``"line"``
    (inside a line) or ``"block"`` (inside a block or its header line)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        entries, frag = _scan(fd, size)
        if entries and entries[-1][2] > size:
            return "block"
        if frag < size:
            if _parse_header(_pread(fd, size - frag, frag)) is not None:
                return "block"
            return "line"
        return ""
    finally:
        os.close(fd)


def _lines_backward(fd: int, start: int, end: int) -> Iterator[bytes]:
    """The file's ``[start, end)`` split at newlines, last piece first.

    The first item is the (possibly empty) text after the last newline; after it come the
    complete lines, newest first (``start`` must be at the start of a line).
    """
    pos = end
    carry = b""
    frag_done = False
    while pos > start:
        size = min(_READ_BLOCK, pos - start)
        pos -= size
        parts = (_pread(fd, size, pos) + carry).split(b"\n")
        carry = parts[0]
        if len(parts) > 1:
            if not frag_done:
                frag_done = True
                yield parts.pop()
            yield from reversed(parts[1:])
    yield carry


def _file_tail(fd: int, size: int, need: int, include_fragment: bool) -> tuple[list[Record], int]:
    """Up to ``need`` last records of a file's first ``size`` bytes, newest first.

    Also returns the offset where a reader continuing after them starts: the end, or, without
    ``include_fragment``, the start of unterminated text or of a block not complete yet
    (those are then left out of the records).
    """
    entries, frag = _scan(fd, size)
    boundary = frag
    if entries and entries[-1][2] > size:
        boundary = entries[-1][0]
    out: list[Record] = []
    if frag < size and include_fragment and need > 0:
        text = _pread(fd, size - frag, frag)
        if text:
            out.append(_parse(text))
    for _, start, end, ts, stream in reversed(entries):
        if len(out) >= need:
            break
        if end > size and not include_fragment:
            continue  # the file ends inside this block: left to the reader continuing
        it = _lines_backward(fd, start, min(end, size))
        last = next(it)
        if ts is None:
            for line in it:
                if len(out) >= need:
                    break
                out.append(_parse(line))
            continue
        if last:
            out.append(Record(ts, stream, True, last))
        for line in it:
            if len(out) >= need:
                break
            out.append(Record(ts, stream, False, line))
    return out[:need], boundary


def _tail(chain: _Chain, n: int, include_fragment: bool) -> tuple[list[Record], _Handle | None]:
    """The last ``n`` records, and the live file positioned right after them."""
    live = _open_read(chain.live)
    for _ in range(100):  # the live file is missing for a moment during a rotation
        if live is not None or not chain.rotated_indices():
            break
        time.sleep(0.001)
        live = _open_read(chain.live)
    if live is None:
        newest = chain.rotated_indices()[:1]
        live = _open_read(chain.name(newest[0])) if newest else None
        if live is None:
            return [], None
        live.hint = newest[0]
    records: list[Record] = []
    try:
        recs, boundary = _file_tail(live.fd, os.fstat(live.fd).st_size, n, include_fragment)
        records.extend(recs)
        os.lseek(live.fd, boundary, os.SEEK_SET)
        cur = live
        held: list[_Handle] = []
        while len(records) < n:
            found, prev = chain.neighbour(cur, +1)
            if not found or prev is None:
                break
            held.append(prev)
            cur = prev
            recs, _ = _file_tail(prev.fd, os.fstat(prev.fd).st_size, n - len(records), True)
            records.extend(recs)
        for x in held:
            x.close()
    except OSError:
        pass
    records.reverse()
    return records, live


def follow_records(
    path: Path | str,
    *,
    stop: Callable[[], bool],
    poll: float = 0.1,
    start_at_end: bool = False,
    tail: int | None = None,
) -> Iterator[Record]:
    """Yield the records of ``path`` and its rotated files, then new ones as they come.

    Starts with every existing record, oldest first (rotated ``.N`` ... ``.1``, then live);
    with ``tail`` only the last ``tail`` ones (``tail`` wins over ``start_at_end``); with
    ``start_at_end`` (or ``tail=0``) none.  When starting from a tail or the end, the live file
    is read from the last record boundary, so a record being written is not cut.
    Follows the live file across rotations: a file that was rotated away is read to its end
    before moving on to its successor, so nothing is lost or repeated (unless the follower
    falls so far behind that files are deleted before it reads them).  A block whose body is
    not all there yet is waited for while its file is the live one (its complete lines are
    yielded as they come); in a file that was rotated away, or once ``stop()`` is true, what
    is there is yielded.  Waits for the file to appear if it does not exist yet.  ``stop()``
    is consulted only after a read of the live file returned nothing; when it returns True the
    generator ends.  Sleeps ``poll`` seconds between empty reads.
    """
    chain = _Chain(path)
    cur: _Handle | None = None
    parser = _Parser()
    try:
        while cur is None:
            if tail is not None or start_at_end:
                initial, cur = _tail(chain, max(tail or 0, 0), include_fragment=False)
                yield from initial
            else:
                cur = chain.open_oldest()
            if cur is None:
                if stop():
                    return
                time.sleep(poll)
        while True:
            recs, got = _read_records(cur, parser)
            if got:
                yield from recs
                continue
            if cur.same(_stat(chain.live)):
                if stop():
                    yield from parser.finish()
                    return
                time.sleep(poll)
                continue
            # cur is no longer the live file: the writer is done with it.  Drain it, then
            # move on to its successor.
            while True:
                recs, got = _read_records(cur, parser)
                yield from recs
                if not got:
                    break
            found, nxt = chain.neighbour(cur, -1)
            if found and nxt is None:
                # Successor not there yet (mid-rotation, or the live file was removed).
                if stop():
                    yield from parser.finish()
                    return
                time.sleep(poll)
                continue
            if not found:
                nxt = chain.open_oldest()  # fell behind: files were deleted unread
                if nxt is None or nxt.same(os.fstat(cur.fd)):
                    if nxt is not None:
                        nxt.close()
                    if stop():
                        yield from parser.finish()
                        return
                    time.sleep(poll)
                    continue
            assert nxt is not None
            yield from parser.finish()  # the old file ended in unterminated text / torn block
            cur.close()
            cur = nxt
    finally:
        if cur is not None:
            cur.close()


def iter_records(path: Path | str, *, include_rotated: bool = True) -> Iterator[Record]:
    """Yield the stored records, oldest first: rotated ``.N`` ... ``.1``, then the live file.

    A snapshot: ends at the current end of the live file.  Yields nothing if no file exists.
    Unterminated text at the end of a file is yielded as a record (parsed, or raw); a block
    the file ends inside of yields the lines that are there.
    """
    if include_rotated:
        return follow_records(path, stop=lambda: True, poll=0.0)
    return _iter_file(path)


def _iter_file(path: Path | str) -> Iterator[Record]:
    h = _open_read(path)
    if h is None:
        return
    try:
        parser = _Parser()
        while True:
            recs, got = _read_records(h, parser)
            yield from recs
            if not got:
                break
        yield from parser.finish()
    finally:
        h.close()


def tail_records(path: Path | str, n: int) -> list[Record]:
    """The last ``n`` records across the live and rotated files, oldest first.

    Finds the record boundaries with a forward pass over the record heads of the live file
    (block bodies are skipped, not read), then reads only the records needed, backwards; then
    ``.1``, ``.2``... only as far as needed.  Unterminated text at the end of the live file
    counts as a record; so do the lines of a block it ends inside of.
    """
    if n <= 0:
        return []
    records, h = _tail(_Chain(path), n, include_fragment=True)
    if h is not None:
        h.close()
    return records

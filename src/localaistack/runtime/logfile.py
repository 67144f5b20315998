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
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NamedTuple, cast

if TYPE_CHECKING:  # pathlib costs the long-lived supervisor memory: str paths at run time
    from pathlib import Path

__all__ = ["LogWriter", "Record"]

_READERS = ("follow_records", "format_record", "format_records", "iter_records", "tail_records")


def __getattr__(name: str) -> object:
    """The readers live in logread (the supervisor does not load them); reachable here too."""
    if name in _READERS:
        from localaistack.runtime import logread

        return getattr(logread, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
_LAS = 3  # las's own notes: a blob whose records are not the workload's lines


class _Item:
    """Something to write: a blob of line records or a block record."""

    __slots__ = (
        "bufs", "code", "flags", "kind", "lines", "reported", "size", "src", "src_end", "src_off"
    )  # fmt: skip

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
        code: bytes = b"",
        flags: bytes | None = None,
    ) -> None:
        self.bufs = bufs
        # The workload's stream, and for a blob of pieces of long lines one flag per record:
        # F ends a line of the workload, P is a piece of one (None: each record is a line).
        self.code = code
        self.flags = flags
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

    def lost_from(self, k: int) -> int:
        """How many of the workload's lines end in records ``k``... of a blob."""
        if self.kind in (_NOTE, _LAS):
            return 0
        if self.flags is None:
            return self.lines - k
        return self.flags.count(b"F", k)

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
    else is written to the file (so that the file stays parseable).  ``dropped_lines`` is
    exact: each line the workload wrote that is not in the log counts once (a line longer
    than ``max_line`` once, however many of its pieces were lost; las's own notes never);
    the lines of a record cut short count until it is completed (``settle``, ``close``).

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
        self.path = os.fspath(path)
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
        self._torn_lines = 0  # the workload's lines in it: counted dropped until completed
        self._damaged: set[bytes] = set()  # streams whose current long line lost a piece
        self._lock = threading.Lock()
        self._closed = False
        self._fd = -1
        self._size = 0
        os.makedirs(os.path.dirname(self.path) or ".", mode=0o700, exist_ok=True)
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
                    _Item(
                        bufs,
                        src_off + end,
                        -1,
                        _BLOCK,
                        src=data,
                        src_end=end,
                        src_off=src_off,
                        code=code,
                    )
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
            self._emit(ts, [_Item([blob], len(blob), len(lines), _LAS)])

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
        return _Item([blob], len(blob), complete.count(b"\n"), _BLOB, code=code)

    def _split_long(self, ts: bytes, code: bytes, complete: bytes) -> _Item:
        """Line records for ``complete`` (ends in a newline), long lines cut into pieces."""
        fprefix = ts + b" " + code + b" F "
        pprefix = ts + b" " + code + b" P "
        max_line = self.max_line
        recs: list[bytes] = []
        flags = bytearray()
        parts = complete.split(b"\n")
        parts.pop()
        for line in parts:
            if len(line) <= max_line:
                recs.append(fprefix + line + b"\n")
                flags += b"F"
                continue
            last = (len(line) - 1) // max_line * max_line
            recs.extend(pprefix + line[i : i + max_line] + b"\n" for i in range(0, last, max_line))
            recs.append(fprefix + line[last:] + b"\n")
            flags += b"P" * (last // max_line) + b"F"
        blob = b"".join(recs)
        return _Item([blob], len(blob), len(recs), _BLOB, code=code, flags=bytes(flags))

    def _cut(self, ts: bytes, code: bytes, buf: bytearray) -> _Item:
        """``P`` records for the front of an incomplete line longer than ``max_line``.

        Leaves the last 1..``max_line`` bytes in ``buf``.
        """
        max_line = self.max_line
        cut = (len(buf) - 1) // max_line * max_line
        pprefix = ts + b" " + code + b" P "
        blob = b"".join(pprefix + buf[i : i + max_line] + b"\n" for i in range(0, cut, max_line))
        del buf[:cut]
        n = cut // max_line
        return _Item([blob], len(blob), n, _BLOB, code=code, flags=b"P" * n)

    def _flush_partial(self, code: bytes) -> None:
        rest = self._pending.pop(code, None)
        if rest:
            ts = _timestamp()
            blob = ts + b" " + code + b" P " + rest + b"\n"
            self._emit(ts, [_Item([blob], len(blob), 1, _BLOB, code=code)])

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
                from localaistack.runtime.logread import _end_state  # rare: reopening

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
            # Its lines reached the log after all: no longer dropped, nor to be reported
            # (nothing else is written while a record is torn, so no note counted them).
            self.dropped_lines -= self._torn_lines
            self._unreported -= self._torn_lines
            self._torn_lines = 0
            return True
        if w:
            self._torn = _advance(self._torn, w)
            self._torn_size -= w
        return False

    def _tear(self, rest: list[_Buffer], size: int, lines: int) -> None:
        """Hold the unwritten rest of a record cut short, to complete it before all else.

        Its ``lines`` (the workload's lines that lack their end in the file) are counted
        as dropped at once, the supervisor reads the count when the workload has ended;
        they are taken off again when the record is completed (``_finish_torn``), so that
        each line the workload wrote is counted once, and only if it is not in the log.
        """
        self._torn = rest
        self._torn_size = size
        self._torn_records = 1
        self._torn_lines = lines

    def _lost(self, item: _Item, lines: int) -> None:
        if item.kind not in (_NOTE, _LAS):  # las's own lines are not the workload's
            self.dropped_lines += lines
            self._unreported += lines

    def settle(self) -> None:
        """Complete a record cut short, if the file takes it now (and report drops).

        After it, ``dropped_lines`` counts the workload's lines that are not in the log,
        each once: the supervisor calls it before it records the count.
        """
        with self._lock:
            if not self._closed and (self._torn is not None or self._unreported):
                self._emit(_timestamp(), [])

    def _emit(self, ts: bytes, items: list[_Item]) -> None:
        """Write ``items`` in order, rotating as needed; never raises."""
        ok = self._torn is None or self._finish_torn()
        if ok and self._unreported:
            note = self._drop_note(ts)
            items.insert(0, _Item([note], len(note), 1, _NOTE, self._unreported))
        for item in items:
            if ok:
                ok = self._put(item)
            else:
                self._lost_whole(item)

    def _lost_whole(self, item: _Item) -> None:
        """An item not written at all: its lines are dropped (a long line's once)."""
        if item.kind in (_NOTE, _LAS):
            return
        lines = item.nlines() if item.kind == _BLOCK else item.lost_from(0)
        damaged = item.code in self._damaged
        if item.flags is not None and item.flags.endswith(b"P"):  # the line goes on later
            if not damaged:
                self._damaged.add(item.code)
                lines += 1  # counted now, once: whatever of it is written later
        elif damaged:
            self._damaged.discard(item.code)
            lines -= 1  # its first line is the damaged one, counted already
        self._lost(item, lines)

    def _ended_line(self, item: _Item, first_written: bool) -> None:
        """After ``item`` was (partly) written: settle the stream's damaged long line."""
        if item.kind in (_NOTE, _LAS) or item.code not in self._damaged:
            return
        if item.flags is not None and item.flags.endswith(b"P"):
            return  # more pieces of the same line: it stays damaged, counted once
        self._damaged.discard(item.code)
        if not first_written:
            self.dropped_lines -= 1  # counted as lost with this item: counted already
            self._unreported -= 1

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
                self._lost_whole(item)
                return False
            w = self._write(item.bufs, item.size)
            if w == item.size:
                self.written_lines += 1
                self._ended_line(item, True)
                return True
            if w == 0:
                self._lost_whole(item)
            else:
                lost = item.nlines() - item.lines_in(w)
                self._tear(_advance(item.bufs, w), item.size - w, lost)
                self._lost(item, lost)
                self._ended_line(item, item.lines_in(w) > 0)
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
            self._ended_line(item, True)
            return True
        if pos == 0:
            self._lost_whole(item)
            return False
        done = blob.count(b"\n", 0, pos)
        self.written_lines += done
        lost = item.lost_from(done)
        if blob[pos - 1] != 0x0A:  # a record cut short: complete it later
            rec_end = blob.find(b"\n", pos) + 1
            torn = item.lost_from(done) - item.lost_from(done + 1)
            self._tear([memoryview(blob)[pos:rec_end]], rec_end - pos, torn)
        if item.kind == _NOTE:
            self._unreported -= item.reported  # written, or completed later
        else:
            long_goes_on = item.flags is not None and item.flags.endswith(b"P")
            if long_goes_on and item.code not in self._damaged:
                self._damaged.add(item.code)
                lost += 1  # the long line goes on in a later item: counted once, now
            self._lost(item, lost)
            self._ended_line(item, done > 0)
        return False


def _stream_code(stream: str) -> bytes:
    try:
        return _STREAM_CODES[stream]
    except KeyError:
        raise ValueError(f"unknown stream {stream!r}; use 'O'/'stdout' or 'E'/'stderr'") from None

"""Writing a run's log: ``LogWriter``, used by the supervisor for its workload's output.

What it writes (records, rotation, notes) and what it guarantees (no line lost or split
unless the disk refuses it, exact counts of dropped lines) are in docs/logs.md.
Standard library only: the supervisor imports this module and must start fast.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

from localaistack.runtime.logs.format import (
    FILE_MODE,
    LAS,
    STDERR,
    STDOUT,
    block_header,
    line_prefix,
    parse_header,
    pread,
    rotated_path,
    scan,
    timestamp,
)

if TYPE_CHECKING:  # pathlib costs the long-lived supervisor memory: str paths at run time
    from pathlib import Path

__all__ = ["LogWriter"]

_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
_BLOCK_MIN = 4096  # complete lines of a chunk amounting to less are stored as line records

_STREAM_CODES: dict[str, bytes] = {
    STDOUT: STDOUT.encode(),
    STDERR: STDERR.encode(),
    "stdout": STDOUT.encode(),
    "stderr": STDERR.encode(),
}
_LAS = LAS.encode()

_Buffer = bytes | bytearray | memoryview


# --------------------------------------------------------------------------------------------
# writing

_BLOB = 0  # complete line records in one bytes object; may be split between files at newlines
_BLOCK = 1  # a block record (header + body buffers); written whole
_NOTE = 2  # the "lines could not be written" note: a one-record blob
_NOTES = 3  # las's own notes: a blob whose records are not the workload's lines


class _Item:
    """Something to write: a blob of line records or a block record."""

    __slots__ = (
        "bufs",
        "code",
        "flags",
        "kind",
        "lines",
        "reported",
        "size",
        "src",
        "src_end",
        "src_off",
    )

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
        if self.kind in (_NOTE, _NOTES):
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
    """Writes a run's output as records to ``path``, rotating by size (docs/logs.md).

    ``feed`` accepts arbitrary chunks (as read from a pipe) per stream: the complete lines of
    a chunk, with the stream's buffered incomplete line in front, are written with one
    ``os.writev``; the text after the chunk's last newline waits for its newline, for more
    than ``max_line`` bytes (then it is cut into pieces), or for ``flush_partial``.

    Write errors (any ``OSError``: ``ENOSPC``, ``EDQUOT``, ``EIO``...) never reach the caller
    and never block it.  ``dropped_lines`` counts the workload's lines that are not in the
    log, each once; it is exact after ``settle`` or ``close``.  ``written_lines`` counts the
    records written (a block once, however many lines it holds).

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
                    ts = timestamp()
                    self._emit(ts, [self._cut(ts, code, buf)])
                return
            pend = self._pending.pop(code, None)
            plen = len(pend) if pend else 0
            total = plen + end
            ts = timestamp()
            items: list[_Item] = []
            if total > max_line + 1 and self._has_long_line(plen, data, end):
                complete = bytes(pend) + data[:end] if pend else data[:end]
                items.append(self._split_long(ts, code, complete))
            elif total < _BLOCK_MIN:
                complete = bytes(pend) + data[:end] if pend else data[:end]
                items.append(self._line_records(ts, code, complete))
            else:
                header = block_header(ts, code, total)
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
            ts = timestamp()
            prefix = line_prefix(ts, _LAS)
            blob = prefix + (b"\n" + prefix).join(lines) + b"\n"
            self._emit(ts, [_Item([blob], len(blob), len(lines), _NOTES)])

    def close(self) -> None:
        """Flush buffered partial lines, try to report pending drops, close the file."""
        with self._lock:
            if self._closed:
                return
            for code in list(self._pending):
                self._flush_partial(code)
            if self._unreported or self._torn is not None:
                self._emit(timestamp(), [])
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
        prefix = line_prefix(ts, code)
        blob = prefix + complete[:-1].replace(b"\n", b"\n" + prefix) + b"\n"
        return _Item([blob], len(blob), complete.count(b"\n"), _BLOB, code=code)

    def _split_long(self, ts: bytes, code: bytes, complete: bytes) -> _Item:
        """Line records for ``complete`` (ends in a newline), long lines cut into pieces."""
        fprefix = line_prefix(ts, code)
        pprefix = line_prefix(ts, code, partial=True)
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
        pprefix = line_prefix(ts, code, partial=True)
        blob = b"".join(pprefix + buf[i : i + max_line] + b"\n" for i in range(0, cut, max_line))
        del buf[:cut]
        n = cut // max_line
        return _Item([blob], len(blob), n, _BLOB, code=code, flags=b"P" * n)

    def _flush_partial(self, code: bytes) -> None:
        rest = self._pending.pop(code, None)
        if rest:
            ts = timestamp()
            blob = line_prefix(ts, code, partial=True) + rest + b"\n"
            self._emit(ts, [_Item([blob], len(blob), 1, _BLOB, code=code)])

    def _drop_note(self, ts: bytes) -> bytes:
        n = self._unreported
        text = f"las: {n} line{'s' if n != 1 else ''} could not be written ({self._last_error})"
        return line_prefix(ts, _LAS) + text.encode("utf-8", "backslashreplace") + b"\n"

    # -- files --------------------------------------------------------------------------

    def _open(self) -> bool:
        """Open the live file; True if it ends inside a block (it must be rotated away)."""
        fd = os.open(self.path, _OPEN_FLAGS, FILE_MODE)
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
            while top < self.keep - 1 and os.path.lexists(rotated_path(self.path, top + 1)):
                top += 1
            for i in range(top, 0, -1):
                os.rename(rotated_path(self.path, i), rotated_path(self.path, i + 1))
            with contextlib.suppress(FileNotFoundError):
                os.rename(self.path, rotated_path(self.path, 1))
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
        if item.kind not in (_NOTE, _NOTES):  # las's own lines are not the workload's
            self.dropped_lines += lines
            self._unreported += lines

    def settle(self) -> None:
        """Complete a record cut short, if the file takes it now (and report drops).

        After it, ``dropped_lines`` counts the workload's lines that are not in the log,
        each once: the supervisor calls it before it records the count.
        """
        with self._lock:
            if not self._closed and (self._torn is not None or self._unreported):
                self._emit(timestamp(), [])

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
        if item.kind in (_NOTE, _NOTES):
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
        if item.kind in (_NOTE, _NOTES) or item.code not in self._damaged:
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


def _end_state(path: str, size: int) -> str:
    """How a file's first ``size`` bytes end: ``""`` (at a record boundary), ``"line"``
    (inside a line) or ``"block"`` (inside a block or its header line)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        entries, frag = scan(fd, size)
        if entries and entries[-1][2] > size:
            return "block"
        if frag < size:
            if parse_header(pread(fd, size - frag, frag)) is not None:
                return "block"
            return "line"
        return ""
    finally:
        os.close(fd)

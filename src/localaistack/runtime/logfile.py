"""Per-run log capture: the stored form of a workload's stdout/stderr.

Standard library only: the supervisor imports this module and must start fast.

Stored form
-----------
One live file per run (e.g. ``$LAS_HOME/logs/INSTANCE/RUN_ID.log``), created with mode 0600
and only ever opened in append mode.  Rotated files sit beside it: ``RUN_ID.log.1`` is the
newest rotated file, ``RUN_ID.log.N`` the oldest; ``keep`` rotated files are kept besides the
live one.  Rotation happens by size, at record boundaries only: before writing a record that
would make the live file exceed ``max_size`` the files are shifted (``.N-1`` -> ``.N`` ...
live -> ``.1``) and a fresh live file is opened.  A single record larger than ``max_size`` is
still written whole, to a fresh file.

Every record is one line::

    <timestamp> <stream> <flag> <payload>\\n

* ``timestamp``: UTC, ISO-8601 with microseconds, e.g. ``2026-11-26T18:27:23.123456Z``
  (always 27 characters).  One timestamp is taken per write batch, not per line.
* ``stream``: ``O`` (stdout), ``E`` (stderr) or ``L`` (las's own notes).
* ``flag``: ``F`` for a full line, ``P`` for a partial one: a piece of a line longer than
  ``max_line`` bytes (every piece but the last is ``P``, the last is ``F``) or text at the end
  of a stream without a trailing newline.
* ``payload``: the line's bytes without its newline; any bytes except ``b"\\n"``.

A line a reader cannot parse (e.g. a record cut short by a failed write) is returned as a raw
record: ``Record(ts="", stream="L", partial=False, payload=<the whole line>)``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

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
_TS_LEN = 27
_HEADER_LEN = _TS_LEN + 5  # "<ts> O F "

_STREAM_CODES: dict[str, bytes] = {
    "O": b"O",
    "E": b"E",
    "stdout": b"O",
    "stderr": b"E",
}
_STREAM_BY_BYTE: dict[int, str] = {ord("O"): "O", ord("E"): "E", ord("L"): "L"}
_STREAM_NAMES: dict[str, bytes] = {"O": b"stdout", "E": b"stderr", "L": b"las"}
_FLAG_F = ord("F")
_FLAG_P = ord("P")


class Record(NamedTuple):
    """One stored record.  ``stream`` is ``"O"``, ``"E"`` or ``"L"``."""

    ts: str
    stream: str
    partial: bool
    payload: bytes


# --------------------------------------------------------------------------------------------
# timestamps


def _timestamp() -> bytes:
    """``2026-11-26T18:27:23.123456Z`` as bytes (taken once per write batch)."""
    sec, ns = divmod(time.time_ns(), 1_000_000_000)
    head = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)).encode("ascii")
    return b"%s.%06dZ" % (head, ns // 1000)


# --------------------------------------------------------------------------------------------
# writing


class LogWriter:
    """Writes a run's output as records to ``path``, rotating by size.

    ``feed`` accepts arbitrary chunks (as read from a pipe) per stream and writes each
    complete line as a record; an incomplete trailing line is buffered until its newline
    arrives, ``max_line`` bytes accumulate (then it is cut into ``P`` records), or
    ``flush_partial`` is called at the end of the stream.

    Write errors (``ENOSPC``, ``EDQUOT``, ``EIO``, any ``OSError``) never reach the caller:
    the records that could not be written are counted in ``dropped_lines``, and the next
    successful write is preceded by an ``L`` note saying how many were lost.  ``written_lines``
    counts records written, las's notes included.

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
        self._pending: dict[bytes, bytes] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._fd = -1
        self._size = 0
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._open()

    # -- public API ---------------------------------------------------------------------

    def feed(self, stream: str, data: bytes) -> None:
        """Record a chunk of ``stream`` (``"O"``/``"stdout"`` or ``"E"``/``"stderr"``)."""
        code = _stream_code(stream)
        if not data:
            return
        with self._lock:
            self._check_open()
            pending = self._pending.pop(code, None)
            if pending:
                data = pending + data
            ts = _timestamp()
            prefix = ts + b" " + code + b" F "
            max_line = self.max_line
            if len(data) <= max_line:
                # Fast path (no line can be too long): one replace builds the whole batch.
                end = data.rfind(b"\n")
                if end < 0:
                    self._pending[code] = data
                    return
                body = data[:end]
                rest = data[end + 1 :]
                if rest:
                    self._pending[code] = rest
                self._emit(
                    ts,
                    b"".join((prefix, body.replace(b"\n", b"\n" + prefix), b"\n")),
                    body.count(b"\n") + 1,
                )
                return
            parts = data.split(b"\n")
            rest = parts.pop()
            out = b""
            nrec = len(parts)
            if parts:
                if max(map(len, parts)) <= max_line:
                    out = prefix + (b"\n" + prefix).join(parts) + b"\n"
                else:
                    out, nrec = self._split_long(ts, code, parts)
            if len(rest) > max_line:
                pprefix = ts + b" " + code + b" P "
                cut = (len(rest) - 1) // max_line * max_line
                pieces = [rest[i : i + max_line] for i in range(0, cut, max_line)]
                out += pprefix + (b"\n" + pprefix).join(pieces) + b"\n"
                nrec += len(pieces)
                rest = rest[cut:]
            if rest:
                self._pending[code] = rest
            if nrec:
                self._emit(ts, out, nrec)

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
            self._emit(ts, prefix + (b"\n" + prefix).join(lines) + b"\n", len(lines))

    def close(self) -> None:
        """Flush buffered partial lines, try to report pending drops, close the file."""
        with self._lock:
            if self._closed:
                return
            for code in list(self._pending):
                self._flush_partial(code)
            if self._unreported:
                self._emit(_timestamp(), b"", 0)
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

    # -- internals ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"LogWriter for {self.path} is closed")

    def _flush_partial(self, code: bytes) -> None:
        rest = self._pending.pop(code, None)
        if rest:
            ts = _timestamp()
            self._emit(ts, ts + b" " + code + b" P " + rest + b"\n", 1)

    def _split_long(self, ts: bytes, code: bytes, parts: list[bytes]) -> tuple[bytes, int]:
        fprefix = ts + b" " + code + b" F "
        pprefix = ts + b" " + code + b" P "
        max_line = self.max_line
        recs: list[bytes] = []
        for line in parts:
            if len(line) <= max_line:
                recs.append(fprefix + line + b"\n")
                continue
            last = (len(line) - 1) // max_line * max_line
            recs.extend(pprefix + line[i : i + max_line] + b"\n" for i in range(0, last, max_line))
            recs.append(fprefix + line[last:] + b"\n")
        return b"".join(recs), len(recs)

    def _rotated_name(self, index: int) -> str:
        return f"{self.path}.{index}"

    def _open(self) -> None:
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
            # A previous writer may have died mid-record: start ours on a fresh line.
            try:
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    self._need_newline = f.read(1) != b"\n"
            except OSError:
                pass

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
        self._open()

    def _drop_note(self, ts: bytes) -> bytes:
        n = self._unreported
        text = f"las: {n} line{'s' if n != 1 else ''} could not be written ({self._last_error})"
        return ts + b" L F " + text.encode("utf-8", "backslashreplace") + b"\n"

    def _emit(self, ts: bytes, data: bytes, nrec: int) -> None:
        """Write ``data`` (``nrec`` complete records), rotating as needed; never raises."""
        note_len = 0
        if self._unreported:
            note = self._drop_note(ts)
            note_len = len(note)
            data = note + data
            nrec += 1
        n = len(data)
        pos = 0
        try:
            while pos < n:
                if self._fd < 0:
                    self._open()
                if self._need_newline:
                    if os.write(self._fd, b"\n") != 1:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    self._size += 1
                    self._need_newline = False
                end = n
                room = self.max_size - self._size
                if n - pos > room:
                    cut = data.rfind(b"\n", pos, pos + room) + 1 if room > 0 else 0
                    if cut <= pos:
                        if self._size > 0:
                            self._rotate()
                            continue
                        cut = data.find(b"\n", pos) + 1  # oversized record: whole, fresh file
                    end = cut
                if pos == 0 and end == n:
                    w = os.write(self._fd, data)
                else:
                    w = os.write(self._fd, memoryview(data)[pos:end])
                while True:
                    if w <= 0:
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                    pos += w
                    self._size += w
                    if pos >= end:
                        break
                    w = os.write(self._fd, memoryview(data)[pos:end])  # short write: the rest
        except OSError as exc:
            self._last_error = exc.strerror or str(exc)
            if pos > 0 and data[pos - 1] != 0x0A:
                self._need_newline = True
            written = data.count(b"\n", 0, pos)
            lost = nrec - written
            if note_len:
                if pos >= note_len:
                    self._unreported = 0
                else:
                    lost -= 1  # the note itself is not a lost line; it is retried
            self.written_lines += written
            self.dropped_lines += lost
            self._unreported += lost
            return
        self.written_lines += nrec
        if note_len:
            self._unreported = 0


def _stream_code(stream: str) -> bytes:
    try:
        return _STREAM_CODES[stream]
    except KeyError:
        raise ValueError(f"unknown stream {stream!r}; use 'O'/'stdout' or 'E'/'stderr'") from None


# --------------------------------------------------------------------------------------------
# parsing and formatting


def _parse(line: bytes) -> Record:
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
        for i in [*reversed(self.rotated_indices()), 0]:
            h = _open_read(self.name(i))
            if h is not None:
                h.hint = i
                return h
        return _open_read(self.live)


def _read_forward(h: _Handle, buf: bytes) -> tuple[list[bytes], bytes, bool]:
    """Read what is there: (complete lines, new incomplete remainder, got_data)."""
    lines: list[bytes] = []
    got = False
    while True:
        try:
            chunk = os.read(h.fd, _READ_BLOCK)
        except OSError:
            chunk = b""
        if not chunk:
            return lines, buf, got
        got = True
        data = buf + chunk if buf else chunk
        parts = data.split(b"\n")
        buf = parts.pop()
        lines.extend(parts)
        if len(lines) >= 4096:
            return lines, buf, got


def _lines_backward(fd: int, end: int) -> Iterator[bytes]:
    """The file's ``[0, end)`` split at newlines, last piece first.

    The first item is the (possibly empty) text after the last newline; after it come the
    complete lines, newest first.
    """
    pos = end
    carry = b""
    while pos > 0:
        size = min(_READ_BLOCK, pos)
        pos -= size
        block = os.pread(fd, size, pos) + carry
        parts = block.split(b"\n")
        carry = parts[0]
        yield from reversed(parts[1:])
    if end > 0 and carry:
        yield carry
    elif end == 0:
        yield b""


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
        end = os.fstat(live.fd).st_size
        it = _lines_backward(live.fd, end)
        frag = next(it, b"")
        boundary = end - len(frag)
        if frag and include_fragment:
            records.append(_parse(frag))
        for line in it:
            if len(records) >= n:
                break
            records.append(_parse(line))
        os.lseek(live.fd, boundary, os.SEEK_SET)
        cur = live
        held: list[_Handle] = []
        while len(records) < n:
            found, prev = chain.neighbour(cur, +1)
            if not found or prev is None:
                break
            held.append(prev)
            cur = prev
            for line in _lines_backward(prev.fd, os.fstat(prev.fd).st_size):
                if len(records) >= n:
                    break
                if line:
                    records.append(_parse(line))
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
    falls so far behind that files are deleted before it reads them).  Waits for the file to
    appear if it does not exist yet.  ``stop()`` is consulted only after a read of the live
    file returned nothing; when it returns True the generator ends.  Sleeps ``poll`` seconds
    between empty reads.
    """
    chain = _Chain(path)
    cur: _Handle | None = None
    buf = b""
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
            lines, buf, got = _read_forward(cur, buf)
            if got:
                for line in lines:
                    yield _parse(line)
                continue
            if cur.same(_stat(chain.live)):
                if stop():
                    if buf:
                        yield _parse(buf)
                    return
                time.sleep(poll)
                continue
            # cur is no longer the live file: the writer is done with it.  Drain it, then
            # move on to its successor.
            while True:
                lines, buf, got = _read_forward(cur, buf)
                for line in lines:
                    yield _parse(line)
                if not got:
                    break
            found, nxt = chain.neighbour(cur, -1)
            if found and nxt is None:
                # Successor not there yet (mid-rotation, or the live file was removed).
                if stop():
                    if buf:
                        yield _parse(buf)
                    return
                time.sleep(poll)
                continue
            if not found:
                nxt = chain.open_oldest()  # fell behind: files were deleted unread
                if nxt is None or nxt.same(os.fstat(cur.fd)):
                    if nxt is not None:
                        nxt.close()
                    if stop():
                        if buf:
                            yield _parse(buf)
                        return
                    time.sleep(poll)
                    continue
            assert nxt is not None
            if buf:
                yield _parse(buf)  # the old file ended in an unterminated line
                buf = b""
            cur.close()
            cur = nxt
    finally:
        if cur is not None:
            cur.close()


def iter_records(path: Path | str, *, include_rotated: bool = True) -> Iterator[Record]:
    """Yield the stored records, oldest first: rotated ``.N`` ... ``.1``, then the live file.

    A snapshot: ends at the current end of the live file.  Yields nothing if no file exists.
    Unterminated text at the end of a file is yielded as a raw record.
    """
    if include_rotated:
        yield from follow_records(path, stop=lambda: True, poll=0.0)
        return
    h = _open_read(path)
    if h is None:
        return
    try:
        buf = b""
        while True:
            lines, buf, got = _read_forward(h, buf)
            for line in lines:
                yield _parse(line)
            if not got:
                break
        if buf:
            yield _parse(buf)
    finally:
        h.close()


def tail_records(path: Path | str, n: int) -> list[Record]:
    """The last ``n`` records across the live and rotated files, oldest first.

    Reads backwards in blocks from the end of the live file, then of ``.1``, ``.2``... only
    as far as needed.  Unterminated text at the end of the live file counts as a raw record.
    """
    if n <= 0:
        return []
    records, h = _tail(_Chain(path), n, include_fragment=True)
    if h is not None:
        h.close()
    return records

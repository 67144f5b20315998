"""Reading a run's log: iterate, tail, follow across rotations, format for output.

The records and the readers' behaviour (torn records, rotation, tails) are in docs/logs.md.
Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from localaistack.runtime.logs.format import (
    STREAM_NAMES,
    Record,
    body_records,
    parse_header,
    parse_line,
    pread,
    rotated_path,
    scan,
)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["follow_records", "format_record", "format_records", "iter_records", "tail_records"]

_READ_BLOCK = 1 << 20
_NAMES: dict[str, bytes] = {k: v.encode() for k, v in STREAM_NAMES.items()}

# --------------------------------------------------------------------------------------------
# formatting


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
        name = _NAMES.get(rec.stream, b"las")
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
                    out.extend(body_records(self.ts, self.stream, data[pos:end]))
                    self.left = 0
                    pos = end
                    continue
                nl = data.rfind(b"\n", pos)
                if nl < 0:
                    break
                out.extend(body_records(self.ts, self.stream, data[pos : nl + 1]))
                self.left -= nl + 1 - pos
                pos = nl + 1
                break
            nl = data.find(b"\n", pos)
            if nl < 0:
                break
            line = data[pos:nl]
            pos = nl + 1
            header = parse_header(line)
            if header is None:
                out.append(parse_line(line))
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
        return [parse_line(buf)]


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
        return rotated_path(self.live, index)

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
        parts = (pread(fd, size, pos) + carry).split(b"\n")
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
    entries, frag = scan(fd, size)
    boundary = frag
    if entries and entries[-1][2] > size:
        boundary = entries[-1][0]
    out: list[Record] = []
    if frag < size and include_fragment and need > 0:
        text = pread(fd, size - frag, frag)
        if text:
            out.append(parse_line(text))
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
                out.append(parse_line(line))
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

"""Tests for the per-run log capture (real files, no mocks)."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from localaistack.runtime.logfile import (
    LogWriter,
    Record,
    follow_records,
    format_record,
    format_records,
    iter_records,
    tail_records,
)

BIG = 1 << 40


def wait_until(cond: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.005)


def payloads(path: Path, stream: str | None = None) -> list[bytes]:
    return [r.payload for r in iter_records(path) if stream is None or r.stream == stream]


def numbered(n: int, width: int = 0) -> list[bytes]:
    return [b"line %06d %s" % (i, b"y" * (i % width if width else 0)) for i in range(n)]


def feed_in_chunks(w: LogWriter, stream: str, data: bytes, rng: random.Random, top: int) -> None:
    pos = 0
    while pos < len(data):
        n = rng.randint(1, top)
        w.feed(stream, data[pos : pos + n])
        pos += n


def log_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir())


# --------------------------------------------------------------------------------------------
# writing


def test_record_format(tmp_path: Path) -> None:
    p = tmp_path / "logs" / "inst" / "run.log"
    with LogWriter(p, max_size=BIG, keep=2) as w:
        w.feed("stdout", b"hello\n")
        w.feed("E", b"oops\n")
        w.note("las: started")
    raw = p.read_bytes().split(b"\n")
    assert raw[-1] == b""
    for line, want in zip(
        raw[:-1], [b" O F hello", b" E F oops", b" L F las: started"], strict=True
    ):
        ts = line[:27].decode()
        assert len(ts) == 27
        assert ts[4] == "-" and ts[10] == "T" and ts[19] == "." and ts.endswith("Z")
        assert line[27:] == want
    recs = list(iter_records(p))
    assert [(r.stream, r.partial, r.payload) for r in recs] == [
        ("O", False, b"hello"),
        ("E", False, b"oops"),
        ("L", False, b"las: started"),
    ]
    assert w.written_lines == 3
    assert w.dropped_lines == 0
    assert w.path == p


def test_lines_split_across_chunks_are_reassembled(tmp_path: Path) -> None:
    rng = random.Random(1)
    alphabet = bytes(b for b in range(256) if b != 0x0A)
    lines = [bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(2000)]
    lines += [b"", b"\r", b"\x00\x00", "ünïcødé".encode()]
    data = b"".join(line + b"\n" for line in lines)
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=BIG, keep=0) as w:
        feed_in_chunks(w, "O", data, rng, 97)
    recs = list(iter_records(p))
    assert all(r.stream == "O" and not r.partial for r in recs)
    assert [r.payload for r in recs] == lines


def test_stdout_stderr_interleaving_in_feed_order(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"o1\no")
        w.feed("E", b"e1\n")
        w.feed("O", b"2\n")
        w.feed("E", b"e")
        w.feed("O", b"o3\n")
        w.feed("E", b"2\ne3\n")
    got = [(r.stream, r.payload) for r in iter_records(p)]
    assert got == [
        ("O", b"o1"),
        ("E", b"e1"),
        ("O", b"o2"),
        ("O", b"o3"),
        ("E", b"e2"),
        ("E", b"e3"),
    ]


def test_rotation_keeps_every_line_once_in_order(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(10_000, width=40)
    data = b"".join(line + b"\n" for line in lines)
    with LogWriter(p, max_size=4096, keep=100_000) as w:
        feed_in_chunks(w, "O", data, random.Random(2), 3000)
    files = log_files(tmp_path)
    assert len(files) > 100
    assert "run.log" in files and "run.log.1" in files and f"run.log.{len(files) - 1}" in files
    for name in files:
        assert (tmp_path / name).stat().st_size <= 4096
    assert payloads(p) == lines
    assert w.written_lines == 10_000
    # The oldest rotated file holds the first lines, the live file the last ones.
    oldest = tmp_path / f"run.log.{len(files) - 1}"
    first = next(iter_records(oldest, include_rotated=False))
    assert first.payload == lines[0]
    assert list(iter_records(p, include_rotated=False))[-1].payload == lines[-1]


def test_small_keep_deletes_oldest(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(10_000)
    with LogWriter(p, max_size=4096, keep=3) as w:
        for i in range(0, len(lines), 37):
            w.feed("O", b"".join(line + b"\n" for line in lines[i : i + 37]))
    assert log_files(tmp_path) == ["run.log", "run.log.1", "run.log.2", "run.log.3"]
    got = payloads(p)
    assert 0 < len(got) < len(lines)
    assert got == lines[-len(got) :]


def test_keep_zero_leaves_only_the_live_file(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(1000)
    with LogWriter(p, max_size=1000, keep=0) as w:
        for line in lines:
            w.feed("O", line + b"\n")
    assert log_files(tmp_path) == ["run.log"]
    got = payloads(p)
    assert got == lines[-len(got) :]


def test_oversized_record_is_written_whole_to_a_fresh_file(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=200, keep=5) as w:
        w.feed("O", b"small\n")
        w.feed("O", b"x" * 500 + b"\n")
        w.feed("O", b"after\n")
    assert payloads(p) == [b"small", b"x" * 500, b"after"]
    assert [r.payload for r in iter_records(tmp_path / "run.log.1", include_rotated=False)] == [
        b"x" * 500
    ]


def test_partial_line_at_eof(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"full\nno newline")
        w.feed("E", b"err tail")
        w.flush_partial("O")
        w.flush_partial("O")  # nothing buffered any more: no record
        assert [(r.stream, r.partial, r.payload) for r in iter_records(p)] == [
            ("O", False, b"full"),
            ("O", True, b"no newline"),
        ]
    # close() flushes what is still buffered
    assert list(iter_records(p))[-1][1:] == ("E", True, b"err tail")


def test_line_longer_than_max_line_is_split(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    long1 = bytes(range(11, 250)) * 5  # 1195 bytes, no newline in it
    long2 = b"z" * 300  # an exact multiple of max_line
    exact = b"e" * 100
    data = b"a\n" + long1 + b"\n" + exact + b"\n" + long2 + b"\nb\n" + long1  # long1 at EOF
    with LogWriter(p, max_size=BIG, keep=0, max_line=100) as w:
        feed_in_chunks(w, "O", data, random.Random(3), 7)
        w.flush_partial("O")
    recs = list(iter_records(p))
    assert all(len(r.payload) <= 100 for r in recs)
    # Reassemble: P pieces continue until a full record ends the line.
    lines: list[bytes] = []
    cur = b""
    for r in recs:
        cur += r.payload
        if not r.partial:
            lines.append(cur)
            cur = b""
    assert lines == [b"a", long1, exact, long2, b"b"]
    assert cur == long1  # the EOF text: all pieces partial
    assert [r.partial for r in recs if r.payload == exact] == [False]
    assert b"".join(format_record(r, False) for r in recs) == data


def test_long_line_split_in_single_feed(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    line = b"0123456789" * 25
    with LogWriter(p, max_size=BIG, keep=0, max_line=100) as w:
        w.feed("E", line + b"\nshort\n")
    recs = list(iter_records(p))
    assert [(r.partial, len(r.payload)) for r in recs] == [
        (True, 100),
        (True, 100),
        (False, 50),
        (False, 5),
    ]
    assert b"".join(r.payload for r in recs[:3]) == line


def test_files_are_mode_0600(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    old = os.umask(0o022)
    try:
        with LogWriter(p, max_size=1024, keep=3) as w:
            for line in numbered(200):
                w.feed("O", line + b"\n")
    finally:
        os.umask(old)
    names = log_files(tmp_path)
    assert len(names) == 4
    for name in names:
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


def test_existing_live_file_is_appended_to_never_truncated(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"first\n")
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"second\n")
    assert payloads(p) == [b"first", b"second"]


def test_new_writer_starts_on_a_fresh_line_after_a_torn_record(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"ok\n")
    with p.open("ab") as f:
        f.write(b"2026-01-01T00:00:00.000000Z O F torn")  # a writer died mid-record
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"next\n")
    assert [(r.stream, r.payload) for r in iter_records(p)] == [
        ("O", b"ok"),
        ("O", b"torn"),
        ("O", b"next"),
    ]


def test_note_multiline_and_closed_writer(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    w = LogWriter(p, max_size=BIG, keep=0)
    w.note("las: one\nlas: two\n")
    w.close()
    w.close()
    assert [(r.stream, r.payload) for r in iter_records(p)] == [
        ("L", b"las: one"),
        ("L", b"las: two"),
    ]
    with pytest.raises(ValueError, match="closed"):
        w.feed("O", b"x\n")
    with pytest.raises(ValueError, match="unknown stream"):
        LogWriter(tmp_path / "b.log", max_size=BIG, keep=0).feed("X", b"x\n")


# --------------------------------------------------------------------------------------------
# disk full, on a real tiny filesystem


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for the disk-full test")
    mnt = tmp_path / "tinyfs"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the disk-full test: {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(path: Path) -> None:
    with path.open("wb", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        while True:  # the last page's slack
            try:
                if not f.write(b"\0"):
                    break
            except OSError:
                break


def test_disk_full_drops_counts_and_reports(tiny_fs: Path) -> None:
    p = tiny_fs / "run.log"
    lines = numbered(600, width=90)
    w = LogWriter(p, max_size=BIG, keep=2)
    w.feed("O", b"".join(line + b"\n" for line in lines[:10]))
    filler = tiny_fs / "filler"
    fill(filler)
    t0 = time.monotonic()
    for i in range(10, 600, 10):
        w.feed("O", b"".join(line + b"\n" for line in lines[i : i + 10]))  # must not raise
    w.note("las: a note while full")
    assert time.monotonic() - t0 < 5
    assert w.dropped_lines > 0
    dropped = w.dropped_lines
    filler.unlink()
    w.feed("O", b"after\n")
    w.close()
    assert w.dropped_lines == dropped
    recs = list(iter_records(p))
    notes = [r for r in recs if r.stream == "L" and r.ts]
    want = f"las: {dropped} lines could not be written (No space left on device)".encode()
    assert [r.payload for r in notes] == [want]
    i = recs.index(notes[0])
    assert [(r.stream, r.partial, r.payload) for r in recs[i + 1 :]] == [("O", False, b"after")]
    # What made it to disk is an in-order prefix of what was fed (at most one record torn).
    intact = [r.payload for r in recs[:i] if r.stream == "O" and r.payload in set(lines)]
    assert intact == lines[: len(intact)]
    # 600 lines and the note written while full; a record torn just before its newline is
    # both intact on disk and counted as dropped.
    assert len(intact) + dropped in (601, 602)
    assert w.written_lines + w.dropped_lines in (600 + 3, 600 + 4)  # + the two notes


# --------------------------------------------------------------------------------------------
# reading


def test_iter_records_live_only_and_missing(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    assert list(iter_records(p)) == []
    assert tail_records(p, 5) == []
    lines = numbered(500)
    with LogWriter(p, max_size=2048, keep=50) as w:
        for line in lines:
            w.feed("O", line + b"\n")
    live = [r.payload for r in iter_records(p, include_rotated=False)]
    assert 0 < len(live) < 500
    assert live == lines[-len(live) :]


def test_unparseable_line_is_a_raw_las_record(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    p.write_bytes(b"garbage line\n2026-11-26T18:27:23.123456Z O F ok\ntrailing")
    recs = list(iter_records(p))
    assert recs == [
        Record("", "L", False, b"garbage line"),
        Record("2026-11-26T18:27:23.123456Z", "O", False, b"ok"),
        Record("", "L", False, b"trailing"),
    ]
    assert tail_records(p, 2) == recs[1:]


def test_tail_records_across_rotated_files(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(3000)
    with LogWriter(p, max_size=4096, keep=1000) as w:
        for i in range(0, 3000, 7):
            w.feed("O", b"".join(line + b"\n" for line in lines[i : i + 7]))
    for n in (1, 10, 150, 1000, 2999, 3000):
        assert [r.payload for r in tail_records(p, n)] == lines[-n:], n
    assert [r.payload for r in tail_records(p, 5000)] == lines
    assert tail_records(p, 0) == []


def test_format_record_and_records() -> None:
    ts = "2026-11-26T18:27:23.123456Z"
    full = Record(ts, "O", False, b"out")
    part = Record(ts, "E", True, b"err-piece")
    assert format_record(full, False) == b"out\n"
    assert format_record(part, False) == b"err-piece"
    assert format_record(full, True) == ts.encode() + b" stdout out\n"
    assert format_record(part, True) == ts.encode() + b" stderr err-piece\n"
    assert format_record(Record("", "L", False, b"raw"), True) == b"- las raw\n"
    recs = [
        Record(ts, "O", True, b"ab"),
        Record(ts, "O", False, b"cd"),
        Record(ts, "E", True, b"cut"),
        Record(ts, "O", False, b"next"),
        Record(ts, "O", True, b"eof"),
    ]
    assert b"".join(format_records(recs, False)) == b"abcd\ncut\nnext\neof"
    assert b"".join(format_records(recs, True)).count(b"\n") == 5


# --------------------------------------------------------------------------------------------
# following


def run_follower(
    path: Path, stop: Callable[[], bool], **kw: object
) -> tuple[threading.Thread, list[Record]]:
    got: list[Record] = []

    def body() -> None:
        got.extend(follow_records(path, stop=stop, poll=0.01, **kw))  # type: ignore[arg-type]

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, got


def test_follow_across_rotations_while_writing(tmp_path: Path) -> None:
    p = tmp_path / "logs" / "run.log"
    lines = numbered(10_000, width=30)
    data = b"".join(line + b"\n" for line in lines)
    done = threading.Event()
    follower, got = run_follower(p, done.is_set)  # starts before the file exists

    def produce() -> None:
        rng = random.Random(4)
        with LogWriter(p, max_size=4096, keep=100_000) as w:
            pos = 0
            while pos < len(data):
                n = rng.randint(1, 2000)
                w.feed("O", data[pos : pos + n])
                pos += n
                if rng.random() < 0.05:
                    time.sleep(0.001)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(60)
    assert not producer.is_alive()
    follower.join(30)
    assert not follower.is_alive(), "follow_records did not end after stop() became true"
    assert len(log_files(p.parent)) > 100
    assert [r.payload for r in got] == lines


def test_follow_keeps_going_until_stop(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    stop = threading.Event()
    w = LogWriter(p, max_size=300, keep=1000)
    for i in range(20):
        w.feed("O", b"old %d\n" % i)
    follower, got = run_follower(p, stop.is_set, tail=3)
    wait_until(lambda: len(got) == 3, what="the tail")
    assert [r.payload for r in got] == [b"old 17", b"old 18", b"old 19"]
    w.feed("E", b"new 0\nnew")
    wait_until(lambda: len(got) == 4, what="the first new record")
    w.feed("E", b" 1\n")
    for i in range(2, 40):
        w.feed("E", b"new %d\n" % i)
    wait_until(lambda: len(got) == 3 + 40, what="all new records")
    assert follower.is_alive()
    w.close()
    stop.set()
    follower.join(10)
    assert not follower.is_alive()
    assert [r.payload for r in got[3:]] == [b"new %d" % i for i in range(40)]
    assert {r.stream for r in got[3:]} == {"E"}


def test_follow_start_at_end_and_all(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=200, keep=1000) as w:
        for i in range(30):
            w.feed("O", b"old %d\n" % i)
        # everything, oldest first, then stop at the end
        assert [r.payload for r in follow_records(p, stop=lambda: True)] == [
            b"old %d" % i for i in range(30)
        ]
        assert list(follow_records(p, stop=lambda: True, start_at_end=True)) == []
        stop = threading.Event()
        follower, got = run_follower(p, stop.is_set, start_at_end=True)
        time.sleep(0.05)
        w.feed("O", b"fresh\n")
        wait_until(lambda: len(got) == 1, what="the fresh record")
        stop.set()
        follower.join(10)
        assert not follower.is_alive()
        assert [r.payload for r in got] == [b"fresh"]


def test_follow_with_keep_zero(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(3000)
    done = threading.Event()
    w = LogWriter(p, max_size=2000, keep=0)
    follower, got = run_follower(p, done.is_set)
    for i in range(0, 3000, 3):
        if i % 30 == 0:  # keep=0 deletes rotated files: let the follower keep up
            wait_until(lambda i=i: len(got) >= i, what="the follower to catch up")
        w.feed("O", b"".join(line + b"\n" for line in lines[i : i + 3]))
    w.close()
    done.set()
    follower.join(10)
    assert not follower.is_alive()
    assert [r.payload for r in got] == lines


def test_directory_cleanup_does_not_break_reading(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=300, keep=10) as w:
        for i in range(100):
            w.feed("O", b"l %d\n" % i)
    shutil.rmtree(tmp_path)
    assert list(iter_records(p)) == []
    assert list(follow_records(p, stop=lambda: True, tail=3)) == []

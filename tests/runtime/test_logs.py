"""Tests for the per-run log capture (real files, no mocks)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest

from localaistack.runtime.logs import format as fmt
from localaistack.runtime.logs.format import Record
from localaistack.runtime.logs.reader import (
    follow_records,
    format_record,
    format_records,
    iter_records,
    tail_records,
)
from localaistack.runtime.logs.writer import LogWriter

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
    assert w.path == str(p)


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


TS = b"2026-11-26T18:27:23.123456Z"


def lines_of(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def block_spans(raw: bytes) -> list[tuple[int, int, int]]:
    """(header start, body start, body end) of each block, by the documented format alone."""
    spans = []
    pos = 0
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            break
        line = raw[pos:nl]
        if len(line) > 32 and line[27:32] in (b" O B ", b" E B ") and line[32:].isdigit():
            body = nl + 1
            spans.append((pos, body, body + int(line[32:])))
            pos = body + int(line[32:])
        else:
            pos = nl + 1
    return spans


def test_block_record_format(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(100, width=80)  # about 5 KB: stored as one block
    data = lines_of(lines)
    assert len(data) > 4096
    with LogWriter(p, max_size=BIG, keep=0) as w:
        w.feed("O", b"head of ")
        w.feed("O", data + b"tail")
        w.feed("E", b"e\n")
        assert w.written_lines == 2  # a block and a line record
    raw = p.read_bytes()
    header, rest = raw.split(b"\n", 1)
    body = b"head of " + data
    ts = header[:27].decode()
    assert ts[4] == "-" and ts[10] == "T" and ts[19] == "." and ts.endswith("Z")
    assert header[27:] == b" O B %d" % len(body)
    assert rest[: len(body)] == body
    after = rest[len(body) :].split(b"\n")
    assert [line[27:] for line in after] == [b" E F e", b" O P tail", b""]
    assert block_spans(raw) == [(0, len(header) + 1, len(header) + 1 + len(body))]
    recs = list(iter_records(p))
    assert recs[:100] == [Record(ts, "O", False, b"head of " + lines[0])] + [
        Record(ts, "O", False, line) for line in lines[1:]
    ]
    assert [(r.stream, r.partial, r.payload) for r in recs[100:]] == [
        ("E", False, b"e"),
        ("O", True, b"tail"),
    ]


def test_chunk_larger_than_max_size_is_cut_at_lines_to_keep_rotation_near_max_size(
    tmp_path: Path,
) -> None:
    p = tmp_path / "run.log"
    big = numbered(300, width=50)  # ~17 KiB in one chunk, files of 4 KiB
    with LogWriter(p, max_size=4096, keep=50) as w:
        w.feed("O", b"a\n")
        w.feed("O", lines_of(big))
        w.feed("O", b"b\n")
    files = log_files(tmp_path)
    assert len(files) >= 5
    for name in files:  # no file grows past max_size by more than one small block
        assert (tmp_path / name).stat().st_size <= 4096 + 1024 + 64
    assert payloads(p) == [b"a", *big, b"b"]


def test_long_lines_in_big_chunks(tmp_path: Path) -> None:
    rng = random.Random(5)

    def some(n: int, lengths: list[int]) -> list[bytes]:
        return [bytes(rng.choice(b"abcdef ") for _ in range(rng.choice(lengths))) for _ in range(n)]

    short = [0, 5, 99, 100]
    lines = some(400, short) + some(200, [*short, 101, 250, 1000]) + some(400, short)
    data = lines_of(lines)
    p = tmp_path / "run.log"
    with LogWriter(p, max_size=BIG, keep=0, max_line=100) as w:
        pos = 0
        while pos < len(data):
            n = rng.randint(3000, 9000)
            w.feed("O", data[pos : pos + n])
            pos += n
    recs = list(iter_records(p))
    assert all(len(r.payload) <= 100 for r in recs)
    assert b"".join(format_records(recs, False)) == data
    assert block_spans(p.read_bytes())  # some chunks without long lines were blocks


def test_forged_records_from_the_workload_come_back_verbatim(tmp_path: Path) -> None:
    forged = [
        TS + b" O B 5",
        TS + b" E B 0",
        TS + b" O B 999999999",
        TS + b" O B 12345678901234567890",
        TS + b" O F hello",
        TS + b" E P piece",
        TS + b" L F las: 7 lines could not be written (No space left on device)",
        TS + b" O B 40",
        b"",
        b"B",
        b" B ",
        b"Z O B ",
    ]
    rng = random.Random(6)
    streams = {
        s: [
            rng.choice(forged)
            if rng.random() < 0.4
            else b"%s %05d %s" % (s.encode(), i, b"q" * (i % 70))
            for i in range(3000)
        ]
        for s in ("O", "E")
    }
    data = {s: lines_of(v) for s, v in streams.items()}
    p = tmp_path / "logs" / "run.log"
    done = threading.Event()
    follower, followed = run_follower(p, done.is_set)
    with LogWriter(p, max_size=16384, keep=10_000) as w:
        pos = dict.fromkeys(data, 0)
        while any(pos[s] < len(data[s]) for s in data):
            s = rng.choice([s for s in data if pos[s] < len(data[s])])
            end = pos[s] + rng.choice([rng.randint(1, 200), rng.randint(4096, 12000)])
            if rng.random() < 0.5:  # end the chunk at a line end: the next starts with a line
                end = data[s].find(b"\n", end) + 1 or len(data[s])
            w.feed(s, data[s][pos[s] : end])
            pos[s] = end
    done.set()
    follower.join(30)
    assert not follower.is_alive()
    assert any(block_spans((p.parent / name).read_bytes()) for name in log_files(p.parent))
    recs = list(iter_records(p))
    assert all(len(r.ts) == 27 and not r.partial for r in recs)
    for s in ("O", "E"):
        assert [r.payload for r in recs if r.stream == s] == streams[s]
    assert followed == recs
    for n in (1, 2, 5, 50, 500, 3000, len(recs), len(recs) + 5):
        assert tail_records(p, n) == recs[-n:], n
    for k in (1, 7, 400):
        assert list(follow_records(p, stop=lambda: True, tail=k)) == recs[-k:], k
    assert list(follow_records(p, stop=lambda: True)) == recs


def test_new_writer_rotates_away_a_file_ending_inside_a_block(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    torn = TS + b" O F ok\n" + TS + b" O B 100\npartial line\nhal"
    p.write_bytes(torn)
    with LogWriter(p, max_size=BIG, keep=2) as w:
        w.feed("O", b"next\n")
    assert log_files(tmp_path) == ["run.log", "run.log.1"]
    assert (tmp_path / "run.log.1").read_bytes() == torn
    assert [(r.stream, r.partial, r.payload) for r in iter_records(p)] == [
        ("O", False, b"ok"),
        ("O", False, b"partial line"),
        ("O", True, b"hal"),
        ("O", False, b"next"),
    ]
    # A header line cut short would read as a header once a newline follows: the same.
    p2 = tmp_path / "b" / "run.log"
    p2.parent.mkdir()
    p2.write_bytes(TS + b" O F ok\n" + TS + b" E B 10")
    with LogWriter(p2, max_size=BIG, keep=0) as w:  # keep=0: the damaged file goes
        w.feed("O", b"next\n")
    assert [r.payload for r in iter_records(p2)] == [b"next"]


def test_torn_block_at_the_end_of_a_file(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    ts = TS.decode()
    (tmp_path / "run.log.3").write_bytes(TS + b" O F first\n" + TS + b" O B 30\nl1\nl2\nfra")
    (tmp_path / "run.log.2").write_bytes(TS + b" E B 3\nok\n" + TS + b" E B 9\nl3\n")
    (tmp_path / "run.log.1").write_bytes(TS + b" O B 8")  # a header cut short
    p.write_bytes(TS + b" O F live\n" + TS + b" E B 100\n" + TS + b" O F inside\n")
    want = [
        Record(ts, "O", False, b"first"),
        Record(ts, "O", False, b"l1"),
        Record(ts, "O", False, b"l2"),
        Record(ts, "O", True, b"fra"),
        Record(ts, "E", False, b"ok"),
        Record(ts, "E", False, b"l3"),
        Record("", "L", False, TS + b" O B 8"),
        Record(ts, "O", False, b"live"),
        Record(ts, "E", False, TS + b" O F inside"),
    ]
    assert list(iter_records(p)) == want
    assert list(follow_records(p, stop=lambda: True)) == want
    for n in range(1, len(want) + 2):
        assert tail_records(p, n) == want[-n:], n
    for k in (0, 1, 3, 20):
        got = list(follow_records(p, stop=lambda: True, tail=k))
        assert got == want[len(want) - len(got) :]
        assert len(got) >= min(k, len(want))
    assert list(iter_records(tmp_path / "run.log.3", include_rotated=False)) == want[:4]


def test_torn_block_in_a_rotated_file_written_by_the_writer(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    lines = numbered(3000, width=60)
    with LogWriter(p, max_size=32768, keep=1000) as w:
        feed_in_chunks(w, "O", lines_of(lines), random.Random(8), 12000)
    f = tmp_path / "run.log.2"
    raw = f.read_bytes()
    _, body, end = block_spans(raw)[-1]  # cut the last block in half (and what follows)
    cut = body + (end - body) // 2
    if raw[cut - 1] == 0x0A:
        cut += 1
    os.truncate(f, cut)
    block_lines = raw[body:end].split(b"\n")[:-1]
    kept = raw[body:cut].split(b"\n")
    frag = kept.pop()
    i = lines.index(block_lines[0])
    j = lines.index(next(iter_records(tmp_path / "run.log.1", include_rotated=False)).payload)
    want = [(False, x) for x in lines[: i + len(kept)]]
    want += [(True, frag)] + [(False, x) for x in lines[j:]]
    recs = list(iter_records(p))
    assert [(r.partial, r.payload) for r in recs] == want
    assert list(follow_records(p, stop=lambda: True)) == recs
    for n in (1, 100, len(lines) - j, len(lines) - j + 1, len(lines) - j + 5, len(recs)):
        assert tail_records(p, n) == recs[-n:], n


def test_random_damage_never_crashes_and_the_readers_agree(tmp_path: Path) -> None:
    rng = random.Random(9)

    def piece() -> bytes:
        k = rng.randrange(8)
        if k == 0:
            return TS + b" O F " + bytes(rng.randrange(256) for _ in range(rng.randrange(20)))
        if k == 1:
            body = lines_of([b"b%d" % rng.randrange(100) for _ in range(rng.randrange(5))])
            n = len(body) + rng.choice([0, 0, 0, -1, 1, 7, -3])
            return TS + b" %s B %d\n" % (rng.choice([b"O", b"E", b"L"]), max(n, 0)) + body
        if k == 2:
            return bytes(rng.randrange(256) for _ in range(rng.randrange(60)))
        if k == 3:
            return TS + b" O B " + str(rng.randrange(10**6)).encode()
        if k == 4:
            return b"\n" * rng.randrange(3)
        if k == 5:
            return TS[: rng.randrange(28)]
        if k == 6:
            return (TS + b" E P x" + b"B" * rng.randrange(80))[: rng.randrange(120)]
        return TS + b" O B 5\n" + b"Z O B " * rng.randrange(12)

    for trial in range(150):
        d = tmp_path / str(trial)
        d.mkdir()
        p = d / "run.log"
        for i in range(rng.randrange(1, 4)):
            raw = b"".join(piece() + rng.choice([b"\n", b"\n", b""]) for _ in range(30))
            (d / ("run.log" if i == 0 else f"run.log.{i}")).write_bytes(raw)
        full = list(iter_records(p))
        assert list(follow_records(p, stop=lambda: True)) == full
        for n in (1, 2, 3, 7, 50, 1000):
            assert tail_records(p, n) == full[-n:], (trial, n)
        for k in (0, 1, 5):
            got = list(follow_records(p, stop=lambda: True, tail=k))
            assert got == full[len(full) - len(got) :], (trial, k)
            assert len(got) >= min(k, len(full))


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
    dropped_full = w.dropped_lines
    filler.unlink()
    w.feed("O", b"after\n")
    w.close()
    dropped = w.dropped_lines
    assert dropped in (dropped_full, dropped_full - 1)  # a record torn while full completes
    recs = list(iter_records(p))
    notes = [r for r in recs if r.stream == "L" and r.ts]
    want = f"las: {dropped} lines could not be written (No space left on device)".encode()
    assert [r.payload for r in notes] == [want]
    i = recs.index(notes[0])
    assert [(r.stream, r.partial, r.payload) for r in recs[i + 1 :]] == [("O", False, b"after")]
    # What made it to disk is an in-order prefix of what was fed (at most one record torn).
    intact = [r.payload for r in recs[:i] if r.stream == "O" and r.payload in set(lines)]
    assert intact == lines[: len(intact)]
    # Exact (issue #17): each of the 600 lines is on disk or counted, never both; las's own
    # note written while full is not a line of the workload's.
    assert len(intact) + dropped == 600
    assert w.written_lines + w.dropped_lines == 600 + 2  # + the drop note and "after"


def test_disk_full_with_blocks_and_a_torn_block(tiny_fs: Path) -> None:
    p = tiny_fs / "run.log"
    lines = numbered(1400, width=90)
    chunks = [lines_of(lines[i : i + 200]) for i in range(0, 1400, 200)]  # about 11 KB each
    w = LogWriter(p, max_size=BIG, keep=2)
    w.feed("O", chunks[0])
    filler = tiny_fs / "filler"
    fill(filler)
    os.truncate(filler, filler.stat().st_size - 4096)  # room for part of the next block
    w.feed("O", chunks[1])  # cut short: held, completed once there is room again
    raw = p.read_bytes()
    assert len(raw) > len(chunks[0]) + 4096
    assert block_spans(raw)[-1][2] > len(raw)  # the file ends inside the second block
    present = raw.count(b"\n") - 202  # lines of the second block wholly written
    torn = w.dropped_lines  # its other lines count as dropped
    assert torn == 200 - present
    assert 0 < torn < 200
    t0 = time.monotonic()
    for c in chunks[2:5]:
        w.feed("O", c)  # dropped whole; must not raise
    assert time.monotonic() - t0 < 5
    assert w.dropped_lines == torn + 600
    filler.unlink()
    for c in chunks[5:]:
        w.feed("O", c)
    w.feed("O", b"after\n")
    w.close()
    assert w.dropped_lines == 600  # the cut block was completed: its lines are not lost
    assert w.written_lines == 1 + 1 + 1 + 2 + 1  # blocks 0, 1, the note, blocks 5-6, "after"
    recs = list(iter_records(p))
    assert all(r.ts and not r.partial for r in recs)
    want = b"las: 600 lines could not be written (No space left on device)"
    # The cut block was completed before anything else: nothing is lost from it on disk.
    assert [r.payload for r in recs] == [*lines[:400], want, *lines[1000:], b"after"]
    assert recs[400].stream == "L"
    assert tail_records(p, 1001) == recs[-1001:]


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


def test_follow_waits_for_the_rest_of_a_block(tmp_path: Path) -> None:
    p = tmp_path / "run.log"
    ts = TS.decode()
    p.write_bytes(TS + b" O F before\n" + TS + b" O B 18\nhello\n")  # 6 of 18 body bytes
    assert list(follow_records(p, stop=lambda: True)) == [
        Record(ts, "O", False, b"before"),
        Record(ts, "O", False, b"hello"),
    ]
    stop = threading.Event()
    follower, got = run_follower(p, stop.is_set)
    follower2, got2 = run_follower(p, stop.is_set, tail=1)
    wait_until(lambda: len(got) == 2 and len(got2) == 2, what="the lines there")
    with p.open("ab") as f:
        f.write(b"wor")
        f.flush()
        time.sleep(0.1)
        assert len(got) == 2  # an incomplete line of the block is waited for
        f.write(b"ld\nagain\n" + TS + b" E F after\n")
    wait_until(lambda: len(got) == 5 and len(got2) == 5, what="the rest")
    stop.set()
    follower.join(10)
    follower2.join(10)
    assert not follower.is_alive() and not follower2.is_alive()
    want = [
        Record(ts, "O", False, b"before"),
        Record(ts, "O", False, b"hello"),
        Record(ts, "O", False, b"world"),
        Record(ts, "O", False, b"again"),
        Record(ts, "E", False, b"after"),
    ]
    assert got == want
    assert got2 == want
    # Stopped while a block is incomplete: what is there.
    p.write_bytes(TS + b" O B 18\nhello\nwor")
    assert list(follow_records(p, stop=lambda: True)) == [
        Record(ts, "O", False, b"hello"),
        Record(ts, "O", True, b"wor"),
    ]
    assert list(follow_records(p, stop=lambda: True, tail=5)) == [
        Record(ts, "O", False, b"hello"),
        Record(ts, "O", True, b"wor"),
    ]


def test_ten_thousand_lines_in_blocks_with_rotation_tail_and_follow(tmp_path: Path) -> None:
    p = tmp_path / "logs" / "run.log"
    lines = numbered(10_000, width=120)
    data = lines_of(lines)
    done = threading.Event()
    half = threading.Event()
    follower, got = run_follower(p, done.is_set)
    late: list[tuple[threading.Thread, list[Record]]] = []

    def produce() -> None:
        rng = random.Random(10)
        with LogWriter(p, max_size=65536, keep=100_000) as w:
            pos = 0
            while pos < len(data):
                n = rng.randint(1, 20000)
                w.feed("O", data[pos : pos + n])
                pos += n
                if pos > len(data) // 2 and not half.is_set():
                    half.set()
                    late.append(run_follower(p, done.is_set, tail=50))
                if rng.random() < 0.05:
                    time.sleep(0.001)
        done.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    producer.join(60)
    assert not producer.is_alive()
    follower.join(30)
    assert not follower.is_alive()
    files = log_files(p.parent)
    assert len(files) > 10
    assert any(block_spans((p.parent / name).read_bytes()) for name in files)
    for name in files:
        assert (p.parent / name).stat().st_size <= 65536
    assert [r.payload for r in got] == lines
    assert payloads(p) == lines
    for n in (1, 20, 999, 5000, 10_000, 10_001):
        assert [r.payload for r in tail_records(p, n)] == lines[-n:], n
    late[0][0].join(30)
    assert not late[0][0].is_alive()
    tail_followed = [r.payload for r in late[0][1]]
    assert tail_followed == lines[-len(tail_followed) :]
    assert 50 <= len(tail_followed) < 10_000  # it started mid-way, with the 50 before


# --------------------------------------------------------------------------------------------
# the format's own functions and its specification


def test_one_record_encodes_and_decodes() -> None:
    ts = fmt.timestamp()
    assert len(ts) == fmt.TIMESTAMP_LEN
    for stream in (fmt.STDOUT, fmt.STDERR, fmt.LAS):
        for partial in (False, True):
            line = fmt.line_prefix(ts, stream.encode(), partial) + b"any \xff bytes"
            assert len(fmt.line_prefix(ts, stream.encode(), partial)) == fmt.PREFIX_LEN
            assert fmt.parse_line(line) == Record(ts.decode(), stream, partial, b"any \xff bytes")
            assert fmt.parse_header(line) is None
    header = fmt.block_header(ts, fmt.STDERR.encode(), 12)
    assert header.endswith(b"\n") and header[30:31] == fmt.BLOCK.encode()
    assert fmt.parse_header(header[:-1]) == (ts.decode(), fmt.STDERR, 12)
    assert fmt.parse_line(header[:-1]).ts == ""  # a header is no line record
    assert fmt.parse_header(fmt.block_header(ts, fmt.LAS.encode(), 1)[:-1]) is None
    assert fmt.parse_header(fmt.block_header(ts, b"O", 10**fmt.MAX_LENGTH_DIGITS)[:-1]) is None
    assert fmt.body_records("t", "O", b"a\nb\nc") == [
        Record("t", "O", False, b"a"),
        Record("t", "O", False, b"b"),
        Record("t", "O", True, b"c"),
    ]
    assert fmt.parse_line(b"not a record") == Record("", fmt.LAS, False, b"not a record")
    assert [fmt.rotated_path("r.log", i) for i in (0, 1, 2)] == ["r.log", "r.log.1", "r.log.2"]


def test_the_specification_names_every_constant_of_the_format() -> None:
    spec = (Path(__file__).resolve().parents[2] / "docs" / "logs.md").read_text()
    for name in fmt.__all__:
        if name.isupper() or name == "rotated_path":
            assert f"`{name}`" in spec, name


# --------------------------------------------------------------------------------------------
# logs written before the log package (tests/data/logs/README.md)

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "logs"


def as_lists(records: Iterable[Record]) -> list[list[object]]:
    return [[r.ts, r.stream, r.partial, r.payload.decode("latin-1")] for r in records]


@pytest.mark.parametrize("name", ["rotated", "damaged", "unterminated"])
def test_logs_of_earlier_versions_read_as_they_did(name: str, tmp_path: Path) -> None:
    expected = json.loads((FIXTURES / "expected.json").read_text())[name]
    src = FIXTURES / name
    home = tmp_path / name
    shutil.copytree(src, home)  # followers look at the directory; keep the fixture read-only
    path = home / "run.log"
    recs = list(iter_records(path))
    assert as_lists(recs) == expected["iter"]
    assert as_lists(iter_records(path, include_rotated=False)) == expected["iter_live"]
    for n, want in expected["tail"].items():
        assert as_lists(tail_records(path, int(n))) == want, f"tail {n}"
    for n, want in expected["follow_tail"].items():
        got = follow_records(path, stop=lambda: True, poll=0, tail=int(n))
        assert as_lists(got) == want, f"follow --tail {n}"
    plain = hashlib.sha256(b"".join(format_records(recs, False))).hexdigest()
    stamped = hashlib.sha256(b"".join(format_records(recs, True))).hexdigest()
    assert (plain, stamped) == (expected["plain_sha256"], expected["timestamps_sha256"])
    if name == "rotated":  # today's writer appends to such a file as to its own
        with LogWriter(path, max_size=8000, keep=3, max_line=64) as w:
            w.feed("stdout", b"appended\n")
        after = as_lists(iter_records(path))
        assert after[:-1] == expected["iter"]
        assert after[-1][1:] == ["O", False, "appended"]

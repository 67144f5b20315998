"""Issue #17, item 6: a full disk never takes control away.

``$LAS_HOME`` is a real 4 MiB tmpfs (needs root: CI is root), filled to the last byte.
Each test asserts what holds: read commands work and warn, a supervisor keeps the true
outcome until it can record it, `las run` fails clearly with nothing half-started, and the
count of log lines dropped is exact.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Las, pid_alive, wait_until

from localaistack.runtime import cgroups
from localaistack.runtime.logs.reader import iter_records
from localaistack.runtime.logs.writer import LogWriter
from localaistack.store.db import home_label


@pytest.fixture
def full_home(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted at the test's LAS_HOME (unmounted at the end)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs as LAS_HOME (CI runs as root)")
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(home)],
        capture_output=True,
        text=True,
        check=False,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        yield home
    finally:
        if subprocess.run(["umount", str(home)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(home)], check=False)


def fill(home: Path) -> Path:
    """Fill the filesystem of ``home`` to the last byte; returns the filler (unlink: room)."""
    filler = home / "filler"
    with filler.open("ab", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            while True:
                try:
                    if not f.write(b"\0" * size):
                        break
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    return filler


def _run_row(home: Path, name: str) -> sqlite3.Row:
    conn = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        row: sqlite3.Row = conn.execute(
            "SELECT r.* FROM instances i JOIN runs r ON r.run_id = i.current_run WHERE i.name=?",
            (name,),
        ).fetchone()
        return row
    finally:
        conn.close()


def _waiter(
    module_factory: Any, name: str, trigger: Path, *, lines: int = 0, code: int = 0
) -> Path:
    """A workload that prints 'up', waits for ``trigger``, prints ``lines`` lines, exits
    with ``code``."""
    text = (
        "import os, sys, time\n"
        "print('up', flush=True)\n"
        f"while not os.path.exists({str(trigger)!r}): time.sleep(0.05)\n"
        # In bursts of 100 lines, each read by the supervisor (its pipe empty) before the
        # next: one chunk each. Then until told to end.
        "import fcntl, struct, termios\n"
        f"for i in range({lines}):\n"
        "    sys.stdout.write('line %06d of the workload\\n' % i)\n"
        "    if i % 100 == 99 or i == " + str(lines - 1) + ":\n"
        "        sys.stdout.flush()\n"
        "        while struct.unpack('i', fcntl.ioctl(1, termios.FIONREAD, b'    '))[0]:\n"
        "            time.sleep(0.005)\n"
        f"open({str(trigger)!r} + '.read', 'w').close()\n"
        f"while not os.path.exists({str(trigger)!r} + '.end'): time.sleep(0.05)\n"
        f"sys.exit({code})\n"
    )
    return module_factory(name, [sys.executable, "-c", text])  # type: ignore[no-any-return]


@pytest.mark.parametrize("code", [0, 3])
def test_run_ending_on_a_full_disk_is_recorded_truly_once_space_returns(
    las: Las, module_factory: Any, full_home: Path, tmp_path: Path, code: int
) -> None:
    trigger = tmp_path / "go"
    _waiter(module_factory, "ender", trigger, code=code)
    las.ok("run", str(tmp_path / "ender.yaml"), "--detach")
    wait_until(lambda: "up" in las.ok("logs", "ender").out, message="workload up")
    run = _run_row(full_home, "ender")
    sup, pid = int(run["sup_pid"]), int(run["pid"])
    filler = fill(full_home)
    trigger.touch()  # the workload exits while the disk is full
    wait_until(lambda: Path(f"{trigger}.read").exists(), timeout=15, message="output read")
    Path(f"{trigger}.end").touch()
    wait_until(lambda: not pid_alive(pid), timeout=15, message="workload exited")
    # Longer than the supervisor used to retry (5 s): it must keep the outcome, alive, and
    # no other las command may take the run for lost meanwhile.
    deadline = time.monotonic() + 7
    while time.monotonic() < deadline:
        res = las("ps", "--all", "--json")
        assert res.code == 0, res
        (row,) = res.json()
        assert row["state"] != "failed", row
        assert pid_alive(sup), "the supervisor exited before recording the outcome"
        time.sleep(0.5)
    filler.unlink()
    want = "stopped" if code == 0 else "failed"
    wait_until(lambda: las.state("ender") == want, timeout=20, message="outcome recorded")
    wait_until(lambda: not pid_alive(sup), timeout=15, message="supervisor exited")
    info = las.inspect("ender")
    reason = info["runs"][-1]["reason"]
    start = "exited on its own with code 0" if code == 0 else f"exited with code {code}"
    assert reason.startswith(start), reason
    assert "recorded late" in reason and "disk full (ENOSPC)" in reason, reason
    assert info["runs"][-1]["exit_code"] == code
    events = las.ok("events").out
    assert "store-late" in events and "recorded late" in events


def test_las_run_on_a_full_disk_fails_clearly_with_nothing_started(
    las: Las, module_factory: Any, full_home: Path, tmp_path: Path
) -> None:
    trigger = tmp_path / "never"
    _waiter(module_factory, "first", trigger)
    las.ok("ps")  # the home's database exists: a run on the full disk must still fail clean
    filler = fill(full_home)
    res = las("run", str(tmp_path / "first.yaml"), "--detach")
    assert res.code == 5, res
    assert "disk full (ENOSPC)" in res.err and "free space" in res.err, res.err
    needle = str(full_home / "state.db").encode()
    wait_until(lambda: not _supervisors(needle), timeout=10, message="no stray supervisor")
    assert cgroups.of_home(home_label(full_home / "state.db")) == {}  # no workload either
    filler.unlink()
    assert las.ps() == {}  # nothing half-made: no instance, no run
    # And with room again it simply works.
    las.ok("run", str(tmp_path / "first.yaml"), "--detach")
    assert las.state("first") == "running"


def _supervisors(needle: bytes) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"localaistack.runtime.supervisor" in cmd and needle in cmd:
                out.append(int(entry))
    return out


def test_ps_inspect_logs_work_on_a_full_disk_and_warn(
    las: Las, module_factory: Any, full_home: Path, tmp_path: Path
) -> None:
    import signal

    trigger = tmp_path / "never"
    _waiter(module_factory, "reader", trigger)
    las.ok("run", str(tmp_path / "reader.yaml"), "--detach")
    wait_until(lambda: "up" in las.ok("logs", "reader").out, message="workload up")
    run = _run_row(full_home, "reader")
    # A dead supervisor: every command's reconciliation now wants to write its end.
    os.kill(int(run["sup_pid"]), signal.SIGKILL)
    wait_until(lambda: not pid_alive(int(run["sup_pid"])), message="supervisor gone")
    filler = fill(full_home)
    warned = []
    for args in (
        ("ps", "--all"),
        ("ps", "--all", "--json"),
        ("inspect", "reader"),
        ("logs", "reader"),
    ):
        fill(full_home)  # what a failed write of the last command allocated is used up too
        res = las(*args)
        assert res.code == 0, (args, res)
        warned.append("state could not be updated because the disk is full" in res.err)
        if "ps" in args:
            assert "reader" in res.out
        if "logs" in args:
            assert "up" in res.out
    # The first could not record the dead supervisor and said so. (On tmpfs, the pages a
    # failed append to the WAL allocated let a later try succeed: then nothing is left to
    # record and no warning is due.)
    assert warned[0], warned
    filler.unlink()
    res = las("ps", "--all", "--json")
    assert res.code == 0 and "could not be updated" not in res.err
    (row,) = res.json()
    assert row["state"] == "failed" and "lost" in row["reason"]


def test_read_only_home_is_a_clear_error_or_a_warning(
    las: Las, module_factory: Any, full_home: Path, tmp_path: Path
) -> None:
    _waiter(module_factory, "ro", tmp_path / "never")
    las.ok("run", str(tmp_path / "ro.yaml"), "--detach")
    las.ok("stop", "ro")
    subprocess.run(["mount", "-o", "remount,ro", str(full_home)], check=True)
    try:
        res = las("ps", "--all")
        assert res.code in (0, 5), res
        if res.code == 5:
            assert "read-only filesystem" in res.err, res.err
        res = las("run", str(tmp_path / "ro.yaml"), "--detach", "--name", "ro2")
        assert res.code == 5 and "read-only" in res.err, res
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(full_home)], check=True)


def test_dropped_log_lines_are_counted_exactly(
    las: Las, module_factory: Any, full_home: Path, tmp_path: Path
) -> None:
    trigger = tmp_path / "go"
    _waiter(module_factory, "chatty", trigger, lines=3000)
    las.ok("run", str(tmp_path / "chatty.yaml"), "--detach")
    wait_until(lambda: "up" in las.ok("logs", "chatty").out, message="workload up")
    run = _run_row(full_home, "chatty")
    filler = fill(full_home)
    trigger.touch()  # 3000 lines while the disk is full, then exit 0
    wait_until(lambda: Path(f"{trigger}.read").exists(), timeout=15, message="output read")
    filler.unlink()  # the supervisor has read every line (its pipe is empty): room again
    Path(f"{trigger}.end").touch()
    wait_until(lambda: not pid_alive(int(run["pid"])), timeout=15, message="workload exited")
    wait_until(lambda: las.state("chatty") == "stopped", timeout=20, message="outcome recorded")
    info = las.inspect("chatty")
    dropped = info["runs"][-1]["lines_dropped"]
    log = Path(info["runs"][-1]["log_path"])
    present = [r.payload for r in iter_records(log) if r.stream == "O" and not r.partial]
    ours = [p for p in present if p.startswith(b"line ")]
    assert dropped > 0
    assert ours == [b"line %06d of the workload" % i for i in range(len(ours))]  # a prefix
    # Exact: every line the workload wrote while full is in the log or counted, once.
    assert len(ours) + dropped == 3000, (len(ours), dropped)
    assert f"{dropped} log line(s) could not be written" in info["runs"][-1]["reason"]


def test_dropped_count_counts_a_long_line_once(full_home: Path) -> None:
    """The writer itself, with an exact expected number: 7 + 1 (long, 3 pieces) + 5."""
    path = full_home / "w.log"
    filler = fill(full_home)  # before the file exists: no page of its own to write into
    w = LogWriter(path, max_size=1 << 30, keep=1, max_line=1000)
    try:
        w.feed("O", b"".join(b"short %d\n" % i for i in range(7)))
        w.feed("O", b"x" * 2500)  # cut into pieces while incomplete: one line, not three
        w.feed("O", b"y" * 10 + b"\n")
        w.feed("E", b"".join(b"err %d\n" % i for i in range(5)))
        w.note("las: a note of las's own: never a dropped line")
        assert w.dropped_lines == 13
        filler.unlink()
        w.feed("O", b"after\n")
    finally:
        w.close()
    assert w.dropped_lines == 13
    payloads = [r.payload for r in iter_records(path)]
    assert payloads == [b"las: 13 lines could not be written (No space left on device)", b"after"]


def test_a_record_cut_short_then_completed_is_not_counted(full_home: Path) -> None:
    """The over-count of the issue: a block cut short by the full disk (part of it fits in
    the file's last page) is completed once there is room; its lines are all in the log,
    so none is dropped (before this fix: 857 of these 1000 were counted in one run)."""
    path = full_home / "b.log"
    w = LogWriter(path, max_size=1 << 30, keep=1)
    try:
        w.feed("O", b"first\n")
        filler = fill(full_home)
        w.feed("O", b"".join(b"line %06d of the workload\n" % i for i in range(1000)))
        assert 0 < w.dropped_lines < 1000  # cut short: counted while it is not complete
        filler.unlink()
        w.settle()  # what the supervisor does before it records the count
        assert w.dropped_lines == 0
        w.feed("O", b"after\n")
    finally:
        w.close()
    assert w.dropped_lines == 0
    payloads = [r.payload for r in iter_records(path)]
    assert payloads == [
        b"first",
        *(b"line %06d of the workload" % i for i in range(1000)),
        b"after",
    ]

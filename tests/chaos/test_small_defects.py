"""Smaller defects of issue #17 (item 10), each reproduced and held.

- `las logs` ends a workload's last line without newline before las's own note (and
  before a record of the other stream), with and without --timestamps, --tail and -f.
- `las ps --all` shows the reason of stopped instances, not only of failed ones.
- Scripts stop only what they started, by pid: `scripts/ci-containers-down` stops exactly
  what `scripts/ci-containers-up` recorded; nothing under scripts/, .ci/ or tests/ finds
  processes by pattern.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import REPO, Las, pid_alive, wait_until

SLOW = 60.0


def _writer(module_factory: Callable[..., Path], name: str, code: str) -> Path:
    """A workload running Python ``code`` (``w(stream, text)`` writes and flushes)."""
    prelude = "import sys, time\ndef w(s, t):\n    s.write(t)\n    s.flush()\n"
    return module_factory(name, [sys.executable, "-c", prelude + code])


def _ended(las: Las, name: str) -> None:
    wait_until(lambda: las.state(name) in ("stopped", "failed"), SLOW, 0.1, f"{name} ends")


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (a follower reading the log)."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


def _lines(out: str) -> list[str]:
    return out.split("\n")


# --- las logs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code,pieces",
    [
        ("w(sys.stdout, 'full\\nout partial')", ["full", "out partial"]),
        ("w(sys.stderr, 'err partial')", ["err partial"]),
        (
            "w(sys.stdout, 'out partial'); time.sleep(0.3); w(sys.stderr, 'err partial')",
            ["out partial", "err partial"],
        ),
    ],
    ids=["stdout", "stderr", "both"],
)
def test_logs_end_a_partial_last_line_before_las_note(
    las: Las, module_factory: Callable[..., Path], code: str, pieces: list[str]
) -> None:
    las.ok("run", "-d", str(_writer(module_factory, "part", code)))
    _ended(las, "part")
    note = "las: exited on its own with code 0"
    plain = las.ok("logs", "part").out
    assert plain.endswith(note + "\n"), repr(plain)
    assert sorted(_lines(plain)[:-1]) == sorted([*pieces, note]), repr(plain)
    tail = las.ok("logs", "part", "--tail", "2").out
    assert tail.endswith("\n" + note + "\n") or tail == note + "\n", repr(tail)
    assert all(
        line.count("las:") <= 1 and not ("partial" in line and "las:" in line)
        for line in _lines(tail)
    )
    stamped = las.ok("logs", "part", "--timestamps").out
    rows = [line for line in _lines(stamped) if line]
    assert rows[-1].endswith(" las " + note), repr(stamped)
    for piece in pieces:
        assert sum(row.endswith(" " + piece) for row in rows) == 1, repr(stamped)
    followed = las.ok("logs", "part", "-f", timeout=SLOW).out  # the run has ended: at once
    assert followed == plain


def test_logs_follow_ends_a_partial_line_before_the_stop_note(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    code = "w(sys.stdout, 'tick'); time.sleep(1000)"
    las.ok("run", "-d", str(_writer(module_factory, "tick", code)))
    log = wait_until(lambda: next((las.home / "logs" / "tick").glob("*.log"), None), SLOW)
    follower = las.popen("logs", "tick", "-f")
    try:
        wait_until(lambda: _has_open(follower.pid, log), SLOW, 0.05, "`las logs -f` follows")
        las.ok("stop", "tick", timeout=SLOW)
        out, err = follower.communicate(timeout=SLOW)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    # (The supervisor keeps a partial line until it ends or the stream does.)
    assert _lines(out) == [
        "las: stop requested: sending SIGTERM to the process group",
        "tick",
        "las: stopped: exited on SIGTERM",
        "",
    ], repr(out)


# --- las ps --all ----------------------------------------------------------------------------


def test_ps_all_shows_the_reason_of_stopped_instances(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    las.ok("run", "-d", str(_writer(module_factory, "done", "w(sys.stdout, 'bye\\n')")))
    las.ok("run", "-d", str(_writer(module_factory, "idle", "time.sleep(1000)")))
    las.ok("stop", "idle", timeout=SLOW)
    las("run", "-d", str(_writer(module_factory, "bad", "sys.exit(3)")))
    _ended(las, "done")
    _ended(las, "bad")
    table = las.ok("ps", "--all").out
    rows = {line.split()[0]: line for line in table.splitlines()[1:]}
    assert "exited on its own with code 0" in rows["done"]
    assert re.search(r"stopped: (exited on SIGTERM|.* after SIGTERM)", rows["idle"]), table
    assert "exited with code 3" in rows["bad"]
    assert las.ps()["idle"]["reason"] in rows["idle"]  # the table shows what --json says


# --- scripts stop only what they started ------------------------------------------------------


def _start_time(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def _down(ci_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LAS_CI_DIR": str(ci_dir)}
    script = str(REPO / "scripts" / "ci-containers-down")
    return subprocess.run([script], text=True, capture_output=True, timeout=SLOW, env=env)


def test_ci_containers_down_stops_exactly_what_was_recorded(tmp_path: Path) -> None:
    recorded = subprocess.Popen(["sleep", "1000"])
    other = subprocess.Popen(["sleep", "1000"])  # the same command: a pattern would match it
    try:
        (tmp_path / "started").write_text(
            f"sleep {recorded.pid} {_start_time(recorded.pid)}\n"
            f"sleep {other.pid} 1\n"  # a pid that was reused since: another start time
        )
        res = _down(tmp_path)
        assert res.returncode == 0, res.stderr
        assert recorded.wait(SLOW) == -15  # SIGTERM, from the script
        assert pid_alive(other.pid)
        assert f"sleep (pid {other.pid}) already gone" in res.stderr
        assert not (tmp_path / "started").exists()
        again = _down(tmp_path)
        assert again.returncode == 0 and "nothing to stop" in again.stderr
    finally:
        for p in (recorded, other):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_no_script_or_test_finds_processes_by_pattern() -> None:
    pattern = re.compile(rb"\b(pkill|killall|pgrep)\b")
    me = Path(__file__).resolve()
    found = []
    for top in ("scripts", ".ci", "tests"):
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file() and path.resolve() != me and "__pycache__" not in path.parts:
                for n, line in enumerate(path.read_bytes().splitlines(), 1):
                    if pattern.search(line):
                        found.append(
                            f"{path.relative_to(REPO)}:{n}: {line.decode(errors='replace')}"
                        )
    assert not found, "\n".join(found)

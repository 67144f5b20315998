"""Issue #17 item 1: never an orphan, including processes that leave the process group.

Real workloads (tests/programs/escaper.py) whose descendants call ``setsid`` (or
double-fork) and ignore SIGTERM. Every variant runs twice: with the run's cgroup as the
boundary, and with ``LAS_CGROUP_ROOT`` on a directory that is no cgroupfs (then the
supervisor's descendants, re-parented to it as child subreaper, are the boundary). Each
asserts: the state, the reason with its count of leftovers, every pid gone (zombies count
as gone: they run nothing), and no cgroup directory of the run left.
"""

from __future__ import annotations

import glob
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import PROGRAMS, Las, pid_alive, wait_until

ModuleFactory = Callable[..., Path]
ESCAPER = [sys.executable, str(PROGRAMS / "escaper.py")]
CGROUP_FS = "/sys/fs/cgroup"


@pytest.fixture(params=["cgroup", "no-cgroup"])
def boundary(request: pytest.FixtureRequest, las: Las, tmp_path: Path) -> str:
    if request.param == "no-cgroup":
        fake = tmp_path / "not-a-cgroupfs"
        fake.mkdir()
        las.env["LAS_CGROUP_ROOT"] = str(fake)
    elif os.geteuid() != 0 or not (
        os.access(os.path.join(CGROUP_FS, "pids"), os.W_OK)
        or os.access(os.path.join(CGROUP_FS, "cgroup.procs"), os.W_OK)
    ):
        pytest.skip("no writable cgroup hierarchy here (needs root)")
    return str(request.param)


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class Tree:
    """The pids (with start times) a workload wrote, to tell them from a reused pid."""

    def __init__(self, pidfile: Path) -> None:
        self.procs = [(p, _start_time(p)) for p in map(int, pidfile.read_text().split())]

    def alive(self) -> list[int]:
        return [p for p, start in self.procs if pid_alive(p) and _start_time(p) == start]

    def assert_gone(self, timeout: float = 15.0) -> None:
        wait_until(lambda: not self.alive(), timeout=timeout, message="every pid of the run gone")


def _run_dirs(run_id: str) -> list[str]:
    """Every cgroup directory that names the run, wherever las puts it."""
    found: list[str] = []
    for pattern in (f"{CGROUP_FS}/*/las/**/*{run_id}*", f"{CGROUP_FS}/las/**/*{run_id}*"):
        found += [p for p in glob.glob(pattern, recursive=True) if os.path.isdir(p)]
    return found


def _start(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, name: str, *flags: str, **rt: object
) -> tuple[Tree, str]:
    pidfile = tmp_path / f"{name}.pids"
    las("run", str(module_factory(name, [*ESCAPER, "--pidfile", str(pidfile), *flags], **rt)))
    wait_until(
        lambda: "ready" in las.ok("logs", name).out or las.state(name) != "running",
        timeout=30,
        message="every escaped descendant started",
    )
    tree = Tree(pidfile)
    run_id = las.inspect(name)["runs"][0]["run_id"]
    return tree, run_id


def _check_boundary(las: Las, name: str, tree: Tree, run_id: str, boundary: str) -> None:
    """While it runs: the descendants left the group, and (cgroup) they are in its cgroup."""
    main = tree.procs[0][0]
    escaped = [p for p, _ in tree.procs[1:]]
    assert all(os.getpgid(p) != main for p in escaped if pid_alive(p))
    processes = las.inspect(name)["limits"]["processes"]
    if boundary == "cgroup":
        assert "cgroup" in processes, processes
        assert _run_dirs(run_id), "the run has a cgroup while it runs"
    else:
        assert "not tracked" in processes, processes


def _assert_ended(las: Las, name: str, tree: Tree, run_id: str) -> dict[str, object]:
    tree.assert_gone()
    wait_until(lambda: not _run_dirs(run_id), timeout=10, message="the run's cgroup removed")
    return las.ps()[name]


def _leftovers(reason: str) -> int:
    m = re.search(r"; (\d+) leftover process\(es\) killed", reason)
    return int(m.group(1)) if m else 0


# --- las stop ------------------------------------------------------------------------------


def test_stop_a_setsid_child_ignoring_sigterm(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    tree, run_id = _start(las, module_factory, tmp_path, "setsid")
    _check_boundary(las, "setsid", tree, run_id, boundary)
    t0 = time.monotonic()
    las.ok("stop", "setsid", "--timeout", "1")
    info = _assert_ended(las, "setsid", tree, run_id)
    assert info["state"] == "stopped"
    reason = str(info["reason"])
    # The main process exits on SIGTERM; its escaped child ignores it: SIGKILL after 1 s.
    assert reason.startswith("stopped: exited on SIGTERM"), reason
    assert _leftovers(reason) == 1, reason
    assert time.monotonic() - t0 >= 1.0


def test_stop_a_chain_of_three_escaped_generations(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    tree, run_id = _start(
        las, module_factory, tmp_path, "chain", "--chain", "3", "--main-ignore-term"
    )
    assert len(tree.procs) == 4
    _check_boundary(las, "chain", tree, run_id, boundary)
    las.ok("stop", "chain", "--timeout", "1")
    info = _assert_ended(las, "chain", tree, run_id)
    assert info["state"] == "stopped"
    assert "killed with SIGKILL" in str(info["reason"])
    assert _leftovers(str(info["reason"])) == 3, info["reason"]


def test_stop_many_escaped_children(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    tree, run_id = _start(las, module_factory, tmp_path, "many", "--many", "25", "--double-fork")
    assert len(tree.procs) == 26
    las.ok("stop", "many", "--timeout", "1")
    info = _assert_ended(las, "many", tree, run_id)
    assert info["state"] == "stopped"
    assert _leftovers(str(info["reason"])) == 25, info["reason"]


def test_the_stop_signal_reaches_escaped_children_first(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    # They obey the stop signal: it must reach them (no SIGKILL, no wait for the timeout).
    tree, run_id = _start(
        las, module_factory, tmp_path, "obey", "--many", "3", "--chain", "2", "--obey-term"
    )
    t0 = time.monotonic()
    las.ok("stop", "obey", "--timeout", "60")
    assert time.monotonic() - t0 < 30
    info = _assert_ended(las, "obey", tree, run_id)
    assert info["state"] == "stopped"
    assert info["reason"] == "stopped: exited on SIGTERM", info["reason"]


def test_a_plan_stop_signal_the_children_ignore(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    # The plan's stop signal is SIGINT; the escaped children ignore SIGTERM but not SIGINT
    # (Python's default), the double-forked daemon gets it too; nothing is left to SIGKILL.
    tree, run_id = _start(
        las,
        module_factory,
        tmp_path,
        "sigint",
        "--many",
        "2",
        "--double-fork",
        stop={"signal": "SIGINT", "timeout": "20s"},
    )
    las.ok("stop", "sigint")
    info = _assert_ended(las, "sigint", tree, run_id)
    assert info["state"] == "stopped"
    assert "after SIGINT" in str(info["reason"]) or "on SIGINT" in str(info["reason"])
    assert _leftovers(str(info["reason"])) == 0, info["reason"]


# --- the main process ends on its own ---------------------------------------------------


def test_main_exits_0_leaving_a_double_forked_daemon(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    tree, run_id = _start(
        las, module_factory, tmp_path, "daemon", "--double-fork", "--many", "2", "--main", "exit0"
    )
    wait_until(lambda: las.state("daemon") != "running", timeout=20, message="the end")
    info = _assert_ended(las, "daemon", tree, run_id)
    assert info["state"] == "stopped"
    assert str(info["reason"]).startswith("exited on its own with code 0")
    assert _leftovers(str(info["reason"])) == 2, info["reason"]


@pytest.mark.parametrize("how", ["segv", "abort"])
def test_main_crashes_leaving_escaped_children(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str, how: str
) -> None:
    tree, run_id = _start(las, module_factory, tmp_path, "crash", "--chain", "2", "--main", how)
    wait_until(lambda: las.state("crash") != "running", timeout=20, message="the crash")
    info = _assert_ended(las, "crash", tree, run_id)
    assert info["state"] == "failed"
    sig = {"segv": "SIGSEGV", "abort": "SIGABRT"}[how]
    assert str(info["reason"]).startswith(f"killed by signal {sig}"), info["reason"]
    assert _leftovers(str(info["reason"])) == 2, info["reason"]


def test_out_of_memory_leaves_nothing(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    # cgroup: the kernel's OOM killer ends the main process (the largest); no cgroup: the
    # supervisor's RSS sampler kills the run. Either way its escaped children go too.
    tree, run_id = _start(
        las,
        module_factory,
        tmp_path,
        "hog",
        "--many",
        "2",
        "--main",
        "hog",
        resources={"memory": "96MiB"},
    )
    wait_until(lambda: las.state("hog") != "running", timeout=30, message="killed for memory")
    info = _assert_ended(las, "hog", tree, run_id)
    assert info["state"] == "failed"
    assert str(info["reason"]).startswith("out of memory (limit 96MiB; "), info["reason"]
    assert _leftovers(str(info["reason"])) == 2, info["reason"]


def test_a_health_failure_stop_leaves_nothing(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    # Never healthy: stopped at the start timeout with the stop signal, which its escaped
    # children ignore: SIGKILL after the stop timeout. The probe's own process is las's,
    # not the workload's: it is not counted.
    tree, run_id = _start(
        las,
        module_factory,
        tmp_path,
        "sick",
        "--many",
        "2",
        health={"command": ["false"], "interval": "300ms", "start_timeout": "3s"},
        stop={"timeout": "1s"},
    )
    wait_until(lambda: las.state("sick") != "running", timeout=30, message="the health stop")
    info = _assert_ended(las, "sick", tree, run_id)
    assert info["state"] == "failed"
    assert str(info["reason"]).startswith("did not become healthy within 3s"), info["reason"]
    assert _leftovers(str(info["reason"])) == 2, info["reason"]


@pytest.mark.parametrize("how", ["unexecutable", "removed"])
def test_failed_start_leaves_nothing(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str, how: str
) -> None:
    # Plan-time checks pass (its first run works); then the executable goes away, so the
    # next start fails in the supervisor, after the cgroup was made and the child forked.
    script = tmp_path / "late.sh"
    script.write_text("#!/bin/sh\nsleep 1000\n")
    script.chmod(0o755)
    las.ok("run", str(module_factory("nostart", [str(script)])))
    las.ok("stop", "nostart")
    if how == "unexecutable":
        script.chmod(0o644)
    else:
        script.unlink()
    res = las("start", "nostart")
    assert res.code != 0
    info = las.ps()["nostart"]
    assert info["state"] == "failed"
    assert "could not start" in str(info["reason"]), info["reason"]
    assert "cgroup not removed" not in str(info["reason"])
    for run in las.inspect("nostart")["runs"]:
        assert not _run_dirs(run["run_id"]), run


# --- the supervisor is killed ------------------------------------------------------------


def _handle_escaped(las: Las, run_id: str) -> list[int]:
    db = sqlite3.connect(las.home / "state.db")
    try:
        row = db.execute("SELECT handle FROM runs WHERE run_id=?", (run_id,)).fetchone()
    finally:
        db.close()
    from localaistack.store.db import handle_state

    state = handle_state(row[0] if row else None)  # the native backend's part of the handle
    return [int(p) for p, _ in state.get("descendants") or []]


def test_supervisor_sigkilled_escaped_children_are_killed_by_the_next_las(
    las: Las, module_factory: ModuleFactory, tmp_path: Path, boundary: str
) -> None:
    tree, run_id = _start(
        las, module_factory, tmp_path, "lost", "--many", "2", "--chain", "2", "--double-fork"
    )
    escaped = [p for p, _ in tree.procs[1:]]
    if boundary == "no-cgroup":
        # Without a cgroup the supervisor records the escaped set (once a second): wait
        # until it has, as a supervisor killed later would have.
        wait_until(
            lambda: set(escaped) <= set(_handle_escaped(las, run_id)),
            timeout=15,
            message="the escaped descendants recorded",
        )
    db = sqlite3.connect(las.home / "state.db")
    sup = db.execute("SELECT sup_pid FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]
    db.close()
    os.kill(sup, signal.SIGKILL)
    main = tree.procs[0][0]
    wait_until(lambda: not pid_alive(main), timeout=10, message="the main process died with it")
    # Escaped descendants have no parent-death signal: they run on until the next las.
    assert len(tree.alive()) == 4
    info = las.ps()["lost"]
    tree.assert_gone(timeout=5)
    assert not _run_dirs(run_id)
    assert info["state"] == "failed"
    reason = str(info["reason"])
    assert reason.startswith(f"lost: the supervisor (pid {sup}) died unexpectedly"), reason
    assert "4 process(es)" in reason and "killed" in reason, reason
    run = las.inspect("lost")["runs"][0]
    ends = [t for t in run["transitions"] if t["to"] == "failed"]
    assert ends and ends[-1]["reason"] == reason and ends[-1]["at"]

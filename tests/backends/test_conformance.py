"""One conformance suite for every backend (tests/backends/conftest.py: BACKENDS).

Each test runs the same workload (a ``sh -c`` script: the host's sh, or busybox's in the
test image) through the las CLI and its real supervisor, and checks what every backend
must do alike; where it reaches under the CLI, it uses only the backend interface
(runtime/backend.py) and the handle the store keeps.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.backends.conftest import ModuleMaker
from tests.conftest import Las, pid_alive, wait_until

from localaistack.errors import RecoveryFailed
from localaistack.runtime import backends
from localaistack.runtime.backend import HANDLE_VERSION, Handle, RunContext, RunStatus
from localaistack.store.db import handle_state, home_label

IDLE = "trap '' TERM; echo up; while true; do sleep 0.1; done"  # ignores SIGTERM
SERVE = "echo up; while true; do sleep 0.1; done"  # ends on SIGTERM (after its sleep)


def last_run(las: Las, name: str) -> dict[str, Any]:
    run: dict[str, Any] = las.inspect(name)["runs"][0]
    return run


def ended(las: Las, name: str, timeout: float = 60) -> dict[str, Any]:
    """The last run once it has ended; on a timeout the failure shows the run's
    transitions and output (a container engine on a loaded machine can be slow)."""
    deadline = time.monotonic() + timeout
    while las.state(name) not in ("stopped", "failed"):
        if time.monotonic() > deadline:
            run = last_run(las, name)
            pytest.fail(
                f"timed out after {timeout:g}s waiting for {name} to end; its run: "
                f"{json.dumps(run['transitions'])}\n{las('logs', name).out[-2000:]}"
            )
        time.sleep(0.05)
    return last_run(las, name)


def run_row(las: Las, name: str) -> sqlite3.Row:
    db = sqlite3.connect(las.home / "state.db")
    db.row_factory = sqlite3.Row
    try:
        row: sqlite3.Row = db.execute(
            "SELECT r.*, i.plan AS plan FROM runs r JOIN instances i ON i.name = r.instance "
            "WHERE r.run_id = i.current_run AND i.name = ?",
            (name,),
        ).fetchone()
    finally:
        db.close()
    return row


def recover(las: Las, row: sqlite3.Row, handle: str | None = None) -> RunStatus:
    """What the backend says of the run, recovered from the stored handle alone."""
    plan = json.loads(row["plan"])
    ctx = RunContext(
        run_id=row["run_id"],
        instance=row["instance"],
        plan=plan,
        shown=plan,
        db_path=str(las.home / "state.db"),
        shim_pid=os.getpid(),
        own_pids=set(),
    )
    name = row["backend"]
    stored = row["handle"] if handle is None else handle
    return backends.create(name, ctx).recover(Handle.load(stored, name))


def kill_supervisor(row: sqlite3.Row) -> None:
    os.kill(row["sup_pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(row["sup_pid"]), message="supervisor gone")


def test_start_and_exit_code(las: Las, backend: str, module: ModuleMaker) -> None:
    las.ok("run", str(module("three", "echo started; exit 3")))
    run = ended(las, "three")
    assert run["state"] == "failed" and run["exit_code"] == 3, run
    assert run["reason"].startswith("exited with code 3; last output: started"), run
    las.ok("run", str(module("zero", "exit 0")))
    run = ended(las, "zero")
    assert (run["state"], run["exit_code"], run["reason"]) == (
        "stopped",
        0,
        "exited on its own with code 0",
    )


def test_the_interface_alone(las: Las, backend: str, module: ModuleMaker) -> None:
    """start, attach, poll_exit (in a selector loop of the caller's), cleanup: no shim."""
    las.ok("run", str(module("alone", "echo out; echo err >&2; exit 5")))
    ended(las, "alone")
    row = run_row(las, "alone")  # its plan, run again under another run id
    drive = Path(__file__).with_name("drive.py")
    res = subprocess.run(
        [
            sys.executable,
            str(drive),
            str(las.home / "state.db"),
            "0123abcd4567",
            "alone",
            row["plan"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=las.env,
    )
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["exit"]["code"] == 5 and got["exit"]["lost"] is None, got
    assert "out" in got["output"] and "err" in got["output"], got
    assert got["left"] == []
    assert Handle.load(got["handle"], backend).backend == backend


def test_killed_by_a_signal(las: Las, backend: str, module: ModuleMaker) -> None:
    # "$$$$": a manifest's "$$" is a literal "$"; the script reads "kill -s SEGV $$".
    las.ok("run", str(module("segv", "echo going; kill -s SEGV $$$$")))
    run = ended(las, "segv")
    assert run["state"] == "failed" and run["signal"] == "SIGSEGV", run


def test_every_output_line_captured(las: Las, backend: str, module: ModuleMaker) -> None:
    script = "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; echo oops >&2"
    las.ok("run", str(module("chatty", script)))
    ended(las, "chatty")
    out = las.ok("logs", "chatty").out.splitlines()
    lines = [x for x in out if x.startswith("line ")]
    assert lines == [f"line {i}" for i in range(2000)]
    assert "oops" in out


def test_stop_honours_the_grace_then_kills(las: Las, backend: str, module: ModuleMaker) -> None:
    las.ok("run", str(module("stubborn", IDLE)))
    wait_until(lambda: "up" in las.ok("logs", "stubborn").out, 20, message="it runs")
    t0 = time.monotonic()
    las.ok("stop", "stubborn")
    took = time.monotonic() - t0
    run = last_run(las, "stubborn")
    assert run["state"] == "stopped", run
    assert (
        "did not exit within the stop timeout after SIGTERM; killed with SIGKILL" in (run["reason"])
    ), run
    assert took >= 1.9, took  # the 2 s grace was given
    # ... and then it was killed: no longer than the backend's own margin after it.
    assert took < 2 + backends.get(backend).capabilities.stop_margin + 10, took


def test_stop_of_a_workload_that_obeys(las: Las, backend: str, module: ModuleMaker) -> None:
    las.ok("run", str(module("polite", SERVE)))
    wait_until(lambda: "up" in las.ok("logs", "polite").out, 20, message="it runs")
    las.ok("stop", "polite")
    run = last_run(las, "polite")
    assert (run["state"], run["reason"]) == ("stopped", "stopped: exited on SIGTERM"), run


def test_stop_of_a_run_that_already_ended(las: Las, backend: str, module: ModuleMaker) -> None:
    las.ok("run", str(module("brief", "exit 4")))
    before = ended(las, "brief")
    las.ok("stop", "brief")  # nothing to stop: not an error, and nothing changes
    assert last_run(las, "brief") == before


def test_health(las: Las, backend: str, module: ModuleMaker) -> None:
    good = {"command": ["sh", "-c", "echo fine"], "interval": "300ms", "start_timeout": "20s"}
    res = las.ok("run", str(module("fine", SERVE, health=good)))  # waits until healthy
    assert "healthy" in res.out
    assert las.ps()["fine"]["health"] == "healthy"
    bad = {"command": ["false"], "interval": "300ms", "start_timeout": "1s"}
    las("run", str(module("sick", SERVE, health=bad)))
    run = ended(las, "sick")
    assert run["state"] == "failed", run
    assert run["reason"].startswith("did not become healthy within 1s"), run


def test_recover_after_the_supervisor_is_killed(
    las: Las, backend: str, module: ModuleMaker
) -> None:
    las.ok("run", str(module("lasting", SERVE)))
    wait_until(lambda: run_row(las, "lasting")["pid"] is not None, 20, message="its pid")
    row = run_row(las, "lasting")
    caps = backends.get(backend).capabilities
    if caps.recover:
        before = recover(las, row)
        assert before.running
        kill_supervisor(row)
        assert recover(las, row) == before  # the same inspect, from the handle alone
        info = las.ps()["lasting"]  # reconciles: a new supervisor re-attaches
        assert info["state"] == "running" and info["run_id"] == row["run_id"]
        las.ok("stop", "lasting")
        assert las.state("lasting") == "stopped"
    else:
        with pytest.raises(RecoveryFailed):
            recover(las, row)
        kill_supervisor(row)
        run = last_run(las, "lasting")  # reconciles: a synthetic exit
        assert run["state"] == "failed", run
        assert run["reason"].startswith("lost: the supervisor"), run
        wait_until(lambda: not pid_alive(row["pid"]), message="the workload ended with it")


def test_a_handle_of_an_unknown_version(las: Las, backend: str, module: ModuleMaker) -> None:
    future = json.dumps({"backend": backend, "version": HANDLE_VERSION + 1, "state": {}})
    with pytest.raises(RecoveryFailed, match=f"version {HANDLE_VERSION + 1}"):
        Handle.load(future, backend)
    if not backends.get(backend).capabilities.recover:
        return  # its runs are never recovered from their handle (the test above)
    las.ok("run", str(module("future", SERVE)))
    wait_until(lambda: run_row(las, "future")["pid"] is not None, 20, message="its pid")
    row = run_row(las, "future")
    with pytest.raises(RecoveryFailed):
        recover(las, row, future)
    db = sqlite3.connect(las.home / "state.db")
    with db:
        db.execute("UPDATE runs SET handle=? WHERE run_id=?", (future, row["run_id"]))
    db.close()
    kill_supervisor(row)
    run = last_run(las, "future")  # reconciles: the handle cannot be used
    assert run["state"] == "failed", run
    assert f"has version {HANDLE_VERSION + 1}" in run["reason"], run


def test_a_workload_no_run_records_is_found_and_ended(
    las: Las, backend: str, module: ModuleMaker
) -> None:
    """``unrecorded`` finds a live run of the home that ``active`` does not name (what a
    lost home leaves), ``end_unrecorded`` ends it; an active one is never listed."""
    las.ok("run", str(module("unlisted", SERVE)))
    wait_until(lambda: run_row(las, "unlisted")["pid"] is not None, 20, message="its pid")
    row = run_row(las, "unlisted")
    cls, label = backends.get(backend), home_label(las.home / "state.db")
    if not cls.capabilities.recover and not handle_state(row["handle"]).get("cgroup"):
        pytest.skip("no cgroup here: a run that dies with its shim is found by its handle")
    run_id = str(row["run_id"])
    assert run_id not in {u.run_id for u in cls.unrecorded(label, {run_id}, thorough=True)}
    found = [u for u in cls.unrecorded(label, set(), thorough=True) if u.run_id == run_id]
    assert len(found) == 1 and found[0].backend == backend, found
    done = cls.end_unrecorded(label, run_id, 2.0, thorough=True)
    assert done is not None and done.startswith(f"?{run_id}: stopped"), done
    assert cls.end_unrecorded(label, run_id, 2.0, thorough=True) is None  # nothing left
    ended(las, "unlisted")

"""Issue #17, item 7: a lost home never hides a running workload.

Real supervisors, real workloads, real cgroups: the home is removed (``rm -rf``), replaced
by another, or its database emptied or overwritten while a run is active. Each test asserts
what holds: the supervisor stops its workload, the damaged database is refused with
"corrupt"/"empty" and what to do, and `las ps --all` finds the workloads no record knows
(``?RUN_ID``), which `las stop` ends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import Las, pid_alive, wait_until

from localaistack.runtime import cgroups
from localaistack.runtime.engines import EngineError
from localaistack.store.db import home_label


def _sup(home: Path, name: str) -> tuple[int, int, str]:
    """(supervisor pid, workload pid, run id) of the instance's current run, read directly."""
    conn = sqlite3.connect(str(home / "state.db"))
    try:
        row = conn.execute(
            "SELECT r.sup_pid, r.pid, r.run_id FROM instances i JOIN runs r "
            "ON r.run_id = i.current_run WHERE i.name=?",
            (name,),
        ).fetchone()
    finally:
        conn.close()
    return int(row[0]), int(row[1] or 0), str(row[2])  # a container's pid comes later


def _sleeper(module_factory: Any, name: str, *flags: str, **runtime: Any) -> Path:
    code = "import signal, time\n"
    if "ignore" in flags:
        code += "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    code += "print('up', flush=True)\nwhile True: time.sleep(1)\n"
    return module_factory(name, [sys.executable, "-c", code], **runtime)  # type: ignore[no-any-return]


def _cgroup_of(home: Path, run_id: str) -> cgroups.RunCgroup | None:
    return cgroups.existing(run_id, home=home_label(home / "state.db"))


@pytest.mark.parametrize("how", ["rm -rf", "replaced"])
def test_supervisor_stops_its_workload_when_its_home_is_lost(
    las: Las, module_factory: Any, tmp_path: Path, how: str
) -> None:
    home = las.home
    _sleeper(module_factory, "lost")
    las.ok("run", str(tmp_path / "lost.yaml"), "--detach")
    sup, pid, run_id = _sup(home, "lost")
    assert pid_alive(pid) and pid_alive(sup)
    if how == "rm -rf":
        shutil.rmtree(home)
    else:  # moved away, and another (empty) home made in its place by a las command
        home.rename(tmp_path / "home.old")
        las.ok("ps", "--all")
    wait_until(lambda: not pid_alive(pid), timeout=15, message="workload stopped")
    wait_until(lambda: not pid_alive(sup), timeout=15, message="supervisor exited")
    wait_until(lambda: _cgroup_of(home, run_id) is None, timeout=10, message="cgroup removed")
    if how == "replaced":  # the old home's log says why (the supervisor wrote it there)
        text = (tmp_path / "home.old" / "logs" / "lost" / f"{run_id}.log").read_text()
        # "its LAS_HOME ... was removed", or "... replaced by another file" once the new
        # home's database exists: whichever the supervisor saw first.
        assert "stopping the workload" in text and ("removed" in text or "replaced" in text)


def test_home_lost_workload_ignoring_sigterm_is_killed_after_the_timeout(
    las: Las, module_factory: Any, tmp_path: Path
) -> None:
    _sleeper(module_factory, "stubborn", "ignore", stop={"timeout": "1s"})
    las.ok("run", str(tmp_path / "stubborn.yaml"), "--detach")
    sup, pid, run_id = _sup(las.home, "stubborn")
    shutil.rmtree(las.home)
    wait_until(lambda: not pid_alive(pid), timeout=15, message="workload killed")
    wait_until(lambda: not pid_alive(sup), timeout=15, message="supervisor exited")
    assert _cgroup_of(las.home, run_id) is None


def test_empty_state_db_is_refused_not_reinitialised(
    las: Las, module_factory: Any, tmp_path: Path
) -> None:
    _sleeper(module_factory, "zero")
    las.ok("run", str(tmp_path / "zero.yaml"), "--detach")
    db = las.home / "state.db"
    os.truncate(db, 0)
    for args in (
        ("ps",),
        ("ps", "--all"),
        ("inspect", "zero"),
        ("run", str(tmp_path / "zero.yaml")),
    ):
        res = las(*args)
        assert res.code == 5, (args, res)
        assert "empty (0 bytes)" in res.err and "mv " in res.err, res.err
    assert db.stat().st_size == 0  # never silently made a fresh store


def test_garbage_state_db_says_corrupt_and_what_to_do(
    las: Las, module_factory: Any, tmp_path: Path
) -> None:
    _sleeper(module_factory, "junk")
    las.ok("run", str(tmp_path / "junk.yaml"), "--detach")
    _, pid, run_id = _sup(las.home, "junk")
    db = las.home / "state.db"
    with open(db, "r+b") as f:  # the same file (inode): the supervisor does not notice
        f.write(os.urandom(8192))
    for args in (("ps", "--all"), ("stop", "junk"), ("logs", "junk")):
        res = las(*args)
        assert res.code == 5, (args, res)
        assert "corrupt" in res.err and "mv " in res.err, res.err
        assert "permission" not in res.err
    # Moved aside as the hint says: a fresh home, which finds the workload and ends it.
    db.rename(las.home / "state.db.corrupt")
    for side in ("-wal", "-shm"):
        (las.home / f"state.db{side}").unlink(missing_ok=True)
    # The supervisor sees its database gone and stops the workload itself; either way
    # nothing of it is left running unseen.
    wait_until(lambda: not pid_alive(pid), timeout=15, message="workload stopped")
    assert _cgroup_of(las.home, run_id) is None or not _cgroup_of(las.home, run_id).pids()  # type: ignore[union-attr]


ESCAPE = (
    "import os, subprocess, time\n"
    "subprocess.Popen(['sleep', '300'], start_new_session=True)\n"  # leaves the group
    "print('up', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def test_ps_all_lists_an_unknown_native_workload_and_stop_ends_it(
    las: Las, module_factory: Any, tmp_path: Path
) -> None:
    module_factory("escape", [sys.executable, "-c", ESCAPE])
    las.ok("run", str(tmp_path / "escape.yaml"), "--detach")
    sup, pid, run_id = _sup(las.home, "escape")
    label = home_label(las.home / "state.db")
    wait_until(lambda: len(cgroups.of_home(label)[run_id].pids()) >= 2, message="escapee")
    os.kill(sup, signal.SIGKILL)  # no supervisor to notice; the main process dies with it
    wait_until(lambda: not pid_alive(pid), timeout=10, message="workload died with supervisor")
    shutil.rmtree(las.home)  # ... and no record: only the cgroup knows the escapee
    escapee = cgroups.of_home(label)[run_id].pids()
    assert escapee, "the escaped descendant should still run"
    res = las("ps", "--all", "--json")
    assert res.code == 0, res
    assert "still run with no record" in res.err and f"?{run_id}" in res.err
    rows = {r["name"]: r for r in res.json()}
    row = rows[f"?{run_id}"]
    assert row["state"] == "orphaned" and row["pid"] in escapee
    assert f"las stop ?{run_id}" in row["reason"]
    table = las.ok("ps", "--all").out
    assert f"?{run_id}" in table and "orphaned" in table
    out = las.ok("stop", f"?{run_id}", "--timeout", "2").out
    assert "stopped" in out
    assert not any(pid_alive(p) for p in escapee)
    assert run_id not in cgroups.of_home(label)
    assert f"?{run_id}" not in {r["name"] for r in las.ok("ps", "--all", "--json").json()}


def test_rm_force_ends_an_unknown_workload(las: Las, module_factory: Any, tmp_path: Path) -> None:
    module_factory("escape2", [sys.executable, "-c", ESCAPE])
    las.ok("run", str(tmp_path / "escape2.yaml"), "--detach")
    sup, pid, run_id = _sup(las.home, "escape2")
    label = home_label(las.home / "state.db")
    wait_until(lambda: len(cgroups.of_home(label)[run_id].pids()) >= 2, message="escapee")
    os.kill(sup, signal.SIGKILL)
    wait_until(lambda: not pid_alive(pid), timeout=10, message="workload died with supervisor")
    (las.home / "state.db").unlink()  # the records alone are lost: the home stays
    escapee = cgroups.of_home(label)[run_id].pids()
    res = las("rm", f"?{run_id}")
    assert res.code == 4 and "las rm -f" in res.err, res
    assert all(pid_alive(p) for p in escapee)
    las.ok("rm", "-f", f"?{run_id}")
    assert not any(pid_alive(p) for p in escapee)
    assert run_id not in cgroups.of_home(label)


@pytest.mark.docker
def test_home_lost_stops_a_container(las: Las, tmp_path: Path) -> None:
    """A container run's supervisor stops its container when the home is removed."""
    import yaml
    from tests.conftest import TEST_IMAGE, usable_engine

    eng = usable_engine("docker")
    las.home.mkdir(mode=0o700, exist_ok=True)
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": "docker"}))
    container = {"image": TEST_IMAGE, "command": ["sleep", "300"]}
    manifest = {
        "name": "boxed",
        "runtime": {"modes": ["container"], "container": container, "stop": {"timeout": "2s"}},
    }
    path = tmp_path / "boxed.yaml"
    path.write_text(yaml.safe_dump(manifest))
    las.ok("run", str(path), "--detach")
    label = home_label(las.home / "state.db")
    found = [c for c in eng.list_labelled("las.home", label) if c.running]
    assert found, "the container should run"
    try:
        shutil.rmtree(las.home)
        wait_until(
            lambda: not [c for c in eng.list_labelled("las.home", label) if c.running],
            timeout=60,
            message="container stopped",
        )
        # Its supervisor removes it at the end of the run, as after any stop.
        wait_until(
            lambda: not eng.list_labelled("las.home", label),
            timeout=30,
            message="container removed by its supervisor",
        )
    finally:
        for c in eng.list_labelled("las.home", label):  # only after a failure
            with contextlib.suppress(EngineError):  # (its supervisor may be removing it)
                eng.remove(c.id)


@pytest.mark.docker
def test_ps_all_lists_an_unknown_container_and_stop_ends_it(las: Las, tmp_path: Path) -> None:
    """Its supervisor SIGKILLed and the home removed: only the container's labels are left."""
    import yaml
    from tests.conftest import TEST_IMAGE, usable_engine

    eng = usable_engine("docker")
    las.home.mkdir(mode=0o700, exist_ok=True)
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": "docker"}))
    container = {"image": TEST_IMAGE, "command": ["sleep", "300"]}
    manifest = {
        "name": "boxed2",
        "runtime": {"modes": ["container"], "container": container, "stop": {"timeout": "2s"}},
    }
    path = tmp_path / "boxed2.yaml"
    path.write_text(yaml.safe_dump(manifest))
    las.ok("run", str(path), "--detach")
    sup, _, run_id = _sup(las.home, "boxed2")
    label = home_label(las.home / "state.db")
    try:
        os.kill(sup, signal.SIGKILL)
        wait_until(lambda: not pid_alive(sup), message="supervisor gone")
        shutil.rmtree(las.home)
        (st,) = [c for c in eng.list_labelled("las.home", label) if c.running]
        rows = {r["name"]: r for r in las.ok("ps", "--all", "--json").json()}
        row = rows[f"?{run_id}"]
        assert row["state"] == "orphaned" and row["mode"] == "docker"
        assert st.id[:12] in row["reason"]
        out = las.ok("stop", f"?{run_id}", "--timeout", "1").out
        assert "stopped and removed docker container" in out
        assert eng.list_labelled("las.home", label) == []
        assert f"?{run_id}" not in {r["name"] for r in las.ok("ps", "--all", "--json").json()}
    finally:
        for c in eng.list_labelled("las.home", label):
            eng.remove(c.id)

"""Stop and interrupt semantics a user can trust (issue #17, items 6 and 8).

- Of several pending `las stop`s, the earliest deadline wins (native and container runs);
  a later, longer one never extends it.
- `las stop` returns once the run has ended, or exits 4 saying it is still stopping.
- A stop timeout outside 0..3600 s is refused up front (exit 2); none leaves a run
  `stopping` for long.
- Ctrl-C on `las run` while it waits for health: exit 130, it says the instance goes on
  starting and how to stop it, and the instance does go on.
- `las stop` on a full disk still ends the workload, and says the state was not recorded.

Real workloads (tests/programs), real supervisors, real engines, a real full tmpfs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from tests.conftest import (
    PROGRAMS,
    TEST_IMAGE,
    Las,
    pid_alive,
    usable_engine,
    wait_until,
    workload,
)

# Generous: this machine is shared (2 vCPUs, several test sessions at once).
SLOW = 60.0


def _pids(pidfile: Path) -> list[int]:
    wait_until(pidfile.exists, SLOW, message=f"the workload writes {pidfile}")
    return [int(p) for p in pidfile.read_text().split()]


def _run_row(las: Las, name: str) -> sqlite3.Row:
    db = sqlite3.connect(las.home / "state.db")
    db.row_factory = sqlite3.Row
    try:
        row = db.execute(
            "SELECT r.* FROM runs r JOIN instances i ON i.current_run = r.run_id WHERE i.name=?",
            (name,),
        ).fetchone()
    finally:
        db.close()
    assert row is not None
    return row  # type: ignore[no-any-return]


@contextlib.contextmanager
def _background(las: Las, *args: str) -> Iterator[subprocess.Popen[str]]:
    """`las ARGS` running beside the test; killed at the end whatever happens."""
    proc = las.popen(*args)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=SLOW)


def _stubborn(module_factory: Callable[..., Path], tmp_path: Path, name: str = "stubborn") -> Path:
    """A workload that ignores SIGTERM (only SIGKILL ends it), with a 10 s plan timeout."""
    return module_factory(
        name,
        workload("--ignore-sigterm", "--grandchildren", "1", "--pidfile", str(tmp_path / "pids")),
        stop={"signal": "SIGTERM", "timeout": "10s"},
    )


def _stopping(las: Las, name: str) -> None:
    wait_until(lambda: las.state(name) == "stopping", SLOW, 0.1, f"{name} is stopping")


# --- the earliest deadline wins ----------------------------------------------------------


@pytest.mark.parametrize("first,second", [(3000, 1), (3000, 0)])
def test_a_second_shorter_stop_wins_native(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path, first: int, second: int
) -> None:
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    pids = _pids(tmp_path / "pids")
    with _background(las, "stop", "stubborn", "--timeout", str(first)) as long_stop:
        _stopping(las, "stubborn")
        began = time.monotonic()
        res = las("stop", "stubborn", "--timeout", str(second), timeout=SLOW)
        took = time.monotonic() - began
        assert res.code == 0, res.err
        assert "stopped" in res.out and "killed with SIGKILL" in res.out
        assert took < 30, f"the shorter stop took {took:.1f}s"
        assert long_stop.wait(SLOW) == 0  # the first returns too: the run has ended
    assert not any(pid_alive(p) for p in pids)
    inspected = las.inspect("stubborn")
    assert inspected["state"] == "stopped"
    log = las.ok("logs", "stubborn").out
    assert "stop requested again" in log


def test_a_second_longer_stop_does_not_extend(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    pids = _pids(tmp_path / "pids")
    with _background(las, "stop", "stubborn", "--timeout", "2") as short_stop:
        _stopping(las, "stubborn")
        began = time.monotonic()
        res = las("stop", "stubborn", "--timeout", "3000", timeout=SLOW)
        took = time.monotonic() - began
        assert res.code == 0, res.err
        assert took < 40, f"the longer stop extended the deadline: {took:.1f}s"
        assert short_stop.wait(SLOW) == 0
    assert not any(pid_alive(p) for p in pids)
    row = _run_row(las, "stubborn")
    assert row["stop_timeout"] == 2  # the store kept the earliest deadline
    assert row["finished_at"] - row["stop_requested"] < 30


def test_a_stop_without_timeout_after_a_long_one_uses_the_plans(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """The plan's timeout (10 s) is a deadline too: it wins over a pending 3000 s."""
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    _pids(tmp_path / "pids")
    with _background(las, "stop", "stubborn", "--timeout", "3000"):
        _stopping(las, "stubborn")
        res = las("stop", "stubborn", timeout=SLOW)
        assert res.code == 0, res.err
    assert las.state("stubborn") == "stopped"


CONTAINER_STUBBORN = ["sh", "-c", "trap '' TERM; while true; do sleep 1; done"]


ENGINES = [pytest.param(e, marks=getattr(pytest.mark, e)) for e in ("podman", "docker")]


@pytest.mark.parametrize("engine_name", ENGINES)
def test_a_second_shorter_stop_wins_container(las: Las, tmp_path: Path, engine_name: str) -> None:
    engine = usable_engine(engine_name)
    las.home.mkdir(mode=0o700, exist_ok=True)
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": engine.name}))
    manifest = {
        "name": "cstub",
        "runtime": {
            "modes": ["container"],
            "container": {"image": TEST_IMAGE, "command": CONTAINER_STUBBORN},
            "stop": {"timeout": "10s"},
        },
    }
    path = tmp_path / "cstub.yaml"
    path.write_text(yaml.safe_dump(manifest))
    try:
        las.ok("run", "-d", str(path), timeout=SLOW * 2)
        with _background(las, "stop", "cstub", "--timeout", "3000") as long_stop:
            _stopping(las, "cstub")
            began = time.monotonic()
            res = las("stop", "cstub", "--timeout", "1", timeout=SLOW * 2)
            took = time.monotonic() - began
            assert res.code == 0, res.err
            assert "stopped" in res.out
            assert took < 45, f"the shorter stop took {took:.1f}s"
            assert long_stop.wait(SLOW) == 0
        assert las.state("cstub") == "stopped"
    finally:
        from localaistack.store.db import home_label

        for st in engine.list_labelled("las.home", home_label(las.home / "state.db")):
            engine.remove(st.id)
    assert not engine.list_labelled("las.home", home_label(las.home / "state.db"))


# --- ignoring SIGTERM, still stopping ----------------------------------------------------


@pytest.mark.parametrize("timeout", ["0", "0.5", "2"])
def test_a_workload_that_ignores_sigterm_is_killed_after_a_short_timeout(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path, timeout: str
) -> None:
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    pids = _pids(tmp_path / "pids")
    began = time.monotonic()
    res = las("stop", "stubborn", "--timeout", timeout, timeout=SLOW)
    assert res.code == 0, res.err
    assert time.monotonic() - began < float(timeout) + 30
    assert "killed with SIGKILL" in res.out
    assert not any(pid_alive(p) for p in pids)  # the grandchild too
    assert las.state("stubborn") == "stopped"


def test_stop_exits_4_while_the_run_is_still_stopping(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """A supervisor that cannot finish (here: frozen with SIGSTOP) within the timeout and
    margin: `las stop` says it is still stopping (exit 4), never exit 0."""
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    pids = _pids(tmp_path / "pids")
    sup = int(_run_row(las, "stubborn")["sup_pid"])
    with _background(las, "stop", "stubborn", "--timeout", "3000"):
        _stopping(las, "stubborn")
        os.kill(sup, signal.SIGSTOP)
        try:
            res = las("stop", "stubborn", "--timeout", "0", timeout=SLOW)
            assert res.code == 4, (res.code, res.out, res.err)
            assert "still stopping" in res.err
            assert "las stop stubborn --timeout 0" in res.err  # what to do
            assert las.state("stubborn") == "stopping"
        finally:
            os.kill(sup, signal.SIGCONT)
        # Thawed, it reads the earlier deadline (0 s) and kills the workload.
        wait_until(lambda: las.state("stubborn") == "stopped", SLOW, 0.1, "the run ends")
    assert not any(pid_alive(p) for p in pids)
    assert las.ok("stop", "stubborn").out.startswith("stubborn: stopped")


def test_two_stops_of_a_run_that_stops_fast_both_exit_0(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    las.ok("run", "-d", str(module_factory("quick", workload())))
    procs = [las.popen("stop", "quick", "--timeout", t) for t in ("5", "1")]
    for p in procs:
        out, err = p.communicate(timeout=SLOW)
        assert p.returncode == 0, err
        assert "stopped" in out
    assert las.state("quick") == "stopped"


# --- absurd timeouts ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["1e12", "inf", "-inf", "nan", "-1", "3600.5", "1e309"])
@pytest.mark.parametrize("command", ["stop", "restart"])
def test_an_absurd_stop_timeout_is_refused_up_front(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path, value: str, command: str
) -> None:
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    res = las(command, "stubborn", f"--timeout={value}")
    assert res.code == 2, (res.code, res.out, res.err)
    assert "3600" in res.err and "--timeout" in res.err
    assert las.state("stubborn") == "running"  # untouched
    row = _run_row(las, "stubborn")
    assert row["stop_requested"] is None


def test_the_maximum_stop_timeout_is_documented_and_accepted(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    from localaistack.runtime import supervision, supervisor

    assert supervision.STOP_TIMEOUT_MAX == supervisor.STOP_TIMEOUT_MAX == 3600
    assert supervision.STOP_NOW == supervisor.STOP_NOW
    assert "3600" in las.ok("stop", "--help").out
    las.ok("run", "-d", str(_stubborn(module_factory, tmp_path)))
    with _background(las, "stop", "stubborn", "--timeout", "3600"):
        _stopping(las, "stubborn")
        row = _run_row(las, "stubborn")
        assert row["stop_timeout"] == 3600
        assert las.ok("stop", "stubborn", "--timeout", "0", timeout=SLOW)
    assert las.state("stubborn") == "stopped"


def test_a_plans_huge_stop_timeout_is_bounded(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """A manifest's stop timeout beyond the maximum: refused by validation, or clamped to
    3600 s by the supervisor; never a run `stopping` for longer."""
    path = module_factory(
        "huge", workload("--ignore-sigterm"), stop={"signal": "SIGTERM", "timeout": "100000s"}
    )
    res = las("run", "-d", str(path), timeout=SLOW)
    if res.code != 0:  # refused up front: then it must say why
        assert "timeout" in res.err, res.err
        return
    with _background(las, "stop", "huge"):
        _stopping(las, "huge")
        assert "SIGKILL after 3600s" in las.ps()["huge"]["reason"]
        las.ok("stop", "huge", "--timeout", "0", timeout=SLOW)
    assert las.state("huge") == "stopped"


# --- Ctrl-C while `las run` waits for health ---------------------------------------------


def _slow_to_health(module_factory: Callable[..., Path], tmp_path: Path, name: str) -> Path:
    """An HTTP server whose health answers 503 until ``control`` says 200."""
    control = tmp_path / f"{name}.control"
    control.write_text("503")
    return module_factory(
        name,
        [sys.executable, str(PROGRAMS / "healthsrv.py"), "${host}", "${ports.http}", str(control)],
        ports=[{"name": "http", "port": 18090}],
        health={
            "http": {"port": "http", "path": "/"},
            "start_timeout": "300s",
            "interval": "1s",
            "timeout": "1s",
        },
    )


def test_ctrl_c_while_run_waits_for_health(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    path = _slow_to_health(module_factory, tmp_path, "slow")
    client = las.popen("run", str(path))
    try:
        wait_until(
            lambda: las.ps().get("slow", {}).get("state") == "running",
            SLOW,
            0.1,
            "`las run` waits for the health probe",
        )
        sup = int(_run_row(las, "slow")["sup_pid"])
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=SLOW)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 130, (client.returncode, out, err)
    assert "Traceback" not in err
    assert "goes on starting" in err
    assert "`las stop slow`" in err
    # It does go on: the probe passes once the server says so, and it becomes healthy.
    (tmp_path / "slow.control").write_text("200")
    wait_until(lambda: las.ps()["slow"]["health"] == "healthy", SLOW, 0.1, "slow is healthy")
    assert las.state("slow") == "running"
    assert pid_alive(sup)
    assert las.ok("stop", "slow", timeout=SLOW).out.startswith("slow: stopped")


def test_ctrl_c_while_start_waits_for_health(
    las: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    path = _slow_to_health(module_factory, tmp_path, "slow")
    (tmp_path / "slow.control").write_text("200")
    las.ok("run", str(path), timeout=SLOW)
    las.ok("stop", "slow", timeout=SLOW)
    (tmp_path / "slow.control").write_text("503")
    client = las.popen("start", "slow")
    try:
        wait_until(
            lambda: las.ps().get("slow", {}).get("state") == "running",
            SLOW,
            0.1,
            "`las start` waits for the health probe",
        )
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=SLOW)
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
    assert client.returncode == 130, err
    assert "goes on starting" in err and "Traceback" not in err
    assert las.state("slow") == "running"


# --- a full disk ---------------------------------------------------------------------------


@pytest.fixture
def full_home(las_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], None]]:
    """$LAS_HOME on a small tmpfs of its own; the fixture's value fills it up (root only).

    Set up before the `las` fixture (ask for it first), so that it is unmounted after
    that fixture's cleanup.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(home)], check=True
    )
    filler = home / "filler"

    def fill() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 16, 1 << 12, 1):  # to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
        finally:
            os.close(fd)

    try:
        yield fill
    finally:
        with contextlib.suppress(OSError):
            filler.unlink()
        subprocess.run(["umount", "-l", str(home)], check=False)


@pytest.mark.parametrize("stubborn", [False, True], ids=["exits-on-sigterm", "ignores-sigterm"])
def test_stop_reaches_the_workload_on_a_full_disk(
    full_home: Callable[[], None],
    las: Las,
    module_factory: Callable[..., Path],
    tmp_path: Path,
    stubborn: bool,
) -> None:
    flags = ("--ignore-sigterm",) if stubborn else ()
    path = module_factory(
        "onfull",
        workload(*flags, "--grandchildren", "1", "--pidfile", str(tmp_path / "pids")),
        stop={"signal": "SIGTERM", "timeout": "30s"},
    )
    las.ok("run", "-d", str(path), timeout=SLOW)
    pids = _pids(tmp_path / "pids")
    full_home()
    try:
        began = time.monotonic()
        res = las("stop", "onfull", "--timeout", "1", timeout=SLOW * 2)
        took = time.monotonic() - began
        alive = [p for p in pids if pid_alive(p)]
    finally:  # space again, whatever happened (the fixtures' cleanup needs it)
        (las.home / "filler").unlink()
    assert not alive, "the workload still runs"
    assert took < 45, f"stop took {took:.1f}s"
    assert res.code == 5, (res.code, res.out, res.err)
    assert "could not record" in res.err
    assert "full" in res.err  # why: "database or disk is full"
    assert "free space" in res.err  # what to do
    # With space again, the next command records the end.
    wait_until(lambda: las.state("onfull") in ("stopped", "failed"), SLOW, 0.2, "the end")
    # The supervisor kept the true end while the disk was full, and recorded it then.
    end = las.ps()["onfull"]
    assert end["state"] == "stopped", end["reason"]
    assert "lost" not in end["reason"] and "recorded late" in end["reason"], end["reason"]

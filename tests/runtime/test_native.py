"""Native execution, end to end through the real CLI, with real processes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.conftest import Las, pid_alive, wait_until, workload

ModuleFactory = Callable[..., Path]


def _pids(pidfile: Path) -> list[int]:
    return [int(x) for x in pidfile.read_text().split()]


def test_run_ps_logs_stop(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("w", workload("--stderr", "to stderr"))
    res = las.ok("run", str(path))
    assert res.out.startswith("w  run ") and "running" in res.out
    info = las.ps()["w"]
    assert info["state"] == "running" and info["mode"] == "native"
    assert pid_alive(info["pid"])
    wait_until(lambda: "ready" in las.ok("logs", "w").out, message="the workload's output")
    out = las.ok("logs", "w").out
    assert "to stderr\n" in out and "ready\n" in out
    stamped = las.ok("logs", "w", "--timestamps").out
    assert " stderr to stderr" in stamped and " stdout ready" in stamped
    res = las.ok("stop", "w")
    assert "stopped" in res.out
    after = las.ps()["w"]
    assert after["state"] == "stopped"
    assert after["reason"] == "stopped: exited on SIGTERM"
    assert not pid_alive(info["pid"])
    # ps without --all hides stopped instances, as docker ps does
    assert las.ok("ps", "--json").json() == []
    # stop is idempotent
    assert las("stop", "w").code == 0


IGNORED = (
    "import signal; print('ignored:', [s.name for s in "
    "(signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGTERM) "
    "if signal.getsignal(s) == signal.SIG_IGN]); print('blocked:', "
    "sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, ())))"
)


def _ignoring_and_blocking() -> None:
    """What a shell's background job, ``nohup`` and a careless parent leave to las."""
    for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR2])


def test_the_workload_starts_with_default_signals(las: Las, module_factory: ModuleFactory) -> None:
    # `las run` started where SIGINT, SIGQUIT and SIGHUP are ignored and SIGUSR2 blocked:
    # none of it may reach the workload (a stop signal it ignores would never stop it).
    path = module_factory(
        "sigs", [sys.executable, "-u", "-c", IGNORED + "; import time; time.sleep(300)"]
    )
    res = subprocess.run(
        [sys.executable, "-m", "localaistack", "run", "-d", str(path)],
        env=las.env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_ignoring_and_blocking,
    )
    assert res.returncode == 0, res.stderr
    wait_until(lambda: "blocked:" in las.ok("logs", "sigs").out, message="the workload's line")
    out = las.ok("logs", "sigs").out
    assert "ignored: []\n" in out and "blocked: []\n" in out, out
    assert las.ok("stop", "sigs").out.startswith("sigs: stopped")


def test_exit_code_is_recorded_as_failed(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("exit3", workload("--exit", "3"))
    las("run", str(path))  # may report running or failed: the exit races the report
    wait_until(lambda: las.state("exit3") == "failed", message="failed state")
    run = las.inspect("exit3")["runs"][0]
    assert run["exit_code"] == 3 and run["signal"] is None
    assert run["reason"] == "exited with code 3; last output: exiting with 3"
    assert run["finished_at"] is not None


def test_sigkill_of_workload(las: Las, module_factory: ModuleFactory) -> None:
    las.ok("run", str(module_factory("k", workload())))
    pid = las.ps()["k"]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: las.state("k") == "failed", message="failed state")
    run = las.inspect("k")["runs"][0]
    assert run["signal"] == "SIGKILL" and run["exit_code"] is None
    assert run["reason"].startswith("killed by signal SIGKILL")


def test_sigsegv(las: Las, module_factory: ModuleFactory) -> None:
    las("run", str(module_factory("segv", workload("--segv"))))
    wait_until(lambda: las.state("segv") == "failed", message="failed state")
    run = las.inspect("segv")["runs"][0]
    assert run["signal"] == "SIGSEGV"
    assert "killed by signal SIGSEGV" in run["reason"]


def test_ignoring_sigterm_gets_killed_after_timeout(
    las: Las, module_factory: ModuleFactory
) -> None:
    las.ok("run", str(module_factory("stubborn", workload("--ignore-sigterm"))))
    wait_until(lambda: "ready" in las.ok("logs", "stubborn").out, message="ready")
    pid = las.ps()["stubborn"]["pid"]
    t0 = time.monotonic()
    las.ok("stop", "stubborn", "--timeout", "1")
    took = time.monotonic() - t0
    assert 1.0 <= took < 8.0
    info = las.ps()["stubborn"]
    assert info["state"] == "stopped"
    assert "killed with SIGKILL" in info["reason"] and "SIGTERM" in info["reason"]
    assert not pid_alive(pid)
    assert "stop timeout passed" in las.ok("logs", "stubborn").out


def test_stop_reaches_every_descendant(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "pids"
    las.ok(
        "run",
        str(module_factory("tree", workload("--grandchildren", "2", "--pidfile", str(pidfile)))),
    )
    wait_until(pidfile.exists, message="pidfile")
    pids = _pids(pidfile)
    assert len(pids) == 3 and all(pid_alive(p) for p in pids)
    las.ok("stop", "tree")
    wait_until(
        lambda: not any(pid_alive(p) for p in pids), timeout=5, message="every descendant gone"
    )


def test_shell_with_background_grandchild(las: Las, module_factory: ModuleFactory) -> None:
    las.ok("run", str(module_factory("sh", ["sh", "-c", "sleep 1000 & sleep 1000"])))
    pgid = las.ps()["sh"]["pid"]

    def members() -> list[int]:
        out = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                        out.append(int(entry))
                except ProcessLookupError:
                    pass
        return out

    wait_until(lambda: len(members()) >= 2, message="shell and both sleeps")
    las.ok("stop", "sh")
    assert members() == []


def test_natural_exit_kills_leftover_descendants(las: Las, module_factory: ModuleFactory) -> None:
    # The main process exits at once; its background child must not outlive it unseen.
    las("run", str(module_factory("leaver", ["sh", "-c", "sleep 1000 & exit 0"])))
    wait_until(lambda: las.state("leaver") == "stopped", message="stopped")
    pgid = las.inspect("leaver")["runs"][0]["pid"]
    left = [
        int(e)
        for e in os.listdir("/proc")
        if e.isdigit() and pid_alive(int(e)) and _pgid(int(e)) == pgid
    ]
    assert left == []
    # The reason counts what had to be killed (the background sleep).
    assert (
        las.ps()["leaver"]["reason"]
        == "exited on its own with code 0; 1 leftover process(es) killed"
    )


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_supervisor_killed_then_ps_records_lost(las: Las, module_factory: ModuleFactory) -> None:
    las.ok("run", str(module_factory("orphan", workload())))
    info = las.ps()["orphan"]
    pid = info["pid"]
    db = sqlite3.connect(las.home / "state.db")
    sup = db.execute("SELECT sup_pid FROM runs WHERE run_id=?", (info["run_id"],)).fetchone()[0]
    db.close()
    os.kill(sup, signal.SIGKILL)
    # The workload dies with its supervisor (PR_SET_PDEATHSIG) ...
    wait_until(lambda: not pid_alive(pid), timeout=5, message="workload gone")
    # ... and the next las command records what happened.
    after = las.ps()["orphan"]
    assert after["state"] == "failed"
    assert after["reason"].startswith(f"lost: the supervisor (pid {sup}) died unexpectedly")
    events = las.ok("events", "--json").out
    assert "reconciled" in events


def test_reboot_is_detected_from_the_boot_id(las: Las, module_factory: ModuleFactory) -> None:
    las.ok("run", str(module_factory("boot", workload())))
    run_id = las.ps()["boot"]["run_id"]
    # A reboot cannot be done here: give the record another boot id, as after one.
    db = sqlite3.connect(las.home / "state.db")
    with db:
        db.execute("UPDATE runs SET boot_id='00000000-old-boot' WHERE run_id=?", (run_id,))
    db.close()
    info = las.ps()["boot"]
    assert info["state"] == "failed"
    assert "machine rebooted (boot id changed)" in info["reason"]


def test_cli_killed_mid_run_leaves_consistent_state(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory("midrun", workload())
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6):
        proc = las.popen("run", str(path))
        time.sleep(delay)  # the point of interruption, not a synchronisation
        proc.kill()
        proc.communicate()
        # Whatever moment it died at, the state is one of: never created; running with a
        # live workload; or an explicit failure. Never a 'starting' forever, never a ghost.
        items = las.ps()
        if "midrun" in items:
            info = items["midrun"]
            if info["state"] == "running":
                assert pid_alive(info["pid"])
            elif info["state"] == "starting":
                wait_until(
                    lambda: las.state("midrun") != "starting",
                    timeout=15,
                    message="starting to resolve",
                )
            assert las.state("midrun") in ("running", "failed", "created")
            las.ok("rm", "-f", "midrun")
        assert "midrun" not in las.ps()


def test_logs_rotation_keeps_every_line_in_order(las: Las, module_factory: ModuleFactory) -> None:
    n = 10_000
    path = module_factory(
        "chatty",
        workload("--lines", str(n), "--exit-after-lines"),
        logs={"max_size": "64KiB", "keep": 100},
    )
    las("run", str(path))
    wait_until(lambda: las.state("chatty") == "stopped", timeout=30, message="producer done")
    log = Path(las.inspect("chatty")["runs"][0]["log_path"])
    assert len(list(log.parent.glob(log.name + ".*"))) > 5  # it did rotate
    lines = las.ok("logs", "chatty").out.splitlines()
    numbered = [line for line in lines if line.startswith("line ")]
    assert numbered == [f"line {i:06d} " + "x" * 40 for i in range(n)]
    assert las.ok("logs", "chatty", "--tail", "3").out.splitlines()[-1].startswith("las: ")


def test_concurrent_runs_of_one_name_start_exactly_one(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory("race", workload())
    procs = [las.popen("run", str(path)) for _ in range(4)]
    results = [(p.wait(60), *p.communicate()) for p in procs]
    ok = [r for r in results if r[0] == 0]
    refused = [r for r in results if r[0] != 0]
    assert len(ok) == 1, results
    assert len(refused) == 3
    for _code, _out, err in refused:
        assert "race" in err and ("already" in err) and "Traceback" not in err
    runs = las.inspect("race")["runs"]
    assert len(runs) == 1 and runs[0]["state"] == "running"


def test_many_parallel_commands_leave_state_consistent(
    las: Las, module_factory: ModuleFactory
) -> None:
    paths = [module_factory(f"p{i}", workload()) for i in range(4)]
    procs = [las.popen("run", str(p)) for p in paths]
    procs += [las.popen("ps", "--all") for _ in range(4)]
    for p in procs:
        p.wait(60)
        _out, err = p.communicate()
        assert p.returncode == 0, err
    items = las.ps()
    assert sorted(items) == ["p0", "p1", "p2", "p3"]
    assert all(i["state"] == "running" and pid_alive(i["pid"]) for i in items.values())
    ports = [i["ports"] for i in items.values()]
    assert len(ports) == 4


def test_start_again_makes_a_new_run_and_keeps_old_log(
    las: Las, module_factory: ModuleFactory
) -> None:
    las.ok("run", str(module_factory("again", workload())))
    wait_until(lambda: "ready" in las.ok("logs", "again").out, message="ready")
    las.ok("stop", "again")
    first = las.inspect("again")["runs"][0]
    first_log = Path(first["log_path"]).read_bytes()
    las.ok("start", "again")
    runs = las.inspect("again")["runs"]
    assert [r["attempt"] for r in runs] == [1, 2]
    assert runs[1]["state"] == "running" and runs[1]["log_path"] != first["log_path"]
    assert Path(first["log_path"]).read_bytes() == first_log
    assert "ready" in las.ok("logs", "again", "--run", first["run_id"][:6]).out
    las.ok("restart", "again")
    assert len(las.inspect("again")["runs"]) == 3
    assert las.state("again") == "running"


def test_rm_keeps_logs_unless_purged(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("gone", workload())
    las.ok("run", str(path))
    res = las("rm", "gone")
    assert res.code == 4 and "is running" in res.err and "las stop gone" in res.err
    las.ok("stop", "gone")
    log = Path(las.inspect("gone")["runs"][0]["log_path"])
    las.ok("rm", "gone")
    assert "gone" not in las.ps() and log.exists()
    las.ok("run", str(path))
    log2 = Path(las.inspect("gone")["runs"][0]["log_path"])
    las.ok("rm", "-f", "--purge", "gone")
    assert not log.exists() and not log2.exists()


def test_logs_follow_ends_when_the_run_ends(las: Las, module_factory: ModuleFactory) -> None:
    las.ok("run", str(module_factory("followed", workload())))
    follower = las.popen("logs", "-f", "followed")
    wait_until(lambda: "ready" in las.ok("logs", "followed").out, message="ready")
    las.ok("stop", "followed")
    out, err = follower.communicate(timeout=10)
    assert follower.returncode == 0, err
    assert "ready\n" in out and "stopped: exited on SIGTERM" in out


def test_inspect_of_failed_run_shows_reason_and_last_lines(
    las: Las, module_factory: ModuleFactory
) -> None:
    las("run", str(module_factory("bad", workload("--lines", "30", "--exit", "2"))))
    wait_until(lambda: las.state("bad") == "failed", message="failed")
    data = las.inspect("bad")
    assert data["state"] == "failed" and data["reason"].startswith("exited with code 2")
    assert len(data["last_log_lines"]) == 20
    assert data["last_log_lines"][-2] == "exiting with 2"
    assert data["plan"]["mode"] == "native"
    assert set(data["limits"]) >= {"memory", "cpus", "gpus"}
    text = las.ok("inspect", "bad").out
    assert "exited with code 2" in text and "Last 20 log lines" in text


def test_gpu_variables_are_empty_without_assignment(
    las: Las, module_factory: ModuleFactory
) -> None:
    las.ok("run", str(module_factory("nogpu", workload("--env", "CUDA_VISIBLE_DEVICES"))))
    wait_until(lambda: "ready" in las.ok("logs", "nogpu").out, message="ready")
    assert "CUDA_VISIBLE_DEVICES=\n" in las.ok("logs", "nogpu").out


# --- bad input: clear error, no traceback, nothing started -------------------------------


def _no_supervisors(las: Las) -> bool:
    from tests.conftest import _supervisors_of

    return _supervisors_of(las.home) == []


def test_unknown_module(las: Las) -> None:
    res = las("run", "no-such-module")
    assert res.code == 2 and "unknown module 'no-such-module'" in res.err
    assert "hint:" in res.err
    assert las.ps() == {}


def test_missing_required_and_unknown_parameter(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "needs",
        [*workload(), "--env", "${model}"],
        parameters={"model": {"required": True, "type": "path"}},
    )
    res = las("run", str(path))
    assert res.code == 2 and "missing required parameter 'model'" in res.err
    assert "--set model=VALUE" in res.err
    res = las("run", str(path), "--set", "model=/x", "--set", "colour=red")
    assert res.code == 2 and "unknown parameter(s) for needs: colour" in res.err
    assert las.ps() == {} and _no_supervisors(las)


def test_executable_not_found_and_not_executable(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    res = las("run", str(module_factory("nx", ["no-such-binary-xyz"])))
    assert res.code == 3 and "executable 'no-such-binary-xyz' not found on PATH" in res.err
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    res = las("run", str(module_factory("noexec", [str(script)])))
    assert res.code == 3 and "is not an executable file" in res.err and "chmod +x" in res.err
    res = las("run", str(module_factory("nowd", workload(), workdir=str(tmp_path / "nope"))))
    assert res.code == 3 and "workdir" in res.err and "does not exist" in res.err
    assert las.ps() == {} and _no_supervisors(las)


def test_executable_vanishing_after_planning_is_recorded(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    # Plan-time checks pass; the file is made unexecutable afterwards: the runtime must
    # record the OS error, not crash. (The window is forced by editing the stored plan.)
    script = tmp_path / "late.sh"
    script.write_text("#!/bin/sh\nsleep 1000\n")
    script.chmod(0o755)
    las.ok("run", str(module_factory("late", [str(script)])))
    las.ok("stop", "late")
    script.chmod(0o644)
    res = las("start", "late")
    assert res.code == 4 and "permission denied" in res.err
    assert las.ps()["late"]["state"] == "failed"
    assert "could not start: permission denied" in las.ps()["late"]["reason"]


def test_name_already_running(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("dup", workload())
    las.ok("run", str(path))
    res = las("run", str(path))
    assert res.code == 4 and "already running" in res.err
    res = las("start", "dup")
    assert res.code == 4 and "already running" in res.err
    assert len(las.inspect("dup")["runs"]) == 1


def test_port_taken_between_allocation_and_bind(
    las: Las, tmp_path: Path, module_factory: ModuleFactory
) -> None:
    go = tmp_path / "go"
    # The server binds only once told to, so the test can take its port in between.
    server = [
        sys.executable,
        "-c",
        "import os,socket,sys,time\n"
        "while not os.path.exists(sys.argv[3]): time.sleep(0.01)\n"
        "s=socket.socket(); s.bind((sys.argv[1], int(sys.argv[2]))); s.listen()\n"
        "print('listening', flush=True); time.sleep(1000)",
        "${host}",
        "${ports.http}",
        str(go),
    ]
    path = module_factory("porty", server, ports=[{"name": "http", "port": 8080}])
    las.ok("run", str(path))
    port = int(las.ps()["porty"]["ports"][0].split("->")[0].rsplit(":", 1)[1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        go.touch()
        wait_until(lambda: las.state("porty") == "failed", message="bind failure recorded")
        info = las.ps()["porty"]
        assert "exited with code 1" in info["reason"]
        assert "Address already in use" in info["reason"]  # the workload's own error line
        assert "Address already in use" in las.ok("logs", "porty").out
        # Starting again while the port is held is refused before anything starts.
        res = las("start", "porty")
        assert res.code == 3 and f"127.0.0.1:{port}" in res.err and "in use" in res.err
        assert len(las.inspect("porty")["runs"]) == 1


def test_unknown_instance_for_stop_logs_inspect(las: Las) -> None:
    for cmd in (
        ["stop", "ghost"],
        ["logs", "ghost"],
        ["inspect", "ghost"],
        ["start", "ghost"],
        ["rm", "ghost"],
    ):
        res = las(*cmd)
        assert res.code == 4, cmd
        assert "no instance named 'ghost'" in res.err


@pytest.mark.parametrize("name", ["../evil", "/abs", "a b", "x" * 300, "a\x00b"])
def test_bad_instance_names(las: Las, module_factory: ModuleFactory, name: str) -> None:
    path = module_factory("fine", workload())
    if "\x00" in name:
        return  # argv cannot carry NUL; the planner's check is unit-tested
    res = las("run", str(path), "--name", name)
    assert res.code == 2 and "instance name" in res.err
    assert las.ps() == {}


def test_a_descendant_that_left_the_process_group_is_stopped_too(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    pidfile = tmp_path / "daemon.pid"
    # A daemon-style child: new session (so outside the workload's process group).
    script = (
        "import os, subprocess, sys, time\n"
        "p = subprocess.Popen(['sleep', '1000'], start_new_session=True)\n"
        "open(sys.argv[1], 'w').write(str(p.pid))\n"
        "print('spawned', flush=True); time.sleep(1000)\n"
    )
    las.ok("run", str(module_factory("daemonish", [sys.executable, "-c", script, str(pidfile)])))
    wait_until(lambda: pidfile.exists() and pidfile.read_text(), message="daemon pid")
    daemon = int(pidfile.read_text())
    assert pid_alive(daemon) and os.getpgid(daemon) != las.ps()["daemonish"]["pid"]
    limits = las.inspect("daemonish")["limits"]
    assert "cgroup" in limits["processes"], limits
    las.ok("stop", "daemonish")
    wait_until(lambda: not pid_alive(daemon), timeout=5, message="the escaped daemon gone")


@pytest.fixture
def tiny_logs_fs(las: Las) -> Iterator[Path]:
    """The instance's log directory on a 256 KiB tmpfs (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    logs = las.home / "logs" / "flood"
    logs.mkdir(parents=True, mode=0o700)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(logs)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield logs
    finally:
        subprocess.run(["umount", "-l", str(logs)], check=False)


def test_full_disk_drops_lines_but_never_blocks_the_workload(
    las: Las, module_factory: ModuleFactory, tiny_logs_fs: Path
) -> None:
    n = 20_000  # about 1 MB of lines into 256 KiB
    path = module_factory("flood", workload("--lines", str(n), "--exit-after-lines"))
    las("run", str(path))
    wait_until(lambda: las.state("flood") == "stopped", timeout=30, message="producer done")
    data = las.inspect("flood")
    run = data["runs"][0]
    assert run["exit_code"] == 0
    assert run["lines_dropped"] > 0
    assert f"{run['lines_dropped']} log line(s) could not be written" in run["reason"]
    kept = [x for x in las.ok("logs", "flood").out.splitlines() if x.startswith("line ")]
    assert 0 < len(kept) < n
    assert len(kept) + run["lines_dropped"] >= n  # every line written or counted
    assert "could not be written" in las.ok("inspect", "flood").out


HOG = [
    sys.executable,
    "-c",
    "import time\nx = []\nwhile True:\n    x.append(bytearray(8 << 20)); time.sleep(0.01)",
]


def test_memory_limit_enforced_by_the_cgroup(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("hog", HOG, resources={"memory": "64MiB", "cpus": 0.5})
    las("run", str(path))
    wait_until(lambda: las.state("hog") == "failed", timeout=30, message="killed for memory")
    info = las.ps()["hog"]
    assert info["reason"].startswith("out of memory (limit 64MiB; ")
    limits = las.inspect("hog")["limits"]
    if os.geteuid() == 0:  # root can create the cgroup: the kernel enforces the limit
        assert limits["memory"] == "cgroup v1 memory.limit_in_bytes = 67108864 (swap capped too)"
        assert limits["cpus"].startswith("cgroup v1 cpu.cfs_quota_us 50000")
        assert "cgroup's OOM kill counter" in info["reason"]


def test_memory_limit_sampled_without_a_cgroup(
    las: Las, module_factory: ModuleFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where no cgroup can be created, the supervisor samples the tree's RSS instead.
    path = module_factory("hog2", HOG, resources={"memory": "64MiB"})
    las.env["LAS_CGROUP_ROOT"] = "/nonexistent"
    las("run", str(path))
    wait_until(lambda: las.state("hog2") == "failed", timeout=30, message="killed for memory")
    reason = las.ps()["hog2"]["reason"]
    assert reason.startswith("out of memory (limit 64MiB; the process tree used ")
    assert "sampled every 0.5s" in reason
    memory = las.inspect("hog2")["limits"]["memory"]
    assert memory.startswith("not enforced") and "samples the process tree's RSS" in memory


def _cpus_allowed(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return next(x.split()[1] for x in status if x.startswith("Cpus_allowed_list:"))


ALLOWED = sorted(os.sched_getaffinity(0))  # what a supervisor started from here may use


@pytest.mark.skipif(len(ALLOWED) < 2, reason="pinning needs at least 2 usable CPUs")
def test_cpu_limit_pins_to_cores_without_a_cgroup(las: Las, module_factory: ModuleFactory) -> None:
    # A shell whose child is the real workload: the affinity reaches descendants too.
    path = module_factory("pinned", ["/bin/sh", "-c", "sleep 1000 & wait"], resources={"cpus": 0.5})
    las.env["LAS_CGROUP_ROOT"] = "/nonexistent"
    las.ok("run", str(path))
    pid = las.inspect("pinned")["runs"][0]["pid"]
    last = str(ALLOWED[-1])
    assert _cpus_allowed(pid) == last
    sleeper = wait_until(lambda: _children(pid), message="the child")[0]
    assert _cpus_allowed(sleeper) == last
    cpus = las.inspect("pinned")["limits"]["cpus"]
    assert cpus == (
        f"cpu affinity: 1 core (cpu {last}) for 0.5 CPU(s); "
        "no cgroup CPU quota: no cgroup filesystem at /nonexistent"
    )
    assert f"cpus: cpu affinity: 1 core (cpu {last})" in las.ok("inspect", "pinned").out


def test_cpu_limit_of_every_core_is_not_enforced_by_affinity(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory("wide", ["/bin/sh", "-c", "sleep 1000"], resources={"cpus": len(ALLOWED)})
    las.env["LAS_CGROUP_ROOT"] = "/nonexistent"
    las.ok("run", str(path))
    pid = las.inspect("wide")["runs"][0]["pid"]
    assert _cpus_allowed(pid) == _cpus_allowed(os.getpid())
    cpus = las.inspect("wide")["limits"]["cpus"]
    assert cpus.startswith(f"not enforced: {len(ALLOWED)} CPU(s) asked for") and "affinity" in cpus


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a cgroup needs root")
def test_cpu_limit_with_a_cgroup_is_a_quota_not_a_pin(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory("quota", ["/bin/sh", "-c", "sleep 1000"], resources={"cpus": 0.5})
    las.ok("run", str(path))
    pid = las.inspect("quota")["runs"][0]["pid"]
    assert las.inspect("quota")["limits"]["cpus"].startswith("cgroup ")
    assert _cpus_allowed(pid) == _cpus_allowed(os.getpid())


def _children(pid: int) -> list[int]:
    tasks = Path(f"/proc/{pid}/task")
    out: list[int] = []
    for t in tasks.iterdir():
        with contextlib.suppress(OSError):
            out += [int(x) for x in (t / "children").read_text().split()]
    return out


def test_admission_refuses_more_memory_than_the_machine_has(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory("greedy", workload(), resources={"memory": "4TiB"})
    res = las("run", str(path))
    assert res.code == 3
    assert "greedy asks for 4.0TiB of RAM" in res.err and "is free" in res.err
    assert las.ps() == {} and _no_supervisors(las)


def test_native_workload_runs_with_no_new_privs_and_a_private_umask(
    las: Las, module_factory: ModuleFactory
) -> None:
    script = (
        "import os\n"
        "old = os.umask(0); os.umask(old)\n"
        "status = open('/proc/self/status').read().split('\\n')\n"
        "nnp = [x.split()[1] for x in status if x.startswith('NoNewPrivs:')][0]\n"
        "print(f'umask={old:03o} nnp={nnp}', flush=True)\n"
        "import time; time.sleep(1000)\n"
    )
    las.ok("run", str(module_factory("priv", [sys.executable, "-c", script])))
    wait_until(lambda: "umask=" in las.ok("logs", "priv").out, message="its report")
    assert "umask=077 nnp=1" in las.ok("logs", "priv").out


LISTENER = [
    sys.executable,
    "-c",
    "import socket,sys,time\n"
    "def listen(host, port):\n"
    "    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "    s.bind((host, port)); s.listen(); return s\n"
    "first = listen(sys.argv[1], int(sys.argv[2]))\n"
    "print('bound', sys.argv[1], flush=True)\n"
    "time.sleep(float(sys.argv[4]))\n"
    "second = listen(sys.argv[3], 0)\n"
    "print('late bind', sys.argv[3], second.getsockname()[1], flush=True)\n"
    "time.sleep(1000)\n",
]


def test_listener_on_a_forbidden_address_is_stopped(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory(
        "open",
        [*LISTENER, "0.0.0.0", "${ports.http}", "127.0.0.1", "1000"],
        ports=[{"name": "http", "port": 8080}],
    )
    las("run", str(path))
    wait_until(lambda: las.state("open") == "failed", message="stopped for its listener")
    info = las.ps()["open"]
    port = info["ports"][0].split("->")[0].rsplit(":", 1)[1]
    pid = las.inspect("open")["runs"][0]["pid"]
    assert info["reason"] == (
        f"listening on 0.0.0.0:{port} (TCP, pid {pid}); policy allows 127.0.0.1 only"
    )
    assert not pid_alive(las.inspect("open")["runs"][0]["pid"])


def test_a_late_bind_is_caught_too(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "late",
        [*LISTENER, "${host}", "${ports.http}", "0.0.0.0", "1.0"],
        ports=[{"name": "http", "port": 8080}],
    )
    las.ok("run", str(path))
    wait_until(lambda: "late bind" in las.ok("logs", "late").out, message="the late bind")
    wait_until(lambda: las.state("late") == "failed", timeout=15, message="caught")
    reason = las.ps()["late"]["reason"]
    assert reason.startswith("listening on 0.0.0.0:") and "policy allows 127.0.0.1 only" in reason


def test_an_exposed_module_may_listen_everywhere(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "pub",
        [*LISTENER, "0.0.0.0", "${ports.http}", "0.0.0.0", "0.2"],
        ports=[{"name": "http", "port": 8080}],
    )
    policy = las.home / "policy.yaml"
    policy.write_text(policy.read_text() + "network: {host: 127.0.0.1, expose: {pub: 0.0.0.0}}\n")
    las.ok("run", str(path))
    wait_until(lambda: "late bind" in las.ok("logs", "pub").out, message="both binds")
    # An absence can only be watched for a while: past the 0.5 s and 2 s checks.
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert las.state("pub") == "running"
        time.sleep(0.2)

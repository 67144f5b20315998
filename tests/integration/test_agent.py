"""The las agent (cli/agent.py, cli/handover.py): `las run`/`start`/`restart` handed to a
resident las, with the same outcome as when `las` runs them itself.

Each test compares with `LAS_AGENT=0` where it can: same exit status, output, workload
environment, limits and umask. Which path served a command shows in its supervisor's
command line: forked by the agent's supervisor zygote, or a new Python.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import (
    REPO,
    TEST_IMAGE,
    Las,
    _agents_of,
    _parent,
    pid_alive,
    usable_engine,
    wait_until,
    workload,
)

from localaistack.cli.handover import AGENT_MAIN

ZYGOTE = b"localaistack.runtime.supervisor_zygote"
EXECED = b"localaistack.runtime.supervisor import main"


@pytest.fixture
def alas(las: Las) -> Iterator[Las]:
    """The CLI with the agent on (the conftest turns it off for every other test)."""
    las.env.pop("LAS_AGENT", None)
    las.env["LAS_AGENT_IDLE"] = "120"
    yield las
    log = las.home / "agent.log"
    assert "Traceback" not in (log.read_text() if log.exists() else "")


def las_in(
    las: Las, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
    limits: dict[int, tuple[int, int]] | None = None, umask: int | None = None,
    cpus: set[int] | None = None, nice: int = 0, agent: bool = True, prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """`las ARGS` from ``cwd``, with extra environment, resource limits, umask, CPUs and
    nice value, after ``prefix`` (a command that runs it: unshare...)."""
    full = {**las.env, **(env or {})}
    if not agent:
        full["LAS_AGENT"] = "0"

    def setup() -> None:
        for which, value in (limits or {}).items():
            resource.setrlimit(which, value)
        if umask is not None:
            os.umask(umask)
        if cpus is not None:
            os.sched_setaffinity(0, cpus)
        os.nice(nice)

    return subprocess.run(
        [*prefix, sys.executable, "-m", "localaistack", *args], env=full, cwd=cwd, text=True,
        capture_output=True, timeout=60, preexec_fn=setup,
    )  # fmt: skip


def the_agent(las: Las) -> int:
    """Wait for the home's agent to listen (the first `las run` starts it); its pid."""
    wait_until(
        lambda: (las.home / "agent.sock").exists() and len(_agents_of(las.home)) == 1,
        LOADED, message="the las agent listens",
    )  # fmt: skip
    (pid,) = _agents_of(las.home)
    return pid


def cmdline(pid: int) -> bytes:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read()


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and _parent(int(entry)) == pid:
            out.append(int(entry))
    return out


def the_zygote(agent: int) -> int:
    """The agent's supervisor zygote, once it runs."""
    found: list[int] = []
    wait_until(lambda: bool(found.extend(p for p in children(agent) if ZYGOTE in cmdline(p))
                            or found), 20, message="the agent's zygote runs")  # fmt: skip
    return found[0]


def workers(las: Las, agent: int) -> list[int]:
    """The agent's workers running a command: its children but the zygote, and but a
    process it has just spawned (which writes to agent.log, not to a client's stdout)."""
    log = str(las.home / "agent.log")
    out = []
    for pid in children(agent):
        with contextlib.suppress(OSError):
            if ZYGOTE not in cmdline(pid) and os.readlink(f"/proc/{pid}/fd/1") != log:
                out.append(pid)
    return out


def supervisor_of(las: Las, name: str) -> int:
    """The supervisor process of instance ``name``'s current run (from the store)."""
    db = sqlite3.connect(las.home / "state.db")
    try:
        row = db.execute(
            "SELECT r.sup_pid FROM runs r JOIN instances i ON i.current_run = r.run_id"
            " WHERE i.name = ?",
            (name,),
        ).fetchone()
    finally:
        db.close()
    assert row is not None and row[0], f"no supervisor recorded for {name}"
    return int(row[0])


def workload_facts(pid: int) -> dict[str, str]:
    """What a process inherited: umask, open-files limit, TZ, CPUs, nice value."""
    facts = {}
    with open(f"/proc/{pid}/status") as f:
        facts["umask"] = next(line.split()[1] for line in f if line.startswith("Umask:"))
    with open(f"/proc/{pid}/limits") as f:
        facts["nofile"] = next(" ".join(line.split()[3:5]) for line in f if "open files" in line)
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
    facts["TZ"] = env.get(b"TZ", b"").decode()
    with open(f"/proc/{pid}/status") as f:
        facts["cpus"] = next(line.split()[1] for line in f if line.startswith("Cpus_allowed_list"))
    with open(f"/proc/{pid}/stat") as f:
        facts["nice"] = f.read().rsplit(")", 1)[1].split()[16]
    return facts


def test_a_run_is_handed_to_the_agent_with_the_callers_context(
    alas: Las, module_factory: Callable[..., Path], tmp_path: Path
) -> None:
    """Working directory (a relative module path), environment, umask and resource
    limits reach the workload as they do when `las` runs the command itself."""
    path = module_factory("idle", workload("--lines", "1"))
    first = las_in(alas, "run", "-d", str(path), "--name", "first")
    assert first.returncode == 0, first.stderr
    agent = the_agent(alas)
    the_zygote(agent)
    cpu = max(os.sched_getaffinity(0))
    context: dict[str, Any] = {
        "cwd": path.parent,
        "env": {"TZ": "Pacific/Auckland"},
        "limits": {resource.RLIMIT_NOFILE: (777, 888)},
        "umask": 0o027,
        "cpus": {cpu},
        "nice": 3,
    }
    seen = {}
    for name, via_agent in (("direct", False), ("handed", True)):
        res = las_in(alas, "run", "-d", path.name, "--name", name, agent=via_agent, **context)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith(f"{name}  run ") and "running" in res.stdout
        seen[name] = workload_facts(alas.inspect(name)["runs"][0]["pid"])
        sup = supervisor_of(alas, name)
        seen[name]["supervisor umask"] = workload_facts(sup)["umask"]
        assert workload_facts(sup)["cpus"] == str(cpu) and workload_facts(sup)["nice"] == "3"
        assert (ZYGOTE in cmdline(sup)) == via_agent and (EXECED in cmdline(sup)) != via_agent
    assert seen["handed"] == seen["direct"]
    assert seen["direct"] == {  # (a supervisor gives its workload umask 077, whatever its own)
        "umask": "0077",
        "nofile": "777 888",
        "TZ": "Pacific/Auckland",
        "supervisor umask": "0027",
        "cpus": str(cpu),
        "nice": "3",
    }
    assert _agents_of(alas.home) == [agent]  # the same agent served both handed commands


def test_concurrent_runs_through_the_agent(alas: Las, module_factory: Callable[..., Path]) -> None:
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path), "--name", "first")
    agent = the_agent(alas)
    for i in range(6):  # one after the other: each client goes as soon as it has its status
        alas.ok("run", "-d", str(path), "--name", f"s{i}")
    procs = [alas.popen("run", "-d", str(path), "--name", f"c{i}") for i in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        assert "running" in out
    ps = alas.ps()
    assert all(ps[f"c{i}"]["state"] == "running" for i in range(4))
    assert all(ZYGOTE in cmdline(supervisor_of(alas, f"c{i}")) for i in range(4))
    assert all(ZYGOTE in cmdline(supervisor_of(alas, f"s{i}")) for i in range(6))
    assert _agents_of(alas.home) == [agent]


@pytest.mark.parametrize(
    "args",
    [
        ("run", "-d", "/nonexistent/module.yaml"),
        ("run", "--no-such-flag", "x"),
        ("start", "no-such-instance"),
        ("restart", "no-such-instance"),
        ("run", "-d", "idle.yaml"),  # the name is taken
    ],
)
def test_outcomes_are_the_same_as_without_the_agent(
    alas: Las, module_factory: Callable[..., Path], args: tuple[str, ...]
) -> None:
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path))
    the_agent(alas)
    handed = las_in(alas, *args, cwd=path.parent)
    direct = las_in(alas, *args, cwd=path.parent, agent=False)
    assert handed.returncode != 0
    assert (handed.returncode, handed.stdout, handed.stderr) == (
        direct.returncode, direct.stdout, direct.stderr,
    )  # fmt: skip
    assert "Traceback" not in handed.stderr


def _waiting_module(module_factory: Callable[..., Path]) -> Path:
    """A workload whose health probe never passes: `las run` waits (up to 60 s)."""
    return module_factory(
        "waiting", workload(),
        ports=[{"name": "http", "port": 18080}],
        health={"http": {"port": "http", "path": "/"}, "start_timeout": "60s",
                "interval": "1s", "timeout": "1s"},
    )  # fmt: skip


# Generous deadlines: the suite must pass on a loaded machine (another CPU-heavy job once
# made the 30 s ones below time out, and the leaked client failed the next test).
LOADED = 120.0


@contextlib.contextmanager
def _client(argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[str]]:
    """A `las` client process, killed and reaped at the end whatever happens (none leaks)."""
    client = subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)  # fmt: skip
    try:
        yield client
    finally:
        if client.poll() is None:
            client.kill()
        client.communicate(timeout=LOADED)


def test_ctrl_c_reaches_the_command(alas: Las, module_factory: Callable[..., Path]) -> None:
    """SIGINT to the waiting client ends the command as it ends a `las` that runs it:
    exit 130, saying that the instance goes on starting (tests/chaos/test_stop_semantics.py
    checks that it does)."""
    path = _waiting_module(module_factory)
    alas.ok("run", "-d", str(path), "--name", "first")
    agent = the_agent(alas)
    outcomes = {}
    for name, via_agent in (("direct", False), ("handed", True)):
        env = {**alas.env, **({} if via_agent else {"LAS_AGENT": "0"})}
        argv = [sys.executable, "-m", "localaistack", "run", str(path), "--name", name]
        with _client(argv, env) as client:
            wait_until(lambda n=name: alas.ps().get(n, {}).get("state") == "running", LOADED,
                       0.1, f"{name} waits for its health probe")  # fmt: skip
            if via_agent:
                (worker,) = wait_until(lambda: workers(alas, agent), LOADED, 0.05,
                                       "the agent's worker runs the command")  # fmt: skip
            client.send_signal(signal.SIGINT)
            _, err = client.communicate(timeout=LOADED)
        said = re.sub(r"run [0-9a-f]{12}", "run ID", err)  # (it says which run goes on)
        outcomes[name] = (client.returncode, said.replace(name, "NAME"))
        if via_agent:
            wait_until(lambda w=worker: not pid_alive(w), LOADED, message="the worker ended")
    assert outcomes["handed"] == outcomes["direct"]
    assert outcomes["direct"][0] == 130
    assert "goes on starting" in outcomes["direct"][1]


def test_a_killed_client_takes_its_command_with_it(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    path = _waiting_module(module_factory)
    alas.ok("run", "-d", str(path), "--name", "first")
    agent = the_agent(alas)
    argv = [sys.executable, "-m", "localaistack", "run", str(path), "--name", "second"]
    with _client(argv, alas.env) as client:
        wait_until(lambda: alas.ps().get("second", {}).get("state") == "running", LOADED, 0.1,
                   "the command waits for the health probe")  # fmt: skip
        (worker,) = wait_until(lambda: workers(alas, agent), LOADED, 0.05,
                               "the agent's worker runs the command")  # fmt: skip
        client.kill()
    wait_until(lambda: not pid_alive(worker), LOADED, message="the worker ended with its client")
    assert pid_alive(agent)
    assert alas.state("second") == "running"  # as after a `las run` killed by hand


def test_a_client_of_another_locale_runs_its_command_itself(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path), "--name", "first")
    agent = the_agent(alas)
    res = las_in(alas, "run", "-d", str(path), "--name", "other", env={"LC_ALL": "C"})
    assert res.returncode == 0, res.stderr
    assert EXECED in cmdline(supervisor_of(alas, "other"))
    assert _agents_of(alas.home) == [agent]  # it still serves the others
    res = las_in(alas, "run", "-d", str(path), "--name", "same")
    assert ZYGOTE in cmdline(supervisor_of(alas, "same"))


def test_an_upgrade_of_las_replaces_the_agent(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    """las's files changed under a running agent: it refuses (the command runs as a new
    las), stops listening and exits; that command starts a new agent."""
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path), "--name", "first")
    old = the_agent(alas)
    touched = REPO / "src" / "localaistack" / "units.py"
    st = touched.stat()
    try:
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        res = las_in(alas, "run", "-d", str(path), "--name", "upgraded")
        assert res.returncode == 0, res.stderr
        assert EXECED in cmdline(supervisor_of(alas, "upgraded"))
        wait_until(lambda: not pid_alive(old), LOADED, message="the old agent exits")
        new = the_agent(alas)
        assert new != old
        res = las_in(alas, "run", "-d", str(path), "--name", "after")
        assert res.returncode == 0, res.stderr
        assert ZYGOTE in cmdline(supervisor_of(alas, "after"))
    finally:
        os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert "las's files changed" in (alas.home / "agent.log").read_text()


def test_an_idle_agent_exits_and_leaves_nothing(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    alas.env["LAS_AGENT_IDLE"] = "1"
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path), "--name", "first")
    agent = the_agent(alas)
    zygote = the_zygote(agent)
    wait_until(lambda: not pid_alive(agent) and not pid_alive(zygote), LOADED,
               message="the idle agent and its zygote exit")  # fmt: skip
    assert not (alas.home / "agent.sock").exists()
    assert "stops: idle for 1 s" in (alas.home / "agent.log").read_text()
    assert alas.state("first") == "running"  # its supervisor is not the agent's


def test_a_dead_agents_socket_does_not_stop_las(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path), "--name", "first")
    old = the_agent(alas)
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: not pid_alive(old), LOADED, message="the agent died")
    assert (alas.home / "agent.sock").exists()  # nobody listens on it
    started = time.monotonic()
    res = las_in(alas, "run", "-d", str(path), "--name", "second")
    assert res.returncode == 0, res.stderr
    assert time.monotonic() - started < 30
    assert EXECED in cmdline(supervisor_of(alas, "second"))
    assert the_agent(alas) != old


def test_las_agent_0_neither_uses_nor_starts_one(
    las: Las, module_factory: Callable[..., Path]
) -> None:
    las.env["LAS_AGENT"] = "0"  # (conftest's already, but for LAS_TEST_AGENT=1)
    path = module_factory("idle", workload())
    las.ok("run", "-d", str(path), "--name", "first")
    las.ok("run", "-d", str(path), "--name", "second")
    # A `las` that starts an agent opens agent.log for it first, before it exits.
    assert not (las.home / "agent.log").exists()
    assert _agents_of(las.home) == [] and not (las.home / "agent.sock").exists()


@pytest.mark.parametrize(
    "engine_name", [pytest.param(e, marks=getattr(pytest.mark, e)) for e in ("podman", "docker")]
)
def test_container_runs_through_the_agent(alas: Las, tmp_path: Path, engine_name: str) -> None:
    """run -d, stop, start and restart of a container module, each handed to the agent,
    with the same states and the engine's container labelled as without it."""
    engine = usable_engine(engine_name)
    alas.home.mkdir(mode=0o700, exist_ok=True)
    (alas.home / "policy.yaml").write_text(f"container_engine: {engine_name}\n")
    path = tmp_path / "tick.yaml"
    path.write_text(
        "name: tick\nruntime:\n  modes: [container]\n"
        f"  container: {{image: {TEST_IMAGE}, command: [sleep, '600']}}\n"
        "  stop: {timeout: 3s}\n"
    )
    alas.ok("run", "-d", str(path), "--name", "first")
    the_agent(alas)
    steps = [("run", "-d", str(path)), ("stop", "tick"), ("start", "tick"), ("restart", "tick")]
    for args in steps:
        res = las_in(alas, *args)
        assert res.returncode == 0, res.stderr
        if args[0] != "stop":
            assert alas.state("tick") == "running"
            assert ZYGOTE in cmdline(supervisor_of(alas, "tick"))
    info = alas.inspect("tick")
    state = engine.inspect(info["reason"].rsplit(" ", 1)[1])
    assert state is not None and state.running
    assert state.labels["las.instance"] == "tick"
    assert state.labels["las.run"] in [r["run_id"] for r in info["runs"] if r["state"] == "running"]
    alas.ok("rm", "-f", "tick", "first")  # (the fixture's teardown would re-adopt them)
    assert engine.inspect(state.id) is None


def test_a_client_the_agent_cannot_stand_in_for_runs_its_command_itself(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    """Another network namespace, no_new_privs, a higher priority than the agent's, a
    command that is not run/start/restart: the agent refuses, the client runs it."""
    path = module_factory("idle", workload())
    home = str(alas.home)
    env = {**alas.env, "LAS_AGENT": "1"}
    with open(alas.home / "agent.log", "ab") as log:  # as las starts it (cli/handover.py)
        niced = subprocess.Popen(
            ["nice", "-n", "5", sys.executable, "-c", AGENT_MAIN, "--home", home], env=env,
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )  # fmt: skip
    try:
        agent = the_agent(alas)
        assert agent == niced.pid
        refused: list[dict[str, Any]] = [
            # another network namespace (and, not as root, another user namespace too)
            {"prefix": ("unshare", "--net") if os.geteuid() == 0 else ("unshare", "-rn")},
            {"prefix": ("setpriv", "--no-new-privs")},
            {},  # nice 0: the agent runs at nice 5 and cannot raise a command's priority
        ]
        for i, how in enumerate(refused):
            res = las_in(alas, "run", "-d", str(path), "--name", f"r{i}", **how)
            assert res.returncode == 0, res.stderr
            assert EXECED in cmdline(supervisor_of(alas, f"r{i}")), how
        res = las_in(alas, "run", "-d", str(path), "--name", "niced", nice=5)
        assert ZYGOTE in cmdline(supervisor_of(alas, "niced"))  # the same nice: served
        probe = "from localaistack.cli import handover; print(handover.hand_over({!r}, {!r}))"
        for args in (["ps"], ["stop", "r0"]):
            out = subprocess.run(
                ["nice", "-n", "5", sys.executable, "-c", probe.format(home, args)], env=env,
                text=True, capture_output=True, check=True,
            )  # fmt: skip
            assert out.stdout.strip() == "refused: only run, start, restart are handed over"
        assert _agents_of(alas.home) == [agent]  # it refused, and stays
        log = (alas.home / "agent.log").read_text()
        assert log.count("refused a command: another Python, las, locale, cgroup") == 2
        assert log.count("refused a command: a higher priority (nice)") == 1
        assert log.count("refused a command: only run, start, restart") == 2
    finally:
        niced.terminate()
        niced.wait(timeout=LOADED)


def test_sigterm_stops_the_agent_and_removes_its_socket(
    alas: Las, module_factory: Callable[..., Path]
) -> None:
    path = module_factory("idle", workload())
    alas.ok("run", "-d", str(path), "--name", "first")
    agent = the_agent(alas)
    zygote = the_zygote(agent)
    os.kill(agent, signal.SIGTERM)
    wait_until(lambda: not pid_alive(agent) and not pid_alive(zygote), LOADED,
               message="the agent and its zygote exit")  # fmt: skip
    assert not (alas.home / "agent.sock").exists()
    assert "stops: SIGTERM" in (alas.home / "agent.log").read_text()
    assert alas.state("first") == "running"


def test_a_worker_lets_go_of_its_clients_streams_before_it_reports_the_status() -> None:
    """A reader of `las run`'s output (a pipe) sees its end when the client exits: the
    worker, still alive, no longer holds the client's stdout."""
    import select
    import socket

    from localaistack.cli import agent

    out_r, out_w = os.pipe()
    release_r, release_w = os.pipe()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:  # the worker, its standard streams the client's pipe
        try:
            for fd in (0, 1, 2):
                os.dup2(out_w, fd)
            os.close(out_w)
            os.close(out_r)
            agent._report(theirs, 3)
            os.read(release_r, 1)  # alive until the test has looked
        finally:
            os._exit(0)
    os.close(out_w)
    try:
        assert ours.recv(64) == b"exit 3"
        assert select.select([out_r], [], [], 10)[0], "the worker still holds the pipe"
        assert os.read(out_r, 1) == b""  # its end, while the worker lives
        assert os.waitpid(pid, os.WNOHANG) == (0, 0)
    finally:
        os.write(release_w, b"x")
        os.waitpid(pid, 0)
        for fd in (out_r, release_r, release_w):
            os.close(fd)
        ours.close()
        theirs.close()

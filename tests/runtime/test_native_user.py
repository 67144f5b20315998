"""Least privilege for native workloads: the policy's user (las as root) and the bwrap sandbox.

Real processes, read back through /proc. The workloads are ``/usr/bin/python3 -c`` snippets:
an interpreter every user may run (this test run's own Python may live under /root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import sqlite3
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.conftest import Las, pid_alive, wait_until

ModuleFactory = Callable[..., Path]
PY = "/usr/bin/python3"
USER = "las-workload"  # the built-in policy's native_user, made by scripts/setup-user
SLEEP = "import time; print('up', flush=True); time.sleep(60)"

needs_python = pytest.mark.skipif(not os.path.exists(PY), reason=f"needs {PY}")
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="las runs workloads as itself unless root"
)
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
pytestmark = needs_python


def ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid and Groups lines of /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Uid", "Gid", "Groups"):
                out[key] = [int(x) for x in value.split()]
    return out


def tree(pgid: int) -> list[int]:
    """Live processes in a process group."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid and pid_alive(int(entry)):
                    found.append(int(entry))
            except ProcessLookupError:
                pass
    return found


# --------------------------------------------------------------------------- the user


@needs_root
def test_workload_runs_as_the_policy_user(las: Las, module_factory: ModuleFactory) -> None:
    pw = pwd.getpwnam(USER)  # scripts/setup-user (scripts/test runs it as root)
    path = module_factory("who", [PY, "-c", SLEEP], as_root=False)
    las.ok("run", str(path))
    pid = las.ps()["who"]["pid"]
    got = ids(pid)
    assert got["Uid"] == [pw.pw_uid] * 4 and got["Gid"] == [pw.pw_gid] * 4
    assert 0 not in got["Groups"]  # root's groups are gone
    assert any(
        d["topic"] == "native user" and d["choice"].startswith(USER)
        for d in las.inspect("who")["plan"]["decisions"]
    )
    las.ok("stop", "who")
    assert las.state("who") == "stopped" and not pid_alive(pid)


@needs_root
def test_command_probe_runs_as_the_workload_user(las: Las, module_factory: ModuleFactory) -> None:
    """A command health probe has the workload's privileges, not the supervisor's (root):
    this probe is healthy only as las-workload, so the run is healthy only if it runs so."""
    uid = pwd.getpwnam(USER).pw_uid
    probe = [PY, "-c", f"import os, sys; sys.exit(0 if os.getuid() == {uid} else 1)"]
    health = {"command": probe, "interval": "1s", "start_timeout": "10s"}
    path = module_factory("probed", [PY, "-c", SLEEP], as_root=False, health=health)
    res = las("run", str(path))
    assert res.code == 0 and "healthy" in res.out, res.err
    assert las.ps()["probed"]["health"] == "healthy"
    las.ok("stop", "probed")


@needs_root
def test_user_workload_still_dies_with_its_supervisor(
    las: Las, module_factory: ModuleFactory
) -> None:
    # The uid change clears PR_SET_PDEATHSIG: it must be set again after it.
    path = module_factory("orphan", [PY, "-c", SLEEP], as_root=False)
    las.ok("run", str(path))
    info = las.ps()["orphan"]
    db = sqlite3.connect(las.home / "state.db")
    sup = db.execute("SELECT sup_pid FROM runs WHERE run_id=?", (info["run_id"],)).fetchone()[0]
    db.close()
    os.kill(sup, signal.SIGKILL)
    wait_until(lambda: not pid_alive(info["pid"]), timeout=5, message="the workload's death")
    assert las.state("orphan") == "failed"


@needs_root
def test_missing_user_is_refused_and_nothing_starts(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory(
        "nouser", [PY, "-c", SLEEP], as_root=False, policy={"native_user": "las-no-such-user"}
    )
    res = las("run", str(path))
    assert res.code == 3
    assert "'las-no-such-user', which does not exist" in res.err
    assert "scripts/setup-user" in res.err  # the hint names the setup step
    assert las.ps() == {}


@needs_root
def test_policy_may_let_a_module_run_as_root(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory("rooted", [PY, "-c", SLEEP], as_root=True)
    las.ok("run", str(path))
    assert ids(las.ps()["rooted"]["pid"])["Uid"] == [0, 0, 0, 0]


# --------------------------------------------------------------------------- the sandbox

PROBE = """
import errno, os, socket, sys, time
try:
    open(sys.argv[1] + "/escaped", "w")
    print("wrote outside /tmp", flush=True)
except OSError as exc:
    print("outside:", errno.errorcode[exc.errno], flush=True)
with open("/tmp/mine", "w") as f:
    f.write("x")
print("tmp:", sorted(os.listdir("/tmp")), flush=True)
print("net:", sorted(n for _, n in socket.if_nameindex()), flush=True)
"""


@needs_bwrap
@pytest.mark.parametrize("as_root", [True, False], ids=["root", "user"])
def test_sandbox_read_only_root_private_tmp_no_network(
    las: Las, module_factory: ModuleFactory, as_root: bool
) -> None:
    # Writable by anyone, and outside /tmp (the sandbox has its own): only the read-only
    # root can stop the write.
    outside = Path(tempfile.mkdtemp(prefix="las-test-", dir="/var/tmp"))
    outside.chmod(0o777)
    try:
        path = module_factory(
            "sbx",
            [PY, "-c", PROBE, str(outside)],
            as_root=as_root,
            policy={"native_sandbox": "bwrap"},
        )
        las.ok("run", str(path))
        wait_until(lambda: las.state("sbx") == "stopped", message="the probe's exit")
        out = las.ok("logs", "sbx").out
        assert "outside: EROFS" in out and not (outside / "escaped").exists()
    finally:
        shutil.rmtree(outside, ignore_errors=True)
    assert "tmp: ['mine']" in out  # its own /tmp: nothing of the host's
    assert not Path("/tmp/mine").exists()
    assert "net: ['lo']" in out  # no ports declared: no network
    sandbox = next(d for d in las.inspect("sbx")["plan"]["decisions"] if d["topic"] == "sandbox")
    assert sandbox["choice"] == "bwrap" and "no network" in sandbox["reason"]


SERVER = """
import signal, socket, subprocess, sys
child = subprocess.Popen(["sleep", "60"])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
def term(*_):
    print("term: cleaning up", flush=True)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.raise_signal(signal.SIGTERM)
signal.signal(signal.SIGTERM, term)
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    conn.sendall(b"hello from the sandbox\\n")
    conn.close()
"""


@needs_bwrap
def test_sandbox_with_ports_listens_on_the_host_and_stops_cleanly(
    las: Las, module_factory: ModuleFactory
) -> None:
    path = module_factory(
        "sbsrv",
        [PY, "-c", SERVER, "${host}", "${ports.http}"],
        ports=[{"name": "http", "port": 8080}],
        policy={"native_sandbox": "bwrap"},
    )
    las.ok("run", str(path))
    wait_until(lambda: "listening" in las.ok("logs", "sbsrv").out, message="the listener")
    port = las.inspect("sbsrv")["plan"]["ports"][0]["host_port"]
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        assert conn.recv(100) == b"hello from the sandbox\n"
    pgid = las.ps()["sbsrv"]["pid"]  # bwrap, leading the group
    members = tree(pgid)
    assert len(members) >= 3  # bwrap, the server, its child
    las.ok("stop", "sbsrv")
    info = las.ps()["sbsrv"]
    assert info["state"] == "stopped"
    # The stop signal reaches bwrap and the server at once (one process group). bwrap
    # mostly ends on it; now and then it exits 1 instead. Either way the server got
    # SIGTERM (its log line below).
    assert info["reason"] in (
        "stopped: exited on SIGTERM",
        "stopped: exited with code 1 after SIGTERM",
    )
    assert "term: cleaning up" in las.ok("logs", "sbsrv").out  # it got the signal, not SIGKILL
    assert not [p for p in members if pid_alive(p)]

"""Container mode end to end through the las CLI, with real Podman and Docker."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.conftest import TEST_IMAGE, Las, pid_alive, usable_engine, wait_until

from localaistack.runtime.engines import Engine

ENGINES = ["podman", "docker"]


@pytest.fixture(params=[pytest.param(e, marks=getattr(pytest.mark, e)) for e in ENGINES])
def engine(request: pytest.FixtureRequest, las_env: dict[str, str]) -> Iterator[Engine]:
    yield usable_engine(request.param)


@pytest.fixture
def cmod(tmp_path: Path, engine: Engine, las: Las) -> Iterator[Callable[..., Path]]:
    """Write a container module for the test's engine (policy picks that engine)."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    (home / "policy.yaml").write_text(yaml.safe_dump({"container_engine": engine.name}))

    def make(name: str, command: list[str], **runtime: Any) -> Path:
        container = {"image": TEST_IMAGE, "command": command}
        container.update(runtime.pop("container", {}))
        manifest = {
            "name": name,
            "runtime": {
                "modes": ["container"],
                "container": container,
                "stop": {"timeout": "3s"},
                **runtime,
            },
        }
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(manifest))
        return path

    yield make
    for st in labelled(engine, las):  # nothing may outlive the test
        engine.remove(st.id)


def labelled(engine: Engine, las: Las) -> list[Any]:
    from localaistack.store.db import home_label

    return engine.list_labelled("las.home", home_label(las.home / "state.db"))


HTTPD = ["httpd", "-f", "-v", "-p", "8080", "-h", "/www"]
WEB = {
    "ports": [{"name": "http", "port": 8080}],
    "health": {"http": {"port": "http", "path": "/"}, "start_timeout": "20s"},
}


def host_port(las: Las, name: str) -> int:
    return int(las.ps()[name]["ports"][0].split("->")[0].rsplit(":", 1)[1])


def other_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks a route
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_run_serve_inspect_stop(las: Las, engine: Engine, cmod: Callable[..., Path]) -> None:
    res = las.ok("run", str(cmod("web", HTTPD, **WEB)))
    assert "healthy" in res.out
    info = las.ps()["web"]
    assert info["mode"] == "container" and info["state"] == "running"
    port = host_port(las, "web")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read().decode()
    assert "las-busybox ok" in body
    other = other_address()
    if other is not None:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((other, port)) != 0, f"port {port} reachable on {other}"
    data = las.inspect("web")
    sec = data["security"]
    assert sec["capabilities"] == {"drop": ["ALL"], "add": []}
    assert sec["read_only_root"] and sec["no_new_privileges"] and sec["user"] == "65534:65534"
    # ... and the engine agrees.
    (st,) = labelled(engine, las)
    assert st.labels["las.instance"] == "web" and st.labels["las.run"] == info["run_id"]
    assert st.security["ReadonlyRootfs"] is True and st.security["NoNewPrivileges"] is True
    assert st.security["Capabilities"] == [] and st.security["User"] == "65534:65534"
    assert st.security["Privileged"] is False and st.security["Init"] is True
    assert st.security["PidsLimit"] == 1024
    bindings = json.dumps(st.security["PortBindings"])
    assert "127.0.0.1" in bindings and "0.0.0.0" not in bindings
    las.ok("stop", "web")
    after = las.ps()["web"]
    assert after["state"] == "stopped" and after["reason"] == "stopped: exited on SIGTERM"
    assert labelled(engine, las) == []  # the container is removed ...
    assert "response:200" in las.ok("logs", "web").out  # ... and its logs are kept


def test_exit_code_and_no_network(las: Las, engine: Engine, cmod: Callable[..., Path]) -> None:
    script = "cat /proc/net/dev | tail -n +3 | cut -d: -f1; sleep 1; exit 3"
    las("run", str(cmod("crash", ["sh", "-c", script])))
    wait_until(lambda: las.state("crash") == "failed", timeout=20, message="failed")
    info = las.ps()["crash"]
    assert info["reason"].startswith("exited with code 3")
    out = las.ok("logs", "crash").out.splitlines()
    ifaces = [x.strip() for x in out if x.strip() and not x.startswith("las: ")]
    assert ifaces == ["lo"]  # --network none: no ports declared
    assert labelled(engine, las) == []


def test_out_of_memory(las: Las, engine: Engine, cmod: Callable[..., Path]) -> None:
    hog = ["sh", "-c", "x=aaaaaaaaaaaaaaaa; while true; do x=$x$x; done"]
    las("run", str(cmod("hog", hog, resources={"memory": "16MiB"})))
    wait_until(lambda: las.state("hog") == "failed", timeout=30, message="killed")
    reason = las.ps()["hog"]["reason"]
    assert reason.startswith("out of memory (limit 16MiB; ")
    if engine.name == "docker":
        assert "reported by docker (OOMKilled)" in reason
    else:
        assert "inferred" in reason or "reported by podman" in reason


def kill_supervisor(las: Las, name: str) -> str:
    """SIGKILL the supervisor of instance ``name``'s current run; that run's id."""
    run_id = str(las.ps()[name]["run_id"])
    db = sqlite3.connect(las.home / "state.db")
    sup = db.execute("SELECT sup_pid FROM runs WHERE run_id=?", (run_id,)).fetchone()[0]
    db.close()
    os.kill(sup, signal.SIGKILL)
    wait_until(lambda: not pid_alive(sup), message="supervisor gone")
    return run_id


def test_supervisor_killed_container_is_readopted(
    las: Las, engine: Engine, cmod: Callable[..., Path]
) -> None:
    ticker = ["sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done"]
    las.ok("run", str(cmod("tick", ticker)))
    run_id = kill_supervisor(las, "tick")
    (st,) = labelled(engine, las)
    assert st.running  # the container outlives its supervisor
    info = las.ps()["tick"]  # reconciles: a new supervisor adopts it
    assert info["state"] == "running" and info["run_id"] == run_id
    events = las.ok("events").out
    assert "re-adopted" in events
    before = las.ok("logs", "tick").out.count("tick ")
    wait_until(
        lambda: las.ok("logs", "tick").out.count("tick ") > before + 3,
        message="new output captured after re-adoption",
    )
    las.ok("stop", "tick")
    assert las.ps()["tick"]["state"] == "stopped"
    assert labelled(engine, las) == []


def _followers(run_id: str) -> list[int]:
    """Supervisors that re-adopted run ``run_id``'s container (``--adopt`` on their argv)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        supervisor = any(b"localaistack.runtime.supervisor" in arg for arg in argv)
        if supervisor and {b"--adopt", run_id.encode()} <= set(argv):
            found.append(int(entry))
    return found


def test_concurrent_commands_readopt_a_container_once(
    las: Las, engine: Engine, cmod: Callable[..., Path]
) -> None:
    """Several `las` commands that find the same supervisor dead at once: one of them
    re-adopts the container (the run is claimed in the store); the others see that."""
    las.ok("run", "-d", str(cmod("tick", ["sleep", "600"])))
    wait_until(lambda: las.ps()["tick"]["pid"] is not None, 20, message="tick followed")
    run_id = kill_supervisor(las, "tick")
    procs = [las.popen("ps") for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0 and "Traceback" not in err, err
    followers = _followers(run_id)
    assert len(followers) == 1, followers
    assert las.ok("events").out.count("re-adopted") == 1
    assert las.ps()["tick"]["state"] == "running"
    las.ok("rm", "-f", "tick")
    assert labelled(engine, las) == []
    wait_until(lambda: _followers(run_id) == [], 10, message="its supervisor ended")


def test_orphan_containers_are_reported_then_removed(
    las: Las, engine: Engine, las_env: dict[str, str]
) -> None:
    from localaistack.runtime.engines import ContainerRunSpec, suggested_ulimits
    from localaistack.store.db import home_label

    las.ok("ps")  # creates LAS_HOME and its database
    db = sqlite3.connect(las.home / "state.db")
    with db:  # a record of a container run, so that las looks at this engine
        db.execute(
            "INSERT INTO runs (run_id, instance, attempt, backend, state, boot_id, log_path, "
            "created_at) VALUES ('old', 'gone', 1, ?, 'stopped', 'x', '/dev/null', 0)",
            (engine.name,),
        )
    db.close()
    spec = ContainerRunSpec(
        name=f"las-orphan-{os.getpid()}",
        image=TEST_IMAGE,
        argv=["sleep", "1000"],
        labels={
            "las.home": home_label(las.home / "state.db"),
            "las.run": "nope",
            "las.instance": "ghost",
        },
        ulimits=suggested_ulimits() if engine.name == "podman" else (),
    )
    engine.run(spec)
    las.ok("ps")
    assert len(labelled(engine, las)) == 1  # young: reported, kept for the grace period
    las.env["LAS_ORPHAN_GRACE"] = "0"
    las.ok("ps")
    assert labelled(engine, las) == []
    assert "orphan" in las.ok("events").out


def test_a_kept_plan_starts_without_an_engine_call(
    las: Las, engine: Engine, cmod: Callable[..., Path], tmp_path: Path
) -> None:
    """On the start path the image check reads the engine's own store (no CLI), and the
    container is created and started through the engine's API (dockerd's; the podman API
    service that the first run started, which used podman's CLI meanwhile): no engine
    command before the container runs. A wrapper logs every call."""
    calls = tmp_path / "calls.log"
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / engine.name
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {engine.binary} "$@"\n')
    wrapper.chmod(0o755)
    las.env["PATH"] = f"{bindir}:{las.env['PATH']}"
    path = cmod("quick", ["sleep", "600"])
    las.ok("run", "-d", str(path), "--name", "q1")  # plans, and keeps the plan
    wait_until(lambda: las.ps()["q1"]["pid"] is not None, 20, message="q1 followed")
    if engine.name == "podman":  # q1 started the service (through the wrapper): wait for it
        wrapped = Engine("podman", env=las.env, global_args=engine.global_args)
        assert wrapped.podman_api(wait=True) is not None
    calls.unlink()
    las.ok("run", "-d", str(path), "--name", "q2")
    wait_until(lambda: las.ps()["q2"]["pid"] is not None, 20, message="q2 followed")
    made = [f" {c} " for c in calls.read_text().splitlines()]
    follow = next(i for i, c in enumerate(made) if " logs --follow " in c)
    before = made[:follow]  # the helpers start once `running` is reported
    assert before == [], made
    assert not [c for c in made if " image " in c], made
    las.ok("rm", "-f", "q1", "q2")


def test_missing_image_and_missing_volume_create_nothing(
    las: Las, engine: Engine, cmod: Callable[..., Path], tmp_path: Path
) -> None:
    path = cmod("noimg", ["true"], container={"image": "localhost/no-such-image:1"})
    res = las("run", str(path))
    assert res.code == 4
    assert "localhost/no-such-image:1 is not present" in res.err
    assert f"{engine.name} pull localhost/no-such-image:1" in res.err
    missing = tmp_path / "nope"
    path = cmod(
        "novol", ["true"], container={"volumes": [{"source": str(missing), "target": "/data"}]}
    )
    res = las("run", str(path))
    assert res.code == 4 and f"volume source {missing} does not exist" in res.err
    assert las.ps() == {} and labelled(engine, las) == []


def test_no_usable_engine_is_a_planning_error(
    las: Las, cmod: Callable[..., Path], tmp_path: Path
) -> None:
    path = cmod("nocli", HTTPD, **WEB)
    # Neither engine can be found: only the Python that runs las is on PATH (a directory
    # of its own: Debian's python3 shares /usr/bin with podman and docker).
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to(sys.executable)
    las.env["PATH"] = str(bindir)
    res = las("run", str(path))
    assert res.code == 3 and "no usable container engine" in res.err
    assert "not found on PATH" in res.err and "not installed" not in res.err
    assert las.ps() == {}

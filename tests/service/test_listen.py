"""How a real `las serve` listens: its socket (mode, stale or live), the TCP listener and
its bearer token, the policy for a non-loopback address, signals, systemd's notify."""

from __future__ import annotations

import grp
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from tests.conftest import Las, pid_alive, wait_until, workload
from tests.service.conftest import Service, start_service

PROBLEM = "application/problem+json"
ModuleFactory = Callable[..., Path]


def tcp_url(svc: Service) -> str:
    """The TCP listener's URL, as its log says once it listens (port 0: the kernel's)."""
    found = wait_until(
        lambda: re.search(r"listening on (http://\S+)", svc.log_text()),
        timeout=20,
        message="the TCP listener's log line",
    )
    return str(found.group(1))


@pytest.fixture
def tcp_service(las: Las, las_env: dict[str, str]) -> Iterator[Service]:
    svc = start_service(las_env, las.home, "--listen", "127.0.0.1:0")
    try:
        yield svc
    finally:
        svc.stop()


def test_tcp_needs_the_bearer_token(las: Las, tcp_service: Service) -> None:
    url = tcp_url(tcp_service)
    token_file = las.home / "api-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 43  # 32 random bytes, urlsafe base64
    wrong = secrets.token_urlsafe(32)
    with httpx.Client(base_url=url, timeout=30) as c:
        for headers in ({}, {"Authorization": f"Bearer {wrong}"}, {"Authorization": token}):
            res = c.get("/v1/health", headers=headers)
            assert res.status_code == 401, (headers, res.text)
            assert res.headers["www-authenticate"].startswith("Bearer")
            assert res.headers["content-type"] == PROBLEM
            assert res.json()["type"] == "urn:localaistack:problem:unauthorized"
            assert token not in res.text and wrong not in res.text
        res = c.get("/v1/instances", headers={"Authorization": f"Bearer {wrong}"})
        assert res.status_code == 401  # every route, not only health
        auth = {"Authorization": f"Bearer {token}"}
        res = c.get("/v1/health", headers=auth)
        assert res.status_code == 200 and res.json()["status"] == "ok"
        assert c.get("/v1/instances", headers=auth).json() == []
        assert c.get("/v2/x", headers=auth).status_code == 404  # past the token: the app
    out = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"{url}/v1/health"],
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    assert out == "401"
    # the socket needs no token
    with tcp_service.client() as c:
        assert c.get("/v1/health").status_code == 200
    log = tcp_service.log_text()
    assert "GET /v1/health 401" in log and "GET /v1/health 200" in log
    assert token not in log and wrong not in log
    # made once: a new service uses the same token
    tcp_service.stop()
    again = start_service(tcp_service.env, las.home, "--listen", "127.0.0.1:0")
    try:
        assert token_file.read_text().strip() == token
        with httpx.Client(base_url=tcp_url(again), timeout=30) as c:
            assert c.get("/v1/health", headers=auth).status_code == 200
        assert token not in again.log_text()
    finally:
        again.stop()


def test_a_non_loopback_address_needs_the_policy(las: Las, las_env: dict[str, str]) -> None:
    res = las("serve", "--listen", "0.0.0.0:0", timeout=60)
    assert res.code == 3, res
    assert "network.api_expose" in res.err and "0.0.0.0" in res.err
    assert not (las.home / "las.sock").exists()  # refused before anything listens
    assert not (las.home / "api-token").exists()

    las.home.mkdir(parents=True, exist_ok=True)
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"network": {"api_expose": ["0.0.0.0"]}}))
    svc = start_service(las_env, las.home, "--listen", "0.0.0.0:0")
    try:
        port = tcp_url(svc).rsplit(":", 1)[1]
        token = (las.home / "api-token").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.get("/v1/health").status_code == 401
            res = c.get("/v1/health", headers={"Authorization": f"Bearer {token}"})
            assert res.status_code == 200
    finally:
        svc.stop()
    # a bad address in the policy is the policy's error
    (las.home / "policy.yaml").write_text(yaml.safe_dump({"network": {"api_expose": ["lan"]}}))
    res = las("serve", "--listen", "0.0.0.0:0", timeout=60)
    assert res.code == 1 and "api_expose" in res.err, res


@pytest.mark.parametrize(
    "value", ["nohost", "127.0.0.1", ":80", "example.com:80", "127.0.0.1:99999", "[::1]:x"]
)
def test_a_bad_listen_value_is_a_usage_error(las: Las, value: str) -> None:
    res = las("serve", "--listen", value, timeout=60)
    assert res.code == 2, res
    assert "--listen" in res.err
    assert not (las.home / "las.sock").exists()


def test_the_socket_mode(las: Las, service: Service) -> None:
    st = service.socket.lstat()
    assert stat.S_ISSOCK(st.st_mode)
    try:
        las_gid: int | None = grp.getgrnam("las").gr_gid
    except KeyError:
        las_gid = None
    if os.geteuid() == 0 and las_gid is not None:
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == las_gid
    else:  # not root, or no group `las` to share it with: the owner only
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_uid == os.geteuid()


@pytest.mark.skipif(os.geteuid() != 0, reason="the group's socket is root's")
def test_as_root_the_socket_is_shared_with_the_group_las(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from localaistack.service import server

    other = next(g for g in grp.getgrall() if g.gr_gid != 0)  # stands in for `las`
    asked: list[str] = []

    def getgrnam(name: str) -> grp.struct_group:
        asked.append(name)
        return other

    monkeypatch.setattr(server.grp, "getgrnam", getgrnam)
    path = tmp_path / "shared.sock"
    sock = server.bind_unix(path)
    try:
        st = path.lstat()
        assert asked == ["las"]
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == other.gr_gid
    finally:
        sock.close()


def test_a_stale_socket_is_replaced_and_a_live_one_refused(
    las: Las, las_env: dict[str, str]
) -> None:
    las.home.mkdir(parents=True, exist_ok=True)
    path = las.home / "las.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound, never listening, closed: the file of a service gone
    dead.close()
    assert path.exists()
    svc = start_service(las_env, las.home)
    try:
        assert "stale socket" in svc.log_text()
        second = subprocess.run(
            [sys.executable, "-m", "localaistack", "serve", "--socket", str(path)],
            env=las_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second
        assert "another service is listening on" in second.stderr
        assert "Traceback" not in second.stderr
        with svc.client() as c:  # the first one serves on
            assert c.get("/v1/health").status_code == 200
    finally:
        svc.stop()
    assert svc.proc.returncode == 0
    assert not path.exists()  # removed at a graceful stop

    path.write_text("not a socket")
    res = las("serve", timeout=60)
    assert res.code == 2 and "is not a socket" in res.err
    assert path.read_text() == "not a socket"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_graceful_stop_leaves_the_workloads(
    las: Las, service: Service, module_factory: ModuleFactory, sig: int
) -> None:
    path = module_factory("stays", workload())
    with service.client() as c:
        res = c.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201, res.text
    pid = res.json()["pid"]
    assert service.stop(sig) == 0, service.log_text()
    assert "stopping (workloads keep running)" in service.log_text()
    assert not service.socket.exists()
    assert pid_alive(pid) and las.state("stays") == "running"


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_is_notified_to_systemd(
    las: Las, las_env: dict[str, str], module_factory: ModuleFactory, tmp_path: Path, abstract: bool
) -> None:
    name = f"las-test-{secrets.token_hex(6)}"
    address = f"@{name}" if abstract else str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name if abstract else address)
    receiver.settimeout(30)
    try:
        svc = start_service({**las_env, "NOTIFY_SOCKET": address}, las.home)
        try:
            message = receiver.recv(4096).decode()
            assert "READY=1" in message.splitlines()
            # a workload started by the service does not inherit systemd's socket
            path = module_factory("env", workload("--env", "NOTIFY_SOCKET"))
            with svc.client() as c:
                assert c.post("/v1/instances", json={"module": str(path)}).status_code == 201
                out = wait_until(
                    lambda: "ready" in (text := c.get("/v1/instances/env/logs").text) and text,
                    message="the workload's output",
                )
            assert "NOTIFY_SOCKET=<unset>" in out
        finally:
            svc.stop()
        assert "STOPPING=1" in receiver.recv(4096).decode()
    finally:
        receiver.close()


def test_a_stop_does_not_wait_forever_for_a_follow(
    las: Las, service: Service, module_factory: ModuleFactory
) -> None:
    path = module_factory("talks", workload())
    with service.client() as c:
        res = c.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201, res.text
    pid = res.json()["pid"]
    opened = threading.Event()
    ended: list[str] = []

    def follow() -> None:
        try:
            with (
                service.client() as c,
                c.stream("GET", "/v1/instances/talks/logs", params={"follow": "true"}) as r,
            ):
                opened.set()
                for _ in r.iter_bytes():
                    pass
            ended.append("ended")
        except httpx.HTTPError as exc:  # cut when the service goes: also an end
            ended.append(type(exc).__name__)

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert opened.wait(15)
    t0 = time.monotonic()
    assert service.stop(signal.SIGTERM, timeout=30) == 0, service.log_text()
    assert time.monotonic() - t0 < 15  # the grace for requests in flight is 5s
    reader.join(10)
    assert ended, "the follow did not end with the service"
    assert pid_alive(pid) and las.state("talks") == "running"

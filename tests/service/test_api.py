"""The HTTP API of a real `las serve` on its unix socket: httpx and curl as clients, real
native workloads (tests/programs) started, stopped and read through it."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import PROGRAMS, REPO, Las, pid_alive, wait_until, workload
from tests.service.conftest import Service, start_service

from localaistack.ops.api import Operations

ModuleFactory = Callable[..., Path]
PORTS = [{"name": "http", "port": 8080}]
PROBLEM = "application/problem+json"


def healthsrv(
    module_factory: ModuleFactory, tmp_path: Path, name: str = "web", start_timeout: str = "20s"
) -> Path:
    """A native module: an HTTP server with a health probe (ready at once; its control
    file ``NAME.control`` says otherwise)."""
    control = tmp_path / f"{name}.control"
    command = [sys.executable, str(PROGRAMS / "healthsrv.py"), "${host}", "${ports.http}"]
    return module_factory(
        name,
        [*command, str(control)],
        ports=PORTS,
        health={
            "http": {"port": "http", "path": "/health"},
            "start_timeout": start_timeout,
            "interval": "300ms",
            "timeout": "500ms",
        },
    )


def curl(svc: Service, *args: str) -> tuple[int, dict[str, str], str]:
    """``curl --unix-socket``: the status, headers (lower-case names) and body."""
    out = subprocess.run(
        ["curl", "-sS", "-i", "--unix-socket", str(svc.socket), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    while head.startswith("HTTP/1.1 100"):  # curl's Expect: 100-continue
        head, _, body = body.partition("\n\n")
    lines = head.splitlines()
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_problem(res: httpx.Response, status: int, kind: str | None = None) -> dict[str, Any]:
    """A problem body (RFC 9457) of ``status``: never a traceback."""
    assert res.status_code == status, res.text
    assert res.headers["content-type"].startswith(PROBLEM), res.headers
    body: dict[str, Any] = res.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:localaistack:problem:")
    if kind is not None:
        assert body["type"] == f"urn:localaistack:problem:{kind}", body
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in res.text
    return body


@pytest.fixture
def client(service: Service) -> Iterator[httpx.Client]:
    with service.client() as c:
        yield c


def test_health_hardware_modules(las: Las, service: Service, client: httpx.Client) -> None:
    res = client.get("/v1/health")
    assert res.status_code == 200
    assert res.json()["status"] == "ok" and res.json()["version"]
    status, headers, body = curl(service, "http://las/v1/health")
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body) == res.json()

    hw = client.get("/v1/hardware")
    assert hw.status_code == 200
    assert set(hw.json()) == set(las.ok("hw", "--json").json())

    mods = client.get("/v1/modules")
    assert mods.status_code == 200
    cli_names = [m["name"] for m in las.ok("modules", "--json").json()]
    assert [m["name"] for m in mods.json()] == cli_names and "llama.cpp" in cli_names

    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and "/v1/instances/{name}/logs" in spec.json()["paths"]
    assert client.get("/docs").status_code == 200


def test_plan_is_the_cli_plan(
    las: Las, client: httpx.Client, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    path = healthsrv(module_factory, tmp_path)
    res = client.post("/v1/plans", json={"module": str(path)})
    assert res.status_code == 200, res.text
    plan = res.json()
    cli = las.ok("plan", str(path), "--json").json()
    assert set(plan) == set(cli)
    assert plan["module"]["name"] == "web" and plan["mode"] == cli["mode"] == "native"
    assert las.ps() == {}  # a dry run: nothing recorded

    res = client.post("/v1/plans", json={"module": "no-such-module"})
    body = assert_problem(res, 400, "usage-error")
    assert "no-such-module" in body["detail"]


def test_lifecycle(
    las: Las,
    service: Service,
    client: httpx.Client,
    module_factory: ModuleFactory,
    tmp_path: Path,
) -> None:
    path = healthsrv(module_factory, tmp_path)
    res = client.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201, res.text
    started = res.json()
    assert started["name"] == "web" and started["state"] == "healthy", started
    assert started["pid"] and pid_alive(started["pid"])
    assert las.ps()["web"]["health"] == "healthy"  # the run answered once healthy

    rows = client.get("/v1/instances").json()
    assert [(r["name"], r["state"], r["health"]) for r in rows] == [("web", "running", "healthy")]
    status, _, body = curl(service, "http://las/v1/instances?all=true")
    assert status == 200 and json.loads(body) == rows

    detail = client.get("/v1/instances/web")
    assert detail.status_code == 200
    data = detail.json()
    assert data["state"] == "running" and data["runs"][0]["run_id"] == started["run_id"]
    assert data == las.inspect("web") | {"probes": data["probes"]}  # probes go on

    logs = client.get("/v1/instances/web/logs")
    assert logs.status_code == 200 and logs.headers["content-type"].startswith("text/plain")
    assert logs.content == las.ok("logs", "web").out.encode()
    assert b"healthsrv on" in logs.content

    # follow: the stream ends when the run does (stopped through the API meanwhile)
    seen: list[bytes] = []
    done = threading.Event()

    def follow() -> None:
        with (
            service.client() as c,
            c.stream("GET", "/v1/instances/web/logs", params={"follow": "true"}) as r,
        ):
            assert r.status_code == 200
            for chunk in r.iter_bytes():
                seen.append(chunk)
        done.set()

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    wait_until(lambda: b"healthsrv on" in b"".join(seen), message="the followed output")
    assert not done.is_set()
    res = client.post("/v1/instances/web/stop", json={"timeout": 5})
    assert res.status_code == 200, res.text
    assert res.json()["state"] == "stopped"
    assert done.wait(15), "the follow did not end with the run"
    reader.join(5)
    assert not pid_alive(started["pid"])

    res = client.post("/v1/instances/web/start", json={})
    assert res.status_code == 200 and res.json()["state"] == "healthy", res.text
    second = res.json()["run_id"]
    assert second != started["run_id"]

    res = client.post("/v1/instances/web/restart")  # no body: the defaults
    assert res.status_code == 200 and res.json()["state"] == "healthy", res.text
    third = res.json()
    assert third["run_id"] not in (started["run_id"], second)
    assert las.ps()["web"]["run_id"] == third["run_id"]

    res = client.delete("/v1/instances/web")  # running: refused
    assert_problem(res, 409, "instance-conflict")
    res = client.delete("/v1/instances/web", params={"force": "true", "purge": "true"})
    assert res.status_code == 200 and res.json()["name"] == "web", res.text
    assert not pid_alive(third["pid"])
    assert_problem(client.get("/v1/instances/web"), 404, "instance-not-found")
    assert las.ps() == {}

    events = client.get("/v1/events").json()
    assert [e["type"] for e in events if e["instance"] == "web"][:1] == ["created"]
    assert all(e["id"] > events[0]["id"] for e in events[1:])
    last = client.get("/v1/events", params={"tail": 1}).json()
    assert last == events[-1:]
    assert client.get("/v1/events", params={"after": events[-1]["id"]}).json() == []
    assert "Traceback" not in service.log_text()


def test_a_long_log_is_the_cli_log(
    las: Las, service: Service, client: httpx.Client, module_factory: ModuleFactory
) -> None:
    path = module_factory("chatty", workload("--lines", "30000", "--exit-after-lines"))
    assert client.post("/v1/instances", json={"module": str(path)}).status_code == 201
    wait_until(lambda: las.state("chatty") == "stopped", timeout=30, message="all written")
    res = client.get("/v1/instances/chatty/logs")
    assert res.status_code == 200
    assert res.content == las.ok("logs", "chatty").out.encode()
    assert res.content.count(b"\n") >= 30000
    for query, args in [
        ({"tail": "5"}, ["--tail", "5"]),
        ({"tail": "0"}, ["--tail", "0"]),
        ({"timestamps": "true", "tail": "3"}, ["--timestamps", "--tail", "3"]),
    ]:
        res = client.get("/v1/instances/chatty/logs", params=query)
        assert res.content == las.ok("logs", "chatty", *args).out.encode(), query
    run_id = las.inspect("chatty")["runs"][0]["run_id"]
    res = client.get("/v1/instances/chatty/logs", params={"run": run_id, "tail": "2"})
    assert res.status_code == 200 and res.content.startswith(b"line 029999"), res.content
    assert res.content.endswith(b"las: exited on its own with code 0\n")
    status, _, body = curl(service, "http://las/v1/instances/chatty/logs?tail=2")
    assert status == 200 and body.encode() == las.ok("logs", "chatty", "--tail", "2").out.encode()
    res = client.get("/v1/instances/chatty/logs", params={"run": "nosuchrun"})
    assert 400 <= res.status_code < 500 and res.headers["content-type"] == PROBLEM


def test_a_waiting_run_does_not_hold_up_other_requests(
    las: Las, service: Service, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    path = healthsrv(module_factory, tmp_path, "slow")
    (tmp_path / "slow.control").write_text("ready-after 3")
    results: list[httpx.Response] = []

    def run() -> None:
        with service.client() as c:
            results.append(c.post("/v1/instances", json={"module": str(path)}))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    with service.client() as c:
        wait_until(lambda: "slow" in las.ps(), message="the run recorded")
        # while it waits for healthy: the others are answered, each at once
        for _ in range(5):
            t0 = time.monotonic()
            assert c.get("/v1/health").status_code == 200
            rows = c.get("/v1/instances").json()
            assert time.monotonic() - t0 < 2
        assert [r["health"] for r in rows] == ["starting"] and runner.is_alive()
        # the same name again, meanwhile: a conflict, not a second instance
        assert_problem(c.post("/v1/instances", json={"module": str(path)}), 409)
    runner.join(30)
    assert results and results[0].status_code == 201, results
    assert results[0].json()["state"] == "healthy"


def test_a_failed_start_is_201_with_its_reason(
    las: Las, client: httpx.Client, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    path = healthsrv(module_factory, tmp_path, "never", start_timeout="1s")
    (tmp_path / "never.control").write_text("503")
    res = client.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201, res.text
    out = res.json()
    assert out["state"] == "failed", out
    assert out["reason"].startswith("did not become healthy within 1s"), out
    assert las.state("never") == "failed"
    res = client.get("/v1/instances/never/logs")  # its output is kept
    assert res.status_code == 200 and b"healthsrv on" in res.content


def test_warnings_travel_in_a_header(
    las: Las, client: httpx.Client, module_factory: ModuleFactory
) -> None:
    path = module_factory(
        "big", workload(), resources={"memory": "64TiB"}, policy={"overcommit": "allow"}
    )
    res = client.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201, res.text
    warnings = json.loads(res.headers["las-warnings"])
    assert any(w.startswith("overcommitted (policy overcommit: allow)") for w in warnings)
    assert res.headers["las-warnings"].isascii()
    assert "las-warnings" not in client.get("/v1/instances").headers  # none: no header


BAD_BODIES: list[tuple[str, bytes | str, str]] = [
    ("malformed JSON", '{"module": "x",', "not valid JSON"),
    ("not JSON at all", "module=x", "not valid JSON"),
    ("unknown field", '{"module": "x", "colour": "red"}', "body.colour: unknown field"),
    ("wrong type", '{"module": 3}', "body.module"),
    ("wrong type in a map", '{"module": "x", "set": {"a": [1]}}', "body.set.a"),
    ("bad enum", '{"module": "x", "mode": "vm"}', "body.mode"),
    ("a list, not an object", "[]", "body"),
    ("no body", "", "body"),
]


@pytest.mark.parametrize(("what", "raw", "named"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_bodies_are_422_naming_the_field(
    client: httpx.Client, what: str, raw: bytes | str, named: str
) -> None:
    for route in ("/v1/instances", "/v1/plans"):
        res = client.post(route, content=raw, headers={"content-type": "application/json"})
        body = assert_problem(res, 422, "usage-error")
        assert named in body["detail"], (what, body)
        assert body["exit_code"] == 2


def test_bad_inputs_are_4xx_problems(
    las: Las, service: Service, client: httpx.Client, module_factory: ModuleFactory
) -> None:
    path = module_factory("idle", workload())
    # a wrong type in a query, in the body of a lifecycle call
    assert_problem(client.get("/v1/instances", params={"all": "maybe"}), 422, "usage-error")
    assert_problem(client.get("/v1/events", params={"tail": "-1"}), 422)
    assert_problem(client.get("/v1/instances/x/logs", params={"tail": "many"}), 422)
    res = client.post("/v1/instances/x/stop", json={"timeout": "soon"})
    assert "body.timeout" in assert_problem(res, 422)["detail"]
    # unknown instances, everywhere
    for method, route in [
        ("GET", "/v1/instances/ghost"),
        ("GET", "/v1/instances/ghost/logs"),
        ("GET", "/v1/instances/ghost/logs?follow=true"),
        ("POST", "/v1/instances/ghost/start"),
        ("POST", "/v1/instances/ghost/stop"),
        ("POST", "/v1/instances/ghost/restart"),
        ("DELETE", "/v1/instances/ghost"),
    ]:
        body = assert_problem(client.request(method, route), 404, "instance-not-found")
        assert "ghost" in body["detail"] and body["exit_code"] == 4
    # invalid names: in the body, and in the path (URL-encoded)
    res = client.post("/v1/instances", json={"module": str(path), "name": "no spaces"})
    assert "no spaces" in assert_problem(res, 400, "usage-error")["detail"]
    res = client.post("/v1/instances", json={"module": "../../etc/passwd"})
    assert 400 <= res.status_code < 500 and res.headers["content-type"] == PROBLEM
    for name in ("a%20b", "..", "%00x", "x" * 80):
        res = client.get(f"/v1/instances/{name}")
        assert 400 <= res.status_code < 500, (name, res.text)
        assert res.headers["content-type"] == PROBLEM
    # unknown routes and methods
    body = assert_problem(client.get("/v2/nothing"), 404, "not-found")
    assert "/v2/nothing" in body["detail"]
    res = client.put("/v1/health")
    assert_problem(res, 405, "method-not-allowed")
    assert res.headers["allow"] == "GET"
    # curl agrees (a client that is not httpx)
    status, headers, raw = curl(service, "-X", "POST", "http://las/v1/instances", "-d", "{")
    assert status == 422 and headers["content-type"] == PROBLEM
    assert json.loads(raw)["type"] == "urn:localaistack:problem:usage-error"
    # a name cannot forge a line of the service's log
    res = client.get("/v1/instances/x%0A2026-01-01T00:00:00Z INFO GET /forged 200 1ms")
    assert 400 <= res.status_code < 500
    assert las.ps() == {}  # nothing of it started anything
    log = service.log_text()
    assert not [line for line in log.splitlines() if "/forged" in line and "x%0A" not in line]
    assert "Traceback" not in log and " 500 " not in log


def test_bodies_over_a_mebibyte_are_413(
    service: Service, client: httpx.Client, tmp_path: Path
) -> None:
    big = b'{"module": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    res = client.post("/v1/plans", content=big, headers={"content-type": "application/json"})
    assert_problem(res, 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 64 * 1024):
            yield big[i : i + 64 * 1024]

    res = client.post("/v1/instances", content=chunked(), headers={"content-type": "x/y"})
    assert_problem(res, 413)
    file = tmp_path / "big.json"
    file.write_bytes(big)
    for extra in ([], ["-H", "Transfer-Encoding: chunked"]):
        status, headers, _ = curl(
            service, "-X", "POST", "http://las/v1/plans", "--data-binary", f"@{file}", *extra
        )
        assert status == 413 and headers["content-type"] == PROBLEM, extra
    # just under the limit is read (and found wrong: 422, not 413)
    under = b'{"module": "' + b"x" * (1024 * 1024 - 100) + b'", "bad": 1}'
    assert_problem(client.post("/v1/plans", content=under), 422)
    assert client.get("/v1/health").status_code == 200  # it serves on


def _state_of(pid: int) -> tuple[int, str] | None:
    """(ppid, state letter) of ``pid``; None once it is gone (reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def _supervisor_pid(las: Las, name: str) -> int:
    db = sqlite3.connect(las.home / "state.db")
    try:
        row = db.execute(
            "SELECT sup_pid FROM runs WHERE instance=? ORDER BY attempt DESC LIMIT 1", (name,)
        ).fetchone()
    finally:
        db.close()
    return int(row[0])


def test_an_exited_supervisor_is_reaped(
    las: Las, service: Service, client: httpx.Client, module_factory: ModuleFactory
) -> None:
    # a run that ends by itself: its supervisor (the service's child) exits after it
    path = module_factory("brief", workload("--lines", "3", "--exit-after-lines"))
    res = client.post("/v1/instances", json={"module": str(path), "detach": True})
    assert res.status_code == 201, res.text
    wait_until(lambda: las.state("brief") == "stopped", timeout=15, message="the run's end")
    sup = _supervisor_pid(las, "brief")
    # reaped within a second or so: gone from /proc, never left a zombie of the service
    wait_until(lambda: _state_of(sup) is None, timeout=10, message=f"supervisor {sup} reaped")

    # one stopped through the API
    path = module_factory("idle", workload())
    res = client.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201, res.text
    sup = _supervisor_pid(las, "idle")
    state = _state_of(sup)
    assert state is not None and state[0] == service.proc.pid and state[1] in "SR", state
    assert client.post("/v1/instances/idle/stop").status_code == 200
    wait_until(lambda: _state_of(sup) is None, timeout=10, message=f"supervisor {sup} reaped")
    assert service.proc.poll() is None


def test_sigkill_of_the_service_leaves_the_workload(
    las: Las, service: Service, las_env: dict[str, str], module_factory: ModuleFactory
) -> None:
    path = module_factory("keeps", workload())
    with service.client() as c:
        res = c.post("/v1/instances", json={"module": str(path)})
    assert res.status_code == 201 and res.json()["state"] == "running", res.text
    pid = res.json()["pid"]
    service.stop(signal.SIGKILL)
    assert service.proc.returncode == -signal.SIGKILL
    assert pid_alive(pid)
    again = start_service(las_env, las.home)  # the socket file is stale: replaced
    try:
        with again.client() as c:
            rows = {r["name"]: r for r in c.get("/v1/instances").json()}
        assert rows["keeps"]["state"] == "running" and rows["keeps"]["pid"] == pid
        again.stop(signal.SIGTERM)
        assert again.proc.returncode == 0, again.log_text()
        assert pid_alive(pid)  # a graceful stop leaves it too
        assert las.state("keeps") == "running"
    finally:
        again.stop(signal.SIGKILL)


class _Broken(Operations):
    """An ``Operations`` with bugs, for the app's last resort (served by `serve` in a
    process of its own, below). Each close is a line in ``$LAS_TEST_CLOSED``."""

    def close(self) -> None:
        with open(os.environ["LAS_TEST_CLOSED"], "a") as f:
            f.write("closed\n")

    def hardware(self) -> dict[str, Any]:
        raise RuntimeError("a bug, with a secret: hunter2")

    def modules(self) -> list[dict[str, Any]]:
        raise sqlite3.OperationalError("database is locked")  # escaped the store's wrapping

    def ps(self, all_: bool = False) -> list[Any]:
        return [{"name": "not a summary"}]  # a wrong shape: the response model refuses it

    def logs(self, name: str, **_: Any) -> Iterator[bytes]:
        def broken() -> Iterator[bytes]:
            yield b"first\n"
            raise RuntimeError("the log broke off")

        return broken()

    def plan(self, *a: Any, **k: Any) -> Any: ...
    def run(self, *a: Any, **k: Any) -> Any: ...
    def start(self, *a: Any, **k: Any) -> Any: ...
    def restart(self, *a: Any, **k: Any) -> Any: ...
    def stop(self, *a: Any, **k: Any) -> Any: ...
    def remove(self, *a: Any, **k: Any) -> Any: ...
    def inspect(self, *a: Any, **k: Any) -> Any: ...
    def events(self, *a: Any, **k: Any) -> Any: ...


SERVE_BROKEN = """
import sys
from pathlib import Path
from localaistack.service.server import serve
from tests.service.test_api import _Broken
home = Path(sys.argv[1])
serve(home, home / "las.sock", None, ops_factory=_Broken)
"""


def test_a_bug_is_a_500_problem_logged_with_its_traceback(
    las_env: dict[str, str], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    closed = tmp_path / "closed"
    log = tmp_path / "serve.log"
    env = {**las_env, "LAS_TEST_CLOSED": str(closed)}
    env["PYTHONPATH"] += os.pathsep + str(REPO)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE_BROKEN, str(home)],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    svc = Service(proc, home / "las.sock", log, env)
    try:
        wait_until(lambda: "listening on" in svc.log_text(), timeout=30, message="listening")
        with svc.client() as c:
            res = c.get("/v1/hardware")
            body = assert_problem(res, 500, "internal-error")
            assert "RuntimeError" in body["detail"] and "hunter2" not in res.text
            res = c.get("/v1/modules")  # a raw SQLite error is the store's: 503
            body = assert_problem(res, 503, "store-error")
            assert "cause" in body and body["exit_code"] == 5
            assert_problem(c.get("/v1/instances"), 500, "internal-error")
            with pytest.raises(httpx.HTTPError), c.stream("GET", "/v1/instances/x/logs") as r:
                assert r.status_code == 200
                r.read()  # cut off: not ended as if it were complete
            assert c.get("/v1/health").status_code == 200  # and it serves on
    finally:
        assert svc.stop() == 0
    # each request's Operations closed, the stream's included
    assert closed.read_text().count("closed") == 4
    text = svc.log_text()
    assert text.count("Traceback") == 4 and "hunter2" in text  # the details: in the log

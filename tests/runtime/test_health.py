"""Health probes and restarts, with real servers under the real supervisor."""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import PROGRAMS, Las, pid_alive, wait_until, workload

ModuleFactory = Callable[..., Path]
PORTS = [{"name": "http", "port": 8080}]


def server(control: Path) -> list[str]:
    return [
        sys.executable,
        str(PROGRAMS / "healthsrv.py"),
        "${host}",
        "${ports.http}",
        str(control),
    ]


def health(**kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "http": {"port": "http", "path": "/health"},
        "start_timeout": "20s",
        "interval": "300ms",
        "timeout": "500ms",
        "failure_threshold": 2,
    }
    spec.update(kw)
    return spec


def events(las: Las, name: str) -> list[dict[str, Any]]:
    out = las.ok("events", "--json").out.splitlines()
    return [e for e in map(json.loads, out) if e["instance"] == name]


def test_ready_after_503_while_loading(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    control.write_text("ready-after 1.0")
    path = module_factory("loader", server(control), ports=PORTS, health=health())
    t0 = time.monotonic()
    res = las.ok("run", str(path))  # waits until healthy by default
    took = time.monotonic() - t0
    assert "healthy" in res.out and took >= 0.9
    info = las.ps()["loader"]
    assert info["state"] == "running" and info["health"] == "healthy"
    data = las.inspect("loader")
    outcomes = [p["outcome"] for p in data["probes"]]
    assert outcomes[-1] == "ok" and "starting" in outcomes
    assert data["probes"][-1]["message"] == "GET /health: HTTP 200"
    kinds = [e["message"].split(":")[0] for e in events(las, "loader") if e["type"] == "health"]
    assert kinds == ["healthy"]


def test_detach_returns_at_running(las: Las, module_factory: ModuleFactory, tmp_path: Path) -> None:
    control = tmp_path / "control"
    control.write_text("503")
    path = module_factory("detached", server(control), ports=PORTS, health=health())
    res = las.ok("run", "--detach", str(path))
    assert "running" in res.out
    assert las.ps()["detached"]["health"] == "starting"
    control.write_text("200")
    wait_until(lambda: las.ps()["detached"]["health"] == "healthy", message="healthy")


def test_never_ready_fails_after_start_timeout(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    control.write_text("503")
    path = module_factory("never", server(control), ports=PORTS, health=health(start_timeout="1s"))
    res = las("run", str(path))
    assert res.code == 4
    assert "did not become healthy within 1s (last probe: GET /health: HTTP 503)" in res.err
    info = las.ps()["never"]
    assert info["state"] == "failed" and info["reason"].startswith("did not become healthy")
    pid = las.inspect("never")["runs"][0]["pid"]
    assert not pid_alive(pid)
    assert "healthsrv on" in las.ok("logs", "never").out  # logs kept


def test_liveness_lost_and_recovered(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    path = module_factory("live", server(control), ports=PORTS, health=health())
    las.ok("run", str(path))
    control.write_text("500")
    wait_until(lambda: las.ps()["live"]["health"] == "unhealthy", message="unhealthy")
    assert las.ps()["live"]["state"] == "running"  # report only: nothing restarts it
    control.write_text("200")
    wait_until(lambda: las.ps()["live"]["health"] == "healthy", message="healthy again")
    kinds = [e["message"].split(":")[0] for e in events(las, "live") if e["type"] == "health"]
    assert kinds == ["healthy", "unhealthy", "healthy"]
    assert len(las.inspect("live")["runs"]) == 1


def test_hanging_server_times_out(las: Las, module_factory: ModuleFactory, tmp_path: Path) -> None:
    control = tmp_path / "control"
    path = module_factory("hang", server(control), ports=PORTS, health=health())
    las.ok("run", str(path))
    control.write_text("hang")
    wait_until(lambda: las.ps()["hang"]["health"] == "unhealthy", message="unhealthy")
    last = las.inspect("hang")["probes"][-1]
    assert last["outcome"] == "failed" and last["message"] == "timed out after 0.5s"
    assert 400 <= last["latency_ms"] < 1500


def test_flapping_does_not_make_it_unhealthy_or_restart(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    path = module_factory(
        "flap",
        server(control),
        ports=PORTS,
        health=health(failure_threshold=3),
        restart={
            "policy": "on-failure",
            "on_unhealthy": True,
            "max_restarts": 3,
            "backoff": "100ms",
        },
    )
    las.ok("run", str(path))
    control.write_text("flap")
    db = sqlite3.connect(las.home / "state.db")

    def probes_seen() -> int:
        row = db.execute("SELECT probes FROM runs ORDER BY attempt DESC LIMIT 1").fetchone()
        history = json.loads(row[0] or "[]")
        return sum(1 for p in history if p["outcome"] == "failed")

    wait_until(lambda: probes_seen() >= 2, timeout=15, message="failed probes while flapping")
    db.close()
    assert las.ps()["flap"]["health"] == "healthy"
    assert len(las.inspect("flap")["runs"]) == 1


def test_unhealthy_restart_when_asked(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    control = tmp_path / "control"
    path = module_factory(
        "sick",
        server(control),
        ports=PORTS,
        health=health(),
        restart={"policy": "never", "on_unhealthy": True, "max_restarts": 1, "backoff": "100ms"},
    )
    las.ok("run", str(path))
    control.write_text("500")
    wait_until(lambda: len(las.inspect("sick")["runs"]) == 2, timeout=15, message="a restart")
    first = las.inspect("sick")["runs"][0]
    assert first["state"] == "failed" and first["reason"].startswith("unhealthy: GET /health")
    control.write_text("200")
    wait_until(lambda: las.ps()["sick"]["health"] == "healthy", message="healthy after restart")


def test_crash_loop_backs_off_then_exhausts_budget(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "crashy",
        workload("--exit", "7"),
        restart={"policy": "on-failure", "max_restarts": 3, "backoff": "200ms"},
    )
    las("run", str(path))
    wait_until(
        lambda: las.ps()["crashy"]["reason"].startswith("restart budget exhausted"),
        timeout=30,
        message="budget exhausted",
    )
    data = las.inspect("crashy")
    runs = data["runs"]
    assert [r["attempt"] for r in runs] == [1, 2, 3, 4]
    assert all(r["state"] == "failed" and r["exit_code"] == 7 for r in runs)
    assert data["state"] == "failed"
    assert data["reason"] == (
        "restart budget exhausted after 4 attempts (first failure: exited with code 7; last "
        "output: exiting with 7; last: exited with code 7; last output: exiting with 7)"
    )
    # Backoff: 200 ms, 400 ms, 800 ms (each +-20 % jitter) between an end and the next start.
    db = sqlite3.connect(las.home / "state.db")
    rows = db.execute("SELECT started_at, finished_at FROM runs ORDER BY attempt").fetchall()
    db.close()
    gaps = [rows[i + 1][0] - rows[i][1] for i in range(3)]
    for gap, base in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert base * 0.75 <= gap <= base * 1.2 + 0.5, gaps
    # Each attempt has its own log; the first failure's log is still there.
    logs = [Path(r["log_path"]) for r in runs]
    assert len(set(logs)) == 4 and all(p.exists() for p in logs)
    assert "exiting with 7" in las.ok("logs", "crashy", "--run", runs[0]["run_id"]).out
    # `las restart` clears the budget: no hidden start-limit trap.
    las.ok("restart", "crashy")  # running again (it has no probe), then it fails again ...
    wait_until(
        lambda: (
            las.ps()["crashy"]["reason"].startswith("restart budget exhausted after 4")
            and len(las.inspect("crashy")["runs"]) == 8
        ),
        timeout=30,
        message="a fresh budget of restarts, spent again",
    )


def test_restart_after_exhaustion_works(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    flag = tmp_path / "healthy-now"
    script = (
        "import os, sys, time\n"
        "if not os.path.exists(sys.argv[1]): sys.exit(3)\n"
        "print('up', flush=True); time.sleep(1000)\n"
    )
    path = module_factory(
        "fixable",
        [sys.executable, "-c", script, str(flag)],
        restart={"policy": "on-failure", "max_restarts": 1, "backoff": "100ms"},
    )
    las("run", str(path))
    wait_until(
        lambda: las.ps()["fixable"]["reason"].startswith("restart budget exhausted"),
        timeout=15,
        message="exhausted",
    )
    flag.touch()
    las.ok("restart", "fixable")
    assert las.ps()["fixable"]["state"] == "running"


def test_tcp_probe(las: Las, module_factory: ModuleFactory) -> None:
    tcp = [
        sys.executable,
        "-c",
        "import socket,sys,time; s=socket.socket(); s.bind((sys.argv[1], int(sys.argv[2])));"
        "s.listen(); time.sleep(1000)",
        "${host}",
        "${ports.http}",
    ]
    path = module_factory(
        "tcp", tcp, ports=PORTS, health={"tcp": {"port": "http"}, "interval": "1s"}
    )
    las.ok("run", str(path))
    assert las.ps()["tcp"]["health"] == "healthy"
    assert las.inspect("tcp")["probes"][-1]["message"].startswith("connected to 127.0.0.1:")


def test_command_probe(las: Las, module_factory: ModuleFactory, tmp_path: Path) -> None:
    flag = tmp_path / "ok"
    path = module_factory(
        "cmd",
        workload(),
        health={
            "command": ["sh", "-c", f"test -f {flag} && echo fine"],
            "interval": "300ms",
            "failure_threshold": 1,
            "start_timeout": "20s",
        },
    )
    las.ok("run", "-d", str(path))
    assert las.ps()["cmd"]["health"] == "starting"
    flag.touch()
    wait_until(lambda: las.ps()["cmd"]["health"] == "healthy", message="healthy")
    assert las.inspect("cmd")["probes"][-1]["message"] == "exit 0: fine"
    flag.unlink()
    wait_until(lambda: las.ps()["cmd"]["health"] == "unhealthy", message="unhealthy")
    assert las.inspect("cmd")["probes"][-1]["message"] == "exit 1"


def test_no_probe_means_unknown(las: Las, module_factory: ModuleFactory) -> None:
    las.ok("run", str(module_factory("plain", workload())))
    info = las.ps()["plain"]
    assert info["health"] == "unknown"
    assert las.inspect("plain")["probes"] == []


def test_policy_can_forbid_restarts(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "nope", workload("--exit", "1"), restart={"policy": "on-failure", "max_restarts": 5}
    )
    policy = las.home / "policy.yaml"
    policy.write_text(policy.read_text() + "restarts: deny\n")
    plan = json.loads(las.ok("plan", str(path), "--json").out)
    assert plan["restart"]["policy"] == "never"
    assert any(
        d["topic"] == "restart" and "restarts: deny" in d["reason"] for d in plan["decisions"]
    )
    las("run", str(path))
    wait_until(lambda: las.state("nope") == "failed", message="failed")
    assert len(las.inspect("nope")["runs"]) == 1


def test_stop_while_waiting_to_restart(las: Las, module_factory: ModuleFactory) -> None:
    path = module_factory(
        "waiting",
        workload("--exit", "2"),
        restart={"policy": "on-failure", "max_restarts": 3, "backoff": "30s"},
    )
    las("run", str(path))
    wait_until(lambda: len(las.inspect("waiting")["runs"]) == 2, message="restart scheduled")
    assert las.ps()["waiting"]["state"] == "starting"
    t0 = time.monotonic()
    las.ok("stop", "waiting")
    assert time.monotonic() - t0 < 5  # not the 30 s backoff
    runs = las.inspect("waiting")["runs"]
    assert runs[0]["state"] == "failed" and runs[1]["state"] == "stopped"
    assert runs[1]["reason"] == "stopped while waiting to restart"
    assert las.ok("ps", "--json").json() == []

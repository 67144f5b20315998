"""service/metrics.py: the Prometheus text, parsed with prometheus_client's own parser,
against the store after real runs of real native modules."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import PROGRAMS, Las, wait_until, workload

from localaistack.runtime.backend import ExitStatus, describe_exit
from localaistack.service.metrics import REASON_CLASSES, ServiceMetrics, classify_end

ModuleFactory = Callable[..., Path]
MiB = 1024 * 1024

Samples = dict[str, dict[frozenset[tuple[str, str]], float]]


def scrape(metrics: ServiceMetrics) -> tuple[Samples, dict[str, str]]:
    """Every sample by name and labels, and every family's type."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name][frozenset(labels.items())]


def db_rows(home: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(home / "state.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def health_server(control: Path) -> list[str]:
    return [
        sys.executable,
        str(PROGRAMS / "healthsrv.py"),
        "${host}",
        "${ports.http}",
        str(control),
    ]


def test_metrics_match_the_store_after_real_runs(
    las: Las, module_factory: ModuleFactory, tmp_path: Path
) -> None:
    # web: healthy behind an HTTP probe, 64 MiB reserved.
    control = tmp_path / "control"
    control.write_text("ready-after 0.5")
    web = module_factory(
        "web",
        health_server(control),
        ports=[{"name": "http", "port": 8080}],
        health={
            "http": {"port": "http", "path": "/health"},
            "start_timeout": "20s",
            "interval": "60s",
            "timeout": "500ms",
        },
        resources={"memory": "64MiB"},
    )
    # crash: fails (exit 1) after removing its own program, so that the restart the
    # policy asks for cannot start: one restart, one failure, one start failure.
    script = tmp_path / "crash.sh"
    script.write_text('#!/bin/sh\nrm -f "$0"\necho bye\nexit 1\n')
    script.chmod(0o755)
    crash = module_factory(
        "crash",
        [str(script)],
        restart={"policy": "on-failure", "max_restarts": 3, "backoff": "100ms"},
    )
    clean = module_factory("clean", workload("--exit", "0"))

    las.ok("run", str(web))
    las("run", str(crash))
    las("run", str(clean))

    def crash_done() -> bool:
        runs = las.inspect("crash")["runs"]
        return len(runs) == 2 and all(r["state"] in ("stopped", "failed") for r in runs)

    wait_until(crash_done, timeout=30, message="crash's restart to fail")
    wait_until(lambda: las.state("clean") == "stopped", timeout=30, message="clean to exit")
    wait_until(lambda: las.ps()["web"]["health"] == "healthy", timeout=30, message="healthy")

    metrics = ServiceMetrics(las.home)
    s, types = scrape(metrics)
    assert value(s, "las_store_up") == 1
    # Instances: as `las ps --all` shows them.
    ps = las.ps()
    for (state, health), n in _instance_grid(ps).items():
        assert value(s, "las_instances", state=state, health=health) == n, (state, health)
    assert value(s, "las_instances", state="running", health="healthy") == 1
    assert value(s, "las_instances", state="failed", health="none") == 1
    assert value(s, "las_instances", state="stopped", health="none") == 1
    # Runs: one per row of the runs table; ended ones by class.
    (runs,) = db_rows(las.home, "SELECT COUNT(*) FROM runs")[0]
    assert runs == 4
    assert value(s, "las_runs_started_total") == runs
    ended = {c: value(s, "las_runs_ended_total", reason_class=c) for c in REASON_CLASSES}
    assert ended == {
        **dict.fromkeys(REASON_CLASSES, 0.0),
        "failed": 1,
        "start-failed": 1,
        "exited": 1,
    }
    assert value(s, "las_restarts_total") == 1
    # Time to healthy: web's one run, from its creation to its first healthy probe.
    ((created, healthy_at),) = db_rows(
        las.home, "SELECT created_at, healthy_at FROM runs WHERE instance='web'"
    )
    assert value(s, "las_time_to_healthy_seconds_count") == 1
    assert value(s, "las_time_to_healthy_seconds_sum") == pytest.approx(
        healthy_at - created, abs=0.05
    )
    assert healthy_at - created >= 0.5  # the server answered 503 for 0.5 s
    assert value(s, "las_time_to_healthy_seconds_bucket", le="0.25") == 0
    assert value(s, "las_time_to_healthy_seconds_bucket", le="+Inf") == 1
    # The latest probe of web's run, as stored (no probe since: the interval is 60 s).
    (probes,) = db_rows(las.home, "SELECT probes FROM runs WHERE instance='web'")[0]
    latest = max(json.loads(probes), key=lambda p: p["at"])
    assert value(s, "las_probe_latency_seconds", instance="web") == pytest.approx(
        latest["latency_ms"] / 1000
    )
    assert set(s["las_probe_latency_seconds"]) == {frozenset({("instance", "web")})}
    # The reservation ledger: web's 64 MiB, no VRAM.
    assert value(s, "las_reserved_bytes", resource="ram") == 64 * MiB
    assert value(s, "las_reserved_bytes", resource="vram") == 0
    # Prometheus conventions: counters end in _total, units in names.
    assert types["las_runs_started"] == "counter"
    assert types["las_time_to_healthy_seconds"] == "histogram"
    assert "las_gpu_memory_bytes" not in s or sys.modules.get("pynvml") is not None

    # A stop is counted; `las rm` forgets the crash's runs, never what was counted.
    las.ok("stop", "web")
    las.ok("rm", "crash")
    for m in (metrics, ServiceMetrics(las.home)):  # the same, and a restarted service
        s, _ = scrape(m)
        assert value(s, "las_runs_started_total") == 4
        assert value(s, "las_runs_ended_total", reason_class="stopped") == 1
        assert value(s, "las_runs_ended_total", reason_class="failed") == 1
        assert value(s, "las_runs_ended_total", reason_class="start-failed") == 1
        assert value(s, "las_restarts_total") == 1
        assert value(s, "las_instances", state="stopped", health="none") == 2
        assert value(s, "las_instances", state="failed", health="none") == 0
        assert value(s, "las_instances", state="running", health="healthy") == 0
        assert value(s, "las_reserved_bytes", resource="ram") == 0
        assert s.get("las_probe_latency_seconds", {}) == {}


def test_a_spent_restart_budget_counts_each_run_once(
    las: Las, module_factory: ModuleFactory
) -> None:
    """The supervisor writes a second "failed" event when the restart budget runs out
    (for a run already failed): counted once."""
    path = module_factory(
        "crashy",
        workload("--exit", "3"),
        restart={"policy": "on-failure", "max_restarts": 1, "backoff": "100ms"},
    )
    las("run", str(path))
    wait_until(
        lambda: (las.ps()["crashy"]["reason"] or "").startswith("restart budget exhausted"),
        timeout=30,
        message="the restart budget spent",
    )
    failed_events = db_rows(
        las.home, "SELECT COUNT(*) FROM events WHERE type='failed' AND instance='crashy'"
    )[0][0]
    assert failed_events == 3  # two runs' ends and the budget's
    s, _ = scrape(ServiceMetrics(las.home))
    assert value(s, "las_runs_started_total") == 2
    assert value(s, "las_restarts_total") == 1
    assert value(s, "las_runs_ended_total", reason_class="failed") == 2
    assert sum(s["las_runs_ended_total"].values()) == 2


def _instance_grid(ps: dict[str, dict[str, Any]]) -> dict[tuple[str, str], int]:
    grid: dict[tuple[str, str], int] = {}
    for info in ps.values():
        key = (info["state"], info["health"] or "none")
        grid[key] = grid.get(key, 0) + 1
    return grid


def test_http_requests_by_route_template(tmp_path: Path) -> None:
    m = ServiceMetrics(tmp_path)
    m.record_request("GET", "/v1/instances/{name}", 200, 0.003)
    m.record_request("get", "/v1/instances/{name}", 200, 0.2)
    m.record_request("GET", "/v1/instances/{name}", 404, 0.001)
    m.record_request("POST", "/v1/instances", 201, 2.0)
    m.record_request("BREW", None, 405, 0.0)  # no route matched, an unknown method
    m.record_request("BREW", "(unmatched)", 405, 0.0)
    s, types = scrape(m)
    assert types["las_http_requests"] == "counter"
    assert types["las_http_request_duration_seconds"] == "histogram"
    req = "las_http_requests_total"
    assert value(s, req, method="GET", route="/v1/instances/{name}", status="200") == 2
    assert value(s, req, method="GET", route="/v1/instances/{name}", status="404") == 1
    assert value(s, req, method="POST", route="/v1/instances", status="201") == 1
    assert value(s, req, method="other", route="unmatched", status="405") == 2
    assert len(s[req]) == 4
    dur = "las_http_request_duration_seconds"
    get = {"method": "GET", "route": "/v1/instances/{name}"}
    assert value(s, dur + "_count", **get) == 3
    assert value(s, dur + "_sum", **get) == pytest.approx(0.204)
    assert value(s, dur + "_bucket", le="0.005", **get) == 2
    assert value(s, dur + "_bucket", le="0.25", **get) == 3
    assert value(s, dur + "_bucket", le="1.0", method="POST", route="/v1/instances") == 0
    # Its own registry: another ServiceMetrics counts nothing of these.
    other, _ = scrape(ServiceMetrics(tmp_path))
    assert req not in other or other[req] == {}


class FakeNvml:
    """Stands in for pynvml: two GPUs (the interface admission.py uses too)."""

    class Mem:
        def __init__(self, used: int, total: int) -> None:
            self.used, self.total, self.free = used, total, total - used

    def __init__(self, fail_init: bool = False) -> None:
        self.fail_init = fail_init
        self.inits = 0

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.inits += 1

    def nvmlShutdown(self) -> None:  # noqa: N802
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return 2

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:  # noqa: N802
        return i

    def nvmlDeviceGetUUID(self, h: int) -> bytes:  # noqa: N802
        return f"GPU-{h}".encode()

    def nvmlDeviceGetMemoryInfo(self, h: int) -> FakeNvml.Mem:  # noqa: N802
        return FakeNvml.Mem(used=(h + 1) * MiB, total=80 * 1024 * MiB)


def test_gpu_memory_where_nvml_answers(tmp_path: Path) -> None:
    nvml = FakeNvml()
    m = ServiceMetrics(tmp_path, nvml=nvml)
    for _ in range(2):
        s, types = scrape(m)
    assert nvml.inits == 1  # initialised once, not per scrape
    assert types["las_gpu_memory_bytes"] == "gauge"
    assert value(s, "las_gpu_memory_bytes", gpu="GPU-0", kind="used") == MiB
    assert value(s, "las_gpu_memory_bytes", gpu="GPU-1", kind="used") == 2 * MiB
    assert value(s, "las_gpu_memory_bytes", gpu="GPU-1", kind="total") == 80 * 1024 * MiB
    m.close()


def test_no_gpu_metric_and_no_error_without_nvml(tmp_path: Path) -> None:
    s, _ = scrape(ServiceMetrics(tmp_path, nvml=FakeNvml(fail_init=True)))
    assert "las_gpu_memory_bytes" not in s
    assert value(s, "las_store_up") == 1
    try:
        import pynvml  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:  # as on a machine without nvidia-ml-py: absent, no error
        s, _ = scrape(ServiceMetrics(tmp_path))
        assert "las_gpu_memory_bytes" not in s


def test_an_unreadable_store_is_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "state.db").write_bytes(b"")  # damaged: StoreError "empty"
    m = ServiceMetrics(tmp_path)
    m.record_request("GET", "/metrics", 200, 0.01)
    s, _ = scrape(m)
    assert value(s, "las_store_up") == 0
    assert "las_runs_started_total" not in s
    assert value(s, "las_http_requests_total", method="GET", route="/metrics", status="200") == 1


def _exit(**kw: Any) -> ExitStatus:
    return ExitStatus(**kw)


@pytest.mark.parametrize(
    ("state_reason", "reached_running", "cls"),
    [
        (describe_exit(_exit(code=0), False, False, "SIGTERM", ""), True, "exited"),
        (describe_exit(_exit(code=3), False, False, "SIGTERM", "bye"), True, "failed"),
        (describe_exit(_exit(signal="SIGSEGV"), False, False, "SIGTERM", ""), True, "failed"),
        (describe_exit(_exit(signal="SIGTERM"), True, False, "SIGTERM", ""), True, "stopped"),
        (describe_exit(_exit(signal="SIGKILL"), True, True, "SIGTERM", ""), True, "stopped"),
        (
            describe_exit(_exit(code=137, oom="out of memory (x)"), False, False, "SIGTERM", ""),
            True,
            "oom",
        ),
        (
            describe_exit(
                _exit(lost="lost: the container 0123 is gone"), False, False, "SIGTERM", ""
            ),
            True,
            "lost",
        ),
        (
            ("failed", "lost: the machine rebooted (boot id changed) while the run was active"),
            True,
            "lost",
        ),
        (("failed", "unhealthy: GET /health: HTTP 500"), True, "unhealthy"),
        (("failed", "did not become healthy within 20s (last probe: refused)"), True, "unhealthy"),
        (
            ("failed", "listening on 0.0.0.0:9 (TCP, pid 7); policy allows 127.0.0.1:8080 only"),
            True,
            "policy",
        ),
        (("failed", "executable /x does not exist"), False, "start-failed"),
        (("stopped", "stopped while waiting to restart"), False, "stopped"),
        (("failed", "exited with code 1; recorded late: disk full"), True, "failed"),
    ],
)
def test_reason_classes(state_reason: tuple[str, str], reached_running: bool, cls: str) -> None:
    state, reason = state_reason
    assert classify_end(state, reason, reached_running) == cls
    assert cls in REASON_CLASSES

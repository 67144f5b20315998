"""``GET /metrics``: the service's Prometheus metrics, in its own registry (never the
process-global one). docs/metrics.md describes each metric.

Two kinds:

* the service's own HTTP traffic, counted as requests are answered (``record_request``);
* the home's state, read from the store *at scrape time* (``StoreCollector``): the
  instances now, and counters of runs started, ended (by class of reason) and restarted.
  The counters come from the event log, which is append-only (`las rm` forgets an
  instance's runs, never its events): they count over the home's whole life, survive a
  restart of the service, and never go down (a state database moved aside and started
  afresh reads as a counter reset). The collector remembers how far it has read; each
  scrape reads only the events since (one short read, plus the instances and the
  reservation ledger).

GPU memory (``las_gpu_memory_bytes``) is reported where NVML (``pynvml``, from
nvidia-ml-py) is installed and answers; elsewhere the metric is absent, without error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from localaistack.store.db import ACTIVE_STATES, Store
from localaistack.store.records import Event

log = logging.getLogger(__name__)

# The states `las ps` shows ("created": an instance with no run yet) and the health of an
# active run; an instance whose run is not active has health "none".
STATES = ("created", "starting", "running", "stopping", "stopped", "failed")
HEALTHS = ("unknown", "starting", "healthy", "unhealthy")
# How a run ended (las_runs_ended_total's reason_class): see classify_end.
REASON_CLASSES = (
    "exited",
    "stopped",
    "failed",
    "oom",
    "unhealthy",
    "policy",
    "lost",
    "start-failed",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
HEALTHY_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

# create_run's message for a run the supervisor's restart policy created.
_RESTART = re.compile(r"^run \S+ \(attempt \d+\): restart \d+ of at most ")


def classify_end(state: str, reason: str, reached_running: bool) -> str:
    """The class of a run's end (one of ``REASON_CLASSES``), from its final state and
    reason as the supervisor (runtime/backend.describe_exit, runtime/supervisor.py) and
    reconciliation (runtime/supervision.py) write them."""
    if state == "stopped":
        # "stopped: exited on SIGTERM", "stopped while waiting to restart": a stop asked
        # for; "exited on its own with code 0": it ended by itself, cleanly.
        return "stopped" if reason.startswith("stopped") else "exited"
    if reason.startswith("lost"):
        return "lost"
    if reason.startswith("out of memory"):
        return "oom"
    if reason.startswith(("unhealthy", "did not become healthy")):
        return "unhealthy"
    if reason.startswith("listening on ") and "policy allows" in reason:
        return "policy"
    if not reached_running:
        return "start-failed"
    return "failed"


class _RunCounts:
    """What the event log has told so far: counters, and the runs not ended yet."""

    def __init__(self) -> None:
        self.last = 0  # the newest event id read
        self.started = 0
        self.restarts = 0
        self.ended = dict.fromkeys(REASON_CLASSES, 0)
        self.healthy_buckets = [0] * (len(HEALTHY_BUCKETS) + 1)
        self.healthy_sum = 0.0
        # run id -> (time of its start event, reached running, became healthy): open runs
        self.open: dict[str, tuple[float, bool, bool]] = {}

    def feed(self, ev: Event) -> None:
        self.last = ev.id
        run = ev.run_id
        if run is None:
            return
        if ev.type == "starting":
            if run not in self.open:  # a run is created once: its first event
                self.open[run] = (ev.at, False, False)
                self.started += 1
                if _RESTART.match(ev.message):
                    self.restarts += 1
            return
        seen = self.open.get(run)
        if seen is None:  # ended already (a restart budget's second "failed"), or unknown
            return
        since, running, healthy = seen
        if ev.type == "running":
            self.open[run] = (since, True, healthy)
        elif ev.type == "health" and ev.message.startswith("healthy") and not healthy:
            self.open[run] = (since, running, True)
            self._observe_healthy(max(0.0, ev.at - since))
        elif ev.type in ("stopped", "failed"):
            del self.open[run]
            self.ended[classify_end(ev.type, ev.message, running)] += 1

    def _observe_healthy(self, seconds: float) -> None:
        self.healthy_sum += seconds
        for i, bound in enumerate(HEALTHY_BUCKETS):
            if seconds <= bound:
                self.healthy_buckets[i] += 1
                return
        self.healthy_buckets[-1] += 1


class StoreCollector:
    """The home's state at scrape time (see the module's docstring). Thread-safe: each
    scrape opens its own store connection; scrapes take turns."""

    def __init__(self, db: Path) -> None:
        self.db = Path(db)
        self._lock = threading.Lock()
        self._counts = _RunCounts()

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "las_store_up", "Whether this scrape could read the state store (1) or not (0)."
        )
        with self._lock:
            try:
                metrics = self._read()
            except Exception as exc:  # a scrape never fails for the store: it says so
                log.warning("metrics: cannot read the state store %s: %s", self.db, exc)
                up.add_metric([], 0)
                yield up
                return
        up.add_metric([], 1)
        yield up
        yield from metrics

    def _read(self) -> list[Metric]:
        store = Store(self.db)
        try:
            counts = self._counts
            newest = store.events(0, 1)
            if not newest or newest[-1].id < counts.last:  # a fresh database: start over
                counts = self._counts = _RunCounts()
            for ev in store.events(counts.last):
                counts.feed(ev)
            rows = store.instances_with_runs()
            ledger = store.reservations()
        finally:
            store.close()
        return [
            *self._instances(rows),
            *self._run_counters(counts),
            *self._probes(rows),
            *self._reserved(ledger),
        ]

    @staticmethod
    def _instances(rows: Iterable[Any]) -> Iterator[Metric]:
        grid = {(s, h): 0 for s in ACTIVE_STATES for h in HEALTHS}
        grid.update({(s, "none"): 0 for s in STATES if s not in ACTIVE_STATES})
        for inst_run in rows:
            run = inst_run.run
            state = run.state if run is not None else "created"
            health = (run.health or "unknown") if state in ACTIVE_STATES else "none"
            grid[(state, health)] = grid.get((state, health), 0) + 1
        g = GaugeMetricFamily(
            "las_instances",
            "Instances by the state of their current run and its health.",
            labels=["state", "health"],
        )
        for (state, health), n in sorted(grid.items()):
            g.add_metric([state, health], n)
        yield g

    @staticmethod
    def _run_counters(c: _RunCounts) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "las_runs_started", "Runs created (every start, restarts included).", c.started
        )
        ended = CounterMetricFamily(
            "las_runs_ended",
            "Runs that reached a final state, by class of reason.",
            labels=["reason_class"],
        )
        for cls in REASON_CLASSES:
            ended.add_metric([cls], c.ended[cls])
        yield ended
        yield CounterMetricFamily(
            "las_restarts", "Runs created by a restart policy after a run ended.", c.restarts
        )
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, n in zip((*HEALTHY_BUCKETS, float("inf")), c.healthy_buckets, strict=True):
            total += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), total))
        yield HistogramMetricFamily(
            "las_time_to_healthy_seconds",
            "Seconds from a run's start (its creation) to its first healthy probe.",
            buckets=buckets,
            sum_value=c.healthy_sum,
        )

    @staticmethod
    def _probes(rows: Iterable[Any]) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            "las_probe_latency_seconds",
            "Latency of the latest health probe of each instance's active run.",
            labels=["instance"],
        )
        for inst_run in rows:
            run = inst_run.run
            if run is None or run.state not in ACTIVE_STATES or not run.probes:
                continue
            latest = _latest_probe(run.probes)
            if latest is not None:
                g.add_metric([inst_run.instance.name], latest)
        yield g

    @staticmethod
    def _reserved(ledger: Iterable[Any]) -> Iterator[Metric]:
        ram = vram = 0
        for r in ledger:
            ram += r.memory or 0
            vram += sum(r.gpus.values())
        g = GaugeMetricFamily(
            "las_reserved_bytes",
            "Memory reserved by admitted instances (the reservation ledger).",
            labels=["resource"],
        )
        g.add_metric(["ram"], ram)
        g.add_metric(["vram"], vram)
        yield g


def _latest_probe(text: str) -> float | None:
    """Seconds of the newest probe in a run's stored probes (JSON); None: none readable."""
    try:
        probes = json.loads(text)
        latest = max(
            (p for p in probes if isinstance(p, dict) and "latency_ms" in p),
            key=lambda p: float(p.get("at") or 0),
            default=None,
        )
        return None if latest is None else float(latest["latency_ms"]) / 1000.0
    except (ValueError, TypeError):
        return None


class GpuCollector:
    """``las_gpu_memory_bytes`` from NVML: nothing where NVML is not installed or does
    not answer (no GPU, no driver). ``nvml``: the module (default ``pynvml``)."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._lock = threading.Lock()
        self._ready: bool | None = None  # None: not tried yet; False: not here

    def _open(self) -> Any:
        if self._ready is None:
            try:
                if self._nvml is None:
                    import importlib

                    self._nvml = importlib.import_module("pynvml")  # untyped, optional
                self._nvml.nvmlInit()
                self._ready = True
            except Exception as exc:  # not installed, no driver, no GPU
                log.info("metrics: no GPU memory metrics (NVML: %s: %s)", type(exc).__name__, exc)
                self._ready = False
        return self._nvml if self._ready else None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            nv = self._open()
            if nv is None:
                return
            g = GaugeMetricFamily(
                "las_gpu_memory_bytes",
                "GPU memory, used and total, as NVML reports it.",
                labels=["gpu", "kind"],
            )
            try:
                count = int(nv.nvmlDeviceGetCount())
            except Exception as exc:
                log.warning("metrics: NVML: %s: %s", type(exc).__name__, exc)
                return
            for i in range(count):
                try:
                    handle = nv.nvmlDeviceGetHandleByIndex(i)
                    uuid = nv.nvmlDeviceGetUUID(handle)
                    uuid = uuid.decode() if isinstance(uuid, bytes) else str(uuid)
                    mem = nv.nvmlDeviceGetMemoryInfo(handle)
                except Exception as exc:
                    log.warning("metrics: NVML: GPU %d: %s: %s", i, type(exc).__name__, exc)
                    continue
                g.add_metric([uuid, "used"], int(mem.used))
                g.add_metric([uuid, "total"], int(mem.total))
            yield g

    def close(self) -> None:
        with self._lock:
            if self._ready:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._ready = None


class ServiceMetrics:
    """The registry behind ``GET /metrics`` for the home ``home``."""

    def __init__(self, home: Path, *, nvml: Any = None) -> None:
        self.registry = CollectorRegistry()
        self._requests = Counter(
            "las_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self._duration = Histogram(
            "las_http_request_duration_seconds",
            "Seconds from a request's arrival to the end of its answer, by route template.",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.store = StoreCollector(Path(home) / "state.db")
        self.gpus = GpuCollector(nvml)
        self.registry.register(self.store)
        self.registry.register(self.gpus)

    def record_request(self, method: str, route: str | None, status: int, seconds: float) -> None:
        """Count one answered request. ``route``: the route's template (``/v1/instances/
        {name}``), never the raw path; anything else (None, "", "(unmatched)"): a path no
        route matched, counted as ``unmatched``."""
        method = method.upper() if method.upper() in METHODS else "other"
        route = route if route and route.startswith("/") else "unmatched"
        self._requests.labels(method, route, str(int(status))).inc()
        self._duration.labels(method, route).observe(max(0.0, seconds))

    def render(self) -> tuple[bytes, str]:
        """The exposition (text format 0.0.4) and its content type."""
        began = time.monotonic()
        body = generate_latest(self.registry)
        log.debug("metrics rendered in %.3fs", time.monotonic() - began)
        return body, CONTENT_TYPE_PLAIN_0_0_4

    def close(self) -> None:
        self.gpus.close()

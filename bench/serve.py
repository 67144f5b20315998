"""The runtime service (`las serve`): starts through the API against their peers, event
latency, the instance list, and what the service costs at rest.

    python -m bench.serve [--quick]

1. native start until running through `POST /v1/instances` (detach) vs `supervisorctl
   start` of the same program (goal <= 0.5x);
2. container start until running through the API vs the engine's own `run -d` with the
   same image and flags (goal <= 1.1x), for each usable engine;
3. a state change committed by a supervisor (a run that exits) until an SSE client of
   `/v1/events/stream` has it: the event's own commit time against the client's clock
   (same machine; goal <= 20 ms median);
4. `GET /v1/instances` with 100 instances (goal <= 20 ms);
5. the idle service: CPU over a quiet period and RSS (goal ~0 CPU, <= 60 MB).

Removal is not timed. The client is one httpx client on the service's socket, as a
program driving las would hold.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.harness import Row, alternate_all, run_main
from bench.native import LasBench, SupervisordBench, workspace


class Service:
    """A `las serve` on a home's socket, and a client of it."""

    def __init__(self, las: LasBench) -> None:
        import httpx

        self.socket = las.home / "las.sock"
        self.log = open(las.home.parent / "serve.log", "wb")  # noqa: SIM115 (closed in close)
        self.proc = subprocess.Popen(
            [*las.cmd, "serve", "--socket", str(self.socket)],
            env=las.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket)),
            base_url="http://las",
            timeout=120,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.client.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("las serve did not become ready")
            time.sleep(0.05)

    def run(self, module: str, name: str) -> dict[str, Any]:
        r = self.client.post("/v1/instances", json={"module": module, "name": name, "detach": True})
        if r.status_code != 201 or r.json()["state"] not in ("running", "healthy"):
            raise RuntimeError(f"start through the API failed: {r.status_code} {r.text}")
        return r.json()  # type: ignore[no-any-return]

    def rm(self, name: str) -> None:
        r = self.client.delete(f"/v1/instances/{name}", params={"force": "true"})
        if r.status_code != 200:
            raise RuntimeError(f"rm failed: {r.status_code} {r.text}")

    def close(self) -> None:
        self.client.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        self.log.close()


def bench_native_start(svc: Service, las: LasBench, sup: SupervisordBench, reps: int) -> Row:
    path = str(las.module("sleeper", ["sleep", "1000"]))

    def through_api(i: int) -> float:
        t0 = time.perf_counter()
        svc.run(path, f"api{i}")
        took = time.perf_counter() - t0
        svc.rm(f"api{i}")
        return took

    def supervisorctl(_i: int) -> float:
        t0 = time.perf_counter()
        subprocess.run([*sup.ctl, "start", "sleeper"], check=True, capture_output=True)
        took = time.perf_counter() - t0
        subprocess.run([*sup.ctl, "stop", "sleeper"], check=True, capture_output=True)
        return took

    xs, ys = alternate_all([through_api, supervisorctl], reps)
    ratio = statistics.median(xs) / statistics.median(ys)  # as the table's ratio
    return Row(
        "native start until running (through the API)",
        "s",
        xs,
        "supervisorctl start",
        ys,
        "<= 0.5x supervisorctl",
        ratio <= 0.5,
        note="POST /v1/instances (detach) on the socket: planned, admitted, a new supervisor; "
        "supervisorctl is a new process talking to a running supervisord",
    )


def bench_container_start(svc: Service, las: LasBench, root: Path, reps: int) -> list[Row]:
    from bench.containers import engine_peer, sleeper_manifest

    rows = []
    for name in ("podman", "docker"):
        engine_run = engine_peer(name)
        if engine_run is None:
            continue
        module = root / f"csleep-{name}.yaml"
        module.write_text(sleeper_manifest(f"csleep-{name}"))
        (las.home / "policy.yaml").write_text(
            f"container_engine: {name}\n" + "".join(f"{line}\n" for line in _policy_lines(las))
        )

        def through_api(i: int, module: Path = module, name: str = name) -> float:
            t0 = time.perf_counter()
            svc.run(str(module), f"c{name}{i}")
            took = time.perf_counter() - t0
            svc.rm(f"c{name}{i}")
            return took

        through_api(-1)  # the engine's probe is made and kept
        xs, ys = alternate_all([through_api, engine_run], reps)
        ratio = statistics.median(xs) / statistics.median(ys)  # as the table's ratio
        rows.append(
            Row(
                f"container start until running, through the API ({name})",
                "s",
                xs,
                f"{name} run -d",
                ys,
                "<= 1.1x run -d",
                ratio <= 1.1,
                note="same image and flags; las includes planning, admission and its supervisor",
            )
        )
    (las.home / "policy.yaml").write_text("".join(f"{line}\n" for line in _policy_lines(las)))
    return rows


def _policy_lines(las: LasBench) -> list[str]:
    return [f"trusted_native: {las.trusted}", f"native_allow_root: {las.trusted}"]


def bench_event_latency(svc: Service, las: LasBench, reps: int) -> Row:
    """A run that exits: its supervisor commits the end (with the time it commits); the SSE
    client notes when the event arrives."""
    import httpx

    path = str(las.module("quick-exit", ["true"]))
    latencies: list[float] = []
    arrived: dict[str, float] = {}
    wanted: set[str] = set()
    ready = threading.Event()
    done = threading.Event()

    def follow() -> None:
        with (
            httpx.Client(transport=httpx.HTTPTransport(uds=str(svc.socket)), timeout=None) as c,
            c.stream("GET", "http://las/v1/events/stream") as r,
        ):
            ready.set()
            data = None
            for line in r.iter_lines():
                if line.startswith("data: "):
                    data = json.loads(line[6:])
                elif line == "" and data is not None:
                    if data["instance"] in wanted and data["type"] in (
                        "exited",
                        "stopped",
                        "failed",
                    ):
                        at = datetime.fromisoformat(data["at"]).timestamp()
                        arrived[data["instance"]] = time.time() - at
                    data = None
                if done.is_set():
                    return

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    ready.wait(10)
    for i in range(reps + 1):
        name = f"ev{i}"
        wanted.add(name)
        svc.client.post("/v1/instances", json={"module": path, "name": name, "detach": True})
        deadline = time.monotonic() + 10
        while name not in arrived and time.monotonic() < deadline:
            time.sleep(0.005)
        if i > 0 and name in arrived:  # the first is a warm-up
            latencies.append(arrived[name])
        svc.rm(name)
    done.set()
    return Row(
        "state change committed -> SSE client",
        "s",
        latencies,
        goal="<= 20 ms median",
        meets=bool(latencies) and statistics.median(latencies) <= 0.020,
        note="the end of a run that exits, from the time its supervisor commits it (stored in "
        "the event, millisecond resolution) to its arrival at a /v1/events/stream client",
        noise=10.0,
    )


def bench_list(svc: Service, las: LasBench, n: int, reps: int) -> Row:
    path = str(las.module("idle", ["sleep", "100000"]))
    for i in range(n):
        svc.run(path, f"idle{i}")

    def list_them(_i: int) -> float:
        t0 = time.perf_counter()
        r = svc.client.get("/v1/instances")
        took = time.perf_counter() - t0
        assert r.status_code == 200 and len(r.json()) >= n, r.text
        return took

    (xs,) = alternate_all([list_them], reps)
    return Row(
        f"GET /v1/instances with {n} instances",
        "s",
        xs,
        goal="<= 20 ms",
        meets=statistics.median(xs) <= 0.020,
        note="each answer reconciles (every run's pid checked) and reads the store",
    )


def bench_idle(svc: Service, seconds: float) -> list[Row]:
    pid = svc.proc.pid
    cpu0 = _cpu_s(pid)
    time.sleep(seconds)
    cpu = (_cpu_s(pid) - cpu0) / seconds
    rss = _rss_mb(pid)
    return [
        Row(
            "idle service CPU",
            "%",
            [cpu * 100],
            goal="~0",
            meets=cpu < 0.005,
            note=f"CPU of `las serve` over {seconds:.0f} s with instances running and no request",
        ),
        Row("idle service RSS", "MB", [rss], goal="<= 60 MB", meets=rss <= 60),
    ]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def collect(quick: bool) -> list[Row]:
    reps = 2 if quick else 11
    with workspace() as root:
        las = LasBench(root)
        sup = SupervisordBench(root, {"sleeper": "sleep 1000"})
        las.prime()
        svc = Service(las)
        try:
            rows = [bench_native_start(svc, las, sup, reps)]
            rows += bench_container_start(svc, las, root, 2 if quick else 11)
            rows.append(bench_event_latency(svc, las, 3 if quick else 21))
            rows.append(bench_list(svc, las, 10 if quick else 100, 3 if quick else 21))
            rows += bench_idle(svc, 3 if quick else 30)
        finally:
            for it in svc.client.get("/v1/instances", params={"all": "true"}).json():
                if not it["name"].startswith("?"):
                    svc.client.delete(f"/v1/instances/{it['name']}", params={"force": "true"})
            svc.close()
            sup.close()
    return rows


def main() -> None:
    run_main("serve", __doc__, collect)


if __name__ == "__main__":
    main()

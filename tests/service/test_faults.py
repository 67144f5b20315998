"""Faults of a real `las serve`: SIGKILL in the middle of a run request and of open
streams, and many clients at once.

What must hold (#19): a service killed with SIGKILL never takes a workload with it; the
service started again on the same home reconciles; a run request in flight either
happened completely (its workload runs and becomes healthy) or not at all (no instance, no
supervisor, no reservation, no run directory) — or, when the service died after the run
was recorded but before it was started, that run is recorded as lost (nothing runs,
nothing is held). Many event followers and concurrent runs are all served, each follower
sees every event once and in order, and the service's memory stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import (
    Las,
    _supervisors_of,
    pid_alive,
    run_supervisors_of,
    wait_until,
    workload,
)
from tests.service.conftest import Service, start_service
from tests.service.test_api import healthsrv

from localaistack.store.db import Store

ModuleFactory = Callable[..., Path]


# --- reading the home directly (the service may be dead) ----------------------------------


def _rows(home: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of the home's store, read-only (a reader never blocks the service's writes)."""
    db = sqlite3.connect(f"file:{home / 'state.db'}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute(sql, args).fetchall()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # not made yet
            return []
        raise
    finally:
        db.close()


def _run_row(home: Path, name: str) -> dict[str, Any] | None:
    rows = _rows(
        home,
        "SELECT run_id, state, reason, pid, sup_pid FROM runs WHERE instance=?"
        " ORDER BY attempt DESC LIMIT 1",
        (name,),
    )
    if not rows:
        return None
    return dict(zip(("run_id", "state", "reason", "pid", "sup_pid"), rows[0], strict=True))


def _reservations(home: Path) -> list[str]:
    store = Store(home / "state.db")
    try:
        return [r.instance for r in store.reservations()]
    finally:
        store.close()


def _run_dirs(home: Path) -> list[str]:
    """The run directories, but that of the spare supervisor of the running service."""
    runs = home / "runs"
    spares = set()
    for pid in set(_supervisors_of(home)) - set(run_supervisors_of(home)):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            spares.add(argv[argv.index(b"--run") + 1].decode())
    return sorted(p.name for p in runs.iterdir() if p.name not in spares) if runs.exists() else []


# --- a: SIGKILL while a run request is in flight --------------------------------------------


@dataclass
class InFlight:
    """A POST /v1/instances in a thread of its own; its body can be held half sent."""

    svc: Service
    body: dict[str, Any]
    hold_body: bool = False
    response: httpx.Response | None = None
    error: BaseException | None = None
    half_sent: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._post, daemon=True)
        self.thread.start()

    def _content(self) -> Iterator[bytes]:
        raw = json.dumps(self.body).encode()
        yield raw[: len(raw) // 2]
        self.half_sent.set()  # httpx asks for more: the first half is on the wire
        self.release.wait(30)
        yield raw[len(raw) // 2 :]

    def _post(self) -> None:
        try:
            with self.svc.client(timeout=60) as c:
                if self.hold_body:
                    self.response = c.post(
                        "/v1/instances",
                        content=self._content(),
                        headers={"content-type": "application/json"},
                    )
                else:
                    self.response = c.post("/v1/instances", json=self.body)
        except BaseException as exc:
            self.error = exc

    def join(self, timeout: float = 30) -> None:
        assert self.thread is not None
        self.release.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the client did not return"


KILL_POINTS = {
    # where the request is when the service is killed: the outcomes allowed
    "in-the-body": {"nothing"},  # the body half sent: nothing can have been done
    # (Between the body and admission the service plans, with the supervisor it spawned
    # ahead: nothing there shows from outside, so it is no kill point of its own.)
    # the instance recorded, its run not yet: undone by the next reconcile (the process
    # that admitted it is dead), as if the request never came
    "admitted": {"nothing", "lost", "complete"},
    "recorded": {"lost", "complete"},  # its run recorded
    "starting": {"complete"},  # its workload runs, not healthy yet
}


def _outcome(home: Path, c: httpx.Client, name: str) -> str:
    """What the restarted service says of the request, checked against the home."""
    rows = {r["name"]: r for r in c.get("/v1/instances", params={"all": "true"}).json()}
    if not rows:
        # not at all: no supervisor (the one spawned for it saw the service die), nothing
        # reserved, no run directory left
        wait_until(lambda: not run_supervisors_of(home), timeout=15, message="no supervisor")
        assert _reservations(home) == []
        wait_until(lambda: _run_dirs(home) == [], timeout=10, message="no run directory")
        return "nothing"
    assert set(rows) == {name}, rows
    row = rows[name]
    if row["state"] == "failed":
        assert (row["reason"] or "").startswith("lost: las exited before the run"), row
        wait_until(lambda: not run_supervisors_of(home), timeout=15, message="no supervisor")
        assert _reservations(home) == []
        return "lost"
    assert row["state"] == "running", row
    return "complete"


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_during_a_run_request(
    las: Las,
    service: Service,
    las_env: dict[str, str],
    module_factory: ModuleFactory,
    tmp_path: Path,
    point: str,
) -> None:
    home = las.home
    path = healthsrv(module_factory, tmp_path, "slow")
    (tmp_path / "slow.control").write_text("ready-after 2")
    request = InFlight(service, {"module": str(path)}, hold_body=point == "in-the-body")
    request.start()
    poll = 0.001  # the windows between two steps are a few milliseconds
    if point == "in-the-body":
        assert request.half_sent.wait(30), "the body was not sent"
    elif point == "admitted":
        wait_until(
            lambda: _rows(home, "SELECT 1 FROM instances"), 30, poll, "the instance recorded"
        )
    elif point == "recorded":
        wait_until(lambda: _run_row(home, "slow"), 30, poll, "the run recorded")
    else:
        wait_until(
            lambda: b"healthsrv on" in b"".join(p.read_bytes() for p in home.rglob("*.log")),
            timeout=30,
            interval=0.01,
            message="the workload's first line",
        )
    service.stop(signal.SIGKILL)
    assert service.proc.returncode == -signal.SIGKILL
    request.join()
    assert request.response is None, request.response.text if request.response else ""
    assert isinstance(request.error, httpx.TransportError), repr(request.error)

    # what the dead service left: a run that was started runs on, with its supervisor
    before = _run_row(home, "slow")
    if before is not None and before["state"] in ("starting", "running"):
        wait_until(
            lambda: (r := _run_row(home, "slow")) and r["state"] != "starting",
            timeout=30,
            message="the run past starting",
        )
        before = _run_row(home, "slow")
    if before is not None and before["state"] == "running":
        assert pid_alive(before["pid"]) and pid_alive(before["sup_pid"]), before

    again = start_service(las_env, home)
    try:
        with again.client() as c:
            outcome = _outcome(home, c, "slow")
            print(f"killed at {point}: {outcome}")
            assert outcome in KILL_POINTS[point], (point, outcome)
            if outcome == "complete":
                assert before is not None
                wait_until(
                    lambda: c.get("/v1/instances/slow").json()["health"] == "healthy",
                    timeout=30,
                    message="healthy through the new service",
                )
                run = c.get("/v1/instances/slow").json()["runs"][0]
                assert run["run_id"] == before["run_id"] and run["state"] == "running"
                assert run["pid"] == before["pid"] and pid_alive(before["pid"])
                assert _reservations(home) == ["slow"]
                assert run_supervisors_of(home) == [before["sup_pid"]]
            # the home is usable: the same request now goes through
            if outcome != "complete":
                res = c.post("/v1/instances", json={"module": str(path), "name": "again"})
                assert res.status_code == 201 and res.json()["state"] == "healthy", res.text
        assert "Traceback" not in again.log_text()
    finally:
        again.stop()


# --- b: SIGKILL while streams are open --------------------------------------------------------


class Reader:
    """The output of a `las` subprocess, read by a thread as it comes."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.out: list[str] = []
        self.err = ""
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.out.append(line)

    def text(self) -> str:
        return "".join(self.out)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._t.join(5)
        assert self.proc.stderr is not None
        self.err = self.proc.stderr.read()
        self.close()
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._t.join(5)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def test_sigkill_with_open_streams(
    las: Las,
    service: Service,
    remote_las: Las,
    las_env: dict[str, str],
    module_factory: ModuleFactory,
    tmp_path: Path,
) -> None:
    path = module_factory("talker", workload("--lines", "5"))
    remote_las.ok("run", str(path))
    pid = las.ps()["talker"]["pid"]
    assert pid and pid_alive(pid)
    logs = Reader(remote_las.popen("logs", "-f", "talker"))
    events = Reader(remote_las.popen("events", "-f", "--json"))
    again: Service | None = None
    try:
        wait_until(lambda: "line 000004" in logs.text(), timeout=30, message="the logs")
        wait_until(lambda: "talker" in events.text(), timeout=30, message="the events")
        assert logs.proc.poll() is None and events.proc.poll() is None
        service.stop(signal.SIGKILL)

        # `logs -f`: an error naming the service (exit 6) or a clean end, at once
        code = logs.wait(15)
        assert "Traceback" not in logs.err, logs.err
        assert code in (0, 6), (code, logs.err)
        if code == 6:
            assert logs.err.startswith("error: "), logs.err
        print(f"logs -f after the SIGKILL: exit {code} {logs.err.strip()!r}")

        # `events -f` reopens its stream: a service started again within the client's
        # timeout (30 s) is followed on, from the last event seen (no gap, no duplicate)
        assert events.proc.poll() is None
        again = start_service(las_env, las.home)
        other = module_factory("other", workload())
        with again.client() as c:
            res = c.post("/v1/instances", json={"module": str(other)})
            assert res.status_code == 201, res.text
            stored = c.get("/v1/events").json()
        wait_until(lambda: len(events.out) >= len(stored), timeout=30, message="the new events")
        assert [json.loads(line) for line in events.out] == stored
        # killed again and not back: `events -f` gives up after the client's timeout
        again.stop(signal.SIGKILL)
        code = events.wait(30 + 20)
        assert "Traceback" not in events.err, events.err
        assert code == 6, (code, events.err)
        assert events.err.startswith("error: the event stream from"), events.err
        print(f"events -f, the service gone: exit {code} {events.err.strip()!r}")
    finally:
        for reader in (logs, events):
            reader.close()
        if again is not None:
            again.stop(signal.SIGKILL)
    # the workloads are untouched
    assert pid_alive(pid)
    rows = las.ps()
    assert rows["talker"]["state"] == "running" and rows["talker"]["pid"] == pid
    assert rows["other"]["state"] == "running"


# --- c: many clients at once ----------------------------------------------------------------


FOLLOWERS = 50
RUNS = 20


def _status(pid: int, key: str) -> int:
    """A number of /proc/PID/status (``VmRSS``: KiB, ``Threads``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} for {pid}")


def _rss_kib(pid: int) -> int:
    return _status(pid, "VmRSS")


async def _follow(client: httpx.AsyncClient, seen: list[dict[str, Any]]) -> None:
    """Follow the event stream from the start, each event into ``seen``, until cancelled."""
    async with client.stream("GET", "/v1/events/stream", params={"after": 0}) as res:
        assert res.status_code == 200, await res.aread()
        frame: dict[str, str] = {}
        async for line in res.aiter_lines():
            if line == "":
                if "data" in frame:
                    data = json.loads(frame["data"])
                    assert int(frame["id"]) == data["id"] and frame["event"] == data["type"]
                    seen.append(data)
                frame = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                frame[key] = value.removeprefix(" ")
    raise AssertionError("the event stream ended")


def test_many_followers_and_concurrent_runs(
    las: Las, service: Service, module_factory: ModuleFactory
) -> None:
    path = module_factory("tiny", workload())
    pid = service.proc.pid
    with service.client() as c:  # a first event, so that each follower shows it follows
        res = c.post("/v1/instances", json={"module": str(path), "name": "first"})
        assert res.status_code == 201, res.text
        assert c.post("/v1/instances/first/stop", json={"timeout": 5}).status_code == 200
    rss_before = _rss_kib(pid)
    peak = [rss_before]
    threads = [_status(pid, "Threads")]
    names = [f"tiny-{i:02d}" for i in range(RUNS)]

    async def main() -> tuple[list[list[dict[str, Any]]], list[httpx.Response], float]:
        transport = httpx.AsyncHTTPTransport(uds=str(service.socket))
        limits = httpx.Limits(max_connections=FOLLOWERS + RUNS + 5)
        timeout = httpx.Timeout(120, connect=30)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://las", timeout=timeout, limits=limits
        ) as client:
            seen: list[list[dict[str, Any]]] = [[] for _ in range(FOLLOWERS)]
            followers = [asyncio.create_task(_follow(client, s)) for s in seen]
            runs: list[asyncio.Task[httpx.Response]] = []

            async def watch(condition: Callable[[], bool], what: str, timeout: float) -> None:
                end = time.monotonic() + timeout
                while not condition():
                    for f in followers:
                        if f.done():
                            f.result()  # a follower's failure, raised here
                    assert time.monotonic() < end, f"timed out after {timeout}s: {what}"
                    peak[0] = max(peak[0], _rss_kib(pid))
                    threads[0] = max(threads[0], _status(pid, "Threads"))
                    await asyncio.sleep(0.05)

            try:
                await watch(lambda: all(seen), "every follower's first event", 60)
                t0 = time.monotonic()
                runs += [
                    asyncio.create_task(
                        client.post("/v1/instances", json={"module": str(path), "name": n})
                    )
                    for n in names
                ]
                await watch(lambda: all(r.done() for r in runs), "the runs answered", 180)
                answered = [r.result() for r in runs]
                elapsed = time.monotonic() - t0

                def all_seen() -> bool:
                    return all(
                        {e["instance"] for e in s if e["type"] == "created"} >= set(names)
                        for s in seen
                    )

                await watch(all_seen, "every created event at every follower", 60)
            finally:
                for task in (*followers, *runs):
                    task.cancel()
                await asyncio.gather(*followers, *runs, return_exceptions=True)
        return seen, answered, elapsed

    seen, answered, elapsed = asyncio.run(main())
    for name, res in zip(names, answered, strict=True):
        assert res.status_code == 201, (name, res.text)
        assert res.json()["name"] == name and res.json()["state"] == "running", res.json()
    with service.client() as c:
        rows = c.get("/v1/instances").json()
        assert sorted(r["name"] for r in rows) == names
        assert all(r["state"] == "running" for r in rows), rows
        stored = c.get("/v1/events").json()
    # each follower: the stored events in order, no gap, no duplicate (up to where it is)
    for s in seen:
        assert s == stored[: len(s)]
        created = [e["instance"] for e in s if e["type"] == "created"]
        assert len(created) == len(set(created))
    rss_after = _rss_kib(pid)
    print(
        f"\n{RUNS} runs answered in {elapsed:.1f}s with {FOLLOWERS} followers; service RSS"
        f" {rss_before / 1024:.0f} MiB before, peak {peak[0] / 1024:.0f} MiB,"
        f" {rss_after / 1024:.0f} MiB after; at most {threads[0]} threads"
    )
    assert peak[0] - rss_before < 150 * 1024, (rss_before, peak[0])
    assert "Traceback" not in service.log_text()

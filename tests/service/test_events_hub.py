"""service/events.py: the EventHub against a real store written by other processes, and its
SSE framing through a real Starlette app served by uvicorn on a unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from tests.conftest import Las, wait_until

from localaistack.errors import StoreError
from localaistack.ops.api import EventInfo
from localaistack.ops.local import iso
from localaistack.service.events import EventHub, sse_response
from localaistack.store.db import Store, add_event

# Writes N events, each in its own transaction, through the store API; "pace" seconds apart.
WRITER = """
import sys, time
from localaistack.store.db import Store, add_event
db, n, tag, pace = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
store = Store(db)
for i in range(n):
    with store.transaction() as c:
        add_event(c, "test", f"{tag} {i}", instance="writer", run_id="r1")
    if pace:
        time.sleep(pace)
store.close()
"""


@pytest.fixture
def db(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(mode=0o700, exist_ok=True)
    path = home / "state.db"
    Store(path).close()
    return path


@pytest.fixture
def hub(db: Path) -> Iterator[EventHub]:
    h = EventHub(db)
    h.start()
    yield h
    h.close()


_WRITERS: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _end_writers() -> Iterator[None]:
    """Writer processes a failed test left running are ended and waited for."""
    yield
    while _WRITERS:
        proc = _WRITERS.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def write_events(
    env: dict[str, str], db: Path, n: int, tag: str = "ev", pace: float = 0.0
) -> subprocess.Popen[str]:
    """Another process writing ``n`` events (started, not waited for)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(n), tag, str(pace)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    _WRITERS.append(proc)
    return proc


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> None:
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err


def stored(db: Path) -> list[EventInfo]:
    store = Store(db)
    try:
        return [
            EventInfo(
                id=e.id,
                at=iso(e.at),
                instance=e.instance,
                run_id=e.run_id,
                type=e.type,
                message=e.message,
            )
            for e in store.events(0)
        ]
    finally:
        store.close()


def add_here(db: Path, message: str) -> None:
    store = Store(db)
    try:
        with store.transaction() as c:
            add_event(c, "test", message, instance="here")
    finally:
        store.close()


async def take(it: AsyncIterator[EventInfo], n: int, timeout: float = 30) -> list[EventInfo]:
    """The next ``n`` events of ``it`` (fails after ``timeout`` seconds)."""
    out: list[EventInfo] = []

    async def go() -> None:
        async for ev in it:
            out.append(ev)
            if len(out) == n:
                return

    try:
        await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        pytest.fail(f"got {len(out)} of {n} events in {timeout}s")
    return out


async def until(predicate: Any, timeout: float = 10, message: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.01)


def test_commits_of_another_process_reach_a_subscriber(
    hub: EventHub, db: Path, las_env: dict[str, str]
) -> None:
    add_here(db, "before")

    async def main() -> None:
        it = hub.subscribe(0)
        first = await take(it, 1)
        assert [e.message for e in first] == ["before"]
        # The backlog is read: what follows comes through the watcher thread.
        writer = write_events(las_env, db, 5, "live")
        live = await take(it, 5)
        await asyncio.to_thread(finish, writer)
        assert [e.message for e in live] == [f"live {i}" for i in range(5)]
        assert live == stored(db)[1:]  # the same fields as the store (and `las events`)
        assert all(e.instance == "writer" and e.run_id == "r1" for e in live)
        await it.aclose()  # type: ignore[attr-defined]
        assert hub.subscribers == 0

    asyncio.run(main())


@pytest.mark.parametrize("use_inotify", [True, False], ids=["inotify", "polling"])
def test_fifty_subscribers_get_every_event_in_order(
    db: Path, las_env: dict[str, str], use_inotify: bool
) -> None:
    """Three processes write at once; 50 subscribers each get every event, in id order."""
    hub = EventHub(db, use_inotify=use_inotify)
    hub.start()
    n = 70

    async def main() -> None:
        its = [hub.subscribe(0) for _ in range(50)]
        tasks = [asyncio.create_task(take(it, 3 * n, timeout=60)) for it in its]
        await until(lambda: hub.subscribers == 50, message="50 subscribers")
        writers = [write_events(las_env, db, n, f"w{i}", pace=0.001) for i in range(3)]
        got = await asyncio.gather(*tasks)
        for w in writers:
            await asyncio.to_thread(finish, w)
        want = stored(db)
        assert len(want) == 3 * n
        assert [e.id for e in want] == sorted(e.id for e in want)
        for events in got:
            assert events == want

    try:
        asyncio.run(main())
    finally:
        hub.close()


def test_resume_from_an_id_while_events_keep_coming(
    hub: EventHub, db: Path, las_env: dict[str, str]
) -> None:
    """A client that disconnects every 37 events and resumes after the last id it saw
    sees every event exactly once, in order, while another process writes."""
    n = 400

    async def main() -> None:
        writer = write_events(las_env, db, n, "resume", pace=0.002)
        seen: list[EventInfo] = []
        resumes = 0
        while len(seen) < n:
            after = seen[-1].id if seen else 0
            it = hub.subscribe(after)
            seen += await take(it, min(37, n - len(seen)))
            await it.aclose()  # type: ignore[attr-defined]
            resumes += 1
        await asyncio.to_thread(finish, writer)
        assert resumes > 5
        assert writer.returncode == 0
        assert seen == stored(db)
        assert hub.subscribers == 0

    asyncio.run(main())


def test_overflow_ends_the_slow_subscriber_only(db: Path, las_env: dict[str, str]) -> None:
    hub = EventHub(db, queue_size=64)
    hub.start()
    n = 400

    async def main() -> None:
        fast_it, slow_it = hub.subscribe(0), hub.subscribe(0)
        fast = asyncio.create_task(take(fast_it, n, timeout=60))
        add_here(db, "first")
        slow_first = await take(slow_it, 1)  # then it reads nothing for a while
        writer = write_events(las_env, db, n - 1, "flood", pace=0.001)
        got = await fast
        await asyncio.to_thread(finish, writer)
        assert got == stored(db)
        # The slow one was ended: what it still gets is a prefix, then the end.
        rest = [ev async for ev in slow_it]
        slow = slow_first + rest
        assert len(slow) < n
        assert slow == got[: len(slow)]
        await until(lambda: hub.subscribers == 1, message="the slow subscriber gone")
        # It resumes after its last event: the rest, nothing lost, nothing twice.
        resumed = await take(hub.subscribe(slow[-1].id), n - len(slow))
        assert slow + resumed == got

    try:
        asyncio.run(main())
    finally:
        hub.close()


def test_a_burst_bigger_than_the_queue_does_not_end_a_subscriber_that_keeps_up(
    db: Path,
) -> None:
    hub = EventHub(db, queue_size=8)
    hub.start()

    async def main() -> None:
        it = hub.subscribe(0)
        add_here(db, "first")
        await take(it, 1)
        store = Store(db)  # one transaction: the watcher reads 50 events at once
        with store.transaction() as c:
            for i in range(50):
                add_event(c, "test", f"burst {i}")
        store.close()
        got = await take(it, 50)
        assert [e.message for e in got] == [f"burst {i}" for i in range(50)]

    try:
        asyncio.run(main())
    finally:
        hub.close()


def test_close_ends_every_subscriber_and_the_thread_within_a_deadline(db: Path) -> None:
    hub = EventHub(db)
    hub.start()
    assert hub.alive

    async def main() -> None:
        its = [hub.subscribe(0) for _ in range(10)]
        tasks = [asyncio.create_task(take(it, 1_000_000)) for it in its]
        await until(lambda: hub.subscribers == 10, message="10 subscribers")
        began = time.monotonic()
        await asyncio.to_thread(hub.close)
        done, pending = await asyncio.wait(tasks, timeout=3)
        assert not pending, f"{len(pending)} subscribers still open after close()"
        assert time.monotonic() - began < 3
        assert all(t.result() == [] for t in done)
        assert hub.subscribers == 0
        assert not hub.alive
        # A subscription after close ends at once.
        assert await take(hub.subscribe(0), 0) == []
        assert [e async for e in hub.subscribe(0)] == []

    asyncio.run(main())


def test_a_damaged_store_is_a_clear_error_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "state.db").write_bytes(b"")
    hub = EventHub(home / "state.db")
    with pytest.raises(StoreError, match="empty"):
        hub.start()
    assert not hub.alive


# --- SSE through a real server ---------------------------------------------------------------


class Server:
    """The hub's stream served by uvicorn on a unix socket, in a thread of this process."""

    def __init__(self, hub: EventHub, sock: Path, grace: int = 5) -> None:
        async def stream(request: Request) -> Response:
            after = request.query_params.get("after")
            return sse_response(hub, request, int(after) if after else None, ping=0.3)

        app = Starlette(routes=[Route("/v1/events/stream", stream)])
        config = uvicorn.Config(
            app, uds=str(sock), log_level="warning", lifespan="off", timeout_graceful_shutdown=grace
        )
        self.sock = sock
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        wait_until(lambda: self.server.started, timeout=20, message="uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        assert not self.thread.is_alive(), "uvicorn did not stop"

    def client(self) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.sock)), base_url="http://las", timeout=20
        )


@pytest.fixture
def server(hub: EventHub, tmp_path: Path) -> Iterator[Server]:
    with Server(hub, tmp_path / "s.sock") as srv:
        yield srv


def read_sse(lines: Iterator[str], n: int) -> tuple[list[dict[str, str]], list[str]]:
    """The next ``n`` events (their fields) and the comment lines seen meanwhile."""
    events: list[dict[str, str]] = []
    comments: list[str] = []
    current: dict[str, str] = {}
    for line in lines:
        if line == "":
            if current:
                events.append(current)
                current = {}
                if len(events) == n:
                    break
            continue
        if line.startswith(":"):
            comments.append(line)
            continue
        key, _, value = line.partition(": ")
        assert key not in current, f"field {key} twice in one event"
        current[key] = value
    return events, comments


def test_sse_framing_and_last_event_id_resume(
    hub: EventHub, server: Server, db: Path, las_env: dict[str, str]
) -> None:
    import json

    finish(write_events(las_env, db, 3, "a"))
    with server.client() as c:
        with c.stream("GET", "/v1/events/stream", params={"after": "1"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            raw = r.iter_raw()
            first = next(raw)  # the exact bytes of one event
            want = stored(db)[1]
            data = json.dumps(want.model_dump(mode="json", by_alias=True))
            assert first.startswith(f"id: {want.id}\nevent: test\ndata: {data}\n\n".encode())
        # Resume: Last-Event-ID wins over after; live events follow the backlog.
        with c.stream(
            "GET", "/v1/events/stream", params={"after": "0"}, headers={"Last-Event-ID": "2"}
        ) as r:
            lines = r.iter_lines()
            events, _ = read_sse(lines, 1)
            assert [e["id"] for e in events] == ["3"]
            writer = write_events(las_env, db, 4, "b")
            events, _ = read_sse(lines, 4)
            finish(writer)
            assert [json.loads(e["data"])["message"] for e in events] == [
                f"b {i}" for i in range(4)
            ]
            assert [int(e["id"]) for e in events] == [4, 5, 6, 7]
            assert all(e["event"] == "test" for e in events)
            # A ping comment while nothing happens (every 0.3 s in this test).
            for line in lines:
                if line.startswith(":"):
                    assert line == ": ping"
                    break
                assert line == "", f"unexpected {line!r} while idle"
    # The client went away: its subscription ends (no task left behind).
    wait_until(lambda: hub.subscribers == 0, timeout=10, message="the subscription ended")


def test_sse_bad_last_event_id_is_a_400_problem(server: Server) -> None:
    with server.client() as c:
        for bad in ("abc", "-1", "1.5", "9" * 30):
            r = c.get("/v1/events/stream", headers={"Last-Event-ID": bad})
            assert r.status_code == 400, bad
            assert r.headers["content-type"] == "application/problem+json"
            body = r.json()
            assert body["type"] == "urn:localaistack:problem:bad-request"
            assert body["status"] == 400 and body["exit_code"] == 2
            assert "Last-Event-ID" in body["detail"] and "Traceback" not in r.text
        for after in ("-3", str(2**63)):
            r = c.get("/v1/events/stream", params={"after": after})
            assert r.status_code == 400 and f"after={after}" in r.json()["detail"]


def test_sse_an_empty_last_event_id_is_none(server: Server, db: Path) -> None:
    add_here(db, "one")
    add_here(db, "two")
    with server.client() as c:
        headers = {"Last-Event-ID": ""}
        with c.stream("GET", "/v1/events/stream", params={"after": "1"}, headers=headers) as r:
            assert r.status_code == 200
            events, _ = read_sse(r.iter_lines(), 1)
    assert [e["id"] for e in events] == ["2"]


def test_sse_a_store_that_cannot_be_read_ends_the_stream_cleanly(
    hub: EventHub, server: Server, db: Path
) -> None:
    add_here(db, "one")
    db.write_bytes(b"")  # damaged under the running hub: StoreError "empty" on open
    with server.client() as c, c.stream("GET", "/v1/events/stream") as r:
        assert r.status_code == 200
        lines = list(r.iter_lines())  # ends: no hang, no broken chunked body
    errors = [line for line in lines if line.startswith(": error:")]
    assert len(errors) == 1 and "empty" in errors[0], lines
    assert "Traceback" not in "\n".join(lines)
    wait_until(lambda: hub.subscribers == 0, timeout=10, message="the subscription ended")


def test_sse_streams_end_when_the_hub_closes(hub: EventHub, server: Server, db: Path) -> None:
    add_here(db, "one")
    with server.client() as c, c.stream("GET", "/v1/events/stream") as r:
        lines = r.iter_lines()
        events, _ = read_sse(lines, 1)
        assert len(events) == 1
        hub.close()
        with contextlib.suppress(httpx.RemoteProtocolError):
            rest = list(lines)  # the stream ends (no hang: the client's timeout is 20 s)
            assert all(line == "" or line.startswith(":") for line in rest)
    assert hub.subscribers == 0


def test_a_server_stopping_with_open_streams_stops_at_once_with_the_hub_closed(
    hub: EventHub, db: Path, tmp_path: Path
) -> None:
    """As `las serve` stops: should_exit set, hub.close(0) from the loop's side. The open
    streams end at once, not after uvicorn's graceful timeout (30 s here)."""
    add_here(db, "one")
    srv = Server(hub, tmp_path / "g.sock", grace=30).__enter__()
    clients = [srv.client() for _ in range(3)]
    streams = [c.stream("GET", "/v1/events/stream") for c in clients]
    readers = []  # kept: a dropped line iterator closes its connection
    try:
        for st in streams:
            readers.append(st.__enter__().iter_lines())
            assert read_sse(readers[-1], 1)[0][0]["id"] == "1"
        assert hub.subscribers == 3
        began = time.monotonic()
        srv.server.should_exit = True
        hub.close(timeout=0)
        srv.thread.join(10)
        assert not srv.thread.is_alive()
        assert time.monotonic() - began < 5
    finally:
        for st in streams:
            with contextlib.suppress(httpx.HTTPError):
                st.__exit__(None, None, None)
        for c in clients:
            c.close()
        srv.server.should_exit = True
        srv.thread.join(10)


def test_sse_data_is_the_line_las_events_json_prints(
    las: Las, server: Server, db: Path, las_env: dict[str, str]
) -> None:
    finish(write_events(las_env, db, 3, "same"))
    with server.client() as c, c.stream("GET", "/v1/events/stream") as r:
        events, _ = read_sse(r.iter_lines(), 3)
    cli = las.ok("events", "--json").out.splitlines()
    assert [e["data"] for e in events] == cli

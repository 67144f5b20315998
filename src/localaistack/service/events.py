"""The event log as a live stream: one watcher thread for the whole service, fanned out to
every subscriber (``GET /v1/events/stream``, Server-Sent Events).

``EventHub`` runs one thread that waits for commits to the state database
(store/watch.py ``ChangeWatcher``: inotify, no polling) and, on each, reads the events
committed since the last it read (``Store.events``) and hands them to every subscriber's
bounded queue, on that subscriber's event loop (``call_soon_threadsafe``). Any process may
have written them: a supervisor, a `las` command, the service itself.

``subscribe(after)`` yields the events with an id above ``after``: first the backlog read
from the store, then the live ones, never a gap and never a duplicate. It registers its
queue *before* it reads the backlog, so an event is either in the backlog (committed before
that read) or reaches the queue (read by the hub after the registration), or both; the
seam is deduplicated by id (event ids grow with the commit order: SQLite has one writer at
a time). A subscriber that does not keep up (its queue is full: a slow client) is ended,
its queue dropped: its stream closes and the client resumes with ``Last-Event-ID`` where it
stopped, losing nothing. Memory stays bounded whatever the clients do.

``sse_response`` frames a subscription for HTTP::

    id: 42
    event: running
    data: {"id": 42, "at": "2026-12-02T10:00:00.123Z", "instance": ..., "message": ...}

with a ``: ping`` comment every 15 s; it ends when the client disconnects, when the hub
closes, or when the server shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from localaistack.ops.api import EventInfo
from localaistack.ops.local import event_info
from localaistack.ops.problems import MEDIA_TYPE, plain_problem
from localaistack.store.db import Store
from localaistack.store.watch import ChangeWatcher

log = logging.getLogger(__name__)

QUEUE_SIZE = 1024  # events a subscriber may lag behind before it is ended
PING_SECONDS = 15.0
SEND_TIMEOUT = 30.0  # a client that takes no bytes for this long is dropped
_WAKE = 1.0  # the longest the watcher thread waits before it looks at the stop flag
_RETRY = 1.0  # seconds between attempts while the store cannot be read
_MAX_ID = 2**63 - 1  # SQLite's largest integer


class _Subscriber:
    """One subscription's queue of batches (each batch shared by every subscriber), fed
    on the subscriber's own event loop. ``pending``: the events queued and not yet
    taken; a batch that would take it over ``size`` ends the subscription, unless the
    subscriber had taken everything before (a burst never ends one that keeps up)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.size = size
        self.batches: deque[list[EventInfo]] = deque()
        self.pending = 0
        self.wake = asyncio.Event()
        self.ended: str | None = None

    # offer and end run on ``self.loop`` (scheduled by the hub's thread, or by close).
    def offer(self, batch: list[EventInfo]) -> None:
        if self.ended is not None:
            return
        if self.pending and self.pending + len(batch) > self.size:
            self.end(f"more than {self.size} events behind")
            return
        self.batches.append(batch)
        self.pending += len(batch)
        self.wake.set()

    def end(self, reason: str) -> None:
        if self.ended is not None:
            return
        self.ended = reason
        self.batches.clear()  # dropped: the client resumes from the store
        self.pending = 0
        self.wake.set()

    async def next_batch(self) -> list[EventInfo] | None:
        """The next batch; None once ended."""
        while not self.batches:
            if self.ended is not None:
                return None
            self.wake.clear()
            await self.wake.wait()
        return self.batches.popleft()


class EventHub:
    """The service's one watcher of the event log; see the module's docstring.

    ``start()`` starts the thread (it returns once the thread watches: an event committed
    after ``start`` returns is never missed); ``close()`` ends every subscription and the
    thread, within about ``_WAKE`` seconds plus one store read.
    """

    def __init__(self, db: Path, *, queue_size: int = QUEUE_SIZE, use_inotify: bool = True) -> None:
        self.db = Path(db)
        self.queue_size = queue_size
        self.use_inotify = use_inotify  # False: ChangeWatcher polls (as where no inotify)
        self._lock = threading.Lock()
        self._subs: set[_Subscriber] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._last = 0  # the newest event id the thread has handed out
        self.closed = False

    def __repr__(self) -> str:
        return f"<EventHub {self.db} subscribers={self.subscribers}>"

    @property
    def subscribers(self) -> int:
        """How many subscriptions are open now."""
        with self._lock:
            return len(self._subs)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> None:
        """Start the watcher thread; raises what stopped it from starting (a StoreError)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="las-event-hub", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.close()
            raise TimeoutError(f"the event watcher of {self.db} did not start in {timeout:g}s")
        if self._failure is not None:
            self.close()
            raise self._failure

    def close(self, timeout: float = 5.0) -> None:
        """End every subscription and the thread (waits at most ``timeout`` seconds for
        the thread; 0: not at all, as from the event loop's own signal handler).

        Call it as soon as the server begins to stop, not after: uvicorn waits for open
        responses (an event stream never ends by itself) before it shuts down, and
        sse-starlette notices a stop only through uvicorn's own signal handling."""
        self._stop.set()
        with self._lock:
            self.closed = True
            subs = list(self._subs)
        for sub in subs:
            _call_on(sub.loop, sub.end, "the service is shutting down")
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive() and timeout > 0:
                log.warning("the event watcher thread did not end within %gs", timeout)

    # --- the watcher thread ------------------------------------------------------------

    def _run(self) -> None:
        watcher = ChangeWatcher(self.db, use_inotify=self.use_inotify)
        try:
            watcher.__enter__()  # before the newest id is read: no commit falls between
            store = Store(self.db)
        except BaseException as exc:
            watcher.close()
            self._failure = exc
            self._ready.set()
            return
        try:
            newest = store.events(0, 1)
            self._last = newest[-1].id if newest else 0
        except BaseException as exc:
            store.close()
            watcher.close()
            self._failure = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._watch(watcher, store)
        finally:
            store.close()
            watcher.close()

    def _watch(self, watcher: ChangeWatcher, store: Store) -> None:
        while not self._stop.is_set():
            try:
                if not watcher.wait(_WAKE) or self._stop.is_set():
                    continue
                rows = store.events(self._last)
            except Exception as exc:  # the store cannot be read now: retry, keep going
                log.warning("event watcher: %s; retrying in %gs", exc, _RETRY)
                self._stop.wait(_RETRY)
                continue
            if rows:
                self._last = rows[-1].id
                self._fan_out([event_info(r) for r in rows])

    def _fan_out(self, batch: list[EventInfo]) -> None:
        with self._lock:
            subs = list(self._subs)
        for sub in subs:
            _call_on(sub.loop, sub.offer, batch)

    # --- subscriptions -----------------------------------------------------------------

    async def subscribe(self, after: int) -> AsyncIterator[EventInfo]:
        """Every event with an id above ``after``, oldest first, then each new one as it
        is committed; ends when the subscriber falls ``queue_size`` events behind, or the
        hub closes. Closing the iterator (or cancelling its task) unsubscribes."""
        sub = _Subscriber(asyncio.get_running_loop(), self.queue_size)
        with self._lock:
            if self.closed:
                return
            self._subs.add(sub)
        try:
            last = after
            for ev in await asyncio.to_thread(self._backlog, after):
                last = ev.id
                yield ev
            while True:
                batch = await sub.next_batch()
                if batch is None:
                    log.info("event subscription after %d ended: %s", last, sub.ended)
                    return
                for ev in batch:
                    if sub.ended is not None:
                        break
                    sub.pending = max(0, sub.pending - 1)
                    if ev.id <= last:  # also in the backlog
                        continue
                    last = ev.id
                    yield ev
        finally:
            with self._lock:
                self._subs.discard(sub)

    def _backlog(self, after: int) -> list[EventInfo]:
        """The stored events above ``after`` (in a worker thread: a store connection
        serves the thread that opened it)."""
        store = Store(self.db)
        try:
            return [event_info(r) for r in store.events(after)]
        finally:
            store.close()


def _call_on(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """``fn(*args)`` on ``loop`` (from any thread); nothing if that loop is closed."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens there
        loop.call_soon_threadsafe(fn, *args)


# --- Server-Sent Events ----------------------------------------------------------------------


def sse_frame(ev: EventInfo) -> bytes:
    """One event as SSE: id, event (its type), data (its JSON, as `las events --json`)."""
    data = json.dumps(ev.model_dump(mode="json", by_alias=True))
    kind = ev.type.replace("\r", " ").replace("\n", " ")
    return f"id: {ev.id}\nevent: {kind}\ndata: {data}\n\n".encode()


async def _frames(events: AsyncIterator[EventInfo]) -> AsyncIterator[bytes]:
    """The SSE frames of a subscription. The response has begun (200) when the store is
    first read: a store that cannot be read ends the stream with an ``: error`` comment
    (the client retries with ``Last-Event-ID``), never a traceback."""
    try:
        async for ev in events:
            yield sse_frame(ev)
    except Exception as exc:
        log.warning("event stream ended: %s", exc)
        line = str(exc).replace("\r", " ").replace("\n", " ")
        yield f": error: {line}\n\n".encode()
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def parse_event_id(value: str) -> int | None:
    """A ``Last-Event-ID`` (or ``after``) as an event id; None: not one."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > 18:  # < 2**63
        return None
    return int(text)


def sse_response(
    hub: EventHub,
    request: Request,
    after: int | None,
    *,
    ping: float = PING_SECONDS,
    headers: Iterable[tuple[str, str]] = (),
) -> Response:
    """``GET /v1/events/stream``: the events above ``after`` (the ``Last-Event-ID`` header
    wins over it), then each new one, as ``text/event-stream``. A malformed header or a
    negative ``after``: 400, a problem body."""
    from sse_starlette import EventSourceResponse, ServerSentEvent

    header = request.headers.get("last-event-id")
    start = after
    if header is not None and header.strip():  # an empty one: none (as EventSource does)
        start = parse_event_id(header)
        if start is None:
            return _bad_request(
                f"Last-Event-ID {header[:40]!r} is not an event id",
                "send the id of the last event received (a number), or no header",
            )
    if start is not None and not 0 <= start <= _MAX_ID:
        return _bad_request(
            f"after={start} is not an event id", f"after is between 0 and {_MAX_ID}"
        )
    return EventSourceResponse(
        _frames(hub.subscribe(start or 0)),
        ping=ping,
        sep="\n",
        ping_message_factory=lambda: ServerSentEvent(comment="ping", sep="\n"),
        send_timeout=SEND_TIMEOUT,
        headers=dict(headers),
    )


def _bad_request(detail: str, hint: str) -> Response:
    return JSONResponse(
        plain_problem(400, "Bad request", detail, hint), status_code=400, media_type=MEDIA_TYPE
    )

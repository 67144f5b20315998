"""The HTTP API of `las serve` (docs/api.md): one route per operation, each a thin
call of an ``Operations`` made for the request and closed after it.

Every answer that is not a success is a problem body (RFC 9457, ops/problems.py): a
``LasError`` by its class, a request that does not validate as 422 naming the field, an
unknown route 404, a wrong method 405, a body over 1 MiB 413. An exception that is not a
``LasError`` is a bug: it is logged with its traceback in the service's log and answered
500 without one.

The endpoints are plain functions: FastAPI runs them in its thread pool, so an operation
that waits (a run until healthy, a stop) holds a worker thread, not the event loop. An
``Operations`` (its SQLite connection) is used by one thread only: a log stream, which
outlives the endpoint, is read by a thread of its own (``_LogPump``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import quote

from fastapi import Body, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from localaistack import __version__
from localaistack.errors import LasError, StoreError
from localaistack.masking import masked
from localaistack.ops.api import (
    EventInfo,
    InstanceDetail,
    InstanceSummary,
    Operations,
    PlanRequestBody,
    Problem,
    RemoveOutcome,
    RestartRequest,
    RunRequest,
    ServiceHealth,
    StartOutcome,
    StartRequest,
    StopOutcome,
    StopRequest,
)
from localaistack.ops.problems import MEDIA_TYPE, plain_problem, problem_of
from localaistack.service.events import EventHub, sse_response
from localaistack.service.metrics import ServiceMetrics

log = logging.getLogger("las.serve")

MAX_BODY = 1024 * 1024  # request bodies over this: 413
MAX_INT = 2**63 - 1  # SQLite's largest integer: an id or count beyond it is no id or count
WARNINGS_HEADER = "Las-Warnings"
_WARNINGS_KEY = "las_warnings"  # in scope["state"]: what the request's Operations warned

T = TypeVar("T")

_PROBLEM_SCHEMA = {"content": {MEDIA_TYPE: {"schema": Problem.model_json_schema()}}}
_PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    "4XX": {"description": "a problem (RFC 9457)", **_PROBLEM_SCHEMA},
    "5XX": {"description": "a problem (RFC 9457)", **_PROBLEM_SCHEMA},
}


def problem_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def create_app(
    home: Path,
    ops_factory: Callable[[], Operations],
    *,
    hub: EventHub | None = None,
    metrics: ServiceMetrics | None = None,
) -> FastAPI:
    """The API for the runtime of ``home``; ``ops_factory`` makes the ``Operations`` of one
    request (in production ``lambda: LocalOperations(home)``). With ``hub`` (started and
    closed by the caller) ``GET /v1/events/stream`` is served; with ``metrics``, ``GET
    /metrics``, and every request is counted there."""
    app = FastAPI(
        title="LocalAIStack runtime",
        version=__version__,
        description="`las serve`: the operations of the `las` CLI over HTTP.",
        responses=_PROBLEM_RESPONSES,
    )
    app.state.home = home

    def call(request: Request, fn: Callable[[Operations], T]) -> T:
        """``fn`` with an ``Operations`` of this request's own, closed after it; what it
        warned goes into the response's ``Las-Warnings`` header."""
        ops = ops_factory()
        try:
            return fn(ops)
        finally:
            try:
                _add_warnings(request.scope, ops.warnings)
            finally:
                ops.close()

    _routes(app, call, ops_factory)
    if hub is not None:
        _stream_route(app, hub)
    if metrics is not None:
        _metrics_route(app, metrics)
    _handlers(app)
    app.add_middleware(_BodyLimit, limit=MAX_BODY)
    record = metrics.record_request if metrics is not None else None
    app.add_middleware(_Guard, home=home, record_request=record)
    return app


def _add_warnings(scope: Scope, warnings: list[str]) -> None:
    if warnings:
        state = scope.setdefault("state", {})
        state.setdefault(_WARNINGS_KEY, []).extend(warnings)


def _routes(
    app: FastAPI,
    call: Callable[[Request, Callable[[Operations], Any]], Any],
    ops_factory: Callable[[], Operations],
) -> None:
    @app.get("/v1/health", response_model=ServiceHealth, tags=["service"])
    async def health() -> ServiceHealth:
        """The service answers (nothing else is checked; on the event loop, so it answers
        even while every worker thread waits on a run)."""
        return ServiceHealth(status="ok", version=__version__)

    @app.get("/v1/hardware", response_model=dict[str, Any], tags=["control"])
    def hardware(request: Request) -> dict[str, Any]:
        """This machine's hardware profile, as `las hw --json` prints it."""
        return call(request, lambda ops: ops.hardware())  # type: ignore[no-any-return]

    @app.get("/v1/modules", response_model=list[dict[str, Any]], tags=["control"])
    def modules(request: Request) -> list[dict[str, Any]]:
        """The catalog, as `las modules --json` prints it."""
        return call(request, lambda ops: ops.modules())  # type: ignore[no-any-return]

    @app.post("/v1/plans", response_model=dict[str, Any], tags=["control"])
    def plan(request: Request, body: PlanRequestBody) -> dict[str, Any]:
        """The explained plan (a dry run: nothing is started or reserved), as `las plan
        --json` prints it (each secret ``***``)."""

        def make(ops: Operations) -> dict[str, Any]:
            p = ops.plan(body)
            data: dict[str, Any] = masked(p.model_dump(mode="json"))
            data["plan_id"] = p.plan_id
            return data

        return call(request, make)  # type: ignore[no-any-return]

    @app.get("/v1/instances", response_model=list[InstanceSummary], tags=["instances"])
    def ps(request: Request, all: bool = False) -> list[InstanceSummary]:
        """The instances: active ones; ``all``: every one, and workloads with no record."""
        return call(request, lambda ops: ops.ps(all_=all))  # type: ignore[no-any-return]

    @app.post("/v1/instances", response_model=StartOutcome, status_code=201, tags=["instances"])
    def run(request: Request, body: RunRequest) -> StartOutcome:
        """Plan, admit and start an instance (201 also when it failed to start: ``state``
        and ``reason`` say so)."""
        return call(request, lambda ops: ops.run(body))  # type: ignore[no-any-return]

    @app.get("/v1/instances/{name}", response_model=InstanceDetail, tags=["instances"])
    def inspect(request: Request, name: str) -> InstanceDetail:
        """One instance: state, reason, probes, plan (shown form), runs, limits."""
        return call(request, lambda ops: ops.inspect(name))  # type: ignore[no-any-return]

    @app.post("/v1/instances/{name}/start", response_model=StartOutcome, tags=["instances"])
    def start(
        request: Request, name: str, body: Annotated[StartRequest | None, Body()] = None
    ) -> StartOutcome:
        """A new run of a stopped instance, with its plan, through admission."""
        return call(request, lambda ops: ops.start(name, detach=(body or StartRequest()).detach))  # type: ignore[no-any-return]

    @app.post("/v1/instances/{name}/stop", response_model=StopOutcome, tags=["instances"])
    def stop(
        request: Request, name: str, body: Annotated[StopRequest | None, Body()] = None
    ) -> StopOutcome:
        """The stop signal, SIGKILL after ``timeout``; answers once the run has ended."""
        return call(request, lambda ops: ops.stop(name, (body or StopRequest()).timeout))  # type: ignore[no-any-return]

    @app.post("/v1/instances/{name}/restart", response_model=StartOutcome, tags=["instances"])
    def restart(
        request: Request,
        name: str,
        body: Annotated[RestartRequest | None, Body()] = None,
    ) -> StartOutcome:
        """Stop (if running), then start again."""
        req = body or RestartRequest()
        return call(  # type: ignore[no-any-return]
            request, lambda ops: ops.restart(name, req.timeout, detach=req.detach)
        )

    @app.delete("/v1/instances/{name}", response_model=RemoveOutcome, tags=["instances"])
    def remove(
        request: Request, name: str, purge: bool = False, force: bool = False
    ) -> RemoveOutcome:
        """Forget a stopped instance (``force``: stop it first; ``purge``: its logs too)."""
        return call(  # type: ignore[no-any-return]
            request, lambda ops: ops.remove(name, purge=purge, force=force)
        )

    @app.get(
        "/v1/instances/{name}/logs",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/plain": {}}, "description": "the output"}},
        tags=["instances"],
    )
    async def logs(
        request: Request,
        name: str,
        follow: bool = False,
        tail: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
        run: str | None = None,
        timestamps: bool = False,
    ) -> Response:
        """A run's output, exactly the bytes `las logs` writes; ``follow``: until the run
        ends."""
        pump = _LogPump(
            ops_factory,
            dict(name=name, follow=follow, tail=tail, run_id=run, timestamps=timestamps),
        )
        await pump.open()  # raises its LasError: an unknown instance is a 404
        _add_warnings(request.scope, pump.warnings)
        return StreamingResponse(pump.chunks(), media_type="text/plain")

    @app.get("/v1/events", response_model=list[EventInfo], tags=["events"])
    def events(
        request: Request,
        after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
        tail: Annotated[int | None, Query(ge=0, le=MAX_INT)] = None,
    ) -> list[EventInfo]:
        """Events after id ``after`` (``tail``: only the last N of them)."""
        return call(request, lambda ops: list(ops.events(after=after, tail=tail)))  # type: ignore[no-any-return]


def _stream_route(app: FastAPI, hub: EventHub) -> None:
    @app.get(
        "/v1/events/stream",
        response_class=Response,
        responses={200: {"content": {"text/event-stream": {}}, "description": "the events"}},
        tags=["events"],
    )
    async def event_stream(request: Request, after: int | None = None) -> Response:
        """The events above ``after`` (a ``Last-Event-ID`` header wins over it), then each
        new one as it is committed (Server-Sent Events, a ``: ping`` every 15 s)."""
        return sse_response(hub, request, after)


def _metrics_route(app: FastAPI, metrics: ServiceMetrics) -> None:
    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
        tags=["service"],
    )
    def prometheus() -> Response:
        """The runtime's metrics in Prometheus' text format (docs/metrics.md)."""
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)


class _LogPump:
    """A log stream read by a thread of its own: the ``Operations`` is made, asked for the
    stream, iterated and closed in that one thread (its SQLite connection may not change
    threads); the chunks reach the event loop through a queue of at most ``DEPTH``.

    ``open()`` returns once the stream is obtained (or raises the error that stopped it),
    so that a problem is answered before a response starts. When the client goes away the
    thread stops at the next chunk (a follow of a silent run: when it writes or ends)."""

    DEPTH = 64
    BLOCK = 64 * 1024

    def __init__(self, ops_factory: Callable[[], Operations], kwargs: dict[str, Any]) -> None:
        self.ops_factory = ops_factory
        self.kwargs = kwargs
        self.warnings: list[str] = []
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.room = threading.Semaphore(self.DEPTH)
        self.cancelled = threading.Event()
        self.loop = asyncio.get_running_loop()

    async def open(self) -> None:
        threading.Thread(target=self._run, name="las-logs", daemon=True).start()
        kind, value = await self.queue.get()
        self.room.release()
        if kind == "error":
            raise value
        assert kind == "open"

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while True:
                kind, value = await self.queue.get()
                self.room.release()
                if kind == "data":
                    yield value
                elif kind == "end":
                    return
                else:
                    raise value  # the stream broke off: the response is cut (and logged)
        finally:
            self.cancelled.set()

    def _put(self, kind: str, value: Any = None) -> bool:
        while not self.room.acquire(timeout=0.5):
            if self.cancelled.is_set():
                return False
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: the service is stopping
            self.cancelled.set()
            return False
        return True

    def _run(self) -> None:
        stream: Iterator[bytes] | None = None
        try:
            ops = self.ops_factory()
        except BaseException as exc:
            self._put("error", exc)
            return
        try:
            try:
                stream = ops.logs(**self.kwargs)
            finally:
                self.warnings = list(ops.warnings)
            if not self._put("open"):
                return
            # Followed output goes out as it comes; a finished log in blocks of ~64 KiB.
            block = 0 if self.kwargs.get("follow") else self.BLOCK
            parts: list[bytes] = []
            size = 0
            for chunk in stream:
                if self.cancelled.is_set():
                    return
                parts.append(chunk)
                size += len(chunk)
                if size >= block:
                    if not self._put("data", b"".join(parts)):
                        return
                    parts, size = [], 0
            if parts and not self._put("data", b"".join(parts)):
                return
            self._put("end")
        except BaseException as exc:
            self._put("error", exc)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            ops.close()


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(LasError)
    async def las_error(request: Request, exc: LasError) -> Response:
        status, body = problem_of(exc)
        return problem_response(status, body)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        detail = "; ".join(_validation_message(e) for e in exc.errors()) or "invalid request"
        body = plain_problem(422, "Usage error", detail, hint="see /docs for the request's shape")
        return problem_response(422, body)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        status = exc.status_code
        if status == 404:
            body = plain_problem(
                404, "Not found", f"no such route: {request.url.path}", hint="see /docs"
            )
        elif status == 405:
            body = plain_problem(
                405,
                "Method not allowed",
                f"{request.method} is not allowed on {request.url.path}",
                hint="see /docs",
            )
        else:
            body = plain_problem(status, _reason(status), str(exc.detail))
        return problem_response(status, body, headers=dict(exc.headers or {}))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _translate(exc: BaseException, home: Path) -> StoreError | None:
    """A SQLite error that escaped the store's own wrapping, as the StoreError it means."""
    if not isinstance(exc, Exception):
        return None
    from localaistack.store.db import translate

    return translate(exc, home / "state.db")


def _validation_message(error: Any) -> str:
    """One validation error in words, naming the field (``body.set.x``, ``query.tail``)."""
    loc = [str(p) for p in error.get("loc", ())]
    kind = error.get("type", "")
    if kind == "json_invalid":
        why = (error.get("ctx") or {}).get("error", "")
        return "the request body is not valid JSON" + (f": {why}" if why else "")
    where = ".".join(loc) if loc else "the request"
    if kind == "extra_forbidden":
        return f"{where}: unknown field"
    if kind == "missing" and loc == ["body"]:
        return "the request needs a JSON body"
    return f"{where}: {error.get('msg', 'invalid')}"


class _BodyLimit:
    """413 for a request body over ``limit`` bytes: by its Content-Length before it is
    read, or, with none (chunked), by counting as it is read."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if length is not None:
            if int(length) > self.limit:  # the server checked it is a number
                await self._refuse(scope, send)
                return
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        first: Message | None = None
        while True:
            message = await receive()
            if message["type"] != "http.request":
                first = message  # a disconnect: the app sees it
                break
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                await self._refuse(scope, send)
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replay: list[Message] = [
            first or {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        ]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        body = plain_problem(
            413,
            "Content too large",
            f"the request body is over {self.limit} bytes",
            hint="requests are small JSON documents",
        )
        await problem_response(413, body)(scope, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def shown_path(scope: Scope) -> str:
    """The request's path for a log line: percent-encoded, so that a name sent with a
    newline or a control character cannot forge or garble a line (never the query)."""
    return quote(scope.get("path", ""), safe="/:@!$&'()*+,;=-._~")


class _Guard:
    """The outermost layer of the app: the ``Las-Warnings`` header, one log line per
    request (method, path, status, milliseconds: no query, no header, no body), the
    metrics, and the last resort for a bug (logged with its traceback, answered 500)."""

    def __init__(
        self,
        app: ASGIApp,
        home: Path,
        record_request: Callable[[str, str | None, int, float], None] | None = None,
    ) -> None:
        self.app, self.home = app, home
        self.record_request = record_request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.monotonic()
        status = [0]
        state = scope.setdefault("state", {})

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                warnings = state.get(_WARNINGS_KEY)
                if warnings:
                    headers = list(message.get("headers", []))
                    value = json.dumps(list(dict.fromkeys(warnings)))  # ASCII, each once
                    headers.append((WARNINGS_HEADER.lower().encode(), value.encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as exc:
            store_err = _translate(exc, self.home)
            if status[0]:
                log.error(
                    "%s %s: failed after the response started",
                    scope["method"],
                    shown_path(scope),
                    exc_info=exc,
                )
            elif store_err is not None:
                log.error("%s %s: %s", scope["method"], shown_path(scope), store_err, exc_info=exc)
                code, body = problem_of(store_err)
                await problem_response(code, body)(scope, receive, sending)
            else:
                log.error(
                    "%s %s: unexpected error", scope["method"], shown_path(scope), exc_info=exc
                )
                body = plain_problem(
                    500,
                    "Internal error",
                    f"an unexpected error ({type(exc).__name__}); the service's log has the"
                    " details",
                    hint="this is a bug of las: please report it with the service's log",
                )
                await problem_response(500, body)(scope, receive, sending)
        finally:
            seconds = time.monotonic() - t0
            ms = seconds * 1000
            log.info("%s %s %d %.0fms", scope["method"], shown_path(scope), status[0], ms)
            if self.record_request is not None:
                route = scope.get("route")
                template = getattr(route, "path", None)  # None: no route matched
                try:
                    self.record_request(scope["method"], template, status[0], seconds)
                except Exception:
                    log.exception("recording the request's metrics failed")
